//! The benchmark of issue 6: certsync against the chain it replaces, each
//! figure measured side by side in the same run.
//!
//! ```text
//! cargo run -p certsync-tests --example bench [--release] [-- --quick] [-- --only-mailcow]
//! ```
//!
//! `--only-mailcow` runs figures 3, 3b and 6 only.
//!
//! Runs as root on one machine (real OpenSSH sshd on loopback, real
//! rsync, real openssl, a private dockerd with Debian's nginx when
//! available). It prints a table and writes it to `bench/results.md`:
//!
//! 1. **push cycle**: after a certbot-style renewal, one `certsync-push
//!    push` (SSH, offer, send, validate, install) against `rsync -azL` of
//!    the live dir over the same sshd, through a `command="rsync --server
//!    …",restrict` key: median of [`ROUNDS`] each, as a ratio.
//! 2. **nothing to do**: `certsync-push push` with the pair already
//!    installed, against the shell check it replaces (`openssl x509
//!    -fingerprint -sha256` locally and, over ssh, on the installed file,
//!    then compare).
//! 3. **propagation**: `certsync-push watch`, a renewal, and a probe that
//!    polls the TLS servers every 10 ms: time from the renewal's last link
//!    change (certbot removing `previous_*.pem`) to the new leaf on the
//!    wire, p50 and p95 over [`RENEWALS`] renewals, against the timer
//!    chain's worst case (12 h 15 min). With dockerd, postfix, dovecot and
//!    nginx, the servers are the mailcow-faithful environment
//!    (`certsync_tests::mailcow`: postfix's SNI map, dovecot's sni.conf,
//!    nginx on HTTPS_BIND:HTTPS_PORT, an acme-left folder) with a
//!    mailcow.conf that puts HTTPS on 127.0.0.1:8443 and SMTP on 2525, the
//!    receiver uses the `[mailcow]` preset, and "served" means every
//!    default endpoint (SMTP, submission, SMTPS, IMAPS, HTTPS) serves the
//!    new leaf with and without SNI. Else an in-process server that loads
//!    the installed pair per connection (the table says which).
//!    Then, on the same environment: **3b** what a reload and what a
//!    container restart cost per service (until it serves TLS again), and
//!    **6. a renewal nobody notices**: clients connect in a loop to SMTP
//!    (STARTTLS), IMAPS and HTTPS while certsync delivers [`UNNOTICED`]
//!    renewals; every failed connection is counted, and so is every
//!    restart certsync makes. The baseline is mailcow's own post-renewal
//!    step (acme's `reload-configurations.sh`: reload nginx, restart
//!    dovecot and postfix) under the same clients.
//! 4. **idle watch daemon**: its VmRSS, and the voluntary + involuntary
//!    context switches of all its threads over [`IDLE_WINDOW`], as
//!    wakeups per minute.
//! 5. **fan-out**: one push of a renewed pair to 1, 10 and 50 targets,
//!    each its own sshd and receiver: median total time of [`FAN_ROUNDS`].
//!
//! Not a test: nothing here asserts a time. Targets missed are reported
//! in the table's last column.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf, Validity};
use certsync_core::Fingerprint;
use certsync_receive::systems::probe::{served_leaf, served_leaf_with, Endpoint};
use certsync_tests::bins;
use certsync_tests::docker::{wait_until, Dockerd};
use certsync_tests::e2e::{context_switches, pem_leaf_fingerprint, serve_installed, Process};
use certsync_tests::mailcow::{Conf, Mailcow};
use certsync_tests::npmhost::{receiver_command, NpmHost};
use certsync_tests::receiver::Mailhost;
use certsync_tests::sshd::{self, ClientKey, KeyType, Sshd};

const HOST: &str = "mail.example.com";
/// Push cycles and nothing-to-do runs per side.
const ROUNDS: usize = 10;
/// Renewals for the propagation percentiles.
const RENEWALS: usize = 25;
/// How long the idle daemon is watched.
const IDLE_WINDOW: Duration = Duration::from_secs(60);
/// Pushes per fan-out size.
const FAN_ROUNDS: usize = 3;
/// Renewals delivered while figure 6's clients connect.
const UNNOTICED: usize = 5;
/// Reloads and restarts per service in figure 3b.
const RESTARTS: usize = 3;
/// What a client sends: SNI = the hostname, or none.
const SNIS: [Option<&str>; 2] = [Some(HOST), None];
/// The timer chain's worst case: push at 03:00/15:00 just missed (12 h),
/// deploy 15 min after the push.
const TIMER_WORST: Duration = Duration::from_secs(12 * 3600 + 15 * 60);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let only_mailcow = std::env::args().any(|a| a == "--only-mailcow");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !sshd::available() || !have("rsync") || !have("ssh") {
        eprintln!("bench: needs root, sshd, ssh, rsync and openssl (Debian: openssh-server openssh-client rsync openssl)");
        std::process::exit(2);
    }
    bins::build(release()).unwrap();
    let mut b = Bench::new(quick);
    b.run(only_mailcow);
}

fn have(program: &str) -> bool {
    certsync_tests::docker::find_program(program).is_some()
}

fn release() -> bool {
    !cfg!(debug_assertions)
}

// ---------------------------------------------------------------- figures

