//! `certsync-receive check`: is the installed pair valid and matching, how
//! many days are left, and does every endpoint serve it?
//!
//! Made for a timer or a monitoring agent: the exit code says whether
//! anything is wrong, `--json` gives the details to a machine, and
//! `--metrics FILE` writes a Prometheus textfile (node_exporter's textfile
//! collector) atomically, so a scrape never reads half a file.
//!
//! Exit codes (the worst over all certificates, ordered as
//! [`ExitCode::worst`]):
//! - 0: every pair valid, more than `--warn-days` left, served everywhere;
//! - 3: an installed pair is missing, invalid (key mismatch, names not
//!   covered, chain out of order, expired) or expires within `--warn-days`;
//!   or, with the `[mailcow]` preset, a per-domain folder that mailcow
//!   serves (`data/assets/ssl/<dir>/` with `domains`, `cert.pem`,
//!   `key.pem`) holds a certificate that is expired, expires within
//!   `--warn-days` or does not parse;
//! - 4: an endpoint serves another certificate or cannot be probed, or a
//!   reload is still owed after retrying it;
//! - 1: a runtime failure (a file that cannot be read, the metrics file
//!   cannot be written).
//!
//! Warnings never change the exit code: a certificate that covers fewer
//! names than the pair it replaced (kept as `cert.pem.certsync-prev`), or
//! not every literal name of mailcow.conf's `ADDITIONAL_SAN`.
//!
//! A reload owed since an earlier install is retried first (under the
//! receiver's lock), so `check` from a timer also repairs that.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use certsync_core::bundle::{parse_chain, Bundle, BundleError, CertInfo, SecretBytes};
use certsync_core::protocol::{MAX_CHAIN_BYTES, MAX_KEY_BYTES};
use certsync_core::time::unix_seconds;
use certsync_core::validate::{validate, Policy, ValidationError};
use certsync_core::{ExitCode, Fingerprint};

use crate::fsutil::{read_input, ReadError};
use crate::pipeline::install::{self, Dest, InstallError};
use crate::pipeline::lock::LockError;
use crate::pipeline::reload_verify::ReloadVerify;
use crate::pipeline::stage::{StageError, StagingDir};
use crate::pipeline::{self, Run};
use crate::settings::{CertSpec, Settings};
use crate::systems::dane::ServedUnmatched;
use crate::systems::mailcow;
use crate::systems::probe::{self, Endpoint};

/// What `check` found for one certificate.
#[derive(Debug, Serialize)]
pub struct CertCheck {
    pub name: String,
    pub cert_path: String,
    pub installed: bool,
    /// SHA-256 of the installed leaf (DER).
    pub fingerprint: Option<Fingerprint>,
    pub subject: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    pub days_left: Option<i64>,
    /// Key matches, names covered, chain in order to a trusted CA, a
    /// server leaf with a strong key, inside its validity.
    pub valid: bool,
    pub key_matches: bool,
    /// Unix seconds of the last successful install, if recorded.
    pub last_install: Option<i64>,
    pub reload_owed: bool,
    pub endpoints: Vec<EndpointCheck>,
    /// Each thing that is wrong; shown (and serialized) as its text.
    pub problems: Vec<CheckProblem>,
    /// What the operator should know; no effect on `exit` (names lost
    /// since the previous pair, ADDITIONAL_SAN names not covered).
    pub warnings: Vec<String>,
    /// The DANE guard's view (docs/contract.md "DANE"); empty with
    /// `dane = "off"`.
    pub dane: crate::systems::dane::DaneCheck,
    pub exit: ExitCode,
}

/// A per-domain folder mailcow serves, as `check` found it.
#[derive(Debug, Clone, Serialize)]
pub struct FolderCheck {
    pub path: String,
    /// The names in its `domains` file.
    pub domains: Vec<String>,
    pub fingerprint: Option<Fingerprint>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    pub days_left: Option<i64>,
    /// Expired, expiring within `--warn-days`, or unreadable.
    pub stale: bool,
    pub problem: Option<String>,
}

/// What one verify endpoint serves.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointCheck {
    pub endpoint: String,
    pub served: Option<Fingerprint>,
    pub matches: bool,
    pub error: Option<String>,
}

/// The whole `check` result.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub checked_at: i64,
    pub warn_days: i64,
    pub certs: Vec<CertCheck>,
    /// With the `[mailcow]` preset: every per-domain folder mailcow serves.
    pub folders: Vec<FolderCheck>,
    pub exit: ExitCode,
}

