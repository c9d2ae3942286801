//! `discover`: what certificates sit in a certbot `live` dir (or NPM's
//! `custom_ssl` dir), and which one covers a domain.
//!
//! NPM keeps two kinds of certificates, both in dirs named `npm-<id>`:
//! those it obtains with certbot, in `letsencrypt/live/npm-<id>/` (links
//! into `archive/`), and those uploaded in its UI ("custom"), in
//! `data/custom_ssl/npm-<id>/` (plain `fullchain.pem` and `privkey.pem`).
//! The host paths depend on NPM's volumes (`./letsencrypt:/etc/letsencrypt`,
//! `./data:/data`). An operator cannot tell from the name which dir holds
//! `mail.example.com`. [`discover`] lists every lineage of one root (any
//! subdir holding a `fullchain.pem`; certbot's `README` and stray files are
//! skipped), [`discover_roots`] those of several, with what an operator
//! compares: subject,
//! SANs, key type, notAfter, days left, the leaf's SHA-256 fingerprint, and
//! whether [`crate::source::read_consistent`] accepts it (with the reason if
//! not). For an inconsistent dir the facts come from `fullchain.pem` alone,
//! marked as such, so a dir caught mid-renewal still shows what it holds.
//!
//! [`pick_for_domain`] serves `live_root` + `domain` in push.toml: the
//! lineage whose leaf covers the domain (RFC 6125) with the newest notAfter.
//! If that newest one is inconsistent we do not fall back to an older dir:
//! a renewal in progress would otherwise flip the choice to a stale lineage
//! for a moment. [`choice_changed`] remembers the last choice per cert in
//! the state dir so the caller can log when it moves.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use certsync_core::bundle::{parse_chain, CertInfo};
use certsync_core::config::PushConfig;
use certsync_core::time::now_unix;
use certsync_core::validate::san_matches;
use certsync_core::{ExitCode, Fingerprint};
use serde::Serialize;

use crate::error::PushError;
use crate::source::{read_consistent, SourceError, MAX_PEM_BYTES};

/// One lineage found under the live root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscoveredCert {
    /// The dir's name (`npm-5`).
    pub name: String,
    pub dir: PathBuf,
    /// certbot's archive generation, when consistent and symlinked.
    pub generation: Option<u32>,
    pub subject: Option<String>,
    pub sans: Vec<String>,
    pub key_type: Option<String>,
    /// notAfter, Unix seconds.
    pub not_after: Option<i64>,
    pub days_left: Option<i64>,
    pub fingerprint: Option<Fingerprint>,
    pub consistent: bool,
    /// Why it is not consistent (or unreadable).
    pub problem: Option<String>,
}

impl DiscoveredCert {
    fn covers(&self, domain: &str) -> bool {
        self.sans.iter().any(|san| san_matches(san, domain))
    }

    fn fill(&mut self, info: &CertInfo, now: i64) {
        self.subject = Some(info.subject.clone());
        self.sans = info.sans.clone();
        self.key_type = Some(info.key_type.clone());
        self.not_after = Some(info.not_after);
        self.days_left = Some(info.days_left(now));
        self.fingerprint = Some(info.fingerprint);
    }
}

/// Sort `npm-2` before `npm-10`: compare digit runs as numbers.
fn natural_key(name: &str) -> Vec<(u8, u64, String)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let (d, r) = rest.split_at(digits);
            key.push((0, d.parse().unwrap_or(u64::MAX), String::new()));
            rest = r;
        } else {
            let text = rest.bytes().take_while(|b| !b.is_ascii_digit()).count();
            let (t, r) = rest.split_at(text);
            key.push((1, 0, t.to_string()));
            rest = r;
        }
    }
    key
}

/// The leaf of `fullchain.pem` alone, for a dir that is not consistent
/// (for display only). Opened once, `O_NONBLOCK`, checked to be a regular
/// file and read with a cap: the link may point anywhere (a FIFO,
/// `/dev/zero`, swapped meanwhile).
fn leaf_info_only(dir: &Path) -> Option<CertInfo> {
    let bytes =
        certsync_core::fsread::read_path_capped(&dir.join("fullchain.pem"), MAX_PEM_BYTES as usize)
            .ok()?;
    let certs = parse_chain(&bytes).ok()?;
    certs.first().map(CertInfo::of)
}

