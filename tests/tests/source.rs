//! Scenarios for reading the source: a certbot live dir at generation N,
//! renewed the way certbot renews it, read by certsync-push's `source` and
//! listed by its `discover`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certsync_core::testutil::{now_unix, KeyKind, TestCa, TestLeaf, Validity};
use certsync_push::discover::{
    discover, discover_roots, pick_for_domain, pick_for_domain_in, render_table,
};
use certsync_push::source::{
    read_consistent, read_consistent_retry, Problem, Retry, SourceError, SourcePair,
};
use certsync_tests::livedir::{step_name, LiveDir, Renewal, RENEWAL_STEPS};

fn is_pair_of(pair: &SourcePair, leaf: &TestLeaf) -> bool {
    pair.bundle.chain == leaf.chain_pem && pair.bundle.key.expose() == leaf.key_pem.expose()
}

fn problems(err: &SourceError) -> &[Problem] {
    err.problems()
        .unwrap_or_else(|| panic!("expected an inconsistent dir, got: {err}"))
}

#[test]
fn first_read_gets_the_archive_bytes_not_the_link_text() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    let live = LiveDir::new(tmp.path(), "npm-5", &leaf);

    let pair = read_consistent(&live.dir()).unwrap();
    let fullchain = fs::read(live.archive_file("fullchain", 1)).unwrap();
    let privkey = fs::read(live.archive_file("privkey", 1)).unwrap();
    assert_eq!(pair.bundle.chain, fullchain);
    assert_eq!(pair.bundle.key.expose(), &privkey[..]);
    assert!(is_pair_of(&pair, &leaf));
    assert_ne!(
        pair.bundle.chain,
        fs::read_link(live.link("fullchain"))
            .unwrap()
            .as_os_str()
            .as_encoded_bytes()
    );
    assert_eq!(pair.generation, Some(1));
    assert_eq!(pair.info.key_type, "ECDSA P-384");
    assert_eq!(pair.info.fingerprint, leaf.fingerprint());
    assert_eq!(pair.dir, live.dir());
    // Debug of the pair must not show the key.
    assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
}

#[test]
fn a_plain_copy_of_the_files_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::Rsa2048, &["mail.example.com"]);
    let live = LiveDir::new(tmp.path(), "npm-1", &leaf);
    live.flatten();
    let pair = read_consistent(&live.dir()).unwrap();
    assert!(is_pair_of(&pair, &leaf));
    assert_eq!(pair.generation, None);
}

/// Stop a renewal after each step: every state is refused with the right
/// reason or yields exactly the old or the new pair, never a mix. Then the
/// same with the `previous_*` links taken away (a tool that does not leave
/// them), so the link-level checks are exercised on their own.
#[test]
fn every_intermediate_state_of_a_renewal() {
    let ca = TestCa::new();
    let old = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    let new = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    for k in 0..=RENEWAL_STEPS {
        let tmp = tempfile::tempdir().unwrap();
        let mut live = LiveDir::new(tmp.path(), "npm-5", &old);
        live.renew_with(
            &new,
            Renewal {
                stop_after: Some(k),
                ..Default::default()
            },
        );
        let what = format!("after step {k} ({})", step_name(k));
        let result = read_consistent(&live.dir());
        match k {
            0 | 1 => {
                let pair = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(is_pair_of(&pair, &old), "{what}");
                assert_eq!(pair.generation, Some(1), "{what}");
            }
            RENEWAL_STEPS => {
                let pair = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(is_pair_of(&pair, &new), "{what}");
                assert_eq!(pair.generation, Some(2), "{what}");
            }
            _ => {
                let err = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
                assert!(
                    problems(&err)
                        .iter()
                        .any(|p| matches!(p, Problem::PreviousPresent { .. })),
                    "{what}: {err}"
                );
                let msg = err.to_string();
                assert!(msg.contains("previous_cert.pem"), "{what}: {msg}");
                assert!(msg.contains(&live.dir().display().to_string()), "{msg}");
            }
        }

        if !(2..RENEWAL_STEPS).contains(&k) {
            continue;
        }
        live.remove_previous();
        let result = read_consistent(&live.dir());
        match k {
            // Only previous_* existed: the links are all still at N.
            2 => assert!(is_pair_of(&result.unwrap(), &old), "{what}"),
            // Every link moved to N+1.
            10 => assert!(is_pair_of(&result.unwrap(), &new), "{what}"),
            _ => {
                let err = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
                let ps = problems(&err);
                let kind = ["cert", "privkey", "chain", "fullchain"][(k - 3) / 2];
                if k % 2 == 1 {
                    let missing = format!("{kind}.pem");
                    assert!(
                        ps.iter()
                            .any(|p| matches!(p, Problem::Missing { file } if *file == missing)),
                        "{what}: {err}"
                    );
                } else {
                    assert!(
                        ps.iter()
                            .any(|p| matches!(p, Problem::MixedGenerations { .. })),
                        "{what}: {err}"
                    );
                    assert!(err.to_string().contains(&format!("{kind}.pem→2")), "{err}");
                }
            }
        }
    }
}

