//! DANE for SMTP (RFC 6698, 7671, 7672): the TLSA lookup and the matching
//! rules, so that the receiver can see, before it installs a renewal,
//! whether DANE-validating senders would still accept the new pair.
//!
//! Invariants:
//! - Trust like Postfix's DANE support: records count only when the
//!   validating resolver set the AD bit on the answer. An answer without AD
//!   (unsigned zone, or a resolver that does not validate) is
//!   [`Lookup::Unvalidated`] and never used to decide anything; a SERVFAIL
//!   (what a validating resolver answers for bogus data) is an error.
//! - Only what RFC 7672 §3.1.3 lets an SMTP client use counts: usages 2
//!   (DANE-TA) and 3 (DANE-EE), selectors 0 (full certificate) and 1
//!   (SubjectPublicKeyInfo), matching types 0 (exact), 1 (SHA-256) and
//!   2 (SHA-512). Other records are reported but match nothing.
//! - Whatever the resolver sends is data from the wire: one answer is read
//!   into a buffer of at most [`MAX_RESPONSE`] bytes, the whole exchange
//!   takes at most [`DNS_TIMEOUT`], at most [`MAX_RECORDS`] TLSA records are
//!   kept, and record data is only ever shown as hex.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use certsync_core::bundle::parse_chain;
use certsync_core::config::{DaneMode, ReceiveConfig};
use certsync_core::fingerprint::hex;
use certsync_core::report::{CertReport, Step};
use certsync_core::validate::ValidatedBundle;
use certsync_core::ExitCode;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use openssl::hash::MessageDigest;
use openssl::x509::X509;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::pipeline::{installed_not_after, Run, StepFailed};
use crate::settings::CertSpec;

/// How long one lookup may take in all (UDP, then TCP on truncation).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// The EDNS payload size we advertise and the UDP buffer we read into
/// (1232: the DNS flag day 2020 value, safe from fragmentation).
pub const UDP_PAYLOAD: u16 = 1232;
/// The largest answer read over TCP. DNS over TCP frames are at most
/// 65535 bytes; a TLSA RRset with signatures is a few KiB.
pub const MAX_RESPONSE: usize = 16 * 1024;
/// At most this many TLSA records of one RRset are kept.
pub const MAX_RECORDS: usize = 64;
/// The default of `dane_deadline_days`. A week: certbot renews 30 days
/// before expiry, so a held pair waits up to three weeks for DNS, and an
/// expired certificate (which breaks every sender, not only DANE ones) is
/// still a week away when the guard gives up.
pub const DEFAULT_DEADLINE_DAYS: u32 = 7;

#[derive(Debug, thiserror::Error)]
pub enum DaneError {
    #[error("no usable nameserver in {path}; set dns_resolver = \"IP:PORT\" in receive.toml")]
    NoResolver { path: String },
    #[error("cannot read {path}: {source}")]
    ResolvConf {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: invalid DNS name")]
    BadName { name: String },
    #[error("DNS lookup of {name} at {resolver}: {source}")]
    Io {
        name: String,
        resolver: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "DNS lookup of {name} at {resolver} timed out after {secs}s; is the resolver running?"
    )]
    Timeout {
        name: String,
        resolver: SocketAddr,
        secs: u64,
    },
    #[error("DNS lookup of {name} at {resolver}: malformed answer ({why})")]
    Malformed {
        name: String,
        resolver: SocketAddr,
        why: String,
    },
    #[error(
        "DNS lookup of {name} at {resolver}: SERVFAIL (a validating resolver answers this for \
         DNSSEC-bogus data: check the zone's signatures and DS records)"
    )]
    ServFail { name: String, resolver: SocketAddr },
    #[error("DNS lookup of {name} at {resolver}: answer code {rcode}")]
    Rcode {
        name: String,
        resolver: SocketAddr,
        rcode: String,
    },
}

impl DaneError {
    /// A failure to reach a resolver at all (nothing listening, no
    /// network), as opposed to an answer that says something is wrong.
    /// `dane = "auto"` reports these as warnings (docs/contract.md).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            DaneError::NoResolver { .. }
                | DaneError::ResolvConf { .. }
                | DaneError::Io { .. }
                | DaneError::Timeout { .. }
        )
    }
}

/// One TLSA record, as numbers and bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    #[serde(serialize_with = "as_hex")]
    pub data: Vec<u8>,
}

fn as_hex<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(data))
}

