//! A certificate pair as bytes, and its parsed form.
//!
//! The bytes are kept exactly as they were read from the certbot live dir or
//! the wire: the receiver installs these very bytes, so the SHA-256 of the
//! installed file equals the SHA-256 of the source file. The private key
//! lives in [`SecretBytes`], which never prints and is zeroed on drop.

use std::fmt;

use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::x509::X509;
use zeroize::Zeroizing;

use crate::fingerprint::Fingerprint;

/// Bytes of private key material. `Debug` prints only the length; the
/// memory is overwritten with zeros when the value is dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// The secret bytes. Callers must not log or format them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(z: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(z)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted, {} bytes>)", self.0.len())
    }
}

/// A certificate pair: the full chain (leaf first, then intermediates, as
/// certbot's `fullchain.pem`) and the private key (`privkey.pem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub chain: Vec<u8>,
    pub key: SecretBytes,
}

/// What is wrong with the bytes of a pair, before any policy is applied.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the certificate file holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\")"
    )]
    NoCertificate,
    #[error("the certificate file holds a PEM block labelled {0}; only CERTIFICATE blocks belong in a full chain")]
    UnexpectedCertBlock(PemLabel),
    #[error("the certificate file holds {0} certificates; at most {1} are accepted")]
    TooManyCertificates(usize, usize),
    #[error("certificate {index} of the chain does not parse: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("the private key file holds no PEM private key (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoKey,
    #[error(
        "the private key is encrypted; certsync needs the unencrypted key that certbot writes"
    )]
    EncryptedKey,
    #[error("the private key file holds a PEM block labelled {0}, which is not a private key")]
    UnexpectedKeyBlock(PemLabel),
    #[error("the private key file holds more than one private key")]
    SeveralKeys,
    #[error("the private key does not parse (PKCS#8, PKCS#1 and SEC1 PEM are accepted)")]
    BadKey,
    #[error("the {0} file's lines end in CR alone, which OpenSSL's PEM reader does not accept; convert it to LF line endings (tr '\\r' '\\n')")]
    CrOnlyLineEndings(&'static str),
}

/// At most this many certificates in a full chain (leaf + intermediates).
pub const MAX_CHAIN_CERTS: usize = 8;

/// The certificates and the key, parsed.
pub struct ParsedBundle {
    /// Leaf first.
    pub certs: Vec<X509>,
    pub key: PKey<Private>,
}

impl fmt::Debug for ParsedBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedBundle")
            .field("certs", &self.certs.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Bundle {
    pub fn new(chain: Vec<u8>, key: SecretBytes) -> Bundle {
        Bundle { chain, key }
    }

    /// SHA-256 of the full-chain bytes (what the installed cert file hashes to).
    pub fn chain_sha256(&self) -> Fingerprint {
        Fingerprint::of_bytes(&self.chain)
    }

    /// SHA-256 of the key bytes (what the installed key file hashes to). A
    /// digest of a high-entropy secret reveals nothing usable about it.
    pub fn key_sha256(&self) -> Fingerprint {
        Fingerprint::of_bytes(self.key.expose())
    }

    /// Parse both halves. This checks form only, not policy: see
    /// [`crate::validate`].
    pub fn parse(&self) -> Result<ParsedBundle, BundleError> {
        let certs = parse_chain(&self.chain)?;
        let key = parse_key(self.key.expose())?;
        Ok(ParsedBundle { certs, key })
    }
}

/// A PEM block's label as operators see it in an error.
///
/// Only the well-known labels are ever shown, as this crate's own
/// constants: a label is input, and input may be key material. A key file
/// with CR-only line endings is one long "line", so its "label" runs on
/// into the base64 of the private key; echoing even part of it once put
/// 8 bytes of a private scalar into the log, the report and
/// `deploy.result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemLabel {
    /// One of [`KNOWN_LABELS`].
    Known(&'static str),
    /// Anything else; never shown.
    Unknown,
}

/// The PEM labels of RFC 7468 and OpenSSL that may be named in an error.
pub const KNOWN_LABELS: &[&str] = &[
    "CERTIFICATE",
    "TRUSTED CERTIFICATE",
    "X509 CRL",
    "CERTIFICATE REQUEST",
    "NEW CERTIFICATE REQUEST",
    "PKCS7",
    "CMS",
    "PUBLIC KEY",
    "RSA PUBLIC KEY",
    "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "DSA PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "EC PARAMETERS",
    "DH PARAMETERS",
    "X9.42 DH PARAMETERS",
];

impl PemLabel {
    fn of(label: &[u8]) -> PemLabel {
        KNOWN_LABELS
            .iter()
            .find(|k| k.as_bytes() == label)
            .map_or(PemLabel::Unknown, |k| PemLabel::Known(k))
    }

    fn is(&self, name: &str) -> bool {
        matches!(self, PemLabel::Known(k) if *k == name)
    }
}

impl fmt::Display for PemLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemLabel::Known(k) => write!(f, "{k:?}"),
            PemLabel::Unknown => {
                f.write_str("with an unrecognised label (not shown: it may hold key material)")
            }
        }
    }
}

