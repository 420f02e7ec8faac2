//! Sealing a composed layer: `/etc/imgbuild/release` and `/etc/imgbuild/manifest.json`.
//!
//! The manifest lists every entry the layer adds except itself, with digests, so
//! `imgbuild inspect` can re-verify an image. Both files are byte-deterministic:
//! same plan and same blobs, same bytes.

use std::io::Read;

use sha2::{Digest, Sha256 as Hasher};

use super::{Content, Entry, Kind, Layer, LayerError};
use crate::manifest::{self, Download, FileEntry, FileKind, Manifest};
use crate::plan::{Item, Plan};

/// Where the release file sits inside the image.
pub const RELEASE_PATH: &str = "/etc/imgbuild/release";

/// The build's identity: sha256 over this text, one `key=value` line each, `\n`
/// terminated, in this order (artifacts in recipe order):
///
/// ```text
/// imgbuild-inputs-v1
/// imgbuild_version=<CARGO_PKG_VERSION>
/// recipe=<recipe name>
/// recipe_digest=<sha256 of the recipe text>
/// role=<control-plane|worker>
/// arch=<amd64|arm64>
/// base=<name> <version> <sha256>
/// artifact=<name> <version> <sha256>
/// ```
///
/// The embedded static files are covered by the imgbuild version.
pub fn inputs_text(plan: &Plan) -> String {
    let mut s = String::from("imgbuild-inputs-v1\n");
    s.push_str(&format!("imgbuild_version={}\n", env!("CARGO_PKG_VERSION")));
    s.push_str(&format!("recipe={}\n", plan.recipe));
    s.push_str(&format!("recipe_digest={}\n", plan.recipe_digest));
    s.push_str(&format!("role={}\n", plan.role));
    s.push_str(&format!("arch={}\n", plan.arch));
    let b = &plan.base;
    s.push_str(&format!("base={} {} {}\n", b.name, b.version, b.sha256));
    for a in &plan.artifacts {
        s.push_str(&format!("artifact={} {} {}\n", a.name, a.version, a.sha256));
    }
    s
}

pub fn inputs_digest(plan: &Plan) -> String {
    hex::encode(Hasher::digest(inputs_text(plan).as_bytes()))
}

/// `/etc/imgbuild/release`: os-release style, shell-sourceable.
pub fn release_text(plan: &Plan) -> String {
    let kv = [
        ("NAME", plan.recipe.clone()),
        ("VERSION", env!("CARGO_PKG_VERSION").to_string()),
        ("KUBERNETES_VERSION", plan.kubernetes_version.clone()),
        ("ROLE", plan.role.to_string()),
        ("ARCH", plan.arch.to_string()),
        ("BASE", format!("{} {}", plan.base.name, plan.base.version)),
        ("RECIPE_DIGEST", plan.recipe_digest.to_string()),
        ("INPUTS_DIGEST", inputs_digest(plan)),
    ];
    let mut s = String::from(
        "# Written by imgbuild: NAME is the recipe, VERSION the imgbuild release that built\n\
         # this image, INPUTS_DIGEST the identity of everything that went in.\n",
    );
    for (k, v) in kv {
        s.push_str(&format!("{k}={}\n", quote(&v)));
    }
    s
}

/// os-release quoting: double quotes, with `\`, `"`, `$` and backtick escaped.
fn quote(v: &str) -> String {
    let mut q = String::from("\"");
    for c in v.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

fn download(i: &Item) -> Download {
    Download {
        name: i.name.clone(),
        version: i.version.clone(),
        urls: i.urls.clone(),
        sha256: i.sha256.to_string(),
    }
}

/// (sha256, size) of a file's content.
fn digest(content: &Content) -> Result<(String, u64), LayerError> {
    match content {
        Content::Bytes(b) => Ok((hex::encode(Hasher::digest(b)), b.len() as u64)),
        Content::Path(p) => {
            let io = |e| LayerError::Io { path: p.clone(), source: e };
            let mut f = std::fs::File::open(p).map_err(io)?;
            let mut h = Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                size += n as u64;
            }
            Ok((hex::encode(h.finalize()), size))
        }
    }
}

/// The manifest entry for one layer entry.
pub fn file_entry(path: &str, e: &Entry) -> Result<FileEntry, LayerError> {
    let mut f = FileEntry {
        path: path.to_string(),
        kind: FileKind::Dir,
        mode: format!("{:04o}", e.mode),
        uid: e.uid,
        gid: e.gid,
        sha256: None,
        size: None,
        target: None,
    };
    match &e.kind {
        Kind::Dir => {}
        Kind::File(c) => {
            let (sha, size) = digest(c)?;
            f.kind = FileKind::File;
            f.sha256 = Some(sha);
            f.size = Some(size);
        }
        Kind::Symlink(t) => {
            f.kind = FileKind::Symlink;
            f.target = Some(t.clone());
        }
    }
    Ok(f)
}

/// Add the release file and the manifest to `layer`; return the manifest.
pub fn seal(layer: &mut Layer, plan: &Plan) -> Result<Manifest, LayerError> {
    layer.file(RELEASE_PATH, Content::Bytes(release_text(plan).into_bytes()), 0o644);
    let files = layer
        .iter()
        .filter(|(p, _)| p.as_str() != manifest::IN_IMAGE_PATH)
        .map(|(p, e)| file_entry(p, e))
        .collect::<Result<Vec<_>, _>>()?;
    let m = Manifest {
        imgbuild_version: env!("CARGO_PKG_VERSION").to_string(),
        recipe: plan.recipe.clone(),
        recipe_digest: plan.recipe_digest.to_string(),
        role: plan.role.to_string(),
        arch: plan.arch.to_string(),
        kubernetes_version: plan.kubernetes_version.clone(),
        inputs_digest: inputs_digest(plan),
        base: download(&plan.base),
        artifacts: plan.artifacts.iter().map(download).collect(),
        files,
        signatures: Vec::new(),
    };
    layer.file(manifest::IN_IMAGE_PATH, Content::Bytes(to_json(&m)), 0o644);
    Ok(m)
}

/// Put verified signature `records` into a sealed layer's manifest (the `files` list
/// excludes the manifest itself, so nothing else changes).
pub fn record_signatures(layer: &mut Layer, records: &[manifest::SignatureRecord]) -> anyhow::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let path = manifest::IN_IMAGE_PATH;
    let Some(Kind::File(Content::Bytes(b))) = layer.get(path).map(|e| &e.kind) else {
        anyhow::bail!("the layer has no sealed manifest at {path}");
    };
    let mut m: Manifest = serde_json::from_slice(b)?;
    m.signatures = records.to_vec();
    layer.file(path, Content::Bytes(to_json(&m)), 0o644);
    Ok(())
}

/// The manifest as written into the image and beside it: pretty JSON, newline-terminated.
/// Field order is the struct's and `files` is in path order, so the bytes are stable.
pub fn to_json(m: &Manifest) -> Vec<u8> {
    // Serializing plain strings, numbers and vectors cannot fail.
    let mut v = serde_json::to_vec_pretty(m).unwrap_or_default();
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("v1.30.3"), "\"v1.30.3\"");
        assert_eq!(quote("a\"$`\\b"), "\"a\\\"\\$\\`\\\\b\"");
    }
}
