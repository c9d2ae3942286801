//! OpenSSH `known_hosts` files, read the way OpenSSH reads them.
//!
//! russh ships a minimal parser (no tabs, no wildcards, no `@revoked`), and
//! a host key check is the one place where "almost OpenSSH" is not good
//! enough: an operator who wrote `[mail.example.com]:2222` or hashed the
//! file with `ssh-keygen -H` must get the answer `ssh` would give.
//!
//! Supported, as in `sshd(8)` "SSH_KNOWN_HOSTS FILE FORMAT":
//! - fields separated by spaces or tabs; blank lines and `#` comments;
//! - host lists of comma-separated patterns with `*` and `?` wildcards and
//!   `!` negation (a negated match makes the whole line not apply);
//! - `[host]:port` for ports other than 22 (the name is looked up exactly
//!   in that form, as OpenSSH does);
//! - hashed hosts `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`;
//! - `@revoked`: a key listed there is refused for the hosts the line
//!   matches, even if another line lists the same key as valid;
//! - `@cert-authority` lines are skipped: certsync does not trust host
//!   certificates, only keys.
//!
//! Host names are compared case-insensitively (OpenSSH lowercases both).
//! A line that cannot be parsed is skipped with a warning naming the file
//! and line, as `ssh` skips it, so one bad line cannot hide the others.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, PublicKey};
use sha1::Sha1;
use thiserror::Error;

/// A `known_hosts` file could not be read.
#[derive(Debug, Error)]
#[error("cannot read known_hosts file {}: {source}", path.display())]
pub struct KnownHostsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The parsed entries of one `known_hosts` file.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
    skipped: Vec<Skipped>,
}

/// A line that was not used, and why (for warnings and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    revoked: bool,
    hosts: Hosts,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum Hosts {
    /// `|1|salt|hash`: one host name, hashed.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    /// `pattern[,pattern…]`, lowercased; `negated` for a leading `!`.
    Patterns(Vec<Pattern>),
}

#[derive(Debug, Clone)]
struct Pattern {
    negated: bool,
    glob: String,
}

/// What the file says about a host's offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is listed for this host (first matching line).
    Known { line: usize },
    /// The key is listed under `@revoked` for this host: refuse it.
    Revoked { line: usize },
    /// Other keys are listed for this host, not this one: refuse it, the
    /// host key changed (or someone is in the middle).
    Changed { lines: Vec<usize> },
    /// Nothing is listed for this host.
    Unknown,
}

impl KnownHosts {
    /// Read and parse `path`. Unparseable lines are skipped with a warning.
    pub fn load(path: &Path) -> Result<KnownHosts, KnownHostsError> {
        let text = std::fs::read_to_string(path).map_err(|source| KnownHostsError {
            path: path.to_path_buf(),
            source,
        })?;
        let known = KnownHosts::parse(&text, path);
        for skipped in &known.skipped {
            tracing::warn!(
                "{}:{}: line ignored: {}",
                path.display(),
                skipped.line,
                skipped.reason
            );
        }
        Ok(known)
    }

    /// Parse the text of a known_hosts file; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> KnownHosts {
        let mut known = KnownHosts {
            path: path.to_path_buf(),
            entries: Vec::new(),
            skipped: Vec::new(),
        };
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            match parse_line(raw) {
                Ok(Some(entry_parts)) => {
                    let (revoked, hosts, key) = entry_parts;
                    known.entries.push(Entry {
                        line,
                        revoked,
                        hosts,
                        key,
                    });
                }
                Ok(None) => {}
                Err(reason) => known.skipped.push(Skipped { line, reason }),
            }
        }
        known
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines that were not used, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Check the key `offered` by `host:port` against the file.
    pub fn check(&self, host: &str, port: u16, offered: &KeyData) -> Verdict {
        let name = lookup_name(host, port);
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.hosts.matches(&name))
            .collect();
        // Revocation wins over any listing, wherever it is in the file.
        if let Some(e) = matching
            .iter()
            .find(|e| e.revoked && e.key.key_data() == offered)
        {
            return Verdict::Revoked { line: e.line };
        }
        if let Some(e) = matching
            .iter()
            .find(|e| !e.revoked && e.key.key_data() == offered)
        {
            return Verdict::Known { line: e.line };
        }
        let lines: Vec<usize> = matching
            .iter()
            .filter(|e| !e.revoked)
            .map(|e| e.line)
            .collect();
        if lines.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Changed { lines }
        }
    }

    /// The key algorithms listed (not revoked) for `host:port`, in file
    /// order without repeats. The SSH client asks the server for these
    /// first, as OpenSSH does, so a file holding only a host's ECDSA key
    /// does not fail against a server that would prefer to show Ed25519.
    pub fn algorithms_for(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let name = lookup_name(host, port);
        let mut out: Vec<Algorithm> = Vec::new();
        for e in &self.entries {
            if !e.revoked && e.hosts.matches(&name) {
                let alg = e.key.algorithm();
                if !out.contains(&alg) {
                    out.push(alg);
                }
            }
        }
        out
    }
}

