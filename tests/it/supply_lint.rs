//! `imgbuild lint`: a real cluster (`cluster init` + `cloud-init --seed none`), then one
//! broken copy per error class; each finding must name its node and file. The paths
//! class runs against a worker image built from the noble-shaped fixture.
use crate::common::{self, ok, text};

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::fixture;

const SEED: &str = "imgbuild-lint-test";

fn run(args: &[&str]) -> Output {
    common::bin().env(imgbuild::cluster::pki::TEST_SEED_ENV, SEED).args(args).output().unwrap()
}

/// `cluster init` + rendered user-data for every node, in `dir/name`.
fn cluster(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    let y = common::cluster_init(&d)
        .args(["--node-cidr", "10.0.0.0/24", "--vip-interface", "ens3", "--dns", "10.0.0.2"])
        .seed(SEED)
        .ok();
    ok(&run(&[
        "cloud-init",
        "--cluster",
        y.to_str().unwrap(),
        "--all",
        "--seed",
        "none",
        "--out",
        d.to_str().unwrap(),
    ]));
    y
}

/// helm (ci/test.sh puts it on PATH); in CI its absence is a failure, not a skip.
fn helm_present() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join("helm").is_file()) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "helm is required in CI (ci/test.sh installs it)");
    eprintln!("note: helm not found; the chart class only checks the warning");
    false
}

fn edit(cluster: &Path, node: &str, f: impl Fn(String) -> String) {
    let p = cluster.parent().unwrap().join(node).join("user-data");
    let t = std::fs::read_to_string(&p).unwrap();
    let n = f(t.clone());
    assert_ne!(n, t, "edit of {node} changed nothing");
    std::fs::write(&p, n).unwrap();
}

fn lint(cluster: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut a = vec!["lint", "--json", "--cluster", cluster.to_str().unwrap()];
    a.extend_from_slice(extra);
    let mut c = common::bin();
    c.env("PATH", fixture::path_with_sbin()).args(&a);
    let o = c.output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (o, v)
}

/// Exactly the expected errors: (check, node, message fragment); each finding's file
/// is that node's user-data.
fn expect(cluster: &Path, extra: &[&str], want: &[(&str, &str, &str)]) {
    let (o, v) = lint(cluster, extra);
    let errs: Vec<&serde_json::Value> =
        v["findings"].as_array().unwrap().iter().filter(|f| f["severity"] == "error").collect();
    if want.is_empty() {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(errs.is_empty(), "{v:#}");
        return;
    }
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(errs.len(), want.len(), "{v:#}");
    for (check, node, frag) in want {
        let hit = errs.iter().any(|f| {
            f["check"] == *check
                && f["node"] == *node
                && f["file"].as_str().unwrap().ends_with(&format!("{node}/user-data"))
                && f["message"].as_str().unwrap().contains(frag)
        });
        assert!(hit, "no {check} error for {node} containing {frag:?}:\n{v:#}");
    }
}

