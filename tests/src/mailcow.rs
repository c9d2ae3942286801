//! A mailcow host that starts the way mailcow-dockerized's images start.
//!
//! The facts below come from mailcow-dockerized (`docker-compose.yml`,
//! `generate_config.sh`, `data/Dockerfiles/postfix/postfix.sh`,
//! `data/Dockerfiles/dovecot/docker-entrypoint.sh`,
//! `data/Dockerfiles/nginx/bootstrap.py` with
//! `data/conf/nginx/templates/*.j2`, `data/Dockerfiles/acme/acme.sh` and
//! `obtain-certificate.sh`, `data/conf/postfix/{main,master}.cf`,
//! `data/conf/dovecot/dovecot.conf`). The scripts here are written from
//! those facts; no code is copied.
//!
//! - `mailcow.conf` holds the variables as `generate_config.sh` writes
//!   them (`MAILCOW_HOSTNAME`, `HTTPS_PORT`/`HTTPS_BIND`, `SMTP_PORT` …
//!   `SIEVE_PORT`, `COMPOSE_PROJECT_NAME`, `SKIP_LETS_ENCRYPT`,
//!   `ENABLE_SSL_SNI`, `ADDITIONAL_SAN`); `docker-compose.yml` publishes
//!   `${SMTP_PORT:-25}:25` and so on, so a port variable may be `IP:PORT`.
//!   Here the containers share the host's network (the test engine has no
//!   bridge), so each daemon listens where compose would publish it.
//! - Every container mounts `./data/assets/ssl` at `/etc/ssl/mail:ro`.
//! - acme-mailcow leaves `data/assets/ssl/<MAILCOW_HOSTNAME>/` holding
//!   `domains` (space-separated names), `cert.pem` and `key.pem`, and
//!   copies that pair to the top-level `cert.pem`/`key.pem`
//!   ([`Mailcow::start`] writes such a folder).
//! - postfix-mailcow, at every container start, writes
//!   `/opt/postfix/conf/sni.map` (`./data/conf/postfix`, a host dir) with
//!   one line `<domain> <dir>key.pem <dir>cert.pem` per name of every
//!   `/etc/ssl/mail/<dir>/` holding `domains`, `cert.pem` and `key.pem`,
//!   and runs `postmap -F hash:/opt/postfix/conf/sni.map`; `main.cf` has
//!   `tls_server_sni_maps = hash:/opt/postfix/conf/sni.map`. `-F` stores
//!   the base64 *contents* of those files in `sni.map.db`, so replacing
//!   the files and `postfix reload` leaves SNI clients on the old chain.
//!   (postfix.sh leaves the map empty when `SKIP_LETS_ENCRYPT=y`, but
//!   docker-compose.yml does not pass that variable to postfix-mailcow, so
//!   the map is always built.) Port 25 is postscreen, which permits
//!   `mynetworks` (loopback) at once and hands over to smtpd; 465 is smtpd
//!   with `smtpd_tls_wrappermode=yes`; 587 requires STARTTLS.
//! - dovecot-mailcow, at every start, writes `/etc/dovecot/sni.conf` with
//!   `local_name <domain> { ssl_cert = <<dir>cert.pem  ssl_key = <<dir>key.pem }`
//!   for the same folders; `dovecot.conf` ends with
//!   `!include_try /etc/dovecot/sni.conf`.
//! - nginx-mailcow renders its config at start: the main server (first, so
//!   the default for clients without SNI) on `HTTPS_PORT` with the
//!   top-level pair, then one server per folder whose `domains` does *not*
//!   contain `MAILCOW_HOSTNAME`, named by its `domains`. With
//!   `NGINX_USE_PROXY_PROTOCOL` `y`/`yes` (any case) every `listen` gets
//!   `proxy_protocol`.
//!
//! Debian's real postfix, dovecot and nginx run in the busybox containers
//! of [`crate::docker`] with the host's `/usr` mounted read-only. A
//! `docker restart` re-runs the start script, as mailcow's images do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certsync_core::testutil::TestLeaf;
use certsync_core::Fingerprint;
use certsync_receive::systems::probe::{served_leaf_with, Endpoint as ProbeEndpoint};
use tempfile::TempDir;

use crate::docker::{free_port, wait_until, Container, Dockerd, Run};
use crate::need::{self, Need};

