//! The recipe's install steps: a downloaded file installed as is, or members of a
//! (gzipped) tarball.
//!
//! Members are inflated once per archive and kept where the build names them: with a
//! cache ([`Members::Cache`]), content-addressed next to the verified archive with a
//! member index, so a warm build installs them without inflating anything; without one
//! ([`Members::Dir`]), as numbered files in the build's workdir. Either way each member
//! is hashed as it is inflated, and that digest is what the manifest records and what
//! the disk checks the bytes against as it lays them into the image.
//!
//! Archive member names are only ever *compared*, never used as host paths: each
//! inflated file gets a name of its own (a number, or its digest), so `..`, absolute
//! names and symlink tricks in an archive cannot write outside it. Archives that contain
//! such names are refused anyway: no upstream release tarball has them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Content, Layer, LayerError};
use crate::cache::Cache;
use crate::fetch::Fetched;
use crate::plan::{BuildPlan, InstallStep, Item};
use crate::types::Sha256;

/// Where inflated archive members are kept.
#[derive(Debug, Clone, Copy)]
pub enum Members<'a> {
    /// In the cache, by archive and member digest, with a member index per archive
    /// (`members/` in docs/recipe-format.md#cache): inflated by the first build only.
    Cache(&'a Cache),
    /// In this build-private directory (it must outlive the layer: entries point into it).
    Dir(&'a Path),
}

/// Install every artifact of `plan` from its verified blob in `fetched`; archive members
/// come from (or are inflated into) `members`.
pub fn install(
    layer: &mut Layer,
    plan: &BuildPlan,
    fetched: &Fetched,
    members: Members<'_>,
) -> Result<(), LayerError> {
    let blobs = plan
        .artifacts
        .iter()
        .map(|item| {
            Ok((item, fetched.get(item).ok_or_else(|| LayerError::MissingDownload(item.name.clone()))?))
        })
        .collect::<Result<Vec<(&Item, &Path)>, LayerError>>()?;
    // Which artifact installed a path first: two artifacts claiming one path is a recipe bug.
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for ((item, _), files) in blobs.iter().zip(extract_all(&blobs, members)) {
        for (to, path, mode, sha) in files? {
            // (Within one artifact a later archive member of the same name wins, as in tar.)
            if let Some(prev) = owners.insert(to.clone(), item.name.clone()).filter(|p| *p != item.name) {
                return Err(LayerError::Conflict { path: to, first: prev, second: item.name.clone() });
            }
            layer.artifact_file(&to, Content::Path(path), mode, &item.name);
            layer.know_digest(&to, sha);
        }
    }
    Ok(())
}

/// [`files_of`] for every (item, blob), on all cores: each gzip stream decompresses on
/// one core, and a control plane has five archives. The results come back in the
/// order of `blobs`, so the layer (and the first error reported) does not depend on
/// which thread finished first.
fn extract_all(blobs: &[(&Item, &Path)], members: Members<'_>) -> Vec<Result<Vec<Installed>, LayerError>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(blobs.len()).max(1);
    let next = AtomicUsize::new(0);
    let done: Vec<(usize, Result<Vec<Installed>, LayerError>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(item, blob)) = blobs.get(i) else { break };
                        done.push((i, files_of(item, blob, members)));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    let mut out: Vec<Option<Result<Vec<Installed>, LayerError>>> = blobs.iter().map(|_| None).collect();
    for (i, r) in done {
        out[i] = Some(r);
    }
    out.into_iter()
        .zip(blobs)
        .map(|(r, (item, _))| {
            r.unwrap_or_else(|| {
                Err(LayerError::Archive {
                    artifact: item.name.clone(),
                    msg: "the extracting thread panicked".into(),
                })
            })
        })
        .collect()
}

/// A file an artifact installs: (path in image, file on host, mode, its sha256).
type Installed = (String, PathBuf, u32, Sha256);

/// The files `item` installs: the verified blob itself (its pinned digest), or members
/// of it (hashed as they were inflated).
fn files_of(item: &Item, blob: &Path, members: Members<'_>) -> Result<Vec<Installed>, LayerError> {
    let mut out = Vec::new();
    let archived: Vec<&InstallStep> = item.install.iter().filter(|s| s.from.is_some()).collect();
    for step in item.install.iter().filter(|s| s.from.is_none()) {
        out.push((step.to.clone(), blob.to_path_buf(), step.mode, item.sha256.clone()));
    }
    if !archived.is_empty() {
        out.extend(archive_files(item, &archived, blob, members)?);
    }
    Ok(out)
}

/// Version of the member index format; an index of another version is derived again.
const INDEX_VERSION: u32 = 1;

/// What imgbuild learnt about a verified archive by inflating it: every entry in archive
/// order, with the digest of each member it kept. Derived from the archive (whose digest
/// is pinned) and stored beside the kept members under the archive's digest.
#[derive(Debug, Serialize, Deserialize)]
struct MemberIndex {
    imgbuild_member_index: u32,
    archive: Sha256,
    entries: Vec<ArchiveEntry>,
}

/// One entry of an archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ArchiveEntry {
    /// The member name, `./` prefixes stripped (`""` for the archive's `./`).
    name: String,
    /// `file` for a regular file, else the tar entry type (`Directory`, `Symlink`, …).
    kind: String,
    size: u64,
    /// The sha256 of a member that was kept (a regular file an install step took).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<Sha256>,
}

