//! How the pusher reaches a receiver: over SSH (russh, pinned host key) or
//! by spawning the receiver locally. Both give a [`Connection`]: a byte
//! stream that speaks the certsync protocol, and a way to end it and learn
//! how the receiver exited.
//!
//! Invariants:
//! - A host key is never trusted on first use: an unknown, changed or
//!   revoked key ends the connection before authentication, so nothing runs
//!   on the far side ([`ssh`], [`known_hosts`]).
//! - Connecting is bounded by the target's `connect_timeout`; finishing is
//!   bounded by [`FINISH_TIMEOUT`] (or the caller's choice), so a hung peer
//!   cannot hang the watch daemon.
//! - The local receiver is started from an argv list, never through a shell.
//! - The receiver's stderr (SSH extended data, or the local child's pipe)
//!   reaches our log only through [`StderrLog`]: line by line, cleaned of
//!   control characters and escapes, within a per-session budget
//!   ([`crate::untrusted`]).

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use certsync_core::config::{Target, TransportKind};
use certsync_core::ExitCode;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::untrusted::{Allow, LogBudget};

pub mod known_hosts;
pub mod local;
pub mod ssh;

pub use known_hosts::KnownHostsError;

/// How long [`Connection::finish`] waits for the receiver to exit after we
/// closed our side. The receiver has already sent its report by then, so
/// this only guards against a peer that hangs.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// The receiver's stderr, logged line by line under its peer's name. A
/// line longer than [`MAX_STDERR_LINE`] bytes is logged in pieces, each
/// cut to what [`crate::untrusted::clean`] shows.
pub(crate) struct StderrLog {
    buf: Vec<u8>,
    peer: String,
    budget: LogBudget,
}

/// See [`StderrLog`].
const MAX_STDERR_LINE: usize = 4096;

impl StderrLog {
    pub(crate) fn new(peer: &str) -> StderrLog {
        StderrLog {
            buf: Vec::new(),
            peer: peer.to_string(),
            budget: LogBudget::default(),
        }
    }

    /// More bytes from the receiver's stderr: log every complete line.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.line(&line);
        }
        if self.buf.len() > MAX_STDERR_LINE {
            self.flush();
        }
    }

    /// The stream ended: log what is left.
    pub(crate) fn flush(&mut self) {
        let rest = std::mem::take(&mut self.buf);
        self.line(&rest);
    }

    fn line(&mut self, line: &[u8]) {
        let cut = &line[..line.len().min(MAX_STDERR_LINE)];
        let text = String::from_utf8_lossy(cut);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let peer = &self.peer;
        match self.budget.take(text) {
            Allow::Show(text) => tracing::info!("{peer}: {text}"),
            Allow::Notice(notice) => tracing::warn!("{peer}: {notice}"),
            Allow::Drop => {}
        }
    }
}

/// A byte stream to a receiver. Run the protocol on `reader` / `writer`,
/// then call [`Connection::finish`].
pub struct Connection {
    /// What the receiver writes (its stdout).
    pub reader: Box<dyn AsyncRead + Unpin + Send>,
    /// What the receiver reads (its stdin).
    pub writer: Box<dyn AsyncWrite + Unpin + Send>,
    peer: String,
    end: End,
}

/// The transport-specific part kept for `finish`.
pub(crate) enum End {
    Ssh(ssh::SshEnd),
    Local(local::LocalEnd),
}

impl Connection {
    pub(crate) fn new(
        reader: Box<dyn AsyncRead + Unpin + Send>,
        writer: Box<dyn AsyncWrite + Unpin + Send>,
        peer: String,
        end: End,
    ) -> Connection {
        Connection {
            reader,
            writer: Box::new(ShutdownOnce {
                inner: writer,
                done: false,
            }),
            peer,
            end,
        }
    }

    /// Who is on the other end, for messages: `certsync@mail.example.com:22`
    /// or `local certsync-receive`.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Close our side (the receiver sees EOF on stdin) and wait, at most
    /// [`FINISH_TIMEOUT`], for the receiver to exit. Returns its exit
    /// status, or `None` when it ended without one (killed by a signal, or
    /// the connection dropped).
    pub async fn finish(self) -> Result<Option<u32>, TransportError> {
        self.finish_within(FINISH_TIMEOUT).await
    }

