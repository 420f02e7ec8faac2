//! The GPT: read with the `gpt` crate; rewritten by hand only to grow the disk
//! (the crate compacts the entry array on write, which would renumber noble's
//! partitions 14/15/16, so it is not used for writing).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{DiskError, SECTOR};

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

/// All used partitions of the raw disk at `path`, by entry number.
pub fn read(path: &Path) -> Result<Vec<Partition>, DiskError> {
    let disk = ::gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(::gpt::disk::LogicalBlockSize::Lb512)
        .open(path)
        .map_err(|e| DiskError::NoGpt { path: path.display().to_string(), msg: e.to_string() })?;
    Ok(used(&disk))
}

/// The same, from a guest-disk view (e.g. of a qcow2 image).
pub fn read_from<D: ::gpt::DiskDevice>(dev: D, name: &Path) -> Result<Vec<Partition>, DiskError> {
    let disk = ::gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(::gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(dev)
        .map_err(|e| DiskError::NoGpt { path: name.display().to_string(), msg: e.to_string() })?;
    Ok(used(&disk))
}

fn used<D: ::gpt::DiskDevice>(disk: &::gpt::GptDisk<D>) -> Vec<Partition> {
    disk.partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(&number, p)| Partition {
            number,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            name: p.name.clone(),
        })
        .collect()
}

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The parts of a GPT header that growing the disk changes.
struct Header {
    raw: Vec<u8>,
    size: usize,
    entries_lba: u64,
    entries: u32,
    entry_size: u32,
}

impl Header {
    fn read(f: &mut File, path: &Path) -> Result<Header, DiskError> {
        let mut raw = vec![0u8; SECTOR as usize];
        f.seek(SeekFrom::Start(SECTOR)).map_err(DiskError::io("seeking GPT header"))?;
        f.read_exact(&mut raw).map_err(DiskError::io("reading GPT header"))?;
        let bad = |msg: &str| DiskError::NoGpt { path: path.display().to_string(), msg: msg.into() };
        if &raw[..8] != b"EFI PART" {
            return Err(bad("primary GPT header signature missing"));
        }
        let size = u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default()) as usize;
        if !(92..=SECTOR as usize).contains(&size) {
            return Err(bad("bad GPT header size"));
        }
        let u64at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or_default());
        let u32at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap_or_default());
        let (entries_lba, entries, entry_size) = (u64at(72), u32at(80), u32at(84));
        if entry_size < 128 || entries == 0 || entries > 1024 {
            return Err(bad("bad GPT entry array geometry"));
        }
        Ok(Header { raw, size, entries_lba, entries, entry_size })
    }

    fn array_sectors(&self) -> u64 {
        (self.entries as u64 * self.entry_size as u64).div_ceil(SECTOR)
    }

    fn sealed(&self, my: u64, alt: u64, last_usable: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = self.raw.clone();
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        h[16..20].copy_from_slice(&[0; 4]);
        let crc = CRC32.checksum(&h[..self.size]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Grow the disk file at `path` to `new_len` bytes: extend the file, move the backup
/// GPT to the new end, let entry `number` (which must be last on disk) end at the new
/// last usable LBA, and fix the protective MBR. The filesystem inside is not touched.
/// Returns the grown partition.
pub fn grow(path: &Path, new_len: u64, number: u32) -> Result<Partition, DiskError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(DiskError::io(format!("opening {}", path.display())))?;
    let old_len = f.metadata().map_err(DiskError::io("stat disk"))?.len();
    let h = Header::read(&mut f, path)?;
    let arr_len = (h.entries as u64 * h.entry_size as u64) as usize;
    let mut arr = vec![0u8; arr_len];
    f.seek(SeekFrom::Start(h.entries_lba * SECTOR)).map_err(DiskError::io("seeking GPT entries"))?;
    f.read_exact(&mut arr).map_err(DiskError::io("reading GPT entries"))?;

    let parts = read(path)?;
    let target = parts.iter().find(|p| p.number == number).cloned().ok_or_else(|| DiskError::Corrupt {
        path: path.display().to_string(),
        msg: format!("no partition {number}"),
    })?;
    if parts.iter().any(|p| p.first_lba > target.first_lba) {
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

    let e = (number as usize - 1) * h.entry_size as usize;
    arr[e + 40..e + 48].copy_from_slice(&last_usable.to_le_bytes());
    let arr_crc = CRC32.checksum(&arr);

    let io = |c: &str| DiskError::io(format!("{c} {}", path.display()));
    f.set_len(new_len).map_err(io("extending"))?;
    // The old backup header and array now lie inside the grown partition: clear them
    // so no stale GPT is found there.
    let old_backup_start = (old_sectors - 1 - h.array_sectors()) * SECTOR;
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
