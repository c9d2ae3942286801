//! `certsync-push`: parse arguments, set up logging, run one command, map
//! its outcome to an exit code (DESIGN.md "Exit codes").

use std::path::{Path, PathBuf};
use std::process::ExitCode as ProcessExit;
use std::time::Duration;

use clap::Parser;

use certsync_core::config::PushConfig;
use certsync_core::ExitCode;
use certsync_push::cli::{Cli, Command};
use certsync_push::error::PushError;
use certsync_push::push::PushOptions;

/// Where Nginx Proxy Manager keeps certificates in its documented layout
/// (`./letsencrypt:/etc/letsencrypt` and `./data:/data` under /opt/npm):
/// certbot's live dir, and the dir of uploaded ("custom") certificates.
const DEFAULT_LIVE_ROOTS: [&str; 2] = ["/opt/npm/letsencrypt/live", "/opt/npm/data/custom_ssl"];

fn main() -> ProcessExit {
    // Before any key is read: no core dump may hold one.
    if let Err(e) = certsync_core::hardening::no_core_dumps() {
        eprintln!("certsync-push: cannot disable core dumps: {e}");
        return ExitCode::Runtime.into();
    }
    let cli = Cli::parse();
    certsync_core::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certsync-push: cannot start the async runtime: {e}");
            return ExitCode::Runtime.into();
        }
    };
    let code = runtime.block_on(run(cli));
    runtime.shutdown_background();
    code.into()
}

async fn run(cli: Cli) -> ExitCode {
    let mut stdout = std::io::stdout();
    let result = match cli.command {
        Command::Push {
            dry_run,
            force,
            targets,
            settle,
        } => {
            let opts = PushOptions {
                dry_run,
                force,
                targets,
                settle: Duration::from_secs(settle),
                offer_only: false,
            };
            certsync_push::push::run(&cli.config, &opts, &mut stdout).await
        }
        Command::Watch => return certsync_push::watch::run(&cli.config).await,
        Command::Discover { live_root, json } => {
            let roots = if live_root.is_empty() {
                live_roots_from(&cli.config)
            } else {
                live_root
            };
            discover(&roots, json)
        }
        Command::Status { json } => {
            certsync_push::status::run(&cli.config, json, &mut stdout).await
        }
        Command::Keygen { out } => keygen(&out),
        Command::Units { dir } => units(&cli.config, &dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}

/// The roots to list when none is given: every `live_root` of the config
/// and the dir holding each `source`, or else NPM's default dirs (those
/// that exist; both when neither does, so the error names them). A missing
/// or broken config is not an error here: discover is how people write one.
fn live_roots_from(config: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cfg) = PushConfig::load(config) {
        for c in &cfg.certs {
            let from_source = c
                .source
                .as_deref()
                .and_then(Path::parent)
                .map(Path::to_path_buf);
            let listed = c.live_root.iter().flat_map(|r| r.paths()).cloned();
            for root in listed.chain(from_source) {
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
        }
    }
    if roots.is_empty() {
        roots = DEFAULT_LIVE_ROOTS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect();
    }
    if roots.is_empty() {
        roots = DEFAULT_LIVE_ROOTS.iter().map(PathBuf::from).collect();
    }
    roots
}

fn discover(roots: &[PathBuf], json: bool) -> Result<ExitCode, PushError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if json {
        let certs =
            certsync_push::discover::discover_roots(roots, now).map_err(PushError::Discover)?;
        let text = serde_json::to_string_pretty(&certs)
            .map_err(|e| PushError::Output(std::io::Error::other(e)))?;
        println!("{text}");
        return Ok(ExitCode::Success);
    }
    // One table per root: `npm-3` may be in either.
    for (i, root) in roots.iter().enumerate() {
        let certs = certsync_push::discover::discover(root, now).map_err(PushError::Discover)?;
        if roots.len() > 1 {
            if i > 0 {
                println!();
            }
            println!("{}:", root.display());
        }
        print!("{}", certsync_push::discover::render_table(&certs));
    }
    Ok(ExitCode::Success)
}

fn keygen(out: &Path) -> Result<ExitCode, PushError> {
    let made = certsync_push::keygen::keygen(out, "certsync-push")?;
    eprintln!(
        "wrote {} (0600) and {}; key fingerprint {}",
        made.private_key.display(),
        made.public_key.display(),
        made.fingerprint
    );
    eprintln!("put this line in ~certsync/.ssh/authorized_keys on the receiving host (add --config … to the command if its receive.toml is elsewhere):");
    println!("{}", made.authorized_keys_line);
    Ok(ExitCode::Success)
}

fn units(config: &Path, dir: &Path) -> Result<ExitCode, PushError> {
    let cfg = PushConfig::load(config)?;
    let drop_in = certsync_push::units::drop_in(&cfg, config)?;
    let path = drop_in.write(dir)?;
    for d in certsync_push::units::watched_dirs(&cfg) {
        println!("watch {}", d.display());
    }
    eprintln!(
        "wrote {}; now run: systemctl daemon-reload && systemctl restart {}",
        path.display(),
        certsync_push::units::PATH_UNIT
    );
    Ok(ExitCode::Success)
}
