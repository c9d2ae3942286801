//! The systemd units in `systemd/` and the example configs in `examples/`.
//!
//! What ships to operators must be checked like code:
//! - `systemd-analyze verify` accepts every unit (the real tool, not a
//!   re-implementation), against a throw-away root so the units are checked
//!   exactly as installed, with stand-ins for the two certsync binaries;
//! - `systemd-analyze security --offline` scores every service below a
//!   budget, and each service carries the hardening directives we promise;
//! - the units agree with docs/contract.md ("systemd units and hooks") and `certsync_core`
//!   (binaries, subcommands, config and state paths, the handoff request
//!   file);
//! - `examples/push.toml` and `examples/receive.toml` load with the real
//!   config loaders, including the alternatives shown in their comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use certsync_core::config::{
    DeployMode, PushConfig, ReceiveConfig, TransportKind, DEFAULT_PUSH_CONFIG,
    DEFAULT_PUSH_STATE_DIR, DEFAULT_RECEIVE_CONFIG, DEFAULT_STAGING_DIR,
};
use certsync_tests::need::{self, Missing, Need};
use certsync_tests::needs;

/// Every unit we ship. A unit added to `systemd/` must be listed here (and so
/// get the checks below); a listed unit that disappears fails the test.
const UNITS: &[&str] = &[
    "certsync-push.service",
    "certsync-push.timer",
    "certsync-push.path",
    "certsync-push-watch.service",
    "certsync-deploy.service",
    "certsync-deploy.path",
    "certsync-deploy.timer",
    "certsync-check.service",
    "certsync-check.timer",
    "certsync-push-failure@.service",
    "certsync-receive-failure@.service",
];

/// The OnFailure= templates: they run the admin's own notifier, so they
/// are not sandboxed (see their comments) and are left out of the
/// hardening checks.
const FAILURE_HOOKS: &[&str] = &[
    "certsync-push-failure@.service",
    "certsync-receive-failure@.service",
];

/// The file `serve` writes in handoff mode and certsync-deploy.path waits for.
const DEPLOY_REQUEST: &str = "deploy.request";

const MAILCOW_SSL_DIR: &str = "/opt/mailcow-dockerized/data/assets/ssl";

/// Highest acceptable `systemd-analyze security` exposure per service (0 is
/// best, 10 worst; systemd calls < 2.0 "OK" and < 5.0 "MEDIUM"). Measured
/// with systemd 252: push/watch/check 1.6, deploy 2.1 (root with
/// CAP_DAC_OVERRIDE only, no PrivateUsers).
const EXPOSURE_BUDGET: &[(&str, f64)] = &[
    ("certsync-push.service", 1.8),
    ("certsync-push-watch.service", 1.8),
    ("certsync-check.service", 1.8),
    ("certsync-deploy.service", 2.3),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the workspace")
        .to_path_buf()
}

fn unit_path(name: &str) -> PathBuf {
    workspace().join("systemd").join(name)
}

/// A unit file as systemd reads it: `(section, key, value)` in order. Only
/// whole-line comments exist in unit files (`#` or `;`); a `#` after a value
/// is part of the value, which is why the units never put one there.
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(name: &str) -> Unit {
        let path = unit_path(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut entries = Vec::new();
        let mut section = String::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{name}:{}: keep directives on one line",
                n + 1
            );
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}:{}: not key=value: {line}", n + 1));
            assert!(
                !section.is_empty(),
                "{name}:{}: key before a section",
                n + 1
            );
            assert!(
                !v.contains(" #"),
                "{name}:{}: systemd has no trailing comments; this becomes part of the value: {line}",
                n + 1
            );
            entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
        Unit {
            name: name.to_string(),
            entries,
        }
    }

    /// Every value of `key` in `section`, in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The single value of `key` in `section`.
    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key).as_slice() {
            [v] => v,
            other => panic!(
                "{}: expected exactly one [{section}] {key}=, found {other:?}",
                self.name
            ),
        }
    }

    /// A list-valued setting (space-separated, may be repeated), as a set.
    fn set(&self, section: &str, key: &str) -> BTreeSet<String> {
        self.all(section, key)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(str::to_string)
            .collect()
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The host's systemd unit directory (sysinit.target, timers.target, …),
/// which `verify --root` needs inside the root to build start transactions.
fn host_unit_dir() -> Option<PathBuf> {
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("sysinit.target").exists())
}

