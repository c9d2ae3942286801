//! The protocol client: one session with one receiver over a
//! [`Connection`] (SSH or local), protocol v1 as `certsync_core::protocol`
//! implements it (docs/contract.md "Protocol v1").
//!
//! ```text
//! Hello{dry_run, force} → ← Hello
//! Offer{fingerprints}   → ← Want{send | have | unknown per name}
//! Bundle… (only for send), Done → ← Log…, Report
//! ```
//!
//! Invariants:
//! - Key material crosses the wire only for a name the receiver answered
//!   `send`: an unchanged pair costs one round trip and no secret.
//! - The receiver's answer `have` is logged here as "nothing to do" (the
//!   contract's words), so the pusher's journal says it too.
//! - Nothing in this module logs or formats key bytes: offers carry
//!   SHA-256 digests, bundles are written straight from [`Bundle`].
//! - The session always ends with [`Connection::finish`], so the
//!   receiver's exit status is known even when the protocol broke, and an
//!   error says how the receiver ended (its stderr is already in our log).
//! - A session is bounded in time: each frame by [`FRAME_TIMEOUT`] (one
//!   deadline for the whole frame), the whole session, finish included, by
//!   the target's `session_timeout`. A receiver that stalls, or drips a
//!   progress line now and then, is disconnected at that deadline.
//! - Whatever the receiver says is data: its strings are cleaned
//!   ([`crate::untrusted`]) before they reach a log line, an error or the
//!   report, and its progress lines are capped per session.

use std::time::{Duration, Instant};

use certsync_core::bundle::{Bundle, CertInfo};
use certsync_core::protocol::{
    self, Decision, Hello, Limits, Message, Offer, OfferedCert, ProtocolError, Reader, Want,
    Wanted, MAX_OFFER_SANS,
};
use certsync_core::report::Report;
use certsync_core::ExitCode;
use thiserror::Error;

use crate::transport::{Connection, TransportError, FINISH_TIMEOUT};
use crate::untrusted::{self, Allow, LogBudget};

/// Our agent string in the hello (receivers log it).
pub const AGENT: &str = concat!("certsync-push ", env!("CARGO_PKG_VERSION"));

/// How long any one frame from the receiver may take. The report comes
/// after the receiver's install, container reloads and served-certificate
/// checks, and may wait for another session's lock (the receiver's
/// `lock::SESSION_TIMEOUT` is 300 s) or a handoff to root's deploy, so this is
/// generous; a dead host is caught sooner by SSH keepalives.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(600);

/// What a session may change. An offer-only session is always a dry run:
/// there is no way to ask for one that is not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Send what the receiver wants; it installs it.
    #[default]
    Install,
    /// Send what the receiver wants; it validates and says what it would
    /// do, and changes nothing (`push --dry-run`).
    DryRun,
    /// Compare fingerprints only: never send key material, even when the
    /// receiver's pair differs (`status`). The receiver is told it is a
    /// dry run.
    OfferOnly,
}

impl Mode {
    /// Whether the receiver is told to change nothing (the hello's
    /// `dry_run`).
    pub fn dry_run(self) -> bool {
        self != Mode::Install
    }
}

/// What we send and with which flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    /// The receiver accepts a pair that expires before the installed one.
    pub force: bool,
}

/// One certificate to offer: its name on the receiver, the pair's bytes
/// and the leaf's facts.
#[derive(Debug, Clone)]
pub struct Offering {
    pub name: String,
    pub bundle: Bundle,
    pub info: CertInfo,
}

impl Offering {
    /// The offer line: fingerprints and notAfter, no key material.
    pub fn offered(&self) -> OfferedCert {
        OfferedCert {
            name: self.name.clone(),
            leaf: self.info.fingerprint,
            chain_sha256: self.bundle.chain_sha256(),
            key_sha256: self.bundle.key_sha256(),
            not_after: self.info.not_after,
            sans: vec![],
        }
    }
}