fn median(v: &[Duration]) -> Duration {
    percentile(v, 50.0)
}

/// Nearest-rank percentile.
fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    figure: String,
    certsync: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: String,
}

struct Bench {
    quick: bool,
    root: tempfile::TempDir,
    ca: TestCa,
    rows: Vec<Row>,
    notes: Vec<String>,
}

/// Run a command, return (elapsed, success, output).
fn timed(cmd: &mut Command) -> (Duration, bool, String) {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    let elapsed = start.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (elapsed, out.status.success(), text)
}

fn push_cmd(config: &Path) -> Command {
    let mut c = Command::new(bins::push());
    c.arg("--config")
        .arg(config)
        .arg("push")
        .env("CERTSYNC_LOG", "warn")
        .env_remove("CERTSYNC_PUSH_CONFIG");
    c
}

fn ssh_target(name: &str, server: &Sshd, identity: &Path, known_hosts: &Path) -> String {
    format!(
        "[[target]]\nname = {name:?}\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nidentity = {identity:?}\nknown_hosts = {known_hosts:?}\nconnect_timeout = 30\n",
        server.port()
    )
}

/// `certsync-push watch` on `npm`, pushing over SSH to `server`, once its
/// first pass has ended (within `first_pass`).
fn start_watch(npm: &NpmHost, server: &Sshd, first_pass: Duration) -> Process {
    let known = server.write_known_hosts("known_hosts", &[server.known_hosts_line()]);
    npm.write_config(
        &npm.cert_source(),
        &[ssh_target("mailcow", server, &npm.key.private, &known)],
    );
    let mut cmd = Command::new(bins::push());
    cmd.arg("--config")
        .arg(&npm.config)
        .arg("watch")
        .env("CERTSYNC_LOG", "info");
    let watch = Process::spawn(
        "certsync-push watch",
        cmd,
        &npm.root.path().join("watch.log"),
    );
    wait_until(first_pass, || watch_passes(&watch) >= 1).unwrap_or_else(|| {
        panic!(
            "the watch daemon's first pass did not end:\n{}",
            watch.log()
        )
    });
    watch
}

/// The passes the watch daemon has ended: each prints one result line for
/// the target.
fn watch_passes(watch: &Process) -> usize {
    let log = watch.log();
    log.matches("mailcow: ok").count() + log.matches("mailcow: FAILED").count()
}

/// The `rsync --server …` command line the rsync client asks the remote
/// side to run for `rsync -azL SRC/ 127.0.0.1:DEST/`, found by running
/// the client with a stand-in for ssh that records its arguments: that is
/// how operators find the line for `command="…"`.
fn rsync_server_command(dir: &Path, dest: &Path) -> String {
    let record = dir.join("rsync-args");
    let fake = sshd::script(
        dir,
        "record-ssh",
        &format!("shift; echo \"$@\" > {}; exit 1", record.display()),
    );
    let src = dir.join("empty-src");
    std::fs::create_dir_all(&src).unwrap();
    let _ = Command::new("rsync")
        .arg("-azL")
        .arg("-e")
        .arg(&fake)
        .arg(format!("{}/", src.display()))
        .arg(format!("127.0.0.1:{}/", dest.display()))
        .stderr(Stdio::null())
        .status();
    std::fs::read_to_string(&record)
        .expect("the rsync client ran the ssh stand-in")
        .trim()
        .to_string()
}

fn ssh_opts(key: &ClientKey, server: &Sshd, known_hosts: &Path) -> Vec<String> {
    vec![
        "-i".into(),
        key.private.display().to_string(),
        "-p".into(),
        server.port().to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-l".into(),
        "root".into(),
    ]
}

