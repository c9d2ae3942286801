//! `certsync-push units`: point `certsync-push.path` at every live dir that
//! push.toml names, and warn when a configured source is not watched.
//!
//! The shipped `certsync-push.path` watches one example dir (npm-5). A path
//! unit sees changes only in the dirs it names (inotify is not recursive),
//! so a certificate in npm-7 would be pushed only by the twice-daily timer,
//! up to 12 hours late, and nothing would say so. This writes
//!
//! ```text
//! /etc/systemd/system/certsync-push.path.d/certsync-sources.conf
//! ```
//!
//! with an empty `PathChanged=` (dropping the shipped example) and one
//! `PathChanged=` per dir; `push` and `status` warn (see [`unwatched`])
//! when `certsync-push.path` is enabled but misses a source, or when only
//! the timer is enabled.

use std::io::Write;
use std::path::{Path, PathBuf};

use certsync_core::config::PushConfig;
use certsync_core::units::{self, DropIn, PathUse, UnitsError};
use certsync_core::ExitCode;

use crate::discover::pick_for_domain_in;
use crate::error::PushError;

pub const PATH_UNIT: &str = "certsync-push.path";
pub const TIMER_UNIT: &str = "certsync-push.timer";
pub const WATCH_UNIT: &str = "certsync-push-watch.service";
/// The drop-in file this writes in `certsync-push.path.d/`.
pub const DROP_IN_FILE: &str = "certsync-sources.conf";

