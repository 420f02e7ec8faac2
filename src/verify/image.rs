//! `imgbuild verify IMAGE`: check a built image against its sidecars.
//!
//! 1. `<image>.sha256` (sha256sum format) names the image and matches its bytes;
//! 2. the in-image manifest re-verifies entry by entry (`inspect::inspect`);
//! 3. the sidecar `<stem>.manifest.json` is the same manifest as the in-image one;
//! 4. recorded signatures (`build --cosign-trust-root`): each names an artifact of the
//!    manifest and covers exactly that artifact's sha256, as the identity and issuer of
//!    the Kubernetes release policy.
//!
//! A missing sidecar is an input error (exit 2: the image was not given with the set
//! `build` writes); any mismatch, or a sidecar that cannot be read, is an integrity
//! failure (exit 3). The sidecars and the image are read through [`OutputSet`].

use std::path::Path;

use anyhow::Result;

use super::VerifyError;
use crate::output::OutputSet;
use crate::reporter::Reporter;

/// What `verify` established.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageReport {
    pub image: String,
    pub sha256: String,
    pub checksum_file: String,
    pub manifest_file: String,
    pub recipe: String,
    pub role: String,
    pub arch: String,
    pub kubernetes_version: String,
    pub inputs_digest: String,
    pub files_verified: usize,
    /// Artifacts whose cosign signature was verified at build time.
    pub signed_artifacts: Vec<String>,
}

/// Verify `image` and its sidecars; see the module docs.
pub fn verify_image(image: &Path, root_label: &str, rep: &Reporter) -> Result<ImageReport> {
    let set = OutputSet::beside(image);
    let fail = |what: &Path, msg: String| VerifyError::integrity(what.display().to_string(), msg);
    let got = set.verify_checksum(rep)?;
    let side = set.read_manifest()?;
    let inside = crate::inspect::manifest_of(&set.open(root_label)?, image)?;
    if inside != side {
        return Err(fail(&set.manifest, "differs from the manifest inside the image".into()).into());
    }
    let policy = super::cosign::Policy::kubernetes_release();
    for r in &inside.signatures {
        let Some(a) = inside.artifacts.iter().find(|a| a.name == r.artifact) else {
            return Err(fail(image, format!("signature record for unknown artifact {:?}", r.artifact)).into());
        };
        if a.sha256 != r.file_sha256 || r.identity != policy.identity || r.issuer != policy.issuer {
            return Err(fail(
                image,
                format!("signature record of {} does not match the artifact or policy", a.name),
            )
            .into());
        }
    }
    Ok(ImageReport {
        image: image.display().to_string(),
        sha256: got.to_string(),
        checksum_file: set.checksum.display().to_string(),
        manifest_file: set.manifest.display().to_string(),
        recipe: inside.recipe.clone(),
        role: inside.role.clone(),
        arch: inside.arch.clone(),
        kubernetes_version: inside.kubernetes_version.clone(),
        inputs_digest: inside.inputs_digest.clone(),
        files_verified: inside.files.len(),
        signed_artifacts: inside.signatures.iter().map(|r| r.artifact.clone()).collect(),
    })
}
