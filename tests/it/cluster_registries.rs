//! `registries:` in cluster.yaml: registry mirrors become containerd `certs.d/<host>/
//! hosts.toml` files (and their CA files) in every node's user-data, kubeadm gets the
//! imageRepository and the pull policy; bad values are refused with their field path.
//! (tests/oci_containerd.rs pulls through a rendered hosts.toml with a real containerd.)

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

const SEED: &str = "registries-test";

fn run(args: &[&str]) -> Output {
    common::bin().env(imgbuild::cluster::pki::TEST_SEED_ENV, SEED).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A 1 cp + 1 worker cluster whose cluster.yaml ends with `registries` (YAML text).
fn cluster(dir: &Path, registries: &str) -> PathBuf {
    let p = common::cluster_init(dir.join("c")).name("reg").nodes(1, 1).seed(SEED).ok();
    let mut y = fs::read_to_string(&p).unwrap();
    y.push_str(registries);
    fs::write(&p, y).unwrap();
    p
}

fn ca_pem() -> String {
    let kp = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec!["harbor.example.com".into()]).unwrap().self_signed(&kp).unwrap().pem()
}

fn indent(s: &str, n: usize) -> String {
    s.lines().map(|l| format!("{}{l}\n", " ".repeat(n))).collect()
}

#[test]
fn mirrors_become_hosts_toml_and_kubeadm_gets_the_repository_and_policy() {
    let t = tempfile::tempdir().unwrap();
    let ca = ca_pem();
    let c = cluster(
        t.path(),
        &format!(
            "registries:\n  mirrors:\n    registry.k8s.io:\n      endpoints:\n        - url: https://harbor.example.com/v2/k8s-proxy\n\
             \x20         override_path: true\n          ca: |\n{}\
             \x20   _default:\n      fallback: false\n      endpoints:\n        - url: https://mirror-a.example.com:5443\n\
             \x20       - url: http://10.0.0.5:5000\n          capabilities: [pull]\n\
             \x20 image_repository: harbor.example.com/k8s\n  pull_policy: Always\n",
            indent(&ca, 12)
        ),
    );
    let out = t.path().join("out");
    let o = run(&[
        "cloud-init",
        "--cluster",
        c.to_str().unwrap(),
        "--all",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "none",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("registries.image_repository")
            && text(&o).contains("harbor.example.com/k8s/kube-apiserver"),
        "{}",
        text(&o)
    );
    for node in ["reg-cp-1", "reg-worker-1"] {
        let files = common::node_files(&out, node);
        let get = |p: &str| files.get(p).unwrap_or_else(|| panic!("{node}: no {p}")).clone();
        let (mode, k8s) = get("/etc/containerd/certs.d/registry.k8s.io/hosts.toml");
        assert_eq!(mode, "0644");
        let k8s: toml::Value = toml::from_str(&k8s).unwrap();
        assert_eq!(k8s["server"].as_str(), Some("https://registry.k8s.io"), "falls back to the upstream");
        let h = &k8s["host"]["https://harbor.example.com/v2/k8s-proxy"];
        assert_eq!(h["override_path"].as_bool(), Some(true));
        assert_eq!(h["capabilities"].as_array().unwrap().len(), 2);
        let ca_file = h["ca"].as_str().unwrap();
        assert_eq!(get(&format!("/etc/containerd/certs.d/registry.k8s.io/{ca_file}")).1, ca);
        // fallback: false -> the last endpoint is the server; nothing goes upstream.
        let (_, d) = get("/etc/containerd/certs.d/_default/hosts.toml");
        let d: toml::Value = toml::from_str(&d).unwrap();
        assert_eq!(d["server"].as_str(), Some("http://10.0.0.5:5000"));
        assert_eq!(
            d["capabilities"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
            ["pull"]
        );
        let hosts: Vec<&String> = d["host"].as_table().unwrap().keys().collect();
        assert_eq!(hosts, ["http://10.0.0.5:5000", "https://mirror-a.example.com:5443"]);
        // kubeadm: the pull policy on every node, the repository in the ClusterConfiguration.
        let (_, k) = get("/etc/imgbuild/kubeadm.yaml");
        assert!(k.contains("  imagePullPolicy: Always\n"), "{k}");
        if node == "reg-cp-1" {
            assert!(k.contains("\nimageRepository: harbor.example.com/k8s\n"), "{k}");
        }
    }
}

#[test]
fn bad_registries_are_refused_with_their_field() {
    let t = tempfile::tempdir().unwrap();
    for (section, want) in [
        ("registries:\n  mirrors:\n    'Bad Host':\n      endpoints: [{url: https://m.example.com}]\n", "registries.mirrors.Bad Host"),
        ("registries:\n  mirrors:\n    docker.io:\n      endpoints: [{url: 'https://m.example.com/x?token=1'}]\n", "registries.mirrors.docker.io.endpoints[0].url"),
        ("registries:\n  mirrors:\n    docker.io:\n      endpoints: [{url: ftp://m.example.com}]\n", "must start with https:// or http://"),
        ("registries:\n  mirrors:\n    docker.io:\n      endpoints: [{url: https://m.example.com, ca: not a pem}]\n", "registries.mirrors.docker.io.endpoints[0].ca"),
        ("registries:\n  mirrors:\n    docker.io:\n      endpoints: [{url: https://m.example.com, capabilities: [push]}]\n", "nodes never push"),
        ("registries:\n  mirrors:\n    docker.io:\n      endpoints: []\n", "at least one endpoint"),
        ("registries:\n  image_repository: Harbor/K8s\n", "registries.image_repository"),
        ("registries:\n  image_repository: harbor.example.com/k8s\n  pull_policy: Never\n", "none of kubeadm's images would be present"),
        ("registries:\n  pull_policy: Sometimes\n", "registries.pull_policy"),
    ] {
        let d = t.path().join(format!("t{}", fs::read_dir(t.path()).unwrap().count()));
        fs::create_dir_all(&d).unwrap();
        let c = cluster(&d, section);
        let o = run(&["cloud-init", "--cluster", c.to_str().unwrap(), "--all", "--out", d.join("o").to_str().unwrap(), "--seed", "none"]);
        assert_eq!(o.status.code(), Some(2), "{section}: {}", text(&o));
        assert!(text(&o).contains(want), "{section}: want {want:?} in {}", text(&o));
    }
}
