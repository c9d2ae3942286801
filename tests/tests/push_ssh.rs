//! `certsync-push` end to end: the real binary reads a certbot-style live
//! dir and pushes through a real OpenSSH sshd, whose authorized_keys line
//! forces the real `certsync-receive serve` of a mailcow-like temp host.
//!
//! Each test is an operator's story: first push, a repeat, a renewal caught
//! halfway, a host key that is unknown or has changed, a key that is not
//! authorized, two targets with a third one down, a dry run and a forced
//! rollback, and a receiver on the same host (`transport = "local"`).

use std::os::unix::fs::MetadataExt;

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf, Validity};
use certsync_tests::livedir::Renewal;
use certsync_tests::npmhost::{local_target, ssh_target, sshd_for, ClosedPort, NpmHost};
use certsync_tests::receiver::Mailhost;
use certsync_tests::sshd::{self, client_key, KeyType, Sshd};
use certsync_tests::{need, needs};

const HOST: &str = "mail.example.com";

/// An NPM host, a mail host, and an sshd in front of the mail host's
/// receiver, with push.toml naming it by a correct known_hosts file.
struct Scene {
    npm: NpmHost,
    mail: Mailhost,
    sshd: Sshd,
}

fn scene(leaf: &TestLeaf) -> Scene {
    let npm = NpmHost::new(leaf);
    let mail = Mailhost::new(&[HOST]);
    let sshd = npm.push_over_ssh_to(&mail);
    Scene { npm, mail, sshd }
}

/// The installed pair equals generation `n` of the live dir's archive.
fn installed_is_generation(npm: &NpmHost, mail: &Mailhost, n: u32) -> bool {
    let Some((cert, key)) = mail.installed() else {
        return false;
    };
    cert == std::fs::read(npm.live.archive_file("fullchain", n)).unwrap()
        && key == std::fs::read(npm.live.archive_file("privkey", n)).unwrap()
}

/// (inode, mtime in ns) of the installed files.
fn identity(mail: &Mailhost) -> Vec<(u64, i64, i64)> {
    [mail.cert_path(), mail.key_path()]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).unwrap();
            (m.ino(), m.mtime(), m.mtime_nsec())
        })
        .collect()
}

#[test]
fn first_push_installs_the_archive_bytes_and_a_repeat_is_nothing_to_do() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P384, &[HOST]);
    let Scene { npm, mail, sshd } = scene(&leaf);

    let first = npm.run(&["push"]);
    eprintln!(
        "TIMING first push over SSH (one target, install): {:.3}s",
        first.elapsed.as_secs_f64()
    );
    eprintln!("{}", first.both());
    first.assert_code(0);
    assert!(installed_is_generation(&npm, &mail, 1), "{}", first.both());
    // The installed files are real files with the archive's bytes, not links.
    assert!(!std::fs::symlink_metadata(mail.cert_path())
        .unwrap()
        .file_type()
        .is_symlink());
    let short = leaf.fingerprint().short();
    assert!(
        first
            .stdout
            .contains(&format!("mailcow: ok: mail: installed {short}")),
        "{}",
        first.both()
    );
    first.assert_stdout("  mail: install done");
    assert!(first.stderr.contains("sent "), "{}", first.both());
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );
    let before = identity(&mail);
    let snapshot = mail.snapshot();

    let again = npm.run(&["push"]);
    eprintln!(
        "TIMING repeat push over SSH (one target, nothing to do): {:.3}s",
        again.elapsed.as_secs_f64()
    );
    eprintln!("{}", again.both());
    again.assert_code(0);
    again.assert_stdout("mailcow: ok: mail: nothing to do");
    // Both sides say it: the pusher's own line and the receiver's (relayed
    // from its stderr over the SSH channel).
    let pusher_says = again
        .stderr
        .lines()
        .any(|l| l.contains("nothing to do") && l.contains("mailcow already has this pair"));
    let receiver_says = again
        .stderr
        .lines()
        .any(|l| l.contains("root@127.0.0.1") && l.contains("nothing to do"));
    assert!(pusher_says && receiver_says, "{}", again.both());
    // No key material was sent, and nothing was rewritten.
    assert!(!again.stderr.contains("sent "), "{}", again.both());
    assert!(
        !again.stdout.contains("mail: read done"),
        "{}",
        again.both()
    );
    assert!(
        !again.stderr.contains("bytes of chain and a key"),
        "{}",
        again.both()
    );
    assert_eq!(identity(&mail), before);
    assert_eq!(mail.snapshot(), snapshot);
    for run in [&first, &again] {
        assert!(!run.stderr.contains("PRIVATE KEY"), "{}", run.both());
        assert!(!run.stdout.contains("PRIVATE KEY"), "{}", run.both());
    }

    // status agrees: the installed leaf is the local one.
    let status = npm.run(&["status", "--json"]);
    status.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v[0]["state"], "up_to_date", "{}", status.both());
    assert_eq!(v[0]["local"], leaf.fingerprint().to_string());
    assert_eq!(v[0]["installed"], leaf.fingerprint().to_string());
}

