//! The documents hold to the code:
//!
//! - the committed man pages (docs/man) and shell completions (completions/)
//!   are what the clap definitions generate today: regenerate into a temp
//!   dir and compare byte for byte. When this fails, run `cargo run -p
//!   certsync-tests --example gen-docs` and commit the result;
//! - the exit-code table exists once, in `certsync_core::exit`: the tables
//!   in docs/contract.md ("Exit codes") and README.md, both binaries'
//!   `--help` and both top-level man pages say exactly its codes and
//!   meanings;
//! - every subcommand and long flag of both binaries is named in the
//!   contract's section for that binary;
//! - every config key the parsers accept (read from the parsers themselves:
//!   both files are `deny_unknown_fields`, and serde's refusal of an
//!   unknown key lists the known ones) has a row in docs/contract.md's
//!   "`push.toml`" or "`receive.toml`" table.

#[path = "../examples/gen-docs.rs"]
#[allow(dead_code)]
mod gen_docs;

use std::path::Path;

use certsync_core::config::{PushConfig, ReceiveConfig};
use certsync_core::exit::{help_table, ExitCode};

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The part of `file` (relative to the repo) under `## {heading}`, up to
/// the next `## `.
fn section(file: &str, heading: &str) -> String {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("{file} has no section \"## {heading}\""));
    let body = &text[start + 4 + heading.len()..];
    body[..body.find("\n## ").unwrap_or(body.len())].to_string()
}

fn contract_section(heading: &str) -> String {
    section("docs/contract.md", heading)
}

