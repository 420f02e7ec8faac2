//! Images against a REAL registry (Debian's docker-registry with token auth and blob
//! redirects, tests/it/common/registry.rs): `imgbuild lock` resolves tags to the index
//! digest and each arch's manifest digest through the anonymous token flow, keeps
//! digests a reference pins, refuses a missing arch (2) and tampered storage (3).

use crate::common::{self, stderr};

use std::path::{Path, PathBuf};

use crate::common::registry::{self, image, layer, Registry, TestImage};

/// A recipe with no artifacts and these images (registry.test is the mirror's name).
fn recipe(dir: &Path, arches: &str, images: &[(&str, &str)]) -> PathBuf {
    let mut s = format!(
        "name: oci-test\nkubernetes_version: v1.30.3\narches: [{arches}]\nsource_date_epoch: 1724198400\n\
         base:\n  name: b\n  version: '1'\n  format: qcow2\n  urls: [https://example.invalid/b.img]\n  sha256:\n"
    );
    for a in arches.split(", ") {
        s.push_str(&format!("    {a}: {}\n", "0".repeat(64)));
    }
    s.push_str("artifacts: []\nimages:\n");
    for (r, roles) in images {
        s.push_str(&format!("  - ref: {r}\n    roles: [{roles}]\n"));
    }
    // A fresh file (and lock path) per call.
    let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let p = dir.join(format!("recipe-{n}.yaml"));
    std::fs::write(&p, s).unwrap();
    p
}

fn lock(reg: &Registry, recipe: &Path, extra: &[&str]) -> std::process::Output {
    common::bin()
        .args(["lock", "--recipe"])
        .arg(recipe)
        .args(["--mirror", &reg.mirror_for("registry.test")])
        .args(extra)
        .output()
        .unwrap()
}

fn read_lock(recipe: &Path) -> serde_json::Value {
    let p = format!("{}.lock", recipe.display());
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A two-arch image whose first layer (the "base") is shared with `other`.
fn two_arch(tag: &str, docker: bool) -> TestImage {
    let base = layer(&[("bin/busybox", b"shared base layer")]);
    let amd = layer(&[("etc/app", format!("{tag} amd64").as_bytes())]);
    let arm = layer(&[("etc/app", format!("{tag} arm64").as_bytes())]);
    image(&[("amd64", vec![base.clone(), amd]), ("arm64", vec![base, arm])], docker, true)
}

#[test]
fn lock_resolves_tags_to_index_and_arch_digests_through_the_token_flow() {
    let Some(reg) = Registry::start() else { return };
    let oci = two_arch("app", false);
    reg.push_image("team/app", "1.0", &oci);
    let docker = two_arch("tool", true);
    reg.push_image("tool", "v2", &docker);
    // A single-platform image (no index): its config names the platform.
    let single = image(&[("amd64", vec![layer(&[("x", b"single")])])], false, false);
    reg.push_image("single", "3", &single);

    let t = tempfile::tempdir().unwrap();
    let r = recipe(
        t.path(),
        "amd64, arm64",
        &[("registry.test/team/app:1.0", "control-plane, worker"), ("registry.test/tool:v2", "worker")],
    );
    let o = lock(&reg, &r, &[]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), reg.log());
    let l = read_lock(&r);
    let imgs = l["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 2);
    for (entry, img, reference, mt) in [
        (&imgs[0], &oci, "registry.test/team/app:1.0", registry::OCI_INDEX),
        (&imgs[1], &docker, "registry.test/tool:v2", registry::DOCKER_LIST),
    ] {
        assert_eq!(entry["reference"], reference);
        assert_eq!(entry["digest"], img.digest(), "{reference}: the index digest");
        assert_eq!(entry["media_type"], mt);
        assert_eq!(entry["size"], img.top.len());
        for arch in ["amd64", "arm64"] {
            let m = img.manifest_for(arch);
            assert_eq!(entry["platforms"][arch]["digest"], m.digest.as_str(), "{reference} {arch}");
            assert_eq!(entry["platforms"][arch]["media_type"], m.media_type.as_str());
        }
    }
    // The anonymous token flow ran: scoped pull tokens, one per repository (cached).
    let reqs = reg.tokens.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|q| q.contains("scope=repository%3Ateam%2Fapp%3Apull")), "{reqs:?}");
    assert_eq!(reqs.iter().filter(|q| q.contains("team%2Fapp")).count(), 1, "token reused: {reqs:?}");
    assert!(String::from_utf8_lossy(&o.stdout).trim().ends_with(".yaml.lock"));

    // Single-platform image: the manifest digest is both the reference's and amd64's;
    // its config comes through the storage redirect, which refuses Authorization.
    let r = recipe(t.path(), "amd64", &[("registry.test/single:3", "worker")]);
    let o = lock(&reg, &r, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let l = read_lock(&r);
    assert_eq!(l["images"][0]["digest"], single.digest());
    assert_eq!(l["images"][0]["platforms"]["amd64"]["digest"], single.digest());
    let log = reg.storage.log();
    assert!(log.iter().any(|e| e.status == 200), "the config came from blob storage: {log:?}");
    assert!(log.iter().all(|e| !e.authorization), "Authorization leaked to another host: {log:?}");
}

#[test]
fn a_pinned_digest_stays_and_a_missing_arch_or_tampered_storage_is_refused() {
    let Some(reg) = Registry::start() else { return };
    let first = two_arch("one", false);
    reg.push_image("app", "1", &first);
    // The tag moves on; the recipe pins the first index by digest.
    let second = two_arch("two", false);
    reg.push_image("app", "1", &second);
    let t = tempfile::tempdir().unwrap();
    let pinned = format!("registry.test/app:1@{}", first.digest());
    let r = recipe(t.path(), "amd64, arm64", &[(&pinned, "worker")]);
    let o = lock(&reg, &r, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let l = read_lock(&r);
    assert_eq!(l["images"][0]["reference"], pinned.as_str());
    assert_eq!(l["images"][0]["digest"], first.digest());
    assert_eq!(l["images"][0]["platforms"]["arm64"]["digest"], first.manifest_for("arm64").digest.as_str());

    // Only amd64 exists: arm64 is an input error naming the image and what it has.
    let amd_only = image(&[("amd64", vec![layer(&[("a", b"1")])])], false, true);
    reg.push_image("amd-only", "1", &amd_only);
    let r = recipe(t.path(), "amd64, arm64", &[("registry.test/amd-only:1", "worker")]);
    let o = lock(&reg, &r, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("registry.test/amd-only:1") && e.contains("no linux/arm64 image (it has: linux/amd64)"),
        "{e}"
    );
    assert!(!Path::new(&format!("{}.lock", r.display())).exists(), "no lock written on failure");
    let o = lock(&reg, &r, &["--arch", "amd64"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Corrupted registry storage: the pinned index's bytes change on disk; the registry
    // serves them under the digest asked for, and lock refuses with exit 3.
    let f = reg.blob_file(&first.digest());
    let mut bytes = std::fs::read(&f).unwrap();
    let i = bytes.iter().position(|b| *b == b'{').unwrap();
    bytes.insert(i + 1, b' ');
    std::fs::write(&f, bytes).unwrap();
    let r = recipe(t.path(), "amd64", &[(&pinned, "worker")]);
    let o = lock(&reg, &r, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("digest mismatch") && e.contains(&first.digest()), "{e}");

    // A tag that does not exist is an input error naming it.
    let r = recipe(t.path(), "amd64", &[("registry.test/app:9", "worker")]);
    let o = lock(&reg, &r, &[]);
    common::exits_with(&o, 2, "registry.test/app:9: manifest 9 does not exist");
}
