//! Just enough of the ext2/3/4 superblock (and other filesystems' magic) to find the
//! root partition by label and to know its free space, read without any tool.
//!
//! The superblock's geometry is checked field against field the way the kernel
//! (`ext4_fill_super`) and e2fsck (`check_super_block`) check it before anything
//! walks the filesystem: block size, first data block, blocks and inodes per group,
//! inode and descriptor sizes, the inode count, and that the group descriptors, the
//! inode tables and the whole filesystem fit where they must. A superblock that fails
//! is reported with the reason, never walked.

use std::io::{Read, Seek, SeekFrom};

/// The superblock fields imgbuild needs, checked against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub label: String,
    pub block_size: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub reserved_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub inodes_per_group: u64,
    pub inode_size: u64,
    /// First non-reserved inode.
    pub first_ino: u64,
    /// Group descriptor size (32, or 64.. with the 64bit feature).
    pub desc_size: u64,
    pub reserved_gdt_blocks: u64,
    pub groups: u64,
    /// Blocks the group descriptor table takes.
    pub gdt_blocks: u64,
}

const MAGIC: u16 = 0xEF53;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(crate) const RO_COMPAT_BIGALLOC: u32 = 0x200;

impl Superblock {
    /// Parse the 1024 bytes found 1024 bytes into the filesystem: `None` if the magic
    /// is not 0xEF53, `Some(Err(why))` when the fields contradict each other.
    pub fn parse(sb: &[u8]) -> Option<Result<Superblock, String>> {
        if sb.len() < 1024 || u16le(sb, 0x38) != MAGIC {
            return None;
        }
        Some(Self::checked(sb))
    }