impl Tlsa {
    /// Whether an SMTP client may use this record (RFC 7672 §3.1.3; the
    /// PKIX usages 0 and 1 are not for SMTP).
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && matches!(self.selector, 0 | 1) && self.digest().is_some()
    }

    /// The digest of the matching type; `None` for unknown types. Type 0
    /// (exact) is `Some(None)`.
    fn digest(&self) -> Option<Option<MessageDigest>> {
        match self.matching {
            0 => Some(None),
            1 => Some(Some(MessageDigest::sha256())),
            2 => Some(Some(MessageDigest::sha512())),
            _ => None,
        }
    }

    /// The record's RDATA in presentation form: `3 1 1 <hex>`.
    pub fn rdata(&self) -> String {
        format!(
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching,
            hex(&self.data)
        )
    }

    /// The whole record, ready to paste into a zone file:
    /// `_25._tcp.mail.example.com. IN TLSA 3 1 1 <hex>`.
    pub fn zone_line(&self, owner: &str) -> String {
        format!("{owner} IN TLSA {}", self.rdata())
    }

    /// The `3 1 1` record for this leaf: SHA-256 of its public key, the
    /// record RFC 7671 §5.1 recommends and the one that survives a renewal
    /// that keeps the key.
    pub fn dane_ee_spki_sha256(leaf: &X509) -> Option<Tlsa> {
        let spki = selected(leaf, 1)?;
        let d = openssl::hash::hash(MessageDigest::sha256(), &spki).ok()?;
        Some(Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: d.to_vec(),
        })
    }

    /// Whether this record matches `chain` (leaf first): usage 3 against
    /// the leaf, usage 2 against an issuer in the chain (RFC 7671 §5.2: the
    /// trust anchor must be in the chain the server sends).
    pub fn matches(&self, chain: &[X509]) -> bool {
        if !self.usable() {
            return false;
        }
        let candidates: &[X509] = match self.usage {
            3 => chain.get(..1).unwrap_or(&[]),
            2 => chain.get(1..).unwrap_or(&[]),
            _ => &[],
        };
        candidates.iter().any(|c| self.matches_cert(c))
    }

    fn matches_cert(&self, cert: &X509) -> bool {
        let Some(sel) = selected(cert, self.selector) else {
            return false;
        };
        match self.digest() {
            Some(None) => sel == self.data,
            Some(Some(md)) => openssl::hash::hash(md, &sel)
                .map(|d| d[..] == self.data[..])
                .unwrap_or(false),
            None => false,
        }
    }
}

/// The bytes a selector picks: 0, the certificate's DER; 1, its
/// SubjectPublicKeyInfo DER (what openssl re-encodes from the parsed key is
/// the same DER for the RSA and EC keys certificates carry).
fn selected(cert: &X509, selector: u8) -> Option<Vec<u8>> {
    match selector {
        0 => cert.to_der().ok(),
        1 => cert.public_key().ok()?.public_key_to_der().ok(),
        _ => None,
    }
}

/// `_<port>._tcp.<host>.`: the TLSA owner name (RFC 6698 §3).
pub fn owner_name(host: &str, port: u16) -> String {
    format!("_{port}._tcp.{}.", host.trim_end_matches('.'))
}

/// What the resolver said about one TLSA name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// AD was set: these records (possibly none: a validated denial) are
    /// trustworthy.
    Validated(Vec<Tlsa>),
    /// No AD: the zone is unsigned or the resolver does not validate. The
    /// records are shown to the operator and never trusted.
    Unvalidated(Vec<Tlsa>),
}

/// The resolver to ask: `dns_resolver` if set, else the first nameserver
/// in `resolv_conf` (port 53), as Postfix and the C library do.
pub fn resolver(
    configured: Option<SocketAddr>,
    resolv_conf: &Path,
) -> Result<SocketAddr, DaneError> {
    if let Some(r) = configured {
        return Ok(r);
    }
    let path = resolv_conf.display().to_string();
    let text = std::fs::read_to_string(resolv_conf).map_err(|source| DaneError::ResolvConf {
        path: path.clone(),
        source,
    })?;
    first_nameserver(&text).ok_or(DaneError::NoResolver { path })
}

/// The first `nameserver` line whose address parses (a link-local IPv6
/// address with a `%zone` does not, and is skipped).
pub fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "nameserver" {
            return None;
        }
        let ip: IpAddr = words.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// Ask `resolver` for the TLSA RRset at `owner` with DO and AD set, over
/// UDP, retrying over TCP when the answer is truncated.
pub async fn lookup(resolver: SocketAddr, owner: &str) -> Result<Lookup, DaneError> {
    lookup_within(resolver, owner, DNS_TIMEOUT).await
}

async fn lookup_within(
    resolver: SocketAddr,
    owner: &str,
    limit: Duration,
) -> Result<Lookup, DaneError> {
    match tokio::time::timeout(limit, lookup_unbounded(resolver, owner)).await {
        Ok(r) => r,
        Err(_) => Err(DaneError::Timeout {
            name: owner.to_string(),
            resolver,
            secs: limit.as_secs(),
        }),
    }
}

async fn lookup_unbounded(resolver: SocketAddr, owner: &str) -> Result<Lookup, DaneError> {
    let name = Name::from_ascii(owner).map_err(|_| DaneError::BadName {
        name: owner.to_string(),
    })?;
    let id = query_id();
    let query = build_query(&name, id).map_err(|why| DaneError::Malformed {
        name: owner.to_string(),
        resolver,
        why,
    })?;
    let io = |source| DaneError::Io {
        name: owner.to_string(),
        resolver,
        source,
    };
    let bind: SocketAddr = if resolver.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(io)?;
    // connect(): the kernel drops datagrams from anyone but the resolver.
    sock.connect(resolver).await.map_err(io)?;
    sock.send(&query).await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(UDP_PAYLOAD)];
    let answer = loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        match Message::from_vec(&buf[..n]) {
            // A stray or spoofed datagram with another id: keep waiting.
            Ok(m) if m.id() != id => continue,
            Ok(m) => break m,
            Err(_) => continue,
        }
    };
    let answer = if answer.truncated() {
        let mut tcp = TcpStream::connect(resolver).await.map_err(io)?;
        let len = u16::try_from(query.len()).map_err(|_| DaneError::Malformed {
            name: owner.to_string(),
            resolver,
            why: "query too long".into(),
        })?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        tcp.write_all(&framed).await.map_err(io)?;
        let rlen = usize::from(tcp.read_u16().await.map_err(io)?);
        if rlen > MAX_RESPONSE {
            return Err(DaneError::Malformed {
                name: owner.to_string(),
                resolver,
                why: format!("answer of {rlen} bytes, more than {MAX_RESPONSE}"),
            });
        }
        let mut body = vec![0u8; rlen];
        tcp.read_exact(&mut body).await.map_err(io)?;
        Message::from_vec(&body).map_err(|e| DaneError::Malformed {
            name: owner.to_string(),
            resolver,
            why: e.to_string(),
        })?
    } else {
        answer
    };
    interpret(&answer, id, &name, resolver)
}

