//! A Debian machine booted with systemd as PID 1, for the tests that run
//! the shipped units from the shipped packages.
//!
//! - The rootfs is a Debian bookworm made once by `.ci/rootfs.sh systemd`
//!   (debootstrap from Debian's mirror, cached in /var/cache/certsync-ci):
//!   systemd, dbus, OpenSSH, openssl and the packages' runtime
//!   dependencies.
//! - Each [`Machine`] boots a throw-away overlay of that rootfs with
//!   `systemd-nspawn -b` in its own network namespace (loopback only, so
//!   every machine has its own port 22), so tests never change the cache
//!   and may run in parallel. This host runs no systemd, so nspawn runs
//!   with `--register=no --keep-unit` (no machined, no scope), each
//!   machine in its own cgroup made here.
//! - Commands run inside through `nsenter` into the namespaces of the
//!   machine's PID 1, with a clean environment: what an admin's root shell
//!   on that machine would do.
//! - The packages are the `.deb`s `cargo deb` wrote to `target/debian/`
//!   (see [`Debs`]); the tests install them with `dpkg -i` inside.
//!
//! Dropping a [`Machine`] kills its PID 1 (and so every process in it),
//! unmounts the overlay and removes its cgroups and temp dir.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::need::{self, Missing, Need};

/// Where the tests find the rootfs (a dir or a link to one).
pub const ROOTFS_ENV: &str = "CERTSYNC_SYSTEMD_ROOTFS";
/// `.ci/rootfs.sh systemd` links its newest build here.
pub const DEFAULT_ROOTFS: &str = "/var/cache/certsync-ci/bookworm-systemd";

const NSPAWN: &str = "/usr/bin/systemd-nspawn";
const NSENTER: &str = "/usr/bin/nsenter";
/// Until `systemctl is-system-running` says the boot is over.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The rootfs to boot.
pub fn rootfs() -> PathBuf {
    std::env::var_os(ROOTFS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS))
}

/// The two packages, as `cargo deb -p certsync-push` and `cargo deb -p
/// certsync-receive` wrote them.
#[derive(Debug, Clone)]
pub struct Debs {
    pub push: PathBuf,
    pub receive: PathBuf,
}

impl Debs {
    /// The one `certsync-push_*.deb` and `certsync-receive_*.deb` in `dir`.
    pub fn find(dir: &Path) -> Option<Debs> {
        let one = |prefix: &str| -> Option<PathBuf> {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
                })
                .collect();
            found.sort();
            found.pop()
        };
        Some(Debs {
            push: one("certsync-push_")?,
            receive: one("certsync-receive_")?,
        })
    }

    /// `target/debian`, where `cargo deb` writes (the target dir is the
    /// parent of the test's profile dir).
    pub fn dir() -> PathBuf {
        let profile = crate::bins::target_dir();
        profile
            .parent()
            .map(|t| t.join("debian"))
            .unwrap_or_else(|| PathBuf::from("target/debian"))
    }

    /// `target/debian/upgrade`: the same packages with a higher version
    /// (`.ci/run` builds them with `--deb-version`).
    pub fn upgrade_dir() -> PathBuf {
        Self::dir().join("upgrade")
    }
}

/// Everything a machine test needs: root, nspawn, the rootfs and the
/// packages (`needs!(let debs = machine::debs())`).
pub fn debs() -> Need<Debs> {
    debs_on(&rootfs(), ".ci/rootfs.sh systemd", ROOTFS_ENV)
        .map_err(|part| Missing(format!("a systemd machine: {part}")))
}

/// [`debs`] for another rootfs flavour: `build` makes it, `env` names it.
pub fn debs_on(rootfs: &Path, build: &str, env: &str) -> Need<Debs> {
    machine_parts(rootfs, build, env)
}

