//! The one capped reader, for files an attacker or a mistake may have put
//! in place of the one expected (docs/contract.md "Files in the staging
//! dir"; `ca_file`, `mailcow.conf` and the operator's key files too).
//!
//! [`read_file_capped`] takes a file already opened (by path, or relative
//! to a directory's descriptor as the receiver's staging dir and the
//! pusher's certbot archive dir do): it must be a regular file (not a
//! FIFO, a device such as `/dev/zero`, or a directory), and at most `max`
//! bytes are read. [`read_path_capped`] and [`read_capped`] open with
//! `O_NONBLOCK`, so a FIFO planted in place of a file cannot hang the
//! reader. A refusal is an `InvalidData` error holding a [`Refusal`].
//!
//! The bytes are read into a buffer sized up front (one byte more than
//! the file, for the read that finds its end), so key bytes are never
//! reallocated and left behind unwiped while reading;
//! [`read_secret_file_capped`] hands that buffer over as it is, wiped
//! when dropped.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zeroize::Zeroizing;

/// Why the capped reader refused a file (inside an `InvalidData` error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("larger than {0} bytes: not a certificate or key file")]
    TooLarge(usize),
    #[error("not a regular file (a symlink, FIFO or device was put there); refusing to use it")]
    NotRegular,
}

impl Refusal {
    /// The refusal inside `e`, if `e` is one.
    pub fn of(e: &std::io::Error) -> Option<Refusal> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Refusal>())
            .copied()
    }

    /// This refusal as an I/O error.
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}

/// An open file that must be regular, read to at most `max` bytes.
pub fn read_file_capped(f: File, max: usize) -> std::io::Result<Vec<u8>> {
    read_secret_file_capped(f, max).map(|mut buf| std::mem::take(&mut *buf))
}

/// [`read_file_capped`] for a private key: the bytes stay in the one
/// buffer they were read into, wiped when it is dropped.
pub fn read_secret_file_capped(f: File, max: usize) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(Refusal::NotRegular.into_io());
    }
    if meta.len() > max as u64 {
        return Err(Refusal::TooLarge(max).into_io());
    }
    // `meta.len() <= max`, a usize.
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    f.take((max as u64).saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(Refusal::TooLarge(max).into_io());
    }
    Ok(buf)
}

/// Read at most `max` bytes of `path`, following links (the operator's
/// own paths), never blocking on a FIFO, a regular file only. The error of
/// the open is returned as is (`NotFound` included).
pub fn read_path_capped(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    read_file_capped(f, max)
}

/// [`read_path_capped`], with `Ok(None)` when `path` does not exist.
pub fn read_capped(path: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    match read_path_capped(path, max) {
        Ok(buf) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_fifos_devices_dirs_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for p in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            let e = read_capped(p, 10).unwrap_err();
            assert_eq!(
                Refusal::of(&e),
                Some(Refusal::NotRegular),
                "{}",
                p.display()
            );
        }
        let big = dir.path().join("big");
        std::fs::write(&big, [0u8; 11]).unwrap();
        let e = read_capped(&big, 10).unwrap_err();
        assert_eq!(Refusal::of(&e), Some(Refusal::TooLarge(10)));
        std::fs::write(&big, b"ok").unwrap();
        assert_eq!(read_capped(&big, 10).unwrap().unwrap(), b"ok");
        assert!(read_capped(&dir.path().join("missing"), 10)
            .unwrap()
            .is_none());
        assert_eq!(
            read_path_capped(&dir.path().join("missing"), 10)
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::NotFound
        );
    }
}
