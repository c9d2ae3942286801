//! The shipped packages and units, under systemd as PID 1.
//!
//! Each test boots a Debian bookworm machine ([`certsync_tests::machine`]),
//! installs the two `.deb`s that `cargo deb` built with `dpkg -i`, and
//! drives the units with `systemctl` and `journalctl` as an admin would.
//! The units are the shipped files; tests change them only through
//! drop-ins, as a user would (`certsync-push units`, `certsync-receive
//! units`, or a file in `/etc/systemd/system/<unit>.d/`).
//!
//! Both "hosts" are the same machine: the NPM host's units push over SSH
//! to 127.0.0.1, where the machine's own sshd (the Debian package, started
//! by systemd) runs the `certsync` user's forced command, and root's
//! `certsync-deploy.path` installs. The commands of the README's Install
//! section are the ones below ([`NPM_INSTALL`], [`MAIL_INSTALL`],
//! [`NPM_ENABLE`]), and `readme_install_is_what_the_machine_runs` keeps
//! the two equal.

use std::path::Path;
use std::time::{Duration, Instant};

use certsync_core::testutil::{KeyKind, TestCa, TestLeaf, Validity};
use certsync_tests::livedir::LiveDir;
use certsync_tests::machine::{self, Debs, Machine};
use certsync_tests::needs;

const HOST: &str = "mail.example.com";
const SSL_DIR: &str = "/opt/mailcow-dockerized/data/assets/ssl";
/// The live root of NPM's default layout; the cert is npm-7, not the npm-5
/// the shipped certsync-push.path names.
const LE_ROOT: &str = "/opt/npm/letsencrypt";
const LIVE: &str = "/opt/npm/letsencrypt/live/npm-7";
/// The test CA's root, which receive.toml trusts (`ca_file`).
const CA_FILE: &str = "/etc/certsync/test-ca.pem";
/// Where the tests put the packages inside the machine (the README says
/// `target/debian/`).
const DEBS_IN: &str = "/root/debs";

/// README, Install step 1 (NPM host), in the machine's words: the README's
/// `target/debian/` is [`DEBS_IN`].
const NPM_INSTALL: &[&str] = &[
    "dpkg -i target/debian/certsync-push_*.deb",
    "certsync-push discover --live-root /opt/npm/letsencrypt/live   # which npm-N holds your hostname?",
    "certsync-push keygen --out /etc/certsync/id_ed25519            # 0600; prints the authorized_keys line",
];

/// README, Install step 2 (mailcow host); `$EDITOR` lines are the test
/// writing the file. The README's 192.0.2.10 is 127.0.0.1 here.
const MAIL_INSTALL: &[&str] = &[
    "dpkg -i target/debian/certsync-receive_*.deb",
    "certsync-receive authorized-key --pubkey id_ed25519.pub --from 192.0.2.10/32 \\\n    >> /var/lib/certsync/.ssh/authorized_keys",
    "certsync-receive units && systemctl daemon-reload    # lets certsync-deploy.service write where receive.toml installs",
    "systemctl enable --now certsync-deploy.path certsync-deploy.timer certsync-check.timer",
];

/// README, Install step 3 (NPM host); mail.example.com is 127.0.0.1.
const NPM_ENABLE: &[&str] = &[
    "ssh-keyscan -t ed25519 mail.example.com > /etc/certsync/known_hosts",
    "ssh-keygen -lf /etc/certsync/known_hosts   # compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the mailcow host",
    "certsync-push push --dry-run               # says what would be done, changes nothing",
    "certsync-push units && systemctl daemon-reload   # certsync-push.path watches every live dir in push.toml",
    "systemctl enable --now certsync-push.path certsync-push.timer",
    "systemctl start certsync-push.service",
];

/// A README line as the machine runs it.
fn localize(cmd: &str) -> String {
    cmd.replace("target/debian/", &format!("{DEBS_IN}/"))
        .replace("192.0.2.10/32", "127.0.0.1/32")
        .replace(HOST, "127.0.0.1")
}

