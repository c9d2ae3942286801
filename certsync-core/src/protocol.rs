//! The wire protocol v1, spoken over the SSH exec channel (or a local pipe)
//! (docs/contract.md "Protocol v1" lists the frames and bounds as a
//! contract).
//!
//! ```text
//! pusher                                   receiver
//!   Hello {version, dry_run, force}  ──►
//!                                    ◄──   Hello {version}
//!   Offer {name, leaf, chain/key sha256}…►
//!                                    ◄──   Want {per name: send | have | unknown}
//!   Bundle {name, chain, key} (only for "send")  ──►
//!   Done                             ──►
//!     (in a dry run the pusher may send Done without the bundles:
//!      `status` compares fingerprints and sends no key material)
//!                                    ◄──   Log … (progress lines, optional)
//!                                    ◄──   Report {per cert, per step}
//! ```
//!
//! Fingerprints are offered before any key material is sent, so an
//! unchanged certificate costs one round trip and no secret crosses the
//! wire. Either side may send `Error` instead of its next message.
//!
//! A frame is `tag: u8, len: u32 (big endian), payload`. The length is
//! checked against the tag's limit *before* anything is allocated, the
//! number of frames per session is bounded, and each frame (header and
//! body together) must arrive within [`Limits::frame_timeout`]. Control
//! messages are JSON; the bundle is binary (`name_len: u8, name,
//! chain_len: u32, chain, key_len: u32, key`), read into memory that is
//! zeroed on drop.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::bundle::{Bundle, SecretBytes};
use crate::exit::ExitCode;
use crate::fingerprint::Fingerprint;
use crate::report::Report;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Sent in both hellos, so a stray program on the other end is recognised.
pub const MAGIC: &str = "certsync";

/// Largest JSON control frame.
pub const MAX_JSON_FRAME: usize = 64 * 1024;
/// Largest full chain accepted (Let's Encrypt chains are 3–6 KiB).
pub const MAX_CHAIN_BYTES: usize = 128 * 1024;
/// Largest private key accepted (an RSA-8192 PEM is about 6.5 KiB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;
/// Most frames one session may carry.
pub const MAX_FRAMES: usize = 256;
/// Most certificates in one offer.
pub const MAX_CERTS: usize = 32;
/// Longest certificate name on the wire.
pub const MAX_NAME_LEN: usize = 64;
/// How long one frame may take to arrive.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds a [`Reader`] enforces. Defaults are the constants above;
/// tests shorten the timeout.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_json: usize,
    pub max_chain: usize,
    pub max_key: usize,
    pub max_frames: usize,
    pub max_certs: usize,
    pub frame_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json: MAX_JSON_FRAME,
            max_chain: MAX_CHAIN_BYTES,
            max_key: MAX_KEY_BYTES,
            max_frames: MAX_FRAMES,
            max_certs: MAX_CERTS,
            frame_timeout: FRAME_TIMEOUT,
        }
    }
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const WANT: u8 = 3;
    pub const BUNDLE: u8 = 4;
    pub const DONE: u8 = 5;
    pub const LOG: u8 = 6;
    pub const REPORT: u8 = 7;
    pub const ERROR: u8 = 8;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub magic: String,
    pub version: u32,
    /// `certsync-push 0.1.0`, for logs.
    pub agent: String,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub force: bool,
}

impl Hello {
    pub fn new(agent: &str, dry_run: bool, force: bool) -> Hello {
        Hello {
            magic: MAGIC.to_string(),
            version: VERSION,
            agent: agent.to_string(),
            dry_run,
            force,
        }
    }

    /// Check that the peer speaks certsync v1.
    pub fn check(&self) -> Result<(), ProtocolError> {
        if self.magic != MAGIC {
            // The peer's magic is not shown: it is input (see
            // [`ProtocolError`]).
            return Err(ProtocolError::NotCertsync(format!(
                "the hello's magic is not {MAGIC:?}"
            )));
        }
        if self.version != VERSION {
            return Err(ProtocolError::Version {
                theirs: self.version,
            });
        }
        Ok(())
    }

