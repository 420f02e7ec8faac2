//! The one way to open an image read-only (`inspect`, `verify`, `lint --image`, the base
//! image's dpkg status for `lock`): any format a build writes — qcow2, raw, vmdk, vhdx,
//! vhd (fixed or dynamic), ova — told apart by its bytes, never by its name. Formats
//! debugfs cannot read in place get a sparse raw view (`qemu-img convert`) in a temp dir
//! that lives as long as the [`OpenImage`].
//!
//! What is not an image, or a damaged one, is an input error that says so: a missing
//! file, a directory or device, a file of another kind, a truncated image.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::rootfs::RootFs;
use super::{qcow2, qemu, DiskError, SECTOR};
use crate::tools;
use crate::types::OutFormat;

/// An image opened read-only: the root filesystem found by its label, on a raw view.
#[derive(Debug)]
pub struct OpenImage {
    pub root: RootFs,
    /// What the file is (a fixed and a dynamic vhd are both `Vhd`).
    pub format: OutFormat,
    /// Holds the raw view (when one was needed) while `root` reads it.
    _tmp: super::interrupt::WorkDir,
}

/// Open `image` read-only and find the partition whose ext4 label is `root_label`.
pub fn open_read_only(image: &Path, root_label: &str) -> Result<OpenImage, DiskError> {
    let path = image.display().to_string();
    let len = regular_file(image)?;
    let f = std::fs::File::open(image).map_err(DiskError::io(format!("opening {path}")))?;
    let mut head = [0u8; 1024];
    let n = qcow2::read_upto(&f, &mut head, 0).map_err(DiskError::io(format!("reading {path}")))?;
    let head = &head[..n];
    let mut tail = [0u8; 512];
    let fixed_vhd = len >= 1024
        && f.read_exact_at(&mut tail, len - 512).is_ok()
        && &tail[..8] == b"conectix"
        && u32::from_be_bytes([tail[60], tail[61], tail[62], tail[63]]) == 2;
    // A sparse copy beside the image when that directory is writable (same filesystem,
    // usually roomy), else in the system temp dir.
    let beside = image.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
    let (tmp, _) = beside
        .and_then(|p| super::interrupt::work_dir(p, "open-").ok())
        .map(Ok)
        .unwrap_or_else(|| super::interrupt::work_dir(&std::env::temp_dir(), "open-"))
        .map_err(DiskError::io("creating a temp dir"))?;
    let converted = tmp.path().join("image.raw");
    let (format, raw) = if head.starts_with(b"QFI\xfb") {
        // Refuses backing and external data files: they would read other host files.
        super::detect(image)?;
        check_qcow2(image, len)?;
        convert(image, "qcow2", &converted)?;
        (OutFormat::Qcow2, converted)
    } else if head.starts_with(b"KDMV") {
        convert(image, "vmdk", &converted)?;
        (OutFormat::Vmdk, converted)
    } else if head.starts_with(b"vhdxfile") {
        convert(image, "vhdx", &converted)?;
        (OutFormat::Vhdx, converted)
    } else if head.starts_with(b"conectix") {
        convert(image, "vpc", &converted)?;
        (OutFormat::Vhd, converted)
    } else if fixed_vhd {
        // The disk, then the 512-byte footer: its own raw view.
        (OutFormat::Vhd, image.to_path_buf())
    } else if head.get(257..262) == Some(b"ustar") {
        let vmdk = extract_ova_disk(image, tmp.path())?;
        convert(&vmdk, "vmdk", &converted)?;
        let _ = std::fs::remove_file(&vmdk);
        (OutFormat::Ova, converted)
    } else if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        (OutFormat::Raw, image.to_path_buf())
    } else {
        return Err(DiskError::NotAnImage { path, detail: super::format::what_is(head) });
    };
    check_gpt_extent(&raw, image)?;
    let root = RootFs::locate(&raw, root_label)?;
    Ok(OpenImage { root, format, _tmp: tmp })
}

/// The size of the image file at `image`, which must exist and be a regular file (not a
/// directory, a device such as `/dev/zero`, a fifo).
pub fn regular_file(image: &Path) -> Result<u64, DiskError> {
    let path = image.display().to_string();
    let meta = match std::fs::metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DiskError::NoImage { path }),
        Err(e) => return Err(DiskError::io(format!("reading {path}"))(e)),
    };
    if !meta.is_file() {
        return Err(DiskError::BadImage {
            path,
            msg: format!("not a regular file (a {})", file_kind(&meta)),
        });
    }
    Ok(meta.len())
}

impl OpenImage {
    /// A directory for scratch files next to the raw view, removed with it.
    pub fn scratch(&self) -> &Path {
        self._tmp.path()
    }
}

