//! The add-on values the first control plane's user-data carries, checked before they
//! are written: `addons.backend` (the backend chart's values) and `addons.values.<release>`
//! (overrides of a recipe add-on, applied after the values baked into the image),
//! validated like helm validates them (`chart::values`); each violation names
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
use crate::chart::addons::{BACKEND_USER_VALUES, PROFILE_SECRETS_DIR, STORAGE_RELEASE, USER_VALUES_DIR};
use crate::chart::values::{self, Charts};
use crate::cluster::admin::AdminSecrets;
use crate::cluster::plan::ClusterPlan;
use crate::types::{Arch, Profile, Role};

/// The taint kubeadm puts on control planes (kubeadm's `mark-control-plane`).
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// Files for the first control plane's user-data (path, YAML), plus warnings.
#[derive(Debug, Clone, Default)]
pub struct AddonFiles {
    pub files: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// What the profiles need from outside cluster.yaml: the directory credentials files are
/// relative to (cluster.yaml's), and the admin credentials of `cluster init`
/// (`cluster::admin`) when a profile with an admin login is on.
#[derive(Debug, Clone, Copy)]
pub struct ProfileInputs<'a> {
    pub dir: &'a Path,
    pub admin: Option<&'a AdminSecrets>,
}

/// The known profiles `addons.profiles` turns on (unknown names are reported by [`build`]).
pub fn profiles_on(l: &ClusterPlan) -> Vec<Profile> {
    let Some(a) = l.spec.addons.as_ref().filter(|a| a.enabled) else { return Vec::new() };
    let mut on: Vec<Profile> = a.profiles.iter().filter_map(|p| Profile::parse(p)).collect();
    on.dedup();
    on
}

/// Does a turned-on profile log in with an admin password `cluster init` generates?
pub fn needs_admin(l: &ClusterPlan) -> bool {
    profiles_on(l).iter().any(|p| matches!(p, Profile::Monitoring | Profile::Gitops))
}

