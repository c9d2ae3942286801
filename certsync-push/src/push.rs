//! `certsync-push push`: one pass, every cert to every target.
//!
//! source → consistent pair → offer → send → result:
//! 1. each `[[cert]]` a selected target needs is read once
//!    ([`crate::source::read_consistent_retry_async`], or
//!    [`crate::discover::pick_for_domain`] for `live_root` + `domain`), so
//!    every target gets the very same bytes;
//! 2. every target runs concurrently: connect, run a [`crate::session`]
//!    (bounded by the target's `session_timeout`), turn the receiver's
//!    report into a [`TargetResult`];
//! 3. results are printed in config order, one line per target followed by
//!    the receiver's step lines; the exit code is the worst over targets.
//!
//! Invariants:
//! - A target that cannot be reached, or a cert that cannot be read, is
//!   that target's failure only; the others are still served.
//! - An inconsistent live dir (certbot mid-renewal) is re-read for the
//!   settle window and then fails with the list of problems: a mixed pair
//!   is never offered.
//! - `--dry-run` and `--force` travel to the receiver in the hello; the
//!   pusher changes nothing either (the domain choice is not recorded).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certsync_core::config::{PushCert, PushConfig, Target};
use certsync_core::report::CertReport;
use certsync_core::time::now_unix;
use certsync_core::{ExitCode, Fingerprint};

use crate::discover::{choice_changed, pick_for_domain_in, Choice};
use crate::error::{source_exit, PushError};
use crate::session::{self, Mode, Offering, Options};
use crate::source::{read_consistent_retry_async, Retry, SourceError, SourcePair};
use crate::transport;

/// What `push` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOptions {
    /// Install, dry run, or offer only (`status`).
    pub mode: Mode,
    pub force: bool,
    /// `--target` names; empty = every target.
    pub targets: Vec<String>,
    /// How long an inconsistent live dir is re-read before giving up.
    pub settle: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            mode: Mode::Install,
            force: false,
            targets: Vec::new(),
            settle: Retry::default().window,
        }
    }
}

/// How one certificate fared on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// The receiver installed it (and reloaded and verified, as configured).
    Installed,
    /// The receiver already had this exact pair.
    NothingToDo,
    /// Dry run: the receiver would install it.
    WouldInstall,
    /// Held for DNS (exit 5, DANE): the receiver keeps the pair staged
    /// until a TLSA record matches it; the installed pair is unchanged.
    Held,
    /// The receiver refused or failed, or the pair could not be read.
    Failed,
}

/// One certificate on one target.
#[derive(Debug, Clone)]
pub struct CertResult {
    pub cert: String,
    /// The leaf read from the live dir, when it could be read.
    pub local: Option<Fingerprint>,
    pub state: CertState,
    pub exit: ExitCode,
    /// One line for the operator.
    pub message: String,
    /// The receiver's steps for this cert.
    pub report: Option<CertReport>,
    /// The leaf the receiver has installed, as it said in its answer.
    pub installed: Option<Fingerprint>,
}

/// One target's outcome.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub target: String,
    /// Who answered, once connected.
    pub peer: Option<String>,
    pub exit: ExitCode,
    /// Why the target as a whole failed (connect, protocol), if it did.
    pub error: Option<String>,
    pub certs: Vec<CertResult>,
}

/// `certsync-push push`: load the config, run one pass, print the result
/// lines to `out`, return the worst exit code.
pub async fn run(
    config_path: &Path,
    opts: &PushOptions,
    out: &mut dyn std::io::Write,
) -> Result<ExitCode, PushError> {
    let config = PushConfig::load(config_path)?;
    crate::units::warn_unwatched(&config);
    let results = pass(&config, config_path, opts).await?;
    out.write_all(render(&results, opts.mode.dry_run()).as_bytes())?;
    out.flush()?;
    crate::notify::pass(config.notify.as_ref(), &results, opts.mode.dry_run()).await;
    Ok(worst(&results))
}