fn push_toml(target: &str) -> String {
    format!("[[cert]]\nname = \"mail\"\nsource = \"{LIVE}\"\n\n{target}")
}

fn ssh_target() -> String {
    "[[target]]\nname = \"mailcow\"\nhost = \"127.0.0.1\"\nuser = \"certsync\"\n\
     identity = \"/etc/certsync/id_ed25519\"\nknown_hosts = \"/etc/certsync/known_hosts\"\n"
        .to_string()
}

fn receive_toml(deploy: &str, staging: &str, ssl_dir: &str) -> String {
    receive_toml_verifying(deploy, staging, ssl_dir, &[])
}

/// The README's receive.toml: handoff to root's deploy, the package's
/// staging dir, mailcow's ssl dir.
fn handoff_receive_toml() -> String {
    receive_toml("handoff", "/var/lib/certsync/staging", SSL_DIR)
}

/// [`receive_toml`] whose cert is probed at `verify` (`"127.0.0.1:8443"`).
fn receive_toml_verifying(deploy: &str, staging: &str, ssl_dir: &str, verify: &[&str]) -> String {
    let verify: Vec<String> = verify.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "staging_dir = \"{staging}\"\ndeploy = \"{deploy}\"\nca_file = \"{CA_FILE}\"\n\n[[cert]]\nname = \"mail\"\n\
         hostnames = [\"{HOST}\"]\ncert_path = \"{ssl_dir}/cert.pem\"\nkey_path = \"{ssl_dir}/key.pem\"\n\
         # No Docker in this machine: nothing to reload.\nreload = []\nverify = [{}]\n",
        verify.join(", ")
    )
}

/// A machine with both packages copied in, a certbot live dir at
/// generation 1 of `leaf`, and mailcow's ssl dir.
struct Scene {
    m: Machine,
    live: LiveDir,
    ca: TestCa,
}