#[test]
fn negative_helpers_are_refused_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let a = ca.leaf(KeyKind::P256, &["mail.example.com"]);
    let b = ca.leaf(KeyKind::P256, &["mail.example.com"]);
    let live = LiveDir::new(tmp.path(), "npm-3", &a);
    live.write_archive(2, &b);
    live.point("privkey", 2);
    let err = read_consistent(&live.dir()).unwrap_err();
    assert!(
        err.to_string().contains("privkey.pem→2") && err.to_string().contains("fullchain.pem→1"),
        "{err}"
    );
    live.point("privkey", 1);
    live.remove_link("chain");
    let err = read_consistent(&live.dir()).unwrap_err();
    assert!(err.to_string().contains("chain.pem is missing"), "{err}");
    live.point("chain", 1);
    live.add_previous("fullchain", 1);
    let err = read_consistent(&live.dir()).unwrap_err();
    assert!(err.to_string().contains("previous_fullchain.pem"), "{err}");
    live.remove_previous();
    assert!(is_pair_of(&read_consistent(&live.dir()).unwrap(), &a));
}

/// A reader hammers `read_consistent` while certbot-style renewals with
/// pauses run: every pair it gets must be exactly one generation's pair.
#[test]
fn a_concurrent_reader_never_gets_a_mixed_pair() {
    const RENEWALS: usize = 6;
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaves: Vec<TestLeaf> = (0..=RENEWALS)
        .map(|_| ca.leaf(KeyKind::P384, &["mail.example.com"]))
        .collect();
    let mut live = LiveDir::new(tmp.path(), "npm-5", &leaves[0]);
    let dir = live.dir();
    let stop = Arc::new(AtomicBool::new(false));

    let leaves = Arc::new(leaves);
    let reader = {
        let (stop, leaves, dir) = (stop.clone(), leaves.clone(), dir.clone());
        std::thread::spawn(move || {
            let mut ok_by_generation: BTreeMap<u32, usize> = BTreeMap::new();
            let mut refused: BTreeMap<&'static str, usize> = BTreeMap::new();
            let mut mismatched = Vec::new();
            let mut other_errors = Vec::new();
            let mut refused_reads = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match read_consistent(&dir) {
                    Ok(pair) => {
                        let gen = pair.generation.unwrap_or(0);
                        let expected = leaves.get(gen as usize - 1);
                        if expected.is_some_and(|leaf| is_pair_of(&pair, leaf)) {
                            *ok_by_generation.entry(gen).or_default() += 1;
                        } else {
                            mismatched.push(gen);
                        }
                    }
                    Err(e) => match e.problems() {
                        Some(ps) => {
                            refused_reads += 1;
                            for p in ps {
                                let reason = match p {
                                    Problem::PreviousPresent { .. } => "previous_* present",
                                    Problem::Missing { .. } => "link missing",
                                    Problem::MixedGenerations { .. } => "mixed generations",
                                    Problem::Changed { .. } => "changed while reading",
                                    Problem::KeyMismatch { .. } => "key mismatch",
                                    _ => "other",
                                };
                                *refused.entry(reason).or_default() += 1;
                            }
                        }
                        None => other_errors.push(e.to_string()),
                    },
                }
            }
            (
                ok_by_generation,
                refused_reads,
                refused,
                mismatched,
                other_errors,
            )
        })
    };

    let started = Instant::now();
    for (i, leaf) in leaves[1..].iter().enumerate() {
        // Half the renewals pause between steps (the reader sees every
        // state), half run flat out (races inside one read).
        let pause = if i % 2 == 0 {
            Duration::from_millis(3)
        } else {
            Duration::ZERO
        };
        live.renew_with(
            leaf,
            Renewal {
                pause,
                stop_after: None,
            },
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, refused_reads, refused, mismatched, other_errors) = reader.join().unwrap();
    let accepted: usize = ok.values().sum();
    eprintln!(
        "concurrent reader: {RENEWALS} renewals in {:?}; {accepted} reads accepted (by generation \
         {ok:?}), {refused_reads} refused (problems seen: {refused:?}), {} mismatched, {} other errors",
        started.elapsed(),
        mismatched.len(),
        other_errors.len()
    );
    assert!(
        mismatched.is_empty(),
        "mixed pairs returned: {mismatched:?}"
    );
    assert!(
        other_errors.is_empty(),
        "unexpected errors: {other_errors:?}"
    );
    assert!(!ok.is_empty(), "the reader never got a pair");
    // Otherwise the reader never saw a renewal in progress, and "no mixed
    // pair" proved nothing.
    assert!(
        refused_reads > 0,
        "the reader never caught a renewal mid-way; the test saw nothing"
    );
    let last = read_consistent(&dir).unwrap();
    assert!(is_pair_of(&last, &leaves[RENEWALS]));
    assert_eq!(last.generation, Some(RENEWALS as u32 + 1));
}

