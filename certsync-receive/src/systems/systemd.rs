//! `reload_units`: systemd units on the receiving host itself (a Debian
//! postfix and dovecot from packages), reloaded after an install like
//! containers are.
//!
//! Invariants:
//! - Each unit is reloaded with `systemctl reload UNIT` and its exit code
//!   checked; a failed reload is followed by `systemctl restart UNIT`,
//!   because a daemon that refused to reload still serves the old
//!   certificate. Both failing is a failed reload step (exit 4, and the
//!   reload is owed like a container's).
//! - A reload that succeeded is not proof: Debian's `postfix.service` is
//!   `ExecReload=/bin/true`, and a daemon may keep its old pair. When
//!   verify still sees another leaf after such a reload, the unit is
//!   restarted once ([`restart_stale`]) and verify runs again, as for
//!   containers (see `crate::pipeline::reload_verify`).
//! - Unit names are checked with the config ([`check`]): no option can be
//!   smuggled in (`--…`), no path, no glob.
//! - Every call is bounded ([`UNIT_TIMEOUT`]); a dry run only says what it
//!   would run.

use std::path::Path;
use std::time::Duration;

use certsync_core::command;
use certsync_core::report::{CertReport, Step, StepStatus};
use certsync_core::ExitCode;

use crate::systems::docker::quote_output;

/// Debian's systemctl (usr-merged: /bin/systemctl is the same file).
pub const SYSTEMCTL: &str = "/usr/bin/systemctl";
/// How long one `systemctl reload` or `restart` may take.
pub const UNIT_TIMEOUT: Duration = Duration::from_secs(90);

/// A `reload_units` entry that is not a systemd unit name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "reload_units entry {0:?} is not a systemd unit name: write it whole, e.g. \"postfix.service\""
)]
pub struct BadUnit(pub String);

/// Why `unit` is not a unit name we run, if it is not.
pub fn check(unit: &str) -> Result<(), BadUnit> {
    let ok = !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit.contains('.')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '\\'));
    if ok {
        Ok(())
    } else {
        Err(BadUnit(unit.to_string()))
    }
}

/// Step 6 for host units: reload each of `units` with `systemctl`
/// (restart on failure), one report step per unit.
pub async fn reload_step(units: &[String], dry_run: bool, report: &mut CertReport) {
    reload_with(Path::new(SYSTEMCTL), units, dry_run, report).await;
}

pub(crate) async fn reload_with(
    systemctl: &Path,
    units: &[String],
    dry_run: bool,
    report: &mut CertReport,
) {
    let program = systemctl.display().to_string();
    for unit in units {
        if dry_run {
            report.skipped(
                Step::Reload,
                format!("dry run: would run `systemctl reload {unit}`"),
            );
            continue;
        }
        let why = match run(&program, "reload", unit).await {
            Ok(()) => {
                tracing::info!(unit = %unit, "reloaded");
                report.done(Step::Reload, reloaded_message(unit));
                continue;
            }
            Err(why) => why,
        };
        match run(&program, "restart", unit).await {
            Ok(()) => {
                tracing::warn!(unit = %unit, "reload failed, restarted: {why}");
                report.done(
                    Step::Reload,
                    format!("`systemctl reload {unit}` failed ({why}); restarted {unit} instead"),
                );
            }
            Err(e) => {
                let msg = format!(
                    "`systemctl reload {unit}` failed ({why}) and so did `systemctl restart {unit}` ({e}); see `journalctl -u {unit}`"
                );
                tracing::error!(unit = %unit, "{msg}");
                report.failed_on(Step::Reload, unit, msg, ExitCode::Unverified);
            }
        }
    }
}

/// The report line of a reload that succeeded (no restart).
fn reloaded_message(unit: &str) -> String {
    format!("ran `systemctl reload {unit}`")
}

/// The units of `units` whose `systemctl reload` succeeded in this run
/// (not those restarted because their reload failed).
pub fn reloaded<'u>(report: &CertReport, units: &'u [String]) -> Vec<&'u String> {
    units
        .iter()
        .filter(|unit| {
            let line = reloaded_message(unit);
            report.steps.iter().any(|s| {
                s.step == Step::Reload && s.status == StepStatus::Done && s.message == line
            })
        })
        .collect()
}