/// What `generate_config.sh` would have written, as the test wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conf {
    pub hostname: String,
    pub project: String,
    /// `PORT` or `IP:PORT`, as in mailcow.conf.
    pub smtp_port: String,
    pub smtps_port: String,
    pub submission_port: String,
    pub imap_port: String,
    pub imaps_port: String,
    pub pop_port: String,
    pub pops_port: String,
    pub sieve_port: String,
    pub https_bind: String,
    pub https_port: String,
    /// `NGINX_USE_PROXY_PROTOCOL` as written (`n`, `y`, `YES`, …).
    pub proxy_protocol: String,
    pub skip_lets_encrypt: String,
}

impl Conf {
    /// Every service on a free port of 127.0.0.1 (`IP:PORT` form), so
    /// tests without a network namespace of their own do not collide.
    pub fn loopback(hostname: &str) -> Conf {
        let p = || format!("127.0.0.1:{}", free_port());
        Conf {
            hostname: hostname.into(),
            project: "mailcowdockerized".into(),
            smtp_port: p(),
            smtps_port: p(),
            submission_port: p(),
            imap_port: p(),
            imaps_port: p(),
            pop_port: p(),
            pops_port: p(),
            sieve_port: p(),
            https_bind: "127.0.0.1".into(),
            https_port: free_port().to_string(),
            proxy_protocol: "n".into(),
            skip_lets_encrypt: "y".into(),
        }
    }

    /// mailcow's defaults, except what the reverse-proxy guide changes
    /// (HTTPS on 127.0.0.1:8443 behind NPM) and SMTP on 2525: for a test
    /// that owns its network namespace.
    pub fn behind_a_reverse_proxy(hostname: &str) -> Conf {
        Conf {
            hostname: hostname.into(),
            project: "mailcowdockerized".into(),
            smtp_port: "2525".into(),
            smtps_port: "465".into(),
            submission_port: "587".into(),
            imap_port: "143".into(),
            imaps_port: "993".into(),
            pop_port: "110".into(),
            pops_port: "995".into(),
            sieve_port: "4190".into(),
            https_bind: "127.0.0.1".into(),
            https_port: "8443".into(),
            proxy_protocol: "n".into(),
            skip_lets_encrypt: "y".into(),
        }
    }

    /// mailcow.conf, laid out as generate_config.sh writes it (the parts
    /// certsync reads, with the same comments and order).
    pub fn text(&self) -> String {
        format!(
            "# ------------------------------
# mailcow web ui configuration
# ------------------------------
# example.org is _not_ a valid hostname, use a fqdn here.
MAILCOW_HOSTNAME={hostname}

# ------------------------------
# HTTP/S Bindings
# ------------------------------
HTTP_PORT=80
HTTP_BIND=

HTTPS_PORT={https_port}
HTTPS_BIND={https_bind}

# Redirect HTTP connections to HTTPS - y/n
HTTP_REDIRECT=n

# ------------------------------
# Other bindings
# ------------------------------
# You should leave that alone
# Format: 11.22.33.44:25 or 12.34.56.78:465 etc.
SMTP_PORT={smtp}
SMTPS_PORT={smtps}
SUBMISSION_PORT={submission}
IMAP_PORT={imap}
IMAPS_PORT={imaps}
POP_PORT={pop}
POPS_PORT={pops}
SIEVE_PORT={sieve}
DOVEADM_PORT=127.0.0.1:19991
SQL_PORT=127.0.0.1:13306
REDIS_PORT=127.0.0.1:7654

# Fixed project name
# Please use lowercase letters only
COMPOSE_PROJECT_NAME={project}

# Additional SAN for the certificate
ADDITIONAL_SAN=

# Skip running ACME (acme-mailcow, Let's Encrypt certs) - y/n
SKIP_LETS_ENCRYPT={skip}

# Create seperate certificates for all domains - y/n
# this will allow adding more than 100 domains, but some email clients will not be able to connect with alternative hostnames
# see https://doc.dovecot.org/admin_manual/ssl/sni_support
ENABLE_SSL_SNI=n

# Use this option to enable PROXY protocol for nginx - y/n
NGINX_USE_PROXY_PROTOCOL={proxy}
",
            hostname = self.hostname,
            https_port = self.https_port,
            https_bind = self.https_bind,
            smtp = self.smtp_port,
            smtps = self.smtps_port,
            submission = self.submission_port,
            imap = self.imap_port,
            imaps = self.imaps_port,
            pop = self.pop_port,
            pops = self.pops_port,
            sieve = self.sieve_port,
            project = self.project,
            skip = self.skip_lets_encrypt,
            proxy = self.proxy_protocol,
        )
    }

