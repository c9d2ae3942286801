//! The receiving pipeline, one function per step (DESIGN.md steps 2–7):
//! stage → validate → compare → install → reload → verify. Step 1 (read)
//! is in [`crate::serve`], step 8 (report) is the [`CertReport`] each step
//! writes into.
//!
//! Data flows one way: bytes become a [`ValidatedBundle`] only through
//! validation, and only a `ValidatedBundle` is installed. Each step logs one
//! line naming the certificate and the leaf fingerprint; "nothing to do" is
//! logged when the installed pair is already the offered one (contract).
//!
//! A step that fails returns `Err(())`: what went wrong is already written
//! into the report (and the log), so the caller only needs to stop.
#![allow(clippy::result_unit_err)]

use std::path::PathBuf;
use std::time::SystemTime;

use certsync_core::bundle::Bundle;
use certsync_core::protocol::{OfferedCert, Wanted};
use certsync_core::report::{CertReport, Step};
use certsync_core::validate::{validate, Policy, ValidatedBundle};
use certsync_core::{ExitCode, Fingerprint};

use crate::install::{self, Dest};
use crate::settings::{CertSpec, Settings};
use crate::stage;

/// One run of the pipeline: the settings and the run's flags and clock.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    pub settings: &'a Settings,
    pub now: SystemTime,
    pub dry_run: bool,
    pub force: bool,
}

/// Steps 6 and 7, after an install: reload the services and check what is
/// served. The Docker- and TLS-backed implementation lives in
/// [`crate::reload`] and [`crate::probe`]; tests may give their own.
#[allow(async_fn_in_trait)]
pub trait PostInstall {
    /// Reload `spec.reload`. With `dry_run`, only say what would be done.
    async fn reload(&self, spec: &CertSpec, dry_run: bool, report: &mut CertReport);
    /// Check that every `spec.verify` endpoint serves `leaf`.
    async fn verify(&self, spec: &CertSpec, leaf: Fingerprint, report: &mut CertReport);
}

/// Every place this certificate is installed: the configured pair, plus
/// mailcow's per-domain SNI folders that cover its hostnames.
pub fn destinations(spec: &CertSpec) -> Vec<Dest> {
    let mut d = vec![Dest::new(&spec.cert_path, &spec.key_path)];
    for dir in &spec.sni_dirs {
        d.push(Dest::new(dir.join("cert.pem"), dir.join("key.pem")));
    }
    d
}

/// Repair any interrupted install of this certificate (call under the lock).
pub fn recover(spec: &CertSpec) -> Result<(), install::InstallError> {
    for dest in destinations(spec) {
        let r = install::recover(&dest)?;
        if r != install::Recovery::Clean {
            tracing::warn!(cert = %spec.name, path = %dest.cert.display(), "recovered an interrupted install: {r:?}");
        }
    }
    Ok(())
}

