//! Writing a node's files and its NoCloud seed (volume label `cidata`): ISO 9660
//! ([`super::iso`]) or FAT (`fatfs`), both in memory, both byte-reproducible.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::iso::{self, IsoFile};
use super::render::Rendered;
use super::{CloudInitError, SeedKind};
use crate::cluster::pki::write_private_with;

/// Timestamp of everything inside an ISO seed (2024-01-01T00:00:00Z).
const SEED_EPOCH: i64 = 1_704_067_200;

/// Largest vendor-data accepted (cloud-init keeps it in memory, as do we, per node).
pub const MAX_VENDOR_DATA: u64 = 1 << 20;

fn io(what: String) -> impl FnOnce(std::io::Error) -> CloudInitError {
    move |e| CloudInitError::Io(what, e)
}

/// The vendor-data file given with `--vendor-data`, at most [`MAX_VENDOR_DATA`] bytes.
pub fn read_vendor_data(p: &Path) -> Result<Vec<u8>, CloudInitError> {
    let f = fs::File::open(p).map_err(io(format!("reading {}", p.display())))?;
    let mut v = Vec::new();
    f.take(MAX_VENDOR_DATA + 1).read_to_end(&mut v).map_err(io(format!("reading {}", p.display())))?;
    if v.len() as u64 > MAX_VENDOR_DATA {
        return Err(CloudInitError::Invalid(format!(
            "{} is larger than {} KiB; vendor-data that large is not a NoCloud seed's job",
            p.display(),
            MAX_VENDOR_DATA >> 10
        )));
    }
    Ok(v)
}

/// The seed's files, in the names NoCloud reads.
fn names<'a>(r: &'a Rendered, vendor: Option<&'a [u8]>) -> Vec<(&'static str, &'a [u8])> {
    let mut v = vec![("user-data", r.user_data.as_bytes()), ("meta-data", r.meta_data.as_bytes())];
    if let Some(n) = &r.network_config {
        v.push(("network-config", n.as_bytes()));
    }
    if let Some(d) = vendor {
        v.push(("vendor-data", d));
    }
    v
}

fn write_node(out: &Path, r: &Rendered, kind: SeedKind, vendor: Option<&[u8]>) -> Result<(), CloudInitError> {
    let dir = out.join(&r.node);
    fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dir.display())))?;
    let map = |e: crate::cluster::ClusterError| CloudInitError::Seed(e.to_string());
    let files = names(r, vendor);
    for (name, body) in &files {
        write_private_with(&dir.join(name), body, false).map_err(map)?;
    }
    // a stale one from an earlier render would give the node a wrong address, or
    // vendor-data it was not asked for
    for (name, present) in [("network-config", r.network_config.is_some()), ("vendor-data", vendor.is_some())]
    {
        if !present {
            let _ = fs::remove_file(dir.join(name));
        }
    }
    // a seed of another kind from an earlier render would be stale
    for (k, f) in [(SeedKind::Iso, "seed.iso"), (SeedKind::Vfat, "seed.img")] {
        if k != kind {
            let _ = fs::remove_file(dir.join(f));
        }
    }
    let seed = match kind {
        SeedKind::None => return Ok(()),
        SeedKind::Vfat => ("seed.img", vfat(&r.node, &files)?),
        SeedKind::Iso => ("seed.iso", iso_seed(&files)?),
    };
    write_private_with(&dir.join(seed.0), &seed.1, false).map_err(map)
}

/// The ISO 9660 seed of these files (volume id `cidata`, fixed dates).
pub fn iso_seed(files: &[(&str, &[u8])]) -> Result<Vec<u8>, CloudInitError> {
    let files: Vec<IsoFile> = files.iter().map(|&(name, data)| IsoFile { name, data }).collect();
    iso::image("cidata", &files, SEED_EPOCH).map_err(|e| CloudInitError::Seed(e.to_string()))
}

/// A FAT12 image labelled CIDATA holding the node's files. Deterministic: fixed
/// volume id (from the node name) and the DOS epoch as every timestamp.
pub fn vfat(node: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>, CloudInitError> {
    // room for the files plus FAT overhead, in 64 KiB steps (128 KiB at least)
    let content: usize = files.iter().map(|(_, b)| b.len().div_ceil(4096) * 4096).sum();
    let size = (content + 64 * 1024).div_ceil(64 * 1024).max(2) * 64 * 1024;
    let mut disk = Cursor::new(vec![0u8; size]);
    let id = Sha256::digest(node.as_bytes());
    let volume_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    let e = |e: std::io::Error| CloudInitError::Seed(format!("writing FAT seed: {e}"));
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     ").volume_id(volume_id),
    )
    .map_err(e)?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).map_err(e)?;
        {
            let root = fs.root_dir();
            for (name, body) in files {
                let mut f = root.create_file(name).map_err(e)?;
                f.truncate().map_err(e)?;
                f.write_all(body).map_err(e)?;
                f.flush().map_err(e)?;
            }
        }
        fs.unmount().map_err(e)?;
    }
    Ok(disk.into_inner())
}

/// Write every node's directory (in parallel: the writes are small and many).
pub fn write_all(
    out: &Path,
    rendered: &[Rendered],
    kind: SeedKind,
    vendor: Option<&[u8]>,
) -> Result<(), CloudInitError> {
    fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 16);
    let chunk = rendered.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = rendered
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().try_for_each(|r| write_node(out, r, kind, vendor))))
            .collect();
        for h in hs {
            h.join().map_err(|_| CloudInitError::Seed("a writer thread panicked".into()))??;
        }
        Ok(())
    })
}