fn machine_parts(rootfs: &Path, build: &str, env: &str) -> Need<Debs> {
    need::root("to mount an overlay and boot a container")?;
    for tool in [NSPAWN, NSENTER] {
        need::part(
            format!("{tool} (apt-get install systemd-container util-linux)"),
            Path::new(tool).exists(),
        )?;
    }
    need::part(
        format!(
            "a Debian rootfs with systemd at {} (run {build}, or set {env})",
            rootfs.display()
        ),
        rootfs.join("lib/systemd/systemd").exists(),
    )?;
    Debs::find(&Debs::dir()).ok_or_else(|| {
        Missing(format!(
            "the packages in {} (cargo deb -p certsync-push; cargo deb -p certsync-receive)",
            Debs::dir().display()
        ))
    })
}

/// The upgrade packages `.ci/run` builds (`needs!(let new = machine::upgrade_debs())`).
pub fn upgrade_debs() -> Need<Debs> {
    Debs::find(&Debs::upgrade_dir()).ok_or_else(|| {
        Missing(format!(
            "the upgrade packages in {} (cargo deb --deb-version …; see .ci/run)",
            Debs::upgrade_dir().display()
        ))
    })
}

/// A booted machine; see the module docs.
pub struct Machine {
    nspawn: Child,
    leader: i32,
    name: String,
    merged: PathBuf,
    cgroups: Vec<PathBuf>,
    /// The overlay's upper and work dirs, and the mount point.
    dir: TempDir,
}

