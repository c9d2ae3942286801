//! The per-certificate `hook`: an operator's command run after a
//! successful install, for whatever certsync does not reload itself (a
//! platform's secret store, a NAS, a hypervisor, a home-automation box).
//!
//! Invariants (docs/contract.md "The hook"):
//! - It runs only after an install that wrote the pair: never on "nothing
//!   to do", never in a dry run, never after a failed install.
//! - It runs as whoever runs the install: root's `deploy` in handoff mode.
//!   The program is an absolute path (checked with the config); no shell,
//!   no PATH lookup.
//! - The key never appears on its command line or in its environment: it
//!   gets `CERTSYNC_KEY_PATH`, the file root just wrote 0600.
//! - Its environment adds `CERTSYNC_NAME`, `CERTSYNC_CERT_PATH`,
//!   `CERTSYNC_KEY_PATH`, `CERTSYNC_FINGERPRINT` (the leaf's SHA-256,
//!   `AB:CD:…` as everywhere in certsync) and `CERTSYNC_HOSTNAMES` (the
//!   leaf's names, space separated); its stdin is this certificate's
//!   report so far, as JSON (no key material is ever in a report).
//! - It is bounded in time (`hook_timeout`, killed with its whole process
//!   group) and in output: at most `certsync_core::command::MAX_CAPTURED` bytes of each stream
//!   are kept, the rest read and dropped, and only a printable tail is
//!   logged and reported.
//! - Its failure (non-zero exit, no start, killed) is exit 4: the pair is
//!   installed, what follows it is not done. The exit code is in the
//!   report's `hook` field.

use std::path::PathBuf;
use std::time::Duration;

use certsync_core::command::{self, Ran};
use certsync_core::report::{CertReport, HookOutcome, Step};
use certsync_core::validate::ValidatedBundle;
use certsync_core::ExitCode;

use crate::systems::docker::quote_output;

/// A configured hook, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Program (absolute) and arguments.
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// What the hook is told about the install.
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub name: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub fingerprint: String,
    pub hostnames: Vec<String>,
}

impl HookEnv {
    pub fn of(name: &str, cert_path: PathBuf, key_path: PathBuf, pair: &ValidatedBundle) -> Self {
        HookEnv {
            name: name.to_string(),
            cert_path,
            key_path,
            fingerprint: pair.leaf_fingerprint().to_string(),
            hostnames: pair.info().sans.clone(),
        }
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CERTSYNC_NAME", self.name.clone()),
            ("CERTSYNC_CERT_PATH", self.cert_path.display().to_string()),
            ("CERTSYNC_KEY_PATH", self.key_path.display().to_string()),
            ("CERTSYNC_FINGERPRINT", self.fingerprint.clone()),
            ("CERTSYNC_HOSTNAMES", self.hostnames.join(" ")),
        ]
    }
}

/// Run `hook` and write the step (and `report.hook`) into `report`.
pub async fn hook_step(hook: &Hook, env: &HookEnv, report: &mut CertReport) {
    let shown = hook.command.join(" ");
    // A report is plain data and always serialises; were it ever not to,
    // the hook still runs, with an empty stdin.
    let stdin = serde_json::to_vec(&*report).unwrap_or_default();
    let ran = match run(hook, env, &stdin).await {
        Ok(ran) => ran,
        Err(e) => {
            let msg = format!(
                "hook `{shown}` could not start: {e}; check that the program exists and is executable"
            );
            tracing::error!(cert = %env.name, "{msg}");
            report.hook = Some(HookOutcome {
                exit_code: None,
                timed_out: false,
            });
            report.failed(Step::Hook, msg, ExitCode::Unverified);
            return;
        }
    };
    let out = format!(
        "{}{}",
        tail("stdout", &ran.stdout),
        tail("stderr", &ran.stderr)
    );
    let outcome = HookOutcome {
        exit_code: ran.exit_code,
        timed_out: ran.timed_out,
    };
    report.hook = Some(outcome.clone());
    match outcome {
        HookOutcome {
            exit_code: Some(0), ..
        } => {
            tracing::info!(cert = %env.name, "hook `{shown}` succeeded{out}");
            report.done(Step::Hook, format!("`{shown}` exited 0{out}"));
        }
        HookOutcome {
            timed_out: true, ..
        } => {
            let msg = format!(
                "`{shown}` did not finish within {} s (hook_timeout) and was killed{out}",
                hook.timeout.as_secs()
            );
            tracing::error!(cert = %env.name, "hook {msg}");
            report.failed(Step::Hook, msg, ExitCode::Unverified);
        }
        HookOutcome {
            exit_code: Some(code),
            ..
        } => {
            let msg = format!("`{shown}` exited {code}{out}");
            tracing::error!(cert = %env.name, "hook {msg}");
            report.failed(Step::Hook, msg, ExitCode::Unverified);
        }
        HookOutcome {
            exit_code: None, ..
        } => {
            let msg = format!("`{shown}` was killed by a signal{out}");
            tracing::error!(cert = %env.name, "hook {msg}");
            report.failed(Step::Hook, msg, ExitCode::Unverified);
        }
    }
}

/// `; stdout: "…"` for a stream that said something.
fn tail(stream: &str, bytes: &[u8]) -> String {
    match quote_output(bytes) {
        q if q.is_empty() => String::new(),
        q => format!("; {stream}{q}"),
    }
}

async fn run(hook: &Hook, env: &HookEnv, stdin: &[u8]) -> std::io::Result<Ran> {
    command::run_bounded(&hook.command, &env.vars(), stdin, hook.timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            name: "mail".into(),
            cert_path: "/ssl/cert.pem".into(),
            key_path: "/ssl/key.pem".into(),
            fingerprint: "AB:CD".into(),
            hostnames: vec!["a.example.com".into(), "b.example.com".into()],
        }
    }

    fn sh(script: &str, secs: u64) -> Hook {
        Hook {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: Duration::from_secs(secs),
        }
    }

    #[tokio::test]
    async fn output_is_bounded_and_printable() {
        let mut r = CertReport::new("mail", None);
        let hook = sh(
            "printf '\\033[31mred\\n'; head -c 200000 /dev/zero | tr '\\0' x; exit 3",
            10,
        );
        hook_step(&hook, &env(), &mut r).await;
        assert_eq!(r.exit, ExitCode::Unverified);
        assert_eq!(r.hook.as_ref().unwrap().exit_code, Some(3));
        let msg = &r.steps[0].message;
        assert!(msg.contains("exited 3"), "{msg}");
        assert!(!msg.contains('\u{1b}'), "{msg}");
        assert!(msg.len() < 2048, "{}", msg.len());
    }

    #[tokio::test]
    async fn a_missing_program_is_a_failed_hook() {
        let mut r = CertReport::new("mail", None);
        let hook = Hook {
            command: vec!["/nonexistent/certsync-hook".into()],
            timeout: Duration::from_secs(5),
        };
        hook_step(&hook, &env(), &mut r).await;
        assert_eq!(r.exit, ExitCode::Unverified);
        assert!(r.steps[0].message.contains("could not start"), "{r}");
    }
}
