//! Images in `<recipe>.lock`: what each reference resolved to (the index digest, or
//! the manifest digest of a single-platform image) and, per arch, the platform's
//! manifest. A reference that carries a digest (the charts pin their images' index
//! digests) is fetched by that digest and never re-resolved by tag; a tag is resolved
//! once, here, and the build then fetches by digest only.

use std::collections::BTreeMap;

use super::registry::{Fetched, Registry};
use super::spec::{ConfigPlatform, Document, Platform, SpecError};
use super::OciError;
pub use crate::lockfile::{LockedImage, LockedManifest};
use crate::types::Arch;
use crate::types::{Digest, ImageRef};

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

/// Resolve `image` for `arch` from blobs already verified by digest (the cache), without
/// the network: only a reference that pins a digest can be, and only when its top
/// document and the platform's manifest (or, for a single manifest, its config) are
/// there. `Ok(None)` otherwise; a cached blob that can no longer be trusted is an error.
pub fn resolve_cached(
    image: &ImageRef,
    arch: Arch,
    blob: Blobs<'_>,
) -> Result<Option<LockedImage>, OciError> {
    let failed = std::cell::RefCell::new(None);
    let get = |d: &Digest| match blob(d) {
        Ok(b) => b,
        Err(e) => {
            failed.borrow_mut().get_or_insert(e);
            None
        }
    };
    let found = from_blobs(image, arch, &get);
    match failed.into_inner() {
        Some(e) => Err(e.into()),
        None => Ok(found),
    }
}

fn from_blobs(
    image: &ImageRef,
    arch: Arch,
    blob: &dyn Fn(&Digest) -> Option<Vec<u8>>,
) -> Option<LockedImage> {
    let top_digest = image.digest.as_ref()?;
    let top_bytes = blob(top_digest)?;
    let top = Document::parse(&top_bytes, None).ok()?;
    let platform = match &top {
        Document::Index { index, .. } => {
            let d = index.select(arch).ok()?;
            let m = blob(&d.digest)?;
            let doc = Document::parse(&m, None).ok()?;
            (matches!(doc, Document::Manifest { .. }) && doc.media_type() == d.media_type).then_some(())?;
            LockedManifest {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: m.len() as u64,
            }
        }
        Document::Manifest { manifest, media_type } => {
            let p: ConfigPlatform = serde_json::from_slice(&blob(&manifest.config.digest)?).ok()?;
            let have =
                Platform { architecture: p.architecture, os: p.os, variant: p.variant, os_version: None };
            have.matches(arch).then_some(())?;
            LockedManifest {
                digest: top_digest.clone(),
                media_type: media_type.clone(),
                size: top_bytes.len() as u64,
            }
        }
    };
    Some(LockedImage {
        reference: image.clone(),
        digest: top_digest.clone(),
        media_type: top.media_type().to_string(),
        size: top_bytes.len() as u64,
        platforms: [(arch.as_str().to_string(), platform)].into_iter().collect(),
    })
}

fn locked(m: &Fetched) -> LockedManifest {
    LockedManifest {
        digest: m.digest.clone(),
        media_type: m.media_type().to_string(),
        size: m.bytes.len() as u64,
    }
}

/// Verified blobs by digest (the cache), for resolving without the network.
pub type Blobs<'a> = &'a (dyn Fn(&Digest) -> Result<Option<Vec<u8>>, crate::cache::CacheError> + Sync);

/// Resolve every image, in order: a digest-pinned one whose documents are all in
/// `cached` without the network, the others through the registry, a few at a time
/// (each is a handful of small requests).
pub fn resolve_all(
    reg: &Registry,
    images: &[ImageRef],
    arches: &[Arch],
    cached: Blobs<'_>,
) -> Result<Vec<LockedImage>, OciError> {
    const PARALLEL: usize = 4;
    let one = |i: &ImageRef| -> Result<LockedImage, OciError> {
        let mut from_cache: Option<LockedImage> = None;
        for &arch in arches {
            match (resolve_cached(i, arch, cached)?, from_cache.as_mut()) {
                (Some(l), None) => from_cache = Some(l),
                (Some(l), Some(acc)) => acc.platforms.extend(l.platforms),
                (None, _) => return resolve(reg, i, arches),
            }
        }
        from_cache.map_or_else(|| resolve(reg, i, arches), Ok)
    };
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(PARALLEL) {
        let results: Vec<Result<LockedImage, OciError>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|i| s.spawn(|| one(i))).collect();
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::oci::spec::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};

    fn doc(v: serde_json::Value) -> (Digest, Vec<u8>) {
        let b = serde_json::to_vec(&v).unwrap();
        (Digest::of(&b), b)
    }

    #[test]
    fn a_pinned_image_resolves_from_the_cache_alone() {
        let (cfg_d, cfg) = doc(serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"}));
        let (man_d, man) = doc(serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg_d.to_string(), "size": cfg.len()}, "layers": []}));
        let (idx_d, idx) = doc(serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": man_d.to_string(), "size": man.len(),
             "platform": {"os": "linux", "architecture": "arm64"}}]}));
        let mut store: HashMap<Digest, Vec<u8>> =
            [(idx_d.clone(), idx), (man_d.clone(), man), (cfg_d, cfg)].into_iter().collect();
        let pinned = ImageRef::parse(&format!("quay.io/a/b:1@{idx_d}")).unwrap();
        let l = from_blobs(&pinned, Arch::Arm64, &|d| store.get(d).cloned()).unwrap();
        assert_eq!((l.digest.clone(), l.platforms["arm64"].digest.clone()), (idx_d.clone(), man_d.clone()));
        assert!(from_blobs(&pinned, Arch::Amd64, &|d| store.get(d).cloned()).is_none(), "no amd64");
        // A single manifest pinned by digest: its config names the platform.
        let single = ImageRef::parse(&format!("quay.io/a/c@{man_d}")).unwrap();
        let l = from_blobs(&single, Arch::Arm64, &|d| store.get(d).cloned()).unwrap();
        assert_eq!(l.platforms["arm64"].digest, man_d);
        // A tag, or a platform manifest missing from the cache: the network is needed.
        assert!(from_blobs(&ImageRef::parse("quay.io/a/b:1").unwrap(), Arch::Arm64, &|d| store
            .get(d)
            .cloned())
        .is_none());
        store.remove(&man_d);
        assert!(from_blobs(&pinned, Arch::Arm64, &|d| store.get(d).cloned()).is_none());
    }

    #[test]
    fn a_cached_blob_that_cannot_be_trusted_is_an_error_not_a_miss() {
        let pinned = ImageRef::parse(&format!("quay.io/a/b:1@{}", Digest::of(b"x"))).unwrap();
        let tampered = |_: &Digest| {
            Err(crate::cache::CacheError::Tampered {
                path: "/c/sha256/x".into(),
                expected: crate::types::Sha256::of(b"x"),
                why: "is a symlink".into(),
            })
        };
        let e = resolve_cached(&pinned, Arch::Amd64, &tampered).unwrap_err();
        assert_eq!(crate::exit::Classify::code(&e), crate::exit::Code::Integrity, "{e}");
    }
}
