//! The build manifest: written beside the image (`<stem>.manifest.json`) and into it
//! (`/etc/imgbuild/manifest.json`, without the fields only known after the image is
//! written). `imgbuild inspect` reads the in-image copy and re-verifies `files`.

use serde::{Deserialize, Serialize};

use crate::types::ItemKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub imgbuild_version: String,
    pub recipe: String,
    pub recipe_digest: String,
    pub role: String,
    pub arch: String,
    pub kubernetes_version: String,
    /// sha256 over everything that determines the image (recipe digest, role, arch,
    /// imgbuild version, every download digest: base, artifacts, packages): same value,
    /// same image.
    pub inputs_digest: String,
    pub base: Download,
    pub artifacts: Vec<Download>,
    /// The Ubuntu packages installed from the recipe's lock, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<Download>,
    /// The container images embedded (an OCI image layout, imported at boot), in plan
    /// order; their blobs are files of the layer and listed in `files` too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageEntry>,
    /// Every entry the layer adds, in path order.
    pub files: Vec<FileEntry>,
    /// Verified cosign signatures of downloads (`build --cosign-trust-root`), in plan order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<SignatureRecord>,
}

impl Manifest {
    /// Everything the image was built from, by kind, in plan order: the base, the
    /// artifacts, the packages (what the SBOM lists).
    pub fn components(&self) -> impl Iterator<Item = (ItemKind, &Download)> {
        std::iter::once((ItemKind::Base, &self.base))
            .chain(self.artifacts.iter().map(|d| (ItemKind::Artifact, d)))
            .chain(self.packages.iter().map(|d| (ItemKind::Package, d)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Download {
    pub name: String,
    pub version: String,
    pub urls: Vec<String>,
    pub sha256: String,
}

/// One embedded container image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// As the recipe names it (normalised), e.g. `registry.k8s.io/pause:3.9`.
    pub reference: String,
    /// What the reference resolved to (`sha256:…`): the index, or the only manifest.
    pub digest: String,
    pub media_type: String,
    /// This image's manifest for the image's arch.
    pub manifest: String,
    pub config: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// Bytes of the top document, the manifest, the config and the layers together.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub kind: FileKind,
    /// Octal permission bits, e.g. "0755".
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Where the manifest sits inside the image.
pub const IN_IMAGE_PATH: &str = "/etc/imgbuild/manifest.json";

/// A verified signature, as it would be recorded in the build manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SignatureRecord {
    /// The recipe artifact the signature covers (empty for `verify-blob`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact: String,
    /// Always "cosign-keyless".
    pub kind: String,
    pub file_sha256: String,
    pub identity: String,
    pub issuer: String,
    /// sha256 of the leaf certificate (DER).
    pub certificate_sha256: String,
    /// sha256 of the trust anchor (DER) the chain ended in.
    pub root_sha256: String,
    /// Leaf validity window, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}