    /// Does nginx expect a PROXY header (`y`/`yes`, any case)?
    pub fn uses_proxy_protocol(&self) -> bool {
        matches!(
            self.proxy_protocol.to_ascii_lowercase().as_str(),
            "y" | "yes"
        )
    }

    /// `HTTPS_BIND:HTTPS_PORT` as a listen address.
    fn https(&self) -> String {
        if self.https_bind.is_empty() {
            self.https_port.clone()
        } else {
            format!("{}:{}", self.https_bind, self.https_port)
        }
    }
}

/// Where a client on the mailcow host reaches a published port: the bind
/// address, or loopback when compose publishes on every address.
pub fn reach(published: &str) -> String {
    match published.rsplit_once(':') {
        Some((bind, port)) if !bind.is_empty() && bind != "0.0.0.0" => format!("{bind}:{port}"),
        Some((_, port)) => format!("127.0.0.1:{port}"),
        None => format!("127.0.0.1:{published}"),
    }
}

/// One TLS endpoint of the mailcow host, as a client reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `127.0.0.1:2525`.
    pub addr: String,
    /// `smtp`, `submission`, `smtps`, `imaps`, `https` …: the word a
    /// `verify` entry uses.
    pub word: &'static str,
    /// `openssl s_client -starttls …`, if TLS starts in-band.
    pub starttls: Option<&'static str>,
    /// The compose service serving it.
    pub service: &'static str,
}

impl Endpoint {
    /// In `verify` syntax: `"127.0.0.1:2525 smtp"`.
    pub fn verify(&self) -> String {
        format!("{} {}", self.addr, self.word)
    }

    /// The leaf this endpoint serves, probed as certsync's verify probes it
    /// (`proxy`: with a PROXY v1 header). The limit is generous on purpose:
    /// mailcow's postscreen holds the SMTP banner for
    /// `postscreen_greet_wait` (3 s), and on a loaded CI machine the first
    /// smtpd's start comes on top; 5 s timed out there.
    pub fn served(&self, sni: Option<&str>, proxy: bool) -> Result<Fingerprint, String> {
        let suffix = if proxy { " proxy" } else { "" };
        let endpoint = ProbeEndpoint::parse(&format!("{}{suffix}", self.verify()))
            .map_err(|e| e.to_string())?;
        served_leaf_with(&endpoint, sni, PROBE_LIMIT)
            .map(|i| i.fingerprint)
            .map_err(|e| e.to_string())
    }
}

/// How long [`Endpoint::served`] waits for one probe.
const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// An engine for a mailcow host, once mailcow's three daemons and openssl
/// are installed: `needs!(let d = mailcow::engine())`.
pub fn engine() -> Need<Dockerd> {
    need::dockerd()?;
    need::mailcow_daemons()?;
    need::openssl()?;
    crate::docker::engine()
}

/// A running mailcow host: its checkout dir and its three containers.
pub struct Mailcow<'d> {
    pub conf: Conf,
    pub postfix: Container<'d>,
    pub dovecot: Container<'d>,
    pub nginx: Container<'d>,
    /// `…/mailcow-dockerized`, holding mailcow.conf and data/.
    pub dir: PathBuf,
    // Last: removed after the containers (they are removed with the
    // engine, which outlives this value).
    _root: TempDir,
}

impl<'d> Mailcow<'d> {
    /// Write the checkout (mailcow.conf, `data/assets/ssl` with `top` as
    /// the top-level pair and, if given, `acme` in the acme-left folder
    /// `<hostname>/`, `data/conf/postfix`), then start postfix-mailcow,
    /// dovecot-mailcow and nginx-mailcow and wait until each listens.
    pub fn start(
        dockerd: &'d Dockerd,
        conf: Conf,
        top: &TestLeaf,
        acme: Option<&TestLeaf>,
    ) -> Mailcow<'d> {
        let root = tempfile::Builder::new()
            .prefix("certsync-mailcow-")
            .tempdir()
            .unwrap();
        // The forced command may run as an unprivileged user: it must
        // reach mailcow.conf and the installed certificate.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = root.path().join("mailcow-dockerized");
        let ssl = dir.join("data/assets/ssl");
        let postfix_conf = dir.join("data/conf/postfix");
        std::fs::create_dir_all(&ssl).unwrap();
        std::fs::create_dir_all(&postfix_conf).unwrap();
        std::fs::write(dir.join("mailcow.conf"), conf.text()).unwrap();
        write_pair(&ssl, top);
        if let Some(acme) = acme {
            let folder = ssl.join(&conf.hostname);
            std::fs::create_dir_all(&folder).unwrap();
            write_pair(&folder, acme);
            // obtain-certificate.sh: `echo -n ${CERT_DOMAINS[*]} > domains`.
            std::fs::write(folder.join("domains"), &conf.hostname).unwrap();
        }
        std::fs::write(postfix_conf.join("main.cf"), postfix_main_cf()).unwrap();
        std::fs::write(postfix_conf.join("master.cf"), postfix_master_cf(&conf)).unwrap();
        let dovecot_conf = dir.join("data/conf/dovecot");
        std::fs::create_dir_all(&dovecot_conf).unwrap();
        std::fs::write(dovecot_conf.join("dovecot.conf"), dovecot_conf_text(&conf)).unwrap();
        let nginx_conf = dir.join("data/conf/nginx");
        std::fs::create_dir_all(&nginx_conf).unwrap();

