//! The structured result the receiver sends back and both sides print
//! (docs/contract.md "The receiving pipeline", step 9, and the `report`
//! frame of "Protocol v1"): for each certificate, each pipeline step with
//! what was done.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::exit::ExitCode;
use crate::fingerprint::Fingerprint;

/// The receiving pipeline's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Read,
    Stage,
    Validate,
    Compare,
    Install,
    Reload,
    Verify,
    /// The operator's `hook` command, after a successful install.
    Hook,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Step::Read => "read",
            Step::Stage => "stage",
            Step::Validate => "validate",
            Step::Compare => "compare",
            Step::Install => "install",
            Step::Reload => "reload",
            Step::Verify => "verify",
            Step::Hook => "hook",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Done,
    Skipped,
    Failed,
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepStatus::Done => "done",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub step: Step,
    pub status: StepStatus,
    pub message: String,
    /// What the line is about, when a step has one line per thing: a
    /// verify endpoint (`127.0.0.1:587 submission`), a container service
    /// or a systemd unit. Absent on the wire when none, defaulted when
    /// absent, like `warnings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// How many failed things a [`CertReport::failure_summary`] names before
/// it says "and N more".
pub const SUMMARY_NAMES: usize = 3;

/// The outcome for one certificate name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertReport {
    pub name: String,
    /// The leaf that was offered (or installed).
    pub leaf: Option<Fingerprint>,
    pub exit: ExitCode,
    /// True when the receiver already had this exact pair.
    pub nothing_to_do: bool,
    pub steps: Vec<StepResult>,
    /// What the operator should know although nothing failed: names the
    /// new certificate no longer covers, per-domain folders left alone.
    /// They never change `exit`. Absent on the wire when empty, and
    /// defaulted when absent, so peers without it still understand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The exit status of this certificate's `hook`, when one ran: the
    /// process's code, or `None` when it was killed (time limit, signal)
    /// or could not start. Absent on the wire when no hook ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookOutcome>,
    /// Held for DNS (exit 5, docs/contract.md "DANE"): the TLSA records
    /// that would let the pair through, as zone-file lines
    /// (`_25._tcp.mail.example.com. IN TLSA 3 1 1 <hex>`). Absent on the
    /// wire when empty, and defaulted when absent, like `warnings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

/// What became of a `hook` run (see `CertReport::hook`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    /// The exit code, when the hook exited on its own.
    pub exit_code: Option<i32>,
    /// Killed at its time limit.
    #[serde(default)]
    pub timed_out: bool,
}

impl CertReport {
    pub fn new(name: &str, leaf: Option<Fingerprint>) -> CertReport {
        CertReport {
            name: name.to_string(),
            leaf,
            exit: ExitCode::Success,
            nothing_to_do: false,
            steps: Vec::new(),
            warnings: Vec::new(),
            hook: None,
            publish: Vec::new(),
        }
    }

    /// Record a warning: said to the operator, no effect on `exit`.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    pub fn done(&mut self, step: Step, message: impl Into<String>) {
        self.push(step, StepStatus::Done, message, ExitCode::Success);
    }

    pub fn skipped(&mut self, step: Step, message: impl Into<String>) {
        self.push(step, StepStatus::Skipped, message, ExitCode::Success);
    }

    /// Record a failed step; the report's exit becomes the worse of the two.
    pub fn failed(&mut self, step: Step, message: impl Into<String>, exit: ExitCode) {
        self.push(step, StepStatus::Failed, message, exit);
    }

    /// [`CertReport::failed`] for one of several things a step handles
    /// (an endpoint, a service, a unit), named by `subject`.
    pub fn failed_on(
        &mut self,
        step: Step,
        subject: impl Into<String>,
        message: impl Into<String>,
        exit: ExitCode,
    ) {
        self.failed(step, message, exit);
        if let Some(last) = self.steps.last_mut() {
            last.subject = Some(subject.into());
        }
    }

    fn push(&mut self, step: Step, status: StepStatus, message: impl Into<String>, exit: ExitCode) {
        self.exit = self.exit.worst(exit);
        self.steps.push(StepResult {
            step,
            status,
            message: message.into(),
            subject: None,
        });
    }

    /// One line for the last failed step, naming every thing that step
    /// failed on (at most [`SUMMARY_NAMES`], then "and N more"):
    /// `verify failed for 127.0.0.1:25 smtp and 127.0.0.1:993 imaps:
    /// <the last failure's message>`. `None` when nothing failed.
    pub fn failure_summary(&self) -> Option<String> {
        let last = self
            .steps
            .iter()
            .rev()
            .find(|s| s.status == StepStatus::Failed)?;
        let failed: Vec<&StepResult> = self
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed && s.step == last.step)
            .collect();
        if failed.len() < 2 {
            return Some(format!("{} failed: {}", last.step, last.message));
        }
        let mut names: Vec<&str> = Vec::new();
        for s in &failed {
            if let Some(n) = s.subject.as_deref() {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        let unnamed = failed.iter().filter(|s| s.subject.is_none()).count();
        let what = if names.is_empty() {
            format!("{} times", failed.len())
        } else {
            format!("for {}", name_list(&names, unnamed))
        };
        Some(format!("{} failed {what}: {}", last.step, last.message))
    }
}

