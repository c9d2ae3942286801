//! What the staging dir remembers between runs about a certificate (see
//! [`Entry`]): a reload (and verify) still owed after an install, a
//! repair root found needed, and when the last install succeeded.

use certsync_core::report::{CertReport, Step, StepStatus};
use certsync_core::time::unix_seconds;
use certsync_core::{ExitCode, Fingerprint};

use super::install::{self, Dest};
use super::stage::{Entry, StagingDir};
use super::{PostInstall, Run};
use crate::settings::CertSpec;

/// Did root find this certificate's installed pair broken, with no backup?
pub fn repair_owed(staging: &StagingDir, name: &str) -> bool {
    staging.exists(Entry::RepairOwed(name))
}

/// Is a reload (and verify) of this certificate's services still owed?
/// The marker ([`Entry::ReloadOwed`]) remembers a pair that is installed
/// but not proven served (its reload or its verify failed, or the run
/// stopped in between), so that the next push, `deploy` or `check`
/// retries the reload and the verify instead of saying "nothing to do".
pub fn reload_owed(staging: &StagingDir, name: &str) -> bool {
    staging.exists(Entry::ReloadOwed(name))
}

/// Steps 6 and 7, remembering a pair that is installed but not proven
/// served (see [`reload_owed`]).
///
/// The marker is written before the reload and removed only once the
/// reload and the verify both succeeded: a failed reload, a failed verify,
/// or a crash in between leave it, so the next push, `deploy` or `check`
/// does not say "nothing to do" about a pair the daemons may not serve.
pub(super) async fn reload_and_verify<P: PostInstall>(
    run: &Run<'_>,
    spec: &CertSpec,
    leaf: Fingerprint,
    post: &P,
    report: &mut CertReport,
) {
    if run.dry_run {
        post.reload(spec, true, report).await;
        crate::systems::systemd::reload_step(&spec.reload_units, true, report).await;
        return;
    }
    let marker = Entry::ReloadOwed(&spec.name);
    if let Err(e) = run
        .staging
        .write(marker, format!("{leaf}\n").as_bytes(), 0o600)
    {
        tracing::error!(cert = %spec.name, "cannot remember the owed reload: {e}; if this run fails, run `certsync-receive deploy` once it can succeed");
    }
    let failed_before = failed_posts(report);
    post.reload(spec, false, report).await;
    crate::systems::systemd::reload_step(&spec.reload_units, false, report).await;
    post.verify(spec, leaf, report).await;
    if failed_posts(report) > failed_before {
        tracing::warn!(cert = %spec.name, marker = %run.staging.display(marker).display(), "installed but not proven served; the next deploy, check or push retries the reload and the verify");
        return;
    }
    match run.staging.remove(marker) {
        Ok(true) => tracing::debug!(cert = %spec.name, "reloaded and verified; nothing owed"),
        Ok(false) => {}
        Err(e) => tracing::error!(cert = %spec.name, "{e}"),
    }
}

/// Failed reload and verify steps so far.
fn failed_posts(report: &CertReport) -> usize {
    report
        .steps
        .iter()
        .filter(|s| matches!(s.step, Step::Reload | Step::Verify) && s.status == StepStatus::Failed)
        .count()
}

pub(super) async fn settle_owed<P: PostInstall>(
    run: &Run<'_>,
    spec: &CertSpec,
    leaf: Fingerprint,
    post: &P,
    report: &mut CertReport,
) {
    let marker = run.staging.display(Entry::ReloadOwed(&spec.name));
    tracing::info!(cert = %spec.name, marker = %marker.display(), "retrying the reload and verify owed since an earlier install");
    let what = if run.dry_run {
        "would retry it"
    } else {
        "retrying it"
    };
    report.done(
        Step::Compare,
        format!(
            "a reload is owed since an earlier install whose reload or verify failed ({}); {what}",
            marker.display()
        ),
    );
    reload_and_verify(run, spec, leaf, post, report).await;
}

/// For `deploy` and `check` when nothing new arrived: retry the reload
/// owed for `spec`, if any, against the installed leaf. `None` when no
/// reload is owed.
pub async fn retry_owed<P: PostInstall>(
    run: &Run<'_>,
    spec: &CertSpec,
    post: &P,
) -> Option<CertReport> {
    if !reload_owed(run.staging, &spec.name) {
        return None;
    }
    let mut cr = CertReport::new(&spec.name, None);
    let installed = install::read_installed(&Dest::new(&spec.cert_path, &spec.key_path));
    let leaf = match installed {
        Ok(Some(i)) => i.info.map(|c| c.fingerprint),
        Ok(None) => None,
        Err(e) => {
            cr.failed(Step::Compare, e.to_string(), ExitCode::Runtime);
            return Some(cr);
        }
    };
    let Some(leaf) = leaf else {
        cr.failed(
            Step::Compare,
            format!(
                "a reload is owed, but no readable certificate is installed at {}",
                spec.cert_path.display()
            ),
            ExitCode::Runtime,
        );
        return Some(cr);
    };
    cr.leaf = Some(leaf);
    settle_owed(run, spec, leaf, post, &mut cr).await;
    Some(cr)
}

/// Remember the time of this successful install (Unix seconds), for
/// `check --metrics`. The pair on disk stays the truth for everything
/// else; this file only answers "when".
pub(super) fn record_installed_at(run: &Run<'_>, spec: &CertSpec) {
    let entry = Entry::InstalledAt(&spec.name);
    if let Err(e) = run.staging.write(
        entry,
        format!("{}\n", unix_seconds(run.now)).as_bytes(),
        0o600,
    ) {
        // Only the metrics lose the timestamp; the install itself is done.
        tracing::warn!(cert = %spec.name, "cannot record the install time: {e}");
    }
}

/// The last successful install of `name`, in Unix seconds, if recorded.
/// Read capped and never through a link: whoever owns the staging dir may
/// have put a link to /dev/zero there.
pub fn installed_at(staging: &StagingDir, name: &str) -> Option<i64> {
    let bytes = staging.read(Entry::InstalledAt(name)).ok().flatten()?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}
