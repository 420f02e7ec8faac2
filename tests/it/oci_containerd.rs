//! The in-image layout against a REAL containerd (Debian's 1.6, with the product's
//! own config.toml) and runc: the baked import script imports it into k8s.io with
//! `ctr images import`, every name lands at the digest the layout pins (the index
//! digest for multi-arch images), a layer two images share is one file, a second run
//! imports nothing, and an imported image runs as a container through runc.
//! Needs root (containerd); skips loudly elsewhere, fails under CI when tools lack.

use crate::common;
use crate::layer_fixture;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::common::registry::{image, layer, sha256, TestImage};
use imgbuild::layer::Layer;
use imgbuild::oci::layout::{Embedded, IMAGES_DIR};
use imgbuild::oci::{Digest, ImageRef};
use layer_fixture::{have, materialize};

const SCRIPT: &str = "image-files/common/usr/libexec/imgbuild/images-import";

struct Containerd {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unmount what runc's containers and the overlay snapshotter may have left.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("state"))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A containerd of its own (root, state and socket in a temp dir) with the product's
/// config.toml; `None` (loudly) where that cannot run.
fn containerd() -> Option<Containerd> {
    if !(have("containerd") && have("ctr") && have("runc") && have("tar")) {
        return None;
    }
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root (ci/test.sh)");
        eprintln!("SKIP: containerd needs root; oci_containerd tests skipped");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("containerd.sock");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("image-files/common/etc/containerd/config.toml");
    let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(&sock)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let c = Containerd { child, sock, dir };
    let t0 = Instant::now();
    while !c.ctr(&["version"]).status.success() {
        assert!(t0.elapsed() < Duration::from_secs(120), "containerd did not start: {}", c.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(c)
}

impl Containerd {
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .env("CONTAINERD_ADDRESS", &self.sock)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
    /// (name, digest) of every image record in k8s.io but the image-ID records
    /// (`sha256:<config digest>`) containerd's CRI plugin adds for images it sees.
    fn images(&self) -> Vec<(String, String)> {
        self.records().into_iter().filter(|(n, _)| !n.starts_with("sha256:")).collect()
    }

    /// (name, digest) of every image record in k8s.io.
    fn records(&self) -> Vec<(String, String)> {
        let o = self.ctr(&["images", "ls"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut v: Vec<(String, String)> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_string(), f[2].to_string())
            })
            .collect();
        v.sort();
        v
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Write every blob of `img` for amd64 under `store/<hex>` and describe it for the layout.
fn embedded(reference: &str, img: &TestImage, store: &Path) -> Embedded {
    let mut blobs = Vec::new();
    let mut put = |bytes: &[u8]| {
        let d = sha256(bytes);
        let p = store.join(d.trim_start_matches("sha256:"));
        std::fs::write(&p, bytes).unwrap();
        blobs.push((Digest::parse(&d).unwrap(), bytes.len() as u64, p));
    };
    put(&img.top);
    let m = img.manifest_for("amd64");
    if m.bytes != img.top {
        put(&m.bytes);
    }
    let man: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    let want: Vec<String> = std::iter::once(man["config"]["digest"].as_str().unwrap().to_string())
        .chain(man["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()))
        .collect();
    for d in want {
        let b = img.blobs.iter().find(|b| sha256(b) == d).expect("blob of the image");
        put(b);
    }
    Embedded {
        reference: ImageRef::parse(reference).unwrap(),
        digest: Digest::parse(&img.digest()).unwrap(),
        media_type: img.top_media_type.clone(),
        size: img.top.len() as u64,
        blobs,
    }
}

fn run_script(root: &Path, c: &Containerd) -> Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT))
        .env("IMGBUILD_ROOT", root)
        .env("CONTAINERD_ADDRESS", &c.sock)
        .env("IMGBUILD_CONTAINERD_WAIT", "20")
        .output()
        .unwrap()
}

fn status(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("run/imgbuild/images.json")).unwrap()).unwrap()
}

#[test]
fn the_baked_layout_imports_into_real_containerd_once_and_runs_through_runc() {
    let Some(c) = containerd() else { return };
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("blobs");
    std::fs::create_dir_all(&store).unwrap();
    // A runnable base layer (Debian's static busybox) shared by both images.
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (ci/test.sh installs it)");
    let base = layer(&[("bin/busybox", &busybox)]);
    let app = image(
        &[
            ("amd64", vec![base.clone(), layer(&[("etc/motd", b"app amd64\n")])]),
            ("arm64", vec![layer(&[("etc/motd", b"app arm64\n")])]),
        ],
        false,
        true,
    );
    let tool = image(&[("amd64", vec![base.clone(), layer(&[("etc/motd", b"tool\n")])])], true, true);
    let tool_ref = format!("registry.test/tools/tool:2@{}", tool.digest());
    let images = vec![embedded("registry.test/app:1", &app, &store), embedded(&tool_ref, &tool, &store)];

    let mut l = Layer::new(1_724_198_400);
    let stats = imgbuild::layer::images::add(&mut l, &images).unwrap();
    // The shared busybox layer is one blob; the arm64 manifest is not embedded.
    assert_eq!(stats.bytes_if_separate - stats.bytes, base.0.len() as u64, "{stats:?}");
    let root = t.path().join("root");
    materialize(&l, &root);
    let blob_dir = root.join(IMAGES_DIR.trim_start_matches('/')).join("blobs/sha256");
    assert_eq!(std::fs::read_dir(&blob_dir).unwrap().count(), stats.blobs);
    assert!(!blob_dir.join(app.manifest_for("arm64").digest.trim_start_matches("sha256:")).exists());

    let t0 = Instant::now();
    let o = run_script(&root, &c);
    let secs = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    assert!(text(&o).contains("phase done: imported 4 image names"), "{}", text(&o));
    eprintln!("import of {} blobs ({} bytes): {secs:.2} s", stats.blobs, stats.bytes);
    let s = status(&root);
    assert_eq!(
        (s["phase"].as_str(), s["images"].as_u64(), s["imported"].as_u64()),
        (Some("done"), Some(4), Some(4))
    );

    // Every name at the pinned top digest (the index), as a CRI pull would name it.
    let want = {
        let mut v = vec![
            ("registry.test/app:1".to_string(), app.digest()),
            (format!("registry.test/app@{}", app.digest()), app.digest()),
            ("registry.test/tools/tool:2".to_string(), tool.digest()),
            (format!("registry.test/tools/tool@{}", tool.digest()), tool.digest()),
        ];
        v.sort();
        v
    };
    assert_eq!(c.images(), want);
    // The CRI plugin saw the imports: it added each image's ID (its config digest).
    let config = |img: &TestImage| {
        let m: serde_json::Value = serde_json::from_slice(&img.manifest_for("amd64").bytes).unwrap();
        m["config"]["digest"].as_str().unwrap().to_string()
    };
    let ids: Vec<(String, String)> =
        c.records().into_iter().filter(|(n, _)| n.starts_with("sha256:")).collect();
    let mut want_ids = vec![(config(&app), app.digest()), (config(&tool), tool.digest())];
    want_ids.sort();
    assert_eq!(ids, want_ids);
    let labels = text(&c.ctr(&["images", "ls", "name==registry.test/app:1"]));
    assert!(labels.contains("io.cri-containerd.pinned=pinned"), "{labels}");

    // A second boot: everything present, nothing imported.
    let o = run_script(&root, &c);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing imported"), "{}", text(&o));
    assert_eq!(status(&root)["phase"], "present");
    assert_eq!(c.images(), want);

    // The imported image runs through containerd and runc (no network, no pull).
    let o = c.ctr(&[
        "run",
        "--rm",
        "registry.test/app:1",
        "imgbuild-oci-test",
        "/bin/busybox",
        "cat",
        "/etc/motd",
    ]);
    assert!(o.status.success(), "ctr run: {}\n{}", text(&o), c.log());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "app amd64\n");

