//! The `[mailcow]` preset: read `mailcow.conf` and fill in what a mailcow
//! host needs, so a receive.toml can be three lines.
//!
//! - `MAILCOW_HOSTNAME` → the hostname the certificate must cover;
//! - `COMPOSE_PROJECT_NAME` → the compose project whose containers reload;
//! - `SKIP_LETS_ENCRYPT` must be `y`, or mailcow's own acme container will
//!   overwrite what certsync installs: warned about loudly;
//! - `ENABLE_SSL_SNI` → mailcow may serve per-domain certificates from
//!   `data/assets/ssl/<domain>/` ahead of the top-level pair; those folders
//!   that cover our hostnames get the new pair too, and the verify step
//!   names them when the wire disagrees.

use std::path::{Path, PathBuf};

use certsync_core::validate::san_matches;

use crate::error::ReceiveError;

/// mailcow's services that use the certificate.
pub const SERVICES: [&str; 3] = ["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow"];
/// Where the preset checks the served certificate by default.
pub const DEFAULT_VERIFY: [&str; 3] = ["127.0.0.1:25 smtp", "127.0.0.1:993", "127.0.0.1:443"];

/// What certsync takes from `mailcow.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailcowConf {
    pub dir: PathBuf,
    pub hostname: String,
    pub project: String,
    pub skip_lets_encrypt: bool,
    pub enable_ssl_sni: bool,
}

impl MailcowConf {
    /// `data/assets/ssl`, mounted into the containers as `/etc/ssl/mail`.
    pub fn ssl_dir(&self) -> PathBuf {
        self.dir.join("data/assets/ssl")
    }
}

/// Parse `KEY=value` lines as mailcow.conf writes them (comments, blank
/// lines, optional quotes).
pub fn parse_conf(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// Read `<dir>/mailcow.conf`.
pub fn read_conf(dir: &Path) -> Result<MailcowConf, ReceiveError> {
    let path = dir.join("mailcow.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // A unit with ProtectHome=yes sees an empty /home and /root: the
        // checkout seems missing there while the admin can see it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && crate::install::under_home(dir) => {
            return Err(ReceiveError::Settings(format!(
                "{} does not exist; check `[mailcow] dir` in receive.toml. If it does exist, a unit with ProtectHome=yes hides /home and /root from it: for certsync-deploy.service run `certsync-receive units && systemctl daemon-reload`",
                path.display()
            )))
        }
        Err(source) => {
            return Err(ReceiveError::ReadInput {
                path: path.clone(),
                source,
            })
        }
    };
    let vars = parse_conf(&text);
    let get = |k: &str| {
        vars.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let hostname = get("MAILCOW_HOSTNAME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            ReceiveError::Settings(format!(
                "{}: MAILCOW_HOSTNAME is not set; is this a mailcow-dockerized checkout?",
                path.display()
            ))
        })?;
    // docker compose derives the default project from the directory name.
    let project = get("COMPOSE_PROJECT_NAME")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| {
                    n.to_string_lossy()
                        .to_lowercase()
                        .replace(['-', '.', ' '], "")
                })
                .unwrap_or_else(|| "mailcowdockerized".into())
        });
    let yes = |k: &str| get(k).is_some_and(|v| v.eq_ignore_ascii_case("y"));
    let conf = MailcowConf {
        dir: dir.to_path_buf(),
        hostname,
        project,
        skip_lets_encrypt: yes("SKIP_LETS_ENCRYPT"),
        enable_ssl_sni: yes("ENABLE_SSL_SNI"),
    };
    if !conf.skip_lets_encrypt {
        tracing::warn!(
            file = %path.display(),
            "SKIP_LETS_ENCRYPT is not \"y\": mailcow's acme-mailcow container will overwrite the certificate certsync installs. Set SKIP_LETS_ENCRYPT=y in mailcow.conf and run `docker compose up -d`"
        );
    }
    Ok(conf)
}

/// Per-domain folders under `ssl_dir` whose name one of `hostnames` equals
/// or that a hostname's certificate would be served for. mailcow names each
/// folder after a domain and serves `<domain>/cert.pem` for it with SNI.
pub fn sni_dirs_covering(ssl_dir: &Path, hostnames: &[String]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(ssl_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            hostnames
                .iter()
                .any(|h| san_matches(h, &name) || san_matches(&name, h))
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mailcow_conf() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mailcow.conf"),
            "# mailcow\nMAILCOW_HOSTNAME=mail.example.com\nCOMPOSE_PROJECT_NAME=mailcowdockerized\nSKIP_LETS_ENCRYPT=y\nENABLE_SSL_SNI=n\n",
        )
        .unwrap();
        let c = read_conf(dir.path()).unwrap();
        assert_eq!(c.hostname, "mail.example.com");
        assert_eq!(c.project, "mailcowdockerized");
        assert!(c.skip_lets_encrypt);
        assert!(!c.enable_ssl_sni);
        assert_eq!(c.ssl_dir(), dir.path().join("data/assets/ssl"));
    }

    #[test]
    fn missing_hostname_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mailcow.conf"), "SKIP_LETS_ENCRYPT=n\n").unwrap();
        let e = read_conf(dir.path()).unwrap_err().to_string();
        assert!(e.contains("MAILCOW_HOSTNAME"), "{e}");
        let e = read_conf(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("mailcow.conf"), "{e}");
    }

    #[test]
    fn quotes_and_comments() {
        let v = parse_conf("A=\"x y\"\n#B=1\nC='z'\n  D = w \nbad line\n");
        assert_eq!(
            v,
            vec![
                ("A".into(), "x y".into()),
                ("C".into(), "z".into()),
                ("D".into(), "w".into())
            ]
        );
    }

    #[test]
    fn finds_sni_folders() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["mail.example.com", "other.org", "example.com"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
        let found = sni_dirs_covering(dir.path(), &["mail.example.com".to_string()]);
        assert_eq!(found, vec![dir.path().join("mail.example.com")]);
        let found = sni_dirs_covering(dir.path(), &["*.example.com".to_string()]);
        assert_eq!(found, vec![dir.path().join("mail.example.com")]);
    }
}