    /// The peer's agent for a log line: `certsync-push 1.2.3` as sent when
    /// it is exactly a certsync binary and a version, else only its length.
    /// The agent is the peer's free text; logging it raw would let a peer
    /// write anything, newlines and secrets included, into our log.
    pub fn agent_for_log(&self) -> String {
        let known = ["certsync-push ", "certsync-receive "]
            .iter()
            .find_map(|p| self.agent.strip_prefix(p))
            .is_some_and(|v| {
                !v.is_empty()
                    && v.len() <= 32
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
            });
        if known {
            self.agent.clone()
        } else {
            format!(
                "an unrecognised agent ({} bytes, not shown)",
                self.agent.len()
            )
        }
    }
}

/// One certificate the pusher has, described without key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferedCert {
    pub name: String,
    /// Fingerprint of the leaf certificate.
    pub leaf: Fingerprint,
    /// SHA-256 of the full-chain bytes.
    pub chain_sha256: Fingerprint,
    /// SHA-256 of the key bytes.
    pub key_sha256: Fingerprint,
    /// The leaf's notAfter (Unix seconds), for logs, and for the
    /// receiver's judgement of an offer-only dry run.
    pub not_after: i64,
    /// The leaf's DNS names, sent only by an offer-only dry run
    /// (`certsync-push status`), so that the receiver can say whether it
    /// would refuse the pair without receiving it. Absent when empty.
    /// Input: the receiver uses at most [`MAX_OFFER_SANS`] of them, each
    /// only compared with its configured hostnames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
}

/// Most `sans` of one offered certificate the receiver looks at (a
/// certificate from Let's Encrypt has at most 100).
pub const MAX_OFFER_SANS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    pub certs: Vec<OfferedCert>,
}

/// The receiver's answer for one offered name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wanted {
    /// Send the pair.
    Send,
    /// Already installed: nothing to do.
    Have,
    /// The receiver's config has no `[[cert]]` of that name.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub name: String,
    pub wanted: Wanted,
    pub message: String,
    /// The leaf installed on the receiver now, if any (for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<Fingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Want {
    pub certs: Vec<Decision>,
}

/// A fatal error from the other side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireError {
    pub message: String,
    pub exit: ExitCode,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Offer(Offer),
    Want(Want),
    Bundle {
        name: String,
        bundle: Bundle,
    },
    Done,
    /// A progress line from the receiver ("waiting for the lock …").
    Log(String),
    Report(Report),
    Error(WireError),
}

impl Message {
    /// The message's kind, for errors ("expected offer, got bundle").
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Offer(_) => "offer",
            Message::Want(_) => "want",
            Message::Bundle { .. } => "bundle",
            Message::Done => "done",
            Message::Log(_) => "log",
            Message::Report(_) => "report",
            Message::Error(_) => "error",
        }
    }
}

/// What went wrong on the wire. No variant holds the peer's bytes beyond
/// a frame tag or a length: whatever a peer sends is data, and a message
/// that echoed it could carry key material into a log or a report.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the connection closed before the {0} message")]
    Closed(&'static str),
    #[error("the input ended in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("no data for {0:?}: the peer stalled")]
    Timeout(Duration),
    #[error("a {kind} frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("more than {0} frames in one session")]
    TooManyFrames(usize),
    #[error("more than {0} certificates in one offer")]
    TooManyCerts(usize),
    #[error("this is not the certsync protocol ({0}); is the forced command certsync-receive?")]
    NotCertsync(String),
    #[error("the peer speaks protocol version {theirs}, this build speaks {VERSION}; upgrade the older side")]
    Version { theirs: u32 },
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("an invalid certificate name of {0} bytes on the wire (1–64 of A–Z a–z 0–9 . _ -)")]
    BadName(usize),
    #[error("protocol error: expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("I/O error on the protocol stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Is `name` acceptable as a certificate name on the wire? Names are only
/// ever looked up in config, never used as paths, but keep them boring.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != ".."
}

