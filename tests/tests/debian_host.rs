//! examples/receive-debian.toml on a plain Debian mail host: Debian's own
//! postfix and dovecot-imapd, started by systemd, reloaded through
//! `reload_units` and checked on the wire.
//!
//! The machine is the systemd machine of [`certsync_tests::machine`] booted
//! from the `mail` rootfs (`.ci/rootfs.sh mail`: the same Debian bookworm
//! plus `postfix` and `dovecot-imapd` as Debian installs them, enabled and
//! running at boot). The test then does what the README says an admin
//! does: `dpkg -i` the packages, copies examples/receive-debian.toml to
//! /etc/certsync/receive.toml unchanged, points postfix
//! (`smtpd_tls_chain_files`, plus submission on 587 and smtps on 465 in
//! master.cf) and dovecot (`ssl_cert`, `ssl_key`) at the pair certsync
//! installs, and pushes renewals over the machine's own sshd into root's
//! `certsync-deploy.service` (the example's `deploy = "handoff"`), as on
//! a real host. The test CA's root goes into Debian's trust store
//! (`update-ca-certificates`), where a Let's Encrypt root already is, so
//! the example needs no `ca_file`.
//!
//! What each renewal must show, besides certsync's own result and exit
//! code: the files and their modes, systemd's journal saying each unit was
//! reloaded (each daemon's master PID unchanged: not restarted) or
//! restarted (a new PID), and `openssl s_client` from inside the machine
//! seeing the new certificate on 25 and 587 (STARTTLS), 465 and 993.
//!
//! Real postfix and dovecot do need the reload (checked by hand on this
//! rootfs, and by the control at the end of the main test): an idle smtpd
//! keeps serving the pair it read at start to new clients for up to
//! `max_idle` (100 s), and dovecot's config process keeps its pair until
//! reloaded, even for new imap-login processes.

use std::path::PathBuf;
use std::time::Duration;

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
use certsync_tests::livedir::LiveDir;
use certsync_tests::machine::{self, Debs, Machine, Run};
use certsync_tests::need::{self, Missing, Need};
use certsync_tests::needs;

const HOST: &str = "mail.example.com";
/// Where examples/receive-debian.toml installs the pair.
const CERT: &str = "/etc/ssl/mail/fullchain.pem";
const KEY: &str = "/etc/ssl/mail/privkey.pem";
/// The pusher's certbot live dir (the pushing host is this machine too).
const LE_ROOT: &str = "/etc/letsencrypt";
const DEBS_IN: &str = "/root/debs";

/// Where the tests find the mail rootfs (a dir or a link to one).
const MAIL_ROOTFS_ENV: &str = "CERTSYNC_MAIL_ROOTFS";
/// `.ci/rootfs.sh mail` links its newest build here.
const DEFAULT_MAIL_ROOTFS: &str = "/var/cache/certsync-ci/bookworm-mail";

/// Each endpoint `openssl s_client` probes: address, and the STARTTLS
/// protocol if any. 465 is not in the example's `verify`; it is probed
/// here because an admin who enables smtps serves the same files there.
const ENDPOINTS: [(&str, Option<&str>); 4] = [
    ("127.0.0.1:25", Some("smtp")),
    ("127.0.0.1:465", None),
    ("127.0.0.1:587", Some("smtp")),
    ("127.0.0.1:993", None),
];

/// How long a daemon may take to go down after its master is killed.
const SETTLE: Duration = Duration::from_secs(30);

/// The README's commands for the pair's directory (after Install).
const MAIL_SETUP: &[&str] = &[
    "install -d -m 755 /etc/ssl/mail",
    "certsync-receive units && systemctl daemon-reload",
];

/// The README's postfix setup: main.cf, and master.cf's submission (587)
/// and smtps (465), which Debian ships commented out.
const POSTFIX_SETUP: &[&str] = &[
    "postconf -e 'smtpd_tls_chain_files = /etc/ssl/mail/privkey.pem, /etc/ssl/mail/fullchain.pem'",
    "postconf -X smtpd_tls_cert_file smtpd_tls_key_file",
    "postconf -M 'submission/inet=submission inet n - y - - smtpd' 'smtps/inet=smtps inet n - y - - smtpd'",
    "postconf -P submission/inet/smtpd_tls_security_level=encrypt smtps/inet/smtpd_tls_wrappermode=yes",
];