/// How a session went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Who answered (`user@host:port` or `local certsync-receive`).
    pub peer: String,
    /// The receiver's agent string from its hello.
    pub agent: String,
    /// The receiver's answer to the offer, per name.
    pub decisions: Vec<Decision>,
    /// Names whose pair (key included) was sent.
    pub sent: Vec<String>,
    /// What the receiver did.
    pub report: Report,
    /// The receiver's exit status, when it had one.
    pub exit_status: Option<u32>,
}

impl Outcome {
    /// The worst exit over the report.
    pub fn exit(&self) -> ExitCode {
        self.report.exit()
    }

    pub fn decision(&self, name: &str) -> Option<&Decision> {
        self.decisions.iter().find(|d| d.name == name)
    }
}

/// Why a session did not produce a report.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error("{peer}: {source}{}", ended(*.exit_status))]
    Protocol {
        peer: String,
        #[source]
        source: ProtocolError,
        exit_status: Option<u32>,
    },
    #[error("{peer} refused the session: {message}")]
    Receiver {
        peer: String,
        message: String,
        exit: ExitCode,
    },
    #[error("{peer}: the receiver asked for {name:?}, which was not offered")]
    AskedUnoffered { peer: String, name: String },
    #[error("{peer} did not finish the session within {secs}s (session_timeout of [[target]] {target:?}); it was disconnected. The receiving host's journal says where it stopped; if its installs legitimately take this long, raise session_timeout")]
    Deadline {
        peer: String,
        target: String,
        secs: u64,
    },
    #[error("{0}")]
    Finish(#[from] TransportError),
}

fn ended(status: Option<u32>) -> String {
    match status {
        Some(code) => format!(
            " (the receiver exited with status {code}; its log lines are above, and the receiving host's journal has the rest)"
        ),
        None => " (the receiver ended without an exit status)".to_string(),
    }
}

impl SessionError {
    /// The exit code this failure stands for: the receiver's own when it
    /// said why (a config error there is its exit 2), else a runtime
    /// failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SessionError::Receiver { exit, .. } => *exit,
            SessionError::Finish(e) => e.exit_code(),
            _ => ExitCode::Runtime,
        }
    }
}

/// The least time left for collecting the receiver's exit status, even
/// when the session deadline has passed: a stuck receiver is killed
/// (local) or disconnected (SSH) after this.
const FINISH_AT_LEAST: Duration = Duration::from_secs(1);

/// Run one session: offer `certs`, send what the receiver asks for, return
/// its report. `target` names the `[[target]]` in log lines. The
/// connection is always finished (closed and its exit status collected),
/// and the whole session, finish included, ends by `limit` (plus at most
/// [`FINISH_AT_LEAST`]).
pub async fn run(
    mut conn: Connection,
    target: &str,
    certs: &[Offering],
    opts: Options,
    limit: Duration,
) -> Result<Outcome, SessionError> {
    let peer = conn.peer().to_string();
    let started = Instant::now();
    let flow = match tokio::time::timeout(limit, exchange(&mut conn, target, certs, opts)).await {
        Ok(flow) => flow,
        Err(_) => Err(Flow::Deadline),
    };
    let left = limit.saturating_sub(started.elapsed());
    let status = conn
        .finish_within(left.clamp(FINISH_AT_LEAST, FINISH_TIMEOUT.max(FINISH_AT_LEAST)))
        .await;
    match (flow, status) {
        (Ok(mut outcome), Ok(exit_status)) => {
            outcome.exit_status = exit_status;
            let said = outcome.exit().code() as u32;
            if exit_status.is_some_and(|s| s != said) {
                tracing::warn!(target = %target, "{peer} exited with status {} but reported exit {said}", exit_status.unwrap_or_default());
            }
            Ok(outcome)
        }
        (Ok(mut outcome), Err(e)) => {
            // The report is what counts; a slow goodbye is only worth a line.
            tracing::warn!(target = %target, "after the report: {e}");
            outcome.exit_status = None;
            Ok(outcome)
        }
        (Err(Flow::Protocol(source)), status) => Err(SessionError::Protocol {
            peer,
            source,
            exit_status: status.ok().flatten(),
        }),
        (Err(Flow::Receiver { message, exit }), _) => Err(SessionError::Receiver {
            peer,
            message,
            exit,
        }),
        (Err(Flow::AskedUnoffered(name)), _) => Err(SessionError::AskedUnoffered { peer, name }),
        (Err(Flow::Deadline), _) => Err(SessionError::Deadline {
            peer,
            target: target.to_string(),
            secs: limit.as_secs(),
        }),
    }
}

