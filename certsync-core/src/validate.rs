//! Every rule a pair must pass before it is installed (docs/contract.md
//! "The receiving pipeline", step 3).
//!
//! Validation works on the bytes in memory — the same bytes that will be
//! installed — and is the only way to make a [`ValidatedBundle`]. The rules:
//!
//! 1. both halves parse (see [`crate::bundle`]);
//! 2. the leaf's public key equals the private key's public key, compared
//!    as keys (`EVP_PKEY_eq`), so it works for RSA, ECDSA and Ed25519 alike —
//!    never by comparing an RSA modulus, which says nothing about EC keys;
//! 3. the leaf's subjectAltName covers every configured hostname, with
//!    RFC 6125 wildcards: `*` only as the whole left-most label, matching
//!    exactly one label;
//! 4. now is inside notBefore..notAfter;
//! 5. the chain is in order: each certificate is issued and signed by the
//!    next one;
//! 6. the leaf is what a TLS client accepts from a server: not a CA
//!    (`basicConstraints CA:TRUE`), an extended key usage (if any) that
//!    allows serverAuth, and a key that is not weak (RSA of at least 2048
//!    bits; ECDSA on P-256, P-384 or P-521; Ed25519 or Ed448);
//! 7. the chain verifies to a trust anchor ([`Anchors`]: the system store
//!    and the receiver's `ca_file`), as a client would verify it: at
//!    [`Policy::now`], for the TLS server purpose, with OpenSSL's security
//!    level 2 for every key and signature in the chain;
//! 8. no rollback: the new notAfter is not older than the installed one,
//!    unless [`Policy::force`] allows it. Only the receiver decides that
//!    ([`Force`]): a pusher's `--force` counts only where receive.toml says
//!    `allow_remote_force = true`.
//!
//! No error message holds input bytes that could be key material: PEM
//! labels are named only when well known ([`crate::bundle::PemLabel`]),
//! certificates are named by their fingerprint and an escaped, bounded
//! subject CN, and OpenSSL's reasons are its own constant strings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKey, PKeyRef};
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509PurposeId, X509Ref, X509StoreContext, X509VerifyResult, X509};

use crate::bundle::{asn1_to_unix, key_type, parse_certificates, Bundle, BundleError, CertInfo};
use crate::fingerprint::Fingerprint;

/// Who allows a rollback (a notAfter older than the installed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Force {
    /// Nobody asked: a rollback is refused.
    #[default]
    No,
    /// Allowed: root's `--force` on the receiving host, or the pusher's
    /// where receive.toml sets `allow_remote_force = true`.
    Allowed,
    /// The pusher asked, but receive.toml does not allow a remote force.
    RemoteRefused,
}

