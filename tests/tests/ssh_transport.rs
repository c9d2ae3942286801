//! The SSH transport against a real OpenSSH sshd: what an operator meets
//! when the pusher reaches a mailcow host — a forced command, known_hosts
//! in its several forms, a pinned key, wrong keys, a dead port.
//!
//! Forced commands here are small stand-ins (`/bin/cat`, a script); the
//! end-to-end tests run certsync-receive itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certsync_push::transport::ssh::{connect, HostKeyPolicy, SshTarget};
use certsync_push::transport::{Connection, TransportError};
use certsync_tests::sshd::{self, client_key, forced_line, script, ClientKey, KeyType, Sshd};
use certsync_tests::{need, needs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn target(sshd: &Sshd, key: &ClientKey, host_keys: HostKeyPolicy) -> SshTarget {
    SshTarget {
        host: sshd.host().to_string(),
        port: sshd.port(),
        user: sshd.user().to_string(),
        identity: key.private.clone(),
        host_keys,
        connect_timeout: Duration::from_secs(10),
    }
}

/// A known_hosts file that lists this sshd correctly.
fn known_hosts(sshd: &Sshd) -> HostKeyPolicy {
    HostKeyPolicy::KnownHosts(sshd.write_known_hosts("known_hosts", &[sshd.known_hosts_line()]))
}

/// An sshd whose only authorized key runs `command` for a fresh ed25519
/// client key.
fn sshd_with(command: &str) -> (Sshd, ClientKey, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let key = client_key(keys.path(), "id_ed25519", KeyType::Ed25519);
    let sshd = Sshd::builder()
        .authorized_key(&forced_line(command, &key.public_line))
        .start();
    (sshd, key, keys)
}

/// Write `data` and read everything back concurrently (so neither side
/// waits on a full window), then close.
async fn echo(conn: &mut Connection, data: &[u8]) -> Vec<u8> {
    let write = async {
        conn.writer.write_all(data).await.unwrap();
        conn.writer.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let read = conn.reader.read_to_end(&mut back);
    let ((), n) = tokio::join!(write, read);
    n.unwrap();
    back
}

/// Send `data`, read `expect` back, and see the remote command exit 0.
async fn assert_echoes(mut conn: Connection, data: &[u8], expect: &[u8]) {
    assert_eq!(echo(&mut conn, data).await, expect);
    assert_eq!(conn.finish().await.unwrap(), Some(0));
}

/// A forced command that only touches `marker`: if the marker exists,
/// something ran on the server.
fn marker_command(dir: &Path) -> (String, PathBuf) {
    let marker = dir.join("executed");
    (format!("touch {}", marker.display()), marker)
}

#[tokio::test]
async fn cat_round_trips_bytes_and_reports_exit_0() {
    needs!(need::sshd());
    let (sshd, key, _k) = sshd_with("/bin/cat");
    let mut conn = connect(&target(&sshd, &key, known_hosts(&sshd)))
        .await
        .unwrap();
    assert_eq!(conn.peer(), format!("root@127.0.0.1:{}", sshd.port()));
    // More than one channel window's worth of packets, all byte values.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let back = echo(&mut conn, &data).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes differ after the round trip");
    assert_eq!(conn.finish().await.unwrap(), Some(0));
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );
    let log = sshd.log();
    assert!(
        log.contains("forced-command (key-option) '/bin/cat'"),
        "{log}"
    );
    assert!(!log.to_lowercase().contains("protocol error"), "{log}");
}

#[tokio::test]
async fn remote_exit_status_and_original_command() {
    needs!(need::sshd());
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "receiver.sh",
        "echo \"asked: $SSH_ORIGINAL_COMMAND\"\necho 'receiver log line' >&2\nexit 7",
    );
    let (sshd, key, _k) = sshd_with(&s.display().to_string());
    let mut conn = connect(&target(&sshd, &key, known_hosts(&sshd)))
        .await
        .unwrap();
    let back = echo(&mut conn, b"").await;
    assert_eq!(
        String::from_utf8_lossy(&back),
        "asked: certsync-receive serve\n"
    );
    assert_eq!(conn.finish().await.unwrap(), Some(7));
}