#[test]
fn retry_succeeds_when_the_renewal_completes_within_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let old = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    let new = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    let mut live = LiveDir::new(tmp.path(), "npm-5", &old);
    // Half-way: cert relinked, privkey unlinked.
    live.renew_with(
        &new,
        Renewal {
            stop_after: Some(5),
            ..Default::default()
        },
    );
    let dir = live.dir();
    assert!(read_consistent(&dir).is_err());
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        live.renew_with(
            &new,
            Renewal {
                pause: Duration::from_millis(10),
                stop_after: None,
            },
        );
        new
    });
    let retry = Retry {
        window: Duration::from_secs(10),
        interval: Duration::from_millis(20),
    };
    let pair = read_consistent_retry(&dir, retry).unwrap();
    let new = finisher.join().unwrap();
    assert!(is_pair_of(&pair, &new));
    assert_eq!(pair.generation, Some(2));
}

#[test]
fn retry_gives_up_with_a_message_saying_what_is_inconsistent() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let old = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    let new = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    let mut live = LiveDir::new(tmp.path(), "npm-5", &old);
    live.renew_with(
        &new,
        Renewal {
            stop_after: Some(4),
            ..Default::default()
        },
    );
    let retry = Retry {
        window: Duration::from_millis(300),
        interval: Duration::from_millis(50),
    };
    let err = read_consistent_retry(&live.dir(), retry).unwrap_err();
    assert!(
        matches!(err, SourceError::StillInconsistent { .. }),
        "{err}"
    );
    let msg = err.to_string();
    for needle in [
        live.dir().display().to_string(),
        "previous_cert.pem".into(),
        "cert.pem→2".into(),
        "fullchain.pem→1".into(),
        "stayed inconsistent".into(),
    ] {
        assert!(msg.contains(&needle), "missing {needle:?} in: {msg}");
    }
    assert!(!msg.contains("PRIVATE KEY"));

    // A key that does not match its leaf is named as such.
    live.remove_previous();
    live.point("cert", 1);
    let other = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    fs::write(live.archive_file("privkey", 1), other.key_pem.expose()).unwrap();
    let err = read_consistent_retry(&live.dir(), retry).unwrap_err();
    assert!(
        err.to_string()
            .contains("privkey.pem does not belong to the leaf of fullchain.pem"),
        "{err}"
    );
}

fn lineage(
    root: &Path,
    name: &str,
    ca: &TestCa,
    kind: KeyKind,
    sans: &[&str],
    days: i64,
) -> (LiveDir, TestLeaf) {
    let leaf = ca.leaf_with(
        kind,
        sans,
        Validity {
            not_before: -3600,
            not_after: days * 86_400,
        },
    );
    (LiveDir::new(root, name, &leaf), leaf)
}

