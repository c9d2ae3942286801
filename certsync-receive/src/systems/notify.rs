//! The receiver's `[notify]` ([`certsync_core::notify`]): which events a
//! finished run is, and their one-line messages.
//!
//! Each event is told once, by the process that did the work: `install`
//! and `deploy` tell their own report; `serve` tells the certificates it
//! finished itself (inline mode, or refused before the handoff) and leaves
//! those it handed to root's `deploy` to that `deploy`. A dry run tells
//! nothing.

use certsync_core::notify::{self, Event, Notification};
use certsync_core::report::{CertReport, Report, Step, StepStatus};
use certsync_core::ExitCode;

use crate::commands::check::CheckReport;
use crate::settings::Settings;

const SOURCE: &str = "certsync-receive";

/// Tell `report`'s failures and installs, as `[notify]` asks.
pub async fn report(settings: &Settings, report: &Report) {
    let Some(cfg) = &settings.notify else {
        return;
    };
    if report.dry_run {
        return;
    }
    let failed: Vec<CertReport> = report
        .certs
        .iter()
        .filter(|c| !matches!(c.exit, ExitCode::Success | ExitCode::Held))
        .cloned()
        .collect();
    // DANE: held for DNS is not a failure; its own event says what to publish.
    let held: Vec<CertReport> = report
        .certs
        .iter()
        .filter(|c| c.exit == ExitCode::Held)
        .cloned()
        .collect();
    let installed: Vec<CertReport> = report
        .certs
        .iter()
        .filter(|c| c.exit == ExitCode::Success && was_installed(c))
        .cloned()
        .collect();
    for (event, certs) in [
        (Event::Failure, failed),
        (Event::Held, held),
        (Event::Install, installed),
    ] {
        if certs.is_empty() {
            continue;
        }
        let message = certs.iter().map(summary).collect::<Vec<_>>().join("; ");
        let details = Report {
            dry_run: false,
            certs,
        };
        let details = serde_json::to_value(&details).unwrap_or_default();
        notify::send(cfg, &Notification::new(SOURCE, event, message, details)).await;
    }
}

/// Tell a `check` that found a problem.
pub async fn check(settings: &Settings, report: &CheckReport) {
    let Some(cfg) = &settings.notify else {
        return;
    };
    if report.exit == ExitCode::Success {
        return;
    }
    let message = report
        .certs
        .iter()
        .flat_map(|c| c.problems.iter().map(move |p| format!("{}: {p}", c.name)))
        .collect::<Vec<_>>()
        .join("; ");
    let message = if message.is_empty() {
        format!("check exit {}", report.exit.code())
    } else {
        message
    };
    let details = serde_json::to_value(report).unwrap_or_default();
    notify::send(
        cfg,
        &Notification::new(SOURCE, Event::Check, message, details),
    )
    .await;
}

fn was_installed(c: &CertReport) -> bool {
    c.steps
        .iter()
        .any(|s| s.step == Step::Install && s.status == StepStatus::Done)
}

/// `mail: installed AB:CD:…`, `mail: validate failed: …` or
/// `mail: held for DNS: publish …`.
fn summary(c: &CertReport) -> String {
    if c.exit == ExitCode::Held {
        return crate::systems::dane::held_summary(c);
    }
    if let Some(failed) = c.failure_summary() {
        return format!("{}: {failed}", c.name);
    }
    match c.leaf {
        Some(leaf) => format!("{}: installed {leaf}", c.name),
        None => format!("{}: installed", c.name),
    }
}
