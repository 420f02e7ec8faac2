//! `imgbuild build` with container images: every image is a plan item fetched by digest
//! into the content-addressed cache, written into the image as an OCI image layout with
//! shared layers stored once, and listed in the in-image manifest, the inputs digest and
//! the SPDX SBOM. Against the build fixture (its add-on images are pinned and cached)
//! and against a REAL registry (tests/it/common/registry.rs: token auth, blob redirects):
//! online resolution without a lock entry, `--offline` refusal (2), a missing arch (2),
//! a tampered blob (3, nothing kept), an interrupted blob download resumed.

use crate::common::{self, stderr};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::fixture::{self, Fixture};
use crate::common::http::Fault;
use crate::common::registry::{image, layer, Registry, TestImage};
use imgbuild::manifest::Manifest;

fn built(o: &Output) -> PathBuf {
    assert!(o.status.success(), "build: {}", stderr(o));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

const LAYOUT: &str = "/usr/share/imgbuild/images";

/// The layout's blob files in the manifest: (digest from the name, sha256 of the content).
fn blob_files(m: &Manifest) -> Vec<(String, String)> {
    m.files
        .iter()
        .filter_map(|f| {
            let name = f.path.strip_prefix(&format!("{LAYOUT}/blobs/sha256/"))?;
            Some((name.to_string(), f.sha256.clone().unwrap_or_default()))
        })
        .collect()
}

#[test]
fn the_fixture_images_are_embedded_listed_and_counted_in_the_identity() {
    let fx = fixture::noble_fixture();
    for role in ["worker", "control-plane"] {
        let out = fx.dir.path().join(format!("out-{role}"));
        let o = fixture::build(&fx, role, &["--output", out.to_str().unwrap()]);
        let img = built(&o);
        assert!(stderr(&o).contains("images: 6 image(s)"), "{}", stderr(&o));
        let m = fixture::inspect(&img);
        // The recipe's add-on images, each at its pinned index digest with its layers.
        let names: Vec<&str> = m.images.iter().map(|i| i.reference.as_str()).collect();
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(names[0].starts_with("quay.io/cilium/cilium:v1.16.1@sha256:"), "{names:?}");
        for i in &m.images {
            assert!(i.reference.ends_with(&i.digest), "{i:?}");
            assert_ne!(i.manifest, i.digest, "a multi-arch image: the amd64 manifest is its own");
            assert_eq!(i.layers.len(), 1);
        }
        // Every blob is a file named by its digest, verified by inspect; 4 per image.
        let blobs = blob_files(&m);
        assert_eq!(blobs.len(), 6 * 4);
        assert!(blobs.iter().all(|(name, sha)| name == sha), "{blobs:?}");
        for p in ["oci-layout", "index.json", "images.tsv"] {
            assert!(m.files.iter().any(|f| f.path == format!("{LAYOUT}/{p}")), "{p}");
        }
        let unit = "/etc/systemd/system/multi-user.target.wants/imgbuild-images.service";
        assert!(m.files.iter().any(|f| f.path == unit), "the import unit is enabled");
        // The SBOM lists each image (purl, index digest) and its layers.
        let sbom_path = PathBuf::from(img.to_string_lossy().replace(".qcow2", ".spdx.json"));
        common::validate_spdx(&sbom_path);
        let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom_path).unwrap()).unwrap();
        let pk = sbom["packages"].as_array().unwrap();
        let containers: Vec<&serde_json::Value> =
            pk.iter().filter(|p| p["primaryPackagePurpose"] == "CONTAINER").collect();
        assert_eq!(containers.len(), 6);
        let c0 = containers[0];
        assert_eq!(c0["name"], m.images[0].reference.as_str());
        assert_eq!(c0["checksums"][0]["checksumValue"], m.images[0].digest.trim_start_matches("sha256:"));
        let purl = c0["externalRefs"][0]["referenceLocator"].as_str().unwrap();
        assert!(
            purl.starts_with("pkg:oci/cilium@sha256%3A")
                && purl.contains("repository_url=quay.io/cilium/cilium"),
            "{purl}"
        );
        assert_eq!(pk.iter().filter(|p| p["primaryPackagePurpose"] == "ARCHIVE").count(), 6);
    }
}

