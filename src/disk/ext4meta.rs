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

use super::ext4::{self, Superblock};

pub use super::ReadAt;

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
    /// Extent-tree and indirect blocks seen so far: in a sound filesystem no such
    /// block belongs to two files or two places, so a repeat is corruption (and
    /// without this check a crafted tree would be walked exponentially often).
    tree_blocks: std::collections::HashSet<u64>,
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

    /// Read a block of a file's mapping tree, once.
    fn tree_block(&mut self, ino: u64, b: u64) -> Result<Vec<u8>, String> {
        if !self.tree_blocks.insert(b) {
            return Err(format!("inode {ino}: block {b} appears twice in block maps"));
        }
        self.block(b).map_err(|e| format!("inode {ino}: {e}"))
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

/// Largest group descriptor table or inode table read in one piece.
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Copy the metadata of the ext4 filesystem that `read` sees into `out` (at the same
/// offsets; all-zero blocks become holes). Errors describe a filesystem this walker
/// does not handle or that is corrupt; the caller falls back to copying everything
/// (where e2fsprogs makes the same call).
pub fn copy(read: &ReadAt, out: &File) -> Result<Stats, String> {
    let mut raw = vec![0u8; 1024];
    read(&mut raw, 1024).map_err(|e| format!("reading the superblock: {e}"))?;
    let sb = match Superblock::parse(&raw) {
        None => return Err("no ext4 superblock".into()),
        Some(r) => r?,
    };
    if sb.incompat as u64 & INCOMPAT_META_BG != 0 {
        return Err("meta_bg layout".into());
    }
    if sb.ro_compat & ext4::RO_COMPAT_BIGALLOC != 0 {
        return Err("bigalloc layout".into());
    }
    let (compat, ro) = (sb.compat as u64, sb.ro_compat as u64);
    let bs = sb.block_size;
    let wide = sb.incompat as u64 & INCOMPAT_64BIT != 0;
    let blocks = sb.blocks;
    let first_data = sb.first_data_block;
    let (bpg, ipg, isz) = (sb.blocks_per_group, sb.inodes_per_group, sb.inode_size);
    let groups = sb.groups;
    let gdt_blocks = sb.gdt_blocks;
    let reserved_gdt = sb.reserved_gdt_blocks;
    let itable_blocks = (ipg * isz).div_ceil(bs);
    if gdt_blocks * bs > MAX_TABLE_BYTES || itable_blocks * bs > MAX_TABLE_BYTES {
        return Err("group descriptor or inode tables larger than 64 MiB".into());
    }
    let mut fs = Fs { read, bs, blocks, tree_blocks: Default::default() };
    let mut w = Wanted::default();

    // Boot block and primary superblock, then each group's backup superblock + GDT.
    w.add(0, first_data + 1);
    let has_backup = |g: u64| -> bool {
        if g <= 1 {
            return g == 0 || compat & COMPAT_SPARSE_SUPER2 == 0 || le32(&raw, 0x24C) == 1;
        }
        if compat & COMPAT_SPARSE_SUPER2 != 0 {
            return g == le32(&raw, 0x24C) || g == le32(&raw, 0x250);
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
    if sb.incompat as u64 & INCOMPAT_MMP != 0 {
        let mmp = le32(&raw, 0x168) | le32(&raw, 0x16C) << 32;
        w.add(mmp, 1);
    }
    let mut gdt = vec![0u8; (gdt_blocks * bs) as usize];
    read(&mut gdt, (first_data + 1) * bs).map_err(|e| format!("reading group descriptors: {e}"))?;
    let descs = group_descriptors(&sb, &gdt, wide)?;

    // Inodes whose data is metadata too (besides directories and slow symlinks):
    // the reserved ones below s_first_ino, and the quota and orphan-file inodes.
    let first_ino = sb.first_ino;
    let mut special = std::collections::BTreeSet::new();
    for off in [0x240, 0x244, 0x26C, 0x280] {
        let i = le32(&raw, off);
        if i != 0 {
            special.insert(i);
        }
    }
    let mut stats = Stats { block_size: bs, ..Stats::default() };
    let mut copier = Copier { out, bs, copied: 0 };
    for (g, d) in descs.iter().enumerate() {
        let g = g as u64;
        w.add(d.block_bitmap, 1);
        let ibm_bytes = fs.block(d.inode_bitmap)?;
        copier.put(d.inode_bitmap, &ibm_bytes)?;
        let mut tab = vec![0u8; (itable_blocks * bs) as usize];
        read(&mut tab, d.inode_table * bs).map_err(|e| format!("reading group {g}'s inode table: {e}"))?;
        copier.put(d.inode_table, &tab)?;
        if d.flags & 1 != 0 {
            continue; // INODE_UNINIT: no inode of this group is in use
        }
        for i in 0..ipg {
            // ipg <= 8 * block size (checked with the superblock): the bit exists.
            if ibm_bytes[(i / 8) as usize] & (1 << (i % 8)) == 0 {
                continue;
            }
            let ino = g * ipg + i + 1;
            let raw = &tab[(i * isz) as usize..(i * isz + 128) as usize];
            stats.inodes_in_use += 1;
            let special = (ino != JOURNAL_INO && ino < first_ino) || special.contains(&ino);
            inode(&mut fs, ino, raw, special, &mut w)?;
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

/// Where one group's bitmaps and inode table are.
struct Group {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    flags: u64,
}

/// The group descriptors, each checked the way e2fsck checks them: bitmaps and inode
/// table inside the filesystem (inside their own group without flex_bg), and no two
/// of them, nor the primary superblock and descriptor table, on the same blocks.
fn group_descriptors(sb: &Superblock, gdt: &[u8], wide: bool) -> Result<Vec<Group>, String> {
    let (bs, desc, bpg, first) = (sb.block_size, sb.desc_size, sb.blocks_per_group, sb.first_data_block);
    let itable_blocks = (sb.inodes_per_group * sb.inode_size).div_ceil(bs);
    let flex = sb.incompat & 0x200 != 0;
    let mut out = Vec::new();
    let mut used: Vec<(u64, u64, String)> =
        vec![(first, 1 + sb.gdt_blocks + sb.reserved_gdt_blocks, "the superblock and descriptors".into())];
    for g in 0..sb.groups {
        let d = &gdt[(g * desc) as usize..((g + 1) * desc) as usize];
        let hi = |o: usize| if wide && desc >= 64 { le32(d, o) << 32 } else { 0 };
        let grp = Group {
            block_bitmap: le32(d, 0) | hi(0x20),
            inode_bitmap: le32(d, 4) | hi(0x24),
            inode_table: le32(d, 8) | hi(0x28),
            flags: le16(d, 0x12),
        };
        let (lo, end) =
            if flex { (first, sb.blocks) } else { (first + g * bpg, (first + (g + 1) * bpg).min(sb.blocks)) };
        for (what, at, len) in [
            ("block bitmap", grp.block_bitmap, 1),
            ("inode bitmap", grp.inode_bitmap, 1),
            ("inode table", grp.inode_table, itable_blocks),
        ] {
            if at < lo || at.saturating_add(len) > end {
                return Err(format!("group {g}'s {what} (block {at}) is outside blocks {lo}..{end}"));
            }
            used.push((at, len, format!("group {g}'s {what}")));
        }
        out.push(grp);
    }
    used.sort_unstable_by_key(|u| u.0);
    for w in used.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(format!("{} overlaps {} (block {})", w[1].2, w[0].2, w[1].0));
        }
    }
    Ok(out)
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
fn inode(fs: &mut Fs, ino: u64, raw: &[u8], special: bool, w: &mut Wanted) -> Result<(), String> {
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
    fs: &mut Fs,
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
            let b = fs.tree_block(ino, child)?;
            extents(fs, ino, &b, data, limit, w, level + 1)?;
        }
    }
    Ok(())
}

fn indirect(fs: &mut Fs, ino: u64, b: u64, depth: usize, data: bool, w: &mut Wanted) -> Result<(), String> {
    if depth == 0 {
        if data {
            w.add(b, 1);
        }
        return Ok(());
    }
    w.add(b, 1);
    let blk = fs.tree_block(ino, b)?;
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

    fn tool(name: &'static str) -> Option<String> {
        crate::tools::for_test(name).map(|p| p.display().to_string())
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

    /// Random edits of a real filesystem's metadata (superblock, descriptors, the
    /// first inodes, directory and extent blocks): the walk ends, with or without an
    /// error, and never panics.
    #[test]
    fn random_metadata_edits_end_without_panic() {
        let Some(mke2fs) = tool("mke2fs") else {
            eprintln!("e2fsprogs missing; skipped");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        for i in 0..40 {
            std::fs::write(tree.join(format!("a/b/f{i}")), vec![b'x'; i * 3000]).unwrap();
        }
        std::os::unix::fs::symlink("a/".repeat(40), tree.join("slow")).unwrap();
        let img = d.path().join("fs.img");
        for opts in [&["-t", "ext4"][..], &["-t", "ext3", "-b", "1024"][..]] {
            let ok = Command::new(&mke2fs)
                .args(["-q", "-F", "-L", "t", "-d"])
                .arg(&tree)
                .args(opts)
                .arg(&img)
                .arg("8M")
                .status()
                .unwrap();
            assert!(ok.success());
            let good = std::fs::read(&img).unwrap();
            let out = tempfile::tempfile().unwrap();
            let mut next = crate::disk::test_rng(0x1234_5678_9ABC_DEF1);
            // Metadata lives in the first 2 MiB here (tables, directories, extent blocks).
            for _ in 0..150 {
                let mut b = good.clone();
                for _ in 0..1 + next() % 6 {
                    let at = if next() % 2 == 0 { 1024 + next() % 8192 } else { next() % (2 << 20) } as usize;
                    let at = at & !3;
                    let v =
                        [0, 1, u32::MAX, 1 << (next() % 32), next() as u32, 0xF30A][(next() % 6) as usize];
                    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                let read = |buf: &mut [u8], at: u64| -> std::io::Result<()> {
                    let src = b
                        .get(at as usize..(at as usize).saturating_add(buf.len()))
                        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                    buf.copy_from_slice(src);
                    Ok(())
                };
                out.set_len(0).unwrap();
                out.set_len(good.len() as u64).unwrap();
                let _ = super::copy(&read, &out);
            }
        }
    }

    /// Descriptors that put two groups' tables on the same blocks, and block maps that
    /// visit a block twice, are errors (bounded work), not walked.
    #[test]
    fn shared_tables_and_blocks_are_refused() {
        let (Some(mke2fs), Some(debugfs)) = (tool("mke2fs"), tool("debugfs")) else {
            eprintln!("e2fsprogs missing; skipped");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs.img");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("f"), vec![1u8; 200 << 10]).unwrap();
        let ok = Command::new(&mke2fs)
            .args(["-q", "-F", "-t", "ext3", "-b", "1024", "-L", "t", "-d"]) // block maps, 8 groups
            .arg(&tree)
            .arg(&img)
            .arg("64M")
            .status()
            .unwrap();
        assert!(ok.success());
        let bytes = std::fs::read(&img).unwrap();
        let copy_of = |b: &[u8]| {
            let out = tempfile::tempfile().unwrap();
            let read = |buf: &mut [u8], at: u64| -> std::io::Result<()> {
                buf.copy_from_slice(&b[at as usize..at as usize + buf.len()]);
                Ok(())
            };
            super::copy(&read, &out)
        };
        copy_of(&bytes).unwrap();
        // Group 0's block bitmap (descriptor at block 2, field 0) on its inode table.
        let mut shared = bytes.clone();
        let itab = le32(&bytes, 2048 + 8) as u32;
        shared[2048..2048 + 4].copy_from_slice(&(itab + 1).to_le_bytes());
        let e = copy_of(&shared).unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
        // The file's single-indirect block (i_block[12]) also as its double-indirect one.
        let stat = Command::new(&debugfs).args(["-R", "stat /f"]).arg(&img).output().unwrap();
        let text = String::from_utf8_lossy(&stat.stdout);
        let ind = text.split("(IND):").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap();
        let ind: u32 = ind.parse().unwrap();
        let ino_at = |b: &[u8]| -> usize {
            // Inode 12 (the first file) in group 0's table: 11 inodes before it.
            let isz = le16(b, 1024 + 0x58) as usize;
            le32(b, 2048 + 8) as usize * 1024 + 11 * isz
        };
        let mut twice = bytes.clone();
        let at = ino_at(&bytes) + 0x28 + 13 * 4;
        twice[at..at + 4].copy_from_slice(&ind.to_le_bytes());
        let e = copy_of(&twice).unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
    }
}
