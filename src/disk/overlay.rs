//! The build's fast path: the base qcow2 is read in place, only the root
//! filesystem's metadata is copied into a sparse partition-sized working file
//! ([`super::ext4meta`]), debugfs writes the layer into that copy, and the output qcow2
//! (or vmdk, ova, vhd, vhdx) is streamed in one pass from the base with the copy's data
//! extents laid over the root partition, hashed as it is written
//! ([`super::formats::write_stream`]). Each byte of the base is read once and written
//! once, which is what `qemu-img convert` alone costs.
//!
//! Growing the disk works here too, as on the raw path: the GPT regions are copied into
//! a sparse shadow of the disk and grown there ([`super::gpt::grow`]), the partition
//! copy is grown with resize2fs, and both are laid over the base.
//!
//! Used when the base is a qcow2 this crate reads and the output is not raw; raw
//! output and other bases take the raw working copy path.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::ext4::{self, Probe};
use super::formats::Stamp;
use super::gpt::{self, Partition};
use super::qcow2::{self, Reader};
use super::rootfs::{self, Backing, Placed, RootFs};
use super::DiskError;
use crate::types::OutFormat;

/// A prepared fast-path build.
#[derive(Debug)]
pub struct Overlay {
    pub root: RootFs,
    work: PathBuf,
    part: Partition,
    base: PathBuf,
    /// Virtual disk size of the output.
    size: u64,
    /// The grown GPT regions (a sparse file of the disk's new size), once grown.
    gpt: Option<PathBuf>,
    /// What the metadata copy holds.
    pub stats: super::ext4meta::Stats,
}

/// A file laid over the guest disk at an offset, with its data extents.
type Over = (File, u64, Vec<(u64, u64)>);

/// Why the fast path does not apply (the caller takes the raw working copy path).
pub type NotApplicable = String;

