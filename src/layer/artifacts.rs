//! The recipe's install steps: a downloaded file installed as is, or members of a
//! (gzipped) tarball extracted into the build's workdir and installed from there.
//!
//! Archive member names are only ever *compared*, never used as host paths: each
//! extracted file gets a fresh name inside `workdir`, so `..`, absolute names and
//! symlink tricks in an archive cannot write outside it. Archives that contain such
//! names are refused anyway: no upstream release tarball has them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use super::{Content, Layer, LayerError};
use crate::fetch::Fetched;
use crate::plan::{BuildPlan, InstallStep, Item};
use crate::types::Sha256;

/// Install every artifact of `plan` from its verified blob in `fetched`. `workdir` is a
/// build-private temp dir for extracted archive members; it must outlive the layer
/// (entries point into it).
pub fn install(
    layer: &mut Layer,
    plan: &BuildPlan,
    fetched: &Fetched,
    workdir: &Path,
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
    for ((item, _), files) in blobs.iter().zip(extract_all(&blobs, workdir)) {
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
fn extract_all(blobs: &[(&Item, &Path)], workdir: &Path) -> Vec<Result<Vec<Installed>, LayerError>> {
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
                        done.push((i, files_of(item, blob, workdir)));
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
/// extracted from it (hashed as they are extracted).
fn files_of(item: &Item, blob: &Path, workdir: &Path) -> Result<Vec<Installed>, LayerError> {
    let mut out = Vec::new();
    let archived: Vec<&InstallStep> = item.install.iter().filter(|s| s.from.is_some()).collect();
    for step in item.install.iter().filter(|s| s.from.is_none()) {
        out.push((step.to.clone(), blob.to_path_buf(), step.mode, item.sha256.clone()));
    }
    if !archived.is_empty() {
        out.extend(extract(item, &archived, blob, workdir)?);
    }
    Ok(out)
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

/// Extract the members the `steps` name in one pass over the archive.
fn extract(
    item: &Item,
    steps: &[&InstallStep],
    blob: &Path,
    workdir: &Path,
) -> Result<Vec<Installed>, LayerError> {
    let bad = |msg: String| LayerError::Archive { artifact: item.name.clone(), msg };
    let io = |e: std::io::Error| LayerError::Io { path: blob.to_path_buf(), source: e };
    let gz = is_gzip(blob).map_err(io)?;
    let file = BufReader::with_capacity(256 * 1024, File::open(blob).map_err(io)?);
    let reader: Box<dyn Read> =
        if gz { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
    let mut archive = tar::Archive::new(reader);

    let dir = workdir.join(format!("artifact-{}", item.name));
    // Start empty: a reused workdir must not mix in files of an earlier run.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| LayerError::Io { path: dir.clone(), source: e })?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| LayerError::Io { path: dir.clone(), source: e })?;

    let mut out = Vec::new();
    let mut hits = vec![0usize; steps.len()];
    let mut seen = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar{} archive: {e}", if gz { ".gz" } else { "" })))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt archive: {e}")))?;
        let raw = entry.path().map_err(|e| bad(format!("bad member name: {e}")))?.into_owned();
        let name = member_name(&raw).map_err(&bad)?;
        let kind = entry.header().entry_type();
        if seen.len() < 20 {
            seen.push(name.clone());
        }
        let wanted: Vec<usize> = (0..steps.len())
            .filter(|&i| !name.is_empty() && matches(steps[i].from.as_deref().unwrap_or_default(), &name))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let explicit = wanted.iter().any(|&i| !steps[i].from.as_deref().unwrap_or_default().ends_with('*'));
        if !kind.is_file() {
            // A glob installs files only; an explicitly named member must be one.
            if explicit {
                return Err(bad(format!("member {name:?} is not a regular file ({kind:?})")));
            }
            continue;
        }
        let base = name.rsplit('/').next().unwrap_or(&name).to_string();
        // A fresh name made of a number only: nothing in the archive picks host paths,
        // and no member name is too long for the host.
        let host = dir.join(format!("{:04}", out.len()));
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&host).map_err(|e| {
            LayerError::Extract { artifact: item.name.clone(), member: name.clone(), source: e }
        })?;
        let sha = copy_member(&mut entry, &mut f, &item.name, &name)?;
        for i in wanted {
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
            out.push((to, host.clone(), step.mode, sha.clone()));
        }
    }
    for (i, step) in steps.iter().enumerate() {
        if hits[i] == 0 {
            let from = step.from.clone().unwrap_or_default();
            return Err(LayerError::MissingMember {
                artifact: item.name.clone(),
                member: from,
                blob: blob.to_path_buf(),
                some_members: seen.join(", "),
            });
        }
    }
    Ok(out)
}

/// The longest file name ext4 stores (bytes).
const NAME_MAX: usize = 255;

/// Copy an archive member to its host file; returns the sha256 of its bytes (hashed
/// here, so nothing reads the file again to know it). A read failure is the archive's
/// fault (corrupt: bad input); a write failure is the build host's (its disk is full: a
/// runtime failure). Both name the member, not the host path.
fn copy_member(
    src: &mut impl Read,
    dst: &mut impl Write,
    artifact: &str,
    member: &str,
) -> Result<Sha256, LayerError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(Sha256::of_hasher(h)),
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
