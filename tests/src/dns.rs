//! A real DNSSEC lab for the DANE tests: Knot DNS (`knotd`) serves the
//! zone `example.test.`, signed by knot itself (automatic signing, the
//! default ECDSA P-256 policy), and `unsigned.test.`, not signed; a real
//! `unbound` validates, with `example.test.`'s DS as its trust anchor (and,
//! for `bogus.test.`, a DS that matches none of knot's keys), and stub
//! zones pointing at knot on 127.0.0.1. The receiver asks unbound
//! (`dns_resolver`), exactly as it would ask unbound-mailcow.
//!
//! unbound answers `test.` itself by default (RFC 6761 names are its
//! built-in local zones): `local-zone: "test." nodefault` lifts that.
//!
//! Both daemons run in the foreground as children on free ports and are
//! killed on drop; their files live in a temp dir.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SIGNED: &str = "example.test.";
pub const UNSIGNED: &str = "unsigned.test.";
/// Signed by knot, but unbound's trust anchor for it matches no key:
/// every answer is bogus, and unbound says SERVFAIL.
pub const BOGUS: &str = "bogus.test.";

const KNOTD: &str = "/usr/sbin/knotd";
const KNOTC: &str = "/usr/sbin/knotc";
const KEYMGR: &str = "/usr/sbin/keymgr";
const UNBOUND: &str = "/usr/sbin/unbound";

pub struct DnsLab {
    dir: tempfile::TempDir,
    knot: Child,
    unbound: Option<Child>,
    serial: u32,
    /// unbound's address: the receiver's `dns_resolver`.
    pub resolver: SocketAddr,
}

/// Whether knot and unbound are installed (tests say `needs!(need::dns())`).
pub fn available() -> bool {
    [KNOTD, KNOTC, KEYMGR, UNBOUND]
        .iter()
        .all(|p| Path::new(p).exists())
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP right now.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn wait_tcp(addr: SocketAddr, what: &str) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl DnsLab {
    /// Start knot with both zones holding `signed_records` and
    /// `unsigned_records` (zone-file lines relative to the zone), then
    /// unbound trusting the signed zone's DS.
    pub fn start(signed_records: &str, unsigned_records: &str, bogus_records: &str) -> DnsLab {
        let dir = tempfile::tempdir().unwrap();
        let knot_port = free_port();
        let conf = dir.path().join("knot.conf");
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(
            &conf,
            format!(
                "server:\n    rundir: {d:?}\n    listen: 127.0.0.1@{knot_port}\n\
                 log:\n  - target: stderr\n    any: warning\n\
                 database:\n    storage: {db:?}\n\
                 template:\n  - id: default\n    storage: {d:?}\n    file: \"%s.zone\"\n    zonefile-sync: -1\n\
                 zone:\n  - domain: {SIGNED}\n    dnssec-signing: on\n  - domain: {UNSIGNED}\n  - domain: {BOGUS}\n    dnssec-signing: on\n",
                d = dir.path(),
                db = dir.path().join("db"),
            ),
        )
        .unwrap();
        let mut lab = DnsLab {
            knot: Command::new(KNOTD)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .spawn()
                .expect("start knotd"),
            dir,
            unbound: None,
            serial: 1,
            resolver: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        lab.write_zone(SIGNED, signed_records);
        lab.write_zone(UNSIGNED, unsigned_records);
        lab.write_zone(BOGUS, bogus_records);
        lab.knotc(&["reload"]);
        wait_tcp(SocketAddr::from(([127, 0, 0, 1], knot_port)), "knotd");
        let ds = lab.ds();
        let unbound_port = free_port();
        let uconf = lab.dir.path().join("unbound.conf");
        std::fs::write(
            &uconf,
            format!(
                "server:\n  interface: 127.0.0.1\n  port: {unbound_port}\n  do-daemonize: no\n\
                 username: \"\"\n  chroot: \"\"\n  directory: {d:?}\n  pidfile: {pid:?}\n\
                 use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n\
                 access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n\
                 module-config: \"validator iterator\"\n  trust-anchor: \"{ds}\"\n\
                 trust-anchor: \"{BOGUS} DS 1 13 2 {zeros}\"\n\
                 cache-max-ttl: 0\n  local-zone: \"test.\" nodefault\n  cache-max-negative-ttl: 0\n\
                 stub-zone:\n  name: \"{SIGNED}\"\n  stub-addr: 127.0.0.1@{knot_port}\n\
                 stub-zone:\n  name: \"{UNSIGNED}\"\n  stub-addr: 127.0.0.1@{knot_port}\n\
                 stub-zone:\n  name: \"{BOGUS}\"\n  stub-addr: 127.0.0.1@{knot_port}\n",
                d = lab.dir.path(),
                pid = lab.dir.path().join("unbound.pid"),
                zeros = "00".repeat(32),
            ),
        )
        .unwrap();
        lab.unbound = Some(
            Command::new(UNBOUND)
                .arg("-d")
                .arg("-c")
                .arg(&uconf)
                .stdout(Stdio::null())
                .spawn()
                .expect("start unbound"),
        );
        lab.resolver = SocketAddr::from(([127, 0, 0, 1], unbound_port));
        wait_tcp(lab.resolver, "unbound");
        lab
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("knot.conf")
    }

    fn knotc(&self, args: &[&str]) -> String {
        // knotc talks to knotd over its control socket in rundir, which
        // appears once knotd is up: retry for a while.
        let start = Instant::now();
        loop {
            let out = Command::new(KNOTC)
                .arg("-c")
                .arg(self.conf())
                .args(args)
                .output()
                .expect("run knotc");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "knotc {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The DS of the signed zone's KSK, once knot has made its keys.
    fn ds(&self) -> String {
        let start = Instant::now();
        loop {
            let out = Command::new(KEYMGR)
                .arg("-c")
                .arg(self.conf())
                .args([SIGNED, "ds"])
                .output()
                .expect("run keymgr");
            let text = String::from_utf8_lossy(&out.stdout);
            // One line per digest type; SHA-256 (type 2) is enough.
            if let Some(line) = text
                .lines()
                .find(|l| l.contains(" DS ") && l.contains(" 2 "))
            {
                return line.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "keymgr {SIGNED} ds gave nothing: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write_zone(&mut self, zone: &str, records: &str) {
        self.serial += 1;
        let text = format!(
            "$ORIGIN {zone}\n$TTL 1\n@ SOA ns.{zone} hostmaster.{zone} {serial} 60 60 600 1\n\
             @ NS ns.{zone}\nns A 127.0.0.1\n{records}\n",
            serial = self.serial
        );
        std::fs::write(self.dir.path().join(format!("{zone}zone")), text).unwrap();
    }

    /// Replace the records of `zone` and have knot reload (and, for the
    /// signed zone, re-sign) it.
    pub fn set_records(&mut self, zone: &str, records: &str) {
        self.write_zone(zone, records);
        self.knotc(&["zone-reload", zone]);
        // Wait until knot serves the new serial (signed, for SIGNED).
        let start = Instant::now();
        // Signing may raise the serial further: at least ours is enough.
        let served = |status: String| -> u32 {
            status
                .split("serial: ")
                .nth(1)
                .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        while served(self.knotc(&["zone-status", zone])) < self.serial {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "knot did not load {zone}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for DnsLab {
    fn drop(&mut self) {
        if let Some(u) = &mut self.unbound {
            let _ = u.kill();
            let _ = u.wait();
        }
        let _ = self.knot.kill();
        let _ = self.knot.wait();
    }
}
