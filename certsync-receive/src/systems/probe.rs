//! Step 7: which certificate is served on the wire?
//!
//! A probe connects to an endpoint such as `127.0.0.1:25 smtp`, speaks just
//! enough of the protocol to start TLS (STARTTLS for SMTP, IMAP, POP3 and
//! ManageSieve; implicit TLS otherwise), sends SNI = the hostname (or no
//! SNI, as old clients do: [`served_leaf_with`]), and returns the leaf the
//! server presented. An endpoint marked `proxy` (`"127.0.0.1:443 https
//! proxy"`) first sends a PROXY protocol v1 header naming the probe's own
//! connection, for an nginx that expects one (mailcow's
//! `NGINX_USE_PROXY_PROTOCOL=y`). It does not verify the chain: the
//! point is to compare the served leaf's SHA-256 fingerprint with the one
//! just installed, which is a stronger statement than "some valid
//! certificate" and works on a host that cannot resolve its own name.
//!
//! Invariants:
//! - The server is hostile input. Every reply line is at most
//!   [`MAX_LINE`] bytes, every reply at most [`MAX_REPLY_LINES`] lines, and
//!   the whole probe (connect, dialogue, handshake) ends by its deadline.
//!   Server text quoted in an error is printable and short.
//! - Blocking std sockets: callers in async code use `spawn_blocking`.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use certsync_core::bundle::CertInfo;
use certsync_core::Fingerprint;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

/// Longest reply line accepted from a server (RFC 5321 allows 512; IMAP
/// capability lines run longer).
pub const MAX_LINE: usize = 4096;
/// Most lines accepted in one reply before STARTTLS completes.
pub const MAX_REPLY_LINES: usize = 64;
/// How long one probe may take in [`verify`] (connect to handshake).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts in [`verify`] while daemons reload.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The name the probe gives in SMTP's EHLO.
const EHLO_NAME: &str = "certsync.invalid";

/// How TLS starts on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// SMTP with STARTTLS (RFC 3207): ports 25 and 587.
    Smtp,
    /// IMAP with STARTTLS (RFC 3501): port 143.
    Imap,
    /// POP3 with STLS (RFC 2595): port 110.
    Pop3,
    /// ManageSieve with STARTTLS (RFC 5804): port 4190.
    Sieve,
    /// TLS from the first byte: 465, 993, 995, 443 and everything else.
    Tls,
}

impl Protocol {
    /// The protocol a port speaks by convention.
    pub fn for_port(port: u16) -> Protocol {
        match port {
            25 | 587 => Protocol::Smtp,
            143 => Protocol::Imap,
            110 => Protocol::Pop3,
            4190 => Protocol::Sieve,
            _ => Protocol::Tls,
        }
    }

    fn from_word(word: &str) -> Option<Protocol> {
        Some(match word.to_ascii_lowercase().as_str() {
            "smtp" | "submission" => Protocol::Smtp,
            "imap" => Protocol::Imap,
            "pop3" => Protocol::Pop3,
            "sieve" | "managesieve" => Protocol::Sieve,
            "tls" | "https" | "smtps" | "submissions" | "imaps" | "pop3s" => Protocol::Tls,
            _ => return None,
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Sieve => "sieve",
            Protocol::Tls => "tls",
        })
    }
}

/// Where to probe: `host:port` and how TLS starts there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// A host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Send a PROXY protocol v1 header before anything else.
    pub proxy: bool,
    /// The endpoint's own name, shown in every message about it: the
    /// protocol word as configured (`submission`, `imaps`), lowercased,
    /// or the protocol's name when none was written. A success and a
    /// failure on the same endpoint thus name it alike.
    pub name: String,
}