const FILE: &str = "file";

/// The files the archived `steps` of `item` install: from the cache's members when its
/// index and every member the steps take are there, else by inflating `blob`.
fn archive_files(
    item: &Item,
    steps: &[&InstallStep],
    blob: &Path,
    members: Members<'_>,
) -> Result<Vec<Installed>, LayerError> {
    if let Members::Cache(cache) = members {
        if let Some(index) = cached_index(cache, &item.sha256) {
            let picks = pick(item, steps, &index.entries, blob)?;
            if let Some(out) = from_cache(cache, item, &index.entries, &picks)? {
                return Ok(out);
            }
        }
    }
    let (entries, kept) = inflate(item, steps, blob, members)?;
    pick(item, steps, &entries, blob)?
        .into_iter()
        .map(|(i, to, mode)| match (&entries[i].sha256, kept.get(&i)) {
            (Some(sha), Some(path)) => Ok((to, path.clone(), mode, sha.clone())),
            _ => Err(LayerError::Archive {
                artifact: item.name.clone(),
                msg: format!("member {:?} was not kept while inflating", entries[i].name),
            }),
        })
        .collect()
}

/// The member index `bytes` of `archive` when it is one of this version for this
/// archive; else `None`.
fn parse_index(archive: &Sha256, bytes: &[u8]) -> Option<MemberIndex> {
    serde_json::from_slice::<MemberIndex>(bytes)
        .ok()
        .filter(|ix| ix.imgbuild_member_index == INDEX_VERSION && ix.archive == *archive)
}

/// The members the member index `bytes` of `archive` names, each with its entry name;
/// `None` when a build would not use the index (`cache::IndexReader`, for `cache list`
/// and `cache prune`).
pub fn index_members(archive: &Sha256, bytes: &[u8]) -> Option<Vec<(Sha256, String)>> {
    let ix = parse_index(archive, bytes)?;
    Some(ix.entries.into_iter().filter_map(|e| Some((e.sha256?, e.name))).collect())
}

/// The member index of `archive` in the cache, when imgbuild wrote it (its stamp
/// matches) and it is one of this version for this archive; else `None`, and the
/// archive is inflated again.
fn cached_index(cache: &Cache, archive: &Sha256) -> Option<MemberIndex> {
    // An index that cannot be read is derived again: nothing of it was used.
    let bytes = cache.member_index(archive).ok()??;
    let ix = parse_index(archive, &bytes);
    if ix.is_none() {
        cache.drop_index(archive);
    }
    ix
}

/// The `picks` of `entries` as installed files from the cache's members of `item`'s
/// archive; `None` when one was not kept (a step the index was not made for) or is
/// gone. A member that no longer holds its digest is an integrity failure.
fn from_cache(
    cache: &Cache,
    item: &Item,
    entries: &[ArchiveEntry],
    picks: &[(usize, String, u32)],
) -> Result<Option<Vec<Installed>>, LayerError> {
    let mut out = Vec::with_capacity(picks.len());
    for (i, to, mode) in picks {
        let Some(sha) = &entries[*i].sha256 else { return Ok(None) };
        let Some(path) = cache.member(&item.sha256, sha)? else { return Ok(None) };
        out.push((to.clone(), path, *mode, sha.clone()));
    }
    Ok(Some(out))
}

/// Is `name` a member some archived step takes?
fn wanted(steps: &[&InstallStep], name: &str) -> bool {
    !name.is_empty() && steps.iter().any(|s| matches(s.from.as_deref().unwrap_or_default(), name))
}