/// The labels of the PEM blocks in `text`, in order (`BEGIN` lines only).
/// Lines end at LF, CR or CRLF, so a file with CR-only endings still has
/// its labels recognised.
pub(crate) fn pem_labels(text: &[u8]) -> Vec<PemLabel> {
    let mut labels = Vec::new();
    for line in text.split(|b| *b == b'\n' || *b == b'\r') {
        let line = trim_ascii(line);
        if let Some(rest) = line.strip_prefix(b"-----BEGIN ") {
            if let Some(label) = rest.strip_suffix(b"-----") {
                labels.push(PemLabel::of(label));
            }
        }
    }
    labels
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Parse a PEM full chain: CERTIFICATE blocks only, leaf first.
pub fn parse_chain(pem: &[u8]) -> Result<Vec<X509>, BundleError> {
    parse_certificates(pem, MAX_CHAIN_CERTS)
}

/// Parse PEM holding only CERTIFICATE blocks, at most `max` of them (counted
/// before anything is decoded), every one of which must decode: a full
/// chain, or the trust anchors of receive.toml's `ca_file`.
pub fn parse_certificates(pem: &[u8], max: usize) -> Result<Vec<X509>, BundleError> {
    if cr_only(pem) {
        return Err(BundleError::CrOnlyLineEndings("certificate"));
    }
    let labels = pem_labels(pem);
    if let Some(other) = labels.iter().find(|l| !l.is("CERTIFICATE")) {
        return Err(BundleError::UnexpectedCertBlock(*other));
    }
    if labels.is_empty() {
        return Err(BundleError::NoCertificate);
    }
    if labels.len() > max {
        return Err(BundleError::TooManyCertificates(labels.len(), max));
    }
    let certs = X509::stack_from_pem(pem).map_err(|e| BundleError::BadCertificate {
        index: 0,
        reason: first_reason(&e),
    })?;
    if certs.len() != labels.len() {
        return Err(BundleError::BadCertificate {
            index: certs.len(),
            reason: "the PEM block does not decode to a certificate".into(),
        });
    }
    Ok(certs)
}

/// Parse a PEM private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE
/// KEY`) or SEC1 (`EC PRIVATE KEY`, optionally after `EC PARAMETERS`).
/// Encrypted keys are refused before OpenSSL could ask for a passphrase.
pub fn parse_key(pem: &[u8]) -> Result<PKey<Private>, BundleError> {
    let labels = pem_labels(pem);
    let mut keys = 0;
    for label in &labels {
        match label {
            PemLabel::Known("PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY") => keys += 1,
            PemLabel::Known("ENCRYPTED PRIVATE KEY") => return Err(BundleError::EncryptedKey),
            PemLabel::Known("EC PARAMETERS") => {}
            other => return Err(BundleError::UnexpectedKeyBlock(*other)),
        }
    }
    if keys == 0 {
        return Err(BundleError::NoKey);
    }
    if keys > 1 {
        return Err(BundleError::SeveralKeys);
    }
    if cr_only(pem) {
        return Err(BundleError::CrOnlyLineEndings("private key"));
    }
    // Traditional PEM encryption puts a Proc-Type header inside the block.
    if pem.windows(b"Proc-Type:".len()).any(|w| w == b"Proc-Type:") {
        return Err(BundleError::EncryptedKey);
    }
    // A callback that never supplies a passphrase: OpenSSL must not prompt.
    PKey::private_key_from_pem_callback(pem, |_buf| Ok(0)).map_err(|_| BundleError::BadKey)
}

/// Line breaks that are CR alone (no LF anywhere).
fn cr_only(pem: &[u8]) -> bool {
    pem.contains(&b'\r') && !pem.contains(&b'\n')
}

fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|e| e.reason().map(str::to_string))
        .unwrap_or_else(|| "malformed PEM or DER".to_string())
}

