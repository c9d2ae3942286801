//! The privilege boundary on the mailcow host (issue #11, items 1, 2, 6, 8,
//! 11 and 12; docs/security.md maps each item to its test).
//!
//! The attacker here is whoever runs as the unprivileged `certsync` user
//! (uid 65534 stands in for it, as in the other handoff tests): it owns
//! the staging dir and may plant links, FIFOs and devices there, swap
//! directories at the worst moment, and write requests. Root's `deploy`,
//! `install` and `check` are the real binary run as root; `serve` is the
//! real binary run as the unprivileged user through `setpriv`. Each test
//! asserts that nothing outside the staging dir was touched.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certsync_core::bundle::Bundle;
use certsync_core::protocol::{self, Hello, Limits, Message, Offer, Reader};
use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_tests::receiver::{offered, push_leaf, push_session, Mailhost, NOBODY};
use certsync_tests::{need, needs};

const HOST: &str = "mail.example.com";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn handoff_host(extra: &str) -> Mailhost {
    Mailhost::handoff(&[HOST], extra)
}

/// Run a shell script as the unprivileged user (the attacker's moves).
fn as_certsync(script: &str) -> Output {
    let out = Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as certsync: {script}: {}",
        stderr(&out)
    );
    out
}

/// Run `cmd` to its end, or kill it after `limit` (then `None`).
fn run_bounded(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file below `dir`: path → (bytes, mode, uid).
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if meta.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, bytes, meta.mode(), meta.uid()));
        }
    }
    out.sort();
    out
}

/// A root-only dir (0700) holding a pair under the staged names.
fn root_only_pair(host: &Mailhost, name: &str, leaf: &TestLeaf) -> PathBuf {
    let dir = host.root.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o700);
    std::fs::write(dir.join("fullchain.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join("privkey.pem"), leaf.key_pem.expose()).unwrap();
    dir
}

fn write_request(host: &Mailhost, id: &str) {
    as_certsync(&format!(
        "printf '{{\"id\":\"{id}\",\"names\":[\"mail\"],\"force\":false}}' > {}/deploy.request",
        host.staging.display()
    ));
}

/// Item 1: a link planted in place of `staging/<name>` never makes root
/// read or delete what it points at.
#[test]
fn root_deploy_never_follows_a_link_in_place_of_the_cert_dir() {
    needs!(need::setpriv());
    let ca = TestCa::new();
    let host = handoff_host("");
    let victim = root_only_pair(&host, "victim", &ca.leaf(KeyKind::P256, &[HOST]));
    let before = tree(&victim);
    as_certsync(&format!(
        "ln -s {} {}/mail",
        victim.display(),
        host.staging.display()
    ));
    write_request(&host, "attack-1");
    let out = host.cmd().arg("deploy").output().unwrap();
    eprintln!("deploy: exit {:?}\n{}", out.status.code(), stderr(&out));
    assert_eq!(tree(&victim), before, "root touched the link's target");
    assert!(host.nothing_installed(), "root installed through the link");
    // The refusal says why and names the link.
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("symlink or not a directory"), "{text}");
}

