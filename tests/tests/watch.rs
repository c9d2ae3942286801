//! `certsync-push watch` end to end: the real daemon watches a certbot-style
//! live dir and pushes to the real receiver (through real OpenSSH, or with
//! `transport = "local"` where SSH is not the point).
//!
//! The stories: a renewal with pauses between certbot's steps is pushed
//! once, right after its last step, and the receiver never holds a
//! mismatched pair; a target that is down is retried and gets the pair
//! when it comes back; an idle daemon makes (almost) no context switches;
//! sd_notify READY/WATCHDOG/STOPPING reach a notify socket; SIGTERM exits
//! 0 promptly; SIGHUP re-reads the config; a deleted and recreated npm-N
//! dir is watched again; a stuck receiver (stalled, or dripping a line
//! now and then) never holds up a renewal for the healthy target, SIGTERM
//! in the middle of its session exits 0 at once and kills it, and the
//! session deadline ends the drip-feeder (issue 11 item 5).
//!
//! Waits are bounded polls of files the daemon writes (its log, the
//! installed pair); the timings printed (TIMING …) are measurements, not
//! assertions, except where a bound is the point (the push comes within
//! seconds, SIGTERM is prompt) and the bound is generous.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certsync_core::protocol::Message;
use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_tests::e2e::context_switches;
use certsync_tests::fakerecv::{hello, FakeReceiver, Then};
use certsync_tests::livedir::{LiveDir, RENEWAL_STEPS};
use certsync_tests::npmhost::{local_target, ssh_target, ClosedPort, NpmHost};
use certsync_tests::receiver::Mailhost;
use certsync_tests::sshd;
use certsync_tests::{need, needs};

const HOST: &str = "mail.example.com";

