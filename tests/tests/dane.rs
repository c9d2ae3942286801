//! The DANE guard against real DNS: Knot DNS serving a signed and an
//! unsigned zone, a real validating unbound in front (see
//! `certsync_tests::dns`), and `certsync-receive install` asking unbound
//! through `dns_resolver`; and the whole chain, a real `certsync-push`
//! through a real sshd to `certsync-receive serve`, with `[notify]` on both
//! sides posting to a real HTTP listener.

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf, Validity};
use certsync_receive::systems::dane::{Tlsa, UDP_PAYLOAD};
use certsync_tests::dns::{DnsLab, SIGNED};
use certsync_tests::e2e::Deployer;
use certsync_tests::httpsink::HttpSink;
use certsync_tests::npmhost::{ssh_target, sshd_for, NpmHost};
use certsync_tests::receiver::{push_session, Mailhost};
use certsync_tests::{need, needs};
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
    needs!(need::dns());
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

/// The `3 1 1` zone line for `leaf` at `_<port>._tcp.<host>.`.
fn publish_line(host: &str, port: u16, leaf: &TestLeaf) -> String {
    format!("_{port}._tcp.{host}. IN TLSA {}", ee(leaf))
}

/// The notifications `sink` got, as JSON, once `n` have arrived.
fn told(sink: &HttpSink, n: usize) -> Vec<serde_json::Value> {
    sink.wait_for(n).iter().map(|r| r.json()).collect()
}

fn staged_chain(h: &Mailhost) -> Option<Vec<u8>> {
    std::fs::read(h.staging.join("mail").join("fullchain.pem")).ok()
}

#[test]
fn a_held_push_says_held_with_the_record_and_installs_by_deploy_or_the_next_push() {
    needs!(need::dns(), need::sshd());
    const HOST: &str = "mail.example.test";
    let ca = TestCa::new();
    let k1 = ca.leaf(KeyKind::P256, &[HOST]);
    let k2 = ca.leaf(KeyKind::P256, &[HOST]);
    let k3 = ca.leaf(KeyKind::P256, &[HOST]);
    let pinned = |leaves: &[&TestLeaf]| -> String {
        leaves
            .iter()
            .map(|l| format!("_25._tcp.mail TLSA {}\n", ee(l)))
            .collect()
    };
    let mut lab = DnsLab::start(&pinned(&[&k1]), "", "");

    // The receiver tells every event; the pusher only holds and failures.
    let recv_sink = HttpSink::start();
    let push_sink = HttpSink::start();
    let mail = Mailhost::with_extra(
        &[HOST],
        &format!(
            "dane = \"auto\"\ndns_resolver = \"{}\"\n[notify]\nwebhook = {:?}\n",
            lab.resolver,
            recv_sink.url("/receiver")
        ),
    );
    let mut npm = NpmHost::new(&k1);
    let sshd = sshd_for(&mail, &npm.key);
    let kh = npm.known_hosts("known_hosts", &[sshd.known_hosts_line()]);
    npm.write_config(
        &format!(
            "{}\n[notify]\nwebhook = {:?}\non = [\"held\", \"failure\"]\n",
            npm.cert_source(),
            push_sink.url("/pusher")
        ),
        &[ssh_target(
            "mailcow",
            sshd.host(),
            sshd.port(),
            &npm.key.private,
            &kh,
        )],
    );

    // k1 matches the published 3 1 1: installed.
    let run = npm.run(&["push"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(installed_is(&mail, &k1), "{}", run.both());
    let before = mail.snapshot();

    // certbot renews with a new key that DNS does not pin: held. The push
    // exits 5 and its result line says held (not FAILED) with the exact
    // record to publish; nothing installed changes; the pair stays staged.
    npm.live.renew(&k2);
    let run = npm.run(&["push"]);
    eprintln!("{}", run.both());
    assert_eq!(run.code, Some(5), "{}", run.both());
    let want = publish_line(HOST, 25, &k2);
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "mailcow: HELD (exit 5): mail: held for DNS: {} stays staged",
            k2.fingerprint().short()
        )),
        "{}",
        run.both()
    );
    assert!(
        first.ends_with(&format!("until DNS has: {want}")),
        "{}",
        run.both()
    );
    assert!(!run.stdout.contains("FAILED"), "{}", run.both());
    assert!(
        run.stdout.contains("  mail: install skipped: held for DNS"),
        "{}",
        run.both()
    );
    assert_eq!(mail.snapshot(), before, "a held pair must not be installed");
    assert_eq!(staged_chain(&mail), Some(k2.chain_pem.clone()));

    // [notify]: its own event `held`, never `failure`, on both sides.
    let r = told(&recv_sink, 2);
    assert_eq!(r[0]["event"], "install", "{r:?}");
    assert_eq!(r[1]["event"], "held", "{r:?}");
    assert_eq!(r[1]["priority"], 5, "{r:?}");
    assert_eq!(
        r[1]["message"],
        format!("mail: held for DNS: publish {want}"),
        "{r:?}"
    );
    assert_eq!(r[1]["details"]["certs"][0]["exit"], "held", "{r:?}");
    assert_eq!(
        r[1]["details"]["certs"][0]["publish"],
        serde_json::json!([want]),
        "{r:?}"
    );
    let p = told(&push_sink, 1);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0]["source"], "certsync-push");
    assert_eq!(p[0]["event"], "held", "{p:?}");
    assert_eq!(p[0]["details"]["results"][0]["state"], "held", "{p:?}");
    assert!(p[0]["message"].as_str().unwrap().contains(&want), "{p:?}");

    // Before DNS has the record, neither the deploy timer's run nor
    // another push installs anything.
    let out = mail.cmd().arg("deploy").output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(mail.snapshot(), before);
    assert_eq!(staged_chain(&mail), Some(k2.chain_pem.clone()));
    let run = npm.run(&["push"]);
    assert_eq!(run.code, Some(5), "{}", run.both());
    assert_eq!(mail.snapshot(), before);

    // The operator publishes current + next and the zone is re-signed: the
    // deploy timer's run (`certsync-receive deploy`, no request) installs
    // the staged pair by itself and empties the staging dir.
    lab.set_records(SIGNED, &pinned(&[&k1, &k2]));
    let out = mail.cmd().arg("deploy").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(installed_is(&mail, &k2), "{}", text(&out));
    assert_eq!(staged_chain(&mail), None, "{}", text(&out));
    let run = npm.run(&["push"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains("mailcow: ok: mail: nothing to do"),
        "{}",
        run.both()
    );

    // The next renewal is held again, and this time the next push (the
    // pusher's timer, or `watch`'s recheck) installs it once DNS matches.
    npm.live.renew(&k3);
    let held = mail.snapshot();
    let run = npm.run(&["push"]);
    assert_eq!(run.code, Some(5), "{}", run.both());
    assert!(
        run.stdout
            .contains(&format!("until DNS has: {}", publish_line(HOST, 25, &k3))),
        "{}",
        run.both()
    );
    assert_eq!(mail.snapshot(), held);
    lab.set_records(SIGNED, &pinned(&[&k2, &k3]));
    let run = npm.run(&["push"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!(
            "mailcow: ok: mail: installed {}",
            k3.fingerprint().short()
        )),
        "{}",
        run.both()
    );
    assert!(installed_is(&mail, &k3));
    assert_eq!(staged_chain(&mail), None);

    // No hold was ever told as a failure.
    let all: Vec<serde_json::Value> = recv_sink
        .requests()
        .iter()
        .chain(push_sink.requests().iter())
        .map(|r| r.json())
        .collect();
    assert!(all.iter().all(|n| n["event"] != "failure"), "{all:#?}");
    assert!(
        all.iter().filter(|n| n["event"] == "held").count() >= 4,
        "{all:#?}"
    );
}

