//! Steps 6 and 7 through the real `certsync-receive` binary: `install`,
//! `deploy` and `check` against a private dockerd with containers labelled
//! like mailcow's, and Debian's real nginx serving the mounted ssl dir.
//!
//! Each test starts its own dockerd (see `certsync_tests::docker`). Timings
//! are printed; run with `--nocapture` to see them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_core::Fingerprint;
use certsync_tests::docker::{self, find_program, wait_until};
use certsync_tests::receiver::Mailhost;
use certsync_tests::shown;
use certsync_tests::{need, needs};

const HOST: &str = "mail.example.com";
const MAILCOW: [&str; 3] = ["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow"];

/// A mailhost whose receive.toml talks to `socket` for compose project
/// `project`, reloading `reload` and verifying `verify`.
fn mailhost(socket: &Path, project: &str, reload: &[&str], verify: &[String]) -> Mailhost {
    let extra = format!("[docker]\nsocket = {socket:?}\nproject = {project:?}\n");
    let host = Mailhost::with_extra(&[HOST], &extra);
    let text = std::fs::read_to_string(&host.config).unwrap();
    let text = text
        .replace("reload = []", &format!("reload = {reload:?}"))
        .replace("verify = []", &format!("verify = {verify:?}"));
    std::fs::write(&host.config, text).unwrap();
    host
}

fn marker(host: &Mailhost) -> std::path::PathBuf {
    host.staging.join("mail.reload-owed")
}

fn assert_installed(host: &Mailhost, leaf: &TestLeaf) {
    let (cert, key) = host.installed().expect("a pair is installed");
    assert_eq!(cert, leaf.chain_pem, "the new chain is installed");
    assert_eq!(key, leaf.key_pem.expose(), "the new key is installed");
}

#[test]
fn install_reloads_mailcows_containers_and_leaves_a_decoy_project_alone() {
    needs!(let d = docker::engine());
    let postfix = d.stand_in("mc-postfix-mailcow-1", "mc", "postfix-mailcow", 0);
    let dovecot = d.stand_in("mc_dovecot-mailcow_1", "mc", "dovecot-mailcow", 0);
    let nginx = d.stand_in("mc-nginx-mailcow-1", "mc", "nginx-mailcow", 0);
    let decoy = d.stand_in("decoy-postfix-mailcow-1", "decoy", "postfix-mailcow", 0);
    let host = mailhost(d.socket(), "mc", &MAILCOW, &[]);
    let leaf = TestCa::new().leaf(KeyKind::P384, &[HOST]);

    let out = host.install_leaf(&leaf, &[]);
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_installed(&host, &leaf);
    assert_eq!(postfix.calls(), ["postfix reload"], "{all}");
    assert_eq!(dovecot.calls(), ["dovecot reload"], "{all}");
    assert_eq!(nginx.calls(), ["nginx -s reload"], "{all}");
    assert!(decoy.calls().is_empty(), "the decoy was touched: {all}");
    for service in MAILCOW {
        assert!(
            all.contains(&format!("mail: reload done: {service} reloaded")),
            "{all}"
        );
    }
    assert!(
        all.contains("verify skipped: none configured"),
        "empty verify is said, not silent: {all}"
    );
    assert!(!marker(&host).exists(), "no reload is owed");
    let at: i64 = std::fs::read_to_string(host.staging.join("mail.installed-at"))
        .expect("the install time is recorded")
        .trim()
        .parse()
        .unwrap();
    assert!((at - certsync_core::testutil::now_unix()).abs() < 600);
}

