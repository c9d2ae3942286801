//! The receiver's settings: `receive.toml` with the `[mailcow]` preset
//! applied, every default filled in. Loaded once and passed down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use certsync_core::config::{
    ConfigError, DeployMode, DockerConfig, ReceiveCert, ReceiveConfig, DEFAULT_HOOK_TIMEOUT,
};
use certsync_core::notify::NotifyConfig;
use certsync_core::validate::{AnchorError, Anchors, Force};
use certsync_core::ExitCode;

use crate::pipeline::hook::Hook;
use crate::systems::docker;
use crate::systems::mailcow::{self, MailcowConf, MailcowError};
use crate::systems::selector::{self, BadEntry};
use crate::systems::systemd::{self, BadUnit};

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
    /// Decided per install, from the new leaf ([`crate::systems::mailcow`]).
    pub folders_root: Option<PathBuf>,
    /// Run after each successful install ([`crate::pipeline::hook`]).
    pub hook: Option<Hook>,
    /// systemd units on this host to reload ([`crate::systems::systemd`]).
    pub reload_units: Vec<String>,
}

impl CertSpec {
    /// One `[[cert]]`, its gaps filled from mailcow.conf (`mc`).
    fn resolve(
        c: &ReceiveCert,
        mc: Option<&MailcowConf>,
        docker: &DockerConfig,
        path: &Path,
    ) -> Result<CertSpec, SettingsError> {
        let (hostnames, (cert_path, key_path)) = match mc {
            Some(m) => (
                c.hostnames
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| vec![m.hostname.clone()]),
                c.pair()
                    .unwrap_or_else(|| (m.ssl_dir().join("cert.pem"), m.ssl_dir().join("key.pem"))),
            ),
            // ReceiveConfig's checks require both without [mailcow].
            None => (
                c.hostnames.clone().unwrap_or_default(),
                c.pair().unwrap_or_default(),
            ),
        };
        let reload = match (&c.reload, mc) {
            (Some(r), _) => r.clone(),
            (None, Some(_)) => mailcow::SERVICES.iter().map(|s| s.to_string()).collect(),
            (None, None) => Vec::new(),
        };
        let reload_units = c.reload_units.clone().unwrap_or_default();
        for unit in &reload_units {
            systemd::check(unit).map_err(|source| SettingsError::ReloadUnit {
                path: path.to_path_buf(),
                name: c.name.clone(),
                source,
            })?;
        }
        for entry in &reload {
            selector::check(entry).map_err(|source| SettingsError::ReloadEntry {
                path: path.to_path_buf(),
                name: c.name.clone(),
                source,
            })?;
            // Refused here, not after the install has replaced the files
            // and the reload finds nothing to run.
            if docker::command_for(docker, entry).is_none() {
                return Err(SettingsError::NoReloadCommand {
                    path: path.to_path_buf(),
                    name: c.name.clone(),
                    entry: entry.clone(),
                });
            }
        }
        let verify = match (&c.verify, mc) {
            (Some(v), _) => v.clone(),
            (None, Some(m)) => m.verify.clone(),
            (None, None) => Vec::new(),
        };
        Ok(CertSpec {
            name: c.name.clone(),
            hostnames,
            cert_path,
            key_path,
            reload,
            verify,
            folders_root: mc.map(|m| m.ssl_dir()),
            reload_units,
            hook: c.hook.clone().map(|command| Hook {
                command,
                timeout: Duration::from_secs(c.hook_timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT)),
            }),
        })
    }
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
    /// `[notify]`: who to tell ([`crate::systems::notify`]).
    pub notify: Option<NotifyConfig>,
    /// The DANE guard's settings ([`crate::systems::dane`]).
    pub dane: crate::systems::dane::DaneSettings,
}

/// Why receive.toml, with the `[mailcow]` preset applied, gives no
/// settings. The rules on receive.toml alone are
/// `certsync_core::config::ReceiveConfig`'s, checked once when it loads.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Mailcow(#[from] MailcowError),
    #[error("{}: [[cert]] {name:?}: {source}", path.display())]
    ReloadEntry {
        path: PathBuf,
        name: String,
        #[source]
        source: BadEntry,
    },
    #[error(
        "{}: [[cert]] {name:?}: reload entry {entry:?} has no reload command: add \
         `\"{entry}\" = [\"program\", \"argument\"]` under [docker.reload] (the command, run in \
         its containers, that makes the service read its certificate again), or remove the entry; \
         only mailcow's {} have one built in",
        path.display(),
        mailcow::SERVICES.join(", ")
    )]
    NoReloadCommand {
        path: PathBuf,
        name: String,
        entry: String,
    },
    #[error("{}: [[cert]] {name:?}: {source}", path.display())]
    ReloadUnit {
        path: PathBuf,
        name: String,
        #[source]
        source: BadUnit,
    },
    #[error("{}: {source}", path.display())]
    Anchors {
        path: PathBuf,
        #[source]
        source: AnchorError,
    },
}

impl SettingsError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SettingsError::Mailcow(e) => e.exit_code(),
            _ => ExitCode::Usage,
        }
    }
}

impl Settings {
    /// Load `receive.toml` and resolve the mailcow preset.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let raw = ReceiveConfig::load(path)?;
        Settings::resolve(raw, path)
    }

    /// Fill in what `raw` leaves to the `[mailcow]` preset and the defaults.
    /// `raw` has passed `ReceiveConfig`'s checks (its `load` or
    /// `from_toml`).
    pub fn resolve(raw: ReceiveConfig, path: &Path) -> Result<Settings, SettingsError> {
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
        let certs = raw
            .certs
            .iter()
            .map(|c| CertSpec::resolve(c, mc.as_ref(), &docker, path))
            .collect::<Result<Vec<_>, _>>()?;
        let anchors =
            Anchors::load(raw.ca_file.as_deref()).map_err(|source| SettingsError::Anchors {
                path: path.to_path_buf(),
                source,
            })?;
        let dane = crate::systems::dane::DaneSettings::from_config(&raw);
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
}
