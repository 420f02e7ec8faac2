//! The one way a build writes an image: open the verified base as a working image, let
//! the layer be composed against its root filesystem (read-only), then finish: grow the
//! disk if asked or needed, write the layer with debugfs, check with `e2fsck -fn`, and
//! write the output format, hashed.
//!
//! Two paths hide behind [`Working`]: the fast path ([`super::overlay`]: a qcow2 base
//! read in place, only the root filesystem's metadata copied, the output streamed once)
//! when the base is a qcow2 this crate reads and the output is not raw; otherwise a raw
//! working copy (`qemu-img convert`). Both end in the same writers
//! ([`super::formats::write_stream`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::overlay::{self, Overlay};
use super::rootfs::{self, RootFs};
use super::{formats, qemu, resize, vhd, DiskError};
use crate::layer::{Layer, Sealed};
use crate::reporter::Clock;
use crate::types::{size, OutFormat, Sha256};

/// What the finished image must be.
#[derive(Debug, Clone)]
pub struct ImageSpec<'a> {
    pub format: OutFormat,
    /// zstd-compressed qcow2 clusters.
    pub compress: bool,
    /// The virtual disk size asked for; `None` keeps the base's and grows only when the
    /// layer (and `reserve`) does not fit.
    pub disk_size: Option<u64>,
    /// Bytes the root filesystem must still have free after the layer, on top of the
    /// layer itself (what the node needs at boot: see `plan::OutputPlan::reserve`).
    pub reserve: u64,
    /// Every time written into the filesystem and the output format.
    pub source_date_epoch: u64,
    /// The build's inputs digest: replaces the random identifiers of output formats.
    pub seed: &'a str,
    /// `<recipe>-<role>-<arch>`: names inside the OVA.
    pub name: &'a str,
}

/// A base image opened for one build.
#[derive(Debug)]
pub struct Working {
    path: WorkPath,
    work: PathBuf,
    ahead: Option<Ahead>,
}

/// A fixed VHD hashes every byte of the disk, holes included, on one core: on the fast
/// path the part of the disk before the root partition is hashed from the base while
/// the layer is composed, and the writer goes on from there, unless the disk grows
/// (its GPT, at the start, changes then).
#[derive(Debug)]
struct Ahead {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<Option<vhd::Prefix>>>>,
    /// The disk's size when the hashing started.
    size: u64,
}

impl Ahead {
    fn start(base: &Path, ov: &Overlay) -> Ahead {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (base, len, flag) = (base.to_path_buf(), ov.root.partition().offset(), stop.clone());
        let thread = std::thread::spawn(move || -> std::io::Result<Option<vhd::Prefix>> {
            let Ok(reader) = super::qcow2::Reader::open(&base)? else { return Ok(None) };
            vhd::hash_prefix(|buf: &mut [u8], at: u64| reader.read_at(buf, at), len, &flag)
        });
        Ahead { stop, thread: Some(thread), size: ov.disk_size() }
    }

    /// The prefix digest, if the disk still starts with the base's bytes (same size).
    fn take(mut self, size: u64) -> Option<vhd::Prefix> {
        if size != self.size {
            return None;
        }
        self.thread.take()?.join().ok()?.ok()?
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug)]
enum WorkPath {
    Fast(Overlay),
    Raw { raw: PathBuf, root: RootFs, flusher: Option<std::thread::JoinHandle<std::io::Result<()>>> },
}

impl Working {
    /// Open `base` (verified) for a build writing `format`, with `work` as the build's
    /// private temp dir; the root partition is the one whose ext4 label is `label`.
    pub fn open(
        base: &Path,
        label: &str,
        format: OutFormat,
        work: &Path,
        clock: &Clock,
    ) -> Result<Working, DiskError> {
        // A raw output has the raw working copy's own layout: it takes that path (and
        // tests compare the two paths through it).
        if format != OutFormat::Raw {
            match overlay::prepare(base, label, &work.join("root.partition"))? {
                Ok(ov) => {
                    clock.say(format_args!(
                        "root filesystem: partition {} labelled {label:?}, {} MiB free; base read in place, \
                         {} MiB of metadata copied",
                        ov.root.partition().number,
                        ov.root.available() >> 20,
                        (ov.stats.blocks_copied * ov.stats.block_size) >> 20
                    ));
                    let ahead = (format == OutFormat::Vhd).then(|| Ahead::start(base, &ov));
                    return Ok(Working { path: WorkPath::Fast(ov), work: work.to_path_buf(), ahead });
                }
                Err(why) => clock.say(format_args!("raw working copy path ({why})")),
            }
        }
        let fmt = super::detect(base)?;
        let raw = work.join("disk.raw");
        clock.say(format_args!("converting base ({}) to a raw working copy", fmt.qemu_name()));
        qemu::to_raw(base, fmt, &raw)?;
        let root = RootFs::locate(&raw, label)?;
        clock.say(format_args!(
            "root filesystem: partition {} labelled {label:?}, {} MiB free",
            root.partition().number,
            root.available() >> 20
        ));
        // e2fsprogs fsyncs the image whenever it closes it: write the fresh working copy
        // back to disk now, while the layer is composed, instead of inside debugfs.
        let flusher = std::fs::File::open(&raw).ok().map(|f| std::thread::spawn(move || f.sync_data()));
        Ok(Working { path: WorkPath::Raw { raw, root, flusher }, work: work.to_path_buf(), ahead: None })
    }