fn query_id() -> u16 {
    let mut b = [0u8; 2];
    // A predictable id only weakens spoofing resistance, which DNSSEC
    // (the AD bit from a resolver we trust) covers anyway.
    let _ = openssl::rand::rand_bytes(&mut b);
    u16::from_be_bytes(b)
}

fn build_query(name: &Name, id: u16) -> Result<Vec<u8>, String> {
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        // RFC 6840 §5.7: AD in a query asks the resolver to report
        // validation in the answer's AD bit.
        .set_authentic_data(true)
        .add_query(Query::query(name.clone(), RecordType::TLSA));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true).set_max_payload(UDP_PAYLOAD);
    msg.set_edns(edns);
    msg.to_vec().map_err(|e| e.to_string())
}

/// Read an answer: the rcode, the AD bit and the TLSA records in it.
fn interpret(
    answer: &Message,
    id: u16,
    name: &Name,
    resolver: SocketAddr,
) -> Result<Lookup, DaneError> {
    let owner = name.to_ascii();
    let malformed = |why: &str| DaneError::Malformed {
        name: owner.clone(),
        resolver,
        why: why.to_string(),
    };
    if answer.id() != id || answer.message_type() != MessageType::Response {
        return Err(malformed("not an answer to our query"));
    }
    match answer.queries() {
        [q] if q.name().eq_case(name) || q.name() == name => {}
        _ => return Err(malformed("answer is for another question")),
    }
    match answer.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        ResponseCode::ServFail => {
            return Err(DaneError::ServFail {
                name: owner,
                resolver,
            })
        }
        other => {
            return Err(DaneError::Rcode {
                name: owner,
                resolver,
                rcode: other.to_string(),
            })
        }
    }
    // The resolver follows CNAMEs and puts the whole chain in the answer
    // section: every TLSA record there belongs to the RRset we asked for.
    let records: Vec<Tlsa> = answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::TLSA(t) => Some(Tlsa {
                usage: u8::from(t.cert_usage()),
                selector: u8::from(t.selector()),
                matching: u8::from(t.matching()),
                data: t.cert_data().to_vec(),
            }),
            _ => None,
        })
        .take(MAX_RECORDS)
        .collect();
    if answer.authentic_data() {
        Ok(Lookup::Validated(records))
    } else {
        Ok(Lookup::Unvalidated(records))
    }
}

/// The DANE part of receive.toml, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneSettings {
    pub mode: DaneMode,
    /// 25 first, then `dane_ports`, without repeats.
    pub ports: Vec<u16>,
    pub deadline_days: u32,
    /// `dns_resolver`; `None`: the first nameserver of /etc/resolv.conf.
    pub resolver: Option<SocketAddr>,
}

impl DaneSettings {
    pub fn from_config(raw: &ReceiveConfig) -> DaneSettings {
        let mut ports = vec![25];
        for p in &raw.dane_ports {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        DaneSettings {
            mode: raw.dane,
            ports,
            deadline_days: raw.dane_deadline_days.unwrap_or(DEFAULT_DEADLINE_DAYS),
            resolver: raw.dns_resolver,
        }
    }

    /// No DANE at all (tests that do not exercise it).
    pub fn off() -> DaneSettings {
        DaneSettings {
            mode: DaneMode::Off,
            ports: vec![25],
            deadline_days: DEFAULT_DEADLINE_DAYS,
            resolver: None,
        }
    }

    /// Every TLSA owner name for these hostnames.
    pub fn owners(&self, hostnames: &[String]) -> Vec<String> {
        hostnames
            .iter()
            .flat_map(|h| self.ports.iter().map(move |p| owner_name(h, *p)))
            .collect()
    }
}

/// One owner name and what its lookup gave.
#[derive(Debug)]
pub struct OwnerLookup {
    pub owner: String,
    pub result: Result<Lookup, DaneError>,
}

/// Look up every owner name of `hostnames`, one after the other (a few
/// names, each bounded by [`DNS_TIMEOUT`]). With no resolver to ask, every
/// owner carries that error.
pub async fn look_up_all(settings: &DaneSettings, hostnames: &[String]) -> Vec<OwnerLookup> {
    let resolver = resolver(settings.resolver, Path::new(RESOLV_CONF));
    let mut out = Vec::new();
    for owner in settings.owners(hostnames) {
        let result = match &resolver {
            Ok(r) => lookup(*r, &owner).await,
            Err(e) => Err(DaneError::NoResolver {
                path: format!("{RESOLV_CONF} ({e})"),
            }),
        };
        out.push(OwnerLookup { owner, result });
    }
    out
}

/// Where the system's resolver is configured.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What the guard says about installing a new chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Install. `notes` are warnings for the report (unvalidated answers,
    /// an unreachable resolver in `auto` mode, owners without records).
    Install { notes: Vec<String> },
    /// Do not install: validated records exist for these owners and the
    /// new chain matches none of them. `publish` holds the zone lines that
    /// would let it through.
    Hold {
        notes: Vec<String>,
        publish: Vec<String>,
    },
    /// Held, but the installed certificate is within the deadline (or
    /// there is none): install anyway, with `warning` in the report and
    /// the journal.
    Forced {
        notes: Vec<String>,
        publish: Vec<String>,
        warning: String,
    },
    /// Refuse: `require` without validated records, or an answer that is
    /// an error (SERVFAIL, malformed).
    Refuse { reason: String },
}

