//! `certsync-receive authorized-key`: the restricted authorized_keys line
//! for a pusher's public key, made by the same function `certsync-push
//! keygen` uses (`certsync_core::authorized_keys`), so the two agree.

use std::path::{Path, PathBuf};

use certsync_core::authorized_keys::{authorized_keys_line, AuthorizedKeyError};
use certsync_core::config::DEFAULT_RECEIVE_CONFIG;
use certsync_core::contract::FORCED_COMMAND;

use crate::error::ReceiveError;
use crate::fsutil::{read_input, ReadError, Refusal};

/// The largest public key file read.
const MAX_PUBKEY: usize = 16 * 1024;

/// A `--pubkey` file that is not a public key (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: {refusal}: that is not a public key file (give the .pub file)", path.display())]
    NotAFile { path: PathBuf, refusal: Refusal },
    #[error("{} is a private key; give the public key ({}.pub) and keep the private key on the NPM host", .0.display(), .0.display())]
    PrivateKey(PathBuf),
    #[error("{}: {source}", path.display())]
    Bad {
        path: PathBuf,
        #[source]
        source: AuthorizedKeyError,
    },
}

/// The forced command the line carries, for a receiver using `config`.
pub fn forced_command(config: &Path) -> String {
    if config == Path::new(DEFAULT_RECEIVE_CONFIG) {
        FORCED_COMMAND.to_string()
    } else {
        format!("certsync-receive --config {} serve", config.display())
    }
}

/// Read the public key file and build the line.
pub fn line(pubkey: &Path, from: Option<&str>, config: &Path) -> Result<String, ReceiveError> {
    let bytes = match read_input(pubkey, MAX_PUBKEY) {
        Ok(b) => b,
        Err(ReadError::Refused { path, refusal }) => {
            return Err(KeyFileError::NotAFile { path, refusal }.into())
        }
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("PRIVATE KEY") {
        return Err(KeyFileError::PrivateKey(pubkey.to_path_buf()).into());
    }
    authorized_keys_line(&text, from, &forced_command(config)).map_err(|source| {
        KeyFileError::Bad {
            path: pubkey.to_path_buf(),
            source,
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl certsync-push@npm\n";

    #[test]
    fn builds_a_restricted_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.pub");
        std::fs::write(&p, KEY).unwrap();
        let l = line(&p, Some("192.0.2.10/32"), Path::new(DEFAULT_RECEIVE_CONFIG)).unwrap();
        assert!(
            l.starts_with(&format!(
                "command=\"{FORCED_COMMAND}\",restrict,from=\"192.0.2.10/32\" ssh-ed25519 "
            )),
            "{l}"
        );
        let l = line(&p, None, Path::new("/etc/x.toml")).unwrap();
        assert!(l.contains("--config /etc/x.toml serve"), "{l}");
    }

    #[test]
    fn refuses_private_keys_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id");
        std::fs::write(&p, "-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n").unwrap();
        let e = line(&p, None, Path::new(DEFAULT_RECEIVE_CONFIG))
            .unwrap_err()
            .to_string();
        assert!(e.contains("private key") && !e.contains("xx"), "{e}");
        std::fs::write(&p, "hello").unwrap();
        assert!(line(&p, None, Path::new(DEFAULT_RECEIVE_CONFIG)).is_err());
        std::fs::write(&p, KEY).unwrap();
        assert!(line(&p, Some("\"evil\""), Path::new(DEFAULT_RECEIVE_CONFIG)).is_err());
    }
}
