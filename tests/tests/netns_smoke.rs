//! The two-host harness itself: the hosts reach each other over the veth
//! link and nothing else.

use certsync_tests::netns::TwoHosts;
use certsync_tests::{need, needs};

#[test]
fn two_hosts_talk_over_their_link_only() {
    needs!(need::netns(), need::busybox());
    let hosts = TwoHosts::create();
    let listener = hosts
        .mailcow
        .command("busybox")
        .args(["nc", "-l", "-p", "2525", "-w", "5"])
        .stdout(std::process::Stdio::piped())
        .spawn();
    let listener = listener.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = hosts
        .npm
        .command("sh")
        .arg("-c")
        .arg(format!(
            "echo hello | busybox nc -w 3 {} 2525",
            hosts.mailcow.addr
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = listener.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello");
    // The NPM host has no route anywhere else.
    let routes = hosts.npm.command("ip").args(["route"]).output().unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(!routes.contains("default"), "{routes}");
}
