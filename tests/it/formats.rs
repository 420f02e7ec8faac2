//! `imgbuild build --format vmdk|vhdx|vhd|ova` from the noble-shaped fixture: two
//! builds give the same bytes, qemu-img accepts every output, the OVA's descriptor is
//! valid XML naming the right disk, and `inspect` reads every format.
use crate::common::{self, stderr};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::fixture::{self, sh};
use imgbuild_testkit::qemu;

const STEM: &str = "ubuntu-24.04-k8s-v1.30.3-worker-amd64";
/// `source_date_epoch` of the embedded recipe the fixture copies.
const SDE: u64 = 1724198400;

fn build(fx: &fixture::Fixture, format: &str, out: &Path) -> PathBuf {
    let o = fixture::build(fx, "worker", &["--format", format, "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{format}: {}", stderr(&o));
    let image = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert_eq!(image, out.join(format!("{STEM}.{format}")));
    image
}

/// Members of a tar in order: name → (header, bytes).
fn tar_members(p: &Path) -> Vec<(String, tar::Header, Vec<u8>)> {
    let mut ar = tar::Archive::new(std::fs::File::open(p).unwrap());
    let mut v = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header().clone();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        v.push((name, h, b));
    }
    v
}

#[test]
fn every_format_builds_reproducibly_and_qemu_img_reads_it() {
    let fx = fixture::noble_fixture();
    let (a, b) = (fx.dir.path().join("a"), fx.dir.path().join("b"));
    let mut images = BTreeMap::new();
    for format in ["vmdk", "vhdx", "vhd", "ova"] {
        let x = build(&fx, format, &a.join(format));
        let y = build(&fx, format, &b.join(format));
        assert_eq!(fixture::sha256_file(&x), fixture::sha256_file(&y), "{format}: two builds differ");
        let sidecar = std::fs::read_to_string(x.with_file_name(format!("{STEM}.{format}.sha256"))).unwrap();
        assert_eq!(sidecar, format!("{}  {STEM}.{format}\n", fixture::sha256_file(&x)));
        std::fs::remove_dir_all(b.join(format)).unwrap();
        images.insert(format, x);
    }
    let reference = build(&fx, "qcow2", &a.join("qcow2"));
    let vsize = qemu::info(&reference, Some("qcow2"))["virtual-size"].as_u64().unwrap();

    // vmdk: streamOptimized on an LSI Logic adapter, same guest bytes as the qcow2.
    let vmdk = &images["vmdk"];
    let info = qemu::info(vmdk, Some("vmdk"));
    assert_eq!(info["format-specific"]["data"]["create-type"], "streamOptimized", "{info}");
    assert_eq!(info["virtual-size"].as_u64(), Some(vsize));
    qemu::check(vmdk, "vmdk");
    qemu::same_guest(&reference, "qcow2", vmdk, "vmdk");

    // vhdx: qemu-img finds the format by its magic (no -f), dynamic with 32 MiB blocks.
    let vhdx = &images["vhdx"];
    let info = qemu::info(vhdx, None);
    assert_eq!(info["format"], "vhdx", "{info}");
    assert_eq!(info["cluster-size"].as_u64(), Some(32 << 20), "{info}");
    assert_eq!(qemu::info(vhdx, Some("vhdx"))["virtual-size"].as_u64(), Some(vsize));
    qemu::check(vhdx, "vhdx");
    qemu::same_guest(&reference, "qcow2", vhdx, "vhdx");

    // vhd: fixed (the disk, then a 512-byte footer), whole MiB, footer checksum valid.
    let vhd = &images["vhd"];
    let info = qemu::info(vhd, Some("vpc"));
    assert_eq!(info["virtual-size"].as_u64(), Some(vsize));
    assert_eq!(vsize % (1 << 20), 0);
    assert_eq!(std::fs::metadata(vhd).unwrap().len(), vsize + 512);
    let bytes = std::fs::read(vhd).unwrap();
    let foot = &bytes[vsize as usize..];
    assert_eq!(&foot[..8], b"conectix");
    assert_eq!(u32::from_be_bytes(foot[60..64].try_into().unwrap()), 2, "disk type fixed");
    assert_eq!(u64::from_be_bytes(foot[48..56].try_into().unwrap()), vsize, "current size");
    assert_eq!(u32::from_be_bytes(foot[24..28].try_into().unwrap()) as u64, SDE - 946_684_800);
    let sum =
        foot.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).map(|(_, &b)| b as u32).sum::<u32>();
    assert_eq!(u32::from_be_bytes(foot[64..68].try_into().unwrap()), !sum, "footer checksum");
    drop(bytes);
    qemu::check(vhd, "vpc");
    qemu::same_guest(&reference, "qcow2", vhd, "vpc");

    // ova: .ovf first, then .mf, then the vmdk; fixed headers; the OVF names the disk.
    let ova = &images["ova"];
    let members = tar_members(ova);
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    let disk_name = format!("{STEM}-disk1.vmdk");
    assert_eq!(names, [format!("{STEM}.ovf"), format!("{STEM}.mf"), disk_name.clone()]);
    for (name, h, _) in &members {
        assert!(h.as_ustar().is_some(), "{name}: not a ustar header");
        assert_eq!(
            (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap()),
            (SDE, 0, 0, 0o644),
            "{name}"
        );
    }
    let disk = &members[2].2;
    let extracted = fx.dir.path().join(&disk_name);
    std::fs::write(&extracted, disk).unwrap();
    let info = qemu::info(&extracted, Some("vmdk"));
    assert_eq!(info["format-specific"]["data"]["create-type"], "streamOptimized", "{info}");
    qemu::check(&extracted, "vmdk");
    qemu::same_guest(&reference, "qcow2", &extracted, "vmdk");

    let ovf_text = std::str::from_utf8(&members[0].2).unwrap();
    let doc = roxmltree::Document::parse(ovf_text).unwrap();
    const OVF: &str = "http://schemas.dmtf.org/ovf/envelope/1";
    const RASD: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
    let env = doc.root_element();
    assert!(env.has_tag_name((OVF, "Envelope")));
    let el = |name: &str| doc.descendants().filter(move |n| n.has_tag_name((OVF, name))).collect::<Vec<_>>();
    let files = el("File");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].attribute((OVF, "href")), Some(disk_name.as_str()));
    assert_eq!(files[0].attribute((OVF, "size")), Some(disk.len().to_string().as_str()));
    let disks = el("Disk");
    assert_eq!(disks.len(), 1);
    let d = disks[0];
    assert_eq!(d.attribute((OVF, "capacity")), Some(vsize.to_string().as_str()));
    assert_eq!(d.attribute((OVF, "capacityAllocationUnits")), Some("byte"));
    assert_eq!(d.attribute((OVF, "fileRef")), files[0].attribute((OVF, "id")));
    assert_eq!(
        d.attribute((OVF, "format")),
        Some("http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized")
    );
    let os = el("OperatingSystemSection");
    assert_eq!(os[0].attribute(("http://www.vmware.com/schema/ovf", "osType")), Some("ubuntu64Guest"));
    // Virtual hardware: CPU (3), memory (4), SCSI controller (6), NIC (10), and the disk
    // (17) on that controller, pointing at the Disk element.
    let items: Vec<BTreeMap<String, String>> = el("Item")
        .iter()
        .map(|i| {
            i.children()
                .filter(|c| c.tag_name().namespace() == Some(RASD))
                .map(|c| (c.tag_name().name().to_string(), c.text().unwrap_or("").to_string()))
                .collect()
        })
        .collect();
    let by_type = |t: &str| items.iter().find(|i| i["ResourceType"] == t).unwrap_or_else(|| panic!("no {t}"));
    assert!(by_type("3")["VirtualQuantity"].parse::<u32>().unwrap() >= 2);
    assert!(by_type("4")["VirtualQuantity"].parse::<u32>().unwrap() >= 2048);
    assert_eq!(by_type("6")["ResourceSubType"], "lsilogic");
    assert_eq!(by_type("10")["ResourceSubType"], "E1000");
    let hd = by_type("17");
    assert_eq!(hd["Parent"], by_type("6")["InstanceID"]);
    assert_eq!(hd["HostResource"], format!("ovf:/disk/{}", d.attribute((OVF, "diskId")).unwrap()));
    // The manifest's SHA256 lines match the members.
    let mf = std::str::from_utf8(&members[1].2).unwrap();
    for (name, _, data) in [&members[0], &members[2]] {
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
        assert!(mf.contains(&format!("SHA256({name})= {sha}\n")), "{mf}");
    }
    std::fs::remove_file(&extracted).unwrap();

    // inspect reads the manifest out of every format.
    for (format, image) in &images {
        let ins = common::bin()
            .env("PATH", fixture::path_with_sbin())
            .args(["inspect", "--json"])
            .arg(image)
            .output()
            .unwrap();
        assert!(ins.status.success(), "inspect {format}: {}", stderr(&ins));
        let m: imgbuild::manifest::Manifest = serde_json::from_slice(&ins.stdout).unwrap();
        assert_eq!(m.role, "worker", "{format}");
    }
    // verify: the checksum sidecar, the in-image manifest and the sidecar manifest.
    let v = common::bin().env("PATH", fixture::path_with_sbin()).arg("verify").arg(ova).output().unwrap();
    assert!(v.status.success(), "verify ova: {}", stderr(&v));
}

