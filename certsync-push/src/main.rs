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

/// certbot's live dir in Nginx Proxy Manager's default layout.
const DEFAULT_LIVE_ROOT: &str = "/opt/npm/letsencrypt/live";

fn main() -> ProcessExit {
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
            let root = live_root.unwrap_or_else(|| live_root_from(&cli.config));
            discover(&root, json)
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

/// The live root to list when none is given: a `live_root` from the
/// config, or the parent of a `source`, or NPM's default. A missing or
/// broken config is not an error here: discover is how people write one.
fn live_root_from(config: &Path) -> PathBuf {
    if let Ok(cfg) = PushConfig::load(config) {
        for c in &cfg.certs {
            if let Some(root) = &c.live_root {
                return root.clone();
            }
            if let Some(parent) = c.source.as_deref().and_then(Path::parent) {
                return parent.to_path_buf();
            }
        }
    }
    PathBuf::from(DEFAULT_LIVE_ROOT)
}

fn discover(root: &Path, json: bool) -> Result<ExitCode, PushError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let certs = certsync_push::discover::discover(root, now).map_err(PushError::Discover)?;
    if json {
        let text = serde_json::to_string_pretty(&certs)
            .map_err(|e| PushError::Output(std::io::Error::other(e)))?;
        println!("{text}");
    } else {
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