/// The name OpenSSH looks up for `host` and `port`: `host` for port 22,
/// `[host]:port` otherwise; lowercased.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// A hashed host field for `name` with `salt`, as `ssh-keygen -H` writes
/// it (`|1|salt|hash`). Used by tests and by anyone writing known_hosts.
pub fn hash_host(name: &str, salt: &[u8]) -> String {
    let hash = hmac_sha1(salt, name.as_bytes());
    format!("|1|{}|{}", BASE64.encode(salt), BASE64.encode(hash))
}

fn hmac_sha1(salt: &[u8], name: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; an empty
    // result would simply never match.
    match Hmac::<Sha1>::new_from_slice(salt) {
        Ok(mut mac) => {
            mac.update(name);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                let mut positive = false;
                for p in patterns {
                    if glob_match(p.glob.as_bytes(), name.as_bytes()) {
                        if p.negated {
                            return false;
                        }
                        positive = true;
                    }
                }
                positive
            }
        }
    }
}

type ParsedLine = (bool, Hosts, PublicKey);

/// `Ok(None)` for blank lines, comments and lines we deliberately ignore.
fn parse_line(raw: &str) -> Result<Option<ParsedLine>, String> {
    let mut fields = raw.split([' ', '\t']).filter(|f| !f.is_empty());
    let Some(mut first) = fields.next() else {
        return Ok(None);
    };
    if first.starts_with('#') {
        return Ok(None);
    }
    let mut revoked = false;
    if let Some(marker) = first.strip_prefix('@') {
        match marker {
            "revoked" => revoked = true,
            // Host certificates are not trusted by certsync; see module doc.
            "cert-authority" => return Ok(None),
            other => return Err(format!("unknown marker @{other}")),
        }
        first = fields.next().ok_or("no host list after the marker")?;
    }
    let hosts = parse_hosts(first)?;
    let key_type = fields.next().ok_or("no key type")?;
    let data = fields.next().ok_or("no key data")?;
    // Anything further is a comment.
    let key = russh::keys::parse_public_key_base64(data)
        .map_err(|e| format!("the {key_type} key data cannot be decoded ({e})"))?;
    if key.algorithm().as_str() != key_type {
        return Err(format!(
            "the line says {key_type} but the key data is {}",
            key.algorithm().as_str()
        ));
    }
    Ok(Some((revoked, hosts, key)))
}

fn parse_hosts(field: &str) -> Result<Hosts, String> {
    if let Some(rest) = field.strip_prefix("|1|") {
        let (salt, hash) = rest
            .split_once('|')
            .ok_or("hashed host is not |1|salt|hash")?;
        let salt = BASE64
            .decode(salt)
            .map_err(|_| "hashed host salt is not base64")?;
        let hash = BASE64
            .decode(hash)
            .map_err(|_| "hashed host hash is not base64")?;
        if hash.len() != 20 {
            return Err("hashed host hash is not 20 bytes (HMAC-SHA1)".into());
        }
        return Ok(Hosts::Hashed { salt, hash });
    }
    if field.starts_with('|') {
        return Err("unsupported hashed host format (only |1| exists)".into());
    }
    let mut patterns = Vec::new();
    for p in field.split(',') {
        let (negated, glob) = match p.strip_prefix('!') {
            Some(g) => (true, g),
            None => (false, p),
        };
        if glob.is_empty() {
            return Err("empty host pattern".into());
        }
        patterns.push(Pattern {
            negated,
            glob: glob.to_ascii_lowercase(),
        });
    }
    Ok(Hosts::Patterns(patterns))
}

/// OpenSSH's `match_pattern`: `*` matches any run (also empty), `?` any one
/// character; everything else literally. Iterative with one backtrack
/// point, so a hostile pattern cannot make it exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Known { line } => write!(f, "known (line {line})"),
            Verdict::Revoked { line } => write!(f, "revoked (line {line})"),
            Verdict::Changed { lines } => write!(f, "changed (listed: {})", join_lines(lines)),
            Verdict::Unknown => write!(f, "unknown"),
        }
    }
}

