//! Step 6 and 7 against a real Docker engine: containers labelled like
//! mailcow's, reloaded through the Docker API, and Debian's real nginx
//! swapping the certificate it serves.
//!
//! Each test starts its own private dockerd (see `certsync_tests::docker`).
//! Timings are printed; run with `--nocapture` to see them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_core::Fingerprint;
use certsync_receive::systems::docker::{
    outcomes_ok, reload, ReloadError, ReloadPlan, ReloadStatus, ServiceOutcome, ServiceReload,
};
use certsync_receive::systems::probe::{self, Endpoint, ProbeError};
use certsync_tests::docker::{self, Dockerd};
use certsync_tests::{need, needs};

const HOST: &str = "mail.example.com";

fn plan(d: &Dockerd, project: Option<&str>, services: &[&str]) -> ReloadPlan {
    ReloadPlan {
        socket: d.socket().to_path_buf(),
        project: project.map(str::to_string),
        project_alternates: vec![],
        services: services
            .iter()
            .map(|s| ServiceReload {
                service: s.to_string(),
                command: certsync_receive::systems::mailcow::reload_command(s).unwrap(),
            })
            .collect(),
    }
}

fn outcome<'a>(outcomes: &'a [ServiceOutcome], service: &str) -> &'a ServiceOutcome {
    outcomes
        .iter()
        .find(|o| o.service == service)
        .unwrap_or_else(|| panic!("no outcome for {service}: {outcomes:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn mailcow_services_are_reloaded_inside_their_containers_and_a_decoy_is_untouched() {
    needs!(let d = docker::engine());
    // compose v2 and v1 names: certsync goes by labels only.
    let postfix = d.stand_in("mc-postfix-mailcow-1", "mc", "postfix-mailcow", 0);
    let dovecot = d.stand_in("mc_dovecot-mailcow_1", "mc", "dovecot-mailcow", 0);
    // Another compose project on the same host with the same service.
    let decoy = d.stand_in("decoy-postfix-mailcow-1", "decoy", "postfix-mailcow", 0);

    let outcomes = reload(
        &plan(&d, Some("mc"), &["postfix-mailcow", "dovecot-mailcow"]),
        false,
    )
    .await
    .unwrap();

    assert!(outcomes_ok(&outcomes), "{outcomes:#?}");
    let p = outcome(&outcomes, "postfix-mailcow");
    assert_eq!(p.status, ReloadStatus::Reloaded, "{p:?}");
    assert_eq!(p.containers, ["mc-postfix-mailcow-1"]);
    assert!(p.message.contains("postfix reload"), "{}", p.message);
    assert_eq!(
        outcome(&outcomes, "dovecot-mailcow").containers,
        ["mc_dovecot-mailcow_1"]
    );
    assert_eq!(postfix.calls(), ["postfix reload"]);
    assert_eq!(dovecot.calls(), ["dovecot reload"]);
    assert!(
        decoy.calls().is_empty(),
        "the decoy was reloaded: {:?}",
        decoy.calls()
    );
    assert_eq!(decoy.starts(), 1, "the decoy was restarted");
    assert_eq!(postfix.starts(), 1, "a successful reload must not restart");
}

/// mailcow.conf without COMPOSE_PROJECT_NAME: compose v2 names the project
/// after the directory keeping its dash (`mailcow-dockerized`), old
/// docker-compose v1 dropped it (`mailcowdockerized`). The preset matches
/// the first and tries the second; without the alternate the containers of
/// a v1-started mailcow are not found.
#[tokio::test(flavor = "multi_thread")]
async fn an_unset_compose_project_is_found_under_either_spelling() {
    needs!(let d = docker::engine());
    let postfix = d.stand_in(
        "mailcowdockerized_postfix-mailcow_1",
        "mailcowdockerized",
        "postfix-mailcow",
        0,
    );
    let names = certsync_receive::systems::mailcow::project_names(
        None,
        Path::new("/opt/mailcow-dockerized"),
    );
    assert_eq!(names, ["mailcow-dockerized", "mailcowdockerized"]);

    let mut p = plan(&d, Some(&names[0]), &["postfix-mailcow"]);
    let without = reload(&p, false).await.unwrap();
    assert_eq!(
        outcome(&without, "postfix-mailcow").status,
        ReloadStatus::Missing,
        "{without:?}"
    );
    assert!(postfix.calls().is_empty());

    p.project_alternates = names[1..].to_vec();
    let with = reload(&p, false).await.unwrap();
    let o = outcome(&with, "postfix-mailcow");
    assert_eq!(o.status, ReloadStatus::Reloaded, "{o:?}");
    assert_eq!(o.containers, ["mailcowdockerized_postfix-mailcow_1"]);
    assert_eq!(postfix.calls(), ["postfix reload"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_names_containers_and_commands_and_changes_nothing() {
    needs!(let d = docker::engine());
    let postfix = d.stand_in("mc-postfix-mailcow-1", "mc", "postfix-mailcow", 0);

    let outcomes = reload(&plan(&d, Some("mc"), &["postfix-mailcow"]), true)
        .await
        .unwrap();

    let p = outcome(&outcomes, "postfix-mailcow");
    assert_eq!(p.status, ReloadStatus::WouldReload, "{p:?}");
    assert!(
        p.message
            .contains("postfix reload` in mc-postfix-mailcow-1"),
        "{}",
        p.message
    );
    assert!(outcomes_ok(&outcomes));
    assert!(
        postfix.calls().is_empty(),
        "dry run ran {:?}",
        postfix.calls()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_project_one_project_is_used_and_several_are_refused() {
    needs!(let d = docker::engine());
    let a = d.stand_in("a-postfix-mailcow-1", "a", "postfix-mailcow", 0);
    let b = d.stand_in("b_postfix-mailcow_1", "b", "postfix-mailcow", 0);
    let only_a = d.stand_in("a-dovecot-mailcow-1", "a", "dovecot-mailcow", 0);

    let outcomes = reload(
        &plan(&d, None, &["postfix-mailcow", "dovecot-mailcow"]),
        false,
    )
    .await
    .unwrap();

    let p = outcome(&outcomes, "postfix-mailcow");
    assert_eq!(p.status, ReloadStatus::Ambiguous, "{p:?}");
    for needle in ["a-postfix-mailcow-1", "b_postfix-mailcow_1", "project"] {
        assert!(p.message.contains(needle), "{needle}: {}", p.message);
    }
    assert!(a.calls().is_empty() && b.calls().is_empty());
    assert_eq!(
        outcome(&outcomes, "dovecot-mailcow").status,
        ReloadStatus::Reloaded
    );
    assert_eq!(only_a.calls(), ["dovecot reload"]);
    assert!(!outcomes_ok(&outcomes));
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_and_missing_containers_are_reported_naming_the_service() {
    needs!(let d = docker::engine());
    let postfix = d.stand_in("mc-postfix-mailcow-1", "mc", "postfix-mailcow", 0);
    postfix.container.stop();
    // nginx-mailcow exists only in another project.
    let _other = d.stand_in("other-nginx-mailcow-1", "other", "nginx-mailcow", 0);

    let outcomes = reload(
        &plan(&d, Some("mc"), &["postfix-mailcow", "nginx-mailcow"]),
        false,
    )
    .await
    .unwrap();

    let p = outcome(&outcomes, "postfix-mailcow");
    assert_eq!(p.status, ReloadStatus::Stopped, "{p:?}");
    for needle in [
        "postfix-mailcow",
        "mc-postfix-mailcow-1",
        "exited",
        "docker start",
    ] {
        assert!(p.message.contains(needle), "{needle}: {}", p.message);
    }
    let n = outcome(&outcomes, "nginx-mailcow");
    assert_eq!(n.status, ReloadStatus::Missing, "{n:?}");
    assert!(
        n.message.contains("nginx-mailcow") && n.message.contains("\"other\""),
        "{}",
        n.message
    );
    assert!(!outcomes_ok(&outcomes));
    assert!(postfix.calls().is_empty());
    assert_eq!(
        postfix.container.inspect("{{.State.Running}}"),
        "false",
        "certsync must not start a stopped container"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_reload_restarts_the_container_and_says_so() {
    needs!(let d = docker::engine());
    let postfix = d.stand_in("mc-postfix-mailcow-1", "mc", "postfix-mailcow", 1);
    let started_at = postfix.container.inspect("{{.State.StartedAt}}");

    let outcomes = reload(&plan(&d, Some("mc"), &["postfix-mailcow"]), false)
        .await
        .unwrap();

    let p = outcome(&outcomes, "postfix-mailcow");
    assert_eq!(p.status, ReloadStatus::Restarted, "{p:?}");
    for needle in [
        "postfix reload",
        "exited 1",
        "restarted container mc-postfix-mailcow-1",
    ] {
        assert!(p.message.contains(needle), "{needle}: {}", p.message);
    }
    assert!(
        outcomes_ok(&outcomes),
        "a restart delivers the new certificate"
    );
    assert_eq!(postfix.calls(), ["postfix reload"]);
    assert_ne!(
        postfix.container.inspect("{{.State.StartedAt}}"),
        started_at
    );
    assert!(
        certsync_tests::docker::wait_until(Duration::from_secs(20), || postfix.starts() == 2)
            .is_some(),
        "the container's process did not start again: {} starts",
        postfix.starts()
    );
}

#[tokio::test]
async fn an_unreachable_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let plan = ReloadPlan {
        socket: socket.clone(),
        project: Some("mc".into()),
        project_alternates: vec![],
        services: vec![ServiceReload {
            service: "postfix-mailcow".into(),
            command: vec!["postfix".into(), "reload".into()],
        }],
    };
    let err = reload(&plan, false).await.unwrap_err();
    assert!(matches!(err, ReloadError::SocketMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&socket.display().to_string()) && msg.contains("Docker"),
        "{msg}"
    );

    // A socket whose engine has gone away.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(listener);
    let err = reload(&plan, true).await.unwrap_err();
    assert!(matches!(err, ReloadError::SocketRefused { .. }), "{err:?}");
}

#[test]
fn a_forbidden_socket_says_to_join_the_docker_group() {
    needs!(let d = docker::engine());
    let plan = plan(&d, Some("mc"), &["postfix-mailcow"]);
    // An unprivileged user's view of the engine's socket: setfsuid changes
    // the file-system identity of this thread only (and drops its
    // CAP_DAC_OVERRIDE), which is what a socket connect is checked against.
    let err = std::thread::spawn(move || {
        // SAFETY: affects only this thread's file-system uid.
        unsafe { libc::setfsuid(65534) };
        assert_eq!(
            unsafe { libc::setfsuid(u32::MAX) },
            65534,
            "setfsuid did not take"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(reload(&plan, false)).unwrap_err()
    })
    .join()
    .unwrap();
    assert!(
        matches!(err, ReloadError::SocketPermission { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&d.socket().display().to_string()) && msg.contains("docker group"),
        "{msg}"
    );
}

// ------------------------------------------------------ real nginx and TLS

fn write_pair(ssl: &Path, leaf: &TestLeaf) {
    // Like the installer: a temp file then rename, so nginx never reads
    // half a file.
    use std::os::unix::fs::PermissionsExt;
    let put = |name: &str, bytes: &[u8], mode: u32| {
        let tmp = ssl.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, ssl.join(name)).unwrap();
    };
    put("cert.pem", &leaf.chain_pem, 0o644);
    put("key.pem", leaf.key_pem.expose(), 0o600);
}

/// The fingerprint `openssl s_client` sees, through `openssl x509`.
fn s_client_fingerprint(port: u16) -> Fingerprint {
    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            HOST,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut x509.stdin.take().unwrap(), &s_client.stdout).unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .unwrap_or_else(|e| {
            panic!(
                "openssl x509 printed no fingerprint ({e}); s_client said:\n{}",
                String::from_utf8_lossy(&s_client.stdout)
            )
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_serves_the_new_certificate_after_reload_through_the_docker_api() {
    needs!(let d = docker::engine());
    needs!(need::nginx(), need::openssl());
    let ca = TestCa::new();
    let a = ca.leaf(KeyKind::P384, &[HOST]);
    let b = ca.leaf(KeyKind::Rsa2048, &[HOST]);
    let ssl = tempfile::tempdir().unwrap();
    write_pair(ssl.path(), &a);
    let t = Instant::now();
    let nginx = d.nginx_mailcow("mc-nginx-mailcow-1", "mc", ssl.path(), HOST);
    eprintln!("nginx container up in {:?}", t.elapsed());
    let endpoint = Endpoint::parse(&format!("127.0.0.1:{}", nginx.port)).unwrap();
    let served = |e: Endpoint| async move {
        tokio::task::spawn_blocking(move || probe::served_leaf(&e, HOST, Duration::from_secs(5)))
            .await
            .unwrap()
    };

    assert_eq!(
        served(endpoint.clone()).await.unwrap().fingerprint,
        a.fingerprint()
    );

    // The new pair is on disk, but nginx still serves what it loaded.
    write_pair(ssl.path(), &b);
    assert_eq!(
        served(endpoint.clone()).await.unwrap().fingerprint,
        a.fingerprint()
    );

    let t = Instant::now();
    let outcomes = reload(&plan(&d, Some("mc"), &["nginx-mailcow"]), false)
        .await
        .unwrap();
    eprintln!("nginx -s reload through the API took {:?}", t.elapsed());
    assert_eq!(
        outcome(&outcomes, "nginx-mailcow").status,
        ReloadStatus::Reloaded,
        "{outcomes:?}"
    );

    // Right after a reload the old worker may still accept one more
    // connection with the old pair: verify_endpoint counts a match only
    // when a second probe, a moment later, sees the same certificate.
    let seen = certsync_receive::pipeline::reload_verify::verify_endpoint(
        &endpoint.to_string(),
        HOST,
        b.fingerprint(),
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    assert_eq!(seen, b.fingerprint());
    let port = nginx.port;
    let openssl_seen = tokio::task::spawn_blocking(move || s_client_fingerprint(port))
        .await
        .unwrap();
    assert_eq!(
        openssl_seen,
        b.fingerprint(),
        "openssl s_client disagrees with the probe"
    );

    // Expecting the old pair now is a mismatch naming both fingerprints.
    let (e, old) = (endpoint.clone(), a.fingerprint());
    let err =
        tokio::task::spawn_blocking(move || probe::verify(&e, HOST, old, Duration::from_secs(1)))
            .await
            .unwrap()
            .unwrap_err();
    assert!(matches!(err, ProbeError::Mismatch(_)), "{err:?}");
    let msg = err.to_string();
    for needle in [
        a.fingerprint().to_string(),
        b.fingerprint().to_string(),
        endpoint.to_string(),
    ] {
        assert!(msg.contains(&needle), "{needle}: {msg}");
    }
}

/// Every endpoint serves `expected`, as the probe sees it (with retries
/// while daemons reload).
async fn all_serve(endpoints: &[String], expected: Fingerprint, retry_for: Duration) {
    for text in endpoints {
        let e = Endpoint::parse(text).unwrap();
        let got = tokio::task::spawn_blocking(move || probe::verify(&e, HOST, expected, retry_for))
            .await
            .unwrap();
        if let Err(err) = got {
            panic!("{text}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_postfix_and_dovecot_serve_the_new_certificate_after_reload() {
    needs!(let d = docker::engine());
    needs!(need::mail_daemons());
    let ca = TestCa::new();
    let a = ca.leaf(KeyKind::P384, &[HOST]);
    let b = ca.leaf(KeyKind::P256, &[HOST]);
    let ssl = tempfile::tempdir().unwrap();
    write_pair(ssl.path(), &a);
    let t = Instant::now();
    let postfix = d.postfix_mailcow("mc-postfix-mailcow-1", "mc", ssl.path());
    let dovecot = d.dovecot_mailcow("mc-dovecot-mailcow-1", "mc", ssl.path());
    eprintln!("postfix and dovecot containers up in {:?}", t.elapsed());
    let mut endpoints = postfix.endpoints();
    endpoints.extend(dovecot.endpoints());
    assert_eq!(endpoints.len(), 5, "{endpoints:?}");

    all_serve(&endpoints, a.fingerprint(), Duration::from_secs(5)).await;

    write_pair(ssl.path(), &b);
    let t = Instant::now();
    let outcomes = reload(
        &plan(&d, Some("mc"), &["postfix-mailcow", "dovecot-mailcow"]),
        false,
    )
    .await
    .unwrap();
    eprintln!(
        "postfix reload + dovecot reload through the API took {:?}",
        t.elapsed()
    );
    for service in ["postfix-mailcow", "dovecot-mailcow"] {
        assert_eq!(
            outcome(&outcomes, service).status,
            ReloadStatus::Reloaded,
            "{outcomes:#?}"
        );
    }

    all_serve(&endpoints, b.fingerprint(), Duration::from_secs(20)).await;
    let smtp_port = postfix.ports[0].1;
    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{smtp_port}"),
            "-servername",
            HOST,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let leaf = openssl::x509::X509::from_pem(&s_client.stdout)
        .expect("s_client printed the server certificate");
    assert_eq!(
        Fingerprint::of_der(&leaf.to_der().unwrap()),
        b.fingerprint(),
        "openssl s_client -starttls smtp"
    );
}