/// The worst exit over `results` (0 when empty).
pub fn worst(results: &[TargetResult]) -> ExitCode {
    results
        .iter()
        .fold(ExitCode::Success, |acc, r| acc.worst(r.exit))
}

/// The targets `names` selects (all when empty), in config order; an
/// unknown name is a usage error.
pub fn select_targets<'a>(
    config: &'a PushConfig,
    config_path: &Path,
    names: &[String],
) -> Result<Vec<&'a Target>, PushError> {
    for name in names {
        if !config.targets.iter().any(|t| &t.name == name) {
            return Err(PushError::UnknownTarget {
                name: name.clone(),
                config: config_path.to_path_buf(),
                known: config
                    .targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(config
        .targets
        .iter()
        .filter(|t| names.is_empty() || names.contains(&t.name))
        .collect())
}

/// One pass over the selected targets; see the module doc.
pub async fn pass(
    config: &PushConfig,
    config_path: &Path,
    opts: &PushOptions,
) -> Result<Vec<TargetResult>, PushError> {
    let targets = select_targets(config, config_path, &opts.targets)?;
    // 1. Read each needed cert once, concurrently.
    let sources = read_sources(config, &targets, opts).await;

    // 2. Every target concurrently, within this pass's future (not
    //    spawned): dropping the pass (the watch daemon stopping, or
    //    restarting a target) ends its sessions and kills local receivers.
    let session_opts = Options {
        mode: opts.mode,
        force: opts.force,
    };
    let mut sessions = Vec::new();
    for t in &targets {
        let mut offerings = Vec::new();
        let mut unread = Vec::new();
        for c in config.certs_for(t) {
            match sources.iter().find(|s| s.name == c.name) {
                Some(Source { read: Ok(o), .. }) => offerings.push(o.clone()),
                Some(Source {
                    name,
                    read: Err(msg),
                    exit,
                }) => unread.push(not_sent(name, format!("not sent: {msg}"), *exit)),
                None => unread.push(not_sent(
                    &c.name,
                    "not sent: its source could not be read".into(),
                    ExitCode::Runtime,
                )),
            }
        }
        let target = (*t).clone();
        sessions.push(push_target(target, offerings, unread, session_opts));
    }
    Ok(futures_util::future::join_all(sessions).await)
}

/// One `[[cert]]` as read for a pass: what to offer, or why not.
struct Source {
    name: String,
    /// The offering, or the error's message.
    read: Result<Offering, String>,
    /// The exit code of a failed read.
    exit: ExitCode,
}

/// A cert that is not sent to a target because its source failed.
fn not_sent(cert: &str, message: String, exit: ExitCode) -> CertResult {
    CertResult {
        cert: cert.to_string(),
        local: None,
        state: CertState::Failed,
        exit,
        message,
        report: None,
        installed: None,
    }
}

/// Read every cert one of `targets` needs, each once, concurrently. A
/// reader task that fails (it cannot panic on input) leaves its cert out;
/// the pass says "its source could not be read" for it.
async fn read_sources(config: &PushConfig, targets: &[&Target], opts: &PushOptions) -> Vec<Source> {
    let retry = Retry {
        window: opts.settle,
        ..Retry::default()
    };
    let state_dir = config.state_dir();
    let mut needed: Vec<&PushCert> = Vec::new();
    for t in targets {
        for c in config.certs_for(t) {
            if !needed.iter().any(|n| n.name == c.name) {
                needed.push(c);
            }
        }
    }
    let reads = needed.iter().map(|cert| {
        let cert = (*cert).clone();
        let state_dir = state_dir.clone();
        let record = !opts.mode.dry_run();
        tokio::spawn(async move {
            let read = read_source(&cert, &state_dir, retry, record).await;
            (cert.name, read)
        })
    });
    let mut sources = Vec::new();
    for handle in reads.collect::<Vec<_>>() {
        let (name, read) = match handle.await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("a source reader task failed: {e}");
                continue;
            }
        };
        sources.push(match read {
            Ok(pair) => {
                tracing::info!(
                    cert = %name, dir = %pair.dir.display(), generation = ?pair.generation,
                    leaf = %pair.info.fingerprint, "read a consistent pair"
                );
                let offering = Offering {
                    name: name.clone(),
                    bundle: pair.bundle,
                    info: pair.info,
                };
                Source {
                    name,
                    read: Ok(offering),
                    exit: ExitCode::Success,
                }
            }
            Err(e) => {
                tracing::error!(cert = %name, "{e}");
                Source {
                    exit: source_exit(&e),
                    read: Err(e.to_string()),
                    name,
                }
            }
        });
    }
    sources
}

/// Read one `[[cert]]`'s pair: its `source`, or the live dir under
/// `live_root` that covers `domain` (logging when that choice moves).
pub async fn read_source(
    cert: &PushCert,
    state_dir: &Path,
    retry: Retry,
    record_choice: bool,
) -> Result<SourcePair, SourceError> {
    if let Some(dir) = &cert.source {
        return read_consistent_retry_async(dir, retry).await;
    }
    let (Some(root), Some(domain)) = (&cert.live_root, &cert.domain) else {
        // PushConfig::load refuses this; keep a defined error anyway.
        return Err(SourceError::NoSuchDir {
            path: PathBuf::new(),
            hint: "set `source`, or `live_root` and `domain`, in [[cert]]",
        });
    };
    let start = Instant::now();
    let dir = loop {
        let (r, d) = (root.paths().to_vec(), domain.clone());
        let picked = tokio::task::spawn_blocking(move || pick_for_domain_in(&r, &d, now_unix()))
            .await
            .map_err(|e| SourceError::Io {
                action: "search (the task failed)",
                path: root.paths().first().cloned().unwrap_or_default(),
                source: std::io::Error::other(e.to_string()),
            })?;
        match picked {
            Ok(found) => break found.dir,
            // The newest covering dir may be mid-renewal: wait as for a source.
            Err(e) if e.is_inconsistent() && start.elapsed() + retry.interval <= retry.window => {
                tokio::time::sleep(retry.interval).await;
            }
            Err(e) => return Err(e),
        }
    };
    if record_choice {
        match choice_changed(state_dir, &cert.name, &dir) {
            Ok(Choice::First) => {
                tracing::info!(cert = %cert.name, dir = %dir.display(), "{domain} is served from this live dir")
            }
            Ok(Choice::Changed { old }) => tracing::warn!(
                cert = %cert.name,
                "the live dir for {domain} changed from {} to {}", old.display(), dir.display()
            ),
            Ok(Choice::Unchanged) => {}
            // Remembering the choice only serves that log line.
            Err(e) => tracing::warn!(cert = %cert.name, "{e}"),
        }
    }
    read_consistent_retry_async(&dir, retry).await
}

/// Connect to one target and run the session.
async fn push_target(
    target: Target,
    offerings: Vec<Offering>,
    mut certs: Vec<CertResult>,
    opts: Options,
) -> TargetResult {
    let name = target.name.clone();
    let mut result = TargetResult {
        target: name.clone(),
        peer: None,
        exit: certs
            .iter()
            .fold(ExitCode::Success, |acc, c| acc.worst(c.exit)),
        error: None,
        certs: Vec::new(),
    };
    if offerings.is_empty() {
        // Each unread cert's line says why; no need to connect.
        if certs.is_empty() {
            result.error = Some("no [[cert]] to offer".into());
        }
        result.certs = certs;
        return result;
    }
    let started = Instant::now();
    let conn = match transport::connect(&target).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target = %name, "{e}");
            result.exit = result.exit.worst(e.exit_code());
            result.error = Some(e.to_string());
            result.certs = certs;
            return result;
        }
    };
    tracing::info!(target = %name, peer = %conn.peer(), "connected");
    result.peer = Some(conn.peer().to_string());
    match session::run(conn, &name, &offerings, opts, target.session_timeout()).await {
        Ok(outcome) => {
            for o in &offerings {
                certs.push(cert_result(o, &outcome, opts.mode.dry_run()));
            }
            result.exit = certs
                .iter()
                .fold(ExitCode::Success, |acc, c| acc.worst(c.exit));
            tracing::info!(
                target = %name,
                "session done in {:.2}s (exit {})",
                started.elapsed().as_secs_f64(),
                result.exit.code()
            );
        }
        Err(e) => {
            tracing::error!(target = %name, "{e}");
            result.exit = result.exit.worst(e.exit_code());
            result.error = Some(e.to_string());
        }
    }
    result.certs = certs;
    result
}

