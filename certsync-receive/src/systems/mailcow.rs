//! The `[mailcow]` preset: read `mailcow.conf` the way mailcow and docker
//! compose read it, and fill in what a mailcow host needs, so a
//! receive.toml can be three lines.
//!
//! What is taken from `mailcow.conf` (mailcow-dockerized's
//! `generate_config.sh` writes it; compose reads it as `.env`, mailcow's
//! scripts `source` it):
//! - `MAILCOW_HOSTNAME` → the hostname the certificate must cover;
//! - `COMPOSE_PROJECT_NAME` → the compose project whose containers reload,
//!   lowercased as mailcow's `reload-configurations.sh` matches it. When it
//!   is unset, compose derives the project from the directory name; see
//!   [`project_names`] for both spellings;
//! - `SKIP_LETS_ENCRYPT` must be yes, or mailcow's own acme container will
//!   overwrite what certsync installs: warned about loudly;
//! - `ADDITIONAL_SAN` → names the operator wants on the certificate
//!   ([`literal_sans`]); a certificate that drops one is warned about;
//! - `ENABLE_SSL_SNI` is read but changes nothing here: it only tells
//!   acme-mailcow to *request* per-domain certificates.
//!
//! Booleans are yes when the value is `y` or `yes` in any case, as
//! mailcow's scripts test them (`[yY][eE][sS]|[yY]` in bash,
//! `.lower() in ("y", "yes")` in nginx's bootstrap).
//!
//! Per-domain folders ([`served_folders`]): mailcow serves
//! `data/assets/ssl/<dir>/cert.pem` for the names listed in
//! `<dir>/domains` whenever the folder holds `domains`, `cert.pem` and
//! `key.pem`, whatever `ENABLE_SSL_SNI` says. dovecot-mailcow writes every
//! such folder into `sni.conf` at start; postfix-mailcow builds its SNI map
//! from them at start (unless `SKIP_LETS_ENCRYPT` is yes, when its map is
//! empty); nginx-mailcow serves those whose `domains` does not list
//! `MAILCOW_HOSTNAME`. For those names the folder's pair wins over the
//! top-level one. So the folder is judged by its `domains` file, never by
//! its name: certsync writes a new pair into it only when the new leaf
//! covers every name listed there ([`plan_folder`]).

use std::path::{Path, PathBuf};

use certsync_core::validate::san_matches;
use certsync_core::ExitCode;

/// mailcow's services that use the certificate.
pub const SERVICES: [&str; 3] = ["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow"];

/// The largest `domains` file read: acme-mailcow writes one line of names,
/// at most 100 per certificate (Let's Encrypt's limit).
pub const MAX_DOMAINS_BYTES: usize = 64 * 1024;

/// The largest `mailcow.conf` read (generate_config.sh writes ~10 KiB).
pub const MAX_CONF_BYTES: usize = 1024 * 1024;

/// What certsync takes from `mailcow.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailcowConf {
    pub dir: PathBuf,
    pub hostname: String,
    /// The compose project to match, first choice.
    pub project: String,
    /// Other spellings of the project that compose may have used, tried
    /// when no container carries `project` (see [`project_names`]).
    pub project_alternates: Vec<String>,
    pub skip_lets_encrypt: bool,
    pub enable_ssl_sni: bool,
    /// Where mailcow publishes SMTP, submission, SMTPS, IMAPS and HTTPS,
    /// in `verify` syntax ([`verify_endpoints`]).
    pub verify: Vec<String>,
    /// The literal names of `ADDITIONAL_SAN` ([`literal_sans`]); empty when
    /// `ONLY_MAILCOW_HOSTNAME` is yes (acme-mailcow then ignores them).
    pub additional_sans: Vec<String>,
}

impl MailcowConf {
    /// `data/assets/ssl`, mounted into the containers as `/etc/ssl/mail`.
    pub fn ssl_dir(&self) -> PathBuf {
        self.dir.join("data/assets/ssl")
    }
}

