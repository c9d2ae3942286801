//! Steps 6 and 7 as the real binary runs them: reload through the Docker
//! API ([`crate::systems::docker`]) and check the served certificate
//! ([`crate::systems::probe`]).
//!
//! Invariants:
//! - Both steps run after the pair is installed, so neither undoes it: a
//!   failure is a failed step with exit 4 ([`ExitCode::Unverified`]) whose
//!   message names the service or endpoint and what to do. The pipeline
//!   remembers a failed reload ([`crate::pipeline::stage::Entry::ReloadOwed`]).
//! - Nothing is silently skipped: an empty `verify` list, or no `reload`
//!   entry and no `reload_units`, is a "skipped: none configured" step;
//!   every service, unit and endpoint gets a line of its own.
//! - The probe is blocking (std sockets), so it runs in `spawn_blocking`.
//! - An endpoint counts as verified only when clients with SNI = the first
//!   hostname and clients without SNI both get the installed leaf: mailcow
//!   serves per-domain folders to SNI clients and the top-level pair to
//!   the others, and either can be stale.
//! - When an endpoint still serves another leaf after its service's
//!   reload reported success, that service's containers are restarted
//!   once and the endpoint is verified again (a restart re-runs mailcow's
//!   start scripts, which rebuild postfix's SNI map and dovecot's
//!   `sni.conf`); only then is it exit 4. The same holds for a
//!   `reload_units` unit whose `systemctl reload` succeeded: it is
//!   restarted once ([`systemd::restart_stale`]) and its endpoints are
//!   verified again (Debian's `postfix.service` reloads with `/bin/true`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certsync_core::bundle::{parse_chain, CertInfo};
use certsync_core::protocol::MAX_CHAIN_BYTES;
use certsync_core::report::{CertReport, Step, StepStatus};
use certsync_core::{ExitCode, Fingerprint};

use crate::pipeline::PostInstall;
use crate::settings::{CertSpec, Settings};
use crate::systems::docker::{self, ReloadPlan};
use crate::systems::mailcow;
use crate::systems::probe::{self, Endpoint, ProbeError};
use crate::systems::systemd;

/// How long verify keeps probing an endpoint that still serves the old
/// certificate: postfix and dovecot finish a reload within a second or
/// two, nginx's workers hand over at once.
pub const VERIFY_RETRY: Duration = Duration::from_secs(8);

/// How long a served certificate must stay the same to count as served:
/// long enough for the old workers of a reloaded daemon to stop accepting.
pub const SETTLE: Duration = Duration::from_millis(500);

/// How long verify waits for a restarted container to serve again:
/// mailcow's images wait for their database and DNS before the daemon
/// starts, which takes far longer than a reload.
pub const RESTART_VERIFY_RETRY: Duration = Duration::from_secs(90);

/// The production [`PostInstall`].
pub struct ReloadVerify<'a> {
    pub settings: &'a Settings,
}

impl PostInstall for ReloadVerify<'_> {
    async fn reload(&self, spec: &CertSpec, dry_run: bool, report: &mut CertReport) {
        if spec.reload.is_empty() {
            // Units are reloaded next (`systemd::reload_step`), each with
            // its own line; "none" only when there are none either.
            if spec.reload_units.is_empty() {
                report.skipped(
                    Step::Reload,
                    "none configured (reload = [], reload_units = [])",
                );
            }
            return;
        }
        let plan = match ReloadPlan::from_config(&self.settings.docker, &spec.reload) {
            Ok(plan) => ReloadPlan {
                project_alternates: self.settings.project_alternates.clone(),
                ..plan
            },
            Err(e) => {
                report.failed(Step::Reload, e.to_string(), ExitCode::Unverified);
                return;
            }
        };
        let outcomes = match docker::reload(&plan, dry_run).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::error!(cert = %spec.name, "reload failed: {e}");
                let services = spec.reload.join(", ");
                let msg = if dry_run {
                    format!("would reload {services}, but: {e}")
                } else {
                    format!("{services} not reloaded: {e}. The certificate is installed; the next deploy, check or push retries the reload")
                };
                report.failed(Step::Reload, msg, ExitCode::Unverified);
                return;
            }
        };
        for o in outcomes {
            let line = format!("{} {}: {}", o.service, o.status, o.message);
            match (o.status.ok(), dry_run) {
                (true, true) => report.skipped(Step::Reload, format!("dry run: {line}")),
                (true, false) => report.done(Step::Reload, line),
                (false, _) => report.failed_on(Step::Reload, o.service, line, ExitCode::Unverified),
            }
        }
    }

    async fn verify(&self, spec: &CertSpec, leaf: Fingerprint, report: &mut CertReport) {
        let systemctl = Path::new(systemd::SYSTEMCTL);
        self.verify_using(systemctl, VERIFY_RETRY, spec, leaf, report)
            .await;
    }
}