        let name = |service: &str| format!("{}-{service}-1", conf.project);
        let base = |service: &str| {
            Run::mailcow_service(&name(service), &conf.project, service, &ssl)
                .env("MAILCOW_HOSTNAME", &conf.hostname)
        };
        let postfix = base("postfix-mailcow")
            .mount(&postfix_conf, "/opt/postfix/conf", false)
            // `postfix reload` and `postmap` without -c, as mailcow's
            // dockerapi runs them, read the same configuration.
            .mount(&postfix_conf, "/etc/postfix", true)
            .mount(Path::new("/etc/postfix"), "/etc/postfix-meta", true)
            .sh(POSTFIX_START);
        let dovecot = base("dovecot-mailcow")
            .mount(&dovecot_conf, "/etc/dovecot", false)
            .sh(DOVECOT_START);
        let nginx = base("nginx-mailcow")
            .env("HTTPS_PORT", &conf.https_port)
            // Compose publishes on HTTPS_BIND; with the host's network the
            // daemon binds there itself.
            .env("CERTSYNC_TEST_HTTPS_LISTEN", &conf.https())
            .env("NGINX_USE_PROXY_PROTOCOL", &conf.proxy_protocol)
            .mount(&nginx_conf, "/etc/nginx", false)
            .sh(NGINX_START);

        let m = Mailcow {
            postfix: dockerd.run(&postfix),
            dovecot: dockerd.run(&dovecot),
            nginx: dockerd.run(&nginx),
            conf,
            dir,
            _root: root,
        };
        m.wait_listening(Duration::from_secs(30));
        m
    }

    /// `data/assets/ssl`.
    pub fn ssl_dir(&self) -> PathBuf {
        self.dir.join("data/assets/ssl")
    }

    /// The acme-left folder `data/assets/ssl/<MAILCOW_HOSTNAME>/`.
    pub fn acme_dir(&self) -> PathBuf {
        self.ssl_dir().join(&self.conf.hostname)
    }

    /// Every TLS endpoint, in mailcow.conf's order.
    pub fn all_endpoints(&self) -> Vec<Endpoint> {
        let c = &self.conf;
        let e = |published: &str, word, starttls, service| Endpoint {
            addr: reach(published),
            word,
            starttls,
            service,
        };
        vec![
            e(&c.smtp_port, "smtp", Some("smtp"), "postfix-mailcow"),
            e(
                &c.submission_port,
                "submission",
                Some("smtp"),
                "postfix-mailcow",
            ),
            e(&c.smtps_port, "smtps", None, "postfix-mailcow"),
            e(&c.imap_port, "imap", Some("imap"), "dovecot-mailcow"),
            e(&c.imaps_port, "imaps", None, "dovecot-mailcow"),
            e(&c.pop_port, "pop3", Some("pop3"), "dovecot-mailcow"),
            e(&c.pops_port, "pop3s", None, "dovecot-mailcow"),
            e(&c.sieve_port, "sieve", Some("sieve"), "dovecot-mailcow"),
            e(&c.https(), "https", None, "nginx-mailcow"),
        ]
    }

    /// The endpoints the issue's "default" covers: SMTP and submission
    /// (STARTTLS), SMTPS, IMAPS, HTTPS.
    pub fn default_endpoints(&self) -> Vec<Endpoint> {
        self.all_endpoints()
            .into_iter()
            .filter(|e| ["smtp", "submission", "smtps", "imaps", "https"].contains(&e.word))
            .collect()
    }

    /// Wait until every endpoint accepts TCP connections.
    pub fn wait_listening(&self, limit: Duration) {
        for e in self.all_endpoints() {
            let up = wait_until(limit, || TcpStream::connect(&e.addr).is_ok());
            if up.is_none() {
                let logs = [&self.postfix, &self.dovecot, &self.nginx]
                    .iter()
                    .map(|c| format!("--- {}\n{}", c.name, c.logs()))
                    .collect::<String>();
                panic!("{} does not listen on {}:\n{logs}", e.service, e.addr);
            }
        }
    }

    /// The container of a compose service.
    pub fn container(&self, service: &str) -> &Container<'d> {
        match service {
            "postfix-mailcow" => &self.postfix,
            "dovecot-mailcow" => &self.dovecot,
            "nginx-mailcow" => &self.nginx,
            other => panic!("no service {other}"),
        }
    }

    /// Replace the pair everywhere acme-mailcow would (the top level and
    /// the acme-left folder), touching no daemon.
    pub fn replace_files(&self, leaf: &TestLeaf) {
        write_pair(&self.ssl_dir(), leaf);
        if self.acme_dir().is_dir() {
            write_pair(&self.acme_dir(), leaf);
        }
    }

    /// `docker restart` of a service's container, then wait until it
    /// listens again; returns how long that took.
    pub fn restart(&self, service: &str) -> Duration {
        let started = Instant::now();
        self.container(service).restart();
        self.wait_listening(Duration::from_secs(30));
        started.elapsed()
    }
}

