//! What operators see, pinned in golden files (tests/golden/): the
//! `--help` of both binaries and every subcommand, `discover` and `status`
//! on the NPM host, every kind of validation refusal as `install` prints
//! it and as a push reports it, and `check` in text and JSON.
//!
//! Per-run parts are redacted (see `support/golden.rs`). After an
//! intended change of output: `SNAPSHOTS=overwrite cargo test -p
//! certsync-tests --test golden`, then review and commit the diff.

#[path = "support/golden.rs"]
mod golden;

use std::path::Path;
use std::process::{Command, Output};

use certsync_core::testutil::{
    ec_key, rsa_key, self_signed_leaf, KeyKind, Profile, TestCa, TestLeaf, Validity,
};
use certsync_tests::livedir::{LiveDir, Renewal};
use certsync_tests::npmhost::{local_target, NpmHost};
use certsync_tests::receiver::Mailhost;
use golden::{Diffs, Golden};
use openssl::nid::Nid;

const HOST: &str = "mail.example.com";
const DAY: i64 = 86_400;

/// Valid from an hour ago until an hour short of `days` from now, so the
/// days left read the same (`days - 1` whole days, `days` begun) in any
/// second the test runs.
fn for_days(days: i64) -> Validity {
    Validity {
        not_before: -3600,
        not_after: days * DAY - 3600,
    }
}

/// What a push shows its operator: the result on stdout and the exit
/// code. (Its log on stderr interleaves the receiver's relayed lines in
/// no fixed order.)
fn result(run: &certsync_tests::npmhost::Run) -> String {
    format!("{}--- exit {:?}\n", run.stdout, run.code)
}

/// stdout, then stderr under a marker line, then the exit code: the whole
/// of what an operator sees from one run.
fn seen(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        text.push_str("--- stderr\n");
        text.push_str(&err);
    }
    text.push_str(&format!("--- exit {:?}\n", out.status.code()));
    text
}

/// A binary with nothing from the caller's environment that changes its
/// output (config paths from the environment show in --help; the width
/// of the help text follows COLUMNS).
fn bin(path: &Path) -> Command {
    let mut c = Command::new(path);
    for var in [
        "CERTSYNC_PUSH_CONFIG",
        "CERTSYNC_RECEIVE_CONFIG",
        "CERTSYNC_LOG",
        "CERTSYNC_FAULT_KILL_AT",
        "RUST_LOG",
        "NO_COLOR",
    ] {
        c.env_remove(var);
    }
    c.env("COLUMNS", "100");
    c
}

/// `certsync-receive --config <host's receive.toml> ARGS…`.
fn receive(host: &Mailhost, args: &[&str]) -> Output {
    bin(&certsync_tests::bins::receive())
        .arg("--config")
        .arg(&host.config)
        .args(args)
        .output()
        .unwrap()
}

/// `install --name mail --cert CHAIN --key KEY EXTRA…`.
fn install(host: &Mailhost, chain: &Path, key: &Path, extra: &[&str]) -> Output {
    let (chain, key) = (chain.to_str().unwrap(), key.to_str().unwrap());
    let mut args = vec!["install", "--name", "mail", "--cert", chain, "--key", key];
    args.extend_from_slice(extra);
    receive(host, &args)
}

#[test]
fn help_of_both_binaries_and_every_subcommand() {
    let golden = Golden::exact();
    let mut diffs = Diffs::default();
    let binaries = [
        (certsync_tests::bins::push(), certsync_push::cli::command()),
        (
            certsync_tests::bins::receive(),
            certsync_receive::cli::command(),
        ),
    ];
    for (path, command) in binaries {
        let name = command.get_name().to_string();
        let mut words = vec![vec![]];
        words.extend(
            command
                .get_subcommands()
                .map(|sub| vec![sub.get_name().to_string()]),
        );
        for args in words {
            let out = bin(&path).args(&args).arg("--help").output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{name} {args:?} --help");
            let file = match args.first() {
                None => format!("help/{name}.txt"),
                Some(sub) => format!("help/{name}-{sub}.txt"),
            };
            diffs.check(&golden, &file, &seen(&out));
        }
    }
    diffs.assert_none();
}

