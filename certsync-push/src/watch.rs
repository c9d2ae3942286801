//! `certsync-push watch`: run until stopped, push on change.
//!
//! Not written yet: this placeholder keeps the subcommand in the CLI and
//! says so. Until then, run `certsync-push push` from the
//! certsync-push.path and certsync-push.timer units.

use std::path::Path;

use certsync_core::ExitCode;

/// Placeholder: refuses with a usage error naming the alternative.
pub async fn run(config_path: &Path) -> ExitCode {
    tracing::error!(
        "watch is not available yet in this build; run `certsync-push --config {} push` from certsync-push.path and certsync-push.timer instead",
        config_path.display()
    );
    ExitCode::Usage
}
