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
//!   `partial/<hex>`. Lock files are deleted only by `cache prune`, which has the
//!   whole cache to itself: deleting one while another process waits on it would let
//!   two processes own the same partial file.
//! - `cosign/<hex>.sig`, `cosign/<hex>.cert`: the cosign signature files of the
//!   artifact with that digest (verified whenever they are used).
//! - `cache.lock`: the cache as a whole (`flock`). Every process that opens the cache
//!   holds it shared for as long as it uses the cache; `cache prune` holds it exclusive,
//!   so it never removes what a running build or fetch reads or writes. Never deleted.
//!
//! A stamp may carry a second line, `what <description>`, naming what the blob is (the
//! plan item it was fetched for): `cache list` shows it. It is a label, not a fact the
//! cache trusts.
//!
//! A present blob is *not* taken as a verified one: files in a user's cache can be
//! edited, replaced or turned into symlinks after they were verified. [`Cache::lookup`]
//! trusts a blob only while its inode still matches its stamp (any write, rename,
//! chmod or link changes the ctime, which no user can set back); otherwise it hashes
//! the blob again, opened without following symlinks, and re-stamps it when the
//! digest still matches. A blob that is a symlink or not a regular file, or whose
//! digest no longer matches, is an integrity failure: it is removed (so the next run
//! downloads it again) and the caller stops.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Does the stamp text `s` record the inode `m`? Only its first line counts: a second
/// one is the description.
fn stamp_matches(s: &str, m: &std::fs::Metadata) -> bool {
    s.lines().next() == Some(stamp_of(m).trim_end())
}

/// The description a stamp file carries, if any.
fn label_in(stamp: &Path) -> Option<String> {
    let s = std::fs::read_to_string(stamp).ok()?;
    s.lines().nth(1)?.strip_prefix("what ").map(str::to_string)
}

/// How a process uses the cache as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Builds, fetches, locks: any number at once.
    Shared,
    /// `cache prune`: alone, after every shared user is done.
    Exclusive,
}

/// The file whose `flock` says who uses the cache (see the module docs).
pub const USE_LOCK: &str = "cache.lock";

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    access: Access,
    /// False when this user may only read the cache (see `open_as`).
    writable: bool,
    /// The open `cache.lock`, locked as `access` says; released when the last clone drops.
    _held: Arc<File>,
}

/// Exclusive ownership of one digest's partial file; released on drop.
#[derive(Debug)]
pub struct BlobLock {
    _file: File,
}

impl Cache {
    /// `--cache-dir`, else `$IMGBUILD_CACHE_DIR`, else `$XDG_CACHE_HOME/imgbuild`,
    /// else `~/.cache/imgbuild`. Created when missing.
    /// Held shared (see [`Access`]); waits while a `cache prune` runs.
    pub fn open(dir: Option<&Path>) -> std::io::Result<Cache> {
        Cache::open_as(dir, Access::Shared, &mut |_| Ok(()))
    }

    /// Open the cache for `access`. When another process holds it in a conflicting way,
    /// `busy` is called first with the lock file's path (to say that this one waits, or
    /// to refuse with an error), then this blocks until the cache is free.
    pub fn open_as(
        dir: Option<&Path>,
        access: Access,
        busy: &mut dyn FnMut(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<Cache> {
        let root = Cache::dir(dir);
        for sub in ["sha256", "stamps", "partial", "locks", "members"] {
            fs_err::create_dir_all(root.join(sub))?;
        }
        let path = root.join(USE_LOCK);
        let rw = fs_err::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path);
        // A cache this user may only read (another account's, a read-only volume) can
        // still serve builds: flock(2) works on a read-only descriptor. Pruning needs
        // to write, so it keeps the error.
        let (opened, writable) = match rw {
            Err(e) if access == Access::Shared && read_only(&e) => {
                (fs_err::File::open(&path).map_err(|_| e)?, false)
            }
            r => (r?, true),
        };
        let (file, path) = opened.into_parts();
        let failed = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("failed to lock `{}`: {e}", path.display()))
        };
        let tried = match access {
            Access::Shared => file.try_lock_shared(),
            Access::Exclusive => file.try_lock(),
        };
        match tried {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                busy(&path)?;
                // flock(2): released by the kernel when the holder dies, so this never
                // waits on a process that is gone.
                match access {
                    Access::Shared => file.lock_shared(),
                    Access::Exclusive => file.lock(),
                }
                .map_err(failed)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
        Ok(Cache { root, access, writable, _held: Arc::new(file) })
    }