/// Every lineage under `live_root` (the certbot `live` dir, e.g.
/// `/opt/npm/letsencrypt/live`), sorted by name (`npm-2` before `npm-10`).
/// `now` is Unix seconds, for days left.
pub fn discover(live_root: &Path, now: i64) -> Result<Vec<DiscoveredCert>, SourceError> {
    let list_err = |source| SourceError::Io {
        action: "list the live root",
        path: live_root.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(live_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SourceError::NoSuchDir {
                path: live_root.to_path_buf(),
                hint: "a live root is certbot's `live` dir (e.g. /opt/npm/letsencrypt/live) or NPM's custom certificate dir (e.g. /opt/npm/data/custom_ssl)",
            })
        }
        Err(e) => return Err(list_err(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        let dir = entry.path();
        // fs::metadata follows a symlinked lineage dir, as certbot would.
        if !fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        // A lineage has fullchain.pem, as a link (even a dangling one) or a file.
        if fs::symlink_metadata(dir.join("fullchain.pem")).is_err() {
            continue;
        }
        let mut cert = DiscoveredCert {
            name: entry.file_name().to_string_lossy().into_owned(),
            dir: dir.clone(),
            generation: None,
            subject: None,
            sans: Vec::new(),
            key_type: None,
            not_after: None,
            days_left: None,
            fingerprint: None,
            consistent: false,
            problem: None,
        };
        match read_consistent(&dir) {
            Ok(pair) => {
                cert.fill(&pair.info, now);
                cert.generation = pair.generation;
                cert.consistent = true;
            }
            Err(e) => {
                if let Some(info) = leaf_info_only(&dir) {
                    cert.fill(&info, now);
                }
                // The dir is on the line already; say only what is wrong.
                cert.problem = Some(match &e {
                    SourceError::Inconsistent { problems, .. } => problems.to_string(),
                    other => other.to_string(),
                });
            }
        }
        found.push(cert);
    }
    found.sort_by_key(|c| natural_key(&c.name));
    Ok(found)
}

/// A civil date `YYYY-MM-DD` (UTC) for Unix seconds (Howard Hinnant's
/// days-to-civil; no date crate needed for one column).
fn date_utc(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A text table, one line per lineage plus a header. Inconsistent dirs say
/// why at the end of their line.
pub fn render_table(certs: &[DiscoveredCert]) -> String {
    let dash = || "-".to_string();
    let rows: Vec<[String; 7]> = certs
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                if c.consistent { "ok" } else { "INCONSISTENT" }.to_string(),
                c.key_type.clone().unwrap_or_else(dash),
                c.not_after.map(date_utc).unwrap_or_else(dash),
                c.days_left.map(|d| d.to_string()).unwrap_or_else(dash),
                c.fingerprint.map(|f| f.short()).unwrap_or_else(dash),
                if c.sans.is_empty() {
                    dash()
                } else {
                    c.sans.join(",")
                },
            ]
        })
        .collect();
    let header = [
        "NAME",
        "STATE",
        "KEY",
        "NOT AFTER",
        "DAYS",
        "FINGERPRINT",
        "SANS",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 < cells.len() {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                s.push_str(cell);
            }
        }
        s
    };
    let mut out = line(&header);
    out.push('\n');
    for (row, cert) in rows.iter().zip(certs) {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
        if let Some(problem) = &cert.problem {
            out.push_str("  (");
            out.push_str(problem);
            out.push(')');
        }
        out.push('\n');
    }
    out
}

/// Every lineage under each of `roots`, root by root in the order given.
/// Every root must exist: a misspelt one is an error naming it.
pub fn discover_roots(roots: &[PathBuf], now: i64) -> Result<Vec<DiscoveredCert>, SourceError> {
    let mut all = Vec::new();
    for root in roots {
        all.extend(discover(root, now)?);
    }
    Ok(all)
}

/// Where Nginx Proxy Manager keeps certificates in its documented layout
/// (`./letsencrypt:/etc/letsencrypt` and `./data:/data` under /opt/npm):
/// certbot's live dir, and the dir of uploaded ("custom") certificates.
pub const DEFAULT_LIVE_ROOTS: [&str; 2] = ["/opt/npm/letsencrypt/live", "/opt/npm/data/custom_ssl"];

