//! Add-on values are checked before they reach a node, in Rust and without helm:
//! `imgbuild cloud-init` and `imgbuild lint` validate `addons.backend` against the
//! embedded backend chart's values.schema.json and every `addons.values.<release>`
//! override against its add-on chart's schema (read from the download cache, where
//! `imgbuild fetch` leaves it), with exit 2 naming the field and its line; the commented
//! example in a generated cluster.yaml is valid when uncommented; a cluster without
//! workers gets a backend that tolerates the control-plane taint.

use crate::common;

use crate::common::{ok, stderr};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

fn init(dir: &Path, workers: u32) -> PathBuf {
    common::cluster_init(dir.join("c")).lan().nodes(1, workers).ok()
}

fn cloud_init(cluster: &Path, out: &Path, extra: &[&str]) -> Output {
    common::bin()
        .args(["cloud-init", "--cluster"])
        .arg(cluster)
        .args(["--all", "--seed", "none", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// path -> content of the first control plane's write_files.
fn cp1_files(out: &Path) -> std::collections::BTreeMap<String, String> {
    common::node_files(out, "demo-cp-1").into_iter().map(|(path, (_, content))| (path, content)).collect()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// Remove the `# ` of the commented example block starting at the line `first`.
fn uncomment(text: &str, first: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| *l == first).unwrap_or_else(|| panic!("no line {first:?}"));
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if (at..at + count).contains(&i) {
            out.push(l.replacen("# ", "", 1));
        } else {
            out.push(l.to_string());
        }
    }
    out.join("\n") + "\n"
}

#[test]
fn the_commented_example_is_valid_when_uncommented() {
    let t = tempfile::tempdir().unwrap();
    let c = init(t.path(), 1);
    let text = fs::read_to_string(&c).unwrap();
    let text = uncomment(&text, "    # secret:", 3);
    let text = uncomment(&text, "  # values:", 4);
    assert!(text.contains("    secret:\n      env:\n        DATABASE_URL:"), "{text}");
    fs::write(&c, &text).unwrap();
    let out = t.path().join("out");
    let o = cloud_init(&c, &out, &[]);
    ok(&o);
    let files = cp1_files(&out);
    let values: serde_yaml::Value = serde_yaml::from_str(&files["/etc/imgbuild/addons/values.yaml"]).unwrap();
    assert!(values["secret"]["env"]["DATABASE_URL"].as_str().unwrap().starts_with("postgres://"));
    let nginx: serde_yaml::Value =
        serde_yaml::from_str(&files["/etc/imgbuild/addons/ingress-nginx.yaml"]).unwrap();
    assert_eq!(nginx["controller"]["replicaCount"], 2);
    // lint agrees
    let o = common::bin().args(["lint", "--cluster"]).arg(&c).arg("--rendered").arg(&out).output().unwrap();
    ok(&o);
}

#[test]
fn backend_values_that_violate_the_schema_exit_2_naming_field_and_line() {
    let t = tempfile::tempdir().unwrap();
    let c = init(t.path(), 1);
    // the example the generated cluster.yaml carried before: `secret.values` is no field
    let text = fs::read_to_string(&c).unwrap().replace(
        "    # secret:\n",
        "    secret:\n      values:\n        DATABASE_URL: \"postgres://x\"\n    probes:\n      liveness:\n        periodSeconds: 0\n",
    );
    fs::write(&c, &text).unwrap();
    let out = t.path().join("out");
    let o = cloud_init(&c, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    let f = c.display().to_string();
    assert!(
        e.contains(&format!(
            "{f}:{}: addons.backend.secret.values: unknown field",
            line_of(&text, "      values:")
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "{f}:{}: addons.backend.probes.liveness.periodSeconds:",
            line_of(&text, "periodSeconds")
        )),
        "{e}"
    );
    assert!(!out.join("demo-cp-1").exists(), "nothing is written");
    // lint reports the same, with the line
    let o = common::bin().args(["lint", "--cluster"]).arg(&c).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains(&format!("error[values]: {f}:{}: ", line_of(&text, "      values:")))
            && report.contains("addons.backend.secret.values"),
        "{report}"
    );
}

#[test]
fn a_cluster_without_workers_tolerates_the_control_plane_taint() {
    let t = tempfile::tempdir().unwrap();
    let c = init(t.path(), 0);
    let out = t.path().join("out");
    ok(&cloud_init(&c, &out, &[]));
    let values: serde_yaml::Value =
        serde_yaml::from_str(&cp1_files(&out)["/etc/imgbuild/addons/values.yaml"]).unwrap();
    let want: serde_yaml::Value = serde_yaml::from_str(
        "[{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]",
    )
    .unwrap();
    assert_eq!(values["tolerations"], want);
    // user tolerations that leave the taint out are refused
    let text = fs::read_to_string(&c).unwrap().replace(
        "    # secret:\n",
        "    tolerations:\n      - {key: dedicated, operator: Equal, value: db, effect: NoSchedule}\n",
    );
    fs::write(&c, &text).unwrap();
    let o = cloud_init(&c, &t.path().join("o2"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!(
            "{}: addons.backend.tolerations: the cluster has no workers",
            line_of(&text, "    tolerations:")
        )),
        "{}",
        stderr(&o)
    );
    // with workers nothing is added
    let t2 = tempfile::tempdir().unwrap();
    let c2 = init(t2.path(), 1);
    ok(&cloud_init(&c2, &t2.path().join("out"), &[]));
    let values: serde_yaml::Value =
        serde_yaml::from_str(&cp1_files(&t2.path().join("out"))["/etc/imgbuild/addons/values.yaml"]).unwrap();
    assert!(values.get("tolerations").is_none());
    // the recipe's add-ons bake the toleration in themselves (Cilium's chart tolerates
    // every taint by default)
    let recipe = imgbuild::recipe::load(None).unwrap();
    for a in &recipe.recipe.addons {
        if a.release == "cilium" {
            continue;
        }
        let v = serde_json::to_string(&a.values).unwrap();
        assert!(v.contains("\"key\":\"node-role.kubernetes.io/control-plane\""), "{}: {v}", a.release);
    }
}

/// A stand-in for the recipe's Cilium chart: same name and version, a small
/// values.schema.json, packaged by `imgbuild chart package`.
fn fake_cilium_chart(dir: &Path) -> Vec<u8> {
    let c = dir.join("cilium");
    fs::create_dir_all(c.join("templates")).unwrap();
    fs::write(c.join("Chart.yaml"), "apiVersion: v2\nname: cilium\nversion: 1.16.1\n").unwrap();
    fs::write(c.join("values.yaml"), "ipam:\n  mode: cluster-pool\noperator:\n  replicas: 2\n").unwrap();
    fs::write(
        c.join("values.schema.json"),
        r#"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": false,
            "properties": {"ipam": {"type": "object", "properties": {"mode": {"enum": ["cluster-pool", "kubernetes"]}}},
                           "operator": {"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 1}}}}}"#,
    )
    .unwrap();
    fs::write(c.join("templates/cm.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")
        .unwrap();
    let o = common::bin().args(["chart", "package"]).arg(&c).arg("--out").arg(dir).output().unwrap();
    ok(&o);
    fs::read(String::from_utf8_lossy(&o.stdout).trim()).unwrap()
}

#[test]
fn add_on_overrides_are_checked_against_the_charts_schema_from_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let c = init(t.path(), 1);
    let tgz = fake_cilium_chart(t.path());
    let sha = imgbuild::types::Sha256::of(&tgz);
    // the default recipe, pinning this chart instead of the real one
    let recipe_text = imgbuild::recipe::load(None).unwrap().text;
    let real = "406c5bba515262c52e53b859af31af412cd8d2c332e277e98ec3e5f14382ecbf";
    assert!(recipe_text.contains(real));
    let recipe = t.path().join("recipe.yaml");
    fs::write(&recipe, recipe_text.replace(real, sha.as_str())).unwrap();
    let cache = t.path().join("cache");
    fs::create_dir_all(cache.join("sha256")).unwrap();
    fs::write(cache.join("sha256").join(sha.as_str()), &tgz).unwrap();

    let spec = |over: &str| {
        let text = fs::read_to_string(&c).unwrap();
        let text = text.replace("\n  backend:\n", &format!("\n  values:\n{over}  backend:\n"));
        fs::write(&c, &text).unwrap();
        text
    };
    let run = |out: &str| {
        common::bin()
            .env("IMGBUILD_CACHE_DIR", &cache)
            .args(["cloud-init", "--cluster"])
            .arg(&c)
            .args(["--all", "--seed", "none", "--recipe"])
            .arg(&recipe)
            .arg("--out")
            .arg(t.path().join(out))
            .output()
            .unwrap()
    };
    let pristine = fs::read_to_string(&c).unwrap();

    // a value the schema refuses, and a field it does not know
    let text = spec("    cilium:\n      operator:\n        replicas: 0\n      hubble: {}\n");
    let o = run("o1");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("{}: addons.values.cilium.operator.replicas:", line_of(&text, "replicas: 0"))),
        "{e}"
    );
    assert!(
        e.contains(&format!("{}: addons.values.cilium.hubble: unknown field", line_of(&text, "hubble"))),
        "{e}"
    );

    // the same verdict with the cache named by --cache-dir instead, from cloud-init and
    // from lint (the default cache, the test process's own, holds no chart)
    let by_flag = |cmd: &[&str]| {
        common::bin()
            .args(cmd)
            .arg("--cluster")
            .arg(&c)
            .arg("--recipe")
            .arg(&recipe)
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .unwrap()
    };
    let out = t.path().join("o1-flag");
    for o in [
        by_flag(&["cloud-init", "--all", "--seed", "none", "--out", out.to_str().unwrap()]),
        by_flag(&["lint"]),
    ] {
        assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
        assert!(common::text(&o).contains("addons.values.cilium.operator.replicas"), "{}", common::text(&o));
    }

    // a valid override is written for the installer, next to the backend's values
    fs::write(&c, &pristine).unwrap();
    spec("    cilium:\n      operator:\n        replicas: 3\n");
    let o = run("o2");
    ok(&o);
    let files = cp1_files(&t.path().join("o2"));
    let v: serde_yaml::Value = serde_yaml::from_str(&files["/etc/imgbuild/addons/cilium.yaml"]).unwrap();
    assert_eq!(v["operator"]["replicas"], 3);

    // a release the recipe does not have
    fs::write(&c, &pristine).unwrap();
    let text = spec("    cillium:\n      x: 1\n");
    let o = run("o3");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!(
            "{}: addons.values.cillium: no add-on release \"cillium\"",
            line_of(&text, "cillium:")
        )),
        "{}",
        stderr(&o)
    );

    // a cache entry that does not match its digest is not trusted: not checked, said so
    fs::write(cache.join("sha256").join(sha.as_str()), b"tampered").unwrap();
    fs::write(&c, &pristine).unwrap();
    spec("    cilium:\n      operator:\n        replicas: 0\n");
    let o = run("o4");
    ok(&o);
    assert!(
        stderr(&o).contains("not checked") && stderr(&o).contains("does not match its sha256"),
        "{}",
        stderr(&o)
    );
}
