//! Fault injection against the real `certsync-receive serve`, locally and
//! through a real OpenSSH sshd whose forced command is the receiver (issue 7):
//!
//! - SIGKILL at each install fault point (`CERTSYNC_FAULT_KILL_AT`, see
//!   `certsync_receive::pipeline::fault`), over SSH as well as locally;
//! - the SSH connection cut in the middle of a bundle (the client drops the
//!   connection; the sshd session processes are killed);
//! - the staging filesystem full (a 64 KiB tmpfs mounted on the staging dir);
//! - two pushers at once: the lock makes one wait and say so.
//!
//! The pusher side is spoken here with `certsync_core::protocol` directly
//! (over `certsync_push::transport::ssh::connect` for SSH), so these tests
//! do not depend on the certsync-push binary. After every fault the
//! installed pair must match (old or new, never a mix), and the old pair
//! must be kept whenever the new one did not go in. `RESULT` lines on
//! stderr are what docs/faults.md was filled from.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use certsync_core::bundle::{parse_chain, parse_key};
use certsync_core::protocol::{self, Hello, Limits, Message, Offer, Reader, Want, Wanted};
use certsync_core::report::Report;
use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_push::transport::ssh::{connect, HostKeyPolicy, SshTarget};
use certsync_receive::pipeline::install::FAULT_POINTS;
use certsync_receive::pipeline::stage::StagingDir;
use certsync_tests::need::{self, Missing};
use certsync_tests::receiver::{offered, push_session, Mailhost};
use certsync_tests::sshd::{client_key, forced_line, ClientKey, KeyType, Sshd};
use certsync_tests::{bins, needs};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

const HOST: &str = "mail.example.com";

