//! `certsync-receive install`: a pair from local files, through the same
//! validation, install, reload and verify as a push.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use certsync_core::bundle::{Bundle, SecretBytes};
use certsync_core::protocol::{MAX_CHAIN_BYTES, MAX_KEY_BYTES};
use certsync_core::report::{CertReport, Report, Step};
use certsync_core::validate::Force;

use crate::error::ReceiveError;
use crate::fsutil::read_input;
use crate::pipeline::lock;
use crate::pipeline::stage::StagingDir;
use crate::pipeline::{self, PostInstall, Run};
use crate::settings::{CertSpec, Settings};

/// `settings.cert(name)`, or an error listing the names receive.toml has.
fn known_cert<'a>(settings: &'a Settings, name: &str) -> Result<&'a CertSpec, ReceiveError> {
    settings
        .cert(name)
        .ok_or_else(|| ReceiveError::UnknownCert {
            name: name.to_string(),
            config: settings.config_path.clone(),
            known: settings
                .certs
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `certsync-receive install --name N --cert F --key F [--dry-run] [--force]`.
pub async fn install_files<P: PostInstall>(
    settings: &Settings,
    name: &str,
    cert: &Path,
    key: &Path,
    dry_run: bool,
    force: bool,
    post: &P,
) -> Result<Report, ReceiveError> {
    let spec = known_cert(settings, name)?;
    let chain = read_input(cert, MAX_CHAIN_BYTES)?;
    let key_bytes = SecretBytes::new(read_input(key, MAX_KEY_BYTES)?);
    let bundle = Bundle::new(chain, key_bytes);
    let staging = Arc::new(StagingDir::open(&settings.staging_dir)?);
    let _lock = lock::session(&staging, lock::SESSION_TIMEOUT).await?;
    pipeline::recover(&staging, spec)?;
    let run = Run {
        settings,
        staging: &staging,
        now: SystemTime::now(),
        dry_run,
        force: if force { Force::Allowed } else { Force::No },
    };
    let mut cr = CertReport::new(name, None);
    cr.done(
        Step::Read,
        format!("{} and {}", cert.display(), key.display()),
    );
    cr.skipped(Step::Stage, "local files");
    if let Ok(pair) = pipeline::validate_step(&run, spec, bundle, &mut cr) {
        pipeline::finish(&run, spec, &pair, post, &mut cr).await;
    }
    Ok(Report {
        dry_run,
        certs: vec![cr],
    })
}
