//! The receiver's own policy, through the real `certsync-receive` binary
//! (issue #11, items 3, 4 and 7):
//!
//! - **Rollback is the receiver's decision** (item 3): a pusher's `--force`,
//!   on the wire or in the `deploy.request` that the unprivileged `serve`
//!   writes, counts only with `allow_remote_force = true`; root's own
//!   `deploy --force` / `install --force` always does. (Through a real sshd:
//!   `push_ssh.rs`, `dry_run_changes_nothing_and_a_remote_force_needs_allow_remote_force`.)
//! - **Only a certificate a client would accept** (item 4): the chain must
//!   verify to a trust anchor (the system store, `ca_file`); a CA leaf, a
//!   leaf without serverAuth and a weak key are refused, each with its
//!   reason, and nothing is written.
//! - **No secret bytes in any message** (item 7): key material fed in broken
//!   forms never reaches stderr, the report or `deploy.result`.

use std::process::Output;

use certsync_core::bundle::{Bundle, SecretBytes};
use certsync_core::report::Report;
use certsync_core::testutil::{
    ec_key, rsa_key, self_signed_leaf, KeyKind, Profile, SecretWindows, TestCa, TestLeaf, Validity,
};
use certsync_core::ExitCode;
use certsync_receive::pipeline::handoff::{self, Request};
use certsync_receive::pipeline::stage::{Entry, StagingDir};
use certsync_tests::receiver::{push_session, Mailhost};
use certsync_tests::shown;
use openssl::nid::Nid;

const HOST: &str = "mail.example.com";

/// A leaf valid for 30 days: older than [`TestCa::leaf`]'s 90, so
/// installing it over one of those is a rollback.
fn shorter(ca: &TestCa) -> TestLeaf {
    ca.leaf_with(
        KeyKind::P256,
        &[HOST],
        Validity {
            not_before: -3600,
            not_after: 30 * 86_400,
        },
    )
}

/// What the unprivileged `certsync` user can do in handoff mode: stage a
/// pair and write a deploy request, here one that asks for `force`.
fn stage_request(host: &Mailhost, chain: &[u8], key: &[u8], force: Option<bool>) {
    let bundle = Bundle::new(chain.to_vec(), SecretBytes::new(key.to_vec()));
    let staging = StagingDir::open(&host.staging).unwrap();
    staging.stage("mail", &bundle).unwrap();
    if let Some(force) = force {
        let req = Request {
            id: handoff::new_id(),
            names: vec!["mail".into()],
            force,
        };
        handoff::write_request(&staging, &req).unwrap();
    }
}

fn deploy(host: &Mailhost, extra: &[&str]) -> Output {
    host.cmd().arg("deploy").args(extra).output().unwrap()
}

fn deploy_result(host: &Mailhost) -> Option<String> {
    std::fs::read_to_string(host.staging.join(Entry::Result.name())).ok()
}

// ------------------------------------------------------------------ item 3

