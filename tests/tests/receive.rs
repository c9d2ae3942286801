//! Scenarios for the receiving side, driving the real `certsync-receive`
//! binary: install from files (its refusals: golden.rs), the protocol on
//! `serve`'s stdin (hostile input included), handoff to a root `deploy`, and
//! SIGKILL at every step of an install.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use certsync_core::bundle::Bundle;
use certsync_core::testutil::{KeyKind, TestCa};
use certsync_receive::pipeline::install::FAULT_POINTS;
use certsync_tests::receiver::{push_leaf, push_session, Mailhost};
use certsync_tests::{need, needs};

const HOST: &str = "mail.example.com";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn installs_every_key_type_as_real_files_with_modes_and_exact_bytes() {
    let ca = TestCa::new();
    for kind in KeyKind::ALL {
        let host = Mailhost::new(&[HOST]);
        let leaf = ca.leaf(kind, &[HOST, "autodiscover.example.com"]);
        let out = host.install_leaf(&leaf, &[]);
        assert_eq!(out.status.code(), Some(0), "{kind:?}: {}", stderr(&out));
        for (path, mode, bytes) in [
            (host.cert_path(), 0o644, leaf.chain_pem.clone()),
            (host.key_path(), 0o600, leaf.key_pem.expose().to_vec()),
        ] {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(
                meta.file_type().is_file(),
                "{kind:?}: {} is not a regular file",
                path.display()
            );
            assert_eq!(
                meta.mode() & 0o777,
                mode,
                "{kind:?}: mode of {}",
                path.display()
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "{kind:?}: bytes of {}",
                path.display()
            );
        }
        // The same pair again: "nothing to do", files untouched.
        let before = host.snapshot();
        let again = host.install_leaf(&leaf, &[]);
        assert_eq!(again.status.code(), Some(0));
        assert!(
            stderr(&again).contains("nothing to do"),
            "{}",
            stderr(&again)
        );
        assert_eq!(host.snapshot(), before, "{kind:?}: a repeat changed files");
    }
}

#[test]
fn accepts_pkcs1_and_sec1_keys() {
    let ca = TestCa::new();
    for kind in [KeyKind::Rsa2048, KeyKind::P384] {
        let host = Mailhost::new(&[HOST]);
        let leaf = ca.leaf(kind, &[HOST]);
        let (chain, _) = host.files_for(&leaf);
        let key = host.root.path().join("in/traditional.pem");
        std::fs::write(&key, leaf.key_pkcs1_or_sec1()).unwrap();
        let out = host.install(&chain, &key, &[]);
        assert_eq!(out.status.code(), Some(0), "{kind:?}: {}", stderr(&out));
    }
}

// Each refusal of `install` (exit 3, its exact message, nothing written
// over the installed pair, `--force` for the rollback alone) is pinned in
// golden.rs: `every_validation_refusal_as_install_prints_it`.

#[test]
fn dry_run_validates_and_changes_nothing() {
    let ca = TestCa::new();
    let a = ca.leaf(KeyKind::P384, &[HOST]);
    let host = Mailhost::with_installed(&[HOST], &a);
    let b = ca.leaf(KeyKind::P384, &[HOST]);
    let before = host.snapshot();
    let out = host.install_leaf(&b, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would install"));
    assert_eq!(host.snapshot(), before);
    let bad = ca.leaf(KeyKind::P384, &["other.example"]);
    assert_eq!(
        host.install_leaf(&bad, &["--dry-run"]).status.code(),
        Some(3)
    );
}

#[tokio::test]
async fn serve_installs_then_says_nothing_to_do_without_key_material() {
    let ca = TestCa::new();
    let host = Mailhost::new(&[HOST]);
    let leaf = ca.leaf(KeyKind::P384, &[HOST]);
    let pairs = [("mail", leaf.bundle(), leaf.fingerprint())];
    let first = push_session(host.serve_cmd(), &pairs, false, false).await;
    assert_eq!(first.exit, Some(0), "{first:?}");
    assert_eq!(first.bundles_sent, 1);
    let report = first.report.unwrap();
    assert_eq!(report.certs[0].leaf, Some(leaf.fingerprint()));
    assert_eq!(host.installed().unwrap().0, leaf.chain_pem);

    let before = host.snapshot();
    let second = push_session(host.serve_cmd(), &pairs, false, false).await;
    assert_eq!(second.exit, Some(0), "{second:?}");
    assert_eq!(
        second.bundles_sent, 0,
        "key material was sent for an unchanged pair"
    );
    assert!(second.report.unwrap().certs[0].nothing_to_do);
    assert!(second.stderr.contains("nothing to do"), "{}", second.stderr);
    assert_eq!(host.snapshot(), before);
}

#[tokio::test]
async fn serve_refuses_bad_pairs_and_unknown_names_writing_nothing() {
    let ca = TestCa::new();
    let host = Mailhost::new(&[HOST]);
    let a = ca.leaf(KeyKind::Ed25519, &[HOST]);
    let b = ca.leaf(KeyKind::Ed25519, &[HOST]);
    let mixed = Bundle::new(a.chain_pem.clone(), b.key_pem.clone());
    let before = host.snapshot();
    let r = push_session(
        host.serve_cmd(),
        &[("mail", mixed, a.fingerprint())],
        false,
        false,
    )
    .await;
    assert_eq!(r.exit, Some(3), "{r:?}");
    assert_eq!(host.snapshot(), before);
    assert!(host.nothing_installed());
    let r = push_session(
        host.serve_cmd(),
        &[("nosuch", a.bundle(), a.fingerprint())],
        false,
        false,
    )
    .await;
    assert_eq!(r.exit, Some(2), "{r:?}");
    assert_eq!(r.bundles_sent, 0);
    assert_eq!(host.snapshot(), before);
    // A dry run of a good pair: validated, nothing written anywhere.
    let r = push_session(
        host.serve_cmd(),
        &[("mail", a.bundle(), a.fingerprint())],
        true,
        false,
    )
    .await;
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!(host.snapshot(), before);
    assert!(!host.staging.join("mail/privkey.pem").exists());
}

/// Garbage, truncated, oversized and stalled input each end with a clear
/// error and a non-zero exit, within a bounded time, writing nothing.
#[test]
fn hostile_stdin_ends_quickly_with_a_clear_error() {
    let host = Mailhost::new(&[HOST]);
    let before = host.snapshot();
    let mut oversized = vec![1u8];
    oversized.extend_from_slice(&u32::MAX.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "garbage",
            b"SSH-2.0-OpenSSH\r\nrsync --server -logDtprze.iLsfxC . /\n".to_vec(),
            false,
            "not the certsync protocol",
        ),
        (
            "truncated",
            vec![1u8, 0, 0, 0, 50, b'{'],
            false,
            "ended in the middle",
        ),
        ("oversized", oversized, false, "exceeds the limit"),
        ("empty", vec![], false, "closed before"),
        ("stalled", vec![], true, "stalled"),
    ];
    for (what, input, keep_open, needle) in cases {
        let start = Instant::now();
        let mut child = host
            .cmd()
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&input).unwrap();
        let keep = if keep_open {
            Some(stdin)
        } else {
            drop(stdin);
            None
        };
        let out = child.wait_with_output().unwrap();
        drop(keep);
        let elapsed = start.elapsed();
        assert_ne!(out.status.code(), Some(0), "{what}");
        assert!(out.status.code().is_some(), "{what}: killed by a signal");
        let err = stderr(&out);
        assert!(err.contains(needle), "{what}: expected {needle:?} in {err}");
        // read_timeout = 2 s in this config; generous bound for a slow machine.
        assert!(
            elapsed < Duration::from_secs(20),
            "{what}: took {elapsed:?}"
        );
        assert_eq!(host.snapshot(), before, "{what}");
    }
}

