//! Just enough of the ext2/3/4 superblock (and other filesystems' magic) to find the
//! root partition by label and to know its free space, read without any tool.

use std::io::{Read, Seek, SeekFrom};

/// The superblock fields imgbuild needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub label: String,
    pub block_size: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub reserved_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
    pub incompat: u32,
}

const MAGIC: u16 = 0xEF53;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;

impl Superblock {
    /// Parse the 1024 bytes found 1024 bytes into the filesystem; `None` if the magic
    /// is not 0xEF53.
    pub fn parse(sb: &[u8]) -> Option<Superblock> {
        if sb.len() < 1024 || u16le(sb, 0x38) != MAGIC {
            return None;
        }
        let incompat = u32le(sb, 0x60);
        let wide = incompat & INCOMPAT_64BIT != 0;
        let hi = |off: usize| if wide { (u32le(sb, off) as u64) << 32 } else { 0 };
        let log = u32le(sb, 0x18);
        Some(Superblock {
            label: cstr(&sb[0x78..0x88]),
            block_size: 1024u64.checked_shl(log.min(16))?,
            blocks: u32le(sb, 0x04) as u64 | hi(0x150),
            reserved_blocks: u32le(sb, 0x08) as u64 | hi(0x154),
            free_blocks: u32le(sb, 0x0C) as u64 | hi(0x158),
            inodes: u32le(sb, 0x00),
            free_inodes: u32le(sb, 0x10),
            incompat,
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

    pub fn free_bytes(&self) -> u64 {
        self.free_blocks.saturating_mul(self.block_size)
    }

    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size)
    }
}

/// What a partition holds, as far as the root search cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Ext(Superblock),
    /// Another filesystem with a label (name, label).
    Other(&'static str, String),
    Unknown,
}

impl Probe {
    pub fn label(&self) -> Option<&str> {
        match self {
            Probe::Ext(sb) => Some(&sb.label),
            Probe::Other(_, l) => Some(l),
            Probe::Unknown => None,
        }
    }
}

/// Look at the start of a partition (`offset` bytes into `f`) and say what is there.
pub fn probe<F: Read + Seek>(f: &mut F, offset: u64) -> std::io::Result<Probe> {
    let mut head = vec![0u8; 0x10000 + 0x1000];
    f.seek(SeekFrom::Start(offset))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    Ok(probe_bytes(&head))
}

fn probe_bytes(h: &[u8]) -> Probe {
    if let Some(sb) = h.get(1024..2048).and_then(Superblock::parse) {
        return Probe::Ext(sb);
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

    fn ext_head(label: &str, incompat: u32) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        let sb = &mut h[1024..2048];
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&1000u32.to_le_bytes());
        sb[0x0C..0x10].copy_from_slice(&600u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb[0x78..0x78 + label.len()].copy_from_slice(label.as_bytes());
        h
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

    #[test]
    fn other_filesystems_are_named() {
        let mut x = vec![0u8; 4096];
        x[..4].copy_from_slice(b"XFSB");
        x[108..123].copy_from_slice(b"cloudimg-rootfs");
        assert_eq!(probe_bytes(&x), Probe::Other("xfs", "cloudimg-roo".into()));
        assert_eq!(probe_bytes(&[0u8; 8192]), Probe::Unknown);
    }
}
