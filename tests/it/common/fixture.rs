//! An upstream-shaped test world for `imgbuild build`: a small Ubuntu-noble-shaped
//! base image, stand-ins for every artifact, a recipe pinning their digests, and a
//! loopback HTTP server serving it all under upstream-shaped paths. The stand-ins, the
//! mirror layout and the test recipe come from testkit/ (`imgbuild_testkit::mirror`), the
//! builder the boot test uses too; the base image is made here.
//!
//! ```ignore
//! let fx = common::fixture::noble_fixture();
//! let out = common::fixture::build(&fx, "worker", &[]);      // runs `imgbuild build`
//! assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
//! ```
//!
//! The base image has noble's GPT numbering *and order*: partition 14 (BIOS boot,
//! 4 MiB), 15 (ESP, vfat labelled `UEFI`), 16 (ext4 labelled `BOOT`) and, last on
//! disk, partition 1 (ext4 labelled `cloudimg-rootfs`), 384 MiB virtual. The root
//! is made with `mke2fs -d` from a tree with noble's `/etc/os-release` and a
//! `/var/lib/dpkg/status`. Needs sgdisk, mkfs.vfat, mtools, mke2fs, qemu-img, tar.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::http::Server;

/// Noble's /etc/os-release (24.04.1, as in release-20240821).
pub const OS_RELEASE: &str = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\n\
VERSION=\"24.04.1 LTS (Noble Numbat)\"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n\
HOME_URL=\"https://www.ubuntu.com/\"\nSUPPORT_URL=\"https://help.ubuntu.com/\"\n\
BUG_REPORT_URL=\"https://bugs.launchpad.net/ubuntu/\"\n\
PRIVACY_POLICY_URL=\"https://www.ubuntu.com/legal/terms-and-policies/privacy-policy\"\n\
UBUNTU_CODENAME=noble\nLOGO=ubuntu-logo\n";

/// A few real-shaped stanzas of noble's /var/lib/dpkg/status.
pub const DPKG_STATUS: &str = "Package: base-files\nEssential: yes\nStatus: install ok installed\n\
Priority: required\nSection: admin\nInstalled-Size: 394\nMaintainer: Ubuntu Developers <ubuntu-devel-discuss@lists.ubuntu.com>\n\
Architecture: amd64\nVersion: 13ubuntu10.1\nDescription: Debian base system miscellaneous files\n\n\
Package: libc6\nStatus: install ok installed\nPriority: optional\nSection: libs\nInstalled-Size: 13548\n\
Maintainer: Ubuntu Developers <ubuntu-devel-discuss@lists.ubuntu.com>\nArchitecture: amd64\nMulti-Arch: same\n\
Source: glibc\nVersion: 2.39-0ubuntu8.3\nDescription: GNU C Library: Shared libraries\n\n\
Package: iptables\nStatus: install ok installed\nPriority: optional\nSection: net\nInstalled-Size: 2696\n\
Maintainer: Ubuntu Developers <ubuntu-devel-discuss@lists.ubuntu.com>\nArchitecture: amd64\n\
Version: 1.8.10-3ubuntu2\nDepends: libip4tc2 (= 1.8.10-3ubuntu2), libc6 (>= 2.34)\n\
Description: administration tools for packet filtering and NAT\n\n\
Package: openssh-server\nStatus: install ok installed\nPriority: optional\nSection: net\n\
Installed-Size: 2152\nMaintainer: Ubuntu Developers <ubuntu-devel-discuss@lists.ubuntu.com>\n\
Architecture: amd64\nSource: openssh\nVersion: 1:9.6p1-3ubuntu13.5\nDescription: secure shell (SSH) server\n\n";

/// Shape of the base image; [`BaseSpec::default`] is the noble shape.
#[derive(Debug, Clone)]
pub struct BaseSpec {
    /// Virtual disk size in MiB.
    pub disk_mib: u64,
    /// Label of partition 1's filesystem.
    pub root_label: String,
    /// `mke2fs -t` type of partition 1 ("ext4", or "ext2" to test refusal).
    pub root_fs: String,
    /// Extra files for the root tree: (path, bytes).
    pub extra: Vec<(String, Vec<u8>)>,
}

impl Default for BaseSpec {
    fn default() -> Self {
        BaseSpec {
            disk_mib: 384,
            root_label: "cloudimg-rootfs".into(),
            root_fs: "ext4".into(),
            extra: Vec::new(),
        }
    }
}

/// A partition of the fixture disk (1-based GPT entry number, byte range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub offset: u64,
    pub len: u64,
}