/// Write `cert.pem` (0644) and `key.pem` (0600) into `dir`.
pub fn write_pair(dir: &Path, leaf: &TestLeaf) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(dir.join("cert.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), leaf.key_pem.expose()).unwrap();
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What Debian's postfix needs to run in the busybox container (the top
/// of every stand-in's main.cf; the listeners and TLS follow).
pub(crate) const POSTFIX_MAIN_BASE: &str = "compatibility_level = 3.7
meta_directory = /etc/postfix-meta
queue_directory = /var/spool/postfix
data_directory = /var/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.example.com
mydestination =
alias_maps =
alias_database =
";

/// postfix's internal services (the end of every stand-in's master.cf),
/// as Debian's master.cf lists them, none chrooted.
pub(crate) const POSTFIX_SERVICES: &str = "pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
";

/// dovecot's dirs and log (the top of every stand-in's dovecot.conf).
pub(crate) const DOVECOT_BASE: &str = "base_dir = /run/dovecot
state_dir = /var/lib/dovecot
log_path = /dev/stderr
protocols = imap pop3 sieve
";

/// dovecot's pair from the mounted ssl dir, and a static login that
/// never opens a mailbox (the stand-ins only do TLS).
pub(crate) const DOVECOT_PAIR_AND_AUTH: &str = "ssl_cert = </etc/ssl/mail/cert.pem
ssl_key = </etc/ssl/mail/key.pem
passdb {
  driver = static
  args = password=unused
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/tmp
}
";

/// main.cf: mailcow's TLS and postscreen settings that matter here.
fn postfix_main_cf() -> String {
    format!(
        "# certsync test: postfix-mailcow's main.cf, the parts that matter
{POSTFIX_MAIN_BASE}inet_interfaces = all
inet_protocols = ipv4
maillog_file = /dev/stdout
mynetworks = 127.0.0.0/8
smtpd_tls_cert_file = /etc/ssl/mail/cert.pem
smtpd_tls_key_file = /etc/ssl/mail/key.pem
tls_server_sni_maps = hash:/opt/postfix/conf/sni.map
smtpd_tls_security_level = may
postscreen_access_list = permit_mynetworks
postscreen_cache_map = proxy:btree:$data_directory/postscreen_cache
postscreen_greet_action = enforce
postscreen_greet_wait = 3s
"
    )
}

/// master.cf: 25 is postscreen handing over to smtpd, 465 wrapper-mode
/// TLS, 587 STARTTLS required; published where mailcow.conf says.
fn postfix_master_cf(conf: &Conf) -> String {
    format!(
        "{smtp} inet n - n - 1 postscreen
smtpd pass - - n - - smtpd
{smtps} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
  -o syslog_name=postfix/smtps
{submission} inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o syslog_name=postfix/submission
{POSTFIX_SERVICES}",
        smtp = conf.smtp_port,
        smtps = conf.smtps_port,
        submission = conf.submission_port,
    )
}

/// postfix-mailcow's start: the SNI map from every complete folder,
/// `postmap -F`, then the master in the foreground.
const POSTFIX_START: &str = r#"set -e
map=/opt/postfix/conf/sni.map
: > "$map"
for dir in /etc/ssl/mail/*/; do
  [ -f "${dir}domains" ] && [ -f "${dir}cert.pem" ] && [ -f "${dir}key.pem" ] || continue
  for domain in $(cat "${dir}domains"); do
    echo "${domain} ${dir}key.pem ${dir}cert.pem" >> "$map"
  done
done
postmap -F "hash:$map"
mkdir -p /var/lib/postfix /var/spool/postfix
chown postfix /var/lib/postfix
rm -f /var/spool/postfix/pid/master.pid
exec postfix -c /opt/postfix/conf start-fg
"#;

/// dovecot.conf: mailcow's `ssl_cert = <…` from the mounted dir, its
/// listeners where mailcow.conf publishes them, and the SNI include last.
fn dovecot_conf_text(conf: &Conf) -> String {
    let listener = |name: &str, published: &str, ssl: bool| {
        let (addr, port) = match published.rsplit_once(':') {
            Some((a, p)) => (a.to_string(), p.to_string()),
            None => ("*".to_string(), published.to_string()),
        };
        let ssl = if ssl { "\n    ssl = yes" } else { "" };
        format!("  inet_listener {name} {{\n    address = {addr}\n    port = {port}{ssl}\n  }}\n")
    };
    format!(
        "# certsync test: dovecot-mailcow's dovecot.conf, the parts that matter
{DOVECOT_BASE}listen = *
ssl = yes
ssl_min_protocol = TLSv1.2
{DOVECOT_PAIR_AND_AUTH}service imap-login {{
{imap}{imaps}}}
service pop3-login {{
{pop}{pops}}}
service managesieve-login {{
{sieve}}}
!include_try /etc/dovecot/sni.conf
",
        imap = listener("imap", &conf.imap_port, false),
        imaps = listener("imaps", &conf.imaps_port, true),
        pop = listener("pop3", &conf.pop_port, false),
        pops = listener("pop3s", &conf.pops_port, true),
        sieve = listener("sieve", &conf.sieve_port, false),
    )
}

/// dovecot-mailcow's start: sni.conf from every complete folder, then
/// dovecot in the foreground.
const DOVECOT_START: &str = r#"set -e
sni=/etc/dovecot/sni.conf
: > "$sni"
for dir in /etc/ssl/mail/*/; do
  [ -f "${dir}domains" ] && [ -f "${dir}cert.pem" ] && [ -f "${dir}key.pem" ] || continue
  for domain in $(cat "${dir}domains"); do
    printf 'local_name %s {\n  ssl_cert = <%scert.pem\n  ssl_key = <%skey.pem\n}\n' "$domain" "$dir" "$dir" >> "$sni"
  done
done
mkdir -p /run/dovecot /var/lib/dovecot
rm -f /run/dovecot/master.pid
exec dovecot -F
"#;

/// nginx-mailcow's start: render nginx.conf (the main server first, then
/// one per folder whose `domains` lacks MAILCOW_HOSTNAME), then nginx in
/// the foreground.
const NGINX_START: &str = r#"set -e
conf=/etc/nginx/nginx.conf
pp=
case "$NGINX_USE_PROXY_PROTOCOL" in [yY]|[yY][eE][sS]) pp=" proxy_protocol" ;; esac
listen="listen ${CERTSYNC_TEST_HTTPS_LISTEN}${pp} ssl;"
cat > "$conf" <<EOF
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr notice;
events { worker_connections 512; }
http {
  access_log off;
  server {
    $listen
    ssl_certificate /etc/ssl/mail/cert.pem;
    ssl_certificate_key /etc/ssl/mail/key.pem;
    server_name ${MAILCOW_HOSTNAME} autodiscover.* autoconfig.* mta-sts.*;
    return 200 "mailcow\n";
  }
EOF
for dir in /etc/ssl/mail/*/; do
  [ -f "${dir}domains" ] && [ -f "${dir}cert.pem" ] && [ -f "${dir}key.pem" ] || continue
  domains=$(cat "${dir}domains")
  [ -n "$domains" ] || continue
  own=
  for d in $domains; do [ "$d" = "$MAILCOW_HOSTNAME" ] && own=1; done
  [ -z "$own" ] || continue
  cat >> "$conf" <<EOF
  server {
    $listen
    ssl_certificate ${dir}cert.pem;
    ssl_certificate_key ${dir}key.pem;
    server_name $domains;
    return 200 "mailcow\n";
  }
EOF
done
echo "}" >> "$conf"
exec nginx -g 'daemon off;'
"#;
