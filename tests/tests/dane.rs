//! The DANE guard against real DNS: Knot DNS serving a signed and an
//! unsigned zone, a real validating unbound in front (see
//! `certsync_tests::dns`), and `certsync-receive install` asking unbound
//! through `dns_resolver`.

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf, Validity};
use certsync_receive::dane::Tlsa;
use certsync_tests::dns::{DnsLab, SIGNED};
use certsync_tests::receiver::Mailhost;
use openssl::hash::MessageDigest;

fn ee(leaf: &TestLeaf) -> String {
    Tlsa::dane_ee_spki_sha256(&leaf.cert).unwrap().rdata()
}

fn ta(ca: &TestCa) -> String {
    let spki = ca
        .intermediate
        .public_key()
        .unwrap()
        .public_key_to_der()
        .unwrap();
    let data = openssl::hash::hash(MessageDigest::sha256(), &spki)
        .unwrap()
        .to_vec();
    Tlsa {
        usage: 2,
        selector: 1,
        matching: 1,
        data,
    }
    .rdata()
}

fn host(lab: &DnsLab, name: &str) -> Mailhost {
    Mailhost::with_extra(
        &[name],
        &format!("dane = \"auto\"\ndns_resolver = \"{}\"\n", lab.resolver),
    )
}

fn installed_is(h: &Mailhost, leaf: &TestLeaf) -> bool {
    h.installed().is_some_and(|(c, _)| c == leaf.chain_pem)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_dane_guard_against_a_real_signed_zone_and_a_validating_unbound() {
    certsync_tests::needs!(certsync_tests::need::dns());
    let ca = TestCa::new();
    let mail_old = ca.leaf(KeyKind::P256, &["mail.example.test"]);
    let mail_new = ca.leaf(KeyKind::P256, &["mail.example.test"]);
    let short = Validity {
        not_before: -3600,
        not_after: 5 * 86_400,
    };
    let mx3_old = ca.leaf_with(KeyKind::P256, &["mx3.example.test"], short);
    let mx3_new = ca.leaf(KeyKind::P256, &["mx3.example.test"]);
    let mx5_a = ca.leaf(KeyKind::P256, &["mx5.example.test"]);
    let mx5_b = ca.leaf(KeyKind::P256, &["mx5.example.test"]);
    let plain = ca.leaf(KeyKind::P256, &["mail.unsigned.test"]);
    let plain_next = ca.leaf(KeyKind::P256, &["mail.unsigned.test"]);
    let mx6_old = ca.leaf(KeyKind::P256, &["mx6.example.test"]);
    let mx6_new = ca.leaf(KeyKind::P256, &["mx6.example.test"]);
    let signed = format!(
        "_25._tcp.mail TLSA {}\n_25._tcp.mx3 TLSA {}\n_25._tcp.mx5 TLSA {}\n_25._tcp.mx6 TLSA {}\n",
        ee(&mail_old),
        ee(&mx3_old),
        ta(&ca),
        ee(&mx6_old),
    );
    // The unsigned zone pins another key: were it trusted, it would hold.
    let unsigned = format!("_25._tcp.mail TLSA 3 1 1 {}\n", "00".repeat(32));
    let bogus_leaf = ca.leaf(KeyKind::P256, &["mail.bogus.test"]);
    let bogus_next = ca.leaf(KeyKind::P256, &["mail.bogus.test"]);
    let bogus = format!("_25._tcp.mail TLSA {}\n", ee(&bogus_leaf));
    let mut lab = DnsLab::start(&signed, &unsigned, &bogus);

    // 1. A matching 3 1 1 installs.
    let h = host(&lab, "mail.example.test");
    let out = h.install_leaf(&mail_old, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(installed_is(&h, &mail_old));

    // 2. A new key with no matching record is held: exit 5, the installed
    // pair untouched, the exact record to publish in the report.
    let before = h.snapshot();
    let out = h.install_leaf(&mail_new, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(
        h.snapshot(),
        before,
        "a held pair must not touch the installed one"
    );
    let want = format!("_25._tcp.mail.example.test. IN TLSA {}", ee(&mail_new));
    assert!(text(&out).contains(&want), "{want}\n{}", text(&out));

    // A pair staged by `serve` and held by root's `deploy` stays staged.
    let h6 = host(&lab, "mx6.example.test");
    let out = h6.install_leaf(&mx6_old, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let staged = h6.staging.join("mail");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("fullchain.pem"), &mx6_new.chain_pem).unwrap();
    std::fs::write(staged.join("privkey.pem"), mx6_new.key_pem.expose()).unwrap();
    std::fs::set_permissions(
        staged.join("privkey.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let before6 = h6.snapshot();
    let out = h6.cmd().arg("deploy").output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(h6.snapshot(), before6);
    assert!(
        staged.join("fullchain.pem").exists(),
        "a held pair stays staged"
    );
    // `check` shows the held pair (exit 5) and both records: current + next.
    let out = h6.cmd().args(["check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &json["certs"][0]["dane"];
    assert!(d["held"].is_string(), "{d}");
    assert_eq!(d["served_matches"], serde_json::json!(true), "{d}");
    assert_eq!(d["lookups"][0]["state"], "validated", "{d}");
    let publish: Vec<&str> = d["publish"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        publish,
        [
            format!("_25._tcp.mx6.example.test. IN TLSA {}", ee(&mx6_old)),
            format!("_25._tcp.mx6.example.test. IN TLSA {}", ee(&mx6_new)),
        ]
    );

    // ... and both install once the records are added and the zone
    // re-signed: `install` again, and the next `deploy` (timer) by itself.
    lab.set_records(
        SIGNED,
        &format!(
            "{signed}_25._tcp.mail TLSA {}\n_25._tcp.mx6 TLSA {}\n",
            ee(&mail_new),
            ee(&mx6_new)
        ),
    );
    let out = h.install_leaf(&mail_new, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(installed_is(&h, &mail_new));
    let out = h6.cmd().arg("deploy").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(installed_is(&h6, &mx6_new));
    assert!(!staged.join("fullchain.pem").exists(), "{}", text(&out));
    let out = h6.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("DANE: port 25 matches the validated TLSA records"),
        "{}",
        text(&out)
    );

    // 3. The deadline forces the install: the installed certificate has
    // 5 days left, under the default dane_deadline_days = 7.
    let h = host(&lab, "mx3.example.test");
    let out = h.install_leaf(&mx3_old, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = h.install_leaf(&mx3_new, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(installed_is(&h, &mx3_new));
    assert!(
        text(&out).contains("DANE-validating senders"),
        "a forced install warns loudly\n{}",
        text(&out)
    );
    // Now port 25 serves a key DNS does not pin: `check` says so (exit 4).
    let prom = h.root.path().join("m.prom");
    let out = h
        .cmd()
        .args(["check", "--metrics"])
        .arg(&prom)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("does NOT match"), "{}", text(&out));
    let prom = std::fs::read_to_string(prom).unwrap();
    assert!(
        prom.contains("certsync_dane_tlsa_match{name=\"mail\"} 0"),
        "{prom}"
    );

    // 4. An unsigned zone is reported and not trusted.
    // (Two installs: with nothing installed, the deadline would install
    // even a pinned pair, so only the second one proves it.)
    let h = host(&lab, "mail.unsigned.test");
    for leaf in [&plain, &plain_next] {
        let out = h.install_leaf(leaf, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(installed_is(&h, leaf));
        assert!(text(&out).contains("no AD bit"), "{}", text(&out));
    }

    // A bogus answer (signatures that do not chain to the trust anchor):
    // unbound says SERVFAIL, and the install is refused, nothing written,
    // even though the records would match.
    // With nothing installed yet the deadline applies (no certificate
    // fails every sender): installed, with the warning.
    let h = host(&lab, "mail.bogus.test");
    let out = h.install_leaf(&bogus_leaf, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("SERVFAIL"), "{}", text(&out));
    let before = h.snapshot();
    let out = h.install_leaf(&bogus_next, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(h.snapshot(), before, "{}", text(&out));
    assert!(text(&out).contains("SERVFAIL"), "{}", text(&out));

    // 5. 2 1 1 on the issuer keeps matching across a key change.
    let h = host(&lab, "mx5.example.test");
    for leaf in [&mx5_a, &mx5_b] {
        let out = h.install_leaf(leaf, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(installed_is(&h, leaf));
    }
}
