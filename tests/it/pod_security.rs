//! Pod Security admission: the apiserver's admission configuration (baked into the
//! control-plane image, named by the kubeadm ClusterConfiguration), the add-on namespaces'
//! labels, and the backend chart passing `restricted`.
//!
//! No real PodSecurity admission can run here (it lives in kube-apiserver; no Go toolchain
//! to build k8s.io/pod-security-admission), so the admission configuration is checked
//! against a typed model written from the upstream reference
//! (apiserver.config.k8s.io/v1 AdmissionConfiguration, pod-security.admission.config.k8s.io/v1
//! PodSecurityConfiguration), and the rendered backend chart against the Pod Security
//! Standards' restricted controls (kubernetes.io/docs/concepts/security/pod-security-standards,
//! v1.30), each control a check below; a negative test shows each check refusing.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const ADMISSION: &str = "image-files/control-plane/etc/kubernetes/admission/pod-security.yaml";

use imgbuild::tools::for_test as tool;

// --- the admission configuration, typed from the upstream reference --------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AdmissionConfiguration {
    api_version: String,
    kind: String,
    plugins: Vec<AdmissionPlugin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdmissionPlugin {
    name: String,
    #[serde(default)]
    path: Option<String>,
    configuration: PodSecurityConfiguration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodSecurityConfiguration {
    api_version: String,
    kind: String,
    defaults: BTreeMap<String, String>,
    exemptions: Exemptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Exemptions {
    usernames: Vec<String>,
    runtime_classes: Vec<String>,
    namespaces: Vec<String>,
}

#[test]
fn admission_configuration_enforces_baseline_and_audits_restricted() {
    let text = std::fs::read_to_string(repo().join(ADMISSION)).unwrap();
    let c: AdmissionConfiguration = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        (c.api_version.as_str(), c.kind.as_str()),
        ("apiserver.config.k8s.io/v1", "AdmissionConfiguration")
    );
    assert_eq!(c.plugins.len(), 1);
    let p = &c.plugins[0];
    assert_eq!(p.name, "PodSecurity");
    assert!(p.path.is_none());
    let ps = &p.configuration;
    assert_eq!(
        (ps.api_version.as_str(), ps.kind.as_str()),
        ("pod-security.admission.config.k8s.io/v1", "PodSecurityConfiguration")
    );
    // Every key the plugin knows, each level and version valid.
    let want: BTreeMap<String, String> = [
        ("enforce", "baseline"),
        ("enforce-version", "latest"),
        ("audit", "restricted"),
        ("audit-version", "latest"),
        ("warn", "restricted"),
        ("warn-version", "latest"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(ps.defaults, want);
    assert!(ps.exemptions.usernames.is_empty() && ps.exemptions.runtime_classes.is_empty());
    assert_eq!(ps.exemptions.namespaces, ["kube-system"]);
}

#[test]
fn kubeadm_points_the_apiserver_at_the_baked_admission_configuration() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    common::cluster_init(&dir).external_lb().nodes(1, 0).seed("pod-security").ok();
    let out = d.path().join("seeds");
    let o = common::cloud_init_all(dir.join("cluster.yaml"), &out);
    common::ok(&o);
    let kubeadm = common::node_file(&out, "demo-cp-1", "/etc/imgbuild/kubeadm.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&kubeadm)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect();
    let cc = docs.iter().find(|d| d["kind"] == "ClusterConfiguration").unwrap();
    let file = cc["apiServer"]["extraArgs"]["admission-control-config-file"].as_str().unwrap();
    // The file is in the control-plane image at that path…
    assert!(
        repo().join("image-files/control-plane").join(file.trim_start_matches('/')) == repo().join(ADMISSION)
    );
    // …and its directory is mounted into the apiserver's static pod, read-only, and must exist.
    let vols = cc["apiServer"]["extraVolumes"].as_sequence().unwrap();
    let dir = Path::new(file).parent().unwrap().to_str().unwrap();
    let v = vols.iter().find(|v| v["hostPath"].as_str() == Some(dir)).expect("admission volume");
    assert_eq!(v["mountPath"].as_str(), Some(dir));
    assert_eq!(v["readOnly"].as_bool(), Some(true));
    assert_eq!(v["pathType"].as_str(), Some("Directory"));
    // The apiserver's PodSecurity plugin is on by default in 1.30: nothing disables it.
    let args = cc["apiServer"]["extraArgs"].as_mapping().unwrap();
    assert!(!args.keys().any(|k| k.as_str() == Some("disable-admission-plugins")), "{args:?}");
}

#[test]
fn add_on_namespaces_are_labelled_with_the_level_their_charts_need() {
    let r = imgbuild::recipe::load(None).unwrap();
    let o =
        imgbuild::plan::PlanOptions::new(imgbuild::types::Role::ControlPlane, imgbuild::types::Arch::Amd64);
    let plan = imgbuild::plan::BuildPlan::resolve(&r, &o).unwrap();
    let text = imgbuild::chart::addons::namespaces(&plan);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let level = |ns: &str| -> String {
        let d = docs.iter().find(|d| d["metadata"]["name"] == ns).unwrap_or_else(|| panic!("no {ns}"));
        assert_eq!(d["kind"], "Namespace");
        d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str().unwrap().to_string()
    };
    // kube-system holds the CNI (privileged) and metrics-server (baseline): the most permissive wins.
    assert_eq!(level("kube-system"), "privileged");
    assert_eq!(level("ingress-nginx"), "baseline");
    assert_eq!(level("backend"), "restricted");
    // The default StorageClass's helper pods mount node directories (hostPath).
    assert_eq!(level("local-path-storage"), "privileged");
    assert_eq!(docs.len(), 4);
    // Real objects for Kubernetes 1.30.
    let Some(kv) = tool("kubernetes-validate") else { return };
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("namespaces.yaml");
    std::fs::write(&f, &text).unwrap();
    let o = Command::new(kv).args(["-k", "1.30.0", "--strict", "--quiet"]).arg(&f).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && all.trim().is_empty(), "{all}");
}

// --- the restricted profile, control by control ------------------------------------------

/// Volume types `restricted` allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Violations of the Pod Security Standards' restricted profile (v1.30; it includes
/// every baseline control) by one pod spec.
fn restricted_violations(spec: &serde_yaml::Value) -> Vec<String> {
    let mut v = Vec::new();
    let truthy = |x: &serde_yaml::Value| x.as_bool() == Some(true);
    // baseline: host namespaces
    for k in ["hostNetwork", "hostPID", "hostIPC"] {
        if truthy(&spec[k]) {
            v.push(format!("{k}: true"));
        }
    }
    let psc = &spec["securityContext"];
    // baseline: sysctls outside the safe set
    for s in psc["sysctls"].as_sequence().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("");
        let safe = [
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.ip_unprivileged_port_start",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ];
        if !safe.contains(&name) {
            v.push(format!("sysctl {name}"));
        }
    }
    // restricted: volume types (baseline: no hostPath)
    for vol in spec["volumes"].as_sequence().into_iter().flatten() {
        let types: Vec<&str> =
            vol.as_mapping().unwrap().keys().filter_map(|k| k.as_str()).filter(|k| *k != "name").collect();
        for t in types {
            if !RESTRICTED_VOLUMES.contains(&t) {
                v.push(format!("volume {} of type {t}", vol["name"].as_str().unwrap_or("?")));
            }
        }
    }
    let seccomp_ok = |sc: &serde_yaml::Value| {
        matches!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault") | Some("Localhost"))
    };
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_sequence().into_iter().flatten());
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        // baseline: privileged, host ports, procMount, SELinux, AppArmor, hostProcess
        if truthy(&sc["privileged"]) {
            v.push(format!("{name}: privileged"));
        }
        for p in c["ports"].as_sequence().into_iter().flatten() {
            if p["hostPort"].as_u64().is_some_and(|h| h != 0) {
                v.push(format!("{name}: hostPort"));
            }
        }
        if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
            v.push(format!("{name}: procMount"));
        }
        if truthy(&sc["windowsOptions"]["hostProcess"]) {
            v.push(format!("{name}: hostProcess"));
        }
        // restricted: allowPrivilegeEscalation must be false
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            v.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        // restricted: runAsNonRoot true (container or pod), runAsUser not 0
        let non_root = sc["runAsNonRoot"].as_bool().or(psc["runAsNonRoot"].as_bool());
        if non_root != Some(true) {
            v.push(format!("{name}: runAsNonRoot is not true"));
        }
        if sc["runAsUser"].as_u64() == Some(0) || psc["runAsUser"].as_u64() == Some(0) {
            v.push(format!("{name}: runAsUser 0"));
        }
        // restricted: seccomp RuntimeDefault or Localhost (container, else pod)
        if !(seccomp_ok(sc) || (sc["seccompProfile"].is_null() && seccomp_ok(psc))) {
            v.push(format!("{name}: seccompProfile is not RuntimeDefault/Localhost"));
        }
        // restricted: drop ALL; add at most NET_BIND_SERVICE
        let drops: Vec<&str> = sc["capabilities"]["drop"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        if !drops.contains(&"ALL") {
            v.push(format!("{name}: capabilities do not drop ALL"));
        }
        for a in sc["capabilities"]["add"].as_sequence().into_iter().flatten() {
            if a.as_str() != Some("NET_BIND_SERVICE") {
                v.push(format!("{name}: adds capability {a:?}"));
            }
        }
    }
    v
}

