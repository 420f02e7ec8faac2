//! The metadata of an ext4 filesystem, copied into a sparse file: superblocks and
//! group descriptors (with the reserved GDT blocks), bitmaps, inode tables, extent
//! tree and indirect blocks, extended-attribute blocks, directory and slow-symlink
//! blocks, and the data of the special inodes (reserved inodes, quota, orphan file,
//! EA inodes; the journal only up to its superblock). Regular files' data stays a hole.
//!
//! debugfs and `e2fsck -fn` never read regular file data when a layer is written and
//! checked, so they work on this copy as on the whole partition, and make the same
//! decisions (they only look at metadata). The blocks they write are the copy's data
//! extents; laid over the base, they give the finished partition. This is what `e2image
//! -r` does, but it reads straight from the base (a qcow2) rather than a raw device.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Reads partition bytes at an offset.
pub type ReadAt<'a> = dyn Fn(&mut [u8], u64) -> std::io::Result<()> + 'a;

fn le16(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn le32(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64
}

const COMPAT_SPARSE_SUPER2: u64 = 0x200;
const INCOMPAT_META_BG: u64 = 0x10;
const INCOMPAT_64BIT: u64 = 0x80;
const INCOMPAT_MMP: u64 = 0x100;
const RO_COMPAT_SPARSE_SUPER: u64 = 0x1;
const FL_EXTENTS: u64 = 0x80000;
const FL_EA_INODE: u64 = 0x20_0000;
const FL_INLINE_DATA: u64 = 0x1000_0000;
const JOURNAL_INO: u64 = 8;

/// What the copy holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub block_size: u64,
    pub inodes_in_use: u64,
    /// Blocks copied (all-zero blocks are left as holes and not counted).
    pub blocks_copied: u64,
}

struct Fs<'a> {
    read: &'a ReadAt<'a>,
    bs: u64,
    blocks: u64,
}

impl Fs<'_> {
    fn block(&self, b: u64) -> Result<Vec<u8>, String> {
        if b >= self.blocks {
            return Err(format!("block {b} is past the end of the filesystem ({} blocks)", self.blocks));
        }
        let mut v = vec![0u8; self.bs as usize];
        (self.read)(&mut v, b * self.bs).map_err(|e| format!("reading block {b}: {e}"))?;
        Ok(v)
    }
}

/// Collects block ranges, then copies them.
#[derive(Default)]
struct Wanted(Vec<(u64, u64)>);

impl Wanted {
    fn add(&mut self, start: u64, len: u64) {
        if len > 0 {
            self.0.push((start, len));
        }
    }
}

