//! The build pipeline: a complete [`BuildPlan`] and its verified downloads in, an output
//! set out.
//!
//! 1. ([`resolve_packages`], before fetching) a plan whose packages have no lock file
//!    gets them resolved against the signed archive, as `imgbuild lock` would;
//!    ([`resolve_images`]) its container images without a lock entry are resolved (a
//!    pinned digest from the cache, else through the registry), their manifests fetched
//!    and read, so every config and layer is a download of the plan;
//! 2. the base image is opened as a [`disk::Working`] image (fast path or raw copy);
//! 3. the layer is composed by an ordered list of [`Step`]s ([`default_steps`]), each
//!    adding its part, with the base's root filesystem readable;
//! 4. the layer is sealed (`layer::seal`): the manifest, built once, as a value;
//! 5. the disk writes the layer and the output format ([`disk::Working::finish`]);
//! 6. the [`OutputSet`] is written next to it: manifest (the same bytes), checksum, SBOM.

pub mod steps;

use std::path::Path;

use anyhow::{Context, Result};

use crate::cache::Cache;
use crate::disk::{self, ImageSpec, Working};
use crate::fetch::{FetchOptions, Fetched};
use crate::lockfile::LockError;
use crate::manifest::Manifest;
use crate::oci::spec::Document;
use crate::oci::OciError;
use crate::output::OutputSet;
use crate::plan::{BlobRef, BuildPlan, ImageSource, Item, PackagePlan, ResolvedImage};
use crate::recipe::LoadedRecipe;
use crate::reporter::Reporter;
use crate::types::{Digest, Sha256};

pub use steps::{compose, default_steps, Compose, Step};

/// What a finished build wrote.
#[derive(Debug, Clone)]
pub struct Built {
    pub outputs: OutputSet,
    pub image_sha256: Sha256,
    pub manifest: Manifest,
}

/// Build `plan` from its verified downloads into `out_dir` (usually the plan's output
/// dir; `--check-reproducible` builds into temp dirs). Nothing appears in `out_dir`
/// unless everything succeeded; the build's temp dir (inside `out_dir`, so the final
/// renames stay on one filesystem) is removed either way.
pub fn build(
    plan: &BuildPlan,
    fetched: &Fetched,
    out_dir: &Path,
    steps: &[Box<dyn Step>],
    rep: &Reporter,
) -> Result<Built> {
    let clock = rep.clock();
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating output dir {}", out_dir.display()))?;
    let (tmp, swept) = disk::interrupt::work_dir(out_dir, "")
        .with_context(|| format!("creating a temp dir in {}", out_dir.display()))?;
    for d in swept {
        clock.say(format_args!("removed {}, left behind by a build that was killed", d.display()));
    }
    let built = build_in(plan, fetched, out_dir, steps, tmp.path(), rep, &clock)?;
    tmp.close().context("removing the build's temp dir")?;
    clock.say("done");
    Ok(built)
}

fn build_in(
    plan: &BuildPlan,
    fetched: &Fetched,
    out_dir: &Path,
    steps: &[Box<dyn Step>],
    work: &Path,
    rep: &Reporter,
    clock: &crate::reporter::Clock,
) -> Result<Built> {
    let base = fetched.get(&plan.base).context("the base image was not fetched")?;
    let image = Working::open(base, &plan.root_label, plan.output.format, work, clock)?;
    let layer_dir = work.join("layer");
    std::fs::create_dir_all(&layer_dir).with_context(|| format!("creating {}", layer_dir.display()))?;
    let composed = compose(plan, fetched, &layer_dir, image.root(), rep, steps)?;
    clock.say(format_args!("composed the layer: {} entries", composed.layer.len()));
    let sealed = crate::layer::seal(composed.layer, plan, composed.signatures)?;
    let outputs = OutputSet::named(out_dir, plan.stem(), plan.output.format);
    let staged = work.join(outputs.image_name());
    let spec = ImageSpec {
        format: plan.output.format,
        compress: plan.output.compress,
        disk_size: plan.output.disk_size,
        reserve: plan.output.reserve,
        source_date_epoch: plan.source_date_epoch,
        seed: &sealed.manifest.inputs_digest,
        name: plan.stem(),
    };
    let image_sha256 = image.finish(&sealed, &spec, &staged, clock)?;
    clock.say("writing the manifest, checksum and SBOM");
    outputs.write(work, &staged, &image_sha256, &sealed, plan.source_date_epoch)?;
    Ok(Built { outputs, image_sha256, manifest: sealed.manifest })
}

