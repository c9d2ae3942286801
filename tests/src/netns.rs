//! Two hosts on one machine: an NPM host and a mailcow host, each in its
//! own network namespace, joined by a veth pair. Their private addresses
//! exist only inside those namespaces, so nothing a test sends leaves them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Can this machine make network namespaces (root, `ip`)?
pub fn available() -> bool {
    crate::need::is_root()
        && (std::path::Path::new("/usr/sbin/ip").exists()
            || std::path::Path::new("/sbin/ip").exists())
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One namespace.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// This host's address on the veth link.
    pub addr: String,
}

impl Netns {
    /// `ip netns exec NAME program`: run a program on this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Move the calling thread into this namespace: what it spawns and
    /// connects to from now on is on this host.
    pub fn enter_thread(&self) {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        let f =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        use std::os::unix::io::AsRawFd;
        // SAFETY: setns on a namespace fd we opened; affects this thread only.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }
}

/// The two hosts; deleted on drop.
#[derive(Debug)]
pub struct TwoHosts {
    pub npm: Netns,
    pub mailcow: Netns,
}

impl TwoHosts {
    pub fn create() -> TwoHosts {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let subnet = (std::process::id() + n) % 200 + 20;
        let npm = Netns {
            name: format!("cs-npm-{id}"),
            addr: format!("10.231.{subnet}.1"),
        };
        let mailcow = Netns {
            name: format!("cs-mc-{id}"),
            addr: format!("10.231.{subnet}.2"),
        };
        ip(&["netns", "add", &npm.name]);
        ip(&["netns", "add", &mailcow.name]);
        let (va, vb) = (format!("csa{id}"), format!("csb{id}"));
        let (va, vb) = (&va[..va.len().min(15)], &vb[..vb.len().min(15)]);
        ip(&["link", "add", va, "type", "veth", "peer", "name", vb]);
        ip(&["link", "set", va, "netns", &npm.name]);
        ip(&["link", "set", vb, "netns", &mailcow.name]);
        for (ns, dev, addr) in [(&npm, va, &npm.addr), (&mailcow, vb, &mailcow.addr)] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                dev,
            ]);
            ip(&["-n", &ns.name, "link", "set", dev, "up"]);
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        }
        TwoHosts { npm, mailcow }
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in [&self.npm, &self.mailcow] {
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        }
    }
}