/// `certsync-push units [--dir DIR]`: write the drop-in into `dir`, print
/// `watch DIR` per watched dir on `out`, and say on `err` what to reload.
pub fn run(
    config: &Path,
    dir: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<ExitCode, PushError> {
    let cfg = PushConfig::load(config)?;
    let path = drop_in(&cfg, config)?.write(dir)?;
    for d in watched_dirs(&cfg) {
        writeln!(out, "watch {}", d.display())?;
    }
    out.flush()?;
    writeln!(
        err,
        "wrote {}; now run: systemctl daemon-reload && systemctl restart {PATH_UNIT}",
        path.display(),
    )?;
    Ok(ExitCode::Success)
}

/// The dirs `certsync-push.path` must watch: each `source`; for
/// `live_root` + `domain`, each live root (NPM makes a new npm-N there when
/// a certificate is recreated) and the dir that covers the domain now.
pub fn watched_dirs(cfg: &PushConfig) -> Vec<PathBuf> {
    let now = certsync_core::time::now_unix();
    let mut dirs = Vec::new();
    for c in &cfg.certs {
        if let Some(src) = &c.source {
            dirs.push(src.clone());
        }
        if let (Some(roots), Some(domain)) = (&c.live_root, &c.domain) {
            dirs.extend(roots.paths().iter().cloned());
            if let Ok(found) = pick_for_domain_in(roots.paths(), domain, now) {
                dirs.push(found.dir);
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The drop-in for `cfg`, read from `config_path`.
pub fn drop_in(cfg: &PushConfig, config_path: &Path) -> Result<DropIn, UnitsError> {
    let mut text = format!(
        "# Written by `certsync-push units` from {}.\n\
         # Run it again after changing a [[cert]] there, then\n\
         # `systemctl daemon-reload && systemctl restart {PATH_UNIT}`.\n\
         # Your own changes belong in `systemctl edit {PATH_UNIT}`.\n\
         [Path]\n\
         PathChanged=\n",
        config_path.display()
    );
    for dir in watched_dirs(cfg) {
        text.push_str("PathChanged=");
        text.push_str(&units::unit_path_value(&dir, PathUse::Single)?);
        text.push('\n');
    }
    Ok(DropIn {
        unit: PATH_UNIT,
        file: DROP_IN_FILE,
        text,
    })
}

/// What `push`/`status` should warn about on the host whose root is `root`
/// (`/` outside tests): one line per problem.
pub fn unwatched(cfg: &PushConfig, root: &Path) -> Vec<String> {
    if units::enabled(root, WATCH_UNIT) {
        // The watch daemon watches every source itself.
        return Vec::new();
    }
    let fix = format!(
        "run `certsync-push units && systemctl daemon-reload && systemctl restart {PATH_UNIT}`"
    );
    if !units::enabled(root, PATH_UNIT) {
        if units::enabled(root, TIMER_UNIT) {
            return vec![format!(
                "only {TIMER_UNIT} is enabled: a renewal is pushed up to 12 h late; \
                 `certsync-push units`, then `systemctl enable --now {PATH_UNIT}` (or use {WATCH_UNIT})"
            )];
        }
        return Vec::new();
    }
    let watched: Vec<PathBuf> =
        units::merged_values(&units::unit_dirs(root), PATH_UNIT, "Path", "PathChanged")
            .into_iter()
            .map(PathBuf::from)
            .collect();
    let mut out = Vec::new();
    for c in &cfg.certs {
        let Some(src) = &c.source else {
            continue;
        };
        if !watched.iter().any(|w| w == src) {
            out.push(format!(
                "[[cert]] {:?}: {PATH_UNIT} does not watch {} (it watches: {}), so a renewal waits for the timer; {fix}",
                c.name,
                src.display(),
                if watched.is_empty() {
                    "nothing".to_string()
                } else {
                    watched
                        .iter()
                        .map(|w| w.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    out
}

/// Log [`unwatched`] for this host.
pub fn warn_unwatched(cfg: &PushConfig) {
    for line in unwatched(cfg, Path::new("/")) {
        tracing::warn!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sources: &[&Path]) -> PushConfig {
        let mut text = String::new();
        for (i, s) in sources.iter().enumerate() {
            text.push_str(&format!("[[cert]]\nname = \"c{i}\"\nsource = {s:?}\n"));
        }
        text.push_str("[[target]]\nname = \"t\"\ntransport = \"local\"\n");
        PushConfig::from_toml(&text, Path::new("/etc/certsync/push.toml")).unwrap()
    }

    #[test]
    fn drop_in_names_every_source_and_clears_the_example() {
        let cfg = config(&[
            Path::new("/opt/npm/letsencrypt/live/npm-7"),
            Path::new("/root/npm/letsencrypt/live/npm-2"),
        ]);
        let d = drop_in(&cfg, Path::new("/etc/certsync/push.toml")).unwrap();
        let lines: Vec<&str> = d.text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "[Path]",
                "PathChanged=",
                "PathChanged=/opt/npm/letsencrypt/live/npm-7",
                "PathChanged=/root/npm/letsencrypt/live/npm-2",
            ]
        );
    }

    #[test]
    fn warns_only_when_an_enabled_path_unit_misses_a_source() {
        let root = tempfile::tempdir().unwrap();
        let dirs = units::unit_dirs(root.path());
        std::fs::create_dir_all(&dirs[3]).unwrap();
        std::fs::write(
            dirs[3].join(PATH_UNIT),
            "[Path]\nPathChanged=/opt/npm/letsencrypt/live/npm-5\n",
        )
        .unwrap();
        let npm7 = Path::new("/opt/npm/letsencrypt/live/npm-7");
        let cfg = config(&[npm7]);
        // Nothing enabled: no opinion (push may be run by hand or cron).
        assert!(unwatched(&cfg, root.path()).is_empty());

        let wants = dirs[0].join("paths.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(dirs[3].join(PATH_UNIT), wants.join(PATH_UNIT)).unwrap();
        let warned = unwatched(&cfg, root.path());
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].contains("npm-7") && warned[0].contains("certsync-push units"),
            "{}",
            warned[0]
        );

        drop_in(&cfg, Path::new("/etc/certsync/push.toml"))
            .unwrap()
            .write(&dirs[0])
            .unwrap();
        assert!(unwatched(&cfg, root.path()).is_empty());

        // The watch daemon enabled: the path unit does not matter.
        let cfg2 = config(&[npm7, Path::new("/srv/other")]);
        assert_eq!(unwatched(&cfg2, root.path()).len(), 1);
        let multi = dirs[0].join("multi-user.target.wants");
        std::fs::create_dir_all(&multi).unwrap();
        std::os::unix::fs::symlink("/dev/null", multi.join(WATCH_UNIT)).unwrap();
        assert!(unwatched(&cfg2, root.path()).is_empty());
    }
}
