//! SHA-256 fingerprints.
//!
//! A [`Fingerprint`] displays exactly as the hex part of
//! `openssl x509 -noout -fingerprint -sha256` prints it
//! (`AB:CD:…`, upper case, colon separated), so the three fingerprints an
//! operator compares — source, installed file, served on the wire — can be
//! checked against OpenSSL's own output by eye or by `grep`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Lower-case hex without separators, for digests and DNS record data
/// (a TLSA record's association data is written this way).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A SHA-256 digest: of a certificate's DER (the certificate fingerprint) or
/// of a file's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// SHA-256 of arbitrary bytes.
    pub fn of_bytes(bytes: &[u8]) -> Fingerprint {
        let digest = Sha256::digest(bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_slice());
        Fingerprint(out)
    }

    /// The certificate fingerprint: SHA-256 of the DER encoding.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint::of_bytes(der)
    }

    /// Lower-case hex without separators (for file names and metrics labels).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A short form for log lines: the first 8 bytes, colon separated.
    pub fn short(&self) -> String {
        let full = self.to_string();
        full[..23].to_string()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The text was not 32 hex bytes (colons optional, any case).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a SHA-256 fingerprint (expected 32 hex bytes, optionally colon separated): {0:?}")]
pub struct ParseFingerprintError(String);

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix("sha256 Fingerprint=").unwrap_or(t);
        let t = t.strip_prefix("SHA256 Fingerprint=").unwrap_or(t);
        let hex: String = t.chars().filter(|c| *c != ':').collect();
        let err = || ParseFingerprintError(s.chars().take(120).collect());
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(chunk).map_err(|_| err())?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Fingerprint(out))
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_openssl_and_parses_back() {
        let fp = Fingerprint::of_bytes(b"abc");
        let s = fp.to_string();
        assert_eq!(
            s,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
        assert_eq!(s.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(fp.to_hex().parse::<Fingerprint>(), Ok(fp));
        assert_eq!(
            format!("sha256 Fingerprint={s}").parse::<Fingerprint>(),
            Ok(fp)
        );
        assert_eq!(fp.short(), "BA:78:16:BF:8F:01:CF:EA");
    }

    #[test]
    fn rejects_bad_text() {
        assert!("zz".parse::<Fingerprint>().is_err());
        assert!("é".repeat(32).parse::<Fingerprint>().is_err());
        assert!("GG".repeat(32).parse::<Fingerprint>().is_err());
    }
}
