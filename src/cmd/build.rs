//! `imgbuild build`, and `--check-reproducible` (two builds compared byte for byte).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::build::{Composer, Job};
use crate::disk::{self, OutFormat, RootFs};
use crate::layer::Layer;
use crate::output::Outputs;
use crate::plan::Plan;
use crate::reporter::Reporter;
use crate::tools;
use crate::verify::VerifyError;

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub source: super::fetch::SourceArgs,
    /// Output directory
    #[arg(long, default_value = "out")]
    pub output: PathBuf,
    /// Image format: qcow2 (KVM, libvirt, OpenStack, Proxmox), raw, vmdk (streamOptimized:
    /// vSphere), vhdx (Hyper-V), vhd (fixed, whole MiB: Azure), ova (OVF + vmdk: vSphere and
    /// VirtualBox import)
    #[arg(long, value_enum, default_value_t = OutFormat::Qcow2)]
    pub format: OutFormat,
    /// Grow the virtual disk (and the root partition and filesystem) to SIZE, e.g. 8G
    /// (default: the recipe's disk_size, else the base image's size, grown
    /// automatically when the layer does not fit)
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// Build twice in separate temp dirs and fail (exit 3) unless the outputs are identical
    #[arg(long)]
    pub check_reproducible: bool,
    /// Verify the cosign signatures of dl.k8s.io downloads against this Fulcio trust root
    /// (PEM) and record them in the manifest
    #[arg(long, value_name = "FILE.pem")]
    pub cosign_trust_root: Option<PathBuf>,
}

pub fn run(a: &BuildArgs, rep: &Reporter) -> Result<()> {
    // Before fetch starts its threads, so they all leave the signals to the guard.
    disk::interrupt::guard();
    tools::require(&[tools::DEBUGFS, tools::E2FSCK, tools::RESIZE2FS, tools::QEMU_IMG])?;
    let s = &a.source;
    let lr = crate::recipe::load(s.recipe.as_deref())?;
    let plan = Plan::resolve(&lr, s.role, s.arch)?;
    let disk_size = match a.disk_size.as_deref().or(lr.recipe.disk_size.as_deref()) {
        Some(sz) => Some(disk::size::parse(sz)?),
        None => None,
    };
    let cache = s.cache()?;
    let opts = s.fetch_options()?;
    // The .deb files of <recipe>.lock (a stale lock is refused first).
    let debs = crate::apt::for_build(&lr, s.recipe.as_deref(), &plan, &cache, &opts, rep)?;
    let mut items: Vec<&crate::plan::Item> = plan.downloads().collect();
    items.extend(debs.iter().flat_map(|d| d.items.iter()));
    let blobs = crate::fetch::fetch_items(&items, &cache, &opts, rep)?;
    let (base, arts) = blobs.split_first().context("fetch returned no base image")?;
    let (arts, deb_paths) = arts.split_at(plan.artifacts.len().min(arts.len()));
    let downloads = plan.artifacts.iter().map(|a| a.name.clone()).zip(arts.iter().cloned()).collect();
    let signatures = match &a.cosign_trust_root {
        Some(p) => crate::verify::cosign::verify_build(&plan, &downloads, &opts.mirrors, p, rep)?,
        None => Vec::new(),
    };
    let job = Job {
        plan: &plan,
        base: base.clone(),
        downloads,
        output_dir: a.output.clone(),
        format: a.format,
        disk_size,
        reporter: rep.clone(),
    };
    let apt_composer = crate::apt::composer(debs.as_ref(), deb_paths, rep);
    // The cosign records go into the sealed manifest.
    let composer =
        |plan: &Plan, dl: &BTreeMap<String, PathBuf>, work: &Path, root: &RootFs| -> Result<Layer> {
            let mut l = apt_composer(plan, dl, work, root)?;
            crate::layer::seal::record_signatures(&mut l, &signatures)?;
            Ok(l)
        };
    let out = if a.check_reproducible {
        check_reproducible(&job, &composer)
    } else {
        crate::build::build(&job, &composer)
    }
    .inspect_err(|_| disk::interrupt::park_if_interrupted())?;
    writeln!(std::io::stdout().lock(), "{}", out.image.display())?;
    Ok(())
}

fn files(o: &Outputs) -> [(&'static str, &Path); 4] {
    [("image", &o.image), ("manifest", &o.manifest), ("checksum", &o.checksum), ("sbom", &o.sbom)]
}

/// `--check-reproducible`: build `job` twice with `compose`, each in its own temp dir,
/// and require byte-identical outputs (image, manifest, checksum, SBOM). Only then are
/// the first build's outputs moved into the output dir, as a normal build's would be.
pub fn check_reproducible(job: &Job, compose: &Composer) -> Result<Outputs> {
    let rep = &job.reporter;
    std::fs::create_dir_all(&job.output_dir)
        .with_context(|| format!("creating output dir {}", job.output_dir.display()))?;
    let mut runs = Vec::new();
    for n in ["a", "b"] {
        let dir = tempfile::Builder::new()
            .prefix(&format!(".imgbuild-repro-{n}-"))
            .tempdir_in(&job.output_dir)
            .with_context(|| format!("creating a temp dir in {}", job.output_dir.display()))?;
        rep.status(format_args!("check-reproducible: build {n} in {}", dir.path().display()));
        let j = Job { output_dir: dir.path().to_path_buf(), ..job.clone() };
        let out = crate::build::build(&j, compose)?;
        runs.push((dir, out));
    }
    let (a, b) = (&runs[0].1, &runs[1].1);
    let mut diffs = Vec::new();
    for ((what, pa), (_, pb)) in files(a).into_iter().zip(files(b)) {
        let (da, db) = (crate::output::sha256_file(pa)?, crate::output::sha256_file(pb)?);
        if da != db {
            diffs.push(format!("{what}: {da} vs {db}"));
        }
    }
    if !diffs.is_empty() {
        return Err(VerifyError::integrity(
            "check-reproducible",
            format!("two builds differ: {}", diffs.join("; ")),
        )
        .into());
    }
    rep.status(format_args!(
        "check-reproducible: both builds are identical (image sha256 {})",
        a.image_sha256
    ));
    // Sidecars first and the image last, like a normal build: a present image always
    // comes with its complete set of sidecars.
    let mv = |p: &Path| -> Result<PathBuf> {
        let to = job.output_dir.join(p.file_name().context("output without a file name")?);
        std::fs::rename(p, &to).with_context(|| format!("moving {} into place", to.display()))?;
        Ok(to)
    };
    let manifest = mv(&a.manifest)?;
    let checksum = mv(&a.checksum)?;
    let sbom = mv(&a.sbom)?;
    let image = mv(&a.image)?;
    Ok(Outputs { image, manifest, checksum, sbom, image_sha256: a.image_sha256.clone() })
}
