//! `push.toml` and `receive.toml` (docs/contract.md "`push.toml`" and
//! "`receive.toml`").
//!
//! Both are parsed strictly: an unknown key is an error that names the key
//! and the file, because a misspelt `hostname` that silently did nothing
//! would be a security bug on the receiving side. [`PushConfig::load`] and
//! [`ReceiveConfig::load`] also check what the types cannot say (names
//! unique, each target's certs known, one of `source` or `live_root` +
//! `domain`, …).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::notify::NotifyConfig;
use crate::protocol::valid_name;

/// The default config files.
pub const DEFAULT_PUSH_CONFIG: &str = "/etc/certsync/push.toml";
pub const DEFAULT_RECEIVE_CONFIG: &str = "/etc/certsync/receive.toml";
pub const DEFAULT_PUSH_STATE_DIR: &str = "/var/lib/certsync-push";
pub const DEFAULT_STAGING_DIR: &str = "/var/lib/certsync/staging";
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------- push.toml

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub state_dir: Option<PathBuf>,
    /// How often `watch` reconciles without events, e.g. "12h", "30m".
    pub recheck: Option<String>,
    #[serde(default, rename = "cert")]
    pub certs: Vec<PushCert>,
    #[serde(default, rename = "target")]
    pub targets: Vec<Target>,
    /// Who to tell what happened ([`crate::notify`]).
    pub notify: Option<NotifyConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushCert {
    /// The name the receiver knows this certificate by.
    pub name: String,
    /// A certbot live dir (`…/live/npm-5`, its symlinks are followed), or
    /// a dir of plain `fullchain.pem` + `privkey.pem` (NPM's uploaded
    /// certificates: `…/data/custom_ssl/npm-3`).
    pub source: Option<PathBuf>,
    /// Instead of `source`: the dirs to search, with `domain`: certbot's
    /// `live` dir, NPM's `custom_ssl` dir, or both.
    pub live_root: Option<LiveRoots>,
    pub domain: Option<String>,
}

/// `live_root`: one dir (`live_root = "/opt/npm/letsencrypt/live"`) or
/// several (`live_root = ["/opt/npm/letsencrypt/live",
/// "/opt/npm/data/custom_ssl"]`). Written back the way it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveRoots {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl LiveRoots {
    /// Every root, in the order given.
    pub fn paths(&self) -> &[PathBuf] {
        match self {
            LiveRoots::One(p) => std::slice::from_ref(p),
            LiveRoots::Many(v) => v,
        }
    }
}

