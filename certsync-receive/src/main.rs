//! `certsync-receive`: parse arguments, set up logging, run one command,
//! map its outcome to an exit code (DESIGN.md "Exit codes").

use std::process::ExitCode as ProcessExit;

use clap::Parser;

use certsync_core::protocol::Limits;
use certsync_core::report::Report;
use certsync_core::ExitCode;
use certsync_receive::cli::{Cli, Command};
use certsync_receive::error::ReceiveError;
use certsync_receive::post::Post;
use certsync_receive::settings::Settings;
use certsync_receive::{deploy, serve};

fn print_report(report: &Report) {
    for cr in &report.certs {
        println!("{cr}");
    }
}

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
                &settings,
                tokio::io::stdin(),
                tokio::io::stdout(),
                &post,
                limits,
            )
            .await
        }
        Command::Deploy { dry_run, force } => {
            match deploy::deploy(&settings, dry_run, force, &post).await {
                Ok(report) => {
                    print_report(&report);
                    certsync_receive::notify::report(&settings, &report).await;
                    report.exit()
                }
                Err(e) => fail(e),
            }
        }
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
                    certsync_receive::notify::report(&settings, &report).await;
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
        Command::Units { dir } => match certsync_receive::units::write(&settings, &dir) {
            Ok(paths) => {
                for d in certsync_receive::units::writable_dirs(&settings) {
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
        },
        Command::AuthorizedKey { .. } => ExitCode::Usage,
    }
}

fn fail(e: ReceiveError) -> ExitCode {
    tracing::error!("{e}");
    e.exit_code()
}
