//! The scenario harness for certsync's end-to-end tests.
//!
//! Each piece starts a real part users run: a certbot-style live dir
//! ([`livedir`]), a real OpenSSH sshd with a forced command ([`sshd`]), a
//! real Docker engine with labelled containers ([`docker`]) running
//! postfix, dovecot and nginx the way mailcow's images start them
//! ([`mailcow`]), and the two
//! certsync binaries ([`bins`]).
//!
//! A test names the real parts it needs with [`needs!`] (see [`need`]):
//! when a part is missing it fails if `CERTSYNC_REQUIRE_REAL=1` (CI), and
//! skips otherwise, printing a line that starts with `SKIP`.

pub mod bins;
pub mod dns;
pub mod docker;
pub mod e2e;
pub mod fakerecv;
pub mod httpsink;
pub mod livedir;
pub mod machine;
pub mod mailcow;
pub mod need;
pub mod netns;
pub mod npmhost;
pub mod receiver;
pub mod sshd;

/// A finished command's exit code, stdout and stderr, for assertion
/// messages.
pub fn shown(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