impl Serialize for LiveRoots {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LiveRoots::One(p) => p.serialize(s),
            LiveRoots::Many(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LiveRoots {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = LiveRoots;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a directory, or a list of directories")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LiveRoots, E> {
                Ok(LiveRoots::One(PathBuf::from(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LiveRoots, A::Error> {
                let mut v = Vec::new();
                while let Some(p) = seq.next_element::<PathBuf>()? {
                    v.push(p);
                }
                Ok(LiveRoots::Many(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    #[default]
    Ssh,
    /// Same host, no SSH: spawn the receiver command.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// OpenSSH private key file.
    pub identity: Option<PathBuf>,
    /// OpenSSH known_hosts file.
    pub known_hosts: Option<PathBuf>,
    /// Or a pinned key: `ssh-ed25519 AAAA…`.
    pub host_key: Option<String>,
    /// Certificate names to send; default every `[[cert]]`.
    pub certs: Option<Vec<String>>,
    #[serde(default)]
    pub transport: TransportKind,
    /// For `transport = "local"`: the receiver command and its arguments.
    pub command: Option<Vec<String>>,
    /// Seconds to wait for the TCP connect and SSH handshake (default 10).
    pub connect_timeout: Option<u64>,
    /// Seconds one whole session with this receiver may take, from the
    /// first protocol byte to its exit (default
    /// [`DEFAULT_SESSION_TIMEOUT`]).
    pub session_timeout: Option<u64>,
}

/// How long one push session may take by default: the receiver may wait
/// 300 s for another session's lock and 120 s for root's deploy in
/// handoff mode, then reload and verify; 15 minutes covers that with room,
/// and still ends a receiver that drips a frame now and then.
pub const DEFAULT_SESSION_TIMEOUT: u64 = 900;

impl Target {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(22)
    }

    /// The bound on one whole session with this target.
    pub fn session_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.session_timeout
                .filter(|s| *s > 0)
                .unwrap_or(DEFAULT_SESSION_TIMEOUT),
        )
    }
}

impl PushConfig {
    pub fn load(path: &Path) -> Result<PushConfig, ConfigError> {
        PushConfig::from_toml(&read(path)?, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<PushConfig, ConfigError> {
        let cfg: PushConfig = parse(text, path)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PUSH_STATE_DIR))
    }

    /// The certificates a target should receive, in config order.
    pub fn certs_for<'a>(&'a self, target: &'a Target) -> impl Iterator<Item = &'a PushCert> + 'a {
        self.certs.iter().filter(move |c| match &target.certs {
            None => true,
            Some(names) => names.iter().any(|n| n == &c.name),
        })
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if let Some(n) = &self.notify {
            n.check().map_err(invalid)?;
        }
        if self.certs.is_empty() {
            return Err(invalid(
                "no [[cert]] section: add one with `name` and `source`".into(),
            ));
        }
        if self.targets.is_empty() {
            return Err(invalid("no [[target]] section: add one with `name`, `host`, `user`, `identity` and `known_hosts`".into()));
        }
        let mut names = BTreeSet::new();
        for c in &self.certs {
            unique_name("[[cert]]", &c.name, &mut names).map_err(invalid)?;
            c.check().map_err(invalid)?;
        }
        if let Some(r) = &self.recheck {
            parse_duration(r).map_err(|m| invalid(format!("recheck: {m}")))?;
        }
        let mut tnames = BTreeSet::new();
        for t in &self.targets {
            unique_name("[[target]]", &t.name, &mut tnames).map_err(invalid)?;
            t.check(&names).map_err(invalid)?;
        }
        Ok(())
    }
}

/// A section's `name`: valid on the wire and not used twice.
fn unique_name<'a>(
    section: &str,
    name: &'a str,
    seen: &mut BTreeSet<&'a str>,
) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "{section} name {name:?} must be 1–64 of A–Z a–z 0–9 . _ -"
        ));
    }
    if !seen.insert(name) {
        return Err(format!("two {section} sections are named {name:?}"));
    }
    Ok(())
}

impl PushCert {
    /// One of `source`, or `live_root` with `domain`.
    fn check(&self) -> Result<(), String> {
        match (&self.source, &self.live_root, &self.domain) {
                (Some(_), None, None) => {}
                (None, Some(roots), Some(_)) if roots.paths().is_empty() => {
                    return Err(format!(
                        "[[cert]] {:?}: `live_root` lists no directory; give certbot's live dir, NPM's custom_ssl dir, or both",
                        self.name
                    ))
                }
                (None, Some(_), Some(_)) => {}
                _ => {
                    return Err(format!(
                        "[[cert]] {:?}: set either `source` (a live dir) or both `live_root` and `domain`",
                        self.name
                    ))
                }
            }
        Ok(())
    }
}