impl ReloadVerify<'_> {
    /// [`PostInstall::verify`] with `systemctl` as the program that
    /// restarts stale units, each probe retried for `retry`.
    async fn verify_using(
        &self,
        systemctl: &Path,
        retry: Duration,
        spec: &CertSpec,
        leaf: Fingerprint,
        report: &mut CertReport,
    ) {
        if spec.verify.is_empty() {
            report.skipped(Step::Verify, "none configured (verify = [])");
            return;
        }
        let Some(sni) = spec.hostnames.first().cloned() else {
            report.failed(
                Step::Verify,
                "no hostname to send as SNI",
                ExitCode::Unverified,
            );
            return;
        };
        // Concurrently: each endpoint waits for its daemon and settles on
        // its own, so the step takes as long as the slowest, not the sum.
        let probes = spec
            .verify
            .iter()
            .map(|text| verify_endpoint(text, &sni, leaf, retry));
        let mut results = futures_util::future::join_all(probes).await;

        let restarted = self.restart_stale(spec, &results, report).await;
        if !restarted.is_empty() {
            let again: Vec<usize> = (0..results.len())
                .filter(|&i| results[i].is_err())
                .filter(|&i| {
                    mailcow::service_for_endpoint(&spec.verify[i])
                        .is_some_and(|s| restarted.iter().any(|r| r == s))
                })
                .collect();
            let probes = again
                .iter()
                .map(|&i| verify_endpoint(&spec.verify[i], &sni, leaf, RESTART_VERIFY_RETRY));
            let fresh = futures_util::future::join_all(probes).await;
            for (i, result) in again.into_iter().zip(fresh) {
                results[i] = result;
            }
        }

        let again = restart_stale_units(systemctl, spec, &results, report).await;
        let probes = again
            .iter()
            .map(|&i| verify_endpoint(&spec.verify[i], &sni, leaf, retry));
        let fresh = futures_util::future::join_all(probes).await;
        for (i, result) in again.into_iter().zip(fresh) {
            results[i] = result;
        }

        for (text, result) in spec.verify.iter().zip(results) {
            let shown = shown(text);
            match result {
                Ok(served) => {
                    tracing::info!(cert = %spec.name, endpoint = %shown, "verified: serves {}", served.short());
                    report.done(
                        Step::Verify,
                        format!(
                            "{shown} serves {} (with SNI {sni} and without SNI)",
                            served.short()
                        ),
                    );
                }
                Err(e) => {
                    let mut msg = e.to_string();
                    if let (ProbeError::Mismatch(m), Some(mc)) = (&e, &self.settings.mailcow) {
                        msg.push_str(&sni_hint(&mc.ssl_dir(), spec, m.served));
                    }
                    tracing::error!(cert = %spec.name, endpoint = %shown, "verify failed: {msg}");
                    report.failed_on(Step::Verify, shown, msg, ExitCode::Unverified);
                }
            }
        }
    }

    /// Restart, once, each service whose reload reported success but one
    /// of whose endpoints still serves another leaf. Returns the services
    /// restarted.
    async fn restart_stale(
        &self,
        spec: &CertSpec,
        results: &[Result<Fingerprint, ProbeError>],
        report: &mut CertReport,
    ) -> Vec<String> {
        let mut stale: Vec<(&'static str, &str)> = Vec::new();
        for (text, result) in spec.verify.iter().zip(results) {
            let Err(ProbeError::Mismatch(_)) = result else {
                continue;
            };
            let Some(service) = mailcow::service_for_endpoint(text) else {
                continue;
            };
            if spec.reload.iter().any(|s| s == service)
                && reloaded(report, service)
                && !stale.iter().any(|(s, _)| *s == service)
            {
                stale.push((service, text));
            }
        }
        if stale.is_empty() {
            return Vec::new();
        }
        let plan = match ReloadPlan::from_config(&self.settings.docker, &spec.reload) {
            Ok(plan) => plan,
            Err(e) => {
                report.failed(Step::Reload, e.to_string(), ExitCode::Unverified);
                return Vec::new();
            }
        };
        let mut restarted = Vec::new();
        for (service, text) in stale {
            let why = format!("{text} still served the old certificate after the reload");
            match docker::restart_service(&plan, service, &why).await {
                Ok(o) if o.status.ok() => {
                    report.done(
                        Step::Reload,
                        format!("{service} {}: {}", o.status, o.message),
                    );
                    restarted.push(service.to_string());
                }
                Ok(o) => report.failed_on(
                    Step::Reload,
                    service,
                    format!("{service} {}: {}", o.status, o.message),
                    ExitCode::Unverified,
                ),
                Err(e) => report.failed_on(
                    Step::Reload,
                    service,
                    format!("{service} not restarted ({why}): {e}"),
                    ExitCode::Unverified,
                ),
            }
        }
        restarted
    }
}

