//! The images inside a node image: one OCI image layout (image-spec `image-layout.md`)
//! at [`IMAGES_DIR`], imported at boot by `imgbuild-images.service` with containerd's
//! own `ctr images import` (a tar stream of the layout, made on the node). This module
//! makes its documents; `layer` writes them and the blobs into the image.
//!
//! - `blobs/sha256/<hex>`: every blob under its digest, so a layer that several images
//!   share is stored once. The bytes are exactly what the registry served and the
//!   build verified; the in-image manifest lists each with its sha256.
//! - `index.json`: one entry per name the image gets in containerd, each pointing at
//!   what the reference resolved to (the image index for multi-arch images, so
//!   containerd records the digest the recipe pins) with the
//!   `io.containerd.image.name` annotation `ctr images import` names it by. Names:
//!   `repo:tag` and `repo@sha256:<digest>`, as a CRI pull records them. Only this
//!   arch's manifest is present; `ctr images import` and unpacking follow only the
//!   node's platform.
//! - `images.tsv`: `name<TAB>digest` per name: what the import unit checks
//!   `ctr -n k8s.io images ls` against (the node has no JSON parser to rely on).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::spec::{Document, OCI_INDEX};
use crate::types::{Digest, ImageRef};

/// Where the layout lives in the image.
pub const IMAGES_DIR: &str = "/usr/share/imgbuild/images";
/// containerd's annotation for an image record's name (`ctr images import` reads it).
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference's tag inside a layout.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image for one arch, its blobs verified and on disk.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub reference: ImageRef,
    /// What the reference resolved to (index or single manifest).
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Every blob this arch needs: the top document, the platform manifest (when the
    /// top is an index), the config and the layers; with the file holding each.
    pub blobs: Vec<(Digest, u64, PathBuf)>,
}

impl Embedded {
    /// The names this image gets in containerd.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.reference.tagged_name().into_iter().collect();
        v.push(self.reference.digest_name(&self.digest));
        v
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Entry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
    annotations: BTreeMap<&'static str, String>,
}

/// `index.json` and `images.tsv` for `images` (in order), byte-deterministic.
pub fn index_and_list(images: &[Embedded]) -> (Vec<u8>, String) {
    let mut manifests = Vec::new();
    let mut tsv = String::from("# name\tdigest (written by imgbuild; read by imgbuild-images.service)\n");
    for img in images {
        for name in img.names() {
            let mut annotations = BTreeMap::new();
            annotations.insert(CONTAINERD_NAME, name.clone());
            if let Some(t) = img.reference.tag.as_ref().filter(|_| !name.contains('@')) {
                annotations.insert(OCI_REF_NAME, t.clone());
            }
            manifests.push(Entry {
                media_type: &img.media_type,
                digest: img.digest.to_string(),
                size: img.size,
                annotations,
            });
            tsv.push_str(&format!("{name}\t{}\n", img.digest));
        }
    }
    let idx = IndexJson { schema_version: 2, media_type: OCI_INDEX, manifests };
    // Plain strings and numbers: serialising cannot fail.
    let mut json = serde_json::to_vec_pretty(&idx).unwrap_or_default();
    json.push(b'\n');
    (json, tsv)
}

/// The blobs an image needs for one platform, given its verified top document and
/// (for an index) the verified platform manifest: (digest, size) in walk order.
pub fn blobs_of(
    top: &Document,
    top_digest: &Digest,
    top_size: u64,
    platform: Option<(&Document, &Digest, u64)>,
) -> Result<Vec<(Digest, u64)>, String> {
    let mut out = vec![(top_digest.clone(), top_size)];
    let manifest = match (top, platform) {
        (Document::Manifest { manifest, .. }, None) => manifest,
        (Document::Index { .. }, Some((Document::Manifest { manifest, .. }, d, size))) => {
            out.push((d.clone(), size));
            manifest
        }
        _ => return Err("an index needs its platform's manifest, a manifest needs nothing more".into()),
    };
    out.push((manifest.config.digest.clone(), manifest.config.size));
    for l in &manifest.layers {
        out.push((l.digest.clone(), l.size));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// The recipe's destination policy keeps artifacts out of the layout.
    #[test]
    fn the_layout_directory_is_one_a_recipe_may_not_install_into() {
        assert!(crate::recipe::IMGBUILD_DIRS.contains(&super::IMAGES_DIR));
    }
}