/// systemd-analyze and the host units it needs:
/// `needs!(let (tool, host_units) = analyze_tools())`.
fn analyze_tools() -> Need<(PathBuf, PathBuf)> {
    let missing = || {
        Missing("systemd-analyze with the systemd unit directory (apt-get install systemd)".into())
    };
    let tool = need::program("systemd-analyze").ok_or_else(missing)?;
    let units = host_unit_dir().ok_or_else(missing)?;
    Ok((tool, units))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A throw-away root holding the host's system units, our units where the
/// package installs them (/lib/systemd/system), stand-ins for the two
/// certsync binaries (verify checks that ExecStart= is executable; what it
/// does is tested elsewhere), and a copy of every other program the units
/// run, which must exist on the host.
fn verify_root(host_units: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let unit_dir = root.path().join("usr/lib/systemd/system");
    copy_tree(host_units, &unit_dir);
    for name in UNITS {
        std::fs::copy(unit_path(name), unit_dir.join(name)).unwrap();
    }
    for bin in ["certsync-push", "certsync-receive"] {
        write_executable(
            &root.path().join("usr/bin").join(bin),
            "#!/bin/sh\nexit 0\n",
        );
    }
    for name in UNITS {
        let unit = Unit::load(name);
        for (_, key, value) in &unit.entries {
            if !key.starts_with("Exec") {
                continue;
            }
            let program = value.split_whitespace().next().unwrap_or_default();
            let program = program.trim_start_matches(['-', '@', ':', '+', '!']);
            if program.starts_with("/usr/bin/certsync-") {
                continue;
            }
            let host = Path::new(program);
            assert!(
                host.is_file(),
                "{name}: {key}={value}: {program} does not exist on this host"
            );
            let inside = root.path().join(program.trim_start_matches('/'));
            std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
            std::fs::copy(host, inside).unwrap();
        }
    }
    root
}

#[test]
fn systemd_analyze_verify_accepts_every_unit() {
    needs!(let (tool, host_units) = analyze_tools());
    let root = verify_root(&host_units);
    // A template is verified through an instance (systemd-analyze cannot
    // load `name@.service` itself).
    let files: Vec<PathBuf> = UNITS
        .iter()
        .map(|u| {
            let dir = root.path().join("usr/lib/systemd/system");
            match u.strip_suffix("@.service") {
                Some(t) => {
                    let inst = dir.join(format!("{t}@certsync-push.service.service"));
                    std::fs::copy(dir.join(u), &inst).unwrap();
                    inst
                }
                None => dir.join(u),
            }
        })
        .collect();
    let out = Command::new(&tool)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify only warns (exit 0) about unknown keys and bad values it
    // ignores, so any output at all is a failure.
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify ({}):\n{stdout}{stderr}",
        out.status
    );
}

