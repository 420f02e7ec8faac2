//! An upstream-shaped test world for `imgbuild build`: a small Ubuntu-noble-shaped
//! base image, stand-ins for every artifact, a recipe pinning their digests, and a
//! loopback HTTP server serving it all under upstream-shaped paths.
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

/// One stand-in download.
#[derive(Debug, Clone)]
pub struct Blob {
    pub path: PathBuf,
    pub sha256: String,
    /// Server path (the upstream URL without `https:/`).
    pub url_path: String,
}

/// Everything a build test needs.
pub struct Fixture {
    /// Owns every file below; removed on drop.
    pub dir: tempfile::TempDir,
    pub server: Server,
    /// The test recipe (the embedded default with the stand-ins' digests).
    pub recipe: PathBuf,
    pub base: Base,
    /// Stand-in blobs by artifact name (amd64), plus "base".
    pub blobs: BTreeMap<String, Blob>,
    /// `--mirror` values that send every upstream URL to the server.
    pub mirrors: Vec<String>,
    /// A cache dir for builds (shared by builds of this fixture).
    pub cache: PathBuf,
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
    let out = cmd.env("PATH", path_with_sbin()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// PATH plus /usr/sbin and /sbin (where e2fsprogs, sgdisk and mkfs.vfat live).
pub fn path_with_sbin() -> String {
    format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default())
}

pub fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(p).expect("read")))
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

    let qcow2 = dir.join("base.qcow2");
    sh(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2));
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

fn script(name: &str) -> Vec<u8> {
    format!("#!/bin/sh\n# imgbuild test stand-in for {name}\necho \"{name} stand-in\"\n").into_bytes()
}

/// A gzip tarball of `members` (path inside the archive, bytes), made with tar.
fn tarball(dir: &Path, name: &str, members: &[(&str, Vec<u8>)]) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    for (p, b) in members {
        let at = tree.join(p.trim_start_matches("./"));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, b).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = dir.join(name);
    let mut c = Command::new("tar");
    c.arg("-czf").arg(&out).arg("-C").arg(&tree).args(["--owner=0", "--group=0", "--numeric-owner"]);
    // cni-plugins lists its members as ./bridge etc.; the others without "./".
    if members.iter().all(|(p, _)| p.starts_with("./")) {
        c.arg(".");
    } else {
        let mut tops: Vec<&str> = members.iter().map(|(p, _)| p.split('/').next().unwrap()).collect();
        tops.dedup();
        c.args(tops);
    }
    sh(&mut c);
    out
}

/// The stand-in artifacts (amd64), shaped like the real downloads.
pub fn make_artifacts(dir: &Path) -> BTreeMap<String, PathBuf> {
    let d = dir.join("artifacts");
    std::fs::create_dir_all(&d).unwrap();
    let mut m = BTreeMap::new();
    for n in ["kubeadm", "kubelet", "kubectl", "runc"] {
        let p = d.join(n);
        std::fs::write(&p, script(n)).unwrap();
        m.insert(n.to_string(), p);
    }
    m.insert(
        "containerd".into(),
        tarball(
            &d,
            "containerd.tar.gz",
            &[
                ("bin/containerd", script("containerd")),
                ("bin/containerd-shim-runc-v2", script("containerd-shim-runc-v2")),
                ("bin/ctr", script("ctr")),
            ],
        ),
    );
    m.insert(
        "cni-plugins".into(),
        tarball(
            &d,
            "cni.tgz",
            &[
                ("./bridge", script("bridge")),
                ("./host-local", script("host-local")),
                ("./loopback", script("loopback")),
                ("./portmap", script("portmap")),
            ],
        ),
    );
    m.insert("crictl".into(), tarball(&d, "crictl.tgz", &[("crictl", script("crictl"))]));
    m.insert(
        "etcd".into(),
        tarball(
            &d,
            "etcd.tgz",
            &[
                ("etcd-v3.5.12-linux-amd64/etcd", script("etcd")),
                ("etcd-v3.5.12-linux-amd64/etcdctl", script("etcdctl")),
                ("etcd-v3.5.12-linux-amd64/etcdutl", script("etcdutl")),
            ],
        ),
    );
    m.insert("helm".into(), tarball(&d, "helm.tgz", &[("linux-amd64/helm", script("helm"))]));
    // Add-on Helm charts (control plane): minimal charts shaped like the real packages.
    for (name, version) in [("cilium", "1.16.1"), ("metrics-server", "3.12.2"), ("ingress-nginx", "4.11.5")] {
        let chart = format!("apiVersion: v2\nname: {name}\nversion: {version}\n");
        let member = format!("{name}/Chart.yaml");
        m.insert(
            name.into(),
            tarball(&d, &format!("{name}-{version}.tgz"), &[(member.as_str(), chart.into_bytes())]),
        );
    }
    m
}