#[test]
fn discover_lists_every_lineage_and_marks_the_inconsistent_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ca = TestCa::new();
    let (_, rsa) = lineage(root, "npm-1", &ca, KeyKind::Rsa2048, &["a.example.com"], 90);
    let (_, p256) = lineage(
        root,
        "npm-2",
        &ca,
        KeyKind::P256,
        &["mail.example.com", "autodiscover.example.com"],
        90,
    );
    let (_, p384) = lineage(root, "npm-10", &ca, KeyKind::P384, &["*.example.org"], 60);
    let (_, ed) = lineage(root, "npm-3", &ca, KeyKind::Ed25519, &["b.example.net"], 30);
    let (mut broken, _) = lineage(root, "npm-4", &ca, KeyKind::P384, &["c.example.net"], 90);
    broken.renew_with(
        &ca.leaf(KeyKind::P384, &["c.example.net"]),
        Renewal {
            stop_after: Some(6),
            ..Default::default()
        },
    );
    let live_root = root.join("live");
    fs::write(
        live_root.join("README"),
        "This directory contains your keys",
    )
    .unwrap();
    fs::create_dir(live_root.join("not-a-lineage")).unwrap();

    // An hour on, so "days left" is one less than the validity whatever
    // second the leaves were made in.
    let now = now_unix() + 3600;
    let found = discover(&live_root, now).unwrap();
    let names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["npm-1", "npm-2", "npm-3", "npm-4", "npm-10"]);

    let expect = [
        ("npm-1", &rsa, "RSA-2048", 89),
        ("npm-2", &p256, "ECDSA P-256", 89),
        ("npm-3", &ed, "Ed25519", 29),
        ("npm-10", &p384, "ECDSA P-384", 59),
    ];
    for (name, leaf, key_type, days) in expect {
        let c = found.iter().find(|c| c.name == name).unwrap();
        assert!(c.consistent, "{name}: {:?}", c.problem);
        assert_eq!(c.problem, None);
        assert_eq!(c.key_type.as_deref(), Some(key_type), "{name}");
        assert_eq!(c.fingerprint, Some(leaf.fingerprint()), "{name}");
        assert_eq!(c.days_left, Some(days), "{name}");
        assert_eq!(c.generation, Some(1));
    }
    assert_eq!(
        found[1].sans,
        ["mail.example.com", "autodiscover.example.com"]
    );
    assert_eq!(found[4].sans, ["*.example.org"]);

    let npm4 = &found[3];
    assert!(!npm4.consistent);
    let why = npm4.problem.as_deref().unwrap();
    assert!(
        why.contains("previous_") && why.contains("privkey.pem"),
        "{why}"
    );
    // Mid-renewal, fullchain.pem still shows what it holds.
    assert_eq!(npm4.sans, ["c.example.net"]);

    let json = serde_json::to_string(&found).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 5);
    assert_eq!(v[1]["sans"][1], "autodiscover.example.com");
    assert_eq!(v[3]["consistent"], false);
    assert_eq!(v[0]["fingerprint"], rsa.fingerprint().to_string());

    let table = render_table(&found);
    eprintln!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(lines[0].starts_with("NAME"));
    assert!(lines[4].starts_with("npm-4") && lines[4].contains("INCONSISTENT"));
    assert!(lines[5].starts_with("npm-10") && lines[5].contains("ECDSA P-384"));
    assert!(lines[2].contains("mail.example.com,autodiscover.example.com"));
}

