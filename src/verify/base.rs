//! `imgbuild base-digest`: prove where the recipe's base-image digest comes from.
//!
//! For each architecture, the dated build's directory (the dirname of the base URL)
//! holds `SHA256SUMS` and a detached `SHA256SUMS.gpg`. The signature must verify with
//! the embedded Ubuntu cloud-image key *and* be made by its documented fingerprint; then
//! the line for the image file gives the digest. It is compared with the recipe (a
//! mismatch is an integrity failure) or, with `--write`, written into the recipe file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::net::{self, Got};
use super::openpgp::{self, TrustedKey};
use super::VerifyError;
use crate::cli::Global;
use crate::recipe::{self, Arch, Sha256};

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

/// One architecture's verified result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignedDigest {
    pub arch: String,
    pub file: String,
    pub sha256: String,
    /// The `SHA256SUMS` URL the digest was read from (before mirror rewriting).
    pub sums_url: String,
    /// Fingerprint of the key that made the good signature.
    pub signer: String,
    /// The digest the recipe had before.
    pub recipe_sha256: String,
}

/// Find `file`'s digest in a `sha256sum`-format list (`HEX  name` or `HEX *name`).
/// A name listed twice with different digests is ambiguous: no answer.
pub fn find_in_sums(sums: &str, file: &str) -> Option<Sha256> {
    let mut found: Option<Sha256> = None;
    for l in sums.lines() {
        let Some((h, name)) = l.split_once(char::is_whitespace) else { continue };
        let name = name.trim_start();
        let name = name.strip_prefix('*').unwrap_or(name);
        if name != file {
            continue;
        }
        let sha = Sha256::parse(h).ok()?;
        match &found {
            Some(prev) if prev.as_str() != sha.as_str() => return None,
            _ => found = Some(sha),
        }
    }
    found
}

/// Download, verify and look up the signed digest of the base image for `arch`: the
/// first base URL whose directory has a `SHA256SUMS` is used.
pub fn signed_base_digest(
    r: &recipe::Recipe,
    arch: Arch,
    key: &TrustedKey,
    signer: &str,
    mirrors: &[crate::fetch::Mirror],
) -> Result<SignedDigest, VerifyError> {
    let mut tried = Vec::new();
    for tpl in &r.base.urls {
        let url = recipe::expand(tpl, &r.base.name, &r.base.version, arch);
        let Some((dir, file)) = url.rsplit_once('/') else {
            return Err(VerifyError::Input(format!("base URL {url:?} has no directory")));
        };
        let sums_url = format!("{dir}/SHA256SUMS");
        let sums = match net::get(&sums_url, mirrors)? {
            Got::Body(b) => b,
            Got::NotFound => {
                tried.push(net::rewrite(&sums_url, mirrors));
                continue;
            }
        };
        let sig_url = format!("{sums_url}.gpg");
        let sig = match net::get(&sig_url, mirrors)? {
            Got::Body(b) => b,
            // An unsigned list proves nothing: never fall back to trusting it.
            Got::NotFound => {
                return Err(VerifyError::integrity(
                    net::rewrite(&sig_url, mirrors),
                    "no signature next to SHA256SUMS",
                ))
            }
        };
        let what = net::rewrite(&sums_url, mirrors);
        let signed_by = openpgp::verify_detached(&sums, &sig, key, signer, &what)?;
        let text = String::from_utf8_lossy(&sums);
        let Some(sha) = find_in_sums(&text, file) else {
            return Err(VerifyError::integrity(what, format!("the signed list has no line for {file}")));
        };
        let recipe_sha256 =
            r.base.sha256.get(arch.as_str()).map(|s| s.as_str().to_string()).unwrap_or_default();
        return Ok(SignedDigest {
            arch: arch.as_str().to_string(),
            file: file.to_string(),
            sha256: sha.as_str().to_string(),
            sums_url,
            signer: signed_by,
            recipe_sha256,
        });
    }
    Err(VerifyError::Download { url: tried.join(", "), msg: "no SHA256SUMS found (HTTP 404/410)".into() })
}

