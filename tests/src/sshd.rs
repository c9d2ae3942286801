//! A real OpenSSH sshd for scenario tests.
//!
//! [`Sshd::builder`] writes an `sshd_config` into a temp dir and starts
//! `/usr/sbin/sshd -f CONFIG -D -e` on 127.0.0.1 and a free port, with its
//! own host key(s) made by `ssh-keygen` at test time, `StrictModes no`,
//! `UsePAM no`, and an `AuthorizedKeysFile` in the temp dir that holds
//! whatever lines the test gives (usually a `command="…",restrict` line
//! from [`forced_line`]). `start` returns once the port answers with an
//! SSH banner; dropping the [`Sshd`] kills it. sshd's log (`-e`: to
//! stderr) goes to a file the test can read with [`Sshd::log`].
//!
//! The login user is root by default (tests run as root). For a forced
//! command that must run unprivileged, `.user("certsync")` allows that
//! user instead; the user must exist with a login shell, and the temp dir
//! and authorized_keys are made world-readable so sshd can read them as
//! that user (they hold only public keys).
//!
//! Client keys ([`client_key`]) and known_hosts lines (plain, hashed with
//! the real `ssh-keygen -H`, `[127.0.0.1]:port`) are made with OpenSSH's
//! own tools, so the code under test is checked against OpenSSH, not
//! against itself.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// How long `start` waits for sshd to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Are sshd and ssh-keygen installed? (Tests say `needs!(need::sshd())`.)
pub fn available() -> bool {
    Path::new(SSHD).exists() && Path::new(SSH_KEYGEN).exists()
}

/// Key types `ssh-keygen -t` understands that we test with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    Ecdsa256,
    Ecdsa384,
    Rsa2048,
}

impl KeyType {
    fn args(self) -> &'static [&'static str] {
        match self {
            KeyType::Ed25519 => &["-t", "ed25519"],
            KeyType::Ecdsa256 => &["-t", "ecdsa", "-b", "256"],
            KeyType::Ecdsa384 => &["-t", "ecdsa", "-b", "384"],
            KeyType::Rsa2048 => &["-t", "rsa", "-b", "2048"],
        }
    }
}

/// A key pair on disk made by ssh-keygen (no passphrase, mode 0600).
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub private: PathBuf,
    pub public: PathBuf,
    /// `TYPE BASE64 comment`, as in the .pub file (no newline).
    pub public_line: String,
}

/// Make a key pair `dir/name` and `dir/name.pub` with ssh-keygen.
pub fn client_key(dir: &Path, name: &str, kind: KeyType) -> ClientKey {
    let private = dir.join(name);
    let status = Command::new(SSH_KEYGEN)
        .args(["-q", "-N", "", "-C", name])
        .args(kind.args())
        .arg("-f")
        .arg(&private)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(
        status.success(),
        "ssh-keygen for {} failed",
        private.display()
    );
    let public = dir.join(format!("{name}.pub"));
    let public_line = fs::read_to_string(&public)
        .expect("read .pub")
        .trim()
        .to_string();
    ClientKey {
        private,
        public,
        public_line,
    }
}

/// `command="COMMAND",restrict PUBLIC_LINE`: the line certsync asks
/// operators to install. `command` is run by the login user's shell.
pub fn forced_line(command: &str, public_line: &str) -> String {
    assert!(
        !command.contains('"'),
        "keep the forced command free of double quotes"
    );
    format!("command=\"{command}\",restrict {public_line}")
}

/// Write an executable shell script `dir/name` (mode 0755) and return its
/// path, for forced commands that do more than one thing.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod script");
    path
}

/// The SHA256 fingerprint of a public key file, as ssh-keygen prints it.
pub fn fingerprint(public: &Path) -> String {
    let out = Command::new(SSH_KEYGEN)
        .arg("-lf")
        .arg(public)
        .output()
        .expect("run ssh-keygen -lf");
    assert!(out.status.success(), "ssh-keygen -lf {}", public.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint field")
        .to_string()
}

/// Hash the host names of a known_hosts file in place with the real
/// `ssh-keygen -H` (it leaves `FILE.old` beside it).
pub fn hash_known_hosts(path: &Path) {
    let out = Command::new(SSH_KEYGEN)
        .arg("-H")
        .arg("-f")
        .arg(path)
        .output()
        .expect("run ssh-keygen -H");
    assert!(out.status.success(), "ssh-keygen -H {}", path.display());
}

/// Configuration for [`Sshd::start`].
#[derive(Debug, Clone)]
pub struct SshdBuilder {
    user: String,
    host_keys: Vec<KeyType>,
    authorized_keys: Vec<String>,
    extra_config: Vec<String>,
}

/// A running sshd; killed on drop.
#[derive(Debug)]
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    host_keys: Vec<ClientKey>,
    log: PathBuf,
    child: Child,
}

impl Sshd {
    pub fn builder() -> SshdBuilder {
        SshdBuilder {
            user: "root".into(),
            host_keys: vec![KeyType::Ed25519],
            authorized_keys: Vec::new(),
            extra_config: Vec::new(),
        }
    }
}

impl SshdBuilder {
    /// The only user allowed to log in (default root).
    pub fn user(mut self, user: &str) -> Self {
        self.user = user.to_string();
        self
    }

    /// The host key types sshd offers, in its order (default Ed25519).
    pub fn host_keys(mut self, kinds: &[KeyType]) -> Self {
        self.host_keys = kinds.to_vec();
        self
    }

