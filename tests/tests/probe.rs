//! The TLS probe against servers that speak just enough SMTP, IMAP, POP3
//! and ManageSieve to start TLS (OpenSSL's own server side), and against
//! hostile servers that must end in a bounded error.
//!
//! The servers here are small on purpose: what is under test is the
//! probe's half of each dialogue, the SNI it sends and the limits it keeps.
//! Real nginx is probed in `docker_reload.rs`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_receive::systems::probe::{self, Endpoint, ProbeError, Protocol};
use openssl::ssl::{SslAcceptor, SslMethod};

const HOST: &str = "mail.example.com";

/// What a fake server saw of one connection.
#[derive(Debug, Default)]
struct Seen {
    commands: Vec<String>,
    sni: Option<String>,
}

fn acceptor(leaf: &TestLeaf, sni: Arc<Mutex<Option<String>>>) -> SslAcceptor {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_certificate(&leaf.cert).unwrap();
    b.set_private_key(&leaf.key).unwrap();
    b.set_servername_callback(move |ssl, _| {
        *sni.lock().unwrap() = ssl
            .servername(openssl::ssl::NameType::HOST_NAME)
            .map(str::to_string);
        Ok(())
    });
    b.build()
}

/// A server that accepts one connection, plays `protocol`'s server side up
/// to STARTTLS, then completes a TLS handshake with `leaf`.
fn starttls_server(protocol: Protocol, leaf: &TestLeaf) -> (u16, JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sni = Arc::new(Mutex::new(None));
    let acceptor = acceptor(leaf, sni.clone());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Seen::default();
        let read = |stream: &TcpStream, seen: &mut Seen| {
            // One byte at a time, so no TLS bytes are swallowed.
            let mut line = Vec::new();
            let mut r = stream;
            let mut b = [0u8; 1];
            while std::io::Read::read(&mut r, &mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            let s = String::from_utf8(line).unwrap().trim_end().to_string();
            seen.commands.push(s);
        };
        let say = |stream: &mut TcpStream, text: &str| stream.write_all(text.as_bytes()).unwrap();
        match protocol {
            Protocol::Smtp => {
                say(&mut stream, "220-mail.example.com ESMTP\r\n220 ready\r\n");
                read(&stream, &mut seen);
                say(
                    &mut stream,
                    "250-mail.example.com\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
                );
                read(&stream, &mut seen);
                say(&mut stream, "220 2.0.0 Ready to start TLS\r\n");
            }
            Protocol::Imap => {
                say(
                    &mut stream,
                    "* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
                );
                read(&stream, &mut seen);
                say(
                    &mut stream,
                    "* NOTE untagged first\r\na1 OK Begin TLS negotiation now\r\n",
                );
            }
            Protocol::Pop3 => {
                say(&mut stream, "+OK POP3 ready\r\n");
                read(&stream, &mut seen);
                say(&mut stream, "+OK Begin TLS\r\n");
            }
            Protocol::Sieve => {
                say(
                    &mut stream,
                    "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n\"SIEVE\" \"fileinto reject\"\r\n\"STARTTLS\"\r\nOK \"ready\"\r\n",
                );
                read(&stream, &mut seen);
                say(&mut stream, "OK \"Begin TLS negotiation now.\"\r\n");
            }
            Protocol::Tls => {}
        }
        let _tls = acceptor.accept(stream).unwrap();
        seen.sni = sni.lock().unwrap().clone();
        seen
    });
    (port, handle)
}

