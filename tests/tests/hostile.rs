//! A malicious pusher against the real `certsync-receive serve` (issue 7):
//! path names on the wire, symlinks planted in the staging dir, a pair for
//! another hostname, 100 MB of input, 10 000 frames, a stalled connection.
//!
//! Each test speaks the protocol directly (hand-made frames where the
//! encoder would refuse to write them) and then proves what the receiver
//! did: its exit code and message, that nothing outside the staging dir
//! changed ([`Mailhost::snapshot`]), and that the installed pair is still
//! the old one. Results go in docs/faults.md; `eprintln!` lines starting
//! with `RESULT` are what the table was filled from.

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certsync_core::bundle::Bundle;
use certsync_core::protocol::{
    self, Hello, Limits, Message, Offer, ProtocolError, Reader, MAX_FRAMES,
};
use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_tests::receiver::{offered, push_leaf, push_session, Mailhost};

const HOST: &str = "mail.example.com";

/// What one raw session with `serve` showed.
#[derive(Debug)]
struct Raw {
    exit: Option<i32>,
    stderr: String,
    /// What `serve` wrote back, decoded.
    messages: Vec<Message>,
    elapsed: Duration,
    /// The receiver's peak resident set (getrusage of the child), in KiB.
    max_rss_kib: i64,
    /// How many bytes of our input the pipe took before the receiver quit.
    written: u64,
}

impl Raw {
    fn error(&self) -> String {
        self.messages
            .iter()
            .find_map(|m| match m {
                Message::Error(e) => Some(e.message.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Encode one message (test input: panics on failure).
fn enc(msg: &Message) -> Vec<u8> {
    protocol::encode(msg).unwrap().to_vec()
}

fn hello() -> Vec<u8> {
    enc(&Message::Hello(Hello::new("hostile-test", false, false)))
}

fn offer_of(leaf: &TestLeaf) -> Vec<u8> {
    enc(&Message::Offer(Offer {
        certs: vec![offered("mail", leaf)],
    }))
}

/// A bundle frame with any name, built by hand: the encoder refuses bad
/// names, a hostile pusher does not use our encoder.
fn raw_bundle(name: &[u8], chain: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&(chain.len() as u32).to_be_bytes());
    body.extend_from_slice(chain);
    body.extend_from_slice(&(key.len() as u32).to_be_bytes());
    body.extend_from_slice(key);
    let mut frame = vec![4u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Run `serve` on `host`, feeding stdin from `feed` on its own thread
/// (`feed` gets a flag that turns true once the receiver has exited, so a
/// staller can keep the pipe open exactly as long as needed). Reaps the
/// child with `wait4` to get its peak RSS.
fn raw_serve<F>(host: &Mailhost, feed: F) -> Raw
where
    F: FnOnce(&mut ChildStdin, &AtomicBool) -> u64 + Send + 'static,
{
    let start = Instant::now();
    let mut cmd = host.cmd();
    cmd.arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Own process group: nothing of ours is signalled with it.
    cmd.process_group(0);
    let mut child = cmd.spawn().expect("spawn serve");
    let pid = child.id() as libc::pid_t;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let exited = Arc::new(AtomicBool::new(false));
    let exited2 = exited.clone();
    let writer = std::thread::spawn(move || {
        let n = feed(&mut stdin, &exited2);
        drop(stdin);
        n
    });
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let elapsed = start.elapsed();
    exited.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    let out = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    // The std Child must not reap again: forget it (the pid is gone).
    std::mem::forget(child);
    let exit = if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else {
        None
    };
    Raw {
        exit,
        stderr,
        messages: decode_all(&out),
        elapsed,
        max_rss_kib: usage.ru_maxrss,
        written,
    }
}

fn decode_all(bytes: &[u8]) -> Vec<Message> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = Reader::new(bytes, Limits::default());
        let mut v = Vec::new();
        while let Ok(m) = r.next("message").await {
            v.push(m);
        }
        v
    })
}

/// Write `bytes` and return how many the pipe took (a receiver that quit
/// early makes the write fail with EPIPE: that is expected here).
fn write_counted(stdin: &mut ChildStdin, bytes: &[u8]) -> u64 {
    let mut n = 0u64;
    for chunk in bytes.chunks(64 * 1024) {
        if stdin.write_all(chunk).is_err() {
            return n;
        }
        n += chunk.len() as u64;
    }
    n
}

/// A host with `old` installed, and its snapshot.
fn host_with_old(ca: &TestCa) -> (Mailhost, TestLeaf) {
    let old = ca.leaf(KeyKind::P384, &[HOST]);
    (Mailhost::with_installed(&[HOST], &old), old)
}

/// `serve` fed `input` ends with exit 1 and "invalid certificate name".
fn refused_as_an_invalid_name(host: &Mailhost, how: &str, name: &str, input: Vec<u8>) {
    let r = raw_serve(host, move |s, _| write_counted(s, &input));
    eprintln!("RESULT {how} {name:?}: exit {:?}: {}", r.exit, r.error());
    assert_eq!(r.exit, Some(1), "{how} {name:?}: {r:?}");
    assert!(
        r.error().contains("invalid certificate name"),
        "{how} {name:?}: {}",
        r.error()
    );
}

fn assert_old_pair(host: &Mailhost, old: &TestLeaf, what: &str) {
    let (chain, key) = host.installed().expect("a pair is installed");
    assert!(
        chain == old.chain_pem && key == old.key_pem.expose(),
        "{what}: the installed pair is no longer the old one"
    );
}

/// No key material left in the staging dir.
fn assert_nothing_staged(host: &Mailhost, what: &str) {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&host.staging) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                for f in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    found.push(f.path());
                }
            }
        }
    }
    assert!(found.is_empty(), "{what}: left in staging: {found:?}");
}

