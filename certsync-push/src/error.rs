//! The push side's errors as the binary reports them, and the one place
//! that maps them to exit codes (docs/contract.md "Exit codes").
//!
//! Errors of one target or one certificate do not end a pass: they become
//! that target's result line (see `transport::TransportError`,
//! `session::SessionError`, each with its own `exit_code`); a [`PushError`] is what stops a whole
//! command: a bad config, an unknown `--target`, a live root that is not
//! there, a key file that exists already.

use std::path::PathBuf;

use certsync_core::config::ConfigError;
use certsync_core::ExitCode;
use thiserror::Error;

use crate::keygen::KeygenError;
use crate::source::SourceError;

#[derive(Debug, Error)]
pub enum PushError {
    #[error("{0}")]
    Config(#[from] ConfigError),

    #[error("--target {name:?} is not a [[target]] in {}; configured: {known}", config.display())]
    UnknownTarget {
        name: String,
        config: PathBuf,
        known: String,
    },

    #[error("[[cert]] {cert:?}: {source}")]
    Source {
        cert: String,
        #[source]
        source: SourceError,
    },

    #[error("{0}")]
    Discover(SourceError),

    #[error("{0}")]
    Keygen(#[from] KeygenError),

    #[error("{0}")]
    Units(#[from] certsync_core::units::UnitsError),

    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl PushError {
    /// The exit code for this error (docs/contract.md "Exit codes"): 2 for
    /// a mistake in the config or the command line (a missing source dir
    /// included), 1 for the rest. Refusals (3), failed reloads (4) and held
    /// pairs (5) come from a receiver, in a target's result, never here.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PushError::Config(_) | PushError::UnknownTarget { .. } => ExitCode::Usage,
            PushError::Source { source, .. } | PushError::Discover(source) => source_exit(source),
            PushError::Keygen(KeygenError::Exists { .. } | KeygenError::BadComment { .. }) => {
                ExitCode::Usage
            }
            PushError::Units(certsync_core::units::UnitsError::BadPath { .. }) => ExitCode::Usage,
            PushError::Keygen(_) | PushError::Output(_) | PushError::Units(_) => ExitCode::Runtime,
        }
    }
}

/// A source that is not there, or is not a directory, is a mistake in the
/// config (exit 2); an inconsistent or unreadable one is a runtime failure.
pub fn source_exit(e: &SourceError) -> ExitCode {
    match e {
        SourceError::NoSuchDir { .. } | SourceError::NotADirectory { .. } => ExitCode::Usage,
        _ => ExitCode::Runtime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn codes_follow_the_contract() {
        let e = PushError::UnknownTarget {
            name: "x".into(),
            config: "/etc/certsync/push.toml".into(),
            known: "mailcow".into(),
        };
        assert_eq!(e.exit_code(), ExitCode::Usage);
        assert!(e.to_string().contains("/etc/certsync/push.toml"), "{e}");
        let missing = SourceError::NoSuchDir {
            path: Path::new("/nope").into(),
            hint: "",
        };
        assert_eq!(source_exit(&missing), ExitCode::Usage);
    }
}
