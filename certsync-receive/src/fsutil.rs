//! How the receiver touches the file system, in one place.
//!
//! Everything goes through a [`Dir`]: a directory opened once, and every
//! read, create, rename and unlink done relative to its file descriptor
//! (`openat`, `renameat`, `unlinkat`). A name given to a `Dir` method is one
//! path component, never followed when it is a symlink. So a directory that
//! someone else can write (the staging dir, which the `certsync` user owns)
//! can be renamed or swapped for a link after it was opened, and root still
//! works in the directory it checked.
//!
//! - [`Dir::write_new`]: a fresh file with exactly `mode` (set before the
//!   first byte), fsynced; whatever was at the name (even a planted
//!   symlink) is unlinked first and never written through
//!   (`O_CREAT|O_EXCL|O_NOFOLLOW`). A partial file is removed on error. The
//!   file belongs to whoever runs us: an owner is never inherited from the
//!   file it replaces (docs/security.md, item 8).
//! - [`Dir::replace`]: the same into a temp file beside the target, then a
//!   rename over it: readers see the old file or the new one, never half.
//! - Reading is `certsync_core::fsread`'s one capped reader
//!   ([`read_file_capped`]): a regular file only, at most `max` bytes.
//!   [`Dir::read_capped`] opens relative to the directory with
//!   `O_NOFOLLOW|O_NONBLOCK`; [`read_capped`] follows links, for the
//!   operator's own paths, and [`read_input`] is that for a file the
//!   operator named, with an error that keeps the path.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use certsync_core::fsread::{read_capped, read_file_capped, Refusal};

/// A directory opened once; see the module docs.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(s: &[u8]) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// A single path component: no `/`, not empty, not `.` or `..`.
fn component(name: &str) -> std::io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    cstr(name.as_bytes())
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn open_raw(
    at: libc::c_int,
    name: &CString,
    flags: libc::c_int,
    mode: u32,
) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the returned fd is ours alone.
    let fd = check(unsafe {
        libc::openat(
            at,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Dir {
    /// Open `path` as a directory, following links on the way: for the
    /// operator's own directories (the ssl dir, the metrics dir).
    pub fn open(path: &Path) -> std::io::Result<Dir> {
        let c = cstr(path.as_os_str().as_bytes())?;
        let fd = open_raw(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The subdirectory `name`, never through a link (`ELOOP`/`ENOTDIR`).
    pub fn subdir(&self, name: &str) -> std::io::Result<Dir> {
        let c = component(name)?;
        let fd = open_raw(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Create the subdirectory `name` with `mode`; `Ok(false)` if it exists.
    pub fn mkdir(&self, name: &str, mode: u32) -> std::io::Result<bool> {
        let c = component(name)?;
        // SAFETY: valid fd and C string.
        match check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The path this directory was opened as (for messages; never reopened).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside this directory, for messages.
    pub fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `fstat` of the directory itself.
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file()?.metadata()
    }

    fn file(&self) -> std::io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `fchmod` the directory itself.
    pub fn set_mode(&self, mode: u32) -> std::io::Result<()> {
        self.file()?
            .set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Is there an entry `name` (of any type, links not followed)?
    pub fn exists(&self, name: &str) -> bool {
        self.lstat(name).is_ok()
    }

    fn lstat(&self, name: &str) -> std::io::Result<libc::stat> {
        let c = component(name)?;
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and out pointer.
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st)
    }

    /// Open `name` for reading: never through a link, never blocking on a
    /// FIFO, and only a regular file. `Ok(None)` when it does not exist.
    pub fn open_read(&self, name: &str) -> std::io::Result<Option<File>> {
        let c = component(name)?;
        let fd = match open_raw(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_regular()),
            Err(e) => return Err(e),
        };
        let f = File::from(fd);
        if !f.metadata()?.file_type().is_file() {
            return Err(not_regular());
        }
        Ok(Some(f))
    }

    /// Read `name` (see [`Dir::open_read`]), at most `max` bytes.
    pub fn read_capped(&self, name: &str, max: usize) -> std::io::Result<Option<Vec<u8>>> {
        match self.open_read(name)? {
            Some(f) => read_file_capped(f, max).map(Some),
            None => Ok(None),
        }
    }

    /// Remove the entry `name` (a link itself, never its target).
    /// `Ok(false)` when there was none.
    pub fn unlink(&self, name: &str) -> std::io::Result<bool> {
        let c = component(name)?;
        // SAFETY: valid fd and C string.
        match check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Rename `from` to `to`, both in this directory.
    pub fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        let (f, t) = (component(from)?, component(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid fds and C strings.
        check(unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) }).map(|_| ())
    }

    /// fsync the directory (after a rename, so the rename is durable).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file()?.sync_all()
    }

    /// Write a fresh file `name`; see the module docs.
    pub fn write_new(&self, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
        self.unlink(name)?;
        let c = component(name)?;
        let fd = open_raw(
            self.fd.as_raw_fd(),
            &c,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )?;
        let mut f = File::from(fd);
        let res = (|| {
            // The umask may have narrowed the mode given to open(2).
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if let Err(e) = res {
            drop(f);
            let _ = self.unlink(name);
            return Err(e);
        }
        Ok(())
    }

    /// Replace `name` atomically with `bytes` (temp file + rename).
    pub fn replace(&self, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
        let tmp = temp_name(name);
        self.write_new(&tmp, bytes, mode)?;
        self.rename(&tmp, name).inspect_err(|_| {
            let _ = self.unlink(&tmp);
        })
    }

    /// Open (creating if needed) the lock file `name` for `flock`.
    ///
    /// Read-only, so that every user who may read it can lock it: a lock
    /// file that root created stays usable by the unprivileged `serve`
    /// (mode 0644 even under a 0077 umask, and repaired to 0644 when an
    /// older root run left it 0600). Never through a link, never blocking
    /// on a FIFO, and only a regular file.
    pub fn open_lock(&self, name: &str) -> std::io::Result<File> {
        let c = component(name)?;
        let fd = open_raw(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0o644,
        )
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                not_regular()
            } else {
                e
            }
        })?;
        let f = File::from(fd);
        let meta = f.metadata()?;
        if !meta.file_type().is_file() {
            return Err(not_regular());
        }
        // SAFETY: geteuid has no preconditions.
        if meta.uid() == unsafe { libc::geteuid() } && meta.mode() & 0o777 != 0o644 {
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(f)
    }
}

fn not_regular() -> std::io::Error {
    Refusal::NotRegular.into_io()
}

/// The temp file [`Dir::replace`] uses for `name`: `.<name>.certsync-tmp`.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.certsync-tmp")
}

/// [`temp_name`] beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(temp_name(&name))
}

/// The directory holding `path` and its last component.
fn split(path: &Path) -> std::io::Result<(Dir, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((Dir::open(parent)?, name.to_string()))
}

/// [`Dir::write_new`] at `path` (whose directory is the operator's).
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, name) = split(path)?;
    dir.write_new(&name, bytes, mode)
}

/// [`Dir::replace`] at `path` (whose directory is the operator's).
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, name) = split(path)?;
    dir.replace(&name, bytes, mode)
}

