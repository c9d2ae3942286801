//! The real parts a scenario needs, and the one place that decides what a
//! test does when one is missing.
//!
//! A test names what it needs on its first line, as ripgrep's tests name
//! their scene:
//!
//! ```no_run
//! # use certsync_tests::{machine, need, needs};
//! # fn a_scenario() {
//! needs!(need::sshd(), need::dockerd());
//! needs!(let debs = machine::debs());
//! # let _ = debs;
//! # }
//! ```
//!
//! Each `need::…()` is a [`Need`]: `Ok` with what it found, or `Err` with
//! the [`Missing`] part and how to install it. They are checked in order
//! and the first one missing ends the test, so a check with a side effect
//! (creating a login user) runs only once the parts before it are there.
//! A scene helper composes them with `?` and returns a `Need` of its own.
//!
//! When a part is missing, [`found`] either
//! - fails the test naming the part, when `CERTSYNC_REQUIRE_REAL=1` (as
//!   `.ci/run` sets it): CI must never pass by skipping; or
//! - prints one line `SKIP <test>: <part> is not available; …` straight to
//!   the process's stderr (not through the test harness's capture, so
//!   `cargo test` shows it even for a test that then passes) and returns
//!   `None`. `.ci/summary.sh` counts those lines as skipped tests: one per
//!   skipping test, because the macro returns at the first missing part.

use std::fmt;
use std::path::{Path, PathBuf};

/// A real part that is not on this machine: what it is and how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a scene needs: `Ok` with what was found, or the missing part.
pub type Need<T = ()> = Result<T, Missing>;

/// Skip (or, with `CERTSYNC_REQUIRE_REAL=1`, fail) the test unless every
/// [`Need`] is met; see the module docs.
///
/// - `needs!(a, b, …)`: each argument is a `Need<()>`, checked in order.
/// - `needs!(let PATTERN = need)`: binds what a `Need<T>` found.
#[macro_export]
macro_rules! needs {
    (let $found:pat = $need:expr) => {
        let $found = match $crate::need::found($need) {
            ::std::option::Option::Some(found) => found,
            ::std::option::Option::None => return,
        };
    };
    ($($need:expr),+ $(,)?) => {
        $(
            if $crate::need::found($need).is_none() {
                return;
            }
        )+
    };
}

/// Is `CERTSYNC_REQUIRE_REAL=1` set (as `.ci/run` does)?
pub fn real_required() -> bool {
    std::env::var("CERTSYNC_REQUIRE_REAL").is_ok_and(|v| v == "1")
}

/// What the need found, or `None` after saying `SKIP`; panics naming the
/// part when `CERTSYNC_REQUIRE_REAL=1`. Use it through [`needs!`].
pub fn found<T>(need: Need<T>) -> Option<T> {
    let missing = match need {
        Ok(found) => return Some(found),
        Err(missing) => missing,
    };
    if real_required() {
        panic!(
            "{missing} is required (CERTSYNC_REQUIRE_REAL=1) but is not available on this machine"
        );
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!(
        "SKIP {test}: {missing} is not available; set CERTSYNC_REQUIRE_REAL=1 to make this a failure\n"
    );
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    None
}

/// A part described by `what` (with how to install it), there or not.
pub fn part(what: impl Into<String>, present: bool) -> Need {
    if present {
        Ok(())
    } else {
        Err(Missing(what.into()))
    }
}

/// Is this process root? (The scenes that mount, boot or start dockerd.)
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An executable `name` on `PATH` or in the sbin/bin dirs (Debian puts
/// the daemons in /usr/sbin, which a non-root `PATH` may lack).
pub fn program(name: &str) -> Option<PathBuf> {
    crate::docker::find_program(name).or_else(|| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
    })
}

fn installed(name: &str, package: &str) -> Need {
    part(
        format!("{name} (apt-get install {package})"),
        program(name).is_some(),
    )
}

/// Root, for `why` (a mount, a boot, a private network namespace).
pub fn root(why: &str) -> Need {
    part(format!("root ({why})"), is_root())
}

/// OpenSSH's sshd and ssh-keygen.
pub fn sshd() -> Need {
    part(
        "OpenSSH's sshd and ssh-keygen (apt-get install openssh-server)",
        crate::sshd::available(),
    )
}

/// A local login user `name` (made if missing; needs root).
pub fn user(name: &str) -> Need {
    part(
        format!("a local login user {name}"),
        crate::sshd::ensure_user(name),
    )
}

/// A Docker engine the harness can start privately (root, dockerd,
/// docker and busybox for the test image).
pub fn dockerd() -> Need {
    part(
        "dockerd, as root (apt-get install docker.io busybox-static)",
        crate::docker::Dockerd::available(),
    )
}

pub fn nginx() -> Need {
    installed("nginx", "nginx-light")
}

pub fn postfix() -> Need {
    installed("postfix", "postfix")
}

pub fn dovecot() -> Need {
    installed("dovecot", "dovecot-core")
}

/// postfix and dovecot with the logins mailcow's dovecot serves.
pub fn mail_daemons() -> Need {
    postfix()?;
    dovecot()?;
    let logins = ["pop3-login", "managesieve-login"]
        .iter()
        .all(|login| Path::new("/usr/lib/dovecot").join(login).exists());
    part(
        "dovecot's POP3 and ManageSieve logins (apt-get install dovecot-imapd dovecot-pop3d dovecot-managesieved)",
        logins,
    )
}

/// postfix, dovecot (with its logins) and nginx: mailcow's three.
pub fn mailcow_daemons() -> Need {
    mail_daemons()?;
    nginx()
}

pub fn openssl() -> Need {
    installed("openssl", "openssl")
}

pub fn setpriv() -> Need {
    installed("setpriv", "util-linux")
}

pub fn curl() -> Need {
    installed("curl", "curl")
}

pub fn busybox() -> Need {
    installed("busybox", "busybox-static")
}

/// Network namespaces: root and iproute2.
pub fn netns() -> Need {
    part(
        "network namespaces (root, apt-get install iproute2)",
        crate::netns::available(),
    )
}

/// knot (a signing authoritative server) and unbound (a validating
/// resolver).
pub fn dns() -> Need {
    part(
        "knot and unbound (apt-get install knot unbound)",
        crate::dns::available(),
    )
}