/// Every pod spec in rendered manifests: Pods and the templates of workload controllers.
fn pod_specs(docs: &[serde_yaml::Value]) -> Vec<(String, serde_yaml::Value)> {
    let mut out = Vec::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or("");
        let name = format!("{kind}/{}", d["metadata"]["name"].as_str().unwrap_or("?"));
        let spec = match kind {
            "Pod" => d["spec"].clone(),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                d["spec"]["template"]["spec"].clone()
            }
            "CronJob" => d["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
            _ => continue,
        };
        out.push((name, spec));
    }
    out
}

#[test]
fn the_restricted_checks_refuse_each_violation() {
    let good: serde_yaml::Value = serde_yaml::from_str(
        "securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n\
         containers:\n- name: c\n  securityContext:\n    allowPrivilegeEscalation: false\n    capabilities: {drop: [ALL]}\n\
         volumes:\n- name: t\n  emptyDir: {}\n",
    )
    .unwrap();
    assert_eq!(restricted_violations(&good), Vec::<String>::new());
    let bad = [
        ("hostNetwork: true", "hostNetwork"),
        ("volumes: [{name: h, hostPath: {path: /}}]", "type hostPath"),
        ("securityContext: {runAsNonRoot: false, seccompProfile: {type: RuntimeDefault}}", "runAsNonRoot"),
        ("securityContext: {runAsNonRoot: true}", "seccompProfile"),
        ("securityContext: {runAsNonRoot: true, runAsUser: 0, seccompProfile: {type: RuntimeDefault}}", "runAsUser 0"),
        ("securityContext: {runAsNonRoot: true, seccompProfile: {type: Unconfined}}", "seccompProfile"),
        ("securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}, sysctls: [{name: kernel.msgmax, value: '1'}]}", "sysctl"),
    ];
    for (patch, want) in bad {
        let mut spec = good.clone();
        let p: serde_yaml::Value = serde_yaml::from_str(patch).unwrap();
        for (k, val) in p.as_mapping().unwrap() {
            spec[k.as_str().unwrap()] = val.clone();
        }
        let v = restricted_violations(&spec);
        assert!(v.iter().any(|x| x.contains(want)), "{patch}: {v:?}");
    }
    let container_bad = [
        ("privileged: true", "privileged"),
        ("allowPrivilegeEscalation: true", "allowPrivilegeEscalation"),
        ("capabilities: {drop: [NET_RAW]}", "drop ALL"),
        ("capabilities: {drop: [ALL], add: [SYS_ADMIN]}", "SYS_ADMIN"),
        ("procMount: Unmasked", "procMount"),
    ];
    for (patch, want) in container_bad {
        let mut spec = good.clone();
        let p: serde_yaml::Value = serde_yaml::from_str(patch).unwrap();
        for (k, val) in p.as_mapping().unwrap() {
            spec["containers"][0]["securityContext"][k.as_str().unwrap()] = val.clone();
        }
        let v = restricted_violations(&spec);
        assert!(v.iter().any(|x| x.contains(want)), "{patch}: {v:?}");
    }
    let mut spec = good.clone();
    spec["containers"][0]["ports"] = serde_yaml::from_str("[{containerPort: 80, hostPort: 80}]").unwrap();
    assert!(restricted_violations(&spec).iter().any(|x| x.contains("hostPort")));
}

