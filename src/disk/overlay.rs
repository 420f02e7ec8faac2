//! The build's fast path: the base qcow2 is read in place, only the root
//! filesystem's metadata is copied into a sparse partition-sized working file
//! ([`super::ext4meta`]), debugfs writes the layer into that copy, and the output qcow2
//! is streamed in one pass from the base with the copy's data extents laid over the
//! root partition, hashed as it is written ([`super::qcow2::write`]). Each byte of the
//! base is read once and written once, which is what `qemu-img convert` alone costs.
//!
//! Used when the base is a qcow2 this crate reads, the output is qcow2 and the disk
//! keeps its size; anything else (growing the disk moves filesystem blocks, other
//! output formats) takes the raw working copy path.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::ext4::{self, Probe};
use super::gpt::{self, Partition};
use super::qcow2::{self, Reader};
use super::rootfs::{Backing, RootFs};
use super::DiskError;

/// A prepared fast-path build.
#[derive(Debug)]
pub struct Overlay {
    pub root: RootFs,
    work: PathBuf,
    part: Partition,
    base: PathBuf,
    /// What the metadata copy holds.
    pub stats: super::ext4meta::Stats,
}

/// Why the fast path does not apply (the caller takes the raw working copy path).
pub type NotApplicable = String;

/// Open `base` (a qcow2), find the partition whose ext4 label is `label`, and copy
/// its metadata into `work`. `want_size`: the requested virtual disk size, if any.
pub fn prepare(
    base: &Path,
    label: &str,
    want_size: Option<u64>,
    work: &Path,
) -> Result<Result<Overlay, NotApplicable>, DiskError> {
    let io = |what: &str| DiskError::io(format!("{what} {}", base.display()));
    let reader = match Reader::open(base).map_err(io("reading"))? {
        Ok(r) => r,
        Err(u) => return Ok(Err(format!("base qcow2 not read in place: {u}"))),
    };
    if let Some(w) = want_size {
        if w != reader.size() {
            return Ok(Err("the disk is resized".into()));
        }
    }
    let parts = match gpt::read_from(qcow2::Cursor { r: &reader, pos: 0 }, base) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut root = None;
    for p in parts {
        let mut c = qcow2::Cursor { r: &reader, pos: 0 };
        if let Probe::Ext(sb) = ext4::probe(&mut c, p.offset()).map_err(io("reading"))? {
            if sb.label == label && sb.is_ext4() && !sb.needs_recovery() {
                root = Some(p);
                break;
            }
        }
    }
    // Errors about the root (missing, not ext4, …) come from the other path.
    let Some(part) = root else { return Ok(Err(format!("no clean ext4 labelled {label:?}"))) };
    let f = File::create(work).map_err(DiskError::io(format!("creating {}", work.display())))?;
    f.set_len(part.len()).map_err(DiskError::io("sizing the partition copy"))?;
    let off = part.offset();
    let read = |buf: &mut [u8], at: u64| reader.read_at(buf, off + at);
    let stats = match super::ext4meta::copy(&read, &f) {
        Ok(s) => s,
        Err(e) => {
            drop(f);
            let _ = std::fs::remove_file(work);
            return Ok(Err(format!("root filesystem metadata: {e}")));
        }
    };
    drop(f);
    let root = RootFs::on_partition_copy(work, part.clone(), Backing { base: reader, offset: off })?;
    Ok(Ok(Overlay { root, work: work.to_path_buf(), part, base: base.to_path_buf(), stats }))
}

impl Overlay {
    /// Stream the output qcow2 to `out`: the base with the copy's data extents over
    /// the root partition. Returns its sha256.
    pub fn write_qcow2(self, out: &Path) -> Result<String, DiskError> {
        let io = |what: String| DiskError::io(what);
        // The reader moved into the RootFs; a second handle keeps this simple.
        let base = match Reader::open(&self.base).map_err(io(format!("reading {}", self.base.display())))? {
            Ok(r) => r,
            Err(u) => return Err(DiskError::Corrupt { path: self.base.display().to_string(), msg: u.0 }),
        };
        let work = File::open(&self.work).map_err(io(format!("opening {}", self.work.display())))?;
        let off = self.part.offset();
        let ext: Vec<(u64, u64)> = super::sparse::data_extents(&work)
            .map_err(io("mapping the partition copy".into()))?
            .into_iter()
            .map(|(o, l)| (o + off, l))
            .collect();
        let cs = 1u64 << qcow2::OUT_CLUSTER_BITS;
        let bcs = base.cluster_size();
        let n = base.size().div_ceil(cs);
        let mut clusters = Vec::new();
        let mut e = 0usize;
        for g in 0..n {
            let (lo, hi) = (g * cs, (g + 1) * cs);
            let from_base = (lo / bcs..hi.div_ceil(bcs)).any(|b| base.loc(b) != qcow2::Loc::Zero);
            while e < ext.len() && ext[e].0 + ext[e].1 <= lo {
                e += 1;
            }
            let from_work = e < ext.len() && ext[e].0 < hi;
            if from_base || from_work {
                clusters.push(g);
            }
        }
        let mut e = 0usize;
        let sha = qcow2::write(out, base.size(), &clusters, |first, n, buf| {
            let (lo, hi) = (first * cs, (first + n) * cs);
            if bcs == cs {
                base.read_clusters(first, n, buf)?;
            } else {
                base.read_at(buf, lo)?;
            }
            while e < ext.len() && ext[e].0 + ext[e].1 <= lo {
                e += 1;
            }
            let mut k = e;
            while k < ext.len() && ext[k].0 < hi {
                let (s, t) = (ext[k].0.max(lo), (ext[k].0 + ext[k].1).min(hi));
                work.read_exact_at(&mut buf[(s - lo) as usize..(t - lo) as usize], s - off)?;
                k += 1;
            }
            Ok(())
        })
        .map_err(io(format!("writing {}", out.display())))?;
        Ok(sha)
    }
}