impl Bench {
    fn new(quick: bool) -> Bench {
        Bench {
            quick,
            root: tempfile::Builder::new()
                .prefix("certsync-bench-")
                .tempdir()
                .unwrap(),
            ca: TestCa::new(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn leaf(&self) -> TestLeaf {
        self.ca.leaf(KeyKind::P384, &[HOST])
    }

    fn run(&mut self, only_mailcow: bool) {
        let started = chrono_now();
        let machine = machine();
        if !only_mailcow {
            self.push_cycle_and_nothing_to_do();
        }
        // The engine outlives the containers and the daemon of figures 3
        // and 4 (they borrow it); it is stopped at the end of this scope.
        let mailcow = Dockerd::available()
            && ["nginx", "postfix", "dovecot"]
                .iter()
                .all(|p| have(p) || Path::new("/usr/sbin").join(p).exists());
        let docker = if mailcow {
            Some(Dockerd::start())
        } else {
            None
        };
        if only_mailcow && docker.is_none() {
            eprintln!("bench: --only-mailcow needs dockerd, postfix, dovecot and nginx");
            std::process::exit(2);
        }
        let watched = self.propagation(docker.as_ref());
        if only_mailcow {
            drop(watched);
        } else {
            self.idle(watched);
        }
        drop(docker);
        if !only_mailcow {
            self.fan_out();
        }
        self.report(&started, &machine);
    }

    /// Figures 1 and 2: one sshd, three keys (certsync's receiver, rsync's
    /// server, the shell check's openssl).
    fn push_cycle_and_nothing_to_do(&mut self) {
        eprintln!("bench: push cycle and nothing to do …");
        let dir = self.root.path().join("one");
        std::fs::create_dir_all(&dir).unwrap();
        let mut npm = NpmHost::new(&self.leaf());
        let mail = Mailhost::new(&[HOST]);
        let rsync_dest = dir.join("rsync-dest");
        std::fs::create_dir_all(&rsync_dest).unwrap();
        let rsync_key = sshd::client_key(&dir, "id_rsync", KeyType::Ed25519);
        let check_key = sshd::client_key(&dir, "id_check", KeyType::Ed25519);
        let floor_key = sshd::client_key(&dir, "id_floor", KeyType::Ed25519);
        let rsync_server = rsync_server_command(&dir, &rsync_dest);
        let check = format!(
            "openssl x509 -noout -fingerprint -sha256 -in {}",
            mail.cert_path().display()
        );
        let server = Sshd::builder()
            .authorized_key(&sshd::forced_line(
                &receiver_command(&mail),
                &npm.key.public_line,
            ))
            .authorized_key(&sshd::forced_line(&rsync_server, &rsync_key.public_line))
            .authorized_key(&sshd::forced_line(&check, &check_key.public_line))
            .authorized_key(&sshd::forced_line("true", &floor_key.public_line))
            .start();
        let known = server.write_known_hosts("known_hosts", &[server.known_hosts_line()]);
        npm.write_config(
            &npm.cert_source(),
            &[ssh_target("mailcow", &server, &npm.key.private, &known)],
        );
        self.notes.push(format!(
            "push cycle: both sides move the renewed pair after a certbot-style renewal; certsync's receiver also validates and installs it (fsync, rename), rsync only copies the four files; each renewal's archive files get an mtime a day apart, since rsync's size+mtime quick check skips a same-size file written within the same second. rsync's forced command, found by running the client: `command=\"rsync --server {}\",restrict`",
            rsync_server.trim_start_matches("rsync --server ").split(' ').next().unwrap_or("")
        ));

        // Warm both paths once (page cache, sshd's first fork).
        let (_, ok, out) = timed(&mut push_cmd(&npm.config));
        assert!(ok, "first certsync push failed:\n{out}");
        let rsync = |npm: &NpmHost| {
            let mut c = Command::new("rsync");
            c.arg("-azL")
                .arg("-e")
                .arg(format!(
                    "ssh {}",
                    ssh_opts(&rsync_key, &server, &known).join(" ")
                ))
                .arg(format!("{}/", npm.live.dir().display()))
                .arg(format!("127.0.0.1:{}/", rsync_dest.display()));
            c
        };
        let (_, ok, out) = timed(&mut rsync(&npm));
        assert!(ok, "first rsync failed:\n{out}");

        let rounds = if self.quick { 3 } else { ROUNDS };
        let (mut cs, mut rs) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let leaf = self.leaf();
            npm.live.renew(&leaf);
            space_renewal(&npm, i);
            // Alternate who goes first, so neither always gets a warm cache.
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for who in order {
                if who == 0 {
                    let (t, ok, out) = timed(&mut push_cmd(&npm.config));
                    assert!(ok, "certsync push failed:\n{out}");
                    cs.push(t);
                } else {
                    let (t, ok, out) = timed(&mut rsync(&npm));
                    assert!(ok, "rsync failed:\n{out}");
                    rs.push(t);
                }
            }
            assert_eq!(
                pem_leaf_fingerprint(&mail.cert_path()),
                Some(leaf.fingerprint()),
                "certsync installed the renewal"
            );
            assert_eq!(
                std::fs::read(rsync_dest.join("fullchain.pem")).unwrap(),
                leaf.chain_pem,
                "rsync copied the renewal"
            );
        }
        let (c, r) = (median(&cs), median(&rs));
        let ratio = c.as_secs_f64() / r.as_secs_f64();
        self.rows.push(Row {
            figure: format!("1. push cycle (median of {rounds})"),
            certsync: ms(c),
            baseline: format!("{} (rsync -azL)", ms(r)),
            ratio: format!("{ratio:.2}×"),
            target: "≤ 0.5×".into(),
            verdict: verdict(ratio <= 0.5, format!("missed by {:.1}×", ratio / 0.5)),
        });

        // Figure 2: the pair is installed; both sides only compare.
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(format!(
            "l=$(openssl x509 -noout -fingerprint -sha256 -in {local}) && r=$(ssh {opts} 127.0.0.1 check) && [ \"$l\" = \"$r\" ]",
            local = npm.live.link("fullchain").display(),
            opts = ssh_opts(&check_key, &server, &known).join(" "),
        ));
        let (_, ok, out) = timed(&mut shell);
        assert!(
            ok,
            "the shell check does not see the same certificate:\n{out}"
        );
        let (mut cs, mut ss) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut c = push_cmd(&npm.config);
            c.env("CERTSYNC_LOG", "info");
            let (t, ok, out) = timed(&mut c);
            assert!(ok && out.contains("nothing to do"), "{out}");
            cs.push(t);
            let (t, ok, out) = timed(&mut shell);
            assert!(ok, "{out}");
            ss.push(t);
        }
        // The floor both sides stand on: one OpenSSH connection to the
        // same sshd whose forced command is `true`.
        let mut floor = Command::new("ssh");
        floor
            .args(ssh_opts(&floor_key, &server, &known))
            .args(["127.0.0.1", "x"]);
        let mut fs = Vec::new();
        for _ in 0..rounds {
            let (t, ok, out) = timed(&mut floor);
            assert!(ok, "ssh … true failed: {out}");
            fs.push(t);
        }
        self.notes.push(format!(
            "the SSH floor under both: `ssh` to the same sshd with a `command=\"true\",restrict` key, median of {rounds}: {} (client start, key exchange, auth, sshd's fork and re-exec, the forced command's shell)",
            ms(median(&fs))
        ));
        let (c, s) = (median(&cs), median(&ss));
        let ratio = c.as_secs_f64() / s.as_secs_f64();
        self.rows.push(Row {
            figure: format!("2. nothing to do (median of {rounds})"),
            certsync: ms(c),
            baseline: format!("{} (ssh + openssl x509 -fingerprint)", ms(s)),
            ratio: format!("{ratio:.2}×"),
            target: "≤ 0.1×".into(),
            verdict: verdict(ratio <= 0.1, format!("missed by {:.1}×", ratio / 0.1)),
        });
        drop(server);
    }

    /// Figure 3: the watch daemon and a TLS server that serves the
    /// installed pair. Returns the daemon (still running) for figure 4.
    fn propagation<'d>(&mut self, docker: Option<&'d Dockerd>) -> Watched<'d> {
        eprintln!("bench: propagation …");
        let first = self.leaf();
        let mut npm = NpmHost::new(&first);
        let mail = Mailhost::new(&[HOST]);
        let out = mail.install_leaf(&first, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        if let Some(d) = docker {
            drop(mail);
            return self.propagation_mailcow(d, npm);
        }
        let port = serve_installed(mail.cert_path(), mail.key_path()).unwrap();
        let server_kind = "in-process TLS server that loads the installed pair per connection (no dockerd, postfix, dovecot or nginx here)";
        let text = std::fs::read_to_string(&mail.config).unwrap();
        let text = text.replace("verify = []", &format!("verify = [\"127.0.0.1:{port}\"]"));
        std::fs::write(&mail.config, text).unwrap();

        let server = certsync_tests::npmhost::sshd_for(&mail, &npm.key);
        let watch = start_watch(&npm, &server, Duration::from_secs(60));

        let endpoint = Endpoint::parse(&format!("127.0.0.1:{port}")).unwrap();
        let renewals = if self.quick { 5 } else { RENEWALS };
        let leaves: Vec<TestLeaf> = (0..renewals).map(|_| self.leaf()).collect();
        let mut lat = Vec::new();
        let mut failed = 0;
        for (i, leaf) in leaves.iter().enumerate() {
            let want = leaf.fingerprint();
            npm.live.renew(leaf);
            let t0 = Instant::now();
            let seen = wait_for_served(&endpoint, want, Duration::from_secs(60));
            match seen {
                Some(()) => lat.push(t0.elapsed()),
                None => failed += 1,
            }
            // Let the pass finish (verify, report) so each renewal is a
            // pass of its own, as in production.
            wait_until(Duration::from_secs(60), || watch_passes(&watch) >= i + 2);
        }
        let log = watch.log();
        let failures = log.matches("mailcow: FAILED").count();
        self.propagation_row(&lat, failed);
        self.notes.push(format!(
            "propagation: TLS server: {server_kind}; debounce {} ms; {failed} renewals not seen within 60 s, {failures} passes FAILED; min {} max {}",
            certsync_push::watch::DEBOUNCE.as_millis(),
            ms(lat.iter().min().copied().unwrap_or_default()),
            ms(lat.iter().max().copied().unwrap_or_default()),
        ));
        Watched {
            watch,
            _server: server,
            _mailcow: None,
            _mail: Some(mail),
            _npm: npm,
        }
    }

