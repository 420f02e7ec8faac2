//! `imgbuild build`: recipe → plan → fetch (cache) → raw working copy → root fs
//! found by label → layer composed and sealed → grown if needed → written with
//! debugfs → e2fsck → converted → published with its sidecars.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::disk::{self, OutFormat, RootFs};
use crate::layer::{Content, Kind, Layer};
use crate::plan::Plan;
use crate::reporter::Reporter;

/// Everything a build needs once the downloads are verified.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub plan: &'a Plan,
    /// The verified base image blob.
    pub base: PathBuf,
    /// Verified artifact blobs by artifact name.
    pub downloads: BTreeMap<String, PathBuf>,
    pub output_dir: PathBuf,
    pub format: OutFormat,
    /// Requested virtual disk size in bytes (`--disk-size` or the recipe's); `None`
    /// keeps the base size and grows only when the layer does not fit.
    pub disk_size: Option<u64>,
    pub reporter: Reporter,
}

/// Produces the sealed layer. Gets the plan, the downloads, a private work dir and
/// the base root filesystem (read-only use: e.g. `/var/lib/dpkg/status`). This is
/// where extra layer steps hook in.
pub type Composer<'c> = dyn Fn(&Plan, &BTreeMap<String, PathBuf>, &Path, &RootFs) -> Result<Layer> + 'c;

/// The layer of a normal build: the layer module's composition, then the seal
/// (`/etc/imgbuild/manifest.json` and `release`) last.
pub fn default_composer(
    plan: &Plan,
    dl: &BTreeMap<String, PathBuf>,
    work: &Path,
    _base: &RootFs,
) -> Result<Layer> {
    let mut layer = crate::layer::compose(plan, dl, work)?;
    // Extra layer steps (e.g. packages resolved against the base's dpkg status,
    // read through `_base.read_file`) go here, before the seal.
    crate::layer::seal(&mut layer, plan)?;
    Ok(layer)
}

