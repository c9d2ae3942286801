//! The real `certsync-receive` and `certsync-push` binaries against the
//! mailcow-faithful environment ([`certsync_tests::mailcow`]), with the
//! `[mailcow]` preset reading its mailcow.conf:
//!
//! - an install is served on every default endpoint (SMTP and submission
//!   with STARTTLS, SMTPS, IMAPS, HTTPS, where mailcow.conf publishes
//!   them), to clients with and without SNI, by reloads alone;
//! - a bare `postfix reload` (configured by hand) leaves SNI clients on the
//!   old leaf: verify sees it, restarts postfix once, and succeeds;
//! - with `NGINX_USE_PROXY_PROTOCOL=YES` the HTTPS probe sends a PROXY
//!   header;
//! - a verify that fails leaves the pair owed: the next push does not say
//!   "nothing to do" but retries the reload and the verify;
//! - a server that is stale only for clients without SNI fails verify and
//!   `check`.
//!
//! Each test starts its own dockerd; timings are printed (`--nocapture`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf, Validity};
use certsync_core::Fingerprint;
use certsync_tests::docker::{wait_until, Dockerd};
use certsync_tests::e2e::Process;
use certsync_tests::mailcow::{self, Conf, Mailcow};
use certsync_tests::npmhost::{local_target_for, NpmHost};
use certsync_tests::shown;
use certsync_tests::{bins, need, needs};

const HOST: &str = "mail.example.com";

/// The pair mailcow had before certsync: older, so a newer one is no
/// rollback.
fn mailcows_own(ca: &TestCa) -> TestLeaf {
    ca.leaf_with(
        KeyKind::Rsa2048,
        &[HOST],
        Validity {
            not_before: -60 * 86_400,
            not_after: 30 * 86_400,
        },
    )
}

/// A mailcow host whose own pair (top level and acme-left folder)
/// predates certsync.
fn mailcow_host<'d>(d: &'d Dockerd, conf: Conf, ca: &TestCa) -> Mailcow<'d> {
    let own = mailcows_own(ca);
    Mailcow::start(d, conf, &own, Some(&own))
}

/// receive.toml with the `[mailcow]` preset and this engine's socket;
/// `extra` is appended (TOML).
fn receive_toml(m: &Mailcow<'_>, d: &Dockerd, cert_extra: &str, extra: &str) -> PathBuf {
    let root = m.dir.parent().unwrap();
    let staging = root.join("staging");
    let path = root.join("receive.toml");
    std::fs::write(
        &path,
        format!(
            "staging_dir = {staging:?}\ndane = \"off\"\nca_file = {ca_file:?}\n\n[mailcow]\ndir = {dir:?}\n\n[[cert]]\nname = \"mail\"\n{cert_extra}\n[docker]\nsocket = {socket:?}\n{extra}",
            ca_file = certsync_tests::receiver::write_test_ca(root),
            dir = m.dir,
            socket = d.socket(),
        ),
    )
    .unwrap();
    path
}

