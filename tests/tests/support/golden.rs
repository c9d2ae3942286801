//! Golden files: what an operator sees, pinned exactly.
//!
//! Each golden file under `tests/golden/` holds one output (a `--help`,
//! a refusal on stderr, `check --json`, …) as the operator reads it, with
//! what differs from run to run replaced by a placeholder:
//!
//! | placeholder | what it stands for |
//! |---|---|
//! | `[ROOT]` | the scene's temp dir |
//! | `[TARGET]` | the cargo target dir the binaries run from |
//! | `[FP]`, `[FP_SHORT]` | a certificate fingerprint, full or its first 8 bytes |
//! | `[DATE]` | a calendar date and time (notAfter, the time of a check) |
//! | `[UNIX]` | a Unix time in seconds |
//! | `[PORT]` | a loopback port |
//! | `[SIZE]` | a byte count (PEM sizes vary with ECDSA signatures) |
//! | `[..]` | anything on the rest of a line (snapbox's own wildcard) |
//!
//! The redaction runs on the whole output before the comparison (not only
//! where the golden file has a placeholder), so a rewritten file is stable.
//! `SNAPSHOTS=overwrite cargo test -p certsync-tests --test golden` rewrites
//! the files from what the binaries print now; review the diff before
//! committing it.

// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use std::path::Path;

use snapbox::data::DataFormat;
use snapbox::{Assert, Data, Redactions};

pub struct Golden {
    redactions: Redactions,
}

impl Golden {
    /// Output that is the same on every run (`--help`): compared as is.
    pub fn exact() -> Golden {
        Golden {
            redactions: Redactions::new(),
        }
    }

    /// Output of a scene built at test time: the certificates' fingerprints
    /// and dates, Unix times, ports, the target dir and `root` redacted.
    pub fn scene(root: &Path) -> Golden {
        let mut redactions = Redactions::new();
        let rules: &[(&'static str, &str)] = &[
            ("[FP]", "(?:[0-9A-F]{2}:){31}[0-9A-F]{2}"),
            ("[FP_SHORT]", "(?:[0-9A-F]{2}:){7}[0-9A-F]{2}"),
            (
                "[DATE]",
                r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}| UTC)?)?",
            ),
            ("[UNIX]", r"\b1[5-9]\d{8}\b"),
            // PEM sizes vary with the DER length of ECDSA signatures.
            ("[SIZE]", r"\b(?<redacted>\d+) bytes\b"),
            (
                "[PORT]",
                r"(?:127\.0\.0\.1|localhost|\[::1\]):(?<redacted>\d{2,5})\b",
            ),
        ];
        for &(placeholder, pattern) in rules {
            redactions
                .insert(placeholder, regex::Regex::new(pattern).unwrap())
                .unwrap();
        }
        let target = certsync_tests::bins::target_dir();
        redactions.insert("[TARGET]", target).unwrap();
        redactions.insert("[ROOT]", root.to_path_buf()).unwrap();
        Golden { redactions }
    }

    /// Also replace `path` (another host's temp dir) with `placeholder`.
    pub fn also(mut self, path: &Path, placeholder: &'static str) -> Golden {
        self.redactions
            .insert(placeholder, path.to_path_buf())
            .unwrap();
        self
    }

    /// `actual` with every per-run part replaced by its placeholder.
    pub fn redact(&self, actual: &str) -> String {
        self.redactions.redact(actual)
    }

    /// Compare `actual` (redacted) with `tests/golden/<name>`; `Err` with a
    /// diff when they differ (or the file is missing).
    pub fn check(&self, name: &str, actual: &str) -> Result<(), String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("golden")
            .join(name);
        let expected = Data::read_from(&path, Some(DataFormat::Text));
        Assert::new()
            .action_env("SNAPSHOTS")
            // Messages quote shell (`tr '\r' '\n'`): backslashes stay.
            .normalize_paths(false)
            .redact_with(self.redactions.clone())
            .try_eq(Some(&name), Data::text(self.redact(actual)), expected)
            .map_err(|err| err.to_string())
    }

    /// [`Golden::check`], panicking with the diff.
    #[track_caller]
    pub fn eq(&self, name: &str, actual: &str) {
        if let Err(diff) = self.check(name, actual) {
            panic!("{name} differs from its golden file:\n{diff}");
        }
    }
}

/// Collects the differences of many goldens, so one run reports (and with
/// `SNAPSHOTS=overwrite` rewrites) all of them, not just the first.
#[derive(Default)]
pub struct Diffs(Vec<String>);

impl Diffs {
    pub fn check(&mut self, golden: &Golden, name: &str, actual: &str) {
        if let Err(diff) = golden.check(name, actual) {
            self.0.push(diff);
        }
    }

    #[track_caller]
    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} golden file(s) differ (SNAPSHOTS=overwrite rewrites them):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}