/// The trust anchors a chain must verify to: OpenSSL's default store (the
/// system's, `/etc/ssl/certs` on Debian) and the certificates of the
/// receiver's `ca_file`, a PEM bundle of extra anchors for a private CA.
#[derive(Clone)]
pub struct Anchors {
    system: bool,
    extra: Arc<Vec<X509>>,
    ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Anchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchors")
            .field("system", &self.system)
            .field("extra", &self.extra.len())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Largest `ca_file` read (Debian's whole ca-certificates bundle is ~220 KiB).
pub const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most certificates in `ca_file` (that bundle holds ~150).
pub const MAX_CA_FILE_CERTS: usize = 1000;

/// Why `ca_file` cannot serve as trust anchors.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot read ca_file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ca_file {path} is larger than {MAX_CA_FILE_BYTES} bytes; it should hold only your private CA's root certificate(s)")]
    TooLarge { path: PathBuf },
    #[error("ca_file {path}: {source}; it must hold PEM certificates (-----BEGIN CERTIFICATE-----) of the CAs to trust")]
    Bad {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
}

impl Anchors {
    /// The system store plus every certificate in `ca_file` (if set).
    pub fn load(ca_file: Option<&Path>) -> Result<Anchors, AnchorError> {
        let extra = match ca_file {
            None => Vec::new(),
            Some(path) => read_ca_file(path)?,
        };
        Ok(Anchors {
            system: true,
            extra: Arc::new(extra),
            ca_file: ca_file.map(Path::to_path_buf),
        })
    }

    /// Only these certificates, without the system store (for tests).
    pub fn only(certs: Vec<X509>) -> Anchors {
        Anchors {
            system: false,
            extra: Arc::new(certs),
            ca_file: None,
        }
    }

    /// What an operator adds to trust a private CA, for error messages.
    fn hint(&self) -> String {
        match &self.ca_file {
            Some(p) => format!(
                "the system store and ca_file {} do not hold its root; a TLS client would refuse it. Send a certificate from a CA that clients trust, or add your private CA's root certificate to {}",
                p.display(),
                p.display()
            ),
            None => "the system store does not hold its root; a TLS client would refuse it. Send a certificate from a CA that clients trust, or, for a private CA, set ca_file = \"PATH\" (its root certificate, PEM) at the top of receive.toml".to_string(),
        }
    }

    /// A store for one verification, at `now` (the policy's clock, not the
    /// wall clock: tests and `check` move it).
    fn store(&self, now: i64) -> Result<X509Store, openssl::error::ErrorStack> {
        let mut b = X509StoreBuilder::new()?;
        if self.system {
            b.set_default_paths()?;
        }
        for c in self.extra.iter() {
            b.add_cert(c.clone())?;
        }
        let mut param = X509VerifyParam::new()?;
        // set_time also sets X509_V_FLAG_USE_CHECK_TIME: every certificate
        // of the chain is checked against `now`, never the wall clock.
        param.set_time(now as libc::time_t);
        param.set_purpose(X509PurposeId::SSL_SERVER)?;
        // Security level 2 (112 bits): RSA/DH >= 2048, ECC >= 224, no
        // SHA-1 signatures, for every certificate of the chain.
        param.set_auth_level(2);
        param.set_depth(crate::bundle::MAX_CHAIN_CERTS as i32 + 1);
        b.set_param(&param)?;
        Ok(b.build())
    }
}

fn read_ca_file(path: &Path) -> Result<Vec<X509>, AnchorError> {
    let buf =
        crate::fsread::read_path_capped(path, MAX_CA_FILE_BYTES as usize).map_err(|source| {
            match crate::fsread::Refusal::of(&source) {
                Some(crate::fsread::Refusal::TooLarge(_)) => AnchorError::TooLarge {
                    path: path.to_path_buf(),
                },
                _ => AnchorError::Read {
                    path: path.to_path_buf(),
                    source,
                },
            }
        })?;
    parse_certificates(&buf, MAX_CA_FILE_CERTS).map_err(|source| AnchorError::Bad {
        path: path.to_path_buf(),
        source,
    })
}

/// What a pair is checked against. The hostnames come from the receiver's
/// own config, never from the wire.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    pub hostnames: &'a [String],
    /// The clock, as a parameter so tests can move it. Chain verification
    /// uses it too.
    pub now: SystemTime,
    /// notAfter of the pair installed now, if any (Unix seconds).
    pub installed_not_after: Option<i64>,
    /// Whether an older notAfter is allowed, and who asked.
    pub force: Force,
    /// The trust anchors the chain must verify to.
    pub anchors: &'a Anchors,
}

/// Why a pair was refused. Every message says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("the private key does not belong to the certificate (leaf {leaf}): the pair was read mid-renewal or the files were mixed up")]
    KeyMismatch { leaf: Fingerprint },
    #[error("the certificate (SANs: {sans}) does not cover the hostname {hostname:?}; check which live/npm-N dir the pusher reads")]
    NameNotCovered { hostname: String, sans: String },
    #[error("the certificate is not valid yet: notBefore is {not_before} (Unix time), now is {now}; check both hosts' clocks")]
    NotYetValid { not_before: i64, now: i64 },
    #[error("the certificate expired: notAfter was {not_after} (Unix time), now is {now}; renew it on the NPM host first")]
    Expired { not_after: i64, now: i64 },
    #[error("the chain is out of order: certificate {index} is not issued and signed by certificate {next}; send fullchain.pem (leaf first)")]
    ChainOrder { index: usize, next: usize },
    #[error("the leaf {leaf} is a CA certificate (basicConstraints CA:TRUE), not a server certificate; TLS clients refuse it. Send the server's own certificate first (fullchain.pem), not the CA's")]
    CaLeaf { leaf: String },
    #[error("the leaf {leaf} may not be used by a TLS server: its extended key usage lacks serverAuth ({eku}); clients refuse it. Have it issued for server use (EKU serverAuth)")]
    NotForServers { leaf: String, eku: String },
    #[error("the leaf {leaf} has a weak key ({key_type}); clients refuse it. Use RSA of at least 2048 bits or ECDSA P-256/P-384 (certbot's defaults)")]
    WeakKey { leaf: String, key_type: String },
    #[error("the leaf {leaf} is self-signed: no TLS client trusts it. Send a certificate issued by a CA (for a private CA, add its root to ca_file in receive.toml)")]
    SelfSigned { leaf: String },
    #[error("the chain of the leaf {leaf} does not verify to a trusted CA: {reason} (at {cert}); {hint}")]
    Untrusted {
        leaf: String,
        reason: &'static str,
        cert: String,
        hint: String,
    },
    #[error("rollback refused: the new certificate expires at {new} (Unix time), before the installed one ({installed}). {}", rollback_advice(*force))]
    Rollback {
        new: i64,
        installed: i64,
        force: Force,
    },
    #[error("no hostname is configured for this certificate; set `hostnames` (or the [mailcow] preset) in receive.toml")]
    NoHostnames,
}