/// One thing `check` finds wrong with a certificate, and the exit code
/// it stands for ([`CheckProblem::exit`]). Its text (`Display`) is what
/// the operator reads: in the text output, in `--json`'s `problems` and
/// in `[notify]`.
#[derive(Debug, thiserror::Error)]
pub enum CheckProblem {
    #[error("no pair installed at {} and {}", cert_path.display(), key_path.display())]
    NotInstalled {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    #[error("{} expires in {days} days (warning below {warn_days}): is the pusher running? `certsync-push status` on the NPM host", cert_path.display())]
    Expiring {
        cert_path: PathBuf,
        days: i64,
        warn_days: i64,
    },
    /// The installed files do not parse or do not validate.
    #[error(transparent)]
    Invalid(#[from] Problem),
    /// The installed files cannot be read at all.
    #[error(transparent)]
    Unreadable(#[from] InstallError),
    /// An endpoint cannot be probed; the same text is its `error`.
    #[error("{0}")]
    Probe(String),
    #[error("{endpoint} (SNI {sni}) serves {}, not the installed {}: reload that service (`certsync-receive deploy`) or check which file it reads", or_empty(served), installed.map_or_else(|| "nothing".to_string(), |f| f.to_string()))]
    ServesOther {
        endpoint: String,
        sni: String,
        served: Option<Fingerprint>,
        installed: Option<Fingerprint>,
    },
    #[error(transparent)]
    Dane(#[from] ServedUnmatched),
    #[error("a new pair ({fingerprint}) is held for DNS: publish its TLSA record below; certsync-deploy.timer installs it once DNS matches")]
    HeldForDns { fingerprint: String },
    #[error("a reload is owed and could not be retried: {0}")]
    ReloadNotRetried(#[source] LockError),
    #[error("a reload of {} is owed since an earlier install and failed again (see the log above); fix it and run `certsync-receive deploy`", services.join(", "))]
    ReloadOwed { services: Vec<String> },
}

fn or_empty(f: &Option<Fingerprint>) -> String {
    f.map(|f| f.to_string()).unwrap_or_default()
}

impl CheckProblem {
    /// The exit code this problem stands for (the module docs' list).
    pub fn exit(&self) -> ExitCode {
        match self {
            CheckProblem::NotInstalled { .. }
            | CheckProblem::Expiring { .. }
            | CheckProblem::Invalid(_) => ExitCode::Refused,
            CheckProblem::Unreadable(_) => ExitCode::Runtime,
            CheckProblem::Probe(_)
            | CheckProblem::ServesOther { .. }
            | CheckProblem::Dane(_)
            | CheckProblem::ReloadNotRetried(_)
            | CheckProblem::ReloadOwed { .. } => ExitCode::Unverified,
            CheckProblem::HeldForDns { .. } => ExitCode::Held,
        }
    }
}

/// As its text, which is what `--json` has always carried.
impl Serialize for CheckProblem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What is wrong with a file `check` reads.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("{}", read_problem(.0))]
    Read(#[from] ReadError),
    #[error("{} does not parse: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
    #[error("the installed pair at {} is not valid: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: ValidationError,
    },
}

/// `check`'s own words for a file it cannot read.
fn read_problem(e: &ReadError) -> String {
    match e {
        ReadError::Missing(path) => format!("{} does not exist", path.display()),
        ReadError::Refused { path, refusal } => {
            format!("cannot read {}: {refusal}", path.display())
        }
        ReadError::Io { .. } => e.to_string(),
    }
}

impl CertCheck {
    fn problem(&mut self, problem: CheckProblem) {
        self.exit = self.exit.worst(problem.exit());
        self.problems.push(problem);
    }
}

/// Run `check` and print its result; returns the exit code.
pub async fn run(
    settings: &Settings,
    json: bool,
    warn_days: i64,
    metrics: Option<&Path>,
) -> ExitCode {
    let report = check(settings, warn_days, SystemTime::now()).await;
    crate::systems::notify::check(settings, &report).await;
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                tracing::error!("cannot print the check as JSON: {e}");
                return ExitCode::Runtime;
            }
        }
    } else {
        print_text(&report);
    }
    let mut exit = report.exit;
    if let Some(path) = metrics {
        if let Err(e) = write_metrics(path, &report) {
            tracing::error!(
                "cannot write the metrics file {}: {e}; check the directory exists and is writable",
                path.display()
            );
            exit = exit.worst(ExitCode::Runtime);
        }
    }
    exit
}