    /// The base's root filesystem, for steps that read it (e.g. the dpkg status).
    pub fn root(&self) -> &RootFs {
        match &self.path {
            WorkPath::Fast(ov) => &ov.root,
            WorkPath::Raw { root, .. } => root,
        }
    }

    /// Write the sealed layer and produce the image at `out` as `spec` says; returns
    /// its sha256. Every file the layer takes from the build host is read once, while
    /// it is laid into the image, and checked against the manifest's sha256.
    pub fn finish(
        self,
        sealed: &Sealed,
        spec: &ImageSpec,
        out: &Path,
        clock: &Clock,
    ) -> Result<Sha256, DiskError> {
        let work = self.work;
        let digests: BTreeMap<&str, &str> = sealed
            .manifest
            .files
            .iter()
            .filter_map(|f| Some((f.path.as_str(), f.sha256.as_deref()?)))
            .collect();
        let expected = |path: &str| digests.get(path).map(|s| s.to_string());
        let layer = &sealed.layer;
        match self.path {
            WorkPath::Fast(ov) => finish_fast(ov, self.ahead, layer, &expected, spec, out, &work, clock),
            WorkPath::Raw { raw, root, flusher } => {
                if let Some(t) = flusher {
                    let _ = t.join();
                }
                finish_raw(raw, root, layer, &expected, spec, out, &work, clock)
            }
        }
    }
}

fn len_of(p: &Path) -> Result<u64, DiskError> {
    Ok(std::fs::metadata(p).map_err(DiskError::io(format!("stat {}", p.display())))?.len())
}

/// The fast path: write the layer into the metadata copy, then stream the output image
/// (hashed as it is written) while e2fsck checks the copy.
#[allow(clippy::too_many_arguments)]
fn finish_fast(
    mut ov: Overlay,
    ahead: Option<Ahead>,
    layer: &Layer,
    expected: &dyn Fn(&str) -> Option<String>,
    spec: &ImageSpec,
    out: &Path,
    work: &Path,
    clock: &Clock,
) -> Result<Sha256, DiskError> {
    let need = rootfs::layer_bytes(layer, ov.root.superblock().block_size)?;
    let want_free = need + spec.reserve;
    if let Some((want, msg)) = target_size(spec.disk_size, ov.disk_size(), want_free, ov.root.available())? {
        fits_format(spec.format, want)?;
        clock.say(msg);
        ov.grow(want, work, spec.source_date_epoch)?;
    }
    check_space(ov.disk_size(), need, ov.root.available())?;
    if let Some(want) = vhd_size(spec.format, ov.disk_size()) {
        clock.say(format_args!(
            "growing the disk to {} (a VHD must be a whole number of MiB)",
            size::human(want)
        ));
        ov.grow(want, work, spec.source_date_epoch)?;
    }
    fits_format(spec.format, ov.disk_size())?;
    clock.say(format_args!("writing {} layer entries with debugfs (files allocated only)", layer.len()));
    let placed = ov.root.write_layer(layer, work)?;
    let fs_spec = ov.root.spec().to_string();
    clock.say(format_args!(
        "streaming the {} image ({} layer files laid in from their sources) while e2fsck -fn checks \
         the root filesystem",
        spec.format,
        placed.len()
    ));
    let fsck = std::thread::spawn(move || rootfs::fsck_spec(&fs_spec));
    let prefix = ahead.and_then(|a| a.take(ov.disk_size()));
    if let Some(p) = &prefix {
        clock.say(format_args!("(the first {} MiB were hashed while the layer was composed)", p.len >> 20));
    }
    let st = formats::Stamp { ahead: prefix.as_ref(), ..stamp(spec) };
    let written = ov.write(out, spec.format, spec.compress, &st, &placed, expected);
    clock.say("image written");
    let checked = fsck
        .join()
        .map_err(|_| DiskError::Tool { tool: "e2fsck", msg: "the e2fsck thread panicked".into() })?;
    checked?;
    let sha = written?;
    Sha256::parse(&sha).map_err(|msg| DiskError::Corrupt { path: out.display().to_string(), msg })
}