/// Is this exact pair installed everywhere it belongs?
fn installed_everywhere(
    spec: &CertSpec,
    chain: Fingerprint,
    key: Fingerprint,
) -> Result<bool, install::InstallError> {
    for dest in destinations(spec) {
        match install::read_installed(&dest)? {
            Some(i) if i.chain_sha256 == chain && i.key_sha256 == key => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Before any key material is sent: does the receiver need this pair?
/// (The compare step on fingerprints only; repeated on the bytes later.)
pub fn decide(spec: &CertSpec, offered: &OfferedCert) -> (Wanted, String) {
    match installed_everywhere(spec, offered.chain_sha256, offered.key_sha256) {
        Ok(true) => {
            tracing::info!(cert = %spec.name, leaf = %offered.leaf, "nothing to do: this pair is already installed");
            (
                Wanted::Have,
                format!(
                    "nothing to do: {} is already installed",
                    offered.leaf.short()
                ),
            )
        }
        Ok(false) => (Wanted::Send, "send it".into()),
        Err(e) => (
            Wanted::Send,
            format!("cannot read the installed pair ({e}); send it"),
        ),
    }
}

/// The notAfter of what is installed, for the rollback rule.
fn installed_not_after(spec: &CertSpec) -> Option<i64> {
    install::read_installed(&Dest::new(&spec.cert_path, &spec.key_path))
        .ok()
        .flatten()
        .filter(|i| i.matching)
        .and_then(|i| i.info.map(|c| c.not_after))
}

/// Step 2: stage the bytes (skipped in a dry run: they stay in memory).
pub fn stage_step(
    run: &Run<'_>,
    spec: &CertSpec,
    bundle: &Bundle,
    report: &mut CertReport,
) -> Result<(), ()> {
    if run.dry_run {
        report.skipped(Step::Stage, "dry run: the bytes stay in memory");
        return Ok(());
    }
    match stage::stage(&run.settings.staging_dir, &spec.name, bundle) {
        Ok(dir) => {
            tracing::info!(cert = %spec.name, dir = %dir.display(), "staged");
            report.done(Step::Stage, format!("staged in {}", dir.display()));
            Ok(())
        }
        Err(e) => {
            tracing::error!(cert = %spec.name, "stage failed: {e}");
            report.failed(Step::Stage, e.to_string(), ExitCode::Runtime);
            Err(())
        }
    }
}

/// Step 3: validate the bytes against this receiver's own config.
pub fn validate_step(
    run: &Run<'_>,
    spec: &CertSpec,
    bundle: Bundle,
    report: &mut CertReport,
) -> Option<ValidatedBundle> {
    let policy = Policy {
        hostnames: &spec.hostnames,
        now: run.now,
        installed_not_after: installed_not_after(spec),
        force: run.force,
    };
    match validate(bundle, &policy) {
        Ok(v) => {
            report.leaf = Some(v.leaf_fingerprint());
            let info = v.info();
            let msg = format!(
                "{} for {} ({}), {} days left, key matches, chain in order",
                v.leaf_fingerprint().short(),
                info.sans.join(", "),
                info.key_type,
                info.days_left(unix(run.now)),
            );
            tracing::info!(cert = %spec.name, leaf = %v.leaf_fingerprint(), "valid: {msg}");
            report.done(Step::Validate, msg);
            Some(v)
        }
        Err(e) => {
            tracing::error!(cert = %spec.name, "refused: {e}");
            report.failed(Step::Validate, format!("refused: {e}"), ExitCode::Refused);
            None
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Step 4: compare with what is installed, on disk. `true` = changed.
pub fn compare_step(
    spec: &CertSpec,
    pair: &ValidatedBundle,
    report: &mut CertReport,
) -> Result<bool, ()> {
    match installed_everywhere(spec, pair.chain_sha256(), pair.key_sha256()) {
        Ok(true) => {
            tracing::info!(cert = %spec.name, leaf = %pair.leaf_fingerprint(), "nothing to do: this pair is already installed");
            report.nothing_to_do = true;
            report.done(
                Step::Compare,
                "nothing to do: this pair is already installed",
            );
            Ok(false)
        }
        Ok(false) => {
            report.done(
                Step::Compare,
                format!(
                    "differs from what is installed at {}",
                    spec.cert_path.display()
                ),
            );
            Ok(true)
        }
        Err(e) => {
            report.failed(Step::Compare, e.to_string(), ExitCode::Runtime);
            Err(())
        }
    }
}

/// Step 5: install into every destination.
pub fn install_step(
    run: &Run<'_>,
    spec: &CertSpec,
    pair: &ValidatedBundle,
    report: &mut CertReport,
) -> Result<(), ()> {
    let dests = destinations(spec);
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
            return Err(());
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
    let Some(pair) = validate_step(run, spec, bundle, report) else {
        stage::clear(&run.settings.staging_dir, &spec.name);
        return;
    };
    finish(run, spec, &pair, post, report).await;
    if !run.dry_run {
        stage::clear(&run.settings.staging_dir, &spec.name);
    }
}

/// Steps 4–7 for a validated pair.
pub async fn finish<P: PostInstall>(
    run: &Run<'_>,
    spec: &CertSpec,
    pair: &ValidatedBundle,
    post: &P,
    report: &mut CertReport,
) {
    match compare_step(spec, pair, report) {
        Ok(true) => {}
        Ok(false) | Err(()) => return,
    }
    if install_step(run, spec, pair, report).is_err() {
        return;
    }
    post.reload(spec, run.dry_run, report).await;
    if !run.dry_run {
        post.verify(spec, pair.leaf_fingerprint(), report).await;
    }
}

/// Where a failed reload is remembered so that the next run retries it.
pub fn owed_reload_marker(settings: &Settings, name: &str) -> PathBuf {
    settings.staging_dir.join(format!("{name}.reload-owed"))
}
