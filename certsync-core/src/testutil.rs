//! Test certificates, generated at test time (feature `testutil`).
//!
//! No private key is ever committed: every test makes its own CA
//! (root → intermediate, like Let's Encrypt) and leaves of RSA-2048,
//! ECDSA P-256, ECDSA P-384 (NPM's default) and Ed25519. Keys are made with
//! OpenSSL itself (rcgen with ring writes Ed25519 as PKCS#8 v2, which
//! OpenSSL 3.0 cannot read).
//!
//! The receiver verifies every chain to a trust anchor. So that a test's
//! receiver can trust the test's certificates, every [`TestCa::new`] in one
//! process hangs its intermediate under one process-wide root,
//! [`test_root_pem`], which the harness writes as receive.toml's `ca_file`.
//! [`TestCa::with_own_root`] makes a CA that nobody trusts.
//!
//! This module panics on failure: it is for tests only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::symm::Cipher;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

use crate::bundle::{Bundle, SecretBytes};

/// The key algorithms certsync must handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa2048,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    pub const ALL: [KeyKind; 4] = [
        KeyKind::Rsa2048,
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
    ];

    pub fn generate(self) -> PKey<Private> {
        match self {
            KeyKind::Rsa2048 => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
            KeyKind::P256 => ec_key(Nid::X9_62_PRIME256V1),
            KeyKind::P384 => ec_key(Nid::SECP384R1),
            KeyKind::Ed25519 => PKey::generate_ed25519().unwrap(),
        }
    }
}

/// An RSA key of any size (RSA-1024 for the weak-key refusal).
pub fn rsa_key(bits: u32) -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
}

/// An EC key on any named curve OpenSSL can generate (P-192 for the
/// weak-key refusal).
pub fn ec_key(nid: Nid) -> PKey<Private> {
    let group = EcGroup::from_curve_name(nid).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn digest_for(key: &PKey<Private>) -> MessageDigest {
    match key.id() {
        openssl::pkey::Id::ED25519 | openssl::pkey::Id::ED448 => MessageDigest::null(),
        _ => MessageDigest::sha256(),
    }
}

fn serial() -> Asn1Integer {
    let mut bn = BigNum::new().unwrap();
    bn.rand(120, MsbOption::MAYBE_ZERO, false).unwrap();
    bn.to_asn1_integer().unwrap()
}

/// Seconds since the epoch, now (the one helper, re-exported for tests).
pub use crate::time::now_unix;

/// Validity of a leaf, as offsets in seconds from now.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Default for Validity {
    /// Valid since an hour ago, for 90 days (like Let's Encrypt).
    fn default() -> Self {
        Validity {
            not_before: -3600,
            not_after: 90 * 86_400,
        }
    }
}

/// A test CA: a self-signed root and an intermediate that signs leaves.
pub struct TestCa {
    pub root: X509,
    pub root_key: PKey<Private>,
    pub intermediate: X509,
    pub intermediate_key: PKey<Private>,
}

/// A leaf certificate with its key and chain, as certbot would write them.
pub struct TestLeaf {
    pub cert: X509,
    pub key: PKey<Private>,
    /// `cert.pem`: the leaf alone.
    pub cert_pem: Vec<u8>,
    /// `chain.pem`: the intermediate.
    pub intermediates_pem: Vec<u8>,
    /// `fullchain.pem`: leaf then intermediate.
    pub chain_pem: Vec<u8>,
    /// `privkey.pem`: PKCS#8, as certbot writes it.
    pub key_pem: SecretBytes,
}

/// CAs are valid from a year ago for ten years: tests move the policy's
/// clock by days, and chain verification checks every certificate at that
/// clock.
const CA_VALIDITY: Validity = Validity {
    not_before: -365 * 86_400,
    not_after: 3650 * 86_400,
};

fn new_root() -> (X509, PKey<Private>) {
    let key = KeyKind::P256.generate();
    let cert = build_cert(
        "certsync test root",
        &key,
        None,
        &[],
        Profile::Ca,
        CA_VALIDITY,
    );
    (cert, key)
}

fn shared_root() -> &'static (X509, PKey<Private>) {
    static ROOT: OnceLock<(X509, PKey<Private>)> = OnceLock::new();
    ROOT.get_or_init(new_root)
}

