//! The add-on values the first control plane's user-data carries, checked before they
//! are written: `addons.backend` (the backend chart's values) and `addons.values.<release>`
//! (overrides of a recipe add-on, applied after the values baked into the image),
//! validated like helm validates them ([`crate::chart::values`]); each violation names
//! the field and its line in cluster.yaml.
//!
//! A cluster without workers: the backend would stay Pending on control planes tainted
//! `node-role.kubernetes.io/control-plane:NoSchedule`, and the installer with it. The
//! backend then gets a toleration for that taint (unless `addons.backend.tolerations`
//! is set; if that list does not tolerate it, the spec is refused). The recipe's
//! add-ons tolerate it in the values the image bakes (metrics-server, ingress-nginx)
//! or by their chart's defaults (Cilium).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::CloudInitError;
use crate::chart::addons::{BACKEND_USER_VALUES, USER_VALUES_DIR};
use crate::chart::values::{self, Charts};
use crate::cluster::plan::ClusterPlan;
use crate::types::{Arch, Role};

/// The taint kubeadm puts on control planes (kubeadm's `mark-control-plane`).
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// Files for the first control plane's user-data (path, YAML), plus warnings.
#[derive(Debug, Clone, Default)]
pub struct AddonFiles {
    pub files: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// What the spec's values are checked against: the backend chart always; the recipe's
/// add-ons (default: the embedded recipe) when the spec overrides any of them, their
/// charts from the download cache.
pub fn charts_for(l: &ClusterPlan, recipe: Option<&Path>) -> anyhow::Result<Charts> {
    let overrides = l.spec.addons.as_ref().is_some_and(|a| a.enabled && !a.values.is_empty());
    if !overrides {
        return Ok(Charts::backend_only()?);
    }
    let lr = crate::recipe::load(recipe)?;
    // charts are the same file on every arch
    let mut opts = crate::plan::PlanOptions::new(Role::ControlPlane, Arch::Amd64);
    opts.recipe_path = recipe.map(Path::to_path_buf);
    let plan = crate::plan::BuildPlan::resolve(&lr, &opts)?;
    let cache = crate::cache::Cache::open(None).ok();
    Ok(Charts::load(&plan, cache.as_ref())?)
}

fn tolerates_control_plane(t: &serde_yaml::Value) -> bool {
    let s = |k: &str| t.get(k).and_then(|v| v.as_str());
    let key_ok = matches!(s("key"), Some(CONTROL_PLANE_TAINT))
        || (s("key").is_none() && s("operator") == Some("Exists"));
    let effect_ok = matches!(s("effect"), None | Some("NoSchedule"));
    key_ok && effect_ok
}

/// The add-on files of the first control plane, or every problem with the values.
pub fn build(l: &ClusterPlan, charts: &Charts) -> Result<AddonFiles, CloudInitError> {
    let mut out = AddonFiles::default();
    let Some(a) = l.spec.addons.as_ref().filter(|a| a.enabled) else { return Ok(out) };
    let mut errors = Vec::new();
    let at = |path: &str, msg: &str| match l.line(path) {
        Some(line) => format!("{}:{line}: {path}: {msg}", l.origin),
        None => format!("{}: {path}: {msg}", l.origin),
    };

    let mut backend = a.backend.clone();
    let workers = l.spec.nodes.iter().filter(|n| n.role == Role::Worker).count();
    if workers == 0 {
        let key = serde_yaml::Value::from("tolerations");
        match backend.get(&key) {
            None => {
                let t: serde_yaml::Value = serde_yaml::from_str(&format!(
                    "[{{key: {CONTROL_PLANE_TAINT}, operator: Exists, effect: NoSchedule}}]"
                ))
                .map_err(|e| CloudInitError::Invalid(e.to_string()))?;
                backend.insert(key, t);
            }
            Some(t) if t.as_sequence().is_some_and(|s| s.iter().any(tolerates_control_plane)) => {}
            Some(_) => errors.push(at(
                "addons.backend.tolerations",
                &format!(
                    "the cluster has no workers: the backend must tolerate {CONTROL_PLANE_TAINT}:NoSchedule"
                ),
            )),
        }
    }
    let json = |m: &serde_yaml::Mapping, path: &str| -> Result<Value, String> {
        serde_json::to_value(m).map_err(|e| at(path, &format!("not JSON-compatible Helm values: {e}")))
    };
    match json(&backend, "addons.backend") {
        Ok(v) => {
            let viol =
                values::check(&charts.backend, &[&v]).map_err(|e| CloudInitError::Invalid(e.to_string()))?;
            for x in viol {
                errors.push(at(&format!("addons.backend.{}", x.path), &x.message));
            }
        }
        Err(e) => errors.push(e),
    }
    let header = "# Helm values for charts/backend, from the addons.backend section of cluster.yaml.\n";
    let body = if backend.is_empty() {
        "{}\n".to_string()
    } else {
        serde_yaml::to_string(&backend).map_err(|e| CloudInitError::Invalid(e.to_string()))?
    };
    out.files.push((BACKEND_USER_VALUES.to_string(), format!("{header}{body}")));

    for (release, m) in &a.values {
        let path = format!("addons.values.{release}");
        let Some(addon) = charts.addons.iter().find(|x| &x.release == release) else {
            let known: Vec<&str> = charts.addons.iter().map(|x| x.release.as_str()).collect();
            errors.push(at(
                &path,
                &format!("no add-on release {release:?} in the recipe (its add-ons: {})", known.join(", ")),
            ));
            continue;
        };
        let user = match json(m, &path) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match &addon.chart {
            Some(chart) => {
                let viol = values::check(chart, &[&addon.baked, &user])
                    .map_err(|e| CloudInitError::Invalid(e.to_string()))?;
                for x in viol {
                    errors.push(at(&format!("{path}.{}", x.path), &x.message));
                }
            }
            None => out.warnings.push(format!(
                "warning: {}: not checked against {}'s values.schema.json: {}",
                at(&path, "values override").trim_end_matches(": values override"),
                addon.file,
                charts
                    .notes
                    .iter()
                    .find(|n| n.contains(&addon.file))
                    .map(String::as_str)
                    .unwrap_or("chart not found")
            )),
        }
        let body = serde_yaml::to_string(m).map_err(|e| CloudInitError::Invalid(e.to_string()))?;
        out.files.push((
            PathBuf::from(USER_VALUES_DIR).join(format!("{release}.yaml")).display().to_string(),
            format!(
                "# Helm values for add-on {release}, from addons.values.{release} of cluster.yaml.\n{body}"
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(CloudInitError::Invalid(errors.join("\n")));
    }
    Ok(out)
}