/// Check every configured certificate at `now`.
pub async fn check(settings: &Settings, warn_days: i64, now: SystemTime) -> CheckReport {
    let post = ReloadVerify { settings };
    // `check` never creates the staging dir; under certsync-check.service
    // (no capabilities) root may not even enter it: then there are no
    // markers to see, and certsync-deploy.timer retries owed reloads.
    let staging = match StagingDir::open_existing(&settings.staging_dir) {
        Ok(s) => s.map(Arc::new),
        Err(StageError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            tracing::debug!("the staging dir is not readable here; no markers to look at");
            None
        }
        Err(e) => {
            tracing::warn!("not looking at the staging dir: {e}");
            None
        }
    };
    let mut certs = Vec::new();
    for spec in &settings.certs {
        certs.push(check_cert(settings, staging.as_ref(), spec, &post, warn_days, now).await);
    }
    let installed: Vec<Fingerprint> = certs.iter().filter_map(|c| c.fingerprint).collect();
    let (folders, folders_exit) = match &settings.mailcow {
        Some(mc) => check_folders(&mc.ssl_dir(), &installed, warn_days, now),
        None => (Vec::new(), ExitCode::Success),
    };
    CheckReport {
        checked_at: unix_seconds(now),
        warn_days,
        exit: certs.iter().fold(folders_exit, |acc, c| acc.worst(c.exit)),
        certs,
        folders,
    }
}

/// Every per-domain folder mailcow serves under `ssl_dir`: is its
/// certificate expired, expiring within `warn_days`, or unreadable? A
/// folder holding one of the `installed` leaves is judged with that
/// certificate's own line, not twice.
pub fn check_folders(
    ssl_dir: &Path,
    installed: &[Fingerprint],
    warn_days: i64,
    now: SystemTime,
) -> (Vec<FolderCheck>, ExitCode) {
    let served = match mailcow::served_folders(ssl_dir) {
        Ok(f) => f,
        Err(e) => {
            let f = FolderCheck {
                path: ssl_dir.display().to_string(),
                domains: Vec::new(),
                fingerprint: None,
                not_after: None,
                days_left: None,
                stale: false,
                problem: Some(format!(
                    "cannot list mailcow's per-domain folders in {}: {e}",
                    ssl_dir.display()
                )),
            };
            return (vec![f], ExitCode::Runtime);
        }
    };
    let mut exit = ExitCode::Success;
    let mut out = Vec::new();
    for folder in served {
        let f = check_folder(&folder, installed, warn_days, now);
        if f.stale {
            exit = exit.worst(ExitCode::Refused);
        }
        out.push(f);
    }
    (out, exit)
}

/// One per-domain folder: its certificate, and what is wrong with it.
fn check_folder(
    folder: &mailcow::SslFolder,
    installed: &[Fingerprint],
    warn_days: i64,
    now: SystemTime,
) -> FolderCheck {
    let dir = folder.dir.display().to_string();
    let fix = format!(
        "remove {dir} or move it out of the ssl dir (acme-mailcow archives such folders to data/assets/ssl/backups/), then restart postfix-mailcow, dovecot-mailcow and nginx-mailcow; or push a certificate that covers every name in {dir}/domains ({})",
        folder.domains.join(" ")
    );
    let mut f = FolderCheck {
        path: dir.clone(),
        domains: folder.domains.clone(),
        fingerprint: None,
        not_after: None,
        days_left: None,
        stale: false,
        problem: None,
    };
    let cert = folder.dir.join("cert.pem");
    let info = read_input(&cert, MAX_CHAIN_BYTES)
        .map_err(Problem::from)
        .and_then(|pem| {
            parse_chain(&pem)
                .map(|c| CertInfo::of(&c[0]))
                .map_err(|source| Problem::Parse {
                    path: cert.clone(),
                    source,
                })
        });
    match info {
        Ok(info) => {
            let days = info.days_left(unix_seconds(now));
            f.fingerprint = Some(info.fingerprint);
            f.not_after = Some(info.not_after);
            f.days_left = Some(days);
            let mine = installed.contains(&info.fingerprint);
            if info.not_after <= unix_seconds(now) && !mine {
                let ago = (unix_seconds(now) - info.not_after).div_euclid(86_400);
                f.problem = Some(format!(
                    "mailcow serves {dir} for {} and its certificate has expired ({ago} days ago): {fix}",
                    folder.domains.join(", "),
                ));
            } else if days < warn_days && !mine {
                f.problem = Some(format!(
                    "mailcow serves {dir} for {} and its certificate expires in {days} days (warning below {warn_days}): {fix}",
                    folder.domains.join(", "),
                ));
            }
        }
        Err(why) => {
            f.problem = Some(format!(
                "mailcow serves {dir} for {}, but {why}: {fix}",
                folder.domains.join(", ")
            ))
        }
    }
    f.stale = f.problem.is_some();
    f
}

