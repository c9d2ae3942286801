//! The receiving pipeline, one function per step (docs/contract.md
//! "The receiving pipeline"): stage → validate → compare → install →
//! reload → verify, then the hook. Reading the pair is the command's
//! ([`crate::commands::serve`] from the wire, `deploy` from the staging
//! dir, `install` from files); the report is the [`CertReport`] each step
//! writes into.
//!
//! This module holds the run ([`Run`]), the steps and how they chain
//! ([`deliver`], [`deliver_handoff`], [`finish`]). Beside it: [`compare`]
//! (is this pair installed?), [`destinations`] (where a pair goes, and
//! crash recovery there), [`owed`] (what the staging dir remembers between
//! runs), [`stage`], [`install`], [`reload_verify`], [`hook`], and the
//! staging dir's [`lock`] and [`handoff`] to root.
//!
//! Data flows one way: bytes become a [`ValidatedBundle`] only through
//! validation, and only a `ValidatedBundle` is installed. Each step logs one
//! line naming the certificate and the leaf fingerprint; "nothing to do" is
//! logged when the installed pair is already the offered one (contract).
//!
//! Every step returns a [`StepResult`]: `Err(StepFailed)` when it failed,
//! what went wrong already written into the report (and the log), so the
//! caller only needs to stop.

pub mod compare;
pub mod destinations;
pub mod fault;
pub mod handoff;
pub mod hook;
pub mod install;
pub mod lock;
pub mod owed;
pub mod reload_verify;
pub mod stage;

pub(crate) use compare::installed_not_after;
pub use compare::{compare_step, decide, decide_owed, installed_leaf, Compared};
pub use destinations::{folders, main_dest, recover, Folders};
pub use owed::{installed_at, reload_owed, repair_owed, retry_owed};
use owed::{record_installed_at, reload_and_verify, settle_owed};

use std::time::SystemTime;

use certsync_core::bundle::Bundle;
use certsync_core::protocol::OfferedCert;
use certsync_core::report::{CertReport, Step};
use certsync_core::time::unix_seconds;
use certsync_core::validate::{validate, validate_offer, Force, Policy, ValidatedBundle};
use certsync_core::{ExitCode, Fingerprint};

use crate::pipeline::stage::{Entry, StagingDir};
use crate::settings::{CertSpec, Settings};
use crate::systems::mailcow;
use hook::HookEnv;

/// One run of the pipeline: the settings and the run's flags and clock.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    pub settings: &'a Settings,
    /// The staging dir, opened once for the whole run.
    pub staging: &'a StagingDir,
    pub now: SystemTime,
    pub dry_run: bool,
    /// Whether a rollback is allowed: see [`Settings::remote_force`].
    pub force: Force,
}

/// A step failed; what failed and why is already in the [`CertReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFailed;

/// What every step returns.
pub type StepResult<T = ()> = Result<T, StepFailed>;

/// Steps 6 and 7, after an install: reload the services and check what is
/// served. The real one is [`reload_verify::ReloadVerify`] (Docker and
/// TLS); tests may give their own.
#[allow(async_fn_in_trait)]
pub trait PostInstall {
    /// Reload `spec.reload`. With `dry_run`, only say what would be done.
    async fn reload(&self, spec: &CertSpec, dry_run: bool, report: &mut CertReport);
    /// Check that every `spec.verify` endpoint serves `leaf`.
    async fn verify(&self, spec: &CertSpec, leaf: Fingerprint, report: &mut CertReport);
}

/// Step 2: stage the bytes (skipped in a dry run: they stay in memory).
pub fn stage_step(
    run: &Run<'_>,
    spec: &CertSpec,
    bundle: &Bundle,
    report: &mut CertReport,
) -> StepResult {
    if run.dry_run {
        report.skipped(Step::Stage, "dry run: the bytes stay in memory");
        return Ok(());
    }
    match run.staging.stage(&spec.name, bundle) {
        Ok(dir) => {
            tracing::info!(cert = %spec.name, dir = %dir.display(), "staged");
            report.done(Step::Stage, format!("staged in {}", dir.display()));
            Ok(())
        }
        Err(e) => {
            tracing::error!(cert = %spec.name, "stage failed: {e}");
            report.failed(Step::Stage, e.to_string(), ExitCode::Runtime);
            Err(StepFailed)
        }
    }
}

