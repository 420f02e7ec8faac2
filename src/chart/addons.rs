//! The add-on files of a control-plane image, read by `imgbuild-addons.service`
//! (image-files/control-plane/usr/libexec/imgbuild/addons-install).
//!
//! The chart .tgz files themselves are recipe artifacts (installed by the layer like any
//! other download). This module adds what the recipe cannot express: the packaged
//! backend chart, each add-on's values file, and the index the installer follows.
//!
//! `namespaces.yaml` holds every add-on namespace (and the backend's) as a `Namespace`
//! labelled with the Pod Security level it enforces; the installer applies it before the
//! first chart. The cluster-wide defaults are in the baked admission configuration
//! (`/etc/kubernetes/admission/pod-security.yaml`).
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
use crate::types::{PodSecurity, Role};

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
/// The backend passes `restricted`, so its namespace enforces it.
pub const BACKEND_POD_SECURITY: PodSecurity = PodSecurity::Restricted;
/// The backend installs after every recipe add-on.
const BACKEND_ORDER: u32 = u32::MAX;
/// The default StorageClass: after every recipe add-on, before the backend (which may
/// claim a volume).
pub const STORAGE_RELEASE: &str = "local-path";
pub const STORAGE_NAMESPACE: &str = "local-path-storage";
const STORAGE_ORDER: u32 = u32::MAX - 1;
/// Its helper pods mount the volume directories from the host (hostPath).
pub const STORAGE_POD_SECURITY: PodSecurity = PodSecurity::Privileged;
/// The gitops profile's Application for the backend: a release of its own after Argo CD
/// (whose CRDs must exist first), in Argo CD's namespace.
pub const GITOPS_APP_RELEASE: &str = "backend-app";

fn carries_gitops(plan: &BuildPlan) -> bool {
    plan.addons.iter().any(|a| a.profile == Some(crate::types::Profile::Gitops))
}

/// Argo CD's namespace in `plan` (the gitops profile's add-on).
fn gitops_namespace(plan: &BuildPlan) -> Option<&str> {
    plan.addons
        .iter()
        .find(|a| a.profile == Some(crate::types::Profile::Gitops))
        .map(|a| a.namespace.as_str())
}

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
    /// Installed only when the cluster turns this profile on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::types::Profile>,
}

/// The control-plane add-on files, as (path in the image, bytes), all mode 0644: the
/// packaged backend chart, each add-on's values, the index. Empty for other roles.
pub fn files(plan: &BuildPlan) -> Result<Vec<(String, Vec<u8>)>, ChartError> {
    if plan.role != Role::ControlPlane {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let backend = super::package_backend(plan.source_date_epoch)?;
    let storage = super::package_local_path(plan.source_date_epoch)?;
    let index = index(plan, &backend)?;
    out.push((format!("{ADDONS_DIR}/{}", storage.file_name()), storage.bytes));
    if carries_gitops(plan) {
        let app = super::package_gitops_backend(plan.source_date_epoch)?;
        out.push((format!("{ADDONS_DIR}/{}", app.file_name()), app.bytes));
    }
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
    out.push((format!("{ADDONS_DIR}/namespaces.yaml"), namespaces(plan).into_bytes()));
    out.push((format!("{ADDONS_DIR}/addons.tsv"), tsv(&index).into_bytes()));
    out.push((format!("{ADDONS_DIR}/profiles.tsv"), profiles_tsv(&index).into_bytes()));
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
            profile: a.profile,
        })
        .collect();
    let storage = super::package_local_path(plan.source_date_epoch)?;
    out.push(IndexEntry {
        order: STORAGE_ORDER,
        name: storage.name.clone(),
        version: storage.version.clone(),
        release: STORAGE_RELEASE.into(),
        namespace: STORAGE_NAMESPACE.into(),
        cni: false,
        chart: format!("{ADDONS_DIR}/{}", storage.file_name()),
        sha256: crate::types::Sha256::of(&storage.bytes).to_string(),
        values: None,
        user_values: format!("{USER_VALUES_DIR}/{STORAGE_RELEASE}.yaml"),
        images: storage_images(),
        profile: None,
    });
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
        profile: None,
    });
    if let (true, Some(ns)) = (carries_gitops(plan), gitops_namespace(plan)) {
        let app = super::package_gitops_backend(plan.source_date_epoch)?;
        out.push(IndexEntry {
            order: BACKEND_ORDER,
            name: app.name.clone(),
            version: app.version.clone(),
            release: GITOPS_APP_RELEASE.into(),
            namespace: ns.to_string(),
            cni: false,
            chart: format!("{ADDONS_DIR}/{}", app.file_name()),
            sha256: crate::types::Sha256::of(&app.bytes).to_string(),
            values: None,
            user_values: format!("{USER_VALUES_DIR}/{GITOPS_APP_RELEASE}.yaml"),
            images: Vec::new(),
            profile: Some(crate::types::Profile::Gitops),
        });
    }
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