/// Run the disk half of a build. Nothing appears in `output_dir` unless everything
/// succeeded; the temp dir (inside `output_dir`, so the final renames stay on one
/// filesystem) is removed either way.
pub fn build(job: &Job, compose: &Composer) -> Result<crate::output::Outputs> {
    let clock = job.reporter.clock();
    let say = |m: &str| clock.say(m);
    std::fs::create_dir_all(&job.output_dir)
        .with_context(|| format!("creating output dir {}", job.output_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".imgbuild-")
        .tempdir_in(&job.output_dir)
        .with_context(|| format!("creating a temp dir in {}", job.output_dir.display()))?;
    let work = tmp.path();
    disk::interrupt::register(work.to_path_buf());
    let r = build_in(job, compose, &tmp, &say);
    disk::interrupt::forget(work);
    let out = r?;
    tmp.close().context("removing the build's temp dir")?;
    say("done");
    Ok(out)
}

fn build_in(
    job: &Job,
    compose: &Composer,
    tmp: &tempfile::TempDir,
    say: &dyn Fn(&str),
) -> Result<crate::output::Outputs> {
    let plan = job.plan;
    let work = tmp.path();
    let layer_dir = work.join("layer");
    std::fs::create_dir_all(&layer_dir)?;

    // The fast path (see disk::overlay) when it applies.
    if job.format == OutFormat::Qcow2 {
        let copy = work.join("root.partition");
        match disk::overlay::prepare(&job.base, &plan.root_label, &copy)? {
            Ok(mut ov) => {
                say(&format!(
                    "root filesystem: partition {} labelled {:?}, {} MiB free; base read in place, \
                     {} MiB of metadata copied",
                    ov.root.partition().number,
                    plan.root_label,
                    ov.root.available() >> 20,
                    (ov.stats.blocks_copied * ov.stats.block_size) >> 20
                ));
                let layer = compose(plan, &job.downloads, &layer_dir, &ov.root)?;
                say(&format!("composed the layer: {} entries", layer.len()));
                let need = disk::rootfs::layer_bytes(&layer, ov.root.superblock().block_size)?;
                if let Some((want, msg)) = target_size(job, ov.disk_size(), need, ov.root.available())? {
                    say(&msg);
                    ov.grow(want, work, plan.source_date_epoch)?;
                }
                check_space(ov.disk_size(), need, ov.root.available())?;
                return finish_overlay(job, ov, &layer, work, say);
            }
            Err(why) => say(&format!("raw working copy path ({why})")),
        }
    }

    let fmt = disk::detect(&job.base)?;
    let raw = work.join("disk.raw");
    say(&format!("converting base ({}) to a raw working copy", fmt.qemu_name()));
    disk::qemu::to_raw(&job.base, fmt, &raw)?;
    let mut root = RootFs::locate(&raw, &plan.root_label)?;
    say(&format!(
        "root filesystem: partition {} labelled {:?}, {} MiB free",
        root.partition().number,
        plan.root_label,
        root.available() >> 20
    ));

    // e2fsprogs fsyncs the image whenever it closes it: write the fresh working
    // copy back to disk now, while the layer is composed, instead of inside debugfs.
    let flusher = std::fs::File::open(&raw).map(|f| std::thread::spawn(move || f.sync_data()));
    let layer = compose(plan, &job.downloads, &layer_dir, &root);
    if let Ok(t) = flusher {
        let _ = t.join();
    }
    let layer = layer?;
    say(&format!("composed the layer: {} entries", layer.len()));

    fit(job, &mut root, &layer, work, &say)?;
    // formats: Azure wants a VHD's virtual size in whole MiB.
    let cur = std::fs::metadata(root.image())?.len();
    if job.format == OutFormat::Vhd && cur % disk::formats::VHD_ALIGN != 0 {
        let want = cur.div_ceil(disk::formats::VHD_ALIGN) * disk::formats::VHD_ALIGN;
        say(&format!(
            "growing the disk to {} (a VHD must be a whole number of MiB)",
            disk::size::human(want)
        ));
        disk::resize::grow(&mut root, want, work, plan.source_date_epoch)?;
    }
    say(&format!("writing {} layer entries with debugfs", layer.len()));
    root.write_layer(&layer, work)?;
    say("checking the root filesystem with e2fsck -fn");
    root.fsck()?;

    let [img_name, ..] = crate::output::names(&plan.stem(), job.format.as_str());
    let staged = work.join(&img_name);
    let manifest = manifest_bytes(&layer)?;
    let seed: serde_json::Value =
        serde_json::from_slice(&manifest).context("parsing the layer's manifest")?;
    say(&format!("converting to {}", job.format));
    let stamp = disk::formats::Stamp {
        seed: seed["inputs_digest"].as_str().unwrap_or(""),
        source_date_epoch: plan.source_date_epoch,
        name: &plan.stem(),
    };
    disk::formats::write(&raw, job.format, &staged, &stamp)?;
    // Free the working copy before the sidecars: it can be several GiB.
    let _ = std::fs::remove_file(&raw);
    say("hashing the image, writing the manifest, checksum and SBOM");
    let out = crate::output::publish(
        work,
        &staged,
        &job.output_dir,
        &plan.stem(),
        job.format.as_str(),
        &manifest,
        plan.source_date_epoch,
    )?;
    Ok(out)
}

/// The rest of the fast path: write the layer into the metadata copy, then stream
/// the output qcow2 (hashed as it is written) while e2fsck checks the copy.
fn finish_overlay(
    job: &Job,
    mut ov: disk::overlay::Overlay,
    layer: &Layer,
    work: &Path,
    say: &dyn Fn(&str),
) -> Result<crate::output::Outputs> {
    let plan = job.plan;
    say(&format!("writing {} layer entries with debugfs", layer.len()));
    ov.root.write_layer(layer, work)?;
    let spec = ov.root.spec().to_string();
    say("streaming the qcow2 image while e2fsck -fn checks the root filesystem");
    let fsck = std::thread::spawn(move || disk::rootfs::fsck_spec(&spec));
    let [img_name, ..] = crate::output::names(&plan.stem(), job.format.as_str());
    let staged = work.join(&img_name);
    let written = ov.write_qcow2(&staged);
    say("image written");
    let checked = fsck.join().map_err(|_| anyhow::anyhow!("the e2fsck thread panicked"))?;
    checked?;
    let sha = written?;
    let manifest = manifest_bytes(layer)?;
    say("writing the manifest, checksum and SBOM");
    crate::output::publish_hashed(
        work,
        &staged,
        &sha,
        &job.output_dir,
        &plan.stem(),
        job.format.as_str(),
        &manifest,
        plan.source_date_epoch,
    )
}

/// Make sure the layer fits: grow to the requested size, or (no size requested)
/// grow automatically with headroom; fail naming --disk-size otherwise.
fn fit(job: &Job, root: &mut RootFs, layer: &Layer, work: &Path, say: &dyn Fn(&str)) -> Result<()> {
    let need = disk::rootfs::layer_bytes(layer, root.superblock().block_size)?;
    let cur = std::fs::metadata(root.image())?.len();
    if let Some((want, msg)) = target_size(job, cur, need, root.available())? {
        say(&msg);
        disk::resize::grow(root, want, work, job.plan.source_date_epoch)?;
    }
    check_space(std::fs::metadata(root.image())?.len(), need, root.available())
}

/// The disk size to grow to (with what to say), if any: the requested size, or
/// (none requested) enough for a layer of `need` bytes plus headroom when the
/// `avail` bytes of the root filesystem are too few. Disks never shrink.
fn target_size(job: &Job, cur: u64, need: u64, avail: u64) -> Result<Option<(u64, String)>> {
    Ok(match job.disk_size {
        Some(want) if want < cur => {
            return Err(disk::DiskError::Shrink { requested: disk::size::human(want), current: cur }.into())
        }
        Some(want) if want > cur => Some((want, format!("growing the disk to {}", disk::size::human(want)))),
        Some(_) => None,
        None if need > avail => {
            let headroom = (need / 4).max(256 << 20);
            let want = (cur + need - avail + headroom).div_ceil(1 << 20) << 20;
            let msg = format!(
                "the layer needs {} MiB but the root filesystem has {} MiB free: growing the disk to {} \
                 (set --disk-size to choose)",
                need >> 20,
                avail >> 20,
                disk::size::human(want)
            );
            Some((want, msg))
        }
        None => None,
    })
}

/// Fail naming --disk-size when the layer does not fit.
fn check_space(cur: u64, need: u64, avail: u64) -> Result<()> {
    if need > avail {
        let short = need - avail;
        let suggest = disk::size::human((cur + short + (256 << 20)).div_ceil(1 << 30) << 30);
        return Err(disk::DiskError::NoSpace {
            need_mib: need.div_ceil(1 << 20),
            free_mib: avail >> 20,
            suggest,
        }
        .into());
    }
    Ok(())
}

/// The manifest the layer carries at /etc/imgbuild/manifest.json.
fn manifest_bytes(layer: &Layer) -> Result<Vec<u8>> {
    match layer.get(crate::manifest::IN_IMAGE_PATH).map(|e| &e.kind) {
        Some(Kind::File(Content::Bytes(b))) => Ok(b.clone()),
        Some(Kind::File(Content::Path(p))) => Ok(std::fs::read(p)?),
        _ => anyhow::bail!("the layer has no {}", crate::manifest::IN_IMAGE_PATH),
    }
}
