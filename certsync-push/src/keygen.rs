//! `certsync-push keygen --out PATH`: a new Ed25519 key pair for the pusher.
//!
//! Writes the private key in OpenSSH format at `PATH` and the public key at
//! `PATH.pub`, and returns the public key line, its SHA256 fingerprint and
//! the restricted `authorized_keys` line to put on the receiving host.
//!
//! Invariants:
//! - The private key file is created with mode 0600 in the same `open(2)`
//!   that creates it (`O_CREAT|O_EXCL`, mode 0o600), so there is no instant
//!   at which it is readable by others, and an existing file (or a symlink
//!   planted at that path) is never overwritten or followed.
//! - The key is not encrypted: the pusher runs unattended. Its protection
//!   is the file mode and the forced command on the receiving side.
//! - If anything fails after the private key was created, both files are
//!   removed again, so a retry starts clean.
//! - The private key's bytes are held in zeroizing buffers and never logged.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use certsync_core::authorized_keys::{authorized_keys_line, AuthorizedKeyError};
use certsync_core::contract::FORCED_COMMAND;
use certsync_core::ExitCode;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::error::PushError;

/// What `keygen` wrote.
#[derive(Debug, Clone)]
pub struct KeygenOutput {
    /// The private key file (mode 0600).
    pub private_key: PathBuf,
    /// The public key file, `PATH.pub` (mode 0644).
    pub public_key: PathBuf,
    /// `ssh-ed25519 AAAA… comment`, as in the `.pub` file.
    pub public_line: String,
    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// `command="certsync-receive serve",restrict ssh-ed25519 AAAA… comment`.
    pub authorized_keys_line: String,
}

#[derive(Debug, Error)]
pub enum KeygenError {
    #[error("{} already exists: refusing to overwrite a key; choose another --out or remove the old key first", path.display())]
    Exists { path: PathBuf },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key comment {comment:?} contains control characters: use a plain one such as certsync@npm")]
    BadComment { comment: String },
    #[error("cannot generate the key: {0}")]
    Generate(String),
    #[error("cannot make the authorized_keys line: {0}")]
    AuthorizedKey(#[from] AuthorizedKeyError),
}

/// Generate an Ed25519 key pair at `out` and `out.pub`. See the module doc.
pub fn keygen(out: &Path, comment: &str) -> Result<KeygenOutput, KeygenError> {
    if comment.chars().any(char::is_control) {
        return Err(KeygenError::BadComment {
            comment: comment.to_string(),
        });
    }
    let public_path = pub_path(out);
    // Checked up front so a clash on the .pub name does not leave a fresh
    // private key behind; the private key's O_EXCL is the real guard.
    if public_path.symlink_metadata().is_ok() {
        return Err(KeygenError::Exists { path: public_path });
    }

    let key = generate(comment)?;
    let private_pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeygenError::Generate(e.to_string()))?;
    let public_line = key
        .public_key()
        .to_openssh()
        .map_err(|e| KeygenError::Generate(e.to_string()))?;
    let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
    let authorized = authorized_keys_line(&public_line, None, FORCED_COMMAND)?;

