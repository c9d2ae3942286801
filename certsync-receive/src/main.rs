//! `certsync-receive`: parse arguments, set up logging, run one command,
//! map its outcome to an exit code (docs/contract.md "Exit codes").

use std::process::ExitCode as ProcessExit;

use clap::Parser;

use certsync_core::protocol::Limits;
use certsync_core::report::Report;
use certsync_core::ExitCode;
use certsync_receive::cli::{Cli, Command};
use certsync_receive::commands::{authorized_key, check, deploy, install, serve, units};
use certsync_receive::error::ReceiveError;
use certsync_receive::pipeline::reload_verify::ReloadVerify;
use certsync_receive::settings::Settings;
use certsync_receive::systems::notify;

fn main() -> ProcessExit {
    // Before any key is read: no core dump may hold one.
    if let Err(e) = certsync_core::hardening::no_core_dumps() {
        eprintln!("certsync-receive: cannot disable core dumps: {e}");
        return ExitCode::Runtime.into();
    }
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

/// One command, to its exit code.
async fn run(cli: Cli) -> ExitCode {
    let command = cli.command.unwrap_or(Command::Serve);
    // The only command that needs no receive.toml.
    if let Command::AuthorizedKey { pubkey, from } = &command {
        return match authorized_key::line(pubkey, from.as_deref(), &cli.config) {
            Ok(line) => {
                println!("{line}");
                ExitCode::Success
            }
            Err(e) => fail(e),
        };
    }
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => return fail(e.into()),
    };
    let post = ReloadVerify {
        settings: &settings,
    };
    match command {
        Command::Serve => run_serve(&settings, &post).await,
        Command::Deploy { dry_run, force } => {
            finish(
                &settings,
                deploy::deploy(&settings, dry_run, force, &post).await,
            )
            .await
        }
        Command::Install {
            name,
            cert,
            key,
            dry_run,
            force,
        } => {
            let report =
                install::install_files(&settings, &name, &cert, &key, dry_run, force, &post).await;
            finish(&settings, report).await
        }
        Command::Check {
            json,
            warn_days,
            metrics,
        } => check::run(&settings, json, warn_days, metrics.as_deref()).await,
        Command::Units { dir } => run_units(&settings, &dir),
        Command::AuthorizedKey { .. } => ExitCode::Usage,
    }
}

/// `serve`, on stdin and stdout.
async fn run_serve(settings: &Settings, post: &ReloadVerify<'_>) -> ExitCode {
    if let Ok(orig) = std::env::var("SSH_ORIGINAL_COMMAND") {
        // The pusher's text: escaped and bounded, never raw.
        let shown: String = orig
            .chars()
            .take(256)
            .flat_map(char::escape_debug)
            .collect();
        tracing::info!(ssh_original_command = %shown, "logged, not obeyed: this key only runs serve");
    }
    let limits = Limits {
        frame_timeout: settings.read_timeout,
        ..Limits::default()
    };
    serve::serve(
        settings,
        tokio::io::stdin(),
        tokio::io::stdout(),
        post,
        limits,
    )
    .await
}

/// `units`: write the drop-ins, say what to reload.
fn run_units(settings: &Settings, dir: &std::path::Path) -> ExitCode {
    match units::write(settings, dir) {
        Ok(paths) => {
            for d in units::writable_dirs(settings) {
                println!("writable {}", d.display());
            }
            for p in paths {
                eprintln!("wrote {}", p.display());
            }
            eprintln!("now run: systemctl daemon-reload");
            ExitCode::Success
        }
        Err(e @ certsync_core::units::UnitsError::BadPath { .. }) => {
            tracing::error!("{e}");
            ExitCode::Usage
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::Runtime
        }
    }
}

/// `deploy` and `install`: print the report, tell `[notify]`, exit with
/// the report's worst code.
async fn finish(settings: &Settings, outcome: Result<Report, ReceiveError>) -> ExitCode {
    match outcome {
        Ok(report) => {
            for cr in &report.certs {
                println!("{cr}");
            }
            notify::report(settings, &report).await;
            report.exit()
        }
        Err(e) => fail(e),
    }
}

fn fail(e: ReceiveError) -> ExitCode {
    tracing::error!("{e}");
    e.exit_code()
}