/// A running `certsync-push watch`, its stderr in a file; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Wait until the start-up pass has installed `leaf` on `mail` and
    /// has finished (reported it).
    fn first_pass_installed(&self, mail: &Mailhost, leaf: &TestLeaf) {
        self.wait("the first install", PUSH_WAIT, || installed_is(mail, leaf));
        self.wait("the first pass to finish", PUSH_WAIT, || {
            self.count("ok: mail: installed ") == 1
        });
    }

    fn start(npm: &NpmHost, env: &[(&str, String)]) -> Daemon {
        let log = npm.root.path().join("watch.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(certsync_tests::bins::push());
        cmd.arg("--config")
            .arg(&npm.config)
            .args(["--log-format", "text", "watch"])
            .env_remove("CERTSYNC_PUSH_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env("CERTSYNC_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log containing `what`.
    fn count(&self, what: &str) -> usize {
        self.log().lines().filter(|l| l.contains(what)).count()
    }

    /// Wait (bounded) until `cond` holds; panic with the log otherwise.
    fn wait(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < limit,
                "waited {limit:?} for {what}; watch log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Wait (bounded) for the exit; its code and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "still running {limit:?} after the signal; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed_is(mail: &Mailhost, leaf: &TestLeaf) -> bool {
    mail.installed()
        .is_some_and(|(c, k)| c == leaf.chain_pem && k == leaf.key_pem.expose())
}

fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// An NPM host and a mail host joined by `transport = "local"`.
fn local_scene(leaf: &TestLeaf) -> (NpmHost, Mailhost) {
    let npm = NpmHost::new(leaf);
    let mail = Mailhost::new(&[HOST]);
    npm.write_config(&npm.cert_source(), &[local_target("mailcow", &mail)]);
    (npm, mail)
}

const PUSH_WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_renewal_with_pauses_is_pushed_once_after_its_last_step_and_never_half() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let gen1 = ca.leaf(KeyKind::P384, &[HOST]);
    let gen2 = ca.leaf(KeyKind::P384, &[HOST]);
    let mut npm = NpmHost::new(&gen1);
    let mail = Mailhost::new(&[HOST]);
    let _sshd = npm.push_over_ssh_to(&mail);
    let d = Daemon::start(&npm, &[]);
    // The start-up pass installs generation 1.
    d.first_pass_installed(&mail, &gen1);
    let passes_before = d.count("the live dir changed");

    // Watch the installed pair during the whole renewal, as fast as we can.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (seen, stop) = (seen.clone(), stop.clone());
        let chains = [gen1.chain_pem.clone(), gen2.chain_pem.clone()];
        let keys = [
            gen1.key_pem.expose().to_vec(),
            gen2.key_pem.expose().to_vec(),
        ];
        let mail_cert = mail.cert_path();
        let mail_key = mail.key_path();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (Ok(c), Ok(k)) = (std::fs::read(&mail_cert), std::fs::read(&mail_key)) else {
                    seen.lock().unwrap().insert((9, 9));
                    continue;
                };
                // (generation of the cert, of the key); 0 = neither.
                let cg = chains.iter().position(|x| *x == c).map_or(0, |i| i + 1);
                let kg = keys.iter().position(|x| *x == k).map_or(0, |i| i + 1);
                seen.lock().unwrap().insert((cg, kg));
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    // certbot's renewal, a pause after each step but the last (so the
    // clock below starts at the last link change).
    let pause = Duration::from_millis(500);
    for k in 1..=RENEWAL_STEPS {
        assert_eq!(npm.live.step(&gen2), k);
        if k < RENEWAL_STEPS {
            std::thread::sleep(pause);
            // Nothing of generation 2 reaches the receiver mid-renewal.
            assert!(
                installed_is(&mail, &gen1),
                "mid-renewal install after step {k}"
            );
        }
    }
    let last_change = Instant::now();
    d.wait("generation 2 installed", PUSH_WAIT, || {
        installed_is(&mail, &gen2)
    });
    let latency = last_change.elapsed();
    eprintln!(
        "TIMING renewal (11 steps, {pause:?} apart) installed {:.3}s after the last link change",
        latency.as_secs_f64()
    );
    // Let any second pass that would come happen, then count.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let log = d.log();
    let seen = seen.lock().unwrap().clone();
    eprintln!("installed (cert gen, key gen) states seen during the renewal: {seen:?}");
    // Only whole pairs: gen 1, gen 2, and the install's own documented
    // instant with the new key before the new cert (install.rs step 3).
    for state in &seen {
        assert!(
            [(1, 1), (1, 2), (2, 2)].contains(state),
            "installed files held {state:?} (cert gen, key gen); log:\n{log}"
        );
    }
    assert!(seen.contains(&(2, 2)));
    assert_eq!(
        d.count("ok: mail: installed "),
        2,
        "one install at start, one for the renewal:\n{log}"
    );
    assert_eq!(
        d.count("the live dir changed") - passes_before,
        1,
        "the renewal is one pass, not one per step:\n{log}"
    );
    assert!(d.count("waiting for it to finish") >= 1, "{log}");
    assert!(!log.contains("refused") && !log.contains("FAILED"), "{log}");
    assert!(latency < Duration::from_secs(10), "{latency:?}\n{log}");
}

#[test]
fn a_target_that_is_down_is_retried_and_gets_the_pair_when_it_comes_back() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let npm = NpmHost::new(&leaf);
    let mail = Mailhost::new(&[HOST]);
    let down = ClosedPort::new();
    let port = down.port;
    // The host key is not known yet (sshd has not made it); the connection
    // is refused before that matters.
    let kh = npm.known_hosts("known_hosts", &["# filled in when sshd is up".to_string()]);
    npm.write_config(
        &npm.cert_source(),
        &[ssh_target(
            "mailcow",
            "127.0.0.1",
            port,
            &npm.key.private,
            &kh,
        )],
    );
    let mut d = Daemon::start(&npm, &[]);
    d.wait("a failed pass", PUSH_WAIT, || {
        d.count("push failed (1 in a row)") == 1
    });
    assert!(mail.nothing_installed());

    // The target comes back on the same port (sshd listens on its own port
    // and on this one).
    drop(down);
    let sshd = certsync_tests::sshd::Sshd::builder()
        .authorized_key(&sshd::forced_line(
            &certsync_tests::npmhost::receiver_command(&mail),
            &npm.key.public_line,
        ))
        .config(&format!("Port {port}"))
        .start();
    std::fs::write(
        &kh,
        sshd::known_hosts_line(&format!("[127.0.0.1]:{port}"), sshd.host_public_key()) + "\n",
    )
    .unwrap();
    let up = Instant::now();
    let waited = d.wait("the install after the target came back", PUSH_WAIT, || {
        installed_is(&mail, &leaf)
    });
    eprintln!(
        "TIMING installed {:.3}s after the target came back (backoff with jitter, first retry ~5s)",
        waited.as_secs_f64().max(up.elapsed().as_secs_f64())
    );
    let log = d.log();
    assert!(log.contains("retrying in"), "{log}");
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon died:\n{log}"
    );
}

#[test]
fn idle_means_idle() {
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let (npm, mail) = local_scene(&leaf);
    let d = Daemon::start(&npm, &[]);
    d.first_pass_installed(&mail, &leaf);
    std::thread::sleep(Duration::from_secs(1));
    let before = context_switches(d.pid());
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let after = context_switches(d.pid());
    // Threads that exist at both ends count their difference; a thread that
    // appeared meanwhile counts whole.
    let switches: u64 = after
        .iter()
        .map(|(tid, n)| n - before.get(tid).copied().unwrap_or(0).min(*n))
        .sum();
    let rss = vm_rss_kib(d.pid());
    eprintln!(
        "IDLE {} threads, {switches} context switches in {window:?} ({:.0}/min), VmRSS {rss} KiB",
        after.len(),
        switches as f64 * 60.0 / window.as_secs_f64()
    );
    // A tokio blocking thread retiring after its keep-alive may wake once;
    // a polling loop would show hundreds.
    assert!(
        switches <= 5,
        "{switches} context switches while idle; log:\n{}",
        d.log()
    );
}

#[test]
fn sd_notify_ready_and_watchdog_then_sigterm_exits_0_promptly_even_mid_renewal() {
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let (npm, mail) = local_scene(&leaf);
    let sock_path = npm.root.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = Daemon::start(
        &npm,
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            // 0.4 s: a WATCHDOG=1 every 0.2 s.
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
    );
    let mut got: Vec<String> = Vec::new();
    let recv = |got: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let start = Instant::now();
    while !(got.iter().any(|m| m.lines().any(|l| l == "READY=1"))
        && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3)
    {
        assert!(
            start.elapsed() < PUSH_WAIT,
            "got {got:?}; log:\n{}",
            d.log()
        );
        recv(&mut got);
    }
    d.first_pass_installed(&mail, &leaf);
    eprintln!("sd_notify messages: {:?}", &got[..got.len().min(8)]);

    // A stray previous_cert.pem (a certbot run that died mid-renewal)
    // holds the pass back for up to a minute; SIGTERM must not wait for it.
    npm.live.add_previous("cert", 1);
    d.wait("the daemon to wait for the renewal", PUSH_WAIT, || {
        d.count("waiting for it to finish") == 1
    });
    d.signal(libc::SIGTERM);
    let (code, took) = d.wait_exit(Duration::from_secs(10));
    eprintln!("TIMING SIGTERM to exit: {:.3}s", took.as_secs_f64());
    assert_eq!(code, Some(0), "{}", d.log());
    let start = Instant::now();
    while !got.iter().any(|m| m == "STOPPING=1") {
        assert!(start.elapsed() < Duration::from_secs(5), "got {got:?}");
        recv(&mut got);
    }
    assert!(d.log().contains("stopping (signal)"), "{}", d.log());
}

#[test]
fn sighup_rereads_the_config_and_a_new_target_gets_the_pair() {
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let (npm, mail) = local_scene(&leaf);
    let d = Daemon::start(&npm, &[]);
    d.first_pass_installed(&mail, &leaf);

    let second = Mailhost::new(&[HOST]);
    npm.write_config(
        &npm.cert_source(),
        &[
            local_target("mailcow", &mail),
            local_target("backup", &second),
        ],
    );
    // Without SIGHUP the daemon keeps its config: nothing reaches "backup".
    std::thread::sleep(Duration::from_millis(500));
    assert!(second.nothing_installed());
    d.signal(libc::SIGHUP);
    let took = d.wait("the new target's install", PUSH_WAIT, || {
        installed_is(&second, &leaf)
    });
    eprintln!(
        "TIMING SIGHUP to the new target's install: {:.3}s",
        took.as_secs_f64()
    );
    d.wait("the new target's result in the log", PUSH_WAIT, || {
        d.count("backup: ok: mail: installed") == 1
    });
    assert_eq!(d.count("config re-read"), 1, "{}", d.log());
}

#[test]
fn a_deleted_and_recreated_live_dir_is_watched_again() {
    let ca = TestCa::new();
    let gen1 = ca.leaf(KeyKind::P256, &[HOST]);
    let (npm, mail) = local_scene(&gen1);
    let d = Daemon::start(&npm, &[]);
    d.first_pass_installed(&mail, &gen1);

    // NPM deletes the certificate, then a new one comes back as npm-5.
    let letsencrypt: &Path = &npm.root.path().join("letsencrypt");
    std::fs::remove_dir_all(npm.live.dir()).unwrap();
    std::fs::remove_dir_all(npm.live.archive()).unwrap();
    d.wait("the deletion seen", PUSH_WAIT, || {
        d.count("the live dir changed") >= 1
    });
    let fresh = ca.leaf(KeyKind::P384, &[HOST]);
    let mut again = LiveDir::new(letsencrypt, "npm-5", &fresh);
    let took = d.wait("the recreated dir's install", PUSH_WAIT, || {
        installed_is(&mail, &fresh)
    });
    eprintln!(
        "TIMING recreated npm-5 installed after {:.3}s",
        took.as_secs_f64()
    );

    // And the new dir itself is watched: a renewal in it is pushed.
    let next = ca.leaf(KeyKind::P384, &[HOST]);
    again.renew(&next);
    d.wait("the renewal in the recreated dir", PUSH_WAIT, || {
        installed_is(&mail, &next)
    });
}

/// Issue 11 item 5: a target whose receiver greets and then stalls (its
/// session would last until the default 15-minute deadline) must not hold
/// up the healthy target: the start-up pass's result and the next renewal
/// reach it within seconds. SIGHUP while the stuck session runs re-reads
/// the config at once; SIGTERM exits 0 within a couple of seconds and
/// kills the stuck receiver.
#[test]
fn a_stuck_receiver_never_holds_up_the_healthy_one_and_sigterm_ends_it_at_once() {
    let ca = TestCa::new();
    let gen1 = ca.leaf(KeyKind::P256, &[HOST]);
    let gen2 = ca.leaf(KeyKind::P256, &[HOST]);
    let mut npm = NpmHost::new(&gen1);
    let mail = Mailhost::new(&[HOST]);
    let stuck = FakeReceiver::new(&[hello()], b"", Then::Stall);
    npm.write_config(
        &npm.cert_source(),
        &[stuck.target("stuck"), local_target("mailcow", &mail)],
    );
    let mut d = Daemon::start(&npm, &[]);
    d.wait("the stuck receiver to start", PUSH_WAIT, || stuck.running());
    let took = d.wait("the healthy target's first result", PUSH_WAIT, || {
        d.count("mailcow: ok: mail: installed ") == 1
    });
    eprintln!(
        "TIMING healthy target's first result {:.3}s after the stuck one started",
        took.as_secs_f64()
    );
    assert!(installed_is(&mail, &gen1));

    npm.live.renew(&gen2);
    let renewed = Instant::now();
    d.wait("the renewal at the healthy target", PUSH_WAIT, || {
        installed_is(&mail, &gen2)
    });
    let latency = renewed.elapsed();
    eprintln!(
        "TIMING renewal installed at the healthy target {:.3}s after certbot's last step, while the other is stuck",
        latency.as_secs_f64()
    );
    assert!(
        latency < Duration::from_secs(10),
        "{latency:?}\n{}",
        d.log()
    );
    assert!(stuck.running(), "the stuck receiver should still be stuck");
    assert_eq!(
        d.count("stuck: "),
        0,
        "the stuck pass has no result yet:\n{}",
        d.log()
    );

    // SIGHUP mid-pass: the config is re-read at once and a new target is
    // served, while the stuck session (its target unchanged) goes on.
    let backup = Mailhost::new(&[HOST]);
    npm.write_config(
        &npm.cert_source(),
        &[
            stuck.target("stuck"),
            local_target("mailcow", &mail),
            local_target("backup", &backup),
        ],
    );
    d.signal(libc::SIGHUP);
    let took = d.wait("the new target's install after SIGHUP", PUSH_WAIT, || {
        installed_is(&backup, &gen2)
    });
    eprintln!(
        "TIMING SIGHUP during a stuck session to the new target's install: {:.3}s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "{took:?}\n{}", d.log());
    assert!(stuck.running(), "an unchanged target keeps its session");

    d.signal(libc::SIGTERM);
    let (code, took) = d.wait_exit(Duration::from_secs(10));
    eprintln!(
        "TIMING SIGTERM during a stuck session to exit: {:.3}s",
        took.as_secs_f64()
    );
    assert_eq!(code, Some(0), "{}", d.log());
    assert!(took < Duration::from_secs(3), "{took:?}\n{}", d.log());
    assert!(d.log().contains("stopping (signal)"), "{}", d.log());
    let start = Instant::now();
    while stuck.running() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the stuck receiver outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Issue 11 item 5: a receiver that sends a progress line every second
/// never trips the per-frame timeout; the target's `session_timeout` ends
/// its session, the pass fails and is retried, and the healthy target is
/// served meanwhile.
#[test]
fn the_session_deadline_ends_a_drip_feeding_receiver() {
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let npm = NpmHost::new(&leaf);
    let mail = Mailhost::new(&[HOST]);
    let drip = FakeReceiver::new(
        &[hello()],
        b"",
        Then::DripFrames {
            frame: Message::Log("still working".into()),
            every_secs: 1,
        },
    );
    npm.write_config(
        &npm.cert_source(),
        &[
            drip.target_with("drip", "session_timeout = 3"),
            local_target("mailcow", &mail),
        ],
    );
    let d = Daemon::start(&npm, &[]);
    d.wait("the drip-feeder to start", PUSH_WAIT, || drip.running());
    let started = Instant::now();
    d.wait("the healthy target's result", PUSH_WAIT, || {
        d.count("mailcow: ok: mail: installed ") == 1
    });
    let took = d.wait("the session deadline", PUSH_WAIT, || {
        d.count("did not finish the session within 3s") >= 1
    });
    let ended = started.elapsed().max(took);
    eprintln!(
        "TIMING drip-feeding session ended {:.3}s after it started (session_timeout = 3)",
        ended.as_secs_f64()
    );
    let log = d.log();
    assert!(
        d.count("receiver: still working") >= 2,
        "it was dripping:\n{log}"
    );
    assert!(log.contains("session_timeout"), "{log}");
    // 3 s deadline + at most 1 s to finish (the shell ignores EOF and is killed).
    assert!(ended < Duration::from_secs(7), "{ended:?}\n{log}");
    d.wait("the retry", PUSH_WAIT, || {
        d.count("push failed (1 in a row)") == 1
    });
}