/// A base image in both forms.
#[derive(Debug, Clone)]
pub struct Base {
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    /// Partitions in on-disk order: 14, 15, 16, 1.
    pub parts: Vec<Part>,
}

impl Base {
    pub fn part(&self, number: u32) -> Part {
        *self.parts.iter().find(|p| p.number == number).expect("partition exists")
    }
}

/// One download as the fixture's server has it (the shared builder's, testkit/).
pub use imgbuild_testkit::mirror::Blob;

/// Everything a build test needs.
pub struct Fixture {
    /// Owns every file below; removed on drop.
    pub dir: tempfile::TempDir,
    pub server: Server,
    /// The test recipe (the embedded default with the stand-ins' digests).
    pub recipe: PathBuf,
    /// The test recipe as written.
    pub recipe_value: serde_yaml::Value,
    pub base: Base,
    /// Stand-in blobs by artifact name (amd64), plus "base".
    pub blobs: BTreeMap<String, Blob>,
    /// `--mirror` values that send every upstream URL to the server.
    pub mirrors: Vec<String>,
    /// A cache dir for builds (shared by builds of this fixture).
    pub cache: PathBuf,
    /// What a registry of the test world holds: the add-on test images and the charts
    /// published only in a registry (their blobs are in the cache already).
    pub images: Vec<imgbuild_testkit::mirror::ImageEntry>,
}

impl Fixture {
    /// The arguments every build needs: recipe, cache, mirrors.
    pub fn source_args(&self) -> Vec<String> {
        let mut a = vec![
            "--recipe".into(),
            self.recipe.display().to_string(),
            "--cache-dir".into(),
            self.cache.display().to_string(),
        ];
        for m in &self.mirrors {
            a.push("--mirror".into());
            a.push(m.clone());
        }
        a
    }

    /// The verified blobs of `plan` for library-level builds (no fetch involved): the
    /// base image and the stand-in of every artifact.
    pub fn fetched(&self, plan: &imgbuild::plan::BuildPlan) -> imgbuild::fetch::Fetched {
        let mut f = imgbuild::fetch::Fetched::default();
        f.insert(&plan.base, self.base.qcow2.clone());
        for a in &plan.artifacts {
            f.insert(a, self.blobs[&a.name].path.clone());
        }
        // The add-on images' blobs sit in the fixture's cache, under their digests.
        for i in plan.image_items() {
            f.insert(i, self.cache.join("sha256").join(i.sha256.as_str()));
        }
        f
    }

    /// Complete `plan`'s images from the fixture's cache, offline, as a build does.
    pub fn resolve_images(&self, plan: &mut imgbuild::plan::BuildPlan) {
        let cache = imgbuild::cache::Cache::open(Some(&self.cache)).unwrap();
        let offline = imgbuild::fetch::FetchOptions { offline: true, mirrors: Vec::new(), jobs: 1 };
        imgbuild::build::resolve_images(plan, &cache, &offline, &imgbuild::reporter::Reporter::silent())
            .unwrap();
    }
}

/// Run a command, panicking with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    // tests read these tools' messages: the same (untranslated) ones whatever the locale
    super::run_ok(cmd.env("PATH", path_with_sbin()).env("LC_ALL", "C"))
}

/// PATH plus /usr/sbin and /sbin (where e2fsprogs, sgdisk and mkfs.vfat live).
pub fn path_with_sbin() -> String {
    format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default())
}

/// `qemu-img convert` of `img` (any format qemu-img detects) to the raw image `raw`.
pub fn to_raw(img: &Path, raw: PathBuf) -> PathBuf {
    imgbuild_testkit::qemu::to_raw(img, None, raw)
}

/// `len` bytes of file `p` from offset `off`.
pub fn read_range(p: &Path, off: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).unwrap();
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

/// What debugfs prints for the request `req` on the file system `spec`
/// (`image?offset=N`), read-only.
pub fn debugfs(spec: &str, req: &str) -> String {
    String::from_utf8_lossy(&sh(Command::new("debugfs").arg("-R").arg(req).arg(spec)).stdout).into_owned()
}

