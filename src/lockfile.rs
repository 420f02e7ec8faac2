//! `<recipe>.lock`: the Ubuntu packages a recipe installs, resolved per arch by
//! `imgbuild lock` (name, version, URL, SHA-256, size) against the signed archive, next
//! to the recipe. A build installs exactly that set; a lock that no longer matches the
//! recipe's `packages:` section or base image is refused (run `imgbuild lock` again).
//! The same file pins the recipe's container images: each reference's index (or single
//! manifest) digest and each arch's manifest ([`LockedImage`]); an image without an
//! entry is resolved by the build (online) instead.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exit::{Classify, Code};
use crate::recipe::{LoadedRecipe, Packages};
use crate::types::{Arch, Digest, ImageRef, Sha256};

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Missing, unreadable as a lock, or no longer matching the recipe.
    #[error("{0}")]
    Stale(String),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
}

impl Classify for LockError {
    fn code(&self) -> Code {
        match self {
            LockError::Stale(_) => Code::Input,
            LockError::Io { .. } => Code::Runtime,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LockError {
    let what = what.into();
    move |source| LockError::Io { what, source }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub lock_version: u32,
    pub recipe: String,
    /// SHA-256 of the recipe's `packages:` section (canonical JSON; `null` when absent).
    pub packages_digest: Sha256,
    pub arches: BTreeMap<String, ArchLock>,
    /// The recipe's `chart:` artifacts resolved against their repositories' index.yaml.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<LockedChart>,
    /// The recipe's container images resolved to digests (see `oci::lock`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<LockedImage>,
}

/// A chart version resolved against its Helm repository (see `chart::repo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedChart {
    pub name: String,
    pub version: String,
    /// The repository the index came from.
    pub repo: String,
    /// Where the `.tgz` is downloaded from (absolute).
    pub url: String,
    /// The `.tgz`'s sha256 as the index states it.
    pub sha256: Sha256,
}

/// The charts the lock at `path` pins for recipe `lr` (none without a lock file, or when
/// it is another recipe's); an unreadable lock is an error.
pub fn read_charts(lr: &LoadedRecipe, path: &Path) -> Result<Vec<LockedChart>, LockError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let lock = read_lock(path)?;
    Ok(if lock.recipe == lr.recipe.name { lock.charts } else { Vec::new() })
}

/// One image in the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// The reference as the recipe names it (normalised).
    pub reference: ImageRef,
    /// What the reference points at: an image index or a single manifest.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Per arch (`amd64`, `arm64`): that platform's manifest.
    pub platforms: BTreeMap<String, LockedManifest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl LockedImage {
    /// Whether this entry pins `image` for `arch`: the same reference and, when the
    /// reference carries a digest, that digest.
    pub fn covers(&self, image: &ImageRef, arch: Arch) -> bool {
        self.reference == *image
            && image.digest.as_ref().is_none_or(|d| *d == self.digest)
            && self.platforms.contains_key(arch.as_str())
    }
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

/// A `Packages` index the resolution read (recorded in the lock for review).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    pub url: String,
    pub sha256: Sha256,
}

/// An `InRelease` whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub url: String,
    /// Digest of the InRelease that verified (the exact signed bytes used).
    pub sha256: Sha256,
    pub signer: String,
}

/// The digest that ties a lock to its recipe's `packages:` section (`None`: no section).
pub fn packages_digest(p: Option<&Packages>) -> Sha256 {
    Sha256::of(&serde_json::to_vec(&p).unwrap_or_default())
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

/// `imgbuild lock[ --recipe FILE]`: what to run when a lock is missing or stale.
pub fn rerun_hint(recipe_path: Option<&Path>) -> String {
    format!("imgbuild lock{}", recipe_path.map(|r| format!(" --recipe {}", r.display())).unwrap_or_default())
}

/// Write the lock atomically, as pretty JSON with a trailing newline.
pub fn write_lock(path: &Path, lock: &LockFile) -> Result<(), LockError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut text = serde_json::to_string_pretty(lock)
        .map_err(|e| LockError::Io { what: path.display().to_string(), source: e.into() })?;
    text.push('\n');
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir.display().to_string()))?;
    tmp.write_all(text.as_bytes()).map_err(io(path.display().to_string()))?;
    tmp.persist(path).map_err(|e| LockError::Io { what: path.display().to_string(), source: e.error })?;
    Ok(())
}