fn registry_recipe(fx: &Fixture, dir: &Path, images: &[(&str, &str)], arches: Option<&str>) -> PathBuf {
    let mut text = std::fs::read_to_string(&fx.recipe).unwrap();
    if let Some(a) = arches {
        let mut v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        v["arches"] = serde_yaml::from_str(a).unwrap();
        text = serde_yaml::to_string(&v).unwrap();
    }
    text.push_str("images:\n");
    for (r, roles) in images {
        text.push_str(&format!("  - ref: {r}\n    roles: [{roles}]\n"));
    }
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("recipe.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Incompressible bytes (a layer that stays large when gzipped).
fn noise(len: usize) -> Vec<u8> {
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(len as u64);
    let mut v = vec![0u8; len];
    rand_core::RngCore::fill_bytes(&mut rng, &mut v);
    v
}

/// Two images sharing their base layer (busybox-sized), amd64 and arm64.
fn pair(reg: &Registry) -> (TestImage, TestImage) {
    let base = layer(&[("bin/busybox", &noise(300_000))]);
    let mk = |n: &str| {
        image(
            &[
                ("amd64", vec![base.clone(), layer(&[("etc/app", format!("{n} amd64").as_bytes())])]),
                ("arm64", vec![base.clone(), layer(&[("etc/app", format!("{n} arm64").as_bytes())])]),
            ],
            false,
            true,
        )
    };
    let (a, b) = (mk("a"), mk("b"));
    reg.push_image("team/a", "1", &a);
    reg.push_image("team/b", "2", &b);
    (a, b)
}

fn build_with(
    fx: &Fixture,
    reg: &Registry,
    recipe: &Path,
    cache: &Path,
    out: &Path,
    extra: &[&str],
) -> Output {
    let mut c = common::bin();
    c.env("PATH", fixture::path_with_sbin()).args(["build", "--role", "worker", "--recipe"]).arg(recipe);
    c.arg("--cache-dir").arg(cache).arg("--output").arg(out);
    for m in fx.mirrors.iter().cloned().chain([reg.mirror_for("registry.test")]) {
        c.arg("--mirror").arg(m);
    }
    c.args(extra).output().unwrap()
}

#[test]
fn images_come_from_the_registry_by_digest_with_shared_layers_once() {
    let Some(reg) = Registry::start() else { return };
    let fx = fixture::noble_fixture();
    let (a, b) = pair(&reg);
    let d = fx.dir.path().join("reg");
    let r = registry_recipe(
        &fx,
        &d,
        &[("registry.test/team/a:1", "worker"), ("registry.test/team/b:2", "worker")],
        None,
    );

    // Without a lock entry and --offline, nothing can be resolved: exit 2 naming them.
    let empty_cache = d.join("empty-cache");
    let o = build_with(&fx, &reg, &r, &empty_cache, &d.join("out0"), &["--offline"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("registry.test/team/a:1")
            && e.contains("registry.test/team/b:2")
            && e.contains("imgbuild lock"),
        "{e}"
    );

    // Online: resolved through the registry (and said so), fetched by digest.
    let cache = fx.cache.clone();
    let o = build_with(&fx, &reg, &r, &cache, &d.join("out1"), &[]);
    let img = built(&o);
    assert!(
        stderr(&o).contains("image registry.test/team/a:1: not in the lock; resolved online to"),
        "{}",
        stderr(&o)
    );
    let m = fixture::inspect(&img);
    let mine: Vec<_> = m.images.iter().filter(|i| i.reference.starts_with("registry.test/")).collect();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].digest, a.digest());
    assert_eq!(mine[0].manifest, a.manifest_for("amd64").digest);
    assert_eq!(mine[1].digest, b.digest());
    // The shared base layer is one file; every blob file is named by its content.
    assert_eq!(mine[0].layers[0], mine[1].layers[0]);
    let blobs = blob_files(&m);
    let distinct: BTreeSet<&String> = blobs.iter().map(|(n, _)| n).collect();
    assert_eq!(distinct.len(), blobs.len());
    assert!(blobs.iter().all(|(n, s)| n == s));
    let all_refs: usize = m.images.iter().map(|i| 2 + 1 + i.layers.len()).sum();
    assert_eq!(blobs.len(), all_refs - 1, "one layer shared: stored once");
    // The token flow and the storage redirect carried the blobs, without Authorization.
    assert!(reg.storage.log().iter().any(|l| l.status == 200));
    assert!(reg.storage.log().iter().all(|l| !l.authorization));

    // Still no lock entry: --offline refuses although the blobs are cached (a tag is
    // only resolved by a registry). After `imgbuild lock` (the pinned add-on images come
    // from the cache), the offline build gives the same image: the same inputs.
    let o = build_with(&fx, &reg, &r, &cache, &d.join("out2"), &["--offline"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let l = common::bin()
        .args(["lock", "--arch", "amd64", "--recipe"])
        .arg(&r)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--mirror", &reg.mirror_for("registry.test")])
        .output()
        .unwrap();
    assert!(l.status.success(), "lock: {}", stderr(&l));
    let o = build_with(&fx, &reg, &r, &cache, &d.join("out3"), &["--offline"]);
    let img3 = built(&o);
    assert_eq!(common::fixture::sha256_file(&img), common::fixture::sha256_file(&img3));
    assert!(!stderr(&o).contains("resolved online"), "{}", stderr(&o));
}

#[test]
fn a_missing_arch_a_tampered_blob_and_an_interrupted_download() {
    let Some(reg) = Registry::start() else { return };
    let fx = fixture::noble_fixture();
    let (a, _) = pair(&reg);
    let amd_only = image(&[("amd64", vec![layer(&[("x", b"amd64 only")])])], false, true);
    reg.push_image("team/amd", "1", &amd_only);
    let d = fx.dir.path().join("reg");

    // arm64 asked for, the image has amd64 only: exit 2 before any download.
    let r = registry_recipe(
        &fx,
        &d.join("arm"),
        &[("registry.test/team/amd:1", "worker")],
        Some("[amd64, arm64]"),
    );
    let o = build_with(&fx, &reg, &r, &fx.cache, &d.join("out-arm"), &["--arch", "arm64"]);
    common::exits_with(&o, 2, "no linux/arm64 image (it has: linux/amd64)");

    // An interrupted layer download resumes with Range at the blob storage.
    let layer_digest = {
        let m: serde_json::Value = serde_json::from_slice(&a.manifest_for("amd64").bytes).unwrap();
        m["layers"][0]["digest"].as_str().unwrap().to_string()
    };
    let hex = layer_digest.trim_start_matches("sha256:");
    let storage_path = format!("/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
    reg.storage.fault(&storage_path, vec![Fault::CutAfter(100_000)]);
    let r = registry_recipe(&fx, &d.join("a"), &[("registry.test/team/a:1", "worker")], None);
    let o = build_with(&fx, &reg, &r, &fx.cache, &d.join("out-a"), &[]);
    built(&o);
    let log: Vec<_> = reg.storage.log().into_iter().filter(|l| l.path == storage_path).collect();
    assert!(
        log.len() >= 2 && log.iter().any(|l| l.range.as_deref() == Some("bytes=100000-") && l.status == 206),
        "{log:?}"
    );

    // A blob whose stored bytes no longer match its digest: exit 3, nothing kept.
    let other = image(&[("amd64", vec![layer(&[("y", &noise(50_000))])])], false, true);
    reg.push_image("team/t", "1", &other);
    let m: serde_json::Value = serde_json::from_slice(&other.manifest_for("amd64").bytes).unwrap();
    let tampered = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let f = reg.blob_file(&tampered);
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&f, bytes).unwrap();
    let r = registry_recipe(&fx, &d.join("t"), &[("registry.test/team/t:1", "worker")], None);
    let cache = fx.cache.clone();
    let out = d.join("out-t");
    let o = build_with(&fx, &reg, &r, &cache, &out, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("digest mismatch") && stderr(&o).contains(tampered.trim_start_matches("sha256:")),
        "{}",
        stderr(&o)
    );
    let hex = tampered.trim_start_matches("sha256:");
    assert!(
        !cache.join("sha256").join(hex).exists() && !cache.join("partial").join(hex).exists(),
        "nothing kept"
    );
    assert!(std::fs::read_dir(&out)
        .map(|d| d.filter_map(|e| e.ok()).all(|e| e.file_name().to_string_lossy().starts_with('.')))
        .unwrap_or(true));

    // A blob storage that sends more than the manifest's descriptor says: the download
    // is capped at that size, given up at once (not retried), nothing kept.
    let long = image(&[("amd64", vec![layer(&[("z", &noise(40_000))])])], false, true);
    reg.push_image("team/long", "1", &long);
    let m: serde_json::Value = serde_json::from_slice(&long.manifest_for("amd64").bytes).unwrap();
    let (grown, size) =
        (m["layers"][0]["digest"].as_str().unwrap().to_string(), m["layers"][0]["size"].as_u64().unwrap());
    let f = reg.blob_file(&grown);
    let mut bytes = std::fs::read(&f).unwrap();
    bytes.extend_from_slice(&noise(10_000));
    std::fs::write(&f, bytes).unwrap();
    let r = registry_recipe(&fx, &d.join("long"), &[("registry.test/team/long:1", "worker")], None);
    let o = build_with(&fx, &reg, &r, &cache, &d.join("out-long"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("larger than the {} limit", imgbuild::reporter::human_bytes(size))),
        "{}",
        stderr(&o)
    );
    let hex = grown.trim_start_matches("sha256:");
    let storage_path = format!("/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
    assert_eq!(reg.storage.requests(&storage_path), 1, "not retried: {:?}", reg.storage.log());
    assert!(!cache.join("sha256").join(hex).exists() && !cache.join("partial").join(hex).exists());
}
