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
