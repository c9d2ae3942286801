//! Step 2, **stage**: keep the received bytes in the staging dir.
//!
//! Layout: `<staging_dir>/<cert name>/{fullchain.pem,privkey.pem}`, where
//! the cert name comes from receive.toml, never from the wire. The staging
//! dir is 0700; staged files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`
//! and mode 0600, so a symlink planted in the staging dir (by anyone who
//! could write there) is never followed, and a reader (the root `deploy` in
//! handoff mode) opens with `O_NOFOLLOW`, checks for a regular file, and
//! reads at most the protocol's size limits.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use certsync_core::bundle::{Bundle, SecretBytes};
use certsync_core::protocol::{MAX_CHAIN_BYTES, MAX_KEY_BYTES};

pub const STAGED_CHAIN: &str = "fullchain.pem";
pub const STAGED_KEY: &str = "privkey.pem";

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("staging dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("staging path {0} is a symlink or not a directory; remove it (certsync recreates it with mode 0700)")]
    NotADir(PathBuf),
    #[error("staged file {0} is not a regular file (a symlink or device was planted there); refusing to read it")]
    NotRegular(PathBuf),
    #[error("staged file {path} is {len} bytes, over the limit of {max}")]
    TooLarge { path: PathBuf, len: u64, max: usize },
    #[error("nothing is staged for {0}")]
    NothingStaged(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Create `dir` with mode 0700 if missing; refuse a symlink or a file.
pub fn ensure_dir(dir: &Path) -> Result<(), StageError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.file_type().is_dir() {
                return Err(StageError::NotADir(dir.to_path_buf()));
            }
            // Tighten a dir we own; never loosen.
            // SAFETY: geteuid has no preconditions.
            if meta.uid() == unsafe { libc::geteuid() } && meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io(dir))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
            Ok(())
        }
        Err(e) => Err(io(dir)(e)),
    }
}

/// The dir holding one certificate's staged pair.
pub fn cert_dir(staging: &Path, name: &str) -> PathBuf {
    staging.join(name)
}

/// Write a file that must not exist, never following a link: the old one
/// (if any, even a planted symlink) is unlinked first. On any error the
/// partial file is removed.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StageError> {
    crate::fsutil::write_new(path, bytes, mode, None).map_err(io(path))
}

/// Step 2: put the pair into `<staging>/<name>/`. `name` is the config's.
pub fn stage(staging: &Path, name: &str, bundle: &Bundle) -> Result<PathBuf, StageError> {
    ensure_dir(staging)?;
    let dir = cert_dir(staging, name);
    ensure_dir(&dir)?;
    let chain = dir.join(STAGED_CHAIN);
    let key = dir.join(STAGED_KEY);
    let res = write_new(&chain, &bundle.chain, 0o600)
        .and_then(|_| write_new(&key, bundle.key.expose(), 0o600));
    if let Err(e) = res {
        clear(staging, name);
        return Err(e);
    }
    Ok(dir)
}

/// Remove a staged pair (best effort: used on failure paths).
pub fn clear(staging: &Path, name: &str) {
    let dir = cert_dir(staging, name);
    for f in [STAGED_CHAIN, STAGED_KEY] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// Read one staged file: `O_NOFOLLOW`, a regular file, at most `max` bytes.
fn read_limited(path: &Path, max: usize) -> Result<Vec<u8>, StageError> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                StageError::NotRegular(path.to_path_buf())
            } else {
                io(path)(e)
            }
        })?;
    let meta = f.metadata().map_err(io(path))?;
    if !meta.file_type().is_file() {
        return Err(StageError::NotRegular(path.to_path_buf()));
    }
    if meta.len() > max as u64 {
        return Err(StageError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
            max,
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io(path))?;
    if buf.len() > max {
        return Err(StageError::TooLarge {
            path: path.to_path_buf(),
            len: buf.len() as u64,
            max,
        });
    }
    Ok(buf)
}

/// Read a staged pair back (the root `deploy` in handoff mode).
pub fn read_staged(staging: &Path, name: &str) -> Result<Bundle, StageError> {
    let dir = cert_dir(staging, name);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => return Err(StageError::NotADir(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StageError::NothingStaged(name.to_string()))
        }
        Err(e) => return Err(io(&dir)(e)),
    }
    let chain_path = dir.join(STAGED_CHAIN);
    if !chain_path.exists() && std::fs::symlink_metadata(&chain_path).is_err() {
        return Err(StageError::NothingStaged(name.to_string()));
    }
    let chain = read_limited(&chain_path, MAX_CHAIN_BYTES)?;
    let key = read_limited(&dir.join(STAGED_KEY), MAX_KEY_BYTES)?;
    Ok(Bundle::new(chain, SecretBytes::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stages_with_private_modes_and_reads_back() {
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("staging");
        let b = Bundle::new(b"chain".to_vec(), SecretBytes::new(b"key".to_vec()));
        let dir = stage(&staging, "mail", &b).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&staging), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STAGED_KEY)), 0o600);
        assert_eq!(read_staged(&staging, "mail").unwrap(), b);
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("staging");
        let victim = root.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        ensure_dir(&staging).unwrap();
        std::fs::create_dir(staging.join("mail")).unwrap();
        symlink(&victim, staging.join("mail").join(STAGED_KEY)).unwrap();
        symlink(&victim, staging.join("mail").join(STAGED_CHAIN)).unwrap();
        // Reading refuses the links.
        assert!(matches!(
            read_staged(&staging, "mail"),
            Err(StageError::NotRegular(_))
        ));
        // Staging replaces the links, never writing through them.
        let b = Bundle::new(b"chain".to_vec(), SecretBytes::new(b"key".to_vec()));
        stage(&staging, "mail", &b).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            std::fs::symlink_metadata(staging.join("mail").join(STAGED_KEY))
                .unwrap()
                .is_file()
        );
        // A symlinked cert dir is refused.
        std::fs::remove_dir_all(staging.join("mail")).unwrap();
        symlink(root.path(), staging.join("mail")).unwrap();
        assert!(matches!(
            stage(&staging, "mail", &b),
            Err(StageError::NotADir(_))
        ));
        assert!(matches!(
            read_staged(&staging, "mail"),
            Err(StageError::NotADir(_))
        ));
    }

    #[test]
    fn oversized_staged_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("s");
        let b = Bundle::new(
            vec![b'a'; MAX_CHAIN_BYTES + 1],
            SecretBytes::new(b"k".to_vec()),
        );
        stage(&staging, "mail", &b).unwrap();
        assert!(matches!(
            read_staged(&staging, "mail"),
            Err(StageError::TooLarge { .. })
        ));
        assert!(matches!(
            read_staged(&staging, "other"),
            Err(StageError::NothingStaged(_))
        ));
    }
}