#[test]
fn path_names_on_the_wire_are_refused_and_nothing_is_written() {
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let before = host.snapshot();
    let names = [
        "../../etc/passwd",
        "/etc/passwd",
        "../mailcow/data/assets/ssl/cert.pem",
        "mail/../../x",
        "mail\0",
    ];
    for name in names {
        // 1. The path as a name in the offer.
        let mut bad = offered("mail", &new);
        bad.name = name.to_string();
        let offer = enc(&Message::Offer(Offer { certs: vec![bad] }));
        let (chain, key) = (new.chain_pem.clone(), new.key_pem.expose().to_vec());
        let mut input = hello();
        input.extend_from_slice(&offer);
        input.extend(raw_bundle(name.as_bytes(), &chain, &key));
        input.extend(enc(&Message::Done));
        refused_as_an_invalid_name(&host, "path-in-offer", name, input);

        // 2. A proper offer for "mail", then a bundle whose name is the path.
        let mut input = hello();
        input.extend(offer_of(&new));
        input.extend(raw_bundle(
            name.as_bytes(),
            &new.chain_pem,
            new.key_pem.expose(),
        ));
        input.extend(enc(&Message::Done));
        refused_as_an_invalid_name(&host, "path-in-bundle", name, input);
        assert_eq!(host.snapshot(), before, "{name:?}: something was written");
        assert_old_pair(&host, &old, name);
        assert_nothing_staged(&host, name);
    }
    // Nothing was made next to the host either (the paths resolve there).
    assert!(!host.root.path().join("x").exists());
}