/// Decide, from the lookups, whether `chain` (leaf first) may be
/// installed. `installed_days_left` is `None` when nothing is installed.
pub fn decide(
    settings: &DaneSettings,
    lookups: &[OwnerLookup],
    chain: &[X509],
    installed_days_left: Option<i64>,
) -> Verdict {
    if settings.mode == DaneMode::Off {
        return Verdict::Install { notes: vec![] };
    }
    let tally = Tally::of(settings.mode, lookups, chain);
    let deadline = Deadline {
        days: i64::from(settings.deadline_days),
        left: installed_days_left,
    };
    if !tally.errors.is_empty() {
        return failed_lookups(tally, &deadline);
    }
    if settings.mode == DaneMode::Require && tally.guarded == 0 {
        return Verdict::Refuse {
            reason: format!(
                "dane = \"require\" but no DNSSEC-validated TLSA records exist for {}",
                lookups
                    .iter()
                    .map(|l| l.owner.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    if tally.unmatched.is_empty() {
        return Verdict::Install { notes: tally.notes };
    }
    unmatched_records(tally, chain, &deadline)
}

/// What the lookups say about one chain, owner by owner.
#[derive(Debug, Default)]
struct Tally {
    /// Warnings for the report.
    notes: Vec<String>,
    /// Owners with usable validated records, none of which matches.
    unmatched: Vec<String>,
    /// How many owners have usable validated records.
    guarded: usize,
    /// Lookups that failed in a way that counts (see [`decide`]).
    errors: Vec<String>,
}

impl Tally {
    fn of(mode: DaneMode, lookups: &[OwnerLookup], chain: &[X509]) -> Tally {
        let mut t = Tally::default();
        for l in lookups {
            match &l.result {
                Ok(Lookup::Validated(records)) => t.validated(&l.owner, records, chain),
                Ok(Lookup::Unvalidated(records)) => t.notes.push(format!(
                    "{}: the resolver did not validate the answer (no AD bit: unsigned zone or \
                     a non-validating resolver); {} TLSA record(s) ignored",
                    l.owner,
                    records.len()
                )),
                Err(e) if e.is_unreachable() && mode == DaneMode::Auto => {
                    t.notes.push(format!("DANE check skipped: {e}"))
                }
                Err(e) => t.errors.push(e.to_string()),
            }
        }
        t
    }

    /// One owner's validated records: guarded when any is usable for
    /// SMTP, unmatched when none of those matches `chain`.
    fn validated(&mut self, owner: &str, records: &[Tlsa], chain: &[X509]) {
        let usable: Vec<&Tlsa> = records.iter().filter(|t| t.usable()).collect();
        if usable.is_empty() {
            if !records.is_empty() {
                self.notes.push(format!(
                    "{owner}: no TLSA record usable for SMTP (RFC 7672 §3.1.3: usages 2 and 3 only)"
                ));
            }
            return;
        }
        self.guarded += 1;
        if !usable.iter().any(|t| t.matches(chain)) {
            self.unmatched.push(owner.to_string());
        }
    }
}

/// `dane_deadline_days` against the installed certificate's days left.
struct Deadline {
    days: i64,
    /// `None`: nothing is installed.
    left: Option<i64>,
}

impl Deadline {
    /// Whether the installed certificate is within the deadline (or
    /// there is none), so that waiting for DNS would do more harm.
    fn reached(&self) -> bool {
        self.left.is_none_or(|d| d <= self.days)
    }

    /// Why the deadline forces the install, for the warning.
    fn why_now(&self) -> String {
        match self.left {
            Some(d) => format!(
                "the installed certificate has {d} day(s) left (dane_deadline_days = {})",
                self.days
            ),
            None => "no certificate is installed".to_string(),
        }
    }
}

/// A lookup failed (SERVFAIL, malformed, or unreachable under
/// `require`): refuse, unless the deadline is reached. A bogus answer
/// already stops DANE senders; an expired certificate would stop every
/// sender. So the deadline wins here too, loudly.
fn failed_lookups(tally: Tally, deadline: &Deadline) -> Verdict {
    if deadline.reached() {
        return Verdict::Forced {
            warning: format!(
                "DANE: installing although the TLSA lookup failed ({}) because {}: \
                 fix the zone's DNSSEC; DANE-validating senders cannot deliver until then",
                tally.errors.join("; "),
                deadline.why_now()
            ),
            notes: tally.notes,
            publish: vec![],
        };
    }
    Verdict::Refuse {
        reason: format!("DANE: {}", tally.errors.join("; ")),
    }
}

/// Validated records exist that `chain` does not match: hold it with the
/// records to publish, or, at the deadline, install it with a warning.
fn unmatched_records(tally: Tally, chain: &[X509], deadline: &Deadline) -> Verdict {
    let next = chain.first().and_then(Tlsa::dane_ee_spki_sha256);
    let publish: Vec<String> = match next {
        Some(t) => tally.unmatched.iter().map(|o| t.zone_line(o)).collect(),
        None => vec![],
    };
    if !deadline.reached() {
        return Verdict::Hold {
            notes: tally.notes,
            publish,
        };
    }
    Verdict::Forced {
        warning: format!(
            "DANE: installing a certificate that matches none of the TLSA records of {} because {}: \
             mail from DANE-validating senders to this host FAILS until DNS has: {}",
            tally.unmatched.join(", "),
            deadline.why_now(),
            publish.join(" ; ")
        ),
        notes: tally.notes,
        publish,
    }
}

/// The guard in the install pipeline, between compare and install
/// (docs/contract.md "DANE"). `Err` when the pair must not be installed
/// now: held for DNS (exit 5, the pair stays staged so that the deploy
/// timer, the next push or `deploy` installs it once DNS matches) or
/// refused (exit 3). Everything it says is in `report`.
pub async fn guard_step(
    run: &Run<'_>,
    spec: &CertSpec,
    pair: &ValidatedBundle,
    report: &mut CertReport,
) -> Result<(), StepFailed> {
    let settings = &run.settings.dane;
    if settings.mode == DaneMode::Off {
        return Ok(());
    }
    let chain = match parse_chain(&pair.bundle().chain) {
        Ok(c) => c,
        Err(e) => {
            report.failed(Step::Install, format!("DANE: {e}"), ExitCode::Runtime);
            return Err(StepFailed);
        }
    };
    let lookups = look_up_all(settings, &spec.hostnames).await;
    let days_left = installed_not_after(spec).map(|na| {
        let now = certsync_core::time::unix_seconds(run.now);
        na.saturating_sub(now).div_euclid(86_400)
    });
    match decide(settings, &lookups, &chain, days_left) {
        Verdict::Install { notes } => {
            for n in notes {
                tracing::warn!(cert = %spec.name, "{n}");
                report.warn(n);
            }
            Ok(())
        }
        Verdict::Forced {
            notes,
            publish: _,
            warning,
        } => {
            for n in notes {
                report.warn(n);
            }
            tracing::error!(cert = %spec.name, "{warning}");
            report.warn(warning);
            Ok(())
        }
        Verdict::Hold { notes, publish } => {
            for n in notes {
                report.warn(n);
            }
            let msg = format!(
                "held for DNS: the new pair matches none of the DNSSEC-validated TLSA records; \
                 the installed pair keeps serving and the new one stays staged until DNS has: {}",
                publish.join(" ; ")
            );
            tracing::warn!(cert = %spec.name, leaf = %pair.leaf_fingerprint(), "{msg}");
            report.skipped(Step::Install, msg);
            report.exit = report.exit.worst(ExitCode::Held);
            // The pusher prints these as the result of the push.
            report.publish = publish;
            Err(StepFailed)
        }
        Verdict::Refuse { reason } => {
            tracing::error!(cert = %spec.name, "refused: {reason}");
            report.failed(
                Step::Install,
                format!("refused: {reason}"),
                ExitCode::Refused,
            );
            Err(StepFailed)
        }
    }
}

/// Whether this report holds its pair for DNS: then the pair stays staged.
pub fn held(report: &CertReport) -> bool {
    report.exit == ExitCode::Held
}

/// The one line a notification gives a held pair:
/// `mail: held for DNS: publish _25._tcp.… IN TLSA 3 1 1 <hex>`.
pub fn held_summary(report: &CertReport) -> String {
    format!(
        "{}: held for DNS: publish {}",
        report.name,
        report.publish.join(" ; ")
    )
}

/// What `check` reports about DANE for one certificate (docs/contract.md
/// "Output of `check`").
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DaneCheck {
    /// Per owner name: "validated", "unvalidated", or the lookup error.
    pub lookups: Vec<OwnerState>,
    /// Whether the certificate served on port 25 matches the validated
    /// TLSA records; `None` when there are none to match, or the served
    /// certificate is not the installed one (then the endpoint line says
    /// so already).
    pub served_matches: Option<bool>,
    /// A pair held for DNS in the staging dir: its leaf's fingerprint.
    pub held: Option<String>,
    /// The `3 1 1` records to publish: the installed key's ("current")
    /// and, when a pair is held, the next key's ("next").
    pub publish: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnerState {
    pub owner: String,
    pub state: String,
    pub records: Vec<Tlsa>,
}

/// What `check` reports when port 25 serves a certificate that matches
/// none of the validated TLSA records of these owner names.
#[derive(Debug, thiserror::Error)]
#[error(
    "the certificate served on port 25 matches none of the DNSSEC-validated TLSA records of {}: \
     DANE-validating senders cannot deliver; publish the record(s) below",
    owners.join(", ")
)]
pub struct ServedUnmatched {
    pub owners: Vec<String>,
}

/// The DANE part of `check`: `installed` is the installed chain, `served`
/// whether port 25 serves it (from the endpoint probes), `held` the chain
/// staged and held, if any. Returns the report part, a problem (exit 4)
/// when the served certificate matches none of the validated records, and
/// warnings.
pub async fn check(
    settings: &DaneSettings,
    hostnames: &[String],
    installed: Option<&[X509]>,
    served_is_installed: bool,
    held: Option<&[X509]>,
) -> (DaneCheck, Option<ServedUnmatched>, Vec<String>) {
    let mut out = DaneCheck::default();
    let mut warnings = Vec::new();
    let mut problem = None;
    if settings.mode == DaneMode::Off {
        return (out, problem, warnings);
    }
    let lookups = look_up_all(settings, hostnames).await;
    let mut guarded: Vec<(&str, Vec<&Tlsa>)> = Vec::new();
    for l in &lookups {
        let (state, records) = match &l.result {
            Ok(Lookup::Validated(r)) => ("validated".to_string(), r.clone()),
            Ok(Lookup::Unvalidated(r)) => {
                warnings.push(format!(
                    "{}: the TLSA answer is not DNSSEC-validated (no AD bit); it is not trusted",
                    l.owner
                ));
                ("unvalidated".to_string(), r.clone())
            }
            Err(e) => {
                warnings.push(format!("DANE: {e}"));
                (format!("error: {e}"), vec![])
            }
        };
        out.lookups.push(OwnerState {
            owner: l.owner.clone(),
            state,
            records,
        });
        if let Ok(Lookup::Validated(r)) = &l.result {
            let usable: Vec<&Tlsa> = r.iter().filter(|t| t.usable()).collect();
            if !usable.is_empty() {
                guarded.push((l.owner.as_str(), usable));
            }
        }
    }
    if let (Some(chain), true, false) = (installed, served_is_installed, guarded.is_empty()) {
        let unmatched: Vec<&str> = guarded
            .iter()
            .filter(|(_, recs)| !recs.iter().any(|t| t.matches(chain)))
            .map(|(o, _)| *o)
            .collect();
        out.served_matches = Some(unmatched.is_empty());
        if !unmatched.is_empty() {
            problem = Some(ServedUnmatched {
                owners: unmatched.iter().map(|o| o.to_string()).collect(),
            });
        }
    }
    let owners = settings.owners(hostnames);
    for chain in [installed, held].into_iter().flatten() {
        if let Some(t) = chain.first().and_then(Tlsa::dane_ee_spki_sha256) {
            for o in &owners {
                let line = t.zone_line(o);
                if !out.publish.contains(&line) {
                    out.publish.push(line);
                }
            }
        }
    }
    out.held = held
        .and_then(|c| c.first())
        .and_then(|leaf| leaf.to_der().ok())
        .map(|der| certsync_core::Fingerprint::of_der(&der).to_string());
    (out, problem, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsync_core::testutil::{KeyKind, TestCa};
    use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector, TLSA};
    use hickory_proto::rr::Record;

    fn chain(leaf: &certsync_core::testutil::TestLeaf, ca: &TestCa) -> Vec<X509> {
        vec![leaf.cert.clone(), ca.intermediate.clone()]
    }

    fn digest(md: MessageDigest, b: &[u8]) -> Vec<u8> {
        openssl::hash::hash(md, b).unwrap().to_vec()
    }

    #[test]
    fn every_usage_selector_and_matching_type_matches_the_right_certificate() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let c = chain(&leaf, &ca);
        for (usage, cert) in [(3u8, &leaf.cert), (2u8, &ca.intermediate)] {
            for selector in [0u8, 1] {
                let sel = selected(cert, selector).unwrap();
                for (matching, data) in [
                    (0u8, sel.clone()),
                    (1u8, digest(MessageDigest::sha256(), &sel)),
                    (2u8, digest(MessageDigest::sha512(), &sel)),
                ] {
                    let t = Tlsa {
                        usage,
                        selector,
                        matching,
                        data: data.clone(),
                    };
                    assert!(t.matches(&c), "{} should match", t.rdata());
                    // One flipped bit never matches.
                    let mut bad = data;
                    bad[0] ^= 1;
                    let t = Tlsa { data: bad, ..t };
                    assert!(!t.matches(&c), "{} should not match", t.rdata());
                }
            }
        }
    }

    #[test]
    fn usage_3_is_the_leaf_only_and_usage_2_an_issuer_only() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let c = chain(&leaf, &ca);
        let leaf_spki = digest(MessageDigest::sha256(), &selected(&leaf.cert, 1).unwrap());
        let int_spki = digest(
            MessageDigest::sha256(),
            &selected(&ca.intermediate, 1).unwrap(),
        );
        let rec = |usage, data: &Vec<u8>| Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data: data.clone(),
        };
        assert!(rec(3, &leaf_spki).matches(&c));
        assert!(
            !rec(2, &leaf_spki).matches(&c),
            "DANE-TA must not match the leaf"
        );
        assert!(rec(2, &int_spki).matches(&c));
        assert!(
            !rec(3, &int_spki).matches(&c),
            "DANE-EE must not match an issuer"
        );
        // A chain without its intermediate has no issuer to match.
        assert!(!rec(2, &int_spki).matches(&c[..1]));
    }

    #[test]
    fn pkix_usages_and_unknown_types_are_unusable_for_smtp() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let c = chain(&leaf, &ca);
        let good = Tlsa::dane_ee_spki_sha256(&leaf.cert).unwrap();
        assert!(good.matches(&c));
        for t in [
            Tlsa {
                usage: 1,
                ..good.clone()
            },
            Tlsa {
                usage: 0,
                ..good.clone()
            },
            Tlsa {
                selector: 2,
                ..good.clone()
            },
            Tlsa {
                matching: 3,
                ..good.clone()
            },
        ] {
            assert!(!t.usable(), "{}", t.rdata());
            assert!(!t.matches(&c), "{}", t.rdata());
        }
    }

    #[test]
    fn a_new_key_breaks_3_1_1_but_keeps_2_1_1_on_the_issuer() {
        let ca = TestCa::new();
        let old = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let new = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let ee = Tlsa::dane_ee_spki_sha256(&old.cert).unwrap();
        assert!(ee.matches(&chain(&old, &ca)));
        assert!(!ee.matches(&chain(&new, &ca)));
        let ta = Tlsa {
            usage: 2,
            selector: 1,
            matching: 1,
            data: digest(
                MessageDigest::sha256(),
                &selected(&ca.intermediate, 1).unwrap(),
            ),
        };
        assert!(ta.matches(&chain(&old, &ca)));
        assert!(ta.matches(&chain(&new, &ca)));
    }

    #[test]
    fn the_record_to_publish_is_a_zone_file_line() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let t = Tlsa::dane_ee_spki_sha256(&leaf.cert).unwrap();
        let line = t.zone_line(&owner_name("mail.example.com.", 25));
        let want = format!(
            "_25._tcp.mail.example.com. IN TLSA 3 1 1 {}",
            hex(&digest(
                MessageDigest::sha256(),
                &selected(&leaf.cert, 1).unwrap()
            ))
        );
        assert_eq!(line, want);
        assert_eq!(t.data.len(), 32);
    }

    #[test]
    fn the_first_parseable_nameserver_is_the_resolver() {
        let conf = "# comment\nsearch example.com\nnameserver fe80::1%eth0\nnameserver 127.0.0.53\nnameserver 9.9.9.9\n";
        assert_eq!(
            first_nameserver(conf),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("options edns0\n"), None);
        let configured: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        assert_eq!(
            resolver(Some(configured), Path::new("/nonexistent")).unwrap(),
            configured
        );
        let e = resolver(None, Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(e.is_unreachable());
    }

    fn response(id: u16, name: &Name, rcode: ResponseCode, ad: bool, tlsa: &[Tlsa]) -> Message {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .set_response_code(rcode)
            .set_authentic_data(ad)
            .add_query(Query::query(name.clone(), RecordType::TLSA));
        for t in tlsa {
            let rd = TLSA::new(
                CertUsage::from(t.usage),
                Selector::from(t.selector),
                Matching::from(t.matching),
                t.data.clone(),
            );
            m.add_answer(Record::from_rdata(name.clone(), 300, RData::TLSA(rd)));
        }
        // Through the wire format, as the resolver's answer would arrive.
        Message::from_vec(&m.to_vec().unwrap()).unwrap()
    }

    #[test]
    fn only_answers_with_ad_are_validated_and_servfail_is_an_error() {
        let name = Name::from_ascii("_25._tcp.mail.example.com.").unwrap();
        let r: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let t = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0xab; 32],
        };
        let ok = response(
            7,
            &name,
            ResponseCode::NoError,
            true,
            std::slice::from_ref(&t),
        );
        assert_eq!(
            interpret(&ok, 7, &name, r).unwrap(),
            Lookup::Validated(vec![t.clone()])
        );
        let unsigned = response(
            7,
            &name,
            ResponseCode::NoError,
            false,
            std::slice::from_ref(&t),
        );
        assert_eq!(
            interpret(&unsigned, 7, &name, r).unwrap(),
            Lookup::Unvalidated(vec![t.clone()])
        );
        let denial = response(7, &name, ResponseCode::NXDomain, true, &[]);
        assert_eq!(
            interpret(&denial, 7, &name, r).unwrap(),
            Lookup::Validated(vec![])
        );
        let bogus = response(7, &name, ResponseCode::ServFail, false, &[]);
        assert!(matches!(
            interpret(&bogus, 7, &name, r),
            Err(DaneError::ServFail { .. })
        ));
        let refused = response(7, &name, ResponseCode::Refused, false, &[]);
        assert!(matches!(
            interpret(&refused, 7, &name, r),
            Err(DaneError::Rcode { .. })
        ));
        // Another id, or another question, is not our answer.
        assert!(interpret(&ok, 8, &name, r).is_err());
        let other = Name::from_ascii("_25._tcp.evil.example.").unwrap();
        assert!(interpret(&ok, 7, &other, r).is_err());
    }

    #[tokio::test]
    async fn a_resolver_that_does_not_answer_times_out_as_unreachable() {
        // A bound UDP socket that never answers: the lookup gives up after
        // DNS_TIMEOUT instead of hanging the install.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let limit = Duration::from_millis(200);
        let e = lookup_within(addr, "_25._tcp.mail.example.com.", limit)
            .await
            .unwrap_err();
        assert!(matches!(e, DaneError::Timeout { .. }), "{e}");
        assert!(e.is_unreachable());
    }

    #[tokio::test]
    async fn a_lookup_over_udp_reads_the_resolvers_answer() {
        // A one-shot responder: answers the real query bytes the lookup
        // sends, with AD set and one record.
        let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = srv.local_addr().unwrap();
        let t = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0x11; 32],
        };
        let want = t.clone();
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (n, peer) = srv.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            assert!(q.authentic_data(), "the query asks for AD");
            assert!(
                q.extensions().as_ref().unwrap().flags().dnssec_ok,
                "the query sets DO"
            );
            let name = q.queries()[0].name().clone();
            let a = response(q.id(), &name, ResponseCode::NoError, true, &[t]);
            srv.send_to(&a.to_vec().unwrap(), peer).await.unwrap();
        });
        let got = lookup(addr, "_25._tcp.mail.example.com.").await.unwrap();
        server.await.unwrap();
        assert_eq!(got, Lookup::Validated(vec![want]));
    }

    fn guard(mode: DaneMode) -> DaneSettings {
        DaneSettings {
            mode,
            ..DaneSettings::off()
        }
    }

    fn validated(owner: &str, records: Vec<Tlsa>) -> OwnerLookup {
        OwnerLookup {
            owner: owner.into(),
            result: Ok(Lookup::Validated(records)),
        }
    }

    const OWNER: &str = "_25._tcp.mail.example.com.";

    #[test]
    fn the_guard_installs_a_match_and_holds_a_new_key_with_the_record_to_publish() {
        let ca = TestCa::new();
        let old = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let new = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let rec = Tlsa::dane_ee_spki_sha256(&old.cert).unwrap();
        let s = guard(DaneMode::Auto);
        let l = [validated(OWNER, vec![rec.clone()])];
        assert_eq!(
            decide(&s, &l, &chain(&old, &ca), Some(60)),
            Verdict::Install { notes: vec![] }
        );
        let next = Tlsa::dane_ee_spki_sha256(&new.cert).unwrap();
        assert_eq!(
            decide(&s, &l, &chain(&new, &ca), Some(60)),
            Verdict::Hold {
                notes: vec![],
                publish: vec![next.zone_line(OWNER)]
            }
        );
        // "current + next" published: both pairs pass.
        let both = [validated(OWNER, vec![rec, next])];
        assert!(matches!(
            decide(&s, &both, &chain(&new, &ca), Some(60)),
            Verdict::Install { .. }
        ));
    }

    #[test]
    fn the_deadline_forces_the_install_with_a_warning() {
        let ca = TestCa::new();
        let old = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let new = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let l = [validated(
            OWNER,
            vec![Tlsa::dane_ee_spki_sha256(&old.cert).unwrap()],
        )];
        let s = guard(DaneMode::Auto);
        assert!(matches!(
            decide(&s, &l, &chain(&new, &ca), Some(8)),
            Verdict::Hold { .. }
        ));
        for left in [Some(7), Some(-1), None] {
            match decide(&s, &l, &chain(&new, &ca), left) {
                Verdict::Forced {
                    warning, publish, ..
                } => {
                    assert!(warning.contains("DANE-validating senders"), "{warning}");
                    assert_eq!(publish.len(), 1);
                }
                v => panic!("{left:?}: {v:?}"),
            }
        }
    }

    #[test]
    fn unvalidated_answers_and_an_unreachable_resolver_never_hold_in_auto() {
        let ca = TestCa::new();
        let old = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let new = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let rec = Tlsa::dane_ee_spki_sha256(&old.cert).unwrap();
        let unsigned = OwnerLookup {
            owner: OWNER.into(),
            result: Ok(Lookup::Unvalidated(vec![rec])),
        };
        let down = OwnerLookup {
            owner: "_25._tcp.mx2.example.com.".into(),
            result: Err(DaneError::Timeout {
                name: "_25._tcp.mx2.example.com.".into(),
                resolver: "127.0.0.1:53".parse().unwrap(),
                secs: 5,
            }),
        };
        let l = [unsigned, down];
        match decide(&guard(DaneMode::Auto), &l, &chain(&new, &ca), Some(60)) {
            Verdict::Install { notes } => {
                assert_eq!(notes.len(), 2, "{notes:?}");
                assert!(notes[0].contains("no AD bit"), "{}", notes[0]);
            }
            v => panic!("{v:?}"),
        }
        // require: neither counts as validated records.
        assert!(matches!(
            decide(&guard(DaneMode::Require), &l, &chain(&new, &ca), Some(60)),
            Verdict::Refuse { .. }
        ));
        // off: nothing is even looked at.
        assert_eq!(
            decide(&guard(DaneMode::Off), &l, &chain(&new, &ca), Some(60)),
            Verdict::Install { notes: vec![] }
        );
    }

    #[test]
    fn servfail_refuses_and_require_wants_validated_records() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let bogus = [OwnerLookup {
            owner: OWNER.into(),
            result: Err(DaneError::ServFail {
                name: OWNER.into(),
                resolver: "127.0.0.1:53".parse().unwrap(),
            }),
        }];
        assert!(matches!(
            decide(&guard(DaneMode::Auto), &bogus, &chain(&leaf, &ca), Some(60)),
            Verdict::Refuse { .. }
        ));
        // At the deadline, a broken zone does not stop the renewal.
        assert!(matches!(
            decide(&guard(DaneMode::Auto), &bogus, &chain(&leaf, &ca), Some(3)),
            Verdict::Forced { .. }
        ));
        let none = [validated(OWNER, vec![])];
        assert_eq!(
            decide(&guard(DaneMode::Auto), &none, &chain(&leaf, &ca), Some(60)),
            Verdict::Install { notes: vec![] }
        );
        assert!(matches!(
            decide(
                &guard(DaneMode::Require),
                &none,
                &chain(&leaf, &ca),
                Some(60)
            ),
            Verdict::Refuse { .. }
        ));
        let ok = [validated(
            OWNER,
            vec![Tlsa::dane_ee_spki_sha256(&leaf.cert).unwrap()],
        )];
        assert!(matches!(
            decide(&guard(DaneMode::Require), &ok, &chain(&leaf, &ca), Some(60)),
            Verdict::Install { .. }
        ));
    }

    #[test]
    fn dane_ports_add_owner_names_after_25() {
        let cert = "[mailcow]\ndir = \"/opt/mailcow-dockerized\"\n[[cert]]\nname = \"mail\"\n";
        let parse =
            |t: &str| ReceiveConfig::from_toml(&format!("{t}{cert}"), Path::new("receive.toml"));
        let raw = parse(
            "dane = \"require\"\ndane_ports = [465, 25, 587]\ndns_resolver = \"127.0.0.1:5353\"\n",
        )
        .unwrap();
        let s = DaneSettings::from_config(&raw);
        assert_eq!(s.mode, DaneMode::Require);
        assert_eq!(s.deadline_days, DEFAULT_DEADLINE_DAYS);
        assert_eq!(s.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(
            s.owners(&["mail.example.com".into()]),
            vec![
                "_25._tcp.mail.example.com.",
                "_465._tcp.mail.example.com.",
                "_587._tcp.mail.example.com."
            ]
        );
        let default = parse("").unwrap();
        assert_eq!(DaneSettings::from_config(&default).mode, DaneMode::Auto);
        assert!(parse("dane = \"maybe\"\n").is_err());
    }
}
