//! `imgbuild build` end to end over loopback HTTP from the noble-shaped fixture, and
//! its error paths.
use crate::common::{self, stderr};
use imgbuild_testkit::qemu;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::fixture::{self, debugfs, read_range, sh, BaseSpec};

fn to_raw(img: &Path) -> PathBuf {
    fixture::to_raw(img, img.with_extension("check.raw"))
}

#[test]
fn both_roles_build_over_http_and_verify() {
    let fx = fixture::noble_fixture();
    for role in ["worker", "control-plane"] {
        let out_dir = fx.dir.path().join(format!("out-{role}"));
        // The control plane's build prints JSON: the written files and the image's digest.
        let json = role == "control-plane";
        let mut args = vec!["--output", out_dir.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let o = fixture::build(&fx, role, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        let image = if json {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let image = PathBuf::from(v["image"].as_str().unwrap());
            let sidecar = std::fs::read_to_string(v["checksum"].as_str().unwrap()).unwrap();
            assert!(sidecar.starts_with(v["image_sha256"].as_str().unwrap()), "{v} vs {sidecar}");
            for k in ["manifest", "sbom"] {
                assert!(Path::new(v[k].as_str().unwrap()).is_file(), "{k}: {v}");
            }
            image
        } else {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
        };
        assert_eq!(image, out_dir.join(format!("ubuntu-24.04-k8s-v1.30.3-{role}-amd64.qcow2")));
        qemu::check(&image, "qcow2");

        // inspect re-verifies every file and prints the manifest.
        let m = fixture::inspect(&image);
        let side: imgbuild::manifest::Manifest = serde_json::from_slice(
            &std::fs::read(out_dir.join(format!("ubuntu-24.04-k8s-v1.30.3-{role}-amd64.manifest.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(m, side);
        assert_eq!(m.role, role);

        let raw = to_raw(&image);
        for part in [14, 15, 16] {
            let p = fx.base.part(part);
            assert!(
                read_range(&raw, p.offset, p.len) == read_range(&fx.base.raw, p.offset, p.len),
                "partition {part} changed"
            );
        }
        let spec = format!("{}?offset={}", raw.display(), fx.base.part(1).offset);
        sh(Command::new("e2fsck").arg("-fn").arg(&spec));
        // Every enablement symlink resolves to a unit file in the image.
        let wants: Vec<_> = m.files.iter().filter(|f| f.path.contains(".wants/")).collect();
        assert!(wants.iter().any(|f| f.path.ends_with("/kubelet.service")), "kubelet not enabled");
        assert!(wants.iter().any(|f| f.path.ends_with("/containerd.service")), "containerd not enabled");
        for w in wants {
            let target = w.target.as_deref().unwrap();
            let st = debugfs(&spec, &format!("stat {target}"));
            assert!(st.contains("Type: regular"), "{} -> {target} does not resolve: {st}", w.path);
        }
        // Files: owner/mode/content straight from debugfs for a sample beyond inspect.
        let st = debugfs(&spec, "stat /usr/local/bin/kubelet");
        assert!(st.contains("Mode:  0755") && st.contains("User:     0"), "{st}");
        assert_eq!(
            debugfs(&spec, "cat /usr/local/bin/kubelet").as_bytes(),
            std::fs::read(&fx.blobs["kubelet"].path).unwrap()
        );
        assert_eq!(debugfs(&spec, "cat /etc/os-release"), fixture::OS_RELEASE);
        std::fs::remove_file(&raw).unwrap();
    }
}

#[test]
fn two_builds_give_the_same_sha256_and_a_flipped_byte_fails_inspect() {
    let fx = fixture::noble_fixture();
    let a = fx.dir.path().join("a");
    let b = fx.dir.path().join("b");
    for d in [&a, &b] {
        let o = fixture::build(&fx, "worker", &["--output", d.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let name = "ubuntu-24.04-k8s-v1.30.3-worker-amd64.qcow2";
    assert_eq!(fixture::sha256_file(&a.join(name)), fixture::sha256_file(&b.join(name)));
    assert_eq!(
        std::fs::read(a.join(format!("{name}.sha256"))).unwrap(),
        std::fs::read(b.join(format!("{name}.sha256"))).unwrap()
    );

    // Human-readable inspect of the intact image: the manifest, every file verified.
    let ins = common::bin()
        .env("PATH", fixture::path_with_sbin())
        .arg("inspect")
        .arg(a.join(name))
        .output()
        .unwrap();
    assert!(ins.status.success(), "{}", stderr(&ins));
    let text = String::from_utf8_lossy(&ins.stdout);
    assert!(text.contains("recipe      ubuntu-24.04-k8s-v1.30.3"), "{text}");
    assert!(text.contains("/usr/local/bin/kubelet") && text.contains("verified"), "{text}");

    // Flip one byte inside kubelet's data block in a raw copy: inspect must fail (3).
    let raw = to_raw(&a.join(name));
    let off = fx.base.part(1).offset;
    let spec = format!("{}?offset={off}", raw.display());
    let blk: u64 = debugfs(&spec, "bmap /usr/local/bin/kubelet 0").trim().parse().unwrap();
    let at = off + blk * 4096 + 3;
    let mut byte = read_range(&raw, at, 1);
    byte[0] ^= 0xff;
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(&raw).unwrap().write_all_at(&byte, at).unwrap();
    let ins = common::bin().env("PATH", fixture::path_with_sbin()).arg("inspect").arg(&raw).output().unwrap();
    common::exits_with(&ins, 3, "/usr/local/bin/kubelet: sha256");
}

#[test]
fn base_that_is_neither_qcow2_nor_raw_is_refused() {
    let fx = fixture::noble_fixture();
    let vmdk = fx.dir.path().join("base.vmdk");
    qemu::convert(&fx.base.raw, None, "vmdk", "", vmdk.clone());
    let recipe = fx.recipe_with_base(&vmdk);
    let out = fx.dir.path().join("out");
    let o = common::bin()
        .env("PATH", fixture::path_with_sbin())
        .args(["build", "--recipe", recipe.to_str().unwrap(), "--cache-dir", fx.cache.to_str().unwrap()])
        .args(fx.mirrors.iter().flat_map(|m| ["--mirror", m.as_str()]))
        .args(["--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    common::exits_with(&o, 2, "base image is neither qcow2 nor raw");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "a failed build leaves nothing behind");
    // inspect reads vmdk (an output format), but this one was not built by imgbuild.
    let ins =
        common::bin().env("PATH", fixture::path_with_sbin()).arg("inspect").arg(&vmdk).output().unwrap();
    assert_eq!(ins.status.code(), Some(2));
    assert!(stderr(&ins).contains("not built by imgbuild"), "{}", stderr(&ins));
    // A format inspect does not read (vdi) is refused by its magic bytes.
    let vdi = fx.dir.path().join("base.vdi");
    qemu::convert(&fx.base.raw, None, "vdi", "", vdi.clone());
    let ins = common::bin().env("PATH", fixture::path_with_sbin()).arg("inspect").arg(&vdi).output().unwrap();
    assert_eq!(ins.status.code(), Some(2));
    // What inspect is given is an image to read, not a base image.
    assert!(stderr(&ins).contains("not a disk image (imgbuild reads qcow2, raw,"), "{}", stderr(&ins));
    assert!(!stderr(&ins).contains("base image"), "{}", stderr(&ins));
}

#[test]
fn base_without_cloudimg_rootfs_or_with_ext2_root_is_refused() {
    for (spec, msg) in [
        (
            BaseSpec { root_label: "something-else".into(), ..Default::default() },
            "no partition has a filesystem labelled \"cloudimg-rootfs\"",
        ),
        (BaseSpec { root_fs: "ext2".into(), ..Default::default() }, "holds ext2/ext3, not ext4"),
    ] {
        let fx = fixture::fixture_with(&spec);
        let out = fx.dir.path().join("out");
        // An older output must survive a failed build.
        std::fs::create_dir_all(&out).unwrap();
        let old = out.join("ubuntu-24.04-k8s-v1.30.3-worker-amd64.qcow2");
        std::fs::write(&old, b"older build").unwrap();
        let o = fixture::build(&fx, "worker", &["--output", out.to_str().unwrap()]);
        common::exits_with(&o, 2, msg);
        assert_eq!(std::fs::read(&old).unwrap(), b"older build");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "temp files left behind");
    }
}

#[test]
fn missing_tools_name_their_package() {
    let fx = fixture::noble_fixture();
    let empty = tempfile::tempdir().unwrap();
    let run = |path: &Path| {
        common::bin()
            .env("PATH", path)
            .env("IMGBUILD_SBIN_DIRS", empty.path())
            .arg("build")
            .args(fx.source_args())
            .output()
            .unwrap()
    };
    let o = run(empty.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("`debugfs`") && stderr(&o).contains("e2fsprogs"), "{}", stderr(&o));
    // e2fsprogs present, qemu-img missing.
    let some = tempfile::tempdir().unwrap();
    for t in ["debugfs", "e2fsck", "resize2fs"] {
        let real = ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(t))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(real, some.path().join(t)).unwrap();
    }
    let o = run(some.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("`qemu-img`") && stderr(&o).contains("qemu-utils"), "{}", stderr(&o));
}

#[test]
fn an_interrupted_build_removes_its_temp_dir() {
    let fx = fixture::noble_fixture();
    let out = fx.dir.path().join("interrupted");
    std::fs::create_dir_all(&out).unwrap();
    let child = common::bin()
        .env("PATH", fixture::path_with_sbin())
        .args(["build", "--role", "control-plane", "--output", out.to_str().unwrap()])
        .args(fx.source_args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the working copy exists, then interrupt.
    let start = std::time::Instant::now();
    let raw = loop {
        let found = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(".imgbuild-"))
            // The working copy: the root partition's metadata (fast path) or the whole disk.
            .and_then(|d| ["root.partition", "disk.raw"].iter().map(|n| d.join(n)).find(|r| r.exists()));
        if let Some(r) = found {
            break r;
        }
        assert!(start.elapsed().as_secs() < 120, "the build never created its working copy");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let pid = child.id().to_string();
    sh(Command::new("kill").args(["-INT", &pid]));
    let o = child.wait_with_output().unwrap();
    if o.status.success() {
        // The build won the race; nothing to check but that it left only outputs.
        assert!(!raw.exists());
    } else {
        assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
        assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
        let left: Vec<_> = walk(&out);
        assert!(left.is_empty(), "temp files left behind: {left:?}");
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        }
        v.push(p);
    }
    v
}

/// The fast path (base qcow2 read in place, only the root filesystem's metadata in the
/// working copy, output streamed once) writes the same disk, byte for byte, as the raw
/// working copy path (`--format raw` takes it), also when the disk is grown, and from
/// compressed bases with another cluster size, as Ubuntu's images are.
#[test]
fn fast_path_and_raw_working_copy_write_the_same_disk() {
    let fx = fixture::noble_fixture();
    let zstd = fx.dir.path().join("base-zstd.qcow2");
    qemu::convert(
        &fx.base.raw,
        Some("raw"),
        "qcow2",
        "-c -o compression_type=zstd,cluster_size=32768",
        zstd.clone(),
    );
    // The plain base first: recipe_with_base serves the other base at the same URLs.
    for name in ["plain", "grown", "zstd"] {
        let zstd_recipe = (name == "zstd").then(|| fx.recipe_with_base(&zstd));
        let recipe = zstd_recipe.as_deref().and_then(|p| p.to_str());
        let build = |format: &str| {
            let out = fx.dir.path().join(format!("{name}-{format}"));
            let mut args = vec!["--output", out.to_str().unwrap(), "--format", format];
            if name == "grown" {
                args.extend(["--disk-size", "1G"]);
            }
            if let Some(r) = recipe {
                args.extend(["--recipe", r]);
            }
            let o = fixture::build(&fx, "control-plane", &args);
            assert!(o.status.success(), "{name}: {}", stderr(&o));
            (PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()), stderr(&o))
        };
        let (slow_img, log) = build("raw");
        assert!(log.contains("converting base (qcow2) to a raw working copy"), "{name}: {log}");
        let (img, log) = build("qcow2");
        assert!(log.contains("base read in place"), "{name}: {log}");
        qemu::check(&img, "qcow2");
        qemu::same_guest(&img, "qcow2", &slow_img, "raw");
        // The sidecar's digest is the digest of the file (hashed while written).
        let sum = std::fs::read_to_string(img.with_extension("qcow2.sha256")).unwrap();
        assert_eq!(sum.split_whitespace().next().unwrap(), fixture::sha256_file(&img), "{name}");
    }
}

/// `--compress`: zstd qcow2 clusters, on the fast path (imgbuild's writer) and on the
/// raw working copy path (a raw base: qemu-img -c), the same guest disk as an
/// uncompressed build, `qemu-img check` clean, smaller, reproducible; other formats
/// refuse it.
#[test]
fn compressed_qcow2_is_the_same_disk_smaller_and_reproducible() {
    let fx = fixture::noble_fixture();
    let build = |dir: &str, extra: &[&str]| {
        let out = fx.dir.path().join(dir);
        let mut args = vec!["--output", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = fixture::build(&fx, "worker", &args);
        assert!(o.status.success(), "{dir}: {}", stderr(&o));
        (PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()), stderr(&o))
    };
    let (plain, _) = build("plain", &["--format", "qcow2"]);
    let (raw, _) = build("raw", &["--format", "raw"]);
    let (a, log) = build("z1", &["--compress"]);
    assert!(log.contains("base read in place"), "{log}");
    let (b, _) = build("z2", &["--compress"]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "two compressed builds differ");
    let raw_base = fx.recipe_with_base(&fx.base.raw);
    let (c, log) = build("z-raw-path", &["--compress", "--recipe", raw_base.to_str().unwrap()]);
    assert!(log.contains("raw working copy"), "{log}");
    // (another base digest: another manifest in the image)
    let (raw2, _) = build("raw2", &["--format", "raw", "--recipe", raw_base.to_str().unwrap()]);
    for (img, raw) in [(&a, &raw), (&c, &raw2)] {
        qemu::check(img, "qcow2");
        let info = qemu::info(img, Some("qcow2"));
        assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd", "{img:?}: {info}");
        qemu::same_guest(img, "qcow2", raw, "raw");
        let sum = std::fs::read_to_string(img.with_extension("qcow2.sha256")).unwrap();
        assert_eq!(sum.split_whitespace().next().unwrap(), fixture::sha256_file(img));
    }
    let (za, zp) = (std::fs::metadata(&a).unwrap().len(), std::fs::metadata(&plain).unwrap().len());
    assert!(za < zp, "compressed {za} bytes, uncompressed {zp}");
    let o = fixture::build(&fx, "worker", &["--format", "vhd", "--compress"]);
    common::exits_with(&o, 2, "--compress applies to qcow2");
}

/// Layer files taken from the build host are only allocated by debugfs; their bytes are
/// laid in once from where they are (streamed into the qcow2 on the fast path, written
/// into the working copy on the raw path). Read back from the output, every file of the
/// manifest has its recorded sha256, no extent is left unwritten (an unwritten extent
/// reads as zeros in the guest), and `e2fsck -fn` is clean.
#[test]
fn layer_files_read_back_byte_for_byte_with_no_unwritten_extent() {
    let fx = fixture::noble_fixture();
    for format in ["qcow2", "raw"] {
        let out = fx.dir.path().join(format!("once-{format}"));
        let o =
            fixture::build(&fx, "control-plane", &["--output", out.to_str().unwrap(), "--format", format]);
        assert!(o.status.success(), "{format}: {}", stderr(&o));
        let log = stderr(&o);
        let laid: usize = log
            .split_once(if format == "qcow2" { "image (" } else { "laying in " })
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{format}: no count of laid-in files in {log}"));
        assert!(laid >= 10, "{format}: only {laid} files laid in: {log}");
        let img = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        let raw = if format == "qcow2" { to_raw(&img) } else { img.clone() };
        let spec = format!("{}?offset={}", raw.display(), fx.base.part(1).offset);
        sh(Command::new("e2fsck").arg("-fn").arg(&spec));
        let m: imgbuild::manifest::Manifest =
            serde_json::from_slice(&std::fs::read(img.with_extension("manifest.json")).unwrap()).unwrap();
        let files: Vec<_> = m.files.iter().filter(|f| f.sha256.is_some()).collect();
        let dump = fx.dir.path().join(format!("dump-{format}"));
        std::fs::create_dir_all(&dump).unwrap();
        let mut script = String::new();
        for (i, f) in files.iter().enumerate() {
            script.push_str(&format!("dump {} {}/{i}\nex -l {}\n", f.path, dump.display(), f.path));
        }
        let cmds = dump.join("cmds");
        std::fs::write(&cmds, script).unwrap();
        let o = sh(Command::new("debugfs").arg("-f").arg(&cmds).arg(&spec));
        let listing = String::from_utf8_lossy(&o.stdout);
        assert!(!listing.contains("Uninit"), "{format}: unwritten extents left:\n{listing}");
        for (i, f) in files.iter().enumerate() {
            let got = fixture::sha256_file(&dump.join(i.to_string()));
            assert_eq!(Some(&got), f.sha256.as_ref(), "{format}: {} read back differs", f.path);
        }
        let kubelet = files.iter().position(|f| f.path == "/usr/local/bin/kubelet").unwrap();
        assert_eq!(
            std::fs::read(dump.join(kubelet.to_string())).unwrap(),
            std::fs::read(&fx.blobs["kubelet"].path).unwrap()
        );
        std::fs::remove_dir_all(&dump).unwrap();
        if raw != img {
            std::fs::remove_file(&raw).unwrap();
        }
    }
}