/// `certsync-push discover [--live-root DIR]… [--json]`: the lineages of
/// `given` (or, when none is given, of [`live_roots_from`] the config), as
/// JSON or as one table per root (`npm-3` may be in either), on `out`.
pub fn run(
    config: &Path,
    given: Vec<PathBuf>,
    json: bool,
    out: &mut dyn Write,
) -> Result<ExitCode, PushError> {
    let roots = if given.is_empty() {
        live_roots_from(config)
    } else {
        given
    };
    let now = now_unix();
    if json {
        let certs = discover_roots(&roots, now).map_err(PushError::Discover)?;
        let text = serde_json::to_string_pretty(&certs)
            .map_err(|e| PushError::Output(io::Error::other(e)))?;
        writeln!(out, "{text}")?;
        out.flush()?;
        return Ok(ExitCode::Success);
    }
    for (i, root) in roots.iter().enumerate() {
        let certs = discover(root, now).map_err(PushError::Discover)?;
        if roots.len() > 1 {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "{}:", root.display())?;
        }
        out.write_all(render_table(&certs).as_bytes())?;
        out.flush()?;
    }
    Ok(ExitCode::Success)
}

/// The roots to list when none is given: every `live_root` of the config
/// and the dir holding each `source`, or else NPM's default dirs (those
/// that exist; both when neither does, so the error names them). A missing
/// or broken config is not an error here: discover is how people write one.
pub fn live_roots_from(config: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cfg) = PushConfig::load(config) {
        for c in &cfg.certs {
            let from_source = c
                .source
                .as_deref()
                .and_then(Path::parent)
                .map(Path::to_path_buf);
            let listed = c.live_root.iter().flat_map(|r| r.paths()).cloned();
            for root in listed.chain(from_source) {
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
        }
    }
    if roots.is_empty() {
        roots = DEFAULT_LIVE_ROOTS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect();
    }
    if roots.is_empty() {
        roots = DEFAULT_LIVE_ROOTS.iter().map(PathBuf::from).collect();
    }
    roots
}

/// The lineage under `live_root` whose leaf covers `domain`, newest notAfter
/// first. Errors list what was found, or name the newest covering dir when
/// it is inconsistent (try again: certbot may be renewing it).
pub fn pick_for_domain(
    live_root: &Path,
    domain: &str,
    now: i64,
) -> Result<DiscoveredCert, SourceError> {
    pick_for_domain_in(&[live_root.to_path_buf()], domain, now)
}

/// [`pick_for_domain`] over several roots (certbot's live dir and NPM's
/// custom_ssl dir): the newest covering certificate wherever it is.
pub fn pick_for_domain_in(
    roots: &[PathBuf],
    domain: &str,
    now: i64,
) -> Result<DiscoveredCert, SourceError> {
    let all = discover_roots(roots, now)?;
    let newest = all
        .iter()
        .filter(|c| c.covers(domain))
        .max_by_key(|c| (c.not_after, c.consistent));
    match newest {
        Some(c) if c.consistent => Ok(c.clone()),
        Some(c) => Err(SourceError::NewestInconsistent {
            domain: domain.to_string(),
            dir: c.dir.clone(),
            reason: c.problem.clone().unwrap_or_default(),
        }),
        None => Err(SourceError::NoMatch {
            live_roots: roots.to_vec(),
            domain: domain.to_string(),
            found: describe_found(&all, roots.len() > 1),
        }),
    }
}

