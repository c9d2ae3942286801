//! The README's worked example, end to end (issue 15): a certbot-style
//! renewal on the pushing host; certsync pushes to a receiving host whose
//! `hook` imports the pair into a stand-in "platform" (a local HTTP
//! service that accepts the base64 pair, as a secret store would); the
//! receiver's `[notify]` POSTs the result. Real binaries, real curl.

use base64_check::decode;
use certsync_core::testutil::{KeyKind, TestCa};
use certsync_tests::httpsink::HttpSink;
use certsync_tests::npmhost::{local_target, NpmHost};
use certsync_tests::receiver::Mailhost;
use certsync_tests::{need, needs};

const HOST: &str = "smtp.example.com";

/// The hook of the README, with the platform's URL filled in.
fn hook_script(platform: &str) -> String {
    format!(
        r#"#!/bin/sh
set -eu
cert=$(base64 -w0 "$CERTSYNC_CERT_PATH")
key=$(base64 -w0 "$CERTSYNC_KEY_PATH")
curl -fsS --max-time 10 -H 'Content-Type: application/json' \
  --data-binary @- {platform} <<EOF
{{"name": "$CERTSYNC_NAME", "cert": "$cert", "key": "$key", "fingerprint": "$CERTSYNC_FINGERPRINT"}}
EOF
"#
    )
}

mod base64_check {
    /// Standard base64 (with padding), for the test's own check.
    pub fn decode(s: &str) -> Vec<u8> {
        let val = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => (c - b'A') as u32,
                b'a'..=b'z' => (c - b'a' + 26) as u32,
                b'0'..=b'9' => (c - b'0' + 52) as u32,
                b'+' => 62,
                b'/' => 63,
                _ => panic!("not base64: {c}"),
            }
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= val(c) << (18 - 6 * i);
            }
            let k = chunk.len() - 1;
            for i in 0..k {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}

#[test]
fn a_renewal_reaches_the_platform_through_the_hook_and_a_person_through_notify() {
    needs!(need::curl());
    let platform = HttpSink::start();
    let notify = HttpSink::start();
    let ca = TestCa::new();
    let first = ca.leaf(KeyKind::P256, &[HOST]);

    let mail = Mailhost::with_extra(
        &[HOST],
        &format!("[notify]\nwebhook = {:?}\n", notify.url("/certsync")),
    );
    let hook = mail.root.path().join("certsync-to-platform");
    std::fs::write(&hook, hook_script(&platform.url("/api/secrets/smtp-tls"))).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut toml = std::fs::read_to_string(&mail.config).unwrap();
    toml.push_str(&format!("hook = [{hook:?}]\nhook_timeout = 30\n"));
    std::fs::write(&mail.config, toml).unwrap();

    let mut npm = NpmHost::new(&first);
    npm.write_config(&npm.cert_source(), &[local_target("smtp", &mail)]);
    let run = npm.run(&["push"]);
    run.assert_code(0);
    assert_eq!(platform.wait_for(1).len(), 1);

    // certbot renews: a new generation in archive/, the live links moved.
    let renewed = ca.leaf(KeyKind::P384, &[HOST]);
    npm.live.renew(&renewed);
    let run = npm.run(&["push"]);
    run.assert_code(0);

    let got = platform.wait_for(2);
    assert_eq!(got.len(), 2, "the platform got one import per install");
    let import = got[1].json();
    assert_eq!(import["name"], "mail");
    assert_eq!(import["fingerprint"], renewed.fingerprint().to_string());
    assert_eq!(decode(import["cert"].as_str().unwrap()), renewed.chain_pem);
    assert_eq!(
        decode(import["key"].as_str().unwrap()),
        renewed.key_pem.expose(),
        "the platform holds exactly the new key"
    );

    let told = notify.wait_for(2);
    assert_eq!(told.len(), 2, "one notification per install");
    let n = told[1].json();
    assert_eq!(n["event"], "install");
    assert_eq!(
        n["details"]["certs"][0]["leaf"],
        renewed.fingerprint().to_string()
    );
    assert_eq!(n["details"]["certs"][0]["hook"]["exit_code"], 0);

    // A push with nothing new: no import, no notification.
    let run = npm.run(&["push"]);
    run.assert_code(0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(platform.requests().len(), 2);
    assert_eq!(notify.requests().len(), 2);
}