    /// Figure 4: the daemon from figure 3, left alone.
    fn idle(&mut self, w: Watched<'_>) {
        let window = if self.quick {
            Duration::from_secs(30)
        } else {
            IDLE_WINDOW
        };
        eprintln!(
            "bench: idle watch daemon ({}s, after 15 s for tokio's idle blocking threads to exit) …",
            window.as_secs()
        );
        std::thread::sleep(Duration::from_secs(15));
        let pid = w.watch.pid();
        let before = context_switches(pid);
        let rss_before = status_kb(pid, "VmRSS");
        std::thread::sleep(window);
        let after = context_switches(pid);
        let rss = status_kb(pid, "VmRSS");
        let hwm = status_kb(pid, "VmHWM");
        let (anon, file) = (status_kb(pid, "RssAnon"), status_kb(pid, "RssFile"));
        let pss: u64 = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        // Threads present at both ends (a thread that exits takes its
        // counters with it).
        let mut delta = 0u64;
        for (tid, a) in &after {
            if let Some(b) = before.get(tid) {
                delta += a - b;
            }
        }
        let per_min = delta as f64 * 60.0 / window.as_secs_f64();
        let rss_mib = rss as f64 / 1024.0;
        let ok = rss_mib <= 10.0 && delta == 0;
        let mut why = Vec::new();
        if rss_mib > 10.0 {
            why.push(format!("RSS over by {:.1} MiB", rss_mib - 10.0));
        }
        if delta > 0 {
            why.push(format!("{delta} wakeups in {}s", window.as_secs()));
        }
        self.rows.push(Row {
            figure: format!("4. watch daemon idle ({} s window)", window.as_secs()),
            certsync: format!("RSS {rss_mib:.1} MiB, {per_min:.1} wakeups/min"),
            baseline: "systemd timers (no daemon)".into(),
            ratio: "–".into(),
            target: "RSS ≤ 10 MiB, no periodic wakeups".into(),
            verdict: verdict(ok, why.join(", ")),
        });
        self.notes.push(format!(
            "idle daemon: VmRSS {rss_before} kB at start of the window, {rss} kB at its end (RssAnon {anon} kB: heap and thread stacks; RssFile {file} kB: the binary and the shared libraries it maps, libssl/libcrypto among them, shared with every process that maps them; Pss {pss} kB), VmHWM {hwm} kB (its peak, over its start and every push of figure 3); threads {} → {}; context switches over the window: {delta}",
            before.len(),
            after.len()
        ));
        drop(w);
    }