impl Endpoint {
    /// Parse `"127.0.0.1:25 smtp"`, `"127.0.0.1:993"`, `"[::1]:443 https"`,
    /// `"mail.example.com:587 submission"`, `"127.0.0.1:443 https proxy"`.
    /// Without a protocol word the port decides ([`Protocol::for_port`]); a
    /// last word `proxy` sends a PROXY v1 header first.
    pub fn parse(text: &str) -> Result<Endpoint, ProbeError> {
        let bad = |reason: &str| ProbeError::BadEndpoint {
            text: printable(text.as_bytes(), 80),
            reason: reason.to_string(),
        };
        let mut words: Vec<&str> = text.split_whitespace().collect();
        let proxy = words.len() > 1 && words.last() == Some(&"proxy");
        if proxy {
            words.pop();
        }
        let mut words = words.into_iter();
        let addr = words.next().ok_or_else(|| bad("it is empty"))?;
        let protocol_word = words.next();
        if words.next().is_some() {
            return Err(bad("expected at most two words before `proxy`"));
        }
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("the port is missing after `]`"))?;
            (host, port)
        } else {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| bad("the port is missing"))?;
            if host.contains(':') {
                return Err(bad("write an IPv6 address in brackets: [::1]:443"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        let (protocol, name) = match protocol_word {
            None => {
                let protocol = Protocol::for_port(port);
                (protocol, protocol.to_string())
            }
            Some(word) => (
                Protocol::from_word(word).ok_or_else(|| {
                    bad("the protocol is not one of smtp, imap, pop3, sieve, tls")
                })?,
                word.to_ascii_lowercase(),
            ),
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
            protocol,
            proxy,
            name,
        })
    }
}

impl FromStr for Endpoint {
    type Err = ProbeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    /// The form [`Endpoint::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{} {}", self.host, self.port, self.name)?;
        } else {
            write!(f, "{}:{} {}", self.host, self.port, self.name)?;
        }
        if self.proxy {
            f.write_str(" proxy")?;
        }
        Ok(())
    }
}

/// Why a probe did not return the served certificate, or returned the
/// wrong one.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("verify endpoint {text:?}: {reason}; write it as HOST:PORT [smtp|imap|pop3|sieve|tls] [proxy], e.g. \"127.0.0.1:25 smtp\" or \"[::1]:993\"")]
    BadEndpoint { text: String, reason: String },
    #[error("{endpoint}: cannot resolve the host: {source}")]
    Resolve {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint}: cannot connect: {source}; is the service running and listening there?")]
    Connect {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint}: timed out {stage}; is the service overloaded, or is this the wrong port or protocol?")]
    Timeout {
        endpoint: Endpoint,
        stage: &'static str,
    },
    #[error("{endpoint}: {message}")]
    Dialogue { endpoint: Endpoint, message: String },
    #[error("{endpoint}: TLS handshake with {sni} failed: {message}")]
    Tls {
        endpoint: Endpoint,
        sni: String,
        message: String,
    },
    #[error("{endpoint}: the server sent no certificate")]
    NoCertificate { endpoint: Endpoint },
    #[error(transparent)]
    Mismatch(Box<Mismatch>),
}

/// The endpoint serves another certificate than the installed one.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint} ({sni}) serves certificate {served} ({subject}), not the installed {expected}: the daemon behind it has not re-read the certificate (did its reload run?) or reads another file")]
pub struct Mismatch {
    pub endpoint: Endpoint,
    /// `SNI mail.example.com` or `no SNI`.
    pub sni: String,
    pub expected: Fingerprint,
    pub served: Fingerprint,
    /// The served leaf's subject, to tell an old cert from a foreign one.
    pub subject: String,
}

/// The leaf certificate `endpoint` presents for `sni`, within `timeout`.
pub fn served_leaf(
    endpoint: &Endpoint,
    sni: &str,
    timeout: Duration,
) -> Result<CertInfo, ProbeError> {
    served_leaf_with(endpoint, Some(sni), timeout)
}

/// How an SNI choice reads in messages: `SNI mail.example.com`, `no SNI`.
pub fn sni_label(sni: Option<&str>) -> String {
    match sni {
        Some(name) => format!("SNI {name}"),
        None => "no SNI".into(),
    }
}

