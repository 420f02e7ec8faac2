//! qcow2 without qemu-img, for the build's fast path: a reader for verified base
//! images (guest reads and the cluster allocation map) and a writer that streams a
//! fresh image in one pass while another thread hashes it. With these a build touches
//! each byte of the base once instead of three times (base → raw, raw → qcow2, hash).
//!
//! Only the subset qemu-img and cloud-image pipelines produce is read: version 2 or 3,
//! no backing file, no encryption, no external data file, no extended L2 entries,
//! no internal snapshots needed (they are ignored: the active L1 table is what the
//! guest sees). Deflate- and zstd-compressed clusters (Ubuntu's images are compressed)
//! are read. Anything else is reported as [`Unsupported`] so the caller can fall back
//! to qemu-img. The writer emits version 3, 64 KiB clusters, 16-bit refcounts, every
//! cluster referenced once: what `qemu-img check` calls clean.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// Why a qcow2 image is not read in place: outside the subset this module reads
/// (the caller falls back to qemu-img), or corrupt in a way qemu refuses too.
#[derive(Debug)]
pub enum Unreadable {
    Unsupported(String),
    Corrupt(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Unsupported(m) | Unreadable::Corrupt(m) => f.write_str(m),
        }
    }
}

/// Where a guest cluster's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// Reads as zeros (unallocated without a backing file, or the zero flag).
    Zero,
    /// Uncompressed, at this host offset.
    Data(u64),
    /// Compressed, `len` bytes at this host offset.
    Compressed { off: u64, len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Deflate,
    Zstd,
}

const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// qemu's limit on the active L1 table (`QCOW_MAX_L1_SIZE`, 32 MiB): larger tables
/// are refused by qemu, so no image a hypervisor can use has one.
const MAX_L1_BYTES: u64 = 32 << 20;
/// The largest virtual size the writer's L1 table can address within that limit: the
/// largest disk size imgbuild accepts.
pub const MAX_VIRTUAL_SIZE: u64 = (MAX_L1_BYTES / 8) * (OUT_CS / 8) * OUT_CS;
const _: () = assert!(MAX_VIRTUAL_SIZE == crate::types::size::MAX_BYTES);

/// A qcow2 image opened for reading.
#[derive(Debug)]
pub struct Reader {
    file: File,
    cluster_bits: u32,
    size: u64,
    codec: Codec,
    /// Per L1 entry of the active table: which of `tables` holds its L2 table.
    l2: Vec<Option<usize>>,
    /// Distinct L2 tables, loaded up front (8 bytes per cluster of guest). An image
    /// whose L1 entries share a table gets it once: memory stays within the file's size.
    tables: Vec<Vec<u64>>,
    /// The last decompressed cluster: guest reads smaller than a cluster come in runs.
    last: Mutex<Option<(u64, Vec<u8>)>>,
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    (be32(b, o) as u64) << 32 | be32(b, o + 4) as u64
}

