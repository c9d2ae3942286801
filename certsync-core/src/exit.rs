//! Exit codes shared by `certsync-push` and `certsync-receive`
//! (docs/contract.md "Exit codes"). Scripts and monitoring depend on these
//! numbers.
//!
//! This file holds the one copy of the table: [`ExitCode::ALL`] with
//! [`ExitCode::meaning`]. Both binaries' `--help` print it through
//! [`help_table`]; a test holds docs/contract.md and the man pages to it.

use serde::{Deserialize, Serialize};

/// The process exit code (docs/contract.md "Exit codes"). The variants
/// are declared in order of severity, not of number, so that the worst
/// outcome of several (targets, certificates) is the maximum: 0, 5, 1, 2,
/// 3, 4.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum ExitCode {
    /// 0: success, or nothing to do.
    #[default]
    Success,
    /// 5: validated, but held for DNS: the new pair matches none of the
    /// DNSSEC-validated TLSA records, so it stays staged and the installed
    /// pair keeps serving (docs/contract.md "DANE"). Ordered just above
    /// success: nothing failed, the operator has to publish a record, and
    /// any real failure in the same run says more.
    Held,
    /// 1: runtime failure (network, SSH, I/O, Docker, inconsistent live dir).
    Runtime,
    /// 2: usage or config error.
    Usage,
    /// 3: refused by validation (bad cert, wrong name, mismatch, rollback).
    Refused,
    /// 4: installed, but a reload or the served-certificate check failed.
    Unverified,
}

impl ExitCode {
    /// The numeric code the process exits with.
    pub fn code(self) -> u8 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Runtime => 1,
            ExitCode::Usage => 2,
            ExitCode::Refused => 3,
            ExitCode::Unverified => 4,
            ExitCode::Held => 5,
        }
    }

    /// Every exit code, in numeric order.
    pub const ALL: [ExitCode; 6] = [
        ExitCode::Success,
        ExitCode::Runtime,
        ExitCode::Usage,
        ExitCode::Refused,
        ExitCode::Unverified,
        ExitCode::Held,
    ];

    /// What the code means, in one line an operator reads in `--help`.
    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Success => "success, or nothing to do",
            ExitCode::Runtime => "runtime failure (network, SSH, I/O, Docker, inconsistent live dir)",
            ExitCode::Usage => "usage or config error",
            ExitCode::Refused => {
                "refused by validation (bad cert, wrong name, mismatch, rollback)"
            }
            ExitCode::Unverified => {
                "installed, but a reload or the served-certificate check failed"
            }
            ExitCode::Held => {
                "held for DNS: the new pair stays staged until a DNSSEC-validated TLSA record matches it (DANE)"
            }
        }
    }

    /// The inverse of [`ExitCode::code`]; unknown numbers are runtime failures.
    pub fn from_code(code: u8) -> ExitCode {
        match code {
            0 => ExitCode::Success,
            2 => ExitCode::Usage,
            3 => ExitCode::Refused,
            4 => ExitCode::Unverified,
            5 => ExitCode::Held,
            _ => ExitCode::Runtime,
        }
    }

    /// The worse of two outcomes. "Worse" follows the declaration order
    /// (severity for an operator), not the number: held for DNS (5) only
    /// outranks success; a usage error (2) outranks a runtime failure (1);
    /// a refusal (3) outranks both, and a pair installed but not proven
    /// served (4) outranks everything: the host changed, and nobody knows
    /// yet what it serves.
    pub fn worst(self, other: ExitCode) -> ExitCode {
        std::cmp::max(self, other)
    }
}

/// The exit-code table as both binaries' `--help` print it:
/// a heading, then one `  N  meaning` line per code.
pub fn help_table() -> String {
    let mut out = String::from("Exit codes:\n");
    for c in ExitCode::ALL {
        out.push_str(&format!("  {}  {}\n", c.code(), c.meaning()));
    }
    out
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_the_contract() {
        let all = [
            (ExitCode::Success, 0),
            (ExitCode::Runtime, 1),
            (ExitCode::Usage, 2),
            (ExitCode::Refused, 3),
            (ExitCode::Unverified, 4),
            (ExitCode::Held, 5),
        ];
        for (c, n) in all {
            assert_eq!(c.code(), n);
            assert_eq!(ExitCode::from_code(n), c);
        }
        assert_eq!(ExitCode::from_code(77), ExitCode::Runtime);
        for (i, c) in ExitCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(c.code()), i, "ALL is in numeric order");
        }
        let table = help_table();
        assert!(table.starts_with("Exit codes:\n  0  success"));
        assert_eq!(table.lines().count(), 7);
        assert_eq!(
            ExitCode::Success.worst(ExitCode::Unverified),
            ExitCode::Unverified
        );
        assert_eq!(ExitCode::Success.worst(ExitCode::Held), ExitCode::Held);
        assert_eq!(ExitCode::Held.worst(ExitCode::Refused), ExitCode::Refused);
        assert_eq!(ExitCode::Held.worst(ExitCode::Runtime), ExitCode::Runtime);
        // The severity order docs/contract.md "Exit codes" states.
        let mut by_severity = ExitCode::ALL;
        by_severity.sort();
        let order: Vec<u8> = by_severity.iter().map(|c| c.code()).collect();
        assert_eq!(order, [0, 5, 1, 2, 3, 4]);
    }
}
