//! `--disk-size` and the recipe's `disk_size`: the disk grows offline, the backup GPT
//! moves to the new end, partition 1 (last on disk) and its ext4 fill the new space,
//! nothing else changes; a layer that does not fit grows the disk or fails clearly.
use crate::common::{self, stderr};
use imgbuild_testkit::qemu;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::fixture::{self, read_range, sh, BaseSpec, Fixture};

fn build_ok(fx: &Fixture, out: &str, extra: &[&str]) -> (PathBuf, String) {
    let dir = fx.dir.path().join(out);
    let mut args = vec!["--output", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = fixture::build(fx, "worker", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    (PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()), stderr(&o))
}

/// Check a grown image: GPT valid with partition 1 ending at the new end, ext4
/// clean and filling the partition, other partitions byte-identical to the base.
fn assert_grown(fx: &Fixture, image: &Path, size: u64) {
    assert_eq!(qemu::info(image, None)["virtual-size"].as_u64(), Some(size));
    let raw = qemu::to_raw(image, None, image.with_extension("grown.raw"));
    let verify = sh(Command::new("sgdisk").arg("-v").arg(&raw));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("No problems found"), "{:?}", verify);
    let parts = fixture::read_parts(&raw);
    let root = *parts.last().unwrap();
    assert_eq!(root.number, 1, "partition 1 stays last on disk");
    assert_eq!(root.offset, fx.base.part(1).offset, "partition 1 keeps its start");
    // Last usable LBA = sectors - 1 (backup header) - 32 (backup entry array) - 1.
    assert_eq!((root.offset + root.len) / 512 - 1, size / 512 - 34, "partition 1 ends at the new end");
    for n in [14, 15, 16] {
        let (a, b) = (fx.base.part(n), parts.iter().find(|p| p.number == n).copied().unwrap());
        assert_eq!(a, b, "partition {n} moved");
        assert!(
            read_range(&raw, a.offset, a.len) == read_range(&fx.base.raw, a.offset, a.len),
            "partition {n} changed"
        );
    }
    let spec = format!("{}?offset={}", raw.display(), root.offset);
    sh(Command::new("e2fsck").arg("-fn").arg(&spec));
    let sb = String::from_utf8_lossy(&sh(Command::new("dumpe2fs").arg("-h").arg(&spec)).stdout).into_owned();
    let blocks: u64 =
        sb.lines().find_map(|l| l.strip_prefix("Block count:")).unwrap().trim().parse().unwrap();
    assert_eq!(blocks, root.len / 4096, "the filesystem fills the partition");
    let ins = common::bin().env("PATH", fixture::path_with_sbin()).arg("inspect").arg(&raw).output().unwrap();
    assert!(ins.status.success(), "{}", stderr(&ins));
    std::fs::remove_file(&raw).unwrap();
}

#[test]
fn disk_size_8g_grows_gpt_partition_and_filesystem() {
    let fx = fixture::noble_fixture();
    let (image, _) = build_ok(&fx, "big", &["--disk-size", "8G"]);
    assert_grown(&fx, &image, 8 << 30);
}

#[test]
fn recipe_disk_size_is_the_default_and_bad_sizes_are_refused() {
    let fx = fixture::noble_fixture();
    let mut v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&fx.recipe).unwrap()).unwrap();
    v["disk_size"] = "1G".into();
    let recipe = fx.dir.path().join("sized.yaml");
    std::fs::write(&recipe, serde_yaml::to_string(&v).unwrap()).unwrap();
    let (image, _) = build_ok(&fx, "sized", &["--recipe", recipe.to_str().unwrap()]);
    assert_grown(&fx, &image, 1 << 30);
    // Growing is reproducible too (resize2fs runs with the pinned clock).
    let (again, _) = build_ok(&fx, "sized-again", &["--recipe", recipe.to_str().unwrap()]);
    assert_eq!(fixture::sha256_file(&image), fixture::sha256_file(&again));

    for (size, msg) in [("8X", "invalid disk size"), ("100M", "smaller than the base image")] {
        let out = fx.dir.path().join("bad");
        let o = fixture::build(&fx, "worker", &["--disk-size", size, "--output", out.to_str().unwrap()]);
        common::exits_with(&o, 2, msg);
    }
}

#[test]
fn a_layer_that_does_not_fit_grows_the_disk_or_names_disk_size() {
    // A 128 MiB disk whose root (75 MiB) is nearly full: the layer does not fit.
    let filler = fixture::pseudo_random(b"filler", 1 << 20).repeat(66);
    let spec = BaseSpec { disk_mib: 128, extra: vec![("var/filler".into(), filler)], ..Default::default() };
    let fx = fixture::fixture_with(&spec);

    let out = fx.dir.path().join("fixed");
    let o = fixture::build(&fx, "control-plane", &["--disk-size", "128M", "--output", out.to_str().unwrap()]);
    common::exits_with(&o, 2, "not enough free space in the root filesystem");
    assert!(stderr(&o).contains("--disk-size"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "a failed build leaves nothing behind");

    let dir = fx.dir.path().join("auto");
    let o = fixture::build(&fx, "control-plane", &["--output", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("growing the disk"), "{}", stderr(&o));
    let image = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let size = qemu::info(&image, None)["virtual-size"].as_u64().unwrap();
    assert!(size > 128 << 20);
    assert_grown(&fx, &image, size);
}