/// Item 1: a link swapped in for `staging/<name>` while root works (the
/// attacker flips a real dir and a link to a root-only dir as fast as it
/// can) never makes root read, install or delete the root-only pair.
#[test]
fn root_deploy_never_acts_through_a_cert_dir_swapped_mid_run() {
    needs!(need::setpriv());
    let ca = TestCa::new();
    let host = handoff_host("");
    let secret = ca.leaf(KeyKind::P256, &[HOST]);
    let victim = root_only_pair(&host, "secret", &secret);
    let before = tree(&victim);
    let staged = ca.leaf(KeyKind::P256, &[HOST]);
    let real = host.staging.join("mail");
    let link = host.staging.join("mail.swap");
    let stop = Arc::new(AtomicBool::new(false));
    // Paused while the test sets up each run (it writes as root): the
    // attacker exchanges only while holding `gate` and not paused.
    let pause = Arc::new(AtomicBool::new(true));
    let gate = Arc::new(std::sync::Mutex::new(()));
    let flips = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop2, pause2, gate2, flips2, real2, link2) = (
        stop.clone(),
        pause.clone(),
        gate.clone(),
        flips.clone(),
        real.clone(),
        link.clone(),
    );
    // The attacker: a thread that drops to the unprivileged user (raw
    // setresuid changes this thread only) and exchanges the two names.
    let attacker = std::thread::spawn(move || {
        // SAFETY: plain syscalls with integer arguments, on this thread only.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
                0
            );
        }
        let a = CString::new(real2.as_os_str().as_bytes()).unwrap();
        let b = CString::new(link2.as_os_str().as_bytes()).unwrap();
        while !stop2.load(Ordering::SeqCst) {
            let held = gate2.lock().unwrap();
            if pause2.load(Ordering::SeqCst) {
                drop(held);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // SAFETY: valid C strings.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            drop(held);
            if rc == 0 {
                flips2.fetch_add(1, Ordering::Relaxed);
            } else {
                std::thread::yield_now();
            }
        }
    });
    for run in 0..20 {
        pause.store(true, Ordering::SeqCst);
        // No exchange in flight, and none starts until the pause ends.
        drop(gate.lock().unwrap());
        // Stage the legitimate pair as serve would, and plant the link.
        for p in [&real, &link] {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir_all(p);
        }
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("fullchain.pem"), &staged.chain_pem).unwrap();
        std::fs::write(real.join("privkey.pem"), staged.key_pem.expose()).unwrap();
        for p in [
            real.clone(),
            real.join("fullchain.pem"),
            real.join("privkey.pem"),
        ] {
            chown(&p, NOBODY);
        }
        as_certsync(&format!("ln -s {} {}", victim.display(), link.display()));
        write_request(&host, &format!("swap-{run}"));
        pause.store(false, Ordering::SeqCst);
        let out = host.cmd().arg("deploy").output().unwrap();
        assert_eq!(
            tree(&victim),
            before,
            "run {run}: root changed the root-only dir: {}",
            stderr(&out)
        );
        if let Some((chain, _)) = host.installed() {
            assert_ne!(
                chain, secret.chain_pem,
                "run {run}: root installed the pair from the root-only dir"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    attacker.join().unwrap();
    let _ = std::fs::remove_file(&link);
    eprintln!(
        "the attacker flipped the dir {} times",
        flips.load(Ordering::Relaxed)
    );
    assert!(flips.load(Ordering::Relaxed) > 0, "the attack never ran");
}

/// Item 1: root writes its result only into the staging dir it opened and
/// checked. With the old layout (`/var/lib/certsync` the certsync user's)
/// the attacker swaps the staging dir for a link to a root-owned dir as
/// soon as root takes the request; root must not create anything there.
/// With the package's layout (the parent root's) the swap is impossible.
#[test]
fn root_never_writes_its_result_into_a_swapped_staging_dir() {
    needs!(need::setpriv());
    let ca = TestCa::new();
    let host = handoff_host("");
    // The old layout: the staging dir's parent belongs to certsync.
    let lib = host.root.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    let staging = lib.join("staging");
    std::fs::create_dir(&staging).unwrap();
    chown(&lib, NOBODY);
    chown(&staging, NOBODY);
    chmod(&staging, 0o700);
    let config = std::fs::read_to_string(&host.config).unwrap().replace(
        &format!("staging_dir = {:?}", host.staging),
        &format!("staging_dir = {staging:?}"),
    );
    std::fs::write(&host.config, config).unwrap();
    let etc = host.root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    let before = tree(&etc);

    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    std::fs::create_dir(staging.join("mail")).unwrap();
    std::fs::write(staging.join("mail/fullchain.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(staging.join("mail/privkey.pem"), leaf.key_pem.expose()).unwrap();
    for p in ["mail", "mail/fullchain.pem", "mail/privkey.pem"] {
        chown(&staging.join(p), NOBODY);
    }
    as_certsync(&format!(
        "printf '{{\"id\":\"swap\",\"names\":[\"mail\"],\"force\":false}}' > {}/deploy.request",
        staging.display()
    ));
    // The attacker waits (inotify, as the unprivileged user) for root to
    // take the request, then swaps the staging dir for a link to `etc`.
    let (staging2, etc2) = (staging.clone(), etc.clone());
    let attacker = std::thread::spawn(move || -> bool {
        // SAFETY: plain syscalls on this thread only; the inotify fd and
        // buffer are ours.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
                0
            );
            let fd = libc::inotify_init1(libc::IN_CLOEXEC);
            assert!(fd >= 0);
            let dir = CString::new(staging2.as_os_str().as_bytes()).unwrap();
            assert!(libc::inotify_add_watch(fd, dir.as_ptr(), libc::IN_DELETE) >= 0);
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ready = libc::poll(&mut pfd, 1, 5_000) > 0;
            libc::close(fd);
            if !ready {
                return false;
            }
        }
        let old = staging2.with_file_name("staging.old");
        std::fs::rename(&staging2, &old).is_ok()
            && std::os::unix::fs::symlink(&etc2, &staging2).is_ok()
    });
    let out = host.cmd().arg("deploy").output().unwrap();
    let swapped = attacker.join().unwrap();
    eprintln!(
        "deploy: exit {:?} (attacker swapped: {swapped})\n{}",
        out.status.code(),
        stderr(&out)
    );
    assert!(
        !etc.join("deploy.result").exists(),
        "root created deploy.result in a root-owned dir"
    );
    assert_eq!(tree(&etc), before, "root wrote into a root-owned dir");
    if !swapped {
        // Root refused the unsafe layout up front, and says how to fix it.
        assert_ne!(out.status.code(), Some(0));
        assert!(stderr(&out).contains("chown root "), "{}", stderr(&out));
    }

    // The package's layout: the parent is root's, so the same move fails.
    let _ = std::fs::remove_file(&staging);
    let _ = std::fs::rename(staging.with_file_name("staging.old"), &staging);
    chown(&lib, 0);
    chmod(&lib, 0o755);
    let moved = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "mv"])
        .arg(&staging)
        .arg(lib.join("elsewhere"))
        .output()
        .unwrap();
    assert!(
        !moved.status.success(),
        "certsync could move the staging dir"
    );
}

