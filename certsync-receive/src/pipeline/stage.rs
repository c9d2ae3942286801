//! Step 2, **stage**, and the staging dir's whole layout: [`StagingDir`].
//!
//! The staging dir (`staging_dir`, 0700) belongs to the unprivileged
//! `certsync` user in handoff mode, so whoever runs as that user may
//! control everything inside it: plant links, FIFOs or devices, swap
//! directories between two system calls. Root's `deploy`, `install` and
//! `check` work in it all the same, so the rules are:
//!
//! - The dir is opened **once** ([`StagingDir::open`]: `O_DIRECTORY|
//!   O_NOFOLLOW`), checked (a directory, not writable by group or others),
//!   and every read, create, rename and unlink is relative to that file
//!   descriptor ([`crate::fsutil::Dir`]). A name is one component and is
//!   never followed when it is a link.
//! - As root, every directory above it must be root's and not writable by
//!   others (sticky dirs such as /tmp excepted), so no one can swap the
//!   staging dir itself: `/var/lib/certsync` is root's, only `staging/` is
//!   certsync's (docs/security.md).
//! - Whatever root reads here is opened `O_NONBLOCK|O_NOFOLLOW`, must be a
//!   regular file and is read to a cap ([`crate::fsutil::read_file_capped`]).
//! - What root creates here stays usable by `serve`: the lock file is
//!   opened read-only and kept 0644 ([`crate::fsutil::Dir::open_lock`]),
//!   the result is 0644 (it holds no key material).
//!
//! Layout (docs/contract.md "Files in the staging dir"), known only here:
//! `<name>/fullchain.pem`, `<name>/privkey.pem` (the staged pair, 0600),
//! `.lock`, `.deploy.lock`, `deploy.request`, `deploy.result`,
//! `<name>.reload-owed`, `<name>.repair-owed`, `<name>.installed-at`. The
//! cert name comes from receive.toml, never from the wire.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use certsync_core::bundle::{Bundle, SecretBytes};
use certsync_core::protocol::{MAX_CHAIN_BYTES, MAX_KEY_BYTES};

use crate::fsutil::Dir;

const STAGED_CHAIN: &str = "fullchain.pem";
const STAGED_KEY: &str = "privkey.pem";