    /// A line for the AuthorizedKeysFile (see [`forced_line`]).
    pub fn authorized_key(mut self, line: &str) -> Self {
        self.authorized_keys.push(line.to_string());
        self
    }

    /// An extra `sshd_config` line.
    pub fn config(mut self, line: &str) -> Self {
        self.extra_config.push(line.to_string());
        self
    }

    /// Start sshd and wait until it answers. Panics (with sshd's log) if
    /// it does not start.
    pub fn start(self) -> Sshd {
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("certsync-sshd-")
            .tempdir()
            .expect("temp dir");
        // Readable by the login user when it is not root (public data only;
        // the host keys themselves stay 0600).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");

        let mut host_keys = Vec::new();
        for (i, kind) in self.host_keys.iter().enumerate() {
            host_keys.push(client_key(dir.path(), &format!("host_key_{i}"), *kind));
        }
        let authorized = dir.path().join("authorized_keys");
        write_lines(&authorized, &self.authorized_keys);

        // A free port can be taken between our probe and sshd's bind;
        // try a few times before calling it a failure.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = crate::docker::free_port();
            let config = dir.path().join("sshd_config");
            let mut lines = vec![
                format!("Port {port}"),
                "ListenAddress 127.0.0.1".into(),
                format!("PidFile {}", dir.path().join("sshd.pid").display()),
                format!("AuthorizedKeysFile {}", authorized.display()),
                format!("AllowUsers {}", self.user),
                "StrictModes no".into(),
                "UsePAM no".into(),
                "PubkeyAuthentication yes".into(),
                "PasswordAuthentication no".into(),
                "KbdInteractiveAuthentication no".into(),
                "PermitRootLogin prohibit-password".into(),
                "UseDNS no".into(),
                "PrintMotd no".into(),
                "LoginGraceTime 30".into(),
                "LogLevel VERBOSE".into(),
            ];
            for key in &host_keys {
                lines.push(format!("HostKey {}", key.private.display()));
            }
            lines.extend(self.extra_config.iter().cloned());
            write_lines(&config, &lines);

            let log = dir.path().join("sshd.log");
            let log_file = fs::File::create(&log).expect("create sshd.log");
            let mut child = Command::new(SSHD)
                .arg("-f")
                .arg(&config)
                .args(["-D", "-e"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("spawn sshd");
            match wait_ready(port, &mut child) {
                Ok(()) => {
                    return Sshd {
                        dir,
                        port,
                        user: self.user,
                        host_keys,
                        log,
                        child,
                    }
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = format!("{why}\n{}", fs::read_to_string(&log).unwrap_or_default());
                    if !last_log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("sshd did not start:\n{last_log}");
    }
}

impl Sshd {
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The temp dir holding the config, keys and log; tests may put their
    /// own files (scripts, markers) here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The first host key's public line (`ssh-ed25519 AAAA… host_key_0`).
    pub fn host_public_key(&self) -> &str {
        &self.host_keys[0].public_line
    }

    /// Every host key sshd offers.
    pub fn host_keys(&self) -> &[ClientKey] {
        &self.host_keys
    }

    /// The first host key's SHA256 fingerprint, as ssh-keygen prints it.
    pub fn host_key_fingerprint(&self) -> String {
        fingerprint(&self.host_keys[0].public)
    }

    /// A known_hosts line for this server: `[127.0.0.1]:PORT TYPE BASE64`.
    pub fn known_hosts_line(&self) -> String {
        known_hosts_line(
            &format!("[{}]:{}", self.host(), self.port),
            self.host_public_key(),
        )
    }

    /// Write a known_hosts file `dir/name` with `lines`; returns its path.
    pub fn write_known_hosts(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.dir().join(name);
        write_lines(&path, lines);
        path
    }

    /// Replace the AuthorizedKeysFile's lines. sshd reads the file on each
    /// login, so this takes effect for the next connection.
    pub fn set_authorized_keys(&self, lines: &[String]) {
        write_lines(&self.dir().join("authorized_keys"), lines);
    }

    /// sshd's log so far (its stderr, `LogLevel VERBOSE`).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Make sure a local login user `name` exists for [`SshdBuilder::user`]:
/// created if missing as a system user with `/bin/sh`, no home, and the
/// password field `*` (sshd without PAM refuses accounts locked with `!`,
/// which is useradd's default). Returns false if it cannot be created
/// (not root, no useradd), so the caller can skip or fail via `require`.
pub fn ensure_user(name: &str) -> bool {
    let exists = |n: &str| {
        Command::new("id")
            .arg("-u")
            .arg(n)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if exists(name) {
        return true;
    }
    // Several tests may race to create it; "already exists" is success.
    let _ = Command::new("useradd")
        .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
        .args(["--shell", "/bin/sh", "--password", "*"])
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    exists(name)
}

/// `HOSTS TYPE BASE64` from a public key line (its comment dropped).
pub fn known_hosts_line(hosts: &str, public_line: &str) -> String {
    let mut fields = public_line.split_whitespace();
    let key_type = fields.next().unwrap_or("");
    let data = fields.next().unwrap_or("");
    format!("{hosts} {key_type} {data}")
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Wait until the port answers with an SSH banner, or sshd exits.
fn wait_ready(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("sshd exited with {status}"));
        }
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut banner = String::new();
            let mut reader = BufReader::new(stream.take(256));
            if reader.read_line(&mut banner).is_ok() && banner.starts_with("SSH-2.0-") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "sshd did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