fn install(config: &Path, leaf: &TestLeaf) -> (Output, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("fullchain.pem"),
        dir.path().join("privkey.pem"),
    );
    std::fs::write(&cert, &leaf.chain_pem).unwrap();
    std::fs::write(&key, leaf.key_pem.expose()).unwrap();
    let started = Instant::now();
    let out = Command::new(bins::receive())
        .arg("--config")
        .arg(config)
        .args(["install", "--name", "mail", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .env("CERTSYNC_LOG", "info")
        .env_remove("CERTSYNC_RECEIVE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn served(e: &mailcow::Endpoint, sni: Option<&str>, proxy: bool) -> Result<Fingerprint, String> {
    e.served(sni, proxy)
}

/// Every default endpoint serves `leaf`, with and without SNI.
fn assert_served_everywhere(m: &Mailcow<'_>, leaf: &TestLeaf, proxy: bool) {
    for e in m.default_endpoints() {
        let proxy = proxy && e.service == "nginx-mailcow";
        for sni in [Some(HOST), None] {
            assert_eq!(
                served(&e, sni, proxy),
                Ok(leaf.fingerprint()),
                "{} {sni:?}",
                e.verify()
            );
        }
    }
}

/// When each service's container last started.
fn started_at(m: &Mailcow<'_>, services: &[&str]) -> Vec<String> {
    services
        .iter()
        .map(|s| m.container(s).inspect("{{.State.StartedAt}}"))
        .collect()
}

#[test]
fn an_install_is_served_on_every_default_endpoint_with_and_without_sni_by_reloads_alone() {
    needs!(let d = mailcow::engine());
    let ca = TestCa::new();
    let m = mailcow_host(&d, Conf::loopback(HOST), &ca);
    let config = receive_toml(&m, &d, "", "");
    let before = started_at(&m, &["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow"]);
    let new = ca.leaf(KeyKind::P384, &[HOST]);

    let (out, took) = install(&config, &new);
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    println!("install + reloads + verify of 5 endpoints: {took:?}");
    for e in m.default_endpoints() {
        assert!(
            all.contains(&format!(
                "{} serves {} (with SNI {HOST} and without SNI)",
                e.verify(),
                new.fingerprint().short()
            )),
            "{} verified: {all}",
            e.verify()
        );
    }
    assert!(!all.contains("restarted"), "reloads were enough: {all}");
    let after = started_at(&m, &["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow"]);
    assert_eq!(before, after, "no container was restarted");
    // The acme-left folder (named after MAILCOW_HOSTNAME) got the pair too.
    assert_eq!(
        std::fs::read(m.acme_dir().join("cert.pem")).unwrap(),
        new.chain_pem
    );
    assert_served_everywhere(&m, &new, false);
}

#[test]
fn a_bare_postfix_reload_is_followed_by_one_restart_of_postfix_and_then_verified() {
    needs!(let d = mailcow::engine());
    let ca = TestCa::new();
    let m = mailcow_host(&d, Conf::loopback(HOST), &ca);
    // What certsync did before: `postfix reload` alone.
    let config = receive_toml(
        &m,
        &d,
        "",
        "[docker.reload]\n\"postfix-mailcow\" = [\"postfix\", \"reload\"]\n",
    );
    let postfix_started = started_at(&m, &["postfix-mailcow"]);
    let others = started_at(&m, &["dovecot-mailcow", "nginx-mailcow"]);
    let new = ca.leaf(KeyKind::P384, &[HOST]);

    let (out, took) = install(&config, &new);
    let all = shown(&out);
    println!("install with a bare postfix reload, then a restart: {took:?}");
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("still served the old certificate after the reload")
            && all.contains("postfix-mailcow restarted"),
        "postfix was restarted because verify saw the old leaf: {all}"
    );
    assert_ne!(started_at(&m, &["postfix-mailcow"]), postfix_started);
    let after = started_at(&m, &["dovecot-mailcow", "nginx-mailcow"]);
    assert_eq!(after, others, "only postfix was restarted");
    assert_served_everywhere(&m, &new, false);
}

#[test]
fn with_the_proxy_protocol_the_https_probe_sends_a_proxy_header() {
    needs!(let d = mailcow::engine());
    let ca = TestCa::new();
    let mut conf = Conf::loopback(HOST);
    conf.proxy_protocol = "YES".into();
    let m = mailcow_host(&d, conf, &ca);
    let https = m
        .default_endpoints()
        .into_iter()
        .find(|e| e.word == "https")
        .unwrap();
    // Without the header nginx refuses the handshake: the naive probe fails.
    assert!(served(&https, Some(HOST), false).is_err());
    let config = receive_toml(&m, &d, "", "");
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let (out, _) = install(&config, &new);
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!("{} proxy serves", https.verify())),
        "{all}"
    );
    assert_served_everywhere(&m, &new, true);
}

