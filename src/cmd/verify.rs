//! `imgbuild verify`, `verify-blob` and `base-digest`: the supply-chain checks.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::recipe;
use crate::reporter::Reporter;
use crate::types::Arch;
use crate::verify::cosign::{self, Policy, TrustRoot, K8S_RELEASE_IDENTITY, K8S_RELEASE_ISSUER};
use crate::verify::openpgp;
use crate::verify::VerifyError;

#[derive(Debug, clap::Args)]
pub struct VerifyImageArgs {
    /// Image built by `imgbuild build` (qcow2, raw, vmdk, vhdx, vhd or ova), with its sidecars beside it
    pub image: PathBuf,
    /// Filesystem label of the root partition
    #[arg(long, default_value = "cloudimg-rootfs")]
    pub root_label: String,
    /// Print a JSON report
    #[arg(long)]
    pub json: bool,
}

pub fn run_verify_image(a: &VerifyImageArgs, rep: &Reporter) -> Result<()> {
    crate::tools::require(&[crate::tools::DEBUGFS, crate::tools::QEMU_IMG])?;
    let r = crate::verify::image::verify_image(&a.image, &a.root_label, rep)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
    } else {
        writeln!(out, "image       {} sha256 {} (matches {})", r.image, r.sha256, r.checksum_file)?;
        writeln!(out, "target      {} {} {} kubernetes {}", r.recipe, r.role, r.arch, r.kubernetes_version)?;
        writeln!(out, "manifest    in-image copy == {}", r.manifest_file)?;
        writeln!(out, "files       {} entries re-verified", r.files_verified)?;
        if r.signed_artifacts.is_empty() {
            writeln!(out, "signatures  none recorded in the manifest")?;
        } else {
            writeln!(out, "signatures  cosign-verified at build: {}", r.signed_artifacts.join(", "))?;
        }
    }
    rep.status(format_args!("verify: {} OK", r.image));
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct VerifyBlobArgs {
    /// The file whose signature is checked
    pub file: PathBuf,
    /// Signature file (default: FILE.sig)
    #[arg(long)]
    pub signature: Option<PathBuf>,
    /// Certificate file (default: FILE.cert)
    #[arg(long)]
    pub certificate: Option<PathBuf>,
    /// Fetch URL.sig and URL.cert instead of reading local files
    #[arg(long, conflicts_with_all = ["signature", "certificate"])]
    pub url: Option<String>,
    /// Rewrite a URL prefix: FROM=TO (repeatable)
    #[arg(long = "mirror", value_name = "FROM=TO")]
    pub mirrors: Vec<String>,
    /// PEM bundle of Fulcio root + intermediate certificates (default: the embedded
    /// Sigstore public-good root)
    #[arg(long, value_name = "FILE.pem")]
    pub trust_root: Option<PathBuf>,
    /// Expected certificate identity (SAN email or URI)
    #[arg(long, default_value = K8S_RELEASE_IDENTITY)]
    pub certificate_identity: String,
    /// Expected OIDC issuer
    #[arg(long, default_value = K8S_RELEASE_ISSUER)]
    pub certificate_oidc_issuer: String,
    /// Trusted signing time (Unix seconds); must lie in the certificate's validity
    #[arg(long)]
    pub signed_at: Option<i64>,
}

pub fn run_verify_blob(a: &VerifyBlobArgs, rep: &Reporter) -> Result<()> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| VerifyError::Io { what: p.display().to_string(), source })
    };
    let trust = match &a.trust_root {
        Some(p) => TrustRoot::from_pem(&read(p)?, &p.display().to_string())?,
        None => TrustRoot::embedded()?,
    };
    let policy =
        Policy { identity: a.certificate_identity.clone(), issuer: a.certificate_oidc_issuer.clone() };
    let blob = read(&a.file)?;
    let rec = match &a.url {
        Some(url) => {
            let mirrors = super::fetch::mirrors(&a.mirrors)?;
            cosign::verify_published(url, &blob, &mirrors, &trust, &policy, a.signed_at)?
        }
        None => {
            let with = |ext: &str| {
                let mut p = a.file.clone().into_os_string();
                p.push(ext);
                PathBuf::from(p)
            };
            let sig = read(&a.signature.clone().unwrap_or_else(|| with(".sig")))?;
            let cert = read(&a.certificate.clone().unwrap_or_else(|| with(".cert")))?;
            cosign::verify_blob(
                &blob,
                &sig,
                &cert,
                &trust,
                &policy,
                a.signed_at,
                &a.file.display().to_string(),
            )?
        }
    };
    rep.status(format_args!(
        "verify-blob: {}: good signature by {} ({})",
        a.file.display(),
        rec.identity,
        rec.issuer
    ));
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &rec)?;
    writeln!(out)?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct BaseDigestArgs {
    /// Recipe file (default: the embedded default recipe)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Architecture (repeatable; default: every arch of the recipe)
    #[arg(long, value_enum)]
    pub arch: Vec<Arch>,
    /// Rewrite a URL prefix: FROM=TO (repeatable)
    #[arg(long = "mirror", value_name = "FROM=TO")]
    pub mirrors: Vec<String>,
    /// Write the verified digests into the recipe file instead of failing on a mismatch
    #[arg(long)]
    pub write: bool,
    /// Trust this public key instead of the embedded Ubuntu cloud-image key (needs --signer)
    #[arg(long, requires = "signer", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Fingerprint the signature must be made by (needs --key)
    #[arg(long, requires = "key", value_name = "FINGERPRINT")]
    pub signer: Option<String>,
    /// Print JSON instead of tab-separated lines
    #[arg(long)]
    pub json: bool,
}

