use crate::common::{self, run_ok};

// The backend chart, `imgbuild chart package`, the add-on files of the control-plane
// image and the installer/approver scripts, checked with the real tools: helm (npm),
// kubernetes-validate (PyPI), shellcheck, systemd-analyze, openssl, bash.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imgbuild::types::{Role, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo().join("charts/backend")
}

fn cp_files() -> PathBuf {
    repo().join("image-files/control-plane")
}

/// A tool on PATH, or None with a note when it is missing outside CI (in CI: panic).
fn tool(name: &'static str) -> Option<PathBuf> {
    imgbuild::tools::for_test(name)
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// kubernetes-validate exits 0 on unknown kinds (only a WARN): any output is a failure.
fn validate(validator: &Path, file: &Path) -> Result<(), String> {
    let out = Command::new(validator)
        .args(["-k", "1.30.0", "--strict", "--quiet"])
        .arg(file)
        .output()
        .map_err(|e| e.to_string())?;
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && all.trim().is_empty() {
        Ok(())
    } else {
        Err(all)
    }
}

fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(d: &[serde_yaml::Value]) -> BTreeSet<String> {
    d.iter().filter_map(|v| v["kind"].as_str().map(str::to_string)).collect()
}

fn of_kind<'a>(d: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    d.iter().find(|v| v["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

const VALUE_SETS: &[(&str, &str)] = &[
    ("defaults", ""),
    (
        "ingress-tls",
        "ingress:\n  host: backend.example.test\n  tls:\n    enabled: true\n\
         secret:\n  env:\n    DATABASE_URL: postgres://app:pw@db.example.test:5432/app?sslmode=require\n",
    ),
    ("hpa-off", "autoscaling:\n  enabled: false\nreplicaCount: 3\npodDisruptionBudget:\n  minAvailable: 1\n"),
    ("existing-secret", "secret:\n  existingSecret: backend-db\nserviceAccount:\n  create: false\n"),
    ("netpol-off", "networkPolicy:\n  enabled: false\n"),
    (
        "metrics-monitoring",
        "networkPolicy:\n  metricsFrom:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: monitoring\n",
    ),
];

#[test]
fn chart_lints_and_renders_valid_manifests_for_each_value_set() {
    let (Some(helm), Some(kv)) = (tool("helm"), tool("kubernetes-validate")) else { return };
    let tmp = tempfile::tempdir().unwrap();
    for (name, values) in VALUE_SETS {
        let vf = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&vf, values).unwrap();
        run_ok(
            Command::new(&helm)
                .args(["lint", "--strict", "--kube-version", "1.30.3"])
                .arg(chart_dir())
                .arg("-f")
                .arg(&vf),
        );
        let out = run_ok(
            Command::new(&helm)
                .args(["template", "rel", "--namespace", "backend", "--kube-version", "1.30.3"])
                .arg(chart_dir())
                .arg("-f")
                .arg(&vf),
        );
        let rendered = tmp.path().join(format!("{name}.rendered.yaml"));
        std::fs::write(&rendered, &out.stdout).unwrap();
        validate(&kv, &rendered).unwrap_or_else(|e| panic!("{name}: kubernetes-validate: {e}"));

        let d = docs(&text(&out));
        let k = kinds(&d);
        for always in ["Deployment", "Service", "Pod"] {
            assert!(k.contains(always), "{name}: {k:?}");
        }
        assert_eq!(k.contains("HorizontalPodAutoscaler"), *name != "hpa-off", "{name}");
        assert_eq!(k.contains("Secret"), *name != "existing-secret", "{name}");
        assert_eq!(k.contains("ServiceAccount"), *name != "existing-secret", "{name}");
        assert_eq!(k.contains("NetworkPolicy"), *name != "netpol-off", "{name}");
        assert!(k.contains("Ingress") && k.contains("PodDisruptionBudget"), "{name}: {k:?}");

        let dep = of_kind(&d, "Deployment");
        let pod = &dep["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["image"], "ghcr.io/stefanprodan/podinfo:6.7.0");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert!(
            c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string()
        );
        let secret_name = if *name == "existing-secret" { "backend-db" } else { "rel-backend" };
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], secret_name);
        assert_eq!(dep["spec"]["replicas"].as_u64(), (*name == "hpa-off").then_some(3));
        assert_eq!(dep["metadata"]["labels"]["app.kubernetes.io/name"], "backend");
        assert_eq!(dep["metadata"]["labels"]["app.kubernetes.io/instance"], "rel");

        let test_pod = of_kind(&d, "Pod");
        assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test");
        assert!(text(&out).contains("http://rel-backend:80/readyz"));
        if *name == "ingress-tls" {
            let ing = of_kind(&d, "Ingress");
            assert_eq!(ing["spec"]["tls"][0]["hosts"][0], "backend.example.test");
            assert_eq!(ing["spec"]["ingressClassName"], "nginx");
            let s = of_kind(&d, "Secret");
            assert!(s["stringData"]["DATABASE_URL"].as_str().unwrap().starts_with("postgres://"));
        }
        if *name == "metrics-monitoring" {
            let np = of_kind(&d, "NetworkPolicy");
            let m = &np["spec"]["ingress"][1];
            assert_eq!(m["ports"][0]["port"], "metrics");
            assert_eq!(
                m["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "monitoring"
            );
        }
        if *name == "defaults" {
            let np = of_kind(&d, "NetworkPolicy");
            let ingress = np["spec"]["ingress"].as_sequence().unwrap();
            let ports: Vec<_> = ingress.iter().map(|r| r["ports"][0]["port"].as_str().unwrap()).collect();
            // nobody may scrape the metrics port until a monitoring namespace is named
            assert_eq!(ports, ["http"]);
            assert_eq!(
                ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "ingress-nginx"
            );
            let hpa = of_kind(&d, "HorizontalPodAutoscaler");
            assert_eq!(hpa["apiVersion"], "autoscaling/v2");
            assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
        }
    }
}