/// Item 2: root's `deploy` (the hourly timer, nothing staged), `install`
/// and `check` never leave a file in the staging dir that locks the
/// unprivileged `serve` out.
#[tokio::test]
async fn root_runs_never_lock_the_pusher_out() {
    needs!(need::setpriv());
    let ca = TestCa::new();
    let host = handoff_host("");
    // The timer's deploy never creates a missing staging dir (it would be
    // root's).
    std::fs::remove_dir(&host.staging).unwrap();
    let out = host.cmd().arg("deploy").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !host.staging.exists(),
        "root's deploy created the staging dir"
    );
    std::fs::create_dir(&host.staging).unwrap();
    chown(&host.staging, NOBODY);
    chmod(&host.staging, 0o700);

    let first = ca.leaf(KeyKind::P256, &[HOST]);
    let out = host.cmd().arg("deploy").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "timer deploy: {}", stderr(&out));
    let out = host.install_leaf(&first, &[]);
    assert_eq!(out.status.code(), Some(0), "install: {}", stderr(&out));
    let out = host.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "check: {}", stderr(&out));
    // An older root run may have left a 0600 lock behind: root repairs it.
    let lock = host.staging.join(".lock");
    if lock.exists() {
        chmod(&lock, 0o600);
        chown(&lock, 0);
        let out = host.cmd().arg("deploy").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }

    let next = ca.leaf(KeyKind::P384, &[HOST]);
    let deploy = host.deployer();
    let r = push_leaf(host.serve_as_nobody(), &next).await;
    eprintln!("{}", deploy.log());
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!(host.installed().unwrap().0, next.chain_pem);
}

