//! `deploy = "handoff"`: least privilege on the receiving host.
//!
//! `serve` runs as the unprivileged `certsync` user (the forced command).
//! It stages and validates, then writes `<staging_dir>/deploy.request`.
//! root's `certsync-deploy.path` unit sees the request and runs
//! `certsync-receive deploy`, which reads the staged bytes once
//! (`O_NOFOLLOW`, size-limited), validates those same bytes again — it
//! trusts nothing the unprivileged side wrote — installs, reloads and
//! verifies, and writes `deploy.result`. `serve` waits for the result with
//! the request's id and reports it back to the pusher.
//!
//! Locks: `serve` holds `<staging>/.lock` for its whole session (so a
//! second pusher waits and cannot overwrite staged bytes mid-deploy);
//! `deploy` holds `<staging>/.deploy.lock`. A `deploy` with no request (the
//! catch-up timer) only touches staged pairs when no `serve` holds `.lock`.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certsync_core::report::Report;
use serde::{Deserialize, Serialize};

use crate::stage::StageError;

/// The request file root's `certsync-deploy.path` unit watches.
pub const REQUEST: &str = "deploy.request";
/// The result `deploy` writes for `serve`.
pub const RESULT: &str = "deploy.result";
/// Largest request or result file read.
const MAX_FILE: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: String,
    /// Certificate names staged for deploy (checked against config by `deploy`).
    pub names: Vec<String>,
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub id: String,
    pub report: Report,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("handed the pair to root's deploy, but no result came within {0:?}: is certsync-deploy.path enabled on this host? (systemctl enable --now certsync-deploy.path). The pair stays staged; certsync-deploy.timer will install it")]
    Timeout(Duration),
}

/// A fresh request id.
pub fn new_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{t:x}", std::process::id())
}

fn write_json_atomic<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
    owner: Option<(u32, u32)>,
) -> Result<(), HandoffError> {
    let path = dir.join(name);
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| HandoffError::Bad {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    crate::fsutil::replace(&path, &bytes, 0o600, owner)
        .map_err(|source| StageError::Io { path, source })?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, HandoffError> {
    let f = match std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(HandoffError::Bad {
                path: path.to_path_buf(),
                reason: format!("cannot open (a symlink?): {e}"),
            })
        }
    };
    let meta = f.metadata().map_err(|e| StageError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(HandoffError::Bad {
            path: path.to_path_buf(),
            reason: "not a regular file of at most 1 MiB".into(),
        });
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| StageError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| HandoffError::Bad {
            path: path.to_path_buf(),
            reason: format!("malformed: {}", certsync_core::protocol::json_error(&e)),
        })
}

/// `serve`: ask root to deploy what is staged.
pub fn write_request(staging: &Path, req: &Request) -> Result<(), HandoffError> {
    let _ = std::fs::remove_file(staging.join(RESULT));
    write_json_atomic(staging, REQUEST, req, None)
}

/// `deploy`: the pending request, if any.
pub fn read_request(staging: &Path) -> Result<Option<Request>, HandoffError> {
    read_json(&staging.join(REQUEST))
}

/// `deploy`: publish the result (owned by the staging dir's owner, so the
/// unprivileged `serve` can read it) and retire the request.
pub fn write_result(staging: &Path, outcome: &Outcome) -> Result<(), HandoffError> {
    let owner = std::fs::symlink_metadata(staging)
        .ok()
        .map(|m| (m.uid(), m.gid()));
    // SAFETY: geteuid has no preconditions.
    let owner = if unsafe { libc::geteuid() } == 0 {
        owner
    } else {
        None
    };
    write_json_atomic(staging, RESULT, outcome, owner)?;
    let _ = std::fs::remove_file(staging.join(REQUEST));
    Ok(())
}

/// `serve`: wait for the result of request `id`.
pub async fn wait_result(
    staging: &Path,
    id: &str,
    timeout: Duration,
) -> Result<Report, HandoffError> {
    let start = Instant::now();
    let path = staging.join(RESULT);
    loop {
        if let Some(outcome) = read_json::<Outcome>(&path)? {
            if outcome.id == id {
                let _ = std::fs::remove_file(&path);
                return Ok(outcome.report);
            }
        }
        if start.elapsed() > timeout {
            return Err(HandoffError::Timeout(timeout));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_and_result_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request {
            id: new_id(),
            names: vec!["mail".into()],
            force: false,
        };
        write_request(dir.path(), &req).unwrap();
        assert_eq!(read_request(dir.path()).unwrap(), Some(req.clone()));
        let staging = dir.path().to_path_buf();
        let id = req.id.clone();
        let waiter =
            tokio::spawn(async move { wait_result(&staging, &id, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        // A result for another request is ignored.
        write_result(
            dir.path(),
            &Outcome {
                id: "other".into(),
                report: Report::default(),
            },
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let report = Report {
            dry_run: true,
            certs: vec![],
        };
        write_result(
            dir.path(),
            &Outcome {
                id: req.id.clone(),
                report: report.clone(),
            },
        )
        .unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), report);
        assert!(read_request(dir.path()).unwrap().is_none());
    }

    #[tokio::test]
    async fn waiting_is_bounded_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let e = wait_result(dir.path(), "x", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("certsync-deploy.path"), "{e}");
    }

    #[test]
    fn symlinked_request_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "{}").unwrap();
        std::os::unix::fs::symlink(dir.path().join("x"), dir.path().join(REQUEST)).unwrap();
        assert!(read_request(dir.path()).is_err());
    }
}
