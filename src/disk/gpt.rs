//! The GPT, read and checked by hand the way the Linux kernel checks it (the image
//! must boot: a table the kernel refuses has no partitions at boot), and rewritten by
//! hand to grow the disk.
//!
//! The reader accepts what `block/partitions/efi.c` accepts, and refuses (rather than
//! skips) what it would not use: a protective MBR with a 0xEE record starting at LBA
//! 1; a primary header at LBA 1 with the signature, a size of 92..=512 bytes, a good
//! CRC and `MyLBA` 1; usable LBAs inside the disk; **128-byte** entries (UEFI allows
//! 128·2ⁿ, but the kernel reads no other size); an entry array of at most 4 MiB
//! with a good CRC, outside the usable area; and used entries that lie inside the
//! usable area without overlapping. Every read is bounded by the header's fields,
//! which are checked first.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{DiskError, ReadAt, SECTOR};

/// One used GPT entry. `number` is the 1-based entry index (what `sgdisk -i N` and
/// Linux's `vdaN` use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn len(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The only entry size the Linux kernel reads (`sizeof(gpt_entry)`).
const ENTRY_SIZE: u32 = 128;
/// The kernel allocates the entry array in one piece (KMALLOC_MAX_SIZE, 4 MiB).
const MAX_ARRAY_BYTES: u64 = 4 << 20;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A primary GPT that passed every check.
#[derive(Debug, Clone)]
struct Table {
    /// The header sector (512 bytes) as on disk.
    header: Vec<u8>,
    header_size: usize,
    entries_lba: u64,
    entries: u32,
    /// The entry array as on disk.
    array: Vec<u8>,
    parts: Vec<Partition>,
}

impl Table {
    fn array_sectors(&self) -> u64 {
        (self.entries as u64 * ENTRY_SIZE as u64).div_ceil(SECTOR)
    }
}

fn u32at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64at(b: &[u8], o: usize) -> u64 {
    u32at(b, o) as u64 | (u32at(b, o + 4) as u64) << 32
}

