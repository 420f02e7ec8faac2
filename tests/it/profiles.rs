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
    for name in ["kube-prometheus-stack", "opentelemetry-collector", "argo-cd"] {
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
    let o = common::bin()
        .args(["cluster", "init", "--name", "demo", "--endpoint", "10.0.0.10:6443", "--external-lb"])
        .args(["--control-planes", "1", "--workers", "1", "--dir"])
        .arg(dir.join("c"))
        .output()
        .unwrap();
    common::ok(&o);
    let c = dir.join("c/cluster.yaml");
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
    assert_eq!(exp["headers"]["Authorization"].as_str().unwrap(), format!("Api-Token {token}"));
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

#[test]
fn the_installer_installs_a_profile_only_where_the_cluster_turned_it_on() {
    let mut p = plan(None, &[]).unwrap();
    // A plan with the monitoring add-on (its chart's digest does not matter to the installer).
    let mut m = p.addons[1].clone();
    m.release = "monitoring".into();
    m.namespace = "monitoring".into();
    m.order = 50;
    m.profile = Some(Profile::Monitoring);
    p.addons.push(m);
    let backend = imgbuild::chart::package_backend(0).unwrap();
    let index = imgbuild::chart::addons::index(&p, &backend).unwrap();
    for (on, want) in [
        (None, vec!["cilium", "metrics-server", "ingress-nginx", "local-path", "backend"]),
        (Some("logging\n"), vec!["cilium", "metrics-server", "ingress-nginx", "local-path", "backend"]),
        (
            Some("monitoring\n"),
            vec!["cilium", "metrics-server", "ingress-nginx", "monitoring", "local-path", "backend"],
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let dir = root.join("usr/share/imgbuild/addons");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("addons.tsv"), imgbuild::chart::addons::tsv(&index)).unwrap();
        std::fs::write(dir.join("profiles.tsv"), imgbuild::chart::addons::profiles_tsv(&index)).unwrap();
        std::fs::create_dir_all(root.join("etc/imgbuild/addons")).unwrap();
        if let Some(list) = on {
            std::fs::write(root.join("etc/imgbuild/addons/profiles"), list).unwrap();
        }
        let stub = d.path().join("stub");
        std::fs::create_dir_all(&stub).unwrap();
        for b in ["helm", "kubectl"] {
            std::fs::write(stub.join(b), STUB).unwrap();
            std::fs::set_permissions(stub.join(b), std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
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
