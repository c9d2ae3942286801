//! `transport = "local"`: the receiver runs on this host, so no SSH. The
//! receiver command is spawned with its stdin/stdout as the protocol
//! stream; its stderr is relayed to our log line by line, as over SSH
//! (cleaned and capped, see [`super::StderrLog`]).
//!
//! The command is an argv list (`command = ["certsync-receive", "--config",
//! "…"]`), executed directly: never a shell string, so nothing in the
//! config is ever interpreted by a shell. The child is killed if the
//! connection is dropped without `finish`. Without a `command` it is the
//! forced command an SSH receiver runs ([`FORCED_COMMAND`]).

use std::process::Stdio;
use std::time::Duration;

use certsync_core::config::Target;
use certsync_core::contract::FORCED_COMMAND;
use tokio::process::{Child, Command};

use tokio::io::AsyncReadExt;

use super::{Connection, End, StderrLog, TransportError};

/// A local receiver to spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTarget {
    /// Program and arguments; `argv[0]` is looked up on `PATH` as usual.
    pub argv: Vec<String>,
}

impl LocalTarget {
    /// From a `[[target]]` with `transport = "local"`.
    pub fn from_config(target: &Target) -> Result<LocalTarget, TransportError> {
        let argv = match &target.command {
            Some(argv) => argv.clone(),
            // The same command sshd forces on the receiving host.
            None => FORCED_COMMAND.split(' ').map(str::to_string).collect(),
        };
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(TransportError::Config {
                target: target.name.clone(),
                what: "`command` must start with the receiver program, e.g. [\"certsync-receive\", \"--config\", \"/etc/certsync/receive.toml\"]".into(),
            });
        }
        Ok(LocalTarget { argv })
    }

    fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or("")
    }
}

/// Spawn the receiver and return its stdin/stdout as a [`Connection`].
pub async fn connect(target: &LocalTarget) -> Result<Connection, TransportError> {
    let program = target.program().to_string();
    let mut child = Command::new(&program)
        .args(target.argv.iter().skip(1))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| TransportError::Spawn {
            program: program.clone(),
            source,
        })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        // Both were requested as pipes above; tokio always provides them.
        return Err(TransportError::Spawn {
            program,
            source: std::io::Error::other("no stdin/stdout pipe"),
        });
    };
    let peer = format!("local {program}");
    let stderr = child.stderr.take().map(|mut stderr| {
        let mut log = StderrLog::new(&peer);
        // Ends at EOF: when the receiver (and whatever inherited its
        // stderr) has exited, or was killed with the connection.
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => log.push(&buf[..n]),
                }
            }
            log.flush();
        })
    });
    Ok(Connection::new(
        Box::new(stdout),
        Box::new(stdin),
        peer,
        End::Local(LocalEnd {
            child,
            program,
            stderr,
        }),
    ))
}

/// The child process, kept for `finish`.
pub(crate) struct LocalEnd {
    child: Child,
    program: String,
    /// The task relaying its stderr.
    stderr: Option<tokio::task::JoinHandle<()>>,
}

/// How long, after the receiver exited, its last stderr lines may take to
/// reach our log (a grandchild may hold the pipe open; we do not wait for
/// that).
const STDERR_DRAIN: Duration = Duration::from_secs(1);

impl LocalEnd {
    /// Let the relay log the receiver's last lines, bounded.
    async fn drain_stderr(&mut self) {
        if let Some(task) = self.stderr.take() {
            let _ = tokio::time::timeout(STDERR_DRAIN, task).await;
        }
    }

    pub(crate) async fn finish(
        mut self,
        peer: &str,
        limit: Duration,
    ) -> Result<Option<u32>, TransportError> {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(waited) => waited.map_err(|source| TransportError::Wait {
                program: self.program.clone(),
                source,
            })?,
            Err(_) => {
                // kill_on_drop would do it too; do it now so the zombie is
                // reaped before we report.
                let _ = self.child.kill().await;
                self.drain_stderr().await;
                return Err(TransportError::FinishTimeout {
                    peer: peer.to_string(),
                    secs: limit.as_secs(),
                });
            }
        };
        self.drain_stderr().await;
        match status.code() {
            Some(code) => Ok(Some(code as u32)),
            None => {
                use std::os::unix::process::ExitStatusExt;
                tracing::warn!(
                    "{peer} was killed by signal {}",
                    status.signal().unwrap_or(0)
                );
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn target(argv: &[&str]) -> LocalTarget {
        LocalTarget {
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn round_trip_through_cat() {
        let mut conn = connect(&target(&["cat"])).await.unwrap();
        conn.writer.write_all(b"hello certsync\n").await.unwrap();
        conn.writer.flush().await.unwrap();
        let mut buf = [0u8; 15];
        conn.reader.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello certsync\n");
        assert_eq!(conn.finish().await.unwrap(), Some(0));
    }

    #[tokio::test]
    async fn exit_code_is_reported_and_argv_is_not_a_shell() {
        // `sh -c` is used here on purpose to produce an exit code; the
        // argument after it is a single argv element, not re-split.
        let conn = connect(&target(&["sh", "-c", "cat >/dev/null; exit 3"]))
            .await
            .unwrap();
        assert_eq!(conn.finish().await.unwrap(), Some(3));

        // A program name with shell syntax is looked up literally.
        let err = connect(&target(&["true; touch /tmp/certsync-should-not-exist"]))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Spawn { .. }), "{err}");
        assert!(!std::path::Path::new("/tmp/certsync-should-not-exist").exists());
    }

    #[tokio::test]
    async fn missing_program_names_it() {
        let err = connect(&target(&["/nonexistent/certsync-receive", "serve"]))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/certsync-receive"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn signal_gives_none_and_hang_is_bounded() {
        let conn = connect(&target(&["sh", "-c", "kill -9 $$"])).await.unwrap();
        assert_eq!(conn.finish().await.unwrap(), None);

        // Ignores EOF on stdin and would run for a minute.
        let conn = connect(&target(&["sleep", "60"])).await.unwrap();
        let err = conn
            .finish_within(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::FinishTimeout { .. }), "{err}");
    }
}
