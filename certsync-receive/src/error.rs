//! The receiver's error type. Each variant maps to one exit code
//! (DESIGN.md "Exit codes"), chosen here and nowhere else.

use std::path::PathBuf;

use certsync_core::config::ConfigError;
use certsync_core::protocol::ProtocolError;
use certsync_core::validate::ValidationError;
use certsync_core::ExitCode;

use crate::install::InstallError;
use crate::stage::StageError;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Settings(String),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("refused: {0}")]
    Refused(#[from] ValidationError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("no [[cert]] named {name:?} in {config}; the names in receive.toml are: {known}")]
    UnknownCert {
        name: String,
        config: PathBuf,
        known: String,
    },
    #[error("cannot read {path}: {source}")]
    ReadInput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Usage(String),
}

impl ReceiveError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ReceiveError::Config(_)
            | ReceiveError::Settings(_)
            | ReceiveError::UnknownCert { .. }
            | ReceiveError::Usage(_) => ExitCode::Usage,
            ReceiveError::Refused(_) => ExitCode::Refused,
            ReceiveError::Protocol(_)
            | ReceiveError::Stage(_)
            | ReceiveError::Install(_)
            | ReceiveError::ReadInput { .. }
            | ReceiveError::Runtime(_) => ExitCode::Runtime,
        }
    }
}