/// What went wrong inside the exchange, before the peer is attached.
enum Flow {
    Protocol(ProtocolError),
    Receiver { message: String, exit: ExitCode },
    AskedUnoffered(String),
    Deadline,
}

impl From<ProtocolError> for Flow {
    fn from(e: ProtocolError) -> Self {
        Flow::Protocol(match e {
            // A parser's reason may quote the receiver's bytes (serde_json:
            // "unknown variant `…`").
            ProtocolError::Malformed { kind, reason } => ProtocolError::Malformed {
                kind,
                reason: untrusted::clean(&reason),
            },
            other => other,
        })
    }
}

/// The session's frames, in the order of protocol v1 (docs/contract.md
/// "Protocol v1"): hello both ways, offer, want, the wanted bundles, done,
/// report.
async fn exchange(
    conn: &mut Connection,
    target: &str,
    certs: &[Offering],
    opts: Options,
) -> Result<Outcome, Flow> {
    let peer = conn.peer().to_string();
    let limits = Limits {
        frame_timeout: FRAME_TIMEOUT,
        ..Limits::default()
    };
    let writer = &mut conn.writer;
    let mut reader = Inbox {
        reader: Reader::new(&mut conn.reader, limits),
        target,
        budget: LogBudget::default(),
    };
    let agent = greet(writer, &mut reader, opts).await?;
    tracing::debug!(target = %target, "{peer} runs {agent}");

    let offer = Offer {
        certs: certs
            .iter()
            .map(|c| OfferedCert {
                // Only a status query needs them: the receiver judges
                // the names without the pair (and a pair it receives
                // speaks for itself).
                sans: match opts.mode {
                    Mode::OfferOnly => c.info.sans.iter().take(MAX_OFFER_SANS).cloned().collect(),
                    _ => Vec::new(),
                },
                ..c.offered()
            })
            .collect(),
    };
    for o in &offer.certs {
        tracing::info!(cert = %o.name, target = %target, leaf = %o.leaf, "offer");
    }
    send(writer, &mut reader, &Message::Offer(offer)).await?;

    let mut want: Want = match reader.next("want").await? {
        Message::Want(w) => w,
        other => return Err(unexpected("want", &other)),
    };
    untrusted::clean_want(&mut want);
    let sent = send_wanted(writer, &mut reader, certs, &want, opts).await?;
    send(writer, &mut reader, &Message::Done).await?;

    let mut report = match reader.next("report").await? {
        Message::Report(r) => r,
        other => return Err(unexpected("report", &other)),
    };
    untrusted::clean_report(&mut report);
    Ok(Outcome {
        peer,
        agent,
        decisions: want.certs,
        sent,
        report,
        exit_status: None,
    })
}