#[test]
fn validators_reject_what_they_should() {
    let (Some(helm), Some(kv)) = (tool("helm"), tool("kubernetes-validate")) else { return };
    let tmp = tempfile::tempdir().unwrap();
    // The schema turns a misspelt key into a lint failure.
    let vf = tmp.path().join("typo.yaml");
    std::fs::write(&vf, "ingres:\n  enabled: true\n").unwrap();
    let out = Command::new(&helm)
        .args(["lint", "--strict", "--kube-version", "1.30.3"])
        .arg(chart_dir())
        .arg("-f")
        .arg(&vf)
        .output()
        .unwrap();
    assert!(!out.status.success(), "lint accepted an unknown value");
    // TLS without a host is refused at render time.
    let out = Command::new(&helm)
        .args(["template", "rel"])
        .arg(chart_dir())
        .args(["--set", "ingress.tls.enabled=true"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("ingress.host"));
    // The validation pipeline itself fails on a bad field and on an unknown kind.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  bogus: 1\n").unwrap();
    assert!(validate(&kv, &bad).is_err());
    std::fs::write(&bad, "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata:\n  name: x\n")
        .unwrap();
    assert!(validate(&kv, &bad).is_err(), "a WARN-only result must count as failure");
}

fn tar_entries(tgz: &Path) -> Vec<String> {
    let f = std::fs::File::open(tgz).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut v: Vec<String> =
        a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    v.sort();
    v
}

#[test]
fn package_is_byte_identical_and_readable_by_helm() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy with files .helmignore (and Helm's built-in rule) must keep out.
    let src = tmp.path().join("backend");
    copy_dir(&chart_dir(), &src);
    std::fs::create_dir_all(src.join(".git")).unwrap();
    std::fs::write(src.join(".git/config"), "x").unwrap();
    std::fs::write(src.join("old-0.0.1.tgz"), "x").unwrap();
    std::fs::write(src.join("values.yaml.orig"), "x").unwrap();
    std::fs::write(src.join("templates/.editor-state"), "x").unwrap();

    let mut paths = Vec::new();
    for out in ["a", "b"] {
        let o =
            run_ok(common::bin().args(["chart", "package"]).arg(&src).arg("--out").arg(tmp.path().join(out)));
        let p = PathBuf::from(text(&o).trim());
        assert_eq!(p, tmp.path().join(out).join("backend-0.1.0.tgz"));
        paths.push(p);
    }
    let (a, b) = (std::fs::read(&paths[0]).unwrap(), std::fs::read(&paths[1]).unwrap());
    assert_eq!(Sha256::of(&a), Sha256::of(&b), "two runs differ");
    // SOURCE_DATE_EPOCH sets the entry mtime; still deterministic.
    let o = run_ok(
        common::bin()
            .args(["chart", "package", "-q"])
            .arg(&src)
            .arg("--out")
            .arg(tmp.path().join("c"))
            .env("SOURCE_DATE_EPOCH", "1724198400"),
    );
    assert!(o.stderr.is_empty(), "--quiet");
    let c = std::fs::read(tmp.path().join("c/backend-0.1.0.tgz")).unwrap();
    assert_ne!(c, a);

    let entries = tar_entries(&paths[0]);
    assert!(entries.iter().all(|e| e.starts_with("backend/")), "{entries:?}");
    for gone in [".git/config", "old-0.0.1.tgz", "values.yaml.orig", "templates/.editor-state"] {
        assert!(!entries.contains(&format!("backend/{gone}")), "{gone} was packaged");
    }
    for kept in ["Chart.yaml", "values.schema.json", "templates/tests/test-readyz.yaml", "README.md"] {
        assert!(entries.contains(&format!("backend/{kept}")), "{kept} missing: {entries:?}");
    }

    let Some(helm) = tool("helm") else { return };
    // Same file set as `helm package` of the same directory.
    run_ok(Command::new(&helm).arg("package").arg(&src).arg("-d").arg(tmp.path().join("helm")));
    assert_eq!(entries, tar_entries(&tmp.path().join("helm/backend-0.1.0.tgz")));
    let show = text(&run_ok(Command::new(&helm).args(["show", "chart"]).arg(&paths[0])));
    assert!(show.contains("name: backend") && show.contains("version: 0.1.0"), "{show}");
    let rendered = text(&run_ok(Command::new(&helm).args(["template", "rel"]).arg(&paths[0])));
    assert!(rendered.contains("kind: Deployment"));
    run_ok(Command::new(&helm).args(["lint", "--strict"]).arg(&paths[0]));
}

#[test]
fn package_refuses_a_non_chart_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let o = common::bin().args(["chart", "package"]).arg(tmp.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Chart.yaml"));
    std::fs::write(tmp.path().join("Chart.yaml"), "apiVersion: v2\nname: x\nversion: latest\n").unwrap();
    let o = common::bin().args(["chart", "package"]).arg(tmp.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

#[test]
fn scripts_pass_shellcheck_and_units_verify() {
    let scripts = ["addons-install", "kubelet-csr-approver"];
    if let Some(sc) = tool("shellcheck") {
        for s in scripts {
            run_ok(
                Command::new(&sc)
                    .args(["-S", "style", "-f", "gcc"])
                    .arg(cp_files().join("usr/libexec/imgbuild").join(s)),
            );
        }
    }
    let Some(sa) = tool("systemd-analyze") else { return };
    // A fake root with the host's unit library and the scripts (validators.md §5).
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    for d in ["usr/lib/systemd", "etc/systemd", "usr/libexec"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    run_ok(Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(r.join("usr/lib/systemd/")));
    copy_dir(&cp_files().join("etc/systemd/system"), &r.join("etc/systemd/system"));
    copy_dir(&cp_files().join("usr/libexec/imgbuild"), &r.join("usr/libexec/imgbuild"));
    for s in scripts {
        let p = r.join("usr/libexec/imgbuild").join(s);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    for unit in [
        "imgbuild-addons.service",
        "imgbuild-kubelet-csr-approver.service",
        "imgbuild-kubelet-csr-approver.path",
    ] {
        let o = Command::new(&sa)
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", r.display()))
            .arg(unit)
            .output()
            .unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success() && all.trim().is_empty(), "{unit}: {all}");
    }
    let unit =
        std::fs::read_to_string(cp_files().join("etc/systemd/system/imgbuild-addons.service")).unwrap();
    assert!(!unit.contains("[Install]"), "the installer is started by the init path only");
}

// ---------------------------------------------------------------------------------------
// The installer (addons-install) in a temp root with helm/kubectl stand-ins.

const HELM_STUB: &str = r#"#!/usr/bin/env bash
printf 'helm %s\n' "$*" >>"$STUB_LOG"
if [[ "$1" == upgrade ]]; then
  f="$STUB_DIR/fail-$3"
  if [[ -f "$f" ]] && (( $(cat "$f") > 0 )); then
    echo $(( $(cat "$f") - 1 )) >"$f"
    echo "stub: $3 fails" >&2
    exit 1
  fi
fi
# a chart that does not render with its values: helm's error as helm prints it
if [[ "$1" == template && -f "$STUB_DIR/invalid-$2" ]]; then
  printf 'Error: values don'"'"'t meet the specifications of the schema(s) in the following chart(s):\n%s:\n- replicaCount: Invalid type. Expected: integer, given: string\n' "$2" >&2
  exit 1
fi
"#;

const KUBECTL_STUB: &str = r#"#!/usr/bin/env bash
printf 'kubectl %s\n' "$*" >>"$STUB_LOG"
"#;

struct Installer {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    stub: PathBuf,
}

impl Installer {
    /// A root holding the index the default recipe's control-plane image carries.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let stub = tmp.path().join("stub");
        std::fs::create_dir_all(stub.join("bin")).unwrap();
        for (name, body) in [("helm", HELM_STUB), ("kubectl", KUBECTL_STUB)] {
            let p = stub.join("bin").join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let plan = plan_for(&default_recipe_text(), Role::ControlPlane);
        let backend = imgbuild::chart::package_backend(plan.source_date_epoch).unwrap();
        let index = imgbuild::chart::addons::index(&plan, &backend).unwrap();
        let dir = root.join("usr/share/imgbuild/addons");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("addons.tsv"), imgbuild::chart::addons::tsv(&index)).unwrap();
        std::fs::write(dir.join("namespaces.yaml"), imgbuild::chart::addons::namespaces(&plan)).unwrap();
        std::fs::create_dir_all(root.join("etc/imgbuild/addons")).unwrap();
        std::fs::write(root.join("etc/imgbuild/addons/values.yaml"), "ingress:\n  host: b.example.test\n")
            .unwrap();
        // the node name the installer waits for comes from the bootstrap's data
        std::fs::write(
            root.join("etc/imgbuild/bootstrap.env"),
            "IMGBUILD_ROLE=init\nIMGBUILD_NODE_NAME=demo-cp-1\n",
        )
        .unwrap();
        Installer { _tmp: tmp, root, stub }
    }

    /// The next `helm template` of `release` fails like a schema violation.
    fn invalid(&self, release: &str) {
        std::fs::write(self.stub.join(format!("invalid-{release}")), "").unwrap();
    }

    fn fail(&self, release: &str, times: u32) {
        std::fs::write(self.stub.join(format!("fail-{release}")), times.to_string()).unwrap();
    }

    fn run(&self, attempts: u32) -> Output {
        let path =
            format!("{}:{}", self.stub.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        Command::new("bash")
            .arg(cp_files().join("usr/libexec/imgbuild/addons-install"))
            .env("PATH", path)
            .env("IMGBUILD_ROOT", &self.root)
            .env("IMGBUILD_ADDONS_BACKOFF", "0")
            .env("IMGBUILD_ADDONS_ATTEMPTS", attempts.to_string())
            .env("STUB_LOG", self.stub.join("calls"))
            .env("STUB_DIR", &self.stub)
            .output()
            .unwrap()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.stub.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The cluster-changing calls, abbreviated: `install <release>`, `wait node`, `wait coredns`.
    fn actions(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter_map(|c| {
                let w: Vec<&str> = c.split_whitespace().collect();
                match w.as_slice() {
                    ["helm", "upgrade", "--install", rel, ..] => Some(format!("install {rel}")),
                    ["kubectl", "wait", ..] if c.contains("condition=Ready node/demo-cp-1 ") => {
                        Some("wait node".into())
                    }
                    ["kubectl", _, "kube-system", "rollout", "status", "deployment/coredns", ..] => {
                        Some("wait coredns".into())
                    }
                    ["kubectl", "get", "--raw=/readyz"] => Some("api".into()),
                    ["kubectl", "apply", "--server-side", ..] if c.ends_with("/namespaces.yaml") => {
                        Some("namespaces".into())
                    }
                    _ => None,
                }
            })
            .collect()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.root.join("run/imgbuild/addons.json")).unwrap()).unwrap()
    }

    fn resume_link(&self) -> PathBuf {
        self.root.join("etc/systemd/system/multi-user.target.wants/imgbuild-addons.service")
    }
}

fn default_recipe_text() -> String {
    imgbuild::recipe::load(None).unwrap().text
}

fn plan_for(text: &str, role: Role) -> imgbuild::plan::BuildPlan {
    let r = imgbuild::recipe::parse(text, "test-recipe").unwrap();
    let o = imgbuild::plan::PlanOptions::new(role, imgbuild::types::Arch::Amd64);
    let mut p = imgbuild::plan::BuildPlan::resolve(&r, &o).unwrap();
    p.packages = imgbuild::plan::PackagePlan::None;
    // The add-on charts' files are what these tests look at; images: tests/oci_build.rs.
    p.images.clear();
    p
}

/// The installer's actions on a first start: reach the API, create the namespaces,
/// install the CNI, wait for its own node and for CoreDNS, then `rest`.
fn after_coredns<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    [&["api", "namespaces", "install cilium", "wait node", "wait coredns"][..], rest].concat()
}

#[test]
fn installer_runs_in_order_retries_and_never_repeats_finished_steps() {
    let inst = Installer::new();
    inst.fail("metrics-server", 1);
    let out = inst.run(3);
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        inst.actions(),
        after_coredns(&[
            "install metrics-server",
            "install metrics-server",
            "install ingress-nginx",
            "install local-path",
            "install backend"
        ])
    );
    let calls = inst.calls();
    let root = inst.root.display().to_string();
    let cilium = calls.iter().find(|c| c.starts_with("helm upgrade --install cilium ")).unwrap();
    assert!(cilium
        .contains(&format!("{root}/usr/share/imgbuild/addons/cilium-1.16.1.tgz --namespace kube-system")));
    assert!(cilium.contains(&format!("--values {root}/usr/share/imgbuild/addons/cilium-values.yaml")));
    assert!(cilium.contains("--wait --timeout 10m"), "{cilium}");
    let backend = calls.iter().find(|c| c.starts_with("helm upgrade --install backend ")).unwrap();
    assert!(backend.contains("backend-0.1.0.tgz --namespace backend --create-namespace"), "{backend}");
    assert!(backend.ends_with(&format!("--values {root}/etc/imgbuild/addons/values.yaml")), "{backend}");

    // The installer waits for its own node, not for every node of the cluster.
    assert!(!calls.iter().any(|c| c.contains("--all")), "{calls:?}");
    // every chart is rendered offline before it is installed
    let first_template = calls.iter().position(|c| c.starts_with("helm template backend ")).unwrap();
    let install = calls.iter().position(|c| c.starts_with("helm upgrade --install backend ")).unwrap();
    assert!(first_template < install, "{calls:?}");

    // One console line per step, plus the start and end lines and the retry note.
    let step_lines: Vec<&str> = stdout.lines().filter(|l| l.contains(": done (attempt")).collect();
    assert_eq!(step_lines.len(), 8, "{stdout}");
    assert!(stdout.contains("metrics-server: attempt 1 failed, retrying in 0s"), "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("imgbuild-addons: ")), "{stdout}");

    let st = inst.status();
    assert_eq!(st["state"], "done");
    let steps = st["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "namespaces",
            "cilium",
            "control-plane-ready",
            "coredns",
            "metrics-server",
            "ingress-nginx",
            "local-path",
            "backend"
        ]
    );
    assert!(steps.iter().all(|s| s["state"] == "done"));
    assert_eq!(steps[4]["attempts"], 2);
    // The namespaces (with their Pod Security labels) exist before the first chart.
    let ns = calls.iter().position(|c| c.starts_with("kubectl apply --server-side ")).unwrap();
    let first_install = calls.iter().position(|c| c.starts_with("helm upgrade --install ")).unwrap();
    assert!(ns < first_install, "{calls:?}");
    for n in names {
        assert!(inst.root.join(format!("var/lib/imgbuild/addons/{n}.done")).is_file(), "{n}");
    }
    assert!(!inst.resume_link().exists() && inst.resume_link().symlink_metadata().is_err());

    // A second start (e.g. after a reboot) repeats nothing.
    let before = inst.calls().len();
    let out = inst.run(3);
    assert!(out.status.success());
    assert!(text(&out).contains("all 8 steps done already"), "{}", text(&out));
    assert_eq!(inst.calls().len(), before, "{:?}", &inst.calls()[before..]);
    assert_eq!(inst.status()["state"], "done");
}

#[test]
fn installer_gives_up_then_resumes_where_it_stopped() {
    let inst = Installer::new();
    inst.fail("ingress-nginx", 100);
    let out = inst.run(2);
    assert!(!out.status.success());
    assert!(text(&out).contains("ingress-nginx: failed after 2 attempts"), "{}", text(&out));
    let st = inst.status();
    assert_eq!(st["state"], "failed");
    assert_eq!(st["steps"][5]["state"], "failed");
    assert_eq!(st["steps"][6]["state"], "pending");
    assert_eq!(st["steps"][7]["state"], "pending");
    assert!(inst.root.join("var/lib/imgbuild/addons/metrics-server.done").is_file());
    assert!(!inst.root.join("var/lib/imgbuild/addons/ingress-nginx.done").exists());
    // Still wanted at boot, so a reboot resumes.
    let link = std::fs::read_link(inst.resume_link()).unwrap();
    assert_eq!(link, Path::new("/etc/systemd/system/imgbuild-addons.service"));

    inst.fail("ingress-nginx", 0);
    let n = inst.actions().len();
    let out = inst.run(2);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        inst.actions()[n..],
        ["api", "install ingress-nginx", "install local-path", "install backend"]
    );
    assert!(text(&out).contains("[2/8] cilium: done before"));
    assert!(inst.resume_link().symlink_metadata().is_err());
}