pub fn read_lock(path: &Path) -> Result<LockFile, LockError> {
    let text = std::fs::read_to_string(path).map_err(io(path.display().to_string()))?;
    // A map would let the last of two equal keys win silently.
    crate::nodup::check_json(&text).map_err(|d| {
        LockError::Stale(format!(
            "{}: line {}: {}: {d} (a key may appear once in an object); run `imgbuild lock`",
            path.display(),
            d.line.unwrap_or(0),
            if d.path.is_empty() { "<top>" } else { &d.path }
        ))
    })?;
    let lock: LockFile = serde_json::from_str(&text).map_err(|e| {
        LockError::Stale(format!("{}: not a valid lock file ({e}); run `imgbuild lock`", path.display()))
    })?;
    if lock.lock_version != LOCK_VERSION {
        return Err(LockError::Stale(format!(
            "{}: lock version {} (this imgbuild writes {LOCK_VERSION}); run `imgbuild lock`",
            path.display(),
            lock.lock_version
        )));
    }
    Ok(lock)
}

/// The images the lock at `path` pins for recipe `lr` (none when there is no lock file,
/// or it is another recipe's); an unreadable lock is an error.
pub fn read_images(lr: &LoadedRecipe, path: &Path) -> Result<Vec<LockedImage>, LockError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let lock = read_lock(path)?;
    Ok(if lock.recipe == lr.recipe.name { lock.images } else { Vec::new() })
}

/// The packages a build of `lr` for `arch` installs, from its lock at `path`; the lock
/// must be for this recipe, its `packages:` section and its base image `base_sha256`.
pub fn read_for(
    lr: &LoadedRecipe,
    path: &Path,
    recipe_path: Option<&Path>,
    arch: Arch,
    base_sha256: &Sha256,
) -> Result<ArchLock, LockError> {
    let p = lr
        .recipe
        .packages
        .as_ref()
        .ok_or_else(|| LockError::Stale(format!("{}: recipe has no packages: section", lr.origin)))?;
    let rerun = rerun_hint(recipe_path);
    let lock = read_lock(path)?;
    let stale = |why: String| LockError::Stale(format!("{} is stale: {why}; run `{rerun}`", path.display()));
    if lock.recipe != lr.recipe.name {
        return Err(stale(format!("it is for recipe {:?}", lock.recipe)));
    }
    if lock.packages_digest != packages_digest(Some(p)) {
        return Err(stale("the recipe's packages: section changed since it was written".into()));
    }
    let Some(al) = lock.arches.get(arch.as_str()) else {
        return Err(stale(format!("it has no entry for arch {arch}")));
    };
    if &al.base_sha256 != base_sha256 {
        return Err(stale("the recipe's base image changed since it was written".into()));
    }
    Ok(al.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `arches: {amd64: A, amd64: B}` would let B win silently: refused, with the line.
    #[test]
    fn a_lock_with_a_repeated_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.lock");
        let text = format!(
            "{{\"lock_version\": {LOCK_VERSION}, \"recipe\": \"r\", \"packages_digest\": \"{}\",\n\
             \"arches\": {{\"amd64\": {{}},\n \"amd64\": {{}}}}}}",
            "0".repeat(64)
        );
        std::fs::write(&p, text).unwrap();
        let e = read_lock(&p).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("arches") && e.contains("duplicate key \"amd64\""), "{e}");
    }
}