#[test]
fn a_forged_deploy_request_cannot_force_a_rollback_but_roots_deploy_force_can() {
    let ca = TestCa::new();
    let host = Mailhost::with_extra(&[HOST], "deploy = \"handoff\"\n");
    let long = ca.leaf(KeyKind::P256, &[HOST]);
    let short = shorter(&ca);
    assert_eq!(host.install_leaf(&long, &[]).status.code(), Some(0));

    // The certsync user stages the older pair and asks for force.
    stage_request(&host, &short.chain_pem, short.key_pem.expose(), Some(true));
    let before = host.snapshot();
    let out = deploy(&host, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    for needle in [
        "rollback refused",
        "does not allow a remote force",
        "allow_remote_force = true",
        "deploy --force",
    ] {
        assert!(shown(&out).contains(needle), "{needle}: {}", shown(&out));
    }
    let result = deploy_result(&host).expect("deploy.result answers serve");
    assert!(
        result.contains("does not allow a remote force") && result.contains("\"refused\""),
        "{result}"
    );
    assert_eq!(host.snapshot(), before, "a refused force wrote files");
    assert_eq!(host.installed().unwrap().0, long.chain_pem);
    assert!(
        !host.staging.join("mail/privkey.pem").exists(),
        "the refused pair is not left staged"
    );

    // Root's catch-up deploy of the same staged pair: refused without
    // --force, installed with it.
    stage_request(&host, &short.chain_pem, short.key_pem.expose(), None);
    let out = deploy(&host, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    assert_eq!(host.installed().unwrap().0, long.chain_pem);
    stage_request(&host, &short.chain_pem, short.key_pem.expose(), None);
    let out = deploy(&host, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(host.installed().unwrap().0, short.chain_pem);
    assert_eq!(host.installed().unwrap().1, short.key_pem.expose());
}

#[test]
fn allow_remote_force_lets_a_requested_rollback_install() {
    let ca = TestCa::new();
    let host = Mailhost::with_extra(&[HOST], "deploy = \"handoff\"\nallow_remote_force = true\n");
    let long = ca.leaf(KeyKind::P256, &[HOST]);
    let short = shorter(&ca);
    assert_eq!(host.install_leaf(&long, &[]).status.code(), Some(0));
    stage_request(&host, &short.chain_pem, short.key_pem.expose(), Some(true));
    let out = deploy(&host, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(host.installed().unwrap().0, short.chain_pem);
}

#[tokio::test]
async fn a_pushers_force_on_the_wire_counts_only_with_allow_remote_force() {
    let ca = TestCa::new();
    let long = ca.leaf(KeyKind::P256, &[HOST]);
    let short = shorter(&ca);
    let pairs = [("mail", short.bundle(), short.fingerprint())];
    for allowed in [false, true] {
        let extra = if allowed {
            "allow_remote_force = true\n"
        } else {
            ""
        };
        let host = Mailhost::with_extra(&[HOST], extra);
        assert_eq!(host.install_leaf(&long, &[]).status.code(), Some(0));
        let before = host.snapshot();
        let r = push_session(host.serve_cmd(), &pairs, false, true).await;
        let report = r.report.clone().expect("a report");
        if allowed {
            assert_eq!(r.exit, Some(0), "{r:?}");
            assert_eq!(host.installed().unwrap().0, short.chain_pem);
        } else {
            assert_eq!(r.exit, Some(3), "{r:?}");
            assert_eq!(report.exit(), ExitCode::Refused);
            let json = serde_json::to_string(&report).unwrap();
            assert!(json.contains("does not allow a remote force"), "{json}");
            assert!(
                r.logs.iter().any(|l| l.contains("allow_remote_force")),
                "the pusher is told at once: {r:?}"
            );
            assert_eq!(host.snapshot(), before, "a refused force wrote files");
        }
    }
}

// ------------------------------------------------------------------ item 4

/// Every certificate a TLS client would refuse, with the reason the
/// refusal must give.
fn untrustworthy() -> Vec<(&'static str, TestLeaf, &'static str)> {
    let ca = TestCa::new();
    let day = Validity::default();
    vec![
        (
            "self-signed",
            self_signed_leaf(KeyKind::P256, &[HOST]),
            "is self-signed",
        ),
        (
            "CA leaf",
            ca.leaf_custom(KeyKind::P256.generate(), &[HOST], day, Profile::Ca),
            "is a CA certificate (basicConstraints CA:TRUE)",
        ),
        (
            "EKU clientAuth only",
            ca.leaf_custom(KeyKind::P256.generate(), &[HOST], day, Profile::ClientOnly),
            "lacks serverAuth (it allows only clientAuth)",
        ),
        (
            "RSA-1024",
            ca.leaf_custom(rsa_key(1024), &[HOST], day, Profile::Server),
            "has a weak key (RSA-1024)",
        ),
        (
            "P-192",
            ca.leaf_custom(ec_key(Nid::X9_62_PRIME192V1), &[HOST], day, Profile::Server),
            "has a weak key (ECDSA prime192v1)",
        ),
        (
            "untrusted CA",
            TestCa::with_own_root().leaf(KeyKind::P256, &[HOST]),
            "does not verify to a trusted CA",
        ),
    ]
}

fn assert_refused_for_reason(what: &str, leaf: &TestLeaf, needle: &str, shown: &str) {
    assert!(
        shown.contains(needle),
        "{what}: expected {needle:?} in:\n{shown}"
    );
    // The refusal names the certificate (its CN and fingerprint) ...
    assert!(
        shown.contains(&format!("CN={HOST}")) && shown.contains("SHA256 "),
        "{what}: the certificate is not named:\n{shown}"
    );
    // ... and never shows its PEM.
    let pem = String::from_utf8_lossy(&leaf.cert_pem).into_owned();
    assert!(
        !shown.contains("-----BEGIN")
            && pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .all(|l| !shown.contains(l)),
        "{what}: PEM bytes in the message:\n{shown}"
    );
}

#[tokio::test]
async fn certificates_no_client_would_accept_are_refused_with_their_reason() {
    for (what, leaf, needle) in untrustworthy() {
        // `install` from files.
        let host = Mailhost::new(&[HOST]);
        let before = host.snapshot();
        let out = host.install_leaf(&leaf, &[]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", shown(&out));
        assert_refused_for_reason(what, &leaf, needle, &shown(&out));
        assert!(host.nothing_installed(), "{what}: installed something");
        assert_eq!(host.snapshot(), before, "{what}: files written");

        // A push to `serve`.
        let host = Mailhost::new(&[HOST]);
        let pairs = [("mail", leaf.bundle(), leaf.fingerprint())];
        let r = push_session(host.serve_cmd(), &pairs, false, false).await;
        assert_eq!(r.exit, Some(3), "{what}: {r:?}");
        let report = r.report.expect("a report");
        let json = serde_json::to_string(&report).unwrap();
        assert_refused_for_reason(what, &leaf, needle, &json);
        assert!(host.nothing_installed(), "{what}: installed something");
        assert!(
            !host.staging.join("mail/privkey.pem").exists(),
            "{what}: the refused key stays staged"
        );
    }
}

#[test]
fn a_private_ca_in_ca_file_is_trusted_and_only_it() {
    let private = TestCa::with_own_root();
    let anchors = tempfile::tempdir().unwrap();
    let ca_file = anchors.path().join("private-ca.pem");
    std::fs::write(&ca_file, private.root_pem()).unwrap();
    let host = Mailhost::with_extra(&[HOST], &format!("ca_file = {ca_file:?}\n"));
    let leaf = private.leaf(KeyKind::P384, &[HOST]);
    let out = host.install_leaf(&leaf, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(host.installed().unwrap().0, leaf.chain_pem);
    // The harness's test root is not in this ca_file: its leaves are refused.
    let other = TestCa::new().leaf(KeyKind::P384, &[HOST]);
    let out = host.install_leaf(&other, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    assert!(
        shown(&out).contains(&ca_file.display().to_string()),
        "the refusal names the ca_file: {}",
        shown(&out)
    );
}

#[test]
fn without_ca_file_the_system_store_decides() {
    // OpenSSL's default store honours SSL_CERT_FILE: point it at the test
    // root to stand in for a public CA in /etc/ssl/certs.
    let host = Mailhost::with_extra(&[HOST], "# no ca_file: the system store alone\n");
    let leaf = TestCa::new().leaf(KeyKind::P256, &[HOST]);
    let (chain, key) = host.files_for(&leaf);
    let out = host.install(&chain, &key, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    assert!(shown(&out).contains("set ca_file"), "{}", shown(&out));
    let store = host.root.path().join("system-store.pem");
    std::fs::write(&store, certsync_core::testutil::test_root_pem()).unwrap();
    let out = host
        .cmd()
        .env("SSL_CERT_FILE", &store)
        .args(["install", "--name", "mail", "--cert"])
        .arg(&chain)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
}

#[test]
fn a_ca_file_that_is_not_certificates_is_a_config_error_that_shows_no_bytes() {
    let leaf = TestCa::new().leaf(KeyKind::P256, &[HOST]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("oops.pem");
    // A private key where the anchors belong.
    std::fs::write(&ca_file, leaf.key_pem.expose()).unwrap();
    let host = Mailhost::with_extra(&[HOST], &format!("ca_file = {ca_file:?}\n"));
    let out = host.install_leaf(&leaf, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    let shown = shown(&out);
    assert!(
        shown.contains("oops.pem") && shown.contains("PRIVATE KEY"),
        "{shown}"
    );
    assert!(SecretWindows::of(&leaf.key)
        .leak_in(shown.as_bytes())
        .is_none());
    assert!(host.nothing_installed());
}

#[test]
fn check_holds_the_installed_pair_to_the_same_rules() {
    // mailcow's first start writes a self-signed pair: `check` says so.
    let host = Mailhost::new(&[HOST]);
    let snakeoil = self_signed_leaf(KeyKind::P256, &[HOST]);
    std::fs::write(host.cert_path(), &snakeoil.chain_pem).unwrap();
    std::fs::write(host.key_path(), snakeoil.key_pem.expose()).unwrap();
    let out = host.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    assert!(shown(&out).contains("is self-signed"), "{}", shown(&out));
    // A trusted pair, installed by root: all well.
    let good = TestCa::new().leaf(KeyKind::P256, &[HOST]);
    let out = host.install_leaf(&good, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let out = host.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
}

// ------------------------------------------------------------------ item 7

/// Key material in the broken forms an operator or a hostile pusher can
/// produce: (what, chain file, key file).
fn broken_key_material(leaf: &TestLeaf) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let sec1 = leaf.key_pkcs1_or_sec1();
    let pkcs8 = leaf.key_pem.expose().to_vec();
    let cr = |b: &[u8]| -> Vec<u8> {
        b.iter()
            .map(|&c| if c == b'\n' { b'\r' } else { c })
            .collect()
    };
    let sec1_text = String::from_utf8(sec1.clone()).unwrap();
    let body: Vec<&str> = sec1_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let b64_line = body[0];
    let chain = leaf.chain_pem.clone();
    let mut chain_then_key = chain.clone();
    chain_then_key.extend_from_slice(&cr(&sec1));
    vec![
        ("SEC1 key, CR-only line endings", chain.clone(), cr(&sec1)),
        (
            "PKCS#8 key, CR-only line endings",
            chain.clone(),
            cr(&pkcs8),
        ),
        (
            "a label that is the key's base64",
            chain.clone(),
            format!(
                "-----BEGIN {b64_line}-----\n{}\n-----END {b64_line}-----\n",
                body.join("\n")
            )
            .into_bytes(),
        ),
        ("the key in both slots, CR-only", cr(&sec1), cr(&sec1)),
        (
            "the chain followed by the key",
            chain_then_key,
            pkcs8.clone(),
        ),
        (
            "the key's base64 under a CERTIFICATE label",
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                body.join("\n")
            )
            .into_bytes(),
            pkcs8.clone(),
        ),
        (
            "the key as raw DER",
            chain.clone(),
            leaf.key.private_key_to_der().unwrap(),
        ),
        (
            "no line breaks at all",
            chain.clone(),
            sec1.iter().copied().filter(|&c| c != b'\n').collect(),
        ),
        (
            "an END label that is the key's base64",
            chain.clone(),
            format!(
                "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END {b64_line}-----\n",
                body.join("\n")
            )
            .into_bytes(),
        ),
        (
            "lower-case labels",
            chain.clone(),
            sec1_text.to_lowercase().into_bytes(),
        ),
    ]
}

fn assert_no_secret(secret: &SecretWindows, what: &str, place: &str, shown: &[u8]) {
    if let Some(at) = secret.leak_in(shown) {
        panic!("{what}: 8 bytes of the private key reached {place} (at byte {at})");
    }
}

#[tokio::test]
async fn no_secret_bytes_reach_stderr_the_report_or_deploy_result() {
    let leaf = TestCa::new().leaf(KeyKind::P256, &[HOST]);
    let secret = SecretWindows::of(&leaf.key);
    let cases = broken_key_material(&leaf);
    assert_eq!(cases.len(), 10);
    for (what, chain, key) in cases {
        // 1. `install` from files: stdout and stderr.
        let host = Mailhost::new(&[HOST]);
        let dir = host.root.path().join("in");
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, &chain).unwrap();
        std::fs::write(&k, &key).unwrap();
        let out = host.install(&c, &k, &[]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", shown(&out));
        assert_no_secret(&secret, what, "install's output", shown(&out).as_bytes());
        assert!(host.nothing_installed(), "{what}");

        // 2. A push to `serve`: its stderr (the log) and the report.
        let bundle = Bundle::new(chain.clone(), SecretBytes::new(key.clone()));
        let pairs = [("mail", bundle, leaf.fingerprint())];
        let r = push_session(host.serve_cmd(), &pairs, false, false).await;
        assert_eq!(r.exit, Some(3), "{what}: {r:?}");
        assert_no_secret(&secret, what, "serve's log", r.stderr.as_bytes());
        let report: Report = r.report.expect("a report");
        let json = serde_json::to_vec(&report).unwrap();
        assert_no_secret(&secret, what, "the report", &json);
        assert_no_secret(
            &secret,
            what,
            "the session's log lines",
            r.logs.join("\n").as_bytes(),
        );
        assert!(host.nothing_installed(), "{what}");

        // 3. Handoff: the staged bytes, root's deploy, deploy.result.
        let handoff = Mailhost::with_extra(&[HOST], "deploy = \"handoff\"\n");
        stage_request(&handoff, &chain, &key, Some(false));
        let out = deploy(&handoff, &[]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", shown(&out));
        assert_no_secret(&secret, what, "deploy's output", shown(&out).as_bytes());
        let result = deploy_result(&handoff).expect("deploy.result");
        assert_no_secret(&secret, what, "deploy.result", result.as_bytes());
        assert!(handoff.nothing_installed(), "{what}");
    }
}
