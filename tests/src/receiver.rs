//! A mailcow-like receiving host in a temp dir: the ssl dir, the staging
//! dir, a receive.toml, and helpers to run `certsync-receive` against it,
//! to speak the protocol to `serve`, and to prove that nothing was written.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use certsync_core::bundle::Bundle;
use certsync_core::protocol::{self, Hello, Limits, Message, Offer, OfferedCert, Reader, Want};
use certsync_core::report::Report;
use certsync_core::testutil::TestLeaf;
use certsync_core::Fingerprint;
use tempfile::TempDir;

/// The uid (and gid) that stands in for the `certsync` user: nobody.
pub const NOBODY: u32 = 65534;

/// A receiving host.
pub struct Mailhost {
    pub root: TempDir,
    /// `data/assets/ssl`, where the pair is installed.
    pub ssl: PathBuf,
    pub staging: PathBuf,
    pub config: PathBuf,
}

impl Mailhost {
    /// One `[[cert]] name = "mail"` for `hostnames`; no reload, no verify.
    pub fn new(hostnames: &[&str]) -> Mailhost {
        Mailhost::with_extra(hostnames, "")
    }

    /// As [`Mailhost::new`], with extra top-level TOML (before `[[cert]]`).
    /// The receiver trusts the test root ([`write_test_ca`]) unless `extra`
    /// sets its own `ca_file`.
    pub fn with_extra(hostnames: &[&str], extra: &str) -> Mailhost {
        let root = tempfile::tempdir().expect("tempdir");
        let ssl = root.path().join("mailcow/data/assets/ssl");
        std::fs::create_dir_all(&ssl).expect("ssl dir");
        let staging = root.path().join("staging");
        let config = root.path().join("receive.toml");
        let hosts = hostnames
            .iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ca_file = if extra.contains("ca_file") {
            String::new()
        } else {
            format!("ca_file = {:?}\n", write_test_ca(root.path()))
        };
        // The DANE guard looks up TLSA records: off unless the test asks
        // for it, so the suite never waits on the host's resolver.
        let dane = if extra.contains("dane") {
            ""
        } else {
            "dane = \"off\"\n"
        };
        let text = format!(
            "staging_dir = {staging:?}\nread_timeout = 2\n{dane}{ca_file}{extra}\n[[cert]]\nname = \"mail\"\nhostnames = [{hosts}]\ncert_path = {cert:?}\nkey_path = {key:?}\nreload = []\nverify = []\n",
            staging = staging,
            cert = ssl.join("cert.pem"),
            key = ssl.join("key.pem"),
        );
        std::fs::write(&config, text).expect("write receive.toml");
        Mailhost {
            root,
            ssl,
            staging,
            config,
        }
    }

    /// A mailcow checkout in `mailcow/` with this `mailcow.conf`, and a
    /// receive.toml that uses the `[mailcow]` preset for `[[cert]] mail`
    /// (no reload, no verify: no Docker needed) and trusts the test root.
    pub fn mailcow(mailcow_conf: &str) -> Mailhost {
        let host = Mailhost::new(&[]);
        let dir = host.root.path().join("mailcow");
        std::fs::write(dir.join("mailcow.conf"), mailcow_conf).expect("write mailcow.conf");
        let text = format!(
            "staging_dir = {staging:?}\nread_timeout = 2\ndane = \"off\"\nca_file = {ca_file:?}\n[mailcow]\ndir = {dir:?}\n[[cert]]\nname = \"mail\"\nreload = []\nverify = []\n",
            staging = host.staging,
            ca_file = write_test_ca(host.root.path()),
        );
        std::fs::write(&host.config, text).expect("write receive.toml");
        host
    }

