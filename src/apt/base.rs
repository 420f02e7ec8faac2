//! Reading files of the base image for `imgbuild lock` (its `/var/lib/dpkg/status`).
//! Kept isolated on purpose: the disk module owns image access, and once it exposes a
//! root-filesystem reader this file shrinks to a call into it. Until then: the verified
//! base from the cache → `qemu-img convert` to raw → the GPT partition whose ext4 label
//! is the recipe's `root_label` → `debugfs -R 'cat PATH' 'raw?offset=N'` (rootless).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::AptError;
use crate::cache::Cache;
use crate::recipe::{Arch, BaseFormat, LoadedRecipe};

pub const STATUS: &str = "/var/lib/dpkg/status";

/// `/var/lib/dpkg/status` of the recipe's base image for `arch`, from the cache.
pub fn status_from_cache(lr: &LoadedRecipe, arch: Arch, cache: &Cache) -> Result<String, AptError> {
    let b = &lr.recipe.base;
    let sha = b
        .sha256
        .get(arch.as_str())
        .ok_or_else(|| AptError::Input(format!("base has no sha256 for {arch}")))?;
    let Some(blob) = cache.lookup(sha) else {
        return Err(AptError::Input(format!(
            "the base image for {arch} ({sha}) is not in the cache {}: run `imgbuild fetch --arch {arch}` \
             first, or pass --base-status FILE",
            cache.root().display()
        )));
    };
    let tmp = tempfile::tempdir().map_err(super::io("temp dir"))?;
    let raw = match b.format {
        BaseFormat::Raw => blob,
        BaseFormat::Qcow2 => {
            let raw = tmp.path().join("base.raw");
            run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&blob).arg(&raw))?;
            raw
        }
    };
    let img = RootFs::open(&raw, &b.root_label)?;
    let bytes = img.read_file(STATUS)?.ok_or_else(|| AptError::Format {
        what: format!("base image {sha}"),
        msg: format!("has no {STATUS}"),
    })?;
    String::from_utf8(bytes).map_err(|_| AptError::Format { what: STATUS.into(), msg: "not UTF-8".into() })
}

/// An ext4 root file system inside a raw disk image, read with debugfs.
pub struct RootFs {
    raw: PathBuf,
    offset: u64,
}

impl RootFs {
    /// Find the GPT partition (or a bare file system) labelled `label`.
    pub fn open(raw: &Path, label: &str) -> Result<RootFs, AptError> {
        let what = raw.display().to_string();
        let mut f = std::fs::File::open(raw).map_err(super::io(what.clone()))?;
        let mut offsets = vec![0u64];
        offsets.extend(gpt_partitions(&mut f).map_err(super::io(what.clone()))?);
        for off in offsets {
            if ext4_label(&mut f, off).map_err(super::io(what.clone()))?.as_deref() == Some(label) {
                return Ok(RootFs { raw: raw.to_path_buf(), offset: off });
            }
        }
        Err(AptError::Format { what, msg: format!("no ext4 file system labelled {label:?}") })
    }

    /// A file's bytes, `None` when it does not exist.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, AptError> {
        let spec = format!("{}?offset={}", self.raw.display(), self.offset);
        let out = Command::new("debugfs").args(["-R", &format!("cat \"{path}\""), &spec]).output().map_err(
            |e| AptError::Download { url: "debugfs".into(), msg: format!("cannot run debugfs: {e}") },
        )?;
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("File not found") {
            return Ok(None);
        }
        if !out.status.success() {
            return Err(AptError::Format {
                what: format!("debugfs cat {path}"),
                msg: err.trim().to_string(),
            });
        }
        Ok(Some(out.stdout))
    }
}

fn run(c: &mut Command) -> Result<(), AptError> {
    let out = c.output().map_err(|e| AptError::Download { url: format!("{c:?}"), msg: e.to_string() })?;
    if !out.status.success() {
        return Err(AptError::Format {
            what: format!("{c:?}"),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn read_at(f: &mut std::fs::File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(off))?;
    let mut b = vec![0u8; len];
    let n = f.read(&mut b)?;
    b.truncate(n);
    Ok(b)
}

/// Byte offsets of the GPT partitions (512-byte sectors), empty without a GPT.
fn gpt_partitions(f: &mut std::fs::File) -> std::io::Result<Vec<u64>> {
    let h = read_at(f, 512, 92)?;
    if h.len() < 92 || &h[..8] != b"EFI PART" {
        return Ok(Vec::new());
    }
    let u64le = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let u32le = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
    let (lba, n, size) = (u64le(&h, 72), u32le(&h, 80).min(256), u32le(&h, 84) as usize);
    if !(128..=4096).contains(&size) {
        return Ok(Vec::new());
    }
    let table = read_at(f, lba * 512, n as usize * size)?;
    Ok(table
        .chunks_exact(size)
        .filter(|e| e[..16].iter().any(|&b| b != 0))
        .map(|e| u64le(e, 32) * 512)
        .collect())
}

/// The volume label of an ext2/3/4 superblock at `off`, if there is one.
fn ext4_label(f: &mut std::fs::File, off: u64) -> std::io::Result<Option<String>> {
    let sb = read_at(f, off + 1024, 136)?;
    if sb.len() < 136 || sb[56..58] != [0x53, 0xEF] {
        return Ok(None);
    }
    let name = &sb[120..136];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(Some(String::from_utf8_lossy(&name[..end]).to_string()))
}