impl Target {
    /// Its certs known (`names`), and what its transport needs.
    fn check(&self, names: &BTreeSet<&str>) -> Result<(), String> {
        if let Some(list) = &self.certs {
            for n in list {
                if !names.contains(n.as_str()) {
                    return Err(format!(
                        "[[target]] {:?} lists cert {:?}, but no [[cert]] has that name",
                        self.name, n
                    ));
                }
            }
        }
        match self.transport {
            TransportKind::Ssh => {
                for (key, missing) in [
                    ("host", self.host.is_none()),
                    ("user", self.user.is_none()),
                    ("identity", self.identity.is_none()),
                ] {
                    if missing {
                        return Err(format!(
                            "[[target]] {:?}: `{key}` is required for SSH",
                            self.name
                        ));
                    }
                }
                if self.known_hosts.is_none() == self.host_key.is_none() {
                    return Err(format!(
                            "[[target]] {:?}: set exactly one of `known_hosts` or `host_key`; host keys are never trusted on first use",
                            self.name
                        ));
                }
                if self.command.is_some() {
                    return Err(format!(
                            "[[target]] {:?}: `command` is for transport = \"local\"; over SSH the receiving host's authorized_keys forced command decides",
                            self.name
                        ));
                }
            }
            TransportKind::Local => {
                if let Some(cmd) = &self.command {
                    if cmd.is_empty() {
                        return Err(format!("[[target]] {:?}: `command` is empty", self.name));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Parse "12h", "30m", "45s", "2d" or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"12h\", \"30m\" or \"45s\""))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(mult)))
}

// ------------------------------------------------------------- receive.toml

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeployMode {
    /// `serve` installs, reloads and verifies itself.
    #[default]
    Inline,
    /// `serve` stages and validates as an unprivileged user; root's
    /// `certsync-deploy.path` unit runs `deploy`, and `serve` reports its result.
    Handoff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveConfig {
    pub staging_dir: Option<PathBuf>,
    #[serde(default)]
    pub deploy: DeployMode,
    /// Seconds `serve` waits for the root `deploy` in handoff mode (default 120).
    pub handoff_timeout: Option<u64>,
    /// Seconds `serve` waits for each protocol frame before giving up on a
    /// stalled pusher (default 30).
    pub read_timeout: Option<u64>,
    /// Honour a pusher's `--force` (a rollback to an older certificate).
    /// Default false: rollback is the receiving host's decision, so that a
    /// stolen pusher key or the unprivileged `certsync` user cannot
    /// reinstall an older pair. Root can always force locally.
    #[serde(default)]
    pub allow_remote_force: bool,
    /// A PEM bundle of extra trust anchors (a private CA's root), on top of
    /// the system store.
    pub ca_file: Option<PathBuf>,
    /// Seconds one pusher may take for its side of a session while it
    /// holds the receiver's lock (default 300).
    pub session_timeout: Option<u64>,
    pub mailcow: Option<MailcowPreset>,
    #[serde(default, rename = "cert")]
    pub certs: Vec<ReceiveCert>,
    pub docker: Option<DockerConfig>,
    /// Who to tell what happened ([`crate::notify`]).
    pub notify: Option<NotifyConfig>,
    /// The DANE guard (docs/contract.md "DANE"): `auto` (default) holds a
    /// pair that matches none of the validated TLSA records, `off` never
    /// looks, `require` also refuses when there are no validated records.
    #[serde(default)]
    pub dane: DaneMode,
    /// Ports whose TLSA records (`_<port>._tcp.<hostname>`) are checked
    /// besides 25.
    #[serde(default)]
    pub dane_ports: Vec<u16>,
    /// Install a held pair anyway once the installed certificate has this
    /// many days left (default 7).
    pub dane_deadline_days: Option<u32>,
    /// The validating resolver, `"IP:PORT"`; default: the first
    /// nameserver in /etc/resolv.conf.
    pub dns_resolver: Option<std::net::SocketAddr>,
}

/// `dane` in receive.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DaneMode {
    /// Guard when validated TLSA records exist.
    #[default]
    Auto,
    /// No lookup at all.
    Off,
    /// Guard, and refuse when no validated TLSA records exist.
    Require,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailcowPreset {
    /// The mailcow-dockerized checkout, holding `mailcow.conf`.
    pub dir: PathBuf,
}

/// A `[[cert]]` as written. With the `[mailcow]` preset, the missing fields
/// are filled in by the receiver from `mailcow.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveCert {
    pub name: String,
    pub hostnames: Option<Vec<String>>,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    /// Compose services to reload. Each entry needs a command: under
    /// `[docker.reload]`, or mailcow's built-in one for its three
    /// services. The receiver, which knows mailcow's, refuses an entry
    /// without one when it loads this file (docs/contract.md "`reload`
    /// entries"), before anything is written.
    pub reload: Option<Vec<String>>,
    /// Endpoints to check: `"127.0.0.1:25 smtp"`, `"127.0.0.1:993"`.
    pub verify: Option<Vec<String>>,
    /// systemd units on the receiving host to reload (`systemctl reload`,
    /// restart on failure), e.g. `["postfix.service", "dovecot.service"]`.
    pub reload_units: Option<Vec<String>>,
    /// A command (program and arguments, no shell) run after each
    /// successful install of this certificate.
    pub hook: Option<Vec<String>>,
    /// Seconds the hook may run before it is killed (default 60).
    pub hook_timeout: Option<u64>,
}

impl ReceiveCert {
    /// `cert_path` and `key_path`, when both are given (without
    /// `[mailcow]` [`ReceiveConfig`]'s checks require them).
    pub fn pair(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.cert_path.clone()?, self.key_path.clone()?))
    }

    /// The rules on one `[[cert]]`; `mailcow`: a `[mailcow]` section fills
    /// in what is missing.
    fn check(&self, mailcow: bool) -> Result<(), String> {
        if !mailcow {
            for (key, missing) in [
                (
                    "hostnames",
                    self.hostnames.as_ref().is_none_or(|h| h.is_empty()),
                ),
                ("cert_path", self.cert_path.is_none()),
                ("key_path", self.key_path.is_none()),
            ] {
                if missing {
                    return Err(format!(
                        "[[cert]] {:?}: `{key}` is required (or add a [mailcow] section with `dir`)",
                        self.name
                    ));
                }
            }
        }
        for p in [&self.cert_path, &self.key_path].into_iter().flatten() {
            if !p.is_absolute() {
                return Err(format!(
                    "[[cert]] {:?}: {} must be an absolute path",
                    self.name,
                    p.display()
                ));
            }
        }
        if let Some(hook) = &self.hook {
            match hook.first() {
                None => {
                    return Err(format!(
                        "[[cert]] {:?}: `hook` is empty: give the program and its arguments, e.g. [\"/usr/local/bin/import-cert\"]",
                        self.name
                    ))
                }
                Some(prog) if !Path::new(prog).is_absolute() => {
                    return Err(format!(
                        "[[cert]] {:?}: the hook program {prog:?} must be an absolute path (it runs as root in handoff mode; no PATH lookup)",
                        self.name
                    ))
                }
                Some(_) => {}
            }
        }
        if self.hook_timeout == Some(0) {
            return Err(format!(
                "[[cert]] {:?}: hook_timeout must be at least 1 second",
                self.name
            ));
        }
        if self.cert_path.is_some() && self.cert_path == self.key_path {
            return Err(format!(
                "[[cert]] {:?}: cert_path and key_path are the same file",
                self.name
            ));
        }
        if mailcow && self.cert_path.is_some() != self.key_path.is_some() {
            return Err(format!(
                "[[cert]] {:?}: set both cert_path and key_path (or neither, with [mailcow])",
                self.name
            ));
        }
        Ok(())
    }
}

