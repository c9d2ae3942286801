//! `certsync-push`: parse arguments, set up logging, run one command, map
//! its outcome to an exit code (docs/contract.md "Exit codes").
//!
//! Only dispatch lives here: each command's module does its work and
//! renders its own output on the writers it is given.

use std::process::ExitCode as ProcessExit;
use std::time::Duration;

use clap::Parser;

use certsync_core::ExitCode;
use certsync_push::cli::{Cli, Command};
use certsync_push::push::PushOptions;
use certsync_push::session::Mode;

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
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let result = match cli.command {
        Command::Push {
            dry_run,
            force,
            targets,
            settle,
        } => {
            let opts = PushOptions {
                mode: if dry_run { Mode::DryRun } else { Mode::Install },
                force,
                targets,
                settle: Duration::from_secs(settle),
            };
            certsync_push::push::run(&cli.config, &opts, &mut stdout).await
        }
        Command::Watch => return certsync_push::watch::run(&cli.config).await,
        Command::Discover { live_root, json } => {
            certsync_push::discover::run(&cli.config, live_root, json, &mut stdout)
        }
        Command::Status { json } => {
            certsync_push::status::run(&cli.config, json, &mut stdout).await
        }
        Command::Keygen { out } => certsync_push::keygen::run(&out, &mut stdout, &mut stderr),
        Command::Units { dir } => {
            certsync_push::units::run(&cli.config, &dir, &mut stdout, &mut stderr)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}