/// A short description of a key's algorithm: `RSA-2048`, `ECDSA P-384`,
/// `Ed25519`, … (for `discover` and log lines).
pub fn key_type<T: openssl::pkey::HasPublic>(key: &PKey<T>) -> String {
    match key.id() {
        Id::RSA => format!("RSA-{}", key.bits()),
        Id::EC => {
            let curve = key
                .ec_key()
                .ok()
                .and_then(|ec| ec.group().curve_name())
                .map(|nid| match nid {
                    Nid::X9_62_PRIME256V1 => "P-256".to_string(),
                    Nid::SECP384R1 => "P-384".to_string(),
                    Nid::SECP521R1 => "P-521".to_string(),
                    other => other.short_name().unwrap_or("unknown curve").to_string(),
                })
                .unwrap_or_else(|| "unknown curve".to_string());
            format!("ECDSA {curve}")
        }
        Id::ED25519 => "Ed25519".to_string(),
        Id::ED448 => "Ed448".to_string(),
        _ => "unknown key type".to_string(),
    }
}

/// Facts about a certificate that operators read: for `discover`, logs and
/// reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    pub subject: String,
    pub sans: Vec<String>,
    pub key_type: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    pub fingerprint: Fingerprint,
}

impl CertInfo {
    pub fn of(cert: &X509) -> CertInfo {
        let subject = cert
            .subject_name()
            .entries()
            .map(|e| {
                let key = e.object().nid().short_name().unwrap_or("?");
                let value = e.data().to_string().unwrap_or_else(|_| "?".into());
                format!("{key}={value}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let key_type = cert
            .public_key()
            .map(|k| key_type(&k))
            .unwrap_or_else(|_| "unknown key type".into());
        CertInfo {
            subject,
            sans: san_dns_names(cert),
            key_type,
            not_before: asn1_to_unix(cert.not_before()).unwrap_or(i64::MIN),
            not_after: asn1_to_unix(cert.not_after()).unwrap_or(i64::MIN),
            fingerprint: leaf_fingerprint(cert),
        }
    }

    /// Whole days from `now` (Unix seconds) until notAfter; negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// SHA-256 of the certificate's DER, as `openssl x509 -fingerprint -sha256`.
pub fn leaf_fingerprint(cert: &X509) -> Fingerprint {
    match cert.to_der() {
        Ok(der) => Fingerprint::of_der(&der),
        // A certificate that parsed always re-encodes; keep a defined value.
        Err(_) => Fingerprint([0; 32]),
    }
}

/// The DNS names in the subjectAltName extension, as written.
pub fn san_dns_names(cert: &X509) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// An ASN.1 time as seconds since the Unix epoch.
pub fn asn1_to_unix(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(t).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{KeyKind, TestCa};

    #[test]
    fn secret_bytes_never_print() {
        let s = SecretBytes::new(b"-----BEGIN PRIVATE KEY-----\nsecret".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redacted"));
        let b = Bundle::new(b"x".to_vec(), s);
        assert!(!format!("{b:?}").contains("secret"));
    }

    #[test]
    fn parses_every_key_kind_and_describes_it() {
        let ca = TestCa::new();
        for (kind, expect) in [
            (KeyKind::Rsa2048, "RSA-2048"),
            (KeyKind::P256, "ECDSA P-256"),
            (KeyKind::P384, "ECDSA P-384"),
            (KeyKind::Ed25519, "Ed25519"),
        ] {
            let leaf = ca.leaf(kind, &["mail.example.com"]);
            let parsed = leaf.bundle().parse().unwrap();
            assert_eq!(parsed.certs.len(), 2);
            assert_eq!(key_type(&parsed.key), expect);
            let info = CertInfo::of(&parsed.certs[0]);
            assert_eq!(info.sans, vec!["mail.example.com".to_string()]);
            assert_eq!(info.key_type, expect);
        }
    }

    #[test]
    fn accepts_pkcs1_and_sec1_encodings() {
        let ca = TestCa::new();
        let rsa = ca.leaf(KeyKind::Rsa2048, &["a.example"]);
        let pkcs1 = rsa.key_pkcs1_or_sec1();
        assert!(String::from_utf8_lossy(&pkcs1).contains("BEGIN RSA PRIVATE KEY"));
        parse_key(&pkcs1).unwrap();
        let ec = ca.leaf(KeyKind::P256, &["a.example"]);
        let sec1 = ec.key_pkcs1_or_sec1();
        assert!(String::from_utf8_lossy(&sec1).contains("BEGIN EC PRIVATE KEY"));
        parse_key(&sec1).unwrap();
    }

    #[test]
    fn refuses_encrypted_and_foreign_blocks() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["a.example"]);
        let enc = leaf.key_encrypted();
        assert!(matches!(parse_key(&enc), Err(BundleError::EncryptedKey)));
        assert!(matches!(
            parse_key(&leaf.chain_pem),
            Err(BundleError::UnexpectedKeyBlock(_))
        ));
        assert!(matches!(parse_key(b"hello"), Err(BundleError::NoKey)));
        assert!(matches!(
            parse_chain(leaf.key_pem.expose()),
            Err(BundleError::UnexpectedCertBlock(_))
        ));
        assert!(matches!(parse_chain(b""), Err(BundleError::NoCertificate)));
        let mut two = leaf.key_pem.expose().to_vec();
        two.extend_from_slice(leaf.key_pem.expose());
        assert!(matches!(parse_key(&two), Err(BundleError::SeveralKeys)));
        // CR-only line endings: the labels are still recognised (none is
        // echoed), and the error says what to do.
        let cr: Vec<u8> = leaf
            .key_pkcs1_or_sec1()
            .iter()
            .map(|&b| if b == b'\n' { b'\r' } else { b })
            .collect();
        assert!(matches!(
            parse_key(&cr),
            Err(BundleError::CrOnlyLineEndings("private key"))
        ));
        let cr: Vec<u8> = leaf
            .chain_pem
            .iter()
            .map(|&b| if b == b'\n' { b'\r' } else { b })
            .collect();
        assert!(matches!(
            parse_chain(&cr),
            Err(BundleError::CrOnlyLineEndings("certificate"))
        ));
        let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_chain(broken),
            Err(BundleError::BadCertificate { .. })
        ));
    }

    #[test]
    fn fingerprint_matches_der_digest() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P384, &["a.example"]);
        let parsed = leaf.bundle().parse().unwrap();
        let der = parsed.certs[0].to_der().unwrap();
        assert_eq!(
            leaf_fingerprint(&parsed.certs[0]),
            Fingerprint::of_bytes(&der)
        );
    }
}
