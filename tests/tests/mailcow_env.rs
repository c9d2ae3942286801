//! The mailcow-faithful environment ([`certsync_tests::mailcow`]) behaves
//! like mailcow-dockerized where certsync depends on it, and the naive
//! reload fails there:
//!
//! - postfix and dovecot serve the acme-left `ssl/<hostname>/` folder to
//!   clients that send SNI = MAILCOW_HOSTNAME, the top-level pair to
//!   clients without SNI; nginx serves a folder only where its `domains`
//!   lacks MAILCOW_HOSTNAME;
//! - after the files are replaced, a bare `postfix reload` leaves SNI
//!   clients on the OLD certificate (the map holds copies made by
//!   `postmap -F`), while a rebuilt map plus a reload serves the new one;
//! - what `dovecot reload` does with `sni.conf`'s `ssl_cert = <file`.
//!
//! Each test starts its own dockerd; timings are printed (`--nocapture`).

use std::time::{Duration, Instant};

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_core::Fingerprint;
use certsync_tests::docker::wait_until;
use certsync_tests::mailcow::{self, Conf, Mailcow};
use certsync_tests::needs;

const HOST: &str = "mail.example.com";

/// What `e` serves to a client sending `sni` (or none).
fn served(e: &mailcow::Endpoint, sni: Option<&str>) -> Result<Fingerprint, String> {
    e.served(sni, false)
}

fn endpoint(m: &Mailcow<'_>, word: &str) -> mailcow::Endpoint {
    m.all_endpoints()
        .into_iter()
        .find(|e| e.word == word)
        .unwrap()
}

fn exec_ok(m: &Mailcow<'_>, service: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = m.container(service).exec(args);
    assert!(
        out.status.success(),
        "{args:?} in {service}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn name(leaves: &[(&str, &TestLeaf)], fp: &Result<Fingerprint, String>) -> String {
    match fp {
        Ok(fp) => leaves
            .iter()
            .find(|(_, l)| l.fingerprint() == *fp)
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| format!("unknown {}", fp.short())),
        Err(e) => format!("error: {e}"),
    }
}

#[test]
fn postfix_and_dovecot_serve_the_acme_folder_to_sni_clients_and_nginx_does_not() {
    needs!(let d = mailcow::engine());
    let ca = TestCa::new();
    let top = ca.leaf(KeyKind::P256, &[HOST]);
    let acme = ca.leaf(KeyKind::P256, &[HOST]);
    let other = ca.leaf(KeyKind::P256, &["other.example.org"]);
    let conf = Conf::loopback(HOST);
    let m = Mailcow::start(&d, conf, &top, Some(&acme));
    // A per-domain folder for another domain: picked up at start.
    let folder = m.ssl_dir().join("other.example.org");
    std::fs::create_dir(&folder).unwrap();
    mailcow::write_pair(&folder, &other);
    std::fs::write(folder.join("domains"), "other.example.org").unwrap();
    // A folder missing `domains` is ignored by all three.
    let partial = m.ssl_dir().join("partial.example.net");
    std::fs::create_dir(&partial).unwrap();
    mailcow::write_pair(&partial, &other);
    for s in ["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow"] {
        m.restart(s);
    }
    let leaves = [("top", &top), ("acme", &acme), ("other", &other)];
    let map = std::fs::read_to_string(m.dir.join("data/conf/postfix/sni.map")).unwrap();
    assert_eq!(
        map,
        "mail.example.com /etc/ssl/mail/mail.example.com/key.pem /etc/ssl/mail/mail.example.com/cert.pem\n\
         other.example.org /etc/ssl/mail/other.example.org/key.pem /etc/ssl/mail/other.example.org/cert.pem\n"
    );
    for e in m.all_endpoints() {
        let with = served(&e, Some(HOST));
        let without = served(&e, None);
        let foreign = served(&e, Some("other.example.org"));
        println!(
            "{:<28} SNI {HOST}: {:<5} no SNI: {:<5} SNI other.example.org: {}",
            e.verify(),
            name(&leaves, &with),
            name(&leaves, &without),
            name(&leaves, &foreign)
        );
        let want_with = if e.service == "nginx-mailcow" {
            &top
        } else {
            &acme
        };
        assert_eq!(with, Ok(want_with.fingerprint()), "{} with SNI", e.verify());
        assert_eq!(without, Ok(top.fingerprint()), "{} without SNI", e.verify());
        assert_eq!(
            foreign,
            Ok(other.fingerprint()),
            "{} for other.example.org",
            e.verify()
        );
    }
}