#[test]
fn installer_does_not_retry_a_chart_that_does_not_render() {
    let inst = Installer::new();
    inst.invalid("metrics-server");
    let out = inst.run(3);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // the others are installed; the invalid one is never sent to the cluster
    assert_eq!(
        inst.actions(),
        after_coredns(&["install ingress-nginx", "install local-path", "install backend"])
    );
    let st = inst.status();
    assert_eq!(st["state"], "failed");
    let ms = &st["steps"][4];
    assert_eq!(ms["name"], "metrics-server");
    assert_eq!(ms["state"], "invalid");
    assert_eq!(ms["attempts"], 0);
    let err = ms["error"].as_str().unwrap();
    assert!(
        err.starts_with("does not render: Error: values don't meet the specifications of the schema"),
        "{err}"
    );
    assert!(err.contains("replicaCount: Invalid type"), "{err}");
    assert_eq!(st["steps"][7]["state"], "done");
    let console = text(&out);
    assert!(
        console.contains("metrics-server: invalid, not retried: does not render: Error: values don't meet"),
        "{console}"
    );
    assert!(console.contains("1 step(s) invalid; the others are installed"), "{console}");
    assert!(!inst.root.join("var/lib/imgbuild/addons/metrics-server.done").exists());
    // a later start (a reboot) again installs nothing it cannot
    let n = inst.actions().len();
    assert_eq!(inst.run(3).status.code(), Some(3));
    assert_eq!(inst.actions()[n..], ["api"]);
}

