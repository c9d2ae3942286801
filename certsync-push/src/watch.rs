//! `certsync-push watch`: push the moment certbot renews.
//!
//! What is watched, and why:
//!
//! - each source's live dir **as a directory** (inotify on the dir, not on
//!   the links): certbot replaces the links by unlink + symlink, and a watch
//!   on a link follows the old inode, which never changes again;
//! - its parent (`live/`), so a deleted and recreated `npm-N` is seen, and
//!   the watches are set up again;
//! - for `live_root` + `domain` certs, the live root and its subdirs.
//!
//! After an event, the loop waits for the dir to settle: [`DEBOUNCE`] of
//! quiet, and no `previous_*.pem` left in a source dir (certbot removes
//! them as its last step, which is itself an event; bounded by
//! [`RENEWAL_WAIT`]). So a renewal with pauses between its steps is pushed
//! once, after its last step, not once per step. Then one push pass runs;
//! the pass itself still waits for a consistent pair (see
//! [`crate::source`]). A pass that fails is retried with exponential
//! backoff and jitter; every `recheck` interval (default 12 h) a pass runs
//! even without events, which repairs a rebuilt receiver.
//!
//! Idle means idle: with nothing changing, the process sleeps in the
//! kernel (inotify) and in one timer for the next recheck — no polling.
//! Under systemd the loop sends `READY=1`, and `WATCHDOG=1` only when the
//! unit asks for a watchdog (`WATCHDOG_USEC`): every half interval, also
//! while a pass is running (a pass may wait for slow targets). SIGTERM stops between
//! passes; SIGHUP re-reads the config.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certsync_core::config::{parse_duration, PushConfig};
use certsync_core::ExitCode;
use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

/// How long the live dir must be quiet before a pass starts. certbot
/// relinks the four files within milliseconds.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// How long a renewal in progress (`previous_*.pem` present) may hold the
/// pass back; after that the pass runs anyway and its own consistency
/// checks decide.
pub const RENEWAL_WAIT: Duration = Duration::from_secs(60);
/// The default reconcile interval.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(12 * 3600);
/// First retry after a failed pass; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The directories to watch for a config: every source dir and its parent,
/// and every live root.
pub fn watch_dirs(cfg: &PushConfig) -> Vec<(PathBuf, RecursiveMode)> {
    let mut dirs = Vec::new();
    for c in &cfg.certs {
        if let Some(src) = &c.source {
            dirs.push((src.clone(), RecursiveMode::NonRecursive));
            if let Some(parent) = src.parent() {
                dirs.push((parent.to_path_buf(), RecursiveMode::NonRecursive));
            }
        }
        for root in c.live_root.iter().flat_map(|r| r.paths()) {
            dirs.push((root.clone(), RecursiveMode::Recursive));
        }
    }
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    dirs.dedup_by(|a, b| a.0 == b.0);
    dirs
}

/// Is certbot in the middle of a renewal in one of the watched live dirs
/// (a `previous_*.pem` link present)? For `live_root` certs every
/// `live_root/*` dir counts.
pub fn renewal_in_progress(cfg: &PushConfig) -> bool {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for c in &cfg.certs {
        if let Some(src) = &c.source {
            dirs.push(src.clone());
        }
        for root in c.live_root.iter().flat_map(|r| r.paths()) {
            if let Ok(entries) = std::fs::read_dir(root) {
                dirs.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    dirs.iter().any(|d| {
        std::fs::read_dir(d).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("previous_") && n.ends_with(".pem"))
            })
        })
    })
}

/// The reconcile interval from the config.
pub fn recheck_interval(cfg: &PushConfig) -> Duration {
    cfg.recheck
        .as_deref()
        .and_then(|r| parse_duration(r).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_RECHECK)
}

/// Exponential backoff with ±20 % jitter, so many pushers that lost the
/// same receiver do not come back in step.
pub fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1u32 << failures.min(10).saturating_sub(1));
    let base = base.min(MAX_BACKOFF);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    base.mul_f64(jitter)
}

/// Send a state line to systemd's notify socket, if there is one.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let res = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = res {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// The watchdog interval systemd asked for (half of `WATCHDOG_USEC`).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2)).filter(|d| !d.is_zero())
}

/// What the loop is told to do next.
#[derive(Debug)]
enum Wake {
    Changed,
    Terminate,
    Reload,
}