    /// As [`Mailhost::new`], with `leaf` installed (by `install`).
    pub fn with_installed(hostnames: &[&str], leaf: &TestLeaf) -> Mailhost {
        let host = Mailhost::new(hostnames);
        let out = host.install_leaf(leaf, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", crate::shown(&out));
        host
    }

    /// A `deploy = "handoff"` host laid out as the package lays it out:
    /// everything root's, only the staging dir (0700) the unprivileged
    /// user's ([`NOBODY`] stands in for `certsync`); `extra` as in
    /// [`Mailhost::with_extra`].
    pub fn handoff(hostnames: &[&str], extra: &str) -> Mailhost {
        use std::os::unix::fs::PermissionsExt;
        let host = Mailhost::with_extra(
            hostnames,
            &format!("deploy = \"handoff\"\nhandoff_timeout = 30\n{extra}"),
        );
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        std::fs::create_dir_all(&host.staging).unwrap();
        std::os::unix::fs::chown(&host.staging, Some(NOBODY), Some(NOBODY)).unwrap();
        mode(&host.staging, 0o700);
        mode(host.root.path(), 0o755);
        mode(&host.config, 0o644);
        host
    }

    /// `serve` as [`NOBODY`] (through setpriv), as the forced command runs
    /// it in handoff mode.
    pub fn serve_as_nobody(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("/usr/bin/setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::bins::receive())
            .arg("--config")
            .arg(&self.config)
            .arg("serve");
        cmd
    }

    /// Root's `certsync-deploy.path`, stood in for: `deploy` whenever a
    /// request appears in the staging dir.
    pub fn deployer(&self) -> crate::e2e::Deployer {
        let config = self.config.clone();
        crate::e2e::Deployer::start(&self.staging, move || {
            let mut c = Command::new(crate::bins::receive());
            c.arg("--config").arg(&config).arg("deploy");
            c
        })
    }

    pub fn cert_path(&self) -> PathBuf {
        self.ssl.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.ssl.join("key.pem")
    }

    /// `certsync-receive --config <this host's receive.toml>`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(crate::bins::receive());
        c.arg("--config").arg(&self.config);
        c.env_remove("CERTSYNC_FAULT_KILL_AT");
        c
    }

    /// Write a leaf's files into `in/` (outside the ssl dir) and return
    /// their paths (fullchain, key).
    pub fn files_for(&self, leaf: &TestLeaf) -> (PathBuf, PathBuf) {
        let dir = self.root.path().join("in");
        std::fs::create_dir_all(&dir).expect("in dir");
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let chain = dir.join(format!("fullchain{n}.pem"));
        let key = dir.join(format!("privkey{n}.pem"));
        std::fs::write(&chain, &leaf.chain_pem).expect("write chain");
        std::fs::write(&key, leaf.key_pem.expose()).expect("write key");
        (chain, key)
    }

    /// `certsync-receive install --name mail --cert … --key … <extra>`.
    pub fn install(&self, chain: &Path, key: &Path, extra: &[&str]) -> Output {
        self.cmd()
            .args(["install", "--name", "mail", "--cert"])
            .arg(chain)
            .arg("--key")
            .arg(key)
            .args(extra)
            .output()
            .expect("run certsync-receive install")
    }

    /// `certsync-receive --config <this host's receive.toml> serve`, for
    /// [`push_session`].
    pub fn serve_cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(crate::bins::receive());
        c.arg("--config").arg(&self.config).arg("serve");
        c.env_remove("CERTSYNC_FAULT_KILL_AT");
        c
    }

    /// [`Mailhost::serve_cmd`] as the unprivileged user `uid` (the
    /// `certsync` user of handoff mode), through util-linux's `setpriv`.
    pub fn serve_as(&self, uid: u32) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("/usr/bin/setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(crate::bins::receive())
            .arg("--config")
            .arg(&self.config)
            .arg("serve");
        c.env_remove("CERTSYNC_FAULT_KILL_AT");
        c
    }

    pub fn install_leaf(&self, leaf: &TestLeaf, extra: &[&str]) -> Output {
        let (c, k) = self.files_for(leaf);
        self.install(&c, &k, extra)
    }

    /// The installed (cert, key) bytes, if both exist.
    pub fn installed(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(self.cert_path()).ok()?,
            std::fs::read(self.key_path()).ok()?,
        ))
    }

    /// Nothing at all in the ssl dir: no cert, no key, no temp or kept
    /// file. Stronger than `installed().is_none()`, which one stray file
    /// would still satisfy.
    pub fn nothing_installed(&self) -> bool {
        std::fs::read_dir(&self.ssl)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }

    /// Every file in the staging dir (its lock excepted): a pair that
    /// reached this receiver leaves its bytes here before validation.
    pub fn staged_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.staging, &mut |p| {
            let is_lock = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains("lock"));
            if p.is_file() && !is_lock {
                out.push(p.to_path_buf());
            }
        });
        out
    }

    /// Every file under the host's root except the staging dir and the
    /// inputs: path → (sha256, mode, inode). Equal snapshots = nothing written.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, (Fingerprint, u32, u64)> {
        let mut out = BTreeMap::new();
        walk(self.root.path(), &mut |p| {
            if p.starts_with(&self.staging) || p.starts_with(self.root.path().join("in")) {
                return;
            }
            if let Ok(meta) = std::fs::symlink_metadata(p) {
                let bytes = if meta.is_file() {
                    std::fs::read(p).unwrap_or_default()
                } else {
                    Vec::new()
                };
                out.insert(
                    p.to_path_buf(),
                    (Fingerprint::of_bytes(&bytes), meta.mode(), meta.ino()),
                );
            }
        });
        out
    }
}

