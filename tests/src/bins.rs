//! The two certsync binaries, as built by `cargo test --workspace` (each
//! binary crate has an integration test, so cargo builds its binary before
//! any test runs).

use std::path::PathBuf;

/// `target/<profile>/`, found from the running test executable
/// (`target/<profile>/deps/<test>-<hash>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test exe has a parent");
    deps.parent().expect("deps has a parent").to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

pub fn receive() -> PathBuf {
    bin("certsync-receive")
}

pub fn push() -> PathBuf {
    bin("certsync-push")
}

/// `cargo build -q -p certsync-push -p certsync-receive` (`--release` for
/// a release run), as the examples do before they spawn the binaries:
/// `cargo run --example` builds only the example.
pub fn build(release: bool) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "certsync-push",
        "-p",
        "certsync-receive",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build of the certsync binaries failed".into());
    }
    Ok(())
}