fn rollback_advice(force: Force) -> &'static str {
    match force {
        Force::RemoteRefused => "The pusher asked for --force, but this receiver does not allow a remote force (receive.toml: allow_remote_force is not true): rollback is the receiving host's decision. To roll back on purpose, run as root on this host `certsync-receive install --force --name NAME --cert FULLCHAIN --key PRIVKEY` (or `certsync-receive deploy --force` for a staged pair), or set allow_remote_force = true at the top of receive.toml and push with --force again",
        _ => "To roll back on purpose, run as root on this host `certsync-receive install --force --name NAME --cert FULLCHAIN --key PRIVKEY` (or `certsync-receive deploy --force` for a staged pair); a pusher's `push --force` counts only where receive.toml sets allow_remote_force = true",
    }
}

/// A certificate as named in an error: its SHA-256 fingerprint and subject
/// CN, the CN escaped and cut short (it is input, shown to operators).
pub fn describe(cert: &X509Ref) -> String {
    let fp = cert
        .to_der()
        .map(|der| Fingerprint::of_der(&der).short())
        .unwrap_or_else(|_| "unknown".into());
    let cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok());
    match cn {
        Some(cn) => {
            let shown: String = cn.chars().take(64).flat_map(char::escape_debug).collect();
            format!("\"CN={shown}\" (SHA256 {fp}…)")
        }
        None => format!("(SHA256 {fp}…)"),
    }
}

/// A pair that passed every rule of [`validate`]. Only [`validate`] makes one,
/// so a function that takes a `ValidatedBundle` cannot be handed an
/// unchecked pair.
#[derive(Debug, Clone)]
pub struct ValidatedBundle {
    bundle: Bundle,
    info: CertInfo,
    chain_sha256: Fingerprint,
    key_sha256: Fingerprint,
}

impl ValidatedBundle {
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }
    /// Subject, SANs, key type, validity and the leaf's fingerprint.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }
    pub fn leaf_fingerprint(&self) -> Fingerprint {
        self.info.fingerprint
    }
    pub fn chain_sha256(&self) -> Fingerprint {
        self.chain_sha256
    }
    pub fn key_sha256(&self) -> Fingerprint {
        self.key_sha256
    }
    pub fn not_after(&self) -> i64 {
        self.info.not_after
    }
}

/// Check a pair against every rule. See the module docs for the list.
pub fn validate(bundle: Bundle, policy: &Policy<'_>) -> Result<ValidatedBundle, ValidationError> {
    let parsed = bundle.parse()?;
    let leaf = &parsed.certs[0];
    let info = CertInfo::of(leaf);

    let leaf_key = leaf.public_key().map_err(|_| BundleError::BadCertificate {
        index: 0,
        reason: "the leaf's public key does not decode".into(),
    })?;
    if !leaf_key.public_eq(&parsed.key) {
        return Err(ValidationError::KeyMismatch {
            leaf: info.fingerprint,
        });
    }

    covers(&info.sans, policy)?;

    let now = crate::time::unix_seconds(policy.now);
    let not_before = asn1_to_unix(leaf.not_before()).unwrap_or(i64::MAX);
    let not_after = asn1_to_unix(leaf.not_after()).unwrap_or(i64::MIN);
    if now < not_before {
        return Err(ValidationError::NotYetValid { not_before, now });
    }
    if now > not_after {
        return Err(ValidationError::Expired { not_after, now });
    }

    for (index, pair) in parsed.certs.windows(2).enumerate() {
        let (cert, issuer) = (&pair[0], &pair[1]);
        let issued = issuer.issued(cert) == X509VerifyResult::OK;
        let signed = issuer
            .public_key()
            .and_then(|k| cert.verify(&k))
            .unwrap_or(false);
        if !(issued && signed) {
            return Err(ValidationError::ChainOrder {
                index,
                next: index + 1,
            });
        }
    }

    server_leaf(leaf, &leaf_key)?;
    verify_chain(&parsed.certs, policy.anchors, now)?;

    no_rollback(not_after, policy)?;

    let chain_sha256 = bundle.chain_sha256();
    let key_sha256 = bundle.key_sha256();
    Ok(ValidatedBundle {
        bundle,
        info,
        chain_sha256,
        key_sha256,
    })
}

/// Rule 2: the leaf's `sans` cover every configured hostname.
fn covers(sans: &[String], policy: &Policy<'_>) -> Result<(), ValidationError> {
    if policy.hostnames.is_empty() {
        return Err(ValidationError::NoHostnames);
    }
    for hostname in policy.hostnames {
        if !sans.iter().any(|san| san_matches(san, hostname)) {
            return Err(ValidationError::NameNotCovered {
                hostname: hostname.clone(),
                sans: if sans.is_empty() {
                    "none".into()
                } else {
                    sans.join(", ")
                },
            });
        }
    }
    Ok(())
}