#[test]
fn committed_man_pages_and_completions_are_current() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_docs::generate(tmp.path()).unwrap();
    assert!(
        files.iter().any(|f| f.ends_with("certsync-push-watch.1"))
            && files.iter().any(|f| f.ends_with("_certsync-receive")),
        "{files:?}"
    );
    let mut stale = Vec::new();
    for f in &files {
        let fresh = std::fs::read(tmp.path().join(f)).unwrap();
        match std::fs::read(repo.join(f)) {
            Ok(committed) if committed == fresh => {}
            Ok(_) => stale.push(format!("{} differs", f.display())),
            Err(e) => stale.push(format!("{}: {e}", f.display())),
        }
    }
    // A page for a subcommand that no longer exists is stale too.
    for dir in [
        "docs/man",
        "completions/bash",
        "completions/zsh",
        "completions/fish",
    ] {
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let rel = Path::new(dir).join(entry.unwrap().file_name());
            if !files.contains(&rel) {
                stale.push(format!("{} is not generated any more", rel.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "man pages / completions are stale; run `cargo run -p certsync-tests --example gen-docs` and commit:\n{}",
        stale.join("\n")
    );
}

#[test]
fn the_man_page_documents_the_exit_codes_and_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    gen_docs::generate(tmp.path()).unwrap();
    let page = std::fs::read_to_string(tmp.path().join("docs/man/certsync-push.1")).unwrap();
    for word in ["watch", "discover", "keygen", "Exit codes", "\\-\\-config"] {
        assert!(
            page.contains(word),
            "{word} missing from certsync-push.1:\n{page}"
        );
    }
    let bash =
        std::fs::read_to_string(tmp.path().join("completions/bash/certsync-receive")).unwrap();
    assert!(
        bash.contains("authorized-key") && bash.contains("--warn-days"),
        "{bash}"
    );
}

#[test]
fn the_contract_and_readme_state_exactly_the_exit_codes_in_core() {
    let want: Vec<String> = ExitCode::ALL
        .iter()
        .map(|c| format!("| {} | {} |", c.code(), c.meaning()))
        .collect();
    for (file, heading) in [
        ("docs/contract.md", "Exit codes"),
        ("README.md", "Exit codes (both binaries)"),
    ] {
        let text = section(file, heading);
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert_eq!(
            rows, want,
            "{file} \"{heading}\" must list exactly certsync_core::exit::ExitCode::ALL with ExitCode::meaning"
        );
    }
}

/// A line of `--help` text as clap_mangen writes it into a man page.
fn roff(line: &str) -> String {
    line.replace('\\', "\\\\")
        .replace('-', "\\-")
        .replace('\'', "\\*(Aq")
}

#[test]
fn help_and_man_pages_print_the_one_exit_code_table() {
    let table = help_table();
    assert_eq!(table.lines().count(), 1 + ExitCode::ALL.len(), "{table}");
    let mut missing = Vec::new();
    for cmd in [
        certsync_push::cli::command(),
        certsync_receive::cli::command(),
    ] {
        let name = cmd.get_name().to_string();
        let help = cmd.clone().render_long_help().to_string();
        if !help.contains(&table) {
            missing.push(format!("{name} --help:\n{help}"));
        }
        let page = repo().join(format!("docs/man/{name}.1"));
        let page = std::fs::read_to_string(&page).unwrap();
        let lines: Vec<&str> = page.lines().collect();
        let want: Vec<String> = table.lines().map(roff).collect();
        // The table's lines, in order and together.
        if !lines.windows(want.len()).any(|w| w == want.as_slice()) {
            missing.push(format!("docs/man/{name}.1 lacks:\n{}", want.join("\n")));
        }
    }
    assert!(
        missing.is_empty(),
        "the exit-code table must come from certsync_core::exit::help_table (then run gen-docs):\n{}",
        missing.join("\n\n")
    );
}

/// The keys serde accepts at one place of a config file: parse `prefix`
/// followed by an unknown key and read the "expected one of `a`, `b`"
/// list out of the refusal.
fn accepted_keys(prefix: &str, parse: Parse) -> Vec<String> {
    let text = format!("{prefix}certsync_no_such_key = 1\n");
    let err = parse(&text).expect_err("an unknown key must be refused");
    let (_, expected) = err
        .split_once("unknown field `certsync_no_such_key`, expected")
        .unwrap_or_else(|| panic!("not serde's unknown-field refusal: {err}"));
    let keys: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(!keys.is_empty(), "no keys in: {err}");
    keys
}

/// Parse a config file's text; the error as the operator reads it.
type Parse = fn(&str) -> Result<(), String>;

fn parse_push(text: &str) -> Result<(), String> {
    PushConfig::from_toml(text, Path::new("push.toml"))
        .map(drop)
        .map_err(|e| e.to_string())
}

fn parse_receive(text: &str) -> Result<(), String> {
    ReceiveConfig::from_toml(text, Path::new("receive.toml"))
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn every_config_key_the_code_accepts_is_in_the_contract() {
    // (the contract's section, the parser, the TOML that opens the place,
    // the place as the contract's table writes it)
    let places: [(&str, Parse, &str, &str); 9] = [
        ("`push.toml`", parse_push, "", ""),
        ("`push.toml`", parse_push, "[[cert]]\n", "[[cert]] "),
        ("`push.toml`", parse_push, "[[target]]\n", "[[target]] "),
        ("`push.toml`", parse_push, "[notify]\n", "[notify] "),
        ("`receive.toml`", parse_receive, "", ""),
        ("`receive.toml`", parse_receive, "[mailcow]\n", "[mailcow] "),
        ("`receive.toml`", parse_receive, "[[cert]]\n", "[[cert]] "),
        ("`receive.toml`", parse_receive, "[docker]\n", "[docker] "),
        ("`receive.toml`", parse_receive, "[notify]\n", "[notify] "),
    ];
    let mut missing = Vec::new();
    let mut seen = 0;
    for (heading, parse, prefix, label) in places {
        let section = contract_section(heading);
        // The first cell of each table row.
        let first_cells: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" | ").next())
            .collect();
        for key in accepted_keys(prefix, parse) {
            seen += 1;
            let name = format!("`{label}{key}`");
            // A top-level key that is a table (`[notify]`, `[[cert]]`) is
            // documented by the rows of its own keys.
            let table = [format!("`[{key}] "), format!("`[[{key}]] ")];
            let listed = |cell: &&str| {
                cell.contains(&name) || (label.is_empty() && table.iter().any(|t| cell.contains(t)))
            };
            if !first_cells.iter().any(listed) {
                missing.push(format!("{heading}: {name}"));
            }
        }
    }
    // The sections above hold more than forty keys between them; far fewer
    // means the parsers' refusal changed shape, not that keys went away.
    assert!(seen > 40, "only {seen} keys read from the parsers");
    assert!(
        missing.is_empty(),
        "config keys the code accepts but docs/contract.md does not list (add a row to the file's table):\n{}",
        missing.join("\n")
    );
}

/// The long flags of `cmd` itself (not its subcommands') that `section`
/// does not name, as `WHAT --flag`.
fn unlisted_flags(what: &str, cmd: &clap::Command, section: &str) -> Vec<String> {
    cmd.get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !["help", "version"].contains(long))
        .filter(|long| !section.contains(&format!("--{long}")))
        .map(|long| format!("{what} --{long}"))
        .collect()
}

#[test]
fn every_subcommand_and_flag_is_in_the_contract() {
    let mut missing = Vec::new();
    for cmd in [
        certsync_push::cli::command(),
        certsync_receive::cli::command(),
    ] {
        let name = cmd.get_name().to_string();
        let section = contract_section(&format!("`{name}`"));
        missing.extend(unlisted_flags(&name, &cmd, &section));
        for sub in cmd.get_subcommands() {
            let what = format!("{name} {}", sub.get_name());
            if !section.contains(&format!("`{}`", sub.get_name())) {
                missing.push(what.clone());
            }
            missing.extend(unlisted_flags(&what, sub, &section));
        }
    }
    assert!(
        missing.is_empty(),
        "subcommands and flags the binaries accept but docs/contract.md does not list:\n{}",
        missing.join("\n")
    );
}
