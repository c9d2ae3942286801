//! `reload` entries beyond mailcow (docs/contract.md, "reload entries"),
//! on a real Docker engine: a service of any compose project by label
//! (`"project/service"`), and one container by name (`"container:NAME"`),
//! each with its own `[docker.reload]` command. Stand-in containers record
//! the reload calls made inside them.

use std::collections::BTreeMap;

use certsync_core::config::DockerConfig;
use certsync_receive::systems::docker::{reload, ReloadPlan, ReloadStatus};
use certsync_tests::docker;
use certsync_tests::needs;

#[tokio::test(flavor = "multi_thread")]
async fn any_compose_project_by_label_and_a_container_by_name() {
    needs!(let d = docker::engine());
    // A shop's compose project with an SMTP relay service, and another
    // project on the same host with a service of the same name.
    let shop = d.stand_in("shop-smtp-1", "shop", "smtp", 0);
    let decoy = d.stand_in("billing-smtp-1", "billing", "smtp", 0);
    // A container started by `docker run --name edge-relay`; its compose
    // labels here are not what selects it. `old-edge-relay` must not
    // match (Docker's name filter matches substrings).
    let edge = d.stand_in("edge-relay", "misc", "whatever", 0);
    let old_edge = d.stand_in("old-edge-relay", "misc", "other", 0);

    let docker = DockerConfig {
        socket: Some(d.socket().to_path_buf()),
        // Configured for mailcow: a `project/service` entry overrides it.
        project: Some("mailcowdockerized".into()),
        reload: BTreeMap::from([
            ("smtp".to_string(), vec!["postfix".into(), "reload".into()]),
            (
                "container:edge-relay".to_string(),
                vec!["dovecot".into(), "reload".into()],
            ),
        ]),
    };
    let entries = ["shop/smtp".to_string(), "container:edge-relay".to_string()];
    let plan = ReloadPlan::from_config(&docker, &entries).unwrap();
    let outcomes = reload(&plan, false).await.unwrap();

    let by = |entry: &str| outcomes.iter().find(|o| o.service == entry).unwrap();
    let smtp = by("shop/smtp");
    assert_eq!(smtp.status, ReloadStatus::Reloaded, "{smtp:?}");
    assert_eq!(smtp.containers, ["shop-smtp-1"]);
    let relay = by("container:edge-relay");
    assert_eq!(relay.status, ReloadStatus::Reloaded, "{relay:?}");
    assert_eq!(relay.containers, ["edge-relay"]);

    assert_eq!(shop.calls(), ["postfix reload"]);
    assert_eq!(edge.calls(), ["dovecot reload"]);
    assert!(
        decoy.calls().is_empty(),
        "another project's smtp was reloaded"
    );
    assert!(
        old_edge.calls().is_empty(),
        "a container whose name only contains the name was reloaded"
    );

    // A name that matches nothing is reported, never skipped.
    let missing = ReloadPlan::from_config(
        &DockerConfig {
            reload: BTreeMap::from([(
                "container:edge".to_string(),
                vec!["postfix".into(), "reload".into()],
            )]),
            ..docker.clone()
        },
        &["container:edge".to_string()],
    )
    .unwrap();
    let outcomes = reload(&missing, false).await.unwrap();
    assert_eq!(outcomes[0].status, ReloadStatus::Missing, "{outcomes:?}");
    assert!(outcomes[0]
        .message
        .contains("no container is named \"edge\""));
}