#[tokio::test]
async fn finish_without_reading_still_gets_status() {
    needs!(need::sshd());
    let dir = tempfile::tempdir().unwrap();
    // Writes far more than the pipe holds, then exits 5 after stdin EOF.
    let s = script(
        dir.path(),
        "chatty.sh",
        "head -c 1000000 /dev/zero\ncat >/dev/null\nexit 5",
    );
    let (sshd, key, _k) = sshd_with(&s.display().to_string());
    let conn = connect(&target(&sshd, &key, known_hosts(&sshd)))
        .await
        .unwrap();
    assert_eq!(conn.finish().await.unwrap(), Some(5));
}

#[tokio::test]
async fn killed_receiver_gives_no_status_and_hung_one_is_bounded() {
    needs!(need::sshd());
    let (sshd, key, _k) = sshd_with("kill -9 $$");
    let conn = connect(&target(&sshd, &key, known_hosts(&sshd)))
        .await
        .unwrap();
    assert_eq!(conn.finish().await.unwrap(), None);

    // Ignores EOF on stdin: finish gives up at its bound.
    sshd.set_authorized_keys(&[forced_line("sleep 30", &key.public_line)]);
    let conn = connect(&target(&sshd, &key, known_hosts(&sshd)))
        .await
        .unwrap();
    let err = conn
        .finish_within(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::FinishTimeout { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("root@127.0.0.1:{}", sshd.port())),
        "{err}"
    );
}

#[tokio::test]
async fn known_hosts_plain_hashed_and_bracketed_forms() {
    needs!(need::sshd());
    let (sshd, key, _k) = sshd_with("/bin/cat");
    let port = sshd.port();
    let bracketed = sshd.known_hosts_line();
    // Tabs, comments, other hosts around it, a wildcard pattern list.
    let decorated = format!(
        "# certsync targets\n\nother.example.com {}\n{}\t{}\n",
        sshd.host_public_key(),
        format_args!("mail.example.com,[127.0.0.?]:{port}"),
        sshd.host_public_key().replace(' ', "\t"),
    );
    let hashed = sshd.write_known_hosts("hashed", std::slice::from_ref(&bracketed));
    sshd::hash_known_hosts(&hashed);
    assert!(std::fs::read_to_string(&hashed).unwrap().starts_with("|1|"));

    let plain = sshd.write_known_hosts("plain", &[bracketed]);
    let decorated = sshd.write_known_hosts("decorated", &[decorated]);
    for file in [plain, hashed, decorated] {
        let conn = connect(&target(
            &sshd,
            &key,
            HostKeyPolicy::KnownHosts(file.clone()),
        ))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_echoes(conn, b"ping", b"ping").await;
    }
}

#[tokio::test]
async fn known_hosts_with_only_the_ecdsa_key_of_a_two_key_host() {
    needs!(need::sshd());
    // sshd offers ed25519 and ECDSA; known_hosts lists only ECDSA. OpenSSH
    // asks for the listed type first, and so must we.
    let keys = tempfile::tempdir().unwrap();
    let key = client_key(keys.path(), "id", KeyType::Ed25519);
    let sshd = Sshd::builder()
        .host_keys(&[KeyType::Ed25519, KeyType::Ecdsa256])
        .authorized_key(&forced_line("/bin/cat", &key.public_line))
        .start();
    let ecdsa = &sshd.host_keys()[1].public_line;
    let line = sshd::known_hosts_line(&format!("[127.0.0.1]:{}", sshd.port()), ecdsa);
    let file = sshd.write_known_hosts("known_hosts", &[line]);
    let conn = connect(&target(&sshd, &key, HostKeyPolicy::KnownHosts(file)))
        .await
        .unwrap();
    assert_eq!(conn.finish().await.unwrap(), Some(0));
}

