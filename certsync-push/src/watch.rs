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
//! once, after its last step, not once per step. Then every target is
//! asked for a pass; the pass itself still waits for a consistent pair
//! (see [`crate::source`]). Every `recheck` interval (default 12 h) each
//! target gets a pass even without events, which repairs a rebuilt
//! receiver.
//!
//! One stuck receiver never holds up the rest: each `[[target]]` has its
//! own task ([`Worker`]) that runs its passes one after the other, retries
//! a failed pass with exponential backoff and jitter, and never waits for
//! another target. A renewal that comes while a target's pass is still
//! running is pushed to it right after that pass (one more pass, however
//! many events came); the other targets get it at once. Each session is
//! bounded by the target's `session_timeout` ([`crate::session`]), so a
//! stalled or drip-feeding receiver is dropped at that deadline.
//!
//! The loop itself never waits for a pass, so signals are handled at once,
//! also mid-pass: SIGTERM (and SIGINT) end every session (local receivers
//! are killed, SSH connections closed) and exit 0; SIGHUP re-reads the
//! config, restarts the tasks of changed or removed targets (ending their
//! sessions) and asks every target for a pass.
//!
//! Idle means idle: with nothing changing, the process sleeps in the
//! kernel (inotify) and in one timer for the next recheck — no polling.
//! Under systemd the loop sends `READY=1`, and `WATCHDOG=1` only when the
//! unit asks for a watchdog (`WATCHDOG_USEC`): every half interval, from
//! the loop, and only while no target's pass has run longer than its
//! deadlines allow ([`Worker::bound`]). A pass that overruns them means
//! something is stuck where no deadline reaches; then the watchdog is
//! starved on purpose and systemd restarts the daemon.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certsync_core::config::{parse_duration, PushConfig, Target};
use certsync_core::ExitCode;
use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
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

/// Room on top of a target's own deadlines (connect, settle, session)
/// before its pass counts as stuck: finishing, logging, a busy host.
pub const STUCK_SLACK: Duration = Duration::from_secs(60);
/// How long SIGTERM waits for the sessions to be torn down.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// One target's own task: a pass whenever it is kicked, retries with
/// backoff after a failure, and no waiting for any other target.
pub struct Worker {
    target: Target,
    kick: Arc<Notify>,
    /// When the pass in progress started; `None` while idle.
    busy: Arc<Mutex<Option<Instant>>>,
    task: JoinHandle<()>,
}

impl Worker {
    /// Start the task for `target`. `pass(config, name)` runs one pass for
    /// that target; the config is read from `cfg` at the start of each.
    fn spawn<P, F>(target: &Target, cfg: Arc<Mutex<Arc<PushConfig>>>, pass: P) -> Worker
    where
        P: Fn(Arc<PushConfig>, String) -> F + Send + 'static,
        F: Future<Output = ExitCode> + Send + 'static,
    {
        let kick = Arc::new(Notify::new());
        let busy = Arc::new(Mutex::new(None));
        let name = target.name.clone();
        let task = tokio::spawn({
            let (kick, busy) = (kick.clone(), busy.clone());
            async move {
                let mut failures = 0u32;
                loop {
                    // A kick while a pass runs is kept (one permit), so a
                    // renewal mid-pass gets exactly one more pass.
                    kick.notified().await;
                    loop {
                        let config = match cfg.lock() {
                            Ok(c) => c.clone(),
                            Err(poisoned) => poisoned.into_inner().clone(),
                        };
                        set(&busy, Some(Instant::now()));
                        let code = pass(config, name.clone()).await;
                        set(&busy, None);
                        if code != ExitCode::Runtime {
                            failures = 0;
                            break;
                        }
                        failures += 1;
                        let wait = backoff(failures);
                        tracing::warn!(
                            target = %name,
                            "push failed ({failures} in a row); retrying in {:.1}s",
                            wait.as_secs_f64()
                        );
                        // A new event retries at once.
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = kick.notified() => {}
                        }
                    }
                }
            }
        });
        Worker {
            target: target.clone(),
            kick,
            busy,
            task,
        }
    }

    /// The longest one pass of this target may take when every deadline
    /// works: connect, the source's settle window, the session (finish
    /// included), and [`STUCK_SLACK`].
    pub fn bound(target: &Target) -> Duration {
        let connect = Duration::from_secs(
            target
                .connect_timeout
                .unwrap_or(crate::transport::ssh::DEFAULT_CONNECT_TIMEOUT.as_secs()),
        );
        connect + crate::source::Retry::default().window + target.session_timeout() + STUCK_SLACK
    }

    /// How long the pass in progress has overrun [`Worker::bound`] at
    /// `now`, if it has.
    fn overrun(&self, now: Instant) -> Option<Duration> {
        let since = (*self.busy.lock().ok()?)?;
        now.checked_duration_since(since)
            .filter(|ran| *ran > Worker::bound(&self.target))
    }
}

