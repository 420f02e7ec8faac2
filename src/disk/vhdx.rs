//! A dynamic VHDX writer (Microsoft's [MS-VHDX] "Virtual Hard Disk v2 (VHDX) File
//! Format"): what Hyper-V, SCVMM and Azure Stack HCI attach.
//!
//! Layout, written front to back in one pass and hashed as it is written:
//!
//! - the 1 MiB header section: the file type identifier (`vhdxfile`, creator
//!   `imgbuild` in UTF-16), at 64 KiB and 128 KiB the two headers (4 KiB each, CRC-32C
//!   over the 4 KiB; sequence numbers 1 and 2, so the second is current; no log to
//!   replay: LogGuid zero), at 192 KiB and 256 KiB the region table twice (64 KiB,
//!   CRC-32C; the BAT and the metadata region, both marked required);
//! - at 1 MiB the log, 1 MiB of zeros (qemu's default size; readers write it, never
//!   replay it while LogGuid is zero);
//! - at 2 MiB the metadata region (1 MiB): its table, then from 64 KiB the five items
//!   every reader needs: file parameters (32 MiB blocks, not fixed, no parent), virtual
//!   disk size, the Page 83 id, logical and physical sector size 512 (the GPT's, and
//!   what qemu-img writes: no source here says what Hyper-V defaults to);
//! - from 3 MiB the payload blocks that hold data, in guest order, each 32 MiB
//!   (Hyper-V's default block size for dynamic disks; qemu picks it above 100 GiB),
//!   all-zero clusters in them left as holes of the sparse file;
//! - last, the BAT: one entry per block (`FULLY_PRESENT` with its offset, or `ZERO`:
//!   the state the spec defines to read as zeros, qemu's default for new blocks; never
//!   `NOT_PRESENT`, whose content the spec leaves undefined) with a sector bitmap entry
//!   (`NOT_PRESENT`, as it must be without a parent) after every 128.
//!
//! The BAT is placed after the payload (a region may lie anywhere past the first MiB)
//! because only the data says which blocks are all zeros: its offset is fixed up front
//! by the blocks the stream may touch, so a block that turns out all zeros is left out
//! of the payload and leaves a hole before the BAT instead. The identifiers that are
//! random in other writers (FileWriteGuid, DataWriteGuid, the Page 83 virtual disk id)
//! are derived from the build's inputs digest.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::stream::{self, Hasher, CLUSTER};

const MIB: u64 = 1 << 20;
/// Payload block size.
pub const BLOCK: u64 = 32 * MIB;
const LOGICAL_SECTOR: u32 = 512;
const PHYSICAL_SECTOR: u32 = 512;
/// The largest virtual disk the format allows.
pub const MAX_SIZE: u64 = 64 << 40;
const HEADER_SIZE: usize = 4096;
const HEADER_AT: [u64; 2] = [64 << 10, 128 << 10];
const REGION_TABLE_AT: [u64; 2] = [192 << 10, 256 << 10];
const REGION_TABLE_SIZE: usize = 64 << 10;
const LOG_AT: u64 = MIB;
const LOG_LEN: u64 = MIB;
const METADATA_AT: u64 = 2 * MIB;
const METADATA_LEN: u64 = MIB;
/// Metadata items start after the 64 KiB table.
const ITEMS_AT: usize = 64 << 10;
const DATA_AT: u64 = 3 * MIB;
/// Payload blocks per sector bitmap block: 2^23 sectors of 512 bytes / 32 MiB.
const CHUNK_RATIO: u64 = (1 << 23) * LOGICAL_SECTOR as u64 / BLOCK;
const CLUSTERS_PER_BLOCK: u64 = BLOCK / CLUSTER;
const PAYLOAD_BLOCK_ZERO: u64 = 2;
const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;

/// A GUID in the on-disk byte order (the first three fields little-endian).
const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let (a, b, c) = (d1.to_le_bytes(), d2.to_le_bytes(), d3.to_le_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]]
}

const BAT_REGION: [u8; 16] =
    guid(0x2DC2_7766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08]);
const METADATA_REGION: [u8; 16] =
    guid(0x8B7C_A206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]);