/// Copy the metadata of the ext4 filesystem that `read` sees into `out` (at the same
/// offsets; all-zero blocks become holes). Errors describe a filesystem this walker
/// does not handle; the caller falls back to copying everything.
pub fn copy(read: &ReadAt, out: &File) -> Result<Stats, String> {
    let mut sb = vec![0u8; 1024];
    read(&mut sb, 1024).map_err(|e| format!("reading the superblock: {e}"))?;
    if le16(&sb, 0x38) != 0xEF53 {
        return Err("no ext4 superblock".into());
    }
    let (compat, incompat, ro) = (le32(&sb, 0x5C), le32(&sb, 0x60), le32(&sb, 0x64));
    if incompat & INCOMPAT_META_BG != 0 {
        return Err("meta_bg layout".into());
    }
    let bs = 1024u64 << le32(&sb, 0x18).min(6);
    let wide = incompat & INCOMPAT_64BIT != 0;
    let blocks = le32(&sb, 0x04) | if wide { le32(&sb, 0x150) << 32 } else { 0 };
    let first_data = le32(&sb, 0x14);
    let bpg = le32(&sb, 0x20);
    let ipg = le32(&sb, 0x28);
    let rev = le32(&sb, 0x4C);
    let (isz, first_ino) = if rev == 0 { (128, 11) } else { (le16(&sb, 0x58), le32(&sb, 0x54)) };
    let desc = if wide { le16(&sb, 0xFE) } else { 32 };
    if bpg == 0 || ipg == 0 || isz < 128 || desc < 32 || blocks == 0 {
        return Err("implausible superblock".into());
    }
    let groups = (blocks - first_data).div_ceil(bpg);
    let gdt_blocks = (groups * desc).div_ceil(bs);
    let reserved_gdt = le16(&sb, 0xCE);
    let fs = Fs { read, bs, blocks };
    let mut w = Wanted::default();

    // Boot block and primary superblock, then each group's backup superblock + GDT.
    w.add(0, first_data + 1);
    let has_backup = |g: u64| -> bool {
        if g <= 1 {
            return g == 0 || compat & COMPAT_SPARSE_SUPER2 == 0 || le32(&sb, 0x24C) == 1;
        }
        if compat & COMPAT_SPARSE_SUPER2 != 0 {
            return g == le32(&sb, 0x24C) || g == le32(&sb, 0x250);
        }
        if ro & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&p| {
            let mut x = p;
            while x < g {
                x *= p;
            }
            x == g
        })
    };
    for g in 0..groups {
        if has_backup(g) {
            w.add(first_data + g * bpg, 1 + gdt_blocks + reserved_gdt);
        }
    }
    if incompat & INCOMPAT_MMP != 0 {
        let mmp = le32(&sb, 0x168) | le32(&sb, 0x16C) << 32;
        w.add(mmp, 1);
    }
    let mut gdt = vec![0u8; (gdt_blocks * bs) as usize];
    read(&mut gdt, (first_data + 1) * bs).map_err(|e| format!("reading group descriptors: {e}"))?;

    // Inodes whose data is metadata too (besides directories and slow symlinks).
    let mut special: Vec<u64> = (1..first_ino).filter(|&i| i != JOURNAL_INO).collect();
    for off in [0x240, 0x244, 0x26C, 0x280] {
        let i = le32(&sb, off);
        if i != 0 {
            special.push(i);
        }
    }
    let itable_blocks = (ipg * isz).div_ceil(bs);
    let mut stats = Stats { block_size: bs, ..Stats::default() };
    let mut copier = Copier { out, bs, copied: 0 };
    for g in 0..groups {
        let d = &gdt[(g * desc) as usize..((g + 1) * desc) as usize];
        let hi = |o: usize| if wide && desc >= 64 { le32(d, o) << 32 } else { 0 };
        let (bbm, ibm, itab) = (le32(d, 0) | hi(0x20), le32(d, 4) | hi(0x24), le32(d, 8) | hi(0x28));
        let flags = le16(d, 0x12);
        w.add(bbm, 1);
        let ibm_bytes = fs.block(ibm)?;
        copier.put(ibm, &ibm_bytes)?;
        let mut tab = vec![0u8; (itable_blocks * bs) as usize];
        if itab + itable_blocks > blocks {
            return Err(format!("group {g}'s inode table is past the end"));
        }
        read(&mut tab, itab * bs).map_err(|e| format!("reading group {g}'s inode table: {e}"))?;
        copier.put(itab, &tab)?;
        if flags & 1 != 0 {
            continue; // INODE_UNINIT: no inode of this group is in use
        }
        for i in 0..ipg {
            if ibm_bytes[(i / 8) as usize] & (1 << (i % 8)) == 0 {
                continue;
            }
            let ino = g * ipg + i + 1;
            let raw = &tab[(i * isz) as usize..(i * isz + 128) as usize];
            stats.inodes_in_use += 1;
            inode(&fs, ino, raw, special.contains(&ino), &mut w)?;
        }
    }
    w.0.sort_unstable();
    // Merge, then copy in chunks of up to 4 MiB.
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, l) in w.0 {
        match merged.last_mut() {
            Some((ms, ml)) if s <= *ms + *ml => *ml = (*ml).max(s + l - *ms),
            _ => merged.push((s, l)),
        }
    }
    let chunk = (4 << 20) / bs;
    for (s, l) in merged {
        if s + l > blocks {
            return Err(format!("metadata blocks {s}+{l} are past the end of the filesystem"));
        }
        let mut b = s;
        while b < s + l {
            let n = chunk.min(s + l - b);
            let mut buf = vec![0u8; (n * bs) as usize];
            read(&mut buf, b * bs).map_err(|e| format!("reading blocks {b}+{n}: {e}"))?;
            copier.put(b, &buf)?;
            b += n;
        }
    }
    stats.blocks_copied = copier.copied;
    Ok(stats)
}