/// A pusher speaking protocol v1 step by step, so a test can stop (or cut
/// the line) between any two steps.
struct Client<R, W> {
    reader: Reader<R>,
    writer: W,
    logs: Vec<String>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Client<R, W> {
    fn new(reader: R, writer: W) -> Self {
        Client {
            reader: Reader::new(reader, Limits::default()),
            writer,
            logs: Vec::new(),
        }
    }

    async fn send(&mut self, msg: &Message) -> Result<(), String> {
        protocol::write_message(&mut self.writer, msg)
            .await
            .map_err(|e| e.to_string())
    }

    /// Read until a message other than Hello/Log; collect logs.
    async fn next(&mut self) -> Result<Message, String> {
        loop {
            match self.reader.next("message").await {
                Ok(Message::Hello(_)) => {}
                Ok(Message::Log(l)) => self.logs.push(l),
                Ok(Message::Error(e)) => return Err(e.message),
                Ok(m) => return Ok(m),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Hello and an offer of `leaf` as "mail"; the receiver's Want.
    async fn offer(&mut self, leaf: &TestLeaf) -> Result<Want, String> {
        self.send(&Message::Hello(Hello::new("faults-test", false, false)))
            .await?;
        self.send(&Message::Offer(Offer {
            certs: vec![offered("mail", leaf)],
        }))
        .await?;
        match self.next().await? {
            Message::Want(w) => Ok(w),
            other => Err(format!("expected want, got {}", other.kind())),
        }
    }

    /// The bundle, or only its first `cut` bytes.
    async fn bundle(&mut self, leaf: &TestLeaf, cut: Option<usize>) -> Result<(), String> {
        let bytes = protocol::encode(&Message::Bundle {
            name: "mail".into(),
            bundle: leaf.bundle(),
        })
        .map_err(|e| e.to_string())?;
        let n = cut.unwrap_or(bytes.len()).min(bytes.len());
        self.writer
            .write_all(&bytes[..n])
            .await
            .map_err(|e| e.to_string())?;
        self.writer.flush().await.map_err(|e| e.to_string())
    }

    async fn done(&mut self) -> Result<Report, String> {
        self.send(&Message::Done).await?;
        match self.next().await? {
            Message::Report(r) => Ok(r),
            other => Err(format!("expected report, got {}", other.kind())),
        }
    }

    /// The whole push of one pair.
    async fn push(&mut self, leaf: &TestLeaf) -> Result<Report, String> {
        let want = self.offer(leaf).await?;
        if want.certs.iter().any(|d| d.wanted == Wanted::Send) {
            self.bundle(leaf, None).await?;
        }
        self.done().await
    }
}

/// What is installed, in words: "old", "new", "a mix", "nothing".
fn state(host: &Mailhost, old: &TestLeaf, new: &TestLeaf) -> &'static str {
    let Some((chain, key)) = host.installed() else {
        return "nothing";
    };
    let is = |l: &TestLeaf| chain == l.chain_pem && key == l.key_pem.expose();
    if is(old) {
        "old"
    } else if is(new) {
        "new"
    } else {
        "a mix"
    }
}

/// The installed files form a matching pair.
fn matching(host: &Mailhost) -> bool {
    let Some((chain, key)) = host.installed() else {
        return false;
    };
    match (parse_chain(&chain), parse_key(&key)) {
        (Ok(c), Ok(k)) => c[0].public_key().is_ok_and(|p| p.public_eq(&k)),
        _ => false,
    }
}

fn leftovers(host: &Mailhost) -> Vec<String> {
    std::fs::read_dir(&host.ssl)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("certsync-new") || n.contains("certsync-tmp"))
        .collect()
}

fn host_with_old(ca: &TestCa) -> (Mailhost, TestLeaf) {
    let old = ca.leaf(KeyKind::P384, &[HOST]);
    (Mailhost::with_installed(&[HOST], &old), old)
}

fn serve_cmd(host: &Mailhost, fault: Option<&str>) -> tokio::process::Command {
    let mut c = host.serve_cmd();
    if let Some(point) = fault {
        c.env("CERTSYNC_FAULT_KILL_AT", point);
    }
    c
}

/// The forced command line for `host`, optionally with a fault point.
fn forced_command(host: &Mailhost, fault: Option<&str>) -> String {
    let base = format!(
        "{} --config {} serve",
        bins::receive().display(),
        host.config.display()
    );
    match fault {
        Some(p) => format!("env CERTSYNC_FAULT_KILL_AT={p} {base}"),
        None => base,
    }
}

fn target(sshd: &Sshd, key: &ClientKey) -> SshTarget {
    SshTarget {
        host: sshd.host().to_string(),
        port: sshd.port(),
        user: sshd.user().to_string(),
        identity: key.private.clone(),
        host_keys: HostKeyPolicy::KnownHosts(
            sshd.write_known_hosts("known_hosts", &[sshd.known_hosts_line()]),
        ),
        connect_timeout: Duration::from_secs(10),
    }
}

/// An sshd whose forced command is whatever the test sets next.
fn start_sshd() -> (Sshd, ClientKey, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let key = client_key(keys.path(), "id_ed25519", KeyType::Ed25519);
    let sshd = Sshd::builder()
        .authorized_key(&forced_line("/bin/false", &key.public_line))
        .start();
    (sshd, key, keys)
}

/// One push over SSH: (report or error, the receiver's exit status).
async fn ssh_push(
    sshd: &Sshd,
    key: &ClientKey,
    leaf: &TestLeaf,
) -> (Result<Report, String>, Option<u32>) {
    let mut conn = connect(&target(sshd, key)).await.expect("ssh connect");
    let result = {
        let mut client = Client::new(&mut conn.reader, &mut conn.writer);
        client.push(leaf).await
    };
    let exit = conn
        .finish_within(Duration::from_secs(30))
        .await
        .expect("finish");
    (result, exit)
}

/// Wait (bounded) until no receiver holds the session lock of `host`.
fn wait_lock_free(host: &Mailhost) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(Some(_l)) = StagingDir::open(&host.staging).unwrap().try_lock() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a receiver still holds {} after 30 s",
            host.staging.join(".lock").display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Local,
    Ssh,
}

/// SIGKILL at every install fault point, locally and over SSH. Right after
/// the kill the disk may hold a mix (between the two renames); the next
/// session repairs it before anything else, so a matching pair is always
/// what a run finds, and a retried push completes.
#[tokio::test]
async fn sigkill_at_every_install_point_locally_and_over_ssh() {
    // Local always; over SSH too where sshd is (a SKIP line otherwise).
    let ssh = need::found(need::sshd()).is_some();
    let ca = TestCa::new();
    let server = if ssh { Some(start_sshd()) } else { None };
    let mut vias = vec![Via::Local];
    if ssh {
        vias.push(Via::Ssh);
    }
    for via in vias {
        for point in FAULT_POINTS {
            let (host, old) = host_with_old(&ca);
            let new = ca.leaf(KeyKind::P384, &[HOST]);
            // The push that is killed.
            let killed_exit = match via {
                Via::Local => {
                    let r = push_session(
                        serve_cmd(&host, Some(point)),
                        &[("mail", new.bundle(), new.fingerprint())],
                        false,
                        false,
                    )
                    .await;
                    assert!(r.report.is_none(), "{point}: a report after a kill: {r:?}");
                    r.exit.map(|c| c as u32)
                }
                Via::Ssh => {
                    let (sshd, key, _) = server.as_ref().unwrap();
                    sshd.set_authorized_keys(&[forced_line(
                        &forced_command(&host, Some(point)),
                        &key.public_line,
                    )]);
                    let (res, exit) = ssh_push(sshd, key, &new).await;
                    assert!(res.is_err(), "{point}: a report after a kill: {res:?}");
                    exit
                }
            };
            assert_eq!(
                killed_exit, None,
                "{via:?} {point}: the fault point was not reached"
            );
            let after_kill = state(&host, &old, &new);
            assert_ne!(after_kill, "nothing", "{via:?} {point}");

            // The next run: the same push again, without the fault.
            let (report, exit, recovery) = match via {
                Via::Local => {
                    let r = push_session(
                        serve_cmd(&host, None),
                        &[("mail", new.bundle(), new.fingerprint())],
                        false,
                        false,
                    )
                    .await;
                    let recovery = recovery_of(&r.stderr);
                    (
                        r.report.ok_or(r.error.unwrap_or_default()),
                        r.exit.map(|c| c as u32),
                        recovery,
                    )
                }
                Via::Ssh => {
                    let (sshd, key, _) = server.as_ref().unwrap();
                    sshd.set_authorized_keys(&[forced_line(
                        &forced_command(&host, None),
                        &key.public_line,
                    )]);
                    let (res, exit) = ssh_push(sshd, key, &new).await;
                    (res, exit, "")
                }
            };
            let report = report.unwrap_or_else(|e| panic!("{via:?} {point}: {e}"));
            assert_eq!(exit, Some(0), "{via:?} {point}: {report:?}");
            assert!(matching(&host), "{via:?} {point}: not a matching pair");
            assert_eq!(state(&host, &old, &new), "new", "{via:?} {point}");
            assert!(
                leftovers(&host).is_empty(),
                "{via:?} {point}: {:?}",
                leftovers(&host)
            );
            assert_eq!(
                std::fs::metadata(host.key_path()).unwrap().mode() & 0o777,
                0o600
            );
            eprintln!(
                "RESULT sigkill {via:?} at {point}: exit signal 9; on disk right after: {after_kill}; next run: exit 0, {}{}",
                if report.certs[0].nothing_to_do { "nothing to do (already new)" } else { "installed new" },
                if recovery.is_empty() { String::new() } else { format!(", {recovery}") }
            );
        }
    }
}

fn recovery_of(stderr: &str) -> &'static str {
    if stderr.contains("finished an install that was interrupted") {
        "recovery rolled forward"
    } else if stderr.contains("undid an install that was interrupted") {
        "recovery rolled back"
    } else {
        ""
    }
}