#[test]
fn pick_for_domain_takes_the_newest_covering_lineage() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let live_root = root.join("live");
    let ca = TestCa::new();
    lineage(root, "npm-1", &ca, KeyKind::P384, &["mail.example.com"], 30);
    let (mut wild, _) = lineage(root, "npm-2", &ca, KeyKind::P384, &["*.example.com"], 60);
    let (mut older, _) = lineage(
        root,
        "npm-3",
        &ca,
        KeyKind::Rsa2048,
        &["mail.example.com"],
        10,
    );
    lineage(root, "npm-4", &ca, KeyKind::P256, &["www.example.net"], 90);
    // An hour on, so "days left" is one less than the validity whatever
    // second the leaves were made in.
    let now = now_unix() + 3600;

    let picked = pick_for_domain(&live_root, "mail.example.com", now).unwrap();
    assert_eq!(picked.name, "npm-2", "the wildcard expires last");
    assert_eq!(picked.dir, wild.dir());
    assert_eq!(
        pick_for_domain(&live_root, "MAIL.example.com.", now)
            .unwrap()
            .name,
        "npm-2"
    );
    assert_eq!(
        pick_for_domain(&live_root, "www.example.net", now)
            .unwrap()
            .name,
        "npm-4"
    );

    // An older covering lineage being renewed does not block the choice.
    older.renew_with(
        &ca.leaf(KeyKind::Rsa2048, &["mail.example.com"]),
        Renewal {
            stop_after: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(
        pick_for_domain(&live_root, "mail.example.com", now)
            .unwrap()
            .name,
        "npm-2"
    );

    // The newest covering lineage mid-renewal: no fallback to a stale one.
    let renewed = ca.leaf_with(
        KeyKind::P384,
        &["*.example.com"],
        Validity {
            not_before: -3600,
            not_after: 90 * 86_400,
        },
    );
    wild.renew_with(
        &renewed,
        Renewal {
            stop_after: Some(10),
            ..Default::default()
        },
    );
    let err = pick_for_domain(&live_root, "mail.example.com", now).unwrap_err();
    assert!(err.is_inconsistent(), "{err}");
    assert!(
        err.to_string().contains("npm-2") && err.to_string().contains("previous_"),
        "{err}"
    );
    wild.renew_with(&renewed, Renewal::default());
    let picked = pick_for_domain(&live_root, "mail.example.com", now).unwrap();
    assert_eq!(
        (picked.name.as_str(), picked.days_left),
        ("npm-2", Some(89))
    );

    // Nothing covers: the error lists what is there.
    for domain in ["example.com", "a.b.example.com", "mail.example.org"] {
        let err = pick_for_domain(&live_root, domain, now).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SourceError::NoMatch { .. }), "{msg}");
        assert!(
            msg.contains(domain)
                && msg.contains("npm-1 (mail.example.com)")
                && msg.contains("npm-2 (*.example.com)")
                && msg.contains("npm-4 (www.example.net)")
                && msg.contains("discover --live-root"),
            "{msg}"
        );
    }
}

/// An uploaded ("custom") certificate as Nginx Proxy Manager writes it
/// (backend/internal/certificate.js `writeCustomCert`): a dir
/// `data/custom_ssl/npm-<id>/` with plain `fullchain.pem` (the certificate,
/// a newline, the intermediate) and `privkey.pem`, no links, no cert.pem
/// or chain.pem.
fn custom_ssl(root: &Path, id: u32, leaf: &TestLeaf) -> std::path::PathBuf {
    let dir = root.join(format!("data/custom_ssl/npm-{id}"));
    fs::create_dir_all(&dir).unwrap();
    let mut fullchain = leaf.cert_pem.clone();
    fullchain.extend_from_slice(b"\n");
    fullchain.extend_from_slice(&leaf.intermediates_pem);
    fs::write(dir.join("fullchain.pem"), fullchain).unwrap();
    fs::write(dir.join("privkey.pem"), leaf.key_pem.expose()).unwrap();
    dir
}

/// NPM's custom_ssl dir is read like a plain copy: the key must match the
/// leaf. Caught between NPM's two writes (new fullchain, old key) it is
/// refused as inconsistent, and the retry reads the new pair once NPM has
/// written the key.
#[test]
fn an_npm_custom_ssl_dir_is_read_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let old = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    let dir = custom_ssl(tmp.path(), 3, &old);
    let pair = read_consistent(&dir).unwrap();
    assert_eq!(pair.info.fingerprint, old.fingerprint());
    assert_eq!(pair.bundle.key.expose(), old.key_pem.expose());
    assert_eq!(pair.generation, None);

    // NPM rewrites fullchain.pem first, then privkey.pem.
    let new = ca.leaf(KeyKind::P384, &["mail.example.com"]);
    fs::write(dir.join("fullchain.pem"), &new.chain_pem).unwrap();
    let err = read_consistent(&dir).unwrap_err();
    assert!(
        matches!(problems(&err), [Problem::KeyMismatch { .. }]),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("PRIVATE KEY"));

    let writer = {
        let dir = dir.clone();
        let key = new.key_pem.expose().to_vec();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            fs::write(dir.join("privkey.pem"), key).unwrap();
        })
    };
    let retry = Retry {
        window: Duration::from_secs(5),
        interval: Duration::from_millis(50),
    };
    let pair = read_consistent_retry(&dir, retry).unwrap();
    writer.join().unwrap();
    assert!(is_pair_of(&pair, &new));
}