#[test]
fn a_stopped_container_is_exit_4_and_the_owed_reload_is_retried_by_deploy() {
    needs!(let d = docker::engine());
    let postfix = d.stand_in("mc-postfix-mailcow-1", "mc", "postfix-mailcow", 0);
    let dovecot = d.stand_in("mc-dovecot-mailcow-1", "mc", "dovecot-mailcow", 0);
    postfix.container.stop();
    let host = mailhost(
        d.socket(),
        "mc",
        &["postfix-mailcow", "dovecot-mailcow"],
        &[],
    );
    let leaf = TestCa::new().leaf(KeyKind::Rsa2048, &[HOST]);

    let out = host.install_leaf(&leaf, &[]);
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert!(
        all.contains("reload failed: postfix-mailcow stopped"),
        "names the service: {all}"
    );
    assert!(all.contains("docker start mc-postfix-mailcow-1"), "{all}");
    assert_installed(&host, &leaf);
    assert!(marker(&host).exists(), "the owed reload is remembered");
    assert_eq!(dovecot.calls(), ["dovecot reload"], "{all}");

    // A second install of the same pair says nothing to do but still
    // retries; the container is still stopped, so it stays owed.
    let again = host.install_leaf(&leaf, &[]);
    assert_eq!(again.status.code(), Some(4), "{}", shown(&again));
    assert!(marker(&host).exists());

    d.docker_ok(&["start", "mc-postfix-mailcow-1"]);
    wait_until(Duration::from_secs(20), || postfix.starts() >= 2).expect("postfix restarted");
    let out = host.cmd().arg("deploy").output().unwrap();
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("a reload is owed"), "{all}");
    assert!(!marker(&host).exists(), "the marker is gone: {all}");
    assert_eq!(postfix.calls(), ["postfix reload"], "{all}");
    assert_installed(&host, &leaf);

    // Nothing owed any more: deploy has nothing to do.
    let out = host.cmd().arg("deploy").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(postfix.calls(), ["postfix reload"]);
}

#[test]
fn a_failing_reload_restarts_the_container_and_says_so() {
    needs!(let d = docker::engine());
    let dovecot = d.stand_in("mc-dovecot-mailcow-1", "mc", "dovecot-mailcow", 1);
    let host = mailhost(d.socket(), "mc", &["dovecot-mailcow"], &[]);
    let leaf = TestCa::new().leaf(KeyKind::P256, &[HOST]);

    let out = host.install_leaf(&leaf, &[]);
    let all = shown(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a restart reads the new cert: {all}"
    );
    assert!(all.contains("dovecot-mailcow restarted"), "{all}");
    assert!(
        all.contains("restarted container mc-dovecot-mailcow-1"),
        "{all}"
    );
    assert_eq!(dovecot.calls(), ["dovecot reload"]);
    wait_until(Duration::from_secs(20), || dovecot.starts() >= 2)
        .expect("the container was restarted");
    assert!(!marker(&host).exists());
}

#[test]
fn dry_run_lists_the_containers_it_would_reload_and_changes_nothing() {
    needs!(let d = docker::engine());
    let postfix = d.stand_in("mc-postfix-mailcow-1", "mc", "postfix-mailcow", 0);
    let nginx = d.stand_in("mc-nginx-mailcow-1", "mc", "nginx-mailcow", 0);
    let host = mailhost(d.socket(), "mc", &["postfix-mailcow", "nginx-mailcow"], &[]);
    let leaf = TestCa::new().leaf(KeyKind::Ed25519, &[HOST]);
    let before = host.snapshot();

    let out = host.install_leaf(&leaf, &["--dry-run"]);
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("postfix reload` in mc-postfix-mailcow-1"),
        "{all}"
    );
    assert!(
        all.contains("would run `nginx -s reload` in mc-nginx-mailcow-1"),
        "{all}"
    );
    assert!(postfix.calls().is_empty() && nginx.calls().is_empty());
    assert!(host.nothing_installed());
    assert_eq!(host.snapshot(), before, "the dry run wrote nothing");
    assert!(!marker(&host).exists());
}