/// "line 3" or "lines 3, 7".
pub fn join_lines(lines: &[usize]) -> String {
    let list: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    if lines.len() == 1 {
        format!("line {}", list.join(", "))
    } else {
        format!("lines {}", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict::{Changed, Known, Revoked, Unknown};
    use super::*;

    // Keys and hashed lines made with ssh-keygen (and `ssh-keygen -H`).
    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEmW1qZYqlDlRke6XZuFqqlljcoiUWXez4pC3zBjvHE6";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBwKtcZD32sb00KJxZYS4MZYqZv8JKodyE5IfJllYpcY";
    const KEY_C: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBtfB50sq6fGurv+Sju6klgqGpcD74ipNclxUp2ZjxTrM2s+L8LvYGLYPnOIYNO9sUdWK4V3/nRwcDGXn2gRFnc=";
    // example.com → KEY_A, [127.0.0.1]:2222 → KEY_B
    const HASHED: &str = "\
|1|7oZC1OifrKLRCn3Ve8akU7hW81I=|qWJKxRozy/OuuiYyDAej45qTqVI= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEmW1qZYqlDlRke6XZuFqqlljcoiUWXez4pC3zBjvHE6
|1|e3e1UoTjOa6kvC0zoWYK8YWBl4M=|mycTtf+n5B2JfMq4qFMFGBVhHZ8= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBwKtcZD32sb00KJxZYS4MZYqZv8JKodyE5IfJllYpcY
";

    fn key(line: &str) -> KeyData {
        let b64 = line.split(' ').nth(1).unwrap();
        russh::keys::parse_public_key_base64(b64)
            .unwrap()
            .key_data()
            .clone()
    }

    fn kh(text: &str) -> KnownHosts {
        KnownHosts::parse(text, Path::new("/etc/certsync/known_hosts"))
    }

    /// `k`'s verdict on `host:port` offering the key of `line`.
    #[track_caller]
    fn is(k: &KnownHosts, host: &str, port: u16, line: &str, want: Verdict) {
        assert_eq!(k.check(host, port, &key(line)), want, "{host}:{port}");
    }

    #[test]
    fn plain_entry_known_other_host_unknown() {
        let k = kh(&format!("mail.example.com {KEY_A} root@mail\n"));
        is(&k, "mail.example.com", 22, KEY_A, Known { line: 1 });
        is(&k, "MAIL.Example.COM", 22, KEY_A, Known { line: 1 });
        is(&k, "other.example.com", 22, KEY_A, Unknown);
        // A non-22 port is a different name.
        is(&k, "mail.example.com", 2222, KEY_A, Unknown);
    }

    #[test]
    fn changed_key_lists_the_lines() {
        let k = kh(&format!(
            "mail.example.com {KEY_A}\nmail.example.com {KEY_C}\n"
        ));
        is(
            &k,
            "mail.example.com",
            22,
            KEY_B,
            Changed { lines: vec![1, 2] },
        );
        is(&k, "mail.example.com", 22, KEY_C, Known { line: 2 });
    }

    #[test]
    fn tabs_comments_blank_lines() {
        let text = format!(
            "# managed by hand\n\n   \t\nmail.example.com\t{}\t comment with  spaces\n  # indented comment\n",
            KEY_A.replace(' ', "\t\t")
        );
        let k = kh(&text);
        assert!(k.skipped().is_empty(), "{:?}", k.skipped());
        is(&k, "mail.example.com", 22, KEY_A, Known { line: 4 });
    }

    #[test]
    fn bracketed_port() {
        let k = kh(&format!("[127.0.0.1]:2222 {KEY_B}\n127.0.0.1 {KEY_A}\n"));
        is(&k, "127.0.0.1", 2222, KEY_B, Known { line: 1 });
        is(&k, "127.0.0.1", 22, KEY_A, Known { line: 2 });
        is(&k, "127.0.0.1", 22, KEY_B, Changed { lines: vec![2] });
        // `[host]:22` is never looked up: port 22 uses the bare name.
        let k = kh(&format!("[127.0.0.1]:22 {KEY_B}\n"));
        is(&k, "127.0.0.1", 22, KEY_B, Unknown);
    }

    #[test]
    fn hashed_entries_from_ssh_keygen() {
        let k = kh(HASHED);
        assert!(k.skipped().is_empty(), "{:?}", k.skipped());
        is(&k, "example.com", 22, KEY_A, Known { line: 1 });
        is(&k, "127.0.0.1", 2222, KEY_B, Known { line: 2 });
        is(&k, "127.0.0.1", 2222, KEY_A, Changed { lines: vec![2] });
        is(&k, "example.org", 22, KEY_A, Unknown);
        is(&k, "127.0.0.1", 22, KEY_B, Unknown);
    }

    #[test]
    fn hash_host_matches_ssh_keygen() {
        let salt = BASE64.decode("7oZC1OifrKLRCn3Ve8akU7hW81I=").unwrap();
        assert_eq!(
            hash_host("example.com", &salt),
            "|1|7oZC1OifrKLRCn3Ve8akU7hW81I=|qWJKxRozy/OuuiYyDAej45qTqVI="
        );
    }

    #[test]
    fn comma_lists_wildcards_and_negation() {
        let k = kh(&format!(
            "alias.example.com,mail.example.com,192.0.2.10 {KEY_A}\n\
             *.example.net,!secret.example.net {KEY_B}\n\
             mx?.example.org {KEY_C}\n"
        ));
        for host in ["alias.example.com", "mail.example.com", "192.0.2.10"] {
            is(&k, host, 22, KEY_A, Known { line: 1 });
        }
        is(&k, "a.b.example.net", 22, KEY_B, Known { line: 2 });
        // The negated pattern makes the line not apply at all.
        is(&k, "secret.example.net", 22, KEY_B, Unknown);
        is(&k, "example.net", 22, KEY_B, Unknown);
        is(&k, "mx1.example.org", 22, KEY_C, Known { line: 3 });
        is(&k, "mx12.example.org", 22, KEY_C, Unknown);
        // Wildcards apply to the bracketed form too.
        let k = kh(&format!("[*.example.com]:*,!*:23 {KEY_A}\n"));
        is(&k, "mail.example.com", 2222, KEY_A, Known { line: 1 });
        is(&k, "mail.example.com", 23, KEY_A, Unknown);
    }

    #[test]
    fn revoked_wins_even_if_listed() {
        let k = kh(&format!(
            "mail.example.com {KEY_A}\n@revoked * {KEY_A}\nmail.example.com {KEY_C}\n"
        ));
        is(&k, "mail.example.com", 22, KEY_A, Revoked { line: 2 });
        is(&k, "mail.example.com", 22, KEY_C, Known { line: 3 });
        // A revoked line is no "listed key" for the changed-key message.
        is(&k, "other.example.com", 22, KEY_B, Unknown);
        // Revocation applies only to the hosts its line matches.
        let k = kh(&format!(
            "@revoked other.example.com {KEY_A}\nmail.example.com {KEY_A}\n"
        ));
        is(&k, "mail.example.com", 22, KEY_A, Known { line: 2 });
        assert_eq!(k.algorithms_for("other.example.com", 22), vec![]);
    }

    #[test]
    fn cert_authority_ignored_bad_lines_skipped() {
        let k = kh(&format!(
            "@cert-authority *.example.com {KEY_A}\n\
             @bogus mail.example.com {KEY_A}\n\
             mail.example.com ssh-ed25519\n\
             mail.example.com ssh-ed25519 AAAA!!!!\n\
             mail.example.com ssh-rsa {}\n\
             |2|abc|def {KEY_A}\n\
             ,mail.example.com {KEY_A}\n\
             mail.example.com {KEY_B}\n",
            KEY_A.split(' ').nth(1).unwrap()
        ));
        let skipped: Vec<usize> = k.skipped().iter().map(|s| s.line).collect();
        assert_eq!(skipped, vec![2, 3, 4, 5, 6, 7]);
        // Only line 8 counts: the CA line does not make KEY_A trusted.
        is(
            &k,
            "mail.example.com",
            22,
            KEY_A,
            Changed { lines: vec![8] },
        );
    }

    #[test]
    fn algorithms_for_host_in_file_order() {
        let k = kh(&format!(
            "mail.example.com {KEY_C}\nmail.example.com {KEY_A}\n*.example.com {KEY_B}\n"
        ));
        let algs = k.algorithms_for("mail.example.com", 22);
        assert_eq!(
            algs,
            vec![
                Algorithm::Ecdsa {
                    curve: russh::keys::EcdsaCurve::NistP256
                },
                Algorithm::Ed25519
            ]
        );
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
        assert!(glob_match(b"?", b"x"));
        assert!(!glob_match(b"?", b""));
        assert!(glob_match(b"**a", b"bba"));
        let long = vec![b'a'; 200];
        assert!(!glob_match(b"*a*a*a*a*a*a*a*a*b", &long));
    }

    #[test]
    fn load_missing_file_names_it() {
        let err = KnownHosts::load(Path::new("/nonexistent/certsync/known_hosts")).unwrap_err();
        assert!(err
            .to_string()
            .contains("/nonexistent/certsync/known_hosts"));
    }
}
