//! The SSH transport: a russh client that reaches the receiver through the
//! `authorized_keys` forced command on the receiving host.
//!
//! One connection, one session channel, one `exec`. The command we send is
//! [`FORCED_COMMAND`], but the server's forced command decides what runs;
//! the receiver logs what we asked for (`SSH_ORIGINAL_COMMAND`) and
//! ignores it.
//!
//! Invariants:
//! - The host key is checked against the pinned key or the known_hosts
//!   file in `check_server_key`, during the key exchange: an unknown,
//!   changed or revoked key ends the connection before we authenticate,
//!   so nothing is executed and our key's signature is never sent.
//!   Keys are compared by their key data (`==` on a whole `PublicKey` would
//!   also compare comments).
//! - TCP connect, handshake, authentication and the exec request together
//!   are bounded by `connect_timeout`. Afterwards keepalives detect a dead
//!   peer ([`KEEPALIVE_INTERVAL`] × [`KEEPALIVE_MAX`]).
//! - The private key file must not be accessible by group or others (as
//!   OpenSSH insists), must not be passphrase-protected (the pusher runs
//!   unattended), and its bytes are read into a zeroizing buffer.
//! - Error messages name `user@host:port` and the key file and carry the
//!   offered host key's `SHA256:` fingerprint in OpenSSH's form, never key
//!   material.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certsync_core::config::Target;
use certsync_core::contract::FORCED_COMMAND;
use russh::client;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::known_hosts::{join_lines, KnownHosts, Verdict};
use super::{Connection, End, StderrLog, TransportError};
use crate::untrusted;

/// Default bound for connect + handshake + auth + exec.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Send a keepalive after this long without hearing from the server…
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// …and give up after this many unanswered ones.
pub const KEEPALIVE_MAX: usize = 3;
/// Buffer between the channel and `Connection::reader`.
const READ_BUFFER: usize = 64 * 1024;

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// OpenSSH private key file (ed25519, ECDSA or RSA; no passphrase).
    pub identity: PathBuf,
    pub host_keys: HostKeyPolicy,
    pub connect_timeout: Duration,
}

/// Which host key the server must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// An OpenSSH known_hosts file.
    KnownHosts(PathBuf),
    /// One key, `ssh-ed25519 AAAA…` (a leading host name and a trailing
    /// comment, as ssh-keyscan and .pub files have them, are accepted).
    Pinned(String),
}