/// `imgbuild inspect --json` of a built image, which must succeed: its manifest, each
/// file re-verified.
pub fn inspect(image: &Path) -> imgbuild::manifest::Manifest {
    let o =
        super::bin().env("PATH", path_with_sbin()).args(["inspect", "--json"]).arg(image).output().unwrap();
    assert!(o.status.success(), "inspect {}: {}", image.display(), super::stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

pub fn sha256_file(p: &Path) -> String {
    imgbuild_testkit::sha256_file(p).unwrap()
}

/// Build a base image of shape `spec` in `dir`.
pub fn make_base(dir: &Path, spec: &BaseSpec) -> Base {
    let raw = dir.join("base.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(spec.disk_mib << 20).unwrap();
    drop(f);
    sh(Command::new("sgdisk")
        .arg("-Z")
        .arg("-o")
        .args(["-n", "14:2048:+4M", "-t", "14:EF02"])
        .args(["-n", "15:0:+16M", "-t", "15:EF00"])
        .args(["-n", "16:0:+32M", "-t", "16:EA00"])
        .args(["-n", "1:0:0", "-t", "1:8300"])
        .arg(&raw));
    let parts = read_parts(&raw);
    let p = |n: u32| *parts.iter().find(|p| p.number == n).unwrap();

    // ESP: vfat labelled UEFI with a boot loader stand-in.
    let esp = p(15);
    sh(Command::new("mkfs.vfat")
        .args(["-F", "16", "-n", "UEFI", "--offset"])
        .arg((esp.offset / 512).to_string())
        .arg(&raw)
        .arg((esp.len / 1024).to_string()));
    let img = format!("{}@@{}", raw.display(), esp.offset);
    sh(Command::new("mmd").args(["-i", &img, "::/EFI", "::/EFI/BOOT", "::/EFI/ubuntu"]));
    let shim = dir.join("BOOTX64.EFI");
    std::fs::write(&shim, pseudo_random(b"shim", 200_000)).unwrap();
    sh(Command::new("mcopy").args(["-i", &img]).arg(&shim).arg("::/EFI/BOOT/BOOTX64.EFI"));

    // BOOT: ext4 with a kernel stand-in and grub.cfg.
    let boot_tree = dir.join("boot-tree");
    std::fs::create_dir_all(boot_tree.join("grub")).unwrap();
    std::fs::write(boot_tree.join("vmlinuz-6.8.0-41-generic"), pseudo_random(b"vmlinuz", 1_000_000)).unwrap();
    std::fs::write(boot_tree.join("grub/grub.cfg"), "search --label cloudimg-rootfs --set root\n").unwrap();
    mke2fs(&raw, p(16), "ext4", "BOOT", &boot_tree);

    // Root: noble-shaped tree.
    let root = dir.join("root-tree");
    let files: Vec<(String, Vec<u8>)> = vec![
        ("etc/os-release".into(), OS_RELEASE.into()),
        ("etc/hostname".into(), b"ubuntu\n".to_vec()),
        ("etc/fstab".into(), b"LABEL=cloudimg-rootfs\t/\text4\tdiscard,errors=remount-ro\t0 1\n".to_vec()),
        (
            "etc/ssh/sshd_config".into(),
            b"Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\n".to_vec(),
        ),
        ("var/lib/dpkg/status".into(), DPKG_STATUS.into()),
        (
            "usr/lib/systemd/system/ssh.service".into(),
            b"[Unit]\nDescription=OpenBSD Secure Shell server\n".to_vec(),
        ),
        ("usr/bin/true".into(), b"#!/bin/sh\nexit 0\n".to_vec()),
    ];
    for (p, b) in files.iter().chain(spec.extra.iter()) {
        let at = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, b).unwrap();
    }
    for d in [
        "etc/ssh/sshd_config.d",
        "etc/sysctl.d",
        "etc/modules-load.d",
        "etc/systemd/system/multi-user.target.wants",
        "usr/local/bin",
        "usr/local/sbin",
        "opt",
        "tmp",
        "var/log",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/ssh.service",
        root.join("etc/systemd/system/multi-user.target.wants/ssh.service"),
    )
    .unwrap();
    mke2fs(&raw, p(1), &spec.root_fs, &spec.root_label, &root);

    let qcow2 = imgbuild_testkit::qemu::convert(&raw, Some("raw"), "qcow2", "", dir.join("base.qcow2"));
    Base { raw, qcow2, parts }
}

fn mke2fs(raw: &Path, p: Part, fs: &str, label: &str, tree: &Path) {
    sh(Command::new("mke2fs")
        .args(["-q", "-F", "-t", fs, "-b", "4096", "-L", label, "-E"])
        .arg(format!("offset={}", p.offset))
        .arg("-d")
        .arg(tree)
        .arg(raw)
        .arg((p.len / 4096).to_string()));
}

/// Partitions of a raw disk in on-disk order, from `sfdisk --json`.
pub fn read_parts(raw: &Path) -> Vec<Part> {
    let out = sh(Command::new("sfdisk").arg("--json").arg(raw));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut parts: Vec<Part> = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            // "…/base.raw14" → 14
            let digits = &node[node.trim_end_matches(|c: char| c.is_ascii_digit()).len()..];
            Part {
                number: digits.parse().unwrap(),
                offset: p["start"].as_u64().unwrap() * 512,
                len: p["size"].as_u64().unwrap() * 512,
            }
        })
        .collect();
    parts.sort_by_key(|p| p.offset);
    parts
}

