//! certsync-push: the NPM side.
//!
//! source (the certbot live dir) → consistent pair → offer → send → result:
//! [`source`] reads a consistent pair through certbot's symlinks,
//! [`discover`] lists live dirs, [`transport`] reaches the receiver over SSH
//! or locally, [`session`] speaks the protocol, [`watch`] pushes on change.

pub mod discover;
pub mod error;
pub mod keygen;
pub mod session;
pub mod source;
pub mod status;
pub mod transport;
pub mod watch;
