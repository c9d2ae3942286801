//! A private Docker engine and containers labelled like mailcow's.
//!
//! [`Dockerd::start`] runs a real `dockerd` of its own in a temp dir (its own
//! socket, data root, exec root and pid file; the host's
//! `/etc/docker/daemon.json` is not read) and imports a busybox image built
//! from the host's `/bin/busybox` (Debian `busybox-static`). Start-up takes
//! a fraction of a second, so each test has its own engine and nothing is
//! shared between tests.
//!
//! Containers carry the compose labels (`com.docker.compose.project`,
//! `com.docker.compose.service`) and stand in for postfix-mailcow,
//! dovecot-mailcow and nginx-mailcow:
//! - [`Dockerd::stand_in`]: busybox whose `postfix`, `dovecot` and `nginx` are shell
//!   scripts that record each call in a host dir and exit with
//!   `$RELOAD_EXIT` (0 by default), so a test sees the reload happen inside
//!   the container, or makes it fail.
//! - [`Dockerd::nginx_mailcow`]: Debian's real nginx (the host's `/usr`
//!   bind-mounted read-only) serving TLS from an ssl dir mounted the way
//!   mailcow mounts it, `./data/assets/ssl:/etc/ssl/mail:ro`.
//! - [`Dockerd::postfix_mailcow`], [`Dockerd::dovecot_mailcow`]: Debian's
//!   real postfix (SMTP STARTTLS) and dovecot (IMAP, IMAPS, POP3, ManageSieve)
//!   the same way, with the host's `/etc/passwd` and `/etc/group` mounted
//!   for their system users; `postfix reload` / `dovecot reload` through
//!   exec make them re-read the mounted certificate. They need Debian's
//!   `postfix dovecot-imapd dovecot-pop3d dovecot-managesieved` on the host.
//!
//! (Those are configured simply; [`crate::mailcow`] starts the three the
//! way mailcow's images do, with postfix's SNI map and dovecot's sni.conf.)
//!
//! Those pick free ports on 127.0.0.1; their `_on` variants
//! ([`Dockerd::nginx_mailcow_on`], [`Dockerd::postfix_mailcow_on`],
//! [`Dockerd::dovecot_mailcow_on`]) take the ports, so a test that owns a
//! network namespace (the end-to-end test's mailcow host) can serve on 25,
//! 993 and 443 as mailcow does.
//!
//! No traffic leaves loopback: the engine has no bridge (`--bridge=none`),
//! touches neither iptables nor ip_forward, and containers run with
//! `--network host` (servers bind 127.0.0.1) or `--network none`.
//!
//! Cleanup: dropping the [`Dockerd`] removes every container, stops the
//! engine (SIGTERM, then SIGKILL after a bounded wait), detaches any mount
//! left under its dir and deletes the dir. The engine also gets SIGKILL if
//! the thread that started it dies (`PR_SET_PDEATHSIG`), so an aborted
//! test run leaves no engine behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::mailcow::{DOVECOT_BASE, DOVECOT_PAIR_AND_AUTH, POSTFIX_MAIN_BASE, POSTFIX_SERVICES};
use crate::need::{self, Need};

/// The image every test container runs.
pub const IMAGE: &str = "certsync-test/busybox:latest";
/// The compose labels certsync matches on.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_SERVICE: &str = "com.docker.compose.service";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A private engine, once [`need::dockerd`] holds:
/// `needs!(let d = docker::engine())`.
pub fn engine() -> Need<Dockerd> {
    need::dockerd()?;
    let d = Dockerd::start();
    eprintln!(
        "dockerd started in {:?}, image imported in {:?}",
        d.started_in, d.imported_in
    );
    Ok(d)
}

/// An executable named `name` on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A free TCP port on 127.0.0.1 (bound, then released), never one this
/// process has handed out before: the kernel may give a just-released
/// port again, and one mailcow environment asks for nine at once (seen in
/// CI: dovecot refused two listeners on the same port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A private Docker engine; see the module docs.
pub struct Dockerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    /// From spawning `dockerd` to its first answer.
    pub started_in: Duration,
    /// `docker import` of the busybox rootfs.
    pub imported_in: Duration,
    // Last: deleted after the engine has stopped.
    dir: TempDir,
}

impl Dockerd {
    /// Can this machine run a private engine? (root, `dockerd`, `docker`,
    /// a static busybox).
    pub fn available() -> bool {
        crate::need::is_root()
            && find_program("dockerd").is_some()
            && find_program("docker").is_some()
            && busybox().is_some()
    }

