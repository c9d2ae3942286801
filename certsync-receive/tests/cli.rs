//! The binary's surface: `--help` teaches, bad usage exits 2.
//! (Also makes `cargo test --workspace` build the binary that the scenario
//! tests in `tests/` drive.)

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_certsync-receive"))
}

#[test]
fn help_lists_every_subcommand_and_the_exit_codes() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "serve",
        "deploy",
        "install",
        "check",
        "authorized-key",
        "Exit codes",
        "refused",
    ] {
        assert!(text.contains(word), "--help lacks {word:?}:\n{text}");
    }
}

#[test]
fn usage_and_config_errors_exit_2() {
    let out = bin().args(["install", "--name"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin()
        .args(["--config", "/nonexistent/receive.toml", "deploy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/receive.toml"), "{err}");
}
