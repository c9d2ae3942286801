//! Names both sides and the operator's files agree on (docs/contract.md).
//!
//! One copy of each: the pusher's key line, the receiver's `authorized-key`,
//! the tests and the docs all use these.

/// The forced command in `authorized_keys`: the receiver's `serve`
/// subcommand, run by sshd whatever the client asks for
/// (docs/contract.md "`certsync-receive`").
pub const FORCED_COMMAND: &str = "certsync-receive serve";