impl Scene {
    fn boot(debs: &Debs) -> Scene {
        let m = Machine::boot();
        m.copy_debs(debs, DEBS_IN);
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &[HOST]);
        let live = LiveDir::new(&m.path(LE_ROOT), "npm-7", &leaf);
        std::fs::create_dir_all(m.path(SSL_DIR)).unwrap();
        trust(&m, &ca);
        Scene { m, live, ca }
    }

    fn leaf(&self) -> TestLeaf {
        self.ca.leaf(KeyKind::P256, &[HOST])
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.m.path(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// The README's Install section, in order, on this one machine.
    fn readme_install(&self, receive: &str) {
        for cmd in NPM_INSTALL {
            self.m.ok(&localize(cmd));
        }
        for (i, cmd) in MAIL_INSTALL.iter().enumerate() {
            if i == 2 {
                // $EDITOR /etc/certsync/receive.toml
                self.write("/etc/certsync/receive.toml", receive);
            }
            self.m.ok(&format!("cd /etc/certsync && {}", localize(cmd)));
        }
        for (i, cmd) in NPM_ENABLE.iter().enumerate() {
            if i == 2 {
                // $EDITOR /etc/certsync/push.toml
                self.write("/etc/certsync/push.toml", &push_toml(&ssh_target()));
            }
            self.m.ok(&localize(cmd));
        }
    }

    /// The pair in mailcow's ssl dir is this generation of the live dir.
    fn installed_is(&self, ssl_dir: &str, n: u32) -> bool {
        let cert = std::fs::read(self.m.path(&format!("{ssl_dir}/cert.pem")));
        let key = std::fs::read(self.m.path(&format!("{ssl_dir}/key.pem")));
        let (Ok(cert), Ok(key)) = (cert, key) else {
            return false;
        };
        cert == std::fs::read(self.live.archive_file("fullchain", n)).unwrap()
            && key == std::fs::read(self.live.archive_file("privkey", n)).unwrap()
    }

    fn notifier(&self) {
        self.write(
            "/etc/certsync/on-failure",
            "#!/bin/sh\necho \"$1\" >> /var/tmp/certsync-failed\n",
        );
        self.m.ok("chmod 755 /etc/certsync/on-failure");
    }

    /// `systemctl start certsync-check.service` fails, and the unit is
    /// left failed (so `OnFailure=` runs the notifier).
    fn check_service_fails(&self) {
        let run = self.m.sh("systemctl start certsync-check.service");
        assert!(!run.ok(), "{}", run.both());
        assert_eq!(
            self.m
                .sh("systemctl is-failed certsync-check.service")
                .stdout
                .trim(),
            "failed"
        );
    }

    fn notified(&self) -> String {
        std::fs::read_to_string(self.m.path("/var/tmp/certsync-failed")).unwrap_or_default()
    }
}

/// A machine with both packages installed (`dpkg -i`).
fn boot_with_both_packages(debs: &Debs) -> Machine {
    let m = Machine::boot();
    let d = m.copy_debs(debs, DEBS_IN);
    m.ok(&format!(
        "dpkg -i {} {}",
        d.push.display(),
        d.receive.display()
    ));
    m
}

/// Put the test CA's root where receive.toml's `ca_file` points.
fn trust(m: &Machine, ca: &TestCa) {
    std::fs::create_dir_all(m.path("/etc/certsync")).unwrap();
    std::fs::write(m.path(CA_FILE), ca.root_pem()).unwrap();
}

const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn readme_install_is_what_the_machine_runs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let install = readme
        .split_once("\n## Install\n")
        .and_then(|(_, rest)| rest.split_once("\n## ").map(|(s, _)| s))
        .expect("README has an Install section");
    // Every shell line in the section's ```sh blocks, a continued line
    // joined with the next, comment-only and $EDITOR lines left out.
    let mut lines: Vec<String> = Vec::new();
    let mut in_sh = false;
    let mut pending: Option<String> = None;
    for line in install.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let joined = match pending.take() {
            Some(p) => format!("{p}\n{line}"),
            None => line.to_string(),
        };
        if joined.ends_with('\\') {
            pending = Some(joined);
            continue;
        }
        let t = joined.trim_start();
        if t.is_empty() || t.starts_with('#') || t.starts_with("$EDITOR") {
            continue;
        }
        lines.push(joined);
    }
    let built: Vec<String> = [
        "cargo deb -p certsync-push      # NPM host",
        "cargo deb -p certsync-receive   # mailcow host",
    ]
    .iter()
    .chain(NPM_INSTALL)
    .chain(MAIL_INSTALL)
    .chain(NPM_ENABLE)
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        lines, built,
        "README.md's Install commands and the ones this file runs in the machine differ"
    );
}

#[test]
fn units_verify_in_the_booted_machine() {
    needs!(let debs = machine::debs());
    let m = boot_with_both_packages(&debs);
    let run = m.sh(
        "cd /lib/systemd/system && systemd-analyze verify certsync-*.service certsync-*.path certsync-*.timer \
         certsync-push-failure@x.service certsync-receive-failure@x.service",
    );
    // verify exits 0 on warnings too: any output is a finding.
    assert!(
        run.ok() && run.stdout.trim().is_empty() && run.stderr.trim().is_empty(),
        "{}",
        run.both()
    );
}