const FILE_PARAMETERS: [u8; 16] =
    guid(0xCAA1_6737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B]);
const VIRTUAL_DISK_SIZE: [u8; 16] =
    guid(0x2FA5_4224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8]);
const PAGE_83: [u8; 16] = guid(0xBECA_12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]);
const LOGICAL_SECTOR_SIZE: [u8; 16] =
    guid(0x8141_BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F]);
const PHYSICAL_SECTOR_SIZE: [u8; 16] =
    guid(0xCDA3_48C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56]);

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC-32C of `buf` with its checksum field (bytes 4..8) taken as zero, stored there.
fn seal(buf: &mut [u8]) {
    buf[4..8].fill(0);
    let crc = CRC32C.checksum(buf);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Whether the checksum at bytes 4..8 of `buf` is its CRC-32C (as readers check it).
pub fn checksum_ok(buf: &[u8]) -> bool {
    let mut b = buf.to_vec();
    let want = b.get(4..8).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    seal(&mut b);
    want == Some(u32::from_le_bytes([b[4], b[5], b[6], b[7]]))
}

/// The identifiers other writers make random.
struct Ids {
    file_write: [u8; 16],
    data_write: [u8; 16],
    page83: [u8; 16],
}

impl Ids {
    fn of(seed: &str) -> Ids {
        Ids {
            file_write: stream::derived_id(seed, "vhdx FileWriteGuid"),
            data_write: stream::derived_id(seed, "vhdx DataWriteGuid"),
            page83: stream::derived_id(seed, "vhdx Page83"),
        }
    }
}

fn header(seq: u64, ids: &Ids) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..4].copy_from_slice(b"head");
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..32].copy_from_slice(&ids.file_write);
    h[32..48].copy_from_slice(&ids.data_write);
    // 48..64: LogGuid zero, no log entries to replay; 64..66: LogVersion 0.
    h[66..68].copy_from_slice(&1u16.to_le_bytes());
    h[68..72].copy_from_slice(&(LOG_LEN as u32).to_le_bytes());
    h[72..80].copy_from_slice(&LOG_AT.to_le_bytes());
    seal(&mut h);
    h
}

fn region_table(bat_at: u64, bat_len: u64) -> Vec<u8> {
    let mut t = vec![0u8; REGION_TABLE_SIZE];
    t[0..4].copy_from_slice(b"regi");
    t[8..12].copy_from_slice(&2u32.to_le_bytes());
    for (i, (id, at, len)) in
        [(BAT_REGION, bat_at, bat_len), (METADATA_REGION, METADATA_AT, METADATA_LEN)].into_iter().enumerate()
    {
        let e = &mut t[16 + i * 32..48 + i * 32];
        e[0..16].copy_from_slice(&id);
        e[16..24].copy_from_slice(&at.to_le_bytes());
        e[24..28].copy_from_slice(&(len as u32).to_le_bytes());
        e[28..32].copy_from_slice(&1u32.to_le_bytes()); // required
    }
    seal(&mut t);
    t
}

