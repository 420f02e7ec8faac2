//! The add-on files of a control-plane image, read by `imgbuild-addons.service`
//! (image-files/control-plane/usr/libexec/imgbuild/addons-install).
//!
//! The chart .tgz files themselves are recipe artifacts (installed by the layer like any
//! other download). This module adds what the recipe cannot express: the packaged
//! backend chart, each add-on's values file, and the index the installer follows.
//!
//! Index rows, in install order (`addons.tsv`, tab-separated, one per line; the image
//! has no JSON parser the installer could rely on, so `addons.json` is for people and
//! tools): `order name release namespace cni chart baked-values user-values`.
//! `baked-values` is `-` when the image bakes none; `user-values` is read only if it
//! exists (written by user-data, may hold secrets, never baked in).
//!
//! What the cluster side provides (`imgbuild cluster` / `imgbuild cloud-init`):
//! - kubelets run with `serverTLSBootstrap: true` (KubeletConfiguration), so their serving
//!   certificates are signed by the cluster CA once `imgbuild-kubelet-csr-approver`
//!   (started by a path unit when `/etc/kubernetes/admin.conf` appears) approves them;
//! - on the first control plane, user-data writes [`BACKEND_USER_VALUES`] (mode 0600; the
//!   backend chart's values from the cluster spec's `addons` section) and, optionally,
//!   `<USER_VALUES_DIR>/<release>.yaml` overrides for an add-on;
//! - its bootstrap script runs `systemctl start --no-block` [`INSTALLER_UNIT`] after a
//!   successful `kubeadm init`.

use serde::Serialize;

use super::ChartError;
use crate::plan::BuildPlan;
use crate::types::Role;

/// The installer unit (not enabled in the image; started by the init path).
pub const INSTALLER_UNIT: &str = "imgbuild-addons.service";
/// Where charts, values and the index live in the image.
pub const ADDONS_DIR: &str = "/usr/share/imgbuild/addons";
/// Per-cluster values delivered by user-data (the cluster spec's `addons` section).
pub const USER_VALUES_DIR: &str = "/etc/imgbuild/addons";
/// The backend's release, namespace and user values file.
pub const BACKEND_RELEASE: &str = "backend";
pub const BACKEND_NAMESPACE: &str = "backend";
pub const BACKEND_USER_VALUES: &str = "/etc/imgbuild/addons/values.yaml";
/// The backend installs after every recipe add-on.
const BACKEND_ORDER: u32 = u32::MAX;

/// One step of the installer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IndexEntry {
    pub order: u32,
    pub name: String,
    pub version: String,
    pub release: String,
    pub namespace: String,
    pub cni: bool,
    /// Chart .tgz in the image.
    pub chart: String,
    /// sha256 of the chart file.
    pub sha256: String,
    /// Values baked into the image, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<String>,
    /// Cluster-specific values, applied last when the file exists.
    pub user_values: String,
    pub images: Vec<String>,
}

/// The control-plane add-on files, as (path in the image, bytes), all mode 0644: the
/// packaged backend chart, each add-on's values, the index. Empty for other roles.
pub fn files(plan: &BuildPlan) -> Result<Vec<(String, Vec<u8>)>, ChartError> {
    if plan.role != Role::ControlPlane {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let backend = super::package_backend(plan.source_date_epoch)?;
    let index = index(plan, &backend)?;
    out.push((format!("{ADDONS_DIR}/{}", backend.file_name()), backend.bytes));
    for a in &plan.addons {
        if let Some(path) = values_path(a) {
            let yaml = serde_yaml::to_string(&a.values).map_err(|e| ChartError::Invalid {
                origin: format!("recipe {}", plan.recipe),
                msg: format!("values of add-on {}: {e}", a.release),
            })?;
            let text =
                format!("# Helm values for {} {} (from recipe {}).\n{yaml}", a.name, a.version, plan.recipe);
            out.push((path, text.into_bytes()));
        }
    }
    let json = serde_json::to_vec_pretty(&index).map_err(|e| ChartError::Invalid {
        origin: format!("recipe {}", plan.recipe),
        msg: format!("add-on index: {e}"),
    })?;
    out.push((format!("{ADDONS_DIR}/addons.json"), json));
    out.push((format!("{ADDONS_DIR}/addons.tsv"), tsv(&index).into_bytes()));
    Ok(out)
}

fn values_path(a: &crate::plan::AddonItem) -> Option<String> {
    let empty = a.values.is_null() || a.values.as_object().is_some_and(|m| m.is_empty());
    (!empty).then(|| format!("{ADDONS_DIR}/{}-values.yaml", a.release))
}

/// The installer's steps for `plan`: the recipe add-ons in order, then `backend`
/// (the embedded chart packaged for this build, see [`super::package_backend`]).
pub fn index(plan: &BuildPlan, backend: &super::Packaged) -> Result<Vec<IndexEntry>, ChartError> {
    let mut out: Vec<IndexEntry> = plan
        .addons
        .iter()
        .map(|a| IndexEntry {
            order: a.order,
            name: a.name.clone(),
            version: a.version.clone(),
            release: a.release.clone(),
            namespace: a.namespace.clone(),
            cni: a.cni,
            chart: a.chart.clone(),
            sha256: a.sha256.to_string(),
            values: values_path(a),
            user_values: format!("{USER_VALUES_DIR}/{}.yaml", a.release),
            images: a.images.clone(),
        })
        .collect();
    let image = backend_image();
    out.push(IndexEntry {
        order: BACKEND_ORDER,
        name: backend.name.clone(),
        version: backend.version.clone(),
        release: BACKEND_RELEASE.into(),
        namespace: BACKEND_NAMESPACE.into(),
        cni: false,
        chart: format!("{ADDONS_DIR}/{}", backend.file_name()),
        sha256: crate::types::Sha256::of(&backend.bytes).to_string(),
        values: None,
        user_values: BACKEND_USER_VALUES.into(),
        images: image.into_iter().collect(),
    });
    for e in &out {
        for f in [&e.name, &e.release, &e.namespace, &e.chart, &e.user_values] {
            if f.contains(['\t', '\n']) {
                return Err(ChartError::Invalid {
                    origin: format!("recipe {}", plan.recipe),
                    msg: format!("add-on field {f:?} contains a tab or newline"),
                });
            }
        }
    }
    Ok(out)
}

/// The default image of the embedded backend chart (`image.repository:tag`).
fn backend_image() -> Option<String> {
    let values = super::BACKEND.get_file("values.yaml")?.contents_utf8()?;
    let v: serde_yaml::Value = serde_yaml::from_str(values).ok()?;
    let img = v.get("image")?;
    Some(format!("{}:{}", img.get("repository")?.as_str()?, img.get("tag")?.as_str()?))
}

/// The tab-separated index the installer reads.
pub fn tsv(index: &[IndexEntry]) -> String {
    let mut s = String::from("# order\tname\trelease\tnamespace\tcni\tchart\tvalues\tuser-values\n");
    for e in index {
        s.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            e.order,
            e.name,
            e.release,
            e.namespace,
            if e.cni { "cni" } else { "-" },
            e.chart,
            e.values.as_deref().unwrap_or("-"),
            e.user_values
        ));
    }
    s
}
