//! The per-certificate `hook` (docs/contract.md, "hook"), through the real
//! `certsync-receive` binary: `install` from files and a push through
//! `serve`. The hook is a shell script that records what it was given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certsync_core::report::Step;
use certsync_core::testutil::{KeyKind, TestCa};
use certsync_tests::receiver::{push_session, Mailhost};

const HOST: &str = "mail.example.com";
const ALT: &str = "smtp.example.com";

/// A receiving host whose `[[cert]] mail` runs `script` (sh) as its hook,
/// with `extra` TOML lines in the same `[[cert]]` table. The script gets
/// `$OUT`, a dir for what it records.
struct HookHost {
    host: Mailhost,
    out: PathBuf,
}

impl HookHost {
    fn new(script: &str, extra: &str) -> HookHost {
        let host = Mailhost::new(&[HOST]);
        let out = host.root.path().join("hook-out");
        std::fs::create_dir(&out).unwrap();
        let path = host.root.path().join("hook.sh");
        std::fs::write(
            &path,
            format!("#!/bin/sh\nOUT={}\n{script}\n", sh_quote(&out)),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut toml = std::fs::read_to_string(&host.config).unwrap();
        toml.push_str(&format!("hook = [{path:?}, \"first arg\"]\n{extra}\n"));
        std::fs::write(&host.config, toml).unwrap();
        HookHost { host, out }
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.out.join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap_or_default()
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Records its arguments, its CERTSYNC_* environment and its stdin.
const RECORDER: &str = r#"echo run >> "$OUT/runs"
printf '%s\n' "$@" > "$OUT/args"
env | grep -E '^CERTSYNC_(NAME|CERT_PATH|KEY_PATH|FINGERPRINT|HOSTNAMES)=' | sort > "$OUT/env"
env | grep -c -e '-----BEGIN' -e 'PRIVATE KEY' > "$OUT/pem-in-env"
cat > "$OUT/stdin"
echo "hook says hello""#;

/// `o` exited with `code`; else fail showing everything it said.
fn assert_exit(o: &std::process::Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}{}", stdout(o), stderr(o));
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn install_runs_the_hook_with_env_and_stdin_and_not_on_nothing_to_do_or_dry_run() {
    let ca = TestCa::new();
    let h = HookHost::new(RECORDER, "");
    let leaf = ca.leaf(KeyKind::P256, &[HOST, ALT]);

    // A dry run installs nothing, so runs no hook.
    let dry = h.host.install_leaf(&leaf, &["--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert_eq!(h.runs(), 0, "the hook ran on a dry run");

    let out = h.host.install_leaf(&leaf, &[]);
    assert_exit(&out, 0);
    assert_eq!(h.runs(), 1);
    assert!(stdout(&out).contains("hook done"), "{}", stdout(&out));
    assert!(stderr(&out).contains("hook says hello"), "{}", stderr(&out));

    let env = h.read("env");
    let key_path = h.host.key_path();
    let want = format!(
        "CERTSYNC_CERT_PATH={}\nCERTSYNC_FINGERPRINT={}\nCERTSYNC_HOSTNAMES={HOST} {ALT}\nCERTSYNC_KEY_PATH={}\nCERTSYNC_NAME=mail\n",
        h.host.cert_path().display(),
        leaf.fingerprint(),
        key_path.display(),
    );
    assert_eq!(env, want);
    // The hook inherits the caller's environment (CI sets CERTSYNC_* of its
    // own), so only the five documented names are compared; no variable
    // may carry PEM.
    assert_eq!(
        h.read("pem-in-env"),
        "0\n",
        "key material in the hook's environment"
    );
    assert_eq!(
        h.read("args"),
        "first arg\n",
        "the configured arguments, nothing more"
    );

    // stdin: the report so far, as JSON, with the install step in it and
    // no key material.
    let stdin = h.read("stdin");
    let report: serde_json::Value = serde_json::from_str(&stdin).expect("JSON on stdin");
    assert_eq!(report["name"], "mail");
    assert_eq!(report["leaf"], leaf.fingerprint().to_string());
    assert!(stdin.contains("\"install\""), "{stdin}");
    let key_pem = String::from_utf8_lossy(leaf.key_pem.expose()).into_owned();
    let key_body: String = key_pem.lines().nth(1).unwrap().to_string();
    assert!(
        !stdin.contains(&key_body),
        "key material on the hook's stdin"
    );
    assert!(!env.contains(&key_body));

    // The same pair again: nothing to do, no hook.
    let again = h.host.install_leaf(&leaf, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing to do"),
        "{}",
        stdout(&again)
    );
    assert_eq!(h.runs(), 1, "the hook ran on nothing to do");
}

#[test]
fn a_failing_hook_is_exit_4_with_its_code_and_the_pair_stays_installed() {
    let ca = TestCa::new();
    let h = HookHost::new("echo 'no room on the NAS' >&2\nexit 7", "");
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let out = h.host.install_leaf(&leaf, &[]);
    assert_exit(&out, 4);
    let text = stdout(&out);
    assert!(text.contains("hook failed"), "{text}");
    assert!(text.contains("exited 7"), "{text}");
    assert!(
        text.contains("no room on the NAS"),
        "the hook's stderr is reported: {text}"
    );
    assert_eq!(h.host.installed().unwrap().0, leaf.chain_pem);
}

#[test]
fn a_hook_past_its_time_limit_is_killed_with_its_children() {
    let ca = TestCa::new();
    // The hook starts a child that would outlive it and hold the pipes.
    let h = HookHost::new(
        "(sleep 3; echo late > \"$OUT/late\") &\nsleep 30",
        "hook_timeout = 1",
    );
    let leaf = ca.leaf(KeyKind::P256, &[HOST]);
    let started = Instant::now();
    let out = h.host.install_leaf(&leaf, &[]);
    let took = started.elapsed();
    assert_exit(&out, 4);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(stdout(&out).contains("hook_timeout"), "{}", stdout(&out));
    // Had the child lived, it would have written `late` by now.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(took));
    assert!(
        h.read("late").is_empty(),
        "the hook's child outlived its time limit"
    );
}

#[test]
fn a_relative_or_empty_hook_is_a_config_error() {
    for (hook, says) in [
        ("hook = [\"import-cert\"]", "absolute path"),
        ("hook = []", "empty"),
    ] {
        let host = Mailhost::new(&[HOST]);
        let mut toml = std::fs::read_to_string(&host.config).unwrap();
        toml.push_str(hook);
        std::fs::write(&host.config, toml).unwrap();
        let leaf = TestCa::new().leaf(KeyKind::P256, &[HOST]);
        let out = host.install_leaf(&leaf, &[]);
        assert_eq!(out.status.code(), Some(2), "{hook}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{hook}: {}", stderr(&out));
        assert!(host.nothing_installed(), "{hook}: something was written");
    }
}

#[tokio::test]
async fn a_push_through_serve_runs_the_hook_and_reports_its_exit_code() {
    let ca = TestCa::new();
    let h = HookHost::new(&format!("{RECORDER}\nexit 5"), "");
    let leaf = ca.leaf(KeyKind::P384, &[HOST]);
    let pairs = [("mail", leaf.bundle(), leaf.fingerprint())];
    let first = push_session(h.host.serve_cmd(), &pairs, false, false).await;
    assert_eq!(first.exit, Some(4), "{first:?}");
    let report = first.report.expect("a report");
    let cert = &report.certs[0];
    assert_eq!(
        cert.hook.as_ref().and_then(|o| o.exit_code),
        Some(5),
        "{cert}"
    );
    assert!(
        cert.steps
            .iter()
            .any(|s| s.step == Step::Hook && s.message.contains("exited 5")),
        "{cert}"
    );
    assert_eq!(h.runs(), 1);
    assert!(h
        .read("env")
        .contains(&format!("CERTSYNC_FINGERPRINT={}", leaf.fingerprint())));
    assert_eq!(h.host.installed().unwrap().0, leaf.chain_pem);

    // The same pair again: nothing to do, and the hook does not run.
    let second = push_session(h.host.serve_cmd(), &pairs, false, false).await;
    assert_eq!(second.exit, Some(0), "{second:?}");
    let report = second.report.expect("a report");
    assert!(report.certs[0].nothing_to_do);
    assert!(report.certs[0].hook.is_none());
    assert_eq!(h.runs(), 1, "the hook ran on nothing to do");
}
