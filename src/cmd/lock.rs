//! `imgbuild lock`: resolve the recipe's Ubuntu packages and container images into
//! `<recipe>.lock`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use crate::apt::lock;
use crate::apt::{io, AptError};
use crate::cache::Cache;
use crate::lockfile::{self, LockFile, LOCK_VERSION};
use crate::plan::Item;
use crate::recipe;
use crate::reporter::Reporter;
use crate::types::Arch;

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// Recipe file (default: the embedded default recipe; its lock is then written to
    /// ./<name>.yaml.lock)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Arch to lock (repeatable; default: every arch of the recipe)
    #[arg(long = "arch", value_enum)]
    pub arches: Vec<Arch>,
    /// Rewrite a URL prefix: FROM=TO (repeatable)
    #[arg(long = "mirror", value_name = "FROM=TO")]
    pub mirrors: Vec<String>,
    /// Cache directory (default: $IMGBUILD_CACHE_DIR, else $XDG_CACHE_HOME/imgbuild, else
    /// ~/.cache/imgbuild)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The base image's /var/lib/dpkg/status, instead of reading it from the cached base image
    #[arg(long, value_name = "FILE")]
    pub base_status: Option<PathBuf>,
    /// Where to write the lock (default: <recipe>.lock)
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print JSON ({"lock": PATH}) instead of the path
    #[arg(long)]
    pub json: bool,
    /// Also pin the charts and images of this add-on profile (repeatable; the core add-ons' always)
    #[arg(long = "profile", value_enum)]
    pub profiles: Vec<crate::types::Profile>,
}

pub fn run(a: &LockArgs, rep: &Reporter) -> Result<()> {
    let lr = recipe::load(a.recipe.as_deref())?;
    let images = lr.recipe.all_images(&a.profiles);
    let mirrors = super::fetch::mirrors(&a.mirrors)?;
    let charts = resolve_charts(&lr, &a.profiles, &mirrors, rep)?;
    if lr.recipe.packages.is_none() && images.is_empty() && charts.is_empty() {
        return Err(AptError::Input(format!(
            "{}: recipe has no packages:, no images: and no charts to lock",
            lr.origin
        ))
        .into());
    }
    let arches = if a.arches.is_empty() { lr.recipe.arches.clone() } else { a.arches.clone() };
    let mut lock = LockFile {
        lock_version: LOCK_VERSION,
        recipe: lr.recipe.name.clone(),
        packages_digest: lockfile::packages_digest(lr.recipe.packages.as_ref()),
        arches: BTreeMap::new(),
        charts,
        images: Vec::new(),
    };
    if let Some(p) = &lr.recipe.packages {
        lock.arches = lock_packages(a, &lr, p, &arches, &mirrors, rep)?;
    }
    if !images.is_empty() {
        let reg = crate::oci::registry::Registry::new(mirrors.clone());
        // Pinned images whose documents a build already fetched need no registry.
        let cache = open_cache(a, rep)?;
        let cached = |d: &crate::types::Digest| cache.read_verified(d.sha256());
        lock.images = crate::oci::lock::resolve_all(&reg, &images, &arches, &cached)?;
        for l in &lock.images {
            let per: Vec<String> = l.platforms.iter().map(|(a, m)| format!("{a} {}", m.digest)).collect();
            rep.status(format_args!("image {}: {} ({})", l.reference, l.digest, per.join(", ")));
        }
    }
    let path = a.output.clone().unwrap_or_else(|| lockfile::lock_path(&lr, a.recipe.as_deref()));
    lockfile::write_lock(&path, &lock)?;
    super::emit(a.json, &serde_json::json!({ "lock": path }), |out| writeln!(out, "{}", path.display()))
}

/// The `packages:` part: each arch resolved against the signed archive, its .debs downloaded.
fn lock_packages(
    a: &LockArgs,
    lr: &recipe::LoadedRecipe,
    p: &recipe::Packages,
    arches: &[Arch],
    mirrors: &[crate::fetch::Mirror],
    rep: &Reporter,
) -> Result<BTreeMap<String, lockfile::ArchLock>> {
    let key = lock::recipe_key(p, a.recipe.as_deref())?;
    let cache = open_cache(a, rep)?;
    let override_status = match &a.base_status {
        Some(f) => Some(std::fs::read_to_string(f).map_err(io(f.display().to_string()))?),
        None => None,
    };
    let mut out = BTreeMap::new();
    for &arch in arches {
        let status = match &override_status {
            Some(s) => s.clone(),
            None => crate::apt::base::status_from_cache(lr, arch, &cache)?,
        };
        let al = lock::lock_arch(lr, p, arch, &key, &status, mirrors, Some(&cache), rep)?;
        // Download the .debs now: the cache then serves `build --offline`, and a package
        // whose maintainer scripts cannot be reproduced is refused before it is locked.
        let debs = crate::plan::package_items(&al);
        let items: Vec<&Item> = debs.iter().collect();
        let opts = crate::fetch::FetchOptions { offline: false, mirrors: mirrors.to_vec(), jobs: 4 };
        let fetched = crate::fetch::fetch(&items, &cache, &opts, rep)?;
        for item in items {
            let Some(path) = fetched.get(item) else { continue };
            let bytes = std::fs::read(path).map_err(io(path.display().to_string()))?;
            crate::apt::install::check_installable(&bytes, &item.urls.join(" "))?;
        }
        rep.status(format_args!(
            "apt: {arch}: {} package(s) to install{}",
            al.packages.len(),
            if al.already_in_base.is_empty() {
                String::new()
            } else {
                format!(", already in the base: {}", al.already_in_base.join(", "))
            }
        ));
        out.insert(arch.as_str().to_string(), al);
    }
    Ok(out)
}

/// Every `chart:` artifact of the recipe resolved against its repository's index.yaml;
/// a digest the recipe also states inline must be the index's (else exit 3).
fn resolve_charts(
    lr: &recipe::LoadedRecipe,
    profiles: &[crate::types::Profile],
    mirrors: &[crate::fetch::Mirror],
    rep: &Reporter,
) -> Result<Vec<lockfile::LockedChart>> {
    let mut out = Vec::new();
    for art in lr.recipe.artifacts.iter().filter(|a| !crate::plan::left_out(&lr.recipe, a, profiles)) {
        let Some(c) = &art.chart else { continue };
        let r = crate::chart::repo::resolve_online(&c.repo, &art.name, &art.version, mirrors)?;
        for (arch, sha) in &art.sha256 {
            if *sha != r.sha256 {
                return Err(crate::exit::Classified::integrity(format!(
                    "{}: artifact {} {}: the recipe's sha256.{arch} {sha} is not the digest {} that {} states",
                    lr.origin,
                    art.name,
                    art.version,
                    r.sha256,
                    if c.repo.starts_with("oci://") { c.repo.clone() } else { crate::chart::repo::index_url(&c.repo) }
                ))
                .into());
            }
        }
        rep.status(format_args!("chart: {} {} -> {} (sha256 {})", r.name, r.version, r.url, r.sha256));
        out.push(r);
    }
    Ok(out)
}

/// The cache, used shared (waiting, with a message, while a `cache prune` runs).
fn open_cache(a: &LockArgs, rep: &Reporter) -> Result<Cache> {
    super::cache::open(a.cache_dir.as_deref(), crate::cache::Access::Shared, rep, false)
}
