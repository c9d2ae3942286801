//! Every rule a pair must pass before it is installed (DESIGN.md step 3).
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
//! 6. no rollback: the new notAfter is not older than the installed one,
//!    unless the pusher forced it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bundle::{asn1_to_unix, Bundle, BundleError, CertInfo};
use crate::fingerprint::Fingerprint;

/// What a pair is checked against. The hostnames come from the receiver's
/// own config, never from the wire.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    pub hostnames: &'a [String],
    /// The clock, as a parameter so tests can move it.
    pub now: SystemTime,
    /// notAfter of the pair installed now, if any (Unix seconds).
    pub installed_not_after: Option<i64>,
    /// The pusher's `--force`: allow an older notAfter.
    pub force: bool,
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
    #[error("rollback refused: the new certificate expires at {new} (Unix time), before the installed one ({installed}); push with --force to allow it")]
    Rollback { new: i64, installed: i64 },
    #[error("no hostname is configured for this certificate; set `hostnames` (or the [mailcow] preset) in receive.toml")]
    NoHostnames,
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

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
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

    if policy.hostnames.is_empty() {
        return Err(ValidationError::NoHostnames);
    }
    for hostname in policy.hostnames {
        if !info.sans.iter().any(|san| san_matches(san, hostname)) {
            return Err(ValidationError::NameNotCovered {
                hostname: hostname.clone(),
                sans: if info.sans.is_empty() {
                    "none".into()
                } else {
                    info.sans.join(", ")
                },
            });
        }
    }

    let now = unix(policy.now);
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
        let issued = issuer.issued(cert) == openssl::x509::X509VerifyResult::OK;
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

    if let Some(installed) = policy.installed_not_after {
        if not_after < installed && !policy.force {
            return Err(ValidationError::Rollback {
                new: not_after,
                installed,
            });
        }
    }

    let chain_sha256 = bundle.chain_sha256();
    let key_sha256 = bundle.key_sha256();
    Ok(ValidatedBundle {
        bundle,
        info,
        chain_sha256,
        key_sha256,
    })
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
    use crate::testutil::{now_unix, KeyKind, TestCa, Validity};
    use std::time::Duration;

    fn policy(hosts: &[String]) -> Policy<'_> {
        Policy {
            hostnames: hosts,
            now: SystemTime::now(),
            installed_not_after: None,
            force: false,
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
        // The leaf alone (no intermediates) is accepted: order is trivially right.
        let b = Bundle::new(leaf.cert_pem.clone(), leaf.key_pem.clone());
        validate(b, &policy(&h)).unwrap();
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
        assert!(err.to_string().contains("--force"));
        p.force = true;
        validate(leaf.bundle(), &p).unwrap();
        p.force = false;
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
}