#[test]
fn a_renewal_is_pushed_only_once_it_is_consistent() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let old = ca.leaf(KeyKind::P384, &[HOST]);
    let new = ca.leaf(KeyKind::P384, &[HOST]);
    let Scene {
        mut npm,
        mail,
        sshd: _sshd,
    } = scene(&old);
    let first = npm.run(&["push"]);
    first.assert_code(0);
    let snapshot = mail.snapshot();

    // certbot stopped after relinking cert.pem and unlinking privkey.pem:
    // archive 2 written, previous_* present, links mixed.
    npm.live.renew_with(
        &new,
        Renewal {
            stop_after: Some(5),
            ..Default::default()
        },
    );
    let halfway = npm.run(&["push", "--settle", "1"]);
    eprintln!("{}", halfway.both());
    halfway.assert_code(1);
    assert!(
        halfway.stdout.contains("mailcow: FAILED (exit 1)")
            && halfway.stdout.contains("stayed inconsistent")
            && halfway.stdout.contains("previous_cert.pem")
            && halfway.stdout.contains("privkey.pem is missing"),
        "{}",
        halfway.both()
    );
    assert_eq!(mail.snapshot(), snapshot, "nothing may be installed");
    assert!(installed_is_generation(&npm, &mail, 1));

    // certbot finishes: the new pair goes out.
    npm.live.renew_with(&new, Renewal::default());
    assert_eq!(npm.live.generation(), 2);
    let done = npm.run(&["push"]);
    done.assert_code(0);
    assert!(installed_is_generation(&npm, &mail, 2), "{}", done.both());
    assert!(
        done.stdout
            .contains(&format!("mail: installed {}", new.fingerprint().short())),
        "{}",
        done.both()
    );
}

#[test]
fn unknown_and_changed_host_keys_are_refused_before_anything_runs() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let Scene { npm, mail, sshd } = scene(&leaf);
    let fingerprint = sshd.host_key_fingerprint();
    assert!(fingerprint.starts_with("SHA256:"));

    // Unknown: the known_hosts file lists another host only.
    let other = client_key(npm.root.path(), "other_host", KeyType::Ed25519);
    let unknown = npm.known_hosts(
        "kh_unknown",
        &[sshd::known_hosts_line(
            "other.example.com",
            &other.public_line,
        )],
    );
    // Changed: the right host name, a different key.
    let changed = npm.known_hosts(
        "kh_changed",
        &[sshd::known_hosts_line(
            &format!("[127.0.0.1]:{}", sshd.port()),
            &other.public_line,
        )],
    );
    for (kh, words) in [(unknown, "is not known"), (changed, "HAS CHANGED")] {
        npm.write_config(
            &npm.cert_source(),
            &[ssh_target(
                "mailcow",
                sshd.host(),
                sshd.port(),
                &npm.key.private,
                &kh,
            )],
        );
        let run = npm.run(&["push"]);
        run.assert_code(1);
        assert!(
            run.stdout.contains(words) && run.stdout.contains(&fingerprint),
            "{words}: {}",
            run.both()
        );
        assert!(mail.nothing_installed(), "nothing may be installed");
    }
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "we must not authenticate to an untrusted host:\n{}",
        sshd.log()
    );
}