/// Deterministic filler bytes (incompressible enough for tests).
pub fn pseudo_random(seed: &[u8], len: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(seed).to_vec();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(len);
    out
}

/// The embedded default recipe.
pub fn default_recipe() -> serde_yaml::Value {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(src).unwrap()).unwrap()
}

/// Replace every add-on image of recipe `v` by a two-arch test image pinned by its index
/// digest, its blobs put in `cache` (as an earlier fetch would have left them).
pub fn seed_addon_images(v: &mut serde_yaml::Value, cache: &Path) {
    imgbuild_testkit::mirror::test_images(v, &cache.join("sha256"), None).unwrap();
}

/// The default fixture: noble-shaped base, all stand-ins, recipe, server.
pub fn noble_fixture() -> Fixture {
    fixture_with(&BaseSpec::default())
}

/// A fixture whose base has shape `spec`.
pub fn fixture_with(spec: &BaseSpec) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path(), spec);
    let cache = dir.path().join("cache");
    let opts = imgbuild_testkit::mirror::Options {
        standin: imgbuild_testkit::standin::Standin::PerName,
        real: BTreeMap::new(),
        // apt: Ubuntu packages need the archive; tests/apt.rs adds its own repository.
        packages: imgbuild_testkit::mirror::Packages::Remove,
        // oci: tags need a registry (tests/oci_*.rs run a real one): the node images are
        // left out, the add-on images become test images pinned by digest whose blobs are
        // already in the fixture's cache, as an earlier fetch would have left them, so every
        // build embeds them offline.
        image_blobs: cache.join("sha256"),
        images_json: None,
        keep_recipe_images: false,
        busybox: None,
        // The tests choose disk sizes themselves (the fixture bases are small).
        keep_disk_size: false,
        only_arch: false,
    };
    let m = imgbuild_testkit::mirror::make(&default_recipe(), &base.qcow2, &opts, &dir.path().join("mirror"))
        .unwrap();
    let server = Server::start();
    server.add_dir("/", m.www.clone());
    // One prefix rewrite per upstream host: https://HOST/ → http://127.0.0.1:PORT/HOST/.
    let mirrors = m
        .hosts
        .iter()
        .map(|h| format!("{h}/={}/{}/", server.base(), h.split_once("://").unwrap().1))
        .collect();
    Fixture {
        dir,
        server,
        recipe: m.recipe_path,
        recipe_value: m.recipe,
        base,
        blobs: m.blobs,
        mirrors,
        cache,
        images: m.images,
    }
}

/// Run `imgbuild build --role ROLE` against the fixture (its recipe, cache and
/// mirrors) with `extra` arguments. `--recipe` in `extra` replaces the fixture's
/// recipe; without `--output` in `extra` the output goes to `<fixture>/out`.
pub fn build(fx: &Fixture, role: &str, extra: &[&str]) -> Output {
    let mut c = super::bin();
    let mut source = fx.source_args();
    if extra.contains(&"--recipe") {
        // The caller's recipe replaces the fixture's.
        source.drain(..2);
    }
    c.env("PATH", path_with_sbin()).arg("build").args(["--role", role]).args(source).args(extra);
    if !extra.contains(&"--output") {
        c.arg("--output").arg(fx.dir.path().join("out"));
    }
    c.output().expect("running imgbuild")
}

impl Fixture {
    /// Serve `file` as the base image instead (at every base URL) and write a recipe
    /// pinning its digest; returns that recipe's path.
    pub fn recipe_with_base(&self, file: &Path) -> PathBuf {
        let sha = sha256_file(file);
        let mut v = self.recipe_value.clone();
        // The content-addressed cache keys by digest, so a new digest means a new URL
        // fetch: serve the new file at every base path.
        let version = v["base"]["version"].as_str().unwrap().to_string();
        for u in v["base"]["urls"].as_sequence().unwrap() {
            let url = u.as_str().unwrap().replace("{version}", &version).replace("{arch}", "amd64");
            self.server.add_file(url.trim_start_matches("https:/"), file.to_path_buf());
        }
        v["base"]["sha256"]["amd64"] = sha.clone().into();
        let dir = self.dir.path().join(format!("recipe-{}", &sha[..12]));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("recipe.yaml");
        std::fs::write(&p, serde_yaml::to_string(&v).unwrap()).unwrap();
        p
    }
}
