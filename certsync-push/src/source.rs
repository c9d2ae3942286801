//! The source: reading a consistent pair out of a certbot live dir.
//!
//! certbot keeps every generation of a certificate in
//! `archive/<name>/{cert,privkey,chain,fullchain}N.pem` and points
//! `live/<name>/{cert,privkey,chain,fullchain}.pem` at the current one with
//! *relative* symlinks (`../../archive/<name>/cert3.pem`). A renewal
//! (certbot's `storage.RenewableCert.update_all_links_to`) is not atomic:
//!
//! 1. write the archive files for N+1;
//! 2. create `previous_{cert,privkey,chain,fullchain}.pem` pointing at N;
//! 3. for cert, privkey, chain, fullchain *in that order*: unlink the link,
//!    then create it again pointing at N+1;
//! 4. remove the `previous_*` links.
//!
//! A reader in the middle of step 3 sees the new key next to the old
//! fullchain, or no link at all. [`read_consistent`] therefore accepts a pair
//! only when all of these hold, and otherwise returns
//! [`SourceError::Inconsistent`] listing every [`Problem`] it saw:
//!
//! - no `previous_*.pem` is present (before *and* after reading);
//! - all four links exist and resolve, into the same archive directory and
//!   the same generation N;
//! - every link resolves inside this lineage's own archive dir,
//!   `<config>/archive/<name>/` for the live dir `<config>/live/<name>/`,
//!   and nowhere else: not an absolute path, not a `../` climb, not through
//!   a symlinked directory, not another lineage's archive. Whoever writes
//!   the live dir (NPM's internet-facing container, through its bind
//!   mount) must not be able to make the pusher, which runs as root, send
//!   another file it can read (`/etc/ssh/ssh_host_*`, another lineage's
//!   key). Such a link is refused at once, not retried
//!   ([`SourceError::LinkOutsideArchive`]);
//! - the bytes are the real file contents: the archive dir is opened once
//!   without following links (`archive`, then `<name>`, each
//!   `O_DIRECTORY|O_NOFOLLOW`), each target is opened relative to it with
//!   `O_NOFOLLOW|O_NONBLOCK` (the link text itself is never read as a
//!   certificate, a swapped-in link or FIFO never followed or waited on)
//!   and must be a regular file of bounded size;
//! - the links did not change while we read: resolve, read, resolve again,
//!   compare;
//! - the private key matches the leaf of `fullchain.pem` (compared as keys,
//!   so RSA, ECDSA and Ed25519 alike), and `cert.pem` / `chain.pem` agree
//!   with `fullchain.pem`.
//!
//! A plain directory of regular files is accepted too, under the same rules
//! minus the generation: `fullchain.pem` and `privkey.pem` must exist,
//! `cert.pem` and `chain.pem` are checked if present. A directory that
//! mixes links and regular files is refused. This is how Nginx Proxy
//! Manager keeps an uploaded ("custom") certificate:
//! `/data/custom_ssl/npm-<id>/fullchain.pem` (the certificate, then the
//! intermediate) and `privkey.pem`, written in that order by `fs.writeFile`,
//! which truncates and rewrites each file in place: no link, no rename, and
//! the inode stays the same. So a plain file counts as unchanged only when
//! its inode, size, mtime and ctime all are, and a reader caught between
//! the two writes sees the new chain with the old key, which the key check
//! refuses until NPM has written both.
//!
//! [`read_consistent_retry`] re-reads for a bounded window while the dir is
//! inconsistent (a renewal takes milliseconds) and then gives up with the
//! last list of problems. No error ever carries key bytes.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certsync_core::bundle::{parse_chain, parse_key, BundleError, CertInfo};
use certsync_core::fsread::{read_secret_file_capped, Refusal};
use certsync_core::{Bundle, Fingerprint, SecretBytes};
use openssl::x509::X509;
use zeroize::Zeroizing;

/// The four names certbot keeps in a live dir, in the order a renewal
/// relinks them (certbot's `ALL_FOUR`).
pub const LIVE_FILES: [&str; 4] = ["cert.pem", "privkey.pem", "chain.pem", "fullchain.pem"];

const CERT: usize = 0;
const PRIVKEY: usize = 1;
const CHAIN: usize = 2;
const FULLCHAIN: usize = 3;

/// The largest certificate file read from a live dir: what the protocol
/// carries, so a pair read here is never refused as an oversized frame. A
/// full chain of 8 RSA-4096 certificates is under 20 KiB.
pub const MAX_PEM_BYTES: u64 = certsync_core::protocol::MAX_CHAIN_BYTES as u64;
/// The largest private key file read (the protocol's limit too).
pub const MAX_KEY_PEM_BYTES: u64 = certsync_core::protocol::MAX_KEY_BYTES as u64;

/// A consistent pair, read from one live dir.
#[derive(Debug, Clone)]
pub struct SourcePair {
    /// The live dir it was read from, as given.
    pub dir: PathBuf,
    /// `fullchain.pem` bytes and `privkey.pem` bytes, exactly as on disk.
    pub bundle: Bundle,
    /// certbot's archive generation N, or `None` for a plain directory.
    pub generation: Option<u32>,
    /// The leaf of `fullchain.pem`.
    pub info: CertInfo,
}