/// Step 3: validate the bytes against this receiver's own config.
pub fn validate_step(
    run: &Run<'_>,
    spec: &CertSpec,
    bundle: Bundle,
    report: &mut CertReport,
) -> StepResult<ValidatedBundle> {
    let policy = Policy {
        hostnames: &spec.hostnames,
        now: run.now,
        installed_not_after: installed_not_after(spec),
        force: run.force,
        anchors: &run.settings.anchors,
    };
    match validate(bundle, &policy) {
        Ok(v) => {
            report.leaf = Some(v.leaf_fingerprint());
            let info = v.info();
            let msg = format!(
                "{} for {} ({}), {} days left, key matches, chain in order to a trusted CA",
                v.leaf_fingerprint().short(),
                info.sans.join(", "),
                info.key_type,
                info.days_left(unix_seconds(run.now)),
            );
            tracing::info!(cert = %spec.name, leaf = %v.leaf_fingerprint(), "valid: {msg}");
            report.done(Step::Validate, msg);
            Ok(v)
        }
        Err(e) => {
            tracing::error!(cert = %spec.name, "refused: {e}");
            report.failed(Step::Validate, format!("refused: {e}"), ExitCode::Refused);
            Err(StepFailed)
        }
    }
}

/// Steps 4 and 3 of a dry run that got an offer and no pair
/// (`certsync-push status`): the pair differs, and validation judges what
/// an offer tells ([`validate_offer`]: the names, expiry and rollback) as
/// the real run would, so a pair this receiver would refuse is refused
/// here too (exit 3). The key, the chain and notBefore are not in an
/// offer; the report says they were not checked. Writes nothing.
pub fn judge_offer_step(
    run: &Run<'_>,
    spec: &CertSpec,
    offered: &OfferedCert,
    report: &mut CertReport,
) {
    report.done(
        Step::Compare,
        "differs from what is installed (fingerprints only: no pair was sent)",
    );
    let policy = Policy {
        hostnames: &spec.hostnames,
        now: run.now,
        installed_not_after: installed_not_after(spec),
        force: run.force,
        anchors: &run.settings.anchors,
    };
    let unchecked = "the key and the chain were not sent, so not checked";
    match validate_offer(&offered.sans, offered.not_after, &policy) {
        Ok(()) => {
            let names = if offered.sans.is_empty() {
                "names not offered, so not checked"
            } else {
                "names covered"
            };
            report.done(
                Step::Validate,
                format!("judged from the offer: {names}, not expired, no rollback; {unchecked}"),
            );
        }
        Err(e) => {
            tracing::info!(cert = %spec.name, "an offer this host would refuse: {e}");
            report.failed(
                Step::Validate,
                format!("refused: {e} (judged from the offer; {unchecked})"),
                ExitCode::Refused,
            );
        }
    }
}

/// Before step 5: warn when the new leaf drops a name the installed leaf
/// covers, or a literal name of mailcow.conf's `ADDITIONAL_SAN`. A warning
/// only: the configured `hostnames` are the rule, checked by validation.
pub fn lost_names_step(
    run: &Run<'_>,
    spec: &CertSpec,
    pair: &ValidatedBundle,
    report: &mut CertReport,
) {
    let sans = &pair.info().sans;
    let installed = install::read_installed_cert(&main_dest(spec))
        .ok()
        .flatten()
        .and_then(|c| c.info);
    let additional = run
        .settings
        .mailcow
        .as_ref()
        .map(|m| m.additional_sans.clone())
        .unwrap_or_default();
    let earlier = installed
        .as_ref()
        .map(|i| ("the installed one", i.sans.as_slice()));
    for warning in mailcow::lost_name_warnings("the new certificate", sans, earlier, &additional) {
        tracing::warn!(cert = %spec.name, leaf = %pair.leaf_fingerprint(), "{warning}");
        report.warn(warning);
    }
}