/// PIDs of the processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split at ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or("").to_string();
        let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) {
            out.push((pid, comm));
        }
    }
    out
}

/// The SSH connection cut in the middle of a bundle, two ways: the pusher
/// drops the connection; the sshd processes serving the session are
/// SIGKILLed. And a pusher that stalls mid-bundle over SSH with the
/// connection open. The receiver sees its stdin end mid-frame, or no data
/// for read_timeout: nothing installed, the old pair intact, nothing left
/// staged.
#[tokio::test]
async fn ssh_connection_cut_or_stalled_mid_bundle_installs_nothing() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let (sshd, key, _k) = start_sshd();
    for how in [
        "client drops the connection",
        "sshd session killed",
        "pusher stalls, connection kept open",
    ] {
        let (host, old) = host_with_old(&ca);
        let new = ca.leaf(KeyKind::Rsa2048, &[HOST]);
        let before = host.snapshot();
        // The receiver's log goes to a file: over SSH its stderr is the
        // channel's, which the cut takes away.
        let logdir = tempfile::tempdir().unwrap();
        let receiver_log = logdir.path().join("receiver.log");
        let command = format!(
            "{} 2>>{}",
            forced_command(&host, None),
            receiver_log.display()
        );
        sshd.set_authorized_keys(&[forced_line(&command, &key.public_line)]);
        let mut conn = connect(&target(&sshd, &key)).await.expect("connect");
        {
            let mut client = Client::new(&mut conn.reader, &mut conn.writer);
            let want = client.offer(&new).await.expect("want");
            assert_eq!(want.certs[0].wanted, Wanted::Send);
            // Half the bundle: the header and part of the chain.
            client.bundle(&new, Some(700)).await.expect("half a bundle");
        }
        // Let the half bundle reach the receiver before the cut.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if how.starts_with("sshd") {
            let master: u32 = std::fs::read_to_string(sshd.dir().join("sshd.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let mut killed = 0;
            let mut queue = vec![master];
            while let Some(p) = queue.pop() {
                for (child, comm) in children_of(p) {
                    queue.push(child);
                    if comm.starts_with("sshd") {
                        // SAFETY: kill(2) on an sshd session process this test started.
                        unsafe { libc::kill(child as i32, libc::SIGKILL) };
                        killed += 1;
                    }
                }
            }
            assert!(killed > 0, "no sshd session process found under {master}");
        }
        let waited = if how.starts_with("pusher stalls") {
            // Keep the connection (and the SSH channel) open, silent.
            let waited = wait_lock_free(&host);
            drop(conn);
            waited
        } else {
            drop(conn);
            wait_lock_free(&host)
        };
        let log = std::fs::read_to_string(&receiver_log).unwrap_or_default();
        let ended = log
            .lines()
            .rev()
            .find(|l| l.contains("protocol:"))
            .map(|l| l.split("protocol:").nth(1).unwrap_or("").trim().to_string())
            .unwrap_or_default();
        eprintln!(
            "RESULT ssh cut mid-bundle ({how}): receiver gone {waited:?} after the cut: {ended}; installed: {}",
            state(&host, &old, &new)
        );
        assert!(
            ended.contains("ended in the middle of a frame") || ended.contains("stalled"),
            "{how}: {log}"
        );
        assert_eq!(host.snapshot(), before, "{how}");
        assert_eq!(state(&host, &old, &new), "old", "{how}");
        assert!(
            !host.staging.join("mail/privkey.pem").exists(),
            "{how}: key left staged"
        );
        let log = sshd.log();
        assert!(log.contains("Accepted publickey"), "{log}");
    }
    // And the receiver is fine afterwards: a full push goes through.
    let (host, _old) = host_with_old(&ca);
    let new = ca.leaf(KeyKind::Rsa2048, &[HOST]);
    sshd.set_authorized_keys(&[forced_line(&forced_command(&host, None), &key.public_line)]);
    let (res, exit) = ssh_push(&sshd, &key, &new).await;
    assert_eq!(exit, Some(0), "{res:?}");
    assert_eq!(host.installed().unwrap().0, new.chain_pem);
}

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Option<Tmpfs<'a>> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

