//! Steps 6 and 7 as the real binary runs them: reload through the Docker
//! API ([`crate::reload`]) and check the served certificate
//! ([`crate::probe`]).

use certsync_core::report::{CertReport, Step};
use certsync_core::Fingerprint;

use crate::pipeline::PostInstall;
use crate::settings::{CertSpec, Settings};

/// The production [`PostInstall`].
pub struct Post<'a> {
    pub settings: &'a Settings,
}

impl PostInstall for Post<'_> {
    async fn reload(&self, spec: &CertSpec, _dry_run: bool, report: &mut CertReport) {
        if spec.reload.is_empty() {
            report.skipped(Step::Reload, "no services configured (reload = [])");
            return;
        }
        let _ = self.settings;
        report.skipped(Step::Reload, "reload through Docker is not wired in yet");
    }

    async fn verify(&self, spec: &CertSpec, _leaf: Fingerprint, report: &mut CertReport) {
        if spec.verify.is_empty() {
            report.skipped(Step::Verify, "no endpoints configured (verify = [])");
            return;
        }
        report.skipped(
            Step::Verify,
            "the served-certificate check is not wired in yet",
        );
    }
}
