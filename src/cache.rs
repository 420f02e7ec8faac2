//! Content-addressed download cache, shared safely by concurrent imgbuild processes.
//!
//! Layout under the root:
//! - `sha256/<hex>`: verified blobs. A blob appears here only after its digest was
//!   checked (atomic rename from `partial/`).
//! - `stamps/<hex>`: what the blob's inode looked like when its digest was last
//!   checked (device, inode, size, mtime and ctime with nanoseconds).
//! - `partial/<hex>`: an unfinished download, kept so a retry or a later run resumes
//!   it with an HTTP `Range` request. Never visible under a digest name.
//! - `members/<archive hex>/`: members inflated from a verified archive, each named by
//!   its sha256 with a `<hex>.stamp` beside it, and `index` (+ `index.stamp`): the
//!   archive's entries with the digests of the kept members, written last.
//! - `locks/<hex>`: one lock file per digest (`flock`); whoever holds it owns
//!   `partial/<hex>`. Lock files are never deleted: deleting one while another
//!   process waits on it would let two processes own the same partial file.
//!
//! A present blob is *not* taken as a verified one: files in a user's cache can be
//! edited, replaced or turned into symlinks after they were verified. [`Cache::lookup`]
//! trusts a blob only while its inode still matches its stamp (any write, rename,
//! chmod or link changes the ctime, which no user can set back); otherwise it hashes
//! the blob again, opened without following symlinks, and re-stamps it when the
//! digest still matches. A blob that is a symlink or not a regular file, or whose
//! digest no longer matches, is an integrity failure: it is removed (so the next run
//! downloads it again) and the caller stops.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::exit::{Classify, Code, PathIo};
use crate::types::Sha256;

/// A cached blob that can no longer be trusted, or the cache could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "cache entry {} {why} (expected content with sha256 {expected}); it was removed, \
         run again to download it afresh",
        path.display()
    )]
    Tampered { path: PathBuf, expected: Sha256, why: String },
    #[error(transparent)]
    Io(#[from] PathIo),
}

impl Classify for CacheError {
    fn code(&self) -> Code {
        match self {
            CacheError::Tampered { .. } => Code::Integrity,
            CacheError::Io(e) => e.code(),
        }
    }
}

