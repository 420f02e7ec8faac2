//! `imgbuild verify IMAGE`: check a built image against its sidecars.
//!
//! 1. `<image>.sha256` (sha256sum format) names the image and matches its bytes;
//! 2. the in-image manifest re-verifies entry by entry ([`crate::inspect::inspect`]);
//! 3. the sidecar `<stem>.manifest.json` is the same manifest as the in-image one;
//! 4. recorded signatures (`build --cosign-trust-root`): each names an artifact of the
//!    manifest and covers exactly that artifact's sha256, as the identity and issuer of
//!    the Kubernetes release policy.
//!
//! Any mismatch or missing sidecar is an integrity failure (exit 3).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::VerifyError;
use crate::manifest::Manifest;

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

fn sidecars(image: &Path) -> Result<(PathBuf, PathBuf, String), VerifyError> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| VerifyError::Input(format!("{}: not a file name", image.display())))?
        .to_string();
    let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(&name);
    let dir = image.parent().unwrap_or(Path::new(""));
    Ok((dir.join(format!("{name}.sha256")), dir.join(format!("{stem}.manifest.json")), name))
}

/// Verify `image` and its sidecars; see the module docs.
pub fn verify_image(image: &Path, root_label: &str) -> Result<ImageReport> {
    let (sum_path, man_path, name) = sidecars(image)?;
    let fail = |what: &Path, msg: String| VerifyError::integrity(what.display().to_string(), msg);
    if !image.is_file() {
        return Err(VerifyError::Input(format!("{}: no such image", image.display())).into());
    }
    let read = |p: &Path| match std::fs::read(p) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(fail(p, "missing (needed to verify)".into()))
        }
        Err(source) => Err(VerifyError::Io { what: p.display().to_string(), source }),
    };

    let sums = String::from_utf8_lossy(&read(&sum_path)?).into_owned();
    let Some(want) = super::base::find_in_sums(&sums, &name) else {
        return Err(fail(&sum_path, format!("no line for {name}")).into());
    };
    let got = crate::output::sha256_file(image)?;
    if got != want.as_str() {
        return Err(fail(
            image,
            format!("sha256 {got} does not match {} ({})", want.as_str(), sum_path.display()),
        )
        .into());
    }

    let side: Manifest = serde_json::from_slice(&read(&man_path)?)
        .map_err(|e| fail(&man_path, format!("not an imgbuild manifest: {e}")))?;
    let inside = crate::inspect::inspect(image, root_label)?;
    if inside != side {
        return Err(fail(&man_path, "differs from the manifest inside the image".into()).into());
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
        sha256: got,
        checksum_file: sum_path.display().to_string(),
        manifest_file: man_path.display().to_string(),
        recipe: inside.recipe.clone(),
        role: inside.role.clone(),
        arch: inside.arch.clone(),
        kubernetes_version: inside.kubernetes_version.clone(),
        inputs_digest: inside.inputs_digest.clone(),
        files_verified: inside.files.len(),
        signed_artifacts: inside.signatures.iter().map(|r| r.artifact.clone()).collect(),
    })
}