/// One thing that makes a live dir inconsistent. Each one can be transient
/// (certbot is renewing) or lasting (a broken dir); [`read_consistent_retry`]
/// tells them apart by waiting.
#[derive(Debug)]
pub enum Problem {
    /// `previous_*.pem` links exist: certbot is in the middle of a renewal
    /// (or crashed in one).
    PreviousPresent { files: Vec<String> },
    /// A file or link is not there.
    Missing { file: &'static str },
    /// A link points at nothing.
    Dangling { file: &'static str, target: PathBuf },
    /// A link's target is not named like certbot's `<kind>N.pem`.
    NotCertbotTarget { file: &'static str, target: PathBuf },
    /// The links point at different generations.
    MixedGenerations { links: Vec<(&'static str, u32)> },
    /// The links point into different archive directories.
    MixedArchiveDirs { dirs: Vec<PathBuf> },
    /// Some names are links and others regular files.
    MixedLinksAndFiles {
        links: Vec<&'static str>,
        files: Vec<&'static str>,
    },
    /// The name (or its target) is a directory, a device, …
    NotRegularFile { file: &'static str },
    /// The link or file changed while we read it.
    Changed { file: &'static str },
    /// The file does not parse as what it should hold.
    Unparsable {
        file: &'static str,
        reason: BundleError,
    },
    /// The private key is not the key of fullchain.pem's leaf.
    KeyMismatch { leaf: Fingerprint },
    /// `cert.pem` is not the leaf of `fullchain.pem`.
    CertNotLeaf,
    /// `chain.pem` is not the rest of `fullchain.pem`.
    ChainDiffers,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::PreviousPresent { files } => write!(
                f,
                "{} present (certbot is renewing, or a renewal was interrupted)",
                files.join(", ")
            ),
            Problem::Missing { file } => write!(f, "{file} is missing"),
            Problem::Dangling { file, target } => {
                write!(
                    f,
                    "{file} points at {} which does not exist",
                    target.display()
                )
            }
            Problem::NotCertbotTarget { file, target } => write!(
                f,
                "{file} points at {}, not at a certbot archive file named like {}N.pem",
                target.display(),
                file.trim_end_matches(".pem")
            ),
            Problem::MixedGenerations { links } => {
                let list: Vec<String> = links
                    .iter()
                    .map(|(file, n)| format!("{file}→{n}"))
                    .collect();
                write!(f, "links point at mixed generations ({})", list.join(", "))
            }
            Problem::MixedArchiveDirs { dirs } => {
                let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                write!(
                    f,
                    "links point into different archive dirs ({})",
                    list.join(", ")
                )
            }
            Problem::MixedLinksAndFiles { links, files } => write!(
                f,
                "{} are symlinks but {} are regular files",
                links.join(", "),
                files.join(", ")
            ),
            Problem::NotRegularFile { file } => write!(f, "{file} is not a regular file"),
            Problem::Changed { file } => write!(f, "{file} changed while it was being read"),
            Problem::Unparsable { file, reason } => write!(f, "{file} does not parse: {reason}"),
            Problem::KeyMismatch { leaf } => write!(
                f,
                "privkey.pem does not belong to the leaf of fullchain.pem ({})",
                leaf.short()
            ),
            Problem::CertNotLeaf => write!(f, "cert.pem is not the leaf of fullchain.pem"),
            Problem::ChainDiffers => {
                write!(
                    f,
                    "chain.pem is not the rest of fullchain.pem after the leaf"
                )
            }
        }
    }
}

/// The problems found in one read, displayed `; `-separated.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Why no pair (or no live dir) could be read. Messages name the dir.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the live dir {} is inconsistent: {problems}", dir.display())]
    Inconsistent { dir: PathBuf, problems: Problems },
    #[error(
        "the live dir {} stayed inconsistent for {:.1}s ({attempts} reads): {problems}; \
         if certbot is not renewing it, repair it (`certbot update_symlinks`, or copy the files again)",
        dir.display(), waited.as_secs_f64()
    )]
    StillInconsistent {
        dir: PathBuf,
        waited: Duration,
        attempts: u32,
        problems: Problems,
    },
    #[error("{} does not exist; {hint}", path.display())]
    NoSuchDir { path: PathBuf, hint: &'static str },
    #[error("{} is not a directory; `source` must be a certbot live dir such as /opt/npm/letsencrypt/live/npm-5, or NPM's custom certificate dir such as /opt/npm/data/custom_ssl/npm-3", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} is larger than {limit} bytes; it is not a certificate or key file", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no consistent certificate dir under {} covers {domain:?}; found: {found}. Check `domain` and `live_root` in push.toml (certbot's live dir, NPM's custom_ssl dir for uploaded certificates, or both), or run `certsync-push discover{}`", join_roots(live_roots), discover_args(live_roots))]
    NoMatch {
        live_roots: Vec<PathBuf>,
        domain: String,
        found: String,
    },
    #[error("the newest certificate covering {domain:?} is in {}, which is inconsistent: {reason}", dir.display())]
    NewestInconsistent {
        domain: String,
        dir: PathBuf,
        reason: String,
    },
    #[error(
        "{} points at {} (resolved: {}), outside {}, the archive dir of this certbot lineage: \
         refusing to read it, because whoever can write the live dir could otherwise make certsync-push send any file it can read. \
         If certbot wrote this link, repair the lineage (`certbot update_symlinks`); if not, find out who changed it",
        link.display(), text.display(), target.display(), archive.display()
    )]
    LinkOutsideArchive {
        link: PathBuf,
        text: PathBuf,
        target: PathBuf,
        archive: PathBuf,
    },
    #[error(
        "the live dir {} holds links, but its certbot archive dir {} cannot be opened as a real directory: {source}; \
         certbot keeps live/<name> next to archive/<name>, and neither archive/ nor archive/<name> may be a symlink",
        dir.display(), archive.display()
    )]
    NoArchiveDir {
        dir: PathBuf,
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} the state file {}: {source}; check that state_dir is writable", path.display())]
    State {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SourceError {
    /// Could waiting help? True for an inconsistent dir (a renewal may be
    /// in progress), false for I/O and usage errors.
    pub fn is_inconsistent(&self) -> bool {
        matches!(
            self,
            SourceError::Inconsistent { .. }
                | SourceError::StillInconsistent { .. }
                | SourceError::NewestInconsistent { .. }
        )
    }

    /// The problems, when the dir was inconsistent.
    pub fn problems(&self) -> Option<&[Problem]> {
        match self {
            SourceError::Inconsistent { problems, .. }
            | SourceError::StillInconsistent { problems, .. } => Some(&problems.0),
            _ => None,
        }
    }
}

/// `a, b and c` for the roots searched.
fn join_roots(roots: &[PathBuf]) -> String {
    let names: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// ` --live-root A --live-root B`.
fn discover_args(roots: &[PathBuf]) -> String {
    roots
        .iter()
        .map(|r| format!(" --live-root {}", r.display()))
        .collect()
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SourceError {
    let path = path.to_path_buf();
    move |source| SourceError::Io {
        action,
        path,
        source,
    }
}

/// What one of the four names is, at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Missing,
    /// A symlink: its text, and the fully resolved target.
    Link {
        text: PathBuf,
        target: PathBuf,
    },
    Dangling {
        text: PathBuf,
    },
    /// A regular file (not a link), by identity and by what an in-place
    /// rewrite changes (NPM's custom certificates are rewritten in place).
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    Other,
}

fn stat_entry(dir: &Path, name: &str) -> Result<Entry, SourceError> {
    let path = dir.join(name);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Entry::Missing),
        Err(e) => return Err(io_err("inspect", &path)(e)),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let text = match fs::read_link(&path) {
            Ok(t) => t,
            // Unlinked between the stat and the readlink: certbot is relinking.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Entry::Missing),
            Err(e) => return Err(io_err("read the link", &path)(e)),
        };
        // Relative link text is relative to the link's own directory;
        // canonicalize resolves it the way the kernel does.
        match fs::canonicalize(dir.join(&text)) {
            Ok(target) => Ok(Entry::Link { text, target }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entry::Dangling { text }),
            Err(e) => Err(io_err("resolve the link", &path)(e)),
        }
    } else if ft.is_file() {
        Ok(Entry::File {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    } else {
        Ok(Entry::Other)
    }
}

/// Names of `previous_*.pem` entries in `dir`, sorted.
fn previous_links(dir: &Path) -> Result<Vec<String>, SourceError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("previous_") && name.ends_with(".pem") {
            found.push(name.into_owned());
        }
    }
    found.sort();
    Ok(found)
}

