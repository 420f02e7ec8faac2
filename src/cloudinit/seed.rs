//! Writing a node's files and its NoCloud seed (volume label `cidata`).
//! ISO 9660 comes from genisoimage or xorriso; FAT is written here with `fatfs`.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::render::Rendered;
use super::{CloudInitError, SeedKind};
use crate::cluster::pki::write_private;
use crate::tools::{self, Tool};

pub const GENISOIMAGE: Tool = Tool {
    name: "genisoimage",
    hint: "sudo apt-get install -y genisoimage (or xorriso; or use --seed vfat)",
};
pub const XORRISO: Tool =
    Tool { name: "xorriso", hint: "sudo apt-get install -y xorriso (or use --seed vfat)" };

/// The ISO tool to use: genisoimage, else xorriso.
pub fn iso_tool() -> Result<PathBuf, CloudInitError> {
    tools::find(&GENISOIMAGE).or_else(|_| tools::find(&XORRISO)).map_err(|_| {
        CloudInitError::Seed(format!(
            "--seed iso needs genisoimage or xorriso on PATH; install one: {} (or use --seed vfat)",
            "sudo apt-get install -y genisoimage"
        ))
    })
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> CloudInitError {
    move |e| CloudInitError::Io(what, e)
}

fn names(r: &Rendered) -> Vec<(&'static str, &str)> {
    let mut v = vec![("user-data", r.user_data.as_str()), ("meta-data", r.meta_data.as_str())];
    if let Some(n) = &r.network_config {
        v.push(("network-config", n.as_str()));
    }
    v
}

fn write_node(out: &Path, r: &Rendered, kind: SeedKind, iso: Option<&Path>) -> Result<(), CloudInitError> {
    let dir = out.join(&r.node);
    fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dir.display())))?;
    let map = |e: crate::cluster::ClusterError| CloudInitError::Seed(e.to_string());
    for (name, body) in names(r) {
        write_private(&dir.join(name), body.as_bytes()).map_err(map)?;
    }
    if r.network_config.is_none() {
        // a stale one from an earlier render would give the node a wrong address
        let _ = fs::remove_file(dir.join("network-config"));
    }
    match kind {
        SeedKind::None => {}
        SeedKind::Vfat => write_private(&dir.join("seed.img"), &vfat(r)?).map_err(map)?,
        SeedKind::Iso => {
            let tool = iso.ok_or_else(|| CloudInitError::Seed("no ISO tool".into()))?;
            iso_image(tool, &dir, r)?
        }
    }
    Ok(())
}

fn iso_image(tool: &Path, dir: &Path, r: &Rendered) -> Result<(), CloudInitError> {
    let tmp = tempfile::Builder::new()
        .prefix(".seed-")
        .suffix(".iso")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io(format!("creating a temp file in {}", dir.display())))?;
    let files: Vec<&str> = names(r).into_iter().map(|(n, _)| n).collect();
    let is_xorriso = tool.file_name().is_some_and(|n| n.to_string_lossy().starts_with("xorriso"));
    let mut cmd = Command::new(tool);
    if is_xorriso {
        cmd.args(["-as", "mkisofs"]);
    }
    cmd.arg("-quiet").arg("-output").arg(tmp.path()).args(["-volid", "cidata", "-joliet", "-rock"]);
    cmd.args(&files).current_dir(dir);
    // fixed timestamps where the tool honours it (xorriso)
    cmd.env("SOURCE_DATE_EPOCH", "0");
    let o = cmd.output().map_err(io(format!("running {}", tool.display())))?;
    if !o.status.success() {
        return Err(CloudInitError::Seed(format!(
            "{} failed ({}): {}",
            tool.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    let dst = dir.join("seed.iso");
    tmp.persist(&dst).map_err(|e| CloudInitError::Io(format!("renaming to {}", dst.display()), e.error))?;
    Ok(())
}

/// A FAT12 image labelled CIDATA holding the node's files. Deterministic: fixed
/// volume id (from the node name) and the DOS epoch as every timestamp.
pub fn vfat(r: &Rendered) -> Result<Vec<u8>, CloudInitError> {
    let size = 512 * 1024;
    let mut disk = Cursor::new(vec![0u8; size]);
    let id = Sha256::digest(r.node.as_bytes());
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
            for (name, body) in names(r) {
                let mut f = root.create_file(name).map_err(e)?;
                f.truncate().map_err(e)?;
                f.write_all(body.as_bytes()).map_err(e)?;
                f.flush().map_err(e)?;
            }
        }
        fs.unmount().map_err(e)?;
    }
    Ok(disk.into_inner())
}

/// Write every node's directory (in parallel; ISO creation is a process per node).
pub fn write_all(
    out: &Path,
    rendered: &[Rendered],
    kind: SeedKind,
    iso: Option<&Path>,
) -> Result<(), CloudInitError> {
    fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 16);
    let chunk = rendered.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = rendered
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().try_for_each(|r| write_node(out, r, kind, iso))))
            .collect();
        for h in hs {
            h.join().map_err(|_| CloudInitError::Seed("a writer thread panicked".into()))??;
        }
        Ok(())
    })
}
