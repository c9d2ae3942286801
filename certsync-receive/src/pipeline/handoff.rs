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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use certsync_core::report::{CertReport, Report, Step};
use certsync_core::ExitCode;
use serde::{Deserialize, Serialize};

use crate::pipeline::stage::{Entry, StageError, StagingDir};

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
    Bad {
        path: std::path::PathBuf,
        reason: String,
    },
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

/// `serve`: hand the `staged` pairs to root's deploy and wait for its
/// report. `force` is what the pusher asked; root's `deploy` weighs it
/// against its own reading of allow_remote_force, never trusting this file.
pub async fn hand_over(
    staging: &StagingDir,
    staged: &[String],
    force: bool,
    timeout: Duration,
) -> Result<Report, HandoffError> {
    let req = Request {
        id: new_id(),
        names: staged.to_vec(),
        force,
    };
    write_request(staging, &req)?;
    tracing::info!("handed {} to root's deploy; waiting", staged.join(", "));
    wait_result(staging, &req.id, timeout).await
}

/// `serve`: fold root's answer into this session's reports. Root's deploy
/// re-read and re-validated the pair, so its steps after read and stage
/// replace nothing and follow this side's; a failed handoff fails the
/// install of every pair handed over.
pub fn merge(
    reports: &mut BTreeMap<String, CertReport>,
    staged: &[String],
    outcome: Result<Report, HandoffError>,
) {
    let deployed = match outcome {
        Ok(deployed) => deployed,
        Err(e) => {
            for name in staged {
                if let Some(cr) = reports.get_mut(name) {
                    cr.failed(Step::Install, e.to_string(), ExitCode::Runtime);
                }
            }
            return;
        }
    };
    for d in deployed.certs {
        let Some(cr) = reports.get_mut(&d.name) else {
            continue;
        };
        if d.leaf.is_some() {
            cr.leaf = d.leaf;
        }
        cr.exit = cr.exit.worst(d.exit);
        cr.nothing_to_do = d.nothing_to_do;
        if d.hook.is_some() {
            cr.hook = d.hook;
        }
        // Root's warnings (DANE's among them) and, for a pair held for
        // DNS, the records to publish.
        cr.warnings.extend(d.warnings);
        cr.publish = d.publish;
        cr.steps.extend(
            d.steps
                .into_iter()
                .filter(|s| !matches!(s.step, Step::Read | Step::Stage)),
        );
    }
}

fn write_json<T: Serialize>(
    staging: &StagingDir,
    entry: Entry<'_>,
    value: &T,
    mode: u32,
) -> Result<(), HandoffError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| HandoffError::Bad {
        path: staging.display(entry),
        reason: e.to_string(),
    })?;
    staging.write(entry, &bytes, mode)?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(
    staging: &StagingDir,
    entry: Entry<'_>,
) -> Result<Option<T>, HandoffError> {
    let Some(buf) = staging.read(entry)? else {
        return Ok(None);
    };
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| HandoffError::Bad {
            path: staging.display(entry),
            reason: format!("malformed: {}", certsync_core::protocol::json_error(&e)),
        })
}

/// `serve`: ask root to deploy what is staged.
pub fn write_request(staging: &StagingDir, req: &Request) -> Result<(), HandoffError> {
    staging.remove(Entry::Result)?;
    write_json(staging, Entry::Request, req, 0o600)
}

/// `deploy`: the pending request, if any.
pub fn read_request(staging: &StagingDir) -> Result<Option<Request>, HandoffError> {
    read_json(staging, Entry::Request)
}

/// `deploy`: retire the request (best effort).
pub fn remove_request(staging: &StagingDir) {
    let _ = staging.remove(Entry::Request);
}

/// `deploy`: publish the result and retire the request.
///
/// Written through the staging dir's descriptor that root opened and
/// checked, so a swapped staging dir cannot redirect it. The file stays
/// root's, mode 0644, so the unprivileged `serve` (the dir's owner) can
/// read and remove it without any chown; a report holds no key material.
pub fn write_result(staging: &StagingDir, outcome: &Outcome) -> Result<(), HandoffError> {
    write_json(staging, Entry::Result, outcome, 0o644)?;
    remove_request(staging);
    Ok(())
}

/// `serve`: wait for the result of request `id`.
pub async fn wait_result(
    staging: &StagingDir,
    id: &str,
    timeout: Duration,
) -> Result<Report, HandoffError> {
    let start = Instant::now();
    loop {
        if let Some(outcome) = read_json::<Outcome>(staging, Entry::Result)? {
            if outcome.id == id {
                let _ = staging.remove(Entry::Result);
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
        let root = tempfile::tempdir().unwrap();
        let dir = std::sync::Arc::new(StagingDir::open(&root.path().join("s")).unwrap());
        let req = Request {
            id: new_id(),
            names: vec!["mail".into()],
            force: false,
        };
        write_request(&dir, &req).unwrap();
        assert_eq!(read_request(&dir).unwrap(), Some(req.clone()));
        let staging = dir.clone();
        let id = req.id.clone();
        let waiter =
            tokio::spawn(async move { wait_result(&staging, &id, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        // A result for another request is ignored.
        write_result(
            &dir,
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
            &dir,
            &Outcome {
                id: req.id.clone(),
                report: report.clone(),
            },
        )
        .unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), report);
        assert!(read_request(&dir).unwrap().is_none());
    }

    #[tokio::test]
    async fn waiting_is_bounded_and_explained() {
        let root = tempfile::tempdir().unwrap();
        let dir = StagingDir::open(&root.path().join("s")).unwrap();
        let e = wait_result(&dir, "x", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("certsync-deploy.path"), "{e}");
    }

    #[test]
    fn symlinked_request_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = StagingDir::open(&root.path().join("s")).unwrap();
        std::fs::write(root.path().join("x"), "{}").unwrap();
        std::os::unix::fs::symlink(root.path().join("x"), root.path().join("s/deploy.request"))
            .unwrap();
        assert!(read_request(&dir).is_err());
    }
}