impl Reader {
    /// Open `path`. `Ok(Err(..))`: an image not read in place (see [`Unreadable`]).
    pub fn open(path: &Path) -> std::io::Result<Result<Reader, Unreadable>> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut h = vec![0u8; 112];
        let n = read_upto(&file, &mut h, 0)?;
        let no = |m: &str| Ok(Err(Unreadable::Unsupported(m.to_string())));
        let corrupt = |m: String| Ok(Err(Unreadable::Corrupt(m)));
        if n < 72 || &h[..4] != b"QFI\xfb" {
            return no("not a qcow2 image");
        }
        let version = be32(&h, 4);
        if !(2..=3).contains(&version) {
            return no(&format!("qcow2 version {version}"));
        }
        if be64(&h, 8) != 0 {
            return no("has a backing file");
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return no(&format!("cluster_bits {cluster_bits}"));
        }
        if be32(&h, 32) != 0 {
            return no("encrypted");
        }
        let mut codec = Codec::Deflate;
        if version == 3 {
            if n < 104 {
                return corrupt(format!("a version 3 header needs 104 bytes, the file has {n}"));
            }
            let incompat = be64(&h, 72);
            // Bit 0 (dirty) only means refcounts may be stale; L1/L2 are still right.
            if incompat & !0b1001 != 0 {
                return no(&format!("incompatible features {incompat:#x}"));
            }
            if incompat & 0b1000 != 0 {
                let header_len = be32(&h, 100);
                codec = match (header_len > 104 && n > 104).then(|| h[104]) {
                    Some(0) | None => Codec::Deflate,
                    Some(1) => Codec::Zstd,
                    Some(t) => return no(&format!("compression type {t}")),
                };
            }
        }
        let size = be64(&h, 24);
        let l1_size = be32(&h, 36) as u64;
        let l1_off = be64(&h, 40);
        let cs = 1u64 << cluster_bits;
        let per_l2 = cs / 8;
        if size > MAX_VIRTUAL_SIZE {
            return no(&format!("virtual size {size} is larger than {MAX_VIRTUAL_SIZE}"));
        }
        let needed = size.div_ceil(cs * per_l2);
        if l1_size < needed || l1_size * 8 > MAX_L1_BYTES {
            return corrupt(format!("L1 table of {l1_size} entries for a virtual size of {size}"));
        }
        if l1_off % cs != 0 || l1_off.saturating_add(needed * 8) > file_len {
            return corrupt(format!("L1 table offset {l1_off:#x} is unaligned or past the end of the file"));
        }
        // Entries past what the virtual size needs are never read.
        let mut raw = vec![0u8; needed as usize * 8];
        file.read_exact_at(&mut raw, l1_off)?;
        let mut l2 = Vec::with_capacity(needed as usize);
        let mut tables: Vec<Vec<u64>> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        let mut table = vec![0u8; cs as usize];
        for i in 0..needed as usize {
            let off = be64(&raw, i * 8) & L2_OFFSET_MASK;
            // A table past the end of the file reads as zeros, as in qemu.
            if off == 0 || off >= file_len {
                l2.push(None);
                continue;
            }
            if off % cs != 0 {
                return corrupt(format!("L2 table offset {off:#x} (L1 index {i}) is not cluster aligned"));
            }
            if let Some(&t) = seen.get(&off) {
                l2.push(Some(t));
                continue;
            }
            read_or_zero(&file, &mut table, off)?;
            let entries: Vec<u64> = (0..per_l2 as usize).map(|j| be64(&table, j * 8)).collect();
            for (j, &e) in entries.iter().enumerate() {
                let data = e & L2_OFFSET_MASK;
                if e & (1 << 62) == 0 && data % cs != 0 {
                    return corrupt(format!(
                        "cluster {} points to unaligned offset {data:#x}",
                        i as u64 * per_l2 + j as u64
                    ));
                }
            }
            seen.insert(off, tables.len());
            l2.push(Some(tables.len()));
            tables.push(entries);
        }
        Ok(Ok(Reader { file, cluster_bits, size, codec, l2, tables, last: Mutex::new(None) }))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Where guest cluster `g` is.
    pub fn loc(&self, g: u64) -> Loc {
        let per_l2 = self.cluster_size() / 8;
        let Some(Some(t)) = self.l2.get((g / per_l2) as usize) else { return Loc::Zero };
        let e = self.tables[*t][(g % per_l2) as usize];
        if e & (1 << 62) != 0 {
            // Compressed: offset in the low x bits, then the count of extra sectors.
            let x = 62 - (self.cluster_bits - 8);
            let off = e & ((1 << x) - 1);
            let sectors = (e >> x) & ((1 << (self.cluster_bits - 8)) - 1);
            let len = ((sectors + 1) * 512 - (off & 511)) as usize;
            return Loc::Compressed { off, len };
        }
        let off = e & L2_OFFSET_MASK;
        if e & 1 != 0 || off == 0 {
            Loc::Zero
        } else {
            Loc::Data(off)
        }
    }

    /// The guest clusters that do not read as zeros, in order. Walks the L2 tables,
    /// never the virtual size.
    pub fn allocated(&self) -> Vec<u64> {
        let per_l2 = self.cluster_size() / 8;
        let mut out = Vec::new();
        for (i, t) in self.l2.iter().enumerate() {
            let Some(t) = t else { continue };
            for j in 0..self.tables[*t].len() as u64 {
                let g = i as u64 * per_l2 + j;
                if g * self.cluster_size() < self.size && self.loc(g) != Loc::Zero {
                    out.push(g);
                }
            }
        }
        out
    }