impl SshTarget {
    /// From a `[[target]]` with `transport = "ssh"` (the default).
    pub fn from_config(target: &Target) -> Result<SshTarget, TransportError> {
        let missing = |key: &str| TransportError::Config {
            target: target.name.clone(),
            what: format!("`{key}` is required for SSH"),
        };
        let host_keys = match (&target.known_hosts, &target.host_key) {
            (Some(path), None) => HostKeyPolicy::KnownHosts(path.clone()),
            (None, Some(key)) => HostKeyPolicy::Pinned(key.clone()),
            _ => {
                return Err(TransportError::Config {
                    target: target.name.clone(),
                    what: "set exactly one of `known_hosts` or `host_key`".into(),
                })
            }
        };
        Ok(SshTarget {
            host: target.host.clone().ok_or_else(|| missing("host"))?,
            port: target.port(),
            user: target.user.clone().ok_or_else(|| missing("user"))?,
            identity: target.identity.clone().ok_or_else(|| missing("identity"))?,
            host_keys,
            connect_timeout: target
                .connect_timeout
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
    }

    fn peer(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// Connect, authenticate, and start the receiver. See the module doc.
pub async fn connect(target: &SshTarget) -> Result<Connection, TransportError> {
    // Local files first: their errors are config errors, not network ones.
    let key = load_identity(&target.identity)?;
    let trust = Trust::load(target)?;

    let stage = Mutex::new("the TCP connection");
    match tokio::time::timeout(
        target.connect_timeout,
        establish(target, key, trust, &stage),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(TransportError::Timeout {
            host: target.host.clone(),
            port: target.port,
            secs: target.connect_timeout.as_secs(),
            stage: stage.lock().map(|s| *s).unwrap_or("the connection"),
        }),
    }
}

/// The steps of [`connect`] inside its timeout; `stage` names the step
/// under way for the timeout's message.
async fn establish(
    target: &SshTarget,
    key: PrivateKey,
    trust: Trust,
    stage: &Mutex<&'static str>,
) -> Result<Connection, TransportError> {
    let set_stage = |s: &'static str| {
        if let Ok(mut g) = stage.lock() {
            *g = s;
        }
    };
    let socket = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| TransportError::Connect {
            host: target.host.clone(),
            port: target.port,
            source,
        })?;
    // Protocol messages are small and answered one by one: no Nagle delay.
    let _ = socket.set_nodelay(true);
    set_stage("the SSH handshake");
    let mut handle = handshake(target, socket, trust).await?;
    set_stage("authentication");
    authenticate(&mut handle, target, key).await?;
    set_stage("the session channel");
    let (channel, early) = start_receiver(&handle, target).await?;

    let peer = target.peer();
    let (read_half, write_half) = channel.split();
    let writer = write_half.make_writer();
    // A duplex pipe, not a simplex: dropping the reader must make the
    // pump's writes fail (so it keeps draining for the exit status), and
    // only DuplexStream closes its peer on drop.
    let (pipe_reader, pipe_writer) = tokio::io::duplex(READ_BUFFER);
    let pump = tokio::spawn(pump(read_half, early, pipe_writer, peer.clone()));
    tracing::debug!("connected to {peer}, receiver started");
    Ok(Connection::new(
        Box::new(pipe_reader),
        Box::new(writer),
        peer,
        End::Ssh(SshEnd { handle, pump }),
    ))
}

/// An SSH library error at `stage` of the connection to `target`.
fn ssh_err(target: &SshTarget, stage: &'static str) -> impl Fn(russh::Error) -> TransportError {
    let host = target.host.clone();
    let port = target.port;
    move |source| TransportError::Ssh {
        host: host.clone(),
        port,
        stage,
        source,
    }
}

/// The key exchange; the host key is checked in [`Handler`] during it.
async fn handshake(
    target: &SshTarget,
    socket: tokio::net::TcpStream,
    trust: Trust,
) -> Result<client::Handle<Handler>, TransportError> {
    let (host, port) = (target.host.as_str(), target.port);
    let config = Arc::new(client_config(&trust.preferred_algorithms(host, port)));
    let handler = Handler {
        host: host.to_string(),
        port,
        trust,
    };
    client::connect_stream(config, socket, handler)
        .await
        .map_err(|e| match e {
            ClientError::HostKey(e) => *e,
            ClientError::Ssh(source) => ssh_err(target, "the SSH handshake")(source),
        })
}

/// Public-key authentication with `key`; a refusal names the user, the
/// host, the key file and the key's fingerprint.
async fn authenticate(
    handle: &mut client::Handle<Handler>,
    target: &SshTarget,
    key: PrivateKey,
) -> Result<(), TransportError> {
    let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
    let hash_alg = match key.algorithm() {
        // RSA signs with SHA-2; ask the server which (server-sig-algs).
        Algorithm::Rsa { .. } => handle
            .best_supported_rsa_hash()
            .await
            .map_err(ssh_err(target, "authentication"))?
            .unwrap_or(Some(HashAlg::Sha256)),
        _ => None,
    };
    let auth = handle
        .authenticate_publickey(
            target.user.clone(),
            PrivateKeyWithHashAlg::new(Arc::new(key), hash_alg),
        )
        .await
        .map_err(ssh_err(target, "authentication"))?;
    if !auth.success() {
        return Err(TransportError::AuthFailed {
            user: target.user.clone(),
            host: target.host.clone(),
            port: target.port,
            identity: target.identity.clone(),
            fingerprint,
        });
    }
    Ok(())
}

/// Open the session channel and ask for the receiver. Returns the channel
/// and whatever arrived before the answer to exec: sshd answers before the
/// command's output, but the order is not ours to assume, so it is kept
/// for the reader.
async fn start_receiver(
    handle: &client::Handle<Handler>,
    target: &SshTarget,
) -> Result<(russh::Channel<client::Msg>, VecDeque<ChannelMsg>), TransportError> {
    let mut channel = handle
        .channel_open_session()
        .await
        .map_err(ssh_err(target, "opening the session channel"))?;
    channel
        .exec(true, FORCED_COMMAND)
        .await
        .map_err(ssh_err(target, "the exec request"))?;
    let mut early = VecDeque::new();
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => return Ok((channel, early)),
            Some(ChannelMsg::Failure) => {
                return Err(TransportError::ExecRefused {
                    user: target.user.clone(),
                    host: target.host.clone(),
                    port: target.port,
                })
            }
            Some(msg) => early.push_back(msg),
            None => {
                return Err(ssh_err(target, "the exec request")(
                    russh::Error::Disconnect,
                ));
            }
        }
    }
}

