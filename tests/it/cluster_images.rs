//! The role images carry the bootstrap logic (script + enabled unit) and none of a
//! cluster's secrets: secrets only ever travel in per-node user-data.

use crate::common::{self, stderr};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::fixture;
use imgbuild::cluster::pki::Secrets;

/// Every string that must never appear in an image: whole secret values, each
/// base64 line of every private key, the token and its secret half. Not the token id:
/// kubeadm treats it as public (it names the token's Secret), and six random characters
/// of `[a-z0-9]` can turn up in an image by chance (the fixture's two images hold 8,564
/// of the 36^6 possible ones: 4 runs in a million; a real base holds far more text).
fn needles(secrets: &Secrets) -> Vec<String> {
    let mut v = Vec::new();
    for s in secrets.values() {
        let s = s.trim().to_string();
        for line in s.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
            v.push(line.to_string());
        }
        if !s.contains('\n') {
            v.push(s.clone());
        }
    }
    let (_, secret) = secrets.token.split_once('.').unwrap();
    v.push(secret.to_string());
    v
}

/// `grep -F` (Aho-Corasick, fast on a few hundred MiB): the needles found in `file`.
fn found(file: &Path, needles: &[String], dir: &Path) -> Vec<String> {
    let pats = dir.join("needles.txt");
    fs::write(&pats, needles.join("\n") + "\n").unwrap();
    let o = Command::new("grep").args(["-a", "-o", "-F", "-f"]).arg(&pats).arg(file).output().unwrap();
    assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "grep: {}", stderr(&o));
    let mut hits: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    hits.sort();
    hits.dedup();
    hits
}

#[test]
fn role_images_carry_the_bootstrap_and_no_secrets() {
    let fx = fixture::noble_fixture();
    let t = tempfile::tempdir().unwrap();
    // a real cluster (OS randomness) and the golden test cluster
    let d = t.path().join("c");
    common::cluster_init(&d).name("scan").endpoint("10.0.0.10").args(["--control-planes", "1"]).ok();
    let golden = t.path().join("golden");
    fs::create_dir_all(&golden).unwrap();
    let golden = crate::cloudinit::golden_cluster(&golden).parent().unwrap().join("secrets");
    let mut all = needles(&Secrets::load(&d.join("secrets")).unwrap());
    all.extend(needles(&Secrets::load(&golden).unwrap()));
    // the profiles' admin passwords (and Argo CD's hash) never enter an image either
    all.extend(imgbuild::cluster::admin::AdminSecrets::load(&d.join("secrets")).unwrap().unwrap().values());
    // and no private key of any kind
    all.push("PRIVATE KEY-----".into());

    for role in ["worker", "control-plane"] {
        let out = fx.dir.path().join(format!("out-{role}"));
        let o = fixture::build(&fx, role, &["--output", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let image = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        let raw = fixture::to_raw(&image, image.with_extension("scan.raw"));
        let hits = found(&raw, &all, t.path());
        assert!(hits.is_empty(), "{role} image contains secret material: {hits:?}");
        // the bootstrap logic is in the image, executable, and enabled
        let m = fixture::inspect(&image);
        let f = |p: &str| m.files.iter().find(|f| f.path == p).unwrap_or_else(|| panic!("{role}: no {p}"));
        assert_eq!(f("/usr/libexec/imgbuild/bootstrap").mode, "0755");
        assert_eq!(f("/etc/systemd/system/imgbuild-bootstrap.service").mode, "0644");
        let wants = f("/etc/systemd/system/multi-user.target.wants/imgbuild-bootstrap.service");
        assert_eq!(wants.target.as_deref(), Some("/etc/systemd/system/imgbuild-bootstrap.service"));
        fs::remove_file(&raw).unwrap();
    }
}
