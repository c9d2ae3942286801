//! The command line of `certsync-receive`, as clap definitions.
//!
//! Kept in the library (not in main.rs) so that the man page and the shell
//! completions are generated from the very definitions the binary parses
//! (`cargo run -p certsync-tests --example gen-docs`), and a test can tell
//! when the committed ones are stale.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use certsync_core::config::DEFAULT_RECEIVE_CONFIG;
use certsync_core::logging::LogFormat;

/// Receive TLS certificates pushed by certsync-push, install them atomically,
/// reload mailcow's containers and check what is served.
#[derive(Debug, Parser)]
#[command(
    name = "certsync-receive",
    version,
    about,
    // Without it, a one-paragraph doc comment leaves `--help` with the
    // package description only.
    long_about = "Receive TLS certificates pushed by certsync-push, install them atomically, reload mailcow's containers and check what is served.",
    after_help = after_help()
)]
pub struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = DEFAULT_RECEIVE_CONFIG, env = "CERTSYNC_RECEIVE_CONFIG")]
    pub config: PathBuf,

    /// Log format: auto (journald under systemd, else text), text, json, journald.
    #[arg(long, global = true, default_value = "auto", value_name = "FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Speak the certsync protocol on stdin/stdout (the authorized_keys forced
    /// command; the default when no command is given).
    Serve,
    /// Install what `serve` staged (root's half of deploy = "handoff"), reload, verify.
    Deploy {
        /// Validate and say what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow a staged certificate that expires before the installed one
        /// (root's decision on this host; a pusher's --force counts only with
        /// allow_remote_force = true in receive.toml).
        #[arg(long)]
        force: bool,
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
    /// Retries a reload still owed from an earlier install first. With
    /// [mailcow], also lists every per-domain folder mailcow serves. Exit
    /// codes: 0 all well; 3 a pair missing, invalid, not matching, expired or
    /// expiring within --warn-days, or such a folder expired or expiring;
    /// 4 an endpoint serves another certificate
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
    /// Write the systemd drop-ins that let certsync-deploy.service write
    /// where receive.toml installs (ReadWritePaths=) and certsync-deploy.path
    /// watch its staging dir, then say what to reload.
    Units {
        /// The systemd unit dir to write into.
        #[arg(long, value_name = "DIR", default_value = certsync_core::units::SYSTEM_UNIT_DIR)]
        dir: PathBuf,
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

/// Below the options: the exit codes (the one table both binaries print)
/// and the usual setup.
fn after_help() -> String {
    format!("{}\n{USUAL_SETUP}", certsync_core::exit::help_table())
}

const USUAL_SETUP: &str = "\
The usual setup: put the line printed by `certsync-receive authorized-key --pubkey id_ed25519.pub`
into the certsync user's ~/.ssh/authorized_keys on this host. certsync-push then runs `serve` over
SSH; nothing else can be run with that key.";

/// The clap command, for the man page and the completions.
pub fn command() -> clap::Command {
    Cli::command()
}
