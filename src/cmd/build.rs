//! `imgbuild build`: plan, fetch, build; `--dry-run` prints the plan instead, and
//! `--check-reproducible` builds twice and compares byte for byte.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::build::{Built, Step};
use crate::disk;
use crate::fetch::Fetched;
use crate::plan::{BuildPlan, Item, PlanOptions, SignaturePolicy, TrustRootSource};
use crate::reporter::Reporter;
use crate::tools;
use crate::types::OutFormat;
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
    /// qcow2 only: zstd-compress every cluster (qcow2 compression type zstd, qemu 5.1 or
    /// later reads it), on all cores; a worker image shrinks to less than half (vmdk and
    /// ova are always compressed)
    #[arg(long)]
    pub compress: bool,
    /// Grow the virtual disk (and the root partition and filesystem) to SIZE, e.g. 8G
    /// (default: the recipe's disk_size, else the base image's size, grown
    /// automatically when the layer does not fit)
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// Build twice in separate temp dirs and fail (exit 3) unless the outputs are identical
    #[arg(long)]
    pub check_reproducible: bool,
    /// Verify the cosign signatures of dl.k8s.io downloads against this Fulcio trust root
    /// (PEM) instead of the embedded Sigstore public-good root (they are verified and
    /// recorded in the manifest either way)
    #[arg(long, value_name = "FILE.pem")]
    pub cosign_trust_root: Option<PathBuf>,
    /// Print the build plan (everything the build would download, install and write) and
    /// stop: nothing is downloaded or written
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON: the plan with --dry-run, else the written files and the image's sha256
    #[arg(long)]
    pub json: bool,
}

impl BuildArgs {
    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            format: self.format,
            compress: self.compress,
            output_dir: self.output.clone(),
            disk_size: self.disk_size.clone(),
            // the target's default policy, with the root the user gave
            signatures: SignaturePolicy {
                cosign: Some(crate::verify::cosign::kubernetes_release_policy(
                    self.cosign_trust_root
                        .as_ref()
                        .map_or(TrustRootSource::Embedded, |p| TrustRootSource::File(p.clone())),
                )),
            },
            ..self.source.target.plan_options()
        }
    }
}

pub fn run(a: &BuildArgs, rep: &Reporter) -> Result<()> {
    let s = &a.source;
    let lr = s.target.load()?;
    let mut plan = BuildPlan::resolve(&lr, &a.plan_options())?;
    if a.dry_run {
        return super::recipe::print_plan(&plan, a.json);
    }
    // Before fetch starts its threads, so they all leave the signals to the guard.
    disk::interrupt::guard();
    tools::require(&[tools::DEBUGFS, tools::E2FSCK, tools::RESIZE2FS, tools::QEMU_IMG])?;
    let cache = s.cache(rep)?;
    let opts = s.fetch_options()?;
    crate::build::resolve_packages(&mut plan, &lr, s.target.recipe.as_deref(), &cache, &opts, rep)?;
    crate::build::resolve_images(&mut plan, &cache, &opts, rep)?;
    let items: Vec<&Item> = plan.items().collect();
    let fetched = crate::fetch::fetch(&items, &cache, &opts, rep)?;
    let sigs = crate::verify::cosign::SignatureSource {
        mirrors: opts.mirrors.clone(),
        offline: opts.offline,
        cache: Some(cache.clone()),
    };
    let steps = crate::build::default_steps(&sigs);
    let built = if a.check_reproducible {
        check_reproducible(&plan, &fetched, &steps, rep)
    } else {
        crate::build::build(&plan, &fetched, &plan.output.dir, &steps, rep)
    }
    .inspect_err(|_| disk::interrupt::park_if_interrupted())?;
    let o = &built.outputs;
    let data = serde_json::json!({
        "image": o.image,
        "image_sha256": built.image_sha256.as_str(),
        "manifest": o.manifest,
        "checksum": o.checksum,
        "sbom": o.sbom,
    });
    super::emit(a.json, &data, |out| writeln!(out, "{}", o.image.display()))
}

/// `--check-reproducible`: build `plan` twice, each in its own temp dir inside the output
/// dir, and require byte-identical outputs (image, manifest, checksum, SBOM). Only then
/// are the first build's outputs moved into the output dir, as a normal build's would be.
pub fn check_reproducible(
    plan: &BuildPlan,
    fetched: &Fetched,
    steps: &[Box<dyn Step>],
    rep: &Reporter,
) -> Result<Built> {
    let dir = &plan.output.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating output dir {}", dir.display()))?;
    let mut runs = Vec::new();
    for n in ["a", "b"] {
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".imgbuild-repro-{n}-"))
            .tempdir_in(dir)
            .with_context(|| format!("creating a temp dir in {}", dir.display()))?;
        rep.status(format_args!("check-reproducible: build {n} in {}", tmp.path().display()));
        let built = crate::build::build(plan, fetched, tmp.path(), steps, rep)?;
        runs.push((tmp, built));
    }
    let (a, b) = (&runs[0].1, &runs[1].1);
    let mut diffs = Vec::new();
    for ((what, pa), (_, pb)) in a.outputs.files().into_iter().zip(b.outputs.files()) {
        let hash = |p: &std::path::Path| {
            crate::types::Sha256::of_file(p).with_context(|| format!("hashing {}", p.display()))
        };
        let (da, db) = (hash(pa)?, hash(pb)?);
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
    let outputs = a.outputs.move_into(dir)?;
    Ok(Built { outputs, ..a.clone() })
}