/// A base whose size is not a whole MiB: `--format vhd` grows the disk (and its GPT)
/// to the next MiB, as Azure requires.
#[test]
fn vhd_of_an_unaligned_base_is_rounded_up_to_a_mib() {
    let fx = fixture::noble_fixture();
    let base = fx.dir.path().join("odd.raw");
    std::fs::copy(&fx.base.raw, &base).unwrap();
    let len = std::fs::metadata(&base).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&base).unwrap().set_len(len + 64 * 1024).unwrap();
    // Move the backup GPT to the new end, so the base is a well-formed disk.
    sh(Command::new("sgdisk").arg("-e").arg(&base));
    let recipe = fx.recipe_with_base(&base);
    let out = fx.dir.path().join("out-vhd");
    let o = fixture::build(
        &fx,
        "worker",
        &["--recipe", recipe.to_str().unwrap(), "--format", "vhd", "--output", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let vhd = out.join(format!("{STEM}.vhd"));
    let vsize = qemu::info(&vhd, Some("vpc"))["virtual-size"].as_u64().unwrap();
    assert_eq!(vsize, (len + 64 * 1024).div_ceil(1 << 20) << 20);
    assert!(stderr(&o).contains("a VHD must be a whole number of MiB"), "{}", stderr(&o));
    // The grown GPT is valid: its backup header sits at the new last sector.
    let raw = fx.dir.path().join("vhd.raw");
    qemu::to_raw(&vhd, Some("vpc"), raw.clone());
    let v = sh(Command::new("sgdisk").arg("-v").arg(&raw));
    assert!(String::from_utf8_lossy(&v.stdout).contains("No problems found"), "{v:?}");
}

/// inspect on a tar that is not an OVA (no .ovf first) is refused as bad input.
#[test]
fn inspect_refuses_a_tar_that_is_not_an_ova() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.ova");
    let mut t = tar::Builder::new(std::fs::File::create(&p).unwrap());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, "disk.vmdk", &b"abc"[..]).unwrap();
    t.into_inner().unwrap();
    let o = common::bin().arg("inspect").arg(&p).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not an OVA"), "{}", stderr(&o));
}