#[test]
fn an_unreachable_docker_socket_is_exit_4_after_the_install() {
    // No engine needed: the socket is a path nothing listens on.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let host = mailhost(&socket, "mc", &["postfix-mailcow"], &[]);
    let leaf = TestCa::new().leaf(KeyKind::P384, &[HOST]);

    let out = host.install_leaf(&leaf, &[]);
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert!(
        all.contains(&format!(
            "the Docker socket {} does not exist",
            socket.display()
        )),
        "{all}"
    );
    assert!(all.contains("The certificate is installed"), "{all}");
    assert_installed(&host, &leaf);
    assert!(marker(&host).exists());

    // `check` retries it too, and still reports it owed.
    let out = host.cmd().args(["check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", shown(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["certs"][0]["reload_owed"], true, "{v}");
    assert_eq!(v["certs"][0]["valid"], true, "{v}");
}

/// The fingerprint `openssl s_client` sees on 127.0.0.1:port with SNI HOST.
fn s_client_fingerprint(port: u16) -> Fingerprint {
    let openssl = find_program("openssl").expect("openssl");
    let s = Command::new(&openssl)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", HOST])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let mut x = Command::new(&openssl)
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x.stdin.take().unwrap().write_all(&s.stdout).unwrap();
    let out = x.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    line.split('=')
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint from openssl: {line:?}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn real_nginx_serves_the_installed_certificate_and_check_sees_when_it_does_not() {
    needs!(let d = docker::engine());
    needs!(need::nginx(), need::openssl());
    let ca = TestCa::new();
    let first = ca.leaf(KeyKind::P384, &[HOST]);
    // nginx needs a pair to start with: what was there before certsync.
    let placeholder = |h: &Mailhost, leaf: &TestLeaf| {
        std::fs::write(h.cert_path(), &leaf.chain_pem).unwrap();
        std::fs::write(h.key_path(), leaf.key_pem.expose()).unwrap();
    };
    // The port is known only once nginx runs, so the host is made in two
    // steps: a config without verify, then with it.
    let host = mailhost(d.socket(), "mc", &["nginx-mailcow"], &[]);
    placeholder(&host, &first);
    let nginx = d.nginx_mailcow("mc-nginx-mailcow-1", "mc", &host.ssl, HOST);
    let endpoint = format!("127.0.0.1:{}", nginx.port);
    let cfg = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        cfg.replace("verify = []", &format!("verify = [{endpoint:?}]")),
    )
    .unwrap();
    assert_eq!(s_client_fingerprint(nginx.port), first.fingerprint());

    let second = ca.leaf(KeyKind::Rsa2048, &[HOST]);
    let (chain, key) = host.files_for(&second);
    let t = Instant::now();
    let out = host.install(&chain, &key, &[]);
    let took = t.elapsed();
    eprintln!("install + reload + verify against real nginx took {took:?}");
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!(
            // Written without a word, it is named by its protocol.
            "verify done: {endpoint} tls serves {}",
            second.fingerprint().short()
        )),
        "{all}"
    );
    assert_eq!(s_client_fingerprint(nginx.port), second.fingerprint());

    let metrics = host.root.path().join("certsync.prom");
    let out = host
        .cmd()
        .args(["check", "--json", "--metrics"])
        .arg(&metrics)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["certs"][0];
    assert_eq!(c["valid"], true, "{v}");
    assert_eq!(c["endpoints"][0]["endpoint"], endpoint.as_str(), "{v}");
    assert_eq!(c["endpoints"][0]["matches"], true, "{v}");
    let days = c["days_left"].as_i64().unwrap();
    assert!((88..=90).contains(&days), "{v}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for name in [
        "certsync_cert_not_after_timestamp_seconds{name=\"mail\"}",
        "certsync_cert_last_install_timestamp_seconds{name=\"mail\"}",
        "certsync_cert_valid{name=\"mail\"} 1",
        "certsync_cert_reload_owed{name=\"mail\"} 0",
    ] {
        assert!(prom.contains(name), "{name} missing in:\n{prom}");
    }
    assert!(
        prom.contains(&format!(
            "certsync_served_matches{{name=\"mail\",endpoint=\"{endpoint}\"}} 1"
        )),
        "{prom}"
    );

    // A new pair lands on disk without a reload (say, copied by hand):
    // nginx still serves the previous one, and check says where.
    let third = ca.leaf(KeyKind::P256, &[HOST]);
    placeholder(&host, &third);
    let out = host
        .cmd()
        .args(["check", "--metrics"])
        .arg(&metrics)
        .output()
        .unwrap();
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert!(
        all.contains(&format!(
            "{endpoint} serves {} instead",
            second.fingerprint().short()
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!("PROBLEM: {endpoint} (SNI {HOST})")),
        "{all}"
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains(&format!(
            "certsync_served_matches{{name=\"mail\",endpoint=\"{endpoint}\"}} 0"
        )),
        "{prom}"
    );
}

/// Write a pair where nginx, postfix and dovecot find it at start.
fn put_pair(host: &Mailhost, leaf: &TestLeaf) {
    std::fs::write(host.cert_path(), &leaf.chain_pem).unwrap();
    std::fs::write(host.key_path(), leaf.key_pem.expose()).unwrap();
}

#[test]
fn real_postfix_dovecot_and_nginx_all_serve_the_pair_after_install() {
    needs!(let d = docker::engine());
    needs!(need::mailcow_daemons());
    let ca = TestCa::new();
    let host = mailhost(d.socket(), "mc", &MAILCOW, &[]);
    put_pair(&host, &ca.leaf(KeyKind::P384, &[HOST]));
    let postfix = d.postfix_mailcow("mc-postfix-mailcow-1", "mc", &host.ssl);
    let dovecot = d.dovecot_mailcow("mc-dovecot-mailcow-1", "mc", &host.ssl);
    let nginx = d.nginx_mailcow("mc-nginx-mailcow-1", "mc", &host.ssl, HOST);
    let mut endpoints = postfix.endpoints();
    endpoints.extend(dovecot.endpoints());
    endpoints.push(format!("127.0.0.1:{} tls", nginx.port));
    assert_eq!(endpoints.len(), 6, "{endpoints:?}");
    let cfg = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        cfg.replace("verify = []", &format!("verify = {endpoints:?}")),
    )
    .unwrap();

    let new = ca.leaf(KeyKind::Rsa2048, &[HOST]);
    let (chain, key) = host.files_for(&new);
    let t = Instant::now();
    let out = host.install(&chain, &key, &[]);
    eprintln!(
        "install + reload of 3 services + verify of {} endpoints took {:?}",
        endpoints.len(),
        t.elapsed()
    );
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for e in &endpoints {
        assert!(
            all.contains(&format!(
                "verify done: {e} serves {}",
                new.fingerprint().short()
            )),
            "{e}: {all}"
        );
    }

    let out = host.cmd().args(["check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let served = v["certs"][0]["endpoints"].as_array().unwrap();
    assert_eq!(served.len(), 6, "{v}");
    assert!(served.iter().all(|e| e["matches"] == true), "{v}");
}

#[test]
fn check_warns_before_expiry_and_refuses_a_broken_pair() {
    // No Docker needed: nothing to reload or verify.
    let host = Mailhost::new(&[HOST]);
    let out = host.cmd().arg("check").output().unwrap();
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(3), "nothing installed: {all}");
    assert!(all.contains("no pair installed at"), "{all}");

    let ca = TestCa::new();
    let short = ca.leaf_with(
        KeyKind::P256,
        &[HOST],
        certsync_core::testutil::Validity {
            not_before: -3600,
            not_after: 10 * 86_400 + 3600,
        },
    );
    let out = host.install_leaf(&short, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));

    let out = host.cmd().arg("check").output().unwrap();
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(3), "10 days < 14: {all}");
    assert!(
        all.contains("expires in 10 days (warning below 14)"),
        "{all}"
    );

    let out = host
        .cmd()
        .args(["check", "--json", "--warn-days", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["certs"][0]["days_left"], 10, "{v}");
    assert_eq!(v["certs"][0]["valid"], true, "{v}");

    // Another key under the same certificate: installed but not matching.
    let other = ca.leaf(KeyKind::P256, &[HOST]);
    std::fs::write(host.key_path(), other.key_pem.expose()).unwrap();
    let out = host
        .cmd()
        .args(["check", "--warn-days", "7"])
        .output()
        .unwrap();
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("is not valid"), "{all}");
}
