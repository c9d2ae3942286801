//! End to end on two hosts (issues 6 and 10): a certbot renewal on the NPM
//! host is what the mailcow host's real postfix, dovecot and nginx serve,
//! started the way mailcow's images start them
//! ([`certsync_tests::mailcow`]), with a mailcow.conf that moves HTTPS
//! behind a reverse proxy and SMTP off port 25.
//!
//! ```text
//!  NPM host (netns)                          mailcow host (netns)
//!  live/npm-5 (certbot-style links)          sshd :port on 10.231.x.2
//!  certsync-push watch ── SSH over veth ──►    forced command, user certsync:
//!  (ip netns exec)                             certsync-receive serve (handoff)
//!                                            root loop (certsync-deploy.path):
//!                                              certsync-receive deploy
//!                                            receive.toml: [mailcow] dir = … (preset)
//!                                            mailcow.conf: SMTP_PORT=2525,
//!                                              HTTPS_BIND=127.0.0.1 HTTPS_PORT=8443
//!                                            dockerd: postfix-mailcow  :2525 :587 STARTTLS, :465
//!                                                       (SNI map by postmap -F at start)
//!                                                     dovecot-mailcow  :993 (sni.conf at start)
//!                                                     nginx-mailcow    127.0.0.1:8443
//!                                              data/assets/ssl:/etc/ssl/mail:ro, with the
//!                                              acme-left data/assets/ssl/mail.example.com/
//! ```
//!
//! The test renews the certificate the way certbot does and then checks
//! what an operator checks by hand: the SHA-256 fingerprints of the source
//! certificate, of the installed file, and of the certificates served on
//! every default endpoint (SMTP and submission with STARTTLS, SMTPS, IMAPS,
//! HTTPS), to clients with SNI = MAILCOW_HOSTNAME and to clients without
//! SNI — with certsync's own probe and with `openssl s_client` — are all
//! the same.
//!
//! Every real part is required: with `CERTSYNC_REQUIRE_REAL=1` a missing
//! one is a failure. Everything started here (namespaces, dockerd and its
//! containers, sshd, the watch daemon, the deploy loop) is stopped by a
//! guard's `Drop`, so a failed assertion leaves nothing behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use certsync_core::testutil::{KeyKind, TestCa, Validity};
use certsync_core::Fingerprint;
use certsync_receive::systems::probe::{served_leaf_with, sni_label, Endpoint};
use certsync_tests::docker::{wait_until, Dockerd};
use certsync_tests::e2e::{pem_leaf_fingerprint, s_client_fingerprint, Deployer, Process};
use certsync_tests::mailcow::{self, Conf, Mailcow};
use certsync_tests::need::{self, Need};
use certsync_tests::netns::TwoHosts;
use certsync_tests::npmhost::NpmHost;
use certsync_tests::sshd::{self, Sshd};
use certsync_tests::{bins, needs};

const HOST: &str = "mail.example.com";
/// The unprivileged user of the forced command.
const USER: &str = "certsync";
/// How long one push (SSH, handoff, reloads, verify) may take here.
const PUSH_LIMIT: Duration = Duration::from_secs(120);

/// What a client sends: SNI = MAILCOW_HOSTNAME, or no SNI.
const SNIS: [Option<&str>; 2] = [Some(HOST), None];

/// Both hosts' parts; the login user last, as making it needs the rest.
fn all_parts() -> Need {
    need::netns()?;
    need::sshd()?;
    need::dockerd()?;
    need::mailcow_daemons()?;
    need::openssl()?;
    need::user(USER)
}

/// Who owns the key.pem that mailcow had before the first push (the new
/// one is root's either way: an owner is never inherited, docs/security.md
/// item 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyOwner {
    /// The forced command's user: `serve` can read the installed pair to
    /// compare. Root (and the daemons, which start as root) still read it.
    ServeUser,
    /// root, as mailcow writes it: `serve`, running as `certsync`, cannot
    /// read it (see the ignored test below).
    Root,
}

#[test]
fn a_renewal_on_the_npm_host_is_served_on_every_default_endpoint_of_the_mailcow_host() {
    run_on_mailcow_thread(KeyOwner::ServeUser);
}