#[test]
fn a_key_that_is_not_authorized_fails_clearly() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let Scene { npm, mail, sshd } = scene(&leaf);
    let stranger = client_key(npm.root.path(), "id_stranger", KeyType::Ed25519);
    let kh = npm.known_hosts("known_hosts", &[sshd.known_hosts_line()]);
    npm.write_config(
        &npm.cert_source(),
        &[ssh_target(
            "mailcow",
            sshd.host(),
            sshd.port(),
            &stranger.private,
            &kh,
        )],
    );
    let run = npm.run(&["push"]);
    run.assert_code(1);
    assert!(
        run.stdout.contains("refused the key")
            && run.stdout.contains(&stranger.private.display().to_string())
            && run.stdout.contains(&sshd::fingerprint(&stranger.public)),
        "{}",
        run.both()
    );
    assert!(mail.nothing_installed());
}

#[test]
fn two_targets_in_one_run_and_a_third_that_is_down() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::Ed25519, &[HOST]);
    let npm = NpmHost::new(&leaf);
    let (mail_a, mail_b) = (Mailhost::new(&[HOST]), Mailhost::new(&[HOST]));
    let (sshd_a, sshd_b) = (sshd_for(&mail_a, &npm.key), sshd_for(&mail_b, &npm.key));
    let kh = npm.known_hosts(
        "known_hosts",
        &[sshd_a.known_hosts_line(), sshd_b.known_hosts_line()],
    );
    // A port that refuses connections for the whole test.
    let down = ClosedPort::new();
    let closed = down.port;
    npm.write_config(
        &npm.cert_source(),
        &[
            ssh_target("mx-a", "127.0.0.1", sshd_a.port(), &npm.key.private, &kh),
            ssh_target("mx-b", "127.0.0.1", sshd_b.port(), &npm.key.private, &kh),
            ssh_target("mx-down", "127.0.0.1", closed, &npm.key.private, &kh),
        ],
    );
    let run = npm.run(&["push"]);
    run.assert_code(1);
    let line = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", run.both()))
            .to_string()
    };
    assert!(
        line("mx-a").contains("ok: mail: installed"),
        "{}",
        run.both()
    );
    assert!(
        line("mx-b").contains("ok: mail: installed"),
        "{}",
        run.both()
    );
    let down_line = line("mx-down");
    assert!(
        down_line.contains("FAILED (exit 1)")
            && down_line.contains(&format!("127.0.0.1:{closed}"))
            && down_line.contains("Connection refused"),
        "{down_line}"
    );
    assert!(installed_is_generation(&npm, &mail_a, 1));
    assert!(installed_is_generation(&npm, &mail_b, 1));

    // --target narrows the pass to one target.
    let one = npm.run(&["push", "--target", "mx-b"]);
    one.assert_code(0);
    assert_eq!(
        one.stdout.lines().filter(|l| !l.starts_with("  ")).count(),
        1
    );
    assert!(
        one.stdout.starts_with("mx-b: ok: mail: nothing to do"),
        "{}",
        one.both()
    );
}