/// The README's /etc/dovecot/local.conf (read after conf.d/10-ssl.conf).
const DOVECOT_LOCAL_CONF: &str =
    "ssl = required\nssl_cert = </etc/ssl/mail/fullchain.pem\nssl_key = </etc/ssl/mail/privkey.pem\n";

/// A drop-in that makes dovecot's reload a no-op, as postfix.service's is.
const DOVECOT_NOOP_RELOAD: &str = "/etc/systemd/system/dovecot.service.d/noop-reload.conf";

/// The README's last two commands of the setup.
const RESTART_DAEMONS: &str = "systemctl restart postfix.service dovecot.service";

fn mail_rootfs() -> PathBuf {
    std::env::var_os(MAIL_ROOTFS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MAIL_ROOTFS))
}

/// Everything the test needs: the systemd machine's parts on the mail
/// rootfs, with Debian's postfix and dovecot in it
/// (`needs!(let debs = mail_debs())`).
fn mail_debs() -> Need<Debs> {
    let rootfs = mail_rootfs();
    let debs = machine::debs_on(&rootfs, ".ci/rootfs.sh mail", MAIL_ROOTFS_ENV);
    let debs = debs.map_err(|part| Missing(format!("a Debian mail machine: {part}")))?;
    for daemon in ["usr/sbin/postfix", "usr/sbin/dovecot"] {
        need::part(
            format!(
                "a Debian mail machine: /{daemon} in {} (run .ci/rootfs.sh mail, or set {MAIL_ROOTFS_ENV})",
                rootfs.display()
            ),
            rootfs.join(daemon).exists(),
        )?;
    }
    Ok(debs)
}

/// The booted mail host, certsync installed and set up as the README says,
/// and the pusher's live dir.
struct MailHost {
    m: Machine,
    live: LiveDir,
    ca: TestCa,
    /// The live dir's first generation.
    leaf1: TestLeaf,
}

impl MailHost {
    fn boot(debs: &Debs) -> MailHost {
        let m = Machine::boot_from(&mail_rootfs());
        let d = m.copy_debs(debs, DEBS_IN);
        m.ok(&format!(
            "dpkg -i {} {}",
            d.push.display(),
            d.receive.display()
        ));
        let ca = TestCa::new();
        // A private CA, trusted the Debian way (a Let's Encrypt root
        // already is): the example has no ca_file.
        write(
            &m,
            "/usr/local/share/ca-certificates/certsync-test.crt",
            &String::from_utf8_lossy(&ca.root_pem()),
        );
        m.ok("update-ca-certificates >/dev/null");
        let leaf1 = ca.leaf(KeyKind::P256, &[HOST]);
        let live = LiveDir::new(&m.path(LE_ROOT), "mail", &leaf1);

        // The mail host: the example as it is, its directory, and the
        // drop-in that lets certsync-deploy.service write there.
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/receive-debian.toml");
        std::fs::copy(&example, m.path("/etc/certsync/receive.toml")).unwrap();
        for cmd in MAIL_SETUP {
            m.ok(cmd);
        }
        m.ok("certsync-push keygen --out /etc/certsync/id_ed25519 >/dev/null");
        m.ok("certsync-receive authorized-key --pubkey /etc/certsync/id_ed25519.pub --from 127.0.0.1/32 \
              >> /var/lib/certsync/.ssh/authorized_keys");
        m.ok("systemctl enable --now certsync-deploy.path");
        // The pushing host (here the same machine).
        m.ok("ssh-keyscan -t ed25519 127.0.0.1 > /etc/certsync/known_hosts 2>/dev/null");
        write(
            &m,
            "/etc/certsync/push.toml",
            &format!(
                "[[cert]]\nname = \"mail\"\nsource = \"{LE_ROOT}/live/mail\"\n\n[[target]]\nname = \"mail\"\n\
                 host = \"127.0.0.1\"\nuser = \"certsync\"\nidentity = \"/etc/certsync/id_ed25519\"\n\
                 known_hosts = \"/etc/certsync/known_hosts\"\n"
            ),
        );
        MailHost { m, live, ca, leaf1 }
    }

    /// certbot renews: the live dir's next generation is a new leaf.
    fn renew(&mut self) -> TestLeaf {
        let leaf = self.ca.leaf(KeyKind::P256, &[HOST]);
        self.live.renew(&leaf);
        leaf
    }