    /// Figure 5: one push to 1, 10 and 50 targets.
    fn fan_out(&mut self) {
        eprintln!("bench: fan-out …");
        let sizes: &[usize] = if self.quick { &[1, 10] } else { &[1, 10, 50] };
        let mut npm = NpmHost::new(&self.leaf());
        let mut results = Vec::new();
        let mut pusher_cpu = Vec::new();
        for &n in sizes {
            let mut hosts = Vec::new();
            let mut targets = Vec::new();
            let mut known_lines = Vec::new();
            for _ in 0..n {
                let mail = Mailhost::new(&[HOST]);
                let server = certsync_tests::npmhost::sshd_for(&mail, &npm.key);
                known_lines.push(server.known_hosts_line());
                hosts.push((mail, server));
            }
            let known = npm.known_hosts(&format!("known_hosts_{n}"), &known_lines);
            for (i, (_, server)) in hosts.iter().enumerate() {
                targets.push(ssh_target(
                    &format!("mc{i}"),
                    server,
                    &npm.key.private,
                    &known,
                ));
            }
            npm.write_config(&npm.cert_source(), &targets);
            // First push installs everywhere (not timed): every round
            // after is a renewal to every target.
            let (_, ok, out) = timed(&mut push_cmd(&npm.config));
            assert!(ok, "first push to {n} targets failed:\n{out}");
            let mut ts = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..FAN_ROUNDS {
                let leaf = self.leaf();
                npm.live.renew(&leaf);
                let cpu_before = children_cpu();
                let (t, ok, out) = timed(&mut push_cmd(&npm.config));
                cpu.push(children_cpu().saturating_sub(cpu_before));
                assert!(ok, "push to {n} targets failed:\n{out}");
                for (mail, _) in &hosts {
                    assert_eq!(
                        pem_leaf_fingerprint(&mail.cert_path()),
                        Some(leaf.fingerprint())
                    );
                }
                ts.push(t);
            }
            results.push((n, median(&ts)));
            pusher_cpu.push((n, median(&cpu)));
        }
        self.notes.push(format!(
            "fan-out: every target is its own sshd and receiver on this same machine, so all receivers (sshd fork, key exchange, the forced command, validation, fsyncs) share its {} CPUs with the pusher; the pusher's own CPU time (user+sys) per push: {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            pusher_cpu
                .iter()
                .map(|(n, t)| format!("{n} targets {}", ms(*t)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let one = results[0].1;
        let text = results
            .iter()
            .map(|(n, t)| format!("{n}: {}", ms(*t)))
            .collect::<Vec<_>>()
            .join(", ");
        let (n_last, last) = *results.last().unwrap();
        let ratio = last.as_secs_f64() / one.as_secs_f64();
        self.rows.push(Row {
            figure: format!("5. fan-out, one push (median of {FAN_ROUNDS})"),
            certsync: text,
            baseline: format!("1 target: {}", ms(one)),
            ratio: format!("{n_last} targets: {ratio:.2}×"),
            target: "50 targets ≤ 5× one".into(),
            verdict: verdict(ratio <= 5.0, format!("missed by {:.1}×", ratio / 5.0)),
        });
    }

    fn report(&self, started: &str, machine: &str) {
        let mut t = String::new();
        writeln!(t, "# certsync benchmark\n").unwrap();
        writeln!(t, "- date: {started} (UTC)").unwrap();
        writeln!(t, "- machine: {machine}").unwrap();
        writeln!(
            t,
            "- load average at the end: {} (the machine is shared with other builds: absolute times are noisy, the side-by-side ratios less so)",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        )
        .unwrap();
        writeln!(
            t,
            "- build: {}",
            if release() {
                "release"
            } else {
                "debug (unoptimized)"
            }
        )
        .unwrap();
        writeln!(
            t,
            "- reproduce: `cargo run -p certsync-tests --example bench{}` (as root)\n",
            if release() { " --release" } else { "" }
        )
        .unwrap();
        writeln!(
            t,
            "| figure | certsync | baseline | ratio | target | result |"
        )
        .unwrap();
        writeln!(t, "|---|---|---|---|---|---|").unwrap();
        for r in &self.rows {
            writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} |",
                r.figure, r.certsync, r.baseline, r.ratio, r.target, r.verdict
            )
            .unwrap();
        }
        writeln!(t).unwrap();
        for n in &self.notes {
            writeln!(t, "- {n}").unwrap();
        }
        println!("{t}");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.md");
        std::fs::write(&path, &t).unwrap();
        eprintln!("bench: written to {}", path.display());
    }
}

impl Bench {
    /// Figure 3's row from the latencies of the renewals seen served and
    /// the number not seen in time.
    fn propagation_row(&mut self, lat: &[Duration], failed: usize) {
        let (p50, p95) = (percentile(lat, 50.0), percentile(lat, 95.0));
        let ratio = p95.as_secs_f64() / TIMER_WORST.as_secs_f64();
        self.rows.push(Row {
            figure: format!("3. propagation, p50 / p95 of {} renewals", lat.len()),
            certsync: format!("{} / {}", ms(p50), ms(p95)),
            baseline: "12 h 15 min (timer chain, worst case)".into(),
            ratio: format!("{ratio:.1e}×"),
            target: "p95 ≤ 3 s".into(),
            verdict: verdict(
                p95 <= Duration::from_secs(3) && failed == 0,
                format!(
                    "p95 over by {}",
                    ms(p95.saturating_sub(Duration::from_secs(3)))
                ),
            ),
        });
    }

    /// Figure 3 on the mailcow-faithful environment, then 3b and 6 on it.
    fn propagation_mailcow<'d>(&mut self, d: &'d Dockerd, mut npm: NpmHost) -> Watched<'d> {
        eprintln!("bench: propagation on the mailcow-faithful environment …");
        // mailcow's own pair predates certsync and expires first.
        let own = self.ca.leaf_with(
            KeyKind::Rsa2048,
            &[HOST],
            Validity {
                not_before: -60 * 86_400,
                not_after: 30 * 86_400,
            },
        );
        let mut conf = Conf::loopback(HOST);
        // The reverse-proxy guide's HTTPS and a non-default SMTP port, where
        // this machine has them free.
        if TcpListener::bind("127.0.0.1:8443").is_ok() {
            conf.https_port = "8443".into();
        }
        if TcpListener::bind("127.0.0.1:2525").is_ok() {
            conf.smtp_port = "127.0.0.1:2525".into();
        }
        let m = Mailcow::start(d, conf, &own, Some(&own));
        let side = tempfile::Builder::new()
            .prefix("certsync-bench-mailcow-")
            .tempdir()
            .unwrap();
        let config = side.path().join("receive.toml");
        std::fs::write(
            &config,
            format!(
                "staging_dir = {:?}\nca_file = {:?}\n\n[mailcow]\ndir = {:?}\n\n[[cert]]\nname = \"mail\"\n\n[docker]\nsocket = {:?}\n",
                side.path().join("staging"),
                certsync_tests::receiver::write_test_ca(side.path()),
                m.dir,
                d.socket()
            ),
        )
        .unwrap();
        let forced = format!(
            "{} --config {} serve",
            bins::receive().display(),
            config.display()
        );
        let server = Sshd::builder()
            .authorized_key(&sshd::forced_line(&forced, &npm.key.public_line))
            .start();
        let watch = start_watch(&npm, &server, Duration::from_secs(120));

        let probes: Vec<(Endpoint, Option<&str>)> = m
            .default_endpoints()
            .iter()
            .flat_map(|e| {
                let ep = Endpoint::parse(&e.verify()).unwrap();
                SNIS.map(|sni| (ep.clone(), sni))
            })
            .collect();
        let renewals = if self.quick { 5 } else { RENEWALS };
        let mut lat = Vec::new();
        let mut failed = 0;
        for i in 0..renewals {
            let leaf = self.leaf();
            let want = leaf.fingerprint();
            npm.live.renew(&leaf);
            let t0 = Instant::now();
            match wait_all_served(&probes, want, Duration::from_secs(60)) {
                Some(()) => lat.push(t0.elapsed()),
                None => failed += 1,
            }
            wait_until(Duration::from_secs(120), || watch_passes(&watch) >= i + 2);
        }
        let log = watch.log();
        let failures = log.matches("mailcow: FAILED").count();
        let restarts = log.matches("-mailcow restarted:").count();
        self.propagation_row(&lat, failed);
        let c = &m.conf;
        self.notes.push(format!(
            "propagation: the mailcow-faithful environment (Debian's postfix, dovecot and nginx started as mailcow's images start them; SMTP_PORT={}, SUBMISSION_PORT={}, SMTPS_PORT={}, IMAPS_PORT={}, HTTPS_BIND={} HTTPS_PORT={}; an acme-left data/assets/ssl/{HOST}/), the `[mailcow]` preset, reloads through the Docker API (postfix: rebuilt SNI map + reload), served = every default endpoint with and without SNI ({} probes, each polling every 10 ms from its own thread); debounce {} ms; {failed} renewals not seen within 60 s, {failures} passes FAILED, {restarts} container restarts; min {} max {}",
            c.smtp_port,
            c.submission_port,
            c.smtps_port,
            c.imaps_port,
            c.https_bind,
            c.https_port,
            probes.len(),
            certsync_push::watch::DEBOUNCE.as_millis(),
            ms(lat.iter().min().copied().unwrap_or_default()),
            ms(lat.iter().max().copied().unwrap_or_default()),
        ));

        let done = renewals + 1;
        self.unnoticed(&m, &mut npm, &watch, done);
        self.reload_vs_restart(&m);
        Watched {
            watch,
            _server: server,
            _mailcow: Some(MailcowSide { _m: m, _dir: side }),
            _mail: None,
            _npm: npm,
        }
    }

