//! Where a certificate's pair goes: the configured `cert_path` /
//! `key_path`, and mailcow's per-domain folders whose `domains` the leaf
//! covers; and the repair of an install a crash interrupted there.

use super::install::{self, Dest};
use super::stage::{Entry, StagingDir};
use crate::settings::CertSpec;
use crate::systems::mailcow::{self, FolderPlan};

/// The configured pair of this certificate.
pub fn main_dest(spec: &CertSpec) -> Dest {
    Dest::new(&spec.cert_path, &spec.key_path)
}

/// The pair inside one of mailcow's per-domain folders.
fn folder_dest(dir: &std::path::Path) -> Dest {
    Dest::new(dir.join("cert.pem"), dir.join("key.pem"))
}

/// mailcow's per-domain folders for a leaf with `sans`: the pairs to write
/// (the leaf covers every name in the folder's `domains`) and, for every
/// other folder mailcow serves, why it is left alone.
#[derive(Debug, Default)]
pub struct Folders {
    pub write: Vec<Dest>,
    pub left: Vec<String>,
}

pub fn folders(spec: &CertSpec, sans: &[String]) -> std::io::Result<Folders> {
    let mut out = Folders::default();
    let Some(root) = &spec.folders_root else {
        return Ok(out);
    };
    for folder in mailcow::served_folders(root)? {
        match mailcow::plan_folder(&folder, sans) {
            FolderPlan::Write => out.write.push(folder_dest(&folder.dir)),
            FolderPlan::Leave(why) => out.left.push(why),
        }
    }
    Ok(out)
}

/// Does `dest` hold a file certsync leaves during or after an install?
fn has_certsync_files(dest: &Dest) -> bool {
    [
        install::new_path(&dest.cert),
        install::new_path(&dest.key),
        install::prev_path(&dest.cert),
    ]
    .iter()
    .any(|p| std::fs::symlink_metadata(p).is_ok())
}

/// Repair any interrupted install of this certificate (call under the lock).
///
/// The configured pair must end up matching. A mismatched pair that no
/// kept backup can repair is not an error that stops the run: installing a
/// valid pair over it is the repair. It is logged, and remembered in the
/// staging dir ([`Entry::RepairOwed`]) so that the next push delivers the
/// pair even when the certificate itself is unchanged: in handoff mode the
/// unprivileged `serve` cannot read root's key.pem, so it could not tell on
/// its own.
///
/// A per-domain folder is repaired only when certsync has written there (a
/// folder's own mismatched pair is not ours to judge here), and a folder
/// that cannot be repaired is a warning: `check` and the next install name
/// it.
pub fn recover(staging: &StagingDir, spec: &CertSpec) -> Result<(), install::InstallError> {
    let main = main_dest(spec);
    match install::recover(&main) {
        Ok(install::Recovery::Clean) => {}
        Ok(r) => {
            tracing::warn!(cert = %spec.name, path = %main.cert.display(), "recovered an interrupted install: {r:?}");
        }
        Err(e @ install::InstallError::Unrepairable { .. }) => {
            tracing::error!(cert = %spec.name, "{e}");
            if let Err(e) = staging.write(Entry::RepairOwed(&spec.name), b"1\n", 0o600) {
                tracing::error!(cert = %spec.name, "cannot remember the repair: {e}");
            }
        }
        Err(e) => return Err(e),
    }
    let Some(root) = &spec.folders_root else {
        return Ok(());
    };
    let served = match mailcow::served_folders(root) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(cert = %spec.name, "cannot list the per-domain folders in {}: {e}", root.display());
            return Ok(());
        }
    };
    for folder in served.iter().filter(|f| !f.is_link) {
        let dest = folder_dest(&folder.dir);
        if !has_certsync_files(&dest) {
            continue;
        }
        match install::recover(&dest) {
            Ok(install::Recovery::Clean) => {}
            Ok(r) => {
                tracing::warn!(cert = %spec.name, path = %dest.cert.display(), "recovered an interrupted install: {r:?}")
            }
            Err(e) => {
                tracing::warn!(cert = %spec.name, "per-domain folder {}: {e}", folder.dir.display())
            }
        }
    }
    Ok(())
}
