//! The NPM host of a push scenario: a certbot-style live dir, the pusher's
//! key, a `push.toml` the test writes, and a way to run the real
//! `certsync-push` binary against them.
//!
//! Targets are written as TOML text ([`ssh_target`], [`local_target`]) so
//! each test's config reads like the one an operator would write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use certsync_core::testutil::TestLeaf;
use tempfile::TempDir;

use crate::livedir::LiveDir;
use crate::receiver::Mailhost;
use crate::sshd::{self, ClientKey, KeyType, Sshd};

/// The pusher's ed25519 key: made by OpenSSH's ssh-keygen where it is
/// installed (every SSH scenario needs sshd, and so has it). Without
/// OpenSSH only the local transport runs, which never reads the key, so
/// certsync's own `keygen` makes one: the scenario still builds on a bare
/// machine instead of failing before its first step.
fn pusher_key(dir: &Path) -> ClientKey {
    if sshd::available() {
        return sshd::client_key(dir, "id_ed25519", KeyType::Ed25519);
    }
    let made = certsync_push::keygen::keygen(&dir.join("id_ed25519"), "id_ed25519")
        .expect("certsync-push keygen");
    ClientKey {
        private: made.private_key,
        public: made.public_key,
        public_line: made.public_line,
    }
}

/// The pusher's host.
pub struct NpmHost {
    pub root: TempDir,
    /// `letsencrypt/live/npm-5`, at generation 1 of the leaf given to `new`.
    pub live: LiveDir,
    /// The pusher's ed25519 key (made by ssh-keygen).
    pub key: ClientKey,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

/// One run of `certsync-push`.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Both streams, for assertion messages.
    pub fn both(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Panics, showing both streams, unless the run exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "{}", self.both());
        self
    }

    /// Panics, showing both streams, unless stdout holds `needle`.
    #[track_caller]
    pub fn assert_stdout(&self, needle: &str) -> &Run {
        self.assert_holds("stdout", &self.stdout, needle)
    }

    /// Panics, showing both streams, unless stderr (the log) holds `needle`.
    #[track_caller]
    pub fn assert_stderr(&self, needle: &str) -> &Run {
        self.assert_holds("stderr", &self.stderr, needle)
    }

    #[track_caller]
    fn assert_holds(&self, stream: &str, text: &str, needle: &str) -> &Run {
        assert!(
            text.contains(needle),
            "{stream} lacks {needle:?}:\n{}",
            self.both()
        );
        self
    }
}

impl NpmHost {
    pub fn new(leaf: &TestLeaf) -> NpmHost {
        let root = tempfile::tempdir().expect("tempdir");
        let le = root.path().join("letsencrypt");
        let live = LiveDir::new(&le, "npm-5", leaf);
        let key = pusher_key(root.path());
        let config = root.path().join("push.toml");
        let state_dir = root.path().join("state");
        NpmHost {
            root,
            live,
            key,
            config,
            state_dir,
        }
    }

    /// `[[cert]] name = "mail"` from the live dir.
    pub fn cert_source(&self) -> String {
        format!(
            "[[cert]]\nname = \"mail\"\nsource = {:?}\n",
            self.live.dir()
        )
    }

    /// Write push.toml: state_dir, `certs` (TOML), then `targets` (TOML).
    pub fn write_config(&self, certs: &str, targets: &[String]) {
        let text = format!(
            "state_dir = {:?}\n\n{certs}\n{}",
            self.state_dir,
            targets.join("\n")
        );
        std::fs::write(&self.config, text).expect("write push.toml");
    }

    /// Run `certsync-push --config push.toml ARGS…` and wait for it.
    pub fn run(&self, args: &[&str]) -> Run {
        let start = Instant::now();
        let out = Command::new(crate::bins::push())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("CERTSYNC_PUSH_CONFIG")
            .env("CERTSYNC_LOG", "info")
            .output()
            .expect("run certsync-push");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// Push to `mail` over real OpenSSH: an sshd whose only key is this
    /// host's, forced to `mail`'s receiver ([`sshd_for`]), and push.toml
    /// naming it as target `mailcow` with a correct known_hosts file.
    /// Keep the returned sshd for as long as the test pushes.
    pub fn push_over_ssh_to(&self, mail: &Mailhost) -> Sshd {
        let sshd = sshd_for(mail, &self.key);
        let kh = self.known_hosts("known_hosts", &[sshd.known_hosts_line()]);
        self.write_config(
            &self.cert_source(),
            &[ssh_target(
                "mailcow",
                sshd.host(),
                sshd.port(),
                &self.key.private,
                &kh,
            )],
        );
        sshd
    }

    /// A known_hosts file in this host's dir with `lines`.
    pub fn known_hosts(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.root.path().join(name);
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text).expect("write known_hosts");
        path
    }
}

/// The forced command that runs the real receiver for `mail`:
/// `<certsync-receive> --config <receive.toml> serve`.
pub fn receiver_command(mail: &Mailhost) -> String {
    format!(
        "{} --config {} serve",
        crate::bins::receive().display(),
        mail.config.display()
    )
}

/// An sshd whose only authorized key is `key`, forced to run the real
/// receiver of `mail` (as README's install section sets it up).
pub fn sshd_for(mail: &Mailhost, key: &ClientKey) -> Sshd {
    Sshd::builder()
        .authorized_key(&sshd::forced_line(
            &receiver_command(mail),
            &key.public_line,
        ))
        .start()
}

/// A `[[target]]` over SSH.
pub fn ssh_target(
    name: &str,
    host: &str,
    port: u16,
    identity: &Path,
    known_hosts: &Path,
) -> String {
    format!(
        "[[target]]\nname = {name:?}\nhost = {host:?}\nport = {port}\nuser = \"root\"\nidentity = {identity:?}\nknown_hosts = {known_hosts:?}\nconnect_timeout = 10\n"
    )
}

/// A `[[target]]` with `transport = "local"` running the real receiver.
pub fn local_target(name: &str, mail: &Mailhost) -> String {
    local_target_for(name, &mail.config)
}

/// A `[[target]]` with `transport = "local"` running the real receiver
/// with the receive.toml at `config`.
pub fn local_target_for(name: &str, config: &Path) -> String {
    format!(
        "[[target]]\nname = {name:?}\ntransport = \"local\"\ncommand = [{:?}, \"--config\", {:?}, \"serve\"]\n",
        crate::bins::receive().display().to_string(),
        config.display().to_string(),
    )
}

/// A loopback port that refuses connections for as long as this value
/// lives: a TCP socket bound to it but never listening. Unlike "bind,
/// note the port, close", nobody else (another test's sshd) can take the
/// port meanwhile, so "the target is down" stays true.
#[derive(Debug)]
pub struct ClosedPort {
    /// Held, never read: closing it frees the port.
    _fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2)/bind(2)/getsockname(2) on a fresh fd that
        // is owned by the OwnedFd right after creation.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            addr.sin_port = 0;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(raw, &addr as *const _ as *const libc::sockaddr, len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            let rc =
                libc::getsockname(raw, &mut got as *mut _ as *mut libc::sockaddr, &mut got_len);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ClosedPort {
                _fd: fd,
                port: u16::from_be(got.sin_port),
            }
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}