/// Write the process-wide test root (every `TestCa::new` chains to it) as
/// `dir/test-ca.pem`, 0644, and return its path: what a test's
/// receive.toml names as `ca_file`, since the receiver verifies every chain
/// to a trust anchor.
pub fn write_test_ca(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("test-ca.pem");
    std::fs::write(&path, certsync_core::testutil::test_root_pem()).expect("write test-ca.pem");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .expect("chmod test-ca.pem");
    path
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        f(&p);
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, f);
        }
    }
}

/// Describe a leaf for an offer.
pub fn offered(name: &str, leaf: &TestLeaf) -> OfferedCert {
    let b = leaf.bundle();
    OfferedCert {
        name: name.to_string(),
        leaf: leaf.fingerprint(),
        chain_sha256: b.chain_sha256(),
        key_sha256: b.key_sha256(),
        not_after: certsync_core::bundle::CertInfo::of(&leaf.cert).not_after,
        sans: vec![],
    }
}

/// What a protocol session saw.
#[derive(Debug)]
pub struct SessionResult {
    pub want: Option<Want>,
    pub report: Option<Report>,
    pub logs: Vec<String>,
    pub error: Option<String>,
    /// How many bundles (key material) were sent.
    pub bundles_sent: usize,
    pub exit: Option<i32>,
    pub stderr: String,
}

/// The usual push: one leaf as `mail`, no dry run, no force.
pub async fn push_leaf(cmd: tokio::process::Command, leaf: &TestLeaf) -> SessionResult {
    push_session(
        cmd,
        &[("mail", leaf.bundle(), leaf.fingerprint())],
        false,
        false,
    )
    .await
}

/// Spawn `cmd` (a `serve`), speak protocol v1 as a pusher would: offer
/// `pairs`, send the bundles it asks for, read the report.
pub async fn push_session(
    mut cmd: tokio::process::Command,
    pairs: &[(&str, Bundle, Fingerprint)],
    dry_run: bool,
    force: bool,
) -> SessionResult {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn serve");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = Reader::new(stdout, Limits::default());
    let mut res = SessionResult {
        want: None,
        report: None,
        logs: vec![],
        error: None,
        bundles_sent: 0,
        exit: None,
        stderr: String::new(),
    };
    let offer = Offer {
        certs: pairs
            .iter()
            .map(|(name, b, leaf)| OfferedCert {
                name: name.to_string(),
                leaf: *leaf,
                chain_sha256: b.chain_sha256(),
                key_sha256: b.key_sha256(),
                not_after: 0,
                sans: vec![],
            })
            .collect(),
    };
    let flow = async {
        protocol::write_message(
            &mut stdin,
            &Message::Hello(Hello::new("test", dry_run, force)),
        )
        .await?;
        protocol::write_message(&mut stdin, &Message::Offer(offer)).await?;
        loop {
            match reader.next("message").await? {
                Message::Hello(_) => {}
                Message::Log(l) => res.logs.push(l),
                Message::Want(w) => {
                    for d in &w.certs {
                        if d.wanted == protocol::Wanted::Send {
                            if let Some((name, b, _)) = pairs.iter().find(|(n, _, _)| *n == d.name)
                            {
                                protocol::write_message(
                                    &mut stdin,
                                    &Message::Bundle {
                                        name: name.to_string(),
                                        bundle: b.clone(),
                                    },
                                )
                                .await?;
                                res.bundles_sent += 1;
                            }
                        }
                    }
                    protocol::write_message(&mut stdin, &Message::Done).await?;
                    res.want = Some(w);
                }
                Message::Report(r) => {
                    res.report = Some(r);
                    break;
                }
                Message::Error(e) => {
                    res.error = Some(e.message);
                    break;
                }
                other => {
                    res.error = Some(format!("unexpected {}", other.kind()));
                    break;
                }
            }
        }
        Ok::<(), protocol::ProtocolError>(())
    };
    if let Err(e) = flow.await {
        res.error.get_or_insert(e.to_string());
    }
    drop(stdin);
    let out = child.wait_with_output().await.expect("wait serve");
    res.exit = out.status.code();
    res.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    res
}
