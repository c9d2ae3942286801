//! How the pusher reaches a receiver: over SSH (russh, pinned host key) or
//! by spawning the receiver locally. Both give a byte stream that speaks
//! the certsync protocol.

pub mod known_hosts;
pub mod local;
pub mod ssh;
