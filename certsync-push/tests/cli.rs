//! The binary's surface: `--help` teaches, bad usage exits 2, `keygen`
//! and `discover` work without any config. (Also makes `cargo test
//! --workspace` build the binary that the scenario tests in `tests/`
//! drive.)

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_certsync-push"));
    c.env_remove("CERTSYNC_PUSH_CONFIG");
    c
}

#[test]
fn help_teaches_commands_examples_and_exit_codes() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "push",
        "watch",
        "discover",
        "status",
        "keygen",
        "Examples:",
        "Exit codes:",
        "nothing to do",
        "refused",
        "reload",
    ] {
        assert!(text.contains(word), "--help lacks {word:?}:\n{text}");
    }
    let out = bin().args(["push", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["--dry-run", "--force", "--target", "--settle"] {
        assert!(text.contains(word), "push --help lacks {word:?}:\n{text}");
    }
}

#[test]
fn usage_and_config_errors_exit_2() {
    let out = bin().arg("push").arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no subcommand is a usage error");

    let out = bin()
        .args(["--config", "/nonexistent/push.toml", "push"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/push.toml"), "{err}");

    let out = bin()
        .args(["--config", "/nonexistent/push.toml", "watch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_target_is_a_usage_error_naming_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("push.toml");
    std::fs::write(
        &config,
        "[[cert]]\nname = \"mail\"\nsource = \"/nonexistent/live/npm-5\"\n\n[[target]]\nname = \"mailcow\"\ntransport = \"local\"\ncommand = [\"/bin/false\"]\n",
    )
    .unwrap();
    let out = bin()
        .arg("--config")
        .arg(&config)
        .args(["push", "--target", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nope\"") && err.contains("mailcow"), "{err}");

    // A source dir that is not there: the target's line says so, exit 2.
    let out = bin()
        .arg("--config")
        .arg(&config)
        .arg("push")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mailcow: FAILED (exit 2)") && text.contains("/nonexistent/live/npm-5"),
        "{text}"
    );
}

#[test]
fn keygen_writes_a_0600_key_and_prints_a_restricted_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let out = bin().arg("keygen").arg("--out").arg(&key).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.starts_with("command=\"certsync-receive serve\",restrict ssh-ed25519 "),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "only the line on stdout: {line}");
    // Never overwrite a key.
    let again = bin().arg("keygen").arg("--out").arg(&key).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn discover_of_a_missing_root_names_it() {
    let out = bin()
        .args(["discover", "--live-root", "/nonexistent/live", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/live"), "{err}");
}
