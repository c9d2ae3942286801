//! `deploy` and `install`: the pipeline from bytes already on this host.
//!
//! `deploy` is root's half of handoff mode (see [`crate::handoff`]): it
//! installs what the unprivileged `serve` staged, re-validating the staged
//! bytes itself. Without a request (the catch-up timer) it installs any
//! pair still staged. `install` takes a pair from local files, with the same
//! validation and install as a push.

use std::path::Path;
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
use crate::stage;

fn read_limited(path: &Path, max: usize) -> Result<Vec<u8>, ReceiveError> {
    match crate::fsutil::read_capped(path, max) {
        Ok(Some(buf)) => Ok(buf),
        Ok(None) => Err(ReceiveError::ReadInput {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(ReceiveError::Usage(format!("{}: {e}", path.display())))
        }
        Err(source) => Err(ReceiveError::ReadInput {
            path: path.to_path_buf(),
            source,
        }),
    }
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
    stage::ensure_dir(&settings.staging_dir)?;
    let dir = settings.staging_dir.clone();
    let _lock = tokio::task::spawn_blocking(move || {
        lock::acquire(&dir, crate::serve::LOCK_TIMEOUT, || {
            tracing::info!("waiting for another certsync-receive to finish")
        })
    })
    .await
    .map_err(|e| ReceiveError::Runtime(format!("lock task failed: {e}")))?
    .map_err(|e| ReceiveError::Runtime(e.to_string()))?;
    pipeline::recover(spec)?;
    let run = Run {
        settings,
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
pub async fn deploy<P: PostInstall>(
    settings: &Settings,
    dry_run: bool,
    force: bool,
    post: &P,
) -> Result<Report, ReceiveError> {
    let staging = &settings.staging_dir;
    stage::ensure_dir(staging)?;
    let dir = staging.clone();
    let _deploy_lock = tokio::task::spawn_blocking(move || {
        lock::acquire_named(&dir, ".deploy.lock", Duration::from_secs(600), || {
            tracing::info!("waiting for another deploy to finish")
        })
    })
    .await
    .map_err(|e| ReceiveError::Runtime(format!("lock task failed: {e}")))?
    .map_err(|e| ReceiveError::Runtime(e.to_string()))?;

    let request = match handoff::read_request(staging) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("ignoring a bad deploy request: {e}");
            let _ = std::fs::remove_file(staging.join(handoff::REQUEST));
            None
        }
    };
    // Retire the request before the work: a deploy that fails must not
    // leave it behind, or certsync-deploy.path would start us again and
    // again until systemd's start limit. The result file answers `serve`.
    if request.is_some() && !dry_run {
        let _ = std::fs::remove_file(staging.join(handoff::REQUEST));
    }
    // Without a request, stay away from a pair a running `serve` is staging.
    let _serve_lock = match &request {
        Some(_) => None,
        None => {
            match lock::try_acquire(staging) {
                Ok(Some(l)) => Some(l),
                Ok(None) => {
                    tracing::info!("a certsync-receive serve session is running; it will request its own deploy");
                    return Ok(Report {
                        dry_run,
                        certs: vec![],
                    });
                }
                Err(e) => return Err(ReceiveError::Runtime(e.to_string())),
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
            if let Err(e) = pipeline::recover(spec) {
                let mut cr = CertReport::new(&spec.name, None);
                cr.failed(Step::Install, e.to_string(), ExitCode::Runtime);
                report.certs.push(cr);
                continue;
            }
        }
        let bundle = match stage::read_staged(staging, &spec.name) {
            Ok(b) => b,
            Err(stage::StageError::NothingStaged(_)) => {
                if request.is_some() {
                    let mut cr = CertReport::new(&spec.name, None);
                    cr.failed(
                        Step::Read,
                        "the request names it, but nothing is staged",
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
                    stage::clear(staging, &spec.name);
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
                stage::cert_dir(staging, &spec.name).display()
            ),
        );
        if let Some(pair) = pipeline::validate_step(&run, spec, bundle, &mut cr) {
            pipeline::finish(&run, spec, &pair, post, &mut cr).await;
        }
        if !dry_run {
            stage::clear(staging, &spec.name);
        }
        report.certs.push(cr);
    }
    if report.certs.is_empty() && request.is_none() {
        tracing::info!("nothing to do: nothing is staged");
    }
    if let (Some(req), false) = (&request, dry_run) {
        handoff::write_result(
            staging,
            &handoff::Outcome {
                id: req.id.clone(),
                report: report.clone(),
            },
        )
        .map_err(|e| ReceiveError::Runtime(e.to_string()))?;
    }
    Ok(report)
}