fn cert_result(o: &Offering, outcome: &session::Outcome, dry_run: bool) -> CertResult {
    let leaf = o.info.fingerprint;
    let installed = outcome.decision(&o.name).and_then(|d| d.installed);
    let report = outcome.report.certs.iter().find(|c| c.name == o.name);
    let Some(cr) = report else {
        let message = outcome
            .decision(&o.name)
            .map(|d| d.message.clone())
            .unwrap_or_else(|| "the receiver's report does not mention it".into());
        return CertResult {
            cert: o.name.clone(),
            local: Some(leaf),
            state: CertState::Failed,
            exit: ExitCode::Runtime,
            message,
            report: None,
            installed: None,
        };
    };
    let (state, message) = if cr.exit == ExitCode::Held {
        (CertState::Held, held_message(leaf, cr))
    } else if cr.exit != ExitCode::Success {
        let why = cr.failure_summary().unwrap_or_else(|| "failed".into());
        (CertState::Failed, why)
    } else if cr.nothing_to_do {
        (
            CertState::NothingToDo,
            format!("nothing to do ({} is installed)", leaf.short()),
        )
    } else if dry_run {
        (
            CertState::WouldInstall,
            format!("dry run: would install {}", leaf.short()),
        )
    } else {
        (CertState::Installed, format!("installed {}", leaf.short()))
    };
    CertResult {
        cert: o.name.clone(),
        local: Some(leaf),
        state,
        exit: cr.exit,
        message,
        report: Some(cr.clone()),
        installed,
    }
}

