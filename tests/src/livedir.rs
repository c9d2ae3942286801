//! A certbot-style live dir, built and renewed exactly the way certbot does.
//!
//! Layout (as certbot, and NPM's certbot, write it):
//!
//! ```text
//! <root>/archive/<name>/{cert,privkey,chain,fullchain}N.pem   (privkey 0600)
//! <root>/live/<name>/{cert,privkey,chain,fullchain}.pem
//!        -> ../../archive/<name>/<kind>N.pem                   (relative links)
//! ```
//!
//! A renewal follows certbot's `storage.RenewableCert` (`save_successor`,
//! then `update_all_links_to`) step by step, so tests can stop after any
//! step or pause between steps and let a reader or watcher see each state:
//!
//! 1. write the archive files for N+1;
//! 2. create `previous_<kind>.pem` links (absolute, to the current target);
//! 3. … 10. for cert, privkey, chain, fullchain in that order: unlink the
//!    link (odd steps), then create it again pointing at N+1 (even steps) —
//!    certbot's `_update_link_to` is `os.unlink` + `os.symlink`, not atomic;
//! 11. remove the `previous_*` links.
//!
//! Helpers for negative tests break a dir on purpose: point one link at
//! another generation, delete a link, add a stray `previous_*`, or replace
//! the links with plain copies.
//!
//! This is test code: it panics on any I/O failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use certsync_core::testutil::TestLeaf;

/// certbot's four kinds, in the order a renewal relinks them (`ALL_FOUR`).
pub const KINDS: [&str; 4] = ["cert", "privkey", "chain", "fullchain"];

/// Steps in one renewal (see the module docs).
pub const RENEWAL_STEPS: usize = 11;

/// What step `k` (1-based) of a renewal does, for test messages.
pub fn step_name(k: usize) -> String {
    match k {
        0 => "nothing yet".into(),
        1 => "archive files for N+1 written".into(),
        2 => "previous_* links created".into(),
        3..=10 => {
            let kind = KINDS[(k - 3) / 2];
            if k % 2 == 1 {
                format!("{kind}.pem unlinked")
            } else {
                format!("{kind}.pem relinked to N+1")
            }
        }
        11 => "previous_* links removed (done)".into(),
        _ => format!("no step {k}"),
    }
}

/// How to run a renewal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Renewal {
    /// Sleep after each step (so others can observe it).
    pub pause: Duration,
    /// Stop after this step (1..=11), leaving a half-renewed dir.
    pub stop_after: Option<usize>,
}

/// One certbot lineage under `<root>`.
#[derive(Debug, Clone)]
pub struct LiveDir {
    root: PathBuf,
    name: String,
    /// The generation the links point at once no renewal is in progress.
    current: u32,
    /// Steps of the renewal in progress already done (0 = none running).
    done: usize,
}

impl LiveDir {
    /// `<root>/live/<name>` and `<root>/archive/<name>` at generation 1.
    pub fn new(root: &Path, name: &str, leaf: &TestLeaf) -> LiveDir {
        let d = LiveDir {
            root: root.to_path_buf(),
            name: name.to_string(),
            current: 1,
            done: 0,
        };
        fs::create_dir_all(d.dir()).unwrap();
        fs::create_dir_all(d.archive()).unwrap();
        d.write_archive(1, leaf);
        for kind in KINDS {
            d.point(kind, 1);
        }
        d
    }

    /// The live dir, `<root>/live/<name>` (what `source` names).
    pub fn dir(&self) -> PathBuf {
        self.live_root().join(&self.name)
    }

    /// `<root>/live` (what `live_root` and `discover --live-root` name).
    pub fn live_root(&self) -> PathBuf {
        self.root.join("live")
    }

