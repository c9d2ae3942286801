//! Fault injection for the crash tests: `CERTSYNC_FAULT_KILL_AT=<point>`
//! makes the process SIGKILL itself when it reaches that named point of an
//! install. It only ever kills this process; with the variable unset (as in
//! production) a point costs one environment lookup.
//!
//! The points, in order: see [`crate::install::FAULT_POINTS`].

/// The environment variable read by [`point`].
pub const ENV: &str = "CERTSYNC_FAULT_KILL_AT";

/// Die here, without cleanup, if the test asked for it.
pub fn point(name: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        // SAFETY: kill(2) with our own pid has no memory-safety concerns.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