    /// `certsync-push push`, as certsync-push.service runs it; its
    /// output and time go to the test's log.
    fn push(&self) -> Run {
        let started = std::time::Instant::now();
        let run = self.m.sh("certsync-push push");
        eprintln!(
            "certsync-push push took {:?}:\n{}",
            started.elapsed(),
            run.both()
        );
        run
    }

    /// The README's order: the first push installs, but postfix and
    /// dovecot still serve Debian's snakeoil, and verify says so (exit 4);
    /// then the admin points them at the pair, and `certsync-receive
    /// check` does the reload and verify owed.
    fn first_install(&self) {
        let run = self.push();
        assert_eq!(run.code, Some(4), "{}", run.both());
        says(&run, "the daemon behind it has not re-read the certificate");
        self.assert_installed(&self.leaf1);
        self.point_daemons_at_the_pair();
        let check = self.m.sh("certsync-receive check");
        assert!(check.ok(), "{}", check.both());
        self.assert_served(&self.leaf1, "after pointing the daemons at the pair");
    }

    /// Postfix and dovecot read the pair certsync installs, as the README
    /// sets them up; then a restart, as after any config change.
    fn point_daemons_at_the_pair(&self) {
        for cmd in POSTFIX_SETUP {
            self.m.ok(cmd);
        }
        write(&self.m, "/etc/dovecot/local.conf", DOVECOT_LOCAL_CONF);
        self.m.ok(RESTART_DAEMONS);
    }

