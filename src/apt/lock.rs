//! Resolving a recipe's packages for one arch (what `imgbuild lock` writes into the lock
//! file, `lockfile`), and installing the locked set into a layer.

use std::path::{Path, PathBuf};

use super::index;
use super::inrelease::{self, TrustedKey};
use super::resolve::{self, BasePackages};
use super::{io, AptError};
use crate::cache::Cache;
use crate::layer::Layer;
use crate::lockfile::{ArchLock, LockedPackage};
use crate::recipe::{LoadedRecipe, Packages};
use crate::reporter::Reporter;
use crate::types::Arch;
use crate::types::PackageRequest as Request;

/// The signing key a recipe names, checked against its pinned fingerprint.
pub fn recipe_key(p: &Packages, recipe_path: Option<&Path>) -> Result<TrustedKey, AptError> {
    let key = match (&p.key, &p.key_file) {
        (Some(name), _) => inrelease::embedded_key(name)?,
        (None, Some(f)) => {
            let base = recipe_path.and_then(Path::parent).unwrap_or(Path::new("."));
            let path = base.join(f);
            let text = std::fs::read_to_string(&path).map_err(io(path.display().to_string()))?;
            inrelease::parse_key(&text, &path.display().to_string())?
        }
        (None, None) => return Err(AptError::Input("packages: no signing key".into())),
    };
    if let Some(fp) = &p.fingerprint {
        let want = crate::keys::normalize_fingerprint(fp);
        if want != key.fingerprint {
            return Err(AptError::Key {
                origin: "packages.fingerprint".into(),
                msg: format!("the key's fingerprint is {}, the recipe pins {want}", key.fingerprint),
            });
        }
    }
    Ok(key)
}

/// Resolve one arch: verified indexes, requested packages and their dependencies minus
/// the base `status`.
#[allow(clippy::too_many_arguments)]
pub fn lock_arch(
    lr: &LoadedRecipe,
    p: &Packages,
    arch: Arch,
    key: &TrustedKey,
    status: &str,
    mirrors: &[crate::fetch::Mirror],
    cache: Option<&Cache>,
    reporter: &Reporter,
) -> Result<ArchLock, AptError> {
    if !lr.recipe.arches.contains(&arch) {
        return Err(AptError::Input(format!("{}: recipe does not support arch {arch}", lr.origin)));
    }
    let archive = p
        .archive
        .get(arch.as_str())
        .ok_or_else(|| AptError::Input(format!("packages.archive has no URL for {arch}")))?;
    let reqs: Vec<Request> =
        p.install.iter().map(|s| Request::parse(s)).collect::<Result<_, _>>().map_err(AptError::Input)?;
    let universe = index::load(&index::Source {
        archive,
        suites: &p.suites,
        components: &p.components,
        arch: arch.as_str(),
        key,
        mirrors,
        cache,
        reporter,
    })?;
    let base = BasePackages::parse(status, arch.as_str())?;
    let r = resolve::resolve(&reqs, &universe.entries, &base, arch.as_str())?;
    let packages = r
        .install
        .iter()
        .map(|(e, requested)| LockedPackage {
            name: e.name.clone(),
            version: e.version.to_string(),
            architecture: e.architecture.clone(),
            url: e.url.clone(),
            sha256: e.sha256.clone(),
            size: e.size,
            requested: *requested,
        })
        .collect();
    let base_sha256 = lr
        .recipe
        .base
        .sha256
        .get(arch.as_str())
        .cloned()
        .ok_or_else(|| AptError::Input(format!("base has no sha256 for {arch}")))?;
    let mut already = r.already;
    already.sort();
    Ok(ArchLock {
        base_sha256,
        releases: universe.releases,
        indexes: universe.indexes,
        already_in_base: already,
        packages,
    })
}

/// Install the locked .debs (`paths`, verified downloads) into the layer, checking they
/// are exactly the packages `want` names: (name, version) pairs.
pub fn install_locked(
    layer: &mut Layer,
    want: &[(String, String)],
    paths: &[PathBuf],
    base_status: &str,
    base: &dyn super::install::BaseImage,
    workdir: &Path,
) -> Result<super::Installed, AptError> {
    if paths.len() != want.len() {
        return Err(AptError::Input(format!(
            "{} .deb paths for {} locked packages",
            paths.len(),
            want.len()
        )));
    }
    let got = super::install_into(layer, paths, base_status, base, workdir)?;
    let mut want = want.to_vec();
    want.sort();
    if got.packages != want {
        return Err(AptError::Integrity {
            url: "lock".into(),
            msg: format!("the .deb files contain {:?}, the lock names {want:?}", got.packages),
        });
    }
    Ok(got)
}
