//! The disk half of `imgbuild build` at library level: a hand-built layer (the
//! stand-in artifacts installed as the recipe says, a unit and its enablement
//! symlink) written into the noble-shaped fixture base.
use crate::common;

use std::process::Command;

use crate::common::fixture::{self, debugfs, read_range, sh, Fixture};
use imgbuild::build::{build, Built, Compose, Step};
use imgbuild::layer::{Content, Entry, Kind};
use imgbuild::plan::{BuildPlan, PlanOptions};
use imgbuild::reporter::Reporter;
use imgbuild::types::{Arch, OutFormat, Role};
use imgbuild_testkit::qemu;

const UNIT: &str = "[Unit]\nDescription=containerd\n[Service]\nExecStart=/usr/local/bin/containerd\n\
[Install]\nWantedBy=multi-user.target\n";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/containerd.service";

/// Install every artifact the plan lists (tarball members extracted with tar), plus
/// a unit, its enablement symlink, a config replacing a base file and a non-root
/// owned file. The build seals it.
struct HandLayer;

impl Step for HandLayer {
    fn name(&self) -> &'static str {
        "hand-made layer"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> anyhow::Result<()> {
        let (plan, l, work) = (cx.plan, &mut cx.layer, cx.work);
        for a in &plan.artifacts {
            let blob = cx.fetched.get(a).unwrap().to_path_buf();
            let x = work.join(&a.name);
            if a.install.iter().any(|i| i.from.is_some()) {
                std::fs::create_dir_all(&x)?;
                sh(Command::new("tar").arg("-xzf").arg(&blob).arg("-C").arg(&x));
            }
            for i in &a.install {
                match i.from.as_deref() {
                    None => l.file(&i.to, Content::Path(blob.clone()), i.mode),
                    Some(from) if from.ends_with('*') => {
                        let dir = x.join(from.trim_end_matches('*'));
                        let mut names: Vec<_> =
                            std::fs::read_dir(&dir)?.map(|e| e.unwrap().file_name()).collect();
                        names.sort();
                        for n in names {
                            let to = format!("{}{}", i.to, n.to_string_lossy());
                            l.file(&to, Content::Path(dir.join(&n)), i.mode);
                        }
                    }
                    Some(from) => l.file(&i.to, Content::Path(x.join(from)), i.mode),
                }
            }
        }
        l.file("/etc/systemd/system/containerd.service", Content::Bytes(UNIT.into()), 0o644);
        l.symlink(WANTS, "/etc/systemd/system/containerd.service");
        l.file("/etc/hostname", Content::Bytes(b"node\n".to_vec()), 0o644);
        l.file(
            "/etc/ssh/sshd_config.d/60-imgbuild.conf",
            Content::Bytes(b"PasswordAuthentication no\n".to_vec()),
            0o600,
        );
        l.insert(
            "/var/lib/kubelet/owned",
            Entry { kind: Kind::File(Content::Bytes(b"x".to_vec())), mode: 0o640, uid: 1000, gid: 1000 },
        );
        Ok(())
    }
}

fn plan(fx: &Fixture, role: Role, format: OutFormat) -> BuildPlan {
    let r = imgbuild::recipe::load(Some(&fx.recipe)).unwrap();
    let o = PlanOptions { format, ..PlanOptions::new(role, Arch::Amd64) };
    BuildPlan::resolve(&r, &o).unwrap()
}

/// Build `plan` with the hand-made layer into `<fixture>/<out>`.
fn build_into(fx: &Fixture, plan: &BuildPlan, out: &str) -> Built {
    let steps: Vec<Box<dyn Step>> = vec![Box::new(HandLayer)];
    build(plan, &fx.fetched(plan), &fx.dir.path().join(out), &steps, &Reporter::silent()).unwrap()
}