#[test]
fn push_service_path_unit_and_handoff_deploy_over_the_machines_sshd() {
    needs!(let debs = machine::debs());
    let mut s = Scene::boot(&debs);
    s.readme_install(&handoff_receive_toml());

    // `systemctl start certsync-push.service` (the README's last command)
    // went through sshd's forced command, serve staged as `certsync`,
    // certsync-deploy.path ran root's deploy, and the pair is installed.
    assert!(s.installed_is(SSL_DIR, 1), "{}", s.m.journal("certsync-*"));
    let deploys = s.m.journal("certsync-deploy.service");
    assert!(
        deploys.contains("installed") || deploys.contains("install"),
        "{deploys}"
    );
    let staged_by = s.m.ok("stat -c %U /var/lib/certsync/staging");
    assert_eq!(staged_by.trim(), "certsync");
    let sshd_log = s.m.journal("ssh.service");
    assert!(
        sshd_log.contains("Accepted publickey for certsync"),
        "{sshd_log}"
    );

    // A second start: nothing changed, and the journal says so.
    s.m.ok("systemctl start certsync-push.service");
    let journal =
        s.m.ok("journalctl -u certsync-push.service -n 20 --no-pager -o cat");
    assert!(journal.contains("nothing to do"), "{journal}");
    assert_eq!(s.m.unit_prop("certsync-push.service", "Result"), "success");

    // `certsync-push units` pointed the path unit at npm-7 (the shipped
    // example is npm-5), and push no longer warns about it.
    let paths = s.m.unit_prop("certsync-push.path", "Paths");
    assert!(paths.contains(LIVE) && !paths.contains("npm-5"), "{paths}");
    assert!(!journal.contains("does not watch"), "{journal}");

    // A certbot renewal, by itself: certsync-push.path starts the push.
    let started = Instant::now();
    let leaf2 = s.leaf();
    s.live.renew(&leaf2);
    s.m.wait("certsync-push.path pushes generation 2", SETTLE, || {
        s.installed_is(SSL_DIR, 2)
    });
    eprintln!(
        "renewal installed by the path unit in {:?}",
        started.elapsed()
    );
    assert_eq!(s.m.unit_prop("certsync-push.path", "ActiveState"), "active");
}

#[test]
fn push_warns_when_the_path_unit_misses_a_source() {
    needs!(let debs = machine::debs());
    let s = Scene::boot(&debs);
    s.m.ok(&format!("dpkg -i {DEBS_IN}/certsync-push_*.deb"));
    s.write(
        "/etc/certsync/push.toml",
        &push_toml("[[target]]\nname = \"t\"\ntransport = \"local\"\ncommand = [\"/bin/false\"]\n"),
    );
    // The shipped unit alone watches npm-5: the warning names npm-7 and
    // the fix.
    s.m.ok("systemctl enable --now certsync-push.path");
    let run = s.m.sh("certsync-push status");
    assert!(
        run.stderr
            .contains("does not watch /opt/npm/letsencrypt/live/npm-7")
            && run.stderr.contains("certsync-push units"),
        "{}",
        run.both()
    );
    s.m.ok(
        "certsync-push units && systemctl daemon-reload && systemctl restart certsync-push.path",
    );
    let run = s.m.sh("certsync-push status");
    assert!(!run.stderr.contains("does not watch"), "{}", run.both());
}

#[test]
fn watch_service_is_notify_pushes_reloads_and_stops_fast() {
    needs!(let debs = machine::debs());
    let mut s = Scene::boot(&debs);
    s.readme_install(&handoff_receive_toml());
    // "or instead": the watch daemon (stops the .path and .timer).
    s.m.ok("systemctl enable --now certsync-push-watch.service");
    assert_eq!(
        s.m.unit_prop("certsync-push-watch.service", "ActiveState"),
        "active"
    );
    assert_eq!(
        s.m.unit_prop("certsync-push-watch.service", "Type"),
        "notify"
    );
    assert_eq!(
        s.m.unit_prop("certsync-push.path", "ActiveState"),
        "inactive"
    );

    let leaf2 = s.leaf();
    s.live.renew(&leaf2);
    s.m.wait("the watch daemon pushes generation 2", SETTLE, || {
        s.installed_is(SSL_DIR, 2)
    });

    // Reload (SIGHUP) works on a host without procps' /bin/kill (the
    // package does not depend on procps; it is in this machine only for
    // openssh-server).
    s.m.ok("rm /bin/kill");
    s.m.ok("systemctl reload certsync-push-watch.service");
    s.m.wait("config re-read after reload", SETTLE, || {
        s.m.journal("certsync-push-watch.service")
            .contains("config re-read")
    });
    assert_eq!(
        s.m.unit_prop("certsync-push-watch.service", "ActiveState"),
        "active"
    );
    assert_eq!(
        s.m.unit_prop("certsync-push-watch.service", "NRestarts"),
        "0"
    );

    let started = Instant::now();
    s.m.ok("systemctl stop certsync-push-watch.service");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert_eq!(
        s.m.unit_prop("certsync-push-watch.service", "Result"),
        "success"
    );
}