#[test]
fn installer_stops_when_the_cni_does_not_render() {
    let inst = Installer::new();
    inst.invalid("cilium");
    let out = inst.run(3);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(inst.actions(), ["api", "namespaces"]);
    let st = inst.status();
    assert_eq!(st["state"], "failed");
    assert_eq!(st["steps"][1]["state"], "invalid");
    assert_eq!(st["steps"][2]["state"], "pending");
    assert!(text(&out).contains("no CNI: the remaining steps cannot work"), "{}", text(&out));
}

#[test]
fn addons_unit_does_not_restart_an_invalid_step() {
    let unit =
        std::fs::read_to_string(cp_files().join("etc/systemd/system/imgbuild-addons.service")).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    assert!(lines.contains(&"Restart=on-failure") && lines.contains(&"RestartPreventExitStatus=3"), "{unit}");
}

// ---------------------------------------------------------------------------------------
// The kubelet serving-CSR approver with a kubectl stand-in and real openssl CSRs.

const APPROVER_KUBECTL: &str = r#"#!/usr/bin/env bash
case "$1 $2" in
  "get csr") cat "$STUB_DIR/csrs" ;;
  "get node") cat "$STUB_DIR/node-$3" 2>/dev/null || { echo "nodes \"$3\" not found" >&2; exit 1; } ;;
  "certificate approve") echo "$3" >>"$STUB_DIR/approved" ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"#;