/// Warnings about the installed leaf: names the previous pair (kept beside
/// it as `cert.pem.certsync-prev`) covered and it does not, and literal
/// `ADDITIONAL_SAN` names it does not cover.
fn name_warnings(settings: &Settings, spec: &CertSpec, sans: &[String]) -> Vec<String> {
    let previous =
        crate::fsutil::read_capped(&install::prev_path(&spec.cert_path), MAX_CHAIN_BYTES)
            .ok()
            .flatten()
            .and_then(|pem| parse_chain(&pem).ok())
            .map(|c| CertInfo::of(&c[0]).sans);
    let additional = settings
        .mailcow
        .as_ref()
        .map(|m| m.additional_sans.clone())
        .unwrap_or_default();
    let prev = install::prev_path(&spec.cert_path);
    let what = format!("the previous certificate ({})", prev.display());
    mailcow::lost_name_warnings(
        &spec.cert_path.display().to_string(),
        sans,
        previous.as_deref().map(|old| (what.as_str(), old)),
        &additional,
    )
}

async fn check_cert(
    settings: &Settings,
    staging: Option<&Arc<StagingDir>>,
    spec: &CertSpec,
    post: &ReloadVerify<'_>,
    warn_days: i64,
    now: SystemTime,
) -> CertCheck {
    let mut c = CertCheck {
        name: spec.name.clone(),
        cert_path: spec.cert_path.display().to_string(),
        installed: false,
        fingerprint: None,
        subject: None,
        not_after: None,
        days_left: None,
        valid: false,
        key_matches: false,
        last_install: staging.and_then(|s| pipeline::installed_at(s, &spec.name)),
        reload_owed: false,
        endpoints: Vec::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
        dane: Default::default(),
        exit: ExitCode::Success,
    };
    if let Some(staging) = staging {
        retry_owed_reload(settings, staging, spec, post, now, &mut c).await;
    }

    installed_part(settings, spec, warn_days, now, &mut c);
    endpoints_part(spec, &mut c).await;
    dane_part(settings, staging, spec, &mut c).await;
    c
}

/// The installed pair: there, valid, matching, not expiring.
fn installed_part(
    settings: &Settings,
    spec: &CertSpec,
    warn_days: i64,
    now: SystemTime,
    c: &mut CertCheck,
) {
    match install::read_installed(&Dest::new(&spec.cert_path, &spec.key_path)) {
        Ok(None) => c.problem(CheckProblem::NotInstalled {
            cert_path: spec.cert_path.clone(),
            key_path: spec.key_path.clone(),
        }),
        Ok(Some(i)) => {
            c.installed = true;
            c.key_matches = i.matching;
            if let Some(info) = &i.info {
                c.warnings = name_warnings(settings, spec, &info.sans);
                c.fingerprint = Some(info.fingerprint);
                c.subject = Some(info.subject.clone());
                c.not_after = Some(info.not_after);
                let days = info.days_left(unix_seconds(now));
                c.days_left = Some(days);
                if days >= 0 && days < warn_days {
                    c.problem(CheckProblem::Expiring {
                        cert_path: spec.cert_path.clone(),
                        days,
                        warn_days,
                    });
                }
            }
            match validate_installed(settings, spec, now) {
                Ok(()) => c.valid = true,
                Err(p) => c.problem(p.into()),
            }
        }
        Err(e) => c.problem(e.into()),
    }
}

/// Each verify endpoint: does it serve the installed leaf?
async fn endpoints_part(spec: &CertSpec, c: &mut CertCheck) {
    let sni = spec.hostnames.first().cloned().unwrap_or_default();
    for text in &spec.verify {
        let e = probe_endpoint(text, &sni, c.fingerprint).await;
        if let Some(err) = &e.error {
            c.problem(CheckProblem::Probe(err.clone()));
        } else if !e.matches {
            c.problem(CheckProblem::ServesOther {
                endpoint: text.clone(),
                sni: sni.clone(),
                served: e.served,
                installed: c.fingerprint,
            });
        }
        c.endpoints.push(e);
    }
}