/// The backend chart renders (real helm) to pods that pass `restricted`, for each value set
/// tests/chart.rs renders, its test pod included.
#[test]
fn backend_chart_passes_restricted() {
    let Some(helm) = tool("helm") else { return };
    let sets = [
        "",
        "autoscaling:\n  enabled: false\nreplicaCount: 3\n",
        "secret:\n  existingSecret: backend-db\nserviceAccount:\n  create: false\n",
        "networkPolicy:\n  enabled: false\n",
    ];
    let d = tempfile::tempdir().unwrap();
    for (i, values) in sets.iter().enumerate() {
        let vf = d.path().join(format!("{i}.yaml"));
        std::fs::write(&vf, values).unwrap();
        let o = Command::new(&helm)
            .args(["template", "rel", "--namespace", "backend", "--kube-version", "1.30.3"])
            .arg(repo().join("charts/backend"))
            .arg("-f")
            .arg(&vf)
            .output()
            .unwrap();
        common::ok(&o);
        let docs: Vec<serde_yaml::Value> =
            serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&o.stdout))
                .map(|d| serde_yaml::Value::deserialize(d).unwrap())
                .filter(|v| !v.is_null())
                .collect();
        let specs = pod_specs(&docs);
        assert!(specs.iter().any(|(n, _)| n.starts_with("Deployment/")), "{i}: {specs:?}");
        assert!(specs.iter().any(|(n, _)| n.starts_with("Pod/")), "{i}: the test pod");
        for (name, spec) in specs {
            assert_eq!(restricted_violations(&spec), Vec::<String>::new(), "values set {i}: {name}");
        }
    }
}
