//! certsync-receive: the mailcow side.
//!
//! Three layers, each in its own folder, each depending only on the ones
//! below it:
//!
//! - [`commands`]: one module per subcommand (`serve`, `deploy`, `install`,
//!   `check`, `authorized-key`, `units`); [`error`] is their error, mapped to
//!   an exit code once (docs/contract.md "Exit codes").
//! - [`pipeline`]: the steps a pair goes through, in order: stage →
//!   validate (`certsync_core::validate`) → compare → install → reload →
//!   verify → hook, and the staging dir, its locks and the handoff to root
//!   that they share.
//! - [`systems`]: what the receiver talks to on this host: Docker, the
//!   served TLS endpoints, mailcow's own files, systemd units, DNS (DANE)
//!   and whoever `[notify]` names.
//!
//! [`settings`] (receive.toml resolved) and [`fsutil`] (how the receiver
//! touches files) are used by all three.

pub mod cli;
pub mod commands;
pub mod error;
pub mod fsutil;
pub mod pipeline;
pub mod settings;
pub mod systems;
