//! Exit codes shared by `certsync-push` and `certsync-receive` (contract,
//! DESIGN.md "Exit codes"). Scripts and monitoring depend on these numbers.

use serde::{Deserialize, Serialize};

/// The process exit code. Ordered so that the worst outcome of several
/// (targets, certificates) is the maximum.
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
    /// 1: runtime failure (network, I/O, Docker).
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

    /// The worse of two outcomes. "Worse" follows severity for an operator,
    /// not the number: a refusal (3) or a failed reload (4) says more than a
    /// runtime failure (1), but a usage error (2) means nothing was tried.
    pub fn worst(self, other: ExitCode) -> ExitCode {
        std::cmp::max(self, other)
    }
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
        assert_eq!(
            ExitCode::Success.worst(ExitCode::Unverified),
            ExitCode::Unverified
        );
        assert_eq!(ExitCode::Success.worst(ExitCode::Held), ExitCode::Held);
        assert_eq!(ExitCode::Held.worst(ExitCode::Refused), ExitCode::Refused);
        assert_eq!(ExitCode::Held.worst(ExitCode::Runtime), ExitCode::Runtime);
    }
}