/// Restart `unit` once, because `why` (an endpoint still served the old
/// certificate after the unit's reload succeeded); one report step.
/// Whether it was restarted.
pub async fn restart_stale(
    systemctl: &Path,
    unit: &str,
    why: &str,
    report: &mut CertReport,
) -> bool {
    match run(&systemctl.display().to_string(), "restart", unit).await {
        Ok(()) => {
            tracing::warn!(unit = %unit, "restarted: {why}");
            report.done(
                Step::Reload,
                format!("`systemctl reload {unit}` succeeded, but {why}: restarted {unit}"),
            );
            true
        }
        Err(e) => {
            let msg = format!(
                "`systemctl reload {unit}` succeeded, but {why}, and `systemctl restart {unit}` failed ({e}); see `journalctl -u {unit}`"
            );
            tracing::error!(unit = %unit, "{msg}");
            report.failed_on(Step::Reload, unit, msg, ExitCode::Unverified);
            false
        }
    }
}

/// Why `systemctl VERB UNIT` did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer within {} s", UNIT_TIMEOUT.as_secs())]
    Timeout,
    /// The exit code and systemctl's stderr, quoted.
    #[error("exit {code}{stderr}")]
    Exit { code: i32, stderr: String },
    #[error("killed by a signal")]
    Signal,
}

/// `systemctl VERB UNIT`.
async fn run(program: &str, verb: &str, unit: &str) -> Result<(), UnitError> {
    let argv = [program.to_string(), verb.to_string(), unit.to_string()];
    let ran = command::run_bounded(&argv, &[], &[], UNIT_TIMEOUT)
        .await
        .map_err(|source| UnitError::Spawn {
            program: program.to_string(),
            source,
        })?;
    match (ran.exit_code, ran.timed_out) {
        (Some(0), _) => Ok(()),
        (_, true) => Err(UnitError::Timeout),
        (Some(code), _) => Err(UnitError::Exit {
            code,
            stderr: quote_output(&ran.stderr),
        }),
        (None, _) => Err(UnitError::Signal),
    }
}

/// A fake systemctl for tests: records `VERB UNIT` in `dir/calls`, fails
/// the verbs listed in `fail` (e.g. "reload postfix.service"), and runs
/// the shell line `on_restart` on each successful `restart`.
#[cfg(test)]
pub(crate) fn fake(dir: &Path, fail: &[&str], on_restart: &str) -> std::path::PathBuf {
    let path = dir.join("systemctl");
    let cases: String = fail
        .iter()
        .map(|f| format!("  \"{f}\") echo \"Job for $2 failed\" >&2; exit 1;;\n"))
        .collect();
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> {log:?}\ncase \"$1 $2\" in\n{cases}  restart\\ *) {on_restart};;\nesac\nexit 0\n",
            log = dir.join("calls")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// What a [`fake`] systemctl was asked, in order.
#[cfg(test)]
pub(crate) fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dir: &Path, fail: &[&str]) -> std::path::PathBuf {
        super::fake(dir, fail, ":")
    }

    fn units() -> Vec<String> {
        vec!["postfix.service".into(), "dovecot.service".into()]
    }

    #[tokio::test]
    async fn each_unit_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = CertReport::new("mail", None);
        reload_with(&fake(dir.path(), &[]), &units(), false, &mut r).await;
        assert_eq!(r.exit, ExitCode::Success, "{r}");
        assert_eq!(
            calls(dir.path()),
            ["reload postfix.service", "reload dovecot.service"]
        );
    }

    #[tokio::test]
    async fn a_failed_reload_restarts_and_both_failing_is_exit_4() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake(
            dir.path(),
            &[
                "reload postfix.service",
                "reload dovecot.service",
                "restart dovecot.service",
            ],
        );
        let mut r = CertReport::new("mail", None);
        reload_with(&fake, &units(), false, &mut r).await;
        assert_eq!(
            calls(dir.path()),
            [
                "reload postfix.service",
                "restart postfix.service",
                "reload dovecot.service",
                "restart dovecot.service"
            ]
        );
        assert_eq!(r.exit, ExitCode::Unverified, "{r}");
        assert_eq!(r.steps[0].status, StepStatus::Done);
        assert!(
            r.steps[0].message.contains("restarted postfix.service"),
            "{r}"
        );
        assert_eq!(r.steps[1].status, StepStatus::Failed);
        assert!(
            r.steps[1]
                .message
                .contains("Job for dovecot.service failed"),
            "{r}"
        );
    }

    #[tokio::test]
    async fn a_dry_run_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = CertReport::new("mail", None);
        reload_with(&fake(dir.path(), &[]), &units(), true, &mut r).await;
        assert!(calls(dir.path()).is_empty());
        assert!(r.steps.iter().all(|s| s.status == StepStatus::Skipped));
    }

    #[test]
    fn unit_names() {
        for good in ["postfix.service", "postfix@-.service", "dovecot.service"] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "postfix",
            "--now",
            "-x.service",
            "a b.service",
            "../x.service",
            "*.service",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