#[test]
fn a_bare_postfix_reload_leaves_sni_clients_on_the_old_certificate() {
    needs!(let d = mailcow::engine());
    let ca = TestCa::new();
    let old = ca.leaf(KeyKind::P256, &[HOST]);
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let m = Mailcow::start(&d, Conf::loopback(HOST), &old, Some(&old));
    let leaves = [("old", &old), ("new", &new)];
    for e in m.all_endpoints() {
        assert_eq!(served(&e, Some(HOST)), Ok(old.fingerprint()), "{e:?}");
        assert_eq!(served(&e, None), Ok(old.fingerprint()), "{e:?}");
    }

    // What certsync did before: new files everywhere, `postfix reload`.
    m.replace_files(&new);
    let took = exec_ok(&m, "postfix-mailcow", &["postfix", "reload"]);
    println!("postfix reload: {took:?}");
    for word in ["smtp", "submission", "smtps"] {
        let e = endpoint(&m, word);
        // The reload has happened once clients without SNI get the new
        // certificate ...
        let reloaded = wait_until(Duration::from_secs(10), || {
            served(&e, None) == Ok(new.fingerprint())
        });
        assert!(reloaded.is_some(), "{word}: postfix did not reload");
        // ... and clients with SNI still get the old one, however long
        // they wait.
        std::thread::sleep(Duration::from_secs(1));
        let with = served(&e, Some(HOST));
        println!(
            "after postfix reload: {word:<10} SNI {HOST}: {}, no SNI: new",
            name(&leaves, &with)
        );
        assert_eq!(
            with,
            Ok(old.fingerprint()),
            "{word}: a bare reload left SNI clients on the old certificate in mailcow"
        );
    }

    // The refresh: rebuild the map from its unchanged source, then reload.
    let took = exec_ok(
        &m,
        "postfix-mailcow",
        &[
            "sh",
            "-c",
            "postmap -F hash:/opt/postfix/conf/sni.map && postfix reload",
        ],
    );
    println!("postmap -F + postfix reload: {took:?}");
    for word in ["smtp", "submission", "smtps"] {
        let e = endpoint(&m, word);
        let fresh = wait_until(Duration::from_secs(10), || {
            served(&e, Some(HOST)) == Ok(new.fingerprint())
        });
        assert!(fresh.is_some(), "{word}: the rebuilt map is not served");
        assert_eq!(served(&e, None), Ok(new.fingerprint()), "{word}");
    }

    // A restart, as mailcow's acme container does after a renewal, also
    // serves the new pair (the start script rebuilds the map).
    m.replace_files(&old);
    let took = m.restart("postfix-mailcow");
    println!("docker restart postfix-mailcow (until it listens): {took:?}");
    let e = endpoint(&m, "smtp");
    assert_eq!(served(&e, Some(HOST)), Ok(old.fingerprint()));
    assert_eq!(served(&e, None), Ok(old.fingerprint()));
}

#[test]
fn dovecot_reload_rereads_the_files_sni_conf_names() {
    needs!(let d = mailcow::engine());
    let ca = TestCa::new();
    let old = ca.leaf(KeyKind::P256, &[HOST]);
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let m = Mailcow::start(&d, Conf::loopback(HOST), &old, Some(&old));
    let leaves = [("old", &old), ("new", &new)];
    let sni_conf = m.dovecot.exec(&["cat", "/etc/dovecot/sni.conf"]);
    assert_eq!(
        String::from_utf8_lossy(&sni_conf.stdout),
        "local_name mail.example.com {\n  ssl_cert = </etc/ssl/mail/mail.example.com/cert.pem\n  ssl_key = </etc/ssl/mail/mail.example.com/key.pem\n}\n"
    );

    m.replace_files(&new);
    let took = exec_ok(&m, "dovecot-mailcow", &["dovecot", "reload"]);
    println!("dovecot reload: {took:?}");
    for word in ["imap", "imaps", "pop3", "pop3s", "sieve"] {
        let e = endpoint(&m, word);
        for sni in [Some(HOST), None] {
            let fresh = wait_until(Duration::from_secs(10), || {
                served(&e, sni) == Ok(new.fingerprint())
            });
            let now = served(&e, sni);
            println!(
                "after dovecot reload: {word:<6} {:<24}: {} (after {fresh:?})",
                certsync_receive::systems::probe::sni_label(sni),
                name(&leaves, &now)
            );
            assert_eq!(now, Ok(new.fingerprint()), "{word} {sni:?}");
        }
    }
    let took = m.restart("dovecot-mailcow");
    println!("docker restart dovecot-mailcow (until it listens): {took:?}");
}
