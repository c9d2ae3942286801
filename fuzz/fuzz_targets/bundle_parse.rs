//! Fuzz certificate and key parsing (`bundle::parse_chain`, `parse_key`)
//! and what is read off a parsed certificate for logs and reports.
//!
//! Both parsers see bytes from the wire (the pusher's bundle) and from
//! disk (the installed pair, the certbot live dir). Invariant: any bytes
//! give a value or a `BundleError`, never a panic, never a passphrase
//! prompt, and a parsed chain is never longer than `MAX_CHAIN_CERTS`.
#![no_main]

use certsync_core::bundle::{key_type, parse_chain, parse_key, CertInfo, MAX_CHAIN_CERTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // OpenSSL's decoders dominate the cost: parse each way exactly once.
    match parse_chain(data) {
        Ok(certs) => {
            assert!(!certs.is_empty() && certs.len() <= MAX_CHAIN_CERTS);
            for cert in &certs {
                let info = CertInfo::of(cert);
                let _ = info.days_left(0);
                let _ = format!("{info:?}");
            }
        }
        // Errors are shown to operators: they must format.
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match parse_key(data) {
        Ok(key) => {
            let _ = key_type(&key);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
