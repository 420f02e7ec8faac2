//! Content-addressed download cache, shared safely by concurrent imgbuild processes.
//!
//! Layout under the root:
//! - `sha256/<hex>`: verified blobs. A blob appears here only after its digest was
//!   checked (atomic rename from `partial/`), so a present file is a verified file.
//! - `partial/<hex>`: an unfinished download, kept so a retry or a later run resumes
//!   it with an HTTP `Range` request. Never visible under a digest name.
//! - `locks/<hex>`: one lock file per digest (`flock`); whoever holds it owns
//!   `partial/<hex>`. Lock files are never deleted: deleting one while another
//!   process waits on it would let two processes own the same partial file.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::types::Sha256;

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Exclusive ownership of one digest's partial file; released on drop.
#[derive(Debug)]
pub struct BlobLock {
    _file: File,
}

impl Cache {
    /// `--cache-dir`, else `$IMGBUILD_CACHE_DIR`, else `$XDG_CACHE_HOME/imgbuild`,
    /// else `~/.cache/imgbuild`. Created when missing.
    pub fn open(dir: Option<&Path>) -> std::io::Result<Cache> {
        let root = match dir {
            Some(d) => d.to_path_buf(),
            None => default_dir(),
        };
        for sub in ["sha256", "partial", "locks"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
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

    /// The bytes of a small cached blob, hashed again on read: `None` when absent or
    /// when the file no longer matches its name (for documents parsed from the cache).
    pub fn read_verified(&self, sha: &Sha256) -> Option<Vec<u8>> {
        let b = std::fs::read(self.lookup(sha)?).ok()?;
        (Sha256::of(&b) == *sha).then_some(b)
    }

    /// Where an unfinished download of this digest is kept.
    pub fn partial_path(&self, sha: &Sha256) -> PathBuf {
        self.root.join("partial").join(sha.as_str())
    }

    /// Block until this process owns `sha` (its partial file and the right to
    /// publish its blob). Callers re-check [`Cache::lookup`] afterwards: another
    /// process may have published the blob while we waited.
    pub fn lock(&self, sha: &Sha256) -> std::io::Result<BlobLock> {
        let path = self.root.join("locks").join(sha.as_str());
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // Fully qualified: std's inherent `File::lock*` (Rust 1.89) is above our MSRV.
        fs4::fs_std::FileExt::lock_exclusive(&file)?;
        Ok(BlobLock { _file: file })
    }

    /// Publish the verified partial file of `sha` under its digest name. The caller
    /// holds the lock and has checked the digest; the rename is atomic.
    pub fn commit(&self, sha: &Sha256, _lock: &BlobLock) -> std::io::Result<PathBuf> {
        let partial = self.partial_path(sha);
        File::open(&partial)?.sync_all()?;
        let blob = self.blob_path(sha);
        std::fs::rename(&partial, &blob)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(self.root.join("sha256")) {
            let _ = d.sync_all();
        }
        Ok(blob)
    }

    /// Drop the partial file of `sha` (after a digest mismatch).
    pub fn discard(&self, sha: &Sha256, _lock: &BlobLock) -> std::io::Result<()> {
        match std::fs::remove_file(self.partial_path(sha)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_publishes_only_after_rename() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(Some(dir.path())).unwrap();
        let sha = Sha256::of(b"x");
        let lock = c.lock(&sha).unwrap();
        std::fs::write(c.partial_path(&sha), b"x").unwrap();
        assert!(c.lookup(&sha).is_none());
        let p = c.commit(&sha, &lock).unwrap();
        assert_eq!(c.lookup(&sha), Some(p));
        assert!(!c.partial_path(&sha).exists());
        c.discard(&sha, &lock).unwrap();
    }

    #[test]
    fn lock_excludes_other_holders() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(Some(dir.path())).unwrap();
        let sha = Sha256::of(b"y");
        let held = c.lock(&sha).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let c2 = c.clone();
        let s2 = sha.clone();
        let t = std::thread::spawn(move || {
            let _l = c2.lock(&s2).unwrap();
            tx.send(()).unwrap();
        });
        // flock locks belong to the open file description, so a second open in the
        // same process contends like another process would.
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