/// `a`, `a and b`, `a, b and c`, `a, b, c and 2 more`: at most
/// [`SUMMARY_NAMES`] names, then how many more (`extra` unnamed included).
fn name_list(names: &[&str], extra: usize) -> String {
    let shown = &names[..names.len().min(SUMMARY_NAMES)];
    let more = names.len() - shown.len() + extra;
    match (shown, more) {
        ([one], 0) => (*one).to_string(),
        (_, 0) => {
            let (last, rest) = shown.split_last().map_or(("", &[][..]), |(l, r)| (*l, r));
            format!("{} and {last}", rest.join(", "))
        }
        (_, n) => format!("{} and {n} more", shown.join(", ")),
    }
}

/// Everything the receiver did in one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Report {
    pub dry_run: bool,
    pub certs: Vec<CertReport>,
}

impl Report {
    /// The worst exit over all certificates.
    pub fn exit(&self) -> ExitCode {
        self.certs
            .iter()
            .fold(ExitCode::Success, |acc, c| acc.worst(c.exit))
    }
}

impl fmt::Display for CertReport {
    /// One line per step: `mail: validate done: …`, then one line per
    /// warning: `mail: WARNING: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps = self
            .steps
            .iter()
            .map(|s| format!("{}: {} {}: {}", self.name, s.step, s.status, s.message));
        let warnings = self
            .warnings
            .iter()
            .map(|w| format!("{}: WARNING: {w}", self.name));
        for (i, line) in steps.chain(warnings).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            f.write_str(&line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_print_after_the_steps_and_never_change_the_exit() {
        let mut c = CertReport::new("mail", None);
        c.done(Step::Install, "installed /ssl/cert.pem");
        c.warn("no longer covers imap.example.com");
        assert_eq!(c.exit, ExitCode::Success);
        assert_eq!(
            c.to_string(),
            "mail: install done: installed /ssl/cert.pem\nmail: WARNING: no longer covers imap.example.com"
        );
    }

    #[test]
    fn the_summary_names_every_failed_endpoint_bounded() {
        let mut c = CertReport::new("mail", None);
        c.done(Step::Install, "installed");
        assert_eq!(c.failure_summary(), None);
        c.failed_on(
            Step::Verify,
            "127.0.0.1:25 smtp",
            "25 stale",
            ExitCode::Unverified,
        );
        assert_eq!(c.failure_summary().unwrap(), "verify failed: 25 stale");
        c.failed_on(
            Step::Verify,
            "127.0.0.1:993 imaps",
            "993 stale",
            ExitCode::Unverified,
        );
        assert_eq!(
            c.failure_summary().unwrap(),
            "verify failed for 127.0.0.1:25 smtp and 127.0.0.1:993 imaps: 993 stale"
        );
        for port in [465, 587, 995] {
            c.failed_on(
                Step::Verify,
                format!("127.0.0.1:{port} tls"),
                "stale",
                ExitCode::Unverified,
            );
        }
        assert_eq!(
            c.failure_summary().unwrap(),
            "verify failed for 127.0.0.1:25 smtp, 127.0.0.1:993 imaps, 127.0.0.1:465 tls and 2 more: stale"
        );
        let mut c = CertReport::new("mail", None);
        c.failed(Step::Reload, "a", ExitCode::Unverified);
        c.failed(Step::Reload, "b", ExitCode::Unverified);
        assert_eq!(c.failure_summary().unwrap(), "reload failed 2 times: b");
    }

    #[test]
    fn warnings_are_optional_on_the_wire() {
        // A report from a receiver that predates warnings still parses…
        let old = r#"{"name":"mail","leaf":null,"exit":"success","nothing_to_do":true,"steps":[]}"#;
        let parsed: CertReport = serde_json::from_str(old).unwrap();
        assert!(parsed.warnings.is_empty());
        // …and a report without warnings is sent exactly as before.
        assert!(!serde_json::to_string(&parsed).unwrap().contains("warnings"));
        let mut with = parsed.clone();
        with.warn("w");
        let back: CertReport =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back.warnings, vec!["w".to_string()]);
    }
}