#[test]
fn a_malformed_reload_entry_is_a_config_error_and_nothing_is_written() {
    use certsync_core::testutil::{KeyKind, TestCa};
    use certsync_tests::receiver::Mailhost;
    for entry in ["shop/smtp/x", "container:", "/smtp"] {
        let host = Mailhost::new(&["mail.example.com"]);
        let toml = std::fs::read_to_string(&host.config)
            .unwrap()
            .replace("reload = []", &format!("reload = [{entry:?}]"));
        std::fs::write(&host.config, toml).unwrap();
        let leaf = TestCa::new().leaf(KeyKind::P256, &["mail.example.com"]);
        let out = host.install_leaf(&leaf, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{entry}: {err}");
        assert!(err.contains("project/service"), "{entry}: {err}");
        assert!(host.nothing_installed(), "{entry}");
    }
}

/// A `reload` entry with no command (none under `[docker.reload]`, an
/// empty one, and not one of mailcow's services) is refused when
/// receive.toml loads, with exit 2 and what to add, before anything is
/// installed; before, the pair was installed and the reload failed with
/// exit 4. Entries that have a command still load.
#[test]
fn a_reload_entry_without_a_command_is_a_config_error_and_nothing_is_written() {
    use certsync_core::testutil::{KeyKind, TestCa};
    use certsync_receive::settings::Settings;
    use certsync_tests::receiver::Mailhost;
    let cases = [
        ("shop/smtp", ""),
        ("container:edge-relay", ""),
        ("redis-mailcow", ""),
        ("smtp", "[docker.reload]\n\"smtp\" = []\n"),
    ];
    for (entry, extra) in cases {
        let host = Mailhost::with_extra(&["mail.example.com"], extra);
        let toml = std::fs::read_to_string(&host.config)
            .unwrap()
            .replace("reload = []", &format!("reload = [{entry:?}]"));
        std::fs::write(&host.config, toml).unwrap();
        let before = host.snapshot();
        let leaf = TestCa::new().leaf(KeyKind::P256, &["mail.example.com"]);
        let out = host.install_leaf(&leaf, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{entry}: {err}");
        for needle in [
            host.config.display().to_string(),
            "[[cert]] \"mail\"".to_string(),
            format!("reload entry {entry:?} has no reload command"),
            format!("`\"{entry}\" = [\"program\", \"argument\"]` under [docker.reload]"),
        ] {
            assert!(err.contains(&needle), "{entry}: {needle:?} not in {err}");
        }
        assert!(host.nothing_installed(), "{entry}");
        assert_eq!(host.snapshot(), before, "{entry}: something was written");
        assert!(!host.staging.exists(), "{entry}: the staging dir was made");
    }
    // With a command, configured or mailcow's own, the same entries load.
    let extra = "[docker.reload]\n\"smtp\" = [\"postfix\", \"reload\"]\n\
                 \"container:edge-relay\" = [\"nginx\", \"-s\", \"reload\"]\n";
    let host = Mailhost::with_extra(&["mail.example.com"], extra);
    let toml = std::fs::read_to_string(&host.config).unwrap().replace(
        "reload = []",
        "reload = [\"shop/smtp\", \"container:edge-relay\", \"postfix-mailcow\"]",
    );
    std::fs::write(&host.config, toml).unwrap();
    let settings = Settings::load(&host.config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.certs[0].reload.len(), 3);
}

#[test]
fn a_malformed_reload_unit_is_a_config_error_and_nothing_is_written() {
    use certsync_core::testutil::{KeyKind, TestCa};
    use certsync_tests::receiver::Mailhost;
    for unit in ["--now", "postfix", "../x.service"] {
        let host = Mailhost::new(&["mail.example.com"]);
        let toml = std::fs::read_to_string(&host.config).unwrap().replace(
            "reload = []",
            &format!("reload = []\nreload_units = [{unit:?}]"),
        );
        std::fs::write(&host.config, toml).unwrap();
        let leaf = TestCa::new().leaf(KeyKind::P256, &["mail.example.com"]);
        let out = host.install_leaf(&leaf, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{unit}: {err}");
        assert!(err.contains("not a systemd unit name"), "{unit}: {err}");
        assert!(host.nothing_installed(), "{unit}");
    }
}

/// examples/receive-debian.toml (a plain Debian mail host) loads and
/// resolves to its units, with no container to reload.
#[test]
fn the_debian_host_example_loads() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/receive-debian.toml");
    let raw = certsync_core::config::ReceiveConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let settings =
        certsync_receive::settings::Settings::resolve(raw, &path).unwrap_or_else(|e| panic!("{e}"));
    let cert = &settings.certs[0];
    assert_eq!(cert.reload_units, ["postfix@-.service", "dovecot.service"]);
    assert!(cert.reload.is_empty());
    assert_eq!(cert.verify.len(), 3);
}
