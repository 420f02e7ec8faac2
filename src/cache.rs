//! Content-addressed download cache: `<root>/sha256/<hex>`. A blob appears under its
//! digest name only after it was verified (atomic rename), so a present file is a
//! verified file.

use std::path::{Path, PathBuf};

use crate::recipe::Sha256;

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `--cache-dir`, else `$IMGBUILD_CACHE_DIR`, else `$XDG_CACHE_HOME/imgbuild`,
    /// else `~/.cache/imgbuild`. Created when missing.
    pub fn open(dir: Option<&Path>) -> std::io::Result<Cache> {
        let root = match dir {
            Some(d) => d.to_path_buf(),
            None => default_dir(),
        };
        std::fs::create_dir_all(root.join("sha256"))?;
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the verified blob with this digest lives (present or not).
    pub fn blob_path(&self, sha: &Sha256) -> PathBuf {
        self.root.join("sha256").join(sha.as_str())
    }

    /// The blob's path when it is in the cache.
    pub fn lookup(&self, sha: &Sha256) -> Option<PathBuf> {
        let p = self.blob_path(sha);
        p.is_file().then_some(p)
    }
}

fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IMGBUILD_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("imgbuild");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("imgbuild")
}