/// The DANE lines of `check`: TLSA records against what port 25 serves,
/// a pair held for DNS, and the records to publish.
async fn dane_part(
    settings: &Settings,
    staging: Option<&Arc<StagingDir>>,
    spec: &CertSpec,
    c: &mut CertCheck,
) {
    if settings.dane.mode == certsync_core::config::DaneMode::Off {
        return;
    }
    let installed = read_input(&spec.cert_path, MAX_CHAIN_BYTES)
        .ok()
        .and_then(|pem| certsync_core::bundle::parse_chain(&pem).ok());
    // Port 25 serves the installed chain when its probe says so; without a
    // port-25 endpoint, the installed chain is what mailcow's postfix reads.
    let port25: Vec<&EndpointCheck> = c
        .endpoints
        .iter()
        .filter(|e| {
            e.endpoint
                .split_whitespace()
                .next()
                .is_some_and(|a| a.ends_with(":25"))
        })
        .collect();
    let served_is_installed = port25.iter().all(|e| e.matches);
    let held = staging
        .filter(|s| s.has_staged(&spec.name))
        .and_then(|s| s.read_staged(&spec.name).ok())
        .and_then(|b| certsync_core::bundle::parse_chain(&b.chain).ok());
    let (dane, problem, warnings) = crate::systems::dane::check(
        &settings.dane,
        &spec.hostnames,
        installed.as_deref(),
        served_is_installed,
        held.as_deref(),
    )
    .await;
    if let Some(p) = problem {
        c.problem(p.into());
    }
    if let Some(fp) = &dane.held {
        c.problem(CheckProblem::HeldForDns {
            fingerprint: fp.clone(),
        });
    }
    c.warnings.extend(warnings);
    c.dane = dane;
}

/// Retry a reload owed since an earlier install; record what remains.
async fn retry_owed_reload(
    settings: &Settings,
    staging: &Arc<StagingDir>,
    spec: &CertSpec,
    post: &ReloadVerify<'_>,
    now: SystemTime,
    c: &mut CertCheck,
) {
    if !pipeline::reload_owed(staging, &spec.name) {
        return;
    }
    // Under the receiver's lock, so an install in progress is not raced.
    let lock = crate::pipeline::lock::session(staging, Duration::from_secs(60)).await;
    let _lock = match lock {
        Ok(l) => l,
        Err(e) => {
            c.reload_owed = true;
            c.problem(CheckProblem::ReloadNotRetried(e));
            return;
        }
    };
    let run = Run {
        settings,
        staging,
        now,
        dry_run: false,
        force: certsync_core::validate::Force::No,
    };
    if let Some(cr) = pipeline::retry_owed(&run, spec, post).await {
        for line in cr.to_string().lines() {
            tracing::info!("{line}");
        }
    }
    if pipeline::reload_owed(staging, &spec.name) {
        c.reload_owed = true;
        c.problem(CheckProblem::ReloadOwed {
            services: spec.reload.clone(),
        });
    }
}

/// Full validation of the installed bytes, as if they had just arrived
/// (without the rollback rule: there is nothing to compare against).
fn validate_installed(
    settings: &Settings,
    spec: &CertSpec,
    now: SystemTime,
) -> Result<(), Problem> {
    let chain = read_input(&spec.cert_path, MAX_CHAIN_BYTES)?;
    let key = SecretBytes::new(read_input(&spec.key_path, MAX_KEY_BYTES)?);
    let policy = Policy {
        hostnames: &spec.hostnames,
        now,
        installed_not_after: None,
        force: certsync_core::validate::Force::No,
        anchors: &settings.anchors,
    };
    validate(Bundle::new(chain, key), &policy)
        .map(|_| ())
        .map_err(|source| Problem::Invalid {
            path: spec.cert_path.clone(),
            source,
        })
}