fn csr_b64(subject: &str, san: &str) -> String {
    let san = format!("subjectAltName={san}");
    let out = run_ok(Command::new("openssl").args(common::OPENSSL_NEW_P256).args([
        "-keyout",
        "/dev/null",
        "-subj",
        subject,
        "-addext",
        &san,
    ]));
    use std::io::Write;
    let mut c = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    text(&c.wait_with_output().unwrap())
}

#[test]
fn approver_approves_only_matching_kubelet_serving_csrs() {
    if tool("openssl").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let stub = tmp.path();
    std::fs::create_dir_all(stub.join("bin")).unwrap();
    let k = stub.join("bin/kubectl");
    std::fs::write(&k, APPROVER_KUBECTL).unwrap();
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ok_subj = "/O=system:nodes/CN=system:node:n1";
    let node = "system:node:n1|system:nodes,system:authenticated,";
    let serving = "digital signature,key encipherment,server auth,";
    let rows = [
        ("good", node, serving, csr_b64(ok_subj, "DNS:n1,IP:10.0.0.5,IP:fd00::1")),
        ("wrong-cn", node, serving, csr_b64("/O=system:nodes/CN=system:node:n2", "DNS:n1")),
        ("foreign-ip", node, serving, csr_b64(ok_subj, "DNS:n1,IP:10.0.0.9")),
        ("foreign-dns", node, serving, csr_b64(ok_subj, "DNS:n2")),
        ("other-node", "system:node:n2|system:nodes,", serving, csr_b64(ok_subj, "DNS:n1")),
        ("client-usage", node, "digital signature,client auth,", csr_b64(ok_subj, "DNS:n1")),
        ("extra-ou", node, serving, csr_b64("/O=system:nodes/OU=x/CN=system:node:n1", "DNS:n1")),
        ("email-san", node, serving, csr_b64(ok_subj, "DNS:n1,email:a@example.test")),
        ("not-a-node", "alice|system:nodes,", serving, csr_b64(ok_subj, "DNS:n1")),
        (
            "unknown-node",
            "system:node:n3|system:nodes,",
            serving,
            csr_b64("/O=system:nodes/CN=system:node:n3", "DNS:n3"),
        ),
        (
            "also-good",
            "system:node:n2|system:nodes,",
            "server auth,",
            csr_b64("/O=system:nodes/CN=system:node:n2", "IP:10.0.0.6"),
        ),
    ];
    let list: String = rows.iter().map(|(n, who, u, r)| format!("{n}|{who}|{u}|{r}\n")).collect();
    std::fs::write(stub.join("csrs"), list).unwrap();
    std::fs::write(stub.join("node-n1"), "InternalIP=10.0.0.5\nInternalIP=fd00::1\nHostname=n1\n").unwrap();
    std::fs::write(stub.join("node-n2"), "InternalIP=10.0.0.6\nHostname=n2\n").unwrap();
    let path = format!("{}:{}", stub.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let out = run_ok(
        Command::new("bash")
            .arg(cp_files().join("usr/libexec/imgbuild/kubelet-csr-approver"))
            .env("PATH", path)
            .env("STUB_DIR", stub)
            .env("IMGBUILD_APPROVER_ONCE", "1"),
    );
    let approved = std::fs::read_to_string(stub.join("approved")).unwrap();
    assert_eq!(approved.lines().collect::<Vec<_>>(), ["good", "also-good"]);
    let log = String::from_utf8_lossy(&out.stderr);
    for (n, ..) in &rows[1..10] {
        assert!(log.contains(&format!("not approving {n} ")), "{n}: {log}");
    }
}

// ---------------------------------------------------------------------------------------
// What the control-plane image carries (the build's layer steps with a test recipe whose add-on
// charts are stand-in blobs with their own digests), and what the worker image does not.

use crate::layer_fixture;

#[test]
fn control_plane_layer_carries_addons_and_worker_layer_none() {
    use imgbuild::layer::{Content, Kind, Layer};
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    // Stand-in charts: real tgz packages of tiny charts, pinned by their own digests.
    let mut text = default_recipe_text();
    let mut stand_ins = std::collections::BTreeMap::new();
    for (name, pinned) in [
        ("cilium", "406c5bba515262c52e53b859af31af412cd8d2c332e277e98ec3e5f14382ecbf"),
        ("metrics-server", "e904ffa2fe33c429e12cac8aa013ba38f42d944e315d060e94230a53b98985cf"),
        ("ingress-nginx", "7035b6656a07f85792d0d8e103b9bff84510db0e81d11db4e322709b07783ffa"),
    ] {
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            "Chart.yaml".to_string(),
            format!("apiVersion: v2\nname: {name}\nversion: 9.9.9\n").into_bytes(),
        );
        let bytes = imgbuild::chart::package::package_files("stand-in", files, 0).unwrap().bytes;
        let digest = Sha256::of(&bytes);
        assert!(text.contains(pinned), "{name}'s pinned digest is in the default recipe");
        text = text.replace(pinned, digest.as_str());
        let p = blobs.join(format!("{name}.tgz"));
        std::fs::write(&p, &bytes).unwrap();
        stand_ins.insert(name.to_string(), (p, digest));
    }
    let compose = |role: Role| -> (imgbuild::plan::BuildPlan, Layer) {
        let plan = plan_for(&text, role);
        let dir = tmp.path().join(role.as_str());
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let mut dl = layer_fixture::downloads(&plan, &dir);
        for (name, (p, _)) in &stand_ins {
            if dl.contains_key(name) {
                dl.insert(name.clone(), p.clone());
            }
        }
        let layer = layer_fixture::compose_layer(&plan, &dl, &dir.join("work")).unwrap();
        (plan, layer)
    };
    let file = |l: &Layer, path: &str| -> Option<(Vec<u8>, u32)> {
        let e = l.get(path)?;
        match &e.kind {
            Kind::File(Content::Bytes(b)) => Some((b.clone(), e.mode)),
            Kind::File(Content::Path(p)) => Some((std::fs::read(p).unwrap(), e.mode)),
            _ => None,
        }
    };

    let (plan, cp) = compose(Role::ControlPlane);
    assert_eq!(plan.addons.len(), 3);
    for a in &plan.addons {
        let (bytes, mode) = file(&cp, &a.chart).unwrap_or_else(|| panic!("{} missing", a.chart));
        assert_eq!(mode, 0o644);
        assert_eq!(Sha256::of(&bytes), stand_ins[&a.name].1, "{}", a.chart);
        assert_eq!(a.sha256, stand_ins[&a.name].1);
    }
    let (backend, _) = file(&cp, "/usr/share/imgbuild/addons/backend-0.1.0.tgz").expect("backend chart");
    assert_eq!(backend, imgbuild::chart::package_backend(plan.source_date_epoch).unwrap().bytes);
    let index: Vec<serde_json::Value> =
        serde_json::from_slice(&file(&cp, "/usr/share/imgbuild/addons/addons.json").unwrap().0).unwrap();
    let releases: Vec<&str> = index.iter().map(|e| e["release"].as_str().unwrap()).collect();
    assert_eq!(releases, ["cilium", "metrics-server", "ingress-nginx", "local-path", "backend"]);
    assert_eq!(index[4]["sha256"], Sha256::of(&backend).as_str());
    // The default StorageClass's chart is embedded like the backend's.
    let (storage, _) = file(&cp, "/usr/share/imgbuild/addons/local-path-0.1.0.tgz").expect("storage chart");
    assert_eq!(storage, imgbuild::chart::package_local_path(plan.source_date_epoch).unwrap().bytes);
    assert_eq!(index[3]["namespace"], "local-path-storage");
    for e in &index {
        assert!(file(&cp, e["chart"].as_str().unwrap()).is_some(), "{e}");
        if let Some(v) = e["values"].as_str() {
            let (vals, _) = file(&cp, v).unwrap();
            let vals = String::from_utf8(vals).unwrap();
            assert!(!vals.contains("kubelet-insecure-tls"), "{vals}");
        }
    }
    assert!(file(&cp, "/usr/share/imgbuild/addons/addons.tsv").is_some());
    // Pod Security: the namespaces with their levels, and the apiserver's admission config.
    let (ns, _) = file(&cp, "/usr/share/imgbuild/addons/namespaces.yaml").expect("namespaces.yaml");
    assert_eq!(ns, imgbuild::chart::addons::namespaces(&plan).into_bytes());
    let (adm, mode) = file(&cp, "/etc/kubernetes/admission/pod-security.yaml").expect("admission config");
    assert_eq!(mode, 0o644);
    assert!(String::from_utf8(adm).unwrap().contains("kind: PodSecurityConfiguration"));
    assert!(file(&cp, "/usr/local/bin/helm").is_some_and(|(_, m)| m == 0o755));
    for s in ["addons-install", "kubelet-csr-approver"] {
        assert_eq!(file(&cp, &format!("/usr/libexec/imgbuild/{s}")).unwrap().1, 0o755);
    }
    assert!(file(&cp, "/etc/systemd/system/imgbuild-addons.service").is_some());
    // The installer is started by the init path only; the approver waits for admin.conf.
    assert!(cp.get("/etc/systemd/system/multi-user.target.wants/imgbuild-addons.service").is_none());
    assert!(cp
        .get("/etc/systemd/system/multi-user.target.wants/imgbuild-kubelet-csr-approver.path")
        .is_some());

    let (wplan, w) = compose(Role::Worker);
    assert!(wplan.addons.is_empty());
    for (p, _) in w.iter() {
        assert!(!p.starts_with("/usr/share/imgbuild/addons"), "{p} in worker");
        assert!(!p.starts_with("/etc/kubernetes/admission"), "{p} in worker");
        assert!(!p.contains("imgbuild-addons") && !p.contains("csr-approver"), "{p} in worker");
    }
    assert!(w.get("/usr/local/bin/helm").is_none());
}

