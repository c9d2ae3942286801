//! The `[mailcow]` preset against a mailcow checkout in a temp dir, through
//! the real `certsync-receive` binary: per-domain folders judged by their
//! `domains` file (mailcow serves them for those names whatever
//! ENABLE_SSL_SNI says), `check` flagging a stale folder, and warnings when
//! a certificate loses names. No Docker: `reload = []`, `verify = []`.

use std::path::{Path, PathBuf};
use std::process::Output;

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf, Validity};
use certsync_tests::receiver::{push_leaf, Mailhost};
use certsync_tests::shown;

const HOST: &str = "mail.example.com";

/// mailcow.conf as generate_config.sh writes it, for what certsync reads.
fn mailcow_conf(additional_san: &str) -> String {
    format!(
        "MAILCOW_HOSTNAME={HOST}\nCOMPOSE_PROJECT_NAME=mailcowdockerized\nADDITIONAL_SAN={additional_san}\nSKIP_LETS_ENCRYPT=y\nENABLE_SSL_SNI=n\n"
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A per-domain folder as acme-mailcow leaves it: `domains` (one line of
/// blank-separated names, no newline), `cert.pem`, `key.pem`.
fn folder(ssl: &Path, name: &str, domains: &str, leaf: &TestLeaf) -> PathBuf {
    let dir = ssl.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("domains"), domains).unwrap();
    std::fs::write(dir.join("cert.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), leaf.key_pem.expose()).unwrap();
    dir
}

/// Every file under `dir`: name → bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn check(host: &Mailhost, extra: &[&str]) -> Output {
    host.cmd()
        .arg("check")
        .args(extra)
        .output()
        .expect("run check")
}

/// A folder is written when the new leaf covers every name in its
/// `domains`, whatever the folder is called; a folder whose names are not
/// all covered keeps its bytes and is named in the result with why — even
/// when it is named after our hostname (the old rule went by that name).
#[test]
fn per_domain_folders_get_the_pair_only_when_every_listed_name_is_covered() {
    let ca = TestCa::new();
    let host = Mailhost::mailcow(&mailcow_conf(""));
    let acme = ca.leaf(KeyKind::Rsa2048, &[HOST, "autodiscover.example.com"]);
    let other = ca.leaf(KeyKind::P256, &["other.example.org"]);
    // Covered entirely, named after nothing we know.
    let covered = folder(&host.ssl, "legacy", HOST, &acme);
    // Named after our hostname, as acme-mailcow names it, but also serving
    // a name the new certificate lacks.
    let partly = folder(
        &host.ssl,
        HOST,
        &format!("{HOST} autodiscover.example.com"),
        &acme,
    );
    let unrelated = folder(&host.ssl, "other.example.org", "other.example.org", &other);
    // A folder that is a link to a dir elsewhere: mailcow follows it,
    // certsync never writes through it.
    let elsewhere = folder(host.root.path(), "elsewhere", HOST, &acme);
    let linked = host.ssl.join("linked");
    std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
    let partly_before = files(&partly);
    let unrelated_before = files(&unrelated);
    let elsewhere_before = files(&elsewhere);

    let leaf = ca.leaf(KeyKind::P384, &[HOST]);
    let out = host.install_leaf(&leaf, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let report = stdout(&out);

    assert_eq!(
        std::fs::read(covered.join("cert.pem")).unwrap(),
        leaf.chain_pem
    );
    assert_eq!(
        std::fs::read(covered.join("key.pem")).unwrap(),
        leaf.key_pem.expose()
    );
    assert!(
        report.contains(&covered.join("cert.pem").display().to_string()),
        "{report}"
    );
    assert_eq!(
        files(&partly),
        partly_before,
        "{} was written",
        partly.display()
    );
    assert_eq!(
        files(&unrelated),
        unrelated_before,
        "{} was written",
        unrelated.display()
    );
    let warning = |dir: &Path| {
        report
            .lines()
            .find(|l| l.contains("WARNING") && l.contains(&format!("left {} alone", dir.display())))
            .unwrap_or_else(|| panic!("{} is not named:\n{report}", dir.display()))
            .to_string()
    };
    let w = warning(&partly);
    assert!(w.contains("does not cover autodiscover.example.com"), "{w}");
    assert!(
        w.contains(&format!(
            "keeps serving that folder's own certificate for {HOST}"
        )),
        "{w}"
    );
    assert!(warning(&unrelated).contains("does not cover other.example.org"));
    assert_eq!(
        files(&elsewhere),
        elsewhere_before,
        "written through a link"
    );
    assert!(warning(&linked).contains("symbolic link"));

    // The same pair again: nothing to do, nothing written anywhere.
    let before = host.snapshot();
    let again = host.install_leaf(&leaf, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", shown(&again));
    assert!(shown(&again).contains("nothing to do"), "{}", shown(&again));
    assert_eq!(host.snapshot(), before);
}

/// A dry run names the folders it would write and those it leaves alone,
/// and writes nothing.
#[test]
fn a_dry_run_names_the_folders_and_writes_nothing() {
    let ca = TestCa::new();
    let host = Mailhost::mailcow(&mailcow_conf(""));
    let acme = ca.leaf(KeyKind::P256, &[HOST, "autodiscover.example.com"]);
    let covered = folder(&host.ssl, "legacy", HOST, &acme);
    let partly = folder(
        &host.ssl,
        "acme",
        &format!("{HOST} autodiscover.example.com"),
        &acme,
    );
    let before = host.snapshot();
    let out = host.install_leaf(&ca.leaf(KeyKind::P256, &[HOST]), &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let report = stdout(&out);
    assert!(
        report.contains(&format!("would install {}", host.cert_path().display()))
            && report.contains(&covered.join("cert.pem").display().to_string()),
        "{report}"
    );
    assert!(
        report.contains(&format!("left {} alone", partly.display())),
        "{report}"
    );
    assert_eq!(host.snapshot(), before, "a dry run wrote");
}

/// `check` flags every folder mailcow serves whose certificate expires
/// within --warn-days or has expired: exit 3, the folder's path and the
/// fix, in text, JSON and metrics. Archived as acme-mailcow archives it,
/// the folder is no longer served and check is clean.
#[test]
fn check_flags_a_stale_per_domain_folder() {
    let ca = TestCa::new();
    let host = Mailhost::mailcow(&mailcow_conf(""));
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let out = host.install_leaf(&leaf, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let clean = check(&host, &[]);
    assert_eq!(clean.status.code(), Some(0), "{}", shown(&clean));

    let soon = ca.leaf_with(
        KeyKind::Rsa2048,
        &[HOST, "autodiscover.example.com"],
        Validity {
            not_before: -80 * 86_400,
            not_after: 5 * 86_400 + 3600,
        },
    );
    let expired = ca.leaf_with(
        KeyKind::P256,
        &["old.example.net"],
        Validity {
            not_before: -100 * 86_400,
            not_after: -2 * 86_400 - 3600,
        },
    );
    let fresh = ca.leaf(KeyKind::P256, &["fresh.example.net"]);
    let stale = folder(
        &host.ssl,
        HOST,
        &format!("{HOST} autodiscover.example.com"),
        &soon,
    );
    let dead = folder(&host.ssl, "old.example.net", "old.example.net", &expired);
    let fine = folder(&host.ssl, "fresh.example.net", "fresh.example.net", &fresh);
    // Not served (no domains file): not judged.
    let unserved = host.ssl.join("notes");
    std::fs::create_dir(&unserved).unwrap();
    std::fs::write(unserved.join("cert.pem"), &expired.chain_pem).unwrap();

    let metrics = host.root.path().join("certsync.prom");
    let metrics_arg = metrics.display().to_string();
    let out = check(&host, &["--warn-days", "14", "--metrics", &metrics_arg]);
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    let report = stdout(&out);
    let line = |dir: &Path| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("folder {} ", dir.display())))
            .unwrap_or_else(|| panic!("no line for {}:\n{report}", dir.display()))
            .to_string()
    };
    let l = line(&stale);
    assert!(
        l.contains("PROBLEM") && l.contains("expires in 5 days (warning below 14)"),
        "{l}"
    );
    assert!(l.contains(&format!("remove {}", stale.display())), "{l}");
    assert!(
        l.contains("push a certificate that covers every name"),
        "{l}"
    );
    assert!(
        line(&dead).contains("has expired (2 days ago)"),
        "{}",
        line(&dead)
    );
    assert!(
        line(&fine).ends_with("days left") && !line(&fine).contains("PROBLEM"),
        "{}",
        line(&fine)
    );
    assert!(
        !report.contains(&unserved.display().to_string()),
        "{report}"
    );

    let prom = std::fs::read_to_string(&metrics).unwrap();
    for (dir, v) in [(&stale, 1), (&dead, 1), (&fine, 0)] {
        let sample = format!(
            "certsync_mailcow_folder_stale{{folder=\"{}\"}} {v}\n",
            dir.display()
        );
        assert!(prom.contains(&sample), "{sample} missing in\n{prom}");
    }

    let json = check(&host, &["--json", "--warn-days", "14"]);
    assert_eq!(json.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let folders = v["folders"].as_array().unwrap();
    assert_eq!(folders.len(), 3, "{v:#}");
    let stale_json = folders
        .iter()
        .find(|f| f["path"] == stale.display().to_string())
        .unwrap();
    assert_eq!(stale_json["stale"], true);
    assert_eq!(stale_json["days_left"], 5);
    assert_eq!(
        stale_json["domains"],
        serde_json::json!([HOST, "autodiscover.example.com"])
    );

    // Archived the way acme-mailcow archives an orphaned folder.
    for dir in [&stale, &dead] {
        let name = dir.file_name().unwrap();
        let archive = host.ssl.join("backups").join(name);
        std::fs::create_dir_all(&archive).unwrap();
        std::fs::rename(dir, archive.join("2026-11-30_10_00_00")).unwrap();
    }
    let after = check(&host, &["--warn-days", "14"]);
    assert_eq!(after.status.code(), Some(0), "{}", shown(&after));
}

/// An install whose leaf drops names says so in its result, naming each:
/// the names the installed leaf covered, and ADDITIONAL_SAN's literal
/// names (templates `imap.*` and wildcards are not names). A warning: the
/// install succeeds. `check` says it again, from the kept previous pair,
/// and the pusher gets the warning in the report.
#[tokio::test]
async fn an_install_that_drops_a_name_says_so() {
    let ca = TestCa::new();
    let host = Mailhost::mailcow(&mailcow_conf("imap.*,srv1.example.net,*.example.org"));
    let wide = ca.leaf(
        KeyKind::P256,
        &[HOST, "imap.example.com", "srv1.example.net"],
    );
    let first = host.install_leaf(&wide, &[]);
    assert_eq!(first.status.code(), Some(0), "{}", shown(&first));
    assert!(!stdout(&first).contains("WARNING"), "{}", shown(&first));

    let narrow = ca.leaf_with(
        KeyKind::P256,
        &[HOST],
        Validity {
            not_before: -3600,
            not_after: 91 * 86_400,
        },
    );
    let out = host.install_leaf(&narrow, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let report = stdout(&out);
    assert!(
        report.contains("mail: WARNING: the new certificate no longer covers imap.example.com, srv1.example.net, which the installed one covers"),
        "{report}"
    );
    assert!(
        report.contains("mail: WARNING: the new certificate does not cover srv1.example.net from ADDITIONAL_SAN"),
        "{report}"
    );
    assert!(
        !report.contains("imap.*") && !report.contains("example.org"),
        "{report}"
    );
    assert_eq!(std::fs::read(host.cert_path()).unwrap(), narrow.chain_pem);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no longer covers imap.example.com"),
        "the log says it too: {}",
        shown(&out)
    );

    let c = check(&host, &[]);
    assert_eq!(
        c.status.code(),
        Some(0),
        "a warning is not a failure: {}",
        shown(&c)
    );
    let report = stdout(&c);
    assert!(
        report.contains("WARNING")
            && report.contains(
                "no longer covers imap.example.com, srv1.example.net, which the previous certificate"
            ),
        "{report}"
    );
    assert!(
        report.contains("srv1.example.net from ADDITIONAL_SAN"),
        "{report}"
    );

    // Over the protocol: the pusher's report carries the warnings.
    let narrower = ca.leaf_with(
        KeyKind::P256,
        &[HOST],
        Validity {
            not_before: -3600,
            not_after: 92 * 86_400,
        },
    );
    let mut cmd = tokio::process::Command::from(host.cmd());
    cmd.arg("serve");
    let res = push_leaf(cmd, &narrower).await;
    let r = res
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("no report: {res:?}"));
    assert!(
        r.certs[0]
            .warnings
            .iter()
            .any(|w| w.contains("srv1.example.net from ADDITIONAL_SAN")),
        "{r:?}"
    );
}
