//! The structured result the receiver sends back and both sides print
//! (DESIGN.md step 8): for each certificate, each pipeline step with what
//! was done.

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
}

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
}

impl CertReport {
    pub fn new(name: &str, leaf: Option<Fingerprint>) -> CertReport {
        CertReport {
            name: name.to_string(),
            leaf,
            exit: ExitCode::Success,
            nothing_to_do: false,
            steps: Vec::new(),
        }
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

    fn push(&mut self, step: Step, status: StepStatus, message: impl Into<String>, exit: ExitCode) {
        self.exit = self.exit.worst(exit);
        self.steps.push(StepResult {
            step,
            status,
            message: message.into(),
        });
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
    /// One line per step: `mail: validate done: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {} {}: {}", self.name, s.step, s.status, s.message)?;
        }
        Ok(())
    }
}
