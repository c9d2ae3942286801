//! Generate the man pages and shell completions of both binaries from
//! their clap definitions (`certsync_push::cli`, `certsync_receive::cli`).
//!
//! ```text
//! cargo run -p certsync-tests --example gen-docs          # writes into the repo
//! cargo run -p certsync-tests --example gen-docs -- DIR   # writes under DIR
//! ```
//!
//! Output, relative to the repo root (or DIR), all committed and packaged by
//! cargo-deb (see the `[package.metadata.deb]` assets):
//!
//! - `docs/man/<bin>.1` and `docs/man/<bin>-<subcommand>.1`;
//! - `completions/bash/<bin>`, `completions/zsh/_<bin>`,
//!   `completions/fish/<bin>.fish`.
//!
//! `tests/tests/docs.rs` regenerates into a temp dir and fails when the
//! committed files differ: after changing a flag or a help text, run this.

use std::fs;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The binaries and their clap commands.
pub fn commands() -> Vec<clap::Command> {
    vec![
        certsync_push::cli::command(),
        certsync_receive::cli::command(),
    ]
}

/// Write every man page and completion under `root`; return the files
/// written (relative to `root`), sorted.
pub fn generate(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = root.join("docs/man");
    fs::create_dir_all(&man)?;
    for cmd in commands() {
        let name = cmd.get_name().to_string();
        man_pages(&cmd, &name, &man, &mut written)?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let dir = root.join("completions").join(dir);
            fs::create_dir_all(&dir)?;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut buf);
            let path = dir.join(file);
            fs::write(&path, buf)?;
            written.push(path);
        }
    }
    let mut rel: Vec<PathBuf> = written
        .into_iter()
        .filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect();
    rel.sort();
    Ok(rel)
}

/// `<page>.1` for `cmd`, then one page per (visible) subcommand, named
/// `<page>-<sub>.1` as git and cargo name theirs.
fn man_pages(
    cmd: &clap::Command,
    page: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    // clap takes &'static names (without its "string" feature); this is a
    // short-lived generator, so leaking a few page names is fine.
    let name: &'static str = Box::leak(page.to_string().into_boxed_str());
    let mut cmd = cmd.clone().name(name);
    cmd.build();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    let path = dir.join(format!("{page}.1"));
    fs::write(&path, buf)?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        man_pages(sub, &format!("{page}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[allow(dead_code)] // tests/docs.rs includes this file for `generate`
fn main() -> std::process::ExitCode {
    let root = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        // The repo root: this example lives in <root>/tests/examples.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    match generate(&root) {
        Ok(files) => {
            for f in files {
                println!("{}", root.join(f).display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-docs: cannot write under {}: {e}", root.display());
            std::process::ExitCode::FAILURE
        }
    }
}
