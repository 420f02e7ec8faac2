//! A recipe resolved for one role and one arch: the exact list of downloads, with
//! final URLs and digests, and where each one's files land.

use serde::Serialize;

use crate::recipe::{expand, LoadedRecipe};
use crate::types::{Arch, Role, Sha256};

/// One download, fully resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: String,
    pub version: String,
    /// Tried in order.
    pub urls: Vec<String>,
    pub sha256: Sha256,
    /// Empty for the base image.
    pub install: Vec<InstallStep>,
}

/// `from`/`to` with template variables expanded.
#[derive(Debug, Clone, Serialize)]
pub struct InstallStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub recipe: String,
    pub recipe_digest: Sha256,
    pub kubernetes_version: String,
    pub role: Role,
    pub arch: Arch,
    pub source_date_epoch: u64,
    pub root_label: String,
    pub base: Item,
    pub artifacts: Vec<Item>,
    /// Helm add-ons in install order; empty except for control planes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<AddonItem>,
}

/// A recipe add-on resolved for a control plane: which chart file in the image to
/// install, where, with which values.
#[derive(Debug, Clone, Serialize)]
pub struct AddonItem {
    /// The artifact (chart) name and version.
    pub name: String,
    pub version: String,
    pub release: String,
    pub namespace: String,
    pub order: u32,
    pub cni: bool,
    /// Path of the chart .tgz in the image (the artifact's install target).
    pub chart: String,
    /// The chart file's pinned digest.
    pub sha256: Sha256,
    pub values: serde_json::Value,
    pub images: Vec<String>,
}

impl Plan {
    /// Resolve `recipe` for `role`/`arch`. Fails (input error) when the recipe does
    /// not pin `arch`.
    pub fn resolve(lr: &LoadedRecipe, role: Role, arch: Arch) -> Result<Plan, crate::exit::Classified> {
        let r = &lr.recipe;
        if !r.arches.contains(&arch) {
            return Err(crate::exit::Classified::input(format!(
                "{}: recipe {} does not support arch {arch} (it pins: {})",
                lr.origin,
                r.name,
                r.arches.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        // Validation guarantees every listed arch has a digest.
        let digest = |m: &crate::recipe::PerArch| {
            m.get(arch.as_str()).cloned().ok_or_else(|| {
                crate::exit::Classified::input(format!("{}: no sha256 for arch {arch}", lr.origin))
            })
        };
        let b = &r.base;
        let base = Item {
            name: b.name.clone(),
            version: b.version.clone(),
            urls: b.urls.iter().map(|u| expand(u, &b.name, &b.version, arch)).collect(),
            sha256: digest(&b.sha256)?,
            install: Vec::new(),
        };
        let mut artifacts = Vec::new();
        for a in r.artifacts.iter().filter(|a| a.roles.contains(&role)) {
            let x = |t: &str| expand(t, &a.name, &a.version, arch);
            artifacts.push(Item {
                name: a.name.clone(),
                version: a.version.clone(),
                urls: a.urls.iter().map(|u| x(u)).collect(),
                sha256: digest(&a.sha256)?,
                install: a
                    .install
                    .iter()
                    .map(|i| InstallStep {
                        from: i.from.as_deref().map(x),
                        to: x(&i.to),
                        mode: i.mode_bits(),
                    })
                    .collect(),
            });
        }
        let mut addons = Vec::new();
        if role == Role::ControlPlane {
            for ad in &r.addons {
                // Validation guarantees the artifact exists with exactly one install step.
                let Some(item) = artifacts.iter().find(|i| i.name == ad.artifact) else { continue };
                let Some(step) = item.install.first() else { continue };
                addons.push(AddonItem {
                    name: item.name.clone(),
                    version: item.version.clone(),
                    release: ad.release.clone(),
                    namespace: ad.namespace.clone(),
                    order: ad.order,
                    cni: ad.cni,
                    chart: step.to.clone(),
                    sha256: item.sha256.clone(),
                    values: ad.values.clone(),
                    images: ad.images.clone(),
                });
            }
            addons.sort_by_key(|a| a.order);
        }
        Ok(Plan {
            recipe: r.name.clone(),
            recipe_digest: lr.digest.clone(),
            kubernetes_version: r.kubernetes_version.clone(),
            role,
            arch,
            source_date_epoch: r.source_date_epoch,
            root_label: b.root_label.clone(),
            base,
            artifacts,
            addons,
        })
    }

    /// Base image first, then the artifacts: everything a build downloads.
    pub fn downloads(&self) -> impl Iterator<Item = &Item> {
        std::iter::once(&self.base).chain(self.artifacts.iter())
    }

    /// `<recipe>-<role>-<arch>`: the stem of every output file.
    pub fn stem(&self) -> String {
        format!("{}-{}-{}", self.recipe, self.role, self.arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_has_no_control_plane_tools() {
        let r = crate::recipe::load(None).unwrap();
        let p = Plan::resolve(&r, Role::Worker, Arch::Amd64).unwrap();
        let names: Vec<_> = p.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert!(names.contains(&"kubelet"));
        assert!(!names.contains(&"helm") && !names.contains(&"etcd"));
        assert_eq!(p.artifacts[0].urls[0], "https://dl.k8s.io/release/v1.30.3/bin/linux/amd64/kubeadm");
        let cp = Plan::resolve(&r, Role::ControlPlane, Arch::Arm64).unwrap();
        let etcd = cp.artifacts.iter().find(|a| a.name == "etcd").unwrap();
        assert_eq!(etcd.install[0].from.as_deref(), Some("etcd-v3.5.12-linux-arm64/etcdctl"));
    }

    #[test]
    fn addons_resolve_for_control_planes_only() {
        let r = crate::recipe::load(None).unwrap();
        let cp = Plan::resolve(&r, Role::ControlPlane, Arch::Amd64).unwrap();
        let a: Vec<_> = cp.addons.iter().map(|a| (a.release.as_str(), a.chart.as_str())).collect();
        assert_eq!(
            a,
            [
                ("cilium", "/usr/share/imgbuild/addons/cilium-1.16.1.tgz"),
                ("metrics-server", "/usr/share/imgbuild/addons/metrics-server-3.12.2.tgz"),
                ("ingress-nginx", "/usr/share/imgbuild/addons/ingress-nginx-4.11.5.tgz"),
            ]
        );
        assert!(cp.addons[0].cni && !cp.addons[1].cni);
        assert_eq!(
            cp.addons[2].sha256.as_str(),
            "7035b6656a07f85792d0d8e103b9bff84510db0e81d11db4e322709b07783ffa"
        );
        let w = Plan::resolve(&r, Role::Worker, Arch::Arm64).unwrap();
        assert!(w.addons.is_empty());
        assert!(!w.artifacts.iter().any(|a| a.name == "cilium" || a.name == "ingress-nginx"));
    }
}