    write_new(out, private_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, format!("{public_line}\n").as_bytes(), 0o644) {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the new directory entries durable; failure here is not worth
        // losing the keys over (some filesystems refuse fsync on a dir).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }

    Ok(KeygenOutput {
        private_key: out.to_path_buf(),
        public_key: public_path,
        public_line,
        fingerprint,
        authorized_keys_line: authorized,
    })
}

/// `certsync-push keygen --out PATH`: make the pair, say on `err` what was
/// written, and print the `authorized_keys` line alone on `out` (so that
/// `keygen --out … > line` captures just the line).
pub fn run(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode, PushError> {
    let made = keygen(path, "certsync-push")?;
    writeln!(
        err,
        "wrote {} (0600) and {}; key fingerprint {}",
        made.private_key.display(),
        made.public_key.display(),
        made.fingerprint
    )?;
    writeln!(err, "put this line in ~certsync/.ssh/authorized_keys on the receiving host (add --config … to the command if its receive.toml is elsewhere):")?;
    writeln!(out, "{}", made.authorized_keys_line)?;
    out.flush()?;
    Ok(ExitCode::Success)
}

/// `PATH.pub`, as ssh-keygen names it.
pub fn pub_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn generate(comment: &str) -> Result<PrivateKey, KeygenError> {
    // The seed comes from OpenSSL's CSPRNG (already a dependency), which
    // sidesteps rand_core version skew with ssh-key.
    let mut seed = Zeroizing::new([0u8; 32]);
    openssl::rand::rand_bytes(seed.as_mut()).map_err(|e| KeygenError::Generate(e.to_string()))?;
    let keypair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(keypair), comment)
        .map_err(|e| KeygenError::Generate(e.to_string()))
}

/// Create `path` exclusively with `mode` and write `bytes`, fsynced. On a
/// write failure the half-written file is removed.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeygenError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeygenError::Exists {
                path: path.to_path_buf(),
            },
            _ => KeygenError::Create {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let result = (|| {
        // The umask may have taken bits away from `mode` (never added); set
        // it exactly so the public key is 0644 whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(path);
        KeygenError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    #[test]
    fn writes_pair_with_modes_and_matching_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("id_ed25519");
        let res = keygen(&out, "certsync@npm").unwrap();

        assert_eq!(
            std::fs::metadata(&out).unwrap().mode() & 0o777,
            0o600,
            "private key mode"
        );
        assert_eq!(
            std::fs::metadata(&res.public_key).unwrap().mode() & 0o777,
            0o644
        );
        assert!(res
            .public_line
            .starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"));
        assert!(res.public_line.ends_with(" certsync@npm"));
        assert_eq!(
            std::fs::read_to_string(&res.public_key).unwrap(),
            format!("{}\n", res.public_line)
        );
        assert!(res
            .authorized_keys_line
            .starts_with("command=\"certsync-receive serve\",restrict ssh-ed25519 "));

        // The private key reads back and is the pair of the public key.
        let back = russh::keys::load_secret_key(&out, None).unwrap();
        assert_eq!(back.public_key().to_openssh().unwrap(), res.public_line);

        // OpenSSH agrees on the fingerprint and can derive the public key.
        if Path::new("/usr/bin/ssh-keygen").exists() {
            let lf = Command::new("ssh-keygen")
                .arg("-lf")
                .arg(&out)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&lf.stdout);
            assert!(
                text.contains(&res.fingerprint),
                "{text} vs {}",
                res.fingerprint
            );
            let y = Command::new("ssh-keygen")
                .arg("-yf")
                .arg(&out)
                .output()
                .unwrap();
            assert!(y.status.success());
            let derived = String::from_utf8_lossy(&y.stdout);
            let derived_key: Vec<&str> = derived.split_whitespace().take(2).collect();
            let ours: Vec<&str> = res.public_line.split_whitespace().take(2).collect();
            assert_eq!(derived_key, ours);
        }
    }

    #[test]
    fn two_keys_differ() {
        let dir = tempfile::tempdir().unwrap();
        let a = keygen(&dir.path().join("a"), "a").unwrap();
        let b = keygen(&dir.path().join("b"), "b").unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
    }

    #[test]
    fn refuses_to_overwrite_or_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("id");
        std::fs::write(&out, "precious").unwrap();
        assert!(matches!(keygen(&out, "c"), Err(KeygenError::Exists { .. })));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
        assert!(!pub_path(&out).exists());

        // An existing .pub is refused too, and no private key is left.
        let out2 = dir.path().join("id2");
        std::fs::write(pub_path(&out2), "old pub").unwrap();
        assert!(matches!(
            keygen(&out2, "c"),
            Err(KeygenError::Exists { .. })
        ));
        assert!(!out2.exists());

        // A dangling symlink at the path is not followed.
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            keygen(&link, "c"),
            Err(KeygenError::Exists { .. })
        ));
        assert!(!target.exists());
    }

    #[test]
    fn refuses_control_characters_in_comment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("id");
        assert!(matches!(
            keygen(&out, "a\nssh-ed25519 AAAA evil"),
            Err(KeygenError::BadComment { .. })
        ));
        assert!(!out.exists());
    }

    #[test]
    fn missing_directory_names_the_path() {
        let err = keygen(Path::new("/nonexistent-dir/certsync/id"), "c").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/certsync/id"),
            "{err}"
        );
    }
}
