//! qemu-img: base → raw working copy, raw → vhdx, with options fixed and random
//! identifiers replaced so the same raw bytes always give the same output bytes.

use std::path::Path;

use super::{BaseFormat, DiskError};
use crate::tools::{self, Tool};
use crate::types::OutFormat;

/// qemu-img's creation options for vhdx (the one output format qemu-img still writes),
/// spelled out rather than left to qemu-img's defaults, which may change between
/// versions: dynamic, 32 MiB blocks.
const VHDX_OPTIONS: &str = "subformat=dynamic,block_size=33554432";

/// Run a tool found through [`tools::find`], failing with its stderr.
pub(crate) fn run(tool: &Tool, args: &[&std::ffi::OsStr]) -> Result<std::process::Output, DiskError> {
    let exe = tools::find(tool).map_err(|e| DiskError::Tool { tool: tool.name, msg: e.to_string() })?;
    let out = super::interrupt::command(exe)
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

/// Convert the finished raw image to `fmt` (vhdx: every other format is written by
/// this crate, [`super::formats::write_stream`]) at `dst`. `seed` (the build's inputs
/// digest) replaces the random identifiers qemu-img writes, so same inputs give the
/// same bytes.
pub fn convert_out(raw: &Path, fmt: OutFormat, dst: &Path, seed: &str) -> Result<(), DiskError> {
    if fmt != OutFormat::Vhdx {
        return Err(DiskError::Tool { tool: "qemu-img", msg: format!("{fmt} is not written by qemu-img") });
    }
    let args: [&std::ffi::OsStr; 9] = [
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "vhdx".as_ref(),
        "-o".as_ref(),
        VHDX_OPTIONS.as_ref(),
        raw.as_os_str(),
        dst.as_os_str(),
    ];
    run(&tools::QEMU_IMG, &args)?;
    fix_vhdx_ids(dst, seed)
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

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// A GUID-sized identifier derived from `seed` and `what`.
pub(crate) fn derived_id(seed: &str, what: &str) -> [u8; 16] {
    let d = crate::types::Sha256::of(format!("{seed}\n{what}").as_bytes());
    let mut id = [0u8; 16];
    if let Ok(b) = hex::decode(&d.as_str()[..32]) {
        id.copy_from_slice(&b);
    }
    // RFC 4122 version 4 / variant bits, so the value still looks like a UUID.
    id[7] = (id[7] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// qemu-img gives every VHDX random GUIDs: the two headers' FileWriteGuid and
/// DataWriteGuid, the log entries written while creating it, and the virtual disk
/// id (Page 83 metadata). Replace them with values derived from `seed` (headers:
/// checksums recomputed; the log is inactive, LogGuid being zero, so it is cleared).
fn fix_vhdx_ids(path: &Path, seed: &str) -> Result<(), DiskError> {
    use std::os::unix::fs::FileExt;
    let corrupt = |msg: &str| DiskError::Corrupt { path: path.display().to_string(), msg: msg.into() };
    let io = |c: &str| DiskError::io(format!("{c} {}", path.display()));
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io("opening"))?;
    let mut log: Option<(u64, u64)> = None;
    let mut heads = Vec::new();
    for at in [64 * 1024u64, 128 * 1024] {
        let mut h = vec![0u8; 4096];
        f.read_exact_at(&mut h, at).map_err(io("reading VHDX header of"))?;
        if &h[..4] != b"head" {
            return Err(corrupt("VHDX header signature missing"));
        }
        heads.push((at, h));
    }
    // Sequence numbers start at a random value too; keep their order (the higher
    // one marks the current header) but make them 1 and 2.
    let current = if u64::from_le_bytes(heads[0].1[8..16].try_into().unwrap_or_default())
        >= u64::from_le_bytes(heads[1].1[8..16].try_into().unwrap_or_default())
    {
        0
    } else {
        1
    };
    for (i, (at, mut h)) in heads.into_iter().enumerate() {
        let seq: u64 = if i == current { 2 } else { 1 };
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        if h[48..64].iter().any(|&b| b != 0) {
            return Err(corrupt("VHDX has an active log"));
        }
        h[16..32].copy_from_slice(&derived_id(seed, "vhdx FileWriteGuid"));
        h[32..48].copy_from_slice(&derived_id(seed, "vhdx DataWriteGuid"));
        h[4..8].copy_from_slice(&[0; 4]);
        let crc = CRC32C.checksum(&h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&h, at).map_err(io("writing VHDX header of"))?;
        let len = u32::from_le_bytes([h[68], h[69], h[70], h[71]]) as u64;
        let off = u64::from_le_bytes(h[72..80].try_into().unwrap_or_default());
        log = Some((off, len));
    }
    if let Some((off, len)) = log.filter(|&(o, l)| o >= 1 << 20 && l <= 64 << 20) {
        f.write_all_at(&vec![0u8; len as usize], off).map_err(io("clearing the VHDX log of"))?;
    }
    // Region table → metadata region → Page 83 item (the virtual disk id).
    const METADATA_REGION: [u8; 16] =
        [0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E];
    const PAGE83: [u8; 16] =
        [0xAB, 0x12, 0xCA, 0xBE, 0xE6, 0xB2, 0x23, 0x45, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46];
    let mut rt = vec![0u8; 64 * 1024];
    f.read_exact_at(&mut rt, 192 * 1024).map_err(io("reading VHDX region table of"))?;
    if &rt[..4] != b"regi" {
        return Err(corrupt("VHDX region table signature missing"));
    }
    let n = u32::from_le_bytes([rt[8], rt[9], rt[10], rt[11]]).min(2047) as usize;
    let meta = (0..n).map(|i| &rt[16 + i * 32..48 + i * 32]).find(|e| e[..16] == METADATA_REGION);
    let Some(meta) = meta else { return Err(corrupt("VHDX without a metadata region")) };
    let moff = u64::from_le_bytes(meta[16..24].try_into().unwrap_or_default());
    let mut mt = vec![0u8; 64 * 1024];
    f.read_exact_at(&mut mt, moff).map_err(io("reading VHDX metadata table of"))?;
    if &mt[..8] != b"metadata" {
        return Err(corrupt("VHDX metadata table signature missing"));
    }
    let n = u16::from_le_bytes([mt[10], mt[11]]).min(2047) as usize;
    for e in (0..n).map(|i| &mt[32 + i * 32..64 + i * 32]) {
        if e[..16] == PAGE83 {
            let item = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as u64;
            f.write_all_at(&derived_id(seed, "vhdx Page83"), moff + item)
                .map_err(io("writing VHDX disk id of"))?;
        }
    }
    f.sync_all().map_err(io("syncing"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// qemu-img's random identifiers are replaced: two conversions of the same raw
    /// bytes are identical, and qemu-img still accepts them.
    #[test]
    fn vhdx_conversion_is_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("in.raw");
        let mut bytes = vec![0u8; 8 << 20];
        bytes[510] = 0x55;
        bytes[511] = 0xaa;
        bytes[3 << 20..(3 << 20) + 5].copy_from_slice(b"hello");
        std::fs::write(&raw, &bytes).unwrap();
        let (a, b) = (d.path().join("a.vhdx"), d.path().join("b.vhdx"));
        convert_out(&raw, OutFormat::Vhdx, &a, "seed").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        convert_out(&raw, OutFormat::Vhdx, &b, "seed").unwrap();
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let diff: Vec<usize> = (0..x.len().min(y.len())).filter(|&i| x[i] != y[i]).take(8).collect();
        assert!(x == y, "differs at {diff:?}");
        let out = std::process::Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vhdx"])
            .arg(&raw)
            .arg(&a)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(convert_out(&raw, OutFormat::Vmdk, &a, "seed").is_err());
    }
}