/// `transport = "local"` inside the push units: the receiver they spawn
/// replaces root's own files, which once failed on fchown under the units'
/// `~@privileged` syscall filter ("Operation not permitted").
#[test]
fn local_transport_replaces_a_pair_under_the_push_units() {
    needs!(let debs = machine::debs());
    let mut s = Scene::boot(&debs);
    s.m.ok(&format!("dpkg -i {DEBS_IN}/*.deb"));
    let staging = "/var/lib/certsync-local";
    s.m.ok(&format!("install -d -m 0700 {staging}"));
    s.write(
        "/etc/certsync/receive.toml",
        &receive_toml("inline", staging, SSL_DIR),
    );
    s.write(
        "/etc/certsync/push.toml",
        &push_toml(
            "[[target]]\nname = \"here\"\ntransport = \"local\"\n\
             command = [\"certsync-receive\", \"--config\", \"/etc/certsync/receive.toml\", \"serve\"]\n",
        ),
    );
    // The drop-in certsync-push.service's comment gives for a local receiver.
    let dropin = format!("[Service]\nReadWritePaths={SSL_DIR} {staging}\n");
    for unit in ["certsync-push.service", "certsync-push-watch.service"] {
        s.write(&format!("/etc/systemd/system/{unit}.d/local.conf"), &dropin);
    }
    s.m.ok("certsync-push units && systemctl daemon-reload");
    s.m.ok("systemctl start certsync-push.service");
    assert!(s.installed_is(SSL_DIR, 1));

    // A replacement by the oneshot service…
    let leaf2 = s.leaf();
    s.live.renew(&leaf2);
    let run = s.m.sh("systemctl start certsync-push.service");
    assert!(
        run.ok() && s.installed_is(SSL_DIR, 2),
        "{}\n{}",
        run.both(),
        s.m.journal("certsync-push.service")
    );
    // …and by the watch daemon.
    s.m.ok("systemctl start certsync-push-watch.service");
    let leaf3 = s.leaf();
    s.live.renew(&leaf3);
    s.m.wait("the watch daemon replaces the pair locally", SETTLE, || {
        s.installed_is(SSL_DIR, 3)
    });
    let journal = s.m.journal("certsync-push*");
    assert!(!journal.contains("Operation not permitted"), "{journal}");
}

