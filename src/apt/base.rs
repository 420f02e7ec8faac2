//! The base image's `/var/lib/dpkg/status` for `imgbuild lock`: the verified base from
//! the cache, opened read-only (`disk::open_read_only`: debugfs, rootless).
//! `build` reads it from the working image it already has (the packages step).

use crate::cache::Cache;
use crate::disk;
use crate::recipe::LoadedRecipe;
use crate::types::Arch;

use super::AptError;

pub const STATUS: &str = "/var/lib/dpkg/status";

fn disk_err(e: disk::DiskError) -> AptError {
    AptError::Format { what: "base image".into(), msg: e.to_string() }
}

/// `/var/lib/dpkg/status` of the recipe's base image for `arch`, from the cache.
pub fn status_from_cache(lr: &LoadedRecipe, arch: Arch, cache: &Cache) -> Result<String, AptError> {
    let b = &lr.recipe.base;
    let sha = b
        .sha256
        .get(arch.as_str())
        .ok_or_else(|| AptError::Input(format!("base has no sha256 for {arch}")))?;
    let found = cache.lookup(sha).map_err(|e| AptError::Integrity {
        url: cache.blob_path(sha).display().to_string(),
        msg: e.to_string(),
    })?;
    let Some(blob) = found else {
        return Err(AptError::Input(format!(
            "the base image for {arch} ({sha}) is not in the cache {}: run `imgbuild fetch --arch {arch}` \
             first, or pass --base-status FILE",
            cache.root().display()
        )));
    };
    let image = disk::open_read_only(&blob, &b.root_label).map_err(disk_err)?;
    let bytes = image.root.read_file(STATUS).map_err(disk_err)?.ok_or_else(|| AptError::Format {
        what: format!("base image {sha}"),
        msg: format!("has no {STATUS}"),
    })?;
    String::from_utf8(bytes).map_err(|_| AptError::Format { what: STATUS.into(), msg: "not UTF-8".into() })
}
