//! The command line of `certsync-push`, as clap definitions.
//!
//! Kept in the library (not in main.rs) so that the man page and the shell
//! completions are generated from the very definitions the binary parses
//! (`cargo run -p certsync-tests --example gen-docs`), and a test can tell
//! when the committed ones are stale.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use certsync_core::config::DEFAULT_PUSH_CONFIG;

/// Push TLS certificates from a certbot live dir (Nginx Proxy Manager's
/// live/npm-N) or an uploaded one (its custom_ssl/npm-N) to
/// certsync-receive on mail hosts, over SSH with a pinned host key.
#[derive(Debug, Parser)]
#[command(
    name = "certsync-push",
    version,
    about,
    after_help = after_help()
)]
pub struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = DEFAULT_PUSH_CONFIG, env = "CERTSYNC_PUSH_CONFIG")]
    pub config: PathBuf,

    /// Log format: auto (journald under systemd, else text), text, json, journald.
    #[arg(long, global = true, default_value = "auto", value_name = "FORMAT")]
    pub log_format: certsync_core::logging::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The examples people start from, shown after the options.
const EXAMPLES: &str = "\
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
  certsync-push units
      make certsync-push.path watch every live dir in the config
";

/// `--help`'s closing text: the examples, the one exit-code table
/// (`certsync_core::exit::help_table`, the same for both binaries), and
/// where output goes.
fn after_help() -> String {
    format!(
        "{EXAMPLES}\n{}With several targets the exit code is the worst of them.\n\n\
         Logs go to stderr (CERTSYNC_LOG=debug for more); results go to stdout.",
        certsync_core::exit::help_table()
    )
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// List the certbot live dirs (and NPM's uploaded certificates) with
    /// subject, SANs, key type, notAfter, fingerprint and consistency.
    Discover {
        /// certbot's live dir, or NPM's custom_ssl dir (uploaded
        /// certificates); repeat for several [default: the config's
        /// live_root and the dirs holding its sources, else
        /// /opt/npm/letsencrypt/live and /opt/npm/data/custom_ssl].
        #[arg(long, value_name = "DIR")]
        live_root: Vec<PathBuf>,
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
    /// Write the systemd drop-in that makes certsync-push.path watch every
    /// live dir in the config (certsync-push.path.d/certsync-sources.conf),
    /// then say what to reload.
    Units {
        /// The systemd unit dir to write into.
        #[arg(long, value_name = "DIR", default_value = certsync_core::units::SYSTEM_UNIT_DIR)]
        dir: PathBuf,
    },
    /// Make an ed25519 key pair (PATH 0600 and PATH.pub) and print the
    /// authorized_keys line for the receiving host.
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

/// The clap command, for the man page and the completions.
pub fn command() -> clap::Command {
    Cli::command()
}
