//! Step 5, **install**: put a validated pair in place so that a crash at
//! any instant leaves — after the next run — a matching pair (old or new),
//! never a certificate with the wrong key.
//!
//! For `cert.pem` and `key.pem` in their destination dirs:
//!
//! 1. write `.cert.pem.certsync-new` (mode 0644 set before the first byte)
//!    and `.key.pem.certsync-new` (0600), fsync each;
//! 2. if a matching pair is installed, keep it as `cert.pem.certsync-prev`
//!    and `key.pem.certsync-prev` (each written to a temp file and renamed);
//! 3. rename the new key over `key.pem`, then the new cert over `cert.pem`;
//! 4. fsync the directories.
//!
//! Between the two renames of step 3 the key is new and the cert old. A
//! crash there is repaired by [`recover`], which every run calls under the
//! lock before it looks at the installed pair: if the installed pair does
//! not match and the new cert is still waiting beside it, the rename is
//! finished (roll forward); otherwise the kept previous pair is restored
//! (roll back). Installed files are always real files (a symlink in their
//! place is replaced, never written through), owned by whoever runs the
//! install (root on mailcow): an owner is never inherited from the file
//! being replaced, so a `key.pem` that another user once owned does not
//! hand them the new key. No chown is needed, so none is made.

use std::fs::File;
use std::path::{Path, PathBuf};

use certsync_core::bundle::{parse_chain, parse_key, CertInfo};
use certsync_core::protocol::{MAX_CHAIN_BYTES, MAX_KEY_BYTES};
use certsync_core::validate::ValidatedBundle;
use certsync_core::Fingerprint;

use crate::pipeline::fault;

/// Mode of the installed certificate (full chain): world-readable.
pub const CERT_MODE: u32 = 0o644;
/// Mode of the installed private key.
pub const KEY_MODE: u32 = 0o600;

/// The named points where the crash tests kill an install, in order.
pub const FAULT_POINTS: [&str; 7] = [
    "install:new-cert-written",
    "install:new-key-written",
    "install:prev-cert-kept",
    "install:prev-key-kept",
    "install:key-renamed",
    "install:cert-renamed",
    "install:synced",
];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{action} {path}: {source}{}", sandbox_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the directory {} does not exist; create it, or fix cert_path/key_path in receive.toml{}",
        .0.display(),
        home_hint(.0)
    )]
    NoDir(PathBuf),
    #[error("{0} is too large to be a certificate or key file")]
    TooLarge(PathBuf),
    #[error("the installed pair {cert} / {key} does not match and no kept previous pair can repair it; the next push of this certificate replaces it (or on this host: certsync-receive install --name NAME --cert FULLCHAIN --key KEY; add --force there if that pair expires before the installed certificate)")]
    Unrepairable { cert: PathBuf, key: PathBuf },
}

/// Under systemd's `ProtectSystem=strict` a dir the unit may not write is
/// read-only: say which command opens it.
fn sandbox_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
        "; under systemd, `certsync-receive units && systemctl daemon-reload` lets certsync-deploy.service write where receive.toml installs"
    } else {
        ""
    }
}

/// A dir under /home or /root may only look missing: say why.
fn home_hint(p: &Path) -> &'static str {
    if under_home(p) {
        "; if it does exist, certsync-deploy.service's ProtectHome=yes hides it: run `certsync-receive units && systemctl daemon-reload`"
    } else {
        ""
    }
}

/// Under a dir that `ProtectHome=yes` hides from a unit?
pub(crate) fn under_home(p: &Path) -> bool {
    ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| p.starts_with(h))
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where one pair is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Dest {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Dest {
        Dest {
            cert: cert.into(),
            key: key.into(),
        }
    }
}

/// A sibling of `path` named `<prefix><file name><suffix>`.
fn sibling(path: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!("{prefix}{name}{suffix}"))
}

/// The new file waiting to be renamed over `path`.
pub fn new_path(path: &Path) -> PathBuf {
    sibling(path, ".", ".certsync-new")
}

/// The previous pair's file kept beside `path`.
pub fn prev_path(path: &Path) -> PathBuf {
    sibling(path, "", ".certsync-prev")
}