#[test]
fn clean_cluster_then_one_broken_copy_per_class() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let good = cluster(d, "good");
    expect(&good, &[], &[]);
    // Text output names node and file too.
    let o = common::bin().args(["lint", "--cluster", good.to_str().unwrap()]).output().unwrap();
    ok(&o);

    // cluster.yaml itself invalid: reported against cluster.yaml with its line.
    let spec = cluster(d, "spec");
    let t = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, t.replacen("10.244.0.0/16", "10.244.0.0/33", 1)).unwrap();
    let (o, v) = lint(&spec, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let f = &v["findings"][0];
    assert_eq!(f["check"], "spec");
    assert_eq!(f["file"], spec.to_str().unwrap());
    assert!(f["message"].as_str().unwrap().contains("pod_cidr"), "{v:#}");
    let line = f["line"].as_u64().unwrap() as usize;
    let t = std::fs::read_to_string(&spec).unwrap();
    assert!(t.lines().nth(line - 1).unwrap().contains("10.244.0.0/33"), "line {line} of\n{t}");

    // cloud-init schema.
    let c = cluster(d, "schema");
    edit(&c, "demo-worker-1", |t| t.replace("preserve_hostname: false", "preserve_hostname: maybe"));
    expect(&c, &[], &[("schema", "demo-worker-1", "preserve_hostname")]);

    // kubeadm apiVersion for 1.30.
    let c = cluster(d, "api");
    edit(&c, "demo-cp-2", |t| t.replace("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4"));
    expect(&c, &[], &[("kubeadm", "demo-cp-2", "v1beta3")]);

    // kubernetesVersion, pod CIDR, join endpoint.
    let c = cluster(d, "kubeadm");
    edit(&c, "demo-cp-1", |t| {
        t.replace(r#"kubernetesVersion: \"v1.30.3\""#, r#"kubernetesVersion: \"v1.31.0\""#)
            .replace(r#"podSubnet: \"10.244.0.0/16\""#, r#"podSubnet: \"10.99.0.0/16\""#)
    });
    edit(&c, "demo-worker-2", |t| {
        t.replace(r#"apiServerEndpoint: \"10.0.0.10:6443\""#, r#"apiServerEndpoint: \"10.0.0.99:6443\""#)
    });
    expect(
        &c,
        &[],
        &[
            ("kubeadm", "demo-cp-1", "kubernetesVersion v1.31.0"),
            ("kubeadm", "demo-cp-1", "networking.podSubnet"),
            ("kubeadm", "demo-worker-2", "apiServerEndpoint 10.0.0.99:6443"),
        ],
    );

    // Size budget: over OpenStack's 64 KiB, within vSphere's 512 KiB.
    let c = cluster(d, "size");
    edit(&c, "demo-worker-1", |t| format!("{t}# {}\n", "x".repeat(70 * 1024)));
    expect(&c, &[], &[("size", "demo-worker-1", "OpenStack")]);
    expect(&c, &["--target", "vsphere"], &[]);

    // The backend chart does not render with the first control plane's values.
    let c = cluster(d, "chart");
    edit(&c, "demo-cp-1", |t| t.replace("replicaCount: 2", "replicaCount: two"));
    if helm_present() {
        expect(&c, &[], &[("chart", "demo-cp-1", "replicaCount")]);
    } else {
        let (_, v) = lint(&c, &[]);
        assert!(v.to_string().contains("helm not found"), "{v:#}");
    }

    // No rendered files: lint renders in memory (with the secrets) and is clean.
    let c = cluster(d, "memory");
    for n in ["demo-cp-1", "demo-worker-1"] {
        std::fs::remove_dir_all(c.parent().unwrap().join(n)).unwrap();
    }
    let (o, v) = lint(&c, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(v["nodes"], 5);
}

#[test]
fn paths_user_data_uses_must_exist_in_the_role_image() {
    let fx = fixture::noble_fixture();
    let out = fx.dir.path().join("out");
    let o = fixture::build(&fx, "worker", &["--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let image = String::from_utf8_lossy(&o.stdout).trim().to_string();

    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), "paths");
    // The real user-data only starts imgbuild-bootstrap.service, which the image ships.
    expect(&c, &["--image", &image], &[]);
    edit(&c, "demo-worker-2", |t| {
        t.replace(
            "runcmd:\n",
            "runcmd:\n  - [/usr/libexec/imgbuild/not-there, --now]\n  - [systemctl, start, missing.service]\n",
        )
    });
    expect(
        &c,
        &["--image", &image],
        &[
            ("paths", "demo-worker-2", "/usr/libexec/imgbuild/not-there is not in the worker image"),
            ("paths", "demo-worker-2", "unit missing.service"),
        ],
    );
    // Without the image the path class cannot be checked, so nothing is reported.
    expect(&c, &[], &[]);
    // Every format a build writes is read the same way (a vmdk used to pass the manifest
    // check and then fail on its paths).
    let o = fixture::build(&fx, "worker", &["--output", out.to_str().unwrap(), "--format", "vmdk"]);
    assert!(o.status.success(), "{}", text(&o));
    let vmdk = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(vmdk.ends_with(".vmdk"), "{vmdk}");
    expect(
        &c,
        &["--image", &vmdk],
        &[
            ("paths", "demo-worker-2", "/usr/libexec/imgbuild/not-there is not in the worker image"),
            ("paths", "demo-worker-2", "unit missing.service"),
        ],
    );
}