fn json_frame<T: Serialize>(tag: u8, value: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = serde_json::to_vec(value).map_err(|e| ProtocolError::Malformed {
        kind: "outgoing",
        reason: e.to_string(),
    })?;
    Ok(frame(tag, &body))
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Encode one message as a frame. The returned buffer holds key material
/// for a bundle and is zeroed on drop.
pub fn encode(msg: &Message) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    let bytes = match msg {
        Message::Hello(h) => json_frame(tag::HELLO, h)?,
        Message::Offer(o) => json_frame(tag::OFFER, o)?,
        Message::Want(w) => json_frame(tag::WANT, w)?,
        Message::Done => frame(tag::DONE, &[]),
        Message::Log(line) => json_frame(tag::LOG, line)?,
        Message::Report(r) => json_frame(tag::REPORT, r)?,
        Message::Error(e) => json_frame(tag::ERROR, e)?,
        Message::Bundle { name, bundle } => {
            if !valid_name(name) {
                return Err(ProtocolError::BadName(name.len()));
            }
            let key = bundle.key.expose();
            let mut body = Zeroizing::new(Vec::with_capacity(
                9 + name.len() + bundle.chain.len() + key.len(),
            ));
            body.push(name.len() as u8);
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(&(bundle.chain.len() as u32).to_be_bytes());
            body.extend_from_slice(&bundle.chain);
            body.extend_from_slice(&(key.len() as u32).to_be_bytes());
            body.extend_from_slice(key);
            let mut out = Zeroizing::new(Vec::with_capacity(5 + body.len()));
            out.push(tag::BUNDLE);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
            return Ok(out);
        }
    };
    Ok(Zeroizing::new(bytes))
}

/// Write one message and flush.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<(), ProtocolError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads messages with every limit of [`Limits`] enforced.
pub struct Reader<R> {
    inner: R,
    limits: Limits,
    frames: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R, limits: Limits) -> Reader<R> {
        Reader {
            inner,
            limits,
            frames: 0,
        }
    }

    /// Read exactly `buf.len()` bytes by `deadline`, the frame's.
    async fn fill(
        &mut self,
        buf: &mut [u8],
        deadline: tokio::time::Instant,
        at_boundary: bool,
        expected: &'static str,
    ) -> Result<(), ProtocolError> {
        let want = buf.len();
        let mut got = 0;
        while got < want {
            let n = match tokio::time::timeout_at(deadline, self.inner.read(&mut buf[got..])).await
            {
                Ok(r) => r?,
                Err(_) => return Err(ProtocolError::Timeout(self.limits.frame_timeout)),
            };
            if n == 0 {
                if got == 0 && at_boundary {
                    return Err(ProtocolError::Closed(expected));
                }
                return Err(ProtocolError::Truncated { got, want });
            }
            got += n;
        }
        Ok(())
    }

    /// Read the next message. `expected` names what the caller waits for,
    /// for the error when the stream ends.
    pub async fn next(&mut self, expected: &'static str) -> Result<Message, ProtocolError> {
        if self.frames >= self.limits.max_frames {
            return Err(ProtocolError::TooManyFrames(self.limits.max_frames));
        }
        // One deadline for the whole frame, header and body: a peer that
        // drips bytes cannot stretch a frame past `frame_timeout`.
        let deadline = tokio::time::Instant::now() + self.limits.frame_timeout;
        let mut header = [0u8; 5];
        self.fill(&mut header[..1], deadline, true, expected)
            .await?;
        self.fill(&mut header[1..], deadline, false, expected)
            .await?;
        let first = self.frames == 0;
        self.frames += 1;
        let tag = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let (kind, max) = match tag {
            tag::HELLO => ("hello", self.limits.max_json),
            tag::OFFER => ("offer", self.limits.max_json),
            tag::WANT => ("want", self.limits.max_json),
            tag::DONE => ("done", 0),
            tag::LOG => ("log", self.limits.max_json),
            tag::REPORT => ("report", self.limits.max_json),
            tag::ERROR => ("error", self.limits.max_json),
            tag::BUNDLE => (
                "bundle",
                1 + MAX_NAME_LEN + 8 + self.limits.max_chain + self.limits.max_key,
            ),
            other if first => {
                return Err(ProtocolError::NotCertsync(format!(
                    "first byte 0x{other:02x}"
                )));
            }
            other => {
                return Err(ProtocolError::Malformed {
                    kind: "unknown",
                    reason: format!("unknown frame tag 0x{other:02x}"),
                })
            }
        };
        if len > max {
            return Err(ProtocolError::Oversized { kind, len, max });
        }
        let mut body = Zeroizing::new(vec![0u8; len]);
        self.fill(&mut body, deadline, false, expected).await?;
        match tag {
            tag::HELLO => Ok(Message::Hello(parse_json(kind, &body)?)),
            tag::OFFER => {
                let offer: Offer = parse_json(kind, &body)?;
                if offer.certs.len() > self.limits.max_certs {
                    return Err(ProtocolError::TooManyCerts(self.limits.max_certs));
                }
                if let Some(bad) = offer.certs.iter().find(|c| !valid_name(&c.name)) {
                    return Err(ProtocolError::BadName(bad.name.len()));
                }
                Ok(Message::Offer(offer))
            }
            tag::WANT => Ok(Message::Want(parse_json(kind, &body)?)),
            tag::DONE => Ok(Message::Done),
            tag::LOG => Ok(Message::Log(parse_json(kind, &body)?)),
            tag::REPORT => Ok(Message::Report(parse_json(kind, &body)?)),
            tag::ERROR => Ok(Message::Error(parse_json(kind, &body)?)),
            _ => self.parse_bundle(&body),
        }
    }

    fn parse_bundle(&self, body: &[u8]) -> Result<Message, ProtocolError> {
        let malformed = |reason: &str| ProtocolError::Malformed {
            kind: "bundle",
            reason: reason.to_string(),
        };
        let (&name_len, rest) = body.split_first().ok_or_else(|| malformed("empty"))?;
        let name_len = name_len as usize;
        if rest.len() < name_len {
            return Err(malformed("name longer than the frame"));
        }
        let (name, rest) = rest.split_at(name_len);
        let name = String::from_utf8(name.to_vec()).map_err(|_| malformed("name is not UTF-8"))?;
        if !valid_name(&name) {
            return Err(ProtocolError::BadName(name.len()));
        }
        let (chain, rest) = take_sized(rest, self.limits.max_chain, "chain")?;
        let (key, rest) = take_sized(rest, self.limits.max_key, "key")?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the key"));
        }
        Ok(Message::Bundle {
            name,
            bundle: Bundle::new(chain.to_vec(), SecretBytes::new(key.to_vec())),
        })
    }
}

