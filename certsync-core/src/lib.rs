//! certsync-core: what both sides of certsync agree on.
//!
//! The pusher (NPM host) and the receiver (mailcow host) share these types:
//!
//! - [`bundle`]: a certificate pair as bytes — the full chain (leaf first) and
//!   the private key, the key held in a type that never prints and is zeroed
//!   on drop.
//! - [`fingerprint`]: SHA-256 fingerprints, printed the way
//!   `openssl x509 -noout -fingerprint -sha256` prints them, so an operator
//!   can compare them by eye with what OpenSSL tools show.
//! - [`validate`]: every rule a pair must pass before it is installed. Only
//!   validation can make a [`validate::ValidatedBundle`].
//! - [`protocol`]: the wire protocol v1 spoken over the SSH exec channel,
//!   with every frame bounded in size and count.
//! - [`config`]: `push.toml` and `receive.toml`.
//! - [`report`]: the structured result the receiver sends back.
//! - [`exit`]: the exit codes both binaries use (a contract), and their table.
//! - [`contract`]: names both sides agree on (the forced command).
//! - [`time`]: Unix seconds, negative before 1970.
//! - [`fsread`]: the one capped reader for files that may be hostile.
//! - [`units`]: the systemd drop-ins certsync writes from its config.
//! - [`hardening`]: what both binaries do to their own process first.
//! - [`command`]: running an operator's command within bounds.
//! - [`notify`]: `[notify]`, telling a person what happened (both sides).
//!
//! What is `pub` here is the contract between the two sides.

pub mod authorized_keys;
pub mod bundle;
pub mod command;
pub mod config;
pub mod contract;
pub mod exit;
pub mod fingerprint;
pub mod fsread;
pub mod hardening;
pub mod logging;
pub mod notify;
pub mod protocol;
pub mod report;
pub mod time;
pub mod units;
pub mod validate;

#[cfg(any(test, feature = "testutil"))]
pub mod testutil;

pub use bundle::{Bundle, SecretBytes};
pub use exit::ExitCode;
pub use fingerprint::Fingerprint;