/// The leaf certificate `endpoint` presents for `sni`, or to a client that
/// sends no SNI (`None`), within `timeout`.
pub fn served_leaf_with(
    endpoint: &Endpoint,
    sni: Option<&str>,
    timeout: Duration,
) -> Result<CertInfo, ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(endpoint, deadline)?;
    if endpoint.proxy {
        send_proxy_header(&mut stream, endpoint, deadline)?;
    }
    starttls(&mut stream, endpoint, deadline)?;
    set_timeouts(&stream, endpoint, deadline, "before the TLS handshake")?;
    let tls_error = |message: String| ProbeError::Tls {
        endpoint: endpoint.clone(),
        sni: sni_label(sni),
        message,
    };
    let mut builder =
        SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls_error(e.to_string()))?;
    // No chain verification on purpose: the fingerprint comparison is the
    // check, and it must also work for a certificate this host's trust
    // store does not know.
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    let config = connector
        .configure()
        .map_err(|e| tls_error(e.to_string()))?
        .verify_hostname(false)
        .use_server_name_indication(sni.is_some());
    // Without SNI the name is not sent anywhere (hostname checks are off).
    let tls = config
        .connect(sni.unwrap_or("localhost"), stream)
        .map_err(|e| {
            if Instant::now() >= deadline {
                ProbeError::Timeout {
                    endpoint: endpoint.clone(),
                    stage: "in the TLS handshake",
                }
            } else {
                tls_error(printable(e.to_string().as_bytes(), 200))
            }
        })?;
    let leaf = tls
        .ssl()
        .peer_certificate()
        .ok_or_else(|| ProbeError::NoCertificate {
            endpoint: endpoint.clone(),
        })?;
    Ok(CertInfo::of(&leaf))
}

/// Probe `endpoint` until it serves `expected` or `retry_for` has passed
/// (daemons take a moment to reload). Returns the served fingerprint, or
/// the last error: a [`ProbeError::Mismatch`] names both fingerprints.
pub fn verify(
    endpoint: &Endpoint,
    sni: &str,
    expected: Fingerprint,
    retry_for: Duration,
) -> Result<Fingerprint, ProbeError> {
    verify_with(endpoint, Some(sni), expected, retry_for)
}

/// [`verify`] for a client that sends `sni`, or no SNI at all (`None`).
pub fn verify_with(
    endpoint: &Endpoint,
    sni: Option<&str>,
    expected: Fingerprint,
    retry_for: Duration,
) -> Result<Fingerprint, ProbeError> {
    let deadline = Instant::now() + retry_for;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = served_leaf_with(
            endpoint,
            sni,
            PROBE_TIMEOUT.min(left.max(Duration::from_secs(1))),
        );
        let err = match result {
            Ok(info) if info.fingerprint == expected => return Ok(info.fingerprint),
            Ok(info) => ProbeError::Mismatch(Box::new(Mismatch {
                endpoint: endpoint.clone(),
                sni: sni_label(sni),
                expected,
                served: info.fingerprint,
                subject: info.subject,
            })),
            // A wrong endpoint does not get better by waiting.
            Err(e @ ProbeError::BadEndpoint { .. }) => return Err(e),
            Err(e) => e,
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(err);
        }
        tracing::debug!(%endpoint, "probe: {err}; retrying");
        std::thread::sleep(RETRY_PAUSE);
    }
}

fn remaining(
    endpoint: &Endpoint,
    deadline: Instant,
    stage: &'static str,
) -> Result<Duration, ProbeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ProbeError::Timeout {
            endpoint: endpoint.clone(),
            stage,
        });
    }
    Ok(left)
}

fn set_timeouts(
    stream: &TcpStream,
    endpoint: &Endpoint,
    deadline: Instant,
    stage: &'static str,
) -> Result<(), ProbeError> {
    let left = remaining(endpoint, deadline, stage)?;
    let io = |source| ProbeError::Connect {
        endpoint: endpoint.clone(),
        source,
    };
    stream.set_read_timeout(Some(left)).map_err(io)?;
    stream.set_write_timeout(Some(left)).map_err(io)
}