/// What is installed now.
#[derive(Debug, Clone)]
pub struct Installed {
    pub chain_sha256: Fingerprint,
    pub key_sha256: Fingerprint,
    /// The leaf, when the cert file parses.
    pub info: Option<CertInfo>,
    /// Both parse and the key belongs to the leaf.
    pub matching: bool,
}

/// Read a file for comparison: at most `max` bytes; `None` if absent.
fn read_opt(path: &Path, max: usize) -> Result<Option<Vec<u8>>, InstallError> {
    crate::fsutil::read_capped(path, max).map_err(io_err("cannot read", path))
}

/// Do these bytes form a matching pair?
fn pair_matches(chain: &[u8], key: &[u8]) -> bool {
    match (parse_chain(chain), parse_key(key)) {
        (Ok(certs), Ok(k)) => certs[0].public_key().is_ok_and(|p| p.public_eq(&k)),
        _ => false,
    }
}

/// What is installed at `dest`, read from disk (never from a state file).
pub fn read_installed(dest: &Dest) -> Result<Option<Installed>, InstallError> {
    let chain = read_opt(&dest.cert, MAX_CHAIN_BYTES)?;
    let key = read_opt(&dest.key, MAX_KEY_BYTES)?.map(zeroize::Zeroizing::new);
    let (Some(chain), Some(key)) = (chain, key) else {
        return Ok(None);
    };
    let info = parse_chain(&chain).ok().map(|c| CertInfo::of(&c[0]));
    Ok(Some(Installed {
        chain_sha256: Fingerprint::of_bytes(&chain),
        key_sha256: Fingerprint::of_bytes(&key),
        matching: pair_matches(&chain, &key),
        info,
    }))
}

/// The installed certificate alone: what an unprivileged `serve` (handoff
/// mode) can read, since `key.pem` is 0600 root.
#[derive(Debug, Clone)]
pub struct InstalledCert {
    pub chain_sha256: Fingerprint,
    pub info: Option<CertInfo>,
}

/// Read only the installed certificate (world-readable, 0644).
pub fn read_installed_cert(dest: &Dest) -> Result<Option<InstalledCert>, InstallError> {
    let Some(chain) = read_opt(&dest.cert, MAX_CHAIN_BYTES)? else {
        return Ok(None);
    };
    Ok(Some(InstalledCert {
        chain_sha256: Fingerprint::of_bytes(&chain),
        info: parse_chain(&chain).ok().map(|c| CertInfo::of(&c[0])),
    }))
}

impl InstallError {
    /// Is this a permission error (an unprivileged `serve` reading key.pem)?
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, InstallError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// [`crate::fsutil::write_new`], with this module's error.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    crate::fsutil::write_new(path, bytes, mode).map_err(io_err("cannot write", path))
}

fn rename(from: &Path, to: &Path) -> Result<(), InstallError> {
    std::fs::rename(from, to).map_err(io_err("cannot rename into place", to))
}

fn sync_dir(path: &Path) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot fsync directory", dir))
}

/// Write `bytes` to `to` atomically (temp + rename) with `mode`.
fn keep_copy(to: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    crate::fsutil::replace(to, bytes, mode).map_err(io_err("cannot write", to))
}

/// How an install ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOutcome {
    /// A matching previous pair was kept as `*.certsync-prev`.
    pub kept_previous: bool,
}

