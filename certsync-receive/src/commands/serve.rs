//! `certsync-receive serve`: the forced command's session, read top to
//! bottom as the protocol runs (docs/contract.md "Protocol v1"):
//!
//! 1. [`Session::hello`]: hellos both ways;
//! 2. [`Session::offer`]: the pusher's offer (names and fingerprints only);
//! 3. [`Session::lock`]: one receiver at a time, from the compare to the
//!    report;
//! 4. [`decide`]: want or have, per certificate, before any key is sent;
//! 5. [`Session::read_bundles`]: the pairs asked for, then done;
//! 6. [`run_pipeline`]: each pair through the pipeline, or staged and
//!    handed to root's `deploy` in handoff mode;
//! 7. [`Session::report`]: the report back to the pusher.
//!
//! `certsync-receive serve` is what the pusher's SSH key runs
//! (`command="certsync-receive serve",restrict` in authorized_keys).
//! `SSH_ORIGINAL_COMMAND` is logged, never obeyed. Every frame is bounded
//! in size, count and time, so garbage, oversized, truncated or stalled
//! input ends the session with a clear error and nothing outside the
//! staging dir touched: nothing is written at all before the pusher's
//! bundles have been read in full.

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
use tokio::time::Instant;

use crate::pipeline::handoff;
use crate::pipeline::lock::{self, Lock, LockError};
use crate::pipeline::stage::{Entry, StageError, StagingDir};
use crate::pipeline::{self, PostInstall, Run};
use crate::settings::Settings;

pub const AGENT: &str = concat!("certsync-receive ", env!("CARGO_PKG_VERSION"));

/// Why a session ended without a report. The pusher gets the message and
/// the exit code in an `error` frame.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("protocol: the pusher did not finish its side of the session within {}s (session_timeout); dropped it", .0.as_secs())]
    Timeout(Duration),
    /// The reader checked the name's characters (`valid_name`).
    #[error("protocol: the offer names {0:?} more than once; refused")]
    Duplicate(String),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Lock(#[from] LockError),
}

impl SessionError {
    fn exit_code(&self) -> ExitCode {
        match self {
            SessionError::Duplicate(_) => ExitCode::Usage,
            _ => ExitCode::Runtime,
        }
    }
}

