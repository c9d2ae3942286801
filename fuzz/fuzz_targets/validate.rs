//! Fuzz the whole validation (`validate::validate`) and SAN matching.
//!
//! Input layout: `chain_len: u16 (big endian), chain, key` — the rest after
//! the chain is the key; a missing length means an empty chain. The seeds
//! from `fuzz/make-corpus.sh` are real pairs (every key type) in this
//! layout, so mutations reach the key comparison, the name check, the
//! validity window and the chain order, not just the PEM parser.
//!
//! Invariants: no panic for any input, and nothing validates without a
//! trust anchor: the policy trusts no CA at all, so every input must be
//! refused — a crafted chain that got through would be a trust bypass.
//! (Should one validate, it must still have a key that matches its leaf and
//! a leaf that covers the configured hostname.)
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use certsync_core::bundle::{parse_chain, parse_key, san_dns_names, Bundle, SecretBytes};
use certsync_core::validate::{san_matches, validate, Anchors, Force, Policy};
use libfuzzer_sys::fuzz_target;

const HOST: &str = "mail.example.com";

fuzz_target!(|data: &[u8]| {
    let (chain, key) = match data {
        [hi, lo, rest @ ..] => {
            let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
            rest.split_at(n)
        }
        _ => (&data[..0], data),
    };
    // The SAN matcher on its own, with both halves as text.
    let a = String::from_utf8_lossy(chain);
    let b = String::from_utf8_lossy(key);
    let _ = san_matches(
        a.lines().next().unwrap_or(""),
        b.lines().next().unwrap_or(""),
    );

    let hosts = vec![HOST.to_string()];
    // One policy per input (validation is the costly part), picked by the
    // input's length, so both sides of every date rule are reachable.
    let later = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let policies = [
        (std::time::SystemTime::now(), None, Force::No),
        (later, Some(i64::MAX), Force::RemoteRefused),
        (later, Some(i64::MIN), Force::Allowed),
    ];
    {
        let (now, installed, force) = policies[data.len() % policies.len()];
        let bundle = Bundle::new(chain.to_vec(), SecretBytes::new(key.to_vec()));
        let no_anchors = Anchors::only(Vec::new());
        let policy = Policy {
            hostnames: &hosts,
            now,
            installed_not_after: installed,
            force,
            anchors: &no_anchors,
        };
        match validate(bundle, &policy) {
            Ok(v) => {
                let certs = parse_chain(chain).expect("a validated chain parses");
                let k = parse_key(key).expect("a validated key parses");
                let leaf_key = certs[0].public_key().expect("a validated leaf has a key");
                assert!(leaf_key.public_eq(&k), "validated a mismatched pair");
                assert!(
                    san_dns_names(&certs[0])
                        .iter()
                        .any(|s| san_matches(s, HOST)),
                    "validated a leaf that does not cover {HOST}"
                );
                assert_eq!(v.leaf_fingerprint(), v.info().fingerprint);
                panic!("validated a pair with no trust anchor at all");
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