/// One file of the staging dir's layout (besides the staged pair).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// One receiver at a time (`flock`).
    Lock,
    /// One deploy at a time (`flock`).
    DeployLock,
    /// `serve` asks root's deploy (certsync-deploy.path watches it).
    Request,
    /// root's deploy answers `serve`.
    Result,
    /// A reload failed after an install of this cert; retry it.
    ReloadOwed(&'a str),
    /// root found this cert's installed pair broken; the next push
    /// delivers the pair again even if the certificate is unchanged.
    RepairOwed(&'a str),
    /// Unix time of the last successful install of this cert.
    InstalledAt(&'a str),
}

impl Entry<'_> {
    /// The file name.
    pub fn name(&self) -> String {
        match self {
            Entry::Lock => ".lock".into(),
            Entry::DeployLock => ".deploy.lock".into(),
            Entry::Request => "deploy.request".into(),
            Entry::Result => "deploy.result".into(),
            Entry::ReloadOwed(n) => format!("{n}.reload-owed"),
            Entry::RepairOwed(n) => format!("{n}.repair-owed"),
            Entry::InstalledAt(n) => format!("{n}.installed-at"),
        }
    }
}

/// Largest marker, request or result file read from the staging dir.
pub const MAX_SMALL_FILE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("staging dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("staging path {0} is a symlink or not a directory; remove it (certsync recreates it with mode 0700)")]
    NotADir(PathBuf),
    #[error("staging dir {0} is writable by group or others; chmod 0700 it")]
    NotPrivate(PathBuf),
    #[error("{path} (above the staging dir) is owned by uid {uid} or writable by others, so it could swap the staging dir under root; make it root's: chown root {path} && chmod go-w {path} (only the staging dir itself belongs to the certsync user)")]
    UnsafeParent { path: PathBuf, uid: u32 },
    #[error("staged file {0} is not a regular file (a symlink, FIFO or device was planted there); refusing to read it")]
    NotRegular(PathBuf),
    #[error("staged file {path} is over the limit of {max} bytes")]
    TooLarge { path: PathBuf, max: usize },
    #[error("nothing is staged for {0}")]
    NothingStaged(String),
}

fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> StageError {
    move |source| StageError::Io { path, source }
}

/// Map the capped reader's refusals to this module's errors.
fn read_err(path: PathBuf, max: usize) -> impl FnOnce(std::io::Error) -> StageError {
    move |e| match crate::fsutil::Refusal::of(&e) {
        Some(crate::fsutil::Refusal::TooLarge(_)) => StageError::TooLarge { path, max },
        Some(crate::fsutil::Refusal::NotRegular) => StageError::NotRegular(path),
        None => StageError::Io { path, source: e },
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// As root: every directory from `/` down to `canonical` (a path without
/// links) must be root's (or ours) and not writable by others unless sticky, so that no one else
/// can rename or replace what lies below it.
fn check_ancestors(canonical: &Path) -> Result<(), StageError> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for a in canonical.ancestors() {
        let meta = std::fs::symlink_metadata(a).map_err(io(a.to_path_buf()))?;
        let sticky = meta.mode() & 0o1000 != 0;
        let owner_ok = meta.uid() == 0 || meta.uid() == me;
        if !owner_ok || (meta.mode() & 0o022 != 0 && !sticky) {
            return Err(StageError::UnsafeParent {
                path: a.to_path_buf(),
                uid: meta.uid(),
            });
        }
    }
    Ok(())
}

/// The staging dir, opened once and checked; see the module docs.
#[derive(Debug)]
pub struct StagingDir {
    dir: Dir,
}

impl StagingDir {
    /// Open the staging dir, creating it (0700) when missing.
    pub fn open(path: &Path) -> Result<StagingDir, StageError> {
        match Self::open_inner(path, true)? {
            Some(s) => Ok(s),
            None => Err(StageError::NotADir(path.to_path_buf())),
        }
    }

    /// Open the staging dir if it exists (for `check`, which never creates
    /// anything).
    pub fn open_existing(path: &Path) -> Result<Option<StagingDir>, StageError> {
        Self::open_inner(path, false)
    }

    fn open_inner(path: &Path, create: bool) -> Result<Option<StagingDir>, StageError> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("/"),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| StageError::NotADir(path.to_path_buf()))?;
        if !parent.exists() {
            if !create {
                return Ok(None);
            }
            std::fs::create_dir_all(parent).map_err(io(parent.to_path_buf()))?;
        }
        // Resolve the parent once, check that chain (as root), and open the
        // staging dir from the parent's descriptor: a link somewhere in the
        // configured path cannot be re-pointed between the check and the
        // open.
        let canonical = std::fs::canonicalize(parent).map_err(io(parent.to_path_buf()))?;
        if is_root() {
            check_ancestors(&canonical)?;
        }
        let pdir = Dir::open(&canonical).map_err(io(canonical.clone()))?;
        let dir = match pdir.subdir(name) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                pdir.mkdir(name, 0o700).map_err(io(path.to_path_buf()))?;
                pdir.subdir(name).map_err(|e| not_a_dir(path, e))?
            }
            Err(e) => return Err(not_a_dir(path, e)),
        };
        let meta = dir.metadata().map_err(io(path.to_path_buf()))?;
        // SAFETY: geteuid has no preconditions.
        let mine = meta.uid() == unsafe { libc::geteuid() };
        if meta.mode() & 0o077 != 0 {
            if mine {
                // Tighten a dir we own; never loosen.
                dir.set_mode(0o700).map_err(io(path.to_path_buf()))?;
            } else if meta.mode() & 0o022 != 0 {
                return Err(StageError::NotPrivate(path.to_path_buf()));
            }
        }
        Ok(Some(StagingDir { dir }))
    }

    /// The staging dir's path (for messages).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where `entry` is (for messages; never reopened by path).
    pub fn display(&self, entry: Entry<'_>) -> PathBuf {
        self.dir.display(&entry.name())
    }

    /// The dir holding one certificate's staged pair (for messages).
    pub fn cert_dir_display(&self, name: &str) -> PathBuf {
        self.dir.display(name)
    }

    /// Does `entry` exist (links not followed)?
    pub fn exists(&self, entry: Entry<'_>) -> bool {
        self.dir.exists(&entry.name())
    }

    /// Read `entry` (capped, no-follow, regular file only).
    pub fn read(&self, entry: Entry<'_>) -> Result<Option<Vec<u8>>, StageError> {
        let name = entry.name();
        self.dir
            .read_capped(&name, MAX_SMALL_FILE)
            .map_err(read_err(self.dir.display(&name), MAX_SMALL_FILE))
    }

    /// Replace `entry` atomically with `bytes` and `mode`.
    pub fn write(&self, entry: Entry<'_>, bytes: &[u8], mode: u32) -> Result<(), StageError> {
        let name = entry.name();
        self.dir
            .replace(&name, bytes, mode)
            .map_err(io(self.dir.display(&name)))
    }

    /// Remove `entry`; `Ok(false)` when there was none.
    pub fn remove(&self, entry: Entry<'_>) -> Result<bool, StageError> {
        let name = entry.name();
        self.dir.unlink(&name).map_err(io(self.dir.display(&name)))
    }

    /// The lock file `entry`, opened for `flock` (see [`Dir::open_lock`]).
    pub fn lock_file(&self, entry: Entry<'_>) -> Result<std::fs::File, StageError> {
        let name = entry.name();
        self.dir
            .open_lock(&name)
            .map_err(read_err(self.dir.display(&name), 0))
    }

    fn cert_dir(&self, name: &str) -> Result<Option<Dir>, StageError> {
        match self.dir.subdir(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(not_a_dir(&self.dir.display(name), e)),
        }
    }

    /// Step 2: put the pair into `<staging>/<name>/` (0700, files 0600).
    pub fn stage(&self, name: &str, bundle: &Bundle) -> Result<PathBuf, StageError> {
        let path = self.dir.display(name);
        self.dir.mkdir(name, 0o700).map_err(io(path.clone()))?;
        let dir = self
            .cert_dir(name)?
            .ok_or_else(|| StageError::NotADir(path.clone()))?;
        let meta = dir.metadata().map_err(io(path.clone()))?;
        if meta.mode() & 0o077 != 0 {
            dir.set_mode(0o700).map_err(io(path.clone()))?;
        }
        let res = dir
            .write_new(STAGED_CHAIN, &bundle.chain, 0o600)
            .map_err(io(dir.display(STAGED_CHAIN)))
            .and_then(|_| {
                dir.write_new(STAGED_KEY, bundle.key.expose(), 0o600)
                    .map_err(io(dir.display(STAGED_KEY)))
            });
        if let Err(e) = res {
            self.clear(name);
            return Err(e);
        }
        Ok(path)
    }

    /// Remove a staged pair (best effort: also used on failure paths). A
    /// link or file planted in place of `<name>/` is removed itself; its
    /// target is never touched.
    pub fn clear(&self, name: &str) {
        match self.cert_dir(name) {
            Ok(Some(dir)) => {
                for f in [STAGED_CHAIN, STAGED_KEY] {
                    let _ = dir.unlink(f);
                }
            }
            Ok(None) => {}
            Err(_) => {
                let _ = self.dir.unlink(name);
            }
        }
    }

    /// Read a staged pair back (root's `deploy` in handoff mode).
    pub fn read_staged(&self, name: &str) -> Result<Bundle, StageError> {
        let Some(dir) = self.cert_dir(name)? else {
            return Err(StageError::NothingStaged(name.to_string()));
        };
        let chain = match dir.read_capped(STAGED_CHAIN, MAX_CHAIN_BYTES) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(StageError::NothingStaged(name.to_string())),
            Err(e) => return Err(read_err(dir.display(STAGED_CHAIN), MAX_CHAIN_BYTES)(e)),
        };
        let key = dir
            .read_capped(STAGED_KEY, MAX_KEY_BYTES)
            .map_err(read_err(dir.display(STAGED_KEY), MAX_KEY_BYTES))?
            .ok_or_else(|| StageError::NothingStaged(name.to_string()))?;
        Ok(Bundle::new(chain, SecretBytes::new(key)))
    }

    /// Is anything staged for `name`?
    pub fn has_staged(&self, name: &str) -> bool {
        matches!(self.cert_dir(name), Ok(Some(d)) if d.exists(STAGED_KEY) || d.exists(STAGED_CHAIN))
    }
}