    /// Fill `buf` (one whole cluster) with compressed cluster `g`.
    fn decompress(&self, g: u64, off: u64, len: usize, buf: &mut [u8]) -> std::io::Result<()> {
        let mut cache = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cg, data)) = cache.as_ref() {
            if *cg == g {
                buf.copy_from_slice(data);
                return Ok(());
            }
        }
        let mut src = vec![0u8; len];
        // The descriptor may round the length past the end of the file.
        let n = read_upto(&self.file, &mut src, off)?;
        src.truncate(n);
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        match self.codec {
            Codec::Deflate => {
                let mut d = flate2::Decompress::new(false);
                d.decompress(&src, buf, flate2::FlushDecompress::Finish)
                    .map_err(|e| bad(format!("compressed cluster {g}: {e}")))?;
                if d.total_out() != buf.len() as u64 {
                    return Err(bad(format!("compressed cluster {g} is short")));
                }
            }
            Codec::Zstd => {
                let mut d = ruzstd::decoding::StreamingDecoder::new(&src[..])
                    .map_err(|e| bad(format!("compressed cluster {g}: {e}")))?;
                d.read_exact(buf).map_err(|e| bad(format!("compressed cluster {g}: {e}")))?;
            }
        }
        *cache = Some((g, buf.to_vec()));
        Ok(())
    }

    /// Read guest bytes at `off` (past the end reads zeros).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let cs = self.cluster_size();
        let mut done = 0usize;
        let mut scratch = Vec::new();
        while done < buf.len() {
            let pos = off + done as u64;
            let g = pos / cs;
            let within = (pos % cs) as usize;
            let n = (cs as usize - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.loc(g) {
                Loc::Zero => out.fill(0),
                Loc::Data(h) => read_or_zero(&self.file, out, h + within as u64)?,
                Loc::Compressed { off: h, len } => {
                    scratch.resize(cs as usize, 0);
                    self.decompress(g, h, len, &mut scratch)?;
                    out.copy_from_slice(&scratch[within..within + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Read `n` whole guest clusters starting at `g` into `buf`, coalescing
    /// host-contiguous uncompressed clusters into one read.
    pub fn read_clusters(&self, g: u64, n: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let cs = self.cluster_size() as usize;
        let mut i = 0u64;
        while i < n {
            let at = i as usize * cs;
            match self.loc(g + i) {
                Loc::Data(h) => {
                    let mut run = 1u64;
                    while i + run < n && self.loc(g + i + run) == Loc::Data(h + run * cs as u64) {
                        run += 1;
                    }
                    read_or_zero(&self.file, &mut buf[at..at + run as usize * cs], h)?;
                    i += run;
                }
                Loc::Zero => {
                    buf[at..at + cs].fill(0);
                    i += 1;
                }
                Loc::Compressed { off, len } => {
                    self.decompress(g + i, off, len, &mut buf[at..at + cs])?;
                    i += 1;
                }
            }
        }
        Ok(())
    }
}

/// Read what the file has at `off`; bytes past its end read as zeros (as qemu reads
/// clusters that lie past the end of the image file).
fn read_or_zero(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let n = read_upto(f, buf, off)?;
    buf[n..].fill(0);
    Ok(())
}

/// Read into `buf` at `off` until it is full or the file ends; how many bytes were read.
pub(crate) fn read_upto(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A guest-disk view over a [`Reader`] for crates that want `Read + Seek` (the GPT).
#[derive(Debug)]
pub struct Cursor<'a> {
    pub r: &'a Reader,
    pub pos: u64,
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.r.size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.r.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.r.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

impl Write for Cursor<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer's cluster size (qemu-img's default): the stream's cluster.
pub const OUT_CLUSTER_BITS: u32 = super::stream::CLUSTER_BITS;
const OUT_CS: u64 = 1 << OUT_CLUSTER_BITS;
use super::stream::runs;

/// Write a qcow2 image of virtual `size` whose allocated guest clusters are
/// `clusters` (sorted, unique, 64 KiB each); `fill(first, n, buf)` supplies the bytes
/// of `n` consecutive guest clusters. Everything but the data is computed up front, so
/// the file is written front to back, once, and hashed on a second thread as it goes.
/// Returns the file's sha256 (hex).
pub fn write<F>(out: &Path, size: u64, clusters: &[u64], mut fill: F) -> std::io::Result<String>
where
    F: FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
{
    let meta = layout(size, clusters);
    let mut f = File::create(out)?;
    super::stream::Hasher::spawn().around(|hash| {
        f.write_all(&meta)?;
        hash.bytes(meta)?;
        for (first, n) in runs(clusters) {
            let mut buf = hash.buffer();
            buf.resize((n * OUT_CS) as usize, 0);
            fill(first, n, &mut buf)?;
            f.write_all(&buf)?;
            hash.bytes(buf)?;
        }
        // No fsync, like `qemu-img convert` (cache=unsafe for the target): the image
        // is renamed into place afterwards and a crash before writeback loses a build,
        // not data.
        Ok(())
    })
}

/// Where [`write`] and [`write_zstd`] put the tables: host cluster 0 is the header,
/// then the refcount table, refcount blocks, L1, the L2 tables in guest order; the
/// data starts at `data_at`.
struct Geometry {
    l1_size: u64,
    l2_used: Vec<u64>,
    rt: u64,
    rb: u64,
    rt_at: u64,
    rb_at: u64,
    l1_at: u64,
    l2_at: u64,
    data_at: u64,
}

/// The geometry for `clusters` (sorted, unique) when the data takes at most
/// `data_clusters` host clusters: the refcount blocks cover that many, themselves and
/// every table included.
fn geometry(size: u64, clusters: &[u64], data_clusters: u64) -> Geometry {
    let cs = OUT_CS;
    let per_l2 = cs / 8;
    let per_rb = cs * 8 / 16;
    let l1_size = size.div_ceil(cs * per_l2).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let mut l2_used: Vec<u64> = clusters.iter().map(|g| g / per_l2).collect();
    l2_used.dedup();
    let fixed = 1 + l1_clusters + l2_used.len() as u64 + data_clusters;
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let total = fixed + rt + rb;
        let (nrb, nrt) = (total.div_ceil(per_rb), (total.div_ceil(per_rb) * 8).div_ceil(cs));
        if (nrb, nrt) == (rb, rt) {
            break;
        }
        (rb, rt) = (nrb, nrt);
    }
    let rt_at = 1;
    let rb_at = rt_at + rt;
    let l1_at = rb_at + rb;
    let l2_at = l1_at + l1_clusters;
    let data_at = l2_at + l2_used.len() as u64;
    Geometry { l1_size, l2_used, rt, rb, rt_at, rb_at, l1_at, l2_at, data_at }
}

const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// Incompatible feature bit 3: the header's compression type field is in use.
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const COMPRESSION_ZSTD: u8 = 1;

/// The metadata (everything before `data_at`) for guest clusters whose L2 entries are
/// `entry(i)` (i: index into `clusters`; 0 = unallocated) and whose host clusters have
/// the reference counts `refcount(c)` (for c in 0..`host_clusters`).
fn tables(
    size: u64,
    clusters: &[u64],
    g: &Geometry,
    zstd: bool,
    host_clusters: u64,
    entry: impl Fn(usize) -> u64,
    refcount: impl Fn(u64) -> u16,
) -> Vec<u8> {
    let cs = OUT_CS;
    let per_l2 = cs / 8;
    let mut m = vec![0u8; (g.data_at * cs) as usize];
    let put64 =
        |m: &mut [u8], o: u64, v: u64| m[o as usize..o as usize + 8].copy_from_slice(&v.to_be_bytes());
    let put32 =
        |m: &mut [u8], o: u64, v: u32| m[o as usize..o as usize + 4].copy_from_slice(&v.to_be_bytes());
    m[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut m, 4, 3);
    put32(&mut m, 20, OUT_CLUSTER_BITS);
    put64(&mut m, 24, size);
    put32(&mut m, 36, g.l1_size as u32);
    put64(&mut m, 40, g.l1_at * cs);
    put64(&mut m, 48, g.rt_at * cs);
    put32(&mut m, 56, g.rt as u32);
    if zstd {
        put64(&mut m, 72, INCOMPAT_COMPRESSION);
        m[104] = COMPRESSION_ZSTD;
    }
    put32(&mut m, 96, 4); // refcount_order: 16-bit refcounts
    put32(&mut m, 100, 112); // header length; the extension area after it ends at once
    for i in 0..g.rb {
        put64(&mut m, g.rt_at * cs + i * 8, (g.rb_at + i) * cs);
    }
    for c in 0..host_clusters {
        let o = g.rb_at * cs + c * 2;
        m[o as usize..o as usize + 2].copy_from_slice(&refcount(c).to_be_bytes());
    }
    for (k, &t) in g.l2_used.iter().enumerate() {
        put64(&mut m, g.l1_at * cs + t * 8, ((g.l2_at + k as u64) * cs) | COPIED);
    }
    let mut k = 0usize;
    for (d, &gc) in clusters.iter().enumerate() {
        while g.l2_used[k] != gc / per_l2 {
            k += 1;
        }
        let o = (g.l2_at + k as u64) * cs + (gc % per_l2) * 8;
        put64(&mut m, o, entry(d));
    }
    m
}

/// Header, refcount table and blocks, L1 and L2 tables for [`write`]: the data
/// clusters follow the tables in guest order.
fn layout(size: u64, clusters: &[u64]) -> Vec<u8> {
    let n = clusters.len() as u64;
    let g = geometry(size, clusters, n);
    let total = g.data_at + n;
    let data_at = g.data_at;
    tables(size, clusters, &g, false, total, |d| ((data_at + d as u64) * OUT_CS) | COPIED, |_| 1)
}

/// zstd level of `--compress`: qemu-img's default for zstd clusters.
const ZSTD_LEVEL: i32 = 3;

/// Like [`write`], with every guest cluster zstd-compressed (qcow2 compression type 1,
/// as `qemu-img convert -c -o compression_type=zstd` writes it) on `threads` threads.
/// Each cluster is compressed on its own, so the bytes do not depend on `threads`.
/// The compressed data streams out in guest order after space kept for the tables
/// (sized for the uncompressed case); the tables are written last, then the file is
/// read back once for its sha256. Returns the sha256 (hex).
pub fn write_zstd<F>(
    out: &Path,
    size: u64,
    clusters: &[u64],
    threads: usize,
    fill: F,
) -> std::io::Result<String>
where
    F: FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
{
    // An incompressible cluster costs up to a cluster of padding before it.
    let g = geometry(size, clusters, 2 * clusters.len() as u64 + 1);
    let mut f = File::create(out)?;
    let data_start = g.data_at * OUT_CS;
    f.seek(SeekFrom::Start(data_start))?;
    let mut placer = Placer::new(data_start, std::io::BufWriter::with_capacity(1 << 20, &mut f));
    super::stream::compress_in_order(
        clusters,
        threads,
        fill,
        || zstd::bulk::Compressor::new(ZSTD_LEVEL),
        |z, _, buf| {
            buf.chunks(OUT_CS as usize).map(|c| compress_cluster(c, z)).collect::<Result<Vec<_>, _>>()
        },
        |_, _, pieces| pieces.into_iter().try_for_each(|p| placer.put(p)),
    )?;
    let (entries, data_refc) = placer.finish()?;
    let host = g.data_at + data_refc.len() as u64;
    let meta = tables(
        size,
        clusters,
        &g,
        true,
        host,
        |d| entries[d],
        |c| c.checked_sub(g.data_at).map_or(1, |i| data_refc[i as usize]),
    );
    f.write_all_at(&meta, 0)?;
    // A whole number of clusters, as qemu leaves it.
    f.set_len(host * OUT_CS)?;
    drop(f);
    // The tables are at the front and hold where each compressed cluster landed, so
    // the file is read once more for its digest.
    super::stream::hash_file(out)
}

/// One guest cluster of a compressed image: how it is stored and its bytes.
enum Piece {
    /// All zeros: left unallocated (reads as zeros: the image has no backing file).
    Zero,
    /// A zstd frame.
    Zstd(Vec<u8>),
    /// As is (compression would not save a sector), cluster-aligned.
    Plain(Vec<u8>),
}

fn compress_cluster(c: &[u8], z: &mut zstd::bulk::Compressor<'_>) -> std::io::Result<Piece> {
    if c.iter().all(|&b| b == 0) {
        return Ok(Piece::Zero);
    }
    let packed = z.compress(c)?;
    // Like qemu: a cluster that does not shrink is stored uncompressed.
    Ok(if packed.len() + 512 > c.len() { Piece::Plain(c.to_vec()) } else { Piece::Zstd(packed) })
}

/// Bits of a compressed cluster descriptor (qcow2 spec): x = 62 - (cluster_bits - 8)
/// bits of host offset, then the count of 512-byte sectors after the first.
const CSIZE_SHIFT: u32 = 62 - (OUT_CLUSTER_BITS - 8);

/// Lays the pieces out from `start`, in guest order: each guest cluster's L2 entry and
/// the reference count of each host cluster from `start`.
struct Placer<W> {
    w: W,
    start: u64,
    pos: u64,
    entries: Vec<u64>,
    refc: Vec<u16>,
}

impl<W: Write> Placer<W> {
    fn new(start: u64, w: W) -> Self {
        Placer { w, start, pos: start, entries: Vec::new(), refc: Vec::new() }
    }

    /// Count a reference to every host cluster in `lo..hi`.
    fn count(&mut self, lo: u64, hi: u64) {
        let (a, b) = ((lo - self.start) / OUT_CS, (hi - 1 - self.start) / OUT_CS);
        if self.refc.len() <= b as usize {
            self.refc.resize(b as usize + 1, 0);
        }
        for c in a..=b {
            self.refc[c as usize] += 1;
        }
    }

    fn put(&mut self, p: Piece) -> std::io::Result<()> {
        let pos = self.pos;
        match p {
            Piece::Zero => self.entries.push(0),
            Piece::Zstd(z) => {
                let sectors = ((pos + z.len() as u64 - 1) >> 9) - (pos >> 9);
                self.entries.push(COMPRESSED | (sectors << CSIZE_SHIFT) | pos);
                // qemu counts every host cluster the descriptor's sectors touch
                self.count(pos & !511, (pos & !511) + (sectors + 1) * 512);
                self.w.write_all(&z)?;
                self.pos += z.len() as u64;
            }
            Piece::Plain(d) => {
                let at = pos.div_ceil(OUT_CS) * OUT_CS;
                self.w.write_all(&vec![0u8; (at - pos) as usize])?;
                self.entries.push(at | COPIED);
                self.count(at, at + OUT_CS);
                self.w.write_all(&d)?;
                self.pos = at + OUT_CS;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<(Vec<u64>, Vec<u16>)> {
        self.w.flush()?;
        Ok((self.entries, self.refc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::qemu::testing::{self as qemu, have_qemu_img};

    /// Written images pass `qemu-img check`, read back equal through qemu-img and
    /// through [`Reader`], and hash to what the writer reported.
    #[test]
    fn writer_output_is_clean_and_reads_back() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let size = (3 << 30) + 12345 * 512; // not a multiple of the L2 span
        let clusters: Vec<u64> = vec![0, 1, 2, 70, 8191, 8192, 8193, 40000, (size - 1) / OUT_CS];
        let pattern = |g: u64, buf: &mut [u8]| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (g as u8).wrapping_mul(31).wrapping_add((i / 512) as u8);
            }
        };
        let out = d.path().join("o.qcow2");
        let digest = write(&out, size, &clusters, |first, n, buf| {
            for i in 0..n {
                pattern(first + i, &mut buf[(i * OUT_CS) as usize..((i + 1) * OUT_CS) as usize]);
            }
            Ok(())
        })
        .unwrap();
        qemu::check(&out, "qcow2");
        let bytes = std::fs::read(&out).unwrap();
        use sha2::Digest;
        assert_eq!(digest, hex::encode(sha2::Sha256::digest(&bytes)));

        let raw = qemu::to_raw(&out, Some("qcow2"), d.path().join("o.raw"));
        let r = Reader::open(&out).unwrap().unwrap();
        assert_eq!(r.size(), size);
        let rawf = File::open(&raw).unwrap();
        let mut want = vec![0u8; OUT_CS as usize];
        let mut got = vec![0u8; OUT_CS as usize];
        for g in [0u64, 1, 3, 70, 71, 8191, 8192, 8193, 40000, (size - 1) / OUT_CS] {
            let n = (size - g * OUT_CS).min(OUT_CS) as usize;
            rawf.read_exact_at(&mut want[..n], g * OUT_CS).unwrap();
            r.read_at(&mut got[..n], g * OUT_CS).unwrap();
            assert_eq!(want[..n], got[..n], "cluster {g}");
            if clusters.contains(&g) {
                let mut p = vec![0u8; OUT_CS as usize];
                pattern(g, &mut p);
                assert_eq!(p[..n], got[..n]);
            } else {
                assert!(got[..n].iter().all(|&b| b == 0));
            }
        }
    }

    /// zstd-compressed output: `qemu-img check` clean, qemu-img and [`Reader`] read
    /// the guest bytes back, the digest is the file's, zero clusters stay unallocated,
    /// incompressible ones stay whole, and the bytes are the same for 1 and 3 threads.
    #[test]
    fn compressed_writer_is_clean_deterministic_and_reads_back() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let size = (1 << 30) + 7 * 512;
        // runs longer than a chunk, L2 boundaries, the last partial cluster
        let mut clusters: Vec<u64> = (0..40).chain(8190..8195).chain(9000..9003).collect();
        clusters.push((size - 1) / OUT_CS);
        // compressible text, zeros, and pseudo-random (incompressible) clusters
        let pattern = crate::disk::stream::test_pattern;
        let fill = |first: u64, n: u64, buf: &mut [u8]| {
            for i in 0..n {
                pattern(first + i, &mut buf[(i * OUT_CS) as usize..((i + 1) * OUT_CS) as usize]);
            }
            Ok(())
        };
        let one = d.path().join("one.qcow2");
        let three = d.path().join("three.qcow2");
        let digest = write_zstd(&one, size, &clusters, 1, fill).unwrap();
        assert_eq!(digest, write_zstd(&three, size, &clusters, 3, fill).unwrap());
        let bytes = std::fs::read(&one).unwrap();
        assert_eq!(bytes, std::fs::read(&three).unwrap(), "thread count changed the output");
        use sha2::Digest;
        assert_eq!(digest, hex::encode(sha2::Sha256::digest(&bytes)));

        qemu::check(&one, "qcow2");
        let info = qemu::info(&one, Some("qcow2"));
        assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd", "{info}");
        let raw = qemu::to_raw(&one, Some("qcow2"), d.path().join("o.raw"));
        let r = Reader::open(&one).unwrap().unwrap();
        let rawf = File::open(&raw).unwrap();
        let (mut want, mut got, mut p) =
            (vec![0u8; OUT_CS as usize], vec![0u8; OUT_CS as usize], vec![0u8; OUT_CS as usize]);
        for g in (0..45).chain(8189..8196).chain([9001, (size - 1) / OUT_CS]) {
            let n = (size - g * OUT_CS).min(OUT_CS) as usize;
            rawf.read_exact_at(&mut want[..n], g * OUT_CS).unwrap();
            r.read_at(&mut got[..n], g * OUT_CS).unwrap();
            assert_eq!(want[..n], got[..n], "cluster {g}");
            p.fill(0);
            if clusters.contains(&g) {
                pattern(g, &mut p);
            }
            assert_eq!(p[..n], got[..n], "cluster {g}");
        }
        // zeros not stored, random bytes stored whole, text compressed (to < 1 KiB)
        for &g in &clusters {
            match (g % 5, r.loc(g)) {
                (0, Loc::Zero) | (1, Loc::Data(_)) => {}
                (2..=4, Loc::Compressed { len, .. }) if len <= 1024 => {}
                (_, l) => panic!("cluster {g} stored as {l:?}"),
            }
        }
    }

    /// Compressed base images (what cloud images are) read the same as qemu-img
    /// reads them, for both compression types.
    #[test]
    fn reads_compressed_images() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("in.raw");
        let mut data = vec![0u8; 8 << 20];
        for (i, b) in data.iter_mut().enumerate() {
            // Compressible text with some variation, a zero hole in the middle.
            if !(3 << 20..4 << 20).contains(&i) {
                *b = b"kubelet containerd "[(i * 7 + i / 4096) % 19];
            }
        }
        std::fs::write(&raw, &data).unwrap();
        for ct in ["zlib", "zstd"] {
            let q = d.path().join(format!("{ct}.qcow2"));
            qemu::run(&format!("convert -c -O qcow2 -o compression_type={ct}"), &[&raw, &q]);
            let r = Reader::open(&q).unwrap().unwrap();
            assert!(matches!(r.loc(0), Loc::Compressed { .. }), "{ct}");
            let mut got = vec![1u8; data.len()];
            r.read_at(&mut got, 0).unwrap();
            assert!(got == data, "{ct}");
            let mut two = vec![0u8; 2 * r.cluster_size() as usize];
            r.read_clusters(5, 2, &mut two).unwrap();
            let cs = r.cluster_size() as usize;
            assert!(two[..] == data[5 * cs..7 * cs]);
        }
    }

    /// Tables that point where qemu refuses to read are corruption (not a reason to
    /// fall back to qemu-img); tables past the end of the file read as zeros, and a
    /// table shared by many L1 entries is held once.
    #[test]
    fn corrupt_tables_are_refused_and_memory_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.qcow2");
        let size = 4u64 << 30; // 8 L1 entries of 512 MiB each
        write(&img, size, &[0, 9000], |_, _, buf| {
            buf.fill(7);
            Ok(())
        })
        .unwrap();
        let bytes = std::fs::read(&img).unwrap();
        let l1 = be64(&bytes, 40) as usize;
        let first = be64(&bytes, l1);
        let patched = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = bytes.clone();
            edit(&mut b);
            let p = d.path().join("p.qcow2");
            std::fs::write(&p, b).unwrap();
            Reader::open(&p).unwrap()
        };
        let unaligned = patched(&|b| b[l1..l1 + 8].copy_from_slice(&(first + 512).to_be_bytes()));
        assert!(matches!(unaligned, Err(Unreadable::Corrupt(m)) if m.contains("not cluster aligned")));
        let huge = patched(&|b| b[36..40].copy_from_slice(&u32::MAX.to_be_bytes()));
        assert!(matches!(huge, Err(Unreadable::Corrupt(m)) if m.contains("L1 table")));
        let too_big = patched(&|b| b[24..32].copy_from_slice(&u64::MAX.to_be_bytes()));
        assert!(matches!(too_big, Err(Unreadable::Unsupported(m)) if m.contains("virtual size")));
        // Every L1 entry points at the first L2 table: one table in memory.
        let shared = patched(&|b| {
            for i in 0..8 {
                b[l1 + i * 8..l1 + i * 8 + 8].copy_from_slice(&first.to_be_bytes());
            }
        })
        .unwrap();
        assert_eq!(shared.tables.len(), 1);
        assert_eq!(shared.allocated().len(), 8);
        // A table past the end of the file: unallocated.
        let past = patched(&|b| b[l1..l1 + 8].copy_from_slice(&(1u64 << 40).to_be_bytes())).unwrap();
        assert_eq!(past.loc(0), Loc::Zero);
        let mut buf = vec![1u8; 4096];
        past.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    /// Random edits of valid images (header, tables, compressed data): opening and
    /// reading every allocated cluster ends, with or without an error, never panics.
    #[test]
    fn random_edits_end_without_panic() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain.qcow2");
        write(&plain, 64 << 20, &[0, 1, 100, 1000], |g, n, buf| {
            buf.fill(g as u8 ^ n as u8);
            Ok(())
        })
        .unwrap();
        let raw = d.path().join("in.raw");
        std::fs::write(&raw, (0..(4u32 << 20)).map(|i| (i / 700) as u8).collect::<Vec<u8>>()).unwrap();
        let mut inputs = vec![std::fs::read(&plain).unwrap()];
        for ct in ["zlib", "zstd"] {
            let q = d.path().join(format!("{ct}.qcow2"));
            qemu::run(
                &format!("convert -c -O qcow2 -o compression_type={ct},cluster_size=4096"),
                &[&raw, &q],
            );
            inputs.push(std::fs::read(&q).unwrap());
        }
        let p = d.path().join("m.qcow2");
        let mut next = crate::disk::test_rng(0xDEAD_BEEF_CAFE_F00D);
        for good in &inputs {
            for _ in 0..150 {
                let mut b = good.clone();
                for _ in 0..1 + next() % 4 {
                    let at = match next() % 3 {
                        0 => next() % 112,
                        1 => 65536 + next() % (4 * 65536),
                        _ => next() % b.len() as u64,
                    } as usize;
                    if at < b.len() {
                        b[at] = next() as u8;
                    }
                }
                std::fs::write(&p, &b).unwrap();
                let Ok(Ok(r)) = Reader::open(&p) else { continue };
                let mut buf = vec![0u8; r.cluster_size() as usize];
                for g in r.allocated().into_iter().take(64) {
                    let _ = r.read_clusters(g, 1, &mut buf);
                }
            }
        }
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("b.qcow2");
        let top = d.path().join("t.qcow2");
        qemu::run("create -f qcow2 -o size=1M", &[&base]);
        qemu::run("create -f qcow2 -F qcow2 -b", &[&base, &top]);
        let e = Reader::open(&top).unwrap().unwrap_err();
        assert!(matches!(&e, Unreadable::Unsupported(m) if m.contains("backing")), "{e}");
        std::fs::write(d.path().join("x"), b"not an image at all").unwrap();
        assert!(Reader::open(&d.path().join("x")).unwrap().is_err());
    }
}
