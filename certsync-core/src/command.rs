//! Running an operator's command (the receiver's `hook`, a `[notify]`
//! `command`) within bounds.
//!
//! Invariants: no shell (the program and its arguments are given apart);
//! the command gets its own process group, killed whole at the time
//! limit, so a script's children do not outlive it or hold our pipes; at
//! most [`MAX_CAPTURED`] bytes of each output stream are kept, the rest
//! read and dropped, so a chatty command can neither block on a full pipe
//! nor fill our memory. The caller decides what of the output to show.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Bytes kept of each of a command's streams (stdout, stderr).
pub const MAX_CAPTURED: usize = 16 * 1024;

/// How one run ended.
#[derive(Debug)]
pub struct Ran {
    /// The exit code, when it exited on its own.
    pub exit_code: Option<i32>,
    /// Killed at the time limit.
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Run `command` (program, arguments; no shell) with `env` added to this
/// process's environment and `stdin` written to it, for at most `limit`.
/// Past the limit its whole process group is killed. Each output stream
/// is read to its end, the first [`MAX_CAPTURED`] bytes kept.
pub async fn run_bounded(
    command: &[String],
    env: &[(&str, String)],
    stdin: &[u8],
    limit: Duration,
) -> std::io::Result<Ran> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that the time limit kills whatever it
        // started too (a shell script's children hold our pipes open).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pgid = child.id();
    let mut input = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let feed = async {
        if let Some(mut w) = input.take() {
            // A hook that does not read its stdin closes the pipe: fine.
            let _ = w.write_all(stdin).await;
            let _ = w.shutdown().await;
        }
    };
    let work = async {
        let (status, out, err, ()) = tokio::join!(
            child.wait(),
            capture(stdout.as_mut()),
            capture(stderr.as_mut()),
            feed
        );
        (status, out, err)
    };
    let result = tokio::time::timeout(limit, work).await;
    match result {
        Ok((status, stdout, stderr)) => {
            let status = status?;
            Ok(Ran {
                exit_code: status.code(),
                timed_out: false,
                stdout,
                stderr,
            })
        }
        Err(_) => {
            if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) with a negative pid signals the process
                // group we created for this child; no memory is touched.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            Ok(Ran {
                exit_code: None,
                timed_out: true,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })
        }
    }
}

/// Read a stream to its end, keeping the first [`MAX_CAPTURED`] bytes.
async fn capture<R: AsyncRead + Unpin>(stream: Option<&mut R>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(stream) = stream else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_CAPTURED.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}