#[test]
fn embedded_backend_chart_packages_like_the_directory() {
    // include_dir copy vs. files on disk: same files, same .helmignore, same bytes.
    let embedded = imgbuild::chart::package_backend(1_724_198_400).unwrap();
    let on_disk = imgbuild::chart::package_dir(&chart_dir(), 1_724_198_400).unwrap();
    assert_eq!((embedded.name.as_str(), embedded.version.as_str()), ("backend", "0.1.0"));
    assert!(embedded.bytes == on_disk.bytes, "embedded chart is stale: rebuild (cargo clean -p imgbuild)");
}

/// The approver's go-template and jsonpath, evaluated by a real kubectl offline
/// (`label --local` renders an object without a server).
#[test]
fn approver_templates_work_with_real_kubectl() {
    let kubectl = match std::env::var_os("IMGBUILD_TEST_KUBECTL") {
        Some(k) => PathBuf::from(k),
        None => match tool("kubectl") {
            Some(k) => k,
            None => return,
        },
    };
    let script =
        std::fs::read_to_string(cp_files().join("usr/libexec/imgbuild/kubelet-csr-approver")).unwrap();
    let var = |name: &str| -> String {
        let line = script.lines().find(|l| l.starts_with(&format!("{name}='"))).unwrap();
        line[name.len() + 2..line.len() - 1].to_string()
    };
    let list = var("list_tmpl");
    // The list template is `{{range .items}}BODY{{end}}`; apply BODY to single objects.
    let body = list.strip_prefix("{{range .items}}").and_then(|b| b.strip_suffix("{{end}}")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let render = |yaml: &str, out: &str| -> String {
        let f = tmp.path().join("obj.yaml");
        std::fs::write(&f, yaml).unwrap();
        text(&run_ok(
            Command::new(&kubectl).args(["label", "--local", "-f"]).arg(&f).args(["x=y", "-o", out]),
        ))
    };
    let csr = |signer: &str, status: &str| {
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: csr-1\n\
             spec:\n  signerName: {signer}\n  username: system:node:n1\n  groups: [system:nodes, system:authenticated]\n\
             \x20 usages: [digital signature, server auth]\n  request: UkVR\n{status}"
        )
    };
    let tmpl = format!("go-template={body}");
    assert_eq!(
        render(&csr("kubernetes.io/kubelet-serving", "status: {}\n"), &tmpl),
        "csr-1|system:node:n1|system:nodes,system:authenticated,|digital signature,server auth,|UkVR\n"
    );
    assert_eq!(
        render(&csr("kubernetes.io/kubelet-serving", ""), &tmpl).lines().count(),
        1,
        "no status at all is pending too"
    );
    let approved = "status:\n  conditions: [{type: Approved, status: \"True\"}]\n";
    assert_eq!(render(&csr("kubernetes.io/kubelet-serving", approved), &tmpl), "");
    assert_eq!(render(&csr("kubernetes.io/kube-apiserver-client-kubelet", "status: {}\n"), &tmpl), "");
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\nstatus:\n  addresses:\n\
                \x20 - {type: InternalIP, address: 10.0.0.5}\n  - {type: Hostname, address: n1}\n";
    assert_eq!(render(node, &format!("jsonpath={}", var("addr_tmpl"))), "InternalIP=10.0.0.5\nHostname=n1\n");
}