/// Item 6: a FIFO planted as `.lock` or `.deploy.lock` hangs neither
/// `deploy` nor `check`; each refuses it at once and says why.
#[test]
fn a_fifo_as_a_lock_file_hangs_neither_deploy_nor_check() {
    needs!(need::setpriv());
    let host = handoff_host("");
    let ssl_before = tree(&host.ssl);
    // A reload owed makes `check` take the session lock too.
    as_certsync(&format!(
        "cd {} && mkfifo .lock .deploy.lock && echo x > mail.reload-owed",
        host.staging.display()
    ));
    for what in ["deploy", "check"] {
        let mut cmd = host.cmd();
        cmd.arg(what);
        let start = Instant::now();
        let out = run_bounded(cmd, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{what} hung on a FIFO planted as a lock file"));
        eprintln!(
            "{what}: exit {:?} after {:?}\n{}",
            out.status.code(),
            start.elapsed(),
            stderr(&out)
        );
        assert_ne!(out.status.code(), Some(0), "{what}");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(text.contains("not a regular file"), "{what}: {text}");
    }
    assert_eq!(tree(&host.ssl), ssl_before);
}

/// Run `cmd` to its end (or kill it after `limit`: then `None`), and
/// return its output and peak RSS in KiB (`wait4`'s rusage of this child
/// alone).
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(mut cmd: Command, limit: Duration) -> Option<(Output, i64)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let (status, maxrss) = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid to be overwritten.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own child; valid out pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            break (status, usage.ru_maxrss);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::ExitStatus::from_raw(status);
    Some((
        Output {
            status,
            stdout,
            stderr,
        },
        maxrss,
    ))
}