fn connect(endpoint: &Endpoint, deadline: Instant) -> Result<TcpStream, ProbeError> {
    // Resolution of a name uses the system resolver, which has its own
    // timeouts; endpoints are normally loopback addresses.
    let addrs: Vec<SocketAddr> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|source| ProbeError::Resolve {
            endpoint: endpoint.clone(),
            source,
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    for addr in addrs {
        let left = remaining(endpoint, deadline, "connecting")?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProbeError::Timeout {
                    endpoint: endpoint.clone(),
                    stage: "connecting",
                })
            }
            Err(e) => last = e,
        }
    }
    Err(ProbeError::Connect {
        endpoint: endpoint.clone(),
        source: last,
    })
}

/// PROXY protocol v1 (haproxy's proxy-protocol.txt, section 2.1): one
/// line naming the connection's source and destination, before the
/// protocol itself. The probe names its own connection, so the server
/// logs the truth.
fn send_proxy_header(
    stream: &mut TcpStream,
    endpoint: &Endpoint,
    deadline: Instant,
) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Connect {
        endpoint: endpoint.clone(),
        source,
    };
    let local = stream.local_addr().map_err(io)?;
    let peer = stream.peer_addr().map_err(io)?;
    let family = if local.is_ipv4() { "TCP4" } else { "TCP6" };
    let header = format!(
        "PROXY {family} {} {} {} {}\r\n",
        local.ip(),
        peer.ip(),
        local.port(),
        peer.port()
    );
    set_timeouts(stream, endpoint, deadline, "sending the PROXY header")?;
    stream
        .write_all(header.as_bytes())
        .map_err(|e| io_error(endpoint, e, "sending the PROXY header"))
}

/// The line-based part of a STARTTLS dialogue, bounded in every
/// dimension. Reads byte by byte so that nothing after the server's last
/// line is consumed: the TLS handshake starts right after it.
struct Dialogue<'a> {
    stream: &'a mut TcpStream,
    endpoint: &'a Endpoint,
    deadline: Instant,
}

impl Dialogue<'_> {
    fn fail(&self, message: String) -> ProbeError {
        ProbeError::Dialogue {
            endpoint: self.endpoint.clone(),
            message,
        }
    }

    fn send(&mut self, line: &str) -> Result<(), ProbeError> {
        set_timeouts(
            self.stream,
            self.endpoint,
            self.deadline,
            "sending a command",
        )?;
        let endpoint = self.endpoint;
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| io_error(endpoint, e, "sending a command"))
    }

    fn line(&mut self) -> Result<String, ProbeError> {
        let mut line = Vec::with_capacity(128);
        let mut byte = [0u8; 1];
        loop {
            set_timeouts(
                self.stream,
                self.endpoint,
                self.deadline,
                "waiting for the server",
            )?;
            match self.stream.read(&mut byte) {
                Ok(0) => {
                    return Err(self.fail(format!(
                        "the server closed the connection during the {} dialogue{}",
                        self.endpoint.protocol,
                        last_words(&line)
                    )))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(self.endpoint, e, "waiting for the server")),
            }
            if byte[0] == b'\n' {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if line.len() >= MAX_LINE {
                return Err(self.fail(format!(
                    "the server sent a line longer than {MAX_LINE} bytes in the {} dialogue; is this a {} server?",
                    self.endpoint.protocol, self.endpoint.protocol
                )));
            }
            line.push(byte[0]);
        }
    }

    /// Read lines until `done` says the reply is complete; returns that
    /// last line.
    fn reply(&mut self, what: &str, done: impl Fn(&str) -> bool) -> Result<String, ProbeError> {
        for _ in 0..MAX_REPLY_LINES {
            let line = self.line()?;
            if done(&line) {
                return Ok(line);
            }
        }
        Err(self.fail(format!(
            "the server sent more than {MAX_REPLY_LINES} lines without completing its {what}"
        )))
    }

    fn expect(&self, line: &str, ok: bool, what: &str) -> Result<(), ProbeError> {
        if ok {
            return Ok(());
        }
        Err(self.fail(format!(
            "{what} was refused: the server said {}",
            printable(line.as_bytes(), 120)
        )))
    }
}