/// Open `base` (a qcow2), find the partition whose ext4 label is `label`, and copy
/// its metadata into `work`.
pub fn prepare(base: &Path, label: &str, work: &Path) -> Result<Result<Overlay, NotApplicable>, DiskError> {
    let io = |what: &str| DiskError::io(format!("{what} {}", base.display()));
    let reader = match Reader::open(base).map_err(io("reading"))? {
        Ok(r) => r,
        Err(qcow2::Unreadable::Unsupported(u)) => {
            return Ok(Err(format!("base qcow2 not read in place: {u}")))
        }
        // qemu-img refuses these too: no reason to fall back.
        Err(qcow2::Unreadable::Corrupt(msg)) => {
            return Err(DiskError::BadImage { path: base.display().to_string(), msg })
        }
    };
    // A GPT that does not pass is refused on either path: no reason to fall back.
    let parts = gpt::read_from(&reader, base)?;
    let mut root = None;
    for p in parts {
        let mut c = qcow2::Cursor { r: &reader, pos: 0 };
        match ext4::probe(&mut c, p.offset(), p.len()).map_err(io("reading"))? {
            Probe::Ext(sb) if sb.label == label && sb.is_ext4() && !sb.needs_recovery() => {
                root = Some(p);
                break;
            }
            // Refused on either path: no reason to fall back.
            Probe::BadExt(l, msg) if l == label => {
                return Err(DiskError::BadFs {
                    path: base.display().to_string(),
                    label: l,
                    part: p.number,
                    msg,
                })
            }
            _ => {}
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
    let size = reader.size();
    let root = RootFs::on_partition_copy(work, part.clone(), Backing { base: reader, offset: off })?;
    Ok(Ok(Overlay { root, work: work.to_path_buf(), part, base: base.to_path_buf(), size, gpt: None, stats }))
}

impl Overlay {
    /// The base the partition copy was made from (its reader, opened once in [`prepare`]).
    fn backing(&self) -> Result<&Backing, DiskError> {
        self.root.backing().ok_or_else(|| DiskError::Corrupt {
            path: self.work.display().to_string(),
            msg: "the partition copy has no base".into(),
        })
    }

    /// The virtual disk size of the output.
    pub fn disk_size(&self) -> u64 {
        self.size
    }

    /// Grow the disk to `new_len`: the GPT (in a shadow file under `workdir`) and the
    /// root partition (last on disk) with its filesystem, as the raw path does.
    pub fn grow(&mut self, new_len: u64, workdir: &Path, now: u64) -> Result<(), DiskError> {
        if new_len <= self.size {
            return Ok(());
        }
        let b = self.backing()?;
        let shadow = workdir.join("gpt.shadow");
        let io = |c: &str| DiskError::io(format!("{c} {}", shadow.display()));
        {
            let f = File::create(&shadow).map_err(io("creating"))?;
            f.set_len(self.size).map_err(io("sizing"))?;
            // The protective MBR, primary GPT and backup GPT live in the first and last
            // 64 KiB (128 entries of 128 bytes = 32 sectors each side).
            let span = (64 << 10).min(self.size);
            let mut buf = vec![0u8; span as usize];
            for at in [0, self.size - span] {
                b.base.read_at(&mut buf, at).map_err(io("reading the base's GPT for"))?;
                f.write_all_at(&buf, at).map_err(io("writing"))?;
            }
        }
        let grown = gpt::grow(&shadow, new_len, self.part.number)?;
        if grown.first_lba != self.part.first_lba {
            return Err(DiskError::Corrupt {
                path: self.base.display().to_string(),
                msg: "root moved".into(),
            });
        }
        {
            let f = std::fs::OpenOptions::new().write(true).open(&self.work).map_err(io("opening"))?;
            f.set_len(grown.len()).map_err(io("growing the partition copy for"))?;
        }
        super::rootfs::fsck_spec(&self.work.to_string_lossy())?;
        super::resize::resize2fs(&self.work, now)?;
        self.root.set_partition(grown.clone());
        self.root.refresh()?;
        self.part = grown;
        self.size = new_len;
        self.gpt = Some(shadow);
        Ok(())
    }

    /// Stream the output image to `out` in `fmt` (see
    /// [`super::formats::write_stream`]): the base with the copy's data extents over the
    /// root partition, and the bytes of the `placed` layer files (allocated by debugfs,
    /// never written into the copy) read from their sources into their blocks, hashed on
    /// the way and checked against `expected`. Returns the image's sha256.
    pub fn write(
        self,
        out: &Path,
        fmt: OutFormat,
        compress: bool,
        st: &Stamp,
        placed: &[Placed],
        expected: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, DiskError> {
        let io = |what: String| DiskError::io(what);
        let base = &self.backing()?.base;
        let work = File::open(&self.work).map_err(io(format!("opening {}", self.work.display())))?;
        let off = self.part.offset();
        // Layers over the base, later ones win: the grown GPT regions, then the
        // partition copy (the old backup GPT lies inside the grown partition).
        let mut layers: Vec<Over> = Vec::new();
        if let Some(g) = &self.gpt {
            let f = File::open(g).map_err(io(format!("opening {}", g.display())))?;
            let ext = super::sparse::data_extents(&f).map_err(io("mapping the GPT shadow".into()))?;
            layers.push((f, 0, ext));
        }
        let ext = super::sparse::data_extents(&work).map_err(io("mapping the partition copy".into()))?;
        layers.push((work, off, ext));
        // Last, the layer files' blocks: they may reuse blocks the copy still holds
        // data of (a file of the base the layer replaced).
        let bs = self.root.superblock().block_size;
        let pieces = pieces(placed, off, bs);
        // Every guest range some layer writes, sorted, for the allocation map.
        let mut ext: Vec<(u64, u64)> =
            layers.iter().flat_map(|(_, o, e)| e.iter().map(move |&(s, l)| (s + o, l))).collect();
        ext.extend(pieces.iter().map(|p| (p.guest, p.len)));
        ext.sort_unstable();
        let cs = 1u64 << qcow2::OUT_CLUSTER_BITS;
        let bcs = base.cluster_size();
        // Output clusters some base cluster or some layer extent touches: from the
        // allocation map and the extents, never a walk over the virtual size.
        let mut clusters: Vec<u64> = Vec::new();
        for b in base.allocated() {
            let (lo, hi) = (b * bcs, ((b + 1) * bcs).min(self.size));
            clusters.extend(lo / cs..hi.div_ceil(cs));
        }
        for &(s, l) in &ext {
            if l > 0 {
                clusters.extend(s / cs..(s + l).min(self.size).div_ceil(cs));
            }
        }
        clusters.sort_unstable();
        clusters.dedup();
        let mut next = vec![0usize; layers.len()];
        let mut files = Sources::new(placed);
        let mut pi = 0usize;
        let fill = |first: u64, n: u64, buf: &mut [u8]| -> std::io::Result<()> {
            let (lo, hi) = (first * cs, (first + n) * cs);
            if lo >= base.size() {
                buf.fill(0);
            } else if bcs == cs {
                base.read_clusters(first, n, buf)?;
            } else {
                base.read_at(buf, lo)?;
            }
            for (li, (f, o, ext)) in layers.iter().enumerate() {
                let e = &mut next[li];
                while *e < ext.len() && ext[*e].0 + ext[*e].1 + o <= lo {
                    *e += 1;
                }
                let mut k = *e;
                while k < ext.len() && ext[k].0 + o < hi {
                    let (s, t) = ((ext[k].0 + o).max(lo), (ext[k].0 + ext[k].1 + o).min(hi));
                    f.read_exact_at(&mut buf[(s - lo) as usize..(t - lo) as usize], s - o)?;
                    k += 1;
                }
            }
            while pi < pieces.len() && pieces[pi].guest + pieces[pi].len <= lo {
                pi += 1;
            }
            let mut k = pi;
            while k < pieces.len() && pieces[k].guest < hi {
                let p = &pieces[k];
                let (s, t) = (p.guest.max(lo), (p.guest + p.len).min(hi));
                files.read(p, s - p.guest, &mut buf[(s - lo) as usize..(t - lo) as usize])?;
                k += 1;
            }
            Ok(())
        };
        let sha = super::formats::write_stream(fmt, compress, out, st, self.size, &clusters, fill)?;
        files.check(expected)?;
        Ok(sha)
    }
}

/// A run of a layer file's blocks in the guest disk.
struct Piece {
    /// Guest byte offset and length (whole blocks).
    guest: u64,
    len: u64,
    /// Index into the placed files, and the file offset the run starts at.
    file: usize,
    at: u64,
}

/// The guest runs of the `placed` files of a filesystem at guest offset `off`, sorted.
fn pieces(placed: &[Placed], off: u64, bs: u64) -> Vec<Piece> {
    let mut v: Vec<Piece> = placed
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.extents.iter().map(move |&(l, b, n)| Piece {
                guest: off + b * bs,
                len: n * bs,
                file: i,
                at: l * bs,
            })
        })
        .collect();
    v.sort_unstable_by_key(|p| p.guest);
    v
}

/// The placed files' sources as the stream reads them: one open at a time, each hashed
/// while its bytes are read in file order.
struct Sources<'a> {
    placed: &'a [Placed],
    open: Option<(usize, File)>,
    hashes: Vec<sha2::Sha256>,
    /// Bytes hashed so far per file; `None` once a file was read out of order (its
    /// blocks are not in file order on disk): it is hashed again from its source.
    hashed: Vec<Option<u64>>,
}

