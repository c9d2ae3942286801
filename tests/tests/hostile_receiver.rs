//! A hostile receiver against the real `certsync-push` (issue 11 item 10):
//! whatever the far side says is data. Its progress lines, answer, report,
//! error frame and stderr carry terminal escapes, forged log lines and
//! megabytes of text; the pusher's output (stdout and its log on stderr)
//! holds none of the escapes or forged lines, and stays bounded.
//!
//! The receivers are scripts ([`certsync_tests::fakerecv`]) reached with
//! `transport = "local"`, or as the forced command of a real sshd; none is
//! ever sent a key (each answers `have`, or fails before its answer).
//!
//! And one that greets and then says nothing more, over real SSH: the
//! target's `session_timeout` disconnects it (issue 11 item 5).

use certsync_core::protocol::{Message, WireError};
use certsync_core::testutil::{KeyKind, TestCa};
use certsync_core::ExitCode;
use certsync_tests::fakerecv::{
    encode_all, hello, raw_frame, report_nothing_to_do, want_have, FakeReceiver, Then,
};
use certsync_tests::npmhost::{ssh_target, NpmHost};
use certsync_tests::sshd::{self, Sshd};
use certsync_tests::{need, needs};
use std::time::Duration;

/// Escapes a terminal acts on (colour, clear screen, window title, C1 CSI,
/// a hyperlink), a carriage return, and a newline that starts a forged
/// line of our log.
fn nasty(what: &str) -> String {
    format!(
        "\u{1b}[31m{what}\u{1b}[0m \u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}1m\u{1b}]8;;http://x\u{1b}\\link\r\nFAKE: forged {what} line\n"
    )
}

#[test]
fn receiver_words_are_cleaned_and_capped_in_the_pushers_output() {
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
    let npm = NpmHost::new(&leaf);

    // 1. Says everything a session allows: 250 progress lines (the first
    //    nasty, then 60 KB each), an answer and a report with nasty
    //    messages, and 1 MB of stderr.
    let mut frames = vec![hello()];
    frames.push(Message::Log(nasty("progress")));
    for _ in 0..249 {
        frames.push(Message::Log(format!(
            "{}{}",
            "L".repeat(60_000),
            nasty("big")
        )));
    }
    frames.push(want_have(&["mail"], &nasty("decision")));
    frames.push(report_nothing_to_do(
        "mail",
        &format!("{}{}", nasty("step"), "S".repeat(20_000)),
    ));
    let mut stderr = nasty("stderr").into_bytes();
    for _ in 0..5000 {
        stderr.extend_from_slice(format!("{}{}", "E".repeat(150), nasty("stderr")).as_bytes());
    }
    let chatty = FakeReceiver::new(&frames, &stderr, Then::WaitForEof);

    // 2. Fails at once with a nasty error frame.
    let failing = FakeReceiver::new(
        &[
            hello(),
            Message::Error(WireError {
                message: format!("{}{}", nasty("error"), "R".repeat(30_000)),
                exit: ExitCode::Runtime,
            }),
        ],
        b"",
        Then::WaitForEof,
    );
    // 3. An answer our parser refuses, whose reason would quote it.
    let mut bytes = encode_all(&[hello()]);
    let want =
        serde_json::json!({"certs": [{"name": "mail", "wanted": nasty("parser"), "message": ""}]});
    bytes.extend(raw_frame(3, want.to_string().as_bytes()));
    let malformed = FakeReceiver::raw(&bytes, b"", Then::WaitForEof);
    npm.write_config(
        &npm.cert_source(),
        &[
            chatty.target("chatty"),
            failing.target("failing"),
            malformed.target("malformed"),
        ],
    );

    let run = npm.run(&["push"]);
    let out = run.both();
    let total = run.stdout.len() + run.stderr.len();
    eprintln!(
        "RESULT hostile receiver: pusher output {total} bytes ({} lines) for ~16 MB said",
        out.lines().count()
    );
    // The pass itself worked: one target has the pair, one failed.
    assert_eq!(run.code, Some(1), "{}", &out[..out.len().min(4000)]);
    assert!(
        run.stdout.contains("chatty: ok: mail: nothing to do"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("failing: FAILED"), "{}", run.stdout);
    assert!(run.stdout.contains("malformed: FAILED"), "{}", run.stdout);
    // Shown, cleaned: the words are there, the escapes and breaks are not.
    for what in ["progress", "step", "error", "stderr"] {
        assert!(out.contains(what), "{what} not shown at all");
    }
    // A frame the parser refuses is not quoted at all (issue 11 item 7:
    // a protocol error never echoes the peer's bytes), only placed.
    assert!(
        run.stdout.contains("malformed want frame") && !out.contains("parser"),
        "{}",
        run.stdout
    );
    for bad in ['\u{1b}', '\u{7}', '\r', '\u{9b}'] {
        assert!(
            !out.contains(bad),
            "the output holds {bad:?}: {:?}",
            out.lines().find(|l| l.contains(bad)).unwrap_or("")
        );
    }
    let forged: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("FAKE"))
        .collect();
    assert!(
        forged.is_empty(),
        "forged lines: {:?}",
        &forged[..forged.len().min(3)]
    );
    // Bounded: two streams of at most 64 KiB each per session, plus the
    // report and error (each message cut to 1024 characters).
    assert!(total < 400 * 1024, "{total} bytes of output");
    assert!(
        out.contains("the rest is dropped"),
        "no notice that lines were dropped"
    );
}

/// Issue 11 item 5, over real OpenSSH: a receiver that greets and then
/// stalls (alive: SSH keepalives are answered) is disconnected at the
/// target's `session_timeout`, and `push` says so and exits 1.
#[test]
fn a_receiver_that_stalls_over_ssh_is_disconnected_at_the_session_deadline() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
    let npm = NpmHost::new(&leaf);
    // Greets, then neither writes nor exits until its stdin closes.
    let stalled = FakeReceiver::new(&[hello()], b"", Then::WaitForEof);
    let sshd = Sshd::builder()
        .authorized_key(&sshd::forced_line(
            &stalled.command_line(),
            &npm.key.public_line,
        ))
        .start();
    let kh = npm.known_hosts("known_hosts", &[sshd.known_hosts_line()]);
    npm.write_config(
        &npm.cert_source(),
        &[format!(
            "{}session_timeout = 2\n",
            ssh_target("stalled", sshd.host(), sshd.port(), &npm.key.private, &kh)
        )],
    );
    let run = npm.run(&["push"]);
    let out = run.both();
    eprintln!(
        "RESULT stalled SSH receiver: push exited {:?} after {:.3}s (session_timeout = 2)",
        run.code,
        run.elapsed.as_secs_f64()
    );
    assert_eq!(run.code, Some(1), "{out}");
    assert!(
        out.contains("did not finish the session within 2s"),
        "{out}"
    );
    assert!(run.elapsed < Duration::from_secs(10), "{out}");
    assert!(stalled.pid().is_some(), "the fake ran: {}", sshd.log());
    let start = std::time::Instant::now();
    while stalled.running() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the stalled receiver outlived its session"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
