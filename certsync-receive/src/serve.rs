//! Step 1, **read**, and step 8, **report**: the forced command's session.
//!
//! `certsync-receive serve` is what the pusher's SSH key runs
//! (`command="certsync-receive serve",restrict` in authorized_keys). It
//! speaks protocol v1 on stdin/stdout (see `certsync_core::protocol`):
//! hello, offer → want, bundles, done → report. `SSH_ORIGINAL_COMMAND` is
//! logged, never obeyed. Every frame is bounded in size, count and time, so
//! garbage, oversized, truncated or stalled input ends the session with a
//! clear error and nothing outside the staging dir touched: nothing is
//! written at all before the pusher's bundles have been read in full.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certsync_core::bundle::Bundle;
use certsync_core::config::DeployMode;
use certsync_core::protocol::{
    write_message, Decision, Hello, Limits, Message, Offer, ProtocolError, Reader, Want, Wanted,
    WireError,
};
use certsync_core::report::{CertReport, Report, Step};
use certsync_core::validate::Force;
use certsync_core::ExitCode;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::handoff;
use crate::lock;
use crate::pipeline::{self, PostInstall, Run};
use crate::settings::Settings;
use crate::stage::{Entry, StagingDir};

/// How long a session waits for another receiver to finish.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

pub const AGENT: &str = concat!("certsync-receive ", env!("CARGO_PKG_VERSION"));

/// Run one session. Returns the exit code (the report's worst, or the
/// error's).
pub async fn serve<R, W, P>(
    settings: &Settings,
    input: R,
    mut output: W,
    post: &P,
    limits: Limits,
) -> ExitCode
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    P: PostInstall,
{
    match session(settings, input, &mut output, post, limits).await {
        Ok(code) => code,
        Err((code, message)) => {
            tracing::error!("{message}");
            let _ = write_message(
                &mut output,
                &Message::Error(WireError {
                    message,
                    exit: code,
                }),
            )
            .await;
            code
        }
    }
}

type Failure = (ExitCode, String);

fn proto(e: ProtocolError) -> Failure {
    (ExitCode::Runtime, format!("protocol: {e}"))
}

/// The next message, within the session's deadline: each frame has its
/// own timeout (`read_timeout`), and the pusher's frames have
/// `session_timeout` in all (hello and offer; then again from taking the
/// lock to done), so a pusher that sends a frame now and then cannot hold
/// the receiver's lock for long.
async fn next<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
    expected: &'static str,
    deadline: tokio::time::Instant,
    limit: Duration,
) -> Result<Message, Failure> {
    match tokio::time::timeout_at(deadline, reader.next(expected)).await {
        Ok(m) => m.map_err(proto),
        Err(_) => Err((
            ExitCode::Runtime,
            format!(
                "protocol: the pusher did not finish its side of the session within {}s (session_timeout); dropped it",
                limit.as_secs()
            ),
        )),
    }
}

/// Refuse an offer that names a certificate twice: each name is decided,
/// sent and installed once.
fn check_unique(offer: &Offer) -> Result<(), Failure> {
    let mut seen = BTreeSet::new();
    for c in &offer.certs {
        if !seen.insert(c.name.as_str()) {
            return Err((
                ExitCode::Usage,
                // The reader checked the name's characters (`valid_name`).
                format!(
                    "protocol: the offer names {:?} more than once; refused",
                    c.name
                ),
            ));
        }
    }
    Ok(())
}