/// The result of a command inside the machine.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Both streams, for assertion messages.
    pub fn both(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A cgroup of our own in each hierarchy nspawn looks at, so machines
/// booted side by side do not share `init.scope`.
fn make_cgroups(name: &str) -> Vec<PathBuf> {
    [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(Path::new)
    .filter(|h| h.join("cgroup.procs").exists())
    .map(|h| h.join(name))
    .filter(|d| std::fs::create_dir(d).is_ok())
    .collect()
}

impl Machine {
    /// Boot a fresh overlay of [`rootfs`] and wait until systemd says the
    /// boot is over; panics with the console log if it does not.
    pub fn boot() -> Machine {
        Machine::boot_from(&rootfs())
    }

    /// [`Machine::boot`] from another rootfs flavour (`.ci/rootfs.sh`).
    pub fn boot_from(rootfs: &Path) -> Machine {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("certsync-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("csm")
            .tempdir_in("/var/tmp")
            .unwrap();
        let (upper, work, merged) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("root"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let lower = std::fs::canonicalize(rootfs).unwrap();
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(&merged)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount overlay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cgroups = make_cgroups(&name);
        let procs: Vec<std::ffi::CString> = cgroups
            .iter()
            .map(|c| {
                use std::os::unix::ffi::OsStrExt;
                std::ffi::CString::new(c.join("cgroup.procs").as_os_str().as_bytes()).unwrap()
            })
            .collect();
        let console = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let mut cmd = Command::new(NSPAWN);
        cmd.args(["--boot", "--quiet", "--register=no", "--keep-unit"])
            .args(["--private-network", "--console=pipe"])
            .arg(format!("--machine={name}"))
            .arg("--directory")
            .arg(&merged)
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console);
        // SAFETY: between fork and exec only async-signal-safe calls
        // (open, write, close) on paths prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let nspawn = cmd.spawn().expect("spawn systemd-nspawn");
        let mut machine = Machine {
            leader: 0,
            nspawn,
            name,
            merged,
            cgroups,
            dir,
        };
        machine.leader = machine.find_leader();
        machine.wait_booted();
        machine
    }

    /// The machine's PID 1, as seen from here: the child of nspawn that
    /// runs systemd.
    fn find_leader(&mut self) -> i32 {
        let parent = self.nspawn.id() as i32;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!("systemd-nspawn exited with {status}:\n{}", self.console());
            }
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                // pid (comm) state ppid …: comm may hold spaces, so split
                // after its closing parenthesis.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<i32>().ok());
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                if ppid == Some(parent) && comm.trim() == "systemd" {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no systemd in the machine after {BOOT_TIMEOUT:?}:\n{}",
            self.console()
        );
    }

    fn wait_booted(&self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let run = self.sh("systemctl is-system-running --wait");
            let state = run.stdout.trim();
            if state == "running" || state == "degraded" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the machine did not finish booting ({state}):\n{}\n{}",
                self.sh("systemctl --failed --no-pager; journalctl -b --no-pager | tail -50")
                    .both(),
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// systemd-nspawn's output and the machine's console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// The host path of `path` inside the machine (for writing test files).
    pub fn path(&self, path: &str) -> PathBuf {
        self.merged.join(path.trim_start_matches('/'))
    }

    /// Run `script` with `/bin/sh -c` as root inside the machine.
    pub fn sh(&self, script: &str) -> Run {
        Command::new(NSENTER)
            .arg("--target")
            .arg(self.leader.to_string())
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"])
            .args(["--", "/bin/sh", "-c", script])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
            .into()
    }

    /// Run `script` and panic with its output unless it exits 0.
    pub fn ok(&self, script: &str) -> String {
        let run = self.sh(script);
        assert!(run.ok(), "in the machine: {script}\n{}", run.both());
        run.stdout
    }

    /// Copy the packages in and return their paths inside.
    pub fn copy_debs(&self, debs: &Debs, into: &str) -> Debs {
        std::fs::create_dir_all(self.path(into)).unwrap();
        let copy = |from: &Path| {
            let name = from.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(from, self.path(&format!("{into}/{name}"))).unwrap();
            PathBuf::from(format!("{into}/{name}"))
        };
        Debs {
            push: copy(&debs.push),
            receive: copy(&debs.receive),
        }
    }

    /// `journalctl -u UNIT` of this boot, messages only.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl --no-pager -b -o cat -u {unit}"))
            .stdout
    }

    /// Where the journal ends now, for [`Machine::journal_since`].
    pub fn journal_cursor(&self) -> String {
        self.ok("journalctl -n 1 -o export | sed -n 's/^__CURSOR=//p'")
            .trim()
            .to_string()
    }

    /// `journalctl -u UNIT` after `cursor`, messages only: one run's lines
    /// (an invocation id would not do: systemd forgets a oneshot that
    /// finished well, and with it its id).
    pub fn journal_since(&self, cursor: &str, unit: &str) -> String {
        self.sh(&format!(
            "journalctl --no-pager -o cat --after-cursor='{cursor}' -u {unit}"
        ))
        .stdout
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn unit_prop(&self, unit: &str, prop: &str) -> String {
        self.sh(&format!("systemctl show -p {prop} --value {unit}"))
            .stdout
            .trim()
            .to_string()
    }

    /// Wait until `cond` holds; panics naming `what` after `limit`.
    pub fn wait(&self, what: &str, limit: Duration, cond: impl FnMut() -> bool) -> Duration {
        match crate::docker::wait_until(limit, cond) {
            Some(took) => took,
            None => panic!(
                "in the machine, after {limit:?}: {what}\n{}",
                self.sh("systemctl --no-pager list-units 'certsync*' --all; journalctl -b --no-pager -o short-monotonic | grep -i certsync | tail -60")
                    .both()
            ),
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid we found as nspawn's child; the
        // machine's PID 1 takes every process of its pid namespace down.
        unsafe {
            libc::kill(self.leader, libc::SIGKILL);
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let _ = Command::new("umount").arg(&self.merged).status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.merged)
            .stderr(Stdio::null())
            .status();
        // Child cgroups systemd made inside, deepest first; a cgroup can
        // be removed only once the kernel has reaped its last process,
        // which may take a moment after the SIGKILL.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cgroups.iter().any(|c| c.exists()) && Instant::now() < deadline {
            for cg in &self.cgroups {
                let mut dirs: Vec<PathBuf> = walk_dirs(cg);
                dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
                for d in dirs {
                    let _ = std::fs::remove_dir(d);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // nspawn leaves this behind when it cannot remove it itself.
        let _ =
            std::fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}