/// Which entries the `steps` install, where and with which mode, as (entry index, path
/// in image, mode) in archive order; the recipe's mistakes (a member that is missing,
/// or named explicitly but not a regular file, or a name too long for ext4) are errors.
fn pick(
    item: &Item,
    steps: &[&InstallStep],
    entries: &[ArchiveEntry],
    blob: &Path,
) -> Result<Vec<(usize, String, u32)>, LayerError> {
    let bad = |msg: String| LayerError::Archive { artifact: item.name.clone(), msg };
    let mut out = Vec::new();
    let mut hits = vec![0usize; steps.len()];
    for (e, entry) in entries.iter().enumerate() {
        let name = &entry.name;
        let hit: Vec<usize> = (0..steps.len())
            .filter(|&i| !name.is_empty() && matches(steps[i].from.as_deref().unwrap_or_default(), name))
            .collect();
        if hit.is_empty() {
            continue;
        }
        if entry.kind != FILE {
            // A glob installs files only; an explicitly named member must be one.
            if hit.iter().any(|&i| !steps[i].from.as_deref().unwrap_or_default().ends_with('*')) {
                return Err(bad(format!("member {name:?} is not a regular file ({})", entry.kind)));
            }
            continue;
        }
        let base = name.rsplit('/').next().unwrap_or(name);
        for i in hit {
            let step = steps[i];
            let to = if step.from.as_deref().unwrap_or_default().ends_with('*') {
                // The member's name becomes a file name in the image.
                if base.len() > NAME_MAX {
                    return Err(bad(format!(
                        "member {name:?} would be installed under a name of {} bytes; ext4 names \
                         are at most {NAME_MAX}",
                        base.len()
                    )));
                }
                format!("{}/{base}", step.to.trim_end_matches('/'))
            } else {
                step.to.clone()
            };
            hits[i] += 1;
            out.push((e, to, step.mode));
        }
    }
    if let Some(i) = hits.iter().position(|&h| h == 0) {
        return Err(LayerError::MissingMember {
            artifact: item.name.clone(),
            member: steps[i].from.clone().unwrap_or_default(),
            blob: blob.to_path_buf(),
            some_members: entries.iter().take(20).map(|e| e.name.as_str()).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(out)
}

/// Where a kept member is being inflated to.
enum Sink<'a> {
    /// A temp file the cache publishes once the archive was read whole.
    Staged(&'a Cache, tempfile::NamedTempFile),
    /// A numbered file in the build's dir.
    Dir(PathBuf, File),
}

/// One pass over the archive `blob`: every entry recorded (its name checked), and each
/// regular file a step takes hashed as it is inflated and kept: in the cache (staged,
/// then published once the whole archive was read, the index last) or as a numbered
/// file in the dir. Returns the entries and where each kept one is, by entry index.
fn inflate(
    item: &Item,
    steps: &[&InstallStep],
    blob: &Path,
    members: Members<'_>,
) -> Result<(Vec<ArchiveEntry>, BTreeMap<usize, PathBuf>), LayerError> {
    let bad = |msg: String| LayerError::Archive { artifact: item.name.clone(), msg };
    let io = |e: std::io::Error| LayerError::Io { path: blob.to_path_buf(), source: e };
    let gz = is_gzip(blob).map_err(io)?;
    let file = BufReader::with_capacity(256 * 1024, File::open(blob).map_err(io)?);
    let reader: Box<dyn Read> =
        if gz { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
    let mut archive = tar::Archive::new(reader);

    if let Members::Dir(workdir) = members {
        let dir = workdir.join(format!("artifact-{}", item.name));
        // Start empty: a reused workdir must not mix in files of an earlier run.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| LayerError::Io { path: dir.clone(), source: e })?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| LayerError::Io { path: dir.clone(), source: e })?;
    }

    let mut entries = Vec::new();
    let mut staged: Vec<(usize, Sha256, Sink)> = Vec::new();
    let archive_entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar{} archive: {e}", if gz { ".gz" } else { "" })))?;
    for entry in archive_entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt archive: {e}")))?;
        let raw = entry.path().map_err(|e| bad(format!("bad member name: {e}")))?.into_owned();
        let name = member_name(&raw).map_err(&bad)?;
        let kind = entry.header().entry_type();
        let mut rec = ArchiveEntry {
            name: name.clone(),
            kind: if kind.is_file() { FILE.to_string() } else { format!("{kind:?}") },
            size: entry.header().size().unwrap_or(0),
            sha256: None,
        };
        if kind.is_file() && wanted(steps, &name) {
            let extract =
                |source| LayerError::Extract { artifact: item.name.clone(), member: name.clone(), source };
            let mut sink = match members {
                Members::Cache(cache) => Sink::Staged(cache, cache.staging(&item.sha256).map_err(extract)?),
                Members::Dir(workdir) => {
                    // A fresh name made of a number only: nothing in the archive picks host
                    // paths, and no member name is too long for the host.
                    let host =
                        workdir.join(format!("artifact-{}", item.name)).join(format!("{:04}", staged.len()));
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&host)
                        .map_err(extract)?;
                    Sink::Dir(host, f)
                }
            };
            let (sha, size) = match &mut sink {
                Sink::Staged(_, t) => copy_member(&mut entry, t.as_file_mut(), &item.name, &name)?,
                Sink::Dir(_, f) => copy_member(&mut entry, f, &item.name, &name)?,
            };
            rec.size = size;
            rec.sha256 = Some(sha.clone());
            staged.push((entries.len(), sha, sink));
        }
        entries.push(rec);
    }
    let in_cache =
        |cache: &Cache, e: std::io::Error| LayerError::Io { path: cache.root().join("members"), source: e };
    let mut kept = BTreeMap::new();
    for (i, sha, sink) in staged {
        let path = match sink {
            Sink::Dir(path, _) => path,
            Sink::Staged(cache, t) => {
                cache.put_member(&item.sha256, &sha, t).map_err(|e| in_cache(cache, e))?
            }
        };
        kept.insert(i, path);
    }
    if let Members::Cache(cache) = members {
        let index = MemberIndex {
            imgbuild_member_index: INDEX_VERSION,
            archive: item.sha256.clone(),
            entries: entries.clone(),
        };
        let bytes = serde_json::to_vec(&index).map_err(|e| in_cache(cache, e.into()))?;
        cache.put_member_index(&item.sha256, &bytes).map_err(|e| in_cache(cache, e))?;
    }
    Ok((entries, kept))
}

/// Strip `./` prefixes so `./bridge` (CNI plugins) and `bridge` compare equal.
fn member_name(p: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or("member name is not UTF-8")?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("member {:?} contains `..`", p.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("member {:?} is an absolute path", p.display()))
            }
        }
    }
    Ok(parts.join("/"))
}