/// The first MiB: file type identifier, both headers, both region tables.
fn header_section(bat_at: u64, bat_len: u64, ids: &Ids) -> Vec<u8> {
    let mut s = vec![0u8; MIB as usize];
    s[0..8].copy_from_slice(b"vhdxfile");
    for (i, u) in "imgbuild".encode_utf16().enumerate() {
        s[8 + 2 * i..10 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    for (i, at) in HEADER_AT.into_iter().enumerate() {
        s[at as usize..at as usize + HEADER_SIZE].copy_from_slice(&header(i as u64 + 1, ids));
    }
    let rt = region_table(bat_at, bat_len);
    for at in REGION_TABLE_AT {
        s[at as usize..at as usize + REGION_TABLE_SIZE].copy_from_slice(&rt);
    }
    s
}

/// The metadata region: the table and the five required items.
fn metadata(size: u64, ids: &Ids) -> Vec<u8> {
    let mut m = vec![0u8; METADATA_LEN as usize];
    m[0..8].copy_from_slice(b"metadata");
    const IS_VIRTUAL_DISK: u32 = 2;
    const IS_REQUIRED: u32 = 4;
    let items: [([u8; 16], Vec<u8>, u32); 5] = [
        // Block size; flags 0: blocks may be unallocated (dynamic), no parent.
        (FILE_PARAMETERS, [(BLOCK as u32).to_le_bytes(), [0; 4]].concat(), IS_REQUIRED),
        (VIRTUAL_DISK_SIZE, size.to_le_bytes().to_vec(), IS_REQUIRED | IS_VIRTUAL_DISK),
        (PAGE_83, ids.page83.to_vec(), IS_REQUIRED | IS_VIRTUAL_DISK),
        (LOGICAL_SECTOR_SIZE, LOGICAL_SECTOR.to_le_bytes().to_vec(), IS_REQUIRED | IS_VIRTUAL_DISK),
        (PHYSICAL_SECTOR_SIZE, PHYSICAL_SECTOR.to_le_bytes().to_vec(), IS_REQUIRED | IS_VIRTUAL_DISK),
    ];
    m[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut at = ITEMS_AT;
    for (i, (id, data, flags)) in items.iter().enumerate() {
        let e = &mut m[32 + i * 32..64 + i * 32];
        e[0..16].copy_from_slice(id);
        e[16..20].copy_from_slice(&(at as u32).to_le_bytes());
        e[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        e[24..28].copy_from_slice(&flags.to_le_bytes());
        m[at..at + data.len()].copy_from_slice(data);
        at += data.len();
    }
    m
}

/// Number of BAT entries: a payload entry per block and a sector bitmap entry after
/// every [`CHUNK_RATIO`] of them (the spec's count for a disk without a parent).
fn bat_entries(blocks: u64) -> u64 {
    blocks + blocks.saturating_sub(1) / CHUNK_RATIO
}

/// The BAT index of payload block `b`.
fn bat_index(b: u64) -> usize {
    (b + b / CHUNK_RATIO) as usize
}

/// Write the disk of `size` bytes (`clusters` + `fill`, see [`super::stream`]) to `out`
/// as a dynamic VHDX; `seed` (the inputs digest) gives its identifiers. Returns the
/// file's sha256 (hex).
pub fn write<F>(out: &Path, size: u64, clusters: &[u64], seed: &str, mut fill: F) -> std::io::Result<String>
where
    F: FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
{
    if size % LOGICAL_SECTOR as u64 != 0 || size > MAX_SIZE || size == 0 {
        return Err(std::io::Error::other(format!(
            "a VHDX holds a disk of whole 512-byte sectors up to 64 TiB, not {size} bytes"
        )));
    }
    let ids = Ids::of(seed);
    let blocks = size.div_ceil(BLOCK);
    // Every block the stream touches may hold data: the BAT goes past all of them.
    let mut candidates = 0u64;
    let mut last = u64::MAX;
    for &c in clusters.iter().take_while(|&&c| c * CLUSTER < size) {
        if c / CLUSTERS_PER_BLOCK != last {
            last = c / CLUSTERS_PER_BLOCK;
            candidates += 1;
        }
    }
    let bat_at = DATA_AT + candidates * BLOCK;
    let bat_len = (bat_entries(blocks) * 8).div_ceil(MIB) * MIB;
    let mut bat = vec![0u8; bat_len as usize];
    for b in 0..blocks {
        let i = bat_index(b) * 8;
        bat[i..i + 8].copy_from_slice(&PAYLOAD_BLOCK_ZERO.to_le_bytes());
    }

    let f = File::create(out)?;
    f.set_len(bat_at + bat_len)?;
    let hash = Hasher::spawn();
    hash.around(|hash| {
        let head = header_section(bat_at, bat_len, &ids);
        f.write_all_at(&head[..REGION_TABLE_AT[1] as usize + REGION_TABLE_SIZE], 0)?;
        hash.bytes(head)?;
        hash.zeros(LOG_LEN)?;
        let meta = metadata(size, &ids);
        f.write_all_at(&meta[..ITEMS_AT + 64], METADATA_AT)?;
        hash.bytes(meta)?;
        // The block being written: its index and file offset (once it holds data).
        let mut cur: (u64, Option<u64>) = (u64::MAX, None);
        let mut next_free = DATA_AT;
        // Everything before this file offset has been hashed.
        let mut hashed = DATA_AT;
        for (first, n) in stream::runs(clusters) {
            if first * CLUSTER >= size {
                break;
            }
            let mut buf = hash.buffer();
            buf.resize((n * CLUSTER) as usize, 0);
            fill(first, n, &mut buf)?;
            // Past the end of the disk the last cluster reads as zeros.
            let end = (size - first * CLUSTER).min(buf.len() as u64) as usize;
            buf[end..].fill(0);
            // Runs of non-zero clusters within one block: (first index, count).
            let mut segs: Vec<(u64, u64)> = Vec::new();
            for i in 0..n {
                let c = &buf[(i * CLUSTER) as usize..((i + 1) * CLUSTER) as usize];
                if stream::is_zero(c) {
                    continue;
                }
                match segs.last_mut() {
                    Some((s, k))
                        if *s + *k == i
                            && (first + *s) / CLUSTERS_PER_BLOCK == (first + i) / CLUSTERS_PER_BLOCK =>
                    {
                        *k += 1
                    }
                    _ => segs.push((i, 1)),
                }
            }
            let whole = segs.len() == 1 && segs[0] == (0, n);
            for &(s, k) in &segs {
                let g = first + s;
                let b = g / CLUSTERS_PER_BLOCK;
                if cur.0 != b {
                    cur = (b, None);
                }
                let off = match cur.1 {
                    Some(o) => o,
                    None => {
                        if next_free + BLOCK > bat_at {
                            return Err(std::io::Error::other("VHDX payload would overlap its BAT"));
                        }
                        let o = next_free;
                        next_free += BLOCK;
                        let i = bat_index(b) * 8;
                        bat[i..i + 8].copy_from_slice(&(o | PAYLOAD_BLOCK_FULLY_PRESENT).to_le_bytes());
                        cur.1 = Some(o);
                        o
                    }
                };
                let at = off + (g % CLUSTERS_PER_BLOCK) * CLUSTER;
                let bytes = &buf[(s * CLUSTER) as usize..((s + k) * CLUSTER) as usize];
                f.write_all_at(bytes, at)?;
                hash.zeros(at - hashed)?;
                if !whole {
                    let mut piece = hash.buffer();
                    piece.clear();
                    piece.extend_from_slice(bytes);
                    hash.bytes(piece)?;
                }
                hashed = at + k * CLUSTER;
            }
            if whole {
                hash.bytes(buf)?;
            }
        }
        // The allocated blocks end at `next_free`; the rest up to the BAT is a hole.
        hash.zeros(bat_at - hashed)?;
        f.write_all_at(&bat[..(bat_entries(blocks) * 8) as usize], bat_at)?;
        hash.bytes(bat)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::qemu::testing as qemu;

    fn u32at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The GUIDs in the on-disk order of the spec's examples (and qemu's vhdx.h).
    #[test]
    fn guids_are_in_on_disk_order() {
        assert_eq!(
            METADATA_REGION,
            [0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]
        );
        assert_eq!(
            PAGE_83,
            [0xAB, 0x12, 0xCA, 0xBE, 0xE6, 0xB2, 0x23, 0x45, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]
        );
    }

    /// Header and region table checksums: CRC-32C over the whole 4 KiB / 64 KiB with
    /// the field zeroed; a changed byte anywhere breaks them; the known CRC-32C check
    /// value pins the polynomial.
    #[test]
    fn header_and_region_table_crcs() {
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        let ids = Ids::of("seed");
        let h = header(2, &ids);
        assert!(checksum_ok(&h));
        assert_eq!(&h[0..4], b"head");
        assert_eq!(u64at(&h, 8), 2);
        assert_eq!(u32at(&h, 68), LOG_LEN as u32);
        assert_eq!(u64at(&h, 72), LOG_AT);
        assert!(h[48..64].iter().all(|&b| b == 0), "LogGuid zero: nothing to replay");
        let mut bad = h;
        bad[4000] ^= 1;
        assert!(!checksum_ok(&bad));
        let crc = u32at(&h, 4);
        let mut z = h;
        z[4..8].fill(0);
        assert_eq!(CRC32C.checksum(&z), crc);
        let rt = region_table(35 * MIB, MIB);
        assert_eq!(rt.len(), 64 << 10);
        assert!(checksum_ok(&rt));
        assert_eq!(u32at(&rt, 8), 2);
        assert_eq!(&rt[16..32], &BAT_REGION);
        assert_eq!(u64at(&rt, 32), 35 * MIB);
        let mut bad = rt.clone();
        bad[60000] ^= 0x80;
        assert!(!checksum_ok(&bad));
        // Different seeds, different identifiers; the same seed, the same.
        assert_eq!(header(1, &Ids::of("seed")), header(1, &ids));
        assert_ne!(header(1, &Ids::of("other"))[16..48], header(1, &ids)[16..48]);
    }

    #[test]
    fn bat_interleaves_sector_bitmap_entries() {
        assert_eq!(CHUNK_RATIO, 128);
        assert_eq!(bat_entries(1), 1);
        assert_eq!(bat_entries(128), 128);
        assert_eq!(bat_entries(129), 130);
        assert_eq!(bat_index(127), 127);
        assert_eq!(bat_index(128), 129);
    }

    fn fill(first: u64, n: u64, buf: &mut [u8]) -> std::io::Result<()> {
        for i in 0..n {
            stream::test_pattern(first + i, &mut buf[(i * CLUSTER) as usize..((i + 1) * CLUSTER) as usize]);
        }
        Ok(())
    }

    /// A disk with data in some blocks, an all-zero block the stream lists, and a size
    /// that ends inside a cluster and a block: the digest is the file's, the layout is
    /// what the spec says (the all-zero block is `ZERO` in the BAT, not stored), qemu-img
    /// checks it clean and reads the same guest bytes; two writes are identical.
    #[test]
    fn writes_a_vhdx_qemu_img_reads() {
        let d = tempfile::tempdir().unwrap();
        let size = 3 * BLOCK + 5 * CLUSTER + 1024;
        // Block 0: clusters 0..40 (pattern: every 5th cluster zero); block 1: only the
        // zero cluster 520 (all zeros: left out); block 3: the last, partial cluster.
        let last = size / CLUSTER;
        let clusters: Vec<u64> = (0..40).chain([520]).chain([3 * CLUSTERS_PER_BLOCK + 1, last]).collect();
        let out = d.path().join("a.vhdx");
        let digest = write(&out, size, &clusters, "seed", fill).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        use sha2::Digest;
        assert_eq!(digest, hex::encode(sha2::Sha256::digest(&bytes)));
        assert_eq!(&bytes[..8], b"vhdxfile");
        // Three blocks touched: the BAT past them; two hold data.
        let bat_at = DATA_AT + 3 * BLOCK;
        assert_eq!(bytes.len() as u64, bat_at + MIB);
        assert_eq!(u64at(&bytes, (bat_at + 8 * bat_index(0) as u64) as usize), DATA_AT | 6);
        assert_eq!(u64at(&bytes, (bat_at + 8 * bat_index(1) as u64) as usize), PAYLOAD_BLOCK_ZERO);
        assert_eq!(u64at(&bytes, (bat_at + 8 * bat_index(2) as u64) as usize), PAYLOAD_BLOCK_ZERO);
        assert_eq!(u64at(&bytes, (bat_at + 8 * bat_index(3) as u64) as usize), (DATA_AT + BLOCK) | 6);
        for at in HEADER_AT {
            assert!(checksum_ok(&bytes[at as usize..at as usize + HEADER_SIZE]));
        }
        for at in REGION_TABLE_AT {
            assert!(checksum_ok(&bytes[at as usize..at as usize + REGION_TABLE_SIZE]));
        }
        let again = d.path().join("b.vhdx");
        assert_eq!(write(&again, size, &clusters, "seed", fill).unwrap(), digest);
        // Only data takes space: zero clusters and the left-out block stay holes.
        let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap()) * 512;
        assert!(used < 3 * MIB, "{used} bytes allocated");
        if !qemu::have_qemu_img() {
            return;
        }
        qemu::check(&out, "vhdx");
        let info = qemu::info(&out, None);
        assert_eq!(info["format"], "vhdx", "{info}");
        assert_eq!(info["virtual-size"].as_u64(), Some(size), "{info}");
        assert_eq!(info["cluster-size"].as_u64(), Some(BLOCK), "{info}");
        let guest = qemu::guest_bytes(&out, "vhdx");
        assert_eq!(guest.len() as u64, size);
        let mut want = vec![0u8; size as usize];
        for &c in &clusters {
            let lo = (c * CLUSTER) as usize;
            let mut cl = vec![0u8; CLUSTER as usize];
            stream::test_pattern(c, &mut cl);
            let hi = (lo + CLUSTER as usize).min(size as usize);
            want[lo..hi].copy_from_slice(&cl[..hi - lo]);
        }
        assert!(guest == want, "guest bytes differ");
        // qemu opens it read-write too: a write into the left-out block (ZERO) allocates
        // a block at the end of the file, past the BAT, through the log; still clean.
        if crate::tools::for_test("qemu-io").is_some() {
            let w = std::process::Command::new("qemu-io")
                .args(["-f", "vhdx", "-c", "write -P 0x5a 33M 64k"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
            qemu::check(&out, "vhdx");
            let r = std::process::Command::new("qemu-io")
                .args(["-f", "vhdx", "-r", "-c", "read -P 0x5a 33M 64k", "-c", "read -P 0 34M 1M"])
                .arg(&out)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&r.stdout);
            assert!(r.status.success() && !text.contains("Pattern verification failed"), "{text}");
        }
    }

    /// The metadata items of a VHDX: GUID → (flags, bytes).
    fn items(file: &[u8]) -> std::collections::BTreeMap<[u8; 16], (u32, Vec<u8>)> {
        let rt = &file[REGION_TABLE_AT[0] as usize..];
        let n = u32at(rt, 8) as usize;
        let meta =
            (0..n).map(|i| &rt[16 + i * 32..48 + i * 32]).find(|e| e[..16] == METADATA_REGION).unwrap();
        let m = &file[u64at(meta, 16) as usize..];
        assert_eq!(&m[..8], b"metadata");
        let count = u16::from_le_bytes([m[10], m[11]]) as usize;
        (0..count)
            .map(|i| {
                let e = &m[32 + i * 32..64 + i * 32];
                let (at, len) = (u32at(e, 16) as usize, u32at(e, 20) as usize);
                (e[..16].try_into().unwrap(), (u32at(e, 24), m[at..at + len].to_vec()))
            })
            .collect()
    }

    /// The metadata holds the items qemu-img writes for a dynamic VHDX with 32 MiB
    /// blocks, with the same flags and values, but for the Page 83 id (random in
    /// qemu's).
    #[test]
    fn metadata_items_match_qemu_img() {
        if !qemu::have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("q.vhdx");
        qemu::run("create -q -f vhdx -o subformat=dynamic,block_size=33554432,size=64M", &[&q]);
        let theirs = items(&std::fs::read(&q).unwrap());
        let out = d.path().join("o.vhdx");
        write(&out, 64 * MIB, &[], "s", fill).unwrap();
        let ours = items(&std::fs::read(&out).unwrap());
        assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
        for (id, (flags, data)) in &ours {
            let (tf, td) = &theirs[id];
            assert_eq!(flags, tf, "flags of {id:02x?}");
            match *id {
                PAGE_83 => assert_eq!(data.len(), td.len()),
                _ => assert_eq!(data, td, "item {id:02x?}"),
            }
        }
    }

    /// A disk with no data at all: headers, metadata and an all-ZERO BAT; qemu-img
    /// reads zeros.
    #[test]
    fn empty_disk() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("e.vhdx");
        let size = 200 * BLOCK;
        write(&out, size, &[], "s", fill).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, DATA_AT + MIB);
        assert_eq!(u64at(&bytes, (DATA_AT + 8 * 128) as usize), 0, "sector bitmap entry");
        assert_eq!(u64at(&bytes, (DATA_AT + 8 * 129) as usize), PAYLOAD_BLOCK_ZERO);
        assert!(write(&out, 1000, &[], "s", fill).is_err(), "not whole sectors");
        if !qemu::have_qemu_img() {
            return;
        }
        qemu::check(&out, "vhdx");
    }
}
