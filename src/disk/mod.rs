//! Offline disk image surgery, rootless: no VM, no mount, no loop device.
//!
//! A verified base image (qcow2 or raw, told apart by magic bytes) is converted to a
//! sparse raw working copy ([`qemu`]); its GPT is read with the `gpt` crate ([`gpt`]);
//! the root partition is the one whose ext4 superblock carries the recipe's root label
//! ([`ext4`]), never a partition number; files are written into it with batched
//! `debugfs -w` on `raw?offset=BYTES` ([`debugfs`], [`rootfs`]); the disk can be grown
//! offline ([`resize`]); the output formats are written from the finished disk as a
//! stream ([`stream`], [`formats`]: [`qcow2`], [`vmdk`], [`vhd`], [`vhdx`], the OVA).

pub mod debugfs;
pub mod ext4;
pub mod ext4meta;
pub mod format;
pub mod formats;
pub mod gpt;
pub mod interrupt;
pub mod open;
pub mod overlay;
pub mod qcow2;
pub mod qemu;
pub mod resize;
pub mod rootfs;
pub mod sparse;
pub mod stream;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;
pub mod working;

pub use format::{detect, BaseFormat};
pub use open::{open_read_only, OpenImage};
pub use rootfs::RootFs;
pub use working::{ImageSpec, Working};

use crate::exit::{Classify, Code};

/// Everything that can go wrong in disk surgery. Input errors (exit 2) are about the
/// base image or the requested size; the rest are runtime failures (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: base image is neither qcow2 nor raw{detail}")]
    BadFormat { path: String, detail: String },
    #[error("{path}: no GPT partition table: {msg}")]
    NoGpt { path: String, msg: String },
    #[error("{path}: no partition has a filesystem labelled {label:?} (found: {found})")]
    NoRoot { path: String, label: String, found: String },
    #[error("{path}: the partition labelled {label:?} (partition {part}) holds {fs}, not ext4")]
    RootNotExt4 { path: String, label: String, part: u32, fs: String },
    /// The root filesystem's own metadata does not hold together.
    #[error("{path}: the filesystem labelled {label:?} (partition {part}) is corrupt: {msg}")]
    BadFs { path: String, label: String, part: u32, msg: String },
    #[error(
        "not enough free space in the root filesystem: the layer needs {need_mib} MiB, \
         {free_mib} MiB are free; pass a larger --disk-size (e.g. --disk-size {suggest})"
    )]
    NoSpace { need_mib: u64, free_mib: u64, suggest: String },
    #[error(
        "--disk-size {requested} is smaller than the base image's disk ({current} bytes); disks only grow"
    )]
    Shrink { requested: String, current: u64 },
    #[error("a {format} holds a disk of at most {max}; this one is {size}: choose a smaller --disk-size or another format")]
    FormatLimit { format: crate::types::OutFormat, size: String, max: &'static str },
    #[error("{tool} failed: {msg}")]
    Tool { tool: &'static str, msg: String },
    #[error("debugfs reported errors {op}:\n{detail}")]
    Debugfs { op: &'static str, detail: String },
    #[error("layer path {0:?} cannot be written with debugfs (whitespace, quotes or control characters)")]
    BadPath(String),
    #[error("{path} exists in the base image as a {existing}; the layer wants a {wanted} there")]
    TypeClash { path: String, existing: String, wanted: String },
    #[error(
        "{path}: {symlink} is a symlink in the base image (-> {target}); nothing is written through \
         a symlink: install below {resolved} instead"
    )]
    ThroughSymlink { path: String, symlink: String, target: String, resolved: String },
    #[error(
        "source_date_epoch {epoch} is after {limit}, the last time the root filesystem's \
         {inode_size}-byte inodes can store"
    )]
    TimeRange { epoch: u64, limit: &'static str, inode_size: u64 },
    /// A layer file's bytes, read to lay them into the image, are not the ones the
    /// manifest records (the cache or the build's temp dir changed under the build).
    #[error(
        "{path}: its source {source_file} changed after it was verified (sha256 {actual}, the \
         manifest records {expected}); nothing is written"
    )]
    Changed { path: String, source_file: String, expected: String, actual: String },
    #[error("e2fsck found problems in the root filesystem after writing:\n{0}")]
    Fsck(String),
    #[error("{path}: {msg}")]
    Corrupt { path: String, msg: String },
    /// An image given to `inspect`/`verify`/`lint` that is damaged or not a file.
    #[error("{path}: {msg}")]
    BadImage { path: String, msg: String },
    #[error("{path}: no such image")]
    NoImage { path: String },
    #[error("{path}: not a disk image (imgbuild reads qcow2, raw, vmdk, vhdx, vhd and ova){detail}")]
    NotAnImage { path: String, detail: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl DiskError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
        let context = context.into();
        move |source| DiskError::Io { context, source }
    }
}

impl Classify for DiskError {
    fn code(&self) -> Code {
        match self {
            DiskError::BadFormat { .. }
            | DiskError::NoGpt { .. }
            | DiskError::NoRoot { .. }
            | DiskError::RootNotExt4 { .. }
            | DiskError::BadFs { .. }
            | DiskError::NoSpace { .. }
            | DiskError::Shrink { .. }
            | DiskError::FormatLimit { .. }
            | DiskError::BadPath(_)
            | DiskError::TypeClash { .. }
            | DiskError::ThroughSymlink { .. }
            | DiskError::TimeRange { .. }
            | DiskError::BadImage { .. }
            | DiskError::NoImage { .. }
            | DiskError::NotAnImage { .. } => Code::Input,
            DiskError::Changed { .. } => Code::Integrity,
            DiskError::Tool { .. }
            | DiskError::Debugfs { .. }
            | DiskError::Fsck(_)
            | DiskError::Corrupt { .. }
            | DiskError::Io { .. } => Code::Runtime,
        }
    }
}

/// Reads bytes at an offset: of a disk (a raw file, or a qcow2 image's guest view) or
/// of a partition.
pub type ReadAt<'a> = dyn Fn(&mut [u8], u64) -> std::io::Result<()> + 'a;

/// Sector size of every image imgbuild handles (cloud images use 512-byte LBAs).
pub const SECTOR: u64 = 512;

/// A small deterministic generator (xorshift64) for the parsers' random-edit tests.
#[cfg(test)]
pub(crate) fn test_rng(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
