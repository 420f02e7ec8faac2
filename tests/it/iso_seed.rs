//! The ISO 9660 seed writer against real readers: whatever imgbuild writes, xorriso
//! (libisofs), isoinfo (genisoimage) and blkid read back as the same files — through
//! the Rock Ridge tree, the Joliet tree and the plain ISO 9660 tree — and read it the
//! way they read the same files put into an ISO by xorriso itself.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use imgbuild::cloudinit::iso::{self, IsoFile};

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().is_ok_and(|o| o.status.success())
}

/// The readers this test needs: required in CI, else skipped with a loud note.
fn readers() -> bool {
    let missing: Vec<&str> =
        ["xorriso", "osirrox", "isoinfo", "blkid"].into_iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{missing:?} required in CI; ci/test.sh installs them");
    eprintln!("note: SKIPPING the ISO reader equivalence test: {missing:?} not installed");
    false
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// name -> bytes, as osirrox extracts the image (Rock Ridge names).
fn extract(img: &Path, to: &Path) -> BTreeMap<String, Vec<u8>> {
    run(Command::new("osirrox").arg("-indev").arg(img).arg("-extract").arg("/").arg(to));
    fs::read_dir(to)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Names and sizes of `isoinfo -l` with the given tree option ("-R", "-J" or none).
fn listing(img: &Path, tree: Option<&str>) -> Vec<(String, u64)> {
    let mut c = Command::new("isoinfo");
    c.args(tree).arg("-l").arg("-i").arg(img);
    let out = String::from_utf8(run(&mut c)).unwrap();
    let mut v: Vec<(String, u64)> = out
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // mode links uid gid size month day year [ extent flags ] name; Joliet names
            // carry the version (";1") as mkisofs writes them or not as xorriso does
            let name = f.last().unwrap();
            (name.strip_suffix(";1").unwrap_or(name).to_string(), f[4].parse().unwrap())
        })
        .collect();
    v.sort();
    v
}

fn check(files: &[(&str, Vec<u8>)]) {
    let t = tempfile::tempdir().unwrap();
    let ours = t.path().join("ours.iso");
    let list: Vec<IsoFile> = files.iter().map(|(n, d)| IsoFile { name: n, data: d }).collect();
    let img = iso::image("cidata", &list, 1_704_067_200).unwrap();
    fs::write(&ours, &img).unwrap();

    // The reference: xorriso writing the same files (mkisofs emulation, Joliet + Rock Ridge).
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for (n, d) in files {
        fs::write(src.join(n), d).unwrap();
    }
    let theirs = t.path().join("theirs.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-rock", "-o"])
        .arg(&theirs)
        .arg(&src));

    let want: BTreeMap<String, Vec<u8>> = files.iter().map(|(n, d)| (n.to_string(), d.clone())).collect();
    assert_eq!(extract(&ours, &t.path().join("x-ours")), want, "osirrox reads other files");
    assert_eq!(extract(&theirs, &t.path().join("x-theirs")), want, "the reference differs");

    // isoinfo over each tree: the same names and sizes as xorriso's own image gives.
    for tree in [Some("-R"), Some("-J"), None] {
        assert_eq!(listing(&ours, tree), listing(&theirs, tree), "isoinfo {tree:?}");
    }
    for (n, d) in files {
        let r = run(Command::new("isoinfo").args(["-R", "-x", &format!("/{n}"), "-i"]).arg(&ours));
        assert_eq!(&r, d, "isoinfo -R -x {n}");
        let j = run(Command::new("isoinfo").args(["-J", "-x", &format!("/{n};1"), "-i"]).arg(&ours));
        assert_eq!(&j, d, "isoinfo -J -x {n}");
    }
    let d = String::from_utf8(run(Command::new("isoinfo").arg("-d").arg("-i").arg(&ours))).unwrap();
    assert!(d.contains("Volume id: cidata") && d.contains("Joliet with UCS level 3 found"), "{d}");
    assert!(d.contains("Rock Ridge signatures version 1 found"), "{d}");
    // xorriso over the Joliet tree alone (Rock Ridge off)
    let o = Command::new("xorriso")
        .args(["-read_fs", "norock", "-joliet", "on", "-indev"])
        .arg(&ours)
        .args(["-ls", "--"])
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&o.stdout);
    for (n, _) in files {
        assert!(ls.contains(&format!("'{n}'")), "xorriso Joliet: {n} missing in {ls}");
    }
    let b = String::from_utf8(run(Command::new("blkid").arg("-p").arg(&ours))).unwrap();
    assert!(b.contains("LABEL=\"cidata\"") && b.contains("TYPE=\"iso9660\""), "{b}");
}

#[test]
fn readers_see_what_xorriso_images_show() {
    if !readers() {
        return;
    }
    let body =
        |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect() };
    // a node's seed
    check(&[
        ("user-data", b"#cloud-config\nruncmd: [true]\n".repeat(500)),
        ("meta-data", b"instance-id: demo-cp-1\nlocal-hostname: demo-cp-1\n".to_vec()),
        ("network-config", b"version: 2\nethernets: {}\n".to_vec()),
        ("vendor-data", b"#cloud-config\n{}\n".to_vec()),
    ]);
    // sector edges, an empty file, a larger file, dotted names
    check(&[
        ("empty", Vec::new()),
        ("sector", body(2048, 1)),
        ("sectorplus", body(2049, 2)),
        ("big.bin", body(3 << 20, 3)),
        ("a.tar.gz", body(10, 4)),
    ]);
    // a root directory longer than one sector
    let many: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| (format!("f{i:03}-a-long-name-to-fill-the-directory"), body(i * 100, i as u8)))
        .collect();
    let many: Vec<(&str, Vec<u8>)> = many.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    check(&many);
}
