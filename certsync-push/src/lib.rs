//! certsync-push: the NPM side.
//!
//! source (the certbot live dir) → consistent pair → offer → send → result:
//! [`source`] reads a consistent pair through certbot's symlinks,
//! [`discover`] lists live dirs, [`transport`] reaches the receiver over SSH
//! or locally, [`session`] speaks the protocol, [`push`] runs one pass over
//! every target, [`status`] compares local and installed fingerprints,
//! [`watch`] pushes on change, [`keygen`] makes the pusher's key;
//! [`untrusted`] makes what a receiver says safe to log; [`units`] points
//! certsync-push.path at the configured live dirs.

pub mod cli;
pub mod discover;
pub mod error;
pub mod keygen;
pub mod notify;
pub mod push;
pub mod session;
pub mod source;
pub mod status;
pub mod transport;
pub mod units;
pub mod untrusted;
pub mod watch;