#[test]
fn a_failed_verify_is_retried_by_the_next_push_instead_of_nothing_to_do() {
    needs!(let d = mailcow::engine());
    let ca = TestCa::new();
    let m = mailcow_host(&d, Conf::loopback(HOST), &ca);
    // One more endpoint, not up at the first push (a service that was
    // down while certsync verified).
    let late = certsync_tests::docker::free_port();
    let mut verify: Vec<String> = m.default_endpoints().iter().map(|e| e.verify()).collect();
    verify.push(format!("127.0.0.1:{late} tls"));
    let config = receive_toml(&m, &d, &format!("verify = {verify:?}\n"), "");
    let staging = m.dir.parent().unwrap().join("staging");
    let marker = staging.join("mail.reload-owed");

    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let npm = NpmHost::new(&new);
    npm.write_config(&npm.cert_source(), &[local_target_for("mailcow", &config)]);

    let first = npm.run(&["push"]);
    first.assert_code(4);
    assert!(
        first.both().contains(&format!("127.0.0.1:{late}")),
        "{}",
        first.both()
    );
    assert!(
        marker.exists(),
        "the unverified pair is owed: {}",
        first.both()
    );

    // The service comes up, serving what is installed.
    let ssl = m.ssl_dir();
    let mut server_cmd = Command::new("openssl");
    server_cmd
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{late}"))
        .arg("-cert")
        .arg(ssl.join("cert.pem"))
        .arg("-key")
        .arg(ssl.join("key.pem"));
    let _server = Process::spawn(
        "openssl s_server",
        server_cmd,
        &npm.root.path().join("s_server.log"),
    );
    wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", late)).is_ok()
    })
    .expect("openssl s_server listens");

    let second = npm.run(&["push"]);
    let all = second.both();
    assert_eq!(second.code, Some(0), "{all}");
    assert!(
        all.contains("a reload is owed"),
        "the owed verify was retried: {all}"
    );
    assert!(!marker.exists(), "nothing owed any more: {all}");

    let third = npm.run(&["push"]);
    third.assert_code(0);
    assert!(third.both().contains("nothing to do"), "{}", third.both());
    assert_served_everywhere(&m, &new, false);
}

/// A server that gives clients with SNI the installed leaf and clients
/// without SNI another (mailcow's per-domain folder fresh, its top-level
/// pair stale): `install`'s verify and `check` both say so, naming the
/// clients without SNI. Before, both probed with SNI only and passed.
#[test]
fn a_stale_certificate_for_clients_without_sni_is_caught_by_verify_and_check() {
    needs!(need::openssl());
    let ca = TestCa::new();
    let installed = ca.leaf(KeyKind::P256, &[HOST]);
    let stale = mailcows_own(&ca);
    let dir = tempfile::tempdir().unwrap();
    let pem = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let port = certsync_tests::docker::free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(pem("stale.pem", &stale.chain_pem))
        .arg("-key")
        .arg(pem("stale.key", stale.key_pem.expose()))
        .args(["-servername", HOST, "-cert2"])
        .arg(pem("new.pem", &installed.chain_pem))
        .arg("-key2")
        .arg(pem("new.key", installed.key_pem.expose()));
    let _server = Process::spawn("openssl s_server", cmd, &dir.path().join("s_server.log"));
    wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .expect("openssl s_server listens");

    let host = certsync_tests::receiver::Mailhost::new(&[HOST]);
    let toml = std::fs::read_to_string(&host.config).unwrap().replace(
        "verify = []",
        &format!("verify = [\"127.0.0.1:{port} tls\"]"),
    );
    std::fs::write(&host.config, toml).unwrap();
    let out = host.install_leaf(&installed, &[]);
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert!(all.contains("(no SNI) serves"), "{all}");

    let out = host.cmd().arg("check").output().unwrap();
    let all = shown(&out);
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert!(
        all.contains(&format!(
            "serves {} to clients without SNI",
            stale.fingerprint()
        )),
        "{all}"
    );
}