/// Complete a plan whose packages have no lock file yet: fetch the base (for its dpkg
/// status) and resolve the recipe's packages against the signed archive exactly as
/// `imgbuild lock` would, with a note recommending the lock. A no-op otherwise.
pub fn resolve_packages(
    plan: &mut BuildPlan,
    lr: &LoadedRecipe,
    recipe_path: Option<&Path>,
    cache: &Cache,
    opts: &FetchOptions,
    rep: &Reporter,
) -> Result<()> {
    let PackagePlan::Unresolved { lock_file, .. } = &plan.packages else { return Ok(()) };
    let Some(p) = &lr.recipe.packages else { return Ok(()) };
    if opts.offline {
        return Err(LockError::Stale(format!(
            "{}: --offline needs the lock file {} for the recipe's packages; run `{}`",
            lr.origin,
            lock_file.display(),
            crate::lockfile::rerun_hint(recipe_path)
        ))
        .into());
    }
    rep.status(format_args!(
        "apt: no lock file {}: resolving the packages against the signed archive now \
         (run `imgbuild lock` to pin them)",
        lock_file.display()
    ));
    crate::fetch::fetch(&[&plan.base], cache, opts, rep)?;
    let status = crate::apt::base::status_from_cache(lr, plan.arch, cache)?;
    let key = crate::apt::lock::recipe_key(p, recipe_path)?;
    let al = crate::apt::lock::lock_arch(lr, p, plan.arch, &key, &status, &opts.mirrors, Some(cache), rep)?;
    plan.lock_packages(&al);
    Ok(())
}

/// Complete the plan's images: each one without a lock entry is resolved for the plan's
/// arch (a pinned digest whose documents are cached needs no network; else the registry,
/// with a note recommending the lock; `--offline` refuses, exit 2, naming them); then
/// the top documents and platform manifests are fetched (verified, into the cache) and
/// read, so every config and layer becomes a download of the plan.
pub fn resolve_images(
    plan: &mut BuildPlan,
    cache: &Cache,
    opts: &FetchOptions,
    rep: &Reporter,
) -> Result<()> {
    if plan.images.is_empty() {
        return Ok(());
    }
    let arch = plan.arch;
    let cached = |d: &Digest| cache.read_verified(d.sha256());
    let registry = crate::oci::registry::Registry::new(opts.mirrors.clone());
    let mut missing = Vec::new();
    for i in 0..plan.images.len() {
        if plan.images[i].resolved.is_some() {
            continue;
        }
        let reference = plan.images[i].reference.clone();
        let (locked, source) = match crate::oci::lock::resolve_cached(&reference, arch, &cached)? {
            Some(l) => (l, ImageSource::Cache),
            None if opts.offline => {
                missing.push(reference.to_string());
                continue;
            }
            None => {
                let l = crate::oci::lock::resolve(&registry, &reference, &[arch])?;
                rep.status(format_args!(
                    "image {reference}: not in the lock; resolved online to {} ({arch} {}); run \
                     `imgbuild lock` to pin it",
                    l.digest,
                    l.platforms.get(arch.as_str()).map(|m| m.digest.to_string()).unwrap_or_default()
                ));
                (l, ImageSource::Registry)
            }
        };
        if let Some(r) = ResolvedImage::from_lock(&locked, arch, source) {
            plan.resolve_image(i, r);
        }
    }
    if !missing.is_empty() {
        return Err(OciError::Offline { arch: arch.to_string(), images: missing }.into());
    }
    let docs: Vec<&Item> = plan.image_items().iter().collect();
    crate::fetch::fetch(&docs, cache, opts, rep)?;
    read_image_blobs(plan, cache, true)
}

