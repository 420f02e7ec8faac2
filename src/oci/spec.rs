//! The documents of the OCI image spec and their Docker v2 schema 2 twins, as far as
//! imgbuild reads them: an index (Docker: manifest list) names one manifest per
//! platform; a manifest names a config and layers. Every reference is a descriptor
//! (media type, digest, size), and a descriptor's digest is the sha256 of the exact
//! bytes: nothing here is trusted before its digest was checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::Arch;
use crate::types::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Layer media types a Linux node's containerd unpacks.
pub const LAYER_TYPES: [&str; 5] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

pub use crate::types::image::MANIFEST_ACCEPT as ACCEPT;

/// Refuse documents larger than this (the spec suggests registries accept 4 MiB).
pub const MANIFEST_MAX: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

impl Platform {
    pub fn linux(arch: Arch) -> Platform {
        let (architecture, variant) = match arch {
            Arch::Amd64 => ("amd64", None),
            Arch::Arm64 => ("arm64", Some("v8".to_string())),
        };
        Platform { architecture: architecture.into(), os: "linux".into(), variant, os_version: None }
    }

    /// What containerd's platform matcher accepts for `arch` (`linux/arm64` with or
    /// without the `v8` variant, which is arm64's only one).
    pub fn matches(&self, arch: Arch) -> bool {
        self.os == "linux"
            && self.architecture == arch.as_str()
            && match arch {
                Arch::Amd64 => self.variant.is_none(),
                Arch::Arm64 => matches!(self.variant.as_deref(), None | Some("v8")),
            }
    }

    pub fn display(&self) -> String {
        let mut s = format!("{}/{}", self.os, self.architecture);
        if let Some(v) = &self.variant {
            s.push('/');
            s.push_str(v);
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config that say what it runs on.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigPlatform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest-like document, by what it is.
#[derive(Debug, Clone)]
pub enum Document {
    Index { media_type: String, index: Index },
    Manifest { media_type: String, manifest: Manifest },
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unsupported media type {0:?} (imgbuild takes OCI and Docker v2 schema 2 images)")]
    MediaType(String),
    #[error("not a valid {what}: {msg}")]
    Invalid { what: &'static str, msg: String },
    #[error("no linux/{arch} image (it has: {have})")]
    NoPlatform { arch: Arch, have: String },
}

impl Document {
    /// Parse a manifest or index. The media type comes from the document's own
    /// `mediaType`, else the `Content-Type` the registry sent, else the shape (an OCI
    /// document may omit it); Docker schema 1 and unknown types are refused.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Document, SpecError> {
        if bytes.len() as u64 > MANIFEST_MAX {
            return Err(SpecError::Invalid { what: "manifest", msg: format!("{} bytes", bytes.len()) });
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
            config: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| SpecError::Invalid { what: "manifest", msg: e.to_string() })?;
        let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string());
        let media_type = match (probe.media_type, header) {
            (Some(m), _) => m,
            (None, Some(h)) if [OCI_INDEX, OCI_MANIFEST].contains(&h.as_str()) => h,
            (None, _) if probe.manifests.is_some() => OCI_INDEX.to_string(),
            (None, _) if probe.config.is_some() => OCI_MANIFEST.to_string(),
            (None, h) => return Err(SpecError::MediaType(h.unwrap_or_else(|| "(none)".into()))),
        };
        let bad = |what, e: serde_json::Error| SpecError::Invalid { what, msg: e.to_string() };
        match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                let index: Index = serde_json::from_slice(bytes).map_err(|e| bad("image index", e))?;
                if index.schema_version != 2 {
                    return Err(SpecError::Invalid {
                        what: "image index",
                        msg: format!("schemaVersion {}", index.schema_version),
                    });
                }
                Ok(Document::Index { media_type, index })
            }
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let manifest: Manifest =
                    serde_json::from_slice(bytes).map_err(|e| bad("image manifest", e))?;
                if manifest.schema_version != 2 {
                    return Err(SpecError::Invalid {
                        what: "image manifest",
                        msg: format!("schemaVersion {}", manifest.schema_version),
                    });
                }
                if ![OCI_CONFIG, DOCKER_CONFIG].contains(&manifest.config.media_type.as_str()) {
                    // Helm charts, signatures and other artifacts share the registry API.
                    return Err(SpecError::MediaType(manifest.config.media_type.clone()));
                }
                if let Some(l) =
                    manifest.layers.iter().find(|l| !LAYER_TYPES.contains(&l.media_type.as_str()))
                {
                    return Err(SpecError::MediaType(l.media_type.clone()));
                }
                Ok(Document::Manifest { media_type, manifest })
            }
            other => Err(SpecError::MediaType(other.to_string())),
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Document::Index { media_type, .. } | Document::Manifest { media_type, .. } => media_type,
        }
    }
}

