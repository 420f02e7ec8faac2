//! `imgbuild verify IMAGE` and `imgbuild build --check-reproducible` on the
//! noble-shaped fixture base (real debugfs, e2fsck, qemu-img), served over loopback.
use crate::common::{self, text};

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::fixture::{self, Fixture};
use imgbuild::build::{Compose, Step};
use imgbuild::layer::Content;
use imgbuild::plan::{BuildPlan, PlanOptions};
use imgbuild::types::{Arch, OutFormat, Role};

fn verify(image: &Path) -> Output {
    common::bin()
        .env("PATH", fixture::path_with_sbin())
        .args(["verify", "--json"])
        .arg(image)
        .output()
        .unwrap()
}

#[test]
fn reproducible_build_then_verify_and_tampering() {
    let fx = fixture::noble_fixture();
    let out = fx.dir.path().join("out");
    let o = fixture::build(&fx, "worker", &["--output", out.to_str().unwrap(), "--check-reproducible"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("both builds are identical"), "{}", text(&o));
    let image = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let stem = "ubuntu-24.04-k8s-v1.30.3-worker-amd64";
    assert_eq!(image, out.join(format!("{stem}.qcow2")));
    // Exactly the four outputs of a normal build, no temp dirs left behind.
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("{stem}.manifest.json"),
            format!("{stem}.qcow2"),
            format!("{stem}.qcow2.sha256"),
            format!("{stem}.spdx.json")
        ]
    );

    let o = verify(&image);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["role"], "worker");
    assert_eq!(r["sha256"], fixture::sha256_file(&image));
    assert!(r["files_verified"].as_u64().unwrap() > 10, "{r}");

    // A copy with a changed sidecar manifest: exit 3.
    let t = fx.dir.path().join("t");
    std::fs::create_dir(&t).unwrap();
    for n in &names {
        std::fs::copy(out.join(n), t.join(n)).unwrap();
    }
    let timg = t.join(format!("{stem}.qcow2"));
    let man = t.join(format!("{stem}.manifest.json"));
    let orig = std::fs::read_to_string(&man).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&orig).unwrap();
    m["kubernetes_version"] = "v1.30.4".into();
    std::fs::write(&man, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let o = verify(&timg);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("differs from the manifest inside the image"), "{}", text(&o));
    std::fs::write(&man, &orig).unwrap();

    // Image bytes changed after the checksum was written: exit 3.
    let mut img = std::fs::read(&timg).unwrap();
    let last = img.len() - 1;
    img[last] ^= 0xff;
    std::fs::write(&timg, &img).unwrap();
    let o = verify(&timg);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("does not match"), "{}", text(&o));

    // No checksum sidecar: the image was not given with its output set, exit 2 (as
    // `upload` says); a sidecar without a line for the image is an integrity failure.
    std::fs::copy(&image, &timg).unwrap();
    let sum = t.join(format!("{stem}.qcow2.sha256"));
    let recorded = std::fs::read_to_string(&sum).unwrap();
    std::fs::remove_file(&sum).unwrap();
    let o = verify(&timg);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&format!("{} is missing", sum.display())), "{}", text(&o));
    std::fs::write(&sum, recorded.replace(".qcow2", ".raw")).unwrap();
    let o = verify(&timg);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