pub fn run_base_digest(a: &BaseDigestArgs, rep: &Reporter) -> Result<()> {
    let loaded = recipe::load(a.recipe.as_deref())?;
    if a.write && a.recipe.is_none() {
        return Err(VerifyError::Input(
            "--write needs --recipe FILE (the embedded recipe is read-only)".into(),
        )
        .into());
    }
    let mirrors = super::fetch::mirrors(&a.mirrors)?;
    let (key, signer) = match (&a.key, &a.signer) {
        (Some(path), Some(fp)) => {
            let data = std::fs::read(path)
                .map_err(|source| VerifyError::Io { what: path.display().to_string(), source })?;
            (openpgp::parse_key(&data, &path.display().to_string())?, openpgp::normalize_fingerprint(fp)?)
        }
        _ => (openpgp::ubuntu_cloud_image_key()?, openpgp::UBUNTU_CLOUD_IMAGE_FINGERPRINT.to_string()),
    };
    let arches = if a.arch.is_empty() { loaded.recipe.arches.clone() } else { a.arch.clone() };
    let mut results = Vec::new();
    for arch in arches {
        rep.status(format_args!(
            "base-digest: {} {}: verifying SHA256SUMS.gpg (signer {signer})",
            loaded.recipe.base.version,
            arch.as_str()
        ));
        results.push(crate::verify::base::signed_base_digest(&loaded.recipe, arch, &key, &signer, &mirrors)?);
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &results)?;
        writeln!(out)?;
    } else {
        for r in &results {
            writeln!(out, "{}\t{}\t{}\t{}\tsigned-by {}", r.arch, r.sha256, r.file, r.sums_url, r.signer)?;
        }
    }
    out.flush()?;
    let changed: Vec<_> = results.iter().filter(|r| r.sha256 != r.recipe_sha256).collect();
    if changed.is_empty() {
        rep.status(format_args!("base-digest: the recipe's base digests match the signed SHA256SUMS"));
        return Ok(());
    }
    if !a.write {
        let list: Vec<_> = changed
            .iter()
            .map(|r| format!("{}: recipe {} != signed {}", r.arch, r.recipe_sha256, r.sha256))
            .collect();
        return Err(VerifyError::integrity(
            loaded.origin.clone(),
            format!(
                "base digest differs from the signed SHA256SUMS ({}); rerun with --write to update",
                list.join("; ")
            ),
        )
        .into());
    }
    let Some(path) = &a.recipe else { return Ok(()) };
    let mut text = loaded.text.clone();
    for r in &changed {
        text = crate::verify::base::rewrite_recipe(&text, &r.arch, &r.recipe_sha256, &r.sha256)?;
    }
    // The edited recipe must still load, and carry exactly the verified digests.
    let check = recipe::parse(&text, &path.display().to_string())?;
    for r in &changed {
        if check.recipe.base.sha256.get(&r.arch).map(|s| s.as_str()) != Some(r.sha256.as_str()) {
            return Err(VerifyError::Input(format!(
                "could not update base.sha256.{} in {}",
                r.arch,
                path.display()
            ))
            .into());
        }
    }
    crate::verify::base::write_atomic(path, text.as_bytes())?;
    rep.status(format_args!("base-digest: wrote {} digest(s) into {}", changed.len(), path.display()));
    Ok(())
}