/// The inode facts a stamp records. ctime moves on any change to the file and cannot
/// be set by a user, so an unchanged stamp means unchanged content.
fn stamp_of(m: &std::fs::Metadata) -> String {
    format!(
        "imgbuild-stamp-v1 {} {} {} {}.{:09} {}.{:09}\n",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

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
        for sub in ["sha256", "stamps", "partial", "locks", "members"] {
            fs_err::create_dir_all(root.join(sub))?;
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

    fn stamp_path(&self, sha: &Sha256) -> PathBuf {
        self.root.join("stamps").join(sha.as_str())
    }

    /// The blob's path when it is in the cache and still holds what its name says
    /// (see the module docs); `Ok(None)` when it is not there.
    pub fn lookup(&self, sha: &Sha256) -> Result<Option<PathBuf>, CacheError> {
        self.trusted(&self.blob_path(sha), &self.stamp_path(sha), sha)
    }

    /// `path` when it holds content with sha256 `sha`: trusted as is while its inode
    /// matches the stamp at `stamp`, else hashed again (and re-stamped). A symlink, a
    /// non-regular file or other content is removed (with its stamp) and an error.
    fn trusted(&self, path: &Path, stamp: &Path, sha: &Sha256) -> Result<Option<PathBuf>, CacheError> {
        let io = |what, e| CacheError::from(PathIo::at(what, path)(e));
        let evict = |why: String| {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(stamp);
            CacheError::Tampered { path: path.to_path_buf(), expected: sha.clone(), why }
        };
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", e)),
        };
        if !meta.file_type().is_file() {
            let what = if meta.file_type().is_symlink() { "a symlink" } else { "not a regular file" };
            return Err(evict(format!("is {what}; the cache never follows symlinks")));
        }
        if std::fs::read_to_string(stamp).is_ok_and(|s| s == stamp_of(&meta)) {
            return Ok(Some(path.to_path_buf()));
        }
        // No stamp yet (an older cache, a copied-in blob) or the inode changed: hash it.
        let mut f = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(evict("became a symlink".into())),
            Err(e) => return Err(io("opening", e)),
        };
        let opened = f.metadata().map_err(|e| io("reading", e))?;
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| io("reading", e))?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut h, &buf[..n]);
        }
        let actual = Sha256::from_hasher(h);
        if &actual != sha {
            return Err(evict(format!("now holds content with sha256 {actual}")));
        }
        write_stamp(stamp, &opened).map_err(|e| io("stamping", e))?;
        Ok(Some(path.to_path_buf()))
    }

    /// Remove an untrustworthy blob (and its stamp); the error to return.
    fn evict(&self, sha: &Sha256, why: String) -> CacheError {
        let path = self.blob_path(sha);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(self.stamp_path(sha));
        CacheError::Tampered { path, expected: sha.clone(), why }
    }

    /// Record the blob's inode as it is now verified (temp file + rename).
    fn write_stamp(&self, sha: &Sha256, meta: &std::fs::Metadata) -> std::io::Result<()> {
        fs_err::create_dir_all(self.root.join("stamps"))?;
        write_stamp(&self.stamp_path(sha), meta)
    }

    /// Store bytes the caller verified against `sha` (temp file + rename + stamp).
    pub fn put(&self, sha: &Sha256, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let dir = self.root.join("partial");
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        std::io::Write::write_all(&mut tmp, bytes)?;
        tmp.as_file().sync_all()?;
        let blob = self.blob_path(sha);
        tmp.persist(&blob).map_err(|e| e.error)?;
        self.write_stamp(sha, &fs_err::symlink_metadata(&blob)?)?;
        Ok(blob)
    }

    /// The bytes of a small cached blob (documents parsed from the cache), trusted as
    /// [`Cache::lookup`] trusts it and hashed again on read: `Ok(None)` when absent; a
    /// blob that no longer matches its name is removed and an error, as in `lookup`.
    pub fn read_verified(&self, sha: &Sha256) -> Result<Option<Vec<u8>>, CacheError> {
        let Some(path) = self.lookup(sha)? else { return Ok(None) };
        let b = std::fs::read(&path).map_err(PathIo::at("reading", &path))?;
        if Sha256::of(&b) != *sha {
            return Err(self.evict(sha, format!("now holds content with sha256 {}", Sha256::of(&b))));
        }
        Ok(Some(b))
    }

    /// Where the members inflated from the verified archive `archive` are kept.
    fn members_dir(&self, archive: &Sha256) -> PathBuf {
        self.root.join("members").join(archive.as_str())
    }

    /// The member index imgbuild wrote for the verified archive `archive` (see
    /// [`Cache::put_member_index`]), while its inode still matches the stamp written with
    /// it. An index that changed since cannot be checked against anything (it is derived
    /// from the archive, not pinned): it is removed and `Ok(None)` returned, so the caller
    /// derives it again from the archive.
    pub fn member_index(&self, archive: &Sha256) -> Result<Option<Vec<u8>>, CacheError> {
        let dir = self.members_dir(archive);
        let (path, stamp) = (dir.join("index"), dir.join("index.stamp"));
        let io = |what, e| CacheError::from(PathIo::at(what, &path)(e));
        let mut f = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.drop_index(archive);
                return Ok(None);
            }
            Err(e) => return Err(io("opening", e)),
        };
        let meta = f.metadata().map_err(|e| io("reading", e))?;
        if !meta.file_type().is_file() || !std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_of(&meta))
        {
            self.drop_index(archive);
            return Ok(None);
        }
        let mut b = Vec::new();
        f.read_to_end(&mut b).map_err(|e| io("reading", e))?;
        Ok(Some(b))
    }

    /// Forget the member index of `archive` (its members stay: each is checked by its own
    /// digest when used).
    pub fn drop_index(&self, archive: &Sha256) {
        let dir = self.members_dir(archive);
        let _ = std::fs::remove_file(dir.join("index"));
        let _ = std::fs::remove_file(dir.join("index.stamp"));
    }

    /// The member with sha256 `sha` inflated from the verified archive `archive`, trusted
    /// as [`Cache::lookup`] trusts a blob (a changed one is hashed again; other content is
    /// an integrity failure and removed); `Ok(None)` when it is not there.
    pub fn member(&self, archive: &Sha256, sha: &Sha256) -> Result<Option<PathBuf>, CacheError> {
        let dir = self.members_dir(archive);
        self.trusted(&dir.join(sha.as_str()), &dir.join(format!("{sha}.stamp")), sha)
    }

    /// A temp file (beside the members of `archive`, removed when dropped) to inflate a
    /// member into, for [`Cache::put_member`].
    pub fn staging(&self, archive: &Sha256) -> std::io::Result<tempfile::NamedTempFile> {
        let dir = self.members_dir(archive);
        fs_err::create_dir_all(&dir)?;
        tempfile::NamedTempFile::new_in(dir)
    }

    /// Publish a staged member of `archive` whose bytes the caller hashed to `sha`:
    /// written to disk, renamed under its digest, stamped. Its path.
    pub fn put_member(
        &self,
        archive: &Sha256,
        sha: &Sha256,
        staged: tempfile::NamedTempFile,
    ) -> std::io::Result<PathBuf> {
        let dir = self.members_dir(archive);
        fs_err::create_dir_all(&dir)?;
        // On disk before it is named: a crash must not leave a stamped member whose
        // blocks never reached the disk.
        staged.as_file().sync_data()?;
        let path = dir.join(sha.as_str());
        staged.persist(&path).map_err(|e| e.error)?;
        write_stamp(&dir.join(format!("{sha}.stamp")), &fs_err::symlink_metadata(&path)?)?;
        Ok(path)
    }

    /// Write the member index of `archive` (after its members: an index names only
    /// published members) with its stamp.
    pub fn put_member_index(&self, archive: &Sha256, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.members_dir(archive);
        fs_err::create_dir_all(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        std::io::Write::write_all(&mut tmp, bytes)?;
        tmp.as_file().sync_data()?;
        let path = dir.join("index");
        tmp.persist(&path).map_err(|e| e.error)?;
        write_stamp(&dir.join("index.stamp"), &fs_err::symlink_metadata(&path)?)
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
        let (file, path) =
            fs_err::OpenOptions::new().create(true).truncate(false).write(true).open(path)?.into_parts();
        // flock(2): released by the kernel when the process dies, so a killed build never
        // leaves a blob locked.
        file.lock().map_err(|e| {
            std::io::Error::new(e.kind(), format!("failed to lock `{}`: {e}", path.display()))
        })?;
        Ok(BlobLock { _file: file })
    }

    /// Publish the verified partial file of `sha` under its digest name. The caller
    /// holds the lock and has checked the digest; the rename is atomic.
    pub fn commit(&self, sha: &Sha256, _lock: &BlobLock) -> std::io::Result<PathBuf> {
        let partial = self.partial_path(sha);
        fs_err::File::open(&partial)?.sync_all()?;
        let blob = self.blob_path(sha);
        fs_err::rename(&partial, &blob)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(self.root.join("sha256")) {
            let _ = d.sync_all();
        }
        self.write_stamp(sha, &fs_err::symlink_metadata(&blob)?)?;
        Ok(blob)
    }

    /// Drop the partial file of `sha` (after a digest mismatch).
    pub fn discard(&self, sha: &Sha256, _lock: &BlobLock) -> std::io::Result<()> {
        match fs_err::remove_file(self.partial_path(sha)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Record `meta` (a file as it is now verified) at `stamp` (temp file + rename).
fn write_stamp(stamp: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let dir = stamp.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, stamp_of(meta).as_bytes())?;
    tmp.persist(stamp).map_err(|e| e.error)?;
    Ok(())
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
        assert!(c.lookup(&sha).unwrap().is_none());
        let p = c.commit(&sha, &lock).unwrap();
        assert_eq!(c.lookup(&sha).unwrap(), Some(p));
        assert!(!c.partial_path(&sha).exists());
        c.discard(&sha, &lock).unwrap();
    }

    /// Image documents read from the cache go through the same trust as downloads: a
    /// symlinked one is refused (exit 3) and removed, never read through.
    #[test]
    fn read_verified_trusts_what_lookup_trusts() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(Some(dir.path())).unwrap();
        let sha = Sha256::of(b"{}");
        assert!(c.read_verified(&sha).unwrap().is_none());
        let blob = c.put(&sha, b"{}").unwrap();
        assert_eq!(c.read_verified(&sha).unwrap().as_deref(), Some(&b"{}"[..]));
        std::fs::remove_file(&blob).unwrap();
        let target = dir.path().join("other.json");
        std::fs::write(&target, b"{}").unwrap();
        std::os::unix::fs::symlink(&target, &blob).unwrap();
        let e = c.read_verified(&sha).unwrap_err();
        assert_eq!(e.code(), Code::Integrity, "{e}");
        assert!(std::fs::symlink_metadata(&blob).is_err() && target.exists());
    }

    /// A blob edited in place (same size, mtime put back), replaced by a symlink, or
    /// turned into a directory is refused and removed; a correct blob without a stamp
    /// (copied in by hand, or from an older imgbuild) is hashed once and stamped.
    #[test]
    fn a_changed_blob_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(Some(dir.path())).unwrap();
        let sha = Sha256::of(b"kubelet");
        let blob = c.put(&sha, b"kubelet").unwrap();
        assert_eq!(c.lookup(&sha).unwrap(), Some(blob.clone()));

        let mtime = std::fs::metadata(&blob).unwrap().modified().unwrap();
        std::fs::write(&blob, b"kubelex").unwrap();
        File::options().write(true).open(&blob).unwrap().set_modified(mtime).unwrap();
        let e = c.lookup(&sha).unwrap_err();
        assert_eq!(e.code(), Code::Integrity);
        assert!(e.to_string().contains(Sha256::of(b"kubelex").as_str()), "{e}");
        assert!(!blob.exists() && !c.stamp_path(&sha).exists());
        assert!(c.lookup(&sha).unwrap().is_none(), "removed: the next run downloads it again");

        let target = dir.path().join("passwd");
        std::fs::write(&target, b"root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(&target, &blob).unwrap();
        let e = c.lookup(&sha).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert!(std::fs::symlink_metadata(&blob).is_err() && target.exists());

        std::fs::create_dir(&blob).unwrap();
        assert!(c.lookup(&sha).unwrap_err().to_string().contains("not a regular file"));
        std::fs::remove_dir(&blob).unwrap();

        std::fs::write(&blob, b"kubelet").unwrap();
        assert!(!c.stamp_path(&sha).exists());
        assert_eq!(c.lookup(&sha).unwrap(), Some(blob.clone()));
        let stamp = std::fs::read_to_string(c.stamp_path(&sha)).unwrap();
        assert_eq!(stamp, stamp_of(&std::fs::symlink_metadata(&blob).unwrap()));
    }

    /// Kept archive members are trusted as blobs are (a changed one is an integrity
    /// failure and removed); a member index that changed since it was written is not
    /// used (and removed): the caller derives it again from the archive.
    #[test]
    fn members_and_their_index_are_trusted_only_as_written() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(Some(dir.path())).unwrap();
        let archive = Sha256::of(b"containerd.tar.gz");
        assert!(c.member_index(&archive).unwrap().is_none());
        c.put_member_index(&archive, b"{\"entries\":[]}").unwrap();
        assert_eq!(c.member_index(&archive).unwrap().as_deref(), Some(&b"{\"entries\":[]}"[..]));
        let index = c.members_dir(&archive).join("index");
        std::fs::write(&index, b"{\"entries\":[1]}").unwrap();
        assert!(c.member_index(&archive).unwrap().is_none());
        assert!(!index.exists(), "a changed index is removed");

        let sha = Sha256::of(b"ctr");
        let mut staged = c.staging(&archive).unwrap();
        staged.write_all(b"ctr").unwrap();
        let p = c.put_member(&archive, &sha, staged).unwrap();
        assert_eq!(p, c.members_dir(&archive).join(sha.as_str()));
        let mut names: Vec<String> = std::fs::read_dir(c.members_dir(&archive))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [sha.to_string(), format!("{sha}.stamp")], "no temp file is left");
        assert_eq!(c.member(&archive, &sha).unwrap(), Some(p.clone()));
        assert!(c.member(&archive, &Sha256::of(b"runc")).unwrap().is_none());
        std::fs::write(&p, b"cts").unwrap();
        let e = c.member(&archive, &sha).unwrap_err();
        assert_eq!(e.code(), Code::Integrity, "{e}");
        assert!(!p.exists(), "a changed member is removed");
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