fn take_sized<'a>(
    buf: &'a [u8],
    max: usize,
    kind: &'static str,
) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
    if buf.len() < 4 {
        return Err(ProtocolError::Malformed {
            kind: "bundle",
            reason: format!("{kind} length missing"),
        });
    }
    let (len, rest) = buf.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > max {
        return Err(ProtocolError::Oversized { kind, len, max });
    }
    if rest.len() < len {
        return Err(ProtocolError::Malformed {
            kind: "bundle",
            reason: format!("{kind} length {len} exceeds the frame"),
        });
    }
    Ok(rest.split_at(len))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    body: &[u8],
) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed {
        kind,
        reason: json_error(&e),
    })
}

/// A JSON error without the input: serde_json's own message quotes the
/// offending value or field name ("invalid type: string \"MHcC…\""), so
/// only its category and position are kept.
pub fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "an I/O error",
        Category::Syntax => "not valid JSON",
        Category::Data => "a field that is unknown, missing or of the wrong type",
        Category::Eof => "JSON that ends too early",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CertReport, Step};

    fn limits() -> Limits {
        Limits {
            frame_timeout: Duration::from_millis(200),
            ..Limits::default()
        }
    }

    async fn roundtrip(msgs: &[Message]) -> Vec<Message> {
        let mut buf = Vec::new();
        for m in msgs {
            write_message(&mut buf, m).await.unwrap();
        }
        let mut r = Reader::new(&buf[..], limits());
        let mut out = Vec::new();
        for _ in msgs {
            out.push(r.next("message").await.unwrap());
        }
        assert!(matches!(
            r.next("end").await,
            Err(ProtocolError::Closed("end"))
        ));
        out
    }

    #[tokio::test]
    async fn every_message_round_trips() {
        let fp = Fingerprint::of_bytes(b"x");
        let mut report = Report::default();
        let mut c = CertReport::new("mail", Some(fp));
        c.done(Step::Install, "installed");
        report.certs.push(c);
        let msgs = vec![
            Message::Hello(Hello::new("t", true, false)),
            Message::Offer(Offer {
                certs: vec![OfferedCert {
                    name: "mail".into(),
                    leaf: fp,
                    chain_sha256: fp,
                    key_sha256: fp,
                    not_after: 5,
                    sans: vec!["mail.example.com".into()],
                }],
            }),
            Message::Want(Want {
                certs: vec![Decision {
                    name: "mail".into(),
                    wanted: Wanted::Send,
                    message: String::new(),
                    installed: Some(fp),
                }],
            }),
            Message::Bundle {
                name: "mail".into(),
                bundle: Bundle::new(b"chain".to_vec(), SecretBytes::new(b"key".to_vec())),
            },
            Message::Done,
            Message::Log("waiting".into()),
            Message::Report(report),
            Message::Error(WireError {
                message: "no".into(),
                exit: ExitCode::Refused,
            }),
        ];
        assert_eq!(roundtrip(&msgs).await, msgs);
    }

    #[tokio::test]
    async fn garbage_is_not_certsync() {
        let mut r = Reader::new(&b"GET / HTTP/1.1\r\n\r\n"[..], limits());
        let e = r.next("hello").await.unwrap_err();
        assert!(matches!(e, ProtocolError::NotCertsync(_)), "{e}");
    }

    #[tokio::test]
    async fn truncation_is_reported() {
        let mut buf = Vec::new();
        write_message(&mut buf, &Message::Hello(Hello::new("t", false, false)))
            .await
            .unwrap();
        for cut in [1, 3, 5, buf.len() - 1] {
            let mut r = Reader::new(&buf[..cut], limits());
            let e = r.next("hello").await.unwrap_err();
            assert!(
                matches!(e, ProtocolError::Truncated { .. }),
                "cut {cut}: {e}"
            );
        }
        let mut r = Reader::new(&b""[..], limits());
        assert!(matches!(
            r.next("hello").await,
            Err(ProtocolError::Closed("hello"))
        ));
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_allocation() {
        let mut buf = vec![tag::HELLO];
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut r = Reader::new(&buf[..], limits());
        assert!(matches!(
            r.next("hello").await,
            Err(ProtocolError::Oversized { .. })
        ));

        let big = Bundle::new(
            vec![b'a'; MAX_CHAIN_BYTES + 1],
            SecretBytes::new(b"k".to_vec()),
        );
        let mut buf = Vec::new();
        write_message(
            &mut buf,
            &Message::Bundle {
                name: "mail".into(),
                bundle: big,
            },
        )
        .await
        .unwrap();
        let mut r = Reader::new(&buf[..], limits());
        assert!(matches!(
            r.next("bundle").await,
            Err(ProtocolError::Oversized { .. })
        ));
    }

    #[tokio::test]
    async fn frame_count_is_bounded() {
        let mut buf = Vec::new();
        for _ in 0..=MAX_FRAMES {
            write_message(&mut buf, &Message::Log("x".into()))
                .await
                .unwrap();
        }
        let mut r = Reader::new(&buf[..], limits());
        let mut n = 0;
        let err = loop {
            match r.next("log").await {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(n, MAX_FRAMES);
        assert!(matches!(err, ProtocolError::TooManyFrames(_)));
    }

    #[tokio::test]
    async fn stalled_input_times_out() {
        let (client, _server_kept_open) = tokio::io::duplex(64);
        let mut r = Reader::new(client, limits());
        let start = std::time::Instant::now();
        assert!(matches!(
            r.next("hello").await,
            Err(ProtocolError::Timeout(_))
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    /// Issue 11 item 5: each piece of a frame (its tag, its length, its
    /// body) arrives within the timeout, the whole frame does not: one
    /// deadline for the frame ends it.
    #[tokio::test]
    async fn a_frame_dripped_in_pieces_has_one_deadline() {
        let (client, mut server) = tokio::io::duplex(1024);
        let frame = encode(&Message::Log("x".repeat(100))).unwrap().to_vec();
        let piece = Duration::from_millis(150);
        let dripper = tokio::spawn(async move {
            for part in [&frame[..1], &frame[1..5], &frame[5..]] {
                tokio::time::sleep(piece).await;
                if server.write_all(part).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut r = Reader::new(
            client,
            Limits {
                frame_timeout: Duration::from_millis(350),
                ..Limits::default()
            },
        );
        let got = r.next("log").await;
        dripper.abort();
        assert!(matches!(got, Err(ProtocolError::Timeout(_))), "{got:?}");
    }

    #[tokio::test]
    async fn names_on_the_wire_are_checked() {
        for bad in [
            "../etc/passwd",
            "a/b",
            "",
            ".",
            "..",
            "x\u{0}y",
            &"a".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("npm-5.mail_x"));
        // A hand-made bundle frame with a path as its name.
        let name = b"../../etc/shadow";
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&1u32.to_be_bytes());
        body.push(b'c');
        body.extend_from_slice(&1u32.to_be_bytes());
        body.push(b'k');
        let buf = frame(tag::BUNDLE, &body);
        let mut r = Reader::new(&buf[..], limits());
        assert!(matches!(
            r.next("bundle").await,
            Err(ProtocolError::BadName(_))
        ));
        // Lengths inside the bundle that lie about the frame.
        let mut body = vec![4u8];
        body.extend_from_slice(b"mail");
        body.extend_from_slice(&1000u32.to_be_bytes());
        body.push(b'c');
        let buf = frame(tag::BUNDLE, &body);
        let mut r = Reader::new(&buf[..], limits());
        assert!(matches!(
            r.next("bundle").await,
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[tokio::test]
    async fn hello_checks_magic_and_version() {
        let mut h = Hello::new("t", false, false);
        h.check().unwrap();
        h.version = 2;
        assert!(matches!(
            h.check(),
            Err(ProtocolError::Version { theirs: 2 })
        ));
        h.magic = "rsync".into();
        assert!(matches!(h.check(), Err(ProtocolError::NotCertsync(_))));
    }

    /// Whatever a peer puts in a frame is never echoed: key material in
    /// any JSON field, the magic, a name or the agent stays out of every
    /// error and log line.
    #[tokio::test]
    async fn no_error_echoes_what_the_peer_sent() {
        let leaf =
            crate::testutil::TestCa::new().leaf(crate::testutil::KeyKind::P256, &["a.example"]);
        let secret = crate::testutil::SecretWindows::of(&leaf.key);
        let pem = String::from_utf8(leaf.key_pkcs1_or_sec1()).unwrap();
        let cr_only = pem.replace('\n', "\r");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut checked = 0;
        for text in [pem.as_str(), cr_only.as_str(), b64.as_str()] {
            let s = serde_json::to_string(text).unwrap();
            let frames: Vec<(u8, String)> = vec![
                (
                    tag::HELLO,
                    format!(r#"{{"magic":{s},"version":1,"agent":"x"}}"#),
                ),
                (
                    tag::HELLO,
                    format!(r#"{{"magic":"certsync","version":{s},"agent":"x"}}"#),
                ),
                (
                    tag::HELLO,
                    format!(r#"{{"magic":"certsync","version":1,"agent":"x","dry_run":{s}}}"#),
                ),
                (
                    tag::HELLO,
                    format!(r#"{{"magic":"certsync","version":1,"agent":"x",{s}:1}}"#),
                ),
                (
                    tag::HELLO,
                    format!(
                        r#"{{"magic":"certsync","version":1,"agent":"x"{}"#,
                        &s[..s.len() / 2]
                    ),
                ),
                (
                    tag::OFFER,
                    format!(
                        r#"{{"certs":[{{"name":{s},"leaf":"00","chain_sha256":"00","key_sha256":"00","not_after":0}}]}}"#
                    ),
                ),
                (
                    tag::OFFER,
                    format!(
                        r#"{{"certs":[{{"name":"mail","leaf":{s},"chain_sha256":"00","key_sha256":"00","not_after":0}}]}}"#
                    ),
                ),
            ];
            for (t, body) in frames {
                let buf = frame(t, body.as_bytes());
                let mut r = Reader::new(&buf[..], limits());
                let msg = match r.next("hello").await {
                    Err(e) => format!("{e} {e:?}"),
                    Ok(Message::Hello(h)) => match h.check() {
                        Err(e) => format!("{e} {e:?}"),
                        Ok(()) => h.agent_for_log(),
                    },
                    Ok(other) => format!("{other:?}"),
                };
                assert!(
                    secret.leak_in(msg.as_bytes()).is_none(),
                    "echoed: frame {checked}"
                );
                checked += 1;
            }
            // A bundle whose name is the secret.
            let mut body = vec![text.len().min(255) as u8];
            body.extend_from_slice(&text.as_bytes()[..text.len().min(255)]);
            let buf = frame(tag::BUNDLE, &body);
            let e = Reader::new(&buf[..], limits())
                .next("bundle")
                .await
                .unwrap_err();
            assert!(secret.leak_in(format!("{e} {e:?}").as_bytes()).is_none());
            // An agent that is the secret.
            let mut h = Hello::new(text, false, false);
            assert!(secret.leak_in(h.agent_for_log().as_bytes()).is_none());
            h.agent = "certsync-push 0.1.0".into();
            assert_eq!(h.agent_for_log(), "certsync-push 0.1.0");
        }
        assert_eq!(checked, 21);
    }
}