    /// The cache directory `open` would use for `dir` (`--cache-dir`), without opening it.
    pub fn dir(dir: Option<&Path>) -> PathBuf {
        match dir {
            Some(d) => d.to_path_buf(),
            None => default_dir(),
        }
    }

    /// Whether this process may write into the cache; a read-only cache still serves
    /// verified blobs, but derived data (archive members) goes elsewhere.
    pub fn writable(&self) -> bool {
        self.writable
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
        if std::fs::read_to_string(stamp).is_ok_and(|s| stamp_matches(&s, &meta)) {
            return Ok(Some(path.to_path_buf()));
        }
        // No stamp yet (an older cache, a copied-in blob) or the inode changed: hash it.
        let mut f = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(evict("became a symlink".into())),
            Err(e) => return Err(io("opening", e)),
        };
        let opened = f.metadata().map_err(|e| io("reading", e))?;
        let (actual, _) = Sha256::of_reader(&mut f, |_| {}).map_err(|e| io("reading", e))?;
        if &actual != sha {
            return Err(evict(format!("now holds content with sha256 {actual}")));
        }
        match write_stamp(stamp, &opened, label_in(stamp).as_deref()) {
            // Just hashed, so trusted now; a cache this user cannot write is hashed again
            // next time instead of failing (see `open_as`).
            Err(e) if read_only(&e) => {}
            r => r.map_err(|e| io("stamping", e))?,
        }
        Ok(Some(path.to_path_buf()))
    }

    /// Remove an untrustworthy blob (and its stamp); the error to return.
    fn evict(&self, sha: &Sha256, why: String) -> CacheError {
        let path = self.blob_path(sha);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(self.stamp_path(sha));
        CacheError::Tampered { path, expected: sha.clone(), why }
    }

    /// Record the blob's inode as it is now verified (temp file + rename), with what it is.
    fn write_stamp(&self, sha: &Sha256, meta: &std::fs::Metadata, what: &str) -> std::io::Result<()> {
        fs_err::create_dir_all(self.root.join("stamps"))?;
        write_stamp(&self.stamp_path(sha), meta, Some(what))
    }

    /// What the blob `sha` is, as the stamp written when it was verified says.
    pub fn label(&self, sha: &Sha256) -> Option<String> {
        label_in(&self.stamp_path(sha))
    }

    /// Store bytes the caller verified against `sha` (temp file + rename + stamp); `what`
    /// describes them for `cache list`.
    pub fn put(&self, sha: &Sha256, bytes: &[u8], what: &str) -> std::io::Result<PathBuf> {
        let dir = self.root.join("partial");
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        std::io::Write::write_all(&mut tmp, bytes)?;
        tmp.as_file().sync_all()?;
        let blob = self.blob_path(sha);
        tmp.persist(&blob).map_err(|e| e.error)?;
        self.write_stamp(sha, &fs_err::symlink_metadata(&blob)?, what)?;
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
        if !meta.file_type().is_file()
            || !std::fs::read_to_string(&stamp).is_ok_and(|s| stamp_matches(&s, &meta))
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
        write_stamp(&dir.join(format!("{sha}.stamp")), &fs_err::symlink_metadata(&path)?, None)?;
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
        write_stamp(&dir.join("index.stamp"), &fs_err::symlink_metadata(&path)?, None)
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
    /// holds the lock and has checked the digest; the rename is atomic. `what` describes
    /// the blob for `cache list`.
    pub fn commit(&self, sha: &Sha256, _lock: &BlobLock, what: &str) -> std::io::Result<PathBuf> {
        let partial = self.partial_path(sha);
        fs_err::File::open(&partial)?.sync_all()?;
        let blob = self.blob_path(sha);
        fs_err::rename(&partial, &blob)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(self.root.join("sha256")) {
            let _ = d.sync_all();
        }
        self.write_stamp(sha, &fs_err::symlink_metadata(&blob)?, what)?;
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

/// What a cache entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A verified blob, `sha256/<hex>`.
    Blob,
    /// A member inflated from a verified archive, `members/<archive>/<hex>`.
    Member,
    /// An unfinished download, `partial/<hex>`.
    Partial,
    /// A cosign `.sig` or `.cert` of the artifact `<hex>`, `cosign/<hex>.{sig,cert}`.
    Signature,
    /// Bookkeeping beside the data: a stamp, a per-digest lock file, a member index.
    Stamp,
    Lock,
    Index,
    /// Not something imgbuild keeps there in this form: an unfinished write (a temp
    /// file), a file under a name that is no digest, a symlink or a directory.
    Unknown,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Blob => "blob",
            EntryKind::Member => "member",
            EntryKind::Partial => "partial",
            EntryKind::Signature => "signature",
            EntryKind::Stamp => "stamp",
            EntryKind::Lock => "lock",
            EntryKind::Index => "index",
            EntryKind::Unknown => "unknown",
        }
    }

    /// Bookkeeping kinds: not data of their own, `cache list` leaves them out.
    pub fn is_bookkeeping(self) -> bool {
        matches!(self, EntryKind::Stamp | EntryKind::Lock | EntryKind::Index)
    }
}