#[tokio::test]
async fn symlinks_planted_in_the_staging_dir_are_never_followed() {
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let victim = host.root.path().join("shadow");
    std::fs::write(&victim, "root:$6$precious:19000:0:99999:7:::\n").unwrap();
    let victim_before = std::fs::read(&victim).unwrap();
    let cert_dir = host.staging.join("mail");
    std::fs::create_dir_all(&cert_dir).unwrap();
    // The staged key points at the installed key, the staged chain at a
    // shadow-like victim.
    symlink(host.key_path(), cert_dir.join("privkey.pem")).unwrap();
    symlink(&victim, cert_dir.join("fullchain.pem")).unwrap();

    // A refused pair (another hostname): staging must not write through
    // the links, and the refusal must leave everything as it was.
    let other = ca.leaf(KeyKind::P256, &["other.example.net"]);
    let r = push_leaf(host.serve_cmd(), &other).await;
    eprintln!("RESULT symlinks+refused pair: exit {:?}", r.exit);
    assert_eq!(r.exit, Some(3), "{r:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), victim_before);
    assert_old_pair(&host, &old, "symlinks + refused pair");

    // Plant them again and push a good pair: installed, victim untouched,
    // the links replaced by nothing (staging is cleared after the install).
    let _ = std::fs::remove_file(cert_dir.join("privkey.pem"));
    let _ = std::fs::remove_file(cert_dir.join("fullchain.pem"));
    symlink(host.key_path(), cert_dir.join("privkey.pem")).unwrap();
    symlink(&victim, cert_dir.join("fullchain.pem")).unwrap();
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let r = push_leaf(host.serve_cmd(), &new).await;
    eprintln!("RESULT symlinks+good pair: exit {:?}", r.exit);
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), victim_before);
    let (chain, key) = host.installed().unwrap();
    assert_eq!(chain, new.chain_pem);
    assert_eq!(key, new.key_pem.expose());
    assert!(std::fs::symlink_metadata(host.key_path())
        .unwrap()
        .file_type()
        .is_file());
    assert_nothing_staged(&host, "symlinks + good pair");

    // The cert's staging dir itself a symlink into the ssl dir: refused.
    std::fs::remove_dir_all(&cert_dir).unwrap();
    symlink(&host.ssl, &cert_dir).unwrap();
    let before = host.snapshot();
    let newer = ca.leaf(KeyKind::P384, &[HOST]);
    let r = push_leaf(host.serve_cmd(), &newer).await;
    let msg = format!("{:?}", r.report);
    eprintln!("RESULT symlinked cert staging dir: exit {:?}", r.exit);
    assert_eq!(r.exit, Some(1), "{r:?}");
    assert!(msg.contains("is a symlink or not a directory"), "{msg}");
    assert_eq!(host.snapshot(), before);
    assert_eq!(host.installed().unwrap().0, new.chain_pem);
}

#[tokio::test]
async fn a_pair_for_another_hostname_is_refused_and_the_old_pair_kept() {
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let before = host.snapshot();
    let other = ca.leaf(KeyKind::Ed25519, &["mail.attacker.example"]);
    let r = push_leaf(host.serve_cmd(), &other).await;
    let report = r.report.as_ref().expect("a report");
    let text = report.certs[0].to_string();
    eprintln!(
        "RESULT other hostname: exit {:?}: {}",
        r.exit,
        text.replace('\n', " | ")
    );
    assert_eq!(r.exit, Some(3), "{r:?}");
    assert!(text.contains("does not cover the hostname"), "{text}");
    assert!(text.contains(HOST), "{text}");
    assert_eq!(host.snapshot(), before);
    assert_old_pair(&host, &old, "other hostname");
    assert_nothing_staged(&host, "other hostname");

    // Our hostname's certificate with the other host's key.
    let ours = ca.leaf(KeyKind::Ed25519, &[HOST]);
    let mixed = Bundle::new(ours.chain_pem.clone(), other.key_pem.clone());
    let r = push_session(
        host.serve_cmd(),
        &[("mail", mixed, ours.fingerprint())],
        false,
        false,
    )
    .await;
    let text = r.report.as_ref().map(|rep| rep.certs[0].to_string());
    eprintln!("RESULT other host's key: exit {:?}: {text:?}", r.exit);
    assert_eq!(r.exit, Some(3), "{r:?}");
    assert!(
        text.unwrap_or_default()
            .contains("does not belong to the certificate"),
        "{r:?}"
    );
    assert_eq!(host.snapshot(), before);
    assert_old_pair(&host, &old, "other host's key");
}

const HUNDRED_MB: usize = 100 * 1024 * 1024;