/// One probe, no retries: `check` reports the state now.
async fn probe_endpoint(text: &str, sni: &str, expected: Option<Fingerprint>) -> EndpointCheck {
    let mut e = EndpointCheck {
        endpoint: text.to_string(),
        served: None,
        matches: false,
        error: None,
    };
    let endpoint = match Endpoint::parse(text) {
        Ok(ep) => ep,
        Err(err) => {
            e.error = Some(err.to_string());
            return e;
        }
    };
    let sni = sni.to_string();
    // With SNI and without, as verify does: mailcow serves its per-domain
    // folders to SNI clients and the top-level pair to the others.
    let served = tokio::task::spawn_blocking(move || {
        let with = probe::served_leaf(&endpoint, &sni, probe::PROBE_TIMEOUT)?;
        let without = probe::served_leaf_with(&endpoint, None, probe::PROBE_TIMEOUT)?;
        Ok::<_, probe::ProbeError>((with, without))
    })
    .await;
    match served {
        Ok(Ok((with, without))) => {
            e.served = Some(with.fingerprint);
            e.matches = expected == Some(with.fingerprint);
            if e.matches && expected != Some(without.fingerprint) {
                e.matches = false;
                e.error = Some(format!(
                    "{text} serves {} to clients without SNI, not the installed leaf it serves with SNI: reload that service (`certsync-receive deploy`) or check which file it reads",
                    without.fingerprint
                ));
            }
        }
        Ok(Err(err)) => e.error = Some(err.to_string()),
        Err(err) => e.error = Some(format!("{text}: the probe task failed: {err}")),
    }
    e
}

fn print_text(report: &CheckReport) {
    for c in &report.certs {
        match (&c.fingerprint, c.days_left) {
            (Some(fp), Some(days)) => println!(
                "{}: installed {} {} ({}), {}, {days} days left",
                c.name,
                c.cert_path,
                fp.short(),
                c.subject.as_deref().unwrap_or(""),
                if c.valid { "valid" } else { "NOT valid" },
            ),
            _ => println!("{}: nothing readable installed at {}", c.name, c.cert_path),
        }
        for e in &c.endpoints {
            let state = match (&e.error, e.matches, &e.served) {
                (Some(err), _, _) => format!("cannot probe: {err}"),
                (None, true, _) => "serves the installed certificate".to_string(),
                (None, false, Some(fp)) => format!("serves {} instead", fp.short()),
                (None, false, None) => "serves nothing".to_string(),
            };
            println!("{}: {} {state}", c.name, e.endpoint);
        }
        if c.reload_owed {
            println!("{}: a reload is still owed", c.name);
        }
        for p in &c.problems {
            println!("{}: PROBLEM: {p}", c.name);
        }
        if let Some(m) = c.dane.served_matches {
            let state = if m { "matches" } else { "does NOT match" };
            println!(
                "{}: DANE: port 25 {state} the validated TLSA records",
                c.name
            );
        }
        for line in &c.dane.publish {
            println!("{}: DANE: publish {line}", c.name);
        }
        for w in &c.warnings {
            println!("{}: WARNING: {w}", c.name);
        }
        if c.problems.is_empty() {
            println!("{}: ok", c.name);
        }
    }
    for f in &report.folders {
        let state = match (&f.problem, f.days_left) {
            (Some(p), _) => format!("PROBLEM: {p}"),
            (None, Some(days)) => format!("ok, {days} days left"),
            (None, None) => "ok".to_string(),
        };
        println!("folder {} ({}): {state}", f.path, f.domains.join(" "));
    }
}

/// Escape a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of `report`.
pub fn metrics_text(report: &CheckReport) -> String {
    let mut out = String::new();
    cert_metrics(report, &mut out);
    folder_metrics(report, &mut out);
    out.push_str(&format!(
        "# HELP certsync_check_timestamp_seconds When check ran (Unix seconds).\n# TYPE certsync_check_timestamp_seconds gauge\ncertsync_check_timestamp_seconds {}\n",
        report.checked_at
    ));
    out
}

/// One gauge family: its help, its type, a line per sample.
fn family(out: &mut String, name: &str, help: &str, samples: Vec<(String, f64)>) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
    for (labels, v) in samples {
        out.push_str(&format!("{name}{{{labels}}} {v}\n"));
    }
}