    pub fn archive(&self) -> PathBuf {
        self.root.join("archive").join(&self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generation the links point at (the last completed renewal).
    pub fn generation(&self) -> u32 {
        self.current
    }

    /// `<root>/archive/<name>/<kind>N.pem`.
    pub fn archive_file(&self, kind: &str, n: u32) -> PathBuf {
        self.archive().join(format!("{kind}{n}.pem"))
    }

    /// The link of one kind: `<root>/live/<name>/<kind>.pem`.
    pub fn link(&self, kind: &str) -> PathBuf {
        self.dir().join(format!("{kind}.pem"))
    }

    /// Write the four archive files of generation `n` (links untouched).
    pub fn write_archive(&self, n: u32, leaf: &TestLeaf) {
        fs::write(self.archive_file("cert", n), &leaf.cert_pem).unwrap();
        fs::write(self.archive_file("chain", n), &leaf.intermediates_pem).unwrap();
        fs::write(self.archive_file("fullchain", n), &leaf.chain_pem).unwrap();
        let key = self.archive_file("privkey", n);
        fs::write(&key, leaf.key_pem.expose()).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// (Re)point `<kind>.pem` at generation `n`, relative like certbot:
    /// `../../archive/<name>/<kind>N.pem`. Use it to mix generations.
    pub fn point(&self, kind: &str, n: u32) {
        let link = self.link(kind);
        let _ = fs::remove_file(&link);
        symlink(format!("../../archive/{}/{kind}{n}.pem", self.name), &link).unwrap();
    }

    /// Delete `<kind>.pem`.
    pub fn remove_link(&self, kind: &str) {
        fs::remove_file(self.link(kind)).unwrap();
    }

    /// Create `previous_<kind>.pem` pointing (absolute) at generation `n`.
    pub fn add_previous(&self, kind: &str, n: u32) {
        let link = self.dir().join(format!("previous_{kind}.pem"));
        let _ = fs::remove_file(&link);
        symlink(self.archive_file(kind, n), link).unwrap();
    }

    /// Remove every `previous_*.pem` (as the last renewal step does).
    pub fn remove_previous(&self) {
        for kind in KINDS {
            let _ = fs::remove_file(self.dir().join(format!("previous_{kind}.pem")));
        }
    }

    /// Replace the four links by regular copies of what they point at (an
    /// operator's `cp -L`).
    pub fn flatten(&self) {
        for kind in KINDS {
            let link = self.link(kind);
            let bytes = fs::read(&link).unwrap();
            fs::remove_file(&link).unwrap();
            fs::write(&link, bytes).unwrap();
        }
    }

    /// A complete certbot-style renewal to generation N+1.
    pub fn renew(&mut self, leaf: &TestLeaf) {
        self.renew_with(leaf, Renewal::default());
    }

    /// A renewal to N+1, pausing between steps and optionally stopping
    /// after one. Returns the number of the last step done. A stopped
    /// renewal can be carried on with [`LiveDir::step`].
    pub fn renew_with(&mut self, leaf: &TestLeaf, how: Renewal) -> usize {
        let last = how.stop_after.unwrap_or(RENEWAL_STEPS).min(RENEWAL_STEPS);
        let mut k = self.done;
        while k < last {
            k = self.step(leaf);
            if !how.pause.is_zero() {
                std::thread::sleep(how.pause);
            }
        }
        k
    }

    /// Do the next step of the renewal in progress (or start one), and
    /// return its number (1..=11).
    pub fn step(&mut self, leaf: &TestLeaf) -> usize {
        let next = self.current + 1;
        let k = self.done + 1;
        match k {
            1 => self.write_archive(next, leaf),
            2 => {
                for kind in KINDS {
                    self.add_previous(kind, self.current);
                }
            }
            3..=10 => {
                let kind = KINDS[(k - 3) / 2];
                if k % 2 == 1 {
                    self.remove_link(kind);
                } else {
                    self.point(kind, next);
                }
            }
            _ => self.remove_previous(),
        }
        if k == RENEWAL_STEPS {
            self.current = next;
            self.done = 0;
        } else {
            self.done = k;
        }
        k
    }

    /// Steps of the renewal in progress already done (0 when none).
    pub fn steps_done(&self) -> usize {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsync_core::testutil::{KeyKind, TestCa};

    #[test]
    fn builds_relative_links_like_certbot() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["a.example"]);
        let mut d = LiveDir::new(tmp.path(), "npm-5", &leaf);
        assert_eq!(
            fs::read_link(d.link("privkey")).unwrap(),
            PathBuf::from("../../archive/npm-5/privkey1.pem")
        );
        let mode = fs::metadata(d.archive_file("privkey", 1))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(d.link("fullchain")).unwrap(), leaf.chain_pem);

        let next = ca.leaf(KeyKind::P256, &["a.example"]);
        assert_eq!(
            d.renew_with(
                &next,
                Renewal {
                    stop_after: Some(5),
                    ..Default::default()
                }
            ),
            5
        );
        assert!(d.dir().join("previous_cert.pem").exists());
        assert!(!d.link("privkey").exists());
        assert_eq!(
            fs::read_link(d.link("cert")).unwrap(),
            PathBuf::from("../../archive/npm-5/cert2.pem")
        );
        d.renew_with(&next, Renewal::default());
        assert_eq!(d.generation(), 2);
        assert!(!d.dir().join("previous_cert.pem").exists());
        assert_eq!(fs::read(d.link("fullchain")).unwrap(), next.chain_pem);
    }
}
