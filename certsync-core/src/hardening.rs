//! What both binaries do to their own process before anything else.
//!
//! Both hold private keys in memory (the pusher reads them, the receiver
//! validates and installs them). A core dump would write that memory to
//! disk, where `systemd-coredump` or `core_pattern` keeps it for anyone
//! who can read crash reports. So, first thing in `main`:
//!
//! - `RLIMIT_CORE` = 0 (soft and hard): no core file, and no child or
//!   later code can raise it again;
//! - `PR_SET_DUMPABLE` = 0: no core through a piped `core_pattern`
//!   either, and other processes of the same user (the `certsync` user
//!   on the mailcow host) cannot ptrace us or read `/proc/<pid>/mem`.

/// Disable core dumps and ptrace by the same user; see the module docs.
pub fn no_core_dumps() -> std::io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid, initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
