//! `certsync-receive authorized-key`: the restricted authorized_keys line
//! for a pusher's public key.

use std::path::Path;

use crate::error::ReceiveError;

/// The forced command the line carries.
pub const FORCED_COMMAND: &str = "certsync-receive serve";

/// Read the public key file and build the line.
pub fn print(pubkey: &Path, from: Option<&str>) -> Result<String, ReceiveError> {
    let text = std::fs::read_to_string(pubkey).map_err(|source| ReceiveError::ReadInput {
        path: pubkey.to_path_buf(),
        source,
    })?;
    let _ = (text, from);
    Err(ReceiveError::Runtime(
        "authorized-key is not wired in yet".into(),
    ))
}