    // Something removed from containerd is imported again on the next run.
    let o = c.ctr(&["images", "rm", "registry.test/tools/tool:2"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run_script(&root, &c);
    assert!(o.status.success() && text(&o).contains("phase import: 1 of 4"), "{}", text(&o));
    assert_eq!(c.images(), want);
}

#[test]
fn a_broken_layout_fails_with_a_status() {
    let Some(c) = containerd() else { return };
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let dir = root.join(IMAGES_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}\n").unwrap();
    // index.json names an image whose blob is not there.
    let missing = format!("sha256:{}", "a".repeat(64));
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing, "size": 10,
        "annotations": {"io.containerd.image.name": "registry.test/x:1"}}]});
    std::fs::write(dir.join("index.json"), idx.to_string()).unwrap();
    std::fs::write(dir.join("images.tsv"), format!("registry.test/x:1\t{missing}\n")).unwrap();
    let o = run_script(&root, &c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("phase failed: ctr images import failed"), "{}", text(&o));
    let s = status(&root);
    assert_eq!(s["phase"], "failed");
    assert!(s["last_error"].as_str().unwrap().contains("ctr images import failed"), "{s}");
}

#[test]
fn a_rendered_hosts_toml_sends_containerd_to_the_mirror() {
    let Some(c) = containerd() else { return };
    let Some(reg) = common::registry::Registry::start() else { return };
    let app = image(&[("amd64", vec![layer(&[("etc/motd", b"mirrored\n")])])], false, true);
    reg.push_image("team/app", "1.0", &app);
    // cluster.yaml: registries.mirrors."registry.test" -> the test registry, no fallback
    // (registry.test does not exist: only the mirror can answer).
    let m: imgbuild::cluster::registries::Mirror =
        serde_yaml::from_str(&format!("fallback: false\nendpoints:\n  - url: {}\n", reg.base())).unwrap();
    let (toml, cas) = imgbuild::cluster::registries::hosts_toml("registry.test", &m);
    assert!(cas.is_empty());
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("certs.d/registry.test");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), toml).unwrap();
    let hosts = t.path().join("certs.d");
    let o = c.ctr(&["images", "pull", "--hosts-dir", hosts.to_str().unwrap(), "registry.test/team/app:1.0"]);
    assert!(o.status.success(), "ctr pull through the mirror: {}\n{}", text(&o), reg.log());
    assert!(
        c.images().contains(&("registry.test/team/app:1.0".to_string(), app.digest())),
        "{:?}",
        c.images()
    );
    // containerd took the token flow and the blob redirect without leaking Authorization.
    assert!(!reg.tokens.requests.lock().unwrap().is_empty());
    assert!(reg.storage.log().iter().all(|e| !e.authorization && e.status == 200), "{:?}", reg.storage.log());
}