/// Step 5: install into every destination: the configured pair, and the
/// per-domain folders whose every listed name the leaf covers. Every other
/// folder mailcow serves is named in the report, with why.
pub fn install_step(
    run: &Run<'_>,
    spec: &CertSpec,
    pair: &ValidatedBundle,
    report: &mut CertReport,
) -> StepResult {
    let mut dests = vec![main_dest(spec)];
    match folders(spec, &pair.info().sans) {
        Ok(f) => {
            dests.extend(f.write);
            for why in f.left {
                tracing::warn!(cert = %spec.name, "{why}");
                report.warn(why);
            }
        }
        Err(e) => {
            let root = spec
                .folders_root
                .as_deref()
                .unwrap_or(std::path::Path::new(""));
            let why = format!(
                "cannot list mailcow's per-domain folders in {}: {e}; only the configured pair is installed",
                root.display()
            );
            tracing::warn!(cert = %spec.name, "{why}");
            report.warn(why);
        }
    }
    let names = || {
        dests
            .iter()
            .map(|d| d.cert.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if run.dry_run {
        report.skipped(
            Step::Install,
            format!(
                "dry run: would install {} (0644) and its key (0600)",
                names()
            ),
        );
        return Ok(());
    }
    for dest in &dests {
        if let Err(e) = install::install(dest, pair) {
            tracing::error!(cert = %spec.name, "install failed: {e}");
            report.failed(Step::Install, e.to_string(), ExitCode::Runtime);
            return Err(StepFailed);
        }
    }
    tracing::info!(cert = %spec.name, leaf = %pair.leaf_fingerprint(), "installed {}", names());
    report.done(Step::Install, format!("installed {}", names()));
    Ok(())
}

/// The whole inline pipeline for one received pair (steps 2–7).
pub async fn deliver<P: PostInstall>(
    run: &Run<'_>,
    spec: &CertSpec,
    bundle: Bundle,
    post: &P,
    report: &mut CertReport,
) {
    if stage_step(run, spec, &bundle, report).is_err() {
        return;
    }
    let Ok(pair) = validate_step(run, spec, bundle, report) else {
        run.staging.clear(&spec.name);
        return;
    };
    finish(run, spec, &pair, post, report).await;
    // A pair held for DNS stays staged: `deploy` installs it later.
    if !run.dry_run && !crate::systems::dane::held(report) {
        run.staging.clear(&spec.name);
    }
}

/// The handoff half of [`deliver`] (`deploy = "handoff"`, not a dry run):
/// stage, validate and compare as the unprivileged user, and leave the
/// rest to root's `deploy` ([`handoff`]). `Ok(true)` when root has work:
/// the pair changed, root found the installed pair broken, or a reload is
/// still owed (root's deploy retries it). Otherwise nothing stays staged.
pub fn deliver_handoff(
    run: &Run<'_>,
    spec: &CertSpec,
    bundle: Bundle,
    report: &mut CertReport,
) -> StepResult<bool> {
    stage_step(run, spec, &bundle, report)?;
    let Ok(pair) = validate_step(run, spec, bundle, report) else {
        run.staging.clear(&spec.name);
        return Err(StepFailed);
    };
    // This side may not read key.pem: root found the pair broken, so root
    // compares and repairs.
    let changed = if repair_owed(run.staging, &spec.name) {
        report.done(
            Step::Compare,
            "root found the installed pair broken; root's deploy repairs it",
        );
        true
    } else {
        compare_step(spec, &pair, report) == Ok(Compared::Changed)
    };
    if changed || reload_owed(run.staging, &spec.name) {
        Ok(true)
    } else {
        // Nothing for root to do: no key stays in staging.
        run.staging.clear(&spec.name);
        Ok(false)
    }
}

/// Steps 4–7 for a validated pair, then the `hook` after an install
/// (not after "nothing to do", not in a dry run).
///
/// A pair already installed is not installed again, but a reload still owed
/// from an earlier run (see [`Entry::ReloadOwed`]) is retried here, so a
/// push of the same pair settles it.
pub async fn finish<P: PostInstall>(
    run: &Run<'_>,
    spec: &CertSpec,
    pair: &ValidatedBundle,
    post: &P,
    report: &mut CertReport,
) {
    match compare_step(spec, pair, report) {
        Ok(Compared::Changed) => {}
        Ok(Compared::Installed) => {
            if reload_owed(run.staging, &spec.name) {
                settle_owed(run, spec, pair.leaf_fingerprint(), post, report).await;
            }
            return;
        }
        Err(StepFailed) => return,
    }
    lost_names_step(run, spec, pair, report);
    if crate::systems::dane::guard_step(run, spec, pair, report)
        .await
        .is_err()
    {
        return;
    }
    if install_step(run, spec, pair, report).is_err() {
        return;
    }
    if !run.dry_run {
        record_installed_at(run, spec);
        if let Err(e) = run.staging.remove(Entry::RepairOwed(&spec.name)) {
            tracing::error!(cert = %spec.name, "{e}");
        }
    }
    reload_and_verify(run, spec, pair.leaf_fingerprint(), post, report).await;
    if let (Some(hook), false) = (&spec.hook, run.dry_run) {
        let env = HookEnv::of(
            &spec.name,
            spec.cert_path.clone(),
            spec.key_path.clone(),
            pair,
        );
        hook::hook_step(hook, &env, report).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;

    use certsync_core::config::{DeployMode, DockerConfig};
    use certsync_core::protocol::{OfferedCert, Wanted};
    use certsync_core::testutil::{KeyKind, TestCa};

    /// Reloads fail while `fail` is set; counts the calls.
    struct Flaky {
        fail: Cell<bool>,
        reloads: Cell<usize>,
        verifies: Cell<usize>,
        /// Verify fails while set (the reload succeeds).
        stale: Cell<bool>,
    }

    impl PostInstall for Flaky {
        async fn reload(&self, _spec: &CertSpec, _dry_run: bool, report: &mut CertReport) {
            self.reloads.set(self.reloads.get() + 1);
            if self.fail.get() {
                report.failed(
                    Step::Reload,
                    "postfix-mailcow stopped",
                    ExitCode::Unverified,
                );
            } else {
                report.done(Step::Reload, "postfix-mailcow reloaded");
            }
        }
        async fn verify(&self, _spec: &CertSpec, _leaf: Fingerprint, report: &mut CertReport) {
            self.verifies.set(self.verifies.get() + 1);
            if self.stale.get() {
                report.failed(
                    Step::Verify,
                    "127.0.0.1:25 smtp serves the old certificate",
                    ExitCode::Unverified,
                );
            } else {
                report.skipped(Step::Verify, "none configured");
            }
        }
    }

    /// Settings with one certificate "mail" (mail.example.com, reloading
    /// postfix-mailcow, nothing to verify) under `dir`.
    pub(crate) fn settings(dir: &std::path::Path) -> Settings {
        let ssl = dir.join("ssl");
        std::fs::create_dir_all(&ssl).unwrap();
        Settings {
            dane: crate::systems::dane::DaneSettings::off(),
            config_path: dir.join("receive.toml"),
            staging_dir: dir.join("staging"),
            deploy: DeployMode::Inline,
            handoff_timeout: std::time::Duration::from_secs(1),
            read_timeout: std::time::Duration::from_secs(1),
            allow_remote_force: false,
            anchors: certsync_core::testutil::test_anchors(),
            session_timeout: std::time::Duration::from_secs(10),
            certs: vec![CertSpec {
                name: "mail".into(),
                hostnames: vec!["mail.example.com".into()],
                cert_path: ssl.join("cert.pem"),
                key_path: ssl.join("key.pem"),
                reload: vec!["postfix-mailcow".into()],
                verify: vec![],
                folders_root: None,
                hook: None,
                reload_units: vec![],
            }],
            docker: DockerConfig::default(),
            project_alternates: vec![],
            mailcow: None,
            notify: None,
        }
    }

    impl Flaky {
        /// Reloads fail while `fail`, verifies while `stale`.
        fn new(fail: bool, stale: bool) -> Flaky {
            Flaky {
                fail: Cell::new(fail),
                reloads: Cell::new(0),
                verifies: Cell::new(0),
                stale: Cell::new(stale),
            }
        }
    }

    /// One certificate "mail" configured in a temp dir, its staging dir,
    /// and a fresh leaf for it.
    struct Scene {
        _dir: tempfile::TempDir,
        s: Settings,
        staging: StagingDir,
        leaf: certsync_core::testutil::TestLeaf,
    }

    impl Scene {
        fn new() -> Scene {
            let dir = tempfile::tempdir().unwrap();
            let s = settings(dir.path());
            let staging = StagingDir::open(&s.staging_dir).unwrap();
            let leaf = TestCa::new().leaf(KeyKind::P256, &["mail.example.com"]);
            Scene {
                _dir: dir,
                s,
                staging,
                leaf,
            }
        }

        fn run(&self, dry_run: bool) -> Run<'_> {
            Run {
                settings: &self.s,
                staging: &self.staging,
                now: SystemTime::now(),
                dry_run,
                force: Force::No,
            }
        }
    }

    /// The pipeline from validation on, for the scene's leaf: what a
    /// delivery of that pair reports.
    async fn deliver_leaf(
        run: &Run<'_>,
        spec: &CertSpec,
        leaf: &certsync_core::testutil::TestLeaf,
        post: &Flaky,
    ) -> CertReport {
        let mut cr = CertReport::new("mail", None);
        let pair = validate_step(run, spec, leaf.bundle(), &mut cr).unwrap();
        finish(run, spec, &pair, post, &mut cr).await;
        cr
    }

    #[tokio::test]
    async fn a_failed_reload_is_owed_until_a_later_run_succeeds() {
        let scene = Scene::new();
        let (staging, leaf, spec) = (&scene.staging, &scene.leaf, &scene.s.certs[0]);
        let run = scene.run(false);
        let post = Flaky::new(true, false);

        let cr = deliver_leaf(&run, spec, leaf, &post).await;
        assert_eq!(cr.exit, ExitCode::Unverified, "{cr}");
        assert!(reload_owed(staging, "mail"));
        assert!(
            installed_at(staging, "mail").is_some(),
            "the install is recorded"
        );
        assert_eq!(post.verifies.get(), 1, "verify still runs");
        assert!(retry_owed(&run, spec, &post)
            .await
            .is_some_and(|r| r.exit == ExitCode::Unverified));
        assert!(reload_owed(staging, "mail"), "still failing: still owed");

        // The same pair again: nothing to install, but the owed reload runs.
        post.fail.set(false);
        let (wanted, _) = decide_owed(staging, spec, &offered(leaf));
        assert_eq!(wanted, Wanted::Send, "a push is asked to deliver it again");
        let cr = deliver_leaf(&run, spec, leaf, &post).await;
        assert_eq!(cr.exit, ExitCode::Success, "{cr}");
        assert!(cr.nothing_to_do);
        assert!(!reload_owed(staging, "mail"));
        assert_eq!(post.reloads.get(), 3);
        assert!(retry_owed(&run, spec, &post).await.is_none());
        let (wanted, _) = decide_owed(staging, spec, &offered(leaf));
        assert_eq!(wanted, Wanted::Have);
    }

    #[tokio::test]
    async fn a_failed_verify_is_owed_too_and_a_repeat_delivery_retries_it() {
        let scene = Scene::new();
        let (staging, leaf, spec) = (&scene.staging, &scene.leaf, &scene.s.certs[0]);
        let run = scene.run(false);
        let post = Flaky::new(false, true);
        let cr = deliver_leaf(&run, spec, leaf, &post).await;
        assert_eq!(cr.exit, ExitCode::Unverified, "{cr}");
        assert!(
            reload_owed(staging, "mail"),
            "a failed verify is remembered"
        );
        let (wanted, why) = decide_owed(staging, spec, &offered(leaf));
        assert_eq!(wanted, Wanted::Send, "not 'nothing to do': {why}");

        post.stale.set(false);
        let cr = deliver_leaf(&run, spec, leaf, &post).await;
        assert_eq!(cr.exit, ExitCode::Success, "{cr}");
        assert_eq!((post.reloads.get(), post.verifies.get()), (2, 2));
        assert!(!reload_owed(staging, "mail"));
        assert_eq!(decide_owed(staging, spec, &offered(leaf)).0, Wanted::Have);
    }

    fn offered(leaf: &certsync_core::testutil::TestLeaf) -> OfferedCert {
        let b = leaf.bundle();
        OfferedCert {
            name: "mail".into(),
            leaf: leaf.fingerprint(),
            chain_sha256: b.chain_sha256(),
            key_sha256: b.key_sha256(),
            not_after: 0,
            sans: vec![],
        }
    }

    #[tokio::test]
    async fn a_dry_run_writes_no_marker() {
        let scene = Scene::new();
        let (staging, spec) = (&scene.staging, &scene.s.certs[0]);
        let run = scene.run(true);
        let post = Flaky::new(true, false);
        let mut cr = CertReport::new("mail", None);
        let pair = validate_step(&run, spec, scene.leaf.bundle(), &mut cr).unwrap();
        finish(&run, spec, &pair, &post, &mut cr).await;
        assert_eq!(post.reloads.get(), 1);
        assert_eq!(post.verifies.get(), 0);
        assert!(!reload_owed(staging, "mail"));
        assert!(installed_at(staging, "mail").is_none());
    }
}
