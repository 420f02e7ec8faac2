//! Hole-preserving copies between files: only the data extents (found with
//! SEEK_DATA/SEEK_HOLE) are copied, in the kernel (copy_file_range), so moving a
//! partition of a mostly empty multi-GiB disk costs what its data costs.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Copy `len` bytes from `src` at `src_off` to `dst` at `dst_off`, skipping holes in
/// `src` (the destination range must already read as zeros where `src` has holes).
pub fn copy_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<()> {
    let end = src_off + len;
    let mut pos = src_off;
    while pos < end {
        let Some(data) = seek(src, pos, libc::SEEK_DATA)? else { break };
        if data >= end {
            break;
        }
        let hole = seek(src, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        copy_exact(src, data, dst, dst_off + (data - src_off), hole - data)?;
        pos = hole;
    }
    Ok(())
}

/// The data extents `(offset, len)` of `f` (everything that is not a hole).
pub fn data_extents(f: &File) -> std::io::Result<Vec<(u64, u64)>> {
    let end = f.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < end {
        let Some(data) = seek(f, pos, libc::SEEK_DATA)? else { break };
        if data >= end {
            break;
        }
        let hole = seek(f, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}

/// lseek with SEEK_DATA/SEEK_HOLE; `None` when there is no more data (ENXIO).
fn seek(f: &File, off: u64, whence: i32) -> std::io::Result<Option<u64>> {
    let off = i64::try_from(off).map_err(|_| std::io::Error::other("offset too large"))?;
    // SAFETY: lseek on an open fd owned by `f`; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

fn copy_exact(src: &File, mut so: u64, dst: &File, mut d_o: u64, mut len: u64) -> std::io::Result<()> {
    while len > 0 {
        let mut a = so as i64;
        let mut b = d_o as i64;
        let chunk = len.min(1 << 30) as usize;
        // SAFETY: valid fds and pointers to local offsets; the kernel copies between files.
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut a, dst.as_raw_fd(), &mut b, chunk, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::ENOSYS) | Some(libc::EINVAL)) {
                return copy_userspace(src, so, dst, d_o, len);
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "source ended early"));
        }
        so += n as u64;
        d_o += n as u64;
        len -= n as u64;
    }
    Ok(())
}

fn copy_userspace(src: &File, mut so: u64, dst: &File, mut d_o: u64, mut len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    while len > 0 {
        let n = (len as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], so)?;
        dst.write_all_at(&buf[..n], d_o)?;
        so += n as u64;
        d_o += n as u64;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn copies_data_and_keeps_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("a"))
            .unwrap();
        src.set_len(8 << 20).unwrap();
        src.write_all_at(b"hello", 1 << 20).unwrap();
        src.write_all_at(b"tail", (8 << 20) - 4).unwrap();
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("b"))
            .unwrap();
        dst.set_len(9 << 20).unwrap();
        copy_range(&src, 4096, &dst, 0, (8 << 20) - 4096).unwrap();
        let mut b = [0u8; 5];
        dst.read_exact_at(&mut b, (1 << 20) - 4096).unwrap();
        assert_eq!(&b, b"hello");
        let mut t = [0u8; 4];
        dst.read_exact_at(&mut t, (8 << 20) - 4 - 4096).unwrap();
        assert_eq!(&t, b"tail");
    }
}