/// Disk use of a directory tree in bytes (allocated blocks, as `du` counts them).
fn du(dir: &Path) -> u64 {
    let o = Command::new("du").args(["-s", "-B1"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The benchmark behind ci/bench-images.sh (ignored in the test run): BENCH_IMAGES images
/// of BENCH_LAYER_MIB MiB of incompressible data each, all sharing a base layer of the same
/// size, imported from the layout with the product's script, against the same images
/// pulled by the same containerd from a registry on loopback (the online path).
#[test]
#[ignore]
fn bench_import_against_a_pull() {
    let Some(c) = containerd() else { return };
    let Some(reg) = common::registry::Registry::start() else { return };
    let n: usize = std::env::var("BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let mib: usize = std::env::var("BENCH_LAYER_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(7);
    let mut random = |len: usize| {
        let mut v = vec![0u8; len];
        rand_core::RngCore::fill_bytes(&mut rng, &mut v);
        v
    };
    let base =
        layer(&[("bin/busybox", &std::fs::read("/bin/busybox").unwrap()), ("base.bin", &random(mib << 20))]);
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("blobs");
    std::fs::create_dir_all(&store).unwrap();
    let mut embedded_images = Vec::new();
    let mut names = Vec::new();
    for i in 0..n {
        let own = layer(&[(&format!("img{i}.bin"), &random(mib << 20))]);
        let img = image(&[("amd64", vec![base.clone(), own])], false, true);
        reg.push_image(&format!("bench/img{i}"), "1", &img);
        names.push(format!("registry.test/bench/img{i}:1"));
        embedded_images.push(embedded(&names[i], &img, &store));
    }
    let mut l = Layer::new(1_724_198_400);
    let stats = imgbuild::layer::images::add(&mut l, &embedded_images).unwrap();
    let root = t.path().join("root");
    materialize(&l, &root);
    let layout = root.join(IMAGES_DIR.trim_start_matches('/'));

    let t0 = Instant::now();
    let o = run_script(&root, &c);
    let import = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", text(&o));
    let after_import = du(&c.dir.path().join("root"));

    // The same images pulled over loopback by a second containerd (same config).
    let Some(c2) = containerd() else { return };
    let m: imgbuild::cluster::registries::Mirror =
        serde_yaml::from_str(&format!("fallback: false\nendpoints:\n  - url: {}\n", reg.base())).unwrap();
    let hosts = t.path().join("certs.d/registry.test");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        imgbuild::cluster::registries::hosts_toml("registry.test", &m).0,
    )
    .unwrap();
    let t0 = Instant::now();
    for name in &names {
        let o = c2.ctr(&["images", "pull", "--hosts-dir", t.path().join("certs.d").to_str().unwrap(), name]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let pull = t0.elapsed().as_secs_f64();
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "bench-images: {n} images, {} blobs, {:.0} MiB in the layout ({:.0} MiB if each image were stored apart)",
        stats.blobs,
        mb(stats.bytes),
        mb(stats.bytes_if_separate)
    );
    println!(
        "bench-images: import {import:.1} s ({:.0} MiB/s); pull from a loopback registry {pull:.1} s; ratio import/pull {:.2}",
        mb(stats.bytes) / import,
        import / pull
    );
    println!(
        "bench-images: disk: layout {:.0} MiB, containerd after the import (content + unpacked snapshots) {:.0} MiB",
        mb(du(&layout)),
        mb(after_import)
    );
}