    /// Start an engine and import the test image; panics (with the
    /// engine's log) if it does not come up.
    pub fn start() -> Dockerd {
        // A short path: containerd's socket lives under the exec root and
        // unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("csd")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("docker.sock");
        let log = dir.path().join("dockerd.log");
        let config = dir.path().join("daemon.json");
        std::fs::write(&config, "{}\n").unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let started = Instant::now();
        let mut cmd = Command::new(find_program("dockerd").unwrap());
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--shutdown-timeout=2",
            ])
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the
        // child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn dockerd");
        let mut d = Dockerd {
            child,
            socket,
            log,
            started_in: Duration::ZERO,
            imported_in: Duration::ZERO,
            dir,
        };
        d.wait_ready(started);
        d.started_in = started.elapsed();
        let t = Instant::now();
        d.import_image();
        d.imported_in = t.elapsed();
        d
    }

    fn wait_ready(&mut self, started: Instant) {
        while started.elapsed() < START_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dockerd exited with {status}:\n{}", self.log_tail());
            }
            if self.socket.exists() {
                let out = self.docker(&["version", "--format", "{{.Server.Version}}"]);
                if out.status.success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "dockerd did not answer on {} within {:?}:\n{}",
            self.socket.display(),
            START_TIMEOUT,
            self.log_tail()
        );
    }

    /// The engine's socket, for `[docker] socket`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The last lines of the engine's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Run the docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// Run the docker CLI; panics unless it succeeds. Returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn import_image(&self) {
        let rootfs = self.dir.path().join("rootfs");
        build_rootfs(&rootfs);
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--owner=0", "--group=0", "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .expect("run docker import");
        assert!(tar.wait().unwrap().success(), "tar of the rootfs failed");
        assert!(
            out.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start a container; panics if docker refuses.
    pub fn run(&self, spec: &Run) -> Container<'_> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            spec.name.clone(),
            "--network".into(),
            spec.network.into(),
        ];
        for (k, v) in &spec.labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        for (k, v) in &spec.env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        for m in &spec.mounts {
            args.push("-v".into());
            args.push(m.clone());
        }
        args.push(IMAGE.into());
        args.extend(spec.cmd.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.docker_ok(&refs);
        Container {
            dockerd: self,
            name: spec.name.clone(),
            id,
        }
    }

    /// A busybox container labelled `project`/`service` whose `postfix` and
    /// `dovecot` record their calls and exit with `reload_exit`.
    pub fn stand_in(
        &self,
        name: &str,
        project: &str,
        service: &str,
        reload_exit: i32,
    ) -> StandIn<'_> {
        let observe = tempfile::tempdir().unwrap();
        let run = Run::new(name)
            .compose(project, service)
            .env("RELOAD_EXIT", &reload_exit.to_string())
            .mount(observe.path(), "/observe", false);
        let container = self.run(&run);
        let stand_in = StandIn { container, observe };
        wait_until(Duration::from_secs(20), || stand_in.starts() >= 1)
            .unwrap_or_else(|| panic!("{name} did not start: {}", stand_in.container.logs()));
        stand_in
    }

    /// Debian's nginx in a container labelled `project`/`nginx-mailcow`,
    /// serving `ssl_dir` (mounted at `/etc/ssl/mail:ro`) on
    /// 127.0.0.1:<port> for `server_name`. Waits until it accepts
    /// connections.
    pub fn nginx_mailcow(
        &self,
        name: &str,
        project: &str,
        ssl_dir: &Path,
        server_name: &str,
    ) -> Nginx<'_> {
        self.nginx_mailcow_on(name, project, ssl_dir, server_name, free_port())
    }

    /// As [`Dockerd::nginx_mailcow`], on a port the caller picks (443 in a
    /// test that owns its network namespace, as on a mailcow host).
    pub fn nginx_mailcow_on(
        &self,
        name: &str,
        project: &str,
        ssl_dir: &Path,
        server_name: &str,
        port: u16,
    ) -> Nginx<'_> {
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("nginx.conf"),
            format!(
                "# certsync test stand-in for nginx-mailcow
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {server_name};
        ssl_certificate /etc/ssl/mail/cert.pem;
        ssl_certificate_key /etc/ssl/mail/key.pem;
        return 200 \"certsync test\\n\";
    }}
}}
"
            ),
        )
        .unwrap();
        let mut run = Run::mailcow_service(name, project, "nginx-mailcow", ssl_dir).mount(
            conf.path(),
            "/etc/nginx",
            true,
        );
        run.cmd = vec!["nginx".into(), "-g".into(), "daemon off;".into()];
        let container = self.run(&run);
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if up.is_none() {
            panic!(
                "nginx in {name} does not listen on 127.0.0.1:{port}:\n{}",
                container.logs()
            );
        }
        Nginx {
            container,
            port,
            _conf: conf,
        }
    }

    /// Debian's postfix in a container labelled `project`/`postfix-mailcow`,
    /// with STARTTLS on 127.0.0.1:<smtp port> from `ssl_dir` mounted at
    /// `/etc/ssl/mail:ro`, as mailcow does. `postfix reload` inside re-reads
    /// the certificate.
    pub fn postfix_mailcow(&self, name: &str, project: &str, ssl_dir: &Path) -> MailDaemon<'_> {
        self.postfix_mailcow_on(name, project, ssl_dir, free_port())
    }

    /// As [`Dockerd::postfix_mailcow`], with smtpd on a port the caller
    /// picks (25 in a test that owns its network namespace).
    pub fn postfix_mailcow_on(
        &self,
        name: &str,
        project: &str,
        ssl_dir: &Path,
        smtp: u16,
    ) -> MailDaemon<'_> {
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("main.cf"),
            format!(
                "# certsync test stand-in for postfix-mailcow
{POSTFIX_MAIN_BASE}inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = /dev/stdout
smtpd_tls_cert_file = /etc/ssl/mail/cert.pem
smtpd_tls_key_file = /etc/ssl/mail/key.pem
smtpd_tls_security_level = may
"
            ),
        )
        .unwrap();
        // Only the services smtpd needs, none chrooted.
        std::fs::write(
            conf.path().join("master.cf"),
            format!(
                "127.0.0.1:{smtp} inet n - n - - smtpd
{POSTFIX_SERVICES}"
            ),
        )
        .unwrap();
        let run = Run::mailcow_service(name, project, "postfix-mailcow", ssl_dir)
            .mount(conf.path(), "/etc/postfix", true)
            .mount(Path::new("/etc/postfix"), "/etc/postfix-meta", true)
            .sh("mkdir -p /var/lib/postfix /var/spool/postfix && chown postfix /var/lib/postfix && exec postfix start-fg");
        self.mail_daemon(run, conf, vec![("smtp", smtp)])
    }

    /// Debian's dovecot in a container labelled `project`/`dovecot-mailcow`:
    /// IMAP (STARTTLS), IMAPS, POP3 (STLS) and ManageSieve (STARTTLS) on
    /// 127.0.0.1, certificate from `ssl_dir` mounted at `/etc/ssl/mail:ro`.
    /// `dovecot reload` inside re-reads it.
    pub fn dovecot_mailcow(&self, name: &str, project: &str, ssl_dir: &Path) -> MailDaemon<'_> {
        let ports = DovecotPorts {
            imap: free_port(),
            imaps: free_port(),
            pop3: free_port(),
            sieve: free_port(),
        };
        self.dovecot_mailcow_on(name, project, ssl_dir, ports)
    }

    /// As [`Dockerd::dovecot_mailcow`], on ports the caller picks
    /// ([`DovecotPorts::MAILCOW`] in a test that owns its network namespace).
    pub fn dovecot_mailcow_on(
        &self,
        name: &str,
        project: &str,
        ssl_dir: &Path,
        ports: DovecotPorts,
    ) -> MailDaemon<'_> {
        let conf = tempfile::tempdir().unwrap();
        let ports = vec![
            ("imap", ports.imap),
            ("imaps", ports.imaps),
            ("pop3", ports.pop3),
            ("sieve", ports.sieve),
        ];
        let port = |n: &str| ports.iter().find(|(k, _)| *k == n).unwrap().1;
        std::fs::write(
            conf.path().join("dovecot.conf"),
            format!(
                "# certsync test stand-in for dovecot-mailcow
{DOVECOT_BASE}listen = 127.0.0.1
ssl = yes
{DOVECOT_PAIR_AND_AUTH}service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service managesieve-login {{
  inet_listener sieve {{
    port = {sieve}
  }}
}}
",
                imap = port("imap"),
                imaps = port("imaps"),
                pop3 = port("pop3"),
                sieve = port("sieve"),
            ),
        )
        .unwrap();
        let run = Run::mailcow_service(name, project, "dovecot-mailcow", ssl_dir)
            .mount(conf.path(), "/etc/dovecot", true)
            .sh("mkdir -p /run/dovecot /var/lib/dovecot && exec dovecot -F");
        self.mail_daemon(run, conf, ports)
    }

    fn mail_daemon(
        &self,
        run: Run,
        conf: TempDir,
        ports: Vec<(&'static str, u16)>,
    ) -> MailDaemon<'_> {
        let container = self.run(&run);
        for (what, port) in &ports {
            let up = wait_until(Duration::from_secs(30), || {
                TcpStream::connect(("127.0.0.1", *port)).is_ok()
            });
            if up.is_none() {
                panic!(
                    "{} does not listen for {what} on 127.0.0.1:{port}:\n{}",
                    run.name,
                    container.logs()
                );
            }
        }
        MailDaemon {
            container,
            ports,
            _conf: conf,
        }
    }

    /// Every container of this engine, running or not.
    pub fn container_ids(&self) -> Vec<String> {
        self.docker_ok(&["ps", "-aq", "--no-trunc"])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["ps", "-aq"])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm".to_string(), "-f".to_string()];
                args.extend(ids);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let _ = self.docker(&refs);
            }
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if wait_until(STOP_TIMEOUT, || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        detach_mounts_under(self.dir.path());
    }
}