/// Set up inotify watches; events arrive on `tx`.
fn watch(
    cfg: &PushConfig,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, String> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| format!("cannot start inotify: {e}"))?;
    for (dir, mode) in watch_dirs(cfg) {
        match watcher.watch(&dir, mode) {
            Ok(()) => tracing::info!(dir = %dir.display(), "watching"),
            // A missing npm-N is normal while NPM recreates it; the parent
            // watch sees it come back and the watches are set up again.
            Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch yet: {e}"),
        }
    }
    Ok(watcher)
}

/// Run the watch loop with `pass` as one push pass over every target.
/// `load` (re)reads the config (at start and on SIGHUP).
pub async fn run_with<L, P, F>(mut load: L, mut pass: P) -> ExitCode
where
    L: FnMut() -> Result<PushConfig, String>,
    P: FnMut(PushConfig) -> F,
    F: Future<Output = ExitCode>,
{
    let mut cfg = match load() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::Usage;
        }
    };
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        _ => {
            tracing::error!("cannot install the SIGTERM/SIGHUP handlers");
            return ExitCode::Runtime;
        }
    };
    let mut int = signal(SignalKind::interrupt()).ok();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = match watch(&cfg, tx.clone()) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::Runtime;
        }
    };
    // One timer for the whole run (not one per loop turn), so a stream of
    // events or a long pass cannot starve the watchdog.
    let mut watchdog = watchdog_interval().map(|iv| {
        let mut t = tokio::time::interval(iv);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    sd_notify("READY=1\nSTATUS=watching");
    tracing::info!(recheck = ?recheck_interval(&cfg), "watch started");

    // Start with a pass: the receiver may have missed a renewal while we were down.
    let mut due = Some(Instant::now());
    let mut failures = 0u32;
    let mut next_recheck = Instant::now() + recheck_interval(&cfg);
    loop {
        if due.is_some_and(|at| at <= Instant::now()) {
            due = None;
            sd_notify("STATUS=pushing");
            let run = pass(cfg.clone());
            tokio::pin!(run);
            let code = loop {
                tokio::select! {
                    code = &mut run => break code,
                    _ = tick(&mut watchdog) => sd_notify("WATCHDOG=1"),
                }
            };
            next_recheck = Instant::now() + recheck_interval(&cfg);
            if code == ExitCode::Runtime {
                failures += 1;
                let wait = backoff(failures);
                tracing::warn!(
                    "push failed ({failures} in a row); retrying in {:.1}s",
                    wait.as_secs_f64()
                );
                due = Some(Instant::now() + wait);
            } else {
                failures = 0;
            }
            // Events that arrived during the pass (a renewal mid-pass) are
            // still queued and start the next one; our own reads are
            // Access events, which the watcher drops.
            sd_notify("STATUS=watching");
        }
        let wake_at = match due {
            Some(d) => d.min(next_recheck),
            None => next_recheck,
        };
        let wake = tokio::select! {
            _ = sleep_until(wake_at) => {
                if due.is_none() {
                    tracing::info!("recheck: reconciling every target");
                    due = Some(Instant::now());
                }
                continue;
            }
            Some(()) = rx.recv() => Wake::Changed,
            _ = term.recv() => Wake::Terminate,
            _ = recv_opt(&mut int) => Wake::Terminate,
            _ = hup.recv() => Wake::Reload,
            _ = tick(&mut watchdog) => {
                sd_notify("WATCHDOG=1");
                continue;
            }
        };
        match wake {
            Wake::Changed => {
                // Debounce: the pass starts once the dir is quiet and no
                // renewal is half done. A renewal's remaining steps are
                // events, so this waits on inotify, not on a poll.
                let mut quiet_until = Instant::now() + DEBOUNCE;
                let give_up = Instant::now() + RENEWAL_WAIT;
                let mut waiting_for_renewal = false;
                let mut said = false;
                let mut stop = false;
                loop {
                    tokio::select! {
                        _ = sleep_until(quiet_until), if !waiting_for_renewal => {
                            if Instant::now() >= give_up || !renewal_in_progress(&cfg) {
                                break;
                            }
                            if !said {
                                tracing::info!("certbot is renewing (previous_*.pem present); waiting for it to finish");
                                said = true;
                            }
                            waiting_for_renewal = true;
                        }
                        // A stray previous_*.pem can hold this loop for
                        // RENEWAL_WAIT: SIGTERM must not wait for it.
                        _ = term.recv() => { stop = true; break; }
                        _ = recv_opt(&mut int) => { stop = true; break; }
                        _ = sleep_until(give_up), if waiting_for_renewal => break,
                        Some(()) = rx.recv() => {
                            quiet_until = Instant::now() + DEBOUNCE;
                            waiting_for_renewal = false;
                        }
                        _ = tick(&mut watchdog) => sd_notify("WATCHDOG=1"),
                    }
                }
                if stop {
                    return stopping();
                }
                tracing::info!("the live dir changed");
                // Recreated dirs need their watches again.
                drop(watcher);
                watcher = match watch(&cfg, tx.clone()) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!("{e}");
                        return ExitCode::Runtime;
                    }
                };
                failures = 0;
                due = Some(Instant::now());
            }
            Wake::Terminate => return stopping(),
            Wake::Reload => {
                sd_notify("RELOADING=1");
                match load() {
                    Ok(new) => {
                        tracing::info!("config re-read");
                        cfg = new;
                        drop(watcher);
                        watcher = match watch(&cfg, tx.clone()) {
                            Ok(w) => w,
                            Err(e) => {
                                tracing::error!("{e}");
                                return ExitCode::Runtime;
                            }
                        };
                        due = Some(Instant::now());
                    }
                    Err(e) => tracing::error!("keeping the old config: {e}"),
                }
                sd_notify("READY=1");
            }
        }
    }
}

