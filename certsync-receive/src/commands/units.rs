//! `certsync-receive units`: let `certsync-deploy.service` write where
//! receive.toml installs, and `certsync-deploy.path` watch where `serve`
//! asks.
//!
//! The shipped deploy unit may write only mailcow's default ssl dir and the
//! default staging dir (`ReadWritePaths=`, under `ProtectSystem=strict`).
//! With `[mailcow] dir` elsewhere, or a `cert_path` of its own, the install
//! would fail with "Read-only file system". systemd cannot read
//! receive.toml, so this writes what it says as drop-ins:
//!
//! ```text
//! /etc/systemd/system/certsync-deploy.service.d/certsync-paths.conf
//!     ReadWritePaths= (cleared, then each install dir and the staging dir)
//!     ProtectHome=read-only  (only when one of them is under /home or /root)
//! /etc/systemd/system/certsync-deploy.path.d/certsync-staging.conf
//!     PathExists= (cleared, then <staging_dir>/deploy.request)
//! ```

use std::path::{Path, PathBuf};

use certsync_core::units::{self, DropIn, PathUse, UnitsError};

use crate::pipeline::install::under_home;
use crate::pipeline::stage::Entry;
use crate::settings::Settings;

pub const DEPLOY_SERVICE: &str = "certsync-deploy.service";
pub const DEPLOY_PATH: &str = "certsync-deploy.path";
pub const SERVICE_DROP_IN: &str = "certsync-paths.conf";
pub const PATH_DROP_IN: &str = "certsync-staging.conf";

/// The dirs root's deploy writes into: each install dir and mailcow's ssl
/// dir (whose per-domain folders get the pair too), a dir inside another
/// one listed once, then the staging dir.
pub fn writable_dirs(settings: &Settings) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for c in &settings.certs {
        for file in [&c.cert_path, &c.key_path] {
            if let Some(parent) = file.parent() {
                dirs.push(parent.to_path_buf());
            }
        }
        // mailcow's per-domain folders lie inside its ssl dir.
        dirs.extend(c.folders_root.iter().cloned());
    }
    dirs.sort();
    dirs.dedup();
    let covered: Vec<PathBuf> = dirs.clone();
    dirs.retain(|d| !covered.iter().any(|c| c != d && d.starts_with(c)));
    dirs.push(settings.staging_dir.clone());
    dirs
}

/// The two drop-ins for `settings`.
pub fn drop_ins(settings: &Settings) -> Result<[DropIn; 2], UnitsError> {
    let header = |unit: &str| {
        format!(
            "# Written by `certsync-receive units` from {}.\n\
             # Run it again after changing paths there, then `systemctl daemon-reload`.\n\
             # Your own changes belong in `systemctl edit {unit}`.\n",
            settings.config_path.display()
        )
    };
    let dirs = writable_dirs(settings);
    let mut service = header(DEPLOY_SERVICE);
    service.push_str("[Service]\nReadWritePaths=\n");
    for d in &dirs {
        service.push_str("ReadWritePaths=");
        service.push_str(&units::unit_path_value(d, PathUse::ListItem)?);
        service.push('\n');
    }
    if dirs.iter().any(|d| under_home(d)) {
        service.push_str("# An install dir is under /home or /root, which ProtectHome=yes hides.\nProtectHome=read-only\n");
    }
    let mut path = header(DEPLOY_PATH);
    path.push_str("[Path]\nPathExists=\nPathExists=");
    path.push_str(&units::unit_path_value(
        &settings.staging_dir.join(Entry::Request.name()),
        PathUse::Single,
    )?);
    path.push('\n');
    Ok([
        DropIn {
            unit: DEPLOY_SERVICE,
            file: SERVICE_DROP_IN,
            text: service,
        },
        DropIn {
            unit: DEPLOY_PATH,
            file: PATH_DROP_IN,
            text: path,
        },
    ])
}

/// Write both under `dir`; the paths written.
pub fn write(settings: &Settings, dir: &Path) -> Result<Vec<PathBuf>, UnitsError> {
    drop_ins(settings)?.iter().map(|d| d.write(dir)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsync_core::config::ReceiveConfig;

    fn settings(text: &str) -> Settings {
        let path = Path::new("/etc/certsync/receive.toml");
        Settings::resolve(ReceiveConfig::from_toml(text, path).unwrap(), path).unwrap()
    }

    #[test]
    fn lists_install_dirs_and_staging_and_opens_home_read_only() {
        let s = settings(
            "staging_dir = \"/srv/staging\"\n[[cert]]\nname = \"a\"\nhostnames = [\"a.example\"]\ncert_path = \"/root/mailcow/ssl/cert.pem\"\nkey_path = \"/root/mailcow/ssl/key.pem\"\nreload = []\n",
        );
        let [service, path] = drop_ins(&s).unwrap();
        let body: Vec<&str> = service
            .text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect();
        assert_eq!(
            body,
            [
                "[Service]",
                "ReadWritePaths=",
                "ReadWritePaths=/root/mailcow/ssl",
                "ReadWritePaths=/srv/staging",
                "ProtectHome=read-only",
            ]
        );
        assert!(path
            .text
            .ends_with("[Path]\nPathExists=\nPathExists=/srv/staging/deploy.request\n"));

        let root = tempfile::tempdir().unwrap();
        let written = write(&s, root.path()).unwrap();
        assert_eq!(
            written,
            [
                root.path()
                    .join("certsync-deploy.service.d/certsync-paths.conf"),
                root.path()
                    .join("certsync-deploy.path.d/certsync-staging.conf"),
            ]
        );
    }

    #[test]
    fn a_path_systemd_would_split_is_refused_and_nothing_written() {
        let s = settings(
            "[[cert]]\nname = \"a\"\nhostnames = [\"a.example\"]\ncert_path = \"/srv/my mailcow/cert.pem\"\nkey_path = \"/srv/my mailcow/key.pem\"\nreload = []\n",
        );
        let root = tempfile::tempdir().unwrap();
        let e = write(&s, root.path()).unwrap_err();
        assert!(e.to_string().contains("/srv/my mailcow"), "{e}");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