/// What was found, for an error. With several roots a lineage is named by
/// its path (`npm-3` may be in either).
fn describe_found(all: &[DiscoveredCert], by_path: bool) -> String {
    if all.is_empty() {
        return "no lineage (no subdir with a fullchain.pem)".to_string();
    }
    all.iter()
        .map(|c| {
            let sans = if c.sans.is_empty() {
                "no SANs".to_string()
            } else {
                c.sans.join(", ")
            };
            let name = if by_path {
                c.dir.display().to_string()
            } else {
                c.name.clone()
            };
            match &c.problem {
                None => format!("{name} ({sans})"),
                Some(p) => format!("{name} ({sans}; inconsistent: {p})"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What [`choice_changed`] found about the last choice for a cert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Nothing was recorded before.
    First,
    Unchanged,
    /// The dir moved (e.g. NPM made a new lineage npm-7 for the same names).
    Changed {
        old: PathBuf,
    },
}

/// Record `new_dir` as the choice for `cert_name` in
/// `state_dir/choice-<cert_name>` and say how it relates to the last one.
/// `cert_name` is a validated config name (no `/`). The file is replaced
/// atomically (temp file, fsync, rename), so a crash leaves the old or the
/// new choice, never half of one.
pub fn choice_changed(
    state_dir: &Path,
    cert_name: &str,
    new_dir: &Path,
) -> Result<Choice, SourceError> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};

    let path = state_dir.join(format!("choice-{cert_name}"));
    let state_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::State {
            action,
            path,
            source,
        }
    };
    let old = match fs::read(&path) {
        Ok(bytes) => {
            let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes).to_vec();
            Some(PathBuf::from(std::ffi::OsString::from_vec(trimmed)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(state_err("read", &path)(e)),
    };
    if old.as_deref() == Some(new_dir) {
        return Ok(Choice::Unchanged);
    }

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(state_err("create the dir of", &path))?;
    // Unique per call: the watch daemon's targets run their passes
    // concurrently, and two may record the same cert's choice at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = state_dir.join(format!(
        ".choice-{cert_name}.tmp{}.{seq}",
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(new_dir.as_os_str().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(state_dir)?.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(state_err("write", &path)(e));
    }
    Ok(match old {
        None => Choice::First,
        Some(old) => Choice::Changed { old },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil() {
        assert_eq!(date_utc(0), "1970-01-01");
        assert_eq!(date_utc(951_782_400), "2000-02-29");
        assert_eq!(date_utc(1_798_761_599), "2026-12-31");
        assert_eq!(date_utc(-86_400), "1969-12-31");
    }

    #[test]
    fn a_missing_live_root_is_named() {
        let err = discover(Path::new("/nonexistent/live"), 0).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/live does not exist"),
            "{err}"
        );
    }

    #[test]
    fn an_inconsistent_dir_whose_fullchain_is_endless_or_a_fifo_is_listed_at_once() {
        // The facts of an inconsistent dir come from fullchain.pem alone, and
        // that may be anything: a link to /dev/zero (endless), a FIFO that
        // nobody writes (a blocking read would hang discover forever).
        let tmp = tempfile::tempdir().unwrap();
        let zero = tmp.path().join("npm-1");
        fs::create_dir(&zero).unwrap();
        std::os::unix::fs::symlink("/dev/zero", zero.join("fullchain.pem")).unwrap();
        let fifo = tmp.path().join("npm-2");
        fs::create_dir(&fifo).unwrap();
        let path = std::ffi::CString::new(
            fifo.join("fullchain.pem")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let found = discover(tmp.path(), 0).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["npm-1", "npm-2"]);
        for c in &found {
            assert!(
                !c.consistent && c.subject.is_none() && c.problem.is_some(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn natural_order() {
        let mut names = vec!["npm-10", "npm-2", "README", "npm-1", "a"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, vec!["README", "a", "npm-1", "npm-2", "npm-10"]);
    }

    #[test]
    fn choice_is_remembered_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let a = Path::new("/opt/npm/letsencrypt/live/npm-5");
        let b = Path::new("/opt/npm/letsencrypt/live/npm-7");
        assert_eq!(choice_changed(&state, "mail", a).unwrap(), Choice::First);
        assert_eq!(
            choice_changed(&state, "mail", a).unwrap(),
            Choice::Unchanged
        );
        assert_eq!(
            choice_changed(&state, "mail", b).unwrap(),
            Choice::Changed {
                old: a.to_path_buf()
            }
        );
        assert_eq!(choice_changed(&state, "other", a).unwrap(), Choice::First);
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        assert_eq!(
            fs::read_to_string(state.join("choice-mail")).unwrap(),
            format!("{}\n", b.display())
        );
    }

    #[test]
    fn an_unwritable_state_dir_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"x").unwrap();
        let err = choice_changed(&file, "mail", Path::new("/x")).unwrap_err();
        assert!(err.to_string().contains("choice-mail"), "{err}");
    }
}
