//! Add-on profiles: what a build carries (`--profile`), what `lock` pins for it, what a
//! cluster turns on (`addons.profiles` with the credentials a profile needs, checked by
//! `cloud-init` and `lint` with exit 2 naming the field), and what the installer installs.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::http::Server;
use imgbuild::plan::{BuildPlan, PlanOptions};
use imgbuild::types::{Arch, Profile, Role, Sha256};

fn plan(recipe: Option<&Path>, profiles: &[Profile]) -> Result<BuildPlan, imgbuild::plan::PlanError> {
    let lr = imgbuild::recipe::load(recipe).unwrap();
    let o = PlanOptions {
        recipe_path: recipe.map(Path::to_path_buf),
        profiles: profiles.to_vec(),
        ..PlanOptions::new(Role::ControlPlane, Arch::Amd64)
    };
    BuildPlan::resolve(&lr, &o)
}

#[test]
fn a_build_carries_a_profile_only_when_asked_and_only_once_it_is_pinned() {
    // Default: the profiles' charts are neither downloaded nor installed.
    let p = plan(None, &[]).unwrap();
    for name in [
        "kube-prometheus-stack",
        "opentelemetry-collector",
        "argo-cd",
        "openstack-cinder-csi",
        "proxmox-csi-plugin",
        "hcloud-csi",
    ] {
        assert!(p.artifacts.iter().all(|a| a.name != name), "{name} in the default plan");
    }
    assert!(p.addons.iter().all(|a| a.profile.is_none()));
    // With the profile, the embedded recipe's chart is not pinned here: exit 2 saying how.
    let o = common::bin()
        .args(["recipe", "show", "--role", "control-plane", "--profile", "monitoring"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    let err = common::stderr(&o);
    assert!(
        err.contains("kube-prometheus-stack 61.3.2") && err.contains("`imgbuild lock --profile monitoring`"),
        "{err}"
    );
    // Workers never carry add-ons, profile or not.
    let lr = imgbuild::recipe::load(None).unwrap();
    let o = PlanOptions { profiles: Profile::ALL.to_vec(), ..PlanOptions::new(Role::Worker, Arch::Amd64) };
    assert!(BuildPlan::resolve(&lr, &o).unwrap().addons.is_empty());
}

/// The embedded recipe with its chart repositories pointed at `srv`, without packages.
fn loopback_recipe(dir: &Path, srv: &Server) -> PathBuf {
    let text = imgbuild::recipe::load(None).unwrap().text;
    let text = &text[..text.find("\npackages:\n").unwrap()];
    let text =
        text.replace("https://prometheus-community.github.io/helm-charts", &srv.url("/prometheus-community"));
    // Container images need a registry (tests/oci_*.rs run a real one): as in the build
    // fixture, the add-on images become test images pinned by digest whose documents sit in
    // the cache `lock` is given, and the node images are left out.
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    v.as_mapping_mut().unwrap().remove("images");
    common::fixture::seed_addon_images(&mut v, &dir.join("cache"));
    let p = dir.join("recipe.yaml");
    std::fs::write(&p, serde_yaml::to_string(&v).unwrap()).unwrap();
    p
}

/// `imgbuild lock` of recipe `r` (its cache next to it) with `args`; the lock file as JSON.
fn lock(r: &Path, args: &[&str]) -> serde_json::Value {
    let o = common::bin()
        .args(["lock", "--json", "--recipe"])
        .arg(r)
        .arg("--cache-dir")
        .arg(r.parent().unwrap().join("cache"))
        .args(args)
        .output()
        .unwrap();
    common::ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    serde_json::from_str(&std::fs::read_to_string(v["lock"].as_str().unwrap()).unwrap()).unwrap()
}

#[test]
fn lock_pins_the_profile_charts_and_the_plan_installs_them_in_order() {
    let srv = Server::start();
    let mut files = std::collections::BTreeMap::new();
    files.insert(
        "Chart.yaml".to_string(),
        b"apiVersion: v2\nname: kube-prometheus-stack\nversion: 61.3.2\n".to_vec(),
    );
    let tgz = imgbuild::chart::package::package_files("stand-in", files, 0).unwrap().bytes;
    let sha = Sha256::of(&tgz);
    srv.add_bytes(
        "/prometheus-community/index.yaml",
        format!(
            "apiVersion: v1\nentries:\n  kube-prometheus-stack:\n  - name: kube-prometheus-stack\n    version: 61.3.2\n    \
             digest: {sha}\n    urls:\n    - kube-prometheus-stack-61.3.2.tgz\ngenerated: \"2024-07-20T00:00:00Z\"\n"
        )
        .into_bytes(),
    );
    srv.add_bytes("/prometheus-community/kube-prometheus-stack-61.3.2.tgz", tgz);
    let d = tempfile::tempdir().unwrap();
    let r = loopback_recipe(d.path(), &srv);
    // Without --profile, lock pins nothing of the profile (and needs no network for it).
    let l = lock(&r, &[]);
    assert!(l.get("charts").is_none(), "{l}");
    assert_eq!(srv.hits("/prometheus-community/index.yaml"), 0);
    let l = lock(&r, &["--profile", "monitoring"]);
    assert_eq!(l["charts"][0]["name"], "kube-prometheus-stack", "{l}");
    let p = plan(Some(&r), &[Profile::Monitoring]).unwrap();
    let item = p.artifacts.iter().find(|a| a.name == "kube-prometheus-stack").unwrap();
    assert_eq!(item.sha256, sha);
    assert_eq!(item.urls, [srv.url("/prometheus-community/kube-prometheus-stack-61.3.2.tgz")]);
    let releases: Vec<&str> = p.addons.iter().map(|a| a.release.as_str()).collect();
    assert_eq!(releases, ["cilium", "metrics-server", "ingress-nginx", "monitoring"]);
    let m = p.addons.iter().find(|a| a.release == "monitoring").unwrap();
    assert_eq!(m.profile, Some(Profile::Monitoring));
    // The index marks the release as the profile's; its namespace is labelled for it.
    let backend = imgbuild::chart::package_backend(0).unwrap();
    let index = imgbuild::chart::addons::index(&p, &backend).unwrap();
    assert_eq!(imgbuild::chart::addons::profiles_tsv(&index), "# release\tprofile\nmonitoring\tmonitoring\n");
    let ns = imgbuild::chart::addons::namespaces(&p);
    assert!(
        ns.contains("name: monitoring\n  labels:\n    pod-security.kubernetes.io/enforce: privileged\n"),
        "{ns}"
    );
}

// --- cluster.yaml: addons.profiles ------------------------------------------------------

fn cluster(dir: &Path, addons: &str) -> PathBuf {
    let c = common::cluster_init(dir.join("c")).external_lb().nodes(1, 1).ok();
    let text = std::fs::read_to_string(&c).unwrap();
    let text = match text.find("\naddons:\n") {
        Some(i) => format!("{}\naddons:\n{addons}{}", &text[..i], &text[i + "\naddons:\n".len()..]),
        None => format!("{text}\naddons:\n{addons}"),
    };
    std::fs::write(&c, text).unwrap();
    c
}

fn cloud_init(c: &Path, out: &Path) -> Output {
    common::bin()
        .args(["cloud-init", "--all", "--seed", "none", "--cluster"])
        .arg(c)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn lint(c: &Path) -> Output {
    common::bin().args(["lint", "--json", "--cluster"]).arg(c).output().unwrap()
}

fn cp1_files(out: &Path) -> std::collections::BTreeMap<String, (String, String)> {
    let ud: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("demo-cp-1/user-data")).unwrap()).unwrap();
    ud["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| {
            let path = f["path"].as_str().unwrap().to_string();
            (
                path,
                (
                    f["permissions"].as_str().unwrap_or("").to_string(),
                    f["content"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn unknown_profiles_and_missing_credentials_are_bad_input_naming_the_field() {
    for (addons, field) in [
        ("  profiles: [monitoring, tracing]\n", "addons.profiles[1]"),
        ("  profiles: [logging]\n  logging:\n    endpoint: https://abc123.live.dynatrace.com/api/v2/otlp\n", "addons.logging.token"),
        ("  profiles: [logging]\n", "addons.logging.endpoint"),
        ("  profiles: [logging]\n  logging:\n    endpoint: http://collector:4318\n    token: t\n", "addons.logging.endpoint"),
        ("  profiles: [gitops, gitops]\n", "addons.profiles[1]"),
        ("  profiles: [gitops]\n", "addons.gitops.repo_url"),
        ("  profiles: [gitops]\n  gitops:\n    repo_url: ftp://example.test/app\n", "addons.gitops.repo_url"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let c = cluster(d.path(), addons);
        let o = cloud_init(&c, &d.path().join("out"));
        assert_eq!(o.status.code(), Some(2), "{addons}: {}", common::stderr(&o));
        assert!(common::stderr(&o).contains(field), "{addons}: {}", common::stderr(&o));
        assert!(!d.path().join("out/demo-cp-1/user-data").exists());
        let o = lint(&c);
        assert_eq!(o.status.code(), Some(2), "lint {addons}: {}", String::from_utf8_lossy(&o.stdout));
        assert!(String::from_utf8_lossy(&o.stdout).contains(field), "lint {addons}");
    }
}

#[test]
fn turned_on_profiles_reach_the_first_control_plane_with_their_credentials() {
    let d = tempfile::tempdir().unwrap();
    let token = "dt0c01.ABCDEFGHIJKLMNOPQRSTUVWX.0123456789abcdef";
    let c = cluster(
        d.path(),
        &format!(
            "  profiles: [monitoring, logging, gitops]\n  logging:\n    endpoint: https://abc123.live.dynatrace.com/api/v2/otlp\n    token: {token}\n  gitops:\n    repo_url: https://git.example.test/platform/app.git\n    revision: v1.2.0\n"
        ),
    );
    let out = d.path().join("out");
    common::ok(&cloud_init(&c, &out));
    let files = cp1_files(&out);
    assert_eq!(files["/etc/imgbuild/addons/profiles"].1, "monitoring\nlogging\ngitops\n");
    let app: serde_yaml::Value =
        serde_yaml::from_str(&files["/etc/imgbuild/addons/backend-app.yaml"].1).unwrap();
    assert_eq!(app["repoURL"], "https://git.example.test/platform/app.git");
    assert_eq!(app["targetRevision"], "v1.2.0");
    let (mode, logging) = &files["/etc/imgbuild/addons/logging.yaml"];
    assert_eq!(mode, "0600");
    let v: serde_yaml::Value = serde_yaml::from_str(logging).unwrap();
    let exp = &v["config"]["exporters"]["otlphttp"];
    assert_eq!(exp["endpoint"], "https://abc123.live.dynatrace.com/api/v2/otlp");
    assert_logging_token_in_its_secret(&files, token);
    // The backend announces its metrics to the monitoring profile and lets it in.
    let b: serde_yaml::Value = serde_yaml::from_str(&files["/etc/imgbuild/addons/values.yaml"].1).unwrap();
    assert_eq!(b["podAnnotations"]["prometheus.io/scrape"], "true");
    assert_eq!(b["podAnnotations"]["prometheus.io/port"], "9797");
    assert_eq!(
        b["networkPolicy"]["metricsFrom"][0]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        "monitoring"
    );
    // The token is on the first control plane only.
    let worker = std::fs::read_to_string(out.join("demo-worker-1/user-data")).unwrap();
    assert!(!worker.contains(token));
    common::ok(&lint(&c));

    // No profiles: no list, so the installer installs none.
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path(), "  profiles: []\n");
    let out = d.path().join("out");
    common::ok(&cloud_init(&c, &out));
    assert!(!cp1_files(&out).contains_key("/etc/imgbuild/addons/profiles"));
}

/// The logging profile's token reaches the collector only through the Secret the
/// installer applies: rendering the real opentelemetry-collector 0.90.1 chart
/// (ci/check-profile-charts.sh) showed that values under `config` land verbatim in its
/// ConfigMap, so a token in logging.yaml ended up readable by anyone who may read
/// ConfigMaps in `logging`. The baked values read the Secret's key into an environment
/// variable (`extraEnvs`) that the collector expands in the exporter's header.
fn assert_logging_token_in_its_secret(
    files: &std::collections::BTreeMap<String, (String, String)>,
    token: &str,
) {
    use imgbuild::cloudinit::addon_secrets::{LOGGING_KEY, LOGGING_SECRET};
    assert!(!files["/etc/imgbuild/addons/logging.yaml"].1.contains(token), "the token in the chart's values");
    let (mode, secret) = profile_secret(files, "logging");
    assert_eq!(mode, "0600");
    assert_eq!(
        (secret["metadata"]["name"].as_str(), secret["metadata"]["namespace"].as_str()),
        (Some(LOGGING_SECRET), Some("logging"))
    );
    assert_eq!(secret_value(&secret, LOGGING_KEY), format!("Api-Token {token}"));
    validate_k8s(&serde_yaml::to_string(&secret).unwrap());
    // The baked values: the variable from exactly that Secret key, the header from the variable.
    let v = recipe_addon(Profile::Logging).values;
    let env = v["extraEnvs"].as_array().unwrap();
    let var = env
        .iter()
        .find(|e| {
            e["valueFrom"]["secretKeyRef"] == serde_json::json!({"name": LOGGING_SECRET, "key": LOGGING_KEY})
        })
        .expect("an extraEnvs entry reading the Secret");
    assert_eq!(
        v["config"]["exporters"]["otlphttp"]["headers"]["Authorization"].as_str(),
        Some(format!("${{env:{}}}", var["name"].as_str().unwrap()).as_str())
    );
    assert_eq!(v["config"]["service"]["pipelines"]["logs"]["exporters"], serde_json::json!(["otlphttp"]));
}

/// The logging collector reads the nodes' log files and listens on no host port.
/// opentelemetry-collector 0.90.1 in daemonset mode opens its default receivers (OTLP
/// 4317/4318, Jaeger 6831/14250/14268, Zipkin 9411) as host ports of every node, and its
/// logs pipeline takes OTLP: rendering the real chart (ci/check-profile-charts.sh) showed
/// anyone reaching a node could have sent logs out under the cluster's token. The baked
/// values turn those ports off, remove the receivers (helm deletes a key set to null) and
/// the metrics and traces pipelines that only fed the debug exporter.
#[test]
fn logging_collects_node_log_files_only_and_listens_on_no_host_port() {
    let v = recipe_addon(Profile::Logging).values;
    // The chart's ports with a hostPort in 0.90.1's values.yaml.
    for port in ["otlp", "otlp-http", "jaeger-compact", "jaeger-thrift", "jaeger-grpc", "zipkin"] {
        assert_eq!(v["ports"][port]["enabled"], false, "ports.{port}");
    }
    let c = &v["config"];
    for r in ["otlp", "jaeger", "zipkin", "prometheus"] {
        assert!(c["receivers"].get(r).is_some_and(|x| x.is_null()), "config.receivers.{r} not removed");
    }
    assert!(c["exporters"].get("debug").is_some_and(|x| x.is_null()));
    let pipelines = &c["service"]["pipelines"];
    for p in ["metrics", "traces"] {
        assert!(pipelines.get(p).is_some_and(|x| x.is_null()), "pipeline {p} not removed");
    }
    assert_eq!(pipelines["logs"]["receivers"], serde_json::json!(["filelog"]));
    assert_eq!(v["presets"]["logsCollection"]["enabled"], true, "filelog comes from the preset");
}

// --- the installer ------------------------------------------------------------------------

const STUB: &str = "#!/usr/bin/env bash\nprintf '%s %s\\n' \"$(basename \"$0\")\" \"$*\" >>\"$STUB_LOG\"\n";

fn installer_run(root: &Path, stub: &Path) -> (Output, Vec<String>) {
    let path = format!("{}:{}", stub.display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new("bash")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("image-files/control-plane/usr/libexec/imgbuild/addons-install"),
        )
        .env("PATH", path)
        .env("IMGBUILD_ROOT", root)
        .env("IMGBUILD_ADDONS_BACKOFF", "0")
        .env("STUB_LOG", stub.join("calls"))
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(stub.join("calls")).unwrap_or_default();
    let installs = calls
        .lines()
        .filter_map(|l| l.strip_prefix("helm upgrade --install "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    (o, installs)
}

/// The installer's index for the default plan plus a monitoring add-on (its chart's
/// digest does not matter to the installer).
fn index_with_monitoring() -> Vec<imgbuild::chart::addons::IndexEntry> {
    let mut p = plan(None, &[]).unwrap();
    let mut m = p.addons[1].clone();
    m.release = "monitoring".into();
    m.namespace = "monitoring".into();
    m.order = 50;
    m.profile = Some(Profile::Monitoring);
    p.addons.push(m);
    let backend = imgbuild::chart::package_backend(0).unwrap();
    imgbuild::chart::addons::index(&p, &backend).unwrap()
}

/// An image root with `index` and a stub dir whose helm and kubectl only log their calls.
fn installer_root(d: &Path, index: &[imgbuild::chart::addons::IndexEntry]) -> (PathBuf, PathBuf) {
    let root = d.join("root");
    let dir = root.join("usr/share/imgbuild/addons");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("addons.tsv"), imgbuild::chart::addons::tsv(index)).unwrap();
    std::fs::write(dir.join("profiles.tsv"), imgbuild::chart::addons::profiles_tsv(index)).unwrap();
    std::fs::create_dir_all(root.join("etc/imgbuild/addons")).unwrap();
    let stub = d.join("stub");
    std::fs::create_dir_all(&stub).unwrap();
    for b in ["helm", "kubectl"] {
        std::fs::write(stub.join(b), STUB).unwrap();
        std::fs::set_permissions(stub.join(b), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    (root, stub)
}

#[test]
fn the_installer_installs_a_profile_only_where_the_cluster_turned_it_on() {
    let index = index_with_monitoring();
    for (on, want) in [
        (None, vec!["cilium", "metrics-server", "ingress-nginx", "local-path", "backend"]),
        (Some("logging\n"), vec!["cilium", "metrics-server", "ingress-nginx", "local-path", "backend"]),
        (
            Some("monitoring\n"),
            vec!["cilium", "metrics-server", "ingress-nginx", "monitoring", "local-path", "backend"],
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (root, stub) = installer_root(d.path(), &index);
        if let Some(list) = on {
            std::fs::write(root.join("etc/imgbuild/addons/profiles"), list).unwrap();
        }
        let (o, installs) = installer_run(&root, &stub);
        common::ok(&o);
        assert_eq!(installs, want, "profiles {on:?}");
        let console = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            console.contains("monitoring: its profile is not turned on for this cluster"),
            on != Some("monitoring\n"),
            "{console}"
        );
    }
}

/// The gitops profile's Application: its own release after Argo CD (the CRD must exist
/// first), rendered by real helm with the values cloud-init writes; without a repository
/// it does not render, so the installer marks it invalid instead of retrying.
#[test]
fn gitops_application_is_a_release_after_argo_cd_for_the_backend() {
    let mut p = plan(None, &[]).unwrap();
    let mut argo = p.addons[1].clone();
    argo.release = "argocd".into();
    argo.namespace = "argocd".into();
    argo.order = 70;
    argo.profile = Some(Profile::Gitops);
    p.addons.push(argo);
    let backend = imgbuild::chart::package_backend(0).unwrap();
    let index = imgbuild::chart::addons::index(&p, &backend).unwrap();
    let releases: Vec<&str> = index.iter().map(|e| e.release.as_str()).collect();
    assert_eq!(
        releases,
        ["cilium", "metrics-server", "ingress-nginx", "argocd", "local-path", "backend", "backend-app"]
    );
    let app = index.last().unwrap();
    assert_eq!((app.namespace.as_str(), app.profile), ("argocd", Some(Profile::Gitops)));
    assert!(imgbuild::chart::addons::profiles_tsv(&index).contains("backend-app\tgitops\n"));
    // Not carried without the profile.
    let plain = imgbuild::chart::addons::index(&plan(None, &[]).unwrap(), &backend).unwrap();
    assert!(plain.iter().all(|e| e.release != "backend-app"));

    let Some(helm) = imgbuild::tools::for_test("helm") else { return };
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/gitops-backend");
    let d = tempfile::tempdir().unwrap();
    let vf = d.path().join("v.yaml");
    std::fs::write(&vf, "repoURL: https://git.example.test/platform/app.git\ntargetRevision: v1.2.0\n")
        .unwrap();
    let o = Command::new(&helm)
        .args(["lint", "--strict", "--kube-version", "1.30.3", "-f"])
        .arg(&vf)
        .arg(&chart)
        .output()
        .unwrap();
    common::ok(&o);
    let o = Command::new(&helm)
        .args(["template", "backend-app", "--namespace", "argocd", "--kube-version", "1.30.3", "-f"])
        .arg(&vf)
        .arg(&chart)
        .output()
        .unwrap();
    common::ok(&o);
    let a: serde_yaml::Value = serde_yaml::from_slice(&o.stdout).unwrap();
    assert_eq!(a["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(a["kind"], "Application");
    assert_eq!(a["metadata"]["namespace"], "argocd");
    assert_eq!(a["spec"]["source"]["path"], "charts/backend");
    assert_eq!(a["spec"]["source"]["helm"]["releaseName"], "backend");
    assert_eq!(a["spec"]["destination"]["namespace"], imgbuild::chart::addons::BACKEND_NAMESPACE);
    assert_eq!(a["spec"]["destination"]["server"], "https://kubernetes.default.svc");
    let o = Command::new(&helm).args(["template", "x"]).arg(&chart).output().unwrap();
    assert!(!o.status.success(), "renders without a repository");
}

/// The commented profile example in a generated cluster.yaml is valid once uncommented.
#[test]
fn the_generated_profile_example_is_valid_when_uncommented() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path(), "");
    let text = std::fs::read_to_string(&c).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| *l == "  # profiles: [monitoring, logging, gitops]").expect("example");
    let out: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if (at..at + 7).contains(&i) { l.replacen("# ", "", 1) } else { l.to_string() })
        .collect();
    std::fs::write(&c, out.join("\n") + "\n").unwrap();
    let o = cloud_init(&c, &d.path().join("out"));
    common::ok(&o);
    assert_eq!(
        cp1_files(&d.path().join("out"))["/etc/imgbuild/addons/profiles"].1,
        "monitoring\nlogging\ngitops\n"
    );
}

// --- admin credentials generated with the cluster's secrets --------------------------------

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The Secret documents user-data hands the installer for `profile` (mode, parsed YAML).
fn profile_secret(
    files: &std::collections::BTreeMap<String, (String, String)>,
    profile: &str,
) -> (String, serde_yaml::Value) {
    let (m, text) = &files[&format!("{}/{profile}.yaml", imgbuild::chart::addons::PROFILE_SECRETS_DIR)];
    (m.clone(), serde_yaml::from_str(text).unwrap())
}

fn secret_value(s: &serde_yaml::Value, key: &str) -> String {
    use base64::Engine;
    let b = s["data"][key].as_str().unwrap_or_else(|| panic!("no data.{key} in {s:?}"));
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
}

/// `kubernetes-validate --strict` for 1.30 on `text` (skipped loudly without the tool).
fn validate_k8s(text: &str) {
    let Some(kv) = imgbuild::tools::for_test("kubernetes-validate") else { return };
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("objects.yaml");
    std::fs::write(&f, text).unwrap();
    let o = Command::new(&kv).args(["-k", "1.30.0", "--strict", "--quiet"]).arg(&f).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && all.trim().is_empty(), "{all}\n{text}");
}

/// The recipe add-on of `profile` in the embedded recipe (its baked values).
fn recipe_addon(profile: Profile) -> imgbuild::recipe::Addon {
    let lr = imgbuild::recipe::load(None).unwrap();
    lr.recipe.addons.iter().find(|a| a.profile == Some(profile)).cloned().expect("profile add-on")
}

#[test]
fn cluster_init_generates_the_admin_passwords_once_and_never_into_cluster_yaml() {
    use imgbuild::cluster::admin::{ARGOCD_FILE, GRAFANA_FILE};
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path(), "");
    let secrets = d.path().join("c/secrets");
    let before: Vec<Vec<u8>> =
        [GRAFANA_FILE, ARGOCD_FILE].iter().map(|f| std::fs::read(secrets.join(f)).unwrap()).collect();
    for f in [GRAFANA_FILE, ARGOCD_FILE] {
        assert_eq!(mode(&secrets.join(f)), 0o600, "{f}");
    }
    let admin = imgbuild::cluster::admin::AdminSecrets::load(&secrets).unwrap().unwrap();
    let spec = std::fs::read_to_string(&c).unwrap();
    for v in admin.values() {
        assert!(!spec.contains(&v), "an admin secret in cluster.yaml");
    }
    // Argo CD checks the hash with Go's bcrypt; a second implementation (APR's) agrees.
    if let Some(htpasswd) = imgbuild::tools::for_test("htpasswd") {
        let f = d.path().join("htpasswd");
        std::fs::write(&f, format!("admin:{}\n", admin.argocd.bcrypt)).unwrap();
        let ok = Command::new(&htpasswd)
            .arg("-vb")
            .arg(&f)
            .args(["admin", &admin.argocd.password])
            .output()
            .unwrap();
        assert!(ok.status.success(), "{}", common::stderr(&ok));
        let bad = Command::new(&htpasswd).arg("-vb").arg(&f).args(["admin", "not-it"]).output().unwrap();
        assert!(!bad.status.success());
    }
    // A second `cluster init` into the same directory keeps every secret as it was.
    let o = common::cluster_init(d.path().join("c")).external_lb().nodes(1, 1).output();
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    let after: Vec<Vec<u8>> =
        [GRAFANA_FILE, ARGOCD_FILE].iter().map(|f| std::fs::read(secrets.join(f)).unwrap()).collect();
    assert_eq!(before, after);
    // A cluster directory from before these secrets gets them once, from `cloud-init`.
    for f in [GRAFANA_FILE, ARGOCD_FILE] {
        std::fs::remove_file(secrets.join(f)).unwrap();
    }
    let text =
        std::fs::read_to_string(&c).unwrap().replace("\naddons:\n", "\naddons:\n  profiles: [monitoring]\n");
    std::fs::write(&c, text).unwrap();
    let o = cloud_init(&c, &d.path().join("out"));
    common::ok(&o);
    assert!(common::stderr(&o).contains(GRAFANA_FILE), "{}", common::stderr(&o));
    let made = std::fs::read(secrets.join(GRAFANA_FILE)).unwrap();
    assert_eq!(mode(&secrets.join(ARGOCD_FILE)), 0o600);
    common::ok(&cloud_init(&c, &d.path().join("out2")));
    assert_eq!(std::fs::read(secrets.join(GRAFANA_FILE)).unwrap(), made, "generated twice");
}

#[test]
fn admin_passwords_reach_the_first_control_plane_only_as_the_secrets_the_charts_read() {
    use imgbuild::cloudinit::addon_secrets::{ARGOCD_SECRET, GRAFANA_SECRET};
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path(), "  profiles: [monitoring, gitops]\n  gitops:\n    repo_url: https://git.example.test/platform/app.git\n");
    let admin = imgbuild::cluster::admin::AdminSecrets::load(&d.path().join("c/secrets")).unwrap().unwrap();
    let out = d.path().join("out");
    common::ok(&cloud_init(&c, &out));
    let files = cp1_files(&out);

    let (m, grafana) = profile_secret(&files, "monitoring");
    assert_eq!(m, "0600");
    assert_eq!(
        (grafana["kind"].as_str(), grafana["metadata"]["name"].as_str()),
        (Some("Secret"), Some(GRAFANA_SECRET))
    );
    assert_eq!(grafana["metadata"]["namespace"], Profile::Monitoring.namespace());
    assert_eq!(secret_value(&grafana, "admin-user"), admin.grafana.user);
    assert_eq!(secret_value(&grafana, "admin-password"), admin.grafana.password);

    let (m, argo) = profile_secret(&files, "gitops");
    assert_eq!(m, "0600");
    assert_eq!(argo["metadata"]["name"], ARGOCD_SECRET);
    assert_eq!(argo["metadata"]["namespace"], Profile::Gitops.namespace());
    assert_eq!(argo["metadata"]["labels"]["app.kubernetes.io/part-of"], "argocd");
    assert_eq!(secret_value(&argo, "admin.password"), admin.argocd.bcrypt);
    assert_eq!(secret_value(&argo, "admin.passwordMtime"), admin.argocd.mtime);
    // Never the plain Argo CD password, anywhere in user-data.
    let cp = std::fs::read_to_string(out.join("demo-cp-1/user-data")).unwrap();
    assert!(!cp.contains(&admin.argocd.password));
    let worker = std::fs::read_to_string(out.join("demo-worker-1/user-data")).unwrap();
    for path in files.keys() {
        if path.starts_with(imgbuild::chart::addons::PROFILE_SECRETS_DIR) {
            assert!(!worker.contains(path.as_str()), "{path} on a worker");
        }
    }
    for v in admin.values() {
        assert!(!worker.contains(&v) && !worker.contains(&base64_of(&v)), "an admin secret on a worker");
    }
    // Valid Kubernetes 1.30 objects.
    validate_k8s(&format!(
        "{}\n---\n{}",
        files[&format!("{}/monitoring.yaml", imgbuild::chart::addons::PROFILE_SECRETS_DIR)].1,
        files[&format!("{}/gitops.yaml", imgbuild::chart::addons::PROFILE_SECRETS_DIR)].1
    ));

    // The charts' baked values point at these Secrets (the keys read from the pinned
    // charts' sources: grafana 8.3.x `admin.*`, argo-cd 7.3.11 `configs.secret.createSecret`).
    let m = recipe_addon(Profile::Monitoring).values;
    assert_eq!(m["grafana"]["admin"]["existingSecret"], GRAFANA_SECRET);
    assert_eq!(m["grafana"]["admin"]["userKey"], "admin-user");
    assert_eq!(m["grafana"]["admin"]["passwordKey"], "admin-password");
    assert!(m["grafana"].get("adminPassword").is_none(), "a password baked into the image");
    let g = recipe_addon(Profile::Gitops).values;
    assert_eq!(g["configs"]["secret"]["createSecret"], false);
    common::ok(&lint(&c));
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

#[test]
fn the_installer_applies_a_profiles_secrets_right_before_its_chart() {
    let index = index_with_monitoring();
    let d = tempfile::tempdir().unwrap();
    let (root, stub) = installer_root(d.path(), &index);
    let secrets = root.join(imgbuild::chart::addons::PROFILE_SECRETS_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(root.join("etc/imgbuild/addons/profiles"), "monitoring\n").unwrap();
    std::fs::write(secrets.join("monitoring.yaml"), "kind: Secret\n").unwrap();
    let (o, _) = installer_run(&root, &stub);
    common::ok(&o);
    let calls = std::fs::read_to_string(stub.join("calls")).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    let apply = lines
        .iter()
        .position(|l| l.starts_with("kubectl apply") && l.ends_with("secrets/monitoring.yaml"))
        .unwrap_or_else(|| panic!("the Secret is not applied:\n{calls}"));
    let install = lines.iter().position(|l| l.starts_with("helm upgrade --install monitoring ")).unwrap();
    assert_eq!(apply + 1, install, "{calls}");
    // No other release applies it.
    assert_eq!(lines.iter().filter(|l| l.contains("secrets/")).count(), 1, "{calls}");
}

// --- the hypervisors' CSI drivers ---------------------------------------------------------

const PROXMOX_ON: &str = "  profiles: [proxmox]\n  proxmox:\n    url: https://pve.example.test:8006/api2/json\n    region: pve-lab\n    storage: local-lvm\n";
const PVE_TOKEN: &str = "5f1e8c2a-0000-4000-8000-c5b0a1d2e3f4";
const HCLOUD_TOKEN: &str = "hcloudtokenhcloudtokenhcloudtokenhcloudtokenhcloudtokenhcloudtok";
const CLOUD_CONF: &str = "[Global]\nauth-url = https://keystone.example.test:5000/v3\napplication-credential-id = 0c6a1b2c3d4e\napplication-credential-secret = appcredSECRETvalue\nregion = RegionOne\n\n[BlockStorage]\nignore-volume-az = true\n";

/// Write a credentials file `rel` (relative to the cluster directory) with `mode`.
fn credentials(c: &Path, rel: &str, body: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = c.parent().unwrap().join(rel);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn proxmox_credentials(id: &str) -> String {
    format!("token_id: \"{id}\"\ntoken_secret: {PVE_TOKEN}\n")
}

#[test]
fn csi_profiles_refuse_missing_or_unsafe_credentials_and_a_second_driver_naming_the_field() {
    let ok_pve = proxmox_credentials("kubernetes-csi@pve!csi");
    let hcloud = format!("token: {HCLOUD_TOKEN}\n");
    type Case<'a> = (&'a str, Vec<(&'a str, String, u32)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "  profiles: [proxmox]\n  proxmox:\n    region: pve-lab\n    storage: local-lvm\n",
            vec![("secrets/proxmox-csi.yaml", ok_pve.clone(), 0o600)],
            "addons.proxmox.url",
        ),
        (
            "  profiles: [proxmox]\n  proxmox:\n    url: http://pve.example.test:8006/api2/json\n    region: pve-lab\n    storage: local-lvm\n",
            vec![("secrets/proxmox-csi.yaml", ok_pve.clone(), 0o600)],
            "addons.proxmox.url",
        ),
        (PROXMOX_ON, vec![], "addons.proxmox.credentials_file"),
        (
            PROXMOX_ON,
            vec![("secrets/proxmox-csi.yaml", proxmox_credentials("no-realm-or-token"), 0o600)],
            "addons.proxmox.credentials_file",
        ),
        ("  profiles: [hcloud]\n", vec![], "addons.hcloud.credentials_file"),
        ("  profiles: [hcloud]\n", vec![("secrets/hcloud.yaml", hcloud.clone(), 0o644)], "addons.hcloud.credentials_file"),
        (
            "  profiles: [cinder]\n",
            vec![("secrets/cinder-cloud.conf", CLOUD_CONF.replace("auth-url", "auth-uri"), 0o600)],
            "addons.cinder.credentials_file",
        ),
        (
            "  profiles: [cinder, hcloud]\n",
            vec![("secrets/cinder-cloud.conf", CLOUD_CONF.to_string(), 0o600), ("secrets/hcloud.yaml", hcloud.clone(), 0o600)],
            "addons.profiles[1]",
        ),
        (
            "  profiles: [hcloud]\n  values:\n    local-path:\n      storageClass:\n        default: true\n",
            vec![("secrets/hcloud.yaml", hcloud.clone(), 0o600)],
            "addons.values.local-path.storageClass.default",
        ),
    ];
    for (addons, files, field) in cases {
        let d = tempfile::tempdir().unwrap();
        let c = cluster(d.path(), addons);
        for (rel, body, m) in &files {
            credentials(&c, rel, body, *m);
        }
        let o = cloud_init(&c, &d.path().join("out"));
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{addons}: {err}");
        assert!(err.contains(field), "{addons}: want {field}: {err}");
        for secret in [PVE_TOKEN, HCLOUD_TOKEN, "appcredSECRETvalue"] {
            assert!(!err.contains(secret), "a credential in the message: {err}");
        }
        assert!(!d.path().join("out/demo-cp-1/user-data").exists());
        let o = lint(&c);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(2), "lint {addons}: {out}");
        assert!(out.contains(field), "lint {addons}: want {field}: {out}");
    }
}

/// Every leaf of a values tree as a dotted path (a list is a leaf).
fn leaf_paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(x, &p, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The values the recipe bakes for each CSI chart use keys its pinned version has, read
/// from the chart sources: kubernetes/cloud-provider-openstack tag
/// openstack-cinder-csi-2.30.3 charts/cinder-csi-plugin/values.yaml and templates;
/// sergelogvinov/proxmox-csi-plugin tag v0.7.0 (chart 0.2.5) values.yaml and
/// templates/storageclass.yaml + _storage.tpl; hetznercloud/csi-driver tag v2.17.0
/// chart/values.yaml and templates/core/storageclass.yaml. (The charts themselves cannot
/// be downloaded here, so `helm template` of them cannot run.)
const CHART_KEYS: [(Profile, &[&str]); 3] = [
    (
        Profile::Cinder,
        &[
            "secret.enabled",
            "secret.create",
            "secret.hostMount",
            "secret.name",
            "secret.filename",
            "storageClass.enabled",
            "storageClass.delete.isDefault",
            "storageClass.delete.allowVolumeExpansion",
            "storageClass.retain.isDefault",
            "storageClass.retain.allowVolumeExpansion",
            "csi.plugin.controllerPlugin.tolerations",
        ],
    ),
    (
        Profile::Proxmox,
        &[
            "existingConfigSecret",
            "existingConfigSecretKey",
            "tolerations",
            "node.tolerations",
            "storageClass",
        ],
    ),
    (
        Profile::Hcloud,
        &[
            "controller.hcloudToken.existingSecret.name",
            "controller.hcloudToken.existingSecret.key",
            "controller.tolerations",
            "storageClasses",
        ],
    ),
];

/// The fields of one `storageClass[]` item proxmox-csi-plugin 0.2.5's template reads.
const PROXMOX_CLASS_KEYS: [&str; 8] =
    ["name", "storage", "reclaimPolicy", "fstype", "cache", "ssd", "annotations", "labels"];

#[test]
fn csi_credentials_become_the_secret_each_chart_reads_and_its_class_the_only_default() {
    use imgbuild::cloudinit::addon_secrets as s;
    let cases = [
        (
            Profile::Cinder,
            "  profiles: [cinder]\n".to_string(),
            "secrets/cinder-cloud.conf",
            CLOUD_CONF.to_string(),
            s::CINDER_SECRET,
            s::CINDER_KEY,
        ),
        (
            Profile::Proxmox,
            PROXMOX_ON.to_string(),
            "secrets/proxmox-csi.yaml",
            proxmox_credentials("kubernetes-csi@pve!csi"),
            s::PROXMOX_SECRET,
            s::PROXMOX_KEY,
        ),
        (
            Profile::Hcloud,
            "  profiles: [hcloud]\n".to_string(),
            "secrets/hcloud.yaml",
            format!("token: {HCLOUD_TOKEN}\n"),
            s::HCLOUD_SECRET,
            s::HCLOUD_KEY,
        ),
    ];
    let mut manifests = Vec::new();
    for (p, addons, rel, body, name, key) in cases {
        let d = tempfile::tempdir().unwrap();
        let c = cluster(d.path(), &addons);
        credentials(&c, rel, &body, 0o600);
        let out = d.path().join("out");
        common::ok(&cloud_init(&c, &out));
        let files = cp1_files(&out);
        let (m, secret) = profile_secret(&files, p.as_str());
        assert_eq!(m, "0600", "{p}");
        assert_eq!(secret["metadata"]["name"], name, "{p}");
        assert_eq!(secret["metadata"]["namespace"], p.namespace(), "{p}");
        let value = secret_value(&secret, key);
        match p {
            Profile::Cinder => assert_eq!(value, CLOUD_CONF),
            Profile::Hcloud => assert_eq!(value, HCLOUD_TOKEN),
            _ => {
                let cfg: serde_yaml::Value = serde_yaml::from_str(&value).unwrap();
                let cl = &cfg["clusters"][0];
                assert_eq!(cl["url"], "https://pve.example.test:8006/api2/json");
                assert_eq!(cl["region"], "pve-lab");
                assert_eq!(cl["token_id"], "kubernetes-csi@pve!csi");
                assert_eq!(cl["token_secret"], PVE_TOKEN);
                assert_eq!(cl["insecure"], false);
                // The StorageClass names the Proxmox storage from cluster.yaml.
                let (_, v) = &files[&format!("/etc/imgbuild/addons/{}.yaml", p.release())];
                let v: serde_json::Value = serde_yaml::from_str(v).unwrap();
                let class = &v["storageClass"][0];
                assert_eq!(class["storage"], "local-lvm");
                assert_eq!(class["annotations"]["storageclass.kubernetes.io/is-default-class"], "true");
                for k in class.as_object().unwrap().keys() {
                    assert!(PROXMOX_CLASS_KEYS.contains(&k.as_str()), "storageClass[].{k}");
                }
            }
        }
        manifests
            .push(files[&format!("{}/{p}.yaml", imgbuild::chart::addons::PROFILE_SECRETS_DIR)].1.clone());
        // The other StorageClass steps back: local-path is not the default any more.
        let lp: serde_yaml::Value =
            serde_yaml::from_str(&files["/etc/imgbuild/addons/local-path.yaml"].1).unwrap();
        assert_eq!(lp["storageClass"]["default"], false, "{p}");
        // The credentials reach the first control plane only.
        let worker = std::fs::read_to_string(out.join("demo-worker-1/user-data")).unwrap();
        assert!(
            !worker.contains(&base64_of(&value)) && !worker.contains(&format!("secrets/{p}.yaml")),
            "{p}"
        );
        assert!(!worker.contains("local-path.yaml"));
        common::ok(&lint(&c));

        // The chart's baked values point at that Secret and make its class the default,
        // with keys the pinned chart has.
        let a = recipe_addon(p);
        assert_eq!((a.release.as_str(), a.namespace.as_str()), (p.release(), p.namespace()));
        let v = &a.values;
        match p {
            Profile::Cinder => {
                assert_eq!(
                    (
                        &v["secret"]["enabled"],
                        &v["secret"]["create"],
                        &v["secret"]["name"],
                        &v["secret"]["filename"]
                    ),
                    (
                        &serde_json::json!(true),
                        &serde_json::json!(false),
                        &serde_json::json!(name),
                        &serde_json::json!(key)
                    )
                );
                assert_eq!(v["storageClass"]["delete"]["isDefault"], true);
                assert_eq!(v["storageClass"]["retain"]["isDefault"], false);
            }
            Profile::Hcloud => {
                assert_eq!(
                    v["controller"]["hcloudToken"]["existingSecret"],
                    serde_json::json!({"name": name, "key": key})
                );
                let classes = v["storageClasses"].as_array().unwrap();
                assert_eq!(classes.iter().filter(|c| c["defaultStorageClass"] == true).count(), 1);
            }
            _ => {
                assert_eq!(
                    (&v["existingConfigSecret"], &v["existingConfigSecretKey"]),
                    (&serde_json::json!(name), &serde_json::json!(key))
                );
            }
        }
        let mut paths = Vec::new();
        leaf_paths(v, "", &mut paths);
        let known = CHART_KEYS.iter().find(|(q, _)| *q == p).unwrap().1;
        for path in paths {
            assert!(known.contains(&path.as_str()), "{p}: {path} is not a key of the pinned chart");
        }
    }
    validate_k8s(&manifests.join("\n---\n"));
}

/// Where each profile chart reads the tolerations of each of its workloads (from the
/// templates at the pinned tags), except those whose chart default already tolerates every
/// NoSchedule taint (node-exporter, Cinder's and Hetzner's node plugins). A cluster without
/// workers runs every component on its tainted control planes, so each list must tolerate
/// the taint. Rendering the real charts (ci/check-profile-charts.sh) found proxmox-csi-plugin
/// 0.2.5's node plugin DaemonSet off the control planes: it reads `node.tolerations`, not
/// the top-level `tolerations` (the controller's).
const TOLERATIONS: [(Profile, &[&str]); 6] = [
    (
        Profile::Monitoring,
        &[
            "prometheus.prometheusSpec.tolerations",
            "alertmanager.alertmanagerSpec.tolerations",
            "prometheusOperator.tolerations",
            "prometheusOperator.admissionWebhooks.patch.tolerations",
            "grafana.tolerations",
            "kube-state-metrics.tolerations",
        ],
    ),
    (Profile::Logging, &["tolerations"]),
    (Profile::Gitops, &["global.tolerations"]),
    (Profile::Cinder, &["csi.plugin.controllerPlugin.tolerations"]),
    (Profile::Proxmox, &["tolerations", "node.tolerations"]),
    (Profile::Hcloud, &["controller.tolerations"]),
];

#[test]
fn every_profile_workload_tolerates_the_control_plane_taint() {
    let tolerates = |t: &serde_json::Value| {
        t["key"] == imgbuild::cloudinit::addon_values::CONTROL_PLANE_TAINT
            && t["operator"] == "Exists"
            && t["effect"] == "NoSchedule"
    };
    for (p, paths) in TOLERATIONS {
        let v = recipe_addon(p).values;
        for path in paths {
            let list = path.split('.').fold(&v, |v, k| &v[k]);
            let list = list.as_array().unwrap_or_else(|| panic!("{p}: no list at {path}"));
            assert!(list.iter().any(tolerates), "{p}: {path} does not tolerate the control-plane taint");
        }
    }
    // A list replaces the chart's: the node plugin keeps proxmox-csi-plugin 0.2.5's own two.
    let v = recipe_addon(Profile::Proxmox).values;
    let keys: Vec<&str> =
        v["node"]["tolerations"].as_array().unwrap().iter().filter_map(|t| t["key"].as_str()).collect();
    for k in ["node.kubernetes.io/unschedulable", "node.kubernetes.io/disk-pressure"] {
        assert!(keys.contains(&k), "node.tolerations lost the chart's {k}");
    }
}

/// The CSI drivers' namespaces: csi-proxmox gets the `privileged` level its node plugin
/// needs (kube-system, where cinder and hcloud go, is exempt and labelled privileged
/// already); the Namespace objects are valid for 1.30.
#[test]
fn csi_namespaces_are_labelled_for_their_node_plugins() {
    let mut p = plan(None, &[]).unwrap();
    for (i, prof) in [Profile::Cinder, Profile::Proxmox, Profile::Hcloud].into_iter().enumerate() {
        let mut a = p.addons[1].clone();
        a.release = prof.release().into();
        a.namespace = prof.namespace().into();
        a.order = 80 + i as u32;
        a.profile = Some(prof);
        a.pod_security = recipe_addon(prof).pod_security;
        p.addons.push(a);
    }
    let ns = imgbuild::chart::addons::namespaces(&p);
    for name in ["csi-proxmox", "kube-system"] {
        assert!(
            ns.contains(&format!(
                "name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: privileged\n"
            )),
            "{ns}"
        );
    }
    validate_k8s(&ns);
}

#[test]
fn a_turned_on_profiles_overrides_are_kept_and_merged_under_its_rendered_values() {
    let d = tempfile::tempdir().unwrap();
    let token = "dt0c01.ABCDEFGHIJKLMNOPQRSTUVWX.0123456789abcdef";
    let c = cluster(
        d.path(),
        &format!(
            "  profiles: [monitoring, logging]\n  logging:\n    endpoint: https://abc123.live.dynatrace.com/api/v2/otlp\n    token: {token}\n  values:\n    monitoring:\n      prometheus:\n        prometheusSpec:\n          retention: 3d\n    logging:\n      mode: daemonset\n      config:\n        exporters:\n          otlphttp:\n            endpoint: https://elsewhere.example.test\n            compression: gzip\n"
        ),
    );
    let out = d.path().join("out");
    let o = cloud_init(&c, &out);
    common::ok(&o);
    // Not checked against a chart the plan does not load, and the user is told so.
    assert!(common::stderr(&o).contains("addons.values.monitoring"), "{}", common::stderr(&o));
    let files = cp1_files(&out);
    let m: serde_yaml::Value =
        serde_yaml::from_str(&files["/etc/imgbuild/addons/monitoring.yaml"].1).unwrap();
    assert_eq!(m["prometheus"]["prometheusSpec"]["retention"], "3d");
    // The user's keys survive; what imgbuild renders from addons.logging wins where both set it.
    let (mode, logging) = &files["/etc/imgbuild/addons/logging.yaml"];
    assert_eq!(mode, "0600");
    let v: serde_yaml::Value = serde_yaml::from_str(logging).unwrap();
    assert_eq!(v["mode"], "daemonset");
    let exp = &v["config"]["exporters"]["otlphttp"];
    assert_eq!(exp["compression"], "gzip");
    assert_eq!(exp["endpoint"], "https://abc123.live.dynatrace.com/api/v2/otlp");
    assert_logging_token_in_its_secret(&files, token);
    let ud: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("demo-cp-1/user-data")).unwrap()).unwrap();
    let written = ud["write_files"].as_sequence().unwrap();
    let n = written.iter().filter(|f| f["path"] == "/etc/imgbuild/addons/logging.yaml").count();
    assert_eq!(n, 1, "the values file written twice");
    common::ok(&lint(&c));

    // A profile that is not on is still not an add-on release of this cluster.
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path(), "  values:\n    monitoring:\n      grafana:\n        enabled: false\n");
    let o = cloud_init(&c, &d.path().join("out"));
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("addons.values.monitoring"), "{}", common::stderr(&o));
}

/// ci/check-profile-charts.sh checks the real profile charts by hand (they cannot be
/// downloaded in CI); its checks run here on made-up objects, so a change that stops one
/// from refusing what it should fails CI: undeclared fields and missing required fields of
/// a custom resource against its CRD (int-or-string, nullable, preserved and embedded
/// fields accepted), a kind without a CRD, a Secret or key a pod reads that nobody
/// creates, a delivered Secret key no pod reads, a pod without the control-plane toleration, a hostPath volume or host port in
/// a baseline namespace, a collector pipeline naming an undefined or foreign component or
/// an unset variable, a value key the chart does not have.
#[test]
fn the_chart_checker_refuses_what_it_should() {
    let ok = Command::new("python3")
        .args(["-c", "import jsonschema, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with jsonschema+pyyaml is required in CI (ci/test.sh)"
        );
        eprintln!("note: skipping the chart checker's self-test: pip install jsonschema pyyaml");
        return;
    }
    let o = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/check-profile-charts.py"))
        .arg("--self-test")
        .output()
        .unwrap();
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches(": ok\n").count(), 22, "{err}");
}