/// The families per certificate and per endpoint.
fn cert_metrics(report: &CheckReport, out: &mut String) {
    let per_cert = |f: &dyn Fn(&CertCheck) -> Option<f64>| -> Vec<(String, f64)> {
        report
            .certs
            .iter()
            .filter_map(|c| f(c).map(|v| (format!("name=\"{}\"", label(&c.name)), v)))
            .collect()
    };
    family(
        out,
        "certsync_cert_not_after_timestamp_seconds",
        "notAfter of the installed certificate (Unix seconds).",
        per_cert(&|c| c.not_after.map(|t| t as f64)),
    );
    family(
        out,
        "certsync_cert_last_install_timestamp_seconds",
        "When the certificate was last installed successfully (Unix seconds).",
        per_cert(&|c| c.last_install.map(|t| t as f64)),
    );
    family(
        out,
        "certsync_cert_valid",
        "1 when the installed pair is valid and matching.",
        per_cert(&|c| Some(if c.valid { 1.0 } else { 0.0 })),
    );
    family(
        out,
        "certsync_dane_tlsa_match",
        "1 when port 25 serves a certificate matching the DNSSEC-validated TLSA records, 0 when not (absent without validated records).",
        per_cert(&|c| c.dane.served_matches.map(|m| if m { 1.0 } else { 0.0 })),
    );
    family(
        out,
        "certsync_dane_held",
        "1 when a new pair is held for DNS (DANE).",
        per_cert(&|c| Some(if c.dane.held.is_some() { 1.0 } else { 0.0 })),
    );
    family(
        out,
        "certsync_cert_reload_owed",
        "1 when a reload after an install is still owed.",
        per_cert(&|c| Some(if c.reload_owed { 1.0 } else { 0.0 })),
    );
    let served: Vec<(String, f64)> = report
        .certs
        .iter()
        .flat_map(|c| {
            c.endpoints.iter().map(|e| {
                (
                    format!(
                        "name=\"{}\",endpoint=\"{}\"",
                        label(&c.name),
                        label(&e.endpoint)
                    ),
                    if e.matches { 1.0 } else { 0.0 },
                )
            })
        })
        .collect();
    family(
        out,
        "certsync_served_matches",
        "1 when the endpoint serves the installed certificate.",
        served,
    );
    family(
        out,
        "certsync_cert_warnings",
        "How many warnings check gave (names lost since the previous certificate, ADDITIONAL_SAN names not covered).",
        per_cert(&|c| Some(c.warnings.len() as f64)),
    );
}

/// The families per per-domain folder.
fn folder_metrics(report: &CheckReport, out: &mut String) {
    let per_folder = |f: &dyn Fn(&FolderCheck) -> Option<f64>| -> Vec<(String, f64)> {
        report
            .folders
            .iter()
            .filter_map(|d| f(d).map(|v| (format!("folder=\"{}\"", label(&d.path)), v)))
            .collect()
    };
    family(
        out,
        "certsync_mailcow_folder_not_after_timestamp_seconds",
        "notAfter of the certificate in a per-domain folder mailcow serves (Unix seconds).",
        per_folder(&|f| f.not_after.map(|t| t as f64)),
    );
    family(
        out,
        "certsync_mailcow_folder_stale",
        "1 when a per-domain folder mailcow serves holds an expired, expiring or unreadable certificate.",
        per_folder(&|f| Some(if f.stale { 1.0 } else { 0.0 })),
    );
}

