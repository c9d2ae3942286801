//! The pusher's `[notify]` ([`certsync_core::notify`]): a pass's
//! installs, failures and pairs held for DNS (event `held`), and `status`
//! problems (event `check`).
//!
//! The receiver's words (messages, its peer name) are data from a host we
//! do not control: they reach a notification only through
//! [`untrusted::clean`], as they reach our log. The receiver's raw report
//! is not forwarded; `details` holds this side's own reading of it.

use certsync_core::notify::{self, Event, Notification, NotifyConfig};
use certsync_core::{ExitCode, Fingerprint};
use serde::Serialize;

use crate::push::{CertState, TargetResult};
use crate::status::StatusLine;
use crate::untrusted;

const SOURCE: &str = "certsync-push";

/// One certificate on one target, as told.
#[derive(Debug, Serialize)]
struct Told {
    target: String,
    cert: String,
    state: CertState,
    exit: ExitCode,
    local: Option<Fingerprint>,
    installed: Option<Fingerprint>,
    message: String,
}

/// Tell a push pass's failures, holds and installs (nothing for a dry run).
pub async fn pass(cfg: Option<&NotifyConfig>, results: &[TargetResult], dry_run: bool) {
    let Some(cfg) = cfg else {
        return;
    };
    if dry_run {
        return;
    }
    let mut failed = Vec::new();
    let mut installed = Vec::new();
    // DANE: a pair held for DNS is not a failure; its message names the
    // TLSA record to publish.
    let mut held = Vec::new();
    for r in results {
        if let (Some(error), true) = (&r.error, r.certs.is_empty()) {
            failed.push(Told {
                target: r.target.clone(),
                cert: "*".into(),
                state: CertState::Failed,
                exit: r.exit,
                local: None,
                installed: None,
                message: untrusted::clean(error),
            });
        }
        for c in &r.certs {
            let told = Told {
                target: r.target.clone(),
                cert: c.cert.clone(),
                state: c.state,
                exit: c.exit,
                local: c.local,
                installed: c.installed,
                message: untrusted::clean(&c.message),
            };
            match (c.state, c.exit) {
                (CertState::Held, ExitCode::Held) => held.push(told),
                (CertState::Failed, _)
                | (_, ExitCode::Runtime | ExitCode::Usage)
                | (_, ExitCode::Refused | ExitCode::Unverified) => failed.push(told),
                (CertState::Installed, ExitCode::Success) => installed.push(told),
                _ => {}
            }
        }
    }
    for (event, told) in [
        (Event::Failure, failed),
        (Event::Held, held),
        (Event::Install, installed),
    ] {
        if told.is_empty() {
            continue;
        }
        let message = told
            .iter()
            .map(|t| format!("{} → {}: {}", t.cert, t.target, t.message))
            .collect::<Vec<_>>()
            .join("; ");
        let details = serde_json::json!({ "results": told });
        notify::send(cfg, &Notification::new(SOURCE, event, message, details)).await;
    }
}

/// Tell a `status` whose targets are not all up to date.
pub async fn status(cfg: Option<&NotifyConfig>, lines: &[StatusLine], code: ExitCode) {
    let Some(cfg) = cfg else {
        return;
    };
    if code == ExitCode::Success {
        return;
    }
    let message = lines
        .iter()
        .filter(|l| l.state != "up_to_date")
        .map(|l| {
            format!(
                "{} → {}: {} {}",
                l.cert,
                l.target,
                l.state,
                untrusted::clean(&l.message)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let details = serde_json::json!({ "status": lines });
    notify::send(
        cfg,
        &Notification::new(SOURCE, Event::Check, message, details),
    )
    .await;
}