/// Detach whatever the engine left mounted under `dir` (overlay layers,
/// shm), deepest first, so the temp dir can be removed.
fn detach_mounts_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a valid C string; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Poll `f` every 50 ms until it is true or `limit` has passed.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `docker run` should start.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    /// `-v` arguments.
    pub mounts: Vec<String>,
    /// `host` or `none`: never a bridge.
    pub network: &'static str,
    pub cmd: Vec<String>,
}

impl Run {
    /// A busybox container that idles until stopped, without a network.
    pub fn new(name: &str) -> Run {
        Run {
            name: name.into(),
            labels: vec![],
            env: vec![],
            mounts: vec![],
            network: "none",
            cmd: vec!["/bin/certsync-idle".into()],
        }
    }

    /// The labels docker compose puts on a service's containers.
    pub fn compose(mut self, project: &str, service: &str) -> Run {
        self.labels.push((LABEL_PROJECT.into(), project.into()));
        self.labels.push((LABEL_SERVICE.into(), service.into()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Run {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn mount(mut self, host: &Path, inside: &str, read_only: bool) -> Run {
        let ro = if read_only { ":ro" } else { "" };
        self.mounts.push(format!("{}:{inside}{ro}", host.display()));
        self
    }

    /// Share the host's network namespace (servers bind 127.0.0.1).
    pub fn network_host(mut self) -> Run {
        self.network = "host";
        self
    }

    /// Mount the host's `/etc/passwd` and `/etc/group` read-only, so the
    /// daemons' system users (postfix, dovecot, dovenull) exist inside.
    pub fn host_users(self) -> Run {
        self.mount(Path::new("/etc/passwd"), "/etc/passwd", true)
            .mount(Path::new("/etc/group"), "/etc/group", true)
    }

    /// Mount the host's `/usr` (and `/lib`, `/lib64` where they are real
    /// dirs) read-only, so Debian's binaries run inside.
    pub fn host_usr(mut self) -> Run {
        self = self.mount(Path::new("/usr"), "/usr", true);
        for lib in ["/lib", "/lib64"] {
            let p = Path::new(lib);
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                self = self.mount(p, lib, true);
            }
        }
        self
    }

    /// A mailcow daemon's container: compose service `service` of
    /// `project`, the host's network, Debian's binaries and system users,
    /// and `ssl_dir` at `/etc/ssl/mail:ro`, as mailcow mounts
    /// `data/assets/ssl`.
    pub fn mailcow_service(name: &str, project: &str, service: &str, ssl_dir: &Path) -> Run {
        Run::new(name)
            .compose(project, service)
            .network_host()
            .host_usr()
            .host_users()
            .mount(ssl_dir, "/etc/ssl/mail", true)
    }

    /// Run `script` with `sh -c` as the container's command.
    pub fn sh(mut self, script: &str) -> Run {
        self.cmd = vec!["sh".into(), "-c".into(), script.into()];
        self
    }
}

/// Where [`Dockerd::dovecot_mailcow_on`] listens on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DovecotPorts {
    pub imap: u16,
    pub imaps: u16,
    pub pop3: u16,
    pub sieve: u16,
}

impl DovecotPorts {
    /// The well-known ports mailcow's dovecot publishes.
    pub const MAILCOW: DovecotPorts = DovecotPorts {
        imap: 143,
        imaps: 993,
        pop3: 110,
        sieve: 4190,
    };
}

/// A real mail daemon (postfix or dovecot) in a container.
pub struct MailDaemon<'d> {
    pub container: Container<'d>,
    /// Protocol word (`smtp`, `imap`, `imaps`, `pop3`, `sieve`) and port on
    /// 127.0.0.1.
    pub ports: Vec<(&'static str, u16)>,
    _conf: TempDir,
}

impl MailDaemon<'_> {
    /// The endpoints in `verify` syntax, e.g. `"127.0.0.1:40123 imap"`.
    pub fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|(what, port)| {
                let protocol = if *what == "imaps" { "tls" } else { what };
                format!("127.0.0.1:{port} {protocol}")
            })
            .collect()
    }
}

