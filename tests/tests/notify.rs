//! `[notify]` (docs/contract.md, "Notifications") on both sides, against
//! a real local HTTP server ([`certsync_tests::httpsink`]) and a command,
//! through the real binaries.

use std::time::Duration;

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_tests::httpsink::HttpSink;
use certsync_tests::receiver::{push_session, Mailhost};

const HOST: &str = "mail.example.com";

/// The middle line of a key's PEM: must appear in no payload.
fn key_line(leaf: &TestLeaf) -> String {
    String::from_utf8_lossy(leaf.key_pem.expose())
        .lines()
        .nth(1)
        .unwrap()
        .to_string()
}

fn receiver(notify: &str) -> Mailhost {
    Mailhost::with_extra(&[HOST], &format!("[notify]\n{notify}\n"))
}

#[tokio::test]
async fn the_receiver_posts_install_failure_and_check_to_a_webhook() {
    let sink = HttpSink::start();
    let host = receiver(&format!("webhook = {:?}", sink.url("/hooks/certsync")));
    let ca = TestCa::new();
    let good = ca.leaf(KeyKind::P256, &[HOST]);

    // install
    let out = host.install_leaf(&good, &[]);
    assert_eq!(out.status.code(), Some(0));
    let reqs = sink.wait_for(1);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/certsync");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let n = r.json();
    assert_eq!(n["source"], "certsync-receive");
    assert_eq!(n["event"], "install");
    assert_eq!(n["priority"], 3);
    assert!(n["title"].as_str().unwrap().contains("installed"), "{n}");
    assert!(
        n["message"]
            .as_str()
            .unwrap()
            .contains(&format!("mail: installed {}", good.fingerprint())),
        "{n}"
    );
    assert_eq!(n["details"]["certs"][0]["name"], "mail");
    assert_eq!(
        n["details"]["certs"][0]["leaf"],
        good.fingerprint().to_string()
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(&key_line(&good)));

    // nothing to do: nothing told
    let out = host.install_leaf(&good, &[]);
    assert_eq!(out.status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.requests().len(), 1, "nothing to do was notified");

    // failure: a pair for another name is refused
    let other = ca.leaf(KeyKind::P256, &["other.example.com"]);
    let out = host.install_leaf(&other, &[]);
    assert_eq!(out.status.code(), Some(3));
    let reqs = sink.wait_for(2);
    let n = reqs[1].json();
    assert_eq!(n["event"], "failure", "{n}");
    assert_eq!(n["priority"], 8);
    assert!(
        n["message"]
            .as_str()
            .unwrap()
            .contains("mail: validate failed: refused"),
        "{n}"
    );
    assert_eq!(n["details"]["certs"][0]["exit"], "refused");
    assert!(!String::from_utf8_lossy(&reqs[1].body).contains(&key_line(&other)));

    // check: the installed pair expires within --warn-days
    let out = host
        .cmd()
        .args(["check", "--warn-days", "10000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let reqs = sink.wait_for(3);
    let n = reqs[2].json();
    assert_eq!(n["event"], "check", "{n}");
    assert!(n["message"].as_str().unwrap().starts_with("mail: "), "{n}");
    assert_eq!(n["details"]["certs"][0]["name"], "mail");

    // a push through serve (inline) is told too
    let newer = ca.leaf(KeyKind::P384, &[HOST]);
    let pairs = [("mail", newer.bundle(), newer.fingerprint())];
    let res = push_session(host.serve_cmd(), &pairs, false, false).await;
    assert_eq!(res.exit, Some(0), "{res:?}");
    let reqs = sink.wait_for(4);
    assert_eq!(reqs.len(), 4);
    let n = reqs[3].json();
    assert_eq!(n["event"], "install", "{n}");
    assert_eq!(
        n["details"]["certs"][0]["leaf"],
        newer.fingerprint().to_string()
    );
    assert!(!String::from_utf8_lossy(&reqs[3].body).contains(&key_line(&newer)));
}

#[test]
fn a_webhook_that_fails_is_retried_and_never_changes_the_exit() {
    let sink = HttpSink::with_statuses(&[500, 503]);
    let host = receiver(&format!("webhook = {:?}\nretries = 2", sink.url("/")));
    let leaf = TestCa::new().leaf(KeyKind::P256, &[HOST]);
    let out = host.install_leaf(&leaf, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(sink.wait_for(3).len(), 3, "two failures, then a success");

    // Nobody listening: bounded, logged, exit unchanged.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = gone.local_addr().unwrap().port();
    drop(gone);
    let host = receiver(&format!(
        "webhook = \"http://127.0.0.1:{port}/\"\nretries = 1\ntimeout = 2"
    ));
    let started = std::time::Instant::now();
    let out = host.install_leaf(&leaf, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gave up after 2 attempts"), "{err}");
}

#[test]
fn a_notify_command_gets_the_json_on_stdin_and_on_filters_events() {
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got.json");
    let script = dir.path().join("notify.sh");
    std::fs::write(&script, format!("#!/bin/sh\ncat >> {got:?}\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let host = receiver(&format!("command = [{script:?}]\non = [\"failure\"]"));
    let ca = TestCa::new();
    let good = ca.leaf(KeyKind::P256, &[HOST]);
    assert_eq!(host.install_leaf(&good, &[]).status.code(), Some(0));
    assert!(!got.exists(), "an install was told, but on = [\"failure\"]");
    let bad = ca.leaf(KeyKind::P256, &["x.example.org"]);
    assert_eq!(host.install_leaf(&bad, &[]).status.code(), Some(3));
    let text = std::fs::read_to_string(&got).unwrap();
    let n: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(n["event"], "failure");
    assert_eq!(n["source"], "certsync-receive");
}

#[test]
fn the_pusher_posts_install_failure_and_status_problems() {
    use certsync_tests::npmhost::{local_target, NpmHost};
    let sink = HttpSink::start();
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let mut npm = NpmHost::new(&leaf);
    let mail = Mailhost::new(&[HOST]);
    let certs = format!(
        "{}\n[notify]\nwebhook = {:?}\n",
        npm.cert_source(),
        sink.url("/push")
    );
    npm.write_config(&certs, &[local_target("here", &mail)]);

    // A push that installs.
    let run = npm.run(&["push"]);
    run.assert_code(0);
    let reqs = sink.wait_for(1);
    assert_eq!(reqs.len(), 1, "{}", run.both());
    let n = reqs[0].json();
    assert_eq!(n["source"], "certsync-push");
    assert_eq!(n["event"], "install");
    assert_eq!(n["details"]["results"][0]["target"], "here");
    assert_eq!(n["details"]["results"][0]["cert"], "mail");
    assert_eq!(n["details"]["results"][0]["state"], "installed");
    assert_eq!(
        n["details"]["results"][0]["local"],
        leaf.fingerprint().to_string()
    );
    assert!(!String::from_utf8_lossy(&reqs[0].body).contains(&key_line(&leaf)));

    // status, all up to date: nothing told.
    let run = npm.run(&["status"]);
    run.assert_code(0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.requests().len(), 1);

    // The live dir renews to a pair the receiver refuses: status tells a
    // check problem, push a failure.
    let bad = ca.leaf(KeyKind::P256, &["other.example.com"]);
    npm.live.renew(&bad);
    let run = npm.run(&["status"]);
    assert_ne!(run.code, Some(0), "{}", run.both());
    let reqs = sink.wait_for(2);
    let n = reqs[1].json();
    assert_eq!(n["event"], "check", "{n}");
    assert!(
        n["message"].as_str().unwrap().contains("mail → here"),
        "{n}"
    );

    let run = npm.run(&["push"]);
    run.assert_code(3);
    let reqs = sink.wait_for(3);
    let n = reqs[2].json();
    assert_eq!(n["event"], "failure", "{n}");
    assert_eq!(n["details"]["results"][0]["exit"], "refused");
    assert!(!String::from_utf8_lossy(&reqs[2].body).contains(&key_line(&bad)));
}

/// The `[notify]` shown (commented) at the end of both example configs
/// loads when turned on, with every key.
#[test]
fn the_examples_notify_sections_load() {
    use certsync_core::config::{PushConfig, ReceiveConfig};
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let on = |text: &str| -> String {
        let i = text.find("# [notify]\n").expect("a [notify] example");
        let tail: String = text[i..]
            .lines()
            .filter_map(|l| {
                l.strip_prefix("# [notify]")
                    .map(|_| "[notify]".to_string())
                    .or_else(|| l.strip_prefix("#   ").map(str::to_string))
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("{}\n{tail}\n", &text[..i])
    };
    let path = examples.join("receive.toml");
    let text = on(&std::fs::read_to_string(&path).unwrap());
    let cfg = ReceiveConfig::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let n = cfg.notify.expect("[notify]");
    assert!(n.webhook.is_some() && n.command.is_some() && n.on.is_some());
    assert!(n.timeout.is_some() && n.retries.is_some());
    let path = examples.join("push.toml");
    let text = on(&std::fs::read_to_string(&path).unwrap());
    let cfg = PushConfig::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.notify.is_some());
}