async fn session<R, W, P>(
    settings: &Settings,
    input: R,
    output: &mut W,
    post: &P,
    limits: Limits,
) -> Result<ExitCode, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    P: PostInstall,
{
    let limit = settings.session_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let mut reader = Reader::new(input, limits);
    write_message(output, &Message::Hello(Hello::new(AGENT, false, false)))
        .await
        .map_err(proto)?;
    let hello = match next(&mut reader, "hello", deadline, limit).await? {
        Message::Hello(h) => h,
        other => {
            return Err(proto(ProtocolError::Unexpected {
                expected: "hello",
                got: other.kind(),
            }))
        }
    };
    hello.check().map_err(proto)?;
    tracing::info!(peer = %hello.agent_for_log(), dry_run = hello.dry_run, force = hello.force, "session started");
    let force = settings.remote_force(hello.force);
    if force == Force::RemoteRefused {
        let line = format!(
            "the pusher asked for --force, but {} does not set allow_remote_force = true: a rollback will be refused (root on this host can force locally)",
            settings.config_path.display()
        );
        tracing::warn!("{line}");
        let _ = write_message(output, &Message::Log(line)).await;
    }

    let offer: Offer = match next(&mut reader, "offer", deadline, limit).await? {
        Message::Offer(o) => o,
        other => {
            return Err(proto(ProtocolError::Unexpected {
                expected: "offer",
                got: other.kind(),
            }))
        }
    };

    check_unique(&offer)?;

    // One receiver at a time, from the compare to the report.
    let staging = Arc::new(
        StagingDir::open(&settings.staging_dir).map_err(|e| (ExitCode::Runtime, e.to_string()))?,
    );
    let lock = lock::acquire(&staging, Entry::Lock, LOCK_TIMEOUT, || {})
        .await
        .map_err(|e| (ExitCode::Runtime, e.to_string()))?;
    // The limit bounds how long this pusher holds the lock: it counts from
    // here for the rest of the pusher's side (want to done).
    let deadline = tokio::time::Instant::now() + limit;
    if let Some(waited) = lock.waited {
        let line = format!(
            "waited {:.1}s for another certsync-receive to finish",
            waited.as_secs_f64()
        );
        tracing::info!("{line}");
        let _ = write_message(output, &Message::Log(line)).await;
    }

    let mut report = Report {
        dry_run: hello.dry_run,
        certs: Vec::new(),
    };
    let mut decisions = Vec::new();
    let mut reports: BTreeMap<String, CertReport> = BTreeMap::new();
    for offered in &offer.certs {
        let mut cr = CertReport::new(&offered.name, Some(offered.leaf));
        let decision = match settings.cert(&offered.name) {
            None => {
                let msg = format!(
                    "no [[cert]] named {:?} in {} on this host",
                    offered.name,
                    settings.config_path.display()
                );
                cr.failed(Step::Read, msg.clone(), ExitCode::Usage);
                Decision {
                    name: offered.name.clone(),
                    wanted: Wanted::Unknown,
                    message: msg,
                    installed: None,
                }
            }
            Some(spec) => {
                // In handoff mode root's `deploy` repairs; this side may not
                // even read key.pem.
                if settings.deploy != DeployMode::Handoff {
                    if let Err(e) = pipeline::recover(&staging, spec) {
                        tracing::error!(cert = %spec.name, "{e}");
                    }
                }
                let (wanted, message) = pipeline::decide_owed(&staging, spec, offered);
                if wanted == Wanted::Have {
                    tracing::info!(cert = %spec.name, leaf = %offered.leaf, "nothing to do: this pair is already installed");
                    cr.nothing_to_do = true;
                    cr.done(Step::Compare, message.clone());
                }
                Decision {
                    name: offered.name.clone(),
                    wanted,
                    message,
                    installed: pipeline::installed_leaf(spec),
                }
            }
        };
        decisions.push(decision);
        reports.insert(offered.name.clone(), cr);
    }
    write_message(
        output,
        &Message::Want(Want {
            certs: decisions.clone(),
        }),
    )
    .await
    .map_err(proto)?;

    // Read every requested bundle, then Done; anything else is an error.
    let mut wanted: Vec<String> = decisions
        .iter()
        .filter(|d| d.wanted == Wanted::Send)
        .map(|d| d.name.clone())
        .collect();
    let mut bundles: Vec<(String, Bundle)> = Vec::new();
    loop {
        match next(&mut reader, "bundle or done", deadline, limit).await? {
            Message::Bundle { name, bundle } => {
                let Some(pos) = wanted.iter().position(|w| *w == name) else {
                    return Err(proto(ProtocolError::Malformed {
                        kind: "bundle",
                        reason: format!("a pair for {name:?}, which was not asked for"),
                    }));
                };
                wanted.remove(pos);
                tracing::info!(cert = %name, "read {} bytes of chain and a key", bundle.chain.len());
                bundles.push((name, bundle));
            }
            Message::Done => break,
            other => {
                return Err(proto(ProtocolError::Unexpected {
                    expected: "bundle or done",
                    got: other.kind(),
                }))
            }
        }
    }
    if !wanted.is_empty() && hello.dry_run {
        // A status query: the pusher compared fingerprints only.
        for name in &wanted {
            if let Some(cr) = reports.get_mut(name) {
                cr.done(
                    Step::Compare,
                    "differs from what is installed (fingerprints only: no pair was sent)",
                );
            }
        }
        wanted.clear();
    }
    if !wanted.is_empty() {
        return Err(proto(ProtocolError::Malformed {
            kind: "done",
            reason: format!("the pusher did not send {}", wanted.join(", ")),
        }));
    }

    let run = Run {
        settings,
        staging: &staging,
        now: SystemTime::now(),
        dry_run: hello.dry_run,
        force,
    };
    let handoff = settings.deploy == DeployMode::Handoff && !run.dry_run;
    let mut staged = Vec::new();
    for (name, bundle) in bundles {
        let (Some(spec), Some(cr)) = (settings.cert(&name), reports.get_mut(&name)) else {
            continue;
        };
        cr.done(
            Step::Read,
            format!("{} bytes of chain and a key", bundle.chain.len()),
        );
        if handoff {
            if pipeline::stage_step(&run, spec, &bundle, cr).is_ok() {
                if let Some(pair) = pipeline::validate_step(&run, spec, bundle, cr) {
                    // This side may not read key.pem: root found the pair
                    // broken, so root compares and repairs.
                    let changed = if pipeline::repair_owed(&staging, &name) {
                        cr.done(
                            Step::Compare,
                            "root found the installed pair broken; root's deploy repairs it",
                        );
                        true
                    } else {
                        pipeline::compare_step(spec, &pair, cr) == Ok(true)
                    };
                    // An unchanged pair with a reload still owed goes to
                    // root's deploy too: it retries the reload.
                    if changed || pipeline::reload_owed(&staging, &name) {
                        staged.push(name.clone());
                    } else {
                        // Nothing for root to do: no key stays in staging.
                        staging.clear(&name);
                    }
                } else {
                    staging.clear(&name);
                }
            }
        } else {
            pipeline::deliver(&run, spec, bundle, post, cr).await;
        }
    }
    if handoff && !staged.is_empty() {
        // What the pusher asked; root's `deploy` weighs it against its
        // own reading of allow_remote_force, never trusting this file.
        let req = handoff::Request {
            id: handoff::new_id(),
            names: staged.clone(),
            force: hello.force,
        };
        let outcome = match handoff::write_request(&staging, &req) {
            Ok(()) => {
                tracing::info!("handed {} to root's deploy; waiting", staged.join(", "));
                handoff::wait_result(&staging, &req.id, settings.handoff_timeout).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(deployed) => {
                for d in deployed.certs {
                    if let Some(cr) = reports.get_mut(&d.name) {
                        if d.leaf.is_some() {
                            cr.leaf = d.leaf;
                        }
                        cr.exit = cr.exit.worst(d.exit);
                        cr.nothing_to_do = d.nothing_to_do;
                        if d.hook.is_some() {
                            cr.hook = d.hook;
                        }
                        // Root's warnings (DANE's among them) and, for a
                        // pair held for DNS, the records to publish.
                        cr.warnings.extend(d.warnings);
                        cr.publish = d.publish;
                        // The deploy side re-validated; keep its later steps.
                        cr.steps.extend(
                            d.steps
                                .into_iter()
                                .filter(|s| !matches!(s.step, Step::Read | Step::Stage)),
                        );
                    }
                }
            }
            Err(e) => {
                for name in &staged {
                    if let Some(cr) = reports.get_mut(name) {
                        cr.failed(Step::Install, e.to_string(), ExitCode::Runtime);
                    }
                }
            }
        }
    }
    report.certs = offer
        .certs
        .iter()
        .filter_map(|o| reports.remove(&o.name))
        .collect();
    for cr in &report.certs {
        for line in cr.to_string().lines() {
            tracing::info!("{line}");
        }
    }
    let code = report.exit();
    // Root's deploy tells what it was handed; this side tells the rest.
    let mine = Report {
        dry_run: report.dry_run,
        certs: report
            .certs
            .iter()
            .filter(|c| !staged.contains(&c.name))
            .cloned()
            .collect(),
    };
    write_message(output, &Message::Report(report))
        .await
        .map_err(proto)?;
    drop(lock);
    crate::notify::report(settings, &mine).await;
    Ok(code)
}