fn not_a_dir(path: &Path, e: std::io::Error) -> StageError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => StageError::NotADir(path.to_path_buf()),
        _ => StageError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stages_with_private_modes_and_reads_back() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("staging");
        let staging = StagingDir::open(&path).unwrap();
        let b = Bundle::new(b"chain".to_vec(), SecretBytes::new(b"key".to_vec()));
        let dir = staging.stage("mail", &b).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STAGED_KEY)), 0o600);
        assert_eq!(staging.read_staged("mail").unwrap(), b);
        staging.clear("mail");
        assert!(!staging.has_staged("mail"));
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("staging");
        let victim = root.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let staging = StagingDir::open(&path).unwrap();
        std::fs::create_dir(path.join("mail")).unwrap();
        symlink(&victim, path.join("mail").join(STAGED_KEY)).unwrap();
        symlink(&victim, path.join("mail").join(STAGED_CHAIN)).unwrap();
        // Reading refuses the links.
        assert!(matches!(
            staging.read_staged("mail"),
            Err(StageError::NotRegular(_))
        ));
        // Staging replaces the links, never writing through them.
        let b = Bundle::new(b"chain".to_vec(), SecretBytes::new(b"key".to_vec()));
        staging.stage("mail", &b).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            std::fs::symlink_metadata(path.join("mail").join(STAGED_KEY))
                .unwrap()
                .is_file()
        );
        // A symlinked cert dir is refused, and clearing removes the link,
        // not what it points at.
        std::fs::remove_dir_all(path.join("mail")).unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join(STAGED_KEY), "precious").unwrap();
        symlink(&elsewhere, path.join("mail")).unwrap();
        assert!(matches!(
            staging.stage("mail", &b),
            Err(StageError::NotADir(_))
        ));
        assert!(matches!(
            staging.read_staged("mail"),
            Err(StageError::NotADir(_))
        ));
        staging.clear("mail");
        assert!(elsewhere.join(STAGED_KEY).exists());
        assert!(std::fs::symlink_metadata(path.join("mail")).is_err());
        // The staging dir itself as a link is refused.
        let linked = root.path().join("linked");
        symlink(&elsewhere, &linked).unwrap();
        assert!(matches!(
            StagingDir::open(&linked),
            Err(StageError::NotADir(_))
        ));
    }

    #[test]
    fn oversized_staged_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let staging = StagingDir::open(&root.path().join("s")).unwrap();
        let b = Bundle::new(
            vec![b'a'; MAX_CHAIN_BYTES + 1],
            SecretBytes::new(b"k".to_vec()),
        );
        staging.stage("mail", &b).unwrap();
        assert!(matches!(
            staging.read_staged("mail"),
            Err(StageError::TooLarge { .. })
        ));
        assert!(matches!(
            staging.read_staged("other"),
            Err(StageError::NothingStaged(_))
        ));
    }

    #[test]
    fn entries_are_plain_names_in_the_dir() {
        let root = tempfile::tempdir().unwrap();
        let staging = StagingDir::open(&root.path().join("s")).unwrap();
        staging
            .write(Entry::ReloadOwed("mail"), b"x\n", 0o600)
            .unwrap();
        assert!(root.path().join("s/mail.reload-owed").is_file());
        assert!(staging.exists(Entry::ReloadOwed("mail")));
        assert_eq!(
            staging.read(Entry::ReloadOwed("mail")).unwrap().unwrap(),
            b"x\n"
        );
        assert!(staging.remove(Entry::ReloadOwed("mail")).unwrap());
        assert!(!staging.remove(Entry::ReloadOwed("mail")).unwrap());
    }
}