/// `live_root` may name certbot's live dir and NPM's custom_ssl dir: a
/// domain is found in either, the newest covering certificate wins, and
/// when none covers it the error names both roots and how to list them.
#[test]
fn live_root_searches_certbot_and_custom_ssl_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ca = TestCa::new();
    lineage(root, "npm-1", &ca, KeyKind::P384, &["mail.example.com"], 30);
    lineage(root, "npm-2", &ca, KeyKind::P384, &["www.example.net"], 90);
    let uploaded = ca.leaf_with(
        KeyKind::Rsa2048,
        &["mail.example.com", "smtp.example.org"],
        Validity {
            not_before: -3600,
            not_after: 365 * 86_400,
        },
    );
    let custom = custom_ssl(root, 3, &uploaded);
    let roots = [root.join("live"), root.join("data/custom_ssl")];
    let now = now_unix() + 3600;

    let all = discover_roots(&roots, now).unwrap();
    let dirs: Vec<_> = all.iter().map(|c| c.dir.clone()).collect();
    assert_eq!(
        dirs,
        [
            root.join("live/npm-1"),
            root.join("live/npm-2"),
            custom.clone()
        ]
    );
    assert!(
        all[2].consistent && all[2].generation.is_none(),
        "{:?}",
        all[2]
    );

    // Only in custom_ssl.
    let picked = pick_for_domain_in(&roots, "smtp.example.org", now).unwrap();
    assert_eq!(picked.dir, custom);
    // In both: the newest notAfter, here the uploaded one.
    assert_eq!(
        pick_for_domain_in(&roots, "mail.example.com", now)
            .unwrap()
            .dir,
        custom
    );
    // Only in certbot's dir.
    assert_eq!(
        pick_for_domain_in(&roots, "www.example.net", now)
            .unwrap()
            .dir,
        root.join("live/npm-2")
    );
    // A single root still works as before.
    assert_eq!(
        pick_for_domain(&roots[1], "smtp.example.org", now)
            .unwrap()
            .dir,
        custom
    );

    let err = pick_for_domain_in(&roots, "imap.example.com", now).unwrap_err();
    let msg = err.to_string();
    for needle in [
        format!("under {} or {}", roots[0].display(), roots[1].display()),
        format!("{} (mail.example.com, smtp.example.org)", custom.display()),
        format!(
            "discover --live-root {} --live-root {}",
            roots[0].display(),
            roots[1].display()
        ),
        "custom_ssl".to_string(),
    ] {
        assert!(msg.contains(&needle), "{needle:?} missing: {msg}");
    }

    // A misspelt root is named, with both kinds of root as the hint.
    let err = discover_roots(&[roots[0].clone(), root.join("data/custom-ssl")], now).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("data/custom-ssl does not exist") && msg.contains("/opt/npm/data/custom_ssl"),
        "{msg}"
    );

    // The binary: one table per root.
    let out = std::process::Command::new(certsync_tests::bins::push())
        .env_remove("CERTSYNC_PUSH_CONFIG")
        .args(["--config", "/nonexistent/push.toml", "discover"])
        .arg("--live-root")
        .arg(&roots[0])
        .arg("--live-root")
        .arg(&roots[1])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let custom_section = text
        .split_once(&format!("{}:\n", roots[1].display()))
        .unwrap_or_else(|| panic!("no section for {}:\n{text}", roots[1].display()))
        .1;
    assert!(
        text.starts_with(&format!("{}:\nNAME", roots[0].display())),
        "{text}"
    );
    assert!(
        custom_section.contains("npm-3") && custom_section.contains("smtp.example.org"),
        "{text}"
    );
}

/// Not a benchmark and no assertion on time: prints how long one read of a
/// typical NPM dir (ECDSA P-384) takes. Run with `--nocapture`.
#[test]
fn time_one_read_of_a_p384_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(
        KeyKind::P384,
        &["mail.example.com", "autodiscover.example.com"],
    );
    let live = LiveDir::new(tmp.path(), "npm-5", &leaf);
    read_consistent(&live.dir()).unwrap();
    const N: u32 = 200;
    let start = Instant::now();
    for _ in 0..N {
        let pair = read_consistent(&live.dir()).unwrap();
        assert!(is_pair_of(&pair, &leaf));
    }
    let each = start.elapsed() / N;
    eprintln!("read_consistent on a P-384 certbot dir: {each:?} per read (mean of {N})");
}