/// Every namespace the add-ons and the backend install into, with the Pod Security
/// level it enforces: the most permissive level of the add-ons that share it. Only
/// `enforce` is set; audit and warn keep the cluster defaults (`restricted`), so a
/// privileged namespace still reports what would not pass `restricted`.
pub fn namespaces(plan: &BuildPlan) -> String {
    let mut levels: std::collections::BTreeMap<&str, PodSecurity> = std::collections::BTreeMap::new();
    for a in &plan.addons {
        let l = levels.entry(a.namespace.as_str()).or_insert(a.pod_security);
        *l = (*l).max(a.pod_security);
    }
    for (ns, level) in [(STORAGE_NAMESPACE, STORAGE_POD_SECURITY), (BACKEND_NAMESPACE, BACKEND_POD_SECURITY)]
    {
        let l = levels.entry(ns).or_insert(level);
        *l = (*l).max(level);
    }
    let mut s = format!(
        "# Namespaces of the add-ons of recipe {} and their Pod Security levels\n\
         # (applied by imgbuild-addons before the first chart).\n",
        plan.recipe
    );
    for (ns, level) in levels {
        for line in [
            "---".to_string(),
            "apiVersion: v1".into(),
            "kind: Namespace".into(),
            "metadata:".into(),
            format!("  name: {ns}"),
            "  labels:".into(),
            format!("    pod-security.kubernetes.io/enforce: {level}"),
            "    pod-security.kubernetes.io/enforce-version: latest".into(),
        ] {
            s.push_str(&line);
            s.push('\n');
        }
    }
    s
}

/// The images the embedded storage chart deploys with its defaults: the provisioner and
/// its helper pod's.
fn storage_images() -> Vec<String> {
    let Some(values) = super::LOCAL_PATH.get_file("values.yaml").and_then(|f| f.contents_utf8()) else {
        return Vec::new();
    };
    let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(values) else { return Vec::new() };
    let img = &v["image"];
    let mut out = Vec::new();
    if let (Some(r), Some(t)) = (img["repository"].as_str(), img["tag"].as_str()) {
        out.push(format!("{r}:{t}"));
    }
    out.extend(v["helperImage"].as_str().map(str::to_string));
    out
}

/// The default image of the embedded backend chart (`image.repository:tag`).
fn backend_image() -> Option<String> {
    let values = super::BACKEND.get_file("values.yaml")?.contents_utf8()?;
    let v: serde_yaml::Value = serde_yaml::from_str(values).ok()?;
    let img = v.get("image")?;
    Some(format!("{}:{}", img.get("repository")?.as_str()?, img.get("tag")?.as_str()?))
}

/// Which release belongs to which profile (`release<TAB>profile`), for the installer: a
/// release listed here is installed only when [`PROFILES_FILE`] (written by user-data
/// from `addons.profiles`) names its profile.
pub fn profiles_tsv(index: &[IndexEntry]) -> String {
    let mut s = String::from("# release\tprofile\n");
    for e in index {
        if let Some(p) = e.profile {
            s.push_str(&format!("{}\t{p}\n", e.release));
        }
    }
    s
}

/// The profiles a cluster turns on, one per line (user-data, from `addons.profiles`).
pub const PROFILES_FILE: &str = "/etc/imgbuild/addons/profiles";

/// Kubernetes Secrets a turned-on profile needs (admin credentials, a CSI driver's cloud
/// credentials), `<dir>/<profile>.yaml` from user-data (0600): the installer applies a
/// profile's file right before each of its releases, into the namespace the chart reads.
pub const PROFILE_SECRETS_DIR: &str = "/etc/imgbuild/addons/secrets";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ImageRef;

    /// The embedded charts install on every cluster, so the images they deploy must be
    /// embedded (and pinned by `lock`) like kubeadm's: else nodes pull them at install time.
    #[test]
    fn the_embedded_charts_images_are_in_the_default_recipes_images() {
        let r = crate::recipe::load(None).unwrap().recipe;
        let storage: Vec<ImageRef> = storage_images().iter().map(|s| ImageRef::parse(s).unwrap()).collect();
        assert_eq!(storage.len(), 2, "provisioner and helper image: {storage:?}");
        for role in [Role::ControlPlane, Role::Worker] {
            let carried = r.images_for(role, &[]);
            for i in &storage {
                assert!(carried.contains(i), "{role:?} does not carry {i}");
            }
        }
        let backend = ImageRef::parse(&backend_image().unwrap()).unwrap();
        assert!(r.images_for(Role::Worker, &[]).contains(&backend));
    }
}