/// What every step of the session returns.
type SessionStep<T> = Result<T, SessionError>;

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
    let mut session = Session::new(settings, input, &mut output, limits);
    match session.run(post).await {
        Ok(code) => code,
        Err(e) => {
            let (code, message) = (e.exit_code(), e.to_string());
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

/// One pusher's session: the settings, both ends of the channel, and the
/// deadline on the pusher's frames.
struct Session<'a, R, W> {
    settings: &'a Settings,
    reader: Reader<R>,
    output: &'a mut W,
    /// `session_timeout`: the pusher's frames have this long in all (hello
    /// and offer; then again from taking the lock to done), so a pusher
    /// that sends a frame now and then cannot hold the receiver's lock for
    /// long.
    limit: Duration,
    deadline: Instant,
}

/// What the pusher's hello asked for, weighed by this host's settings.
struct Asked {
    dry_run: bool,
    /// The pusher's `--force` as sent (root's deploy weighs it again).
    force: bool,
    /// What that `--force` is worth here.
    allowed: Force,
}

/// Every offered certificate's decision and its report so far.
struct Decided {
    decisions: Vec<Decision>,
    reports: BTreeMap<String, CertReport>,
}

impl<'a, R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<'a, R, W> {
    fn new(settings: &'a Settings, input: R, output: &'a mut W, limits: Limits) -> Self {
        let limit = settings.session_timeout;
        Session {
            settings,
            reader: Reader::new(input, limits),
            output,
            limit,
            deadline: Instant::now() + limit,
        }
    }

    /// The whole session, step by step.
    async fn run<P: PostInstall>(&mut self, post: &P) -> SessionStep<ExitCode> {
        let asked = self.hello().await?;
        let offer = self.offer().await?;
        let (staging, lock) = self.lock().await?;
        let mut decided = decide(self.settings, &staging, &offer);
        self.send(&Message::Want(Want {
            certs: decided.decisions.clone(),
        }))
        .await?;
        let (bundles, unsent) = self.read_bundles(&decided, asked.dry_run).await?;
        let run = Run {
            settings: self.settings,
            staging: &staging,
            now: SystemTime::now(),
            dry_run: asked.dry_run,
            force: asked.allowed,
        };
        judge_offers(&run, &offer, &unsent, &mut decided.reports);
        let staged = run_pipeline(&run, bundles, asked.force, post, &mut decided.reports).await;
        self.report(&offer, decided.reports, &staged, asked.dry_run, lock)
            .await
    }

    async fn send(&mut self, message: &Message) -> SessionStep<()> {
        Ok(write_message(self.output, message).await?)
    }

    /// A line for the pusher's log (best effort) and ours.
    async fn tell(&mut self, line: String) {
        let _ = write_message(self.output, &Message::Log(line)).await;
    }

    /// The next message, within the session's deadline: each frame also
    /// has its own timeout (`read_timeout`).
    async fn next(&mut self, expected: &'static str) -> SessionStep<Message> {
        match tokio::time::timeout_at(self.deadline, self.reader.next(expected)).await {
            Ok(m) => Ok(m?),
            Err(_) => Err(SessionError::Timeout(self.limit)),
        }
    }

    /// Session step 1: hellos both ways; a pusher's `--force` that does not
    /// count here is said at once.
    async fn hello(&mut self) -> SessionStep<Asked> {
        self.send(&Message::Hello(Hello::new(AGENT, false, false)))
            .await?;
        let hello = match self.next("hello").await? {
            Message::Hello(h) => h,
            other => return Err(unexpected("hello", &other)),
        };
        hello.check()?;
        tracing::info!(peer = %hello.agent_for_log(), dry_run = hello.dry_run, force = hello.force, "session started");
        let allowed = self.settings.remote_force(hello.force);
        if allowed == Force::RemoteRefused {
            let line = format!(
                "the pusher asked for --force, but {} does not set allow_remote_force = true: a rollback will be refused (root on this host can force locally)",
                self.settings.config_path.display()
            );
            tracing::warn!("{line}");
            self.tell(line).await;
        }
        Ok(Asked {
            dry_run: hello.dry_run,
            force: hello.force,
            allowed,
        })
    }

    /// Session step 2: the offer; each name is decided, sent and installed
    /// once.
    async fn offer(&mut self) -> SessionStep<Offer> {
        let offer = match self.next("offer").await? {
            Message::Offer(o) => o,
            other => return Err(unexpected("offer", &other)),
        };
        let mut seen = BTreeSet::new();
        if let Some(twice) = offer.certs.iter().find(|c| !seen.insert(c.name.as_str())) {
            return Err(SessionError::Duplicate(twice.name.clone()));
        }
        Ok(offer)
    }

    /// Session step 3: one receiver at a time, from the compare to the report.
    /// The session limit counts again from here: it bounds how long this pusher
    /// holds the lock (want to done).
    async fn lock(&mut self) -> SessionStep<(Arc<StagingDir>, Lock)> {
        let staging = Arc::new(StagingDir::open(&self.settings.staging_dir)?);
        let lock = lock::acquire(&staging, Entry::Lock, lock::SESSION_TIMEOUT, || {}).await?;
        self.deadline = Instant::now() + self.limit;
        if let Some(waited) = lock.waited {
            let line = format!(
                "waited {:.1}s for another certsync-receive to finish",
                waited.as_secs_f64()
            );
            tracing::info!("{line}");
            self.tell(line).await;
        }
        Ok((staging, lock))
    }

    /// Session step 5: every requested bundle, then `done`; anything else is an
    /// error. In a dry run the pusher may send none (a status query): the
    /// names asked for but not sent come back second.
    async fn read_bundles(
        &mut self,
        decided: &Decided,
        dry_run: bool,
    ) -> SessionStep<(Vec<(String, Bundle)>, Vec<String>)> {
        let mut wanted: Vec<String> = decided
            .decisions
            .iter()
            .filter(|d| d.wanted == Wanted::Send)
            .map(|d| d.name.clone())
            .collect();
        let mut bundles = Vec::new();
        loop {
            match self.next("bundle or done").await? {
                Message::Bundle { name, bundle } => {
                    let Some(pos) = wanted.iter().position(|w| *w == name) else {
                        return Err(ProtocolError::Malformed {
                            kind: "bundle",
                            reason: format!("a pair for {name:?}, which was not asked for"),
                        }
                        .into());
                    };
                    wanted.remove(pos);
                    tracing::info!(cert = %name, "read {} bytes of chain and a key", bundle.chain.len());
                    bundles.push((name, bundle));
                }
                Message::Done => break,
                other => return Err(unexpected("bundle or done", &other)),
            }
        }
        if !wanted.is_empty() && !dry_run {
            return Err(ProtocolError::Malformed {
                kind: "done",
                reason: format!("the pusher did not send {}", wanted.join(", ")),
            }
            .into());
        }
        Ok((bundles, wanted))
    }

    /// Session step 7: the report to the pusher, in the offer's order, and to
    /// `[notify]` what root's deploy did not already tell (the pairs `staged`
    /// for it).
    async fn report(
        &mut self,
        offer: &Offer,
        mut reports: BTreeMap<String, CertReport>,
        staged: &[String],
        dry_run: bool,
        lock: Lock,
    ) -> SessionStep<ExitCode> {
        let report = Report {
            dry_run,
            certs: offer
                .certs
                .iter()
                .filter_map(|o| reports.remove(&o.name))
                .collect(),
        };
        for cr in &report.certs {
            for line in cr.to_string().lines() {
                tracing::info!("{line}");
            }
        }
        let code = report.exit();
        let mine = Report {
            dry_run: report.dry_run,
            certs: report
                .certs
                .iter()
                .filter(|c| !staged.contains(&c.name))
                .cloned()
                .collect(),
        };
        self.send(&Message::Report(report)).await?;
        drop(lock);
        crate::systems::notify::report(self.settings, &mine).await;
        Ok(code)
    }
}

fn unexpected(expected: &'static str, got: &Message) -> SessionError {
    ProtocolError::Unexpected {
        expected,
        got: got.kind(),
    }
    .into()
}

/// Session step 4: for each offered certificate, before any key material is
/// sent: send it, or have it already (or unknown here).
fn decide(settings: &Settings, staging: &StagingDir, offer: &Offer) -> Decided {
    let mut decided = Decided {
        decisions: Vec::new(),
        reports: BTreeMap::new(),
    };
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
                    if let Err(e) = pipeline::recover(staging, spec) {
                        tracing::error!(cert = %spec.name, "{e}");
                    }
                }
                let (wanted, message) = pipeline::decide_owed(staging, spec, offered);
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
        decided.decisions.push(decision);
        decided.reports.insert(offered.name.clone(), cr);
    }
    decided
}