/// The same chain with key.pem owned by root, as on a stock mailcow host.
/// In handoff mode `serve` runs as `certsync` and cannot read that key, so
/// it compares the certificate alone and root's `deploy` checks both files
/// (this once failed every push with "Permission denied" on key.pem).
#[test]
fn handoff_with_a_root_owned_key_pem() {
    run_on_mailcow_thread(KeyOwner::Root);
}

fn run_on_mailcow_thread(owner: KeyOwner) {
    needs!(all_parts());
    // The test body runs on a thread of its own that moves into the
    // mailcow host's namespace: what it starts (sshd, dockerd and so the
    // containers) and the probes it makes are on that host. dockerd dies
    // with the thread that started it, so that thread lives to the end.
    let body = std::thread::spawn(move || renewal_is_served_end_to_end(owner));
    if let Err(panic) = body.join() {
        std::panic::resume_unwind(panic);
    }
}

/// certsync's files on the mailcow host: the staging dir owned by the
/// unprivileged user, and receive.toml (the mailcow checkout itself is
/// the [`Mailcow`]'s).
struct MailcowFiles {
    /// Kept for its Drop.
    _root: tempfile::TempDir,
    staging: PathBuf,
    config: PathBuf,
}

impl MailcowFiles {
    fn new() -> MailcowFiles {
        let root = tempfile::Builder::new()
            .prefix("certsync-e2e-mailcow-")
            .tempdir()
            .unwrap();
        // The forced command runs as `certsync`: it must reach its config
        // and its staging dir.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let staging = root.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let uid = user_id(USER);
        std::os::unix::fs::chown(&staging, Some(uid.0), Some(uid.1)).unwrap();
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700)).unwrap();
        let config = root.path().join("receive.toml");
        MailcowFiles {
            _root: root,
            staging,
            config,
        }
    }

    /// The operator's receive.toml: the `[mailcow]` preset takes the
    /// hostname, paths, services, project and verify endpoints from
    /// mailcow.conf.
    fn write_config(&self, mailcow_dir: &Path, docker_socket: &Path) {
        let ca_file = certsync_tests::receiver::write_test_ca(self.config.parent().unwrap());
        let text = format!(
            r#"staging_dir = {staging:?}
dane = "off"
deploy = "handoff"
handoff_timeout = 110
ca_file = {ca_file:?}

[mailcow]
dir = {mailcow_dir:?}

[[cert]]
name = "mail"

[docker]
socket = {docker_socket:?}
"#,
            staging = self.staging,
        );
        std::fs::write(&self.config, text).unwrap();
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// Hand the installed keys to the forced command's user (see [`KeyOwner`]).
fn chown_keys(m: &Mailcow<'_>) {
    let (uid, gid) = user_id(USER);
    for dir in [m.ssl_dir(), m.acme_dir()] {
        std::os::unix::fs::chown(dir.join("key.pem"), Some(uid), Some(gid)).unwrap();
    }
}

fn user_id(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).arg(name).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// The fingerprints of the check, as an operator lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    source: Option<Fingerprint>,
    installed: Option<Fingerprint>,
    /// Per endpoint and SNI choice, what certsync's probe saw (or why not).
    served: Vec<(String, Result<Fingerprint, String>)>,
}

impl Seen {
    fn all(&self, want: Fingerprint) -> bool {
        self.source == Some(want)
            && self.installed == Some(want)
            && self.served.iter().all(|(_, s)| s.as_ref() == Ok(&want))
    }
}

/// Look, from the mailcow host's namespace (this thread).
fn look(npm: &NpmHost, m: &Mailcow<'_>) -> Seen {
    let mut served = Vec::new();
    for e in m.default_endpoints() {
        for sni in SNIS {
            let seen = Endpoint::parse(&e.verify())
                .map_err(|e| e.to_string())
                .and_then(|endpoint| {
                    served_leaf_with(&endpoint, sni, Duration::from_secs(5))
                        .map(|info| info.fingerprint)
                        .map_err(|e| e.to_string())
                });
            served.push((format!("{} ({})", e.verify(), sni_label(sni)), seen));
        }
    }
    Seen {
        source: pem_leaf_fingerprint(&npm.live.link("fullchain")),
        installed: pem_leaf_fingerprint(&m.ssl_dir().join("cert.pem")),
        served,
    }
}

