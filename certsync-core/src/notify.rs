//! `[notify]`: telling a person what happened, on both sides (push.toml
//! and receive.toml), without anyone reading the journal.
//!
//! A notification is one JSON object ([`Notification`]): which binary and
//! host, the event (`install`, `failure`, `check`, `held`), a title and a one-line
//! message (the fields Gotify's `/message` reads), and `details`: the
//! structured result. It goes to a `command` (on its stdin) and/or a
//! `webhook` (an HTTP/1.1 POST; plain `http://`, meant for a local ntfy,
//! Gotify or relay).
//!
//! Invariants:
//! - No key material: `details` is built from reports and results, which
//!   hold fingerprints and messages, never a bundle.
//! - Bounded: each attempt has `timeout` seconds (connect, send, read the
//!   status line), at most `retries` more attempts follow a failure, and
//!   a webhook's answer is read to at most [`MAX_RESPONSE`] bytes.
//! - A notification that cannot be delivered is logged; it never changes
//!   the exit code of the run it describes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::command;

/// Bytes of a webhook's answer we read (the status line is all we need).
pub const MAX_RESPONSE: usize = 8 * 1024;
/// Default seconds per attempt.
pub const DEFAULT_TIMEOUT: u64 = 10;
/// Default attempts after the first failed one.
pub const DEFAULT_RETRIES: u32 = 2;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A pair was installed (and everything after it succeeded).
    Install,
    /// An install, push or session failed or was refused.
    Failure,
    /// `check` (receiver) or `status` (pusher) found a problem.
    Check,
    /// A pair held for DNS (exit 5, DANE): nothing failed, but a TLSA
    /// record has to be published before it installs.
    Held,
}

impl Event {
    pub const ALL: [Event; 4] = [Event::Install, Event::Failure, Event::Check, Event::Held];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Install => "install",
            Event::Failure => "failure",
            Event::Check => "check",
            Event::Held => "held",
        }
    }
}

/// `[notify]` as written, in push.toml and receive.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Program (absolute) and arguments; the notification on stdin.
    pub command: Option<Vec<String>>,
    /// `http://host[:port]/path`: the notification is POSTed there.
    pub webhook: Option<String>,
    /// Which events are sent (default: all four).
    pub on: Option<Vec<Event>>,
    /// Seconds per attempt (default 10).
    pub timeout: Option<u64>,
    /// Attempts after a failed one (default 2).
    pub retries: Option<u32>,
}