/// The rollback rule: no older notAfter than the installed pair's
/// unless forced where that counts.
fn no_rollback(not_after: i64, policy: &Policy<'_>) -> Result<(), ValidationError> {
    match policy.installed_not_after {
        Some(installed) if not_after < installed && policy.force != Force::Allowed => {
            Err(ValidationError::Rollback {
                new: not_after,
                installed,
                force: policy.force,
            })
        }
        _ => Ok(()),
    }
}

/// What of [`validate`] can be judged from an offer alone (an offer-only
/// dry run, `certsync-push status`, sends no pair): the names in `sans`
/// (the pusher's word for its leaf's DNS names; not checked when it sent
/// none), expiry and rollback from `not_after`. The key, the chain and
/// notBefore are not in an offer and stay unchecked. `sans` is input:
/// only names a certificate could hold are looked at, at most
/// [`crate::protocol::MAX_OFFER_SANS`].
pub fn validate_offer(
    sans: &[String],
    not_after: i64,
    policy: &Policy<'_>,
) -> Result<(), ValidationError> {
    let sans: Vec<String> = sans
        .iter()
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*'))
        })
        .take(crate::protocol::MAX_OFFER_SANS)
        .cloned()
        .collect();
    if policy.hostnames.is_empty() || !sans.is_empty() {
        covers(&sans, policy)?;
    }
    let now = crate::time::unix_seconds(policy.now);
    if now > not_after {
        return Err(ValidationError::Expired { not_after, now });
    }
    no_rollback(not_after, policy)
}

/// Rule 6: a leaf a TLS client accepts from a server.
fn server_leaf<T: HasPublic>(leaf: &X509Ref, key: &PKey<T>) -> Result<(), ValidationError> {
    if is_ca(leaf) {
        return Err(ValidationError::CaLeaf {
            leaf: describe(leaf),
        });
    }
    if let Some(eku) = leaf.extended_key_usage() {
        use openssl::x509::X509ExtendedKeyUsage as Eku;
        if !eku.intersects(Eku::SSL_SERVER | Eku::ANYEKU) {
            let names: Vec<&str> = [
                (Eku::SSL_CLIENT, "clientAuth"),
                (Eku::SMIME, "emailProtection"),
                (Eku::CODE_SIGN, "codeSigning"),
                (Eku::OCSP_SIGN, "OCSPSigning"),
                (Eku::TIMESTAMP, "timeStamping"),
            ]
            .into_iter()
            .filter(|(flag, _)| eku.contains(*flag))
            .map(|(_, name)| name)
            .collect();
            return Err(ValidationError::NotForServers {
                leaf: describe(leaf),
                eku: if names.is_empty() {
                    "it lists only other purposes".into()
                } else {
                    format!("it allows only {}", names.join(", "))
                },
            });
        }
    }
    if weak_key(key) {
        return Err(ValidationError::WeakKey {
            leaf: describe(leaf),
            key_type: key_type(key),
        });
    }
    Ok(())
}

/// Does the certificate say `basicConstraints CA:TRUE`?
fn is_ca(cert: &X509Ref) -> bool {
    use foreign_types::ForeignTypeRef;
    // SAFETY: the pointer is a valid X509 for the borrow of `cert`;
    // X509_get_extension_flags only reads it (it caches the decoded
    // extensions inside the X509, as every other OpenSSL getter does).
    let flags = unsafe { openssl_sys::X509_get_extension_flags(cert.as_ptr()) };
    flags & openssl_sys::EXFLAG_CA != 0
}

/// RSA below 2048 bits, a curve below P-256 or one TLS clients do not
/// offer, DSA, or an unknown key type.
fn weak_key<T: HasPublic>(key: &PKeyRef<T>) -> bool {
    match key.id() {
        Id::RSA => key.bits() < 2048,
        Id::EC => !key
            .ec_key()
            .ok()
            .and_then(|ec| ec.group().curve_name())
            .is_some_and(|nid| {
                matches!(nid, Nid::X9_62_PRIME256V1 | Nid::SECP384R1 | Nid::SECP521R1)
            }),
        Id::ED25519 | Id::ED448 => false,
        _ => true,
    }
}

