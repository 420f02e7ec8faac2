//! `imgbuild base-digest`: prove where the recipe's base-image digest comes from.
//!
//! For each architecture, the dated build's directory (the dirname of the base URL)
//! holds `SHA256SUMS` and a detached `SHA256SUMS.gpg`. The signature must verify with
//! the embedded Ubuntu cloud-image key *and* be made by its documented fingerprint; then
//! the line for the image file gives the digest. It is compared with the recipe (a
//! mismatch is an integrity failure) or, with `--write`, written into the recipe file.

use std::io::Write;

use anyhow::Result;

use super::net::{self, Got};
use super::openpgp::{self, TrustedKey};
use super::VerifyError;
use crate::recipe;
use crate::types::Arch;

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
                tried.push(net::shown(&sums_url, mirrors));
                continue;
            }
        };
        let sig_url = format!("{sums_url}.gpg");
        let sig = match net::get(&sig_url, mirrors)? {
            Got::Body(b) => b,
            // An unsigned list proves nothing: never fall back to trusting it.
            Got::NotFound => {
                return Err(VerifyError::integrity(
                    net::shown(&sig_url, mirrors),
                    "no signature next to SHA256SUMS",
                ))
            }
        };
        let what = net::shown(&sums_url, mirrors);
        let signed_by = openpgp::verify_detached(&sums, &sig, key, signer, &what)?;
        let text = String::from_utf8_lossy(&sums);
        let Some(sha) = crate::types::digest::find_in_sums(&text, file) else {
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

/// Temp file in the same directory, then rename: readers never see half a recipe.
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> Result<(), VerifyError> {
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
