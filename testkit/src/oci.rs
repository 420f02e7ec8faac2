//! OCI (and Docker v2) test images written from the image spec: deterministic gzipped tar
//! layers, configs, platform manifests and an index, as a registry or a cache stores them.

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// What `helm push` writes (helm `pkg/registry`): a chart's metadata as the config, the
/// `.tgz` as the one layer.
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
pub const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";

/// `sha256:<hex>` of `b` (an OCI digest).
pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", crate::sha256_hex(b))
}

/// A gzipped layer and its diff ID (the sha256 of the uncompressed tar).
pub type TestLayer = (Vec<u8>, String);

/// A deterministic gzipped tar layer of `files` (path, content); files under a `bin/`
/// directory are executable.
pub fn layer(files: &[(&str, &[u8])]) -> TestLayer {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(if path.contains("bin/") { 0o755 } else { 0o644 });
        h.set_mtime(crate::MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, *content).expect("an in-memory tar entry");
    }
    let raw = tar.into_inner().expect("an in-memory tar");
    let diff_id = sha256(&raw);
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("in-memory gzip");
    (gz.finish().expect("in-memory gzip"), diff_id)
}

/// A platform manifest as stored: media type, digest, bytes, and the platform's arch.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
    pub arch: String,
}

/// An image as a registry holds it: its blobs (configs, layers), platform manifests and
/// the top document (an index, or the only manifest).
#[derive(Clone, Debug)]
pub struct TestImage {
    pub blobs: Vec<Vec<u8>>,
    pub manifests: Vec<Pushed>,
    pub top: Vec<u8>,
    pub top_media_type: String,
}

impl TestImage {
    /// The digest a reference pins: the top document's.
    pub fn digest(&self) -> String {
        sha256(&self.top)
    }

    pub fn manifest_for(&self, arch: &str) -> &Pushed {
        self.manifests.iter().find(|m| m.arch == arch).expect("a manifest for the arch")
    }

    /// Every document and blob of the image, each stored under its digest as
    /// `<dir>/<hex>` (the layout of imgbuild's cache `sha256/` and of the boot test's
    /// image store).
    pub fn write_blobs(&self, dir: &Path) -> Result<()> {
        let docs = std::iter::once(&self.top).chain(self.manifests.iter().map(|m| &m.bytes));
        for b in docs.chain(self.blobs.iter()) {
            crate::write(&dir.join(crate::sha256_hex(b)), b)?;
        }
        Ok(())
    }
}

/// A single OCI manifest (no platform) with config `config` of type `config_type` and the
/// layers `(media type, bytes)`, as an artifact (a Helm chart) is stored.
pub fn single(config_type: &str, config: &[u8], layers: &[(&str, &[u8])]) -> TestImage {
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": config.len()},
        "layers": layers.iter().map(|(t, b)| serde_json::json!({"mediaType": t, "digest": sha256(b), "size": b.len()})).collect::<Vec<_>>(),
    });
    let m = serde_json::to_vec_pretty(&m).expect("manifest JSON");
    let pushed =
        Pushed { media_type: OCI_MANIFEST.into(), digest: sha256(&m), bytes: m.clone(), arch: String::new() };
    let blobs = std::iter::once(config.to_vec()).chain(layers.iter().map(|(_, b)| b.to_vec())).collect();
    TestImage { blobs, manifests: vec![pushed], top: m, top_media_type: OCI_MANIFEST.into() }
}

/// An image with one manifest per `(arch, layers)`; `docker` picks Docker v2 media types,
/// `index` false makes a single-manifest image (one platform only). Its config runs
/// `/bin/busybox echo hello`.
pub fn image(platforms: &[(&str, Vec<TestLayer>)], docker: bool, index: bool) -> TestImage {
    image_running(platforms, docker, index, &["echo", "hello"])
}

/// [`image`] whose config runs `/bin/busybox CMD…`.
pub fn image_running(
    platforms: &[(&str, Vec<TestLayer>)],
    docker: bool,
    index: bool,
    cmd: &[&str],
) -> TestImage {
    let (mt_m, mt_c, mt_l, mt_i) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX)
    };
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    for (arch, layers) in platforms {
        let diff_ids: Vec<&String> = layers.iter().map(|(_, d)| d).collect();
        let mut cfg = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Entrypoint": ["/bin/busybox"], "Cmd": cmd},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if *arch == "arm64" {
            cfg["variant"] = "v8".into();
        }
        let cfg = serde_json::to_vec(&cfg).expect("config JSON");
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": mt_m,
            "config": {"mediaType": mt_c, "digest": sha256(&cfg), "size": cfg.len()},
            "layers": layers.iter().map(|(b, _)| serde_json::json!({"mediaType": mt_l, "digest": sha256(b), "size": b.len()})).collect::<Vec<_>>(),
        });
        let m = serde_json::to_vec_pretty(&m).expect("manifest JSON");
        blobs.push(cfg);
        for (b, _) in layers {
            if !blobs.contains(b) {
                blobs.push(b.clone());
            }
        }
        manifests.push(Pushed {
            media_type: mt_m.into(),
            digest: sha256(&m),
            bytes: m,
            arch: arch.to_string(),
        });
    }
    if !index {
        assert_eq!(manifests.len(), 1, "a single-manifest image has one platform");
        let m = manifests[0].clone();
        return TestImage {
            blobs,
            top: m.bytes.clone(),
            top_media_type: m.media_type.clone(),
            manifests: vec![m],
        };
    }
    let entries: Vec<serde_json::Value> = manifests
        .iter()
        .map(|m| {
            let mut p = serde_json::json!({"architecture": m.arch, "os": "linux"});
            if m.arch == "arm64" {
                p["variant"] = "v8".into();
            }
            serde_json::json!({"mediaType": m.media_type, "digest": m.digest, "size": m.bytes.len(), "platform": p})
        })
        .collect();
    let idx = serde_json::to_vec_pretty(
        &serde_json::json!({"schemaVersion": 2, "mediaType": mt_i, "manifests": entries}),
    )
    .expect("index JSON");
    TestImage { blobs, manifests, top: idx, top_media_type: mt_i.into() }
}
