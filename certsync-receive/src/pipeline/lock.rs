//! One receiver at a time: an exclusive `flock` on `<staging_dir>/.lock`
//! (and one deploy at a time on `.deploy.lock`), both opened through the
//! [`StagingDir`].
//!
//! Two pushers (or a pusher and the deploy timer) may arrive together; the
//! second waits for the first, says that it waited, and then finds the pair
//! already installed ("nothing to do"). The lock is released by the kernel
//! when the process dies, so a SIGKILLed receiver never leaves it stuck.
//!
//! The lock file is opened read-only (`flock` needs no write access) and
//! kept 0644, so a root run that creates it never locks the unprivileged
//! `serve` out; a FIFO or link planted in its place is refused at once
//! instead of hanging the opener.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pipeline::stage::{Entry, StageError, StagingDir};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file: {0}")]
    Open(#[from] StageError),
    #[error("the lock task failed: {0}")]
    Task(String),
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

fn try_flock(file: &File) -> bool {
    // SAFETY: flock on a file descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl StagingDir {
    /// Take the session lock, calling `on_wait` once if another process
    /// holds it.
    pub fn lock(&self, timeout: Duration, on_wait: impl FnOnce()) -> Result<Lock, LockError> {
        self.lock_entry(Entry::Lock, timeout, on_wait)
    }

    /// The session lock if it is free now, else `None`.
    pub fn try_lock(&self) -> Result<Option<Lock>, LockError> {
        let file = self.lock_file(Entry::Lock)?;
        Ok(try_flock(&file).then_some(Lock {
            _file: file,
            waited: None,
        }))
    }

    /// Take the lock file `entry`.
    pub fn lock_entry(
        &self,
        entry: Entry<'_>,
        timeout: Duration,
        on_wait: impl FnOnce(),
    ) -> Result<Lock, LockError> {
        let file = self.lock_file(entry)?;
        if try_flock(&file) {
            return Ok(Lock {
                _file: file,
                waited: None,
            });
        }
        on_wait();
        let start = Instant::now();
        loop {
            if try_flock(&file) {
                return Ok(Lock {
                    _file: file,
                    waited: Some(start.elapsed()),
                });
            }
            if start.elapsed() > timeout {
                return Err(LockError::Timeout {
                    path: self.display(entry),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How long a run waits for another receiver to finish with the staging
/// dir.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(300);

/// The session lock (`.lock`) for `install` and `check`: log once when
/// another receiver holds it, then wait up to `timeout`.
pub async fn session(staging: &Arc<StagingDir>, timeout: Duration) -> Result<Lock, LockError> {
    acquire(staging, Entry::Lock, timeout, || {
        tracing::info!("waiting for another certsync-receive to finish")
    })
    .await
}

/// Take the lock `entry` of `staging` on a blocking thread (the wait may
/// last up to `timeout`).
pub async fn acquire(
    staging: &Arc<StagingDir>,
    entry: Entry<'static>,
    timeout: Duration,
    on_wait: impl FnOnce() + Send + 'static,
) -> Result<Lock, LockError> {
    let s = staging.clone();
    tokio::task::spawn_blocking(move || s.lock_entry(entry, timeout, on_wait))
        .await
        .map_err(|e| LockError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn second_locker_waits_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let staging = std::sync::Arc::new(StagingDir::open(&dir.path().join("s")).unwrap());
        let first = staging
            .lock(Duration::from_secs(1), || panic!("first must not wait"))
            .unwrap();
        assert!(first.waited.is_none());
        let mut said = false;
        let err = staging
            .lock(Duration::from_millis(200), || said = true)
            .unwrap_err();
        assert!(said);
        assert!(matches!(err, LockError::Timeout { .. }));
        let s2 = staging.clone();
        let t = std::thread::spawn(move || s2.lock(Duration::from_secs(10), || {}).unwrap().waited);
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
        assert!(t.join().unwrap().is_some());
    }

    #[test]
    fn a_lock_file_left_0600_is_made_0644_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let staging = StagingDir::open(&path).unwrap();
        std::fs::write(path.join(".lock"), "").unwrap();
        std::fs::set_permissions(
            path.join(".lock"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        drop(staging.try_lock().unwrap().unwrap());
        let meta = std::fs::metadata(path.join(".lock")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o644);
    }
}