/// A root whose index has the backend step only, with the real packaged chart in it.
fn backend_only(inst: &Installer, values: &str) {
    let backend = imgbuild::chart::package_backend(0).unwrap();
    let dir = inst.root.join("usr/share/imgbuild/addons");
    std::fs::write(dir.join(backend.file_name()), &backend.bytes).unwrap();
    let chart = format!("/usr/share/imgbuild/addons/{}", backend.file_name());
    std::fs::write(
        dir.join("addons.tsv"),
        format!("# order\tname\trelease\tnamespace\tcni\tchart\tvalues\tuser-values\n1\tbackend\tbackend\tbackend\t-\t{chart}\t-\t/etc/imgbuild/addons/values.yaml\n"),
    )
    .unwrap();
    std::fs::write(inst.root.join("etc/imgbuild/addons/values.yaml"), values).unwrap();
    std::fs::remove_file(dir.join("namespaces.yaml")).unwrap();
}

/// The installer with the real helm (npm), the kubectl stand-in, a cluster that is not
/// there.
fn run_with_real_helm(inst: &Installer, helm: &Path) -> Output {
    std::fs::remove_file(inst.stub.join("bin/helm")).unwrap();
    std::os::unix::fs::symlink(helm, inst.stub.join("bin/helm")).unwrap();
    let kc = inst.stub.join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         contexts:\n- name: c\n  context: {cluster: c, user: u}\nusers:\n- name: u\n  user: {token: x}\n\
         current-context: c\n",
    )
    .unwrap();
    Command::new("bash")
        .arg(cp_files().join("usr/libexec/imgbuild/addons-install"))
        .env(
            "PATH",
            format!("{}:{}", inst.stub.join("bin").display(), std::env::var("PATH").unwrap_or_default()),
        )
        .env("IMGBUILD_ROOT", &inst.root)
        .env("IMGBUILD_ADDONS_BACKOFF", "0")
        .env("IMGBUILD_ADDONS_ATTEMPTS", "1")
        .env("KUBECONFIG", &kc)
        .env("HELM_CACHE_HOME", inst.stub.join("helm-cache"))
        .env("HELM_CONFIG_HOME", inst.stub.join("helm-config"))
        .env("HELM_DATA_HOME", inst.stub.join("helm-data"))
        .env("STUB_LOG", inst.stub.join("calls"))
        .output()
        .unwrap()
}

