//! certsync-receive: the mailcow side.
//!
//! The receiving pipeline, one module per step (DESIGN.md "Receive side"):
//! [`serve`] reads the protocol, [`stage`] keeps the bytes in the staging
//! dir, validation is `certsync_core::validate`, [`pipeline`] compares and
//! orchestrates, [`install`] writes atomically, [`reload`] reloads the
//! containers through the Docker API, [`probe`] checks what is served on the
//! wire, [`hook`] runs the operator's command after an install, and the
//! report goes back to the pusher.

pub mod authorized_key;
pub mod check;
pub mod cli;
pub mod dane;
pub mod deploy;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod handoff;
pub mod hook;
pub mod host_units;
pub mod install;
pub mod lock;
pub mod mailcow;
pub mod notify;
pub mod pipeline;
pub mod post;
pub mod probe;
pub mod reload;
pub mod selector;
pub mod serve;
pub mod settings;
pub mod stage;
pub mod units;