/// A live dir with one lineage of each key type, one mid-renewal, and the
/// clutter certbot's dir holds (a README, a dir that is no lineage).
fn live_root(root: &Path, ca: &TestCa) -> std::path::PathBuf {
    let lineage = |name: &str, kind: KeyKind, sans: &[&str], days: i64| {
        LiveDir::new(root, name, &ca.leaf_with(kind, sans, for_days(days)))
    };
    lineage("npm-1", KeyKind::Rsa2048, &["a.example.com"], 90);
    lineage(
        "npm-2",
        KeyKind::P256,
        &[HOST, "autodiscover.example.com"],
        90,
    );
    lineage("npm-3", KeyKind::Ed25519, &["b.example.net"], 30);
    let mut broken = lineage("npm-4", KeyKind::P384, &["c.example.net"], 90);
    broken.renew_with(
        &ca.leaf(KeyKind::P384, &["c.example.net"]),
        Renewal {
            stop_after: Some(6),
            ..Default::default()
        },
    );
    lineage("npm-10", KeyKind::P384, &["*.example.org"], 60);
    let live = root.join("live");
    std::fs::write(live.join("README"), "This directory contains your keys").unwrap();
    std::fs::create_dir(live.join("not-a-lineage")).unwrap();
    live
}

#[test]
fn discover_as_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let live = live_root(tmp.path(), &TestCa::new());
    let golden = Golden::scene(tmp.path());
    let mut diffs = Diffs::default();
    for (args, file) in [(vec![], "discover.txt"), (vec!["--json"], "discover.json")] {
        let out = bin(&certsync_tests::bins::push())
            .args([
                "--config",
                "/nonexistent/push.toml",
                "discover",
                "--live-root",
            ])
            .arg(&live)
            .args(args)
            .output()
            .unwrap();
        diffs.check(&golden, file, &seen(&out));
    }
    diffs.assert_none();
}

#[test]
fn status_as_text_and_json() {
    let ca = TestCa::new();
    let leaf = ca.leaf_with(KeyKind::P384, &[HOST], for_days(90));
    let npm = NpmHost::new(&leaf);
    // One target that has the pair, one that has none yet, one that would
    // refuse it (another hostname): status says so from the offer alone
    // (exit 3), as a push would be refused.
    let current = Mailhost::new(&[HOST]);
    assert_eq!(current.install_leaf(&leaf, &[]).status.code(), Some(0));
    let empty = Mailhost::new(&[HOST]);
    let other = Mailhost::new(&["other.example.com"]);
    npm.write_config(
        &npm.cert_source(),
        &[
            local_target("current", &current),
            local_target("empty", &empty),
            local_target("other-name", &other),
        ],
    );
    let hosts = [&current, &empty, &other];
    let before = hosts.map(|h| (h.snapshot(), h.staged_files()));
    let mut diffs = Diffs::default();
    for (args, file) in [
        (vec!["status"], "status.txt"),
        (vec!["status", "--json"], "status.json"),
    ] {
        let run = npm.run(&args);
        let golden = Golden::scene(npm.root.path())
            .also(current.root.path(), "[MAIL_CURRENT]")
            .also(empty.root.path(), "[MAIL_EMPTY]")
            .also(other.root.path(), "[MAIL_OTHER]");
        diffs.check(&golden, file, &result(&run));
    }
    diffs.assert_none();
    assert!(empty.nothing_installed() && other.nothing_installed());
    // Nothing written, and no key reached any receiver, not even staged.
    assert_eq!(hosts.map(|h| (h.snapshot(), h.staged_files())), before);
}