/// One file (or stray directory) in the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// The digest the entry is named by, when its name is one (a member: its own; a
    /// signature or lock: the blob's).
    pub sha256: Option<Sha256>,
    /// The archive a member (or member index) was inflated from.
    pub archive: Option<Sha256>,
    /// Bytes on disk (a stray directory: everything in it).
    pub size: u64,
    /// What it is, as a stamp or member index names it; else "unknown".
    pub what: String,
    pub path: PathBuf,
}

/// Reads a member index (the archive's digest, the index's bytes): the members it names,
/// each with its entry name in the archive; `None` when it is no index this imgbuild
/// would use. The index format belongs to the layer that writes it.
pub type IndexReader<'a> = &'a dyn Fn(&Sha256, &[u8]) -> Option<Vec<(Sha256, String)>>;

/// A `members/<archive>/` directory.
#[derive(Debug, Clone)]
pub struct MemberDir {
    pub archive: Sha256,
    pub path: PathBuf,
    /// The members its index names; `None` without an index a build would use (never
    /// written, half-written, changed, or of another version).
    pub indexed: Option<BTreeSet<Sha256>>,
}

/// Everything in the cache.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Every file, in path order (bookkeeping included).
    pub entries: Vec<Entry>,
    pub member_dirs: Vec<MemberDir>,
}

const UNKNOWN: &str = "unknown";