/// The staging dir on a full 64 KiB tmpfs: the stage step fails with a
/// clear error (exit 1), nothing is installed, the old pair is kept, no
/// partial file is left; once there is room the same push succeeds.
#[tokio::test]
async fn staging_filesystem_full_is_a_clear_error() {
    needs!(need::root("to mount a tmpfs"));
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let new = ca.leaf(KeyKind::Rsa2048, &[HOST]);
    needs!(let _mount = Tmpfs::mount(&host.staging, "64k").ok_or(Missing("mount -t tmpfs".into())));
    // The lock file and the cert's dir first (no data blocks), then fill.
    StagingDir::open(&host.staging).unwrap().try_lock().unwrap();
    let filler = host.staging.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        while f.write_all(&block).and_then(|_| f.sync_all()).is_ok() {}
    }
    let before = host.snapshot();
    let r = push_session(
        serve_cmd(&host, None),
        &[("mail", new.bundle(), new.fingerprint())],
        false,
        false,
    )
    .await;
    let text = r
        .report
        .as_ref()
        .map(|rep| rep.certs[0].to_string().replace('\n', " | "))
        .unwrap_or_else(|| r.error.clone().unwrap_or_default());
    eprintln!("RESULT staging fs full: exit {:?}: {text}", r.exit);
    assert_eq!(r.exit, Some(1), "{r:?}");
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains(&host.staging.display().to_string()), "{text}");
    assert_eq!(host.snapshot(), before);
    assert_eq!(state(&host, &old, &new), "old");
    assert!(!host.staging.join("mail/privkey.pem").exists());
    assert!(!host.staging.join("mail/fullchain.pem").exists());

    std::fs::remove_file(&filler).unwrap();
    let r = push_session(
        serve_cmd(&host, None),
        &[("mail", new.bundle(), new.fingerprint())],
        false,
        false,
    )
    .await;
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!(state(&host, &old, &new), "new");
}