/// SIGTERM or SIGINT: say so and stop (between passes).
fn stopping() -> ExitCode {
    tracing::info!("stopping (signal)");
    sd_notify("STOPPING=1");
    ExitCode::Success
}

/// The next SIGINT, or never when its handler could not be installed.
async fn recv_opt(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The next watchdog tick, or never when systemd asked for no watchdog.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// `certsync-push watch`: load `config_path`, run until SIGTERM.
pub async fn run(config_path: &Path) -> ExitCode {
    let path = config_path.to_path_buf();
    let load = || PushConfig::load(&path).map_err(|e| e.to_string());
    let opts = crate::push::PushOptions {
        dry_run: false,
        force: false,
        targets: Vec::new(),
        settle: crate::source::Retry::default().window,
        ..crate::push::PushOptions::default()
    };
    run_with(load, |cfg| {
        let opts = opts.clone();
        let path = config_path.to_path_buf();
        async move {
            match crate::push::pass(&cfg, &path, &opts).await {
                Ok(results) => {
                    for line in crate::push::render(&results, false).lines() {
                        tracing::info!("{line}");
                    }
                    crate::push::worst(&results)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    e.exit_code()
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for n in 1..20 {
            let b = backoff(n);
            assert!(b >= FIRST_BACKOFF.mul_f64(0.79), "{n}: {b:?}");
            assert!(b <= MAX_BACKOFF.mul_f64(1.21), "{n}: {b:?}");
        }
        assert!(backoff(4) > backoff(1));
    }

    #[test]
    fn a_previous_link_means_a_renewal_in_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        let src = live.join("npm-5");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("cert.pem"), "x").unwrap();
        let text = format!(
            "[[cert]]\nname = \"mail\"\nsource = {src:?}\n[[cert]]\nname = \"b\"\nlive_root = {live:?}\ndomain = \"b.example\"\n[[target]]\nname = \"t\"\ntransport = \"local\"\n"
        );
        let cfg = PushConfig::from_toml(&text, Path::new("p.toml")).unwrap();
        assert!(!renewal_in_progress(&cfg));
        std::os::unix::fs::symlink("/nowhere", src.join("previous_cert.pem")).unwrap();
        assert!(renewal_in_progress(&cfg));
        std::fs::remove_file(src.join("previous_cert.pem")).unwrap();
        // Under a live_root, any npm-N counts.
        let other = live.join("npm-7");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("previous_privkey.pem"), "").unwrap();
        assert!(renewal_in_progress(&cfg));
    }

    #[test]
    fn watches_the_dir_and_its_parent() {
        let text = r#"
[[cert]]
name = "mail"
source = "/opt/npm/letsencrypt/live/npm-5"
[[target]]
name = "t"
transport = "local"
"#;
        let cfg = PushConfig::from_toml(text, Path::new("p.toml")).unwrap();
        let dirs: Vec<_> = watch_dirs(&cfg).into_iter().map(|(d, _)| d).collect();
        assert_eq!(
            dirs,
            [
                PathBuf::from("/opt/npm/letsencrypt/live"),
                PathBuf::from("/opt/npm/letsencrypt/live/npm-5")
            ]
        );
        assert_eq!(recheck_interval(&cfg), DEFAULT_RECHECK);
    }
}