fn io_error(endpoint: &Endpoint, e: std::io::Error, stage: &'static str) -> ProbeError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ProbeError::Timeout {
            endpoint: endpoint.clone(),
            stage,
        },
        _ => ProbeError::Dialogue {
            endpoint: endpoint.clone(),
            message: format!("{stage}: {e}"),
        },
    }
}

fn last_words(partial: &[u8]) -> String {
    if partial.is_empty() {
        String::new()
    } else {
        format!(" after {}", printable(partial, 80))
    }
}

/// Speak the protocol up to the point where TLS starts.
fn starttls(
    stream: &mut TcpStream,
    endpoint: &Endpoint,
    deadline: Instant,
) -> Result<(), ProbeError> {
    let mut d = Dialogue {
        stream,
        endpoint,
        deadline,
    };
    // SMTP multi-line replies are `250-…` lines ended by `250 …`.
    let smtp_end = |l: &str| l.len() < 4 || l.as_bytes()[3] != b'-';
    match endpoint.protocol {
        Protocol::Tls => Ok(()),
        Protocol::Smtp => {
            let greeting = d.reply("greeting", smtp_end)?;
            d.expect(&greeting, greeting.starts_with("220"), "the SMTP session")?;
            d.send(&format!("EHLO {EHLO_NAME}"))?;
            let ehlo = d.reply("EHLO reply", smtp_end)?;
            d.expect(&ehlo, ehlo.starts_with("250"), "EHLO")?;
            d.send("STARTTLS")?;
            let reply = d.reply("STARTTLS reply", smtp_end)?;
            d.expect(&reply, reply.starts_with("220"), "STARTTLS")
        }
        Protocol::Imap => {
            let greeting = d.line()?;
            d.expect(&greeting, greeting.starts_with("* OK"), "the IMAP session")?;
            d.send("a1 STARTTLS")?;
            // Untagged lines may come first; the tagged one ends the reply.
            let reply = d.reply("STARTTLS reply", |l| l.starts_with("a1 "))?;
            d.expect(&reply, reply.starts_with("a1 OK"), "STARTTLS")
        }
        Protocol::Pop3 => {
            let greeting = d.line()?;
            d.expect(&greeting, greeting.starts_with("+OK"), "the POP3 session")?;
            d.send("STLS")?;
            let reply = d.line()?;
            d.expect(&reply, reply.starts_with("+OK"), "STLS")
        }
        Protocol::Sieve => {
            // The greeting is the capability list, ended by OK (or NO/BYE).
            let sieve_end = |l: &str| {
                let upper = l.to_ascii_uppercase();
                upper.starts_with("OK") || upper.starts_with("NO") || upper.starts_with("BYE")
            };
            let greeting = d.reply("capability list", sieve_end)?;
            d.expect(
                &greeting,
                greeting.to_ascii_uppercase().starts_with("OK"),
                "the ManageSieve session",
            )?;
            d.send("STARTTLS")?;
            let reply = d.reply("STARTTLS reply", sieve_end)?;
            d.expect(
                &reply,
                reply.to_ascii_uppercase().starts_with("OK"),
                "STARTTLS",
            )
        }
    }
}

