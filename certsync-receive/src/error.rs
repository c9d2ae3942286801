//! The commands' error: what stops a subcommand before it has a report.
//! Each variant keeps the error of the layer below, and maps to one exit
//! code (docs/contract.md "Exit codes"), chosen here and nowhere else.

use std::path::PathBuf;

use certsync_core::ExitCode;

use crate::commands::authorized_key::KeyFileError;
use crate::fsutil::ReadError;
use crate::pipeline::handoff::HandoffError;
use crate::pipeline::install::InstallError;
use crate::pipeline::lock::LockError;
use crate::pipeline::stage::StageError;
use crate::settings::SettingsError;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("no [[cert]] named {name:?} in {config}; the names in receive.toml are: {known}")]
    UnknownCert {
        name: String,
        config: PathBuf,
        known: String,
    },
    /// A file named on the command line.
    #[error(transparent)]
    Input(#[from] ReadError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
}

impl ReceiveError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ReceiveError::Settings(e) => e.exit_code(),
            ReceiveError::UnknownCert { .. }
            | ReceiveError::Input(ReadError::Refused { .. })
            | ReceiveError::KeyFile(_) => ExitCode::Usage,
            ReceiveError::Input(_)
            | ReceiveError::Stage(_)
            | ReceiveError::Lock(_)
            | ReceiveError::Install(_)
            | ReceiveError::Handoff(_) => ExitCode::Runtime,
        }
    }
}