/// The N in `cert12.pem` for the live name `cert.pem`.
fn generation_of(live_name: &str, target_text: &Path) -> Option<u32> {
    let stem = live_name.strip_suffix(".pem")?;
    let file = target_text.file_name()?.to_str()?;
    let digits = file.strip_prefix(stem)?.strip_suffix(".pem")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How the dir is laid out, once checked: where to read each name from.
struct Layout {
    /// For each of [`LIVE_FILES`]: the path to open, if present.
    paths: [Option<PathBuf>; 4],
    generation: Option<u32>,
}

/// A lineage's archive dir, opened without following links: where the
/// live dir's links may point, and the only directory their targets are
/// read from.
struct Archive {
    dir: File,
}

/// `<config>/archive/<name>` for the live dir `<config>/live/<name>`,
/// with `<config>` (the operator's prefix, e.g. `/opt/npm/letsencrypt`)
/// canonical and `archive/<name>` as certbot names them.
fn archive_path(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?;
    let config = match dir.parent()?.parent()? {
        p if p.as_os_str().is_empty() => Path::new("."),
        p => p,
    };
    Some(fs::canonicalize(config).ok()?.join("archive").join(name))
}

/// Check that every link of `entries` resolves directly into this
/// lineage's archive dir, then open that dir component by component
/// with `O_NOFOLLOW`, so a directory swapped for a link meanwhile is
/// refused rather than followed.
fn open_archive(dir: &Path, entries: &[Entry; 4]) -> Result<Archive, SourceError> {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    let Some(path) = archive_path(dir) else {
        return Err(SourceError::NoArchiveDir {
            dir: dir.to_path_buf(),
            archive: dir.join("../../archive"),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
    };
    for (name, entry) in LIVE_FILES.iter().zip(entries) {
        if let Entry::Link { text, target } = entry {
            if target.parent() != Some(path.as_path()) || target.file_name().is_none() {
                return Err(SourceError::LinkOutsideArchive {
                    link: dir.join(name),
                    text: text.clone(),
                    target: target.clone(),
                    archive: path.clone(),
                });
            }
        }
    }
    let no_archive = |source: io::Error| SourceError::NoArchiveDir {
        dir: dir.to_path_buf(),
        archive: path.clone(),
        source,
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut components = path.components();
    let (Some(name), Some(archive)) = (components.next_back(), components.next_back()) else {
        return Err(no_archive(io::Error::from(io::ErrorKind::NotFound)));
    };
    // The operator's prefix may contain links (it is canonical already);
    // `archive` and `<name>` are the lineage's and must be real dirs.
    let config = openat(
        CWD,
        components.as_path(),
        flags & !OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| no_archive(e.into()))?;
    let archive = openat(&config, archive.as_os_str(), flags, Mode::empty())
        .map_err(|e| no_archive(e.into()))?;
    let lineage = openat(&archive, name.as_os_str(), flags, Mode::empty())
        .map_err(|e| no_archive(e.into()))?;
    Ok(Archive {
        dir: File::from(lineage),
    })
}

/// Check the shape of the dir (links, generations, previous_*). Pushes
/// problems; returns the layout only when there are none.
fn check_layout(entries: &[Entry; 4], dir: &Path, problems: &mut Vec<Problem>) -> Option<Layout> {
    let links: Vec<&'static str> = LIVE_FILES
        .iter()
        .zip(entries)
        .filter(|(_, e)| matches!(e, Entry::Link { .. } | Entry::Dangling { .. }))
        .map(|(n, _)| *n)
        .collect();
    let files: Vec<&'static str> = LIVE_FILES
        .iter()
        .zip(entries)
        .filter(|(_, e)| matches!(e, Entry::File { .. }))
        .map(|(n, _)| *n)
        .collect();
    for (name, entry) in LIVE_FILES.iter().zip(entries) {
        if matches!(entry, Entry::Other) {
            problems.push(Problem::NotRegularFile { file: name });
        }
    }

    if links.is_empty() {
        // A plain directory: someone copied the files.
        return plain_layout(entries, dir, problems);
    }
    // certbot style: all four must be links into one archive generation.
    if !files.is_empty() {
        problems.push(Problem::MixedLinksAndFiles { links, files });
    }
    certbot_layout(entries, problems)
}

/// A plain directory of regular files: `privkey.pem` and `fullchain.pem`
/// must be there.
fn plain_layout(entries: &[Entry; 4], dir: &Path, problems: &mut Vec<Problem>) -> Option<Layout> {
    for idx in [PRIVKEY, FULLCHAIN] {
        if matches!(entries[idx], Entry::Missing) {
            problems.push(Problem::Missing {
                file: LIVE_FILES[idx],
            });
        }
    }
    if !problems.is_empty() {
        return None;
    }
    let paths = std::array::from_fn(|i| match entries[i] {
        Entry::File { .. } => Some(dir.join(LIVE_FILES[i])),
        _ => None,
    });
    Some(Layout {
        paths,
        generation: None,
    })
}

/// certbot's links: each must point at `<kind>N.pem`, all at one
/// generation in one archive dir.
fn certbot_layout(entries: &[Entry; 4], problems: &mut Vec<Problem>) -> Option<Layout> {
    let mut generations = Vec::new();
    let mut archive_dirs = BTreeSet::new();
    for (name, entry) in LIVE_FILES.iter().zip(entries) {
        match entry {
            Entry::Missing => problems.push(Problem::Missing { file: name }),
            Entry::Dangling { text } => problems.push(Problem::Dangling {
                file: name,
                target: text.clone(),
            }),
            Entry::Link { text, target } => match generation_of(name, text) {
                Some(n) => {
                    generations.push((*name, n));
                    if let Some(parent) = target.parent() {
                        archive_dirs.insert(parent.to_path_buf());
                    }
                }
                None => problems.push(Problem::NotCertbotTarget {
                    file: name,
                    target: text.clone(),
                }),
            },
            Entry::File { .. } | Entry::Other => {}
        }
    }
    let distinct: BTreeSet<u32> = generations.iter().map(|(_, n)| *n).collect();
    if distinct.len() > 1 {
        problems.push(Problem::MixedGenerations { links: generations });
    }
    if archive_dirs.len() > 1 {
        problems.push(Problem::MixedArchiveDirs {
            dirs: archive_dirs.into_iter().collect(),
        });
    }
    if !problems.is_empty() {
        return None;
    }
    let paths = std::array::from_fn(|i| match &entries[i] {
        Entry::Link { target, .. } => Some(target.clone()),
        _ => None,
    });
    Some(Layout {
        paths,
        generation: distinct.into_iter().next(),
    })
}

/// Read one file's real contents. The (already resolved) path is opened
/// with `O_NOFOLLOW|O_NONBLOCK`, so a link swapped in meanwhile is
/// refused, not read, and a FIFO does not block; a link's target is
/// opened relative to its lineage's `archive` dir, never by path. The
/// open file is read by core's capped reader
/// ([`certsync_core::fsread::read_secret_file_capped`]): a regular file
/// only, at most the protocol's limit, into one buffer wiped on drop.
fn read_file(
    path: &Path,
    archive: Option<&Archive>,
    name: &'static str,
    problems: &mut Vec<Problem>,
) -> Result<Option<Zeroizing<Vec<u8>>>, SourceError> {
    let file = match (archive, path.file_name()) {
        (Some(archive), Some(file_name)) => {
            use rustix::fs::{openat, Mode, OFlags};
            openat(
                &archive.dir,
                file_name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map(File::from)
            .map_err(io::Error::from)
        }
        _ => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path),
    };
    let file: File = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => {
            problems.push(Problem::Changed { file: name });
            return Ok(None);
        }
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let limit = if name == LIVE_FILES[PRIVKEY] {
        MAX_KEY_PEM_BYTES
    } else {
        MAX_PEM_BYTES
    };
    // The limits are protocol sizes (usize), so the cast is exact.
    match read_secret_file_capped(file, limit as usize) {
        Ok(buf) => Ok(Some(buf)),
        Err(e) => match Refusal::of(&e) {
            // A FIFO, a device, a directory: never read (a FIFO would
            // block, a device could be endless).
            Some(Refusal::NotRegular) => {
                problems.push(Problem::NotRegularFile { file: name });
                Ok(None)
            }
            // More than the limit, before reading or while reading (the
            // file grew).
            Some(Refusal::TooLarge(_)) => Err(SourceError::TooLarge {
                path: path.to_path_buf(),
                limit,
            }),
            None => Err(io_err("read", path)(e)),
        },
    }
}

fn inconsistent(dir: &Path, problems: Vec<Problem>) -> SourceError {
    SourceError::Inconsistent {
        dir: dir.to_path_buf(),
        problems: Problems(problems),
    }
}

/// Read a consistent pair from a certbot live dir (or a plain copy of one).
/// See the module docs for every rule.
pub fn read_consistent(dir: &Path) -> Result<SourcePair, SourceError> {
    read_consistent_inner(dir, &mut || {})
}

/// [`read_consistent`] with a hook run between reading and resolving
/// again, so tests can change the dir at exactly that instant.
fn read_consistent_inner(
    dir: &Path,
    after_read: &mut dyn FnMut(),
) -> Result<SourcePair, SourceError> {
    check_live_dir(dir)?;
    let mut problems = Vec::new();
    // 1. Resolve.
    let (entries, layout) = resolve(dir, &mut problems)?;
    // 2. Links only into this lineage's archive; then read the real bytes.
    let contents = read_contents(dir, &entries, &layout, &mut problems)?;
    after_read();
    // 3. Resolve again: the same links (or the same files), still no
    //    previous_*. A renewal that started or finished meanwhile shows here.
    if !previous_links(dir)?.is_empty() {
        problems.push(Problem::PreviousPresent {
            files: previous_links(dir)?,
        });
    }
    for (i, name) in LIVE_FILES.iter().enumerate() {
        if stat_entry(dir, name)? != entries[i] {
            problems.push(Problem::Changed { file: name });
        }
    }
    if !problems.is_empty() {
        return Err(inconsistent(dir, problems));
    }
    // 4. The contents agree with each other.
    pair_from(dir, contents, layout.generation)
}

/// The live dir is there and is a directory; the errors say where to look.
fn check_live_dir(dir: &Path) -> Result<(), SourceError> {
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let hidden_home = ["/home", "/root", "/run/user"]
                .iter()
                .any(|h| dir.starts_with(h));
            return Err(SourceError::NoSuchDir {
                path: dir.to_path_buf(),
                hint: if hidden_home {
                    "check `source` in push.toml; if it does exist, a unit with ProtectHome=yes hides /home and /root: the shipped certsync-push units use ProtectHome=read-only, so remove a drop-in (`systemctl cat certsync-push.service`) that sets it to yes"
                } else {
                    "check `source` in push.toml; `certsync-push discover` lists certbot's live dirs and NPM's custom_ssl dirs"
                },
            });
        }
        Err(e) => return Err(io_err("open the live dir", dir)(e)),
    };
    if !meta.is_dir() {
        return Err(SourceError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Step 1: what each of the four names is now, and the layout they make
/// (no `previous_*.pem`, one generation, one archive dir).
fn resolve(dir: &Path, problems: &mut Vec<Problem>) -> Result<([Entry; 4], Layout), SourceError> {
    let previous = previous_links(dir)?;
    if !previous.is_empty() {
        problems.push(Problem::PreviousPresent { files: previous });
    }
    let mut entries = [
        Entry::Missing,
        Entry::Missing,
        Entry::Missing,
        Entry::Missing,
    ];
    for (i, name) in LIVE_FILES.iter().enumerate() {
        entries[i] = stat_entry(dir, name)?;
    }
    match check_layout(&entries, dir, problems) {
        Some(layout) if problems.is_empty() => Ok((entries, layout)),
        _ => Err(inconsistent(dir, std::mem::take(problems))),
    }
}

/// The real bytes of each file, in [`LIVE_FILES`] order.
type Contents = [Option<Zeroizing<Vec<u8>>>; 4];

/// Step 2: read the real bytes of each file the layout names, a link's
/// target relative to its lineage's archive dir.
fn read_contents(
    dir: &Path,
    entries: &[Entry; 4],
    layout: &Layout,
    problems: &mut Vec<Problem>,
) -> Result<Contents, SourceError> {
    let archive = match layout.generation {
        Some(_) => Some(open_archive(dir, entries)?),
        None => None,
    };
    let mut contents: Contents = [None, None, None, None];
    for (i, path) in layout.paths.iter().enumerate() {
        if let Some(path) = path {
            contents[i] = read_file(path, archive.as_ref(), LIVE_FILES[i], problems)?;
        }
    }
    if !problems.is_empty() {
        return Err(inconsistent(dir, std::mem::take(problems)));
    }
    Ok(contents)
}

/// Step 4: the files agree with each other (the key is the leaf's,
/// cert.pem is the leaf, chain.pem the rest), and make the pair.
fn pair_from(
    dir: &Path,
    contents: Contents,
    generation: Option<u32>,
) -> Result<SourcePair, SourceError> {
    let mut problems = Vec::new();
    let [cert, key, chain, fullchain] = contents;
    let (Some(key), Some(fullchain)) = (key, fullchain) else {
        // check_layout guarantees both paths; keep a defined error anyway.
        return Err(inconsistent(
            dir,
            vec![Problem::Missing {
                file: "fullchain.pem",
            }],
        ));
    };
    let certs = match parse_chain(&fullchain) {
        Ok(c) => c,
        Err(reason) => {
            problems.push(Problem::Unparsable {
                file: LIVE_FILES[FULLCHAIN],
                reason,
            });
            Vec::new()
        }
    };
    let pkey = match parse_key(&key) {
        Ok(k) => Some(k),
        Err(reason) => {
            problems.push(Problem::Unparsable {
                file: LIVE_FILES[PRIVKEY],
                reason,
            });
            None
        }
    };
    let (Some(leaf), Some(pkey)) = (certs.first(), pkey) else {
        return Err(inconsistent(dir, problems));
    };
    let info = CertInfo::of(leaf);
    let matches = leaf
        .public_key()
        .map(|pk| pk.public_eq(&pkey))
        .unwrap_or(false);
    if !matches {
        problems.push(Problem::KeyMismatch {
            leaf: info.fingerprint,
        });
    }
    if let Some(cert) = cert {
        check_cert_is_leaf(&cert, leaf, &mut problems);
    }
    if let Some(chain) = chain {
        check_chain_is_rest(&chain, &certs[1..], &mut problems);
    }
    if !problems.is_empty() {
        return Err(inconsistent(dir, problems));
    }
    Ok(SourcePair {
        dir: dir.to_path_buf(),
        bundle: Bundle::new(fullchain.to_vec(), SecretBytes::from(key)),
        generation,
        info,
    })
}

fn der_of(certs: &[X509]) -> Option<Vec<Vec<u8>>> {
    certs.iter().map(|c| c.to_der().ok()).collect()
}

fn check_cert_is_leaf(cert_pem: &[u8], leaf: &X509, problems: &mut Vec<Problem>) {
    match parse_chain(cert_pem) {
        Ok(certs) => {
            if certs.len() != 1 || der_of(&certs) != der_of(std::slice::from_ref(leaf)) {
                problems.push(Problem::CertNotLeaf);
            }
        }
        Err(reason) => problems.push(Problem::Unparsable {
            file: LIVE_FILES[CERT],
            reason,
        }),
    }
}

fn check_chain_is_rest(chain_pem: &[u8], rest: &[X509], problems: &mut Vec<Problem>) {
    match parse_chain(chain_pem) {
        Ok(certs) => {
            if der_of(&certs) != der_of(rest) {
                problems.push(Problem::ChainDiffers);
            }
        }
        // A leaf-only fullchain goes with an empty chain.pem.
        Err(BundleError::NoCertificate) if rest.is_empty() => {}
        Err(reason) => problems.push(Problem::Unparsable {
            file: LIVE_FILES[CHAIN],
            reason,
        }),
    }
}

/// How long [`read_consistent_retry`] waits for an inconsistent dir to
/// settle, and how often it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Give up once this much time has passed since the first read.
    pub window: Duration,
    /// Pause between reads.
    pub interval: Duration,
}

impl Default for Retry {
    /// certbot relinks within milliseconds; 10 s covers a slow disk and a
    /// busy host without hiding a dir that is broken for good.
    fn default() -> Self {
        Retry {
            window: Duration::from_secs(10),
            interval: Duration::from_millis(200),
        }
    }
}

/// [`read_consistent`], re-read every `retry.interval` while the dir is
/// inconsistent, for at most `retry.window`. Other errors (I/O, not a
/// directory, too large) return at once. Blocks the thread: from async
/// code use [`read_consistent_retry_async`].
pub fn read_consistent_retry(dir: &Path, retry: Retry) -> Result<SourcePair, SourceError> {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match read_consistent(dir) {
            Err(SourceError::Inconsistent { dir, problems }) => {
                let waited = start.elapsed();
                if waited + retry.interval > retry.window {
                    return Err(SourceError::StillInconsistent {
                        dir,
                        waited,
                        attempts,
                        problems,
                    });
                }
                std::thread::sleep(retry.interval);
            }
            other => return other,
        }
    }
}

/// [`read_consistent_retry`] on tokio's blocking pool.
pub async fn read_consistent_retry_async(
    dir: &Path,
    retry: Retry,
) -> Result<SourcePair, SourceError> {
    let owned = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || read_consistent_retry(&owned, retry)).await {
        Ok(result) => result,
        Err(join) => Err(SourceError::Io {
            action: "read (the reader task failed)",
            path: dir.to_path_buf(),
            source: io::Error::other(join.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    //! Inline tests build small dirs by hand; the certbot-style scenarios
    //! (renewal steps, concurrent readers) are in tests/tests/source.rs.
    use super::*;
    use certsync_core::testutil::{KeyKind, TestCa, TestLeaf};
    use std::os::unix::fs::symlink;

    fn write_gen(root: &Path, n: u32, leaf: &TestLeaf) {
        let archive = root.join("archive/x");
        fs::create_dir_all(&archive).unwrap();
        fs::write(archive.join(format!("cert{n}.pem")), &leaf.cert_pem).unwrap();
        fs::write(
            archive.join(format!("chain{n}.pem")),
            &leaf.intermediates_pem,
        )
        .unwrap();
        fs::write(archive.join(format!("fullchain{n}.pem")), &leaf.chain_pem).unwrap();
        fs::write(
            archive.join(format!("privkey{n}.pem")),
            leaf.key_pem.expose(),
        )
        .unwrap();
    }

    fn link(root: &Path, name: &str, n: u32) {
        let live = root.join("live/x");
        fs::create_dir_all(&live).unwrap();
        let _ = fs::remove_file(live.join(name));
        let stem = name.trim_end_matches(".pem");
        symlink(format!("../../archive/x/{stem}{n}.pem"), live.join(name)).unwrap();
    }

    fn certbot_dir(leaf: &TestLeaf) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        write_gen(tmp.path(), 1, leaf);
        for name in LIVE_FILES {
            link(tmp.path(), name, 1);
        }
        let live = tmp.path().join("live/x");
        (tmp, live)
    }

    #[test]
    fn generation_parsing() {
        assert_eq!(
            generation_of("cert.pem", Path::new("../../archive/x/cert12.pem")),
            Some(12)
        );
        assert_eq!(generation_of("chain.pem", Path::new("chain3.pem")), Some(3));
        assert_eq!(
            generation_of("chain.pem", Path::new("fullchain3.pem")),
            None
        );
        assert_eq!(generation_of("cert.pem", Path::new("cert.pem")), None);
        assert_eq!(generation_of("cert.pem", Path::new("cert+1.pem")), None);
        assert_eq!(generation_of("cert.pem", Path::new("certx.pem")), None);
    }

    #[test]
    fn reads_real_bytes_of_every_key_kind() {
        let ca = TestCa::new();
        for kind in KeyKind::ALL {
            let leaf = ca.leaf(kind, &["mail.example.com"]);
            let (_tmp, live) = certbot_dir(&leaf);
            let pair = read_consistent(&live).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(pair.bundle.chain, leaf.chain_pem);
            assert_eq!(pair.bundle.key.expose(), leaf.key_pem.expose());
            assert_eq!(pair.generation, Some(1));
            assert_eq!(pair.info.fingerprint, leaf.fingerprint());
        }
    }

    #[test]
    fn refuses_a_foreign_key_and_never_shows_it() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P384, &["mail.example.com"]);
        let other = ca.leaf(KeyKind::P384, &["mail.example.com"]);
        let (tmp, live) = certbot_dir(&leaf);
        fs::write(
            tmp.path().join("archive/x/privkey1.pem"),
            other.key_pem.expose(),
        )
        .unwrap();
        let err = read_consistent(&live).unwrap_err();
        assert!(
            matches!(err.problems(), Some([Problem::KeyMismatch { .. }])),
            "{err}"
        );
        let msg = format!("{err} {err:?}");
        assert!(msg.contains("does not belong"), "{msg}");
        assert!(msg.contains(&live.display().to_string()), "{msg}");
        assert!(!msg.contains("PRIVATE KEY"), "{msg}");
    }

    #[test]
    fn refuses_links_that_do_not_look_like_certbot() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["a.example"]);
        let (tmp, live) = certbot_dir(&leaf);
        fs::copy(
            tmp.path().join("archive/x/cert1.pem"),
            tmp.path().join("archive/x/mycert.pem"),
        )
        .unwrap();
        fs::remove_file(live.join("cert.pem")).unwrap();
        symlink("../../archive/x/mycert.pem", live.join("cert.pem")).unwrap();
        let err = read_consistent(&live).unwrap_err();
        assert!(
            matches!(
                err.problems(),
                Some([Problem::NotCertbotTarget {
                    file: "cert.pem",
                    ..
                }])
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_mixed_links_and_files_and_dangling_links() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["a.example"]);
        let (tmp, live) = certbot_dir(&leaf);
        fs::remove_file(live.join("chain.pem")).unwrap();
        fs::write(live.join("chain.pem"), &leaf.intermediates_pem).unwrap();
        fs::remove_file(tmp.path().join("archive/x/cert1.pem")).unwrap();
        let err = read_consistent(&live).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("chain.pem are regular files"), "{msg}");
        assert!(
            msg.contains("cert.pem points at ../../archive/x/cert1.pem which does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn a_renewal_between_read_and_second_resolve_is_caught() {
        let ca = TestCa::new();
        let old = ca.leaf(KeyKind::P384, &["a.example"]);
        let new = ca.leaf(KeyKind::P384, &["a.example"]);
        let (tmp, live) = certbot_dir(&old);
        // A whole renewal (archive N+1, all four links moved) lands while
        // the old bytes are in hand: they are consistent, but no longer
        // current, so the read is refused and the caller re-reads.
        let err = read_consistent_inner(&live, &mut || {
            write_gen(tmp.path(), 2, &new);
            for name in LIVE_FILES {
                link(tmp.path(), name, 2);
            }
        })
        .unwrap_err();
        let ps = err.problems().unwrap();
        assert_eq!(ps.len(), 4, "{err}");
        assert!(
            ps.iter().all(|p| matches!(p, Problem::Changed { .. })),
            "{err}"
        );
        let pair = read_consistent(&live).unwrap();
        assert_eq!(pair.bundle.chain, new.chain_pem);
        assert_eq!(pair.generation, Some(2));
    }

    #[test]
    fn a_plain_file_replaced_meanwhile_is_caught() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["a.example"]);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("fullchain.pem"), &leaf.chain_pem).unwrap();
        fs::write(dir.join("privkey.pem"), leaf.key_pem.expose()).unwrap();
        let err = read_consistent_inner(dir, &mut || {
            fs::write(dir.join("privkey.pem.new"), leaf.key_pem.expose()).unwrap();
            fs::rename(dir.join("privkey.pem.new"), dir.join("privkey.pem")).unwrap();
        })
        .unwrap_err();
        assert!(
            matches!(
                err.problems(),
                Some([Problem::Changed {
                    file: "privkey.pem"
                }])
            ),
            "{err}"
        );
        // previous_* appearing after the read is caught too.
        let err = read_consistent_inner(dir, &mut || {
            symlink("fullchain.pem", dir.join("previous_fullchain.pem")).unwrap();
        })
        .unwrap_err();
        assert!(
            matches!(err.problems(), Some([Problem::PreviousPresent { .. }])),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_file_that_is_not_a_directory_or_too_large() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, b"x").unwrap();
        assert!(matches!(
            read_consistent(&f),
            Err(SourceError::NotADirectory { .. })
        ));
        let err = read_consistent(&tmp.path().join("nope")).unwrap_err();
        assert!(matches!(err, SourceError::NoSuchDir { .. }), "{err}");
        assert!(err.to_string().contains("nope does not exist"), "{err}");
        fs::write(
            tmp.path().join("fullchain.pem"),
            vec![b'a'; MAX_PEM_BYTES as usize + 1],
        )
        .unwrap();
        fs::write(tmp.path().join("privkey.pem"), b"k").unwrap();
        assert!(matches!(
            read_consistent(tmp.path()),
            Err(SourceError::TooLarge { .. })
        ));
    }

    /// A link into the archive whose target is a FIFO or a device is
    /// refused as not a regular file, without blocking or reading it; a
    /// key over the key limit is too large, naming that limit.
    #[test]
    fn archive_targets_must_be_regular_files_of_bounded_size() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["a.example"]);
        let (tmp, live) = certbot_dir(&leaf);
        let target = tmp.path().join("archive/x/fullchain1.pem");
        fs::remove_file(&target).unwrap();
        let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_consistent(&live).unwrap_err();
        assert!(
            matches!(
                err.problems(),
                Some([Problem::NotRegularFile {
                    file: "fullchain.pem"
                }])
            ),
            "{err}"
        );

        let (tmp, live) = certbot_dir(&leaf);
        let key = tmp.path().join("archive/x/privkey1.pem");
        fs::write(&key, vec![b'k'; MAX_KEY_PEM_BYTES as usize + 1]).unwrap();
        match read_consistent(&live) {
            Err(SourceError::TooLarge { path, limit }) => {
                assert_eq!(limit, MAX_KEY_PEM_BYTES);
                assert!(path.ends_with("privkey1.pem"), "{}", path.display());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plain_copy_needs_only_fullchain_and_key() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::Ed25519, &["a.example"]);
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("fullchain.pem"), &leaf.chain_pem).unwrap();
        let err = read_consistent(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("privkey.pem is missing"), "{err}");
        fs::write(tmp.path().join("privkey.pem"), leaf.key_pem.expose()).unwrap();
        let pair = read_consistent(tmp.path()).unwrap();
        assert_eq!(pair.generation, None);
        // A cert.pem from another pair is caught.
        let other = ca.leaf(KeyKind::Ed25519, &["a.example"]);
        fs::write(tmp.path().join("cert.pem"), &other.cert_pem).unwrap();
        let err = read_consistent(tmp.path()).unwrap_err();
        assert!(
            matches!(err.problems(), Some([Problem::CertNotLeaf])),
            "{err}"
        );
    }

    #[test]
    fn retry_gives_up_with_the_problems_and_the_count() {
        let tmp = tempfile::tempdir().unwrap();
        let retry = Retry {
            window: Duration::from_millis(100),
            interval: Duration::from_millis(20),
        };
        let err = read_consistent_retry(tmp.path(), retry).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, SourceError::StillInconsistent { attempts, .. } if attempts >= 2),
            "{msg}"
        );
        assert!(
            msg.contains("fullchain.pem is missing") && msg.contains("update_symlinks"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn async_retry_reads_a_good_dir() {
        let ca = TestCa::new();
        let leaf = ca.leaf(KeyKind::P256, &["a.example"]);
        let (_tmp, live) = certbot_dir(&leaf);
        let pair = read_consistent_retry_async(&live, Retry::default())
            .await
            .unwrap();
        assert_eq!(pair.bundle.chain, leaf.chain_pem);
    }

    /// NPM rewrites an uploaded certificate's files in place (same inode):
    /// a rewrite while the files were being read must count as a change,
    /// as a relink does for certbot, or torn bytes could pass.
    #[test]
    fn an_in_place_rewrite_of_a_plain_dir_is_a_change() {
        let ca = TestCa::new();
        let old = ca.leaf(KeyKind::P384, &["mail.example.com"]);
        let new = ca.leaf(KeyKind::Rsa2048, &["mail.example.com"]);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("custom_ssl/npm-3");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("fullchain.pem"), &old.chain_pem).unwrap();
        fs::write(dir.join("privkey.pem"), old.key_pem.expose()).unwrap();
        let inode = fs::metadata(dir.join("fullchain.pem")).unwrap().ino();

        let err = read_consistent_inner(&dir, &mut || {
            // fs.writeFile: truncate and write, fullchain first.
            fs::write(dir.join("fullchain.pem"), &new.chain_pem).unwrap();
            fs::write(dir.join("privkey.pem"), new.key_pem.expose()).unwrap();
        })
        .unwrap_err();
        assert_eq!(
            fs::metadata(dir.join("fullchain.pem")).unwrap().ino(),
            inode
        );
        let p = err.problems().unwrap_or_else(|| panic!("{err}"));
        assert!(
            p.iter().any(|p| matches!(
                p,
                Problem::Changed {
                    file: "fullchain.pem"
                }
            )),
            "{err}"
        );
        // Once NPM is done, the new pair reads cleanly.
        let pair = read_consistent(&dir).unwrap();
        assert_eq!(pair.info.fingerprint, new.fingerprint());
        assert_eq!(pair.generation, None);
    }
}
