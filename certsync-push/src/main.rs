//! `certsync-push`: parse arguments, set up logging, run one command, map
//! its outcome to an exit code (DESIGN.md "Exit codes").

use std::path::{Path, PathBuf};
use std::process::ExitCode as ProcessExit;
use std::time::Duration;

use clap::{Parser, Subcommand};

use certsync_core::config::{PushConfig, DEFAULT_PUSH_CONFIG};
use certsync_core::ExitCode;
use certsync_push::error::PushError;
use certsync_push::push::PushOptions;

/// Push TLS certificates from a certbot live dir (Nginx Proxy Manager's
/// live/npm-N) to certsync-receive on mail hosts, over SSH with a pinned
/// host key.
#[derive(Debug, Parser)]
#[command(
    name = "certsync-push",
    version,
    about,
    after_help = "\
Examples:
  certsync-push keygen --out /etc/certsync/id_ed25519
      new key; prints the authorized_keys line for the receiving host
  certsync-push discover
      which live/npm-N holds which hostname
  certsync-push push --dry-run
      what each target would do; changes nothing
  certsync-push push
      send every [[cert]] to every [[target]] (only what changed)
  certsync-push push --target mailcow --force
      one target, allowing a certificate that expires sooner (rollback)
  certsync-push status --json
      local vs installed fingerprint per cert and target

Exit codes:
  0  success, or nothing to do
  1  runtime failure (network, SSH, I/O, inconsistent live dir)
  2  usage or config error
  3  refused by the receiver's validation (bad cert, wrong name, mismatch, rollback)
  4  installed, but a reload or the served-certificate check failed
With several targets the exit code is the worst of them.

Logs go to stderr (CERTSYNC_LOG=debug for more); results go to stdout."
)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = DEFAULT_PUSH_CONFIG, env = "CERTSYNC_PUSH_CONFIG")]
    config: PathBuf,

    /// Log format: auto (journald under systemd, else text), text, json, journald.
    #[arg(long, global = true, default_value = "auto", value_name = "FORMAT")]
    log_format: certsync_core::logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One pass: offer every cert to every target, send only what differs.
    Push {
        /// The receivers validate and say what they would do; nothing changes.
        #[arg(long)]
        dry_run: bool,
        /// Let the receivers install a certificate that expires before the
        /// installed one (a rollback).
        #[arg(long)]
        force: bool,
        /// Only this [[target]] (repeatable).
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// Seconds to keep re-reading a live dir that is inconsistent
        /// (certbot renewing) before giving up.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        settle: u64,
    },
    /// Run until stopped; push whenever a live dir changes.
    Watch,
    /// List the certbot live dirs with subject, SANs, key type, notAfter,
    /// fingerprint and consistency.
    Discover {
        /// certbot's live dir [default: from the config's live_root or
        /// source, else /opt/npm/letsencrypt/live].
        #[arg(long, value_name = "DIR")]
        live_root: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Per cert and target: the local fingerprint against the installed one
    /// (asks each receiver with a dry run; changes nothing).
    ///
    /// Exit 0 when every target has every cert, 1 when one differs or a
    /// target cannot be asked, 3 when a receiver would refuse the local pair.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make an ed25519 key pair (PATH 0600 and PATH.pub) and print the
    /// authorized_keys line for the receiving host.
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

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