    fn checked(sb: &[u8]) -> Result<Superblock, String> {
        let (compat, incompat, ro_compat) = (u32le(sb, 0x5C), u32le(sb, 0x60), u32le(sb, 0x64));
        let wide = incompat & INCOMPAT_64BIT != 0;
        let hi = |off: usize| if wide { (u32le(sb, off) as u64) << 32 } else { 0 };
        let log = u32le(sb, 0x18);
        if log > 6 {
            return Err(format!("s_log_block_size {log}: blocks larger than 64 KiB"));
        }
        let bs = 1024u64 << log;
        let log_cluster = u32le(sb, 0x1C);
        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        if (!bigalloc && log_cluster != log) || (bigalloc && !(log..=log + 16).contains(&log_cluster)) {
            return Err(format!("cluster size 2^{log_cluster} KiB does not go with block size {bs}"));
        }
        let ratio = 1u64 << (log_cluster - log);
        let blocks = u32le(sb, 0x04) as u64 | hi(0x150);
        let reserved_blocks = u32le(sb, 0x08) as u64 | hi(0x154);
        let free_blocks = u32le(sb, 0x0C) as u64 | hi(0x158);
        let (inodes, free_inodes) = (u32le(sb, 0x00), u32le(sb, 0x10));
        let first_data_block = u32le(sb, 0x14) as u64;
        let want_first = if bs == 1024 && ratio == 1 { 1 } else { 0 };
        if first_data_block != want_first || first_data_block >= blocks {
            return Err(format!(
                "s_first_data_block is {first_data_block} in a filesystem of {blocks} blocks of {bs} bytes \
                 (must be {want_first})"
            ));
        }
        let bpg = u32le(sb, 0x20) as u64;
        if bpg != u32le(sb, 0x24) as u64 * ratio || !(8..=(8 * bs).min(65528) * ratio).contains(&bpg) {
            return Err(format!("s_blocks_per_group {bpg} is out of range for {bs}-byte blocks"));
        }
        let rev = u32le(sb, 0x4C);
        let (inode_size, first_ino) =
            if rev == 0 { (128, 11) } else { (u16le(sb, 0x58) as u64, u32le(sb, 0x54) as u64) };
        if !inode_size.is_power_of_two() || !(128..=bs).contains(&inode_size) {
            return Err(format!("s_inode_size {inode_size} is not a power of two in 128..={bs}"));
        }
        let ipg = u32le(sb, 0x28) as u64;
        // The inode bitmap is one block: at most 8 inodes per byte of it.
        if !(bs / inode_size..=8 * bs).contains(&ipg) {
            return Err(format!(
                "s_inodes_per_group {ipg} is out of range {}..={} for {bs}-byte blocks",
                bs / inode_size,
                8 * bs
            ));
        }
        let groups = (blocks - first_data_block).div_ceil(bpg);
        if groups * ipg != inodes as u64 {
            return Err(format!("s_inodes_count {inodes} is not {groups} groups × {ipg} inodes per group"));
        }
        if !(11..=inodes as u64).contains(&first_ino) {
            return Err(format!("s_first_ino {first_ino} is out of range 11..={inodes}"));
        }
        let desc_size = if wide { u16le(sb, 0xFE) as u64 } else { 32 };
        if wide && (!desc_size.is_power_of_two() || !(64..=1024.min(bs)).contains(&desc_size)) {
            return Err(format!("s_desc_size {desc_size} is not a power of two in 64..=1024"));
        }
        let reserved_gdt_blocks = u16le(sb, 0xCE) as u64;
        if reserved_gdt_blocks > bs / 4 {
            return Err(format!("s_reserved_gdt_blocks {reserved_gdt_blocks} is more than {}", bs / 4));
        }
        let gdt_blocks = (groups * desc_size).div_ceil(bs);
        if incompat & INCOMPAT_META_BG == 0 && 1 + gdt_blocks + reserved_gdt_blocks > bpg {
            return Err(format!(
                "{groups} group descriptors ({gdt_blocks} blocks, {reserved_gdt_blocks} reserved) do not fit \
                 in the first group of {bpg} blocks"
            ));
        }
        // Every group has its own bitmaps and inode table, so they must all fit.
        let per_group = (ipg * inode_size).div_ceil(bs) + 2;
        if groups.saturating_mul(per_group) > blocks {
            return Err(format!(
                "{groups} groups × {per_group} blocks of bitmaps and inode table exceed {blocks} blocks"
            ));
        }
        if free_blocks > blocks || reserved_blocks > blocks / 2 || free_inodes > inodes {
            return Err(format!(
                "free/reserved counts ({free_blocks} free and {reserved_blocks} reserved of {blocks} blocks, \
                 {free_inodes} free of {inodes} inodes) are impossible"
            ));
        }
        Ok(Superblock {
            label: cstr(&sb[0x78..0x88]),
            block_size: bs,
            blocks,
            free_blocks,
            reserved_blocks,
            inodes,
            free_inodes,
            compat,
            incompat,
            ro_compat,
            first_data_block,
            blocks_per_group: bpg,
            inodes_per_group: ipg,
            inode_size,
            first_ino,
            desc_size,
            reserved_gdt_blocks,
            groups,
            gdt_blocks,
        })
    }

    /// ext4 proper: extents (what every ext4 made by mke2fs -t ext4 has). An ext2/ext3
    /// filesystem has the same magic but not this feature.
    pub fn is_ext4(&self) -> bool {
        self.incompat & INCOMPAT_EXTENTS != 0
    }

    /// "ext2", "ext3" or "ext4" by features (ext3 = has a journal; checked by caller
    /// only for the message).
    pub fn flavour(&self) -> &'static str {
        if self.is_ext4() || self.incompat & INCOMPAT_FLEX_BG != 0 {
            "ext4"
        } else {
            "ext2/ext3"
        }
    }

    /// The journal holds transactions not yet replayed (the filesystem was not
    /// cleanly unmounted): writing around them would lose or corrupt data.
    pub fn needs_recovery(&self) -> bool {
        self.incompat & INCOMPAT_RECOVER != 0
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_blocks.saturating_mul(self.block_size)
    }

    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size)
    }

    /// The latest time an inode of this filesystem stores: 34-bit seconds with the
    /// extra fields of inodes larger than 128 bytes (2446-05-10), else signed 32-bit
    /// seconds (2038-01-19).
    pub fn max_time(&self) -> u64 {
        if self.inode_size > 128 {
            MAX_TIME_EXTRA
        } else {
            i32::MAX as u64
        }
    }
}

/// 2446-05-10T22:38:55Z: signed 32-bit seconds plus two epoch bits (`i_*time_extra`),
/// the limit recipes are validated against.
pub const MAX_TIME_EXTRA: u64 = crate::recipe::MAX_SOURCE_DATE_EPOCH;

