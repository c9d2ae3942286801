//! `certsync-receive check`: is the installed pair valid and matching, how
//! many days are left, and does every endpoint serve it?

use std::path::Path;

use certsync_core::ExitCode;

use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    json: bool,
    warn_days: i64,
    metrics: Option<&Path>,
) -> ExitCode {
    let _ = (settings, json, warn_days, metrics);
    tracing::error!("check is not wired in yet");
    ExitCode::Runtime
}