/// Does member `name` match `pattern`: an exact member name, or `dir/*` / `*`
/// (every file directly in that directory, not below it).
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            let prefix = prefix.trim_start_matches("./");
            name.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
        }
        None => name == pattern.trim_start_matches("./"),
    }
}

fn is_gzip(blob: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = File::open(blob)?;
    let n = f.read(&mut magic)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// The longest file name ext4 stores (bytes).
const NAME_MAX: usize = 255;

/// Copy an archive member to its host file; returns the sha256 of its bytes (hashed
/// here, so nothing reads the file again to know it) and their count. A read failure is the archive's
/// fault (corrupt: bad input); a write failure is the build host's (its disk is full: a
/// runtime failure). Both name the member, not the host path.
fn copy_member(
    src: &mut impl Read,
    dst: &mut impl Write,
    artifact: &str,
    member: &str,
) -> Result<(Sha256, u64), LayerError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok((Sha256::of_hasher(h), len)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(LayerError::Archive {
                    artifact: artifact.to_string(),
                    msg: format!("corrupt archive: reading member {member:?}: {e}"),
                })
            }
        };
        h.update(&buf[..n]);
        len += n as u64;
        dst.write_all(&buf[..n]).map_err(|source| LayerError::Extract {
            artifact: artifact.to_string(),
            member: member.to_string(),
            source,
        })?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_one_level_only() {
        assert!(matches("bin/*", "bin/containerd"));
        assert!(!matches("bin/*", "bin/sub/x"));
        assert!(!matches("bin/*", "bin/"));
        assert!(matches("*", "bridge"));
        assert!(!matches("*", "dir/bridge"));
        assert!(matches("crictl", "crictl"));
        assert!(matches("./crictl", "crictl"));
        assert!(!matches("crictl", "crictl2"));
    }

    /// A full disk while extracting is the host's failure (exit 1), a broken member
    /// the archive's (exit 2); both name the member.
    #[test]
    fn extraction_failures_are_classed_by_side() {
        use crate::exit::{Classify, Code};
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt deflate stream"))
            }
        }
        let e = copy_member(&mut &b"data"[..], &mut Full, "containerd", "bin/ctr").unwrap_err();
        assert_eq!(e.code(), Code::Runtime);
        let msg = e.to_string();
        assert!(msg.contains("\"bin/ctr\"") && msg.contains("No space left"), "{msg}");
        let e = copy_member(&mut Broken, &mut Vec::new(), "containerd", "bin/ctr").unwrap_err();
        assert_eq!(e.code(), Code::Input);
        assert!(e.to_string().contains("bin/ctr"), "{e}");
    }

    #[test]
    fn member_names_are_normalised_and_checked() {
        assert_eq!(member_name(Path::new("./bridge")).unwrap(), "bridge");
        assert_eq!(member_name(Path::new("./")).unwrap(), "");
        assert!(member_name(Path::new("../etc/passwd")).unwrap_err().contains(".."));
        assert!(member_name(Path::new("a/../../x")).is_err());
        assert!(member_name(Path::new("/etc/passwd")).unwrap_err().contains("absolute"));
    }
}