/// A pair as files: (what, fullchain bytes, key bytes).
type Pair = (&'static str, Vec<u8>, Vec<u8>);

fn pair(what: &'static str, leaf: &TestLeaf) -> Pair {
    (what, leaf.chain_pem.clone(), leaf.key_pem.expose().to_vec())
}

/// Every kind of validation refusal, one pair each, against a host that
/// has `installed` (for the rollback).
fn refused_pairs(ca: &TestCa, installed: &TestLeaf) -> Vec<Pair> {
    let day = Validity::default();
    let other = ca.leaf(KeyKind::P384, &[HOST]);
    let mut swapped = installed.intermediates_pem.clone();
    swapped.extend_from_slice(&installed.cert_pem);
    let valid = |not_before: i64, not_after: i64| Validity {
        not_before,
        not_after,
    };
    let mut too_many = Vec::new();
    for _ in 0..20 {
        too_many.extend_from_slice(&installed.chain_pem);
    }
    let key_label = String::from_utf8(installed.key_pem.expose().to_vec())
        .unwrap()
        .replace("PRIVATE KEY", "PUBLIC KEY")
        .into_bytes();
    let mut two_keys = installed.key_pem.expose().to_vec();
    two_keys.extend_from_slice(other.key_pem.expose());
    let cr_only: Vec<u8> = installed
        .key_pem
        .expose()
        .iter()
        .map(|&c| if c == b'\n' { b'\r' } else { c })
        .collect();
    let broken_cert =
        b"-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHHIG==\n-----END CERTIFICATE-----\n".to_vec();
    let mut chain_with_key = installed.chain_pem.clone();
    chain_with_key.extend_from_slice(installed.key_pem.expose());
    vec![
        (
            "key-mismatch",
            installed.chain_pem.clone(),
            other.key_pem.expose().to_vec(),
        ),
        pair(
            "name-not-covered",
            &ca.leaf(KeyKind::P256, &["www.example.org"]),
        ),
        pair(
            "not-yet-valid",
            &ca.leaf_with(KeyKind::P256, &[HOST], valid(DAY, 90 * DAY)),
        ),
        pair(
            "expired",
            &ca.leaf_with(KeyKind::P256, &[HOST], valid(-100 * DAY, -DAY)),
        ),
        ("chain-order", swapped, installed.key_pem.expose().to_vec()),
        pair(
            "ca-leaf",
            &ca.leaf_custom(KeyKind::P256.generate(), &[HOST], day, Profile::Ca),
        ),
        pair(
            "not-for-servers",
            &ca.leaf_custom(KeyKind::P256.generate(), &[HOST], day, Profile::ClientOnly),
        ),
        pair(
            "weak-rsa",
            &ca.leaf_custom(rsa_key(1024), &[HOST], day, Profile::Server),
        ),
        pair(
            "weak-ec",
            &ca.leaf_custom(ec_key(Nid::X9_62_PRIME192V1), &[HOST], day, Profile::Server),
        ),
        pair("self-signed", &self_signed_leaf(KeyKind::P256, &[HOST])),
        pair(
            "untrusted",
            &TestCa::with_own_root().leaf(KeyKind::P256, &[HOST]),
        ),
        pair(
            "rollback",
            &ca.leaf_with(KeyKind::P256, &[HOST], valid(-3600, 30 * DAY)),
        ),
        (
            "encrypted-key",
            installed.chain_pem.clone(),
            installed.key_encrypted(),
        ),
        ("garbage", b"hello".to_vec(), b"world".to_vec()),
        (
            "not-a-certificate-label",
            chain_with_key,
            installed.key_pem.expose().to_vec(),
        ),
        (
            "too-many-certificates",
            too_many,
            installed.key_pem.expose().to_vec(),
        ),
        (
            "certificate-does-not-parse",
            broken_cert,
            installed.key_pem.expose().to_vec(),
        ),
        ("key-label", installed.chain_pem.clone(), key_label),
        ("two-keys", installed.chain_pem.clone(), two_keys),
        ("cr-line-endings", installed.chain_pem.clone(), cr_only),
    ]
}

/// `certsync-receive install` refuses each pair with exit 3 and its exact
/// message, and writes nothing: the installed pair stays, no file changes
/// outside staging. `--force` then allows the rollback alone.
#[test]
fn every_validation_refusal_as_install_prints_it() {
    let ca = TestCa::new();
    let good = ca.leaf(KeyKind::P384, &[HOST]);
    let host = Mailhost::with_installed(&[HOST], &good);
    let golden = Golden::scene(host.root.path());
    let mut diffs = Diffs::default();
    let dir = host.root.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let (chain, key) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
    for (what, chain_bytes, key_bytes) in refused_pairs(&ca, &good) {
        let before = host.snapshot();
        std::fs::write(&chain, &chain_bytes).unwrap();
        std::fs::write(&key, &key_bytes).unwrap();
        let out = install(&host, &chain, &key, &[]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", seen(&out));
        diffs.check(&golden, &format!("refusal/install-{what}.txt"), &seen(&out));
        assert_eq!(host.snapshot(), before, "{what}: files changed");
        assert_eq!(host.installed().unwrap().0, good.chain_pem, "{what}");
        if what == "rollback" {
            let out = install(&host, &chain, &key, &["--force"]);
            assert_eq!(out.status.code(), Some(0), "{}", seen(&out));
            assert_eq!(host.installed().unwrap().0, chain_bytes);
            assert_eq!(host.install_leaf(&good, &[]).status.code(), Some(0));
        }
    }
    // No hostname configured: the config is refused before any pair is
    // read (exit 2), so validation's own "no hostname" never shows.
    let nameless = Mailhost::new(&[]);
    let (chain, key) = nameless.files_for(&good);
    let out = install(&nameless, &chain, &key, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", seen(&out));
    diffs.check(
        &Golden::scene(nameless.root.path()),
        "refusal/config-no-hostnames.txt",
        &seen(&out),
    );
    assert!(nameless.nothing_installed());
    diffs.assert_none();
}

/// The same refusals as a push reports them: `certsync-push push` over
/// the local transport to the real receiver, exit 3, the receiver's
/// message in the push result, and nothing installed. A `--force` the
/// receiver does not allow gets its own advice.
#[test]
fn refusals_as_a_push_reports_them() {
    let ca = TestCa::new();
    let good = ca.leaf(KeyKind::P384, &[HOST]);
    let mut diffs = Diffs::default();
    let cases: [(&str, TestLeaf, &[&str]); 3] = [
        (
            "name-not-covered",
            ca.leaf(KeyKind::P256, &["www.example.org"]),
            &["push"],
        ),
        (
            "untrusted",
            TestCa::with_own_root().leaf(KeyKind::P256, &[HOST]),
            &["push"],
        ),
        (
            "rollback-remote-force",
            ca.leaf_with(KeyKind::P256, &[HOST], for_days(30)),
            &["push", "--force"],
        ),
    ];
    for (what, leaf, args) in cases {
        let mail = Mailhost::new(&[HOST]);
        assert_eq!(mail.install_leaf(&good, &[]).status.code(), Some(0));
        let npm = NpmHost::new(&leaf);
        npm.write_config(&npm.cert_source(), &[local_target("mailcow", &mail)]);
        let before = mail.snapshot();
        let run = npm.run(args);
        assert_eq!(run.code, Some(3), "{what}: {}", run.both());
        let golden = Golden::scene(npm.root.path()).also(mail.root.path(), "[MAIL]");
        diffs.check(&golden, &format!("refusal/push-{what}.txt"), &result(&run));
        assert_eq!(mail.snapshot(), before, "{what}: files changed");
        assert_eq!(mail.installed().unwrap().0, good.chain_pem, "{what}");
    }
    diffs.assert_none();
}

/// `check` on a host whose pair is fine, one whose pair expires within
/// --warn-days, and one with nothing installed: text and JSON.
#[test]
fn check_as_text_and_json() {
    let ca = TestCa::new();
    let mut diffs = Diffs::default();
    let scenes: [(&str, Option<TestLeaf>); 3] = [
        (
            "ok",
            Some(ca.leaf_with(KeyKind::P384, &[HOST], for_days(90))),
        ),
        (
            "expiring",
            Some(ca.leaf_with(KeyKind::P256, &[HOST], for_days(5))),
        ),
        ("missing", None),
    ];
    for (what, leaf) in scenes {
        let host = Mailhost::new(&[HOST]);
        if let Some(leaf) = &leaf {
            assert_eq!(host.install_leaf(leaf, &[]).status.code(), Some(0));
        }
        let golden = Golden::scene(host.root.path());
        for (args, ext) in [(vec![], "txt"), (vec!["--json"], "json")] {
            let mut check = vec!["check"];
            check.extend(args);
            let out = receive(&host, &check);
            diffs.check(&golden, &format!("check/{what}.{ext}"), &seen(&out));
        }
    }
    diffs.assert_none();
}
