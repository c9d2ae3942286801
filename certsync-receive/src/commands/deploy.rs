//! `certsync-receive deploy`: root's half of handoff mode (see
//! [`crate::pipeline::handoff`]). It installs what the unprivileged `serve`
//! staged, re-validating the staged bytes itself. Without a request (the
//! catch-up timer) it installs any pair still staged, and retries a reload
//! still owed.
//!
//! Root opens the staging dir once ([`StagingDir::open_existing`] checks it
//! and every directory above it) and does everything else through that
//! descriptor: the request, the staged pairs, the markers, the result.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certsync_core::report::{CertReport, Report, Step};
use certsync_core::validate::Force;
use certsync_core::ExitCode;

use crate::error::ReceiveError;
use crate::pipeline::handoff::{self, Request};
use crate::pipeline::lock::{self, Lock};
use crate::pipeline::stage::{Entry, StageError, StagingDir};
use crate::pipeline::{self, PostInstall, Run};
use crate::settings::{CertSpec, Settings};

/// How long a deploy waits for another deploy to finish.
const DEPLOY_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// `certsync-receive deploy [--dry-run] [--force]`. `force` is root's own
/// `--force` on this host; a request's `force` is the pusher's, and counts
/// only with `allow_remote_force = true` (the request file is written by
/// the unprivileged `serve`).
pub async fn deploy<P: PostInstall>(
    settings: &Settings,
    dry_run: bool,
    force: bool,
    post: &P,
) -> Result<Report, ReceiveError> {
    let mut report = Report {
        dry_run,
        certs: vec![],
    };
    // Never created here: a staging dir that root made would be root's, and
    // every later push by the certsync user would fail on it.
    let Some(staging) = StagingDir::open_existing(&settings.staging_dir)? else {
        tracing::info!(
            "nothing to do: the staging dir {} does not exist (the package creates it, owned by certsync)",
            settings.staging_dir.display()
        );
        return Ok(report);
    };
    let staging = Arc::new(staging);
    let _deploy_lock = lock::acquire(&staging, Entry::DeployLock, DEPLOY_LOCK_TIMEOUT, || {
        tracing::info!("waiting for another deploy to finish")
    })
    .await?;
    let request = take_request(&staging, dry_run);
    // Without a request, stay away from a pair a running `serve` is staging.
    let _serve_lock = match &request {
        Some(_) => None,
        None => match idle(&staging)? {
            Some(l) => Some(l),
            None => return Ok(report),
        },
    };
    let force = if force {
        Force::Allowed
    } else {
        settings.remote_force(request.as_ref().is_some_and(|r| r.force))
    };
    let run = Run {
        settings,
        staging: &staging,
        now: SystemTime::now(),
        dry_run,
        force,
    };
    let requested = |spec: &&CertSpec| {
        request
            .as_ref()
            .is_none_or(|r| r.names.iter().any(|n| n == &spec.name))
    };
    for spec in settings.certs.iter().filter(requested) {
        if let Some(cr) = deploy_one(&run, spec, request.is_some(), post).await {
            report.certs.push(cr);
        }
    }
    if report.certs.is_empty() && request.is_none() {
        tracing::info!("nothing to do: nothing is staged");
    }
    if let (Some(req), false) = (&request, dry_run) {
        handoff::write_result(
            &staging,
            &handoff::Outcome {
                id: req.id.clone(),
                report: report.clone(),
            },
        )?;
    }
    Ok(report)
}

/// The pending request, if any. A bad one is logged and removed; a good
/// one is retired before the work (not in a dry run): a deploy that fails
/// must not leave it behind, or certsync-deploy.path would start us again
/// and again until systemd's start limit. The result file answers `serve`.
fn take_request(staging: &StagingDir, dry_run: bool) -> Option<Request> {
    let request = match handoff::read_request(staging) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("ignoring a bad deploy request: {e}");
            handoff::remove_request(staging);
            None
        }
    };
    if request.is_some() && !dry_run {
        handoff::remove_request(staging);
    }
    request
}

/// The session lock when no `serve` holds it; `None` (logged) when one does.
fn idle(staging: &StagingDir) -> Result<Option<Lock>, ReceiveError> {
    let lock = staging.try_lock()?;
    if lock.is_none() {
        tracing::info!(
            "a certsync-receive serve session is running; it will request its own deploy"
        );
    }
    Ok(lock)
}

/// One certificate: repair, read what is staged, then validate and run the
/// rest of the pipeline. A failure is this cert's result, not the run's:
/// `serve` is waiting for a result file for every request. `None` when
/// there is nothing to report (nothing staged, nothing owed).
async fn deploy_one<P: PostInstall>(
    run: &Run<'_>,
    spec: &CertSpec,
    requested: bool,
    post: &P,
) -> Option<CertReport> {
    let mut cr = CertReport::new(&spec.name, None);
    if !run.dry_run {
        if let Err(e) = pipeline::recover(run.staging, spec) {
            cr.failed(Step::Install, e.to_string(), ExitCode::Runtime);
            return Some(cr);
        }
    }
    let bundle = match run.staging.read_staged(&spec.name) {
        Ok(b) => b,
        Err(StageError::NothingStaged(_)) => {
            return nothing_staged(run, spec, requested, post).await
        }
        Err(e) => {
            cr.failed(Step::Read, e.to_string(), ExitCode::Refused);
            if !run.dry_run {
                run.staging.clear(&spec.name);
            }
            return Some(cr);
        }
    };
    cr.done(
        Step::Read,
        format!(
            "staged pair in {}",
            run.staging.cert_dir_display(&spec.name).display()
        ),
    );
    if let Ok(pair) = pipeline::validate_step(run, spec, bundle, &mut cr) {
        pipeline::finish(run, spec, &pair, post, &mut cr).await;
    }
    // A pair held for DNS stays staged for the next deploy (timer).
    if !run.dry_run && !crate::systems::dane::held(&cr) {
        run.staging.clear(&spec.name);
    }
    Some(cr)
}

/// Nothing staged for `spec`: a request that names it failed; else a
/// repair or a reload may still be owed (the catch-up run).
async fn nothing_staged<P: PostInstall>(
    run: &Run<'_>,
    spec: &CertSpec,
    requested: bool,
    post: &P,
) -> Option<CertReport> {
    let mut cr = CertReport::new(&spec.name, None);
    if requested {
        cr.failed(
            Step::Read,
            "the request names it, but nothing is staged",
            ExitCode::Runtime,
        );
        Some(cr)
    } else if !run.dry_run && pipeline::repair_owed(run.staging, &spec.name) {
        cr.failed(
            Step::Install,
            format!(
                "the installed pair at {} does not match and no backup can repair it; the next push of {} repairs it (run `certsync-push push` on the NPM host)",
                spec.cert_path.display(),
                spec.name
            ),
            ExitCode::Runtime,
        );
        Some(cr)
    } else {
        pipeline::retry_owed(run, spec, post).await
    }
}