/// Read each resolved image's (verified, cached) top document and platform manifest, so
/// its config and layers become downloads of the plan. With `required`, a document
/// missing from the cache is an error (a build fetched them all just before); without,
/// the image is left as it is (what the cache alone can tell).
fn read_image_blobs(plan: &mut BuildPlan, cache: &Cache, required: bool) -> Result<()> {
    let arch = plan.arch;
    for i in 0..plan.images.len() {
        let img = &plan.images[i];
        let Some(r) = img.resolved.clone().filter(|r| r.config.is_none()) else { continue };
        if !required && [&r.digest, &r.manifest.digest].iter().any(|d| !cache.blob_path(d.sha256()).exists())
        {
            continue;
        }
        let image = img.reference.to_string();
        let read = |d: &Digest| {
            cache
                .read_verified(d.sha256())?
                .with_context(|| format!("{image}: {d} is not in the cache after the fetch"))
        };
        let unsupported = |msg: String| OciError::Unsupported { image: image.clone(), msg };
        let top = Document::parse(&read(&r.digest)?, Some(&r.media_type))
            .map_err(|e| unsupported(e.to_string()))?;
        // The lock's manifest must be the one the (verified) index names for this arch.
        if let Document::Index { index, .. } = &top {
            let named =
                index.select(arch).map_err(|source| OciError::NoPlatform { image: image.clone(), source })?;
            if named.digest != r.manifest.digest {
                return Err(OciError::Integrity {
                    image,
                    what: format!("the {arch} manifest the lock names"),
                    expected: named.digest.to_string(),
                    actual: r.manifest.digest.to_string(),
                }
                .into());
            }
        }
        let doc = Document::parse(&read(&r.manifest.digest)?, Some(&r.manifest.media_type))
            .map_err(|e| unsupported(e.to_string()))?;
        let Document::Manifest { manifest, .. } = doc else {
            return Err(unsupported(format!("{} is not an image manifest", r.manifest.digest)).into());
        };
        let blob = |d: &crate::oci::spec::Descriptor| BlobRef {
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
        };
        let mut r = r;
        r.config = Some(blob(&manifest.config));
        r.layers = manifest.layers.iter().map(blob).collect();
        plan.resolve_image(i, r);
    }
    Ok(())
}

/// Complete the plan's images as far as the cache alone tells, without the network:
/// an image without a lock entry from its cached documents (as a build resolves a pinned
/// digest), then every resolved image's config and layers from its cached manifest. An
/// image whose documents are not cached keeps only what the lock names.
pub fn resolve_images_cached(plan: &mut BuildPlan, cache: &Cache) -> Result<()> {
    let cached = |d: &Digest| cache.read_verified(d.sha256());
    for i in 0..plan.images.len() {
        if plan.images[i].resolved.is_some() {
            continue;
        }
        let reference = plan.images[i].reference.clone();
        if let Some(l) = crate::oci::lock::resolve_cached(&reference, plan.arch, &cached)? {
            if let Some(r) = ResolvedImage::from_lock(&l, plan.arch, ImageSource::Cache) {
                plan.resolve_image(i, r);
            }
        }
    }
    read_image_blobs(plan, cache, false)
}

/// Every digest a build of recipe `lr` (at `recipe_path`, `None`: embedded) needs from the
/// cache, for every arch it pins, every role, and every add-on profile: what `imgbuild
/// fetch` puts there for those plans (the plan's downloads, the images' configs and
/// layers as far as their manifests are cached). Signatures and archive members are
/// kept by the digest of their artifact. What the lock file does not pin needs nothing
/// from the cache, as `build --offline` cannot use the cache for it either; each such
/// thing is returned with the reason, for the caller to say so: a profile whose chart the
/// lock does not pin (profiles are planned one at a time, so the others still count),
/// Ubuntu packages without a lock file (each build resolves them afresh).
pub fn cache_needs(
    lr: &LoadedRecipe,
    recipe_path: Option<&Path>,
    cache: &Cache,
) -> Result<(std::collections::BTreeSet<Sha256>, Vec<String>)> {
    use crate::types::{Profile, Role};
    let mut keep = std::collections::BTreeSet::new();
    let mut unpinned = Vec::new();
    for &arch in &lr.recipe.arches {
        for role in Role::ALL {
            let choices = std::iter::once(None).chain(Profile::ALL.into_iter().map(Some));
            for profile in choices {
                let o = crate::plan::PlanOptions {
                    recipe_path: recipe_path.map(Path::to_path_buf),
                    profiles: profile.into_iter().collect(),
                    ..crate::plan::PlanOptions::new(role, arch)
                };
                let mut plan = match BuildPlan::resolve(lr, &o) {
                    Err(crate::plan::PlanError::ChartNotLocked(why)) if profile.is_some() => {
                        if !unpinned.contains(&why) {
                            unpinned.push(why);
                        }
                        continue;
                    }
                    r => r?,
                };
                if let PackagePlan::Unresolved { lock_file, .. } = &plan.packages {
                    let why = format!(
                        "{}: the recipe's Ubuntu packages: without its lock file {} each build resolves \
                         them afresh (and `build --offline` refuses); run `{}` to pin them",
                        lr.origin,
                        lock_file.display(),
                        crate::lockfile::rerun_hint(recipe_path)
                    );
                    if !unpinned.contains(&why) {
                        unpinned.push(why);
                    }
                }
                resolve_images_cached(&mut plan, cache)?;
                keep.extend(plan.items().map(|i| i.sha256.clone()));
            }
        }
    }
    Ok((keep, unpinned))
}
