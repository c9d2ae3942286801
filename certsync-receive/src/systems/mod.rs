//! What the receiver talks to on this host, one module each: the Docker
//! API ([`docker`], with its container [`selector`]), the TLS endpoints it
//! probes ([`probe`]), mailcow's own files and conventions ([`mailcow`]),
//! systemd units ([`systemd`]), DNS for the DANE guard ([`dane`]), and the
//! people `[notify]` names ([`notify`]).

pub mod dane;
pub mod docker;
pub mod mailcow;
pub mod notify;
pub mod probe;
pub mod selector;
pub mod systemd;
