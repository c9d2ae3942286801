//! The two ways the receiver writes a file, in one place.
//!
//! - [`write_new`]: a fresh file with exactly `mode` (set before the first
//!   byte) and `owner`, fsynced; whatever was at the path (even a planted
//!   symlink) is unlinked first and never written through
//!   (`O_CREAT|O_EXCL|O_NOFOLLOW`). A partial file is removed on error.
//! - [`replace`]: the same into a temp file beside the target, then a
//!   rename over it: readers see the old file or the new one, never half.
//!
//! Staging, install, handoff, the install timestamp and the metrics file
//! all go through these, so the rules hold everywhere.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Write a fresh file at `path`; see the module docs.
pub fn write_new(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let res = (|| {
        // The umask may have narrowed the mode given to open(2).
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            // Only when the owner differs from what open(2) gave us: the
            // push units' syscall filter (`~@privileged`) denies fchown
            // even as a no-op, and a receiver spawned there through
            // `transport = "local"` replaces its own root-owned files.
            use std::os::unix::fs::MetadataExt;
            let made = f.metadata()?;
            if (made.uid(), made.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
        }
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// The temp file [`replace`] uses for `path`: `.<name>.certsync-tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.certsync-tmp"))
}

/// Replace `path` atomically with `bytes` (temp file + rename).
pub fn replace(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let tmp = temp_path(path);
    write_new(&tmp, bytes, mode, owner)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Read at most `max` bytes of `path` (following links: these are the
/// operator's own files). `Ok(None)` when it does not exist; an
/// `InvalidData` error naming the limit when it is larger.
pub fn read_capped(path: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes: not a certificate or key file"),
        ));
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_exact_mode_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("f");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        std::os::unix::fs::symlink(&victim, temp_path(&target)).unwrap();
        replace(&target, b"new", 0o600, None).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(!temp_path(&target).exists());
        write_new(&target, b"x", 0o644, None).unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/f");
        assert!(replace(&missing, b"x", 0o600, None).is_err());
        assert!(!temp_path(&missing).exists());
    }
}