/// Send our hello, read theirs, check the version; returns the receiver's
/// agent string (cleaned).
async fn greet<W, R>(
    writer: &mut W,
    reader: &mut Inbox<'_, R>,
    opts: Options,
) -> Result<String, Flow>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    let hello = Message::Hello(Hello::new(AGENT, opts.mode.dry_run(), opts.force));
    // The receiver speaks first and may already have ended (a config
    // error, a forced command that is not certsync-receive): what it said
    // explains more than our broken pipe, so read before judging the write.
    let wrote = protocol::write_message(writer, &hello).await;
    let theirs = match reader.next("hello").await? {
        Message::Hello(h) => h,
        other => return Err(unexpected("hello", &other)),
    };
    theirs.check()?;
    let agent = untrusted::clean(&theirs.agent);
    if let Err(write_error) = wrote {
        return Err(reason_or(reader, write_error).await);
    }
    Ok(agent)
}

/// Act on each of the receiver's decisions: send the pairs it wants
/// (never in an offer-only session), log the rest. Returns the names sent.
/// A decision about a cert we did not offer ends the session.
async fn send_wanted<W, R>(
    writer: &mut W,
    reader: &mut Inbox<'_, R>,
    certs: &[Offering],
    want: &Want,
    opts: Options,
) -> Result<Vec<String>, Flow>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    let target = reader.target;
    let mut sent = Vec::new();
    for decision in &want.certs {
        let Some(cert) = certs.iter().find(|c| c.name == decision.name) else {
            return Err(Flow::AskedUnoffered(decision.name.clone()));
        };
        let leaf = cert.info.fingerprint;
        match decision.wanted {
            Wanted::Have => {
                tracing::info!(cert = %cert.name, target = %target, leaf = %leaf, "nothing to do: {target} already has this pair");
            }
            Wanted::Unknown => {
                tracing::error!(cert = %cert.name, target = %target, "{}", decision.message);
            }
            // Never send key material for a comparison, whatever else is set.
            Wanted::Send if opts.mode == Mode::OfferOnly => {
                tracing::info!(cert = %cert.name, target = %target, leaf = %leaf, "differs from what {target} has installed");
            }
            Wanted::Send => {
                let msg = Message::Bundle {
                    name: cert.name.clone(),
                    bundle: cert.bundle.clone(),
                };
                send(writer, reader, &msg).await?;
                tracing::info!(
                    cert = %cert.name, target = %target, leaf = %leaf,
                    "sent {} bytes of chain and the key{}",
                    cert.bundle.chain.len(),
                    if opts.mode.dry_run() { " (dry run)" } else { "" }
                );
                sent.push(cert.name.clone());
            }
        }
    }
    Ok(sent)
}

/// How long to look for the receiver's reason after a write to it failed.
const REASON_TIMEOUT: Duration = Duration::from_secs(2);

/// Write one message. If the write fails, the receiver has gone; if it
/// said why (an `Error` frame) before going, that is the error, not our
/// broken pipe.
async fn send<W, R>(writer: &mut W, reader: &mut Inbox<'_, R>, msg: &Message) -> Result<(), Flow>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    match protocol::write_message(writer, msg).await {
        Ok(()) => Ok(()),
        Err(write_error) => Err(reason_or(reader, write_error).await),
    }
}

/// After a failed write: the receiver's `Error` frame if it sent one,
/// else the write error.
async fn reason_or<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut Inbox<'_, R>,
    write_error: ProtocolError,
) -> Flow {
    match tokio::time::timeout(REASON_TIMEOUT, reader.next("reason")).await {
        Ok(Err(reason @ Flow::Receiver { .. })) => reason,
        _ => Flow::Protocol(write_error),
    }
}

/// What the receiver sends us, read within the protocol's limits, its
/// progress lines charged to this session's log budget.
struct Inbox<'a, R> {
    reader: Reader<R>,
    target: &'a str,
    budget: LogBudget,
}