struct Copier<'a> {
    out: &'a File,
    bs: u64,
    copied: u64,
}

impl Copier<'_> {
    /// Write the non-zero blocks of `buf` (starting at block `first`).
    fn put(&mut self, first: u64, buf: &[u8]) -> Result<(), String> {
        let bs = self.bs as usize;
        let mut i = 0;
        while i < buf.len() / bs {
            if buf[i * bs..(i + 1) * bs].iter().all(|&b| b == 0) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < buf.len() / bs && buf[j * bs..(j + 1) * bs].iter().any(|&b| b != 0) {
                j += 1;
            }
            self.out
                .write_all_at(&buf[i * bs..j * bs], (first + i as u64) * self.bs)
                .map_err(|e| format!("writing the metadata copy: {e}"))?;
            self.copied += (j - i) as u64;
            i = j;
        }
        Ok(())
    }
}

/// Record the blocks of one in-use inode: its tree blocks always, its data when the
/// data is metadata.
fn inode(fs: &Fs, ino: u64, raw: &[u8], special: bool, w: &mut Wanted) -> Result<(), String> {
    let mode = le16(raw, 0) & 0xF000;
    let flags = le32(raw, 0x20);
    let size = le32(raw, 4) | le32(raw, 0x6C) << 32;
    let acl = le32(raw, 0x68) | le16(raw, 0x76) << 32;
    if acl != 0 {
        w.add(acl, 1);
    }
    if flags & FL_INLINE_DATA != 0 || mode == 0x2000 || mode == 0x6000 || mode == 0x1000 || mode == 0xC000 {
        return Ok(()); // data in the inode; device, fifo and socket nodes have none
    }
    if mode == 0xA000 && size < 60 {
        return Ok(()); // a fast symlink: the target is in i_block
    }
    let dir = mode == 0x4000;
    let slow_link = mode == 0xA000;
    let data = dir || slow_link || special || flags & FL_EA_INODE != 0;
    // The journal: its superblock only (e2fsck reads nothing else of a clean journal).
    let limit = if ino == JOURNAL_INO { Some(1) } else { None };
    let i_block = &raw[0x28..0x28 + 60];
    if flags & FL_EXTENTS != 0 {
        extents(fs, ino, i_block, data || limit.is_some(), limit, w, 0)
    } else {
        for (k, depth) in (0..15).map(|k| (k, if k < 12 { 0 } else { k - 11 })) {
            let b = le32(i_block, k * 4);
            if b != 0 {
                indirect(fs, ino, b, depth, data || limit.is_some(), w)?;
            }
        }
        Ok(())
    }
}

fn extents(
    fs: &Fs,
    ino: u64,
    node: &[u8],
    data: bool,
    limit: Option<u64>,
    w: &mut Wanted,
    level: u32,
) -> Result<(), String> {
    if le16(node, 0) != 0xF30A || level > 8 {
        return Err(format!("inode {ino}: bad extent tree"));
    }
    let (entries, depth) = (le16(node, 2), le16(node, 6));
    if 12 + entries as usize * 12 > node.len() {
        return Err(format!("inode {ino}: extent node overflows"));
    }
    for k in 0..entries as usize {
        let e = &node[12 + k * 12..24 + k * 12];
        if depth == 0 {
            if !data {
                continue;
            }
            let lblk = le32(e, 0);
            let mut len = le16(e, 4);
            if len > 32768 {
                len -= 32768; // unwritten: allocated, reads as zeros
            }
            if let Some(l) = limit {
                if lblk >= l {
                    continue;
                }
                len = len.min(l - lblk);
            }
            w.add(le16(e, 6) << 32 | le32(e, 8), len);
        } else {
            let child = le32(e, 4) | le16(e, 8) << 32;
            w.add(child, 1);
            let b = fs.block(child)?;
            extents(fs, ino, &b, data, limit, w, level + 1)?;
        }
    }
    Ok(())
}

