//! Growing the disk offline: GPT moved to the new end, the last partition (root)
//! extended, its ext4 grown with resize2fs.
//!
//! resize2fs (like mke2fs) sizes the *file* it works on from the filesystem size and
//! ignores `?offset=`: run on `disk.raw?offset=N` it truncates the disk and destroys
//! the backup GPT. So the partition is copied out into a sparse file of its own,
//! resized there and copied back (data extents only, in the kernel).

use std::path::Path;

use super::gpt;
use super::rootfs::{fsck_spec, RootFs};
use super::sparse::copy_range;
use super::DiskError;
use crate::tools;

/// Grow the raw disk behind `root` to `new_len` bytes and its root filesystem to
/// fill the grown partition. `now` pins the superblock's write time.
pub fn grow(root: &mut RootFs, new_len: u64, workdir: &Path, now: u64) -> Result<(), DiskError> {
    let image = root.image().to_path_buf();
    let cur = std::fs::metadata(&image).map_err(DiskError::io("stat disk"))?.len();
    if new_len <= cur {
        return Ok(());
    }
    let old = root.partition().clone();
    let io = |c: &str| DiskError::io(c.to_string());
    let part_file = workdir.join("root-partition.img");
    {
        let disk = std::fs::File::open(&image).map_err(io("opening disk"))?;
        let pf = std::fs::File::create(&part_file).map_err(io("creating partition file"))?;
        pf.set_len(old.len()).map_err(io("sizing partition file"))?;
        copy_range(&disk, old.offset(), &pf, 0, old.len()).map_err(io("copying the root partition out"))?;
    }
    let grown = gpt::grow(&image, new_len, old.number)?;
    {
        let pf =
            std::fs::OpenOptions::new().write(true).open(&part_file).map_err(io("opening partition file"))?;
        pf.set_len(grown.len()).map_err(io("growing partition file"))?;
    }
    // -f: skip resize2fs's own "run e2fsck first" gate; the build checked the
    // filesystem with e2fsck -fn (read-only, so nothing changes) just before.
    fsck_spec(&part_file.to_string_lossy())?;
    resize2fs(&part_file, now)?;
    {
        let disk =
            std::fs::OpenOptions::new().read(true).write(true).open(&image).map_err(io("opening disk"))?;
        let pf = std::fs::File::open(&part_file).map_err(io("opening partition file"))?;
        copy_range(&pf, 0, &disk, grown.offset(), grown.len())
            .map_err(io("copying the root partition back"))?;
        disk.sync_all().map_err(io("syncing disk"))?;
    }
    let _ = std::fs::remove_file(&part_file);
    root.refresh()?;
    if root.partition().len() != grown.len() {
        return Err(DiskError::Corrupt {
            path: image.display().to_string(),
            msg: "partition did not grow".into(),
        });
    }
    Ok(())
}

/// `resize2fs -f FILE` (the filesystem fills the file), superblock times pinned to `now`.
pub fn resize2fs(file: &Path, now: u64) -> Result<(), DiskError> {
    let exe = tools::find(&tools::RESIZE2FS)
        .map_err(|e| DiskError::Tool { tool: "resize2fs", msg: e.to_string() })?;
    let out = super::interrupt::command(exe)
        .arg("-f")
        .arg(file)
        .env("LC_ALL", "C")
        .env("E2FSPROGS_FAKE_TIME", now.to_string())
        .output()
        .map_err(|e| DiskError::Tool { tool: "resize2fs", msg: format!("cannot run: {e}") })?;
    if !out.status.success() {
        return Err(DiskError::Tool {
            tool: "resize2fs",
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