/// What the spec's values are checked against: the backend chart always; the recipe's
/// add-ons (default: the embedded recipe) when the spec overrides any of them (a CSI
/// profile overrides local-path's default flag), their charts from the download cache
/// (`cache_dir`, else the default one).
pub fn charts_for(
    l: &ClusterPlan,
    recipe: Option<&Path>,
    cache_dir: Option<&Path>,
) -> anyhow::Result<Charts> {
    let overrides = l.spec.addons.as_ref().is_some_and(|a| a.enabled && !a.values.is_empty())
        || profiles_on(l).iter().any(|p| p.is_csi());
    if !overrides {
        return Ok(Charts::backend_only()?);
    }
    let lr = crate::recipe::load(recipe)?;
    // charts are the same file on every arch
    let mut opts = crate::plan::PlanOptions::new(Role::ControlPlane, Arch::Amd64);
    opts.recipe_path = recipe.map(Path::to_path_buf);
    let plan = crate::plan::BuildPlan::resolve(&lr, &opts)?;
    // Not worth waiting for a `cache prune` (it may take long, and this prints nothing
    // while it waits): the charts are then checked as if they were not cached.
    let busy = &mut |_: &Path| Err(std::io::Error::other("a cache prune is running"));
    let cache = crate::cache::Cache::open_as(cache_dir, crate::cache::Access::Shared, busy).ok();
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
pub fn build(
    l: &ClusterPlan,
    charts: &Charts,
    inputs: ProfileInputs<'_>,
) -> Result<AddonFiles, CloudInitError> {
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
    if a.profiles.iter().any(|p| p == Profile::Monitoring.as_str()) {
        scraped_by_monitoring(&mut backend)?;
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

    let mut user_values = a.values.clone();
    if let Some(csi) = profiles_on(l).into_iter().find(|p| p.is_csi()) {
        not_default_storage(csi, &mut user_values, &at, &mut errors)?;
    }
    let on = profiles_on(l);
    let mut profile_overrides = Vec::new();
    for (release, m) in &user_values {
        let path = format!("addons.values.{release}");
        // A turned-on profile's chart is not part of the plan the overrides are checked
        // against (it may be pinned only by `lock --profile`): its overrides are kept
        // unchecked, and merged below with the values imgbuild renders for it.
        if let Some(p) = on.iter().find(|p| p.release() == release.as_str()) {
            out.warnings.push(format!(
                "warning: {}: not checked against the {p} profile chart's values (the chart is not loaded here)",
                at(&path, "values override").trim_end_matches(": values override"),
            ));
            profile_overrides.push((release.clone(), serde_yaml::Value::Mapping(m.clone())));
            continue;
        }
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
    profiles(l, a, inputs, &at, &mut out, &mut errors)?;
    for (release, user) in profile_overrides {
        merge_override(&mut out, &release, user)?;
    }
    if !errors.is_empty() {
        return Err(CloudInitError::Invalid(errors.join("\n")));
    }
    Ok(out)
}

/// `addons.values.<release>` of a turned-on profile: the release's values file, with the
/// values imgbuild renders from cluster.yaml (endpoints, tokens, storage IDs) laid over the
/// user's, so an override cannot silently drop a credential the profile needs.
fn merge_override(
    out: &mut AddonFiles,
    release: &str,
    user: serde_yaml::Value,
) -> Result<(), CloudInitError> {
    let path = format!("{USER_VALUES_DIR}/{release}.yaml");
    let invalid = |e: serde_yaml::Error| CloudInitError::Invalid(e.to_string());
    let mut merged = user;
    let existing = out.files.iter().position(|(p, _)| *p == path);
    if let Some(i) = existing {
        let rendered: serde_yaml::Value = serde_yaml::from_str(&out.files[i].1).map_err(invalid)?;
        overlay(&mut merged, rendered);
        out.files.remove(i);
    }
    let body = serde_yaml::to_string(&merged).map_err(invalid)?;
    out.files.push((
        path,
        format!("# Helm values for add-on {release}, from addons.values.{release} and addons.* of cluster.yaml.\n{body}"),
    ));
    Ok(())
}

/// Lay `top` over `base`: mappings merge key by key (as helm merges values files),
/// anything else in `top` replaces what `base` has.
fn overlay(base: &mut serde_yaml::Value, top: serde_yaml::Value) {
    match (base, top) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

/// With a CSI profile on, its StorageClass is the default: local-path's is then not
/// (exactly one default, or a claim without a class gets whichever admission picks).
/// `addons.values.local-path.storageClass.default: true` contradicts it.
fn not_default_storage(
    csi: Profile,
    values: &mut std::collections::BTreeMap<String, serde_yaml::Mapping>,
    at: &dyn Fn(&str, &str) -> String,
    errors: &mut Vec<String>,
) -> Result<(), CloudInitError> {
    let lp = values.entry(STORAGE_RELEASE.to_string()).or_default();
    let sc = lp
        .entry(serde_yaml::Value::from("storageClass"))
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    let Some(sc) = sc.as_mapping_mut() else { return Ok(()) };
    let key = serde_yaml::Value::from("default");
    match sc.get(&key) {
        Some(serde_yaml::Value::Bool(true)) => errors.push(at(
            "addons.values.local-path.storageClass.default",
            &format!("the {csi} profile's StorageClass is the cluster's default; only one class may be"),
        )),
        Some(_) => {}
        None => {
            sc.insert(key, serde_yaml::Value::Bool(false));
        }
    }
    Ok(())
}

/// With the monitoring profile on, the backend announces its metrics port to Prometheus
/// (the profile's `annotated-pods` scrape job) and its NetworkPolicy lets the monitoring
/// namespace reach that port, unless cluster.yaml sets either itself.
fn scraped_by_monitoring(backend: &mut serde_yaml::Mapping) -> Result<(), CloudInitError> {
    let yaml = |s: &str| {
        serde_yaml::from_str::<serde_yaml::Value>(s).map_err(|e| CloudInitError::Invalid(e.to_string()))
    };
    let key = serde_yaml::Value::from("podAnnotations");
    if backend.get(&key).is_none() {
        backend.insert(key, yaml("{prometheus.io/scrape: \"true\", prometheus.io/port: \"9797\"}")?);
    }
    let np = serde_yaml::Value::from("networkPolicy");
    let entry = backend.entry(np).or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    if let Some(m) = entry.as_mapping_mut() {
        let k = serde_yaml::Value::from("metricsFrom");
        if m.get(&k).is_none() {
            m.insert(
                k,
                yaml("[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]")?,
            );
        }
    }
    Ok(())
}

/// `addons.profiles`: each a known profile, each with the credentials it needs; the files
/// the first control plane gets for them (the list the installer follows, the logging
/// exporter's destination).
fn profiles(
    l: &ClusterPlan,
    a: &crate::cluster::spec::Addons,
    inputs: ProfileInputs<'_>,
    at: &dyn Fn(&str, &str) -> String,
    out: &mut AddonFiles,
    errors: &mut Vec<String>,
) -> Result<(), CloudInitError> {
    let mut on = Vec::new();
    for (i, name) in a.profiles.iter().enumerate() {
        let path = format!("addons.profiles[{i}]");
        match Profile::parse(name) {
            Some(p) if on.contains(&p) => errors.push(at(&path, &format!("{name} is listed twice"))),
            // One hypervisor's driver: its StorageClass is the one default, and its node
            // plugin asks its own cloud's metadata for the node's identity.
            Some(p) if p.is_csi() && on.iter().any(|o: &Profile| o.is_csi()) => {
                let other = on.iter().find(|o| o.is_csi()).map(|o| o.as_str()).unwrap_or_default();
                errors.push(at(
                    &path,
                    &format!("{name} and {other} are both CSI drivers: a cluster runs on one hypervisor and turns on at most one"),
                ))
            }
            Some(p) => on.push(p),
            None => {
                let known: Vec<&str> = Profile::ALL.iter().map(|p| p.as_str()).collect();
                errors.push(at(&path, &format!("unknown profile {name:?} (known: {})", known.join(", "))));
            }
        }
    }
    for (p, set) in [
        (Profile::Logging, a.logging.is_some()),
        (Profile::Cinder, a.cinder.is_some()),
        (Profile::Proxmox, a.proxmox.is_some()),
        (Profile::Hcloud, a.hcloud.is_some()),
    ] {
        if set && !on.contains(&p) {
            out.warnings
                .push(format!("warning: {}: addons.{p} is set but the {p} profile is not on", l.origin));
        }
    }
    for p in &on {
        for field in p.required() {
            let value = match (p, *field) {
                (Profile::Logging, "endpoint") => a.logging.as_ref().and_then(|g| g.endpoint.as_deref()),
                (Profile::Logging, "token") => a.logging.as_ref().and_then(|g| g.token.as_deref()),
                (Profile::Gitops, "repo_url") => a.gitops.as_ref().and_then(|g| g.repo_url.as_deref()),
                (Profile::Proxmox, "url") => a.proxmox.as_ref().and_then(|g| g.url.as_deref()),
                (Profile::Proxmox, "region") => a.proxmox.as_ref().and_then(|g| g.region.as_deref()),
                (Profile::Proxmox, "storage") => a.proxmox.as_ref().and_then(|g| g.storage.as_deref()),
                _ => None,
            };
            let path = format!("addons.{p}.{field}");
            match value {
                Some(v) if !v.trim().is_empty() => {}
                _ => errors.push(at(&path, &format!("the {p} profile needs {path}"))),
            }
        }
    }
    if let Some(e) = a.logging.as_ref().and_then(|g| g.endpoint.as_deref()) {
        if !e.starts_with("https://") {
            errors.push(at(
                "addons.logging.endpoint",
                "must be an https:// URL (the token travels with every request)",
            ));
        }
    }
    if let Some(u) = a.gitops.as_ref().and_then(|g| g.repo_url.as_deref()) {
        if !(u.starts_with("https://") || u.starts_with("ssh://") || u.starts_with("git@")) {
            errors.push(at("addons.gitops.repo_url", "must be an https://, ssh:// or git@ Git URL"));
        }
    }
    if on.is_empty() {
        return Ok(());
    }
    if let (true, Some(g)) = (on.contains(&Profile::Gitops), a.gitops.as_ref()) {
        let mut v = serde_json::json!({"repoURL": g.repo_url.clone().unwrap_or_default()});
        if let Some(p) = &g.path {
            v["path"] = Value::from(p.clone());
        }
        if let Some(r) = &g.revision {
            v["targetRevision"] = Value::from(r.clone());
        }
        let body = serde_yaml::to_string(&v).map_err(|e| CloudInitError::Invalid(e.to_string()))?;
        out.files.push((
            format!("{USER_VALUES_DIR}/{}.yaml", crate::chart::addons::GITOPS_APP_RELEASE),
            format!("# Helm values for the gitops profile's Application, from addons.gitops of cluster.yaml.\n{body}"),
        ));
    }
    let list: String = on.iter().map(|p| format!("{p}\n")).collect();
    out.files.push((crate::chart::addons::PROFILES_FILE.to_string(), list));
    for p in &on {
        let csi = match super::addon_secrets::load_csi(*p, a, inputs.dir) {
            Ok(c) => c,
            Err(problems) => {
                for (field, msg) in problems {
                    errors.push(at(&field, &msg));
                }
                continue;
            }
        };
        if matches!(p, Profile::Monitoring | Profile::Gitops) && inputs.admin.is_none() {
            return Err(CloudInitError::Rendered {
                what: format!("the {p} profile's Secret"),
                msg: "the admin credentials were not loaded".into(),
            });
        }
        // Dynatrace's scheme; the collector sends it as the Authorization header.
        let header = match p {
            Profile::Logging => {
                a.logging.as_ref().and_then(|g| g.token.as_deref()).map(|t| format!("Api-Token {t}"))
            }
            _ => None,
        };
        let credential = csi.as_ref().map(|c| c.value.as_str()).or(header.as_deref());
        if let Some(m) = super::addon_secrets::manifest(*p, inputs.admin, credential)? {
            out.files.push((format!("{PROFILE_SECRETS_DIR}/{p}.yaml"), m));
        }
        if let Some(v) = csi.as_ref().and_then(super::addon_secrets::csi_values) {
            let body = serde_yaml::to_string(&v).map_err(|e| CloudInitError::Invalid(e.to_string()))?;
            out.files.push((
                format!("{USER_VALUES_DIR}/{}.yaml", p.release()),
                format!(
                    "# Helm values for the {p} profile's chart, from addons.{p} of cluster.yaml.\n{body}"
                ),
            ));
        }
    }
    if let (true, Some(g)) = (on.contains(&Profile::Logging), a.logging.as_ref()) {
        let Some(endpoint) = g.endpoint.as_deref() else {
            return Ok(());
        };
        // The token is in the profile's Secret (above), which the baked values read.
        let v = serde_json::json!({"config": {"exporters": {"otlphttp": {"endpoint": endpoint}}}});
        let body = serde_yaml::to_string(&v).map_err(|e| CloudInitError::Invalid(e.to_string()))?;
        out.files.push((
            format!("{USER_VALUES_DIR}/{}.yaml", Profile::Logging.release()),
            format!("# Helm values for the logging profile's collector, from addons.logging of cluster.yaml.\n{body}"),
        ));
    }
    Ok(())
}
