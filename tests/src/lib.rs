//! The scenario harness for certsync's end-to-end tests.
//!
//! Each piece starts a real part users run: a certbot-style live dir
//! ([`livedir`]), a real OpenSSH sshd with a forced command ([`sshd`]), a
//! real Docker engine with labelled containers ([`docker`]) running
//! postfix, dovecot and nginx the way mailcow's images start them
//! ([`mailcow`]), and the two
//! certsync binaries ([`bins`]).
//!
//! A test that needs a real part calls [`require`]: when the part is
//! missing it fails if `CERTSYNC_REQUIRE_REAL=1` (CI), and skips otherwise.

pub mod bins;
pub mod dns;
pub mod docker;
pub mod e2e;
pub mod fakerecv;
pub mod httpsink;
pub mod livedir;
pub mod machine;
pub mod mailcow;
pub mod netns;
pub mod npmhost;
pub mod receiver;
pub mod sshd;

/// Is `CERTSYNC_REQUIRE_REAL=1` set (as `.ci/run` does)?
pub fn real_required() -> bool {
    std::env::var("CERTSYNC_REQUIRE_REAL").is_ok_and(|v| v == "1")
}

/// Check that a real part is available. Returns `false` (and says so on
/// stderr) when the test should skip; panics when `CERTSYNC_REQUIRE_REAL=1`.
///
/// The `SKIP <test>: …` line goes straight to the process's stderr, not
/// through the test harness's output capture, so `cargo test` shows it even
/// for a test that then passes, and `.ci/run` counts those lines as skipped
/// tests (one per skipping test: callers return at the first `false`).
pub fn require(part: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if real_required() {
        panic!("{part} is required (CERTSYNC_REQUIRE_REAL=1) but is not available on this machine");
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!(
        "SKIP {test}: {part} is not available; set CERTSYNC_REQUIRE_REAL=1 to make this a failure\n"
    );
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    false
}
