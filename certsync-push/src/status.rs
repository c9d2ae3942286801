//! `certsync-push status [--json]`: per cert × target, the fingerprint in
//! the live dir against what the receiver has installed.
//!
//! The receiver is the only authority on what it has installed (it hashes
//! its files, not a state file), so status asks it: a dry-run session
//! offers the fingerprints, and the receiver's answer is the comparison —
//! `have` means the installed pair is the local one; `send` means it
//! differs (or is missing), and the answer names the installed leaf.
//! Status never sends key material: it ends the session after the answer,
//! and the receiver judges a differing pair from the offer alone (its
//! names, which status offers as `sans`, its expiry, rollback): a pair it
//! would refuse is `would_be_refused`, exit 3. The key and the chain are
//! judged only by `certsync-push push --dry-run`, which sends them. It
//! changes nothing on either side.

use std::path::Path;

use certsync_core::config::PushConfig;
use certsync_core::{ExitCode, Fingerprint};
use serde::Serialize;

use crate::error::PushError;
use crate::push::{self, CertState, PushOptions, TargetResult};
use crate::session::Mode;

/// One cert on one target.
#[derive(Debug, Clone, Serialize)]
pub struct StatusLine {
    pub target: String,
    pub cert: String,
    /// `up_to_date`, `differs`, `would_be_refused` or `unknown`.
    pub state: &'static str,
    /// The leaf in the live dir.
    pub local: Option<Fingerprint>,
    /// The installed leaf, as the receiver names it (none when nothing is
    /// installed or the target could not be asked).
    pub installed: Option<Fingerprint>,
    pub message: String,
}

/// Build the lines from a dry-run pass.
pub fn lines(results: &[TargetResult]) -> Vec<StatusLine> {
    let mut out = Vec::new();
    for r in results {
        if r.certs.is_empty() {
            out.push(StatusLine {
                target: r.target.clone(),
                cert: "*".into(),
                state: "unknown",
                local: None,
                installed: None,
                message: r.error.clone().unwrap_or_default(),
            });
        }
        for c in &r.certs {
            let (state, installed) = match c.state {
                CertState::NothingToDo => ("up_to_date", c.local),
                CertState::WouldInstall | CertState::Installed => ("differs", c.installed),
                // `status` sends no pair, so no receiver holds one; a
                // held answer still differs from what is installed.
                CertState::Held => ("differs", c.installed),
                CertState::Failed if c.report.is_some() => ("would_be_refused", None),
                CertState::Failed => ("unknown", None),
            };
            let message = match (&r.error, c.state) {
                (Some(e), CertState::Failed) if c.report.is_none() => e.clone(),
                _ => c.message.clone(),
            };
            out.push(StatusLine {
                target: r.target.clone(),
                cert: c.cert.clone(),
                state,
                local: c.local,
                installed,
                message,
            });
        }
    }
    out
}

/// Text: one line per cert × target.
pub fn render(lines: &[StatusLine]) -> String {
    let fp = |f: &Option<Fingerprint>| f.map(|f| f.to_string()).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    for l in lines {
        let installed = match l.state {
            "up_to_date" => fp(&l.installed),
            "differs" | "would_be_refused" => match &l.installed {
                Some(f) => f.to_string(),
                None => "none".into(),
            },
            _ => "unknown".into(),
        };
        out.push_str(&format!(
            "{} → {}: {}\n  local     {}\n  installed {}\n  {}\n",
            l.cert,
            l.target,
            l.state.replace('_', " "),
            fp(&l.local),
            installed,
            l.message
        ));
    }
    out
}

/// `certsync-push status`: exit 0 when every target has every cert, 1
/// when one differs or cannot be asked (the worst code of the dry run
/// otherwise: 2 for config errors, 3 for a pair the receiver would refuse).
pub async fn run(
    config_path: &Path,
    json: bool,
    out: &mut dyn std::io::Write,
) -> Result<ExitCode, PushError> {
    let config = PushConfig::load(config_path)?;
    crate::units::warn_unwatched(&config);
    let opts = PushOptions {
        mode: Mode::OfferOnly,
        ..PushOptions::default()
    };
    let results = push::pass(&config, config_path, &opts).await?;
    let lines = lines(&results);
    if json {
        let text = serde_json::to_string_pretty(&lines)
            .map_err(|e| PushError::Output(std::io::Error::other(e)))?;
        writeln!(out, "{text}")?;
    } else {
        out.write_all(render(&lines).as_bytes())?;
    }
    out.flush()?;
    let mut code = push::worst(&results);
    if code == ExitCode::Success && lines.iter().any(|l| l.state != "up_to_date") {
        code = ExitCode::Runtime;
    }
    crate::notify::status(config.notify.as_ref(), &lines, code).await;
    Ok(code)
}