#[test]
fn both_roles_write_every_layer_file_and_keep_other_partitions() {
    let fx = fixture::noble_fixture();
    for role in [Role::Worker, Role::ControlPlane] {
        let p = plan(&fx, role, OutFormat::Qcow2);
        let built = build_into(&fx, &p, &format!("out-{role}"));
        let out = &built.outputs;
        let names: Vec<String> = std::fs::read_dir(out.image.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let stem = format!("ubuntu-24.04-k8s-v1.30.3-{role}-amd64");
        for want in [
            format!("{stem}.qcow2"),
            format!("{stem}.manifest.json"),
            format!("{stem}.qcow2.sha256"),
            format!("{stem}.spdx.json"),
        ] {
            assert!(names.contains(&want), "{want} missing in {names:?}");
        }
        assert_eq!(names.len(), 4, "temp files left behind: {names:?}");
        qemu::check(&out.image, "qcow2");
        let sum = std::fs::read_to_string(&out.checksum).unwrap();
        assert_eq!(sum, format!("{}  {stem}.qcow2\n", fixture::sha256_file(&out.image)));

        let raw = fixture::to_raw(&out.image, fx.dir.path().join(format!("{stem}.qcow2.raw")));
        // Every partition but root is byte-identical to the base, and so is the GPT.
        for part in [14, 15, 16] {
            let pp = fx.base.part(part);
            assert!(
                read_range(&raw, pp.offset, pp.len) == read_range(&fx.base.raw, pp.offset, pp.len),
                "partition {part} changed"
            );
        }
        assert!(read_range(&raw, 0, 2048 * 512) == read_range(&fx.base.raw, 0, 2048 * 512), "GPT changed");
        let len = std::fs::metadata(&raw).unwrap().len();
        assert_eq!(len, std::fs::metadata(&fx.base.raw).unwrap().len());
        assert!(
            read_range(&raw, len - 34 * 512, 34 * 512) == read_range(&fx.base.raw, len - 34 * 512, 34 * 512),
            "backup GPT changed"
        );
        let root = fx.base.part(1);
        let spec = format!("{}?offset={}", raw.display(), root.offset);
        sh(Command::new("e2fsck").arg("-fn").arg(&spec));

        // Every manifest entry matches the filesystem (content, mode, owner, target).
        let m: imgbuild::manifest::Manifest =
            serde_json::from_slice(&std::fs::read(&out.manifest).unwrap()).unwrap();
        assert_eq!(m, built.manifest, "the sidecar is the sealed manifest");
        let inspected = imgbuild::inspect::inspect(&raw, "cloudimg-rootfs").unwrap();
        assert_eq!(inspected, m);
        let has = |p: &str| m.files.iter().any(|f| f.path == p);
        assert!(
            has("/usr/local/bin/kubelet") && has("/opt/cni/bin/bridge") && has("/usr/local/bin/containerd")
        );
        assert_eq!(has("/usr/local/bin/helm"), role == Role::ControlPlane);
        assert_eq!(has("/usr/local/bin/etcdctl"), role == Role::ControlPlane);

        // Independent look with debugfs: owner, mode, content, symlink resolution.
        let st = debugfs(&spec, "stat /var/lib/kubelet/owned");
        assert!(
            st.contains("Mode:  0640") && st.contains("User:  1000") && st.contains("Group:  1000"),
            "{st}"
        );
        let st = debugfs(&spec, "stat /usr/local/bin/kubelet");
        assert!(st.contains("Mode:  0755") && st.contains("User:     0"), "{st}");
        assert!(st.contains("mtime: 0x66c52e00"), "mtime is source_date_epoch: {st}");
        let kubelet = debugfs(&spec, "cat /usr/local/bin/kubelet");
        assert_eq!(kubelet.as_bytes(), std::fs::read(&fx.blobs["kubelet"].path).unwrap());
        assert_eq!(debugfs(&spec, "cat /etc/hostname"), "node\n");
        let link = debugfs(&spec, &format!("stat {WANTS}"));
        assert!(link.contains("Fast link dest: \"/etc/systemd/system/containerd.service\""), "{link}");
        assert_eq!(debugfs(&spec, &format!("cat {WANTS}")), "", "debugfs cat of a fast link prints nothing");
        assert_eq!(debugfs(&spec, "cat /etc/systemd/system/containerd.service"), UNIT, "link target exists");
        // The base's own files are still there.
        assert_eq!(debugfs(&spec, "cat /etc/os-release"), fixture::OS_RELEASE);
        std::fs::remove_file(&raw).unwrap();
    }
}

#[test]
fn two_builds_are_bit_identical_in_every_format() {
    let fx = fixture::noble_fixture();
    let q = build_into(&fx, &plan(&fx, Role::Worker, OutFormat::Qcow2), "q").outputs;
    for fmt in [OutFormat::Qcow2, OutFormat::Raw, OutFormat::Vmdk, OutFormat::Vhdx] {
        let p = plan(&fx, Role::Worker, fmt);
        let a = build_into(&fx, &p, &format!("a-{fmt}"));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = build_into(&fx, &p, &format!("b-{fmt}"));
        assert_eq!(a.image_sha256, b.image_sha256, "{fmt} differs between builds");
        let (a, b) = (a.outputs, b.outputs);
        if fmt != OutFormat::Raw {
            qemu::check(&a.image, fmt.as_str());
        }
        // Same guest content as the qcow2 build, whatever the container format.
        qemu::same_guest(&q.image, "qcow2", &a.image, fmt.as_str());
        assert_eq!(std::fs::read(&a.sbom).unwrap(), std::fs::read(&b.sbom).unwrap());
        assert_eq!(std::fs::read(&a.manifest).unwrap(), std::fs::read(&b.manifest).unwrap());
    }
}

#[test]
fn sbom_lists_base_and_artifacts_with_digests() {
    let fx = fixture::noble_fixture();
    let p = plan(&fx, Role::ControlPlane, OutFormat::Qcow2);
    let built = build_into(&fx, &p, "sbom");
    let out = &built.outputs;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out.sbom).unwrap()).unwrap();
    assert_eq!(v["spdxVersion"], "SPDX-2.3");
    assert_eq!(v["creationInfo"]["created"], "2024-08-21T00:00:00Z");
    let pkgs = v["packages"].as_array().unwrap();
    for item in p.items() {
        let pkg = pkgs
            .iter()
            .find(|x| x["name"] == item.name.as_str())
            .unwrap_or_else(|| panic!("{} missing", item.name));
        assert_eq!(pkg["checksums"][0]["checksumValue"], item.sha256.as_str());
        assert_eq!(pkg["versionInfo"], item.version.as_str());
        assert_eq!(pkg["downloadLocation"], item.urls[0].as_str());
    }
    let img = pkgs.iter().find(|x| x["SPDXID"] == "SPDXRef-Image").unwrap();
    assert_eq!(img["checksums"][0]["checksumValue"], built.image_sha256.as_str());

    // The reference validator (PyPI spdx-tools, installed by ci/test.sh).
    common::validate_spdx(&out.sbom);
}
