//! `imgbuild cluster upgrade --to vX.Y.Z`: roll a cluster to a new Kubernetes version
//! by replacing nodes, doing in the cluster what `kubeadm upgrade apply` (and Cluster
//! API's control-plane provider) do around the machines:
//!
//! 1. before any new-version machine joins: `kubernetesVersion` in the
//!    ClusterConfiguration of the `kube-system/kubeadm-config` ConfigMap (a joining
//!    control plane's kubeadm reads it to pick its static pods' version);
//! 2. once every control plane runs the new version: the `kube-proxy` DaemonSet's image
//!    (kube-proxy must not be newer than the API servers) and, when asked
//!    (`--coredns-tag`), the `coredns` Deployment's image.
//!
//! Run it once before the roll and again after the control planes are replaced; each run
//! does what the cluster's state allows and prints the replacement order still to go.
//! Version skew is enforced: no downgrade, no skipped minor, the previous roll finished.

use std::cmp::Ordering;
use std::fmt;
use std::path::PathBuf;

use anyhow::Result;
use serde::Deserialize;
use serde_json::json;

use super::ClusterError;
use crate::kube::{self, node, ObjectMeta};
use crate::reporter::Reporter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// `vX.Y.Z` exactly (what kubeadm's `kubernetesVersion` and a kubelet report;
    /// a pre-release or build suffix is refused).
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.strip_prefix('v')?.split('.');
        let mut n = || -> Option<u32> {
            let p = it.next()?;
            (!p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())?
        };
        let v = Version { major: n()?, minor: n()?, patch: n()? };
        it.next().is_none().then_some(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

pub struct UpgradeOptions {
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    pub to: String,
    /// CoreDNS image tag to roll to with kube-proxy (none: CoreDNS is left as it is)
    pub coredns_tag: Option<String>,
}

#[derive(Deserialize)]
struct ConfigMap {
    metadata: ObjectMeta,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Workload {
    spec: WorkloadSpec,
}
#[derive(Deserialize)]
struct WorkloadSpec {
    template: PodTemplate,
}
#[derive(Deserialize)]
struct PodTemplate {
    spec: PodSpec,
}
#[derive(Deserialize)]
struct PodSpec {
    containers: Vec<Container>,
}
#[derive(Deserialize)]
struct Container {
    name: String,
    image: String,
}

const KUBEADM_CONFIG: &str = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config";
const KUBE_PROXY: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy";
const COREDNS: &str = "/apis/apps/v1/namespaces/kube-system/deployments/coredns";

/// What a run found and did; `order` is the node replacement still to do, in order.
#[derive(Debug, Default)]
pub struct Outcome {
    pub from: Option<Version>,
    pub config_updated: bool,
    pub kube_proxy: Option<String>,
    pub coredns: Option<String>,
    /// (node, its kubelet version, is a control plane), control planes first
    pub order: Vec<(String, String, bool)>,
    /// What waits for the control planes.
    pub pending: Vec<String>,
}

/// The `kubernetesVersion:` line of a ClusterConfiguration document, replaced in place
/// so the rest of what kubeadm wrote stays byte for byte.
fn with_version(doc: &str, to: &Version) -> Result<(Version, String), String> {
    let mut found = None;
    let mut out = String::with_capacity(doc.len());
    for line in doc.split_inclusive('\n') {
        if let Some(v) = line.strip_prefix("kubernetesVersion:") {
            if found.is_some() {
                return Err("kubernetesVersion appears twice".into());
            }
            let v = v.trim().trim_matches('"');
            found = Some(Version::parse(v).ok_or_else(|| format!("kubernetesVersion {v:?} is not vX.Y.Z"))?);
            out.push_str(&format!("kubernetesVersion: {to}\n"));
        } else {
            out.push_str(line);
        }
    }
    found.map(|v| (v, out)).ok_or_else(|| "no top-level kubernetesVersion".into())
}

/// Skew rules between the running cluster and the target.
fn check_skew(cfg: &Version, to: &Version, nodes: &[(String, Version, bool)]) -> Result<(), String> {
    if to.major != cfg.major || to < cfg {
        return Err(format!(
            "the cluster runs {cfg}: {to} would be a downgrade (replace nodes with older images instead)"
        ));
    }
    if to.minor > cfg.minor + 1 {
        return Err(format!(
            "the cluster runs {cfg}: Kubernetes allows one minor at a time; roll to v{}.{}.x first",
            cfg.major,
            cfg.minor + 1
        ));
    }
    for (name, v, _) in nodes {
        if v > to {
            return Err(format!("node {name} runs {v}, newer than {to}"));
        }
        if to.minor > cfg.minor && v.minor < cfg.minor {
            return Err(format!(
                "node {name} still runs {v}: finish the roll to v{}.{} first",
                cfg.major, cfg.minor
            ));
        }
    }
    Ok(())
}

/// `REPO/NAME:TAG[@digest]` → `REPO/NAME:new` (the registry kubeadm was told to use stays).
fn retag(image: &str, tag: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let base = match no_digest[slash..].find(':') {
        Some(c) => &no_digest[..slash + c],
        None => no_digest,
    };
    format!("{base}:{tag}")
}

/// Set container `name`'s image in a DaemonSet/Deployment with a guarded JSON patch;
/// returns the new image, or None when it already is that.
fn set_image(k: &kube::Client, what: &str, path: &str, name: &str, tag: &str) -> Result<Option<String>> {
    let w: Workload = k.get(&format!("reading {what}"), path)?;
    let Some((i, c)) = w.spec.template.spec.containers.iter().enumerate().find(|(_, c)| c.name == name)
    else {
        anyhow::bail!("{what} has no container named {name}");
    };
    let image = retag(&c.image, tag);
    if image == c.image {
        return Ok(None);
    }
    let p = format!("/spec/template/spec/containers/{i}/image");
    // `test` makes the patch fail (422) instead of changing another container
    // if the object changed since it was read
    let ops = json!([
        {"op": "test", "path": format!("/spec/template/spec/containers/{i}/name"), "value": name},
        {"op": "test", "path": p, "value": c.image},
        {"op": "replace", "path": p, "value": image},
    ]);
    k.json_patch::<serde_json::Value>(&format!("updating {what}"), path, &ops)?;
    Ok(Some(image))
}

pub fn upgrade(o: &UpgradeOptions, rep: &Reporter) -> Result<Outcome> {
    let to = Version::parse(&o.to)
        .ok_or_else(|| ClusterError::Invalid(format!("--to {}: expected a version like v1.30.5", o.to)))?;
    if let Some(t) = &o.coredns_tag {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(ClusterError::Invalid(format!("--coredns-tag {t:?} is not an image tag")).into());
        }
    }
    let k = kube::Client::from_kubeconfig(&o.kubeconfig, o.context.as_deref())?;
    let cm: ConfigMap = k.get("reading the kubeadm-config ConfigMap", KUBEADM_CONFIG)?;
    let doc = cm
        .data
        .get("ClusterConfiguration")
        .ok_or_else(|| anyhow::anyhow!("kube-system/kubeadm-config has no ClusterConfiguration"))?;
    let (cfg, new_doc) = with_version(doc, &to)
        .map_err(|e| anyhow::anyhow!("kube-system/kubeadm-config ClusterConfiguration: {e}"))?;
    let mut nodes = Vec::new();
    for n in node::list(&k)? {
        let v = &n.status.node_info.kubelet_version;
        let v = Version::parse(v)
            .ok_or_else(|| anyhow::anyhow!("node {} reports kubelet version {v:?}, not vX.Y.Z", n.name()))?;
        nodes.push((n.name().to_string(), v, n.is_control_plane()));
    }
    check_skew(&cfg, &to, &nodes).map_err(ClusterError::Refused)?;
    let mut out = Outcome { from: Some(cfg), ..Default::default() };
    if cfg != to {
        // resourceVersion makes the patch fail (409) if someone changed it since it was read
        let patch = json!({"metadata": {"resourceVersion": cm.metadata.resource_version},
                           "data": {"ClusterConfiguration": new_doc}});
        k.merge_patch::<_, serde_json::Value>(
            "updating the kubeadm-config ConfigMap",
            KUBEADM_CONFIG,
            &patch,
        )?;
        rep.status(format_args!("kubeadm-config: kubernetesVersion {cfg} -> {to}"));
        out.config_updated = true;
    }
    let cps_done = nodes.iter().filter(|n| n.2).all(|n| n.1 == to);
    if cps_done {
        out.kube_proxy =
            set_image(&k, "DaemonSet kube-system/kube-proxy", KUBE_PROXY, "kube-proxy", &to.to_string())?;
        if let Some(t) = &o.coredns_tag {
            out.coredns = set_image(&k, "Deployment kube-system/coredns", COREDNS, "coredns", t)?;
        }
    } else {
        out.pending.push(format!("kube-proxy {to}: after every control plane runs {to}"));
        if let Some(t) = &o.coredns_tag {
            out.pending.push(format!("CoreDNS {t}: after every control plane runs {to}"));
        }
    }
    let mut todo: Vec<&(String, Version, bool)> = nodes.iter().filter(|n| n.1 != to).collect();
    todo.sort_by(|a, b| match (a.2, b.2) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.0.cmp(&b.0),
    });
    out.order = todo.into_iter().map(|(n, v, cp)| (n.clone(), v.to_string(), *cp)).collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_and_skew() {
        assert_eq!(v("v1.30.3"), Version { major: 1, minor: 30, patch: 3 });
        for bad in ["1.30.3", "v1.30", "v1.30.3-rc.1", "v1.30.3.4", "v1..3", "v1.30.x"] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
        let n = |name: &str, ver: &str, cp: bool| (name.to_string(), v(ver), cp);
        let cluster = [n("cp-1", "v1.30.3", true), n("w-1", "v1.30.2", false)];
        assert!(check_skew(&v("v1.30.3"), &v("v1.30.5"), &cluster).is_ok());
        assert!(check_skew(&v("v1.30.3"), &v("v1.31.0"), &cluster).is_ok());
        assert!(check_skew(&v("v1.30.3"), &v("v1.32.0"), &cluster)
            .unwrap_err()
            .contains("one minor at a time"));
        assert!(check_skew(&v("v1.30.3"), &v("v1.30.2"), &cluster).unwrap_err().contains("downgrade"));
        assert!(check_skew(&v("v1.30.3"), &v("v2.0.0"), &cluster).is_err());
        // a node left on the previous minor blocks the next minor
        let old = [n("cp-1", "v1.30.3", true), n("w-1", "v1.29.7", false)];
        assert!(check_skew(&v("v1.30.3"), &v("v1.31.0"), &old).unwrap_err().contains("w-1"));
        // re-running mid-roll (config already at the target) is fine
        let mid = [n("cp-1", "v1.31.0", true), n("w-1", "v1.30.3", false)];
        assert!(check_skew(&v("v1.31.0"), &v("v1.31.0"), &mid).is_ok());
    }

    #[test]
    fn version_line_is_replaced_in_place() {
        let doc = "apiServer:\n  extraArgs: {}\napiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nkubernetesVersion: v1.30.3\nnetworking:\n  podSubnet: 10.244.0.0/16\n";
        let (from, new) = with_version(doc, &v("v1.31.0")).unwrap();
        assert_eq!(from, v("v1.30.3"));
        assert_eq!(new, doc.replace("v1.30.3", "v1.31.0"));
        assert!(with_version("kind: X\n", &v("v1.31.0")).is_err());
        assert!(with_version("kubernetesVersion: latest\n", &v("v1.31.0")).is_err());
    }

    #[test]
    fn retag_keeps_the_registry() {
        assert_eq!(
            retag("registry.k8s.io/kube-proxy:v1.30.3", "v1.31.0"),
            "registry.k8s.io/kube-proxy:v1.31.0"
        );
        assert_eq!(
            retag("10.0.0.5:5000/k8s/kube-proxy:v1.30.3@sha256:ab", "v1.30.5"),
            "10.0.0.5:5000/k8s/kube-proxy:v1.30.5"
        );
        assert_eq!(retag("kube-proxy", "v1"), "kube-proxy:v1");
    }
}