/// A container started by [`Dockerd::run`]; removed with its engine.
pub struct Container<'d> {
    dockerd: &'d Dockerd,
    pub name: String,
    pub id: String,
}

impl Container<'_> {
    /// `docker stop` (the idle script exits on TERM at once).
    pub fn stop(&self) {
        self.dockerd.docker_ok(&["stop", "-t", "5", &self.name]);
    }

    /// `docker restart` (up to 30 s for the daemon to stop, as the
    /// receiver gives it).
    pub fn restart(&self) {
        self.dockerd.docker_ok(&["restart", "-t", "30", &self.name]);
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        self.dockerd.docker(&all)
    }

    pub fn logs(&self) -> String {
        let out = self.dockerd.docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `docker inspect --format …`.
    pub fn inspect(&self, format: &str) -> String {
        self.dockerd
            .docker_ok(&["inspect", "--format", format, &self.name])
    }
}

/// A busybox stand-in for postfix-mailcow or dovecot-mailcow.
pub struct StandIn<'d> {
    pub container: Container<'d>,
    observe: TempDir,
}

impl StandIn<'_> {
    /// The reload calls seen inside the container, e.g. `"postfix reload"`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.observe.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many times the container's main process has started.
    pub fn starts(&self) -> usize {
        std::fs::read_to_string(self.observe.path().join("starts"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

/// Debian's nginx in a container, as nginx-mailcow.
pub struct Nginx<'d> {
    pub container: Container<'d>,
    /// nginx listens on 127.0.0.1:port with TLS.
    pub port: u16,
    _conf: TempDir,
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Scripts installed in the image.
const IDLE: &str = "#!/bin/sh
# certsync test container: idle until stopped; count starts.
[ -d /observe ] && echo started >> /observe/starts
trap 'exit 0' TERM INT
sleep 2147483647 &
wait
";

const RELOAD_STAND_IN: &str = "#!/bin/sh
# certsync test stand-in for a mail daemon's control command.
echo \"$(basename \"$0\") $*\" >> /observe/calls
exit \"${RELOAD_EXIT:-0}\"
";

fn build_rootfs(root: &Path) {
    let bb = busybox().expect("busybox-static is installed");
    for d in [
        "bin",
        "etc",
        "tmp",
        "run",
        "usr/sbin",
        "var/lib/nginx",
        "var/log/nginx",
        "observe",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(&bb, root.join("bin/busybox")).unwrap();
    let list = Command::new(&bb).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    // Debian's binaries find their libraries under /usr when the host's
    // /usr is mounted (merged /usr: /lib and /lib64 are links).
    for lib in ["lib", "lib64"] {
        if Path::new("/").join(lib).is_symlink() {
            std::os::unix::fs::symlink(format!("usr/{lib}"), root.join(lib)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    let script = |path: &str, text: &str| {
        let mut f = std::fs::File::create(root.join(path)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script("bin/certsync-idle", IDLE);
    script("usr/sbin/postfix", RELOAD_STAND_IN);
    script("usr/sbin/dovecot", RELOAD_STAND_IN);
    // For stand-ins of nginx-mailcow (`nginx -s reload`); the real nginx
    // container mounts the host's /usr over it.
    script("usr/sbin/nginx", RELOAD_STAND_IN);
}