/// `deploy = "handoff"`: `serve` runs as an unprivileged user, stages and
/// validates; a root `deploy` (standing in for certsync-deploy.path)
/// installs; `serve` reports the deploy's result back.
#[tokio::test]
async fn handoff_serve_unprivileged_deploy_as_root() {
    let ca = TestCa::new();
    needs!(need::setpriv());
    let host = Mailhost::handoff(&[HOST], "");
    let deployer = host.deployer();
    let leaf = ca.leaf(KeyKind::P384, &[HOST]);
    let r = push_leaf(host.serve_as_nobody(), &leaf).await;
    let log = deployer.log();
    let runs = deployer.finish();
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!(
        runs,
        [Some(0)],
        "root's deploy ran once and succeeded:\n{log}"
    );
    let report = r.report.unwrap();
    let steps: Vec<String> = report.certs[0]
        .steps
        .iter()
        .map(|s| format!("{} {}", s.step, s.status))
        .collect();
    assert!(steps.contains(&"install done".to_string()), "{steps:?}");
    let (chain, key) = host.installed().unwrap();
    assert_eq!(chain, leaf.chain_pem);
    assert_eq!(key, leaf.key_pem.expose());
    let meta = std::fs::metadata(host.key_path()).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    // Nothing is left staged.
    assert!(!host.staging.join("mail/privkey.pem").exists());
}

/// SIGKILL at each named step of an install, one run per step: after the
/// next run a matching pair — the old or the new, never a mix — is installed.
#[test]
fn sigkill_at_every_install_step_leaves_a_matching_pair() {
    let ca = TestCa::new();
    for point in FAULT_POINTS {
        let host = Mailhost::new(&[HOST]);
        let old = ca.leaf(KeyKind::P384, &[HOST]);
        let new = ca.leaf(KeyKind::P384, &[HOST]);
        assert_eq!(host.install_leaf(&old, &[]).status.code(), Some(0));
        let (c, k) = host.files_for(&new);
        let out = host
            .cmd()
            .env("CERTSYNC_FAULT_KILL_AT", point)
            .args(["install", "--name", "mail", "--cert"])
            .arg(&c)
            .arg("--key")
            .arg(&k)
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: the fault point was not reached: {}",
            stderr(&out)
        );
        // The next run (here: deploy, which recovers before anything else).
        let out = host.cmd().arg("deploy").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{point}: {}", stderr(&out));
        let (chain, key) = host.installed().expect("a pair is installed");
        let is_old = chain == old.chain_pem && key == old.key_pem.expose();
        let is_new = chain == new.chain_pem && key == new.key_pem.expose();
        assert!(is_old || is_new, "{point}: a mix is installed");
        eprintln!(
            "{point}: {} after recovery",
            if is_new { "new" } else { "old" }
        );
        // And the interrupted install completes when retried.
        let out = host.install(&c, &k, &[]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", stderr(&out));
        assert_eq!(host.installed().unwrap().0, new.chain_pem);
        assert_eq!(
            std::fs::metadata(host.key_path()).unwrap().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = std::fs::read_dir(&host.ssl)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains("certsync-new") || n.contains("certsync-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
    }
}