#[test]
fn systemd_analyze_verify_catches_a_broken_unit() {
    // The verify test above is only worth something if this setup makes
    // systemd-analyze complain: a misspelt directive must show up.
    needs!(let (tool, host_units) = analyze_tools());
    let root = verify_root(&host_units);
    let unit = root
        .path()
        .join("usr/lib/systemd/system/certsync-check.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&unit, text.replace("PrivateTmp=yes", "PrivateTpm=yes")).unwrap();
    let out = Command::new(&tool)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PrivateTpm"), "no complaint: {stderr}");
}

#[test]
fn systemd_analyze_security_exposure_is_within_budget() {
    needs!(let (tool, host_units) = analyze_tools());
    let root = verify_root(&host_units);
    let mut report = Vec::new();
    for (unit, budget) in EXPOSURE_BUDGET {
        let out = Command::new(&tool)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.path().display()))
            .arg(root.path().join("usr/lib/systemd/system").join(unit))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let marker = format!("Overall exposure level for {unit}: ");
        let score: f64 = stdout
            .lines()
            .find_map(|l| l.split_once(&marker))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level for {unit} ({}):\n{stdout}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        eprintln!("{unit}: exposure {score}");
        if score > *budget {
            report.push(format!("{unit}: {score} > {budget}\n{stdout}"));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn every_service_has_the_hardening_directives() {
    let required = [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("AmbientCapabilities", ""),
    ];
    let services: Vec<&str> = UNITS
        .iter()
        .copied()
        .filter(|u| u.ends_with(".service") && !FAILURE_HOOKS.contains(u))
        .collect();
    assert_eq!(services.len(), EXPOSURE_BUDGET.len());
    for name in services {
        let unit = Unit::load(name);
        for (key, value) in required {
            assert_eq!(unit.one("Service", key), value, "{name}: {key}=");
        }
        // Read-only where the service only reads (an NPM or mailcow dir
        // under /root or /home must stay visible); hidden for the one that
        // writes (`certsync-receive units` opens it read-only when an
        // install dir is there).
        let home = if name == "certsync-deploy.service" {
            "yes"
        } else {
            "read-only"
        };
        assert_eq!(unit.one("Service", "ProtectHome"), home, "{name}");
        // A failure reaches the admin's notifier.
        let side = if name.starts_with("certsync-push") {
            "push"
        } else {
            "receive"
        };
        assert_eq!(
            unit.one("Unit", "OnFailure"),
            format!("certsync-{side}-failure@%n.service"),
            "{name}"
        );
        // An allow list first; later lines may only take away from it.
        let filters = unit.all("Service", "SystemCallFilter");
        assert_eq!(filters.first(), Some(&"@system-service"), "{name}");
        assert!(filters[1..].iter().all(|f| f.starts_with('~')), "{name}");

        let caps = unit.set("Service", "CapabilityBoundingSet");
        let writable = unit.set("Service", "ReadWritePaths");
        if name == "certsync-deploy.service" {
            // Root reads and writes the staging dir owned by certsync, and
            // installs into mailcow's ssl dir: nothing more. It never
            // chowns and chmods only what it created (docs/security.md).
            assert_eq!(caps, set(&["CAP_DAC_OVERRIDE"]), "{name}");
            assert_eq!(
                writable,
                set(&[&format!("-{MAILCOW_SSL_DIR}"), DEFAULT_STAGING_DIR])
            );
            assert!(
                unit.all("Service", "StateDirectory").is_empty(),
                "{name}: StateDirectory= would chown the staging dir to root"
            );
        } else {
            // Present and empty: root without any capability.
            assert_eq!(unit.all("Service", "CapabilityBoundingSet"), [""], "{name}");
            assert!(writable.is_empty(), "{name}: {writable:?}");
            assert_eq!(unit.one("Service", "PrivateUsers"), "yes", "{name}");
        }
    }
}

#[test]
fn units_follow_the_contract() {
    let units: BTreeMap<&str, Unit> = UNITS.iter().map(|u| (*u, Unit::load(u))).collect();
    let present: BTreeSet<String> = std::fs::read_dir(workspace().join("systemd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(present, set(UNITS), "systemd/ and UNITS disagree");

    let push = format!("/usr/bin/certsync-push --config {DEFAULT_PUSH_CONFIG}");
    let receive = format!("/usr/bin/certsync-receive --config {DEFAULT_RECEIVE_CONFIG}");
    let exec = |u: &str| units[u].one("Service", "ExecStart");
    assert_eq!(exec("certsync-push.service"), format!("{push} push"));
    assert_eq!(exec("certsync-push-watch.service"), format!("{push} watch"));
    assert_eq!(exec("certsync-deploy.service"), format!("{receive} deploy"));
    assert_eq!(
        exec("certsync-check.service"),
        format!("{receive} check --warn-days 14")
    );
    for u in [
        "certsync-push.service",
        "certsync-deploy.service",
        "certsync-check.service",
    ] {
        assert_eq!(units[u].one("Service", "Type"), "oneshot", "{u}");
    }

    // The push units keep their state where PushConfig::state_dir() says.
    for u in ["certsync-push.service", "certsync-push-watch.service"] {
        let dir = units[u].one("Service", "StateDirectory");
        assert_eq!(format!("/var/lib/{dir}"), DEFAULT_PUSH_STATE_DIR, "{u}");
    }

    // The watch daemon: sd_notify, watchdog, reload, and exclusive with the
    // .path/.timer pair.
    let watch = &units["certsync-push-watch.service"];
    assert_eq!(watch.one("Service", "Type"), "notify");
    assert!(!watch.one("Service", "WatchdogSec").is_empty());
    assert_eq!(watch.one("Service", "Restart"), "on-failure");
    // The shell's kill: /bin/kill (procps) is not on every host.
    assert_eq!(
        watch.one("Service", "ExecReload"),
        "/bin/sh -c 'kill -HUP \"$MAINPID\"'"
    );
    assert_eq!(
        watch.set("Unit", "Conflicts"),
        set(&["certsync-push.path", "certsync-push.timer"])
    );

    // The handoff request file `serve` writes.
    assert_eq!(
        units["certsync-deploy.path"].one("Path", "PathExists"),
        format!("{DEFAULT_STAGING_DIR}/{DEPLOY_REQUEST}")
    );

    // Every trigger names a unit we ship, and can be enabled.
    for (name, unit) in &units {
        let section = match name.rsplit_once('.') {
            Some((_, "timer")) => "Timer",
            Some((_, "path")) => "Path",
            _ => continue,
        };
        let target = unit.one(section, "Unit");
        assert!(
            units.contains_key(target),
            "{name}: Unit={target} is not shipped"
        );
        assert!(!unit.one("Install", "WantedBy").is_empty(), "{name}");
    }
    for timer in [
        "certsync-push.timer",
        "certsync-deploy.timer",
        "certsync-check.timer",
    ] {
        assert_eq!(units[timer].one("Timer", "Persistent"), "true", "{timer}");
        assert!(!units[timer].one("Timer", "RandomizedDelaySec").is_empty());
    }
}

fn example(name: &str) -> (PathBuf, String) {
    let path = workspace().join("examples").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

/// Turn `# key = …` lines back on, and `key = …` lines off.
fn toggle(text: &str, on: &[&str], off: &[&str]) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let bare = line.trim_start_matches("# ");
        let key = bare.split([' ', '=']).next().unwrap_or_default();
        if line.starts_with("# ") && on.contains(&key) {
            out.push_str(bare);
        } else if !line.starts_with('#') && off.contains(&key) {
            out.push_str("# ");
            out.push_str(line);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn example_push_config_loads() {
    let (path, text) = example("push.toml");
    let cfg = PushConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.state_dir(), Path::new(DEFAULT_PUSH_STATE_DIR));
    let target = &cfg.targets[0];
    assert_eq!(target.transport, TransportKind::Ssh);
    assert_eq!(
        cfg.certs_for(target)
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["mail"]
    );
    // certsync-push.path watches the example's live dir.
    let watched = Unit::load("certsync-push.path");
    assert_eq!(
        Some(Path::new(watched.one("Path", "PathChanged"))),
        cfg.certs[0].source.as_deref()
    );

    // The alternatives shown in comments are real keys that load.
    let by_domain = toggle(&text, &["live_root", "domain"], &["source"]);
    let cfg = PushConfig::from_toml(&by_domain, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.certs[0].live_root.is_some() && cfg.certs[0].domain.is_some());
    // certbot's live dir and NPM's uploaded certificates.
    assert_eq!(cfg.certs[0].live_root.as_ref().unwrap().paths().len(), 2);

    let pinned = toggle(&text, &["host_key"], &["known_hosts"]);
    let cfg = PushConfig::from_toml(&pinned, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.targets[0].host_key.is_some());

    let local = toggle(&text, &["transport", "command"], &[]);
    let cfg = PushConfig::from_toml(&local, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.targets[0].transport, TransportKind::Local);

    // And the toggling is not vacuous: both a source and a domain is refused.
    let both = toggle(&text, &["live_root", "domain"], &[]);
    assert!(PushConfig::from_toml(&both, &path).is_err());
}

#[test]
fn example_receive_config_loads() {
    let (path, text) = example("receive.toml");
    let cfg = ReceiveConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.deploy, DeployMode::Handoff);
    assert_eq!(cfg.staging_dir(), Path::new(DEFAULT_STAGING_DIR));
    let cert = &cfg.certs[0];
    for p in [&cert.cert_path, &cert.key_path] {
        let p = p.as_deref().unwrap();
        assert_eq!(
            p.parent(),
            Some(Path::new(MAILCOW_SSL_DIR)),
            "certsync-deploy.service can write only {MAILCOW_SSL_DIR}"
        );
    }
    let docker = cfg.docker.as_ref().unwrap();
    for service in cert.reload.as_ref().unwrap() {
        assert!(docker.reload_command(service).is_some(), "{service}");
        assert_eq!(
            docker.reload_command(service),
            certsync_receive::systems::mailcow::reload_command(service),
            "the example lists the built-in default for {service}"
        );
    }

    // The pusher's example names a cert the receiver's example knows.
    let (push_path, _) = example("push.toml");
    let push = PushConfig::load(&push_path).unwrap();
    assert!(push
        .certs
        .iter()
        .all(|p| cfg.certs.iter().any(|r| r.name == p.name)));

    // The DANE keys shown in comments are real keys that load.
    let dane = toggle(
        &text,
        &["dane", "dane_ports", "dane_deadline_days", "dns_resolver"],
        &[],
    );
    let cfg = ReceiveConfig::from_toml(&dane, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.dane_ports, [465, 587]);
    assert_eq!(cfg.dane_deadline_days, Some(7));
    assert!(cfg.dns_resolver.is_some());

    let preset = toggle(&text, &["[mailcow]", "dir"], &[]);
    let cfg = ReceiveConfig::from_toml(&preset, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.mailcow.is_some());
}

#[test]
fn docs_name_every_unit() {
    let path = workspace().join("docs/systemd.md");
    let text = std::fs::read_to_string(&path).unwrap();
    for unit in UNITS {
        assert!(
            text.contains(&format!("`{unit}`")),
            "{} does not describe {unit}",
            path.display()
        );
    }
}