#[test]
fn cosign_signatures_are_verified_at_build_and_recorded() {
    let fx = fixture::noble_fixture();
    // The fixture's recipe exempts its unsigned stand-ins; this one is the default
    // recipe's policy: every dl.k8s.io file must be signed.
    let fixture_recipe = std::fs::read_to_string(&fx.recipe).unwrap();
    assert!(fixture_recipe.contains("signature: none"));
    let recipe = fx.dir.path().join("signed.yaml");
    std::fs::write(&recipe, fixture_recipe.replace("signature: none", "")).unwrap();
    let recipe = recipe.to_str().unwrap().to_string();

    // Nothing published next to kubeadm & co: an integrity failure before any image.
    let out0 = fx.dir.path().join("out0");
    let o = fixture::build(&fx, "worker", &["--output", out0.to_str().unwrap(), "--recipe", &recipe]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("no signature published"), "{}", text(&o));
    assert!(!out0.join("ubuntu-24.04-k8s-v1.30.3-worker-amd64.qcow2").exists());

    let ca = common::fulcio::Chain::new();
    let trust = fx.dir.path().join("fulcio.pem");
    std::fs::write(&trust, ca.trust_pem()).unwrap();
    let signed = ["kubeadm", "kubelet", "kubectl"];
    for n in signed {
        let b = &fx.blobs[n];
        let (sig, cert) = ca.sign_published(&std::fs::read(&b.path).unwrap());
        fx.server.add_bytes(&format!("{}.sig", b.url_path), sig);
        fx.server.add_bytes(&format!("{}.cert", b.url_path), cert);
    }
    // By default the embedded Sigstore root is the anchor, and the test CA is not it.
    let o = fixture::build(&fx, "worker", &["--output", out0.to_str().unwrap(), "--recipe", &recipe]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("does not chain to the trust root"), "{}", text(&o));

    let out = fx.dir.path().join("out");
    let o = fixture::build(
        &fx,
        "worker",
        &[
            "--output",
            out.to_str().unwrap(),
            "--recipe",
            &recipe,
            "--cosign-trust-root",
            trust.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The signature files are kept in the cache: an --offline build verifies them again.
    let out_offline = fx.dir.path().join("out-offline");
    let o = fixture::build(
        &fx,
        "worker",
        &[
            "--offline",
            "--output",
            out_offline.to_str().unwrap(),
            "--recipe",
            &recipe,
            "--cosign-trust-root",
            trust.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let image = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let o = verify(&image);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["signed_artifacts"], serde_json::json!(["kubeadm", "kubelet", "kubectl"]));
    let side = out.join("ubuntu-24.04-k8s-v1.30.3-worker-amd64.manifest.json");
    let m: imgbuild::manifest::Manifest = serde_json::from_slice(&std::fs::read(side).unwrap()).unwrap();
    assert_eq!(m.signatures.len(), 3);
    for s in &m.signatures {
        let a = m.artifacts.iter().find(|a| a.name == s.artifact).unwrap();
        assert_eq!(s.file_sha256, a.sha256);
        assert_eq!(s.identity, "krel-staging@k8s-releng-prod.iam.gserviceaccount.com");
    }

    // kubelet's signature is over other bytes: the build stops with exit 3, no image.
    let (sig, cert) = ca.sign_published(b"not the kubelet");
    let kubelet = &fx.blobs["kubelet"].url_path;
    fx.server.add_bytes(&format!("{kubelet}.sig"), sig);
    fx.server.add_bytes(&format!("{kubelet}.cert"), cert);
    let out2 = fx.dir.path().join("out2");
    let o = fixture::build(
        &fx,
        "worker",
        &[
            "--output",
            out2.to_str().unwrap(),
            "--recipe",
            &recipe,
            "--cosign-trust-root",
            trust.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("kubelet"), "{}", text(&o));
    assert!(!out2.join("ubuntu-24.04-k8s-v1.30.3-worker-amd64.qcow2").exists());
}

/// A layer step that is not deterministic (a fresh value on every run).
struct Unstable;

impl Step for Unstable {
    fn name(&self) -> &'static str {
        "unstable"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> anyhow::Result<()> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        cx.layer.file("/etc/imgbuild/build-stamp", Content::Bytes(nanos.to_string().into_bytes()), 0o644);
        Ok(())
    }
}

#[test]
fn a_non_deterministic_build_is_caught() {
    let fx: Fixture = fixture::noble_fixture();
    let r = imgbuild::recipe::load(Some(&fx.recipe)).unwrap();
    let out = fx.dir.path().join("out");
    let o = PlanOptions {
        format: OutFormat::Raw,
        output_dir: out.clone(),
        ..PlanOptions::new(Role::Worker, Arch::Amd64)
    };
    let mut plan = BuildPlan::resolve(&r, &o).unwrap();
    fx.resolve_images(&mut plan);
    let mut steps = imgbuild::build::default_steps(&Default::default());
    steps.push(Box::new(Unstable));
    let rep = imgbuild::reporter::Reporter::silent();
    let e = imgbuild::cmd::check_reproducible(&plan, &fx.fetched(&plan), &steps, &rep).unwrap_err();
    assert_eq!(imgbuild::cmd::code_for(&e), imgbuild::exit::Code::Integrity, "{e:#}");
    assert!(format!("{e:#}").contains("two builds differ: image:"), "{e:#}");
    // Nothing published on failure, and both temp dirs are gone.
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}

fn run(args: &[&str], image: &Path) -> Output {
    common::bin().env("PATH", fixture::path_with_sbin()).args(args).arg(image).output().unwrap()
}

/// Copy `image` to `dir/name` and cut it to `keep` of its length.
fn truncated(image: &Path, dir: &Path, name: &str, keep: f64) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(image, &p).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len((len as f64 * keep) as u64).unwrap();
    p
}

/// What is not an image, or a damaged one, says so: a device is not "no such image", a
/// cut-off image is truncated (not a debugfs error "writing the layer"), and one changed
/// entry is counted in plain English.
#[test]
fn non_images_and_damaged_images_say_what_they_are() {
    let fx = fixture::noble_fixture();
    let out = fx.dir.path().join("out");
    let o = fixture::build(&fx, "worker", &["--output", out.to_str().unwrap(), "--format", "raw"]);
    assert!(o.status.success(), "{}", text(&o));
    let raw = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let o = fixture::build(&fx, "worker", &["--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let qcow2 = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());

    for cmd in ["verify", "inspect"] {
        let o = run(&[cmd], Path::new("/dev/zero"));
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", text(&o));
        assert!(text(&o).contains("/dev/zero: not a regular file (a character device)"), "{}", text(&o));
        assert!(!text(&o).contains("no such image"), "{}", text(&o));
        let o = run(&[cmd], &out.join("gone.qcow2"));
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", text(&o));
        assert!(text(&o).contains("gone.qcow2: no such image"), "{}", text(&o));
    }

    let t = tempfile::tempdir_in(fx.dir.path()).unwrap();
    for (image, keep) in [(&raw, 0.5), (&qcow2, 0.6), (&qcow2, 0.98)] {
        let cut = truncated(
            image,
            t.path(),
            &format!("cut-{keep}-{}", image.file_name().unwrap().to_string_lossy()),
            keep,
        );
        let o = run(&["inspect"], &cut);
        assert_eq!(o.status.code(), Some(2), "{}: {}", cut.display(), text(&o));
        assert!(text(&o).contains("truncated"), "{}", text(&o));
        assert!(!text(&o).contains("writing the layer"), "{}", text(&o));
    }

    // One entry changed (kubelet's mode, with debugfs as an attacker would): exit 3.
    let changed = t.path().join("changed.raw");
    std::fs::copy(&raw, &changed).unwrap();
    let root = fixture::read_parts(&changed).into_iter().find(|p| p.number == 1).unwrap();
    fixture::sh(std::process::Command::new("debugfs").args([
        "-w",
        "-R",
        "sif /usr/local/bin/kubelet mode 0100700",
        &format!("{}?offset={}", changed.display(), root.offset),
    ]));
    let o = run(&["inspect"], &changed);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("1 entry does not match the manifest"), "{}", text(&o));
    assert!(text(&o).contains("/usr/local/bin/kubelet: mode 0700, manifest says 0755"), "{}", text(&o));
}