impl Index {
    /// The manifest for linux/`arch`: the first matching entry, as containerd picks it.
    /// Attestations and other non-image entries are skipped.
    pub fn select(&self, arch: Arch) -> Result<&Descriptor, SpecError> {
        let images = || {
            self.manifests.iter().filter(|d| {
                [OCI_MANIFEST, DOCKER_MANIFEST].contains(&d.media_type.as_str())
                    && !d.annotations.contains_key("vnd.docker.reference.type")
            })
        };
        images().find(|d| d.platform.as_ref().is_some_and(|p| p.matches(arch))).ok_or_else(|| {
            let mut have: Vec<String> =
                images().filter_map(|d| d.platform.as_ref().map(Platform::display)).collect();
            have.dedup();
            SpecError::NoPlatform {
                arch,
                have: if have.is_empty() { "none".into() } else { have.join(", ") },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(mt: &str, n: u8, platform: Option<(&str, &str, Option<&str>)>) -> serde_json::Value {
        let mut d = serde_json::json!({
            "mediaType": mt, "digest": format!("sha256:{}", hex::encode([n; 32])), "size": 10 + n as u64,
        });
        if let Some((os, a, v)) = platform {
            d["platform"] = serde_json::json!({"os": os, "architecture": a});
            if let Some(v) = v {
                d["platform"]["variant"] = v.into();
            }
        }
        d
    }

    #[test]
    fn selects_the_arch_like_containerd() {
        let mut att = desc(OCI_MANIFEST, 9, Some(("unknown", "unknown", None)));
        att["annotations"] = serde_json::json!({"vnd.docker.reference.type": "attestation-manifest"});
        let idx = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [
                desc(OCI_MANIFEST, 1, Some(("linux", "arm", Some("v7")))),
                desc(OCI_MANIFEST, 2, Some(("linux", "arm64", Some("v8")))),
                desc(OCI_MANIFEST, 3, Some(("linux", "amd64", None))),
                att,
            ]
        });
        let bytes = serde_json::to_vec(&idx).unwrap();
        let Document::Index { index, .. } = Document::parse(&bytes, None).unwrap() else { panic!() };
        assert_eq!(index.select(Arch::Arm64).unwrap().size, 12);
        assert_eq!(index.select(Arch::Amd64).unwrap().size, 13);
        let only_arm = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [desc(DOCKER_MANIFEST, 1, Some(("linux", "arm", Some("v7"))))]});
        let Document::Index { index, .. } =
            Document::parse(&serde_json::to_vec(&only_arm).unwrap(), None).unwrap()
        else {
            panic!()
        };
        let e = index.select(Arch::Amd64).unwrap_err();
        assert_eq!(e.to_string(), "no linux/amd64 image (it has: linux/arm/v7)");
    }

    #[test]
    fn media_types() {
        let m = serde_json::json!({"schemaVersion": 2, "config": desc(OCI_CONFIG, 1, None),
            "layers": [desc(LAYER_TYPES[1], 2, None)]});
        let b = serde_json::to_vec(&m).unwrap();
        assert_eq!(Document::parse(&b, None).unwrap().media_type(), OCI_MANIFEST);
        let helm = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.cncf.helm.config.v1+json", 1, None), "layers": []});
        let e = Document::parse(&serde_json::to_vec(&helm).unwrap(), None).unwrap_err();
        assert!(matches!(e, SpecError::MediaType(t) if t.contains("helm")));
        let v1 = br#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#;
        let e = Document::parse(v1, Some("application/vnd.docker.distribution.manifest.v1+prettyjws"))
            .unwrap_err();
        assert!(matches!(e, SpecError::MediaType(_)), "{e}");
        assert!(Document::parse(b"not json", None).is_err());
    }
}