/// Item 6: a link to /dev/zero (or a FIFO) as `<name>.installed-at` never
/// makes root read more than a small file's worth, nor wait on it. The
/// child runs with a 2 GiB address-space limit, so reading /dev/zero
/// without a cap fails this test (peak RSS) instead of exhausting the
/// machine.
#[test]
fn installed_at_as_dev_zero_or_a_fifo_is_not_read() {
    needs!(need::setpriv());
    let ca = TestCa::new();
    let host = handoff_host("");
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    assert_eq!(host.install_leaf(&leaf, &[]).status.code(), Some(0));
    for plant in [
        "ln -sf /dev/zero mail.installed-at",
        "rm -f mail.installed-at && mkfifo mail.installed-at",
    ] {
        as_certsync(&format!("cd {} && {plant}", host.staging.display()));
        let mut cmd = host.cmd();
        cmd.args(["check", "--json"]);
        // SAFETY: setrlimit in the child before exec; no allocation.
        unsafe {
            cmd.pre_exec(|| {
                let cap = libc::rlimit {
                    rlim_cur: 2 << 30,
                    rlim_max: 2 << 30,
                };
                libc::setrlimit(libc::RLIMIT_AS, &cap);
                Ok(())
            });
        }
        let (out, maxrss_kib) = run_measured(cmd, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{plant}: check hung"));
        eprintln!(
            "{plant}: check exit {:?}, peak RSS {maxrss_kib} KiB",
            out.status.code()
        );
        assert_eq!(out.status.code(), Some(0), "{plant}: {}", stderr(&out));
        assert!(
            maxrss_kib < 100 * 1024,
            "{plant}: check read {maxrss_kib} KiB"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["certs"][0]["last_install"].is_null(), "{plant}: {v}");
    }
}

/// Item 6: an offer that names a certificate twice is refused before the
/// lock is taken and before any key material is asked for.
#[tokio::test]
async fn an_offer_naming_a_cert_twice_is_refused() {
    let ca = TestCa::new();
    let host = Mailhost::new(&[HOST]);
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let before = host.snapshot();
    let mut cmd = tokio::process::Command::new(certsync_tests::bins::receive());
    cmd.arg("--config").arg(&host.config).arg("serve");
    let r = push_session(
        cmd,
        &[
            ("mail", leaf.bundle(), leaf.fingerprint()),
            ("mail", leaf.bundle(), leaf.fingerprint()),
        ],
        false,
        false,
    )
    .await;
    assert_eq!(r.exit, Some(2), "{r:?}");
    assert_eq!(r.bundles_sent, 0);
    assert!(
        r.error.as_deref().unwrap_or("").contains("more than once"),
        "{r:?}"
    );
    assert_eq!(host.snapshot(), before);
    assert!(host.nothing_installed());
}

/// Item 6: a pusher that sends each frame just inside `read_timeout` is
/// dropped at `session_timeout` (counted from taking the lock), however
/// many frames it has left: it holds the receiver's lock no longer.
#[tokio::test]
async fn a_trickling_pusher_is_dropped_at_the_session_limit() {
    let ca = TestCa::new();
    let host = Mailhost::with_extra(&[HOST], "session_timeout = 3");
    let config = std::fs::read_to_string(&host.config).unwrap();
    assert!(config.contains("read_timeout = 2\n"));
    std::fs::write(
        &host.config,
        config.replace("read_timeout = 2\n", "read_timeout = 6\n"),
    )
    .unwrap();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let before = host.snapshot();
    let mut child = tokio::process::Command::new(certsync_tests::bins::receive())
        .arg("--config")
        .arg(&host.config)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut want_at = None;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let trickle = async {
        protocol::write_message(
            &mut stdin,
            &Message::Hello(Hello::new("test", false, false)),
        )
        .await?;
        protocol::write_message(
            &mut stdin,
            &Message::Offer(Offer {
                certs: vec![offered("mail", &leaf)],
            }),
        )
        .await?;
        let mut reader = Reader::new(&mut stdout, Limits::default());
        loop {
            if let Message::Want(_) = reader.next("want").await? {
                want_at = Some(Instant::now());
                break;
            }
        }
        // The bundle, then done, each whole frame 2.5 s after the last
        // (read_timeout is 6): every frame is in time, the session is not.
        let frame = protocol::encode(&Message::Bundle {
            name: "mail".into(),
            bundle: Bundle::new(leaf.chain_pem.clone(), leaf.key_pem.clone()),
        })?;
        let done = protocol::encode(&Message::Done)?;
        for piece in [&frame[..], &done[..]] {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            use tokio::io::AsyncWriteExt;
            stdin.write_all(piece).await?;
            stdin.flush().await?;
        }
        Ok::<(), protocol::ProtocolError>(())
    };
    let exited = async {
        let out = child.wait_with_output().await.unwrap();
        (out, Instant::now())
    };
    let (_, (out, exited_at)) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), trickle),
        exited
    );
    let err = stderr(&out);
    let Some(want_at) = want_at else {
        panic!("the session never started: {err}");
    };
    let elapsed = exited_at - want_at;
    eprintln!(
        "serve: exit {:?} {elapsed:?} after its want\n{err}",
        out.status.code()
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("did not finish its side of the session") && err.contains("session_timeout"),
        "{err}"
    );
    // Dropped at about 3 s; without the limit it finishes after 5 s.
    assert!(elapsed < Duration::from_millis(4500), "{elapsed:?}");
    assert_eq!(host.snapshot(), before);
    assert!(host.nothing_installed());
}

/// Item 8: a new key.pem is root's, whoever owned the one it replaces.
#[test]
fn a_new_key_is_roots_even_when_the_old_one_was_not() {
    let ca = TestCa::new();
    let first = ca.leaf(KeyKind::P256, &[HOST]);
    let host = Mailhost::with_installed(&[HOST], &first);
    chown(&host.key_path(), NOBODY);
    chown(&host.cert_path(), NOBODY);
    let next = ca.leaf(KeyKind::P256, &[HOST]);
    let out = host.install_leaf(&next, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.installed().unwrap().0, next.chain_pem);
    for p in [host.key_path(), host.cert_path()] {
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", p.display());
    }
    let key = std::fs::metadata(host.key_path()).unwrap();
    assert_eq!(key.mode() & 0o777, 0o600);
    // The kept previous pair too: a copy is root's, not the old owner's.
    let prev = host.ssl.join("key.pem.certsync-prev");
    assert_eq!(std::fs::metadata(prev).unwrap().uid(), 0);
}