fn file_kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// A qcow2 whose tables or data clusters lie past the end of the file was cut short
/// (qemu-img would read zeros there and the damage would surface later, as nonsense).
fn check_qcow2(image: &Path, len: u64) -> Result<(), DiskError> {
    let truncated = |what: String| DiskError::BadImage {
        path: image.display().to_string(),
        msg: format!("truncated: {what}, but the file has {len} bytes"),
    };
    let r = match qcow2::Reader::open(image) {
        Ok(Ok(r)) => r,
        // Outside what the reader supports: qemu-img checks it.
        Ok(Err(qcow2::Unreadable::Unsupported(_))) => return Ok(()),
        Ok(Err(qcow2::Unreadable::Corrupt(msg))) => {
            return Err(DiskError::BadImage { path: image.display().to_string(), msg })
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(truncated("its L1/L2 tables extend past the end".into()))
        }
        Err(e) => return Err(DiskError::io(format!("reading {}", image.display()))(e)),
    };
    let cs = r.cluster_size();
    // The allocated clusters only: a walk over the virtual size could take days.
    for g in r.allocated() {
        let end = match r.loc(g) {
            qcow2::Loc::Zero => continue,
            qcow2::Loc::Data(off) => off + cs,
            qcow2::Loc::Compressed { off, .. } => off + 1,
        };
        if end > len {
            return Err(truncated(format!("guest cluster {g} is stored up to byte {end}")));
        }
    }
    Ok(())
}

/// The GPT's backup header, and every partition, must lie inside the disk: a raw disk
/// cut short has neither.
fn check_gpt_extent(raw: &Path, image: &Path) -> Result<(), DiskError> {
    let f = std::fs::File::open(raw).map_err(DiskError::io(format!("opening {}", raw.display())))?;
    let len = f.metadata().map_err(DiskError::io(format!("stat {}", raw.display())))?.len();
    let mut hdr = [0u8; 512];
    if f.read_exact_at(&mut hdr, SECTOR).is_err() || &hdr[..8] != b"EFI PART" {
        return Ok(()); // no GPT: RootFs::locate says so
    }
    let le64 = |o: usize| u64::from_le_bytes(hdr[o..o + 8].try_into().unwrap_or_default());
    let (backup_lba, last_usable) = (le64(32), le64(48));
    let need = backup_lba.max(last_usable).saturating_add(1).saturating_mul(SECTOR);
    if need > len {
        return Err(DiskError::BadImage {
            path: image.display().to_string(),
            msg: format!("truncated: its partition table describes a disk of {need} bytes, it has {len}"),
        });
    }
    Ok(())
}

/// `qemu-img convert -f FMT -O raw`; a file qemu-img cannot read as `fmt` is a bad image.
fn convert(src: &Path, fmt: &str, dst: &Path) -> Result<(), DiskError> {
    // A missing qemu-img is the host's problem (exit 1), not the image's.
    tools::find(&tools::QEMU_IMG).map_err(|e| DiskError::Tool { tool: "qemu-img", msg: e.to_string() })?;
    let args: [&std::ffi::OsStr; 7] = [
        "convert".as_ref(),
        "-f".as_ref(),
        fmt.as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ];
    qemu::run(&tools::QEMU_IMG, &args).map(|_| ()).map_err(|e| match e {
        DiskError::Tool { msg, .. } => DiskError::BadImage {
            path: src.display().to_string(),
            msg: format!("not a readable {fmt} image (qemu-img: {msg})"),
        },
        e => e,
    })
}

/// Copy the single `.vmdk` out of an OVA (a tar whose first member is an `.ovf`).
fn extract_ova_disk(ova: &Path, tmp: &Path) -> Result<PathBuf, DiskError> {
    let bad = |msg: &str| DiskError::BadImage { path: ova.display().to_string(), msg: msg.into() };
    let io = |what: &str| DiskError::io(format!("{what} {}", ova.display()));
    let f = std::fs::File::open(ova).map_err(io("opening"))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    let mut first = true;
    let mut found = None;
    for e in ar.entries().map_err(io("reading"))? {
        let mut e = e.map_err(io("reading"))?;
        let name = e.path().map_err(io("reading"))?.to_string_lossy().into_owned();
        if first && !name.ends_with(".ovf") {
            return Err(bad("not an OVA: a tar whose first member is not an .ovf descriptor"));
        }
        first = false;
        if name.ends_with(".vmdk") {
            if found.is_some() {
                return Err(bad("an OVA with more than one disk"));
            }
            let out = tmp.join("disk.vmdk");
            let mut w =
                std::fs::File::create(&out).map_err(DiskError::io(format!("creating {}", out.display())))?;
            std::io::copy(&mut e, &mut w).map_err(io("extracting the disk of"))?;
            found = Some(out);
        }
    }
    found.ok_or_else(|| bad("an OVA without a .vmdk disk"))
}