/// The embedded default recipe with the amd64 digests of `blobs`.
pub fn make_recipe(dir: &Path, blobs: &BTreeMap<String, Blob>, cache: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml");
    let mut v: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    v["base"]["sha256"]["amd64"] = blobs["base"].sha256.clone().into();
    // apt: Ubuntu packages need the archive; tests/apt.rs adds its own repository.
    v.as_mapping_mut().unwrap().remove("packages");
    // oci: tags need a registry (tests/oci_*.rs run a real one); the add-on images become
    // small test images pinned by digest whose blobs are already in the fixture's cache,
    // as an earlier fetch would have left them, so every build embeds them offline.
    v.as_mapping_mut().unwrap().remove("images");
    seed_addon_images(&mut v, cache);
    // The tests choose disk sizes themselves (the fixture bases are small).
    v.as_mapping_mut().unwrap().remove("disk_size");
    for a in v["artifacts"].as_sequence_mut().unwrap() {
        let name = a["name"].as_str().unwrap().to_string();
        let Some(blob) = blobs.get(&name) else { continue }; // a lock-pinned profile chart
        a["sha256"]["amd64"] = blob.sha256.clone().into();
        // Stand-ins carry no cosign signature (tests/supply_verify.rs signs them with a
        // test CA and uses a recipe without this line).
        if a["urls"][0].as_str().unwrap().starts_with("https://dl.k8s.io/") {
            a.as_mapping_mut().unwrap().insert("signature".into(), "none".into());
        }
    }
    let p = dir.join("recipe.yaml");
    std::fs::write(&p, serde_yaml::to_string(&v).unwrap()).unwrap();
    p
}

/// Replace every add-on image of recipe `v` by a two-arch test image (one small layer
/// each, named after the reference) pinned by its index digest, its blobs put in `cache`.
pub fn seed_addon_images(v: &mut serde_yaml::Value, cache: &Path) {
    use super::registry::{image, layer, sha256};
    let dir = cache.join("sha256");
    std::fs::create_dir_all(&dir).unwrap();
    let put = |b: &[u8]| std::fs::write(dir.join(sha256(b).trim_start_matches("sha256:")), b).unwrap();
    for a in v["addons"].as_sequence_mut().unwrap() {
        for i in a["images"].as_sequence_mut().unwrap() {
            let name = i.as_str().unwrap().split('@').next().unwrap().to_string();
            let img = image(
                &[
                    ("amd64", vec![layer(&[("etc/image", format!("{name} amd64\n").as_bytes())])]),
                    ("arm64", vec![layer(&[("etc/image", format!("{name} arm64\n").as_bytes())])]),
                ],
                false,
                true,
            );
            put(&img.top);
            img.manifests.iter().for_each(|m| put(&m.bytes));
            img.blobs.iter().for_each(|b| put(b));
            *i = format!("{name}@{}", img.digest()).into();
        }
    }
}

/// The default fixture: noble-shaped base, all stand-ins, recipe, server.
pub fn noble_fixture() -> Fixture {
    fixture_with(&BaseSpec::default())
}