/// A held pair's result line: what is held and the exact TLSA records to
/// publish (the receiver's `publish`, already cleaned by the session).
fn held_message(leaf: Fingerprint, cr: &CertReport) -> String {
    let leaf = leaf.short();
    if cr.publish.is_empty() {
        return format!(
            "held for DNS: {leaf} stays staged and the installed pair keeps serving; the receiver's report says which TLSA record to publish"
        );
    }
    format!(
        "held for DNS: {leaf} stays staged and the installed pair keeps serving until DNS has: {}",
        cr.publish.join(" ; ")
    )
}

/// The human output: per target one result line, then the receiver's step
/// lines for each cert, indented.
///
/// ```text
/// mailcow: ok: mail: installed 3F:0A:…
///   mail: validate done: …
/// backup: FAILED (exit 1): cannot connect to 10.0.0.2:22: …
/// ```
pub fn render(results: &[TargetResult], dry_run: bool) -> String {
    let mut out = String::new();
    for r in results {
        let verdict = if r.exit == ExitCode::Success {
            "ok".to_string()
        } else if r.exit == ExitCode::Held {
            format!("HELD (exit {})", r.exit.code())
        } else {
            format!("FAILED (exit {})", r.exit.code())
        };
        let mut parts: Vec<String> = r
            .certs
            .iter()
            .map(|c| format!("{}: {}", c.cert, c.message))
            .collect();
        if let Some(e) = &r.error {
            parts.push(e.clone());
        }
        let dry = if dry_run { " (dry run)" } else { "" };
        out.push_str(&format!(
            "{}{dry}: {verdict}: {}\n",
            r.target,
            parts.join("; ")
        ));
        for c in &r.certs {
            if let Some(cr) = &c.report {
                for line in cr.to_string().lines() {
                    out.push_str(&format!("  {line}\n"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The pass against real receivers is in tests/tests/push_ssh.rs; here
    //! the pieces that need no peer.
    use super::*;

    const CONFIG: &str = r#"
[[cert]]
name = "mail"
source = "/nonexistent/live/npm-5"

[[target]]
name = "a"
transport = "local"

[[target]]
name = "b"
transport = "local"
"#;

    #[test]
    fn targets_are_selected_by_name_in_config_order() {
        let path = Path::new("/etc/certsync/push.toml");
        let cfg = PushConfig::from_toml(CONFIG, path).unwrap();
        let all = select_targets(&cfg, path, &[]).unwrap();
        assert_eq!(all.len(), 2);
        let one = select_targets(&cfg, path, &["b".into()]).unwrap();
        assert_eq!(one[0].name, "b");
        let err = select_targets(&cfg, path, &["c".into()]).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::Usage);
        assert!(err.to_string().contains("a, b"), "{err}");
    }

    #[test]
    fn render_gives_one_line_per_target_and_the_worst_exit() {
        let ok = TargetResult {
            target: "a".into(),
            peer: Some("root@h:22".into()),
            exit: ExitCode::Success,
            error: None,
            certs: vec![CertResult {
                cert: "mail".into(),
                local: None,
                state: CertState::NothingToDo,
                exit: ExitCode::Success,
                message: "nothing to do (AB is installed)".into(),
                report: Some(CertReport::new("mail", None)),
                installed: None,
            }],
        };
        let down = TargetResult {
            target: "b".into(),
            peer: None,
            exit: ExitCode::Runtime,
            error: Some("cannot connect to h:22".into()),
            certs: Vec::new(),
        };
        let text = render(&[ok.clone(), down.clone()], false);
        assert_eq!(
            text,
            "a: ok: mail: nothing to do (AB is installed)\nb: FAILED (exit 1): cannot connect to h:22\n"
        );
        assert_eq!(worst(&[ok, down]), ExitCode::Runtime);
        assert_eq!(worst(&[]), ExitCode::Success);
    }

    #[test]
    fn a_held_pair_says_held_with_the_record_to_publish_not_failed() {
        let line = "_25._tcp.mail.example.com. IN TLSA 3 1 1 ab12";
        let mut cr = CertReport::new("mail", None);
        cr.skipped(certsync_core::report::Step::Install, "held for DNS: …");
        cr.exit = ExitCode::Held;
        cr.publish = vec![line.into()];
        let leaf = Fingerprint::of_der(b"leaf");
        let message = held_message(leaf, &cr);
        let held = TargetResult {
            target: "mailcow".into(),
            peer: None,
            exit: ExitCode::Held,
            error: None,
            certs: vec![CertResult {
                cert: "mail".into(),
                local: Some(leaf),
                state: CertState::Held,
                exit: ExitCode::Held,
                message,
                report: Some(cr),
                installed: None,
            }],
        };
        let text = render(std::slice::from_ref(&held), false);
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("mailcow: HELD (exit 5): mail: held for DNS: "),
            "{text}"
        );
        assert!(first.ends_with(&format!("until DNS has: {line}")), "{text}");
        assert!(
            text.contains("  mail: install skipped: held for DNS"),
            "{text}"
        );
        assert_eq!(worst(&[held]), ExitCode::Held);
    }

    #[tokio::test]
    async fn a_missing_source_fails_its_targets_without_connecting() {
        let path = Path::new("push.toml");
        let cfg = PushConfig::from_toml(CONFIG, path).unwrap();
        let results = pass(&cfg, path, &PushOptions::default()).await.unwrap();
        assert_eq!(results.len(), 2);
        for r in &results {
            assert_eq!(r.exit, ExitCode::Usage, "{r:?}");
            assert!(r.peer.is_none(), "must not connect: {r:?}");
            assert!(r.certs[0].message.contains("/nonexistent/live/npm-5"));
        }
    }
}