    /// Figure 6: clients in a loop on SMTP (STARTTLS), IMAPS and HTTPS
    /// while certsync delivers renewals, then while mailcow's own
    /// post-renewal step runs.
    fn unnoticed(
        &mut self,
        m: &Mailcow<'_>,
        npm: &mut NpmHost,
        watch: &Process,
        passes_so_far: usize,
    ) {
        eprintln!("bench: a renewal nobody notices …");
        let targets: Vec<(String, Endpoint)> = m
            .default_endpoints()
            .into_iter()
            .filter(|e| ["smtp", "imaps", "https"].contains(&e.word))
            .map(|e| (e.verify(), Endpoint::parse(&e.verify()).unwrap()))
            .collect();
        let n = if self.quick { 2 } else { UNNOTICED };

        let clients = Clients::start(&targets);
        let restarts_before = watch.log().matches("-mailcow restarted:").count();
        for i in 0..n {
            npm.live.renew(&self.leaf());
            wait_until(Duration::from_secs(120), || {
                watch_passes(watch) > passes_so_far + i
            });
            std::thread::sleep(Duration::from_secs(1));
        }
        let restarts = watch.log().matches("-mailcow restarted:").count() - restarts_before;
        let certsync = clients.stop();

        // mailcow's acme-mailcow after a renewal: reload nginx, restart
        // dovecot, restart postfix (reload-configurations.sh).
        let clients = Clients::start(&targets);
        for _ in 0..n {
            let out = m.nginx.exec(&["nginx", "-s", "reload"]);
            assert!(out.status.success());
            m.restart("dovecot-mailcow");
            m.restart("postfix-mailcow");
            std::thread::sleep(Duration::from_secs(1));
        }
        let mailcow = clients.stop();

        let (ok_c, all_c) = (certsync.failed() == 0, certsync.total());
        self.rows.push(Row {
            figure: format!(
                "6. a renewal nobody notices: failed client connections during {n} renewals"
            ),
            certsync: format!(
                "{} failed of {all_c} ({}); {restarts} restarts",
                certsync.failed(),
                certsync.per_target()
            ),
            baseline: format!(
                "{} failed of {} (mailcow's own step: restart postfix + dovecot, reload nginx; {})",
                mailcow.failed(),
                mailcow.total(),
                mailcow.per_target()
            ),
            ratio: "–".into(),
            target: "0 failed; restart only where nothing else refreshes".into(),
            verdict: verdict(
                ok_c && restarts == 0,
                format!("{} failed, {restarts} restarts", certsync.failed()),
            ),
        });
        self.notes.push(format!(
            "a renewal nobody notices: one client per endpoint (SMTP STARTTLS, IMAPS, HTTPS; SNI {HOST}; handshake, then close; 20 ms apart) from each renewal until 1 s after its pass ended. First errors — certsync: {}; mailcow's step: {}",
            certsync.first_errors(),
            mailcow.first_errors()
        ));
    }