fn indirect(fs: &Fs, ino: u64, b: u64, depth: usize, data: bool, w: &mut Wanted) -> Result<(), String> {
    if depth == 0 {
        if data {
            w.add(b, 1);
        }
        return Ok(());
    }
    w.add(b, 1);
    let blk = fs.block(b).map_err(|e| format!("inode {ino}: {e}"))?;
    for k in 0..blk.len() / 4 {
        let c = le32(&blk, k * 4);
        if c != 0 {
            indirect(fs, ino, c, depth - 1, data, w)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn tool(name: &str) -> Option<String> {
        ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|d| format!("{d}/{name}"))
            .find(|p| std::path::Path::new(p).exists())
    }

    /// For several ext4 feature sets (1 KiB blocks, no flex_bg, quota and orphan file,
    /// block-mapped ext3-style files, a big directory and a slow symlink), the metadata
    /// copy alone gets the same `e2fsck -fn` verdict as the whole filesystem and is a
    /// small part of it.
    #[test]
    fn metadata_copy_checks_like_the_whole_filesystem() {
        let (Some(mke2fs), Some(e2fsck)) = (tool("mke2fs"), tool("e2fsck")) else {
            eprintln!("e2fsprogs missing; skipped");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/share/big")).unwrap();
        for i in 0..600 {
            std::fs::write(
                tree.join(format!("usr/share/big/file-with-a-long-name-{i:04}")),
                vec![b'x'; i * 37],
            )
            .unwrap();
        }
        std::fs::write(tree.join("usr/share/blob"), vec![0x5au8; 3 << 20]).unwrap();
        let long = "a/".repeat(40) + "target";
        std::os::unix::fs::symlink(&long, tree.join("slow-link")).unwrap();
        std::os::unix::fs::symlink("short", tree.join("fast-link")).unwrap();
        let cases: &[(&str, &[&str])] = &[
            ("default", &["-t", "ext4"]),
            ("1k-blocks", &["-t", "ext4", "-b", "1024"]),
            ("no-flex-bg", &["-t", "ext4", "-O", "^flex_bg"]),
            ("quota-orphan", &["-t", "ext4", "-O", "quota,orphan_file"]),
            ("ext3-style", &["-t", "ext3"]),
            ("no-journal", &["-t", "ext4", "-O", "^has_journal"]),
        ];
        for (name, opts) in cases {
            let img = d.path().join(format!("{name}.img"));
            let _ = std::fs::remove_file(&img);
            let o = Command::new(&mke2fs)
                .args(["-q", "-F", "-L", "t", "-d"])
                .arg(&tree)
                .args(*opts)
                .arg(&img)
                .arg("64M")
                .output()
                .unwrap();
            if !o.status.success() {
                // e.g. orphan_file needs e2fsprogs >= 1.47
                eprintln!("{name}: mke2fs refused ({}); skipped", String::from_utf8_lossy(&o.stderr).trim());
                continue;
            }
            let src = File::open(&img).unwrap();
            let copy = d.path().join(format!("{name}.copy"));
            let out = File::create(&copy).unwrap();
            out.set_len(src.metadata().unwrap().len()).unwrap();
            let read = |buf: &mut [u8], at: u64| src.read_exact_at(buf, at);
            let stats = super::copy(&read, &out).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(stats.inodes_in_use > 600, "{name}: {stats:?}");
            // e2fsck says the same of the copy as of the whole filesystem (clean, except
            // that `mke2fs -d` leaves quota usage stale, which e2fsck reports in both).
            let fsck = |p: &std::path::Path| Command::new(&e2fsck).args(["-fn"]).arg(p).output().unwrap();
            let (a, b) = (fsck(&img), fsck(&copy));
            assert_eq!(a.stdout, b.stdout, "{name}: {}", String::from_utf8_lossy(&b.stdout));
            assert_eq!(a.status.code(), b.status.code(), "{name}");
            if !name.starts_with("quota") {
                assert!(b.status.success(), "{name}: {}", String::from_utf8_lossy(&b.stdout));
            }
            // The 3 MiB blob's data is not part of the copy.
            let copied = stats.blocks_copied * stats.block_size;
            assert!(copied < 3 << 20, "{name}: copied {copied} bytes");
        }
    }
}
