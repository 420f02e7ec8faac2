//! The boot test's cache of expensive inputs: `$IMGBUILD_TEST_CACHE` (default
//! `~/.cache/imgbuild-test`)`/<kind>/<key>`, the key being the first 16 hex digits of the
//! sha256 of this crate's source and the input files. A directory is built in a temp dir
//! beside it and renamed into place, so a present directory (with its marker file) is
//! complete; a changed builder or input makes a new key.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};

/// sha256 of every file of this crate's source, computed by build.rs.
pub const SOURCE_HASH: &str = env!("IMGBUILD_TESTKIT_SOURCE_HASH");

/// The cache root.
pub fn root() -> PathBuf {
    match std::env::var_os("IMGBUILD_TEST_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/imgbuild-test"),
    }
}

/// The key of `inputs` (file paths) for this builder.
pub fn key(inputs: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(SOURCE_HASH.as_bytes());
    for p in inputs {
        h.update(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    Ok(hex::encode(h.finalize())[..16].to_string())
}

/// The cache dir of `kind` for `inputs`, made by `build(dir)` when it is missing (a
/// present dir holds `marker`).
pub fn cached(
    kind: &str,
    inputs: &[&Path],
    marker: &str,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dest = root().join(kind).join(key(inputs)?);
    if dest.join(marker).is_file() {
        eprintln!("{kind}: cached {}", dest.display());
        return Ok(dest);
    }
    let parent = dest.parent().context("a cache dir has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".build-").tempdir_in(parent)?;
    let t = std::time::Instant::now();
    build(tmp.path())?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(tmp.keep(), &dest).with_context(|| format!("renaming into {}", dest.display()))?;
    eprintln!("{kind}: built {} in {:.0}s", dest.display(), t.elapsed().as_secs_f64());
    Ok(dest)
}

/// `apt-get download` of `packages` into `dest` from the host's Debian apt (after one
/// `apt-get update` when the package lists lack them).
pub fn apt_download(packages: &[String], dest: &Path) -> Result<()> {
    let download = || {
        let mut c = Command::new("apt-get");
        c.args(["download", "-qq"]).args(packages).current_dir(dest);
        c
    };
    if download().output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("apt-get download failed; apt-get update and retry");
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(&mut download()).map(drop)
}

/// The `.deb` files in `dir`, sorted.
pub fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    v.retain(|p| p.extension().is_some_and(|e| e == "deb"));
    v.sort();
    Ok(v)
}