/// The process-wide test root that every [`TestCa::new`] chains to, as
/// PEM: what a test's receive.toml names as `ca_file`.
pub fn test_root_pem() -> Vec<u8> {
    shared_root().0.to_pem().unwrap()
}

/// Trust anchors holding the test root alone: a receiver whose `ca_file`
/// names [`test_root_pem`], without the system store.
pub fn test_anchors() -> crate::validate::Anchors {
    crate::validate::Anchors::only(vec![shared_root().0.clone()])
}

/// What a leaf certificate is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A server certificate as Let's Encrypt issues it: CA:FALSE, EKU serverAuth.
    Server,
    /// EKU clientAuth only: no TLS client accepts it from a server.
    ClientOnly,
    /// CA:TRUE (with the SANs, so only that rule refuses it).
    Ca,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    /// A CA under the process-wide test root ([`test_root_pem`]), which
    /// the harness configures as trusted.
    pub fn new() -> TestCa {
        let (root, root_key) = shared_root();
        TestCa::under(root.clone(), root_key.clone())
    }

    /// A CA with a root of its own, which no receiver trusts unless a test
    /// adds [`TestCa::root_pem`] to its `ca_file`.
    pub fn with_own_root() -> TestCa {
        let (root, root_key) = new_root();
        TestCa::under(root, root_key)
    }

    fn under(root: X509, root_key: PKey<Private>) -> TestCa {
        let intermediate_key = KeyKind::P256.generate();
        let intermediate = build_cert(
            "certsync test intermediate",
            &intermediate_key,
            Some((&root, &root_key)),
            &[],
            Profile::Ca,
            CA_VALIDITY,
        );
        TestCa {
            root,
            root_key,
            intermediate,
            intermediate_key,
        }
    }

    pub fn root_pem(&self) -> Vec<u8> {
        self.root.to_pem().unwrap()
    }

    /// A leaf valid from an hour ago for 90 days.
    pub fn leaf(&self, kind: KeyKind, sans: &[&str]) -> TestLeaf {
        self.leaf_with(kind, sans, Validity::default())
    }

    pub fn leaf_with(&self, kind: KeyKind, sans: &[&str], validity: Validity) -> TestLeaf {
        self.leaf_custom(kind.generate(), sans, validity, Profile::Server)
    }

    /// A leaf with any key and profile, signed by this CA's intermediate.
    pub fn leaf_custom(
        &self,
        key: PKey<Private>,
        sans: &[&str],
        validity: Validity,
        profile: Profile,
    ) -> TestLeaf {
        let cn = sans.first().copied().unwrap_or("certsync test leaf");
        let cert = build_cert(
            cn,
            &key,
            Some((&self.intermediate, &self.intermediate_key)),
            sans,
            profile,
            validity,
        );
        TestLeaf::new(cert, key, self.intermediate.to_pem().unwrap())
    }
}

/// A self-signed server leaf (CA:FALSE, EKU serverAuth): its chain is the
/// leaf alone.
pub fn self_signed_leaf(kind: KeyKind, sans: &[&str]) -> TestLeaf {
    let key = kind.generate();
    let cn = sans.first().copied().unwrap_or("certsync test leaf");
    let cert = build_cert(cn, &key, None, sans, Profile::Server, Validity::default());
    TestLeaf::new(cert, key, Vec::new())
}

impl TestLeaf {
    fn new(cert: X509, key: PKey<Private>, intermediates_pem: Vec<u8>) -> TestLeaf {
        let cert_pem = cert.to_pem().unwrap();
        let mut chain_pem = cert_pem.clone();
        chain_pem.extend_from_slice(&intermediates_pem);
        let key_pem = SecretBytes::new(key.private_key_to_pem_pkcs8().unwrap());
        TestLeaf {
            cert,
            key,
            cert_pem,
            intermediates_pem,
            chain_pem,
            key_pem,
        }
    }

    pub fn bundle(&self) -> Bundle {
        Bundle::new(self.chain_pem.clone(), self.key_pem.clone())
    }

