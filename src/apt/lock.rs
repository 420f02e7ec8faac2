//! `imgbuild lock` and the lock file: the resolved package set per arch (name, version,
//! URL, SHA-256, size), next to the recipe as `<recipe>.lock`. A build installs exactly
//! that set and refuses a lock that no longer matches the recipe's `packages:` section
//! or base image.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::{self, IndexRef, ReleaseRef};
use super::inrelease::{self, TrustedKey};
use super::resolve::{self, BasePackages};
use super::{io, AptError};
use crate::cache::Cache;
use crate::layer::Layer;
use crate::plan::{Item, Plan};
use crate::recipe::{LoadedRecipe, Packages};
use crate::reporter::Reporter;
use crate::types::PackageRequest as Request;
use crate::types::{Arch, Sha256};

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub lock_version: u32,
    pub recipe: String,
    /// SHA-256 of the recipe's `packages:` section (canonical JSON; `null` when absent).
    pub packages_digest: Sha256,
    pub arches: BTreeMap<String, ArchLock>,
    /// The recipe's container images resolved to digests (see [`crate::oci::lock`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::oci::lock::LockedImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchLock {
    /// The base image the resolution subtracted (its dpkg status decides what is needed).
    pub base_sha256: Sha256,
    pub releases: Vec<ReleaseRef>,
    pub indexes: Vec<IndexRef>,
    /// Requested packages the base image already has.
    pub already_in_base: Vec<String>,
    /// Sorted by name.
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub url: String,
    pub sha256: Sha256,
    pub size: u64,
    /// Listed in the recipe (false: pulled in as a dependency).
    pub requested: bool,
}

/// The digest that ties a lock to its recipe's `packages:` section.
pub fn packages_digest(p: &Packages) -> Sha256 {
    Sha256::of(&serde_json::to_vec(p).unwrap_or_default())
}

/// `<recipe>.lock` for a recipe file, `./<name>.yaml.lock` for an embedded recipe.
pub fn lock_path(lr: &LoadedRecipe, recipe_path: Option<&Path>) -> PathBuf {
    match recipe_path {
        Some(p) => {
            let mut s = p.as_os_str().to_owned();
            s.push(".lock");
            PathBuf::from(s)
        }
        None => PathBuf::from(format!("{}.yaml.lock", lr.recipe.name)),
    }
}

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

/// Write the lock atomically, as pretty JSON with a trailing newline.
pub fn write_lock(path: &Path, lock: &LockFile) -> Result<(), AptError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut text = serde_json::to_string_pretty(lock).map_err(|e| AptError::Input(e.to_string()))?;
    text.push('\n');
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir.display().to_string()))?;
    tmp.write_all(text.as_bytes()).map_err(io(path.display().to_string()))?;
    tmp.persist(path).map_err(|e| AptError::Io { what: path.display().to_string(), source: e.error })?;
    Ok(())
}

pub fn read_lock(path: &Path) -> Result<LockFile, AptError> {
    let text = std::fs::read_to_string(path).map_err(io(path.display().to_string()))?;
    let lock: LockFile = serde_json::from_str(&text).map_err(|e| {
        AptError::StaleLock(format!("{}: not a valid lock file ({e}); run `imgbuild lock`", path.display()))
    })?;
    if lock.lock_version != LOCK_VERSION {
        return Err(AptError::StaleLock(format!(
            "{}: lock version {} (this imgbuild writes {LOCK_VERSION}); run `imgbuild lock`",
            path.display(),
            lock.lock_version
        )));
    }
    Ok(lock)
}

/// What `build` needs for the packages of one plan.
#[derive(Debug, Clone)]
pub struct BuildDebs {
    pub lock: ArchLock,
    /// One download per .deb, in `lock.packages` order, verified by the lock's SHA-256.
    pub items: Vec<Item>,
}

/// The .deb downloads of `plan` from the recipe's lock; `None` when the recipe has no
/// `packages:`. A missing or stale lock is an input error telling to run `imgbuild lock`.
pub fn build_items(
    lr: &LoadedRecipe,
    recipe_path: Option<&Path>,
    plan: &Plan,
) -> Result<Option<BuildDebs>, AptError> {
    let Some(p) = &lr.recipe.packages else { return Ok(None) };
    let path = lock_path(lr, recipe_path);
    let rerun = format!(
        "run `imgbuild lock{}`",
        recipe_path.map(|r| format!(" --recipe {}", r.display())).unwrap_or_default()
    );
    if !path.is_file() {
        return Err(AptError::StaleLock(format!(
            "{}: the recipe lists packages but there is no lock file {}; {rerun}",
            lr.origin,
            path.display()
        )));
    }
    let lock = read_lock(&path)?;
    let stale = |why: String| AptError::StaleLock(format!("{} is stale: {why}; {rerun}", path.display()));
    if lock.recipe != lr.recipe.name {
        return Err(stale(format!("it is for recipe {:?}", lock.recipe)));
    }
    if lock.packages_digest != packages_digest(p) {
        return Err(stale("the recipe's packages: section changed since it was written".into()));
    }
    let Some(al) = lock.arches.get(plan.arch.as_str()) else {
        return Err(stale(format!("it has no entry for arch {}", plan.arch)));
    };
    if al.base_sha256 != plan.base.sha256 {
        return Err(stale("the recipe's base image changed since it was written".into()));
    }
    Ok(Some(debs_of(al.clone())))
}

/// One plan download per locked .deb.
pub fn debs_of(al: ArchLock) -> BuildDebs {
    let items = al
        .packages
        .iter()
        .map(|d| Item {
            name: format!("deb:{}", d.name),
            version: d.version.clone(),
            urls: vec![d.url.clone()],
            sha256: d.sha256.clone(),
            install: Vec::new(),
        })
        .collect();
    BuildDebs { lock: al, items }
}

/// Install the locked .debs (`paths` in `debs.items` order, verified downloads) into the
/// layer, checking each one is the package the lock names.
pub fn install_locked(
    layer: &mut Layer,
    debs: &BuildDebs,
    paths: &[PathBuf],
    base_status: &str,
    base: &dyn super::install::BaseImage,
    workdir: &Path,
) -> Result<super::Installed, AptError> {
    if paths.len() != debs.lock.packages.len() {
        return Err(AptError::Input(format!(
            "{} .deb paths for {} locked packages",
            paths.len(),
            debs.lock.packages.len()
        )));
    }
    let got = super::install_into(layer, paths, base_status, base, workdir)?;
    let mut want: Vec<(String, String)> =
        debs.lock.packages.iter().map(|p| (p.name.clone(), p.version.clone())).collect();
    want.sort();
    if got.packages != want {
        return Err(AptError::Integrity {
            url: "lock".into(),
            msg: format!("the .deb files contain {:?}, the lock names {want:?}", got.packages),
        });
    }
    Ok(got)
}
