//! The one-command demo: certsync's whole chain on an embedded default.
//!
//! `cargo run -p certsync-tests --example demo` builds both binaries, then,
//! in a temp dir:
//!
//! 1. makes a test CA and a certbot-style live dir `live/npm-5` (ECDSA
//!    P-384, NPM's default) on the "NPM host";
//! 2. makes a "mailcow host": an ssl dir, a receive.toml, and a TLS server
//!    on 127.0.0.1 that serves whatever pair is installed (standing in for
//!    nginx/postfix/dovecot after a reload);
//! 3. starts a real OpenSSH sshd on loopback whose authorized_keys runs
//!    `certsync-receive serve` as a restricted forced command — or, when
//!    sshd is not installed, uses the local transport;
//! 4. pushes, pushes again ("nothing to do"), renews the certificate the way
//!    certbot does, pushes, and prints the three SHA-256 fingerprints an
//!    operator compares: the source, the installed file, the one served.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use certsync_core::bundle::parse_chain;
use certsync_core::testutil::{KeyKind, TestCa};
use certsync_core::Fingerprint;
use certsync_receive::systems::probe::{served_leaf, Endpoint};
use certsync_tests::e2e::serve_installed;
use certsync_tests::livedir::LiveDir;
use certsync_tests::{bins, sshd};

const HOST: &str = "mail.example.test";

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn leaf_fp_of_file(path: &Path) -> Result<Fingerprint, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = parse_chain(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(certsync_core::bundle::leaf_fingerprint(&certs[0]))
}

fn run_push(config: &Path, what: &str) -> Result<(), String> {
    println!(
        "\n$ certsync-push --config {} push    # {what}",
        config.display()
    );
    let start = Instant::now();
    let out = Command::new(bins::push())
        .arg("--config")
        .arg(config)
        .arg("push")
        .env("CERTSYNC_LOG", "info")
        .output()
        .map_err(|e| format!("cannot run certsync-push: {e}"))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    // The full log is on stderr; show the lines an operator looks for.
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.contains("nothing to do") || line.contains("ERROR") || line.contains("WARN") {
            println!(
                "  | {}",
                line.split_once("  ").map_or(line, |(_, rest)| rest.trim())
            );
        }
    }
    println!(
        "  (exit {}, {} ms)",
        out.status.code().unwrap_or(-1),
        start.elapsed().as_millis()
    );
    if !out.status.success() {
        return Err(format!("certsync-push failed ({what})"));
    }
    Ok(())
}

fn fingerprints(live: &LiveDir, installed: &Path, port: u16) -> Result<bool, String> {
    let source = leaf_fp_of_file(&live.link("fullchain"))?;
    let file = leaf_fp_of_file(installed)?;
    let endpoint = Endpoint::parse(&format!("127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    let served = served_leaf(&endpoint, HOST, Duration::from_secs(5))
        .map_err(|e| e.to_string())?
        .fingerprint;
    println!("\n  source    (NPM live/npm-5/fullchain.pem): {source}");
    println!("  installed (mailcow ssl/cert.pem)        : {file}");
    println!("  served    (TLS on 127.0.0.1:{port:<5})      : {served}");
    let same = source == file && file == served;
    println!("  => {}", if same { "all three match" } else { "MISMATCH" });
    Ok(same)
}

fn run() -> Result<(), String> {
    println!("certsync demo: NPM host -> mailcow host, in a temp dir\n");
    bins::build(false)?;
    let root = tempfile::Builder::new()
        .prefix("certsync-demo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let npm = root.path().join("npm");
    let mailcow = root.path().join("mailcow");
    let ssl = mailcow.join("data/assets/ssl");
    std::fs::create_dir_all(&ssl).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&npm).map_err(|e| e.to_string())?;

    let ca = TestCa::new();
    let mut live = LiveDir::new(&npm, "npm-5", &ca.leaf(KeyKind::P384, &[HOST]));
    println!(
        "NPM host:     {} (certbot-style symlinks, ECDSA P-384)",
        live.dir().display()
    );

    let cert = ssl.join("cert.pem");
    let key = ssl.join("key.pem");
    let port = serve_installed(cert.clone(), key.clone()).map_err(|e| e.to_string())?;
    let receive_toml = mailcow.join("receive.toml");
    std::fs::write(
        &receive_toml,
        format!(
            "staging_dir = {staging:?}\n# No DNS here: the DANE guard (docs/contract.md) is off.\ndane = \"off\"\n# The demo's private test CA, trusted besides the system store.\nca_file = {ca_file:?}\n\n[[cert]]\nname = \"mail\"\nhostnames = [\"{HOST}\"]\ncert_path = {cert:?}\nkey_path = {key:?}\nreload = []\nverify = [\"127.0.0.1:{port}\"]\n",
            staging = mailcow.join("staging"),
            ca_file = certsync_tests::receiver::write_test_ca(&mailcow),
        ),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "mailcow host: {} (a TLS server on 127.0.0.1:{port} serves it)",
        ssl.display()
    );

    let receive_cmd = format!(
        "{} --config {} serve",
        bins::receive().display(),
        receive_toml.display()
    );
    let push_toml = npm.join("push.toml");
    let _sshd;
    let target = if sshd::available() {
        let id = npm.join("id_ed25519");
        let kg = certsync_push::keygen::keygen(&id, "certsync-demo").map_err(|e| e.to_string())?;
        let line = format!("command=\"{receive_cmd}\",restrict {}", kg.public_line);
        let server = sshd::Sshd::builder().authorized_key(&line).start();
        let known = server.write_known_hosts("known_hosts", &[server.known_hosts_line()]);
        println!("transport:    real OpenSSH sshd on 127.0.0.1:{}, forced command:\n              {line}", server.port());
        let t = format!(
            "[[target]]\nname = \"mailcow\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\nidentity = {id:?}\nknown_hosts = {known:?}\n",
            port = server.port(),
            user = server.user(),
        );
        _sshd = Some(server);
        t
    } else {
        println!("transport:    local (sshd is not installed: apt-get install openssh-server for the SSH path)");
        _sshd = None;
        certsync_tests::npmhost::local_target_for("mailcow", &receive_toml)
    };
    std::fs::write(
        &push_toml,
        format!(
            "state_dir = {state:?}\n\n[[cert]]\nname = \"mail\"\nsource = {src:?}\n\n{target}",
            state = npm.join("state"),
            src = live.dir(),
        ),
    )
    .map_err(|e| e.to_string())?;

    run_push(&push_toml, "first push: installs the pair")?;
    let mut ok = fingerprints(&live, &cert, port)?;
    run_push(&push_toml, "unchanged: nothing to do")?;
    println!(
        "\n-- certbot renews: archive/npm-5/*2.pem, then cert, privkey, chain, fullchain relinked"
    );
    live.renew(&ca.leaf(KeyKind::P384, &[HOST]));
    run_push(&push_toml, "after the renewal")?;
    ok &= fingerprints(&live, &cert, port)?;
    if !ok {
        return Err("the fingerprints differ".into());
    }
    println!("\ndemo finished: the renewed certificate is what clients now see.");
    Ok(())
}
