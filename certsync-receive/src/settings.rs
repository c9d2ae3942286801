//! The receiver's settings: `receive.toml` with the `[mailcow]` preset
//! applied, every default filled in. Loaded once and passed down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use certsync_core::config::{DeployMode, DockerConfig, ReceiveConfig};
use certsync_core::notify::NotifyConfig;
use certsync_core::validate::{Anchors, Force};

use crate::error::ReceiveError;
use crate::hook::Hook;
use crate::mailcow::{self, MailcowConf};

/// One certificate the receiver accepts, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub name: String,
    /// The leaf's SAN must cover each of these.
    pub hostnames: Vec<String>,
    /// Written 0644: the full chain.
    pub cert_path: PathBuf,
    /// Written 0600.
    pub key_path: PathBuf,
    /// Compose services to reload after an install.
    pub reload: Vec<String>,
    /// Endpoints to check on the wire (`"127.0.0.1:25 smtp"`).
    pub verify: Vec<String>,
    /// With the `[mailcow]` preset: mailcow's ssl dir, whose per-domain
    /// folders (`<dir>/` holding `domains`, `cert.pem`, `key.pem`) get the
    /// new pair too when it covers every name in their `domains` file.
    /// Decided per install, from the new leaf ([`crate::mailcow`]).
    pub folders_root: Option<PathBuf>,
    /// Run after each successful install ([`crate::hook`]).
    pub hook: Option<Hook>,
    /// systemd units on this host to reload ([`crate::host_units`]).
    pub reload_units: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    pub staging_dir: PathBuf,
    pub deploy: DeployMode,
    pub handoff_timeout: Duration,
    /// How long each protocol frame may take to arrive.
    pub read_timeout: Duration,
    /// How long one pusher may hold the receiver's lock for its frames
    /// (and, before the lock, for hello and offer).
    pub session_timeout: Duration,
    pub certs: Vec<CertSpec>,
    pub docker: DockerConfig,
    /// Other spellings of the compose project, tried when no container is
    /// in `docker.project`: only when the project came from mailcow.conf
    /// without a COMPOSE_PROJECT_NAME ([`mailcow::project_names`]).
    pub project_alternates: Vec<String>,
    pub mailcow: Option<MailcowConf>,
    /// `allow_remote_force`: whether a pusher's `--force` counts.
    pub allow_remote_force: bool,
    /// What chains must verify to: the system store and `ca_file`.
    pub anchors: Anchors,
    /// `[notify]`: who to tell ([`crate::notify`]).
    pub notify: Option<NotifyConfig>,
    /// The DANE guard's settings ([`crate::dane`]).
    pub dane: crate::dane::DaneSettings,
}

impl Settings {
    /// Load `receive.toml` and resolve the mailcow preset.
    pub fn load(path: &Path) -> Result<Settings, ReceiveError> {
        let raw = ReceiveConfig::load(path)?;
        Settings::resolve(raw, path)
    }

    pub fn resolve(raw: ReceiveConfig, path: &Path) -> Result<Settings, ReceiveError> {
        let mc = match &raw.mailcow {
            Some(preset) => Some(mailcow::read_conf(&preset.dir)?),
            None => None,
        };
        let mut docker = raw.docker.clone().unwrap_or_default();
        let mut project_alternates = Vec::new();
        if docker.project.is_none() {
            docker.project = mc.as_ref().map(|m| m.project.clone());
            project_alternates = mc
                .as_ref()
                .map(|m| m.project_alternates.clone())
                .unwrap_or_default();
        }
        let mut certs = Vec::new();
        for c in &raw.certs {
            let hostnames = match (&c.hostnames, &mc) {
                (Some(h), _) if !h.is_empty() => h.clone(),
                (_, Some(m)) => vec![m.hostname.clone()],
                _ => {
                    return Err(ReceiveError::Settings(format!(
                        "{}: [[cert]] {:?} has no hostnames",
                        path.display(),
                        c.name
                    )))
                }
            };
            let (cert_path, key_path) = match (&c.cert_path, &c.key_path, &mc) {
                (Some(cp), Some(kp), _) => (cp.clone(), kp.clone()),
                (None, None, Some(m)) => (m.ssl_dir().join("cert.pem"), m.ssl_dir().join("key.pem")),
                _ => {
                    return Err(ReceiveError::Settings(format!(
                        "{}: [[cert]] {:?}: set both cert_path and key_path (or neither, with [mailcow])",
                        path.display(),
                        c.name
                    )))
                }
            };
            let reload = match (&c.reload, &mc) {
                (Some(r), _) => r.clone(),
                (None, Some(_)) => mailcow::SERVICES.iter().map(|s| s.to_string()).collect(),
                (None, None) => Vec::new(),
            };
            let reload_units = c.reload_units.clone().unwrap_or_default();
            for unit in &reload_units {
                crate::host_units::check(unit).map_err(|why| {
                    ReceiveError::Settings(format!(
                        "{}: [[cert]] {:?}: {why}",
                        path.display(),
                        c.name
                    ))
                })?;
            }
            for entry in &reload {
                crate::selector::check(entry).map_err(|why| {
                    ReceiveError::Settings(format!(
                        "{}: [[cert]] {:?}: {why}",
                        path.display(),
                        c.name
                    ))
                })?;
            }
            let verify = match (&c.verify, &mc) {
                (Some(v), _) => v.clone(),
                (None, Some(m)) => m.verify.clone(),
                (None, None) => Vec::new(),
            };
            let folders_root = mc.as_ref().map(|m| m.ssl_dir());
            certs.push(CertSpec {
                name: c.name.clone(),
                hostnames,
                cert_path,
                key_path,
                reload,
                verify,
                folders_root,
                reload_units,
                hook: c.hook.clone().map(|command| Hook {
                    command,
                    timeout: Duration::from_secs(
                        c.hook_timeout
                            .unwrap_or(certsync_core::config::DEFAULT_HOOK_TIMEOUT),
                    ),
                }),
            });
        }
        let anchors = Anchors::load(raw.ca_file.as_deref())
            .map_err(|e| ReceiveError::Settings(format!("{}: {e}", path.display())))?;
        let dane = crate::dane::DaneSettings::from_config(&raw);
        Ok(Settings {
            dane,
            allow_remote_force: raw.allow_remote_force,
            anchors,
            config_path: path.to_path_buf(),
            staging_dir: raw.staging_dir(),
            deploy: raw.deploy,
            handoff_timeout: raw.handoff_timeout(),
            read_timeout: raw.read_timeout(),
            session_timeout: raw.session_timeout(),
            certs,
            docker,
            project_alternates,
            mailcow: mc,
            notify: raw.notify.clone(),
        })
    }

    /// What a `--force` from the pusher (on the wire, or in the request
    /// file the unprivileged `serve` writes) is worth here.
    pub fn remote_force(&self, asked: bool) -> Force {
        match (asked, self.allow_remote_force) {
            (false, _) => Force::No,
            (true, true) => Force::Allowed,
            (true, false) => Force::RemoteRefused,
        }
    }

    pub fn cert(&self, name: &str) -> Option<&CertSpec> {
        self.certs.iter().find(|c| c.name == name)
    }

    /// `cert(name)` or an error listing the known names.
    pub fn cert_or_err(&self, name: &str) -> Result<&CertSpec, ReceiveError> {
        self.cert(name).ok_or_else(|| ReceiveError::UnknownCert {
            name: name.to_string(),
            config: self.config_path.clone(),
            known: self
                .certs
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}
