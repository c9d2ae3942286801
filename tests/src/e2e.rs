//! Pieces of the end-to-end test and the benchmark that are not a real
//! part of their own: a long-running process that is stopped on drop (the
//! watch daemon), root's `certsync-deploy.path` stood in for by a loop, and
//! the fingerprints an operator compares by hand (of a PEM file, and of
//! what `openssl s_client` sees on the wire).
//!
//! Everything here cleans up in `Drop`, so a failing assertion still
//! leaves no process behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use certsync_core::bundle::{leaf_fingerprint, parse_chain};
use certsync_core::Fingerprint;

use crate::docker::wait_until;

/// The SHA-256 fingerprint of the first certificate in a PEM file (the
/// leaf of a fullchain), or `None` while the file is missing or partial.
pub fn pem_leaf_fingerprint(path: &Path) -> Option<Fingerprint> {
    let bytes = std::fs::read(path).ok()?;
    let certs = parse_chain(&bytes).ok()?;
    certs.first().map(leaf_fingerprint)
}

/// A process that runs until the test is done: its stderr and stdout go
/// to a log file; on drop it gets SIGTERM, then SIGKILL after 10 s.
pub struct Process {
    child: Child,
    log: PathBuf,
    /// What it is, for messages.
    pub what: String,
}

impl Process {
    /// Spawn `cmd` with its output in `log`.
    pub fn spawn(what: &str, mut cmd: Command, log: &Path) -> Process {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Process {
            child,
            log: log.to_path_buf(),
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Has it exited (and with what)?
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if stopped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Root's `certsync-deploy.path`, stood in for: a thread that polls for
/// `<staging>/deploy.request` and runs the command `deploy_cmd` makes
/// (`certsync-receive --config … deploy`, as root) each time one appears.
/// Stopped on drop.
pub struct Deployer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<String>>,
    runs: Arc<Mutex<Vec<Option<i32>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Deployer {
    pub fn start(staging: &Path, deploy_cmd: impl Fn() -> Command + Send + 'static) -> Deployer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(String::new()));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let request = staging.join("deploy.request");
        let (stop2, log2, runs2) = (stop.clone(), log.clone(), runs.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                if request.exists() {
                    let out = deploy_cmd().stdin(Stdio::null()).output();
                    let mut log = log2.lock().unwrap();
                    match out {
                        Ok(out) => {
                            log.push_str(&format!(
                                "--- deploy: exit {:?}\n{}{}",
                                out.status.code(),
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            ));
                            runs2.lock().unwrap().push(out.status.code());
                        }
                        Err(e) => {
                            log.push_str(&format!("--- deploy: cannot run: {e}\n"));
                            runs2.lock().unwrap().push(None);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Deployer {
            stop,
            log,
            runs,
            thread: Some(thread),
        }
    }

    /// The exit codes of the deploys run so far.
    pub fn runs(&self) -> Vec<Option<i32>> {
        self.runs.lock().unwrap().clone()
    }

    /// The output of every deploy so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stop watching, wait for a deploy that is running, and return the
    /// exit codes of all of them.
    pub fn finish(self) -> Vec<Option<i32>> {
        let runs = self.runs.clone();
        drop(self);
        let runs = runs.lock().unwrap().clone();
        runs
    }
}

impl Drop for Deployer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `openssl s_client` against `endpoint` (`host:port`), with
/// `-starttls PROTO` when `starttls` is given and SNI = `sni` (or
/// `-noservername` for `None`), piped into
/// `openssl x509 -noout -fingerprint -sha256`: what an operator types.
/// `prefix` runs both in a network namespace (`["ip", "netns", "exec",
/// NAME]`) or is empty. Returns the parsed fingerprint, or the output.
pub fn s_client_fingerprint(
    prefix: &[&str],
    endpoint: &str,
    starttls: Option<&str>,
    sni: Option<&str>,
) -> Result<Fingerprint, String> {
    let starttls = starttls
        .map(|p| format!("-starttls {p}"))
        .unwrap_or_default();
    let sni = match sni {
        Some(name) => format!("-servername {name}"),
        None => "-noservername".into(),
    };
    let script = format!(
        "openssl s_client -connect {endpoint} {starttls} {sni} </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    );
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("sh");
            c
        }
        None => Command::new("sh"),
    };
    let out = cmd
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // `sha256 Fingerprint=AB:CD:…` (OpenSSL 3 writes `SHA256` in older
    // versions; either way the value follows the `=`).
    text.trim()
        .split_once('=')
        .and_then(|(_, fp)| fp.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "{script}: exit {:?}: {text}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// A TLS server on 127.0.0.1 that loads the installed pair for every
/// connection, as a mail daemon does after a reload: the served
/// certificate for `verify` where there is no dockerd. Returns its port;
/// the server thread lives as long as the process.
pub fn serve_installed(cert: PathBuf, key: PathBuf) -> std::io::Result<u16> {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let acceptor = (|| {
                let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).ok()?;
                b.set_certificate_chain_file(&cert).ok()?;
                b.set_private_key_file(&key, SslFiletype::PEM).ok()?;
                Some(b.build())
            })();
            if let Some(a) = acceptor {
                let _ = a.accept(stream);
            }
        }
    });
    Ok(port)
}

/// Context switches (voluntary and not) of every thread of `pid`, per
/// thread id: a process that wakes up periodically shows them growing.
/// A thread that exits while this reads is left out.
pub fn context_switches(pid: impl std::fmt::Display) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let n: u64 = status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(task.file_name().to_string_lossy().into_owned(), n);
    }
    out
}
