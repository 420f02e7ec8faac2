//! Crafting hostile inputs from valid fixtures: GPT and ext4 edits with checksums
//! kept valid, so the parsers' deeper checks (not just a CRC) are what refuses them.

use std::os::unix::fs::FileExt;
use std::path::Path;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

pub fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(p).unwrap().read_exact_at(&mut b, off).unwrap();
    b
}

pub fn write_at(p: &Path, off: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new().write(true).open(p).unwrap().write_all_at(bytes, off).unwrap();
}

pub fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

pub fn u64le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The primary GPT header (sector 1) and its entry array.
pub fn gpt(disk: &Path) -> (Vec<u8>, Vec<u8>) {
    let h = read_at(disk, 512, 512);
    let n = u32le(&h, 80) as usize * u32le(&h, 84) as usize;
    let arr = read_at(disk, u64le(&h, 72) * 512, n);
    (h, arr)
}

/// Write header and array back with both CRCs recomputed.
pub fn put_gpt(disk: &Path, mut h: Vec<u8>, arr: &[u8]) {
    h[88..92].copy_from_slice(&CRC32.checksum(arr).to_le_bytes());
    h[16..20].fill(0);
    let size = u32le(&h, 12) as usize;
    let crc = CRC32.checksum(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    write_at(disk, 512, &h);
    write_at(disk, u64le(&h, 72) * 512, arr);
}

/// The same table with 256-byte entries (half as many, same array size): legal per
/// UEFI, valid CRCs.
pub fn gpt_entries_of_256_bytes(disk: &Path) {
    let (mut h, arr) = gpt(disk);
    let n = u32le(&h, 80) as usize;
    let mut wide = vec![0u8; arr.len()];
    for i in 0..n / 2 {
        wide[i * 256..i * 256 + 128].copy_from_slice(&arr[i * 128..i * 128 + 128]);
    }
    assert!(arr[(n / 2) * 128..].iter().all(|&b| b == 0), "entries beyond the first half are used");
    h[80..84].copy_from_slice(&((n / 2) as u32).to_le_bytes());
    h[84..88].copy_from_slice(&256u32.to_le_bytes());
    put_gpt(disk, h, &wide);
}

/// Let GPT entry `number` end `sectors` past the end of the disk (CRCs valid).
pub fn gpt_partition_past_end(disk: &Path, number: usize, sectors: u64) {
    let (h, mut arr) = gpt(disk);
    let disk_sectors = std::fs::metadata(disk).unwrap().len() / 512;
    let e = (number - 1) * 128;
    arr[e + 40..e + 48].copy_from_slice(&(disk_sectors + sectors).to_le_bytes());
    put_gpt(disk, h, &arr);
}

/// Overwrite a 32-bit field of the ext4 superblock of the filesystem at `fs_offset`.
pub fn ext4_sb_u32(disk: &Path, fs_offset: u64, field: u64, v: u32) {
    write_at(disk, fs_offset + 1024 + field, &v.to_le_bytes());
}
