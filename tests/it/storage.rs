//! The default StorageClass every cluster gets: the embedded local-path chart renders with
//! real helm into valid Kubernetes 1.30 objects, exactly one StorageClass is the default,
//! and the installer puts it after the recipe add-ons and before the backend.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

use imgbuild::tools::for_test as tool;

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/local-path")
}

fn render(helm: &std::path::Path, values: &str) -> (String, Vec<serde_yaml::Value>) {
    let d = tempfile::tempdir().unwrap();
    let vf = d.path().join("v.yaml");
    std::fs::write(&vf, values).unwrap();
    let o = Command::new(helm)
        .args(["template", "local-path", "--namespace", "local-path-storage", "--kube-version", "1.30.3"])
        .arg(chart_dir())
        .arg("-f")
        .arg(&vf)
        .output()
        .unwrap();
    common::ok(&o);
    let text = String::from_utf8(o.stdout).unwrap();
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (text, docs)
}

#[test]
fn storage_chart_renders_a_default_storageclass_valid_for_1_30() {
    let (Some(helm), Some(kv)) = (tool("helm"), tool("kubernetes-validate")) else { return };
    let o = Command::new(&helm)
        .args(["lint", "--strict", "--kube-version", "1.30.3"])
        .arg(chart_dir())
        .output()
        .unwrap();
    common::ok(&o);
    let (text, docs) = render(&helm, "");
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("rendered.yaml");
    std::fs::write(&f, &text).unwrap();
    let o = Command::new(&kv).args(["-k", "1.30.0", "--strict", "--quiet"]).arg(&f).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && all.trim().is_empty(), "{all}");

    let classes: Vec<_> = docs.iter().filter(|d| d["kind"] == "StorageClass").collect();
    assert_eq!(classes.len(), 1);
    let sc = classes[0];
    assert_eq!(sc["metadata"]["name"], "local-path");
    assert_eq!(sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"], "true");
    assert_eq!(sc["provisioner"], "rancher.io/local-path");
    assert_eq!(sc["volumeBindingMode"], "WaitForFirstConsumer");
    // The provisioner runs under the service account its RBAC binds, with the config it mounts.
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let spec = &dep["spec"]["template"]["spec"];
    let sa = spec["serviceAccountName"].as_str().unwrap();
    assert!(docs.iter().any(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == sa));
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        let b = docs.iter().find(|d| d["kind"] == kind).unwrap();
        assert_eq!(b["subjects"][0]["name"].as_str(), Some(sa), "{kind}");
    }
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "docker.io/rancher/local-path-provisioner:v0.0.28");
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let cfg: serde_json::Value = serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(cfg["nodePathMap"][0]["paths"][0], "/var/lib/local-path-provisioner");
    // Control-plane-only clusters still get volumes.
    assert!(spec["tolerations"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "node-role.kubernetes.io/control-plane"));

    // Not the default when told so; a pinned provisioner digest is used as given.
    let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let (_, docs) = render(&helm, &format!("storageClass:\n  default: false\nimage:\n  digest: {digest}\n  repository: docker.io/rancher/local-path-provisioner\n  tag: v0.0.28\n"));
    let sc = docs.iter().find(|d| d["kind"] == "StorageClass").unwrap();
    assert!(sc["metadata"]["annotations"].is_null(), "{sc:?}");
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap(),
        format!("docker.io/rancher/local-path-provisioner:v0.0.28@{digest}")
    );
}

#[test]
fn storage_chart_refuses_values_outside_its_schema() {
    let Some(helm) = tool("helm") else { return };
    let d = tempfile::tempdir().unwrap();
    let vf = d.path().join("v.yaml");
    std::fs::write(&vf, "storageClass:\n  reclaimPolicy: Recycle\n").unwrap();
    let o = Command::new(&helm).args(["template", "x"]).arg(chart_dir()).arg("-f").arg(&vf).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("reclaimPolicy"), "{}", common::stderr(&o));
}

