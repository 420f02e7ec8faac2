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
    cached_in(&root(), kind, inputs, marker, build)
}

fn cached_in(
    root: &Path,
    kind: &str,
    inputs: &[&Path],
    marker: &str,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dest = root.join(kind).join(key(inputs)?);
    if dest.join(marker).is_file() {
        eprintln!("{kind}: cached {}", dest.display());
        return Ok(dest);
    }
    let parent = dest.parent().context("a cache dir has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".build-").tempdir_in(parent)?;
    let t = std::time::Instant::now();
    build(tmp.path())?;
    // Another process (a second boot-test run on this machine) may have built the same
    // key meanwhile: a complete dir is kept and used, never removed under its readers;
    // only an incomplete leftover (no marker) makes way for ours.
    if dest.join(marker).is_file() {
        eprintln!("{kind}: built meanwhile by another process: {}", dest.display());
        return Ok(dest);
    }
    let _ = std::fs::remove_dir_all(&dest);
    let built = tmp.keep();
    if let Err(e) = std::fs::rename(&built, &dest) {
        let _ = std::fs::remove_dir_all(&built);
        if !dest.join(marker).is_file() {
            return Err(e).with_context(|| format!("renaming into {}", dest.display()));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes building one key: the second to finish uses the first one's
    /// complete dir (still readable there) and leaves no temp dir behind.
    #[test]
    fn a_dir_built_meanwhile_by_another_process_is_used_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let first = cached_in(root.path(), "k", &[], "done", |d| {
            // the other process completes while this one builds
            let other =
                cached_in(root.path(), "k", &[], "done", |o| Ok(std::fs::write(o.join("done"), "other")?))?;
            std::fs::write(d.join("done"), "mine")?;
            assert_eq!(std::fs::read_to_string(other.join("done"))?, "other");
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(first.join("done")).unwrap(), "other");
        let left: Vec<_> =
            std::fs::read_dir(first.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, [first.file_name().unwrap()], "a temp dir was left");
        // An incomplete leftover (no marker) is replaced.
        std::fs::remove_file(first.join("done")).unwrap();
        let again =
            cached_in(root.path(), "k", &[], "done", |d| Ok(std::fs::write(d.join("done"), "new")?)).unwrap();
        assert_eq!(std::fs::read_to_string(again.join("done")).unwrap(), "new");
    }
}