    /// The key in its traditional encoding: PKCS#1 for RSA, SEC1 for EC.
    pub fn key_pkcs1_or_sec1(&self) -> Vec<u8> {
        match self.key.id() {
            openssl::pkey::Id::RSA => self.key.rsa().unwrap().private_key_to_pem().unwrap(),
            openssl::pkey::Id::EC => self.key.ec_key().unwrap().private_key_to_pem().unwrap(),
            _ => self.key.private_key_to_pem_pkcs8().unwrap(),
        }
    }

    /// The key as encrypted PKCS#8 (which certsync must refuse).
    pub fn key_encrypted(&self) -> Vec<u8> {
        self.key
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_128_cbc(), b"hunter2")
            .unwrap()
    }

    pub fn fingerprint(&self) -> crate::Fingerprint {
        crate::Fingerprint::of_der(&self.cert.to_der().unwrap())
    }
}

/// Every form in which a private key's bytes could leak into a message:
/// each 8-byte window of the secret (the EC scalar or RSA private exponent,
/// and the key's DER encodings) raw and as hex in both cases, each 8-char
/// window of the base64 text of the PEM bodies and of the secret at all
/// three base64 alignments. [`SecretWindows::leak_in`] finds any of them
/// in a log, a report or a result file.
pub struct SecretWindows {
    /// By length (8: raw and base64 windows, 16: hex windows).
    needles: std::collections::BTreeMap<usize, std::collections::HashSet<Vec<u8>>>,
}

impl SecretWindows {
    pub fn of(key: &PKey<Private>) -> SecretWindows {
        let mut secrets: Vec<Vec<u8>> = vec![key.private_key_to_der().unwrap()];
        match key.id() {
            openssl::pkey::Id::EC => {
                let ec = key.ec_key().unwrap();
                secrets.push(ec.private_key().to_vec());
                secrets.push(ec.private_key_to_der().unwrap());
            }
            openssl::pkey::Id::RSA => {
                let rsa = key.rsa().unwrap();
                secrets.push(rsa.d().to_vec());
                secrets.push(rsa.p().unwrap().to_vec());
                secrets.push(rsa.private_key_to_der().unwrap());
            }
            _ => secrets.push(key.raw_private_key().unwrap_or_default()),
        }
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for secret in &secrets {
            for w in secret.windows(8) {
                needles.push(w.to_vec());
                let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
                needles.push(hex.clone().into_bytes());
                needles.push(hex.to_uppercase().into_bytes());
            }
            for shift in 0..3.min(secret.len()) {
                let b64 = openssl::base64::encode_block(&secret[shift..]);
                // The last group depends on what follows: leave it out.
                let stable = &b64.as_bytes()[..b64.len().saturating_sub(4)];
                needles.extend(stable.windows(8).map(<[u8]>::to_vec));
            }
        }
        let mut by_len: std::collections::BTreeMap<usize, std::collections::HashSet<Vec<u8>>> =
            Default::default();
        for n in needles {
            by_len.entry(n.len()).or_default().insert(n);
        }
        SecretWindows { needles: by_len }
    }

    /// The first window of the secret found in `haystack`, as its offset
    /// in the haystack (never the bytes, so a failing test does not print
    /// the secret either).
    pub fn leak_in(&self, haystack: &[u8]) -> Option<usize> {
        self.needles
            .iter()
            .find_map(|(len, set)| haystack.windows(*len).position(|w| set.contains(w)))
    }
}

fn build_cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    sans: &[&str],
    profile: Profile,
    validity: Validity,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map(|(c, _)| c.subject_name()).unwrap_or(&name))
        .unwrap();
    b.set_pubkey(key).unwrap();
    let now = now_unix();
    b.set_not_before(&Asn1Time::from_unix(now + validity.not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + validity.not_after).unwrap())
        .unwrap();
    if profile == Profile::Ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
    } else {
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()
                .unwrap(),
        )
        .unwrap();
        let mut eku = ExtendedKeyUsage::new();
        match profile {
            Profile::ClientOnly => eku.client_auth(),
            _ => eku.server_auth(),
        };
        b.append_extension(eku.build().unwrap()).unwrap();
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if issuer.is_some() {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    if !sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            san.dns(s);
        }
        let ext = san
            .build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))
            .unwrap();
        b.append_extension(ext).unwrap();
    }
    let signer = issuer.map(|(_, k)| k).unwrap_or(key);
    b.sign(signer, digest_for(signer)).unwrap();
    b.build()
}
