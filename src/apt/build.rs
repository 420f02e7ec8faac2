//! The two hooks of `imgbuild build` (src/build.rs calls them, marked "apt (issue 6)"):
//! [`for_build`] before the downloads, [`composer`] as the layer step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::lock::{self, BuildDebs};
use super::{base, install_locked, AptError, BaseImage};
use crate::cache::Cache;
use crate::fetch::FetchOptions;
use crate::layer::Layer;
use crate::plan::Plan;
use crate::recipe::LoadedRecipe;
use crate::reporter::Reporter;

/// The .deb downloads of a build: from `<recipe>.lock` when present (a stale lock is
/// refused: exit 2, "run imgbuild lock"); without a lock the packages are resolved now,
/// exactly as `imgbuild lock` would (the base is fetched first for its dpkg status), and
/// a note recommends writing the lock. `None` when the recipe has no `packages:`.
pub fn for_build(
    lr: &LoadedRecipe,
    recipe_path: Option<&Path>,
    plan: &Plan,
    cache: &Cache,
    opts: &FetchOptions,
    rep: &Reporter,
) -> anyhow::Result<Option<BuildDebs>> {
    let Some(p) = &lr.recipe.packages else { return Ok(None) };
    let path = lock::lock_path(lr, recipe_path);
    if path.is_file() {
        return Ok(lock::build_items(lr, recipe_path, plan)?);
    }
    if opts.offline {
        return Err(AptError::StaleLock(format!(
            "{}: --offline needs the lock file {} for the recipe's packages; run `imgbuild lock{}`",
            lr.origin,
            path.display(),
            recipe_path.map(|r| format!(" --recipe {}", r.display())).unwrap_or_default()
        ))
        .into());
    }
    rep.status(format_args!(
        "apt: no lock file {}: resolving the packages against the signed archive now \
         (run `imgbuild lock` to pin them)",
        path.display()
    ));
    crate::fetch::fetch_items(&[&plan.base], cache, opts, rep)?;
    let status = base::status_from_cache(lr, plan.arch, cache)?;
    let key = lock::recipe_key(p, recipe_path)?;
    let al = lock::lock_arch(lr, p, plan.arch, &key, &status, &opts.mirrors, Some(cache), rep)?;
    Ok(Some(lock::debs_of(al)))
}

/// The layer step of `build`: the layer module's composition, then the .debs (`paths`,
/// verified downloads in `debs.items` order) installed on top of the base's dpkg
/// database, then the seal (last, so the manifest lists the packages' files too).
pub fn composer<'a>(
    debs: Option<&'a BuildDebs>,
    paths: &'a [PathBuf],
    rep: &'a Reporter,
) -> impl Fn(&Plan, &BTreeMap<String, PathBuf>, &Path, &crate::disk::RootFs) -> anyhow::Result<Layer> + 'a {
    move |plan, dl, work, root| {
        let mut layer = crate::layer::compose(plan, dl, work)?;
        if let Some(d) = debs {
            let status = BaseImage::read_file(root, base::STATUS)?.ok_or_else(|| AptError::Format {
                what: "base image".into(),
                msg: format!("has no {}", base::STATUS),
            })?;
            let status = String::from_utf8(status)
                .map_err(|_| AptError::Format { what: base::STATUS.into(), msg: "not UTF-8".into() })?;
            let got = install_locked(&mut layer, d, paths, &status, root, work)?;
            let names: Vec<_> = got.packages.iter().map(|(n, v)| format!("{n} {v}")).collect();
            rep.status(format_args!("apt: installed {}", names.join(", ")));
        }
        crate::layer::seal(&mut layer, plan)?;
        Ok(layer)
    }
}