/// Two pushers at once: the first holds the session (and the lock) open
/// between its offer and its bundle; the second is started meanwhile and
/// must wait. Both end consistent; the second says it waited and finds the
/// pair already installed.
#[tokio::test]
async fn two_pushers_at_once_one_waits_and_says_so() {
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let new = ca.leaf(KeyKind::P256, &[HOST]);
    // The first session idles between its offer and its bundle while the
    // second starts: give it a read_timeout well above that pause.
    let config = std::fs::read_to_string(&host.config).unwrap();
    assert!(config.contains("read_timeout = 2\n"));
    std::fs::write(
        &host.config,
        config.replace("read_timeout = 2\n", "read_timeout = 60\n"),
    )
    .unwrap();

    let mut first = serve_cmd(&host, None)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (stdin, stdout) = (first.stdin.take().unwrap(), first.stdout.take().unwrap());
    let mut client = Client::new(stdout, stdin);
    let want = client.offer(&new).await.unwrap();
    assert_eq!(want.certs[0].wanted, Wanted::Send);
    // The first receiver holds the lock now (it took it before its Want).
    assert!(StagingDir::open(&host.staging)
        .unwrap()
        .try_lock()
        .unwrap()
        .is_none());

    let pairs = vec![("mail", new.bundle(), new.fingerprint())];
    let cmd = serve_cmd(&host, None);
    let second = tokio::spawn(async move { push_session(cmd, &pairs, false, false).await });
    // Give the second receiver time to reach the lock (a bounded pause;
    // if it were late it would not have to wait, and the test says so).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !second.is_finished(),
        "the second push did not wait for the lock"
    );
    client.bundle(&new, None).await.unwrap();
    let report = client.done().await.unwrap();
    drop(client);
    let status = first.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(report.exit(), certsync_core::ExitCode::Success);

    let second = second.await.unwrap();
    let waited: Vec<&String> = second
        .logs
        .iter()
        .filter(|l| l.contains("for another certsync-receive"))
        .collect();
    eprintln!(
        "RESULT two pushers: first exit 0 installed; second exit {:?}, logs {:?}, nothing_to_do {:?}",
        second.exit,
        second.logs,
        second.report.as_ref().map(|r| r.certs[0].nothing_to_do)
    );
    assert_eq!(second.exit, Some(0), "{second:?}");
    assert_eq!(waited.len(), 1, "{:?}", second.logs);
    assert!(waited[0].starts_with("waited"), "{}", waited[0]);
    assert!(second.report.unwrap().certs[0].nothing_to_do);
    assert_eq!(second.bundles_sent, 0);
    assert_eq!(state(&host, &old, &new), "new");
    assert!(matching(&host));
}