fn set(busy: &Mutex<Option<Instant>>, value: Option<Instant>) {
    match busy.lock() {
        Ok(mut b) => *b = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

impl Drop for Worker {
    /// Dropping a worker ends its task and, with it, its session.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every target's worker, by target name.
pub struct Workers<P> {
    workers: BTreeMap<String, Worker>,
    cfg: Arc<Mutex<Arc<PushConfig>>>,
    pass: P,
    /// Whether the watchdog is being starved (said once per episode).
    starving: bool,
}

impl<P, F> Workers<P>
where
    P: Fn(Arc<PushConfig>, String) -> F + Clone + Send + 'static,
    F: Future<Output = ExitCode> + Send + 'static,
{
    pub fn new(cfg: PushConfig, pass: P) -> Workers<P> {
        let mut w = Workers {
            workers: BTreeMap::new(),
            cfg: Arc::new(Mutex::new(Arc::new(cfg))),
            pass,
            starving: false,
        };
        w.reconcile();
        w
    }

    /// Use `cfg` from each target's next pass on. A target whose
    /// `[[target]]` changed or went away has its task (and session) ended;
    /// a new or changed one gets a new task.
    pub fn replace_config(&mut self, cfg: PushConfig) {
        match self.cfg.lock() {
            Ok(mut c) => *c = Arc::new(cfg),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(cfg),
        }
        self.reconcile();
    }

    fn config(&self) -> Arc<PushConfig> {
        match self.cfg.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn reconcile(&mut self) {
        let cfg = self.config();
        self.workers.retain(|name, w| {
            cfg.targets
                .iter()
                .any(|t| &t.name == name && *t == w.target)
        });
        for t in &cfg.targets {
            if !self.workers.contains_key(&t.name) {
                let worker = Worker::spawn(t, self.cfg.clone(), self.pass.clone());
                self.workers.insert(t.name.clone(), worker);
            }
        }
    }

    /// Ask every target for a pass (now, or right after the one it is in).
    pub fn kick_all(&self) {
        for w in self.workers.values() {
            w.kick.notify_one();
        }
    }

    /// May the watchdog be fed at `now`? Not while any target's pass has
    /// overrun its deadlines.
    pub fn healthy(&mut self, now: Instant) -> bool {
        let stuck: Vec<(String, Duration)> = self
            .workers
            .iter()
            .filter_map(|(name, w)| w.overrun(now).map(|d| (name.clone(), d)))
            .collect();
        match (stuck.is_empty(), self.starving) {
            (true, true) => {
                tracing::info!("no target is stuck any more; feeding the watchdog again");
                self.starving = false;
            }
            (false, false) => {
                for (name, ran) in &stuck {
                    tracing::error!(
                        target = %name,
                        "a pass has run for {:.0}s, longer than its deadlines allow; not feeding the systemd watchdog, so systemd restarts this daemon",
                        ran.as_secs_f64()
                    );
                }
                self.starving = true;
            }
            _ => {}
        }
        stuck.is_empty()
    }

    /// End every task and its session; wait (bounded) until they are gone,
    /// so local receivers are killed before we exit.
    pub async fn stop(&mut self) {
        let tasks: Vec<Worker> = std::mem::take(&mut self.workers).into_values().collect();
        for w in &tasks {
            w.task.abort();
        }
        let deadline = Instant::now() + STOP_WAIT;
        for mut w in tasks {
            let _ = tokio::time::timeout_at(deadline, &mut w.task).await;
        }
    }
}

/// What the loop is told to do next.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// The recheck interval is up: every target gets a pass.
    Recheck,
    Changed,
    Terminate,
    Reload,
}

/// What ended the wait for a changed live dir to settle.
#[derive(Debug)]
enum Settled {
    /// Quiet for [`DEBOUNCE`] with no renewal half done (or
    /// [`RENEWAL_WAIT`] is up).
    Quiet,
    Terminate,
    /// SIGHUP: the reload after it kicks every target.
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

/// Everything the loop waits on: the signals, inotify's events (and the
/// watches that send them), and the watchdog's timer.
struct Events {
    term: Signal,
    hup: Signal,
    /// SIGINT, when its handler could be installed.
    int: Option<Signal>,
    tx: mpsc::UnboundedSender<()>,
    rx: mpsc::UnboundedReceiver<()>,
    /// `None` only between dropping the old watches and setting up new
    /// ones.
    watcher: Option<notify::RecommendedWatcher>,
    /// One timer for the whole run (not one per loop turn), so a stream of
    /// events cannot starve the watchdog.
    watchdog: Option<tokio::time::Interval>,
}

impl Events {
    /// Install the signal handlers and watch `cfg`'s dirs.
    fn start(cfg: &PushConfig) -> Result<Events, ExitCode> {
        let (term, hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(t), Ok(h)) => (t, h),
            _ => {
                tracing::error!("cannot install the SIGTERM/SIGHUP handlers");
                return Err(ExitCode::Runtime);
            }
        };
        let int = signal(SignalKind::interrupt()).ok();
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = match watch(cfg, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("{e}");
                return Err(ExitCode::Runtime);
            }
        };
        let watchdog = watchdog_interval().map(|iv| {
            let mut t = tokio::time::interval(iv);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        Ok(Events {
            term,
            hup,
            int,
            tx,
            rx,
            watcher,
            watchdog,
        })
    }

    /// Wait for the next thing to do; feed the watchdog meanwhile.
    async fn next<P, F>(&mut self, workers: &mut Workers<P>, recheck_at: Instant) -> Wake
    where
        P: Fn(Arc<PushConfig>, String) -> F + Clone + Send + 'static,
        F: Future<Output = ExitCode> + Send + 'static,
    {
        loop {
            return tokio::select! {
                _ = sleep_until(recheck_at) => Wake::Recheck,
                Some(()) = self.rx.recv() => Wake::Changed,
                _ = self.term.recv() => Wake::Terminate,
                _ = recv_opt(&mut self.int) => Wake::Terminate,
                _ = self.hup.recv() => Wake::Reload,
                _ = tick(&mut self.watchdog) => {
                    if workers.healthy(Instant::now()) {
                        sd_notify("WATCHDOG=1");
                    }
                    continue;
                }
            };
        }
    }

    /// Debounce: wait until the dir is quiet and no renewal is half done. A
    /// renewal's remaining steps are events, so this waits on inotify, not
    /// on a poll.
    async fn settle<P, F>(&mut self, cfg: &PushConfig, workers: &mut Workers<P>) -> Settled
    where
        P: Fn(Arc<PushConfig>, String) -> F + Clone + Send + 'static,
        F: Future<Output = ExitCode> + Send + 'static,
    {
        let mut quiet_until = Instant::now() + DEBOUNCE;
        let give_up = Instant::now() + RENEWAL_WAIT;
        let mut waiting_for_renewal = false;
        let mut said = false;
        loop {
            tokio::select! {
                _ = sleep_until(quiet_until), if !waiting_for_renewal => {
                    if Instant::now() >= give_up || !renewal_in_progress(cfg) {
                        return Settled::Quiet;
                    }
                    if !said {
                        tracing::info!("certbot is renewing (previous_*.pem present); waiting for it to finish");
                        said = true;
                    }
                    waiting_for_renewal = true;
                }
                // A stray previous_*.pem can hold this loop for
                // RENEWAL_WAIT: SIGTERM must not wait for it.
                _ = self.term.recv() => return Settled::Terminate,
                _ = recv_opt(&mut self.int) => return Settled::Terminate,
                // Nor SIGHUP: the reload after it kicks every target.
                _ = self.hup.recv() => return Settled::Reload,
                _ = sleep_until(give_up), if waiting_for_renewal => return Settled::Quiet,
                Some(()) = self.rx.recv() => {
                    quiet_until = Instant::now() + DEBOUNCE;
                    waiting_for_renewal = false;
                }
                _ = tick(&mut self.watchdog) => {
                    if workers.healthy(Instant::now()) {
                        sd_notify("WATCHDOG=1");
                    }
                }
            }
        }
    }

    /// Drop the old watches and watch `cfg`'s dirs again (recreated dirs
    /// need their watches again). A failure stops every target: the daemon
    /// exits 1 and systemd restarts it.
    async fn rewatch<P, F>(
        &mut self,
        cfg: &PushConfig,
        workers: &mut Workers<P>,
    ) -> Result<(), ExitCode>
    where
        P: Fn(Arc<PushConfig>, String) -> F + Clone + Send + 'static,
        F: Future<Output = ExitCode> + Send + 'static,
    {
        self.watcher = None;
        match watch(cfg, self.tx.clone()) {
            Ok(w) => {
                self.watcher = Some(w);
                Ok(())
            }
            Err(e) => {
                tracing::error!("{e}");
                workers.stop().await;
                Err(ExitCode::Runtime)
            }
        }
    }
}

/// Run the watch loop. `pass(config, target)` is one push pass for one
/// target; each target runs its own ([`Worker`]). `load` (re)reads the
/// config (at start and on SIGHUP).
pub async fn run_with<L, P, F>(mut load: L, pass: P) -> ExitCode
where
    L: FnMut() -> Result<PushConfig, String>,
    P: Fn(Arc<PushConfig>, String) -> F + Clone + Send + 'static,
    F: Future<Output = ExitCode> + Send + 'static,
{
    let cfg = match load() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::Usage;
        }
    };
    let mut events = match Events::start(&cfg) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let mut recheck = recheck_interval(&cfg);
    let mut workers = Workers::new(cfg, pass);
    sd_notify("READY=1\nSTATUS=watching");
    tracing::info!(?recheck, "watch started");

    // Start with a pass: the receivers may have missed a renewal while we
    // were down.
    workers.kick_all();
    let mut next_recheck = Instant::now() + recheck;
    loop {
        let wake = events.next(&mut workers, next_recheck).await;
        let mut reload = matches!(wake, Wake::Reload);
        match wake {
            Wake::Recheck => tracing::info!("recheck: reconciling every target"),
            Wake::Changed => {
                let cfg = workers.config();
                match events.settle(&cfg, &mut workers).await {
                    Settled::Terminate => return stopping(&mut workers).await,
                    Settled::Reload => reload = true,
                    Settled::Quiet => {}
                }
                tracing::info!("the live dir changed");
                if let Err(code) = events.rewatch(&cfg, &mut workers).await {
                    return code;
                }
                // (After a SIGHUP here the reload below kicks again: at
                // most one more pass, which finds nothing to do.)
            }
            Wake::Terminate => return stopping(&mut workers).await,
            Wake::Reload => {}
        }
        if !matches!(wake, Wake::Reload) {
            workers.kick_all();
            next_recheck = Instant::now() + recheck;
        }
        if reload {
            sd_notify("RELOADING=1");
            match load() {
                Ok(new) => {
                    tracing::info!("config re-read");
                    if let Err(code) = events.rewatch(&new, &mut workers).await {
                        return code;
                    }
                    recheck = recheck_interval(&new);
                    workers.replace_config(new);
                    workers.kick_all();
                    next_recheck = Instant::now() + recheck;
                }
                Err(e) => tracing::error!("keeping the old config: {e}"),
            }
            sd_notify("READY=1");
        }
    }
}

/// SIGTERM or SIGINT: end every session, say so, and stop.
async fn stopping<P, F>(workers: &mut Workers<P>) -> ExitCode
where
    P: Fn(Arc<PushConfig>, String) -> F + Clone + Send + 'static,
    F: Future<Output = ExitCode> + Send + 'static,
{
    tracing::info!("stopping (signal)");
    sd_notify("STOPPING=1");
    workers.stop().await;
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
    // Install mode, no force, every target; `settle` as `push`'s default.
    let opts = crate::push::PushOptions::default();
    let config_path = config_path.to_path_buf();
    run_with(load, move |cfg: Arc<PushConfig>, target: String| {
        let opts = crate::push::PushOptions {
            targets: vec![target],
            ..opts.clone()
        };
        let path = config_path.clone();
        async move {
            match crate::push::pass(&cfg, &path, &opts).await {
                Ok(results) => {
                    for line in crate::push::render(&results, false).lines() {
                        tracing::info!("{line}");
                    }
                    crate::notify::pass(cfg.notify.as_ref(), &results, false).await;
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

    /// Issue 11 item 5: the watchdog is fed from the loop only while no
    /// target's pass has overrun its deadlines. Before, it was fed from
    /// inside the pass, however long the pass hung.
    #[tokio::test]
    async fn a_pass_that_overruns_its_deadlines_starves_the_watchdog() {
        let text = "[[cert]]\nname = \"mail\"\nsource = \"/nonexistent\"\n[[target]]\nname = \"hung\"\ntransport = \"local\"\nsession_timeout = 5\n[[target]]\nname = \"idle\"\ntransport = \"local\"\n";
        let cfg = PushConfig::from_toml(text, Path::new("p.toml")).unwrap();
        let bound = Worker::bound(&cfg.targets[0]);
        assert_eq!(
            bound,
            Duration::from_secs(10 + 10 + 5) + STUCK_SLACK,
            "connect + settle + session + slack"
        );
        // "hung" never finishes its pass (as if no deadline reached it);
        // "idle" finishes at once.
        let mut workers = Workers::new(cfg, |_cfg: Arc<PushConfig>, target: String| async move {
            if target == "hung" {
                std::future::pending::<()>().await;
            }
            ExitCode::Success
        });
        workers.kick_all();
        tokio::task::yield_now().await;
        let start = Instant::now();
        assert!(workers.healthy(start));
        assert!(workers.healthy(start + bound - Duration::from_secs(1)));
        assert!(!workers.healthy(start + bound + Duration::from_secs(1)));
        // Once the stuck target's task is restarted (SIGHUP with a changed
        // [[target]]), the watchdog is fed again.
        workers.replace_config(
            PushConfig::from_toml(
                &text.replace("session_timeout = 5", "session_timeout = 6"),
                Path::new("p.toml"),
            )
            .unwrap(),
        );
        assert!(workers.healthy(start + bound + Duration::from_secs(2)));
        workers.stop().await;
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
