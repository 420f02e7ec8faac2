//! Images in `<recipe>.lock`: what each reference resolved to (the index digest, or
//! the manifest digest of a single-platform image) and, per arch, the platform's
//! manifest. A reference that carries a digest (the charts pin their images' index
//! digests) is fetched by that digest and never re-resolved by tag; a tag is resolved
//! once, here, and the build then fetches by digest only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::registry::{Fetched, Registry};
use super::spec::{ConfigPlatform, Document, Platform, SpecError};
use super::OciError;
use crate::types::Arch;
use crate::types::{Digest, ImageRef};

/// One image in the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// The reference as the recipe names it (normalised).
    pub reference: ImageRef,
    /// What the reference points at: an image index or a single manifest.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Per arch (`amd64`, `arm64`): that platform's manifest.
    pub platforms: BTreeMap<String, LockedManifest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl LockedImage {
    /// Whether this entry pins `image` for `arch`: the same reference and, when the
    /// reference carries a digest, that digest.
    pub fn covers(&self, image: &ImageRef, arch: Arch) -> bool {
        self.reference == *image
            && image.digest.as_ref().is_none_or(|d| *d == self.digest)
            && self.platforms.contains_key(arch.as_str())
    }
}

/// Resolve `image` for `arches` through the registry: its top document (by digest
/// when pinned, else by tag), then each arch's manifest, which must be an image.
pub fn resolve(reg: &Registry, image: &ImageRef, arches: &[Arch]) -> Result<LockedImage, OciError> {
    let top = reg.manifest(image, &image.api_reference())?;
    let mut platforms = BTreeMap::new();
    match &top.doc {
        Document::Index { index, .. } => {
            for &arch in arches {
                let d = index
                    .select(arch)
                    .map_err(|source| OciError::NoPlatform { image: image.to_string(), source })?;
                // The platform's manifest must exist and be an image this node can run.
                let m = reg.manifest(image, &d.digest.to_string())?;
                if !matches!(m.doc, Document::Manifest { .. }) || m.media_type() != d.media_type {
                    return Err(OciError::Unsupported {
                        image: image.to_string(),
                        msg: format!(
                            "the index names {} as {}, the registry serves {}",
                            d.digest,
                            d.media_type,
                            m.media_type()
                        ),
                    });
                }
                platforms.insert(arch.as_str().to_string(), locked(&m));
            }
        }
        Document::Manifest { manifest, .. } => {
            // A single-platform image: its config says which platform it is.
            let cfg = reg.small_blob(image, &manifest.config.digest)?;
            let p: ConfigPlatform = serde_json::from_slice(&cfg).map_err(|e| OciError::Unsupported {
                image: image.to_string(),
                msg: format!("unreadable image config {}: {e}", manifest.config.digest),
            })?;
            let have =
                Platform { architecture: p.architecture, os: p.os, variant: p.variant, os_version: None };
            for &arch in arches {
                if !have.matches(arch) {
                    return Err(OciError::NoPlatform {
                        image: image.to_string(),
                        source: SpecError::NoPlatform { arch, have: have.display() },
                    });
                }
                platforms.insert(arch.as_str().to_string(), locked(&top));
            }
        }
    }
    Ok(LockedImage {
        reference: image.clone(),
        digest: top.digest.clone(),
        media_type: top.media_type().to_string(),
        size: top.bytes.len() as u64,
        platforms,
    })
}

fn locked(m: &Fetched) -> LockedManifest {
    LockedManifest {
        digest: m.digest.clone(),
        media_type: m.media_type().to_string(),
        size: m.bytes.len() as u64,
    }
}

/// Resolve every image, a few at a time (each is a handful of small requests), in order.
pub fn resolve_all(
    reg: &Registry,
    images: &[ImageRef],
    arches: &[Arch],
) -> Result<Vec<LockedImage>, OciError> {
    const PARALLEL: usize = 4;
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(PARALLEL) {
        let results: Vec<Result<LockedImage, OciError>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|i| s.spawn(move || resolve(reg, i, arches))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Err(OciError::Input("a resolver thread panicked".into())))
                })
                .collect()
        });
        for r in results {
            out.push(r?);
        }
    }
    Ok(out)
}