/// The installer's helm invocations parse with a real helm: the chart renders with
/// valid values, and pointed at a closed port helm must fail on the unreachable
/// cluster, not on a flag — a failure worth retrying (exit 1, the unit restarts it).
#[test]
fn installer_helm_flags_are_accepted_by_real_helm() {
    let Some(helm) = tool("helm") else { return };
    let inst = Installer::new();
    backend_only(&inst, "ingress:\n  host: b.example.test\n");
    let out = run_with_real_helm(&inst, &helm);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}\n{}", text(&out));
    assert!(err.contains("Kubernetes cluster unreachable"), "{err}");
    assert!(!err.contains("unknown flag") && !err.contains("unknown shorthand"), "{err}");
    assert!(text(&out).contains("backend: failed after 1 attempts"), "{}", text(&out));
}

/// Values the chart's schema refuses: the real `helm template` says so offline, the
/// step is invalid and not retried (exit 3), with helm's reason in addons.json.
#[test]
fn installer_reports_values_the_real_helm_refuses() {
    let Some(helm) = tool("helm") else { return };
    let inst = Installer::new();
    backend_only(&inst, "secret:\n  values:\n    DATABASE_URL: postgres://x\n");
    let out = run_with_real_helm(&inst, &helm);
    assert_eq!(out.status.code(), Some(3), "{}\n{}", text(&out), String::from_utf8_lossy(&out.stderr));
    let st = inst.status();
    assert_eq!(st["steps"][2]["name"], "backend");
    assert_eq!(st["steps"][2]["state"], "invalid");
    let err = st["steps"][2]["error"].as_str().unwrap();
    assert!(err.contains("values don't meet the specifications of the schema"), "{err}");
    assert!(err.contains("values"), "{err}");
    assert!(!inst.calls().iter().any(|c| c.starts_with("helm upgrade")), "{:?}", inst.calls());
}