#[test]
fn dry_run_changes_nothing_and_a_remote_force_needs_allow_remote_force() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let long = ca.leaf(KeyKind::Rsa2048, &[HOST]);
    let Scene {
        mut npm,
        mail,
        sshd: _sshd,
    } = scene(&long);

    let dry = npm.run(&["push", "--dry-run"]);
    dry.assert_code(0);
    assert!(
        dry.stdout
            .contains("mailcow (dry run): ok: mail: dry run: would install"),
        "{}",
        dry.both()
    );
    assert!(dry.stdout.contains("dry run"), "{}", dry.both());
    assert!(mail.nothing_installed(), "a dry run installs nothing");

    let real = npm.run(&["push"]);
    real.assert_code(0);

    // A renewal to a certificate that expires sooner: a rollback.
    let short = ca.leaf_with(
        KeyKind::Rsa2048,
        &[HOST],
        Validity {
            not_before: -3600,
            not_after: 30 * 86_400,
        },
    );
    npm.live.renew(&short);
    let refused = npm.run(&["push"]);
    refused.assert_code(3);
    assert!(
        refused
            .stdout
            .contains("mailcow: FAILED (exit 3): mail: validate failed: ")
            && refused.stdout.contains("rollback refused")
            && refused.stdout.contains("--force"),
        "{}",
        refused.both()
    );
    assert!(
        installed_is_generation(&npm, &mail, 1),
        "{}",
        refused.both()
    );

    // Issue #11 item 3: a pusher's --force is the receiver's decision. Not
    // opted in: refused over the real sshd, saying why and what to do,
    // and nothing written.
    let before = mail.snapshot();
    let forced = npm.run(&["push", "--force"]);
    forced.assert_code(3);
    assert!(
        forced.stdout.contains("rollback refused")
            && forced.stdout.contains("does not allow a remote force")
            && forced.stdout.contains("allow_remote_force = true")
            && forced.stdout.contains("install --force"),
        "{}",
        forced.both()
    );
    assert_eq!(
        mail.snapshot(),
        before,
        "a refused remote force wrote files"
    );
    assert!(installed_is_generation(&npm, &mail, 1), "{}", forced.both());

    // Opted in: the same push installs the older pair.
    let text = std::fs::read_to_string(&mail.config).unwrap();
    std::fs::write(&mail.config, format!("allow_remote_force = true\n{text}")).unwrap();
    let forced = npm.run(&["push", "--force"]);
    forced.assert_code(0);
    assert!(installed_is_generation(&npm, &mail, 2), "{}", forced.both());
}

#[test]
fn local_transport_runs_the_receiver_without_ssh() {
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let npm = NpmHost::new(&leaf);
    let mail = Mailhost::new(&[HOST]);
    // Pick the live dir by domain, as NPM renumbers npm-N.
    let certs = format!(
        "[[cert]]\nname = \"mail\"\nlive_root = {:?}\ndomain = \"{HOST}\"\n",
        npm.live.live_root()
    );
    npm.write_config(&certs, &[local_target("here", &mail)]);

    let status = npm.run(&["status"]);
    status.assert_code(1);
    status.assert_stdout("mail → here: differs");
    assert!(mail.nothing_installed(), "status changes nothing");
    assert!(
        !status.stderr.contains("bytes of chain and the key"),
        "status sent key material:\n{}",
        status.both()
    );

    let first = npm.run(&["push"]);
    first.assert_code(0);
    assert!(installed_is_generation(&npm, &mail, 1), "{}", first.both());
    first.assert_stderr("is served from this live dir");
    let again = npm.run(&["push"]);
    again.assert_code(0);
    again.assert_stdout("here: ok: mail: nothing to do");
    let status = npm.run(&["status"]);
    status.assert_code(0);
    status.assert_stdout("mail → here: up to date");
}