/// Put a mismatched pair in place with no backup: `first`'s certificate
/// and `other`'s key.
fn break_pair(host: &Mailhost, other: &TestLeaf) {
    std::fs::write(host.key_path(), other.key_pem.expose()).unwrap();
    chmod(&host.key_path(), 0o600);
    for f in ["cert.pem.certsync-prev", "key.pem.certsync-prev"] {
        let _ = std::fs::remove_file(host.ssl.join(f));
    }
}

/// Item 11: a mismatched installed pair with no backup is repaired by the
/// next install or push, as the error advises.
#[tokio::test]
async fn a_broken_pair_without_backup_is_repaired_by_the_next_install_or_push() {
    let ca = TestCa::new();
    let first = ca.leaf(KeyKind::P256, &[HOST]);
    let host = Mailhost::with_installed(&[HOST], &first);
    break_pair(&host, &ca.leaf(KeyKind::P256, &[HOST]));
    // The same certificate again, by `install`.
    let out = host.install_leaf(&first, &[]);
    assert_eq!(out.status.code(), Some(0), "install: {}", stderr(&out));
    let (chain, key) = host.installed().unwrap();
    assert_eq!(
        (chain, key),
        (first.chain_pem.clone(), first.key_pem.expose().to_vec())
    );

    // And by a push (inline `serve`).
    break_pair(&host, &ca.leaf(KeyKind::P256, &[HOST]));
    let mut cmd = tokio::process::Command::new(certsync_tests::bins::receive());
    cmd.arg("--config").arg(&host.config).arg("serve");
    let r = push_leaf(cmd, &first).await;
    assert_eq!(r.exit, Some(0), "{r:?}");
    let (chain, key) = host.installed().unwrap();
    assert_eq!(
        (chain, key),
        (first.chain_pem.clone(), first.key_pem.expose().to_vec())
    );
}

/// Item 11: in handoff mode the unprivileged `serve` cannot read root's
/// key.pem, so a damaged key under a matching cert.pem looks unchanged to
/// it. Root's deploy (the hourly timer) finds it and marks the repair; the
/// next push then delivers the pair and root's deploy installs it.
#[tokio::test]
async fn handoff_a_damaged_key_is_repaired_by_the_next_push() {
    needs!(need::setpriv());
    let ca = TestCa::new();
    let host = handoff_host("");
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    assert_eq!(host.install_leaf(&leaf, &[]).status.code(), Some(0));
    break_pair(&host, &ca.leaf(KeyKind::P256, &[HOST]));
    // The hourly catch-up run, nothing staged: it reports the broken pair.
    let out = host.cmd().arg("deploy").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    eprintln!("timer deploy: exit {:?}\n{text}", out.status.code());
    assert_ne!(out.status.code(), Some(0));
    assert!(text.contains("next push"), "{text}");

    let deploy = host.deployer();
    let r = push_leaf(host.serve_as_nobody(), &leaf).await;
    eprintln!("{}", deploy.log());
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!(r.bundles_sent, 1, "the pair was not asked for");
    let (chain, key) = host.installed().unwrap();
    assert_eq!(chain, leaf.chain_pem);
    assert_eq!(
        key,
        leaf.key_pem.expose(),
        "the damaged key is still installed"
    );
    // Repaired: the next push is "nothing to do" without key material.
    drop(deploy);
    let r = push_leaf(host.serve_as_nobody(), &leaf).await;
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!(r.bundles_sent, 0);
}