/// What a partition holds, as far as the root search cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Ext(Superblock),
    /// An ext2/3/4 superblock whose fields do not hold together (label, why).
    BadExt(String, String),
    /// Another filesystem with a label (name, label).
    Other(&'static str, String),
    Unknown,
}

impl Probe {
    pub fn label(&self) -> Option<&str> {
        match self {
            Probe::Ext(sb) => Some(&sb.label),
            Probe::BadExt(l, _) | Probe::Other(_, l) => Some(l),
            Probe::Unknown => None,
        }
    }
}

/// Look at the start of a partition of `len` bytes (`offset` bytes into `f`) and say
/// what is there. An ext filesystem larger than its partition is a bad one.
pub fn probe<F: Read + Seek>(f: &mut F, offset: u64, len: u64) -> std::io::Result<Probe> {
    let mut head = vec![0u8; 0x10000 + 0x1000];
    f.seek(SeekFrom::Start(offset))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n.min(usize::try_from(len).unwrap_or(usize::MAX)));
    Ok(match probe_bytes(&head) {
        Probe::Ext(sb) if sb.size_bytes() > len => Probe::BadExt(
            sb.label.clone(),
            format!("the filesystem ({} bytes) is larger than its partition ({len} bytes)", sb.size_bytes()),
        ),
        p => p,
    })
}