/// Write `total` bytes of `byte` in 64 KiB pieces until the pipe breaks;
/// returns how many the receiver's pipe took.
fn pour(s: &mut ChildStdin, byte: u8, total: usize) -> u64 {
    let chunk = vec![byte; 64 * 1024];
    let mut n = 0u64;
    while (n as usize) < total {
        match s.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    n
}

/// 100 MB on stdin, in the three shapes a pusher could try: raw garbage, a
/// bundle frame that announces 100 MB, and 100 MB of in-limit frames.
/// Each is refused after a few KiB read, quickly, in bounded memory.
#[test]
fn a_hundred_megabytes_are_refused_quickly_in_bounded_memory() {
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let before = host.snapshot();

    let garbage = move |s: &mut ChildStdin, _: &AtomicBool| pour(s, 0xA5, HUNDRED_MB);
    let offer = offer_of(&new);
    let announced = move |s: &mut ChildStdin, _: &AtomicBool| {
        let mut head = hello();
        head.extend_from_slice(&offer);
        head.push(4);
        head.extend_from_slice(&(HUNDRED_MB as u32).to_be_bytes());
        write_counted(s, &head) + pour(s, b'A', HUNDRED_MB)
    };
    let offer = offer_of(&new);
    let in_limit = move |s: &mut ChildStdin, _: &AtomicBool| {
        // 64 KiB log frames (each within MAX_JSON_FRAME) after the offer.
        let mut head = hello();
        head.extend_from_slice(&offer);
        let mut n = write_counted(s, &head);
        let line = "x".repeat(60 * 1024);
        let frame = enc(&Message::Log(line));
        while (n as usize) < HUNDRED_MB {
            if s.write_all(&frame).is_err() {
                break;
            }
            n += frame.len() as u64;
        }
        n
    };
    type Feed = Box<dyn FnOnce(&mut ChildStdin, &AtomicBool) -> u64 + Send>;
    let cases: Vec<(&str, Feed, &str)> = vec![
        ("garbage", Box::new(garbage), "not the certsync protocol"),
        (
            "announced-100MB-bundle",
            Box::new(announced),
            "exceeds the limit",
        ),
        (
            "100MB-of-frames",
            Box::new(in_limit),
            "expected bundle or done",
        ),
    ];
    for (what, feed, needle) in cases {
        let r = raw_serve(&host, feed);
        eprintln!(
            "RESULT 100MB {what}: exit {:?} in {:?}, max RSS {} KiB, {} bytes taken: {}",
            r.exit,
            r.elapsed,
            r.max_rss_kib,
            r.written,
            r.error()
        );
        assert_eq!(r.exit, Some(1), "{what}: {r:?}");
        assert!(r.error().contains(needle), "{what}: {}", r.error());
        // Refused at once: the receiver stops reading, most of the 100 MB
        // never enters it (the pipe and one frame at most).
        assert!(
            r.written < 8 * 1024 * 1024,
            "{what}: {} bytes were taken",
            r.written
        );
        // Bounded memory: far below the input (the binary alone is ~10 MB).
        assert!(r.max_rss_kib < 64 * 1024, "{what}: {} KiB", r.max_rss_kib);
        assert!(
            r.elapsed < Duration::from_secs(30),
            "{what}: {:?}",
            r.elapsed
        );
        assert_eq!(host.snapshot(), before, "{what}");
        assert_old_pair(&host, &old, what);
    }
}

/// 10 000 frames: `serve` refuses the first one that does not belong in the
/// session; the reader's frame limit (MAX_FRAMES) is the backstop, shown
/// here on the pusher's side, where a hostile receiver can send many logs.
#[test]
fn ten_thousand_frames_are_refused() {
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let before = host.snapshot();
    let offer = offer_of(&new);
    let logs = move |s: &mut ChildStdin, _: &AtomicBool| {
        let mut input = hello();
        input.extend_from_slice(&offer);
        let frame = enc(&Message::Log("x".into()));
        for _ in 0..10_000 {
            input.extend_from_slice(&frame);
        }
        write_counted(s, &input)
    };
    let r = raw_serve(&host, logs);
    eprintln!(
        "RESULT 10000 log frames: exit {:?} in {:?}: {}",
        r.exit,
        r.elapsed,
        r.error()
    );
    assert_eq!(r.exit, Some(1), "{r:?}");
    assert!(
        r.error().contains("expected bundle or done, got log"),
        "{r:?}"
    );

    let hellos = |s: &mut ChildStdin, _: &AtomicBool| {
        let frame = hello();
        let mut input = Vec::new();
        for _ in 0..10_000 {
            input.extend_from_slice(&frame);
        }
        write_counted(s, &input)
    };
    let r = raw_serve(&host, hellos);
    eprintln!(
        "RESULT 10000 hello frames: exit {:?}: {}",
        r.exit,
        r.error()
    );
    assert_eq!(r.exit, Some(1), "{r:?}");
    assert!(r.error().contains("expected offer, got hello"), "{r:?}");
    assert_eq!(host.snapshot(), before);
    assert_old_pair(&host, &old, "10000 frames");

    // The reader itself stops at MAX_FRAMES, whatever the frames are.
    let frame = enc(&Message::Log("x".into()));
    let mut input = Vec::new();
    for _ in 0..10_000 {
        input.extend_from_slice(&frame);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (n, err) = rt.block_on(async {
        let mut r = Reader::new(&input[..], Limits::default());
        let mut n = 0;
        loop {
            match r.next("log").await {
                Ok(_) => n += 1,
                Err(e) => return (n, e),
            }
        }
    });
    eprintln!("RESULT 10000 frames at the reader: {n} read, then: {err}");
    assert_eq!(n, MAX_FRAMES);
    assert!(matches!(err, ProtocolError::TooManyFrames(_)), "{err}");
}

/// A pusher that stops sending in the middle of a bundle, and one that
/// trickles a byte at a time: both end after read_timeout (2 s in the
/// Mailhost config), nothing installed, the old pair kept.
#[test]
fn a_stalled_connection_ends_after_read_timeout() {
    let ca = TestCa::new();
    let (host, old) = host_with_old(&ca);
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let before = host.snapshot();
    let frame = raw_bundle(b"mail", &new.chain_pem, new.key_pem.expose());
    let mut head = hello();
    head.extend(offer_of(&new));
    let (h1, f1) = (head.clone(), frame.clone());
    let stall = move |s: &mut ChildStdin, exited: &AtomicBool| {
        let n = write_counted(s, &h1) + write_counted(s, &f1[..f1.len() / 2]);
        // Keep the pipe open, silent, until the receiver gives up (60 s cap).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !exited.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    };
    let trickle = move |s: &mut ChildStdin, exited: &AtomicBool| {
        let mut n = write_counted(s, &head) + write_counted(s, &frame[..5]);
        for b in &frame[5..] {
            if exited.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                break;
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        n
    };
    type Feed = Box<dyn FnOnce(&mut ChildStdin, &AtomicBool) -> u64 + Send>;
    let cases: Vec<(&str, Feed)> = vec![
        ("stalled mid-bundle", Box::new(stall)),
        ("trickle 5 B/s", Box::new(trickle)),
    ];
    for (what, feed) in cases {
        let r = raw_serve(&host, feed);
        eprintln!(
            "RESULT {what}: exit {:?} after {:?}: {}",
            r.exit,
            r.elapsed,
            r.error()
        );
        assert_eq!(r.exit, Some(1), "{what}: {r:?}");
        assert!(r.error().contains("stalled"), "{what}: {}", r.error());
        // It waited for the timeout (2 s), and not much longer.
        assert!(
            r.elapsed >= Duration::from_secs(2),
            "{what}: {:?}",
            r.elapsed
        );
        assert!(
            r.elapsed < Duration::from_secs(30),
            "{what}: {:?}",
            r.elapsed
        );
        assert!(r.stderr.contains("stalled"), "{what}: {}", r.stderr);
        assert_eq!(host.snapshot(), before, "{what}");
        assert_old_pair(&host, &old, what);
        assert_nothing_staged(&host, what);
    }
}