    /// [`Connection::finish`] with a caller-chosen bound.
    pub async fn finish_within(self, limit: Duration) -> Result<Option<u32>, TransportError> {
        let Connection {
            reader,
            mut writer,
            peer,
            end,
        } = self;
        // A failed shutdown means the peer is already gone; its exit status
        // (if any) is still worth collecting, so this is not an error.
        let _ = writer.shutdown().await;
        drop(writer);
        // Whatever the receiver still writes is no longer wanted; dropping
        // the reader lets it finish instead of blocking on a full pipe.
        drop(reader);
        match end {
            End::Ssh(end) => end.finish(&peer, limit).await,
            End::Local(end) => end.finish(&peer, limit).await,
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Makes a second `shutdown` a no-op: the protocol code may close the
/// stream itself before `finish` does, and an SSH EOF sent twice is a
/// protocol error in the peer's log.
struct ShutdownOnce {
    inner: Box<dyn AsyncWrite + Unpin + Send>,
    done: bool,
}

impl AsyncWrite for ShutdownOnce {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let result = std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        self.done = true;
        Poll::Ready(result)
    }
}

/// Connect to a configured `[[target]]`, over SSH or locally.
pub async fn connect(target: &Target) -> Result<Connection, TransportError> {
    match target.transport {
        TransportKind::Ssh => ssh::connect(&ssh::SshTarget::from_config(target)?).await,
        TransportKind::Local => local::connect(&local::LocalTarget::from_config(target)?).await,
    }
}

/// Why a receiver could not be reached, or did not end cleanly. Every
/// message names the host (or program) and, where there is one, the fix.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("[[target]] {target:?}: {what}")]
    Config { target: String, what: String },

    #[error("cannot connect to {host}:{port}: {source}; is sshd running there and reachable?")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },

    #[error("timed out after {secs}s connecting to {host}:{port} (waiting for {stage}); is sshd running there, and does a firewall drop the connection?")]
    Timeout {
        host: String,
        port: u16,
        secs: u64,
        stage: &'static str,
    },

    #[error("the host key of {host}:{port} is not known: it offered {algorithm} {fingerprint}, and {} lists no key for {host}. Check that fingerprint out of band (on the host: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add it: ssh-keyscan -p {port} {host} >> {}", known_hosts.display(), known_hosts.display())]
    UnknownHostKey {
        host: String,
        port: u16,
        algorithm: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },

    #[error("the host key of {host}:{port} HAS CHANGED: it offered {algorithm} {fingerprint}, which matches none of the keys {} lists for it ({lines}). The host may have been reinstalled, or someone is intercepting the connection. Check the fingerprint out of band; if the change is expected, remove the old line(s) and run: ssh-keyscan -p {port} {host} >> {}", known_hosts.display(), known_hosts.display())]
    ChangedHostKey {
        host: String,
        port: u16,
        algorithm: String,
        fingerprint: String,
        known_hosts: PathBuf,
        lines: String,
    },

    #[error("the host key of {host}:{port} ({algorithm} {fingerprint}) is marked @revoked in {} (line {line}): refusing to connect", known_hosts.display())]
    RevokedHostKey {
        host: String,
        port: u16,
        algorithm: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },

    #[error("the host key of {host}:{port} does not match the pinned host_key: it offered {algorithm} {fingerprint}, the config pins {pinned_algorithm} {pinned_fingerprint}. If the host key was changed on purpose, check the new fingerprint out of band and update host_key (ssh-keyscan -p {port} {host} prints it)")]
    PinnedHostKeyMismatch {
        host: String,
        port: u16,
        algorithm: String,
        fingerprint: String,
        pinned_algorithm: String,
        pinned_fingerprint: String,
    },

    #[error("the pinned host_key for {host} is not a public key line ({reason}): write it as \"ssh-ed25519 AAAA…\", as ssh-keyscan prints it")]
    BadPinnedKey { host: String, reason: String },

    #[error("{source}; to trust {host}:{port}, check its host key fingerprint out of band, then run: ssh-keyscan -p {port} {host} >> {}", source.path.display())]
    KnownHosts {
        host: String,
        port: u16,
        #[source]
        source: KnownHostsError,
    },

    #[error("cannot use the private key {}: {reason}", path.display())]
    Identity { path: PathBuf, reason: String },

    #[error("the private key {} is accessible by group or others (mode {mode:03o}): run chmod 600 {}", path.display(), path.display())]
    IdentityMode { path: PathBuf, mode: u32 },

    #[error("{user}@{host}:{port} refused the key {} ({fingerprint}): is its public key ({}.pub) in ~{user}/.ssh/authorized_keys on {host} with the certsync-receive forced command? (certsync-push keygen prints that line)", identity.display(), identity.display())]
    AuthFailed {
        user: String,
        host: String,
        port: u16,
        identity: PathBuf,
        fingerprint: String,
    },

    #[error("{host}:{port} refused to run the receiver (exec request denied): check the forced command in ~{user}/.ssh/authorized_keys on {host}")]
    ExecRefused {
        user: String,
        host: String,
        port: u16,
    },

    #[error("SSH error with {host}:{port} during {stage}: {source}")]
    Ssh {
        host: String,
        port: u16,
        stage: &'static str,
        #[source]
        source: russh::Error,
    },

    #[error("cannot start the local receiver {program:?}: {source}; is it installed and on PATH?")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("waiting for the local receiver {program:?}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{peer} did not exit within {secs}s after we closed our side; it was disconnected")]
    FinishTimeout { peer: String, secs: u64 },
}

impl TransportError {
    /// The exit code this error stands for: a config mistake is a usage
    /// error (2); anything met on the way to the receiver is a runtime
    /// failure (1), host key refusals included (nothing was attempted).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            TransportError::Config { .. }
            | TransportError::BadPinnedKey { .. }
            | TransportError::IdentityMode { .. } => ExitCode::Usage,
            _ => ExitCode::Runtime,
        }
    }

    /// Is this a refusal of the host's key (unknown, changed, revoked,
    /// pinned mismatch)?
    pub fn is_host_key_refusal(&self) -> bool {
        matches!(
            self,
            TransportError::UnknownHostKey { .. }
                | TransportError::ChangedHostKey { .. }
                | TransportError::RevokedHostKey { .. }
                | TransportError::PinnedHostKeyMismatch { .. }
        )
    }
}
