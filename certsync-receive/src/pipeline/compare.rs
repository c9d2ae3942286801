//! Step 4, **compare**: is this exact pair installed everywhere it
//! belongs? Asked twice: on the offer's fingerprints before any key
//! material is sent ([`decide`]), and on the validated bytes
//! ([`compare_step`]). What is installed is read from disk, never from a
//! state file.

use certsync_core::protocol::{OfferedCert, Wanted};
use certsync_core::report::{CertReport, Step};
use certsync_core::validate::ValidatedBundle;
use certsync_core::{ExitCode, Fingerprint};

use super::install::{self, Dest};
use super::stage::StagingDir;
use super::{folders, main_dest, reload_owed, repair_owed, StepFailed, StepResult};
use crate::settings::CertSpec;

/// Is this exact pair at `dest`?
fn pair_at(
    dest: &Dest,
    chain: Fingerprint,
    key: Fingerprint,
) -> Result<bool, install::InstallError> {
    match install::read_installed(dest) {
        Ok(Some(i)) => Ok(i.chain_sha256 == chain && i.key_sha256 == key),
        Ok(None) => Ok(false),
        // In handoff mode `serve` runs unprivileged and key.pem is 0600
        // root. Compare the certificate alone: root's install keeps the
        // installed pair matching, and a leaf has exactly one key, so
        // the same full chain means the same pair. Root's `deploy`
        // compares both files again before it writes anything.
        Err(e) if e.is_permission_denied() => match install::read_installed_cert(dest)? {
            Some(c) if c.chain_sha256 == chain => {
                tracing::debug!(path = %dest.key.display(), "key not readable by this user; compared the certificate only");
                Ok(true)
            }
            _ => Ok(false),
        },
        Err(e) => Err(e),
    }
}

/// Is this exact pair installed everywhere it belongs? The configured pair
/// decides first; when it holds this chain, its leaf (the offered one)
/// says which per-domain folders belong too.
fn installed_everywhere(
    spec: &CertSpec,
    chain: Fingerprint,
    key: Fingerprint,
) -> Result<bool, install::InstallError> {
    let main = main_dest(spec);
    if !pair_at(&main, chain, key)? {
        return Ok(false);
    }
    if spec.folders_root.is_none() {
        return Ok(true);
    }
    let sans = install::read_installed_cert(&main)?
        .and_then(|c| c.info)
        .map(|i| i.sans)
        .unwrap_or_default();
    let write = match folders(spec, &sans) {
        Ok(f) => f.write,
        // Unknown: let the pair come, the install step lists them again.
        Err(_) => return Ok(false),
    };
    for dest in &write {
        if !pair_at(dest, chain, key)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Before any key material is sent: does the receiver need this pair?
/// (The compare step on fingerprints only; repeated on the bytes later.)
pub fn decide(spec: &CertSpec, offered: &OfferedCert) -> (Wanted, String) {
    match installed_everywhere(spec, offered.chain_sha256, offered.key_sha256) {
        Ok(true) => {
            // Logged by the caller once the answer is final (an owed
            // reload turns it into "send").
            (
                Wanted::Have,
                format!(
                    "nothing to do: {} is already installed",
                    offered.leaf.short()
                ),
            )
        }
        Ok(false) => (Wanted::Send, "send it".into()),
        Err(e) => (
            Wanted::Send,
            format!("cannot read the installed pair ({e}); send it"),
        ),
    }
}

/// [`decide`], and a pair already installed whose reload is still owed is
/// asked for anyway: delivering it runs [`finish`], which retries that
/// reload, so the next push settles it.
pub fn decide_owed(
    staging: &StagingDir,
    spec: &CertSpec,
    offered: &OfferedCert,
) -> (Wanted, String) {
    match decide(spec, offered) {
        (Wanted::Have, _) if repair_owed(staging, &spec.name) => (
            Wanted::Send,
            "the installed pair was found broken (the key does not match); send it to repair it"
                .into(),
        ),
        (Wanted::Have, _) if reload_owed(staging, &spec.name) => (
            Wanted::Send,
            "already installed, but a reload is owed; send it to retry the reload".into(),
        ),
        other => other,
    }
}

/// The leaf installed at the configured paths now, if any.
pub fn installed_leaf(spec: &CertSpec) -> Option<Fingerprint> {
    install::read_installed_cert(&main_dest(spec))
        .ok()
        .flatten()
        .and_then(|i| i.info.map(|c| c.fingerprint))
}

/// The notAfter of what is installed, for the rollback rule.
pub(crate) fn installed_not_after(spec: &CertSpec) -> Option<i64> {
    // The certificate alone: readable by an unprivileged `serve` too, and
    // recovery has already made the installed pair match.
    install::read_installed_cert(&Dest::new(&spec.cert_path, &spec.key_path))
        .ok()
        .flatten()
        .and_then(|i| i.info.map(|c| c.not_after))
}

/// The compare step's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// The pair differs from what is installed somewhere: install it.
    Changed,
    /// This pair is installed everywhere it belongs: nothing to do.
    Installed,
}

/// Step 4: compare with what is installed, on disk.
pub fn compare_step(
    spec: &CertSpec,
    pair: &ValidatedBundle,
    report: &mut CertReport,
) -> StepResult<Compared> {
    match installed_everywhere(spec, pair.chain_sha256(), pair.key_sha256()) {
        Ok(true) => {
            tracing::info!(cert = %spec.name, leaf = %pair.leaf_fingerprint(), "nothing to do: this pair is already installed");
            report.nothing_to_do = true;
            report.done(
                Step::Compare,
                "nothing to do: this pair is already installed",
            );
            Ok(Compared::Installed)
        }
        Ok(false) => {
            report.done(
                Step::Compare,
                format!(
                    "differs from what is installed at {}",
                    spec.cert_path.display()
                ),
            );
            Ok(Compared::Changed)
        }
        Err(e) => {
            report.failed(Step::Compare, e.to_string(), ExitCode::Runtime);
            Err(StepFailed)
        }
    }
}
