//! Test certificates, generated at test time (feature `testutil`).
//!
//! No private key is ever committed: every test makes its own CA
//! (root → intermediate, like Let's Encrypt) and leaves of RSA-2048,
//! ECDSA P-256, ECDSA P-384 (NPM's default) and Ed25519. Keys are made with
//! OpenSSL itself (rcgen with ring writes Ed25519 as PKCS#8 v2, which
//! OpenSSL 3.0 cannot read).
//!
//! This module panics on failure: it is for tests only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

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

fn ec_key(nid: Nid) -> PKey<Private> {
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

/// Seconds since the epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let root_key = KeyKind::P256.generate();
        let root = build_cert(
            "certsync test root",
            &root_key,
            None,
            &[],
            true,
            Validity {
                not_before: -86_400,
                not_after: 3650 * 86_400,
            },
        );
        let intermediate_key = KeyKind::P256.generate();
        let intermediate = build_cert(
            "certsync test intermediate",
            &intermediate_key,
            Some((&root, &root_key)),
            &[],
            true,
            Validity {
                not_before: -86_400,
                not_after: 3000 * 86_400,
            },
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
        let key = kind.generate();
        let cn = sans.first().copied().unwrap_or("certsync test leaf");
        let cert = build_cert(
            cn,
            &key,
            Some((&self.intermediate, &self.intermediate_key)),
            sans,
            false,
            validity,
        );
        let cert_pem = cert.to_pem().unwrap();
        let intermediates_pem = self.intermediate.to_pem().unwrap();
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
}

impl TestLeaf {
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

fn build_cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    sans: &[&str],
    is_ca: bool,
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
    if is_ca {
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
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
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