fn client_config(preferred_keys: &[Algorithm]) -> client::Config {
    let mut preferred = russh::Preferred::default();
    // Ask first for the host key types we can check, as OpenSSH does: a
    // known_hosts file with only the ECDSA key then works against a server
    // that would otherwise show its Ed25519 key.
    let mut keys: Vec<Algorithm> = Vec::new();
    for family in preferred_keys {
        for alg in preferred.key.iter() {
            if same_family(alg, family) && !keys.contains(alg) {
                keys.push(alg.clone());
            }
        }
    }
    for alg in preferred.key.iter() {
        if !keys.contains(alg) {
            keys.push(alg.clone());
        }
    }
    preferred.key = keys.into();
    client::Config {
        preferred,
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    }
}

/// RSA is one key type but three signature algorithms.
fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    match (a, b) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => a == b,
    }
}

/// Read the private key. Refuses group/world-accessible files and
/// passphrase-protected keys, with the fix in the message.
pub fn load_identity(path: &Path) -> Result<PrivateKey, TransportError> {
    use std::os::unix::fs::MetadataExt;
    let identity_err = |reason: String| TransportError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        identity_err(format!(
            "{e}; create one with `certsync-push keygen --out {}`",
            path.display()
        ))
    })?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TransportError::IdentityMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| identity_err(e.to_string()))?);
    let key = match russh::keys::decode_secret_key(&text, None) {
        Ok(key) => key,
        Err(e) => {
            let encrypted = text.contains("ENCRYPTED")
                || PrivateKey::from_openssh(text.as_bytes()).is_ok_and(|k| k.is_encrypted());
            return Err(identity_err(if encrypted {
                "it is protected by a passphrase, and certsync runs unattended: use a key without one (certsync-push keygen makes one)".into()
            } else {
                format!("not an OpenSSH/PEM private key ({e})")
            }));
        }
    };
    Ok(key)
}

/// Parse a pinned host key: `TYPE BASE64 [comment]`, optionally preceded
/// by a host name (a line of ssh-keyscan output).
pub fn parse_pinned_key(text: &str, host: &str) -> Result<PublicKey, TransportError> {
    let bad = |reason: &str| TransportError::BadPinnedKey {
        host: host.to_string(),
        reason: reason.to_string(),
    };
    let fields: Vec<&str> = text.split_whitespace().collect();
    let looks_like_type = |s: &str| s.starts_with("ssh-") || s.starts_with("ecdsa-");
    let (key_type, data) = match fields.as_slice() {
        [t, d, ..] if looks_like_type(t) => (*t, *d),
        [_host, t, d, ..] if looks_like_type(t) => (*t, *d),
        _ => return Err(bad("expected \"TYPE BASE64\"")),
    };
    let key = russh::keys::parse_public_key_base64(data)
        .map_err(|_| bad("the key data does not decode"))?;
    if key.algorithm().as_str() != key_type {
        return Err(bad("the key data is not of the type the line names"));
    }
    Ok(key)
}

/// What the server's host key is checked against.
enum Trust {
    KnownHosts(KnownHosts),
    Pinned(PublicKey),
}

impl Trust {
    fn load(target: &SshTarget) -> Result<Trust, TransportError> {
        Ok(match &target.host_keys {
            HostKeyPolicy::KnownHosts(path) => {
                Trust::KnownHosts(KnownHosts::load(path).map_err(|source| {
                    TransportError::KnownHosts {
                        host: target.host.clone(),
                        port: target.port,
                        source,
                    }
                })?)
            }
            HostKeyPolicy::Pinned(text) => Trust::Pinned(parse_pinned_key(text, &target.host)?),
        })
    }

    fn preferred_algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        match self {
            Trust::KnownHosts(k) => k.algorithms_for(host, port),
            Trust::Pinned(key) => vec![key.algorithm()],
        }
    }

    fn check(&self, host: &str, port: u16, offered: &PublicKey) -> Result<(), TransportError> {
        let algorithm = offered.algorithm().as_str().to_string();
        let fingerprint = offered.fingerprint(HashAlg::Sha256).to_string();
        let known = match self {
            Trust::Pinned(pinned) => {
                if pinned.key_data() == offered.key_data() {
                    return Ok(());
                }
                return Err(TransportError::PinnedHostKeyMismatch {
                    host: host.to_string(),
                    port,
                    algorithm,
                    fingerprint,
                    pinned_algorithm: pinned.algorithm().as_str().to_string(),
                    pinned_fingerprint: pinned.fingerprint(HashAlg::Sha256).to_string(),
                });
            }
            Trust::KnownHosts(known) => known,
        };
        let (host, path) = (host.to_string(), known.path().to_path_buf());
        match known.check(&host, port, offered.key_data()) {
            Verdict::Known { line } => {
                tracing::debug!(
                    "host key of {host}:{port} matches {}:{line}",
                    path.display()
                );
                Ok(())
            }
            Verdict::Unknown => Err(TransportError::UnknownHostKey {
                host,
                port,
                algorithm,
                fingerprint,
                known_hosts: path,
            }),
            Verdict::Changed { lines } => Err(TransportError::ChangedHostKey {
                host,
                port,
                algorithm,
                fingerprint,
                known_hosts: path,
                lines: join_lines(&lines),
            }),
            Verdict::Revoked { line } => Err(TransportError::RevokedHostKey {
                host,
                port,
                algorithm,
                fingerprint,
                known_hosts: path,
                line,
            }),
        }
    }
}

