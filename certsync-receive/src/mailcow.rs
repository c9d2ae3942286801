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

/// What certsync takes from `mailcow.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailcowConf {
    pub dir: PathBuf,
    pub hostname: String,
    pub project: String,
    pub skip_lets_encrypt: bool,
    pub enable_ssl_sni: bool,
    /// Where mailcow publishes SMTP, submission, SMTPS, IMAPS and HTTPS,
    /// in `verify` syntax ([`verify_endpoints`]).
    pub verify: Vec<String>,
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
    // mailcow.conf is a few KiB; the cap only keeps a mistake bounded.
    let text = match crate::fsutil::read_capped(&path, 1024 * 1024) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(None) => {
            return Err(ReceiveError::ReadInput {
                path,
                source: std::io::ErrorKind::NotFound.into(),
            })
        }
        Err(source) => return Err(ReceiveError::ReadInput { path, source }),
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
        verify: verify_endpoints(&get, &path),
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

/// Is a mailcow.conf boolean set? mailcow's scripts accept `y` and `yes`
/// in any case (nginx's `bootstrap.py`: `.lower() in ("y", "yes")`).
fn is_yes(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

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
            crate::probe::Endpoint::parse(text).unwrap();
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
