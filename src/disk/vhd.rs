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
//!
//! Hashing is what a fixed VHD costs: every byte of the virtual size, holes included,
//! goes through SHA-256 on one core, while only the data is written. So the writer
//! can go on from a digest of the disk's first bytes taken ahead of the stream
//! ([`Prefix`]: the build hashes the part of the base before the root partition while
//! the layer is composed), and the zeros of the holes are hashed from one buffer that
//! stays in the cache.

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

/// The SHA-256 state after the first `len` bytes of the disk, taken ahead of the
/// stream; the writer hashes from there on.
#[derive(Clone)]
pub struct Prefix {
    pub hash: sha2::Sha256,
    pub len: u64,
}

impl std::fmt::Debug for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prefix({} bytes)", self.len)
    }
}

/// Hash the first `len` bytes of a disk read with `read(buf, offset)`, a MiB at a time;
/// `None` once `stop` is set (the prefix will not be used).
pub fn hash_prefix<R>(
    read: R,
    len: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<Option<Prefix>>
where
    R: Fn(&mut [u8], u64) -> std::io::Result<()>,
{
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; (CLUSTER * stream::CHUNK_CLUSTERS) as usize];
    let mut at = 0u64;
    while at < len {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let n = (len - at).min(buf.len() as u64) as usize;
        read(&mut buf[..n], at)?;
        hash.update(&buf[..n]);
        at += n as u64;
    }
    Ok(Some(Prefix { hash, len }))
}

/// Write the disk of `size` bytes (`clusters` + `fill`) to `out` as a sparse raw file,
/// followed by `footer` when given. Returns the file's sha256 (hex). With `prefix`,
/// the disk's first `prefix.len` bytes are written but not hashed again: the caller
/// vouches that they are the bytes `prefix` was taken from.
pub fn write<F>(
    out: &Path,
    size: u64,
    clusters: &[u64],
    footer: Option<&[u8; 512]>,
    prefix: Option<&Prefix>,
    mut fill: F,
) -> std::io::Result<String>
where
    F: FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
{
    let f = File::create(out)?;
    f.set_len(size + footer.map_or(0, |_| 512))?;
    let prefix = prefix.filter(|p| p.len <= size);
    let hash = match prefix {
        Some(p) => Hasher::resume(p.hash.clone()),
        None => Hasher::spawn(),
    };
    hash.around(|hash| {
        // Everything before `at` has been hashed.
        let mut at = prefix.map_or(0, |p| p.len);
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
            let end = lo + len as u64;
            if end <= at {
                continue;
            }
            if lo < at {
                buf.drain(..(at - lo) as usize);
            } else {
                hash.zeros(lo - at)?;
            }
            hash.bytes(buf)?;
            at = end;
        }
        hash.zeros(size - at)?;
        if let Some(foot) = footer {
            std::os::unix::fs::FileExt::write_all_at(&f, foot, size)?;
            hash.bytes(foot.to_vec())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::qemu::testing as qemu;

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
        let digest = write(&out, size, &clusters, Some(&foot), None, fill).unwrap();
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
        if !qemu::have_qemu_img() {
            return;
        }
        let info = qemu::info(&out, Some("vpc"));
        assert_eq!(info["virtual-size"].as_u64(), Some(size), "{info}");
        assert!(qemu::guest_bytes(&out, "vpc") == bytes[..size as usize]);
    }

    /// Going on from a prefix digest gives the digest of the whole file, whether the
    /// prefix ends at a run's start, inside a run or inside a hole; the bytes before
    /// it are still written.
    #[test]
    fn prefix_digest_is_continued() {
        let d = tempfile::tempdir().unwrap();
        let size = 8u64 << 20;
        let clusters: Vec<u64> = (0..20).chain(40..45).chain([127]).collect();
        let fill = |first: u64, n: u64, buf: &mut [u8]| {
            for i in 0..n {
                stream::test_pattern(
                    first + i,
                    &mut buf[(i * CLUSTER) as usize..((i + 1) * CLUSTER) as usize],
                );
            }
            Ok(())
        };
        let foot = fixed_footer(size, 0, "s");
        let whole = d.path().join("whole.vhd");
        let want = write(&whole, size, &clusters, Some(&foot), None, fill).unwrap();
        let bytes = std::fs::read(&whole).unwrap();
        let read = |buf: &mut [u8], at: u64| {
            buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
            Ok(())
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        for len in [0, 16 * CLUSTER, 5 * CLUSTER + 512, 30 * CLUSTER, 3 << 20, size] {
            let p = hash_prefix(read, len, &stop).unwrap().unwrap();
            let out = d.path().join(format!("p{len}.vhd"));
            assert_eq!(write(&out, size, &clusters, Some(&foot), Some(&p), fill).unwrap(), want, "{len}");
            assert!(std::fs::read(&out).unwrap() == bytes, "{len}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(hash_prefix(read, size, &stop).unwrap().is_none());
    }

    /// Raw output of a disk that ends inside a cluster: the file is the disk's size, the
    /// last cluster cut where the disk ends (the fill still gets whole clusters).
    #[test]
    fn raw_ends_inside_the_last_cluster() {
        let d = tempfile::tempdir().unwrap();
        let size = (1u64 << 20) + 4096;
        let out = d.path().join("a.raw");
        let digest = write(&out, size, &[0, 16], None, None, |_, n, buf: &mut [u8]| {
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
        if !qemu::have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("z.raw");
        std::fs::File::create(&raw).unwrap().set_len(24 << 20).unwrap();
        let q = d.path().join("z.vhd");
        qemu::run("convert -f raw -O vpc -o subformat=fixed,force_size=on", &[&raw, &q]);
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
