//! `certsync-receive`: parse arguments, set up logging, run one command,
//! map its outcome to an exit code (DESIGN.md "Exit codes").

use std::path::PathBuf;
use std::process::ExitCode as ProcessExit;

use clap::{Parser, Subcommand};

use certsync_core::config::DEFAULT_RECEIVE_CONFIG;
use certsync_core::logging::LogFormat;
use certsync_core::protocol::Limits;
use certsync_core::report::Report;
use certsync_core::ExitCode;
use certsync_receive::error::ReceiveError;
use certsync_receive::post::Post;
use certsync_receive::settings::Settings;
use certsync_receive::{deploy, serve};

/// Receive TLS certificates pushed by certsync-push, install them atomically,
/// reload mailcow's containers and check what is served.
///
/// Exit codes: 0 success or nothing to do; 1 runtime failure; 2 usage or
/// config error; 3 refused by validation; 4 installed but reload or
/// served-certificate check failed.
#[derive(Debug, Parser)]
#[command(
    name = "certsync-receive",
    version,
    about,
    after_help = "\
The usual setup: put the line printed by `certsync-receive authorized-key --pubkey id_ed25519.pub`
into the certsync user's ~/.ssh/authorized_keys on this host. certsync-push then runs `serve` over
SSH; nothing else can be run with that key."
)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = DEFAULT_RECEIVE_CONFIG, env = "CERTSYNC_RECEIVE_CONFIG")]
    config: PathBuf,

    /// Log format: auto (journald under systemd, else text), text, json, journald.
    #[arg(long, global = true, default_value = "auto", value_name = "FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Speak the certsync protocol on stdin/stdout (the authorized_keys forced
    /// command; the default when no command is given).
    Serve,
    /// Install what `serve` staged (root's half of deploy = "handoff"), reload, verify.
    Deploy {
        /// Validate and say what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate and install a pair from local files, as a push would.
    Install {
        /// The [[cert]] name in receive.toml.
        #[arg(long)]
        name: String,
        /// The full chain (leaf first), e.g. fullchain.pem.
        #[arg(long)]
        cert: PathBuf,
        /// The private key, e.g. privkey.pem.
        #[arg(long)]
        key: PathBuf,
        /// Validate and say what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow a certificate that expires before the installed one.
        #[arg(long)]
        force: bool,
    },
    /// Is the installed pair valid and matching, not expiring, served on the wire?
    ///
    /// Retries a reload still owed from an earlier install first. Exit codes:
    /// 0 all well; 3 a pair missing, invalid, not matching, expired or
    /// expiring within --warn-days; 4 an endpoint serves another certificate
    /// or cannot be probed, or a reload is still owed; 1 a runtime failure
    /// (e.g. the metrics file cannot be written). The worst one wins.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Warn (exit non-zero) when fewer days than this are left.
        #[arg(long, default_value_t = 14)]
        warn_days: i64,
        /// Also write a Prometheus textfile here.
        #[arg(long)]
        metrics: Option<PathBuf>,
    },
    /// Print the restricted authorized_keys line for a pusher's public key.
    AuthorizedKey {
        /// The pusher's public key (id_ed25519.pub from `certsync-push keygen`).
        #[arg(long)]
        pubkey: PathBuf,
        /// Only accept the key from these addresses (e.g. 192.0.2.10/32).
        #[arg(long)]
        from: Option<String>,
    },
}

fn print_report(report: &Report) {
    for cr in &report.certs {
        println!("{cr}");
    }
}

fn main() -> ProcessExit {
    let cli = Cli::parse();
    certsync_core::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certsync-receive: cannot start the async runtime: {e}");
            return ExitCode::Runtime.into();
        }
    };
    let code = runtime.block_on(run(cli));
    // Do not wait for a blocking stdin read that a stalled pusher left behind.
    runtime.shutdown_background();
    code.into()
}

async fn run(cli: Cli) -> ExitCode {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::AuthorizedKey { pubkey, from } = &command {
        return match certsync_receive::authorized_key::line(pubkey, from.as_deref(), &cli.config) {
            Ok(line) => {
                println!("{line}");
                ExitCode::Success
            }
            Err(e) => fail(e),
        };
    }
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let post = Post {
        settings: &settings,
    };
    match command {
        Command::Serve => {
            if let Ok(orig) = std::env::var("SSH_ORIGINAL_COMMAND") {
                tracing::info!(ssh_original_command = %orig, "logged, not obeyed: this key only runs serve");
            }
            let limits = Limits {
                frame_timeout: settings.read_timeout,
                ..Limits::default()
            };
            serve::serve(
                &settings,
                tokio::io::stdin(),
                tokio::io::stdout(),
                &post,
                limits,
            )
            .await
        }
        Command::Deploy { dry_run } => match deploy::deploy(&settings, dry_run, &post).await {
            Ok(report) => {
                print_report(&report);
                report.exit()
            }
            Err(e) => fail(e),
        },
        Command::Install {
            name,
            cert,
            key,
            dry_run,
            force,
        } => {
            match deploy::install_files(&settings, &name, &cert, &key, dry_run, force, &post).await
            {
                Ok(report) => {
                    print_report(&report);
                    report.exit()
                }
                Err(e) => fail(e),
            }
        }
        Command::Check {
            json,
            warn_days,
            metrics,
        } => certsync_receive::check::run(&settings, json, warn_days, metrics.as_deref()).await,
        Command::AuthorizedKey { .. } => ExitCode::Usage,
    }
}

fn fail(e: ReceiveError) -> ExitCode {
    tracing::error!("{e}");
    e.exit_code()
}