/// NPM's compose dir under /root (ProtectHome=yes used to hide it: "does
/// not exist"), and mailcow under /home, found through `[mailcow] dir`: the
/// deploy unit may write there only after `certsync-receive units`.
#[test]
fn npm_under_root_and_mailcow_under_home() {
    needs!(let debs = machine::debs());
    let m = boot_with_both_packages(&debs);
    let ca = TestCa::new();
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    LiveDir::new(&m.path("/root/npm/letsencrypt"), "npm-2", &leaf);
    trust(&m, &ca);
    let staging = "/var/lib/certsync/staging";
    let mailcow = "/home/admin/mailcow-dockerized";
    let ssl = format!("{mailcow}/data/assets/ssl");
    std::fs::create_dir_all(m.path(&ssl)).unwrap();
    std::fs::write(
        m.path(&format!("{mailcow}/mailcow.conf")),
        format!("MAILCOW_HOSTNAME={HOST}\nCOMPOSE_PROJECT_NAME=mailcowdockerized\nSKIP_LETS_ENCRYPT=y\nENABLE_SSL_SNI=n\n"),
    )
    .unwrap();
    std::fs::write(
        m.path("/etc/certsync/receive.toml"),
        format!(
            "deploy = \"handoff\"\nhandoff_timeout = 20\nca_file = \"{CA_FILE}\"\n[mailcow]\ndir = \"{mailcow}\"\n\n[[cert]]\nname = \"mail\"\n\
             # No Docker in this machine.\nreload = []\nverify = []\n"
        ),
    )
    .unwrap();
    m.ok("certsync-push keygen --out /etc/certsync/id_ed25519 > /dev/null");
    m.ok("certsync-receive authorized-key --pubkey /etc/certsync/id_ed25519.pub --from 127.0.0.1/32 >> /var/lib/certsync/.ssh/authorized_keys");
    m.ok("systemctl enable --now certsync-deploy.path");
    m.ok("ssh-keyscan -t ed25519 127.0.0.1 > /etc/certsync/known_hosts");
    std::fs::write(
        m.path("/etc/certsync/push.toml"),
        format!(
            "[[cert]]\nname = \"mail\"\nsource = \"/root/npm/letsencrypt/live/npm-2\"\n\n{}",
            ssh_target()
        ),
    )
    .unwrap();
    let installed = || std::fs::read(m.path(&format!("{ssl}/cert.pem"))).unwrap_or_default();

    // The shipped deploy unit cannot see mailcow's ssl dir there: the
    // push reaches root's deploy, which fails naming the cause and the
    // fix, and nothing is installed.
    let run = m.sh("systemctl start certsync-push.service");
    assert!(!run.ok() && installed().is_empty(), "{}", run.both());
    assert_eq!(
        m.unit_prop("certsync-deploy.service", "Result"),
        "exit-code"
    );
    let journal = m.journal("certsync-deploy.service");
    assert!(
        journal.contains("ProtectHome=yes hides")
            && journal.contains("certsync-receive units && systemctl daemon-reload"),
        "{journal}"
    );

    // What the README says to run after editing receive.toml.
    let out = m.ok("certsync-receive units && systemctl daemon-reload");
    assert!(out.contains(&format!("writable {ssl}")), "{out}");
    // The failed deploys left the request behind and tripped the path
    // unit's start limit (certsync-deploy.service's comment gives this).
    m.ok("systemctl reset-failed && systemctl restart certsync-deploy.path");
    // The restarted path unit serves that stale request first; a push
    // that hands off while that deploy runs can lose its answer (see the
    // report of issue #12), so wait for it to finish.
    m.wait("the stale request is served", SETTLE, || {
        !m.path(&format!("{staging}/deploy.request")).exists()
            && m.unit_prop("certsync-deploy.service", "ActiveState") != "activating"
    });
    let run = m.sh("systemctl start certsync-push.service");
    assert!(
        run.ok() && installed() == leaf.chain_pem,
        "{}\n{}",
        run.both(),
        m.journal("certsync-*")
    );
}

