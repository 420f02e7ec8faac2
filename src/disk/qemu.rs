//! qemu-img: base → raw working copy, raw → output format, with options fixed so
//! the same raw bytes always give the same output bytes.

use std::path::Path;
use std::process::Command;

use super::{BaseFormat, DiskError};
use crate::tools::{self, Tool};

/// Output formats of `imgbuild build --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vhdx,
}

impl OutFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            OutFormat::Qcow2 => "qcow2",
            OutFormat::Raw => "raw",
            OutFormat::Vmdk => "vmdk",
            OutFormat::Vhdx => "vhdx",
        }
    }

    /// Creation options spelled out (rather than qemu-img's defaults, which may change
    /// between versions): no compression, fixed cluster size, no preallocation.
    fn options(self) -> &'static str {
        match self {
            OutFormat::Qcow2 => "compat=1.1,cluster_size=65536,lazy_refcounts=off,preallocation=off",
            OutFormat::Raw => "preallocation=off",
            OutFormat::Vmdk => "subformat=monolithicSparse",
            OutFormat::Vhdx => "subformat=dynamic,block_size=33554432",
        }
    }
}

impl std::fmt::Display for OutFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Run a tool found through [`tools::find`], failing with its stderr.
pub(crate) fn run(tool: &Tool, args: &[&std::ffi::OsStr]) -> Result<std::process::Output, DiskError> {
    let exe = tools::find(tool).map_err(|e| DiskError::Tool { tool: tool.name, msg: e.to_string() })?;
    let out = Command::new(exe)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| DiskError::Tool { tool: tool.name, msg: format!("cannot run: {e}") })?;
    if !out.status.success() {
        return Err(DiskError::Tool {
            tool: tool.name,
            msg: format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status),
        });
    }
    Ok(out)
}

/// Convert the base image to a sparse raw file at `dst`.
pub fn to_raw(src: &Path, fmt: BaseFormat, dst: &Path) -> Result<(), DiskError> {
    run(
        &tools::QEMU_IMG,
        &[
            "convert".as_ref(),
            "-f".as_ref(),
            fmt.qemu_name().as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    )?;
    Ok(())
}

/// Convert the finished raw image to `fmt` at `dst`. `seed` (the build's inputs
/// digest) replaces the random identifiers some formats carry, so same inputs give
/// the same bytes.
pub fn convert_out(raw: &Path, fmt: OutFormat, dst: &Path, seed: &str) -> Result<(), DiskError> {
    run(
        &tools::QEMU_IMG,
        &[
            "convert".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-O".as_ref(),
            fmt.as_str().as_ref(),
            "-o".as_ref(),
            fmt.options().as_ref(),
            raw.as_os_str(),
            dst.as_os_str(),
        ],
    )?;
    if fmt == OutFormat::Vmdk {
        fix_vmdk_cid(dst, seed)?;
    }
    Ok(())
}

/// qemu-img writes a random content ID (`CID=xxxxxxxx`) into the embedded VMDK
/// descriptor; replace it with one derived from `seed` (same length, so nothing moves).
fn fix_vmdk_cid(path: &Path, seed: &str) -> Result<(), DiskError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(DiskError::io(format!("opening {}", path.display())))?;
    // The descriptor sits at sector 1 of a monolithicSparse file, well within 64 KiB.
    let mut head = vec![0u8; 65536];
    let n = f.read(&mut head).map_err(DiskError::io("reading vmdk header"))?;
    let head = &head[..n];
    let Some(at) = head.windows(4).position(|w| w == b"CID=") else {
        return Err(DiskError::Corrupt { path: path.display().to_string(), msg: "vmdk without CID".into() });
    };
    let cid = crate::recipe::Sha256::of(seed.as_bytes());
    f.seek(SeekFrom::Start((at + 4) as u64)).map_err(DiskError::io("seeking vmdk"))?;
    f.write_all(&cid.as_str().as_bytes()[..8]).map_err(DiskError::io("writing vmdk CID"))?;
    Ok(())
}

/// Virtual size in bytes, from `qemu-img info`.
pub fn virtual_size(path: &Path, fmt: &str) -> Result<u64, DiskError> {
    let out = run(
        &tools::QEMU_IMG,
        &["info".as_ref(), "-f".as_ref(), fmt.as_ref(), "--output=json".as_ref(), path.as_os_str()],
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| DiskError::Tool { tool: "qemu-img", msg: format!("bad info JSON: {e}") })?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| DiskError::Tool { tool: "qemu-img", msg: "info without virtual-size".into() })
}