/// A fixture whose base has shape `spec`.
pub fn fixture_with(spec: &BaseSpec) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path(), spec);
    let server = Server::start();
    let recipe_src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml"),
    )
    .unwrap();
    let recipe_v: serde_yaml::Value = serde_yaml::from_str(&recipe_src).unwrap();
    let expand = |u: &str, name: &str, version: &str| {
        u.replace("{version}", version).replace("{arch}", "amd64").replace("{name}", name)
    };
    let mut blobs = BTreeMap::new();
    let mut serve = |name: &str, path: PathBuf, urls: &serde_yaml::Value, version: &str| {
        let mut first = None;
        for u in urls.as_sequence().unwrap() {
            let url = expand(u.as_str().unwrap(), name, version);
            let url_path = url.trim_start_matches("https:/").to_string();
            server.add_file(&url_path, path.clone());
            first.get_or_insert(url_path);
        }
        blobs.insert(name.to_string(), Blob { sha256: sha256_file(&path), path, url_path: first.unwrap() });
    };
    let b = &recipe_v["base"];
    serve("base", base.qcow2.clone(), &b["urls"], b["version"].as_str().unwrap());
    let mut arts = make_artifacts(dir.path());
    for a in recipe_v["artifacts"].as_sequence().unwrap() {
        let name = a["name"].as_str().unwrap();
        let version = a["version"].as_str().unwrap();
        if a["urls"].is_null() {
            continue; // a profile's chart, pinned by the lock: not in a build without --profile
        }
        // Add-on charts (the recipe's chart artifacts): a minimal chart package per name.
        let path = arts.entry(name.to_string()).or_insert_with(|| {
            let chart = format!("apiVersion: v2\nname: {name}\nversion: {version}\n").into_bytes();
            tarball(dir.path(), &format!("{name}.tgz"), &[(&format!("{name}/Chart.yaml"), chart)])
        });
        serve(name, path.clone(), &a["urls"], version);
    }
    let cache = dir.path().join("cache");
    let recipe = make_recipe(dir.path(), &blobs, &cache);
    // One prefix rewrite per upstream host: https://HOST/ → http://127.0.0.1:PORT/HOST/.
    let mut hosts: Vec<String> = blobs
        .values()
        .map(|b| b.url_path.trim_start_matches('/').split('/').next().unwrap().to_string())
        .collect();
    hosts.extend(
        base_paths_of(&recipe_v)
            .iter()
            .map(|p| p.trim_start_matches('/').split('/').next().unwrap().to_string()),
    );
    hosts.sort();
    hosts.dedup();
    let mirrors = hosts.iter().map(|h| format!("https://{h}/={}/{h}/", server.base())).collect();
    Fixture { dir, server, recipe, base, blobs, mirrors, cache }
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
        let mut blobs = self.blobs.clone();
        let sha = sha256_file(file);
        blobs.get_mut("base").unwrap().sha256 = sha.clone();
        // The content-addressed cache keys by digest, so a new digest means a new URL
        // fetch: serve the new file at every base path.
        for p in base_paths(self) {
            self.server.add_file(&p, file.to_path_buf());
        }
        let dir = self.dir.path().join(format!("recipe-{}", &sha[..12]));
        std::fs::create_dir_all(&dir).unwrap();
        make_recipe(&dir, &blobs, &self.cache)
    }
}

fn base_paths(_fx: &Fixture) -> Vec<String> {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml"),
    )
    .unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&src).unwrap();
    base_paths_of(&v)
}

fn base_paths_of(v: &serde_yaml::Value) -> Vec<String> {
    let version = v["base"]["version"].as_str().unwrap();
    v["base"]["urls"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|u| {
            u.as_str()
                .unwrap()
                .replace("{version}", version)
                .replace("{arch}", "amd64")
                .trim_start_matches("https:/")
                .to_string()
        })
        .collect()
}