fn renewal_is_served_end_to_end(owner: KeyOwner) {
    let hosts = TwoHosts::create();
    hosts.mailcow.enter_thread();
    let mailcow_ns = ["ip", "netns", "exec", hosts.mailcow.name.as_str()];

    let ca = TestCa::new();
    // NPM's default key type; every renewal makes a new key.
    let first = ca.leaf(KeyKind::P384, &[HOST]);
    let renewed = ca.leaf(KeyKind::P384, &[HOST]);
    // The pair mailcow made itself before certsync ever ran: older, so it
    // expires first (else the push would rightly be refused as a rollback).
    let mailcow_own = ca.leaf_with(
        KeyKind::Rsa2048,
        &[HOST],
        Validity {
            not_before: -60 * 86_400,
            not_after: 30 * 86_400,
        },
    );

    // ---- the mailcow host, as mailcow-dockerized starts it; its pair
    // (and the acme-left folder) predates certsync
    let files = MailcowFiles::new();
    let dockerd = Dockerd::start();
    let conf = Conf::behind_a_reverse_proxy(HOST);
    let m = Mailcow::start(&dockerd, conf, &mailcow_own, Some(&mailcow_own));
    if owner == KeyOwner::ServeUser {
        chown_keys(&m);
    }
    files.write_config(&m.dir, dockerd.socket());
    let endpoints: Vec<mailcow::Endpoint> = m.default_endpoints();
    assert_eq!(
        endpoints
            .iter()
            .map(|e| e.addr.as_str())
            .collect::<Vec<_>>(),
        [
            "127.0.0.1:2525",
            "127.0.0.1:587",
            "127.0.0.1:465",
            "127.0.0.1:993",
            "127.0.0.1:8443"
        ]
    );

    // Root's certsync-deploy.path: `deploy` as root, on this host.
    let deployer = {
        let (ns, config) = (hosts.mailcow.name.clone(), files.config.clone());
        Deployer::start(&files.staging, move || {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns])
                .arg(bins::receive())
                .arg("--config")
                .arg(&config)
                .arg("deploy")
                .env("CERTSYNC_LOG", "info");
            c
        })
    };

    // ---- the NPM host's key, and the mailcow host's sshd that accepts it
    let mut npm = NpmHost::new(&first);
    let forced = format!(
        "{} --config {} serve",
        bins::receive().display(),
        files.config.display()
    );
    let server = Sshd::builder()
        .user(USER)
        .authorized_key(&sshd::forced_line(&forced, &npm.key.public_line))
        .config(&format!("ListenAddress {}", hosts.mailcow.addr))
        .start();
    let known_hosts = npm.known_hosts(
        "known_hosts",
        &[sshd::known_hosts_line(
            &format!("[{}]:{}", hosts.mailcow.addr, server.port()),
            server.host_public_key(),
        )],
    );
    npm.write_config(
        &npm.cert_source(),
        &[format!(
            "[[target]]\nname = \"mailcow\"\nhost = {host:?}\nport = {port}\nuser = \"{USER}\"\nidentity = {id:?}\nknown_hosts = {known_hosts:?}\nconnect_timeout = 10\n",
            host = hosts.mailcow.addr,
            port = server.port(),
            id = npm.key.private,
        )],
    );

    // ---- the NPM host's watch daemon
    let mut watch_cmd = hosts.npm.command(bins::push());
    watch_cmd
        .arg("--config")
        .arg(&npm.config)
        .arg("watch")
        .env("CERTSYNC_LOG", "info")
        .env_remove("CERTSYNC_PUSH_CONFIG");
    let mut watch = Process::spawn(
        "certsync-push watch",
        watch_cmd,
        &npm.root.path().join("watch.log"),
    );

    let explain = |what: &str, seen: &Seen, watch: &Process| {
        format!(
            "{what}\nseen: {seen:#?}\n--- watch log\n{}\n--- deploy log\n{}\n--- sshd log\n{}",
            watch.log(),
            deployer.log(),
            server.log()
        )
    };

    // The watch daemon starts with a pass: the first certificate goes over.
    let want = first.fingerprint();
    let mut seen = look(&npm, &m);
    let first_done = wait_until(PUSH_LIMIT, || {
        seen = look(&npm, &m);
        seen.all(want) || watch.exited().is_some()
    });
    assert!(
        first_done.is_some() && seen.all(want),
        "{}",
        explain(
            "the watch daemon's first pass did not reach the wire",
            &seen,
            &watch
        )
    );
    // Let that pass finish (serve reports the deploy's result) before
    // renewing, so the renewal is a pass of its own.
    let reported = wait_until(PUSH_LIMIT, || watch.log().contains("mailcow: ok"));
    assert!(
        reported.is_some(),
        "{}",
        explain("the first pass did not report ok", &seen, &watch)
    );

    // ---- certbot renews on the NPM host
    npm.live.renew(&renewed);
    let want = renewed.fingerprint();
    assert_ne!(want, first.fingerprint());
    let renewed_in = wait_until(PUSH_LIMIT, || {
        seen = look(&npm, &m);
        seen.all(want) || watch.exited().is_some()
    });
    assert!(
        renewed_in.is_some() && seen.all(want),
        "{}",
        explain("the renewal did not reach the wire", &seen, &watch)
    );
    eprintln!(
        "renewal served on every default endpoint, with and without SNI, within {:?} of certbot's last link change",
        renewed_in.unwrap()
    );

    // ---- what an operator checks by hand: every fingerprint equal
    let source = seen.source.unwrap();
    let installed = seen.installed.unwrap();
    println!("source    live/npm-5/fullchain.pem : {source}");
    println!("installed data/assets/ssl/cert.pem : {installed}");
    let mut probed = seen.served.iter();
    for e in &endpoints {
        for sni in SNIS {
            let (what, fp) = probed.next().unwrap();
            let fp = fp.clone().unwrap();
            // And once more with the tool operators use, from the mailcow
            // host.
            let openssl = s_client_fingerprint(&mailcow_ns, &e.addr, e.starttls, sni)
                .unwrap_or_else(|err| panic!("openssl s_client on {what}: {err}"));
            println!("served    {what:<50} probe    : {fp}");
            println!("served    {what:<50} s_client : {openssl}");
            assert_eq!(fp, source, "certsync's probe on {what}");
            assert_eq!(openssl, source, "openssl s_client on {what}");
        }
    }
    assert_eq!(installed, source);
    assert_eq!(source, renewed.fingerprint());
    assert_eq!(
        std::fs::read(m.ssl_dir().join("key.pem")).unwrap(),
        renewed.key_pem.expose(),
        "the renewed key is installed with its certificate"
    );

    // ---- who did what: serve as `certsync` over the veth link, deploy as root
    let key_meta = std::fs::metadata(m.ssl_dir().join("key.pem")).unwrap();
    assert_eq!(
        (key_meta.uid(), key_meta.mode() & 0o777),
        (0, 0o600),
        "key.pem is root's and 0600, whoever owned the one it replaced ({owner:?})"
    );
    let cert_meta = std::fs::metadata(m.ssl_dir().join("cert.pem")).unwrap();
    assert_eq!(
        (cert_meta.uid(), cert_meta.mode() & 0o777),
        (0, 0o644),
        "cert.pem was written by root's deploy, 0644"
    );
    let sshd_log = server.log();
    assert!(
        sshd_log.contains(&format!(
            "Accepted publickey for {USER} from {}",
            hosts.npm.addr
        )),
        "the NPM host logged in as {USER} over the veth link:\n{sshd_log}"
    );
    // The renewal's pass ends when serve reports root's deploy result
    // (after deploy's own verify) back to the watch daemon.
    let reported = wait_until(PUSH_LIMIT, || {
        watch.log().matches("mailcow: ok").count() >= 2
    });
    assert!(
        reported.is_some(),
        "{}",
        explain("the renewal's pass did not report ok", &seen, &watch)
    );
    let runs = deployer.runs();
    assert!(
        runs.len() >= 2 && runs.iter().all(|c| *c == Some(0)),
        "root's deploy ran once per pass and succeeded: {runs:?}\n{}",
        deployer.log()
    );
    assert!(watch.exited().is_none(), "the watch daemon keeps running");
}