    /// Figure 3b: per service, the reload certsync runs and a container
    /// restart, each until the service serves TLS again (median of
    /// [`RESTARTS`]).
    fn reload_vs_restart(&mut self, m: &Mailcow<'_>) {
        eprintln!("bench: reload vs restart …");
        let mut parts = Vec::new();
        let mut restarts = Vec::new();
        for service in ["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow"] {
            let e = m
                .default_endpoints()
                .into_iter()
                .find(|e| e.service == service)
                .unwrap();
            let endpoint = Endpoint::parse(&e.verify()).unwrap();
            let serving = || served_leaf(&endpoint, HOST, Duration::from_secs(2)).is_ok();
            let command = certsync_receive::systems::mailcow::reload_command(service).unwrap();
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let (mut reload, mut restart) = (Vec::new(), Vec::new());
            for _ in 0..RESTARTS {
                let t = Instant::now();
                let out = m.container(service).exec(&args);
                assert!(out.status.success(), "{args:?} in {service}");
                wait_until(Duration::from_secs(30), serving).expect("serving after a reload");
                reload.push(t.elapsed());
                let t = Instant::now();
                m.container(service).restart();
                wait_until(Duration::from_secs(60), serving).expect("serving after a restart");
                restart.push(t.elapsed());
            }
            let short = service.trim_end_matches("-mailcow");
            parts.push(format!(
                "{short}: {} / {}",
                ms(median(&reload)),
                ms(median(&restart))
            ));
            restarts.push(median(&restart));
        }
        self.rows.push(Row {
            figure: format!("3b. reload / restart until serving again (median of {RESTARTS})"),
            certsync: parts.join(", "),
            baseline: "mailcow's acme restarts postfix and dovecot".into(),
            ratio: "–".into(),
            target: "–".into(),
            verdict: "–".into(),
        });
        self.notes.push(format!(
            "reload / restart: certsync's reload commands (postfix: `postmap -F` of the SNI map + `postfix reload`; `dovecot reload`; `nginx -s reload`) against `docker restart -t 30`, each timed from the call until a TLS handshake with SNI succeeds again. A restart is certsync's fallback only (verify still sees the old leaf after a successful reload); it then adds up to {} s of verify retries before the restart, plus the restart. mailcow's real images restart far slower (postfix.sh and the dovecot entrypoint wait for MySQL, DNS, and rebuild their configuration)",
            certsync_receive::pipeline::reload_verify::VERIFY_RETRY.as_secs()
        ));
    }
}

