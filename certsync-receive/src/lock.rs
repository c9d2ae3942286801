//! One receiver at a time: an exclusive `flock` on `<staging_dir>/.lock`.
//!
//! Two pushers (or a pusher and the deploy timer) may arrive together; the
//! second waits for the first, says that it waited, and then finds the pair
//! already installed ("nothing to do"). The lock is released by the kernel
//! when the process dies, so a SIGKILLed receiver never leaves it stuck.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another certsync-receive held {path} for more than {waited:?}; is one stuck? (see `fuser {path}`)")]
    Timeout { path: PathBuf, waited: Duration },
}

/// Held while the pipeline runs; dropping it unlocks.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    /// How long we waited for another receiver, if at all.
    pub waited: Option<Duration>,
}

/// Take the session lock, calling `on_wait` once if another process holds it.
pub fn acquire(dir: &Path, timeout: Duration, on_wait: impl FnOnce()) -> Result<Lock, LockError> {
    acquire_named(dir, ".lock", timeout, on_wait)
}

/// The session lock if it is free now, else `None`.
pub fn try_acquire(dir: &Path) -> Result<Option<Lock>, LockError> {
    let file = open(&dir.join(".lock"))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(Some(Lock {
            _file: file,
            waited: None,
        }))
    } else {
        Ok(None)
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Take the lock file `name` in `dir`.
pub fn acquire_named(
    dir: &Path,
    name: &str,
    timeout: Duration,
    on_wait: impl FnOnce(),
) -> Result<Lock, LockError> {
    let path = dir.join(name);
    let file = open(&path)?;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Lock {
            _file: file,
            waited: None,
        });
    }
    on_wait();
    let start = Instant::now();
    loop {
        // SAFETY: as above.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Lock {
                _file: file,
                waited: Some(start.elapsed()),
            });
        }
        if start.elapsed() > timeout {
            return Err(LockError::Timeout {
                path,
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_locker_waits_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), Duration::from_secs(1), || {
            panic!("first must not wait")
        })
        .unwrap();
        assert!(first.waited.is_none());
        let mut said = false;
        let err = acquire(dir.path(), Duration::from_millis(200), || said = true).unwrap_err();
        assert!(said);
        assert!(matches!(err, LockError::Timeout { .. }));
        let path = dir.path().to_path_buf();
        let t = std::thread::spawn(move || {
            acquire(&path, Duration::from_secs(10), || {})
                .unwrap()
                .waited
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
        assert!(t.join().unwrap().is_some());
    }
}