/// Two files hold the same bytes (compared a MiB at a time).
fn same_bytes(a: &Path, b: &Path, what: &str) {
    let (la, lb) = (std::fs::metadata(a).unwrap().len(), std::fs::metadata(b).unwrap().len());
    assert_eq!(la, lb, "{what}: sizes differ");
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    while at < la {
        let n = (la - at).min(1 << 20) as usize;
        fa.read_exact(&mut x[..n]).unwrap();
        fb.read_exact(&mut y[..n]).unwrap();
        assert!(x[..n] == y[..n], "{what}: bytes differ in the MiB at {at}");
        at += n as u64;
    }
}

/// The streamed writers hold exactly the qcow2 build's disk: `qemu-img convert -O raw`
/// of the vmdk (alone and inside the OVA), of the vhd and of the vhdx byte-equals the
/// raw of the qcow2 build of the same inputs, on the fast path (a qcow2 base read in
/// place: no raw working copy) and on the raw working copy path (a raw base: other
/// inputs, so its own qcow2 reference), and `qemu-img check` finds every qcow2, vmdk
/// and vhdx clean.
#[test]
fn streamed_formats_hold_the_qcow2_builds_disk_on_both_paths() {
    let fx = fixture::noble_fixture();
    let d = fx.dir.path();
    let disk_of = |format: &str, img: &Path, tag: &str| -> PathBuf {
        let dir = d.join(format!("raw-{tag}-{format}"));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = |fmt: &str, img: &Path| {
            let name = format!("{}.raw", img.file_name().unwrap().to_string_lossy());
            qemu::to_raw(img, Some(fmt), dir.join(name))
        };
        match format {
            "qcow2" | "vmdk" | "vhdx" => {
                qemu::check(img, format);
                raw(format, img)
            }
            "vhd" => raw("vpc", img),
            _ => {
                // GNU tar reads the archive as the tar crate does, without a warning.
                let t = sh(Command::new("tar").arg("-tvf").arg(img));
                assert!(t.stderr.is_empty(), "{}", stderr(&t));
                assert_eq!(String::from_utf8_lossy(&t.stdout).lines().count(), 3);
                let members = tar_members(img);
                let vmdk = dir.join(&members[2].0);
                std::fs::write(&vmdk, &members[2].2).unwrap();
                qemu::check(&vmdk, "vmdk");
                raw("vmdk", &vmdk)
            }
        }
    };
    // The fast path first: recipe_with_base serves the raw base at the same URLs.
    for (tag, log) in
        [("fast", "base read in place"), ("slow", "converting base (raw) to a raw working copy")]
    {
        let recipe = (tag == "slow").then(|| fx.recipe_with_base(&fx.base.raw));
        let mut want = None;
        for format in ["qcow2", "vmdk", "vhd", "vhdx", "ova"] {
            let out = d.join(format!("{tag}-{format}"));
            let mut args = vec!["--format", format, "--output", out.to_str().unwrap()];
            if let Some(r) = &recipe {
                args.extend(["--recipe", r.to_str().unwrap()]);
            }
            let o = fixture::build(&fx, "worker", &args);
            assert!(o.status.success(), "{tag} {format}: {}", stderr(&o));
            assert!(stderr(&o).contains(log), "{tag} {format}: {}", stderr(&o));
            // The fast path's vhd hashes the disk before the root partition ahead of
            // the stream; the sidecar below shows the digest went on from there.
            let ahead = stderr(&o).contains("hashed while the layer was composed");
            assert_eq!(ahead, tag == "fast" && format == "vhd", "{tag} {format}: {}", stderr(&o));
            let img = out.join(format!("{STEM}.{format}"));
            let sum = std::fs::read_to_string(out.join(format!("{STEM}.{format}.sha256"))).unwrap();
            assert_eq!(sum, format!("{}  {STEM}.{format}\n", fixture::sha256_file(&img)), "{tag} {format}");
            let raw = disk_of(format, &img, tag);
            match &want {
                None => want = Some(raw),
                Some(w) => {
                    same_bytes(&raw, w, &format!("{format} ({tag} path)"));
                    std::fs::remove_file(raw).unwrap();
                }
            }
            std::fs::remove_dir_all(out).unwrap();
        }
    }
}

/// A vmdk (or OVA) holds at most 2 TiB, a vhdx 64 TiB: a larger --disk-size is refused
/// as bad input before the disk is grown or anything is written.
#[test]
fn disks_past_a_formats_limit_are_refused() {
    let fx = fixture::noble_fixture();
    for (format, size, max) in [("vmdk", "3T", "2 TiB"), ("ova", "3T", "2 TiB"), ("vhdx", "65T", "64 TiB")] {
        let out = fx.dir.path().join(format!("big-{format}"));
        let o = fixture::build(
            &fx,
            "worker",
            &["--format", format, "--disk-size", size, "--output", out.to_str().unwrap()],
        );
        assert_eq!(o.status.code(), Some(2), "{format}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("at most {max}")), "{format}: {}", stderr(&o));
        assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "{format}: output left");
    }
}