    /// What `openssl s_client` sees at `addr` (SNI [`HOST`]): the leaf's
    /// SHA-256 fingerprint, colon-separated as certsync prints it.
    fn served(&self, addr: &str, starttls: Option<&str>) -> String {
        let starttls = starttls
            .map(|p| format!("-starttls {p}"))
            .unwrap_or_default();
        let run = self.m.sh(&format!(
            "openssl s_client -connect {addr} {starttls} -servername {HOST} </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ));
        run.stdout
            .trim()
            .rsplit_once('=')
            .map(|(_, fp)| fp.to_string())
            .unwrap_or_else(|| format!("nothing ({})", run.both()))
    }

    /// Every endpoint serves `leaf`; the message names each that does not.
    fn assert_served(&self, leaf: &TestLeaf, when: &str) {
        let want = leaf.fingerprint().to_string();
        let wrong: Vec<String> = ENDPOINTS
            .iter()
            .map(|(addr, starttls)| (addr, self.served(addr, *starttls)))
            .filter(|(_, got)| *got != want)
            .map(|(addr, got)| format!("{addr} serves {got}"))
            .collect();
        assert!(
            wrong.is_empty(),
            "{when}: not the new certificate {want}:\n{}",
            wrong.join("\n")
        );
    }

    /// The installed pair is `leaf`, root's, cert 0644 and key 0600.
    fn assert_installed(&self, leaf: &TestLeaf) {
        let read = |p: &str| std::fs::read(self.m.path(p)).unwrap_or_default();
        assert_eq!(read(CERT), leaf.chain_pem, "{CERT}");
        assert!(
            read(KEY) == leaf.key_pem.expose(),
            "{KEY} is not the new key"
        );
        let modes = self.m.ok(&format!("stat -c '%a %U:%G' {CERT} {KEY}"));
        assert_eq!(modes, "644 root:root\n600 root:root\n");
    }

    /// The one documented edit a control makes to the example: `from`
    /// (which must be there) becomes `to` in /etc/certsync/receive.toml.
    fn edit_example(&self, from: &str, to: &str) {
        let path = self.m.path("/etc/certsync/receive.toml");
        let toml = std::fs::read_to_string(&path).unwrap();
        assert!(toml.contains(from), "receive.toml has no {from:?}");
        std::fs::write(&path, toml.replace(from, to)).unwrap();
    }

    fn main_pid(&self, unit: &str) -> String {
        self.m.unit_prop(unit, "MainPID")
    }

    /// The PID of postfix's master (postfix@-.service is Type=forking
    /// with GuessMainPID=no: systemd does not know it).
    fn postfix_master(&self) -> String {
        self.m
            .ok("cat /var/spool/postfix/pid/master.pid")
            .trim()
            .to_string()
    }
}

fn write(m: &Machine, path: &str, text: &str) {
    let p = m.path(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// `run`'s output holds `want`; panics with both otherwise.
fn says(run: &Run, want: &str) {
    assert!(
        run.both().contains(want),
        "expected {want:?} in:\n{}",
        run.both()
    );
}

#[test]
fn debian_postfix_and_dovecot_serve_each_renewal_after_reload_units() {
    needs!(let debs = mail_debs());
    let started = std::time::Instant::now();
    let mut h = MailHost::boot(&debs);
    eprintln!("booted and set up in {:?}", started.elapsed());

    h.first_install();

    // A renewal, pushed through sshd into certsync-deploy.service: the
    // pair is installed, both units are reloaded through systemd (each
    // daemon's master the same process: a reload, not a restart), and
    // every endpoint serves the new certificate.
    let masters = (h.postfix_master(), h.main_pid("dovecot.service"));
    let leaf2 = h.renew();
    let cursor = h.m.journal_cursor();
    let run = h.push();
    assert_eq!(run.code, Some(0), "{}", run.both());
    for line in [
        "ran `systemctl reload postfix@-.service`",
        "ran `systemctl reload dovecot.service`",
        "verify done: 127.0.0.1:587 submission serves",
    ] {
        says(&run, line);
    }
    // The units did reload: no line may say that none is configured.
    assert!(!run.both().contains("none configured"), "{}", run.both());
    h.assert_installed(&leaf2);
    let postfix = h.m.journal_since(&cursor, "postfix@-.service");
    assert!(
        postfix.contains("Reloaded postfix@-.service") && postfix.contains("reload -- version"),
        "postfix@-.service was not reloaded:\n{postfix}"
    );
    let dovecot = h.m.journal_since(&cursor, "dovecot.service");
    assert!(
        dovecot.contains("Reloaded dovecot.service")
            && dovecot.contains("SIGHUP received - reloading configuration"),
        "dovecot.service was not reloaded:\n{dovecot}"
    );
    assert_eq!(
        (h.postfix_master(), h.main_pid("dovecot.service")),
        masters,
        "a daemon was restarted, not reloaded"
    );
    h.assert_served(&leaf2, "after the first renewal");

    // A second renewal while postfix has crashed (its master killed)
    // and dovecot is stopped: each `systemctl reload` fails, certsync
    // restarts the unit (new master PIDs), says so, and the renewal
    // succeeds (exit 0).
    h.m.ok("kill -9 $(cat /var/spool/postfix/pid/master.pid) && systemctl stop dovecot.service");
    h.m.wait("postfix@-.service is down", SETTLE, || {
        h.m.unit_prop("postfix@-.service", "ActiveState") != "active"
    });
    let leaf3 = h.renew();
    let cursor = h.m.journal_cursor();
    let run = h.push();
    assert_eq!(run.code, Some(0), "{}", run.both());
    for unit in ["postfix@-.service", "dovecot.service"] {
        says(&run, &format!("`systemctl reload {unit}` failed"));
        says(&run, &format!("restarted {unit} instead"));
        assert_eq!(h.m.unit_prop(unit, "ActiveState"), "active", "{unit}");
        let journal = h.m.journal_since(&cursor, unit);
        assert!(journal.contains(&format!("Started {unit}")), "{journal}");
    }
    assert_ne!(h.postfix_master(), masters.0);
    assert_ne!(h.main_pid("dovecot.service"), masters.1);
    h.assert_installed(&leaf3);
    h.assert_served(&leaf3, "after the renewal that restarted both");

    // A renewal while dovecot is down and cannot start (an admin's typo
    // in its config): reload and restart fail, the result says both and
    // exit 4; postfix serves the new pair. Once the typo is fixed,
    // `certsync-receive check` does the reload still owed.
    h.m.ok(
        "systemctl stop dovecot.service && echo 'ssl_cert_typo = yes' >> /etc/dovecot/local.conf",
    );
    let leaf4 = h.renew();
    let run = h.push();
    assert_eq!(run.code, Some(4), "{}", run.both());
    says(&run, "and so did `systemctl restart dovecot.service`");
    h.assert_installed(&leaf4);
    assert_eq!(
        h.served("127.0.0.1:25", Some("smtp")),
        leaf4.fingerprint().to_string()
    );
    h.m.ok("sed -i '/ssl_cert_typo/d' /etc/dovecot/local.conf");
    let check = h.m.sh("certsync-receive check");
    assert!(check.ok(), "{}", check.both());
    h.assert_served(&leaf4, "after check did the owed reload");

    // A unit whose reload succeeds without the daemon re-reading anything
    // (`ExecReload=/bin/true`, as Debian's postfix.service wrapper has):
    // verify still sees the old certificate on 993, so certsync restarts
    // dovecot.service once (a new main PID), verifies again and succeeds.
    write(
        &h.m,
        DOVECOT_NOOP_RELOAD,
        "[Service]\nExecReload=\nExecReload=/bin/true\n",
    );
    h.m.ok("systemctl daemon-reload");
    let dovecot_pid = h.main_pid("dovecot.service");
    let leaf_noop = h.renew();
    let run = h.push();
    assert_eq!(run.code, Some(0), "{}", run.both());
    says(&run, "ran `systemctl reload dovecot.service`");
    says(
        &run,
        "127.0.0.1:993 imaps still served the old certificate after the reload: restarted dovecot.service",
    );
    assert!(!run.both().contains("restarted postfix"), "{}", run.both());
    assert_ne!(h.main_pid("dovecot.service"), dovecot_pid, "not restarted");
    h.assert_served(&leaf_noop, "after the restart of a no-op reload");
    h.m.ok(&format!(
        "rm {DOVECOT_NOOP_RELOAD} && systemctl daemon-reload"
    ));

    // The control: without reload_units (the one edit to the example),
    // dovecot keeps serving the old certificate, and verify says so.
    h.edit_example(
        "reload_units = [\"postfix@-.service\", \"dovecot.service\"]",
        "reload_units = []",
    );
    let leaf5 = h.renew();
    let run = h.push();
    assert_eq!(run.code, Some(4), "{}", run.both());
    says(&run, "reload skipped: none configured");
    says(&run, "the daemon behind it has not re-read the certificate");
    h.assert_installed(&leaf5);
    assert_eq!(
        h.served("127.0.0.1:993", None),
        leaf_noop.fingerprint().to_string(),
        "dovecot re-read its files without a reload"
    );
}

/// The README's Debian-host section is what this file runs: the example
/// whole, and each command of the setup.
#[test]
fn readme_shows_the_example_and_the_setup_this_test_runs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split_once("\n#### A plain Debian mail host\n")
        .and_then(|(_, rest)| rest.split_once("\n### ").map(|(s, _)| s))
        .expect("README has a Debian-host section");
    let example = std::fs::read_to_string(root.join("examples/receive-debian.toml")).unwrap();
    assert!(
        section.contains(&format!("```toml\n{example}```")),
        "README's Debian-host section does not show examples/receive-debian.toml as it is"
    );
    for line in MAIL_SETUP
        .iter()
        .chain(POSTFIX_SETUP)
        .chain([&RESTART_DAEMONS, &"certsync-receive check"])
    {
        assert!(section.contains(line), "README does not say: {line}");
    }
    assert!(section.contains(&format!("```\n{DOVECOT_LOCAL_CONF}```")));
}

/// Why the example lists postfix@-.service: Debian's postfix.service is a
/// wrapper (`ExecReload=/bin/true`, passed on to postfix@-.service), so
/// with it a crashed postfix is never restarted: `systemctl reload
/// postfix.service` exits 0, certsync reports a reload, and only verify
/// finds port 25 closed (exit 4).
#[test]
fn with_the_postfix_service_wrapper_a_crashed_postfix_stays_down() {
    needs!(let debs = mail_debs());
    let mut h = MailHost::boot(&debs);
    h.first_install();
    h.edit_example(
        "reload_units = [\"postfix@-.service\",",
        "reload_units = [\"postfix.service\",",
    );
    h.m.ok("kill -9 $(cat /var/spool/postfix/pid/master.pid)");
    h.m.wait("postfix@-.service is down", SETTLE, || {
        h.m.unit_prop("postfix@-.service", "ActiveState") != "active"
    });
    let leaf2 = h.renew();
    let run = h.push();
    assert_eq!(run.code, Some(4), "{}", run.both());
    says(&run, "ran `systemctl reload postfix.service`");
    says(&run, "127.0.0.1:25 smtp: cannot connect");
    assert_ne!(h.m.unit_prop("postfix@-.service", "ActiveState"), "active");
    h.assert_installed(&leaf2);
}
