//! Raw and fixed-VHD output from the disk stream: the disk's bytes at their own
//! offsets in a sparse file (unallocated and all-zero clusters stay holes, so only data
//! is written), hashed as written with the holes' zeros; a fixed VHD adds its 512-byte
//! footer (the "Virtual Hard Disk Image Format Specification": cookie `conectix`,
//! disk type 2 = fixed, data offset all ones, current size = original size) after the
//! last byte of the disk.
//!
//! The footer is what `qemu-img convert -O vpc -o subformat=fixed,force_size=on`
//! writes, the conversion Azure's documentation gives for Linux images (creator
//! application `qem2`: readers take the size from the footer, not from the CHS
//! geometry, which is set to its maximum): time stamp = the build's
//! `source_date_epoch`, unique id derived from the inputs digest.

use std::fs::File;
use std::path::Path;

use super::stream::{self, Hasher, CLUSTER};

/// Alignment of a VHD's virtual size (Azure refuses anything else).
pub const ALIGN: u64 = 1 << 20;

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
const VHD_EPOCH: u64 = 946_684_800;

/// One's complement of the byte sum of the footer, its checksum field taken as zero.
pub fn checksum(footer: &[u8; 512]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(b as u32));
    !sum
}

/// The footer of a fixed VHD of `size` bytes.
pub fn fixed_footer(size: u64, source_date_epoch: u64, seed: &str) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    let stamp = u32::try_from(source_date_epoch.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"qem2");
    f[32..36].copy_from_slice(&0x0005_0003u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
                                                    // CHS at its maximum (65535/16/255): the size is the footer's, not the geometry's.
    f[56..58].copy_from_slice(&0xffffu16.to_be_bytes());
    f[58] = 16;
    f[59] = 255;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&super::stream::derived_id(seed, "vhd UniqueId"));
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Write the disk of `size` bytes (`clusters` + `fill`) to `out` as a sparse raw file,
/// followed by `footer` when given. Returns the file's sha256 (hex).
pub fn write<F>(
    out: &Path,
    size: u64,
    clusters: &[u64],
    footer: Option<&[u8; 512]>,
    mut fill: F,
) -> std::io::Result<String>
where
    F: FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
{
    let f = File::create(out)?;
    f.set_len(size + footer.map_or(0, |_| 512))?;
    let hash = Hasher::spawn();
    let res = (|| -> std::io::Result<()> {
        let mut at = 0u64;
        for (first, n) in stream::runs(clusters) {
            let lo = first * CLUSTER;
            if lo >= size {
                break;
            }
            let len = (n * CLUSTER).min(size - lo) as usize;
            let mut buf = hash.buffer();
            buf.resize((n * CLUSTER) as usize, 0);
            fill(first, n, &mut buf)?;
            // The last cluster may reach past the end of the disk.
            buf.truncate(len);
            stream::write_unless_zero(&f, &buf, lo)?;
            hash.zeros(lo - at)?;
            hash.bytes(buf)?;
            at = lo + len as u64;
        }
        hash.zeros(size - at)?;
        if let Some(foot) = footer {
            std::os::unix::fs::FileExt::write_all_at(&f, foot, size)?;
            hash.bytes(foot.to_vec())?;
        }
        Ok(())
    })();
    let digest = hash.finish()?;
    res?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data lands at its offset, holes stay holes, the footer follows the disk, the
    /// digest is the file's; qemu-img reads the VHD's size and bytes back.
    #[test]
    fn fixed_vhd_reads_back_and_hashes() {
        let d = tempfile::tempdir().unwrap();
        let size = 8u64 << 20;
        let clusters = [0u64, 1, 50, 127];
        let out = d.path().join("a.vhd");
        let foot = fixed_footer(size, 1_724_198_400, "seed");
        let fill = |first: u64, n: u64, buf: &mut [u8]| {
            for i in 0..n {
                let c = &mut buf[(i * CLUSTER) as usize..((i + 1) * CLUSTER) as usize];
                c.fill(if first + i == 1 { 0 } else { (first + i) as u8 });
            }
            Ok(())
        };
        let digest = write(&out, size, &clusters, Some(&foot), fill).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, size + 512);
        use sha2::Digest;
        assert_eq!(digest, hex::encode(sha2::Sha256::digest(&bytes)));
        assert_eq!(&bytes[size as usize..], &foot[..]);
        assert_eq!(u32::from_be_bytes(foot[64..68].try_into().unwrap()), checksum(&foot));
        assert_eq!(u32::from_be_bytes(foot[24..28].try_into().unwrap()), 1_724_198_400 - 946_684_800);
        for g in 0..128u64 {
            let c = &bytes[(g * CLUSTER) as usize..((g + 1) * CLUSTER) as usize];
            let want = if clusters.contains(&g) && g != 1 { g as u8 } else { 0 };
            assert!(c.iter().all(|&b| b == want), "cluster {g}");
        }
        // Only the three data clusters take space.
        let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap()) * 512;
        assert!(used <= 4 * CLUSTER + 4096, "{used} bytes allocated");
        if crate::tools::for_test("qemu-img").is_none() {
            assert!(std::env::var_os("CI").is_none(), "qemu-img is required in CI");
            eprintln!("qemu-img missing; qemu-img part skipped");
            return;
        }
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", "-f", "vpc"])
            .arg(&out)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["virtual-size"].as_u64(), Some(size), "{info}");
        let raw = d.path().join("a.raw");
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(&out)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(std::fs::read(&raw).unwrap() == bytes[..size as usize]);
    }

    /// Raw output of a disk that ends inside a cluster: the file is the disk's size, the
    /// last cluster cut where the disk ends (the fill still gets whole clusters).
    #[test]
    fn raw_ends_inside_the_last_cluster() {
        let d = tempfile::tempdir().unwrap();
        let size = (1u64 << 20) + 4096;
        let out = d.path().join("a.raw");
        let digest = write(&out, size, &[0, 16], None, |_, n, buf: &mut [u8]| {
            assert_eq!(buf.len() as u64, n * CLUSTER);
            buf.fill(7);
            Ok(())
        })
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, size);
        use sha2::Digest;
        assert_eq!(digest, hex::encode(sha2::Sha256::digest(&bytes)));
        assert!(bytes[..CLUSTER as usize].iter().all(|&b| b == 7));
        assert!(bytes[CLUSTER as usize..1 << 20].iter().all(|&b| b == 0));
        assert!(bytes[1 << 20..].iter().all(|&b| b == 7));
    }

    /// The footer is byte for byte what qemu-img writes for the same disk, but for the
    /// time stamp, unique id and checksum (qemu-img's are the clock and random).
    #[test]
    fn footer_matches_qemu_img() {
        if crate::tools::for_test("qemu-img").is_none() {
            assert!(std::env::var_os("CI").is_none(), "qemu-img is required in CI");
            eprintln!("qemu-img missing; skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("z.raw");
        std::fs::File::create(&raw).unwrap().set_len(24 << 20).unwrap();
        let q = d.path().join("z.vhd");
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on"])
            .arg(&raw)
            .arg(&q)
            .status()
            .unwrap();
        assert!(st.success());
        let theirs = std::fs::read(&q).unwrap();
        let mut theirs: [u8; 512] = theirs[theirs.len() - 512..].try_into().unwrap();
        let mut ours = fixed_footer(24 << 20, 0, "s");
        for f in [&mut theirs, &mut ours] {
            f[24..28].fill(0);
            f[64..84].fill(0);
        }
        assert_eq!(ours, theirs);
    }
}