#[test]
fn check_fails_with_the_reason_and_every_failure_runs_the_notifier() {
    needs!(let debs = machine::debs());
    let s = Scene::boot(&debs);
    s.m.ok(&format!("dpkg -i {DEBS_IN}/*.deb"));
    s.write(
        "/etc/certsync/receive.toml",
        &receive_toml("inline", "/var/lib/certsync/staging", SSL_DIR),
    );
    s.m.ok("certsync-receive units && systemctl daemon-reload");
    s.notifier();

    // A good pair: the check passes and nobody is told anything.
    let good = s.leaf();
    install_leaf(&s, &good, "good");
    s.m.ok("systemctl start certsync-check.service");
    assert_eq!(s.notified(), "");

    // Five days left: below --warn-days 14.
    let expiring = s.ca.leaf_with(
        KeyKind::P256,
        &[HOST],
        Validity {
            not_before: -80 * 86_400,
            not_after: 5 * 86_400,
        },
    );
    install_leaf(&s, &expiring, "expiring --force");
    s.check_service_fails();
    let journal = s.m.journal("certsync-check.service");
    assert!(journal.contains("expires in"), "{journal}");
    s.m.wait("the notifier hears of certsync-check", SETTLE, || {
        s.notified().contains("certsync-check.service")
    });

    // The wrong key beside a good certificate.
    s.m.ok("systemctl reset-failed certsync-check.service");
    let other = s.leaf();
    install_leaf(&s, &good, "good2 --force");
    std::fs::write(
        s.m.path(&format!("{SSL_DIR}/key.pem")),
        other.key_pem.expose(),
    )
    .unwrap();
    s.check_service_fails();
    let journal = s.m.journal("certsync-check.service");
    assert!(
        journal.contains("does not belong to the certificate"),
        "{journal}"
    );

    // A right pair on disk, but the endpoint still serves another
    // certificate (a daemon that was not reloaded): a real TLS server in
    // the machine, probed through `verify` in receive.toml.
    // Every failure so far has told the notifier (the expiring pair, the
    // wrong key), so the next line it writes is this one's.
    let checks_told = || {
        s.notified()
            .lines()
            .filter(|l| *l == "certsync-check.service")
            .count()
    };
    s.m.wait("the notifier hears of the wrong key", SETTLE, || {
        checks_told() == 2
    });
    s.m.ok("systemctl reset-failed certsync-check.service");
    let current = s.leaf();
    install_leaf(&s, &current, "current --force");
    let stale = s.leaf();
    s.write(
        "/root/stale.crt",
        &String::from_utf8_lossy(&stale.chain_pem),
    );
    s.write(
        "/root/stale.key",
        &String::from_utf8_lossy(stale.key_pem.expose()),
    );
    s.write(
        "/etc/certsync/receive.toml",
        &receive_toml_verifying("inline", "/var/lib/certsync/staging", SSL_DIR, &[SERVED_AT]),
    );
    tls_server(&s.m, "served-stale", "/root/stale.crt", "/root/stale.key");
    let cursor = s.m.journal_cursor();
    s.check_service_fails();
    // The reason, from this run: the endpoint, what it serves instead of
    // what, and the fix. (journald may take a moment to store the unit's
    // last lines after `systemctl start` returns.)
    let reason = format!(
        "{SERVED_AT} (SNI {HOST}) serves {}, not the installed {}: reload that service (`certsync-receive deploy`)",
        stale.fingerprint(),
        current.fingerprint()
    );
    s.m.wait("the journal names the endpoint and the fix", SETTLE, || {
        s.m.journal_since(&cursor, "certsync-check.service")
            .contains(&reason)
    });
    s.m.wait(
        "the notifier hears of the served certificate",
        SETTLE,
        || checks_told() == 3,
    );

    // The server reloaded with the installed pair: the same check passes.
    s.m.ok("systemctl stop served-stale.service && systemctl reset-failed certsync-check.service");
    tls_server(
        &s.m,
        "served-installed",
        &format!("{SSL_DIR}/cert.pem"),
        &format!("{SSL_DIR}/key.pem"),
    );
    let cursor = s.m.journal_cursor();
    let run = s.m.sh("systemctl start certsync-check.service");
    assert!(
        run.ok(),
        "{}\n{}",
        run.both(),
        s.m.journal_since(&cursor, "certsync-check.service")
    );
    assert_eq!(s.m.unit_prop("certsync-check.service", "Result"), "success");
    s.m.wait("the journal says the endpoint serves it", SETTLE, || {
        s.m.journal_since(&cursor, "certsync-check.service")
            .contains(&format!(
                "mail: {SERVED_AT} serves the installed certificate"
            ))
    });
    s.m.ok("systemctl stop served-installed.service");

    // A failed deploy (config error) and a failed push reach it too.
    std::fs::write(s.m.path("/etc/certsync/receive.toml"), "bogus = 1\n").unwrap();
    assert!(!s.m.sh("systemctl start certsync-deploy.service").ok());
    s.write(
        "/etc/certsync/push.toml",
        &push_toml("[[target]]\nname = \"t\"\ntransport = \"local\"\ncommand = [\"/bin/false\"]\n"),
    );
    assert!(!s.m.sh("systemctl start certsync-push.service").ok());
    s.m.wait("the notifier hears of deploy and push", SETTLE, || {
        let n = s.notified();
        n.contains("certsync-deploy.service") && n.contains("certsync-push.service")
    });
}

/// Where [`tls_server`] listens.
const SERVED_AT: &str = "127.0.0.1:8443";