#[test]
fn installer_index_puts_storage_after_the_recipe_add_ons_and_before_the_backend() {
    let r = imgbuild::recipe::load(None).unwrap();
    let o =
        imgbuild::plan::PlanOptions::new(imgbuild::types::Role::ControlPlane, imgbuild::types::Arch::Amd64);
    let plan = imgbuild::plan::BuildPlan::resolve(&r, &o).unwrap();
    let backend = imgbuild::chart::package_backend(plan.source_date_epoch).unwrap();
    let index = imgbuild::chart::addons::index(&plan, &backend).unwrap();
    let releases: Vec<&str> = index.iter().map(|e| e.release.as_str()).collect();
    assert_eq!(releases, ["cilium", "metrics-server", "ingress-nginx", "local-path", "backend"]);
    let lp = &index[3];
    assert_eq!(lp.namespace, "local-path-storage");
    assert_eq!(lp.chart, "/usr/share/imgbuild/addons/local-path-0.1.0.tgz");
    assert!(
        lp.images.iter().any(|i| i == "docker.io/rancher/local-path-provisioner:v0.0.28"),
        "{:?}",
        lp.images
    );
    assert!(
        lp.images.iter().any(|i| i.starts_with("docker.io/library/busybox:1.36.1@sha256:")),
        "{:?}",
        lp.images
    );
}

/// `addons.values.local-path` in cluster.yaml reaches the first control plane's user-data,
/// checked against the embedded chart's schema (exit 2 naming the field otherwise).
#[test]
fn storage_overrides_from_cluster_yaml_are_checked_and_delivered() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    let cluster = common::cluster_init(&dir).external_lb().nodes(1, 1).ok();
    let base = std::fs::read_to_string(&cluster).unwrap();
    let with = |values: &str| {
        let text = if base.contains("\naddons:\n") {
            base.replacen("\naddons:\n", &format!("\naddons:\n  values:\n    local-path:\n{values}"), 1)
        } else {
            format!("{base}\naddons:\n  values:\n    local-path:\n{values}")
        };
        std::fs::write(&cluster, text).unwrap();
        let out = d.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        let o = common::cloud_init_all(&cluster, &out);
        (o, out)
    };
    let (o, out) = with("      storageClass:\n        default: false\n");
    common::ok(&o);
    let f = common::node_file(&out, "demo-cp-1", "/etc/imgbuild/addons/local-path.yaml");
    assert!(f.contains("default: false"));

    let (o, _) = with("      storageClass:\n        reclaimPolicy: Recycle\n");
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("addons.values.local-path.storageClass.reclaimPolicy"),
        "{}",
        common::stderr(&o)
    );
}

/// With a hypervisor's CSI profile on, its chart's StorageClass is the default and
/// local-path's is not: the values cloud-init writes for local-path, rendered by real helm,
/// give a StorageClass without the default annotation (the CSI chart's default is checked
/// against its baked values in tests/profiles.rs; the chart itself cannot be fetched here).
#[test]
fn a_csi_profile_leaves_exactly_one_default_storageclass() {
    let Some(helm) = tool("helm") else { return };
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    let cluster = common::cluster_init(&dir).external_lb().nodes(1, 1).ok();
    let text = std::fs::read_to_string(&cluster).unwrap().replacen(
        "\naddons:\n",
        "\naddons:\n  profiles: [hcloud]\n",
        1,
    );
    std::fs::write(&cluster, text).unwrap();
    let creds = dir.join("secrets/hcloud.yaml");
    std::fs::write(&creds, "token: 0123456789012345678901234567890123456789012345678901234567890123\n")
        .unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = d.path().join("out");
    common::ok(&common::cloud_init_all(&cluster, &out));
    let values = common::node_file(&out, "demo-cp-1", "/etc/imgbuild/addons/local-path.yaml");
    let (_, docs) = render(&helm, &values);
    let classes: Vec<_> = docs.iter().filter(|d| d["kind"] == "StorageClass").collect();
    assert_eq!(classes.len(), 1);
    assert!(
        classes[0]["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"].is_null(),
        "{values}"
    );
    let lr = imgbuild::recipe::load(None).unwrap();
    let hcloud =
        lr.recipe.addons.iter().find(|a| a.profile == Some(imgbuild::types::Profile::Hcloud)).unwrap();
    let defaults = hcloud.values["storageClasses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["defaultStorageClass"] == true)
        .count();
    assert_eq!(defaults, 1, "exactly one default StorageClass");
}