impl NotifyConfig {
    pub fn wants(&self, event: Event) -> bool {
        self.on.as_deref().unwrap_or(&Event::ALL).contains(&event)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.unwrap_or(DEFAULT_TIMEOUT).max(1))
    }

    /// Config errors, in the words of [`crate::config::ConfigError`]'s
    /// `Invalid` message.
    pub fn check(&self) -> Result<(), String> {
        if self.command.is_none() && self.webhook.is_none() {
            return Err("[notify] needs `command` or `webhook` (or both)".into());
        }
        if let Some(cmd) = &self.command {
            match cmd.first() {
                None => return Err("[notify] `command` is empty".into()),
                Some(p) if !std::path::Path::new(p).is_absolute() => {
                    return Err(format!(
                        "[notify] command program {p:?} must be an absolute path"
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(url) = &self.webhook {
            Url::parse(url).map_err(|e| format!("[notify] webhook {url:?}: {e}"))?;
        }
        if self.on.as_ref().is_some_and(|o| o.is_empty()) {
            return Err(
                "[notify] `on` is empty: leave it out for all events, or list some of \"install\", \"failure\", \"check\", \"held\""
                    .into(),
            );
        }
        Ok(())
    }
}

/// One notification, as sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// `certsync-push` or `certsync-receive`.
    pub source: String,
    /// This host's name.
    pub host: String,
    pub event: Event,
    pub title: String,
    pub message: String,
    /// Gotify's priority: 8 for failures, 5 for check problems and holds,
    /// 3 otherwise.
    pub priority: u8,
    /// The structured result (a report, a check, push results).
    pub details: serde_json::Value,
}

impl Notification {
    pub fn new(
        source: &str,
        event: Event,
        message: impl Into<String>,
        details: serde_json::Value,
    ) -> Notification {
        let host = hostname();
        let what = match event {
            Event::Install => "installed",
            Event::Failure => "FAILED",
            Event::Check => "check found a problem",
            Event::Held => "held for DNS (DANE): publish a TLSA record",
        };
        Notification {
            source: source.to_string(),
            title: format!("certsync on {host}: {what}"),
            host,
            event,
            message: message.into(),
            priority: match event {
                Event::Failure => 8,
                Event::Check | Event::Held => 5,
                Event::Install => 3,
            },
            details,
        }
    }
}

/// This host's name (for the title), or `unknown host`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

/// Send `n` as `cfg` says, when `cfg` wants its event. Failures are
/// logged, never returned: a notification never changes an exit code.
pub async fn send(cfg: &NotifyConfig, n: &Notification) {
    if !cfg.wants(n.event) {
        return;
    }
    let body = match serde_json::to_vec(n) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("notify: cannot encode the notification: {e}");
            return;
        }
    };
    let attempts = cfg.retries.unwrap_or(DEFAULT_RETRIES).saturating_add(1);
    if let Some(cmd) = &cfg.command {
        let shown = cmd.join(" ");
        retry(attempts, "command", &shown, || async {
            let ran = command::run_bounded(cmd, &[], &body, cfg.timeout())
                .await
                .map_err(|e| format!("could not start: {e}"))?;
            match (ran.exit_code, ran.timed_out) {
                (Some(0), _) => Ok(()),
                (_, true) => Err(format!("killed after {} s", cfg.timeout().as_secs())),
                (Some(c), _) => Err(format!("exited {c}")),
                (None, _) => Err("killed by a signal".into()),
            }
        })
        .await;
    }
    if let Some(url) = &cfg.webhook {
        retry(attempts, "webhook", url, || async {
            let url = Url::parse(url)?;
            tokio::time::timeout(cfg.timeout(), post(&url, &body))
                .await
                .map_err(|_| format!("no answer within {} s", cfg.timeout().as_secs()))?
        })
        .await;
    }
}

async fn retry<F, Fut>(attempts: u32, what: &str, target: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    for attempt in 1..=attempts {
        match f().await {
            Ok(()) => {
                tracing::info!("notify: {what} {target} took the notification");
                return;
            }
            Err(e) if attempt < attempts => {
                tracing::warn!("notify: {what} {target}: {e}; retrying ({attempt}/{attempts})");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            Err(e) => {
                tracing::error!(
                    "notify: {what} {target}: {e}; gave up after {attempts} attempts (check [notify] in the config)"
                );
            }
        }
    }
}

/// An `http://` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            "only http:// is supported (a local ntfy, Gotify or relay); for https use `command` with curl"
                .to_string()
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let ok = |c: char| c.is_ascii_graphic() && c != '#';
        if !host.chars().all(ok) || !path.chars().all(ok) {
            return Err("the URL has spaces or control characters".into());
        }
        Ok(Url {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// One POST; `Ok` on a 2xx status.
async fn post(url: &Url, body: &[u8]) -> Result<(), String> {
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let mut stream = tokio::net::TcpStream::connect((host, url.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: certsync/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host,
        url.port,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    stream
        .write_all(body)
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut answer = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE as u64);
    // Read until the status line is complete (or the server closes).
    let mut buf = [0u8; 1024];
    while !answer.contains(&b'\n') {
        match limited.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
    let line = answer.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let status = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("answered HTTP {c}")),
        None => Err("no HTTP status line in the answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("http://127.0.0.1:8080/message?token=x").unwrap(),
            Url {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/message?token=x".into()
            }
        );
        assert_eq!(Url::parse("http://ntfy.lan").unwrap().port, 80);
        assert_eq!(Url::parse("http://[::1]:81/t").unwrap().host, "[::1]");
        for bad in [
            "https://x/",
            "http://",
            "http://a:b/",
            "http://u:p@x/",
            "http://x/a b",
            "http://x/\r\nX: y",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn on_defaults_to_every_event() {
        let cfg: NotifyConfig = toml::from_str("webhook = \"http://x/\"").unwrap();
        assert!(Event::ALL.iter().all(|e| cfg.wants(*e)));
        let cfg: NotifyConfig =
            toml::from_str("webhook = \"http://x/\"\non = [\"failure\"]").unwrap();
        assert!(cfg.wants(Event::Failure) && !cfg.wants(Event::Install));
        assert!(!cfg.wants(Event::Held), "a hold is its own event");
        assert!(cfg.check().is_ok());
        let held: NotifyConfig = toml::from_str("on = [\"held\"]").unwrap();
        assert!(held.wants(Event::Held) && !held.wants(Event::Failure));
        let none: NotifyConfig = toml::from_str("on = [\"check\"]").unwrap();
        assert!(none.check().is_err());
    }
}