/// Write the textfile atomically: a temp file beside it, then rename.
pub fn write_metrics(path: &Path, report: &CheckReport) -> std::io::Result<()> {
    // World-readable: node_exporter's textfile collector reads it.
    crate::fsutil::replace(path, metrics_text(report).as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str, endpoint: &str, matches: bool) -> CertCheck {
        CertCheck {
            name: name.into(),
            cert_path: "/ssl/cert.pem".into(),
            installed: true,
            fingerprint: None,
            subject: None,
            not_after: Some(1_900_000_000),
            days_left: Some(30),
            valid: true,
            key_matches: true,
            last_install: None,
            reload_owed: false,
            endpoints: vec![EndpointCheck {
                endpoint: endpoint.into(),
                served: None,
                matches,
                error: None,
            }],
            problems: vec![],
            warnings: vec![],
            dane: Default::default(),
            exit: ExitCode::Success,
        }
    }

    /// The problems the golden files (tests/golden/check) do not reach:
    /// each one's text, word for word what `check` printed before it was
    /// typed, is also what `--json` carries, and each has its exit code.
    #[test]
    fn problems_read_and_serialize_as_their_text() {
        let fp = Fingerprint::of_der(b"served");
        let cases = [
            (
                CheckProblem::ServesOther {
                    endpoint: "127.0.0.1:25 smtp".into(),
                    sni: "mail.example.com".into(),
                    served: Some(fp),
                    installed: None,
                },
                format!("127.0.0.1:25 smtp (SNI mail.example.com) serves {fp}, not the installed nothing: reload that service (`certsync-receive deploy`) or check which file it reads"),
                ExitCode::Unverified,
            ),
            (
                CheckProblem::ServesOther {
                    endpoint: "127.0.0.1:993".into(),
                    sni: "mail.example.com".into(),
                    served: None,
                    installed: Some(fp),
                },
                format!("127.0.0.1:993 (SNI mail.example.com) serves , not the installed {fp}: reload that service (`certsync-receive deploy`) or check which file it reads"),
                ExitCode::Unverified,
            ),
            (
                CheckProblem::Dane(ServedUnmatched {
                    owners: vec!["_25._tcp.a.".into(), "_25._tcp.b.".into()],
                }),
                "the certificate served on port 25 matches none of the DNSSEC-validated TLSA records of _25._tcp.a., _25._tcp.b.: DANE-validating senders cannot deliver; publish the record(s) below".into(),
                ExitCode::Unverified,
            ),
            (
                CheckProblem::HeldForDns {
                    fingerprint: "AB:CD".into(),
                },
                "a new pair (AB:CD) is held for DNS: publish its TLSA record below; certsync-deploy.timer installs it once DNS matches".into(),
                ExitCode::Held,
            ),
            (
                CheckProblem::ReloadOwed {
                    services: vec!["postfix-mailcow".into(), "nginx-mailcow".into()],
                },
                "a reload of postfix-mailcow, nginx-mailcow is owed since an earlier install and failed again (see the log above); fix it and run `certsync-receive deploy`".into(),
                ExitCode::Unverified,
            ),
            (
                CheckProblem::Probe("127.0.0.1:1: connection refused".into()),
                "127.0.0.1:1: connection refused".into(),
                ExitCode::Unverified,
            ),
        ];
        for (problem, text, exit) in cases {
            assert_eq!(problem.to_string(), text);
            assert_eq!(
                serde_json::to_value(&problem).unwrap(),
                serde_json::Value::String(text)
            );
            assert_eq!(problem.exit(), exit, "{problem}");
        }
    }

    #[test]
    fn metrics_are_prometheus_text_with_escaped_labels() {
        let report = CheckReport {
            checked_at: 1_800_000_000,
            warn_days: 14,
            certs: vec![cert("ma\"il", "127.0.0.1:25 smtp", false)],
            folders: vec![FolderCheck {
                path: "/ssl/a\"b".into(),
                domains: vec!["a.example".into()],
                fingerprint: None,
                not_after: Some(1_700_000_000),
                days_left: Some(-3),
                stale: true,
                problem: Some("expired".into()),
            }],
            exit: ExitCode::Unverified,
        };
        let text = metrics_text(&report);
        assert!(
            text.contains("certsync_mailcow_folder_stale{folder=\"/ssl/a\\\"b\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "certsync_mailcow_folder_not_after_timestamp_seconds{folder=\"/ssl/a\\\"b\"} 1700000000\n"
        ));
        assert!(
            text.contains("certsync_cert_warnings{name=\"ma\\\"il\"} 0\n"),
            "{text}"
        );
        assert!(text
            .contains("certsync_cert_not_after_timestamp_seconds{name=\"ma\\\"il\"} 1900000000\n"));
        assert!(text.contains(
            "certsync_served_matches{name=\"ma\\\"il\",endpoint=\"127.0.0.1:25 smtp\"} 0\n"
        ));
        // No install time recorded: no sample, but the family is declared.
        assert!(text.contains("# TYPE certsync_cert_last_install_timestamp_seconds gauge\n"));
        assert!(!text.contains("certsync_cert_last_install_timestamp_seconds{"));
        assert!(text.ends_with("certsync_check_timestamp_seconds 1800000000\n"));
    }

    #[test]
    fn metrics_replace_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certsync.prom");
        std::fs::write(&path, "old").unwrap();
        let report = CheckReport {
            checked_at: 1,
            warn_days: 14,
            certs: vec![cert("mail", "127.0.0.1:443", true)],
            folders: vec![],
            exit: ExitCode::Success,
        };
        write_metrics(&path, &report).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("endpoint=\"127.0.0.1:443\"} 1\n"), "{text}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file left behind");
        assert!(write_metrics(&dir.path().join("missing/x.prom"), &report).is_err());
    }
}