#[test]
fn dane_ports_and_an_rrset_too_big_for_udp_against_real_dns() {
    needs!(need::dns());
    let ca = TestCa::new();
    let mx7_old = ca.leaf(KeyKind::P256, &["mx7.example.test"]);
    let mx7_new = ca.leaf(KeyKind::P256, &["mx7.example.test"]);
    let big_old = ca.leaf(KeyKind::P256, &["big.example.test"]);
    let big_new = ca.leaf(KeyKind::P256, &["big.example.test"]);
    // 40 `3 1 2` records (64-byte SHA-512 data, about 79 bytes each on the
    // wire) besides the real one: over 3 KB, far above the 1232-byte UDP
    // payload we advertise, so unbound answers over UDP with TC set and the
    // lookup must retry over TCP. Without that retry the RRset is never
    // seen and the new key installs (checked: exit 0 instead of 5).
    let filler: String = (0..40u8)
        .map(|i| {
            format!(
                "_25._tcp.big TLSA 3 1 2 {}\n",
                format!("{i:02x}").repeat(64)
            )
        })
        .collect();
    assert!(41 * 79 > usize::from(UDP_PAYLOAD));
    let records = |mx7_25: &[&TestLeaf], mx7_465: &[&TestLeaf]| -> String {
        let mut z = filler.clone();
        z.push_str(&format!("_25._tcp.big TLSA {}\n", ee(&big_old)));
        for l in mx7_25 {
            z.push_str(&format!("_25._tcp.mx7 TLSA {}\n", ee(l)));
        }
        for l in mx7_465 {
            z.push_str(&format!("_465._tcp.mx7 TLSA {}\n", ee(l)));
        }
        z
    };
    let mut lab = DnsLab::start(&records(&[&mx7_old], &[&mx7_old]), "", "");

    // dane_ports = [465]: port 25 already pins the new key too, 465 does
    // not: held, and only the 465 record is to be published.
    let h = Mailhost::with_extra(
        &["mx7.example.test"],
        &format!(
            "dane = \"auto\"\ndane_ports = [465]\ndns_resolver = \"{}\"\n",
            lab.resolver
        ),
    );
    let out = h.install_leaf(&mx7_old, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.set_records(SIGNED, &records(&[&mx7_old, &mx7_new], &[&mx7_old]));
    let before = h.snapshot();
    let out = h.install_leaf(&mx7_new, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(h.snapshot(), before);
    let all = text(&out);
    assert!(
        all.contains(&publish_line("mx7.example.test", 465, &mx7_new)),
        "{all}"
    );
    assert!(
        !all.contains(&publish_line("mx7.example.test", 25, &mx7_new)),
        "port 25 already matches: {all}"
    );
    // The same holds without dane_ports: 465 is not looked at.
    let h25 = Mailhost::with_extra(
        &["mx7.example.test"],
        &format!("dane = \"auto\"\ndns_resolver = \"{}\"\n", lab.resolver),
    );
    let out = h25.install_leaf(&mx7_old, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = h25.install_leaf(&mx7_new, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Once 465 has it too, the dane_ports host installs.
    lab.set_records(
        SIGNED,
        &records(&[&mx7_old, &mx7_new], &[&mx7_old, &mx7_new]),
    );
    let out = h.install_leaf(&mx7_new, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(installed_is(&h, &mx7_new));

    // The big RRset: the matching record among 41 is found (installed
    // with no deadline warning), and a new key is held.
    let h = host(&lab, "big.example.test");
    let out = h.install_leaf(&big_old, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !text(&out).contains("DANE-validating senders"),
        "the record matched, nothing was forced: {}",
        text(&out)
    );
    let before = h.snapshot();
    let out = h.install_leaf(&big_new, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(h.snapshot(), before);
    assert!(
        text(&out).contains(&publish_line("big.example.test", 25, &big_new)),
        "{}",
        text(&out)
    );
}

/// Handoff mode: `serve` runs as the unprivileged user (uid 65534 stands
/// in for `certsync`), root's `deploy` holds the pair; the hold reaches the
/// pusher through the result file, the pair stays in the staging dir (the
/// unprivileged user can stage over it at the next push), and root's
/// deploy timer installs it once DNS matches.
#[tokio::test]
async fn in_handoff_mode_a_held_pair_waits_in_the_staging_dir_for_roots_deploy() {
    use std::os::unix::fs::PermissionsExt;
    needs!(need::dns(), need::setpriv());
    const HOST: &str = "mail.example.test";
    const NOBODY: u32 = 65534;
    let ca = TestCa::new();
    // A second name in the unsigned zone: its "not validated" warning is
    // root's, and must reach the pusher too.
    let names = [HOST, "mail.unsigned.test"];
    let k1 = ca.leaf(KeyKind::P256, &names);
    let k2 = ca.leaf(KeyKind::P256, &names);
    let mut lab = DnsLab::start(&format!("_25._tcp.mail TLSA {}\n", ee(&k1)), "", "");
    let mail = Mailhost::with_extra(
        &names,
        &format!(
            "deploy = \"handoff\"\nhandoff_timeout = 30\ndane = \"auto\"\ndns_resolver = \"{}\"\n",
            lab.resolver
        ),
    );
    // As the package lays it out: only the staging dir is the user's.
    std::fs::create_dir_all(&mail.staging).unwrap();
    std::os::unix::fs::chown(&mail.staging, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&mail.staging, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(mail.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = mail.install_leaf(&k1, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = mail.snapshot();
    let want = publish_line(HOST, 25, &k2);

    let deploy = {
        let config = mail.config.clone();
        Deployer::start(&mail.staging, move || {
            let mut c = std::process::Command::new(certsync_tests::bins::receive());
            c.arg("--config").arg(&config).arg("deploy");
            c
        })
    };
    for attempt in 1..=2 {
        let r = push_session(
            mail.serve_as(NOBODY),
            &[("mail", k2.bundle(), k2.fingerprint())],
            false,
            false,
        )
        .await;
        assert_eq!(r.exit, Some(5), "push {attempt}: {r:?}\n{}", deploy.log());
        let report = r.report.expect("a report");
        assert_eq!(
            report.certs[0].publish,
            std::slice::from_ref(&want),
            "{report:?}"
        );
        assert!(
            report.certs[0]
                .warnings
                .iter()
                .any(|w| w.starts_with("_25._tcp.mail.unsigned.test.") && w.contains("no AD bit")),
            "{report:?}"
        );
        assert_eq!(mail.snapshot(), before, "push {attempt}");
        assert_eq!(staged_chain(&mail), Some(k2.chain_pem.clone()));
    }
    assert_eq!(deploy.runs(), [Some(5), Some(5)], "{}", deploy.log());
    drop(deploy);

    // The record is published and the zone re-signed: the hourly timer's
    // run (no request) installs the staged pair.
    lab.set_records(
        SIGNED,
        &format!(
            "_25._tcp.mail TLSA {}\n_25._tcp.mail TLSA {}\n",
            ee(&k1),
            ee(&k2)
        ),
    );
    let out = mail.cmd().arg("deploy").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(installed_is(&mail, &k2), "{}", text(&out));
    assert_eq!(staged_chain(&mail), None, "{}", text(&out));
}