#[tokio::test]
async fn unknown_host_key_refused_with_fingerprint_nothing_executed() {
    needs!(need::sshd());
    let dir = tempfile::tempdir().unwrap();
    let (command, marker) = marker_command(dir.path());
    let (sshd, key, _k) = sshd_with(&command);
    // Lists this sshd's key, but for port 22 and another host: not ours.
    let file = sshd.write_known_hosts(
        "known_hosts",
        &[
            sshd::known_hosts_line("127.0.0.1", sshd.host_public_key()),
            sshd::known_hosts_line("mail.example.com", sshd.host_public_key()),
        ],
    );
    let err = connect(&target(
        &sshd,
        &key,
        HostKeyPolicy::KnownHosts(file.clone()),
    ))
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::UnknownHostKey { .. }),
        "{msg}"
    );
    assert!(err.is_host_key_refusal());
    assert!(msg.contains(&sshd.host_key_fingerprint()), "{msg}");
    assert!(msg.contains("SHA256:"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", sshd.port())), "{msg}");
    assert!(
        msg.contains(&format!(
            "ssh-keyscan -p {} 127.0.0.1 >> {}",
            sshd.port(),
            file.display()
        )),
        "{msg}"
    );
    // Give a (wrongly) started command time to run before looking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "the forced command ran");
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[tokio::test]
async fn changed_host_key_refused() {
    needs!(need::sshd());
    let dir = tempfile::tempdir().unwrap();
    let (command, marker) = marker_command(dir.path());
    let (sshd, key, keys) = sshd_with(&command);
    // The "old" host key: another ed25519 key, listed for this host:port.
    let old = client_key(keys.path(), "old_host_key", KeyType::Ed25519);
    let line = sshd::known_hosts_line(&format!("[127.0.0.1]:{}", sshd.port()), &old.public_line);
    let file = sshd.write_known_hosts("known_hosts", &["# old".into(), line]);
    let err = connect(&target(&sshd, &key, HostKeyPolicy::KnownHosts(file)))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::ChangedHostKey { .. }),
        "{msg}"
    );
    assert!(msg.contains("HAS CHANGED"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    assert!(msg.contains(&sshd.host_key_fingerprint()), "{msg}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "the forced command ran");
}

#[tokio::test]
async fn revoked_host_key_refused_even_if_listed() {
    needs!(need::sshd());
    let (sshd, key, _k) = sshd_with("/bin/cat");
    let file = sshd.write_known_hosts(
        "known_hosts",
        &[
            sshd.known_hosts_line(),
            format!(
                "@revoked {}",
                sshd::known_hosts_line("*", sshd.host_public_key())
            ),
        ],
    );
    let err = connect(&target(&sshd, &key, HostKeyPolicy::KnownHosts(file)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::RevokedHostKey { line: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&sshd.host_key_fingerprint()),
        "{err}"
    );
}

#[tokio::test]
async fn pinned_host_key_accepted_and_mismatch_refused() {
    needs!(need::sshd());
    let (sshd, key, keys) = sshd_with("/bin/cat");
    let pinned = HostKeyPolicy::Pinned(sshd.host_public_key().to_string());
    let conn = connect(&target(&sshd, &key, pinned)).await.unwrap();
    assert_echoes(conn, b"pinned", b"pinned").await;

    let other = client_key(keys.path(), "other", KeyType::Ed25519);
    let err = connect(&target(
        &sshd,
        &key,
        HostKeyPolicy::Pinned(other.public_line.clone()),
    ))
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::PinnedHostKeyMismatch { .. }),
        "{msg}"
    );
    assert!(msg.contains(&sshd.host_key_fingerprint()), "{msg}");
    assert!(msg.contains(&sshd::fingerprint(&other.public)), "{msg}");
}

#[tokio::test]
async fn unauthorized_client_key_gives_clear_auth_error() {
    needs!(need::sshd());
    let (sshd, _authorized, keys) = sshd_with("/bin/cat");
    let stranger = client_key(keys.path(), "stranger", KeyType::Ed25519);
    let err = connect(&target(&sshd, &stranger, known_hosts(&sshd)))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{msg}");
    assert!(
        msg.contains(&format!("root@127.0.0.1:{}", sshd.port())),
        "{msg}"
    );
    assert!(
        msg.contains(&stranger.private.display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("authorized_keys"), "{msg}");
    assert!(msg.contains(&sshd::fingerprint(&stranger.public)), "{msg}");
}

#[tokio::test]
async fn rsa_and_ecdsa_client_keys_work() {
    needs!(need::sshd());
    let keys = tempfile::tempdir().unwrap();
    let clients: Vec<ClientKey> = [KeyType::Rsa2048, KeyType::Ecdsa256, KeyType::Ecdsa384]
        .iter()
        .enumerate()
        .map(|(i, kind)| client_key(keys.path(), &format!("id_{i}"), *kind))
        .collect();
    let mut builder = Sshd::builder();
    for c in &clients {
        builder = builder.authorized_key(&forced_line("/bin/cat", &c.public_line));
    }
    let sshd = builder.start();
    for c in &clients {
        let conn = connect(&target(&sshd, c, known_hosts(&sshd)))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.public_line));
        assert_echoes(conn, b"key", b"key").await;
    }
}

#[tokio::test]
async fn our_keygen_key_works_with_its_printed_line() {
    needs!(need::sshd());
    // The operator's path: keygen, paste the printed line (with its
    // command swapped for the stand-in), connect.
    let keys = tempfile::tempdir().unwrap();
    let out =
        certsync_push::keygen::keygen(&keys.path().join("id_ed25519"), "certsync@npm").unwrap();
    let line = out
        .authorized_keys_line
        .replace(certsync_core::contract::FORCED_COMMAND, "/bin/cat");
    assert!(line.starts_with("command=\"/bin/cat\",restrict ssh-ed25519 "));
    let sshd = Sshd::builder().authorized_key(&line).start();
    let key = ClientKey {
        private: out.private_key.clone(),
        public: out.public_key.clone(),
        public_line: out.public_line.clone(),
    };
    let conn = connect(&target(&sshd, &key, known_hosts(&sshd)))
        .await
        .unwrap();
    assert_echoes(conn, b"mine", b"mine").await;
    // sshd logs the fingerprint it accepted; it is the one keygen printed.
    assert!(sshd.log().contains(&out.fingerprint), "{}", sshd.log());
}

#[tokio::test]
async fn forced_command_runs_as_an_unprivileged_user() {
    needs!(need::sshd(), need::user("certsync-test"));
    let keys = tempfile::tempdir().unwrap();
    let key = client_key(keys.path(), "id", KeyType::Ed25519);
    // The command line is run by the user's shell: id prints who runs it.
    let sshd = Sshd::builder()
        .user("certsync-test")
        .authorized_key(&forced_line("id -un", &key.public_line))
        .start();
    let conn = connect(&target(&sshd, &key, known_hosts(&sshd)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(
        conn.peer(),
        format!("certsync-test@127.0.0.1:{}", sshd.port())
    );
    assert_echoes(conn, b"", b"certsync-test\n").await;
}

#[tokio::test]
async fn closed_port_is_a_connect_error_naming_host_and_port() {
    needs!(need::sshd());
    let keys = tempfile::tempdir().unwrap();
    let key = client_key(keys.path(), "id", KeyType::Ed25519);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = SshTarget {
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        identity: key.private.clone(),
        host_keys: HostKeyPolicy::Pinned(key.public_line.clone()),
        connect_timeout: Duration::from_secs(10),
    };
    let err = connect(&t).await.unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn silent_listener_times_out_within_the_bound() {
    needs!(need::sshd());
    let keys = tempfile::tempdir().unwrap();
    let key = client_key(keys.path(), "id", KeyType::Ed25519);
    // Accepts TCP (the kernel completes the handshake) but never speaks.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = SshTarget {
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        identity: key.private.clone(),
        host_keys: HostKeyPolicy::Pinned(key.public_line.clone()),
        connect_timeout: Duration::from_secs(1),
    };
    let started = Instant::now();
    let err = connect(&t).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                stage: "the SSH handshake",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    // Bounded, not timed: a generous ceiling that only a missing timeout
    // (a hang) could exceed.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    drop(listener);
}

#[tokio::test]
async fn timing_connect_exec_close_on_loopback() {
    needs!(need::sshd());
    let (sshd, key, _k) = sshd_with("/bin/cat");
    let t = target(&sshd, &key, known_hosts(&sshd));
    let mut runs = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let conn = connect(&t).await.unwrap();
        assert_eq!(conn.finish().await.unwrap(), Some(0));
        runs.push(started.elapsed());
    }
    report("certsync (russh) connect+exec+close on loopback", runs);

    // The same with OpenSSH's client, for comparison, when it is installed.
    if Path::new("/usr/bin/ssh").exists() {
        let known = sshd.write_known_hosts("ssh_known_hosts", &[sshd.known_hosts_line()]);
        let mut runs = Vec::new();
        for _ in 0..7 {
            let started = Instant::now();
            let status = std::process::Command::new("/usr/bin/ssh")
                .args([
                    "-F",
                    "/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=yes",
                ])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known.display()))
                .arg("-i")
                .arg(&key.private)
                .args(["-p", &sshd.port().to_string(), "root@127.0.0.1", "x"])
                .stdin(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            runs.push(started.elapsed());
        }
        report("OpenSSH ssh connect+exec+close on loopback", runs);
    }
}

fn report(what: &str, mut runs: Vec<Duration>) {
    runs.sort();
    eprintln!(
        "{what}: median {:?} (min {:?}, max {:?}, {} runs)",
        runs[runs.len() / 2],
        runs[0],
        runs[runs.len() - 1],
        runs.len()
    );
}