/// A dry run's names that were asked for but not sent (a status query):
/// each judged from its offer alone ([`pipeline::judge_offer_step`]).
fn judge_offers(
    run: &Run<'_>,
    offer: &Offer,
    unsent: &[String],
    reports: &mut BTreeMap<String, CertReport>,
) {
    for name in unsent {
        let spec = run.settings.cert(name);
        let offered = offer.certs.iter().find(|o| &o.name == name);
        if let (Some(spec), Some(offered), Some(cr)) = (spec, offered, reports.get_mut(name)) {
            pipeline::judge_offer_step(run, spec, offered, cr);
        }
    }
}

/// Session step 6: each pair through the pipeline. In handoff mode (not a dry
/// run) the pairs root has work for are handed to its `deploy` together and its
/// answer merged in; returns their names.
async fn run_pipeline<P: PostInstall>(
    run: &Run<'_>,
    bundles: Vec<(String, Bundle)>,
    force: bool,
    post: &P,
    reports: &mut BTreeMap<String, CertReport>,
) -> Vec<String> {
    let handoff = run.settings.deploy == DeployMode::Handoff && !run.dry_run;
    let mut staged = Vec::new();
    for (name, bundle) in bundles {
        let (Some(spec), Some(cr)) = (run.settings.cert(&name), reports.get_mut(&name)) else {
            continue;
        };
        cr.done(
            Step::Read,
            format!("{} bytes of chain and a key", bundle.chain.len()),
        );
        if !handoff {
            pipeline::deliver(run, spec, bundle, post, cr).await;
        } else if pipeline::deliver_handoff(run, spec, bundle, cr) == Ok(true) {
            staged.push(name);
        }
    }
    if !staged.is_empty() {
        let outcome =
            handoff::hand_over(run.staging, &staged, force, run.settings.handoff_timeout).await;
        handoff::merge(reports, &staged, outcome);
    }
    staged
}
