//! systemd drop-ins that certsync writes from its own config, and what a
//! unit's files say once systemd has merged them.
//!
//! Some unit settings can only come from the config: which live dirs
//! `certsync-push.path` watches (`PathChanged=`), which dirs
//! `certsync-deploy.service` may write (`ReadWritePaths=`). systemd cannot
//! compute them, so `certsync-push units` and `certsync-receive units`
//! write them as drop-ins under `/etc/systemd/system/<unit>.d/`, where an
//! admin's own `systemctl edit` drop-in (`override.conf`) still sorts after
//! them and wins (docs/contract.md, "Drop-ins").
//!
//! Invariants:
//! - A path goes into a unit file only if systemd reads it back as the same
//!   path: absolute, no control characters, and `%` doubled (systemd's
//!   specifier escape). Lists (`ReadWritePaths=`) are split at whitespace,
//!   so there a path with whitespace or quotes is refused, not quoted.
//! - A drop-in is replaced atomically (temp file + rename), 0644.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where admins' and certsync's drop-ins go.
pub const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// Where systemd looks for system units, highest priority first.
pub const UNIT_PATH: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

#[derive(Debug, Error)]
pub enum UnitsError {
    #[error("{}: cannot go into a systemd unit file: {why}", path.display())]
    BadPath { path: PathBuf, why: &'static str },

    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a path is used in a unit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathUse {
    /// The whole value is one path (`PathChanged=`, `PathExists=`).
    Single,
    /// One of a whitespace-separated list (`ReadWritePaths=`).
    ListItem,
}

/// `path` as a unit file value; see the module docs.
pub fn unit_path_value(path: &Path, usage: PathUse) -> Result<String, UnitsError> {
    let bad = |why| UnitsError::BadPath {
        path: path.to_path_buf(),
        why,
    };
    let text = path.to_str().ok_or_else(|| bad("not UTF-8"))?;
    if !path.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    if text.chars().any(char::is_control) {
        return Err(bad("it holds a control character"));
    }
    if usage == PathUse::ListItem
        && text
            .chars()
            .any(|c| c.is_whitespace() || "\"'\\".contains(c))
    {
        return Err(bad(
            "a list entry cannot hold whitespace, quotes or backslashes",
        ));
    }
    Ok(text.replace('%', "%%"))
}

/// One drop-in file: `<dir>/<unit>.d/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropIn {
    pub unit: &'static str,
    pub file: &'static str,
    pub text: String,
}

impl DropIn {
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.d", self.unit)).join(self.file)
    }

    /// Write it under `dir` (normally [`SYSTEM_UNIT_DIR`]), atomically.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, UnitsError> {
        let path = self.path(dir);
        let err = |source| UnitsError::Write {
            path: path.clone(),
            source,
        };
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(err)?;
        let tmp = parent.join(format!(".{}.certsync-tmp", self.file));
        let _ = std::fs::remove_file(&tmp);
        // create_new (O_EXCL) never opens through a link left at `tmp`.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(err)?;
        let written = f
            .write_all(self.text.as_bytes())
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(path)
    }
}

/// The values `key=` ends with in `[section]` of `unit`, merged as systemd
/// merges the unit file (first of `dirs` that has it) and its drop-ins
/// (`<unit>.d/*.conf` of every dir, by file name; a name in an earlier dir
/// hides the same name in a later one). An empty assignment clears the
/// list. Specifier escapes (`%%`) are undone; other specifiers are kept.
pub fn merged_values(dirs: &[PathBuf], unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut files = Vec::new();
    if let Some(main) = dirs.iter().map(|d| d.join(unit)).find(|p| p.is_file()) {
        files.push(main);
    }
    let mut drop_ins: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d.join(format!("{unit}.d"))) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") {
                drop_ins.entry(name).or_insert_with(|| e.path());
            }
        }
    }
    files.extend(drop_ins.into_values());
    let mut values = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let mut current = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = s.to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if current != section || k.trim() != key {
                continue;
            }
            let v = v.trim();
            if v.is_empty() {
                values.clear();
            } else {
                values.push(v.replace("%%", "%"));
            }
        }
    }
    values
}

/// [`UNIT_PATH`] under `root` (`/` on a real host; a temp dir in tests).
pub fn unit_dirs(root: &Path) -> Vec<PathBuf> {
    UNIT_PATH
        .iter()
        .map(|d| root.join(d.trim_start_matches('/')))
        .collect()
}

/// Is `unit` enabled: a link in some `*.wants/` of `<root>/etc/systemd/system`?
pub fn enabled(root: &Path, unit: &str) -> bool {
    let dir = root.join(SYSTEM_UNIT_DIR.trim_start_matches('/'));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name().to_string_lossy().ends_with(".wants")
            && e.path().join(unit).symlink_metadata().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_or_are_refused() {
        let v = unit_path_value(Path::new("/srv/100%/live"), PathUse::Single).unwrap();
        assert_eq!(v, "/srv/100%%/live");
        assert!(unit_path_value(Path::new("/srv/a b"), PathUse::Single).is_ok());
        for bad in ["relative/dir", "/srv/a\nExecStart=/bin/evil"] {
            assert!(
                unit_path_value(Path::new(bad), PathUse::Single).is_err(),
                "{bad}"
            );
        }
        for bad in ["/srv/a b", "/srv/\"q\"", "/srv/a\\b"] {
            let e = unit_path_value(Path::new(bad), PathUse::ListItem).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn merges_like_systemd_and_writes_atomically() {
        let root = tempfile::tempdir().unwrap();
        let dirs = unit_dirs(root.path());
        let lib = &dirs[3];
        std::fs::create_dir_all(lib).unwrap();
        std::fs::write(lib.join("x.path"), "[Path]\nPathChanged=/a\nUnit=y\n").unwrap();
        assert_eq!(
            merged_values(&dirs, "x.path", "Path", "PathChanged"),
            ["/a"]
        );

        let ours = DropIn {
            unit: "x.path",
            file: "certsync.conf",
            text: "[Path]\nPathChanged=\nPathChanged=/b/100%%\n".into(),
        };
        let written = ours.write(&dirs[0]).unwrap();
        assert_eq!(written, dirs[0].join("x.path.d/certsync.conf"));
        assert_eq!(
            merged_values(&dirs, "x.path", "Path", "PathChanged"),
            ["/b/100%"]
        );
        // An admin's override sorts after ours and adds to it.
        std::fs::write(
            dirs[0].join("x.path.d/override.conf"),
            "[Path]\nPathChanged=/c\n",
        )
        .unwrap();
        assert_eq!(
            merged_values(&dirs, "x.path", "Path", "PathChanged"),
            ["/b/100%", "/c"]
        );
        // A same-named file in /run hides nothing in /etc (etc wins).
        std::fs::create_dir_all(dirs[1].join("x.path.d")).unwrap();
        std::fs::write(
            dirs[1].join("x.path.d/certsync.conf"),
            "[Path]\nPathChanged=\n",
        )
        .unwrap();
        assert_eq!(
            merged_values(&dirs, "x.path", "Path", "PathChanged").len(),
            2
        );
        // No temp file left behind.
        let left: Vec<_> = std::fs::read_dir(dirs[0].join("x.path.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");

        assert!(!enabled(root.path(), "x.path"));
        std::fs::create_dir_all(dirs[0].join("paths.target.wants")).unwrap();
        std::os::unix::fs::symlink(
            lib.join("x.path"),
            dirs[0].join("paths.target.wants/x.path"),
        )
        .unwrap();
        assert!(enabled(root.path(), "x.path"));
    }
}