/// Start OpenSSL's TLS server (the rootfs has openssl) at [`SERVED_AT`]
/// as the transient unit `unit`, presenting `cert` and `key`, and wait
/// until it completes a handshake.
fn tls_server(m: &Machine, unit: &str, cert: &str, key: &str) {
    m.ok(&format!(
        "systemd-run --unit={unit} --property=StandardInput=null \
         openssl s_server -quiet -www -accept {SERVED_AT} -cert {cert} -key {key}"
    ));
    m.wait(
        &format!("{unit} answers TLS at {SERVED_AT}"),
        SETTLE,
        || {
            m.sh(&format!(
                "openssl s_client -connect {SERVED_AT} -brief </dev/null"
            ))
            .ok()
        },
    );
}

/// `certsync-receive install` of `leaf` inside the machine.
fn install_leaf(s: &Scene, leaf: &TestLeaf, tag: &str) {
    let (name, extra) = tag.split_once(' ').unwrap_or((tag, ""));
    s.write(
        &format!("/root/{name}.crt"),
        &String::from_utf8_lossy(&leaf.chain_pem),
    );
    s.write(
        &format!("/root/{name}.key"),
        &String::from_utf8_lossy(leaf.key_pem.expose()),
    );
    s.m.ok(&format!(
        "certsync-receive install --name mail --cert /root/{name}.crt --key /root/{name}.key {extra}"
    ));
}

#[test]
fn upgrade_keeps_an_edited_conffile_and_purge_leaves_nothing() {
    needs!(let debs = machine::debs());
    needs!(let upgrade = machine::upgrade_debs());
    let s = Scene::boot(&debs);
    let before = files_named_certsync(&s.m);
    s.readme_install(&handoff_receive_toml());
    let version = |p: &str| s.m.ok(&format!("dpkg-query -W -f '${{Version}}' {p}"));
    let (v1_push, v1_receive) = (version("certsync-push"), version("certsync-receive"));

    // An admin's edit to both conffiles survives the upgrade.
    s.m.ok("echo '# edited by the admin' >> /etc/certsync/push.toml");
    s.m.ok("echo '# edited by the admin' >> /etc/certsync/receive.toml");
    let u = s.m.copy_debs(&upgrade, "/root/debs-upgrade");
    s.m.ok(&format!(
        "dpkg -i {} {}",
        u.push.display(),
        u.receive.display()
    ));
    assert_ne!(version("certsync-push"), v1_push);
    assert_ne!(version("certsync-receive"), v1_receive);
    for f in ["push.toml", "receive.toml"] {
        let text = std::fs::read_to_string(s.m.path(&format!("/etc/certsync/{f}"))).unwrap();
        assert!(text.contains("# edited by the admin"), "{f}:\n{text}");
        assert!(!s.m.path(&format!("/etc/certsync/{f}.dpkg-new")).exists());
    }
    // The upgraded units still push ("nothing to do": same pair).
    s.m.ok("systemctl start certsync-push.service");

    s.m.ok("dpkg --purge certsync-push certsync-receive");
    let after = files_named_certsync(&s.m);
    // What the admin made stays (their key, known_hosts, authorized_keys,
    // the installed certificate), and so does the system user's home, as
    // Debian keeps system users; everything the packages or certsync's
    // own commands made is gone.
    let operator: Vec<&str> = vec![
        "/etc/certsync",
        "/etc/certsync/id_ed25519",
        "/etc/certsync/id_ed25519.pub",
        "/etc/certsync/known_hosts",
        "/var/lib/certsync",
        "/var/lib/certsync/.ssh",
        "/var/lib/certsync/.ssh/authorized_keys",
    ];
    let left: Vec<String> = after
        .into_iter()
        .filter(|f| !before.contains(f) && !operator.contains(&f.as_str()))
        .collect();
    assert!(left.is_empty(), "left behind after purge: {left:#?}");
    let units = s.m.ok("systemctl list-units --all --no-legend 'certsync*'");
    assert!(units.trim().is_empty(), "{units}");
}

/// Every path in the machine whose name mentions certsync (outside /root,
/// /proc, /sys and the journal, which keep logs by design).
fn files_named_certsync(m: &Machine) -> Vec<String> {
    let out = m.ok(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /root -o -path /var/log/journal -o -path /run/log \\) -prune \
         -o \\( -path '*certsync*' \\) -print | sort",
    );
    out.lines().map(str::to_string).collect()
}