/// `/proc/<pid>/limits`' core line, the process's uid and the owner of
/// `/proc/<pid>/status` (root when the process is not dumpable) of a process that `cmd` starts and
/// that keeps running for a moment, then killed.
fn core_state(mut cmd: Command, exe: &Path) -> (String, u32, u32) {
    // Raise the soft core limit to the hard one, so a binary that does not
    // lower it shows it.
    // SAFETY: getrlimit/setrlimit in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_CORE, &mut r);
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_CORE, &r);
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    let start = Instant::now();
    // Wait until setpriv (if any) has exec'd the binary.
    while std::fs::read_link(proc_dir.join("exe")).ok().as_deref() != Some(exe) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never ran",
            exe.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut limits = String::new();
    std::fs::File::open(proc_dir.join("limits"))
        .unwrap()
        .read_to_string(&mut limits)
        .unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let uid: u32 = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let owner = std::fs::metadata(proc_dir.join("status")).unwrap().uid();
    let _ = child.kill();
    let _ = child.wait();
    (core, uid, owner)
}

/// Item 12: neither binary can leave a core dump (RLIMIT_CORE 0) or be
/// read by another process of its user (not dumpable: the files in
/// /proc/<pid> turn root's), checked on the running binaries as the unprivileged user.
#[test]
fn both_binaries_disable_core_dumps() {
    needs!(need::setpriv());
    let ca = TestCa::new();
    let host = Mailhost::new(&[HOST]);
    chmod(host.root.path(), 0o755);
    chmod(&host.config, 0o644);
    let receive = certsync_tests::bins::receive();
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&receive)
        .arg("--config")
        .arg(&host.config)
        .arg("serve");
    let (core, uid, owner) = core_state(cmd, &receive);
    eprintln!("certsync-receive serve: {core}; uid {uid}; /proc/<pid> owned by {owner}");
    assert_eq!(core, "Max core file size 0 0 bytes");
    assert_eq!(uid, NOBODY);
    assert_eq!(owner, 0, "certsync-receive is still dumpable");

    // The pusher, waiting for a receiver that never answers.
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let live = certsync_tests::livedir::LiveDir::new(dir.path(), "npm-5", &leaf);
    let chowned = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(chowned.success());
    let config = dir.path().join("push.toml");
    std::fs::write(
        &config,
        format!(
            "[[cert]]\nname = \"mail\"\nsource = {:?}\n\n[[target]]\nname = \"mailcow\"\ntransport = \"local\"\ncommand = [\"/bin/sleep\", \"5\"]\n",
            live.dir()
        ),
    )
    .unwrap();
    let push = certsync_tests::bins::push();
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&push)
        .arg("--config")
        .arg(&config)
        .arg("push");
    let (core, uid, owner) = core_state(cmd, &push);
    eprintln!("certsync-push push: {core}; uid {uid}; /proc/<pid> owned by {owner}");
    assert_eq!(core, "Max core file size 0 0 bytes");
    assert_eq!(uid, NOBODY);
    assert_eq!(owner, 0, "certsync-push is still dumpable");
}

/// Item 12: fault injection is a cargo feature that only the tests enable:
/// not a default feature of certsync-receive, so `cargo build --release
/// -p certsync-receive` and `cargo deb` compile no fault points (the unit
/// test `fault::tests::without_the_feature_the_variable_is_ignored`, run
/// by .ci/run without the feature, shows that the variable then does
/// nothing).
#[test]
fn fault_injection_is_never_a_default_feature() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../certsync-receive/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let features = text
        .split("[features]")
        .nth(1)
        .expect("certsync-receive declares its features")
        .split("\n[")
        .next()
        .unwrap();
    assert!(features.contains("fault-injection = []"), "{features}");
    assert!(
        !features
            .lines()
            .any(|l| l.trim_start().starts_with("default")),
        "a default feature set would put fault injection into release builds: {features}"
    );
    const {
        assert!(
            certsync_receive::pipeline::fault::ENABLED,
            "the tests run with fault injection"
        )
    };
}