/// Parse `KEY=value` lines as compose's `.env` reader and bash's `source`
/// agree on them: comments, blank lines, an optional `export `, optional
/// quotes, and for an unquoted value a ` #` starting a comment.
pub fn parse_conf(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let quoted = ['"', '\''].into_iter().find_map(|q| {
                let inner = v.strip_prefix(q)?;
                let end = inner.find(q)?;
                Some(&inner[..end])
            });
            let v = match quoted {
                Some(inner) => inner,
                None => match v.find(" #").or_else(|| v.find("\t#")) {
                    Some(at) => v[..at].trim_end(),
                    None => v,
                },
            };
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// A mailcow boolean: `y` or `yes`, in any case.
pub fn is_yes(value: &str) -> bool {
    let v = value.trim();
    v.eq_ignore_ascii_case("y") || v.eq_ignore_ascii_case("yes")
}

/// The compose project names to match, first choice first.
///
/// - `COMPOSE_PROJECT_NAME` set: that name lowercased (compose v1
///   lowercases it; v2 refuses an uppercase one; mailcow's
///   `reload-configurations.sh` matches `${COMPOSE_PROJECT_NAME,,}`).
/// - unset: compose v2's default, the directory name normalised as
///   compose-go's `NormalizeProjectName` does (lowercase, keep only
///   `a-z 0-9 _ -`, drop leading `_`/`-`): `mailcow-dockerized`. Then the
///   spelling of docker-compose v1 before 1.21, which removed everything
///   but `a-z 0-9`: `mailcowdockerized`, the name mailcow's docs use.
pub fn project_names(compose_project_name: Option<&str>, dir: &Path) -> Vec<String> {
    if let Some(p) = compose_project_name
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        return vec![p.to_lowercase()];
    }
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            std::fs::canonicalize(dir)
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_default()
        .to_lowercase();
    let v2: String = base
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect::<String>()
        .trim_start_matches(['_', '-'])
        .to_string();
    let v1: String = base
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect();
    let mut names = Vec::new();
    for n in [v2, v1] {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    if names.is_empty() {
        names.push("mailcowdockerized".into());
    }
    names
}

/// The literal host names in an `ADDITIONAL_SAN` value.
///
/// acme-mailcow splits the value on commas (and, unquoted, on blanks); an
/// entry ending in `.*` (`imap.*`) is a template expanded for every mail
/// domain in its database, and `*.example.com` is a wildcard it only
/// requests with DNS-01. Neither names one host certsync can check, so
/// only plain names (letters, digits, `-`, `_`, dots) are kept.
pub fn literal_sans(value: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for entry in value.split([',', ' ', '\t']).map(str::trim) {
        let plain = !entry.is_empty()
            && entry.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        let name = entry.to_ascii_lowercase();
        if plain && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Why `mailcow.conf` gave no settings.
#[derive(Debug, thiserror::Error)]
pub enum MailcowError {
    /// Missing under /home or /root: maybe only hidden from this unit.
    #[error("{} does not exist; check `[mailcow] dir` in receive.toml. If it does exist, a unit with ProtectHome=yes hides /home and /root from it: for certsync-deploy.service run `certsync-receive units && systemctl daemon-reload`", .0.display())]
    Hidden(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: MAILCOW_HOSTNAME is not set; is this a mailcow-dockerized checkout?", .0.display())]
    NoHostname(PathBuf),
}

impl MailcowError {
    /// A wrong `[mailcow] dir` is the operator's to fix (exit 2); a file
    /// that cannot be read is a runtime failure (exit 1).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            MailcowError::Hidden(_) | MailcowError::NoHostname(_) => ExitCode::Usage,
            MailcowError::Read { .. } => ExitCode::Runtime,
        }
    }
}

/// Read `<dir>/mailcow.conf`.
pub fn read_conf(dir: &Path) -> Result<MailcowConf, MailcowError> {
    let path = dir.join("mailcow.conf");
    let bytes = match crate::fsutil::read_capped(&path, MAX_CONF_BYTES) {
        Ok(Some(b)) => b,
        // A unit with ProtectHome=yes sees an empty /home and /root: the
        // checkout seems missing there while the admin can see it.
        Ok(None) if crate::pipeline::install::under_home(dir) => {
            return Err(MailcowError::Hidden(path));
        }
        Ok(None) => {
            return Err(MailcowError::Read {
                path,
                source: std::io::ErrorKind::NotFound.into(),
            })
        }
        Err(source) => return Err(MailcowError::Read { path, source }),
    };
    let vars = parse_conf(&String::from_utf8_lossy(&bytes));
    // A key set twice: the last line wins, as with `source`.
    let get = |k: &str| {
        vars.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let hostname = get("MAILCOW_HOSTNAME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| MailcowError::NoHostname(path.clone()))?;
    let mut projects = project_names(get("COMPOSE_PROJECT_NAME").as_deref(), dir).into_iter();
    let project = projects
        .next()
        .unwrap_or_else(|| "mailcowdockerized".into());
    let yes = |k: &str| get(k).is_some_and(|v| is_yes(&v));
    let conf = MailcowConf {
        dir: dir.to_path_buf(),
        hostname,
        project,
        project_alternates: projects.collect(),
        skip_lets_encrypt: yes("SKIP_LETS_ENCRYPT"),
        enable_ssl_sni: yes("ENABLE_SSL_SNI"),
        verify: verify_endpoints(&get, &path),
        additional_sans: if yes("ONLY_MAILCOW_HOSTNAME") {
            Vec::new()
        } else {
            literal_sans(&get("ADDITIONAL_SAN").unwrap_or_default())
        },
    };
    if !conf.skip_lets_encrypt {
        tracing::warn!(
            file = %path.display(),
            "SKIP_LETS_ENCRYPT is not \"y\": mailcow's acme-mailcow container will overwrite the certificate certsync installs. Set SKIP_LETS_ENCRYPT=y in mailcow.conf and run `docker compose up -d`"
        );
    }
    Ok(conf)
}

/// A per-domain folder that mailcow serves: it holds `domains`, `cert.pem`
/// and `key.pem` (each followed through links, as mailcow's `[[ -f ]]` and
/// `os.path.isfile` do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslFolder {
    pub dir: PathBuf,
    /// The names in its `domains` file, in order, blank-separated.
    pub domains: Vec<String>,
    /// The folder itself is a symbolic link (mailcow follows it; certsync
    /// never writes through it).
    pub is_link: bool,
}

/// Every folder under `ssl_dir` that mailcow serves, sorted by path. A
/// missing `ssl_dir` has none.
pub fn served_folders(ssl_dir: &Path) -> std::io::Result<Vec<SslFolder>> {
    let entries = match std::fs::read_dir(ssl_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let dir = entry.path();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if !std::fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let is_file = |name: &str| std::fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file());
        if !(is_file("domains") && is_file("cert.pem") && is_file("key.pem")) {
            continue;
        }
        let text = crate::fsutil::read_capped(&dir.join("domains"), MAX_DOMAINS_BYTES)?
            .unwrap_or_default();
        let domains = String::from_utf8_lossy(&text)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        found.push(SslFolder {
            dir,
            domains,
            is_link,
        });
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

/// Does one of `sans` cover `name` (RFC 6125)? A wildcard name (`*.x.org`)
/// is covered only by the same wildcard.
pub fn covered(sans: &[String], name: &str) -> bool {
    sans.iter().any(|san| san_matches(san, name))
}

/// What to do with one per-domain folder for a new leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderPlan {
    /// The leaf covers every name in `domains`: write the pair there too.
    Write,
    /// Leave it alone, for this reason (said to the operator).
    Leave(String),
}

/// Decide about `folder` for a leaf with `sans`.
pub fn plan_folder(folder: &SslFolder, sans: &[String]) -> FolderPlan {
    let dir = folder.dir.display();
    if folder.domains.is_empty() {
        return FolderPlan::Leave(format!(
            "left {dir} alone: its domains file lists no name, so mailcow serves nothing from it"
        ));
    }
    let (mine, others): (Vec<&String>, Vec<&String>) =
        folder.domains.iter().partition(|d| covered(sans, d));
    if !others.is_empty() {
        let join = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        let mut why = format!(
            "left {dir} alone: the new certificate does not cover {} listed in its domains file",
            join(&others)
        );
        if !mine.is_empty() {
            why.push_str(&format!(
                "; mailcow keeps serving that folder's own certificate for {}, which the new one covers: push a certificate that covers every name in {dir}/domains, or remove or archive the folder (acme-mailcow archives to data/assets/ssl/backups/) and restart postfix-mailcow, dovecot-mailcow and nginx-mailcow",
                join(&mine)
            ));
        }
        return FolderPlan::Leave(why);
    }
    if folder.is_link {
        return FolderPlan::Leave(format!(
            "left {dir} alone: it is a symbolic link, and certsync writes only into real directories; replace the link by a directory, or point it where certsync writes"
        ));
    }
    FolderPlan::Write
}

/// The folders mailcow serves for one of `hostnames` (their `domains` list
/// a name one of `hostnames` matches): where a stale certificate on the
/// wire most likely comes from.
pub fn folders_serving(ssl_dir: &Path, hostnames: &[String]) -> Vec<PathBuf> {
    served_folders(ssl_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| {
            f.domains.iter().any(|d| {
                hostnames
                    .iter()
                    .any(|h| san_matches(d, h) || san_matches(h, d))
            })
        })
        .map(|f| f.dir)
        .collect()
}

/// The names of `wanted` that `sans` does not cover, in order.
pub fn lost_names(sans: &[String], wanted: &[String]) -> Vec<String> {
    let mut lost: Vec<String> = Vec::new();
    for name in wanted {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !covered(sans, &name) && !lost.contains(&name) {
            lost.push(name);
        }
    }
    lost
}

/// Warnings for a leaf with `sans` that lost names: those `earlier` (a
/// description and the SANs of the leaf it replaced) covered, and literal
/// `ADDITIONAL_SAN` names. `subject` says which leaf (`the new
/// certificate`, or the installed file). Empty when nothing is lost.
pub fn lost_name_warnings(
    subject: &str,
    sans: &[String],
    earlier: Option<(&str, &[String])>,
    additional_sans: &[String],
) -> Vec<String> {
    let them = |lost: &[String]| if lost.len() == 1 { "it" } else { "them" };
    let mut out = Vec::new();
    if let Some((what, old)) = earlier {
        let lost = lost_names(sans, old);
        if !lost.is_empty() {
            out.push(format!(
                "{subject} no longer covers {}, which {what} covers: clients using {} get a name mismatch; add {} to the certificate on the NPM host",
                lost.join(", "),
                if lost.len() == 1 { "that name" } else { "those names" },
                them(&lost),
            ));
        }
    }
    let lost = lost_names(sans, additional_sans);
    if !lost.is_empty() {
        out.push(format!(
            "{subject} does not cover {} from ADDITIONAL_SAN in mailcow.conf: add {} to the certificate on the NPM host, or remove {} from ADDITIONAL_SAN",
            lost.join(", "),
            them(&lost),
            them(&lost),
        ));
    }
    out
}

/// How each mailcow service is made to serve new certificate files, for
/// `[docker.reload]` entries the operator did not write. Each choice and
/// the fact behind it, from mailcow-dockerized:
///
/// - postfix-mailcow: `data/Dockerfiles/postfix/postfix.sh` writes
///   `/opt/postfix/conf/sni.map` from every `data/assets/ssl/<dir>/`
///   holding `domains`, `cert.pem`, `key.pem` at container start and runs
///   `postmap -F` on it (`main.cf`: `tls_server_sni_maps`). `-F` stores
///   the files' contents, so `postfix reload` alone keeps serving the old
///   chain to every client that sends SNI (tests/tests/mailcow_env.rs
///   shows it). The map's source names paths, which do not change when
///   certsync replaces the files: rebuilding the map from it, then
///   reloading, serves the new chain without dropping a connection. (If
///   the map does not exist, there is nothing to rebuild.) mailcow's own
///   `data/Dockerfiles/acme/reload-configurations.sh` restarts postfix
///   instead; certsync restarts only when verify still sees the old leaf.
/// - dovecot-mailcow: `data/Dockerfiles/dovecot/docker-entrypoint.sh`
///   writes `sni.conf` with `ssl_cert = <…/cert.pem` (a file name, read
///   when the config is read), and `dovecot reload` re-reads the config:
///   tests/tests/mailcow_env.rs shows every listener, with and without
///   SNI, serving the new files after a reload. mailcow's acme container
///   restarts dovecot; the restart is certsync's fallback.
/// - nginx-mailcow: `ssl_certificate` names files, which `nginx -s
///   reload` re-reads (the reload mailcow's acme container uses too).
pub fn reload_command(service: &str) -> Option<Vec<String>> {
    let cmd: &[&str] = match service {
        "postfix-mailcow" => &["sh", "-c", POSTFIX_RELOAD],
        "dovecot-mailcow" => &["dovecot", "reload"],
        "nginx-mailcow" => &["nginx", "-s", "reload"],
        _ => return None,
    };
    Some(cmd.iter().map(|s| s.to_string()).collect())
}

/// Rebuild postfix-mailcow's SNI map (if there is one), then reload.
pub const POSTFIX_RELOAD: &str = "{ test ! -f /opt/postfix/conf/sni.map || postmap -F hash:/opt/postfix/conf/sni.map; } && postfix reload";

/// mailcow.conf's variables for the TLS services certsync checks by
/// default: the variable, compose's default (`docker-compose.yml`:
/// `"${SMTP_PORT:-25}:25"` …), the protocol word of the `verify` entry.
/// IMAP, POP3, POP3S and ManageSieve are served by the same dovecot
/// process from the same `ssl_cert` settings as IMAPS, so IMAPS stands for
/// them; add them to `verify` to check them too.
const PUBLISHED: [(&str, &str, &str); 4] = [
    ("SMTP_PORT", "25", "smtp"),
    ("SUBMISSION_PORT", "587", "submission"),
    ("SMTPS_PORT", "465", "smtps"),
    ("IMAPS_PORT", "993", "imaps"),
];

/// The `verify` entries for a mailcow host, from mailcow.conf's port and
/// bind variables (`get` looks one up; `path` names the file in
/// warnings): SMTP and submission with STARTTLS, SMTPS, IMAPS, and HTTPS
/// on `HTTPS_BIND:HTTPS_PORT`. A port variable may be `IP:PORT`; a bind of
/// `0.0.0.0`, `::` or nothing means every address, so the probe uses
/// loopback. With `NGINX_USE_PROXY_PROTOCOL=y` nginx expects a PROXY
/// header, and the HTTPS probe sends one. A value that is not a port is
/// warned about and left out.
pub fn verify_endpoints(get: &dyn Fn(&str) -> Option<String>, path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |var: &str, value: &str, word: &str, suffix: &str| match published(value) {
        Ok(addr) => out.push(format!("{addr} {word}{suffix}")),
        Err(why) => tracing::warn!(
            file = %path.display(),
            "{var}={value:?} {why}: the {word} endpoint is not verified; fix {var} in mailcow.conf or list the endpoint under `verify`"
        ),
    };
    for (var, default, word) in PUBLISHED {
        let value = get(var).filter(|v| !v.trim().is_empty());
        push(var, value.as_deref().unwrap_or(default), word, "");
    }
    let port = get("HTTPS_PORT")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "443".into());
    let bind = get("HTTPS_BIND").unwrap_or_default();
    let proxy = get("NGINX_USE_PROXY_PROTOCOL").is_some_and(|v| is_yes(&v));
    if proxy {
        tracing::info!(file = %path.display(), "NGINX_USE_PROXY_PROTOCOL is set: the HTTPS probe sends a PROXY header");
    }
    let https = if bind.trim().is_empty() {
        port.trim().to_string()
    } else if bind.contains(':') && !bind.starts_with('[') {
        format!("[{}]:{}", bind.trim(), port.trim())
    } else {
        format!("{}:{}", bind.trim(), port.trim())
    };
    push(
        "HTTPS_BIND/HTTPS_PORT",
        &https,
        "https",
        if proxy { " proxy" } else { "" },
    );
    out
}

/// `PORT`, `IP:PORT` or `[IPv6]:PORT` as compose publishes it → where a
/// client on this host reaches it (`HOST:PORT`).
fn published(value: &str) -> Result<String, &'static str> {
    let value = value.trim();
    let (bind, port) = match value.rsplit_once(':') {
        Some((bind, port)) => (bind, port),
        None => ("", value),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("is not a port (PORT or IP:PORT)")?;
    let bind = bind.trim_start_matches('[').trim_end_matches(']');
    Ok(match bind {
        "" | "0.0.0.0" | "*" => format!("127.0.0.1:{port}"),
        "::" => format!("[::1]:{port}"),
        v6 if v6.contains(':') => format!("[{v6}]:{port}"),
        v4 => format!("{v4}:{port}"),
    })
}

/// The mailcow service behind a `verify` entry: by its protocol word
/// (`smtp`, `submission`, `smtps` → postfix; `imap`, `imaps`, `pop3`,
/// `pop3s`, `sieve` → dovecot; `https` → nginx), else by mailcow's
/// container port. `None` when neither tells.
pub fn service_for_endpoint(text: &str) -> Option<&'static str> {
    let mut words = text.split_whitespace();
    let addr = words.next()?;
    let word = words.next().map(|w| w.to_ascii_lowercase());
    let by_word = match word.as_deref() {
        Some("smtp" | "submission" | "smtps" | "submissions") => Some(SERVICES[0]),
        Some("imap" | "imaps" | "pop3" | "pop3s" | "sieve" | "managesieve") => Some(SERVICES[1]),
        Some("https") => Some(SERVICES[2]),
        _ => None,
    };
    by_word.or_else(|| {
        let port: u16 = addr.rsplit_once(':')?.1.parse().ok()?;
        match port {
            25 | 465 | 587 => Some(SERVICES[0]),
            143 | 993 | 110 | 995 | 4190 => Some(SERVICES[1]),
            443 => Some(SERVICES[2]),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_conf(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mailcow.conf"), text).unwrap();
        dir
    }

    #[test]
    fn reads_mailcow_conf() {
        let dir = write_conf(
            "# mailcow\nMAILCOW_HOSTNAME=mail.example.com\nCOMPOSE_PROJECT_NAME=mailcowdockerized\nSKIP_LETS_ENCRYPT=y\nENABLE_SSL_SNI=n\nADDITIONAL_SAN=imap.*,srv1.example.net\n",
        );
        let c = read_conf(dir.path()).unwrap();
        assert_eq!(c.hostname, "mail.example.com");
        assert_eq!(c.project, "mailcowdockerized");
        assert!(c.project_alternates.is_empty());
        assert!(c.skip_lets_encrypt);
        assert!(!c.enable_ssl_sni);
        assert_eq!(c.additional_sans, vec!["srv1.example.net"]);
        assert_eq!(c.ssl_dir(), dir.path().join("data/assets/ssl"));
    }

    #[test]
    fn booleans_are_y_or_yes_in_any_case() {
        for yes in ["y", "Y", "yes", "YES", "Yes", "yEs", " y "] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["n", "no", "", "true", "1", "yess", "ye", "on"] {
            assert!(!is_yes(no), "{no:?}");
        }
        let dir = write_conf(
            "MAILCOW_HOSTNAME=mail.example.com\nSKIP_LETS_ENCRYPT=YES\nENABLE_SSL_SNI=Yes\n",
        );
        let c = read_conf(dir.path()).unwrap();
        assert!(c.skip_lets_encrypt && c.enable_ssl_sni);
    }

    #[test]
    fn the_compose_project_is_lowercased() {
        let dir = write_conf("MAILCOW_HOSTNAME=m.example.com\nCOMPOSE_PROJECT_NAME=MailCow_Prod\n");
        let c = read_conf(dir.path()).unwrap();
        assert_eq!(c.project, "mailcow_prod");
        assert!(c.project_alternates.is_empty());
    }

    #[test]
    fn an_unset_project_is_composes_default_with_the_v1_spelling_too() {
        let p = |dir: &str| project_names(None, Path::new(dir));
        // compose v2 keeps dashes; docker-compose v1 before 1.21 dropped them.
        assert_eq!(
            p("/opt/mailcow-dockerized"),
            vec!["mailcow-dockerized", "mailcowdockerized"]
        );
        assert_eq!(p("/opt/Mail.Cow_2"), vec!["mailcow_2", "mailcow2"]);
        assert_eq!(p("/srv/_-mail"), vec!["mail"]);
        assert_eq!(p("/opt/mailcow"), vec!["mailcow"]);
        // Set but empty counts as unset, as for compose.
        assert_eq!(
            project_names(Some(""), Path::new("/opt/mailcow-dockerized"))[0],
            "mailcow-dockerized"
        );
        // Read from mailcow.conf: the directory's own name decides.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("mailcow-dockerized");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("mailcow.conf"), "MAILCOW_HOSTNAME=m.example.com\n").unwrap();
        let c = read_conf(&dir).unwrap();
        assert_eq!(c.project, "mailcow-dockerized");
        assert_eq!(c.project_alternates, vec!["mailcowdockerized"]);
    }

    #[test]
    fn missing_hostname_is_explained() {
        let dir = write_conf("SKIP_LETS_ENCRYPT=n\n");
        let e = read_conf(dir.path()).unwrap_err().to_string();
        assert!(e.contains("MAILCOW_HOSTNAME"), "{e}");
        let e = read_conf(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("mailcow.conf"), "{e}");
    }

    #[test]
    fn quotes_comments_and_export() {
        let v = parse_conf(
            "A=\"x y\"\n#B=1\nC='z'\n  D = w \nbad line\nexport E=1\nF=v # note\nG=\"a # b\" # c\nH=a#b\n",
        );
        let want: Vec<(String, String)> = [
            ("A", "x y"),
            ("C", "z"),
            ("D", "w"),
            ("E", "1"),
            ("F", "v"),
            ("G", "a # b"),
            ("H", "a#b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(v, want);
    }

    #[test]
    fn additional_san_keeps_literal_names_only() {
        assert_eq!(
            literal_sans("imap.*,srv1.example.net, *.example.org,SMTP.example.com smtp.example.com,,a..b,x/y"),
            vec!["srv1.example.net", "smtp.example.com"]
        );
        assert!(literal_sans("").is_empty());
        let dir = write_conf(
            "MAILCOW_HOSTNAME=m.example.com\nADDITIONAL_SAN=srv1.example.net\nONLY_MAILCOW_HOSTNAME=y\n",
        );
        assert!(read_conf(dir.path()).unwrap().additional_sans.is_empty());
    }

    fn folder(ssl: &Path, name: &str, domains: Option<&str>, files: bool) -> PathBuf {
        let d = ssl.join(name);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(text) = domains {
            std::fs::write(d.join("domains"), text).unwrap();
        }
        if files {
            std::fs::write(d.join("cert.pem"), "c").unwrap();
            std::fs::write(d.join("key.pem"), "k").unwrap();
        }
        d
    }

    #[test]
    fn served_folders_are_those_with_domains_cert_and_key() {
        let ssl = tempfile::tempdir().unwrap();
        let s = ssl.path();
        // Named after nothing we know, but serving our name: counts.
        let a = folder(
            s,
            "acme-old",
            Some("mail.example.com autodiscover.example.com\n"),
            true,
        );
        folder(s, "no-domains", None, true);
        folder(s, "no-files", Some("mail.example.com"), false);
        folder(s, "backups", None, false);
        std::fs::write(s.join("cert.pem"), "x").unwrap();
        std::os::unix::fs::symlink(&a, s.join("linked")).unwrap();
        let found = served_folders(s).unwrap();
        let dirs: Vec<_> = found.iter().map(|f| f.dir.clone()).collect();
        assert_eq!(dirs, vec![a.clone(), s.join("linked")]);
        assert_eq!(
            found[0].domains,
            vec!["mail.example.com", "autodiscover.example.com"]
        );
        assert!(!found[0].is_link && found[1].is_link);
        assert!(served_folders(&s.join("missing")).unwrap().is_empty());
        assert_eq!(
            folders_serving(s, &["mail.example.com".into()]),
            vec![a, s.join("linked")]
        );
        assert!(folders_serving(s, &["other.example.org".into()]).is_empty());
    }

    #[test]
    fn a_folder_is_written_only_when_every_listed_name_is_covered() {
        let f = |domains: &[&str], is_link| SslFolder {
            dir: PathBuf::from("/ssl/x"),
            domains: domains.iter().map(|s| s.to_string()).collect(),
            is_link,
        };
        let sans = vec!["mail.example.com".to_string(), "*.example.org".to_string()];
        assert_eq!(
            plan_folder(&f(&["mail.example.com"], false), &sans),
            FolderPlan::Write
        );
        assert_eq!(
            plan_folder(&f(&["MAIL.example.com.", "a.example.org"], false), &sans),
            FolderPlan::Write
        );
        let FolderPlan::Leave(why) = plan_folder(
            &f(&["mail.example.com", "autodiscover.example.com"], false),
            &sans,
        ) else {
            panic!("a partly covered folder must be left alone")
        };
        assert!(
            why.contains("does not cover autodiscover.example.com"),
            "{why}"
        );
        assert!(
            why.contains("keeps serving that folder's own certificate for mail.example.com"),
            "{why}"
        );
        assert!(why.contains("/ssl/x"), "{why}");
        let FolderPlan::Leave(why) = plan_folder(&f(&["other.net"], false), &sans) else {
            panic!()
        };
        assert!(!why.contains("keeps serving"), "{why}");
        assert!(
            matches!(plan_folder(&f(&[], false), &sans), FolderPlan::Leave(w) if w.contains("lists no name"))
        );
        assert!(
            matches!(plan_folder(&f(&["mail.example.com"], true), &sans), FolderPlan::Leave(w) if w.contains("symbolic link"))
        );
    }

    #[test]
    fn lost_names_are_those_no_longer_covered() {
        let new = vec!["mail.example.com".to_string(), "*.example.net".to_string()];
        let old = vec![
            "mail.example.com".to_string(),
            "imap.example.com".to_string(),
            "*.example.net".to_string(),
            "*.example.org".to_string(),
            "a.example.net".to_string(),
        ];
        assert_eq!(
            lost_names(&new, &old),
            vec!["imap.example.com", "*.example.org"]
        );
        assert!(lost_names(&new, &["MAIL.example.com.".to_string()]).is_empty());
    }

    fn endpoints_of(conf: &str) -> Vec<String> {
        let vars = parse_conf(conf);
        let get = |k: &str| {
            vars.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        verify_endpoints(&get, Path::new("mailcow.conf"))
    }

    #[test]
    fn endpoints_come_from_mailcow_conf() {
        // generate_config.sh's defaults.
        let defaults = "SMTP_PORT=25\nSMTPS_PORT=465\nSUBMISSION_PORT=587\nIMAP_PORT=143\nIMAPS_PORT=993\nHTTPS_PORT=443\nHTTPS_BIND=\n";
        assert_eq!(
            endpoints_of(defaults),
            [
                "127.0.0.1:25 smtp",
                "127.0.0.1:587 submission",
                "127.0.0.1:465 smtps",
                "127.0.0.1:993 imaps",
                "127.0.0.1:443 https"
            ]
        );
        // Unset: compose's defaults.
        assert_eq!(endpoints_of(""), endpoints_of(defaults));
        // The reverse-proxy guide's HTTPS, IP:PORT forms, binds meaning
        // every address, IPv6, and the PROXY protocol.
        let custom = "SMTP_PORT=203.0.113.7:2525\nSUBMISSION_PORT=0.0.0.0:5870\nSMTPS_PORT=[::]:4650\nIMAPS_PORT=[2001:db8::1]:9930\nHTTPS_BIND=127.0.0.1\nHTTPS_PORT=8443\nNGINX_USE_PROXY_PROTOCOL=Yes\n";
        assert_eq!(
            endpoints_of(custom),
            [
                "203.0.113.7:2525 smtp",
                "127.0.0.1:5870 submission",
                "[::1]:4650 smtps",
                "[2001:db8::1]:9930 imaps",
                "127.0.0.1:8443 https proxy"
            ]
        );
        assert_eq!(
            endpoints_of("HTTPS_BIND=::\nHTTPS_PORT=443\nNGINX_USE_PROXY_PROTOCOL=n\n")
                .last()
                .unwrap(),
            "[::1]:443 https"
        );
        assert_eq!(
            endpoints_of("HTTPS_BIND=2001:db8::2\nHTTPS_PORT=443\n")
                .last()
                .unwrap(),
            "[2001:db8::2]:443 https"
        );
        // A value that is no port is left out (and warned about).
        let bad = endpoints_of("SMTP_PORT=smtp\nHTTPS_PORT=0\n");
        assert_eq!(
            bad,
            [
                "127.0.0.1:587 submission",
                "127.0.0.1:465 smtps",
                "127.0.0.1:993 imaps"
            ]
        );
        // Every entry parses as a probe endpoint.
        for text in endpoints_of(custom).iter().chain(&endpoints_of(defaults)) {
            crate::systems::probe::Endpoint::parse(text).unwrap();
        }
    }

    #[test]
    fn endpoints_map_to_their_service() {
        for (text, service) in [
            ("127.0.0.1:2525 smtp", Some("postfix-mailcow")),
            ("127.0.0.1:5870 submission", Some("postfix-mailcow")),
            ("127.0.0.1:4650 smtps", Some("postfix-mailcow")),
            ("127.0.0.1:9930 imaps", Some("dovecot-mailcow")),
            ("127.0.0.1:8443 https proxy", Some("nginx-mailcow")),
            ("127.0.0.1:25", Some("postfix-mailcow")),
            ("127.0.0.1:993", Some("dovecot-mailcow")),
            ("[::1]:443", Some("nginx-mailcow")),
            ("127.0.0.1:8443", None),
            ("127.0.0.1:8443 tls", None),
        ] {
            assert_eq!(service_for_endpoint(text), service, "{text}");
        }
    }

    #[test]
    fn reload_commands_are_mailcows() {
        assert_eq!(
            reload_command("postfix-mailcow").unwrap(),
            ["sh", "-c", POSTFIX_RELOAD]
        );
        assert_eq!(
            reload_command("dovecot-mailcow").unwrap(),
            ["dovecot", "reload"]
        );
        assert_eq!(
            reload_command("nginx-mailcow").unwrap(),
            ["nginx", "-s", "reload"]
        );
        assert!(reload_command("sogo-mailcow").is_none());
    }
}