/// russh's client callbacks. Only the host key check matters to us.
struct Handler {
    host: String,
    port: u16,
    trust: Trust,
}

/// The handler's error: russh's own, or our host key refusal carried out
/// of the key exchange intact.
#[derive(Debug)]
enum ClientError {
    Ssh(russh::Error),
    HostKey(Box<TransportError>),
}

impl From<russh::Error> for ClientError {
    fn from(e: russh::Error) -> Self {
        ClientError::Ssh(e)
    }
}

impl client::Handler for Handler {
    type Error = ClientError;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A host certificate is judged by its key alone: certsync does not
        // trust certificate authorities (see known_hosts: @cert-authority).
        let offered = server_public_key.public_key();
        self.trust
            .check(&self.host, self.port, &offered)
            .map(|()| true)
            .map_err(|e| ClientError::HostKey(Box::new(e)))
    }
}

/// How the remote command ended, as the channel told us.
#[derive(Debug, Default)]
struct RemoteEnd {
    exit_status: Option<u32>,
    signal: Option<String>,
}

/// Move channel data into the reader's pipe, log the receiver's stderr,
/// and collect the exit status. Runs until the channel closes.
async fn pump(
    mut channel: russh::ChannelReadHalf,
    mut early: VecDeque<ChannelMsg>,
    pipe: DuplexStream,
    peer: String,
) -> RemoteEnd {
    let mut out = Some(pipe);
    let mut end = RemoteEnd::default();
    let mut stderr = StderrLog::new(&peer);
    loop {
        let msg = match early.pop_front() {
            Some(msg) => msg,
            None => match channel.wait().await {
                Some(msg) => msg,
                None => break,
            },
        };
        match msg {
            ChannelMsg::Data { data } => {
                if let Some(w) = out.as_mut() {
                    // The reader was dropped: keep draining for the status.
                    if w.write_all(&data).await.is_err() {
                        out = None;
                    }
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                stderr.push(&data);
            }
            ChannelMsg::Eof => {
                // Dropping the pipe's writer is the reader's EOF.
                if let Some(mut w) = out.take() {
                    let _ = w.shutdown().await;
                }
            }
            ChannelMsg::ExitStatus { exit_status } => end.exit_status = Some(exit_status),
            ChannelMsg::ExitSignal {
                signal_name,
                error_message,
                ..
            } => {
                end.signal = Some(
                    format!("{signal_name:?} {}", untrusted::clean(&error_message))
                        .trim()
                        .to_string(),
                )
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    stderr.flush();
    end
}

/// The SSH session, kept for `finish`.
pub(crate) struct SshEnd {
    handle: client::Handle<Handler>,
    pump: JoinHandle<RemoteEnd>,
}

impl SshEnd {
    pub(crate) async fn finish(
        self,
        peer: &str,
        limit: Duration,
    ) -> Result<Option<u32>, TransportError> {
        let SshEnd { handle, pump } = self;
        let ended = tokio::time::timeout(limit, pump).await;
        // Say goodbye either way; the server may already be gone.
        let _ = handle
            .disconnect(Disconnect::ByApplication, "certsync done", "en")
            .await;
        let end = match ended {
            Ok(Ok(end)) => end,
            // The pump task cannot panic on input; treat a join error as a
            // connection that ended without a status.
            Ok(Err(_)) => RemoteEnd::default(),
            Err(_) => {
                return Err(TransportError::FinishTimeout {
                    peer: peer.to_string(),
                    secs: limit.as_secs(),
                })
            }
        };
        if let Some(signal) = &end.signal {
            tracing::warn!("the receiver on {peer} was killed by signal {signal}");
        }
        if end.exit_status.is_none() && end.signal.is_none() {
            tracing::warn!("the SSH channel to {peer} closed without an exit status");
        }
        Ok(end.exit_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_key_forms() {
        let line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEmW1qZYqlDlRke6XZuFqqlljcoiUWXez4pC3zBjvHE6";
        let a = parse_pinned_key(line, "h").unwrap();
        let b = parse_pinned_key(&format!("mail.example.com {line} root@mail"), "h").unwrap();
        assert_eq!(a.key_data(), b.key_data());
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 AAAA!!",
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIEmW1qZYqlDlRke6XZuFqqlljcoiUWXez4pC3zBjvHE6",
        ] {
            let err = parse_pinned_key(bad, "mail.example.com").unwrap_err();
            assert!(err.to_string().contains("mail.example.com"), "{err}");
        }
    }

    #[test]
    fn identity_mode_and_passphrase_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let out = crate::keygen::keygen(&path, "t").unwrap();
        assert!(load_identity(&path).is_ok());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_identity(&path).unwrap_err();
        assert!(
            matches!(err, TransportError::IdentityMode { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");

        // Not a key at all.
        let err = load_identity(&out.public_key).unwrap_err();
        assert!(
            err.to_string()
                .contains(&out.public_key.display().to_string()),
            "{err}"
        );

        if Path::new("/usr/bin/ssh-keygen").exists() {
            let enc = dir.path().join("enc");
            let st = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
                .arg(&enc)
                .status()
                .unwrap();
            assert!(st.success());
            let err = load_identity(&enc).unwrap_err();
            assert!(err.to_string().contains("passphrase"), "{err}");
        }
    }

    fn config_target() -> Target {
        Target {
            name: "mailcow".into(),
            host: Some("mail.example.com".into()),
            port: None,
            user: Some("certsync".into()),
            identity: Some("/etc/certsync/id_ed25519".into()),
            known_hosts: Some("/etc/certsync/known_hosts".into()),
            host_key: None,
            certs: None,
            transport: Default::default(),
            command: None,
            connect_timeout: None,
            session_timeout: None,
        }
    }

    #[test]
    fn from_config_defaults_and_missing_fields() {
        let t = SshTarget::from_config(&config_target()).unwrap();
        assert_eq!(t.port, 22);
        assert_eq!(t.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            t.host_keys,
            HostKeyPolicy::KnownHosts("/etc/certsync/known_hosts".into())
        );
        assert_eq!(t.peer(), "certsync@mail.example.com:22");

        let mut pinned = config_target();
        pinned.known_hosts = None;
        pinned.host_key = Some("ssh-ed25519 AAAA".into());
        pinned.port = Some(2222);
        pinned.connect_timeout = Some(3);
        let t = SshTarget::from_config(&pinned).unwrap();
        assert_eq!(
            t.host_keys,
            HostKeyPolicy::Pinned("ssh-ed25519 AAAA".into())
        );
        assert_eq!((t.port, t.connect_timeout), (2222, Duration::from_secs(3)));

        let mut no_user = config_target();
        no_user.user = None;
        let err = SshTarget::from_config(&no_user).unwrap_err();
        assert!(err.to_string().contains("`user`"), "{err}");
        assert_eq!(err.exit_code(), certsync_core::ExitCode::Usage);
    }

    #[tokio::test]
    async fn local_files_are_checked_before_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        crate::keygen::keygen(&id, "t").unwrap();
        // Nothing listens on loopback port 9; the file errors come first
        // and the port is never even tried.
        let mut t = SshTarget {
            host: "127.0.0.1".into(),
            port: 9,
            user: "certsync".into(),
            identity: dir.path().join("missing"),
            host_keys: HostKeyPolicy::KnownHosts(dir.path().join("known_hosts")),
            connect_timeout: Duration::from_secs(1),
        };
        let err = connect(&t).await.unwrap_err();
        assert!(
            err.to_string().contains("certsync-push keygen --out"),
            "{err}"
        );

        t.identity = id;
        let err = connect(&t).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TransportError::KnownHosts { .. }), "{msg}");
        assert!(msg.contains("ssh-keyscan -p 9 127.0.0.1 >> "), "{msg}");

        t.host_keys = HostKeyPolicy::Pinned("not a key".into());
        let err = connect(&t).await.unwrap_err();
        assert!(matches!(err, TransportError::BadPinnedKey { .. }), "{err}");
    }

    #[test]
    fn preferred_host_keys_put_known_families_first() {
        let cfg = client_config(&[Algorithm::Rsa { hash: None }]);
        assert!(matches!(cfg.preferred.key[0], Algorithm::Rsa { .. }));
        assert_eq!(cfg.keepalive_interval, Some(KEEPALIVE_INTERVAL));
        let default = client_config(&[]);
        assert_eq!(default.preferred.key, russh::Preferred::default().key);
    }
}