/// The entries of `dir` with their metadata (not followed), sorted by name; an entry that
/// vanished meanwhile (a concurrent build) is skipped.
fn entries_of(dir: &Path) -> Result<Vec<(String, PathBuf, std::fs::Metadata)>, CacheError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PathIo::at("reading", dir)(e).into()),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(PathIo::at("reading", dir))?;
        let path = e.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PathIo::at("reading", &path)(e).into()),
        };
        out.push((e.file_name().to_string_lossy().into_owned(), path, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Bytes under `path` (a file: its size), not following symlinks.
fn disk_size(path: &Path, meta: &std::fs::Metadata) -> Result<u64, CacheError> {
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut n = 0;
    for (_, p, m) in entries_of(path)? {
        n += disk_size(&p, &m)?;
    }
    Ok(n)
}

/// Remove a file or a stray directory; one already gone is fine.
fn remove(path: &Path, meta_is_dir: bool) -> Result<(), CacheError> {
    let r = if meta_is_dir { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PathIo::at("removing", path)(e).into()),
        _ => Ok(()),
    }
}

impl Cache {
    /// Everything the cache holds, each file named as far as its stamp or member index
    /// says. An unreadable directory or file is an error naming its path.
    pub fn scan(&self, index: IndexReader<'_>) -> Result<Inventory, CacheError> {
        let mut inv = Inventory::default();
        let entry = |kind, sha256: Option<Sha256>, archive, size, what: String, path: PathBuf| Entry {
            kind,
            sha256,
            archive,
            size,
            what,
            path,
        };
        let hex = |name: &str| Sha256::parse(name).ok();
        let what = |sha: &Sha256| self.label(sha).unwrap_or_else(|| UNKNOWN.into());
        for (name, path, meta) in entries_of(&self.root)? {
            let size = disk_size(&path, &meta)?;
            let known = match name.as_str() {
                USE_LOCK => meta.is_file(),
                "sha256" | "stamps" | "partial" | "locks" | "members" | "cosign" => meta.is_dir(),
                _ => false,
            };
            if !known {
                inv.entries.push(entry(EntryKind::Unknown, None, None, size, UNKNOWN.into(), path));
            }
        }
        for (name, path, meta) in entries_of(&self.root.join("sha256"))? {
            let size = disk_size(&path, &meta)?;
            inv.entries.push(match hex(&name).filter(|_| meta.is_file()) {
                Some(sha) => entry(EntryKind::Blob, Some(sha.clone()), None, size, what(&sha), path),
                None => entry(EntryKind::Unknown, None, None, size, UNKNOWN.into(), path),
            });
        }
        for (name, path, meta) in entries_of(&self.root.join("partial"))? {
            let size = disk_size(&path, &meta)?;
            inv.entries.push(match hex(&name).filter(|_| meta.is_file()) {
                Some(sha) => {
                    let w = match self.label(&sha) {
                        Some(l) => format!("unfinished download of {l} (the next fetch resumes it)"),
                        None => "unfinished download (the next fetch resumes it)".into(),
                    };
                    entry(EntryKind::Partial, Some(sha), None, size, w, path)
                }
                None => entry(EntryKind::Unknown, None, None, size, "unfinished write".into(), path),
            });
        }
        for (name, path, meta) in entries_of(&self.root.join("cosign"))? {
            let size = disk_size(&path, &meta)?;
            let sha = [".sig", ".cert"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .and_then(hex)
                .filter(|_| meta.is_file());
            inv.entries.push(match sha {
                Some(sha) => {
                    let w = format!("cosign signature of {}", what(&sha));
                    entry(EntryKind::Signature, Some(sha), None, size, w, path)
                }
                None => entry(EntryKind::Unknown, None, None, size, UNKNOWN.into(), path),
            });
        }
        for (sub, kind) in [("stamps", EntryKind::Stamp), ("locks", EntryKind::Lock)] {
            for (name, path, meta) in entries_of(&self.root.join(sub))? {
                let size = disk_size(&path, &meta)?;
                inv.entries.push(match hex(&name).filter(|_| meta.is_file()) {
                    Some(sha) => entry(kind, Some(sha), None, size, kind.as_str().into(), path),
                    None => entry(EntryKind::Unknown, None, None, size, UNKNOWN.into(), path),
                });
            }
        }
        for (name, path, meta) in entries_of(&self.root.join("members"))? {
            let Some(archive) = hex(&name).filter(|_| meta.is_dir()) else {
                let size = disk_size(&path, &meta)?;
                inv.entries.push(entry(EntryKind::Unknown, None, None, size, UNKNOWN.into(), path));
                continue;
            };
            // Only an index a build would use names anything (see `member_index`).
            let named: Option<Vec<(Sha256, String)>> =
                self.index_bytes(&archive).map_err(CacheError::from)?.and_then(|b| index(&archive, &b));
            let names: BTreeMap<Sha256, String> = named.iter().flatten().cloned().collect();
            let of = format!("of {}", what(&archive));
            for (name, p, m) in entries_of(&path)? {
                let size = disk_size(&p, &m)?;
                let a = Some(archive.clone());
                let member = hex(&name).filter(|_| m.is_file());
                let stamped = name.strip_suffix(".stamp").and_then(hex).filter(|_| m.is_file());
                inv.entries.push(match (name.as_str(), member, stamped) {
                    ("index" | "index.stamp", _, _) if m.is_file() => {
                        entry(EntryKind::Index, None, a, size, format!("member index {of}"), p)
                    }
                    (_, Some(sha), _) => {
                        let w = match names.get(&sha) {
                            Some(n) => format!("{n} {of}"),
                            None => format!("member {of}, not in its index"),
                        };
                        entry(EntryKind::Member, Some(sha), a, size, w, p)
                    }
                    (_, _, Some(sha)) => entry(EntryKind::Stamp, Some(sha), a, size, "stamp".into(), p),
                    _ => entry(EntryKind::Unknown, None, a, size, "unfinished write".into(), p),
                });
            }
            let indexed = named.map(|v| v.into_iter().map(|(sha, _)| sha).collect());
            inv.member_dirs.push(MemberDir { archive, path, indexed });
        }
        Ok(inv)
    }

    /// The bytes of the member index of `archive` while it matches its stamp (as
    /// [`Cache::member_index`] reads it, but changing nothing); `None` otherwise.
    fn index_bytes(&self, archive: &Sha256) -> Result<Option<Vec<u8>>, PathIo> {
        let dir = self.members_dir(archive);
        let path = dir.join("index");
        let mut f = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(None)
            }
            Err(e) => return Err(PathIo::at("opening", &path)(e)),
        };
        let meta = f.metadata().map_err(PathIo::at("reading", &path))?;
        let stamp = std::fs::read_to_string(dir.join("index.stamp"));
        if !meta.file_type().is_file() || !stamp.is_ok_and(|s| stamp_matches(&s, &meta)) {
            return Ok(None);
        }
        let mut b = Vec::new();
        f.read_to_end(&mut b).map_err(PathIo::at("reading", &path))?;
        Ok(Some(b))
    }

    /// Remove everything but what `keep` names (blobs by digest; with a blob, its stamp,
    /// lock, partial download, signatures, and the members its member index names), and
    /// return what was (with `dry_run`: would be) removed. Entries at the top of the cache
    /// directory that imgbuild did not make there are left alone.
    ///
    /// Needs the cache opened [`Access::Exclusive`]. The order makes an interrupted prune
    /// harmless: a member index goes before its members (an index never names a removed
    /// member), a blob before its stamp, and every removal is one `unlink` (a blob is
    /// whole or absent).
    pub fn prune(
        &self,
        keep: &BTreeSet<Sha256>,
        index: IndexReader<'_>,
        dry_run: bool,
    ) -> Result<Vec<Entry>, CacheError> {
        if self.access != Access::Exclusive {
            return Err(PathIo::at("pruning", &self.root.join(USE_LOCK))(std::io::Error::other(
                "the cache must be opened for exclusive use to prune it",
            ))
            .into());
        }
        let inv = self.scan(index)?;
        let kept = |sha: &Option<Sha256>| sha.as_ref().is_some_and(|s| keep.contains(s));
        let mut removed: Vec<Entry> = Vec::new();
        let take = |e: &Entry, removed: &mut Vec<Entry>| -> Result<(), CacheError> {
            if !dry_run {
                remove(&e.path, std::fs::symlink_metadata(&e.path).is_ok_and(|m| m.is_dir()))?;
            }
            removed.push(e.clone());
            Ok(())
        };
        // Members first, each directory's index before anything it names.
        for d in &inv.member_dirs {
            let named = d.indexed.as_ref().filter(|_| keep.contains(&d.archive));
            let inside: Vec<&Entry> =
                inv.entries.iter().filter(|e| e.path.parent() == Some(&d.path)).collect();
            let stays = |e: &Entry| match (named, e.kind) {
                (Some(_), EntryKind::Index) => true,
                (Some(n), EntryKind::Member | EntryKind::Stamp) => {
                    e.sha256.as_ref().is_some_and(|s| n.contains(s))
                }
                _ => false,
            };
            let (index_files, rest): (Vec<&Entry>, Vec<&Entry>) =
                inside.into_iter().filter(|e| !stays(e)).partition(|e| e.kind == EntryKind::Index);
            for e in index_files.into_iter().chain(rest) {
                take(e, &mut removed)?;
            }
            if named.is_none() && !dry_run {
                match std::fs::remove_dir(&d.path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(PathIo::at("removing", &d.path)(e).into())
                    }
                    _ => {}
                }
            }
        }
        let in_dir = |e: &Entry, sub: &str| e.path.parent() == Some(&self.root.join(sub));
        let blob_stays: BTreeSet<&Sha256> = inv
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Blob && kept(&e.sha256))
            .filter_map(|e| e.sha256.as_ref())
            .collect();
        // Then the data (blobs before their stamps), then the bookkeeping.
        for sub in ["sha256", "partial", "cosign", "stamps", "locks", "members"] {
            for e in inv.entries.iter().filter(|e| in_dir(e, sub)) {
                let stays = match e.kind {
                    EntryKind::Blob | EntryKind::Partial | EntryKind::Signature | EntryKind::Lock => {
                        kept(&e.sha256)
                    }
                    EntryKind::Stamp => e.sha256.as_ref().is_some_and(|s| blob_stays.contains(s)),
                    _ => false,
                };
                if !stays {
                    take(e, &mut removed)?;
                }
            }
        }
        Ok(removed)
    }
}