/// The default `hook_timeout`, in seconds.
pub const DEFAULT_HOOK_TIMEOUT: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    pub socket: Option<PathBuf>,
    /// The compose project label to match.
    pub project: Option<String>,
    /// Per service: the command to exec in its containers.
    #[serde(default)]
    pub reload: BTreeMap<String, Vec<String>>,
}

impl DockerConfig {
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET))
    }

    /// The reload command configured for a compose service, if any (the
    /// receiver knows mailcow's own: `certsync_receive::mailcow`).
    pub fn reload_command(&self, service: &str) -> Option<Vec<String>> {
        self.reload.get(service).cloned()
    }
}

impl ReceiveConfig {
    pub fn load(path: &Path) -> Result<ReceiveConfig, ConfigError> {
        ReceiveConfig::from_toml(&read(path)?, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<ReceiveConfig, ConfigError> {
        let cfg: ReceiveConfig = parse(text, path)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.staging_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STAGING_DIR))
    }

    pub fn handoff_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.handoff_timeout.unwrap_or(120))
    }

    pub fn read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.read_timeout.unwrap_or(30).max(1))
    }

    pub fn session_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.session_timeout.unwrap_or(300).max(1))
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if let Some(n) = &self.notify {
            n.check().map_err(invalid)?;
        }
        if self.certs.is_empty() {
            return Err(invalid("no [[cert]] section: add one with `name`, `hostnames`, `cert_path` and `key_path` (or use [mailcow])".into()));
        }
        let mut names = BTreeSet::new();
        for c in &self.certs {
            unique_name("[[cert]]", &c.name, &mut names).map_err(invalid)?;
            c.check(self.mailcow.is_some()).map_err(invalid)?;
        }
        if let Some(dir) = &self.staging_dir {
            if !dir.is_absolute() {
                return Err(invalid(format!(
                    "staging_dir {} must be an absolute path",
                    dir.display()
                )));
            }
        }
        if let Some(file) = &self.ca_file {
            if !file.is_absolute() {
                return Err(invalid(format!(
                    "ca_file {} must be an absolute path",
                    file.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUSH: &str = r#"
state_dir = "/var/lib/certsync-push"

[[cert]]
name = "mail"
source = "/opt/npm/letsencrypt/live/npm-5"

[[cert]]
name = "other"
live_root = "/opt/npm/letsencrypt/live"
domain = "other.example.com"

[[target]]
name = "mailcow"
host = "mail.example.com"
port = 2222
user = "certsync"
identity = "/etc/certsync/id_ed25519"
known_hosts = "/etc/certsync/known_hosts"
certs = ["mail"]

[[target]]
name = "here"
transport = "local"
command = ["certsync-receive", "--config", "/etc/certsync/receive.toml"]
"#;

    const RECEIVE: &str = r#"
staging_dir = "/var/lib/certsync/staging"
deploy = "handoff"
allow_remote_force = false
ca_file = "/etc/certsync/private-ca.pem"

[[cert]]
name = "mail"
hostnames = ["mail.example.com"]
cert_path = "/opt/mailcow-dockerized/data/assets/ssl/cert.pem"
key_path  = "/opt/mailcow-dockerized/data/assets/ssl/key.pem"
reload = ["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow"]
verify = ["127.0.0.1:25 smtp", "127.0.0.1:993", "127.0.0.1:443"]

[docker]
socket = "/var/run/docker.sock"
project = "mailcowdockerized"
[docker.reload]
"postfix-mailcow" = ["postfix", "reload"]
"#;

    #[test]
    fn design_examples_parse() {
        let p = PushConfig::from_toml(PUSH, Path::new("push.toml")).unwrap();
        assert_eq!(p.targets[0].port(), 2222);
        assert_eq!(p.targets[1].transport, TransportKind::Local);
        let names: Vec<_> = p
            .certs_for(&p.targets[0])
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["mail"]);
        assert_eq!(p.certs_for(&p.targets[1]).count(), 2);
        let r = ReceiveConfig::from_toml(RECEIVE, Path::new("receive.toml")).unwrap();
        assert_eq!(r.deploy, DeployMode::Handoff);
        assert!(!r.allow_remote_force);
        assert_eq!(
            r.ca_file.as_deref(),
            Some(Path::new("/etc/certsync/private-ca.pem"))
        );
        let r = ReceiveConfig::from_toml(
            &RECEIVE
                .replace("allow_remote_force = false\n", "")
                .replace("ca_file = \"/etc/certsync/private-ca.pem\"\n", ""),
            Path::new("receive.toml"),
        )
        .unwrap();
        assert!(!r.allow_remote_force, "a remote force is off by default");
        assert!(r.ca_file.is_none());
        let d = r.docker.unwrap();
        // Not configured: the receiver falls back to mailcow's own.
        assert!(d.reload_command("nginx-mailcow").is_none());
        assert_eq!(
            d.reload_command("postfix-mailcow").unwrap(),
            ["postfix", "reload"]
        );
        assert!(d.reload_command("unknown").is_none());
    }

    #[test]
    fn live_root_is_one_dir_or_a_list() {
        let one = PushConfig::from_toml(PUSH, Path::new("push.toml")).unwrap();
        let roots = one.certs[1].live_root.as_ref().unwrap();
        assert_eq!(roots.paths(), [PathBuf::from("/opt/npm/letsencrypt/live")]);
        let text = PUSH.replace(
            "live_root = \"/opt/npm/letsencrypt/live\"",
            "live_root = [\"/opt/npm/letsencrypt/live\", \"/opt/npm/data/custom_ssl\"]",
        );
        let many = PushConfig::from_toml(&text, Path::new("push.toml")).unwrap();
        let roots = many.certs[1].live_root.as_ref().unwrap();
        assert_eq!(
            roots.paths(),
            [
                PathBuf::from("/opt/npm/letsencrypt/live"),
                PathBuf::from("/opt/npm/data/custom_ssl")
            ]
        );
        // Written back as given.
        let back = toml::to_string(&many).unwrap();
        assert!(
            back.contains(
                "live_root = [\"/opt/npm/letsencrypt/live\", \"/opt/npm/data/custom_ssl\"]"
            ),
            "{back}"
        );
        let back = toml::to_string(&one).unwrap();
        assert!(
            back.contains("live_root = \"/opt/npm/letsencrypt/live\"\n"),
            "{back}"
        );

        let empty = PUSH.replace(
            "live_root = \"/opt/npm/letsencrypt/live\"",
            "live_root = []",
        );
        let msg = PushConfig::from_toml(&empty, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("live_root") && msg.contains("custom_ssl"),
            "{msg}"
        );
        let wrong = PUSH.replace("live_root = \"/opt/npm/letsencrypt/live\"", "live_root = 5");
        let msg = PushConfig::from_toml(&wrong, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("a directory, or a list of directories"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let text = RECEIVE.replace("hostnames =", "hostname =");
        let err =
            ReceiveConfig::from_toml(&text, Path::new("/etc/certsync/receive.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/certsync/receive.toml"), "{msg}");
        assert!(msg.contains("hostname"), "{msg}");
        let text = format!("bogus = 1\n{PUSH}");
        let msg = PushConfig::from_toml(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("bogus") && msg.contains("p.toml"), "{msg}");
    }

    #[test]
    fn semantic_errors_are_explained() {
        let cases = [
            (
                PUSH.replace("known_hosts = \"/etc/certsync/known_hosts\"\n", ""),
                "known_hosts",
            ),
            (
                PUSH.replace("certs = [\"mail\"]", "certs = [\"nope\"]"),
                "nope",
            ),
            (
                PUSH.replace("source = \"/opt/npm/letsencrypt/live/npm-5\"\n", ""),
                "source",
            ),
            (
                PUSH.replace("name = \"other\"", "name = \"mail\""),
                "two [[cert]]",
            ),
            (
                PUSH.replace("name = \"mail\"\nsource", "name = \"../x\"\nsource"),
                "must be",
            ),
        ];
        for (text, needle) in cases {
            let msg = PushConfig::from_toml(&text, Path::new("p.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(needle), "{needle}: {msg}");
        }
        let no_host = RECEIVE.replace("hostnames = [\"mail.example.com\"]\n", "");
        let msg = ReceiveConfig::from_toml(&no_host, Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("hostnames"), "{msg}");
        let rel = RECEIVE.replace(
            "\"/opt/mailcow-dockerized/data/assets/ssl/key.pem\"",
            "\"key.pem\"",
        );
        assert!(ReceiveConfig::from_toml(&rel, Path::new("r.toml")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("12h").unwrap().as_secs(), 43_200);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("45").unwrap().as_secs(), 45);
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
