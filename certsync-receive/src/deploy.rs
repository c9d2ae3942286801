//! `deploy` and `install`: the pipeline from bytes already on this host.
//!
//! `deploy` is root's half of handoff mode (see [`crate::handoff`]): it
//! installs what the unprivileged `serve` staged, re-validating the staged
//! bytes itself. Without a request (the catch-up timer) it installs any
//! pair still staged. `install` takes a pair from local files, with the same
//! validation and install as a push.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certsync_core::bundle::{Bundle, SecretBytes};
use certsync_core::protocol::{MAX_CHAIN_BYTES, MAX_KEY_BYTES};
use certsync_core::report::{CertReport, Report, Step};
use certsync_core::validate::Force;
use certsync_core::ExitCode;

use crate::error::ReceiveError;
use crate::handoff;
use crate::lock;
use crate::pipeline::{self, PostInstall, Run};
use crate::settings::Settings;
use crate::stage::{Entry, StageError, StagingDir};

fn read_limited(path: &Path, max: usize) -> Result<Vec<u8>, ReceiveError> {
    match crate::fsutil::read_capped(path, max) {
        Ok(Some(buf)) => Ok(buf),
        Ok(None) => Err(ReceiveError::ReadInput {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        }),
        Err(e) if crate::fsutil::Refusal::of(&e).is_some() => {
            Err(ReceiveError::Usage(format!("{}: {e}", path.display())))
        }
        Err(source) => Err(ReceiveError::ReadInput {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn lock_err(e: lock::LockError) -> ReceiveError {
    ReceiveError::Runtime(e.to_string())
}

/// `certsync-receive install --name N --cert F --key F [--dry-run] [--force]`.
pub async fn install_files<P: PostInstall>(
    settings: &Settings,
    name: &str,
    cert: &Path,
    key: &Path,
    dry_run: bool,
    force: bool,
    post: &P,
) -> Result<Report, ReceiveError> {
    let spec = settings.cert_or_err(name)?;
    let chain = read_limited(cert, MAX_CHAIN_BYTES)?;
    let key_bytes = SecretBytes::new(read_limited(key, MAX_KEY_BYTES)?);
    let bundle = Bundle::new(chain, key_bytes);
    let staging = Arc::new(StagingDir::open(&settings.staging_dir)?);
    let _lock = lock::acquire(&staging, Entry::Lock, crate::serve::LOCK_TIMEOUT, || {
        tracing::info!("waiting for another certsync-receive to finish")
    })
    .await
    .map_err(lock_err)?;
    pipeline::recover(&staging, spec)?;
    let run = Run {
        settings,
        staging: &staging,
        now: SystemTime::now(),
        dry_run,
        force: if force { Force::Allowed } else { Force::No },
    };
    let mut cr = CertReport::new(name, None);
    cr.done(
        Step::Read,
        format!("{} and {}", cert.display(), key.display()),
    );
    cr.skipped(Step::Stage, "local files");
    if let Some(pair) = pipeline::validate_step(&run, spec, bundle, &mut cr) {
        pipeline::finish(&run, spec, &pair, post, &mut cr).await;
    }
    Ok(Report {
        dry_run,
        certs: vec![cr],
    })
}

/// `certsync-receive deploy [--dry-run] [--force]`. `force` is root's own
/// `--force` on this host; a request's `force` is the pusher's, and counts
/// only with `allow_remote_force = true` (the request file is written by
/// the unprivileged `serve`).
///
/// Root opens the staging dir once ([`StagingDir::open`] checks it and
/// every directory above it) and does everything else through that
/// descriptor: the request, the staged pairs, the markers, the result.
pub async fn deploy<P: PostInstall>(
    settings: &Settings,
    dry_run: bool,
    force: bool,
    post: &P,
) -> Result<Report, ReceiveError> {
    // Never created here: a staging dir that root made would be root's, and
    // every later push by the certsync user would fail on it.
    let Some(staging) = StagingDir::open_existing(&settings.staging_dir)? else {
        tracing::info!(
            "nothing to do: the staging dir {} does not exist (the package creates it, owned by certsync)",
            settings.staging_dir.display()
        );
        return Ok(Report {
            dry_run,
            certs: vec![],
        });
    };
    let staging = Arc::new(staging);
    let _deploy_lock = lock::acquire(
        &staging,
        Entry::DeployLock,
        Duration::from_secs(600),
        || tracing::info!("waiting for another deploy to finish"),
    )
    .await
    .map_err(lock_err)?;

    let request = match handoff::read_request(&staging) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("ignoring a bad deploy request: {e}");
            handoff::remove_request(&staging);
            None
        }
    };
    // Retire the request before the work: a deploy that fails must not
    // leave it behind, or certsync-deploy.path would start us again and
    // again until systemd's start limit. The result file answers `serve`.
    if request.is_some() && !dry_run {
        handoff::remove_request(&staging);
    }
    // Without a request, stay away from a pair a running `serve` is staging.
    let _serve_lock = match &request {
        Some(_) => None,
        None => {
            match staging.try_lock().map_err(lock_err)? {
                Some(l) => Some(l),
                None => {
                    tracing::info!("a certsync-receive serve session is running; it will request its own deploy");
                    return Ok(Report {
                        dry_run,
                        certs: vec![],
                    });
                }
            }
        }
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
    let mut report = Report {
        dry_run,
        certs: vec![],
    };
    for spec in &settings.certs {
        let requested = request
            .as_ref()
            .is_none_or(|r| r.names.iter().any(|n| n == &spec.name));
        if !requested {
            continue;
        }
        if !dry_run {
            // A failure is this cert's result, not the run's: `serve` is
            // waiting for a result file for every request.
            if let Err(e) = pipeline::recover(&staging, spec) {
                let mut cr = CertReport::new(&spec.name, None);
                cr.failed(Step::Install, e.to_string(), ExitCode::Runtime);
                report.certs.push(cr);
                continue;
            }
        }
        let bundle = match staging.read_staged(&spec.name) {
            Ok(b) => b,
            Err(StageError::NothingStaged(_)) => {
                if request.is_some() {
                    let mut cr = CertReport::new(&spec.name, None);
                    cr.failed(
                        Step::Read,
                        "the request names it, but nothing is staged",
                        ExitCode::Runtime,
                    );
                    report.certs.push(cr);
                } else if !dry_run && pipeline::repair_owed(&staging, &spec.name) {
                    let mut cr = CertReport::new(&spec.name, None);
                    cr.failed(
                        Step::Install,
                        format!(
                            "the installed pair at {} does not match and no backup can repair it; the next push of {} repairs it (run `certsync-push push` on the NPM host)",
                            spec.cert_path.display(),
                            spec.name
                        ),
                        ExitCode::Runtime,
                    );
                    report.certs.push(cr);
                } else if let Some(cr) = pipeline::retry_owed(&run, spec, post).await {
                    // The catch-up run: a reload that failed after an
                    // earlier install is still owed.
                    report.certs.push(cr);
                }
                continue;
            }
            Err(e) => {
                let mut cr = CertReport::new(&spec.name, None);
                cr.failed(Step::Read, e.to_string(), ExitCode::Refused);
                if !dry_run {
                    staging.clear(&spec.name);
                }
                report.certs.push(cr);
                continue;
            }
        };
        let mut cr = CertReport::new(&spec.name, None);
        cr.done(
            Step::Read,
            format!(
                "staged pair in {}",
                staging.cert_dir_display(&spec.name).display()
            ),
        );
        if let Some(pair) = pipeline::validate_step(&run, spec, bundle, &mut cr) {
            pipeline::finish(&run, spec, &pair, post, &mut cr).await;
        }
        // A pair held for DNS stays staged for the next deploy (timer).
        if !dry_run && !crate::dane::held(&cr) {
            staging.clear(&spec.name);
        }
        report.certs.push(cr);
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
        )
        .map_err(|e| ReceiveError::Runtime(e.to_string()))?;
    }
    Ok(report)
}