/// Server text fit for an error message: printable ASCII, at most `max`
/// characters, quoted.
fn printable(bytes: &[u8], max: usize) -> String {
    let mut s: String = bytes
        .iter()
        .take(max)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    if bytes.len() > max {
        s.push('…');
    }
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_protocols_from_ports() {
        let cases = [
            ("127.0.0.1:25 smtp", "127.0.0.1", 25, Protocol::Smtp),
            ("127.0.0.1:25", "127.0.0.1", 25, Protocol::Smtp),
            ("127.0.0.1:587", "127.0.0.1", 587, Protocol::Smtp),
            ("127.0.0.1:143", "127.0.0.1", 143, Protocol::Imap),
            ("127.0.0.1:110", "127.0.0.1", 110, Protocol::Pop3),
            ("127.0.0.1:4190", "127.0.0.1", 4190, Protocol::Sieve),
            ("127.0.0.1:993", "127.0.0.1", 993, Protocol::Tls),
            ("127.0.0.1:465", "127.0.0.1", 465, Protocol::Tls),
            ("127.0.0.1:995", "127.0.0.1", 995, Protocol::Tls),
            ("[::1]:443 https", "::1", 443, Protocol::Tls),
            (
                "  mail.example.com:2525   SMTP ",
                "mail.example.com",
                2525,
                Protocol::Smtp,
            ),
            ("127.0.0.1:8443", "127.0.0.1", 8443, Protocol::Tls),
            ("127.0.0.1:25 tls", "127.0.0.1", 25, Protocol::Tls),
        ];
        for (text, host, port, protocol) in cases {
            let e = Endpoint::parse(text).unwrap();
            assert!(!e.proxy, "{text}");
            assert_eq!(
                (e.host.as_str(), e.port, e.protocol),
                (host, port, protocol),
                "{text}"
            );
            assert_eq!(Endpoint::parse(&e.to_string()).unwrap(), e, "{text}");
        }
    }

    /// A failure names the endpoint as its success does: by the word the
    /// operator wrote (port 587 is `submission`, not `smtp`).
    #[test]
    fn an_endpoint_keeps_its_own_name() {
        for (text, shown) in [
            ("127.0.0.1:587 submission", "127.0.0.1:587 submission"),
            ("127.0.0.1:993 IMAPS", "127.0.0.1:993 imaps"),
            ("127.0.0.1:465 smtps proxy", "127.0.0.1:465 smtps proxy"),
            ("127.0.0.1:993", "127.0.0.1:993 tls"),
            ("[::1]:25", "[::1]:25 smtp"),
        ] {
            let e = Endpoint::parse(text).unwrap();
            assert_eq!(e.to_string(), shown, "{text}");
        }
        let e = Endpoint::parse("127.0.0.1:1 submission").unwrap();
        let err = served_leaf(&e, "mail.example.com", Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string().starts_with("127.0.0.1:1 submission: "),
            "{err}"
        );
    }

    #[test]
    fn a_last_word_proxy_asks_for_a_proxy_header() {
        for (text, protocol) in [
            ("127.0.0.1:8443 https proxy", Protocol::Tls),
            ("127.0.0.1:443 proxy", Protocol::Tls),
            ("[::1]:25 smtp proxy", Protocol::Smtp),
        ] {
            let e = Endpoint::parse(text).unwrap();
            assert!(e.proxy, "{text}");
            assert_eq!(e.protocol, protocol, "{text}");
            assert_eq!(Endpoint::parse(&e.to_string()).unwrap(), e, "{text}");
        }
        assert!(Endpoint::parse("127.0.0.1:443 https proxy x").is_err());
        assert!(Endpoint::parse("proxy").is_err());
    }

    #[test]
    fn the_proxy_header_names_the_probes_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                s.read_exact(&mut b).unwrap();
                line.push(b[0]);
            }
            (String::from_utf8(line).unwrap(), peer.port())
        });
        let e = Endpoint::parse(&format!("127.0.0.1:{port} tls proxy")).unwrap();
        // The server closes after the header: the handshake fails, the
        // header was sent first.
        let _ = served_leaf_with(&e, None, Duration::from_secs(2));
        let (line, client_port) = server.join().unwrap();
        assert_eq!(
            line,
            format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n")
        );
    }

    #[test]
    fn bad_endpoints_say_how_to_write_one() {
        for text in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "::1:443",
            "[::1:443",
            "[::1]443",
            ":25",
            "127.0.0.1:25 gopher",
            "127.0.0.1:25 smtp extra",
        ] {
            let err = Endpoint::parse(text).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("HOST:PORT"), "{text}: {msg}");
        }
    }

    #[test]
    fn printable_strips_control_bytes_and_bounds_length() {
        assert_eq!(printable(b"220 ok\x1b[0m", 80), "\"220 ok?[0m\"");
        assert_eq!(printable(&[b'a'; 10], 4), "\"aaaa…\"");
    }

    #[test]
    fn nothing_listening_is_a_connect_error_naming_the_endpoint() {
        // Bind then drop, so the port is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = Endpoint::parse(&format!("127.0.0.1:{port}")).unwrap();
        let err = served_leaf(&e, "mail.example.com", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