/// Step 5: install a validated pair at `dest`. Only a [`ValidatedBundle`]
/// can be installed.
pub fn install(dest: &Dest, pair: &ValidatedBundle) -> Result<InstallOutcome, InstallError> {
    for p in [&dest.cert, &dest.key] {
        let dir = p.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            return Err(InstallError::NoDir(dir.to_path_buf()));
        }
    }
    let bundle = pair.bundle();
    let (new_cert, new_key) = (new_path(&dest.cert), new_path(&dest.key));
    let cleanup = |e: InstallError| {
        let _ = std::fs::remove_file(&new_cert);
        let _ = std::fs::remove_file(&new_key);
        e
    };

    write_file(&new_cert, &bundle.chain, CERT_MODE).map_err(cleanup)?;
    fault::point(FAULT_POINTS[0]);
    write_file(&new_key, bundle.key.expose(), KEY_MODE).map_err(cleanup)?;
    fault::point(FAULT_POINTS[1]);

    let mut kept_previous = false;
    let old_chain = read_opt(&dest.cert, MAX_CHAIN_BYTES).map_err(cleanup)?;
    let old_key = read_opt(&dest.key, MAX_KEY_BYTES)
        .map_err(cleanup)?
        .map(zeroize::Zeroizing::new);
    if let (Some(c), Some(k)) = (&old_chain, &old_key) {
        if pair_matches(c, k) {
            keep_copy(&prev_path(&dest.cert), c, CERT_MODE).map_err(cleanup)?;
            fault::point(FAULT_POINTS[2]);
            keep_copy(&prev_path(&dest.key), k, KEY_MODE).map_err(cleanup)?;
            fault::point(FAULT_POINTS[3]);
            kept_previous = true;
        }
    }

    rename(&new_key, &dest.key).map_err(cleanup)?;
    fault::point(FAULT_POINTS[4]);
    if let Err(e) = rename(&new_cert, &dest.cert) {
        // Put the old key back so the installed pair matches again.
        if let Some(k) = &old_key {
            let _ = keep_copy(&dest.key, k, KEY_MODE);
        }
        return Err(cleanup(e));
    }
    fault::point(FAULT_POINTS[5]);
    sync_dir(&dest.cert)?;
    if dest.key.parent() != dest.cert.parent() {
        sync_dir(&dest.key)?;
    }
    fault::point(FAULT_POINTS[6]);
    Ok(InstallOutcome { kept_previous })
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The installed pair matches (or nothing is installed); leftovers removed.
    Clean,
    /// An interrupted install was finished: the new pair is installed.
    RolledForward,
    /// An interrupted install was undone: the previous pair is back.
    RolledBack,
}