/// The Docker daemon stopped in the middle of a reload: the reload command
/// (exec'd in a container labelled postfix-mailcow) is still running when
/// the engine gets SIGTERM (what `systemctl stop docker` sends). The pair is
/// already installed (and consistent); the receiver says the reload failed
/// and exits 4, so the operator knows the services may still serve the old
/// certificate.
#[tokio::test]
async fn docker_stopped_mid_reload_is_exit_4_with_the_pair_installed() {
    use certsync_tests::docker::{Dockerd, Run};
    needs!(need::dockerd());
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let d = Dockerd::start();
    let observe = tempfile::tempdir().unwrap();
    let _c = d.run(
        &Run::new("postfix-faults")
            .compose("faultproj", "postfix-mailcow")
            .mount(observe.path(), "/observe", false),
    );
    // The reload command marks that it started, then takes its time.
    let config = format!(
        "staging_dir = {staging:?}\nread_timeout = 5\ndane = \"off\"\nca_file = {ca_file:?}\n\n[[cert]]\nname = \"mail\"\nhostnames = [{HOST:?}]\ncert_path = {cert:?}\nkey_path = {key:?}\nreload = [\"postfix-mailcow\"]\nverify = []\n\n[docker]\nsocket = {socket:?}\nproject = \"faultproj\"\n\n[docker.reload]\n\"postfix-mailcow\" = [\"sh\", \"-c\", \"touch /observe/reload-started; sleep 30\"]\n",
        staging = host.staging,
        ca_file = certsync_tests::receiver::write_test_ca(host.root.path()),
        cert = host.cert_path(),
        key = host.key_path(),
        socket = d.socket(),
    );
    std::fs::write(&host.config, config).unwrap();
    let pid: i32 = std::fs::read_to_string(d.socket().with_file_name("dockerd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let pairs = vec![("mail", new.bundle(), new.fingerprint())];
    let cmd = serve_cmd(&host, None);
    let push = tokio::spawn(async move { push_session(cmd, &pairs, false, false).await });
    let marker = observe.path().join("reload-started");
    // Until the reload command runs, or the session ends without it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() && !push.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !marker.exists() {
        let r = push.await.unwrap();
        panic!("the reload command never started: {r:?}\n{}", d.log_tail());
    }
    // SAFETY: kill(2) on the dockerd this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopped_at = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(180), push)
        .await
        .expect("the receiver did not finish within 180 s of the engine stopping")
        .unwrap();
    let text = r
        .report
        .as_ref()
        .map(|rep| rep.certs[0].to_string().replace('\n', " | "))
        .unwrap_or_else(|| r.error.clone().unwrap_or_default());
    eprintln!(
        "RESULT docker stopped mid-reload: exit {:?} {:?} after the stop: {text}",
        r.exit,
        stopped_at.elapsed()
    );
    assert_eq!(r.exit, Some(4), "{r:?}");
    assert!(text.contains("postfix-mailcow"), "{text}");
    assert!(matching(&host));
    assert_eq!(state(&host, &old, &new), "new");
    assert!(leftovers(&host).is_empty());
}

/// The same fault one layer down, runnable before `serve` calls the
/// reload: `certsync_receive::systems::docker::reload` with the engine SIGTERMed
/// while the exec'd reload command is still running. It must return within
/// a bounded time and report the service as not reloaded, naming it.
#[tokio::test(flavor = "multi_thread")]
async fn docker_stopped_mid_reload_at_the_reload_step() {
    use certsync_receive::systems::docker::{reload, ReloadPlan, ServiceReload};
    use certsync_tests::docker::{Dockerd, Run};
    needs!(need::dockerd());
    let d = Dockerd::start();
    let observe = tempfile::tempdir().unwrap();
    let _c = d.run(
        &Run::new("postfix-faults")
            .compose("faultproj", "postfix-mailcow")
            .mount(observe.path(), "/observe", false),
    );
    let plan = ReloadPlan {
        socket: d.socket().to_path_buf(),
        project: Some("faultproj".into()),
        project_alternates: vec![],
        services: vec![ServiceReload {
            service: "postfix-mailcow".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "touch /observe/reload-started; sleep 30".into(),
            ],
        }],
    };
    let pid: i32 = std::fs::read_to_string(d.socket().with_file_name("dockerd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let task = tokio::spawn(async move { reload(&plan, false).await });
    let marker = observe.path().join("reload-started");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() && !task.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marker.exists(), "the reload command never started");
    // SAFETY: kill(2) on the dockerd this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopped_at = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(180), task)
        .await
        .expect("reload did not return within 180 s of the engine stopping")
        .unwrap();
    let text = match &result {
        Ok(outcomes) => format!("{outcomes:?}"),
        Err(e) => format!("error: {e}"),
    };
    eprintln!(
        "RESULT docker stopped mid-reload (reload step): returned {:?} after the stop: {text}",
        stopped_at.elapsed()
    );
    match result {
        Ok(outcomes) => {
            assert_eq!(outcomes.len(), 1);
            assert!(!outcomes[0].status.ok(), "{outcomes:?}");
            assert!(text.contains("postfix-mailcow"), "{text}");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("postfix-mailcow") || msg.contains("Docker"),
                "{msg}"
            );
        }
    }
}