/// Restart, once, each `reload_units` unit whose `systemctl reload`
/// succeeded in this run but one of whose endpoints still serves another
/// leaf. Returns the indices of the endpoints to verify again.
///
/// Which unit serves an endpoint is guessed from the daemon a port
/// conventionally belongs to (postfix for 25, 465 and 587, dovecot for
/// 143, 993, 110, 995 and 4190, nginx for 443: a unit named after it);
/// when no reloaded unit is named after that daemon, every reloaded unit
/// is restarted, since any of them may be the one.
async fn restart_stale_units(
    systemctl: &Path,
    spec: &CertSpec,
    results: &[Result<Fingerprint, ProbeError>],
    report: &mut CertReport,
) -> Vec<usize> {
    let reloaded = systemd::reloaded(report, &spec.reload_units);
    if reloaded.is_empty() {
        return Vec::new();
    }
    let mut stale: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, (text, result)) in spec.verify.iter().zip(results).enumerate() {
        if let Err(ProbeError::Mismatch(_)) = result {
            stale.push((i, units_for_endpoint(text, &reloaded)));
        }
    }
    // Each unit once, naming only its own stale endpoints.
    let mut restarted: Vec<&String> = Vec::new();
    for unit in reloaded {
        let endpoints: Vec<String> = stale
            .iter()
            .filter(|(_, for_it)| for_it.contains(unit))
            .map(|(i, _)| shown(&spec.verify[*i]))
            .collect();
        if endpoints.is_empty() {
            continue;
        }
        let why = format!(
            "{} still served the old certificate after the reload",
            endpoints.join(", ")
        );
        if systemd::restart_stale(systemctl, unit, &why, report).await {
            restarted.push(unit);
        }
    }
    stale
        .into_iter()
        .filter(|(_, for_it)| for_it.iter().any(|u| restarted.contains(&u)))
        .map(|(i, _)| i)
        .collect()
}

/// How every line names the endpoint configured as `text`: its Display
/// (`127.0.0.1:587 submission`), the same for a success and a failure.
fn shown(text: &str) -> String {
    Endpoint::parse(text).map_or_else(|_| text.to_string(), |e| e.to_string())
}

/// The units of `reloaded` that may serve the endpoint `text` (see
/// [`restart_stale_units`]).
fn units_for_endpoint(text: &str, reloaded: &[&String]) -> Vec<String> {
    let daemon = mailcow::service_for_endpoint(text).and_then(|s| s.strip_suffix("-mailcow"));
    let named: Vec<String> = reloaded
        .iter()
        .filter(|u| daemon.is_some_and(|d| u.starts_with(d)))
        .map(|u| u.to_string())
        .collect();
    if named.is_empty() {
        reloaded.iter().map(|u| u.to_string()).collect()
    } else {
        named
    }
}

/// Did `service`'s reload in this run succeed (without a restart)?
fn reloaded(report: &CertReport, service: &str) -> bool {
    let prefix = format!("{service} {}:", docker::ReloadStatus::Reloaded);
    report.steps.iter().any(|s| {
        s.step == Step::Reload && s.status == StepStatus::Done && s.message.starts_with(&prefix)
    })
}

/// Probe one configured endpoint until it serves `expected` or `retry_for`
/// has passed.
///
/// One matching handshake is not enough: right after `nginx -s reload` the
/// new worker already serves the new certificate while the old worker can
/// still accept a connection and serve the old one (seen in the
/// real-nginx test). So a match counts once a second probe, [`SETTLE`]
/// later, sees the same certificate, and a client without SNI does too.
pub async fn verify_endpoint(
    text: &str,
    sni: &str,
    expected: Fingerprint,
    retry_for: Duration,
) -> Result<Fingerprint, ProbeError> {
    let endpoint = Endpoint::parse(text)?;
    let sni = sni.to_string();
    let shown = endpoint.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + retry_for;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let served = probe::verify(&endpoint, &sni, expected, left)?;
            std::thread::sleep(SETTLE);
            let again = probe::verify(&endpoint, &sni, expected, Duration::ZERO)
                .and_then(|_| probe::verify_with(&endpoint, None, expected, Duration::ZERO));
            match again {
                Ok(_) => return Ok(served),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => tracing::debug!(endpoint = %endpoint, "not settled yet: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|e| {
        Err(ProbeError::Dialogue {
            endpoint: shown,
            message: format!("the probe task failed: {e}"),
        })
    })
}

