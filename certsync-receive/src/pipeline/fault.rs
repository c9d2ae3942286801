//! Fault injection for the crash tests: `CERTSYNC_FAULT_KILL_AT=<point>`
//! makes the process SIGKILL itself when it reaches that named point of an
//! install. It only ever kills this process.
//!
//! Compiled in only with the cargo feature `fault-injection`, which the
//! workspace's test crate enables and nothing else does: a release build
//! (`cargo build --release -p certsync-receive`, `cargo deb`) has no fault
//! points at all and ignores the variable (docs/security.md, item 12).
//!
//! The points, in order: see [`crate::pipeline::install::FAULT_POINTS`].

/// The environment variable read by [`point`].
pub const ENV: &str = "CERTSYNC_FAULT_KILL_AT";

/// Is fault injection compiled into this build?
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// Die here, without cleanup, if the test asked for it.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        // SAFETY: kill(2) with our own pid has no memory-safety concerns.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Without the feature: nothing, whatever the environment says.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

#[cfg(test)]
mod tests {
    /// `cargo test -p certsync-receive --lib` builds without the feature,
    /// as a release build does: the variable must do nothing.
    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn without_the_feature_the_variable_is_ignored() {
        const { assert!(!super::ENABLED) };
        std::env::set_var(super::ENV, crate::pipeline::install::FAULT_POINTS[0]);
        super::point(crate::pipeline::install::FAULT_POINTS[0]);
        // Still alive.
        std::env::remove_var(super::ENV);
    }
}