/// Read and check the primary GPT of a disk of `len` bytes.
fn parse(read: &ReadAt, len: u64, name: &Path) -> Result<Table, DiskError> {
    let bad = |msg: String| DiskError::NoGpt { path: name.display().to_string(), msg };
    let io = |what: &str| DiskError::io(format!("reading the {what} of {}", name.display()));
    let sectors = len / SECTOR;
    if sectors < 3 {
        return Err(bad(format!("the disk is only {len} bytes")));
    }
    let last_lba = sectors - 1;

    let mut mbr = vec![0u8; SECTOR as usize];
    read(&mut mbr, 0).map_err(io("protective MBR"))?;
    let protective = mbr[510..512] == [0x55, 0xaa]
        && (0..4).any(|i| {
            let rec = &mbr[446 + i * 16..462 + i * 16];
            rec[4] == 0xEE && u32at(rec, 8) == 1
        });
    if !protective {
        return Err(bad("no protective MBR (a 0xEE partition record starting at LBA 1): \
                        the Linux kernel would not read this GPT"
            .into()));
    }

    let mut header = vec![0u8; SECTOR as usize];
    read(&mut header, SECTOR).map_err(io("GPT header"))?;
    if &header[..8] != b"EFI PART" {
        return Err(bad("no GPT header signature at LBA 1".into()));
    }
    let header_size = u32at(&header, 12) as usize;
    if !(92..=SECTOR as usize).contains(&header_size) {
        return Err(bad(format!("GPT header size {header_size} is outside 92..=512")));
    }
    let mut h = header[..header_size].to_vec();
    h[16..20].fill(0);
    let (stored, computed) = (u32at(&header, 16), CRC32.checksum(&h));
    if stored != computed {
        return Err(bad(format!(
            "GPT header CRC {stored:#010x} does not match its contents ({computed:#010x})"
        )));
    }
    if u64at(&header, 24) != 1 {
        return Err(bad(format!("the primary GPT header says it is at LBA {}, not 1", u64at(&header, 24))));
    }
    let (first_usable, last_usable) = (u64at(&header, 40), u64at(&header, 48));
    if first_usable > last_usable || last_usable > last_lba || first_usable < 2 {
        return Err(bad(format!(
            "usable LBAs {first_usable}..={last_usable} do not fit a disk of {sectors} sectors"
        )));
    }
    let (entries_lba, entries, entry_size) = (u64at(&header, 72), u32at(&header, 80), u32at(&header, 84));
    if entry_size != ENTRY_SIZE {
        return Err(bad(format!(
            "partition entries are {entry_size} bytes; the Linux kernel reads only 128-byte entries \
             (a kernel booting this image would find no partitions)"
        )));
    }
    let array_bytes = entries as u64 * ENTRY_SIZE as u64;
    if entries == 0 || array_bytes > MAX_ARRAY_BYTES {
        return Err(bad(format!("{entries} partition entries (at most {} allowed)", MAX_ARRAY_BYTES / 128)));
    }
    let array_end = entries_lba.saturating_add(array_bytes.div_ceil(SECTOR)); // exclusive
    let inside_usable = entries_lba <= last_usable && array_end > first_usable;
    if entries_lba < 2 || array_end > sectors || inside_usable {
        return Err(bad(format!(
            "the partition entry array (LBA {entries_lba}, {entries} entries) is not between the header \
             and the usable area of a disk of {sectors} sectors"
        )));
    }
    let mut array = vec![0u8; array_bytes as usize];
    read(&mut array, entries_lba * SECTOR).map_err(io("GPT partition entries"))?;
    let (stored, computed) = (u32at(&header, 88), CRC32.checksum(&array));
    if stored != computed {
        return Err(bad(format!(
            "partition entry array CRC {stored:#010x} does not match its contents ({computed:#010x})"
        )));
    }

    let mut parts: Vec<Partition> = Vec::new();
    for (i, e) in array.chunks_exact(ENTRY_SIZE as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue; // unused: zero partition type GUID
        }
        let number = i as u32 + 1;
        let (first, last) = (u64at(e, 32), u64at(e, 40));
        if first > last {
            return Err(bad(format!("partition {number} ends (LBA {last}) before it starts (LBA {first})")));
        }
        if last > last_lba {
            return Err(bad(format!(
                "partition {number} (LBA {first}..={last}) ends past the end of the disk ({sectors} sectors)"
            )));
        }
        if first < first_usable || last > last_usable {
            return Err(bad(format!(
                "partition {number} (LBA {first}..={last}) lies outside the usable LBAs \
                 {first_usable}..={last_usable}"
            )));
        }
        let units: Vec<u16> = e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        parts.push(Partition {
            number,
            first_lba: first,
            last_lba: last,
            name: String::from_utf16_lossy(&units[..end]),
        });
    }
    let mut by_start: Vec<&Partition> = parts.iter().collect();
    by_start.sort_by_key(|p| p.first_lba);
    for w in by_start.windows(2) {
        if w[1].first_lba <= w[0].last_lba {
            return Err(bad(format!("partitions {} and {} overlap", w[0].number, w[1].number)));
        }
    }
    Ok(Table { header, header_size, entries_lba, entries, array, parts })
}

/// All used partitions of the raw disk at `path`, by entry number.
pub fn read(path: &Path) -> Result<Vec<Partition>, DiskError> {
    Ok(read_table(path)?.parts)
}

fn read_table(path: &Path) -> Result<Table, DiskError> {
    let f = std::fs::File::open(path).map_err(DiskError::io(format!("opening {}", path.display())))?;
    let len = f.metadata().map_err(DiskError::io(format!("stat {}", path.display())))?.len();
    parse(&|buf: &mut [u8], at: u64| f.read_exact_at(buf, at), len, path)
}

/// The same, from a qcow2 image's guest disk.
pub fn read_from(dev: &super::qcow2::Reader, name: &Path) -> Result<Vec<Partition>, DiskError> {
    Ok(parse(&|buf: &mut [u8], at: u64| dev.read_at(buf, at), dev.size(), name)?.parts)
}