/// The leaf each per-domain folder under mailcow's ssl dir holds.
fn sni_folders(ssl_dir: &Path) -> Vec<(PathBuf, Option<CertInfo>)> {
    let Ok(entries) = std::fs::read_dir(ssl_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<(PathBuf, Option<CertInfo>)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let info = crate::fsutil::read_capped(&e.path().join("cert.pem"), MAX_CHAIN_BYTES)
                .ok()
                .flatten()
                .and_then(|pem| parse_chain(&pem).ok())
                .and_then(|certs| certs.first().map(CertInfo::of));
            (e.path(), info)
        })
        .collect();
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    dirs
}

/// mailcow serves `data/assets/ssl/<dir>/cert.pem` ahead of the top-level
/// pair for the names in `<dir>/domains`, whatever ENABLE_SSL_SNI says
/// ([`crate::systems::mailcow`]). A folder holding the served certificate, or
/// serving our hostnames, is the likely explanation of a mismatch: name it.
fn sni_hint(ssl_dir: &Path, spec: &CertSpec, served: Fingerprint) -> String {
    let serving = mailcow::folders_serving(ssl_dir, &spec.hostnames);
    let mut hints = Vec::new();
    for (dir, info) in sni_folders(ssl_dir) {
        if info.as_ref().is_some_and(|i| i.fingerprint == served) {
            hints.push(format!(
                "{} holds the served certificate: mailcow serves that per-domain folder ahead of {}; push a certificate that covers every name in {}, or remove or archive the folder and restart postfix-mailcow, dovecot-mailcow and nginx-mailcow",
                dir.join("cert.pem").display(),
                spec.cert_path.display(),
                dir.join("domains").display(),
            ));
        } else if serving.contains(&dir) {
            hints.push(format!(
                "per-domain folder {} serves {} (its domains file lists it); postfix-mailcow and dovecot-mailcow read these folders when they start",
                dir.display(),
                spec.hostnames.join(", ")
            ));
        }
    }
    if hints.is_empty() {
        String::new()
    } else {
        format!(". {}", hints.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
    use openssl::pkey::PKey;
    use openssl::ssl::{SslAcceptor, SslMethod};
    use openssl::x509::X509;

    /// With no `reload` entry but `reload_units`, the result says what
    /// the units did, not "none configured".
    #[tokio::test]
    async fn none_configured_only_when_neither_reload_nor_units_are() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::pipeline::tests::settings(dir.path());
        settings.certs[0].reload = vec![];
        settings.certs[0].reload_units = vec!["postfix.service".into()];
        let post = ReloadVerify {
            settings: &settings,
        };
        let spec = &settings.certs[0];
        let mut r = CertReport::new("mail", None);
        post.reload(spec, true, &mut r).await;
        systemd::reload_step(&spec.reload_units, true, &mut r).await;
        assert!(!r.to_string().contains("none configured"), "{r}");
        assert!(
            r.to_string().contains("systemctl reload postfix.service"),
            "{r}"
        );

        let mut spec = spec.clone();
        spec.reload_units.clear();
        let mut r = CertReport::new("mail", None);
        post.reload(&spec, true, &mut r).await;
        assert_eq!(
            r.to_string(),
            "mail: reload skipped: none configured (reload = [], reload_units = [])"
        );
    }

    /// A TLS server on 127.0.0.1 that serves `old` until `flag` exists,
    /// then `new`: a daemon that keeps its old pair until restarted.
    fn daemon(old: &TestLeaf, new: &TestLeaf, flag: PathBuf) -> u16 {
        let acceptor = |leaf: &TestLeaf| {
            let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
            let chain = X509::stack_from_pem(&leaf.chain_pem).unwrap();
            b.set_certificate(&chain[0]).unwrap();
            for c in &chain[1..] {
                b.add_extra_chain_cert(c.clone()).unwrap();
            }
            b.set_private_key(&PKey::private_key_from_pem(leaf.key_pem.expose()).unwrap())
                .unwrap();
            b.build()
        };
        let (old, new) = (acceptor(old), acceptor(new));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Lives as long as the test process: it only answers handshakes.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let acceptor = if flag.exists() { &new } else { &old };
                let _ = acceptor.accept(stream);
            }
        });
        port
    }

    /// A unit whose `systemctl reload` succeeds (Debian's postfix.service
    /// is `ExecReload=/bin/true`) while its daemon keeps the old pair:
    /// restarted once, then verified again; exit 4 only when the restart
    /// did not help either.
    #[tokio::test]
    async fn a_unit_still_serving_the_old_pair_after_its_reload_is_restarted_once() {
        let ca = TestCa::new();
        let (old, new) = (
            ca.leaf(KeyKind::P256, &["mail.example.com"]),
            ca.leaf(KeyKind::P256, &["mail.example.com"]),
        );
        for restart_helps in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let flag = dir.path().join("restarted");
            let port = daemon(&old, &new, flag.clone());
            let mut settings = crate::pipeline::tests::settings(dir.path());
            let spec = &mut settings.certs[0];
            spec.reload = vec![];
            spec.reload_units = vec!["postfix.service".into(), "dovecot.service".into()];
            spec.verify = vec![format!("127.0.0.1:{port} smtps")];
            let on_restart = if restart_helps {
                format!("touch {flag:?}")
            } else {
                ":".into()
            };
            let systemctl = systemd::fake(dir.path(), &[], &on_restart);
            let post = ReloadVerify {
                settings: &settings,
            };
            let spec = &settings.certs[0];
            let mut r = CertReport::new("mail", None);
            systemd::reload_with(&systemctl, &spec.reload_units, false, &mut r).await;
            post.verify_using(
                &systemctl,
                Duration::from_secs(2),
                spec,
                new.fingerprint(),
                &mut r,
            )
            .await;
            // Only the unit named after port 465's daemon is restarted.
            assert_eq!(
                systemd::calls(dir.path()),
                [
                    "reload postfix.service",
                    "reload dovecot.service",
                    "restart postfix.service"
                ],
                "{r}"
            );
            let text = r.to_string();
            assert!(
                text.contains(&format!("127.0.0.1:{port} smtps still served the old certificate after the reload: restarted postfix.service")),
                "{text}"
            );
            if restart_helps {
                assert_eq!(r.exit, ExitCode::Success, "{text}");
                assert!(
                    text.contains(&format!("verify done: 127.0.0.1:{port} smtps serves")),
                    "{text}"
                );
            } else {
                assert_eq!(r.exit, ExitCode::Unverified, "{text}");
                assert!(
                    text.contains(&format!("verify failed: 127.0.0.1:{port} smtps (SNI mail.example.com) serves certificate")),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn a_mismatch_names_the_per_domain_folder_that_serves_it() {
        let ssl = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let served = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        // Named after nothing: its domains file decides what it serves.
        let folder = ssl.path().join("acme-old");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("cert.pem"), &served.chain_pem).unwrap();
        std::fs::write(folder.join("key.pem"), served.key_pem.expose()).unwrap();
        std::fs::write(
            folder.join("domains"),
            "mail.example.com autodiscover.example.com",
        )
        .unwrap();
        let other = ssl.path().join("other.example.org");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("cert.pem"), &served.chain_pem).unwrap();
        let spec = CertSpec {
            name: "mail".into(),
            hostnames: vec!["mail.example.com".into()],
            cert_path: ssl.path().join("cert.pem"),
            key_path: ssl.path().join("key.pem"),
            reload: vec![],
            verify: vec![],
            folders_root: None,
            hook: None,
            reload_units: vec![],
        };
        let hint = sni_hint(ssl.path(), &spec, served.fingerprint());
        assert!(
            hint.contains(&format!(
                "{} holds the served certificate",
                folder.join("cert.pem").display()
            )),
            "{hint}"
        );

        // A folder covering our name with another cert: named as suspect.
        let unrelated = ca.leaf(KeyKind::P256, &["x.example.net"]).fingerprint();
        let hint = sni_hint(ssl.path(), &spec, unrelated);
        assert!(
            hint.contains(&format!(
                "per-domain folder {} serves mail.example.com",
                folder.display()
            )),
            "{hint}"
        );
        assert!(!hint.contains("other.example.org"), "{hint}");

        let empty = tempfile::tempdir().unwrap();
        assert_eq!(sni_hint(empty.path(), &spec, unrelated), "");
    }
}