/// The error of writing into a cache this user may only read.
fn read_only(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem)
}

/// Record `meta` (a file as it is now verified) at `stamp` (temp file + rename), with
/// what the file is when known (one line: control characters become spaces).
fn write_stamp(stamp: &Path, meta: &std::fs::Metadata, what: Option<&str>) -> std::io::Result<()> {
    let dir = stamp.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut text = stamp_of(meta);
    if let Some(w) = what {
        let w: String = w.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        text.push_str(&format!("what {w}\n"));
    }
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
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
        let p = c.commit(&sha, &lock, "test blob").unwrap();
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
        let blob = c.put(&sha, b"{}", "image document").unwrap();
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
        let blob = c.put(&sha, b"kubelet", "artifact kubelet").unwrap();
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
        assert_eq!(c.label(&sha), None, "a blob copied in by hand is not named");
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

    /// A member index as the layer writes it, read by a test reader: `name=hex` lines.
    fn test_index(_archive: &Sha256, b: &[u8]) -> Option<Vec<(Sha256, String)>> {
        let text = std::str::from_utf8(b).ok()?;
        text.lines()
            .map(|l| l.split_once('=').and_then(|(n, h)| Some((Sha256::parse(h).ok()?, n.to_string()))))
            .collect()
    }

    /// A cache with a kept and a dropped blob, a kept archive's members (one its index
    /// names, one it does not, a staging temp file), a dropped archive's members, a
    /// half-written member dir, partial downloads, signatures, stale stamps and locks.
    fn populated(dir: &Path) -> (Cache, Sha256, Sha256) {
        use std::io::Write;
        let c = Cache::open_as(Some(dir), Access::Exclusive, &mut |_| Ok(())).unwrap();
        let (keep, drop) = (Sha256::of(b"keep"), Sha256::of(b"drop"));
        c.put(&keep, b"keep", "artifact kept v1").unwrap();
        c.put(&drop, b"drop", "artifact dropped v1").unwrap();
        for archive in [&keep, &drop] {
            let (m1, m2) = (Sha256::of(b"m1"), Sha256::of(b"m2"));
            for (m, b) in [(&m1, b"m1"), (&m2, b"m2")] {
                let mut t = c.staging(archive).unwrap();
                t.write_all(b).unwrap();
                c.put_member(archive, m, t).unwrap();
            }
            c.put_member_index(archive, format!("bin/one={m1}\n").as_bytes()).unwrap();
            c.staging(archive).unwrap().keep().unwrap();
        }
        let half = c.members_dir(&Sha256::of(b"half"));
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join(Sha256::of(b"m3").as_str()), b"m3").unwrap();
        std::fs::create_dir_all(c.members_dir(&Sha256::of(b"empty"))).unwrap();
        for sha in [&keep, &drop] {
            std::fs::write(c.partial_path(sha), b"par").unwrap();
            drop_lock(c.lock(sha).unwrap());
            std::fs::create_dir_all(dir.join("cosign")).unwrap();
            std::fs::write(dir.join("cosign").join(format!("{sha}.sig")), b"sig").unwrap();
        }
        std::fs::write(c.stamp_path(&Sha256::of(b"gone")), b"imgbuild-stamp-v1 0 0 0 0.0 0.0\n").unwrap();
        tempfile::NamedTempFile::new_in(dir.join("partial")).unwrap().keep().unwrap();
        std::fs::write(dir.join("sha256").join("not-a-digest"), b"x").unwrap();
        std::fs::write(dir.join("README"), b"the user's own file").unwrap();
        (c, keep, drop)
    }

    fn drop_lock(_l: BlobLock) {}

    /// Everything under `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[test]
    fn scan_names_what_stamps_and_indexes_say() {
        let dir = tempfile::tempdir().unwrap();
        let (c, keep, _) = populated(dir.path());
        let inv = c.scan(&test_index).unwrap();
        let find = |kind: EntryKind, pred: &dyn Fn(&Entry) -> bool| {
            inv.entries.iter().filter(|e| e.kind == kind && pred(e)).cloned().collect::<Vec<_>>()
        };
        let blob = find(EntryKind::Blob, &|e| e.sha256.as_ref() == Some(&keep));
        assert_eq!(blob.len(), 1);
        assert_eq!((blob[0].what.as_str(), blob[0].size), ("artifact kept v1", 4));
        let named = find(EntryKind::Member, &|e| e.archive.as_ref() == Some(&keep));
        let mut whats: Vec<&str> = named.iter().map(|e| e.what.as_str()).collect();
        whats.sort();
        assert_eq!(whats, ["bin/one of artifact kept v1", "member of artifact kept v1, not in its index"]);
        let sig = find(EntryKind::Signature, &|e| e.sha256.as_ref() == Some(&keep));
        assert_eq!(sig[0].what, "cosign signature of artifact kept v1");
        // Unknown: the stray file in sha256/, the temp files; the user's README too.
        let unknown: Vec<String> = find(EntryKind::Unknown, &|_| true)
            .iter()
            .map(|e| e.path.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert!(unknown.contains(&"README".to_string()) && unknown.contains(&"sha256/not-a-digest".into()));
        assert_eq!(inv.member_dirs.len(), 4);
        let half = inv.member_dirs.iter().find(|d| d.archive == Sha256::of(b"half")).unwrap();
        assert!(half.indexed.is_none(), "a member dir without an index names nothing");
    }

    /// Prune keeps the kept blob with its stamp, lock, partial, signature and the members
    /// its index names; everything else goes (the user's own file at the top stays). A dry
    /// run reports the same and changes nothing; removals run index before members and
    /// blob before stamp, so an interrupted prune leaves nothing a build would misread.
    #[test]
    fn prune_keeps_exactly_what_is_named_and_in_a_safe_order() {
        let dir = tempfile::tempdir().unwrap();
        let (c, keep, drop) = populated(dir.path());
        let keep_set = BTreeSet::from([keep.clone()]);
        let before = tree(dir.path());
        let dry = c.prune(&keep_set, &test_index, true).unwrap();
        assert_eq!(tree(dir.path()), before, "a dry run removes nothing");
        let removed = c.prune(&keep_set, &test_index, false).unwrap();
        let paths = |v: &[Entry]| v.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&dry), paths(&removed));
        let m1 = Sha256::of(b"m1");
        let mut want = vec![
            USE_LOCK.to_string(),
            "README".to_string(),
            "cosign".to_string(),
            format!("cosign/{keep}.sig"),
            "locks".to_string(),
            format!("locks/{keep}"),
            "members".to_string(),
            format!("members/{keep}"),
            format!("members/{keep}/index"),
            format!("members/{keep}/index.stamp"),
            format!("members/{keep}/{m1}"),
            format!("members/{keep}/{m1}.stamp"),
            "partial".to_string(),
            format!("partial/{keep}"),
            "sha256".to_string(),
            format!("sha256/{keep}"),
            "stamps".to_string(),
            format!("stamps/{keep}"),
        ];
        want.sort();
        assert_eq!(tree(dir.path()), want);
        assert!(removed.iter().any(|e| e.kind == EntryKind::Blob && e.sha256.as_ref() == Some(&drop)));
        let pos = |p: PathBuf| removed.iter().position(|e| e.path == p).unwrap();
        let dm = c.members_dir(&drop);
        assert!(pos(dm.join("index")) < pos(dm.join(m1.as_str())), "the index goes first");
        assert!(pos(c.blob_path(&drop)) < pos(c.stamp_path(&drop)), "the blob before its stamp");
        assert!(
            c.prune(&keep_set, &test_index, false).unwrap().is_empty(),
            "a second prune has nothing to do"
        );
    }

    /// Prune needs the cache to itself; a shared user waits for it and it for them.
    #[test]
    fn prune_needs_exclusive_use() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Cache::open(Some(dir.path())).unwrap();
        let e = shared.prune(&BTreeSet::new(), &test_index, false).unwrap_err();
        assert!(e.to_string().contains(USE_LOCK), "{e}");
        let mut told = Vec::new();
        let refused = Cache::open_as(Some(dir.path()), Access::Exclusive, &mut |p| {
            told.push(p.to_path_buf());
            Err(std::io::Error::other("busy"))
        });
        assert!(refused.is_err());
        assert_eq!(told, [dir.path().join(USE_LOCK)]);
        drop(shared);
        let ex = Cache::open_as(Some(dir.path()), Access::Exclusive, &mut |_| panic!("free")).unwrap();
        assert!(Cache::open_as(Some(dir.path()), Access::Shared, &mut |_| Err(std::io::Error::other(
            "busy"
        )))
        .is_err());
        drop(ex);
    }
}
