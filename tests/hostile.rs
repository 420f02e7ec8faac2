//! Hostile and clumsy inputs, each one a defect that once crashed, hung or
//! succeeded wrongly: they must now end with a clear error and the right exit code
//! (2 for a bad input), within a time limit, leaving nothing behind.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fixture::{self, sh, Fixture};
use common::hostile;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run `c` and kill it after `limit`: a hang is a failure, not a stuck test.
fn run_limited(c: &mut Command, limit: Duration) -> Output {
    let mut child =
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("{c:?} still running after {limit:?} (killed): {}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn imgbuild() -> Command {
    let mut c = common::bin();
    c.env("PATH", fixture::path_with_sbin());
    c
}

/// A copy of the fixture's raw base, edited by `edit`, as raw and as qcow2.
fn edited_base(fx: &Fixture, name: &str, edit: impl Fn(&Path)) -> (PathBuf, PathBuf) {
    let raw = fx.dir.path().join(format!("{name}.raw"));
    std::fs::copy(&fx.base.raw, &raw).unwrap();
    edit(&raw);
    let qcow2 = fx.dir.path().join(format!("{name}.qcow2"));
    sh(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2));
    (raw, qcow2)
}

/// `imgbuild build` with `base` pinned and served; returns its output. Both the
/// fast path (qcow2 output) and the raw working copy path (raw output) run.
fn build_with_base(fx: &Fixture, base: &Path, format: &str) -> Output {
    let recipe = fx.recipe_with_base(base);
    let out = fx.dir.path().join(format!("out-{format}"));
    let o = run_limited(
        imgbuild()
            .args(["build", "--format", format, "--recipe", recipe.to_str().unwrap()])
            .args(["--cache-dir", fx.cache.to_str().unwrap(), "--output", out.to_str().unwrap()])
            .args(fx.mirrors.iter().flat_map(|m| ["--mirror", m.as_str()])),
        Duration::from_secs(120),
    );
    if o.status.code() != Some(0) {
        let left: Vec<_> =
            std::fs::read_dir(&out).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "a failed build left {left:?}");
    }
    o
}

fn assert_refused(o: &Output, what: &str, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(o));
    assert!(stderr(o).contains(needle), "{what}: {}", stderr(o));
}

/// A base whose disk `edit` broke is refused with exit 2 naming `needle` by both build
/// paths, instead of a panic (101), an endless loop or a copy of bytes from past the
/// end of the disk; nothing is left in the output directory.
fn base_is_refused(name: &str, edit: impl Fn(&Path, &Fixture), needle: &str) {
    let fx = fixture::noble_fixture();
    let (_, qcow2) = edited_base(&fx, name, |d| edit(d, &fx));
    for format in ["qcow2", "raw"] {
        let o = build_with_base(&fx, &qcow2, format);
        assert_refused(&o, &format!("{name} ({format})"), needle);
    }
}

/// Legal per UEFI, valid CRCs, but the kernel reads only 128-byte entries (this
/// panicked inside the `gpt` crate).
#[test]
fn base_with_256_byte_gpt_entries_is_refused() {
    base_is_refused("gpt-256", |d, _| hostile::gpt_entries_of_256_bytes(d), "128-byte entries");
}

#[test]
fn base_whose_root_partition_ends_past_the_disk_is_refused() {
    base_is_refused(
        "root-past-end",
        |d, _| hostile::gpt_partition_past_end(d, 1, 1 << 20),
        "partition 1 (LBA",
    );
}

/// The inode bitmap has 8 × 4096 bits: 65536 inodes per group indexed past it (panic).
#[test]
fn base_root_with_65536_inodes_per_group_is_refused() {
    base_is_refused(
        "ipg-65536",
        |d, fx| hostile::ext4_sb_u32(d, fx.base.part(1).offset, 0x28, 65536),
        "s_inodes_per_group 65536",
    );
}

/// s_first_data_block past the block count made the group count wrap (endless loop).
#[test]
fn base_root_with_first_data_block_past_its_end_is_refused() {
    base_is_refused(
        "first-data-block",
        |d, fx| hostile::ext4_sb_u32(d, fx.base.part(1).offset, 0x14, u32::MAX - 7),
        "s_first_data_block",
    );
}

/// The checkers read images people receive: a GPT they cannot read is exit 2 from
/// `inspect`, `verify` and `lint --image`, never a panic.
#[test]
fn checkers_refuse_a_gpt_with_256_byte_entries() {
    let fx = fixture::noble_fixture();
    let (raw, qcow2) = edited_base(&fx, "gpt-256", hostile::gpt_entries_of_256_bytes);
    for img in [&raw, &qcow2] {
        let o = run_limited(imgbuild().arg("inspect").arg(img), Duration::from_secs(60));
        assert_refused(&o, "inspect", "128-byte entries");
        // verify checks the sidecar first: give it a matching one.
        let sum = format!("{}  {}\n", fixture::sha256_file(img), img.file_name().unwrap().to_string_lossy());
        std::fs::write(format!("{}.sha256", img.display()), sum).unwrap();
        let d = imgbuild::manifest::Download {
            name: "b".into(),
            version: "1".into(),
            urls: vec![],
            sha256: "0".repeat(64),
        };
        let m = imgbuild::manifest::Manifest {
            imgbuild_version: "0".into(),
            recipe: "r".into(),
            recipe_digest: "0".repeat(64),
            role: "worker".into(),
            arch: "amd64".into(),
            kubernetes_version: "v1.30.3".into(),
            inputs_digest: "0".repeat(64),
            base: d,
            artifacts: vec![],
            files: vec![],
            signatures: vec![],
        };
        std::fs::write(img.with_extension("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let o = run_limited(imgbuild().arg("verify").arg(img), Duration::from_secs(60));
        assert_refused(&o, "verify", "128-byte entries");
    }
    let cluster = fx.dir.path().join("c");
    let o = imgbuild()
        .args(["cluster", "init", "--name", "demo", "--endpoint", "10.0.0.10:6443", "--external-lb"])
        .args(["--control-planes", "1", "--workers", "1", "--dir", cluster.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_limited(
        imgbuild()
            .args(["lint", "--cluster", cluster.join("cluster.yaml").to_str().unwrap(), "--image"])
            .arg(&raw),
        Duration::from_secs(60),
    );
    assert_refused(&o, "lint --image", "128-byte entries");
}
