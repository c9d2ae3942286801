//! The committed man pages (docs/man) and shell completions (completions/)
//! are what the clap definitions generate today: regenerate into a temp dir
//! and compare byte for byte. When this fails, run
//! `cargo run -p certsync-tests --example gen-docs` and commit the result.

#[path = "../examples/gen-docs.rs"]
#[allow(dead_code)]
mod gen_docs;

use std::path::Path;

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