#[test]
fn starttls_dialogues_reach_the_served_leaf_with_sni() {
    let ca = TestCa::new();
    let cases = [
        (Protocol::Smtp, vec!["EHLO certsync.invalid", "STARTTLS"]),
        (Protocol::Imap, vec!["a1 STARTTLS"]),
        (Protocol::Pop3, vec!["STLS"]),
        (Protocol::Sieve, vec!["STARTTLS"]),
        (Protocol::Tls, vec![]),
    ];
    for (protocol, commands) in cases {
        let leaf = ca.leaf(KeyKind::P256, &[HOST]);
        let (port, server) = starttls_server(protocol, &leaf);
        let endpoint = Endpoint::parse(&format!("127.0.0.1:{port} {protocol}")).unwrap();
        let info = probe::served_leaf(&endpoint, HOST, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert_eq!(info.fingerprint, leaf.fingerprint(), "{protocol}");
        let seen = server.join().unwrap();
        assert_eq!(seen.commands, commands, "{protocol}");
        assert_eq!(seen.sni.as_deref(), Some(HOST), "{protocol}: SNI");
    }
}

#[test]
fn verify_accepts_the_expected_leaf_and_names_both_fingerprints_on_mismatch() {
    let ca = TestCa::new();
    let served = ca.leaf(KeyKind::Ed25519, &[HOST]);
    let installed = ca.leaf(KeyKind::P384, &[HOST]);

    let (port, server) = starttls_server(Protocol::Imap, &served);
    let endpoint = Endpoint::parse(&format!("127.0.0.1:{port} imap")).unwrap();
    let fp = probe::verify(
        &endpoint,
        HOST,
        served.fingerprint(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(fp, served.fingerprint());
    server.join().unwrap();

    // A server that keeps serving the old certificate, for every retry.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = acceptor(&served, Arc::new(Mutex::new(None)));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = acceptor.accept(stream);
        }
    });
    let endpoint = Endpoint::parse(&format!("127.0.0.1:{port}")).unwrap();
    let err = probe::verify(
        &endpoint,
        HOST,
        installed.fingerprint(),
        Duration::from_secs(2),
    )
    .unwrap_err();
    assert!(matches!(err, ProbeError::Mismatch(_)), "{err:?}");
    let msg = err.to_string();
    for needle in [
        served.fingerprint().to_string(),
        installed.fingerprint().to_string(),
        format!("127.0.0.1:{port}"),
        HOST.to_string(),
    ] {
        assert!(msg.contains(&needle), "{needle}: {msg}");
    }
}

/// A server that runs `talk` on each connection until the client hangs up.
fn hostile_server(talk: fn(&mut TcpStream) -> std::io::Result<()>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = talk(&mut stream);
        }
    });
    port
}

fn probe_smtp(port: u16, timeout: Duration) -> (ProbeError, Duration) {
    let endpoint = Endpoint::parse(&format!("127.0.0.1:{port} smtp")).unwrap();
    let t = Instant::now();
    let err = probe::served_leaf(&endpoint, HOST, timeout).unwrap_err();
    (err, t.elapsed())
}

#[test]
fn endless_reply_lines_end_in_a_bounded_error() {
    let port = hostile_server(|s| loop {
        s.write_all(b"220-still greeting you\r\n")?;
    });
    let (err, _) = probe_smtp(port, Duration::from_secs(10));
    let msg = err.to_string();
    assert!(matches!(err, ProbeError::Dialogue { .. }), "{err:?}");
    assert!(
        msg.contains(&format!("more than {} lines", probe::MAX_REPLY_LINES)),
        "{msg}"
    );
}

#[test]
fn an_endless_line_ends_in_a_bounded_error() {
    let port = hostile_server(|s| {
        s.write_all(b"220 ")?;
        loop {
            s.write_all(&[b'A'; 1024])?;
        }
    });
    let (err, _) = probe_smtp(port, Duration::from_secs(10));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("longer than {} bytes", probe::MAX_LINE)),
        "{msg}"
    );
}

#[test]
fn a_silent_or_trickling_server_times_out() {
    // Says nothing at all.
    let port = hostile_server(|s| {
        let mut buf = [0u8; 64];
        while std::io::Read::read(s, &mut buf)? > 0 {}
        Ok(())
    });
    let (err, took) = probe_smtp(port, Duration::from_secs(1));
    assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");

    // One byte every 100 ms: each read succeeds, only the deadline ends it.
    let port = hostile_server(|s| loop {
        s.write_all(b"2")?;
        std::thread::sleep(Duration::from_millis(100));
    });
    let (err, took) = probe_smtp(port, Duration::from_secs(1));
    assert!(
        matches!(
            err,
            ProbeError::Timeout { .. } | ProbeError::Dialogue { .. }
        ),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_refused_starttls_quotes_the_server() {
    let port = hostile_server(|s| {
        s.write_all(b"220 mail ESMTP\r\n")?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        s.write_all(b"250 mail\r\n")?;
        line.clear();
        r.read_line(&mut line)?;
        s.write_all(b"454 4.7.0 TLS not available due to local problem\r\n")?;
        Ok(())
    });
    let (err, _) = probe_smtp(port, Duration::from_secs(10));
    let msg = err.to_string();
    assert!(
        msg.contains("STARTTLS") && msg.contains("454 4.7.0 TLS not available"),
        "{msg}"
    );
}

#[test]
fn a_server_that_is_not_tls_fails_the_handshake() {
    let port = hostile_server(|s| {
        s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n")?;
        Ok(())
    });
    let endpoint = Endpoint::parse(&format!("127.0.0.1:{port}")).unwrap();
    let err = probe::served_leaf(&endpoint, HOST, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, ProbeError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains(HOST), "{err}");
}
