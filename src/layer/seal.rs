//! Sealing a composed layer: `/etc/imgbuild/release` and `/etc/imgbuild/manifest.json`.
//!
//! The manifest lists every entry the layer adds except itself, with digests, so
//! `imgbuild inspect` can re-verify an image. Both files are byte-deterministic:
//! same plan and same blobs, same bytes.

use super::{Content, Entry, Kind, Layer, LayerError};
use crate::manifest::{self, Download, FileEntry, FileKind, ImageEntry, Manifest, SignatureRecord};
use crate::plan::{BuildPlan, Item};
use crate::types::Sha256;

/// Where the release file sits inside the image.
pub const RELEASE_PATH: &str = "/etc/imgbuild/release";

/// The build's identity: sha256 over this text, one `key=value` line each, `\n`
/// terminated, in this order (every item of the plan, in plan order: the base, the
/// artifacts in recipe order, the packages in lock order):
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
/// package=<name> <version> <sha256>
/// image=sha256:<digest> <first image reference using it> <sha256>
/// ```
///
/// The embedded static files are covered by the imgbuild version.
pub fn inputs_text(plan: &BuildPlan) -> String {
    let mut s = String::from("imgbuild-inputs-v1\n");
    s.push_str(&format!("imgbuild_version={}\n", env!("CARGO_PKG_VERSION")));
    s.push_str(&format!("recipe={}\n", plan.recipe));
    s.push_str(&format!("recipe_digest={}\n", plan.recipe_digest));
    s.push_str(&format!("role={}\n", plan.role));
    s.push_str(&format!("arch={}\n", plan.arch));
    for i in plan.items() {
        s.push_str(&format!("{}={} {} {}\n", i.kind, i.name, i.version, i.sha256));
    }
    s
}

pub fn inputs_digest(plan: &BuildPlan) -> String {
    Sha256::of(inputs_text(plan).as_bytes()).to_string()
}

/// `/etc/imgbuild/release`: os-release style, shell-sourceable.
pub fn release_text(plan: &BuildPlan) -> String {
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

/// The manifest's list of embedded images (resolved ones: the layer step requires all).
fn images(plan: &BuildPlan) -> Vec<ImageEntry> {
    plan.images
        .iter()
        .filter_map(|i| {
            let r = i.resolved.as_ref()?;
            Some(ImageEntry {
                reference: i.reference.to_string(),
                digest: r.digest.to_string(),
                media_type: r.media_type.clone(),
                manifest: r.manifest.digest.to_string(),
                config: r.config.as_ref().map(|c| c.digest.to_string()).unwrap_or_default(),
                layers: r.layers.iter().map(|l| l.digest.to_string()).collect(),
                size: r.blobs().iter().map(|(_, s, _)| s).sum(),
            })
        })
        .collect()
}

/// (sha256, size) of a file's content; a host file whose digest is `known` is not
/// read (the disk checks its bytes against it as it lays them in).
fn digest(content: &Content, known: Option<&Sha256>) -> Result<(String, u64), LayerError> {
    match content {
        Content::Bytes(b) => Ok((Sha256::of(b).to_string(), b.len() as u64)),
        Content::Path(p) => {
            let io = |e| LayerError::Io { path: p.clone(), source: e };
            if let Some(sha) = known {
                return Ok((sha.to_string(), std::fs::metadata(p).map_err(io)?.len()));
            }
            let mut f = std::fs::File::open(p).map_err(io)?;
            let (sha, size) = Sha256::of_reader(&mut f, |_| {}).map_err(io)?;
            Ok((sha.to_string(), size))
        }
    }
}

/// The manifest entry for one layer entry (`known`: its content's sha256, if recorded).
pub fn file_entry(path: &str, e: &Entry, known: Option<&Sha256>) -> Result<FileEntry, LayerError> {
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
            let (sha, size) = digest(c, known)?;
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

/// A sealed layer: the layer with `/etc/imgbuild/release` and
/// `/etc/imgbuild/manifest.json` in it, and that manifest as a value and as the exact
/// bytes written into the image. Disk writes `layer`; output writes `json` beside the
/// image and reads `manifest` for the SBOM: nothing serializes or parses it again.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub layer: Layer,
    pub manifest: Manifest,
    pub json: Vec<u8>,
}

/// Add the release file and the manifest (every entry present now, `signatures` as the
/// verified records) to `layer`. Call last: nothing may change the layer afterwards.
pub fn seal(
    mut layer: Layer,
    plan: &BuildPlan,
    signatures: Vec<SignatureRecord>,
) -> Result<Sealed, LayerError> {
    layer.file(RELEASE_PATH, Content::Bytes(release_text(plan).into_bytes()), 0o644);
    layer.file(manifest::IN_IMAGE_PATH, Content::Bytes(Vec::new()), 0o644);
    if !layer.clashes().is_empty() {
        return Err(LayerError::Clash(layer.clashes().to_vec()));
    }
    let files = layer
        .iter()
        .filter(|(p, _)| p.as_str() != manifest::IN_IMAGE_PATH)
        .map(|(p, e)| file_entry(p, e, layer.known_digest(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = Manifest {
        imgbuild_version: env!("CARGO_PKG_VERSION").to_string(),
        recipe: plan.recipe.clone(),
        recipe_digest: plan.recipe_digest.to_string(),
        role: plan.role.to_string(),
        arch: plan.arch.to_string(),
        kubernetes_version: plan.kubernetes_version.clone(),
        inputs_digest: inputs_digest(plan),
        base: download(&plan.base),
        artifacts: plan.artifacts.iter().map(download).collect(),
        packages: plan.packages().iter().map(download).collect(),
        images: images(plan),
        files,
        signatures,
    };
    let json = to_json(&manifest);
    layer.file(manifest::IN_IMAGE_PATH, Content::Bytes(json.clone()), 0o644);
    Ok(Sealed { layer, manifest, json })
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