impl<R: tokio::io::AsyncRead + Unpin> Inbox<'_, R> {
    /// The next message that is not a progress line; progress lines are
    /// relayed to our log (cleaned, within the budget), an `Error` frame
    /// ends the session.
    async fn next(&mut self, expected: &'static str) -> Result<Message, Flow> {
        let target = self.target;
        loop {
            match self.reader.next(expected).await? {
                Message::Log(line) => match self.budget.take(&line) {
                    Allow::Show(line) => tracing::info!(target = %target, "receiver: {line}"),
                    Allow::Notice(notice) => tracing::warn!(target = %target, "{notice}"),
                    Allow::Drop => {}
                },
                Message::Error(e) => {
                    return Err(Flow::Receiver {
                        message: untrusted::clean(&e.message),
                        exit: e.exit,
                    })
                }
                other => return Ok(other),
            }
        }
    }
}

fn unexpected(expected: &'static str, got: &Message) -> Flow {
    Flow::Protocol(ProtocolError::Unexpected {
        expected,
        got: got.kind(),
    })
}

#[cfg(test)]
mod tests {
    //! Sessions against the real receiver are in tests/tests/push_ssh.rs;
    //! here the peer is a scripted stand-in spawned through the local
    //! transport, to check the client's side of the exchange.
    use super::*;
    use crate::transport::local::{connect, LocalTarget};
    use certsync_core::testutil::{KeyKind, TestCa};

    fn offering() -> Offering {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let bundle = leaf.bundle();
        let info = CertInfo::of(&leaf.cert);
        Offering {
            name: "mail".into(),
            bundle,
            info,
        }
    }

    /// Run a session against `argv` (a scripted stand-in for the
    /// receiver) and return its error: every test here expects one.
    async fn fails_against(argv: &[&str]) -> SessionError {
        let conn = connect(&LocalTarget {
            argv: argv.iter().map(|a| a.to_string()).collect(),
        })
        .await
        .unwrap();
        run(
            conn,
            "t",
            &[offering()],
            Options::default(),
            Duration::from_secs(30),
        )
        .await
        .unwrap_err()
    }

    #[test]
    fn the_offer_carries_digests_not_the_key() {
        let o = offering();
        let offered = o.offered();
        assert_eq!(offered.key_sha256, o.bundle.key_sha256());
        let json = serde_json::to_string(&offered).unwrap();
        assert!(!json.contains("PRIVATE"), "{json}");
    }

    #[tokio::test]
    async fn a_peer_that_is_not_certsync_is_named_with_its_exit_status() {
        let err = fails_against(&["sh", "-c", "echo hello; exit 3"]).await;
        let msg = err.to_string();
        assert!(msg.contains("not the certsync protocol"), "{msg}");
        assert!(msg.contains("exited with status 3"), "{msg}");
        assert_eq!(err.exit_code(), ExitCode::Runtime);
    }

    #[tokio::test]
    async fn the_receivers_reason_wins_over_a_broken_pipe() {
        // A receiver that greets, says why it cannot go on, and exits
        // without reading: whichever write of ours fails, its reason and
        // exit code are what the operator sees.
        let dir = tempfile::tempdir().unwrap();
        let frames = dir.path().join("frames");
        let mut bytes = protocol::encode(&Message::Hello(Hello::new(
            "certsync-receive",
            false,
            false,
        )))
        .unwrap()
        .to_vec();
        bytes.extend_from_slice(
            &protocol::encode(&Message::Error(protocol::WireError {
                message: "receive.toml: no [[cert]] section".into(),
                exit: ExitCode::Usage,
            }))
            .unwrap(),
        );
        std::fs::write(&frames, bytes).unwrap();
        let err = fails_against(&["cat", &frames.display().to_string()]).await;
        assert!(matches!(err, SessionError::Receiver { .. }), "{err}");
        assert!(err.to_string().contains("no [[cert]] section"), "{err}");
        assert_eq!(err.exit_code(), ExitCode::Usage);
    }

    #[tokio::test]
    async fn a_peer_that_exits_at_once_is_a_closed_connection() {
        let err = fails_against(&["true"]).await;
        assert!(matches!(err, SessionError::Protocol { .. }), "{err}");
    }
}