/// Rule 7: the chain verifies to a trust anchor at `now`.
fn verify_chain(certs: &[X509], anchors: &Anchors, now: i64) -> Result<(), ValidationError> {
    let untrusted = |reason: &'static str, cert: String, hint: String| ValidationError::Untrusted {
        leaf: describe(&certs[0]),
        reason,
        cert,
        hint,
    };
    let setup = |_| {
        untrusted(
            "OpenSSL could not set up the verification",
            describe(&certs[0]),
            "try again; if it persists, check the OpenSSL installation".into(),
        )
    };
    let store = anchors.store(now).map_err(setup)?;
    let mut chain = openssl::stack::Stack::new().map_err(setup)?;
    for c in &certs[1..] {
        chain.push(c.clone()).map_err(setup)?;
    }
    let mut ctx = X509StoreContext::new().map_err(setup)?;
    let outcome = ctx
        .init(&store, &certs[0], &chain, |c| {
            let ok = c.verify_cert()?;
            let at = c.current_cert().map(describe);
            Ok((ok, c.error(), c.error_depth(), at))
        })
        .map_err(setup)?;
    match outcome {
        (true, _, _, _) => Ok(()),
        (false, err, depth, at) => {
            let at = at.unwrap_or_else(|| {
                certs
                    .get(depth as usize)
                    .map_or_else(|| describe(&certs[0]), |c| describe(c))
            });
            let hint = match err.as_raw() {
                openssl_sys::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT => {
                    return Err(ValidationError::SelfSigned { leaf: at });
                }
                // No anchor at the top of the chain: what ca_file is for.
                openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
                | openssl_sys::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
                | openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
                | openssl_sys::X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE => anchors.hint(),
                // Anything else is wrong with the chain itself (an expired
                // intermediate, a weak CA key or digest, a wrong purpose).
                _ => "a TLS client would refuse it; check the chain the pusher sends (certbot's fullchain.pem) with `openssl verify -untrusted chain.pem cert.pem`".into(),
            };
            Err(untrusted(err.error_string(), at, hint))
        }
    }
}