/// Poll every (endpoint, SNI) every 10 ms, each from a thread of its own
/// (so one slow handshake does not delay the others), until each has
/// served `want` once; `Some` when all did within `limit`.
fn wait_all_served(
    probes: &[(Endpoint, Option<&str>)],
    want: Fingerprint,
    limit: Duration,
) -> Option<()> {
    std::thread::scope(|scope| {
        let pollers: Vec<_> = probes
            .iter()
            .map(|(endpoint, sni)| {
                scope.spawn(move || {
                    let start = Instant::now();
                    while start.elapsed() < limit {
                        if served_leaf_with(endpoint, *sni, Duration::from_secs(2))
                            .is_ok_and(|info| info.fingerprint == want)
                        {
                            return true;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    false
                })
            })
            .collect();
        let all = pollers.into_iter().all(|p| p.join().unwrap_or(false));
        all.then_some(())
    })
}

/// What one client saw: endpoint, attempts, failures, first error.
type ClientTally = (String, usize, usize, Option<String>);

/// One client thread per endpoint, connecting in a loop until stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<ClientTally>>,
}

/// What the clients saw, per endpoint.
struct Tally(Vec<ClientTally>);

impl Clients {
    fn start(targets: &[(String, Endpoint)]) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = targets
            .iter()
            .cloned()
            .map(|(name, endpoint)| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut total, mut failed, mut first) = (0, 0, None);
                    while !stop.load(Ordering::SeqCst) {
                        total += 1;
                        if let Err(e) = served_leaf(&endpoint, HOST, Duration::from_secs(5)) {
                            failed += 1;
                            first.get_or_insert_with(|| e.to_string());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    (name, total, failed, first)
                })
            })
            .collect();
        Clients { stop, threads }
    }

    fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        Tally(
            self.threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect(),
        )
    }
}

impl Tally {
    fn total(&self) -> usize {
        self.0.iter().map(|t| t.1).sum()
    }
    fn failed(&self) -> usize {
        self.0.iter().map(|t| t.2).sum()
    }
    fn per_target(&self) -> String {
        self.0
            .iter()
            .map(|(name, total, failed, _)| {
                let word = name.split_whitespace().last().unwrap_or(name);
                format!("{word} {failed}/{total}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn first_errors(&self) -> String {
        let errors: Vec<String> = self
            .0
            .iter()
            .filter_map(|(name, _, _, e)| e.as_ref().map(|e| format!("{name}: {e}")))
            .collect();
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join("; ")
        }
    }
}

fn verdict(ok: bool, why: String) -> String {
    if ok {
        "met".into()
    } else {
        format!("**missed**: {why}")
    }
}

/// What figure 4 keeps alive from figure 3. Fields drop in order: the
/// daemon stops before its receiver and TLS server go away.
struct Watched<'d> {
    watch: Process,
    _server: Sshd,
    _mailcow: Option<MailcowSide<'d>>,
    _mail: Option<Mailhost>,
    _npm: NpmHost,
}

/// The mailcow host of figures 3, 3b and 6: its containers, and the
/// receiver's staging dir and receive.toml.
struct MailcowSide<'d> {
    _m: Mailcow<'d>,
    _dir: tempfile::TempDir,
}

/// Give generation N's archive files an mtime `round` days ahead, as
/// real renewals are weeks apart. rsync's quick check compares size and
/// mtime only: two same-size renewals written within one second look
/// unchanged to it (seen on this bench before this), and would make its
/// cycle look cheaper than a real one.
fn space_renewal(npm: &NpmHost, round: usize) {
    let when = certsync_core::testutil::now_unix() + 86_400 * (round as i64 + 1);
    let n = npm.live.generation();
    let files: Vec<PathBuf> = certsync_tests::livedir::KINDS
        .iter()
        .map(|k| npm.live.archive_file(k, n))
        .collect();
    let status = Command::new("touch")
        .arg("-d")
        .arg(format!("@{when}"))
        .args(&files)
        .status()
        .expect("run touch");
    assert!(status.success(), "touch {files:?}");
}

/// Poll the served leaf every 10 ms until it is `want`.
fn wait_for_served(endpoint: &Endpoint, want: Fingerprint, limit: Duration) -> Option<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(info) = served_leaf(endpoint, HOST, Duration::from_secs(2)) {
            if info.fingerprint == want {
                return Some(());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// CPU time (user + system) of this process's reaped children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; no other preconditions.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A `kB` field of /proc/PID/status.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{nproc} CPUs ({model}), {:.1} GiB RAM, Linux {}, load average at start {}",
        mem_kb as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn chrono_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    out
}