impl<'a> Sources<'a> {
    fn new(placed: &'a [Placed]) -> Self {
        use sha2::Digest;
        Sources {
            placed,
            open: None,
            hashes: placed.iter().map(|_| sha2::Sha256::new()).collect(),
            hashed: vec![Some(0); placed.len()],
        }
    }

    /// Fill `buf` with the bytes of piece `p` from `skip` bytes into it: the file's
    /// bytes, zeros past its end.
    fn read(&mut self, p: &Piece, skip: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use sha2::Digest;
        let i = p.file;
        let placed = &self.placed[i];
        let at = p.at + skip;
        let data = (placed.size.saturating_sub(at) as usize).min(buf.len());
        if data > 0 {
            if self.open.as_ref().is_none_or(|(j, _)| *j != i) {
                let f = File::open(&placed.source).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("{}: opening {}: {e}", placed.path, placed.source.display()),
                    )
                })?;
                self.open = Some((i, f));
            }
            if let Some((_, f)) = &self.open {
                f.read_exact_at(&mut buf[..data], at).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("{}: reading {}: {e}", placed.path, placed.source.display()),
                    )
                })?;
            }
            self.hashed[i] = match self.hashed[i] {
                Some(n) if n == at => {
                    self.hashes[i].update(&buf[..data]);
                    Some(n + data as u64)
                }
                _ => None,
            };
        }
        buf[data..].fill(0);
        Ok(())
    }

    /// Every file's bytes as laid in hash to what the manifest records.
    fn check(self, expected: &dyn Fn(&str) -> Option<String>) -> Result<(), DiskError> {
        use sha2::Digest;
        for ((p, h), n) in self.placed.iter().zip(self.hashes).zip(self.hashed) {
            let actual = match n {
                Some(n) if n == p.size => hex::encode(h.finalize()),
                // Read out of order (or not at all): hash the source once more.
                _ => {
                    let mut f = File::open(&p.source).map_err(DiskError::io(format!(
                        "{}: opening {}",
                        p.path,
                        p.source.display()
                    )))?;
                    crate::types::Sha256::of_reader(&mut f, |_| {})
                        .map_err(DiskError::io(format!("{}: reading {}", p.path, p.source.display())))?
                        .0
                        .to_string()
                }
            };
            rootfs::check_digest(&p.path, &p.source, &actual, &expected(&p.path).unwrap_or_default())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's pieces come out with its bytes and a zeroed tail; read in file order
    /// they are hashed on the way, read out of order the source is hashed once more;
    /// either way a source that is not what the manifest says is exit 3.
    #[test]
    fn sources_are_read_hashed_and_checked() {
        use crate::exit::{Classify, Code};
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f");
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        // File blocks 0-1 at fs blocks 9-10, file block 2 at fs block 1 (first on disk).
        let placed =
            vec![Placed { path: "/f".into(), source: src, size: 3000, extents: vec![(0, 9, 2), (2, 1, 1)] }];
        let sha = crate::types::Sha256::of(&data).to_string();
        let ps = pieces(&placed, 4096, 1024);
        assert_eq!(ps.iter().map(|p| (p.guest, p.at)).collect::<Vec<_>>(), [(5120, 2048), (13312, 0)]);
        for in_file_order in [false, true] {
            let mut s = Sources::new(&placed);
            let order: Vec<&Piece> =
                if in_file_order { ps.iter().rev().collect() } else { ps.iter().collect() };
            for p in order {
                let mut buf = vec![0xFFu8; p.len as usize];
                s.read(p, 0, &mut buf).unwrap();
                let end = (p.at + p.len).min(3000);
                assert_eq!(&buf[..(end - p.at) as usize], &data[p.at as usize..end as usize]);
                assert!(buf[(end - p.at) as usize..].iter().all(|&b| b == 0));
            }
            assert_eq!(s.hashed[0].is_some(), in_file_order);
            s.check(&|_| Some(sha.clone())).unwrap();
        }
        let mut s = Sources::new(&placed);
        for p in ps.iter().rev() {
            s.read(p, 0, &mut vec![0u8; p.len as usize]).unwrap();
        }
        let e = s.check(&|_| Some("0".repeat(64))).unwrap_err();
        assert_eq!(e.code(), Code::Integrity, "{e}");
    }
}