/// Does a SAN DNS name cover `hostname`? RFC 6125 §6.4.3 as browsers apply
/// it: case-insensitive, a trailing dot ignored, `*` only as the entire
/// left-most label, matching exactly one non-empty label, and never a
/// wildcard directly under a top-level label (`*.com`).
pub fn san_matches(san: &str, hostname: &str) -> bool {
    let san = san.trim_end_matches('.').to_ascii_lowercase();
    let host = hostname.trim_end_matches('.').to_ascii_lowercase();
    if san.is_empty() || host.is_empty() {
        return false;
    }
    match san.strip_prefix("*.") {
        None => !san.contains('*') && san == host,
        Some(parent) => {
            if parent.contains('*') || parent.split('.').count() < 2 {
                return false;
            }
            match host.split_once('.') {
                Some((first, rest)) => !first.is_empty() && rest == parent,
                None => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::SecretBytes;
    use crate::testutil::{
        ec_key, now_unix, rsa_key, self_signed_leaf, test_anchors, test_root_pem, KeyKind, Profile,
        TestCa, Validity,
    };
    use std::time::Duration;

    fn anchors() -> &'static Anchors {
        static A: std::sync::OnceLock<Anchors> = std::sync::OnceLock::new();
        A.get_or_init(test_anchors)
    }

    fn policy(hosts: &[String]) -> Policy<'_> {
        Policy {
            hostnames: hosts,
            now: SystemTime::now(),
            installed_not_after: None,
            force: Force::No,
            anchors: anchors(),
        }
    }

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepts_every_key_algorithm() {
        let ca = TestCa::new();
        let h = hosts(&["mail.example.com"]);
        for kind in KeyKind::ALL {
            let leaf = ca.leaf(kind, &["mail.example.com", "autodiscover.example.com"]);
            let v =
                validate(leaf.bundle(), &policy(&h)).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(v.leaf_fingerprint(), leaf.fingerprint());
            assert_eq!(v.chain_sha256(), Fingerprint::of_bytes(&leaf.chain_pem));
        }
    }

    #[test]
    fn refuses_a_key_from_another_pair_for_every_algorithm() {
        let ca = TestCa::new();
        let h = hosts(&["mail.example.com"]);
        for kind in KeyKind::ALL {
            let a = ca.leaf(kind, &["mail.example.com"]);
            let b = ca.leaf(kind, &["mail.example.com"]);
            let mixed = Bundle::new(a.chain_pem.clone(), b.key_pem.clone());
            assert!(
                matches!(
                    validate(mixed, &policy(&h)),
                    Err(ValidationError::KeyMismatch { .. })
                ),
                "{kind:?}"
            );
        }
        // Across algorithms too.
        let a = ca.leaf(KeyKind::P384, &["mail.example.com"]);
        let b = ca.leaf(KeyKind::Rsa2048, &["mail.example.com"]);
        let mixed = Bundle::new(a.chain_pem.clone(), b.key_pem.clone());
        assert!(matches!(
            validate(mixed, &policy(&h)),
            Err(ValidationError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn accepts_pkcs1_and_sec1_keys() {
        let ca = TestCa::new();
        let h = hosts(&["mail.example.com"]);
        for kind in [KeyKind::Rsa2048, KeyKind::P256, KeyKind::P384] {
            let leaf = ca.leaf(kind, &["mail.example.com"]);
            let b = Bundle::new(
                leaf.chain_pem.clone(),
                SecretBytes::new(leaf.key_pkcs1_or_sec1()),
            );
            validate(b, &policy(&h)).unwrap();
        }
    }

    #[test]
    fn refuses_encrypted_keys() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P384, &["mail.example.com"]);
        let b = Bundle::new(
            leaf.chain_pem.clone(),
            SecretBytes::new(leaf.key_encrypted()),
        );
        let h = hosts(&["mail.example.com"]);
        assert!(matches!(
            validate(b, &policy(&h)),
            Err(ValidationError::Bundle(BundleError::EncryptedKey))
        ));
    }

    #[test]
    fn refuses_uncovered_names_and_explains() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["www.example.com", "*.example.org"]);
        let h = hosts(&["mail.example.com"]);
        let err = validate(leaf.bundle(), &policy(&h)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("mail.example.com") && msg.contains("www.example.com"),
            "{msg}"
        );
        let ok = hosts(&["mail.example.org"]);
        validate(leaf.bundle(), &policy(&ok)).unwrap();
        let none: Vec<String> = vec![];
        assert!(matches!(
            validate(leaf.bundle(), &policy(&none)),
            Err(ValidationError::NoHostnames)
        ));
    }

    #[test]
    fn wildcards_follow_rfc_6125() {
        assert!(san_matches("*.example.com", "mail.example.com"));
        assert!(san_matches("*.Example.COM", "MAIL.example.com."));
        assert!(!san_matches("*.example.com", "example.com"));
        assert!(!san_matches("*.example.com", "a.b.example.com"));
        assert!(!san_matches("*.com", "example.com"));
        assert!(!san_matches("m*.example.com", "mail.example.com"));
        assert!(!san_matches("mail.*.com", "mail.example.com"));
        assert!(!san_matches("*.*.example.com", "a.b.example.com"));
        assert!(san_matches("mail.example.com", "mail.example.com"));
        assert!(!san_matches("", ""));
        assert!(!san_matches("*.example.com", ".example.com"));
    }

    #[test]
    fn refuses_outside_the_validity_window() {
        let ca = TestCa::new();
        let h = hosts(&["mail.example.com"]);
        let future = ca.leaf_with(
            KeyKind::P256,
            &["mail.example.com"],
            Validity {
                not_before: 86_400,
                not_after: 90 * 86_400,
            },
        );
        assert!(matches!(
            validate(future.bundle(), &policy(&h)),
            Err(ValidationError::NotYetValid { .. })
        ));
        let old = ca.leaf_with(
            KeyKind::P256,
            &["mail.example.com"],
            Validity {
                not_before: -90 * 86_400,
                not_after: -86_400,
            },
        );
        assert!(matches!(
            validate(old.bundle(), &policy(&h)),
            Err(ValidationError::Expired { .. })
        ));
        // The clock is a parameter: the same pair is fine 2 days earlier.
        let mut p = policy(&h);
        p.now = SystemTime::now() - Duration::from_secs(2 * 86_400);
        validate(old.bundle(), &p).unwrap();
    }

    #[test]
    fn refuses_a_chain_out_of_order() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let mut swapped = leaf.intermediates_pem.clone();
        swapped.extend_from_slice(&leaf.cert_pem);
        let b = Bundle::new(swapped, leaf.key_pem.clone());
        let h = hosts(&["mail.example.com"]);
        // The intermediate is now first: its key is not ours.
        assert!(validate(b, &policy(&h)).is_err());
        // Leaf followed by an unrelated CA's intermediate.
        let other = TestCa::new();
        let mut wrong = leaf.cert_pem.clone();
        wrong.extend_from_slice(&other.intermediate.to_pem().unwrap());
        let b = Bundle::new(wrong, leaf.key_pem.clone());
        assert!(matches!(
            validate(b, &policy(&h)),
            Err(ValidationError::ChainOrder { index: 0, next: 1 })
        ));
        // The leaf alone (no intermediates): the order is trivially right,
        // but no client can build its chain to the root.
        let b = Bundle::new(leaf.cert_pem.clone(), leaf.key_pem.clone());
        let err = validate(b, &policy(&h)).unwrap_err();
        assert!(matches!(err, ValidationError::Untrusted { .. }), "{err}");
    }

    fn refusal(leaf: &crate::testutil::TestLeaf) -> ValidationError {
        let h = hosts(&["mail.example.com"]);
        validate(leaf.bundle(), &policy(&h)).unwrap_err()
    }

    #[test]
    fn refuses_what_a_tls_client_would_refuse() {
        let ca = TestCa::new();
        let sans = &["mail.example.com"];
        let day = Validity::default();

        let e = refusal(&self_signed_leaf(KeyKind::P256, sans));
        assert!(matches!(e, ValidationError::SelfSigned { .. }), "{e}");
        assert!(e.to_string().contains("self-signed"), "{e}");

        let e = refusal(&ca.leaf_custom(KeyKind::P256.generate(), sans, day, Profile::Ca));
        assert!(matches!(e, ValidationError::CaLeaf { .. }), "{e}");
        assert!(e.to_string().contains("CA:TRUE"), "{e}");

        let e = refusal(&ca.leaf_custom(KeyKind::P256.generate(), sans, day, Profile::ClientOnly));
        assert!(matches!(e, ValidationError::NotForServers { .. }), "{e}");
        assert!(e.to_string().contains("clientAuth"), "{e}");

        let e = refusal(&ca.leaf_custom(rsa_key(1024), sans, day, Profile::Server));
        assert!(matches!(e, ValidationError::WeakKey { .. }), "{e}");
        assert!(e.to_string().contains("RSA-1024"), "{e}");

        let e = refusal(&ca.leaf_custom(ec_key(Nid::X9_62_PRIME192V1), sans, day, Profile::Server));
        assert!(matches!(e, ValidationError::WeakKey { .. }), "{e}");

        let e = refusal(&TestCa::with_own_root().leaf(KeyKind::P256, sans));
        assert!(matches!(e, ValidationError::Untrusted { .. }), "{e}");
        assert!(e.to_string().contains("ca_file"), "{e}");
        // Each names the leaf by CN and fingerprint.
        assert!(
            e.to_string().contains("certsync test intermediate") || e.to_string().contains("CN="),
            "{e}"
        );
    }

    #[test]
    fn a_private_ca_is_trusted_through_its_anchor() {
        let private = TestCa::with_own_root();
        let leaf = private.leaf(KeyKind::P384, &["mail.example.com"]);
        let h = hosts(&["mail.example.com"]);
        assert!(validate(leaf.bundle(), &policy(&h)).is_err());
        let mine = Anchors::only(vec![private.root.clone()]);
        let p = Policy {
            anchors: &mine,
            ..policy(&h)
        };
        validate(leaf.bundle(), &p).unwrap();
        // RSA-2048 and the NIST curves are not weak.
        for key in [rsa_key(2048), ec_key(Nid::SECP521R1)] {
            let leaf = private.leaf_custom(
                key,
                &["mail.example.com"],
                Validity::default(),
                Profile::Server,
            );
            validate(leaf.bundle(), &p).unwrap();
        }
    }

    #[test]
    fn ca_file_is_read_strictly_and_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, test_root_pem()).unwrap();
        let a = Anchors::load(Some(&path)).unwrap();
        let h = hosts(&["mail.example.com"]);
        let leaf = TestCa::new().leaf(KeyKind::P256, &["mail.example.com"]);
        validate(
            leaf.bundle(),
            &Policy {
                anchors: &a,
                ..policy(&h)
            },
        )
        .unwrap();
        // A key where the anchors belong: refused, its bytes not shown.
        std::fs::write(&path, leaf.key_pem.expose()).unwrap();
        let e = Anchors::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("ca.pem") && e.contains("PRIVATE KEY"), "{e}");
        std::fs::write(&path, b"nothing").unwrap();
        assert!(Anchors::load(Some(&path)).is_err());
        assert!(Anchors::load(Some(&dir.path().join("missing"))).is_err());
    }

    #[test]
    fn the_chain_is_verified_at_the_policys_clock() {
        // An intermediate that expired yesterday fails now, and passes at a
        // clock two days back: verification never reads the wall clock.
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let h = hosts(&["mail.example.com"]);
        let mut p = policy(&h);
        p.now = SystemTime::now() + Duration::from_secs(11 * 365 * 86_400);
        // The leaf itself is expired then: the leaf's own rule answers first.
        assert!(matches!(
            validate(leaf.bundle(), &p),
            Err(ValidationError::Expired { .. })
        ));
        let long = ca.leaf_with(
            KeyKind::P256,
            &["mail.example.com"],
            Validity {
                not_before: -3600,
                not_after: 20 * 365 * 86_400,
            },
        );
        // Now the CAs (valid for ten years) are what expired.
        let e = validate(long.bundle(), &p).unwrap_err();
        assert!(matches!(e, ValidationError::Untrusted { .. }), "{e}");
        assert!(e.to_string().contains("expired"), "{e}");
        // Not a missing anchor: no advice to change ca_file.
        assert!(!e.to_string().contains("ca_file"), "{e}");
        p.now = SystemTime::now();
        validate(long.bundle(), &p).unwrap();
    }

    #[test]
    fn refuses_rollback_unless_forced() {
        let ca = TestCa::new();
        let h = hosts(&["mail.example.com"]);
        let leaf = ca.leaf(KeyKind::P384, &["mail.example.com"]);
        let mut p = policy(&h);
        p.installed_not_after = Some(now_unix() + 200 * 86_400);
        let err = validate(leaf.bundle(), &p).unwrap_err();
        assert!(matches!(err, ValidationError::Rollback { .. }));
        assert!(err.to_string().contains("install --force"), "{err}");
        // A pusher's --force that receive.toml does not allow: the message
        // says so, and how to opt in or roll back locally.
        p.force = Force::RemoteRefused;
        let err = validate(leaf.bundle(), &p).unwrap_err().to_string();
        assert!(
            err.contains("does not allow a remote force")
                && err.contains("allow_remote_force = true")
                && err.contains("deploy --force"),
            "{err}"
        );
        p.force = Force::Allowed;
        validate(leaf.bundle(), &p).unwrap();
        p.force = Force::No;
        p.installed_not_after = Some(now_unix() + 10 * 86_400);
        validate(leaf.bundle(), &p).unwrap();
    }

    #[test]
    fn errors_never_contain_key_material() {
        let ca = TestCa::new();
        let a = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let b = ca.leaf(KeyKind::P256, &["mail.example.com"]);
        let mixed = Bundle::new(a.chain_pem.clone(), b.key_pem.clone());
        let h = hosts(&["mail.example.com"]);
        let err = validate(mixed, &policy(&h)).unwrap_err();
        let text = format!("{err} {err:?}");
        let key = String::from_utf8_lossy(b.key_pem.expose()).to_string();
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line));
        }
    }

    /// A tiny deterministic PRNG (xorshift64*): the property test below is
    /// reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// One random mangling of PEM text: other line endings, a label that
    /// is the key's own base64, truncation, flipped bytes, blocks moved.
    fn mangle(rng: &mut Rng, pem: &[u8], body_line: &[u8]) -> Vec<u8> {
        let mut out = pem.to_vec();
        for _ in 0..1 + rng.below(3) {
            out = match rng.below(9) {
                0 => out
                    .iter()
                    .map(|&b| if b == b'\n' { b'\r' } else { b })
                    .collect(),
                1 => out
                    .split(|&b| b == b'\n')
                    .collect::<Vec<_>>()
                    .join(&b"\r\n"[..]),
                2 => out.iter().copied().filter(|&b| b != b'\n').collect(),
                3 => {
                    let mut v = b"-----BEGIN ".to_vec();
                    v.extend_from_slice(body_line);
                    v.extend_from_slice(b"-----\n");
                    v.extend_from_slice(&out);
                    v
                }
                4 => out[..rng.below(out.len())].to_vec(),
                5 => {
                    if !out.is_empty() {
                        let i = rng.below(out.len());
                        out[i] ^= 1 << rng.below(8);
                    }
                    out
                }
                6 => String::from_utf8_lossy(&out).to_lowercase().into_bytes(),
                7 => {
                    let text = String::from_utf8_lossy(&out).into_owned();
                    text.replacen("PRIVATE KEY", std::str::from_utf8(body_line).unwrap(), 1)
                        .into_bytes()
                }
                _ => {
                    let mut v = out.clone();
                    v.extend_from_slice(&out);
                    v
                }
            };
        }
        out
    }

    #[test]
    fn no_error_echoes_key_material_for_any_mangled_input() {
        let ca = TestCa::new();
        let h = hosts(&["mail.example.com"]);
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let mut checked = 0;
        for kind in [KeyKind::P256, KeyKind::Rsa2048] {
            let leaf = ca.leaf(kind, &["mail.example.com"]);
            let secret = crate::testutil::SecretWindows::of(&leaf.key);
            let forms = [leaf.key_pem.expose().to_vec(), leaf.key_pkcs1_or_sec1()];
            for form in &forms {
                let body_line = form.split(|&b| b == b'\n').nth(1).unwrap().to_vec();
                for _ in 0..150 {
                    let bad = mangle(&mut rng, form, &body_line);
                    let mut chain_with_key = leaf.chain_pem.clone();
                    chain_with_key.extend_from_slice(&bad);
                    for (chain, key) in [
                        (leaf.chain_pem.clone(), bad.clone()),
                        (bad.clone(), bad.clone()),
                        (chain_with_key, leaf.key_pem.expose().to_vec()),
                    ] {
                        let b = Bundle::new(chain, SecretBytes::new(key));
                        if let Err(e) = validate(b, &policy(&h)) {
                            let text = format!("{e} {e:?}");
                            assert!(
                                secret.leak_in(text.as_bytes()).is_none(),
                                "{kind:?}: an error holds key material (case {checked})"
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 1800);
    }
}