fn probe_bytes(h: &[u8]) -> Probe {
    if let Some(parsed) = h.get(1024..2048).and_then(Superblock::parse) {
        return match parsed {
            Ok(sb) => Probe::Ext(sb),
            Err(why) => Probe::BadExt(cstr(&h[1024 + 0x78..1024 + 0x88]), why),
        };
    }
    if h.starts_with(b"XFSB") && h.len() >= 120 {
        return Probe::Other("xfs", cstr(&h[108..120]));
    }
    if h.get(0x10040..0x10048) == Some(b"_BHRfS_M") {
        return Probe::Other("btrfs", cstr(&h[0x1012b..0x1022b.min(h.len())]));
    }
    if h.len() >= 512 && h[510] == 0x55 && h[511] == 0xaa {
        // FAT32 keeps the label at 0x47, FAT12/16 at 0x2b.
        if h.get(0x52..0x57) == Some(b"FAT32") {
            return Probe::Other("vfat", cstr(&h[0x47..0x52]).trim_end().to_string());
        }
        if h.get(0x36..0x39) == Some(b"FAT") {
            return Probe::Other("vfat", cstr(&h[0x2b..0x36]).trim_end().to_string());
        }
    }
    Probe::Unknown
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn u16le(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32le(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consistent superblock: 1000 blocks of 4 KiB, one group of 256 inodes.
    fn ext_head(label: &str, incompat: u32) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        let sb = &mut h[1024..2048];
        let mut put = |off: usize, v: u32| sb[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(0x00, 256); // inodes
        put(0x04, 1000); // blocks
        put(0x0C, 600); // free blocks
        put(0x10, 200); // free inodes
        put(0x18, 2); // log block size: 4 KiB
        put(0x1C, 2); // log cluster size
        put(0x20, 32768); // blocks per group
        put(0x24, 32768); // clusters per group
        put(0x28, 256); // inodes per group
        put(0x4C, 1); // dynamic revision
        put(0x54, 11); // first inode
        put(0x60, incompat);
        sb[0x58..0x5a].copy_from_slice(&256u16.to_le_bytes());
        sb[0xFE..0x100].copy_from_slice(&64u16.to_le_bytes()); // 64bit descriptors
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x78..0x78 + label.len()].copy_from_slice(label.as_bytes());
        h
    }

    fn with(mut h: Vec<u8>, off: usize, v: u32) -> Vec<u8> {
        h[1024 + off..1024 + off + 4].copy_from_slice(&v.to_le_bytes());
        h
    }

    fn why(h: &[u8]) -> String {
        match probe_bytes(h) {
            Probe::BadExt(label, why) => {
                assert_eq!(label, "root");
                why
            }
            other => panic!("accepted: {other:?}"),
        }
    }

    /// Fields that contradict each other are refused with the field named, before
    /// anything walks the filesystem (these used to panic or loop forever).
    #[test]
    fn contradictory_geometry_is_refused() {
        let ok = ext_head("root", 0x2c2);
        assert!(matches!(probe_bytes(&ok), Probe::Ext(_)));
        assert!(why(&with(ok.clone(), 0x28, 65536)).contains("s_inodes_per_group 65536"));
        assert!(why(&with(ok.clone(), 0x14, 5000)).contains("s_first_data_block is 5000"));
        assert!(why(&with(ok.clone(), 0x18, 40)).contains("s_log_block_size"));
        assert!(why(&with(ok.clone(), 0x00, 257)).contains("s_inodes_count"));
        assert!(why(&with(ok.clone(), 0x20, 4)).contains("s_blocks_per_group"));
        assert!(why(&with(ok.clone(), 0x54, 1 << 30)).contains("s_first_ino"));
        assert!(why(&with(ok.clone(), 0x0C, 5000)).contains("impossible"));
        let mut h = ok.clone();
        h[1024 + 0x58..1024 + 0x5a].copy_from_slice(&300u16.to_le_bytes());
        assert!(why(&h).contains("s_inode_size 300"));
        // Many groups whose inode tables cannot all fit.
        let h = with(with(with(ok.clone(), 0x20, 8), 0x24, 8), 0x00, 125 * 256);
        assert!(why(&h).contains("exceed"), "{}", why(&h));
        // Larger than its partition.
        let mut c = std::io::Cursor::new(ok);
        let Probe::BadExt(_, w) = probe(&mut c, 0, 1 << 20).unwrap() else { panic!("accepted") };
        assert!(w.contains("larger than its partition"), "{w}");
    }

    #[test]
    fn reads_label_size_and_flavour() {
        let Probe::Ext(sb) = probe_bytes(&ext_head("cloudimg-rootfs", 0x2c2)) else { panic!("not ext") };
        assert_eq!(sb.label, "cloudimg-rootfs");
        assert_eq!(sb.block_size, 4096);
        assert_eq!(sb.free_bytes(), 600 * 4096);
        assert!(sb.is_ext4());
        let Probe::Ext(old) = probe_bytes(&ext_head("x", 0x2)) else { panic!("not ext") };
        assert!(!old.is_ext4());
    }

    /// 256-byte inodes store times to 2446 (what recipes may ask for), 128-byte ones
    /// only to 2038: the disk refuses a later source_date_epoch for those.
    #[test]
    fn the_latest_storable_time_follows_the_inode_size() {
        let Probe::Ext(big) = probe_bytes(&ext_head("r", 0x2c2)) else { panic!("not ext") };
        assert_eq!(big.max_time(), crate::recipe::MAX_SOURCE_DATE_EPOCH);
        let mut h = ext_head("r", 0x2c2);
        h[1024 + 0x58..1024 + 0x5a].copy_from_slice(&128u16.to_le_bytes());
        let Probe::Ext(small) = probe_bytes(&h) else { panic!("not ext") };
        assert_eq!(small.max_time(), i32::MAX as u64);
    }

    /// Random edits of a valid superblock: accepted ones hold together, none panic.
    #[test]
    fn random_edits_never_panic() {
        let good = ext_head("r", 0x2c2);
        let mut next = crate::disk::test_rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..50_000 {
            let mut h = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (1024 + (next() % 0x200) as usize) & !3;
                let v = [0, 1, u32::MAX, 1 << (next() % 32), next() as u32][(next() % 5) as usize];
                h[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            let mut c = std::io::Cursor::new(&h);
            if let Probe::Ext(sb) = probe(&mut c, 0, 1 << 40).unwrap() {
                assert!(sb.first_data_block < sb.blocks && sb.inodes_per_group <= 8 * sb.block_size);
                assert_eq!(sb.groups * sb.inodes_per_group, sb.inodes as u64);
            }
        }
    }

    #[test]
    fn other_filesystems_are_named() {
        let mut x = vec![0u8; 4096];
        x[..4].copy_from_slice(b"XFSB");
        x[108..123].copy_from_slice(b"cloudimg-rootfs");
        assert_eq!(probe_bytes(&x), Probe::Other("xfs", "cloudimg-roo".into()));
        assert_eq!(probe_bytes(&[0u8; 8192]), Probe::Unknown);
    }
}