/// The raw working copy: make the layer fit, write it, check, convert, hash.
#[allow(clippy::too_many_arguments)]
fn finish_raw(
    raw: PathBuf,
    mut root: RootFs,
    layer: &Layer,
    expected: &dyn Fn(&str) -> Option<String>,
    spec: &ImageSpec,
    out: &Path,
    work: &Path,
    clock: &Clock,
) -> Result<Sha256, DiskError> {
    let need = rootfs::layer_bytes(layer, root.superblock().block_size)?;
    let cur = len_of(root.image())?;
    let want_free = need + spec.reserve;
    if let Some((want, msg)) = target_size(spec.disk_size, cur, want_free, root.available())? {
        fits_format(spec.format, want)?;
        clock.say(msg);
        resize::grow(&mut root, want, work, spec.source_date_epoch)?;
    }
    check_space(len_of(root.image())?, need, root.available())?;
    if let Some(want) = vhd_size(spec.format, len_of(root.image())?) {
        clock.say(format_args!(
            "growing the disk to {} (a VHD must be a whole number of MiB)",
            size::human(want)
        ));
        resize::grow(&mut root, want, work, spec.source_date_epoch)?;
    }
    fits_format(spec.format, len_of(root.image())?)?;
    clock.say(format_args!("writing {} layer entries with debugfs (files allocated only)", layer.len()));
    let placed = root.write_layer(layer, work)?;
    clock.say(format_args!("laying in {} layer files from their sources", placed.len()));
    rootfs::lay_data(root.image(), root.offset(), root.superblock().block_size, &placed, expected)?;
    clock.say("checking the root filesystem with e2fsck -fn");
    root.fsck()?;
    clock.say(format_args!("writing the {} image", spec.format));
    let f = std::fs::File::open(&raw).map_err(DiskError::io(format!("opening {}", raw.display())))?;
    let size = len_of(&raw)?;
    let clusters =
        super::stream::clusters_of(&f, size).map_err(DiskError::io(format!("mapping {}", raw.display())))?;
    let fill = super::stream::fill_from(&f);
    let sha = formats::write_stream(spec.format, spec.compress, out, &stamp(spec), size, &clusters, fill)?;
    Sha256::parse(&sha).map_err(|msg| DiskError::Corrupt { path: out.display().to_string(), msg })
}

fn stamp<'a>(spec: &ImageSpec<'a>) -> formats::Stamp<'a> {
    formats::Stamp {
        seed: spec.seed,
        source_date_epoch: spec.source_date_epoch,
        name: spec.name,
        ahead: None,
    }
}

/// A disk of `size` bytes fits the output format (before anything is written).
fn fits_format(format: OutFormat, size: u64) -> Result<(), DiskError> {
    if matches!(format, OutFormat::Vmdk | OutFormat::Ova) && size > super::vmdk::MAX_SIZE {
        return Err(DiskError::FormatLimit { format, size: size::human(size), max: "2 TiB" });
    }
    if format == OutFormat::Vhdx && size > super::vhdx::MAX_SIZE {
        return Err(DiskError::FormatLimit { format, size: size::human(size), max: "64 TiB" });
    }
    Ok(())
}

/// Azure wants a VHD's virtual size in whole MiB: the size to grow a disk of `cur`
/// bytes to, if it is not.
fn vhd_size(format: OutFormat, cur: u64) -> Option<u64> {
    (format == OutFormat::Vhd && cur % formats::VHD_ALIGN != 0)
        .then(|| cur.div_ceil(formats::VHD_ALIGN) * formats::VHD_ALIGN)
}

/// The disk size to grow to (with what to say), if any: the requested size, or (none
/// requested) enough for `need` bytes (the layer and the reserve) plus headroom when the
/// `avail` bytes of the root filesystem are too few. Disks never shrink.
fn target_size(
    requested: Option<u64>,
    cur: u64,
    need: u64,
    avail: u64,
) -> Result<Option<(u64, String)>, DiskError> {
    Ok(match requested {
        Some(want) if want < cur => {
            return Err(DiskError::Shrink { requested: size::human(want), current: cur });
        }
        Some(want) if want > cur => Some((want, format!("growing the disk to {}", size::human(want)))),
        Some(_) => None,
        None if need > avail => {
            let headroom = (need / 4).max(256 << 20);
            let want = (cur + need - avail + headroom).div_ceil(1 << 20) << 20;
            let msg = format!(
                "the layer (and the room the node needs at boot) takes {} MiB but the root filesystem \
                 has {} MiB free: growing the disk to {} (set --disk-size to choose)",
                need >> 20,
                avail >> 20,
                size::human(want)
            );
            Some((want, msg))
        }
        None => None,
    })
}

/// Fail naming --disk-size when the layer does not fit.
fn check_space(cur: u64, need: u64, avail: u64) -> Result<(), DiskError> {
    if need > avail {
        let short = need - avail;
        let suggest = size::human((cur + short + (256 << 20)).div_ceil(1 << 30) << 30);
        return Err(DiskError::NoSpace { need_mib: need.div_ceil(1 << 20), free_mib: avail >> 20, suggest });
    }
    Ok(())
}