/// Replace the base digest of `arch` in recipe text, keeping everything else byte for byte.
pub fn rewrite_recipe(text: &str, arch: &str, old: &str, new: &str) -> Result<String, VerifyError> {
    let lines = crate::yamlpos::lines(text);
    let path = format!("base.sha256.{arch}");
    let Some(n) = lines.get(&path).copied() else {
        return Err(VerifyError::Input(format!("recipe has no {path} to update")));
    };
    let mut out = String::with_capacity(text.len());
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == n {
            if !l.contains(old) {
                return Err(VerifyError::Input(format!("line {n} does not hold {path} = {old}")));
            }
            out.push_str(&l.replacen(old, new, 1));
        } else {
            out.push_str(l);
        }
    }
    Ok(out)
}

pub fn run_base_digest(a: &BaseDigestArgs, g: &Global) -> Result<()> {
    let loaded = recipe::load(a.recipe.as_deref())?;
    if a.write && a.recipe.is_none() {
        return Err(VerifyError::Input(
            "--write needs --recipe FILE (the embedded recipe is read-only)".into(),
        )
        .into());
    }
    let mirrors = net::parse_mirrors(&a.mirrors)?;
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
        if !g.quiet {
            eprintln!(
                "base-digest: {} {}: verifying SHA256SUMS.gpg (signer {signer})",
                loaded.recipe.base.version,
                arch.as_str()
            );
        }
        results.push(signed_base_digest(&loaded.recipe, arch, &key, &signer, &mirrors)?);
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
        if !g.quiet {
            eprintln!("base-digest: the recipe's base digests match the signed SHA256SUMS");
        }
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
        text = rewrite_recipe(&text, &r.arch, &r.recipe_sha256, &r.sha256)?;
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
    write_atomic(path, text.as_bytes())?;
    if !g.quiet {
        eprintln!("base-digest: wrote {} digest(s) into {}", changed.len(), path.display());
    }
    Ok(())
}

/// Temp file in the same directory, then rename: readers never see half a recipe.
fn write_atomic(path: &std::path::Path, data: &[u8]) -> Result<(), VerifyError> {
    let io = |source| VerifyError::Io { what: path.display().to_string(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(data).map_err(io)?;
    if let Ok(m) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(m.permissions()).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_lines_in_both_modes() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let s = format!(
            "{a} *ubuntu-24.04-server-cloudimg-amd64.img\n{b}  ubuntu-24.04-server-cloudimg-arm64.img\n"
        );
        assert_eq!(find_in_sums(&s, "ubuntu-24.04-server-cloudimg-amd64.img").unwrap().as_str(), a);
        assert_eq!(find_in_sums(&s, "ubuntu-24.04-server-cloudimg-arm64.img").unwrap().as_str(), b);
        assert!(find_in_sums(&s, "ubuntu-24.04-server-cloudimg-amd64.img.manifest").is_none());
        let twice = format!("{s}{b} *ubuntu-24.04-server-cloudimg-amd64.img\n");
        assert!(find_in_sums(&twice, "ubuntu-24.04-server-cloudimg-amd64.img").is_none());
    }

    #[test]
    fn rewrite_touches_only_the_one_digest() {
        let text = recipe::load_embedded(recipe::DEFAULT_RECIPE).unwrap().text;
        let old = "0e25ca6ee9f08ec5d4f9910054b66ae7163c6152e81a3e67689d89bd6e4dfa69";
        let new = "1".repeat(64);
        let out = rewrite_recipe(&text, "amd64", old, &new).unwrap();
        assert_eq!(out.len(), text.len());
        let diff: Vec<_> = text.lines().zip(out.lines()).filter(|(a, b)| a != b).collect();
        assert_eq!(diff.len(), 1);
        assert!(diff[0].1.contains(&new));
        let parsed = recipe::parse(&out, "t").unwrap();
        assert_eq!(parsed.recipe.base.sha256["amd64"].as_str(), new);
        assert!(rewrite_recipe(&text, "amd64", &"9".repeat(64), &new).is_err());
    }
}