/// NPM keeps uploaded certificates in `data/custom_ssl/npm-<id>/` as plain
/// files. With `live_root` naming certbot's live dir and that dir, a push
/// finds the domain in the second and installs exactly those bytes.
#[test]
fn a_push_finds_an_uploaded_certificate_under_a_second_live_root() {
    let ca = TestCa::new();
    let certbot = ca.leaf(KeyKind::P256, &["www.example.net"]);
    let npm = NpmHost::new(&certbot);
    let uploaded = ca.leaf(KeyKind::P384, &[HOST]);
    let custom_root = npm.root.path().join("data/custom_ssl");
    let custom = custom_root.join("npm-7");
    std::fs::create_dir_all(&custom).unwrap();
    std::fs::write(custom.join("fullchain.pem"), &uploaded.chain_pem).unwrap();
    std::fs::write(custom.join("privkey.pem"), uploaded.key_pem.expose()).unwrap();
    let mail = Mailhost::new(&[HOST]);
    let certs = format!(
        "[[cert]]\nname = \"mail\"\nlive_root = [{:?}, {:?}]\ndomain = \"{HOST}\"\n",
        npm.live.live_root(),
        custom_root
    );
    npm.write_config(&certs, &[local_target("here", &mail)]);

    let first = npm.run(&["push"]);
    first.assert_code(0);
    assert_eq!(
        mail.installed(),
        Some((
            uploaded.chain_pem.clone(),
            uploaded.key_pem.expose().to_vec()
        )),
        "{}",
        first.both()
    );
    assert!(
        first.stderr.contains(&custom.display().to_string()),
        "the chosen dir is logged: {}",
        first.both()
    );

    // discover without --live-root lists both roots of the config.
    let listed = npm.run(&["discover"]);
    listed.assert_code(0);
    for root in [npm.live.live_root(), custom_root] {
        listed.assert_stdout(&format!("{}:\n", root.display()));
    }
}

#[test]
fn discover_json_lists_the_live_dir() {
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P384, &[HOST]);
    let npm = NpmHost::new(&leaf);
    let run = npm.run(&[
        "discover",
        "--json",
        "--live-root",
        npm.live.live_root().to_str().unwrap(),
    ]);
    run.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v[0]["name"], "npm-5");
    assert_eq!(v[0]["consistent"], true);
    assert_eq!(v[0]["fingerprint"], leaf.fingerprint().to_string());
    assert_eq!(v[0]["sans"][0], HOST);
}

#[test]
fn a_cert_name_the_receiver_does_not_know_is_a_config_error_naming_its_file() {
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let npm = NpmHost::new(&leaf);
    let mail = Mailhost::new(&[HOST]);
    let certs = format!(
        "[[cert]]\nname = \"webmail\"\nsource = {:?}\n",
        npm.live.dir()
    );
    npm.write_config(&certs, &[local_target("here", &mail)]);
    let run = npm.run(&["push"]);
    run.assert_code(2);
    assert!(
        run.stdout.starts_with("here: FAILED (exit 2): webmail: ")
            && run.stdout.contains("no [[cert]] named \"webmail\"")
            && run.stdout.contains(&mail.config.display().to_string()),
        "{}",
        run.both()
    );
    assert!(!run.stderr.contains("sent "), "{}", run.both());
    assert!(mail.nothing_installed());
}

#[test]
fn a_key_from_keygen_works_with_the_line_it_prints() {
    needs!(need::sshd());
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P384, &[HOST]);
    let npm = NpmHost::new(&leaf);
    let mail = Mailhost::new(&[HOST]);
    let identity = npm.root.path().join("id_keygen");
    let made = npm.run(&["keygen", "--out", identity.to_str().unwrap()]);
    made.assert_code(0);
    let line = made.stdout.trim();
    let rest = line
        .strip_prefix("command=\"certsync-receive serve\",restrict ")
        .unwrap_or_else(|| panic!("not a restricted forced-command line: {line}"));
    // The printed command relies on PATH and the default config; point it
    // at this test's receiver, keep the options and the key as printed.
    let sshd = Sshd::builder()
        .authorized_key(&format!(
            "command=\"{}\",restrict {rest}",
            certsync_tests::npmhost::receiver_command(&mail)
        ))
        .start();
    let kh = npm.known_hosts("known_hosts", &[sshd.known_hosts_line()]);
    npm.write_config(
        &npm.cert_source(),
        &[ssh_target(
            "mailcow",
            sshd.host(),
            sshd.port(),
            &identity,
            &kh,
        )],
    );
    let run = npm.run(&["push"]);
    run.assert_code(0);
    assert!(installed_is_generation(&npm, &mail, 1), "{}", run.both());
    let log = sshd.log();
    assert!(log.contains("Accepted publickey for root"), "{log}");
}