impl Table {
    /// The header for LBA `my`, rewritten with the given fields and a fresh CRC.
    fn sealed(&self, my: u64, alt: u64, last_usable: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = self.header.clone();
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        h[16..20].copy_from_slice(&[0; 4]);
        let crc = CRC32.checksum(&h[..self.header_size]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Grow the disk file at `path` to `new_len` bytes: extend the file, move the backup
/// GPT to the new end, let entry `number` (which must be last on disk) end at the new
/// last usable LBA, and fix the protective MBR. The filesystem inside is not touched.
/// Returns the grown partition.
pub fn grow(path: &Path, new_len: u64, number: u32) -> Result<Partition, DiskError> {
    let h = read_table(path)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(DiskError::io(format!("opening {}", path.display())))?;
    let old_len = f.metadata().map_err(DiskError::io("stat disk"))?.len();
    let mut arr = h.array.clone();
    let target = h.parts.iter().find(|p| p.number == number).cloned().ok_or_else(|| DiskError::Corrupt {
        path: path.display().to_string(),
        msg: format!("no partition {number}"),
    })?;
    if h.parts.iter().any(|p| p.first_lba > target.first_lba) {
        return Err(DiskError::Corrupt {
            path: path.display().to_string(),
            msg: format!("partition {number} is not the last one on disk; cannot grow it"),
        });
    }

    let old_sectors = old_len / SECTOR;
    let sectors = new_len / SECTOR;
    let backup_hdr = sectors - 1;
    let backup_arr = backup_hdr - h.array_sectors();
    let last_usable = backup_arr - 1;

    let e = (number as usize - 1) * ENTRY_SIZE as usize;
    arr[e + 40..e + 48].copy_from_slice(&last_usable.to_le_bytes());
    let arr_crc = CRC32.checksum(&arr);

    let io = |c: &str| DiskError::io(format!("{c} {}", path.display()));
    f.set_len(new_len).map_err(io("extending"))?;
    // The old backup header and array now lie inside the grown partition: clear them
    // so no stale GPT is found there.
    let old_backup_start = old_sectors.saturating_sub(1 + h.array_sectors()) * SECTOR;
    f.write_all_at(&vec![0u8; ((h.array_sectors() + 1) * SECTOR) as usize], old_backup_start)
        .map_err(io("clearing old backup GPT in"))?;

    let primary = h.sealed(1, backup_hdr, last_usable, h.entries_lba, arr_crc);
    let backup = h.sealed(backup_hdr, 1, last_usable, backup_arr, arr_crc);
    let put = |at: u64, bytes: &[u8]| -> Result<(), DiskError> {
        f.write_all_at(bytes, at).map_err(io("writing GPT to"))
    };
    put(SECTOR, &primary)?;
    put(h.entries_lba * SECTOR, &arr)?;
    put(backup_arr * SECTOR, &arr)?;
    put(backup_hdr * SECTOR, &backup)?;
    // Protective MBR: the 0xEE entry covers the disk, capped at 2^32-1 sectors.
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0).map_err(io("reading MBR of"))?;
    for i in 0..4 {
        let pe = 446 + i * 16;
        if mbr[pe + 4] == 0xEE {
            let n = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
            mbr[pe + 12..pe + 16].copy_from_slice(&n.to_le_bytes());
        }
    }
    put(0, &mbr)?;
    f.sync_all().map_err(io("syncing"))?;
    Ok(Partition { last_lba: last_usable, ..target })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk of `sectors` sectors with a protective MBR and a primary GPT of
    /// `entries` entries of `entry_size` bytes holding `parts` (first, last LBA).
    pub(crate) fn disk(sectors: u64, entry_size: u32, entries: u32, parts: &[(u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * SECTOR) as usize];
        d[446 + 4] = 0xEE;
        d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&u32::try_from(sectors - 1).unwrap().to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xaa;
        let array_sectors = (entries as u64 * entry_size as u64).div_ceil(SECTOR);
        let mut arr = vec![0u8; (entries * entry_size) as usize];
        for (i, &(first, last)) in parts.iter().enumerate() {
            let e = &mut arr[i * entry_size as usize..];
            e[..16].copy_from_slice(&[0xaf; 16]);
            e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            e[56..58].copy_from_slice(&(b'p' as u16).to_le_bytes());
        }
        let h = &mut d[512..1024];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
        h[40..48].copy_from_slice(&(2 + array_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 2 - array_sectors).to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&entries.to_le_bytes());
        h[84..88].copy_from_slice(&entry_size.to_le_bytes());
        h[88..92].copy_from_slice(&CRC32.checksum(&arr).to_le_bytes());
        let crc = CRC32.checksum(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d[1024..1024 + arr.len()].copy_from_slice(&arr);
        d
    }

    fn parse_mem(d: &[u8]) -> Result<Vec<Partition>, String> {
        let read = |buf: &mut [u8], at: u64| -> std::io::Result<()> {
            let src = d
                .get(at as usize..at as usize + buf.len())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        };
        parse(&read, d.len() as u64, Path::new("d")).map(|t| t.parts).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_a_well_formed_table() {
        let d = disk(2048, 128, 128, &[(2000, 2010), (40, 1999)]);
        let p = parse_mem(&d).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].number, p[0].first_lba, p[0].last_lba, p[0].name.as_str()), (1, 2000, 2010, "p"));
        assert_eq!(p[1].offset(), 40 * 512);
    }

    /// Legal per UEFI, valid CRCs, but not what the kernel reads: refused, no panic.
    #[test]
    fn entries_of_256_bytes_are_refused_naming_the_kernel() {
        let e = parse_mem(&disk(2048, 256, 128, &[(100, 200)])).unwrap_err();
        assert!(e.contains("256 bytes") && e.contains("128-byte"), "{e}");
    }

    #[test]
    fn malformed_tables_are_refused_with_a_reason() {
        // Root ends past the end of the disk (the usable area is widened to match, CRCs valid).
        let mut d = disk(2048, 128, 128, &[(100, 99_999)]);
        d[512 + 48..512 + 56].copy_from_slice(&99_999u64.to_le_bytes());
        reseal(&mut d);
        assert!(parse_mem(&d).unwrap_err().contains("usable LBAs"));
        let e = parse_mem(&disk(2048, 128, 128, &[(100, 4000)])).unwrap_err();
        assert!(e.contains("partition 1") && e.contains("past the end of the disk"), "{e}");
        let e = parse_mem(&disk(2048, 128, 128, &[(100, 300), (300, 400)])).unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        let e = parse_mem(&disk(2048, 128, 128, &[(300, 100)])).unwrap_err();
        assert!(e.contains("before it starts"), "{e}");
        let mut d = disk(2048, 128, 128, &[(100, 200)]);
        d[1024] ^= 1;
        assert!(parse_mem(&d).unwrap_err().contains("entry array CRC"));
        let mut d = disk(2048, 128, 128, &[(100, 200)]);
        d[512 + 30] ^= 1;
        assert!(parse_mem(&d).unwrap_err().contains("header CRC"));
        let mut d = disk(2048, 128, 128, &[(100, 200)]);
        d[446 + 4] = 0x83;
        assert!(parse_mem(&d).unwrap_err().contains("protective MBR"));
        let mut d = disk(2048, 128, 128, &[(100, 200)]);
        d[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut d);
        assert!(parse_mem(&d).unwrap_err().contains("entries"));
        assert!(parse_mem(&[0u8; 1024]).unwrap_err().contains("only 1024 bytes"));
    }

    /// Many random edits of a valid table (CRCs usually recomputed): errors, no panic.
    #[test]
    fn random_edits_never_panic() {
        let good = disk(256, 128, 128, &[(100, 150), (40, 99), (151, 200)]);
        let mut next = crate::disk::test_rng(0x9E37_79B9_7F4A_7C15);
        let mut refused = 0;
        for _ in 0..3_000 {
            let mut d = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % (34 * 512)) as usize;
                match next() % 3 {
                    0 => d[at] ^= 1 << (next() % 8),
                    1 => d[at] = next() as u8,
                    _ => {
                        let at = at & !7;
                        let v = [0, 1, u64::MAX, u64::MAX >> 1, 1 << (next() % 64), next()]
                            [(next() % 6) as usize];
                        d[at..at + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            if next() % 4 != 0 {
                let (n, size) = (u32at(&d, 512 + 80) as usize, u32at(&d, 512 + 84) as usize);
                if let Some(arr) = n.checked_mul(size).filter(|&l| l <= 16384) {
                    let crc = CRC32.checksum(&d[1024..1024 + arr]);
                    d[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
                }
                if (92..=512).contains(&(u32at(&d, 512 + 12) as usize)) {
                    let size = u32at(&d, 512 + 12) as usize;
                    d[512 + 16..512 + 20].fill(0);
                    let crc = CRC32.checksum(&d[512..512 + size]);
                    d[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
                }
            }
            if let Ok(parts) = parse_mem(&d) {
                for p in parts {
                    assert!(p.first_lba <= p.last_lba && p.last_lba < 256, "{p:?}");
                }
            } else {
                refused += 1;
            }
        }
        assert!(refused > 300, "the edits hardly reached the checks: {refused} refused");
    }

    fn reseal(d: &mut [u8]) {
        let h = &mut d[512..1024];
        h[16..20].fill(0);
        let crc = CRC32.checksum(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }
}