/// Issue 11 item 9: the pusher runs as root and whoever writes the live dir
/// (NPM's container, through its bind mount) must not choose what it
/// sends. A link that resolves outside its lineage's `archive/<name>/`
/// (absolute, `../` relative, through a symlinked directory, or into
/// another lineage) is refused by name, and `push` never connects.
#[test]
fn live_links_outside_the_lineage_archive_are_refused_and_nothing_is_sent() {
    use certsync_tests::npmhost::{local_target, NpmHost};
    use certsync_tests::receiver::Mailhost;
    use std::os::unix::fs::symlink;

    let ca = TestCa::new();
    let ours = ca.leaf(KeyKind::P256, &["mail.example.com"]);
    // A consistent pair root can read that is not this lineage's: the
    // attacker wants it sent.
    let victim = ca.leaf(KeyKind::P256, &["mail.example.com"]);
    type Plant = fn(&NpmHost, &Path) -> String;
    // Each returns the text the refusal must show (where the link points).
    let cases: [(&str, Plant); 4] = [
        ("absolute links to files outside", |npm, outside| {
            for kind in ["cert", "privkey", "chain", "fullchain"] {
                let link = npm.live.link(kind);
                fs::remove_file(&link).unwrap();
                symlink(outside.join(format!("{kind}1.pem")), &link).unwrap();
            }
            outside.display().to_string()
        }),
        ("../ links that climb out of the archive", |npm, outside| {
            // live/npm-5 → ../../../outside/<kind>1.pem (outside sits
            // beside letsencrypt/).
            for kind in ["cert", "privkey", "chain", "fullchain"] {
                let link = npm.live.link(kind);
                fs::remove_file(&link).unwrap();
                symlink(format!("../../../outside/{kind}1.pem"), &link).unwrap();
            }
            outside.display().to_string()
        }),
        (
            "certbot's own links through a symlinked archive dir",
            |npm, outside| {
                // The links are exactly what certbot writes; archive/npm-5
                // itself was replaced by a link to elsewhere.
                fs::remove_dir_all(npm.live.archive()).unwrap();
                symlink(outside, npm.live.archive()).unwrap();
                outside.display().to_string()
            },
        ),
        ("links into another lineage's archive", |npm, outside| {
            let other = npm.root.path().join("letsencrypt/archive/npm-9");
            fs::create_dir_all(&other).unwrap();
            for kind in ["cert", "privkey", "chain", "fullchain"] {
                fs::copy(
                    outside.join(format!("{kind}1.pem")),
                    other.join(format!("{kind}1.pem")),
                )
                .unwrap();
                let link = npm.live.link(kind);
                fs::remove_file(&link).unwrap();
                symlink(format!("../../archive/npm-9/{kind}1.pem"), &link).unwrap();
            }
            "archive/npm-9".to_string()
        }),
    ];
    for (what, plant) in cases {
        let npm = NpmHost::new(&ours);
        let mail = Mailhost::new(&["mail.example.com"]);
        npm.write_config(&npm.cert_source(), &[local_target("mailcow", &mail)]);
        let outside = npm.root.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("cert1.pem"), &victim.cert_pem).unwrap();
        fs::write(outside.join("chain1.pem"), &victim.intermediates_pem).unwrap();
        fs::write(outside.join("fullchain1.pem"), &victim.chain_pem).unwrap();
        fs::write(outside.join("privkey1.pem"), victim.key_pem.expose()).unwrap();
        let points_at = plant(&npm, &outside);

        let run = npm.run(&["push"]);
        let out = run.both();
        assert_ne!(run.code, Some(0), "{what}: {out}");
        assert!(
            out.contains(&npm.live.link("cert").display().to_string())
                || out.contains(&npm.live.link("privkey").display().to_string())
                || out.contains(&npm.live.link("chain").display().to_string())
                || out.contains(&npm.live.link("fullchain").display().to_string()),
            "{what}: the refusal names the link: {out}"
        );
        assert!(
            out.contains(&points_at),
            "{what}: and where it points: {out}"
        );
        assert!(out.contains("outside"), "{what}: {out}");
        assert!(
            !out.contains("connected") && !out.contains(" offer"),
            "{what}: never connects: {out}"
        );
        assert!(
            mail.nothing_installed(),
            "{what}: nothing reached the receiver: {out}"
        );
        assert!(!out.contains("PRIVATE KEY"), "{what}: {out}");
        eprintln!(
            "RESULT {what}: {}",
            out.lines().find(|l| l.contains("outside")).unwrap_or("")
        );
    }
}