/// Repair an install interrupted by a crash. Call under the lock, before
/// reading what is installed.
pub fn recover(dest: &Dest) -> Result<Recovery, InstallError> {
    let (new_cert, new_key) = (new_path(&dest.cert), new_path(&dest.key));
    let chain = read_opt(&dest.cert, MAX_CHAIN_BYTES)?;
    let key = read_opt(&dest.key, MAX_KEY_BYTES)?.map(zeroize::Zeroizing::new);
    let consistent = match (&chain, &key) {
        (Some(c), Some(k)) => pair_matches(c, k),
        (None, None) => true,
        _ => false,
    };
    let remove_leftovers = || {
        for p in [&new_cert, &new_key] {
            let _ = std::fs::remove_file(p);
        }
        for p in [&dest.cert, &dest.key] {
            let _ = std::fs::remove_file(crate::fsutil::temp_path(&prev_path(p)));
            let _ = std::fs::remove_file(crate::fsutil::temp_path(p));
        }
    };
    if consistent {
        remove_leftovers();
        return Ok(Recovery::Clean);
    }
    // Roll forward: the key was renamed, the new cert still waits.
    if let (Some(k), Some(nc)) = (&key, read_opt(&new_cert, MAX_CHAIN_BYTES)?) {
        if pair_matches(&nc, k) {
            rename(&new_cert, &dest.cert)?;
            sync_dir(&dest.cert)?;
            remove_leftovers();
            tracing::warn!(cert = %dest.cert.display(), "finished an install that was interrupted: the new pair is installed");
            return Ok(Recovery::RolledForward);
        }
    }
    // Roll back to the kept previous pair.
    let (pc, pk) = (prev_path(&dest.cert), prev_path(&dest.key));
    let prev_chain = read_opt(&pc, MAX_CHAIN_BYTES)?;
    let prev_key = read_opt(&pk, MAX_KEY_BYTES)?.map(zeroize::Zeroizing::new);
    if let (Some(c), Some(k)) = (&prev_chain, &prev_key) {
        if pair_matches(c, k) {
            keep_copy(&dest.key, k, KEY_MODE)?;
            keep_copy(&dest.cert, c, CERT_MODE)?;
            sync_dir(&dest.cert)?;
            remove_leftovers();
            tracing::warn!(cert = %dest.cert.display(), "undid an install that was interrupted: the previous pair is back");
            return Ok(Recovery::RolledBack);
        }
    }
    Err(InstallError::Unrepairable {
        cert: dest.cert.clone(),
        key: dest.key.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsync_core::testutil::{KeyKind, TestCa};
    use certsync_core::validate::{validate, Policy};
    use std::os::unix::fs::MetadataExt;
    use std::time::SystemTime;

    fn validated(ca: &TestCa) -> ValidatedBundle {
        let leaf = ca.leaf(KeyKind::P384, &["mail.example.com"]);
        let hosts = vec!["mail.example.com".to_string()];
        validate(
            leaf.bundle(),
            &Policy {
                hostnames: &hosts,
                now: SystemTime::now(),
                installed_not_after: None,
                force: Default::default(),
                anchors: &certsync_core::testutil::test_anchors(),
            },
        )
        .unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn installs_exact_bytes_with_modes_and_keeps_previous() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let dest = Dest::new(dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let a = validated(&ca);
        assert!(!install(&dest, &a).unwrap().kept_previous);
        assert_eq!(std::fs::read(&dest.cert).unwrap(), a.bundle().chain);
        assert_eq!(std::fs::read(&dest.key).unwrap(), a.bundle().key.expose());
        assert_eq!(mode(&dest.cert), CERT_MODE);
        assert_eq!(mode(&dest.key), KEY_MODE);
        let b = validated(&ca);
        assert!(install(&dest, &b).unwrap().kept_previous);
        assert_eq!(
            std::fs::read(prev_path(&dest.cert)).unwrap(),
            a.bundle().chain
        );
        assert_eq!(mode(&prev_path(&dest.key)), KEY_MODE);
        let inst = read_installed(&dest).unwrap().unwrap();
        assert!(inst.matching);
        assert_eq!(inst.chain_sha256, b.chain_sha256());
        assert!(!new_path(&dest.cert).exists() && !new_path(&dest.key).exists());
    }

    #[test]
    fn replaces_symlinks_instead_of_writing_through_them() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let dest = Dest::new(dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::os::unix::fs::symlink(&victim, &dest.key).unwrap();
        std::os::unix::fs::symlink(&victim, new_path(&dest.key)).unwrap();
        install(&dest, &validated(&ca)).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&dest.key)
            .unwrap()
            .file_type()
            .is_file());
    }

    #[test]
    fn missing_directory_is_named() {
        let ca = TestCa::new();
        let dest = Dest::new(
            "/nonexistent/certsync/cert.pem",
            "/nonexistent/certsync/key.pem",
        );
        let e = install(&dest, &validated(&ca)).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/certsync"), "{e}");
    }

    #[test]
    fn recovery_rolls_forward_and_back() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let dest = Dest::new(dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let a = validated(&ca);
        let b = validated(&ca);
        install(&dest, &a).unwrap();
        assert_eq!(recover(&dest).unwrap(), Recovery::Clean);
        // Simulate a crash between the renames: new key in place, new cert waiting.
        install(&dest, &a).unwrap();
        std::fs::write(new_path(&dest.cert), &b.bundle().chain).unwrap();
        std::fs::write(&dest.key, b.bundle().key.expose()).unwrap();
        assert_eq!(recover(&dest).unwrap(), Recovery::RolledForward);
        assert_eq!(
            read_installed(&dest).unwrap().unwrap().chain_sha256,
            b.chain_sha256()
        );
        // Mismatch with no waiting cert: back to the kept previous pair.
        let c = validated(&ca);
        install(&dest, &c).unwrap(); // prev = b
        std::fs::write(&dest.key, a.bundle().key.expose()).unwrap();
        assert_eq!(recover(&dest).unwrap(), Recovery::RolledBack);
        let inst = read_installed(&dest).unwrap().unwrap();
        assert!(inst.matching);
        assert_eq!(inst.chain_sha256, b.chain_sha256());
        // Nothing to repair with: a clear error.
        std::fs::remove_file(prev_path(&dest.key)).unwrap();
        std::fs::write(&dest.key, a.bundle().key.expose()).unwrap();
        assert!(matches!(
            recover(&dest),
            Err(InstallError::Unrepairable { .. })
        ));
    }
}