/// Why an operator's file ([`read_input`]) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Nothing at the path.
    #[error("cannot read {}: {}", .0.display(), std::io::Error::from(std::io::ErrorKind::NotFound))]
    Missing(PathBuf),
    /// Not a regular file, or over the cap: the operator gave the wrong
    /// file (a usage error, not a runtime one).
    #[error("{}: {refusal}", path.display())]
    Refused { path: PathBuf, refusal: Refusal },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ReadError {
    /// The file that could not be read.
    pub fn path(&self) -> &Path {
        match self {
            ReadError::Missing(path)
            | ReadError::Refused { path, .. }
            | ReadError::Io { path, .. } => path,
        }
    }
}

/// [`read_capped`] for a file the operator named (a flag, a config key,
/// mailcow.conf): a missing file is an error too, and the error keeps the
/// path.
pub fn read_input(path: &Path, max: usize) -> Result<Vec<u8>, ReadError> {
    match read_capped(path, max) {
        Ok(Some(buf)) => Ok(buf),
        Ok(None) => Err(ReadError::Missing(path.to_path_buf())),
        Err(e) => Err(match Refusal::of(&e) {
            Some(refusal) => ReadError::Refused {
                path: path.to_path_buf(),
                refusal,
            },
            None => ReadError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exact_mode_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("f");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        std::os::unix::fs::symlink(&victim, temp_path(&target)).unwrap();
        replace(&target, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(!temp_path(&target).exists());
        write_new(&target, b"x", 0o644).unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/f");
        assert!(replace(&missing, b"x", 0o600).is_err());
        assert!(!temp_path(&missing).exists());
    }

    #[test]
    fn the_capped_reader_refuses_fifos_devices_links_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let fifo = CString::new(dir.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).unwrap();
        std::fs::write(dir.path().join("big"), vec![b'a'; 100]).unwrap();
        std::fs::write(dir.path().join("ok"), b"ok").unwrap();
        let start = std::time::Instant::now();
        for name in ["fifo", "zero", "big"] {
            assert!(d.read_capped(name, 10).is_err(), "{name}");
        }
        assert!(read_capped(&dir.path().join("fifo"), 10).is_err());
        assert!(read_capped(Path::new("/dev/zero"), 10).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(d.read_capped("ok", 10).unwrap().unwrap(), b"ok");
        assert!(d.read_capped("missing", 10).unwrap().is_none());
        assert!(d.read_capped("../ok", 10).is_err());
        // A FIFO as a lock file is refused too, without blocking.
        assert!(d.open_lock("fifo").is_err());
        assert!(d.open_lock("zero").is_err());
    }
}
