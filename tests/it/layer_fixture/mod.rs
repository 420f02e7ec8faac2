//! Stand-in blobs shaped like the real release archives, and helpers to compose a
//! layer from them and write it into a directory tree.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use imgbuild::layer::{Content, Kind, Layer};
use imgbuild::plan::{BuildPlan as Plan, PackagePlan, PlanOptions};
use imgbuild::types::{Arch, Role};

/// Bytes of a stand-in executable: a tiny script naming what it stands for.
pub fn stub(name: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho stand-in {name}\n").into_bytes()
}

/// A tar.gz with `members`: names ending in `/` are directories, others files
/// whose content is `stub(name)`.
pub fn targz(members: &[&str]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for m in members {
        let mut h = tar::Header::new_gnu();
        if m.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, m, std::io::empty()).unwrap();
        } else {
            let data = stub(m);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, m, data.as_slice()).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap()
}

pub const CONTAINERD: &[&str] = &[
    "bin/",
    "bin/containerd",
    "bin/containerd-shim",
    "bin/containerd-shim-runc-v1",
    "bin/containerd-shim-runc-v2",
    "bin/containerd-stress",
    "bin/ctr",
];
pub const CNI: &[&str] =
    &["./", "./LICENSE", "./README.md", "./bandwidth", "./bridge", "./host-local", "./loopback", "./portmap"];
pub const CRICTL: &[&str] = &["crictl"];
pub const ETCD: &[&str] = &[
    "etcd-v3.5.12-linux-amd64/",
    "etcd-v3.5.12-linux-amd64/Documentation/",
    "etcd-v3.5.12-linux-amd64/Documentation/README.md",
    "etcd-v3.5.12-linux-amd64/README.md",
    "etcd-v3.5.12-linux-amd64/etcd",
    "etcd-v3.5.12-linux-amd64/etcdctl",
    "etcd-v3.5.12-linux-amd64/etcdutl",
];
pub const HELM: &[&str] =
    &["linux-amd64/", "linux-amd64/LICENSE", "linux-amd64/README.md", "linux-amd64/helm"];

/// The default recipe resolved for `role` on amd64, without its Ubuntu packages (they
/// need the archive and a base image: tests/apt.rs) and its container images (they need
/// a registry: tests/oci_*.rs).
pub fn plan(role: Role) -> Plan {
    let r = imgbuild::recipe::load(None).unwrap();
    let mut p = Plan::resolve(&r, &PlanOptions::new(role, Arch::Amd64)).unwrap();
    p.packages = PackagePlan::None;
    p.images.clear();
    p
}

/// The layer of the build's default steps from blobs by artifact name (none missing
/// unless a test removes one), against a base that has no files.
pub fn compose_layer(plan: &Plan, dl: &BTreeMap<String, PathBuf>, work: &Path) -> anyhow::Result<Layer> {
    let mut fetched = imgbuild::fetch::Fetched::default();
    for a in &plan.artifacts {
        if let Some(p) = dl.get(&a.name) {
            fetched.insert(a, p.clone());
        }
    }
    let no_base = |_: &str| -> Result<Option<Vec<u8>>, imgbuild::apt::AptError> { Ok(None) };
    let rep = imgbuild::reporter::Reporter::silent();
    let steps = imgbuild::build::default_steps(&Default::default());
    Ok(imgbuild::build::compose(plan, &fetched, work, &no_base, &rep, &steps)?.layer)
}

/// Write a stand-in blob for every artifact of `plan` into `dir`.
pub fn downloads(plan: &Plan, dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for a in &plan.artifacts {
        let bytes = match a.name.as_str() {
            "containerd" => targz(CONTAINERD),
            "cni-plugins" => targz(CNI),
            "crictl" => targz(CRICTL),
            "etcd" => targz(ETCD),
            "helm" => targz(HELM),
            other => stub(other),
        };
        let p = dir.join(format!("blob-{}", a.name));
        std::fs::File::create(&p).unwrap().write_all(&bytes).unwrap();
        out.insert(a.name.clone(), p);
    }
    out
}

/// A composed (not sealed) layer for `role` from fresh stand-in blobs in `tmp`.
pub fn compose(role: Role, tmp: &Path) -> (Plan, Layer) {
    let plan = plan(role);
    let blobs = tmp.join("blobs");
    let work = tmp.join("work");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let dl = downloads(&plan, &blobs);
    let layer = compose_layer(&plan, &dl, &work).unwrap();
    (plan, layer)
}

/// The bytes of a file entry.
pub fn bytes(layer: &Layer, path: &str) -> Vec<u8> {
    match &layer.get(path).unwrap_or_else(|| panic!("{path} missing from layer")).kind {
        Kind::File(Content::Bytes(b)) => b.clone(),
        Kind::File(Content::Path(p)) => std::fs::read(p).unwrap(),
        other => panic!("{path} is not a file: {other:?}"),
    }
}

pub fn text(layer: &Layer, path: &str) -> String {
    String::from_utf8(bytes(layer, path)).unwrap()
}

/// Write every entry of `layer` below `root` (symlinks as they are, absolute targets included).
pub fn materialize(layer: &Layer, root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for (path, e) in layer.iter() {
        let dst = root.join(path.trim_start_matches('/'));
        match &e.kind {
            Kind::Dir => std::fs::create_dir_all(&dst).unwrap(),
            Kind::File(_) => {
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::write(&dst, bytes(layer, path)).unwrap();
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(e.mode)).unwrap();
            }
            Kind::Symlink(t) => {
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(t, &dst).unwrap();
            }
        }
    }
}

/// Is `tool` runnable? Missing tools fail under CI and skip (with a note) elsewhere.
pub fn have(tool: &'static str) -> bool {
    crate::common::tool(tool)
}
