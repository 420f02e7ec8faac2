//! The layer: every file, directory and symlink a build adds to the root filesystem,
//! with owner, mode and content fixed up front. It is pure data: the build's steps
//! (`build::steps`) fill it — [`artifacts`], [`tree`], [`hardening`] are the ones this
//! module owns — [`seal`] adds the release file and the manifest and returns the
//! manifest, and `disk` writes it into the image.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::exit::{Classify, Code};
use crate::types::Sha256;

pub mod artifacts;
pub mod firewall;
pub mod hardening;
pub mod images;
pub mod seal;
pub mod tree;

pub use seal::{inputs_digest, seal, Sealed, RELEASE_PATH};

/// Why a layer could not be composed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("artifact {0:?} was not downloaded (no verified blob for it)")]
    MissingDownload(String),
    #[error("artifact {artifact}: {msg}")]
    Archive { artifact: String, msg: String },
    #[error(
        "artifact {artifact}: archive {} has no member matching {member:?} (its first members: {some_members})",
        blob.display()
    )]
    MissingMember { artifact: String, member: String, blob: PathBuf, some_members: String },
    #[error("{path} is installed by both artifact {first:?} and artifact {second:?}")]
    Conflict { path: String, first: String, second: String },
    /// Entries that would silently replace or orphan one another (one per line).
    #[error("the layer's entries clash (nothing is written):\n  {}", .0.join("\n  "))]
    Clash(Vec<String>),
    #[error("artifact {artifact}: extracting member {member:?}: {source}")]
    Extract { artifact: String, member: String, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// An archive member kept in the cache no longer holds what its digest says.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl Classify for LayerError {
    fn code(&self) -> Code {
        match self {
            // The recipe names a member or layout the verified archive does not have.
            LayerError::Archive { .. }
            | LayerError::MissingMember { .. }
            | LayerError::Conflict { .. }
            | LayerError::Clash(_) => Code::Input,
            // Writing the member on the build host failed (e.g. the disk is full).
            LayerError::Extract { .. } | LayerError::MissingDownload(_) | LayerError::Io { .. } => {
                Code::Runtime
            }
            LayerError::Cache(e) => e.code(),
        }
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// Generated or embedded content.
    Bytes(Vec<u8>),
    /// A file on the build host (a verified download in the cache, or a file
    /// extracted from one into the build's temp dir).
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Content),
    Symlink(String),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits only (e.g. 0o755); the file type comes from `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Entries keyed by absolute path; a BTreeMap so iteration order (and with it the
/// debugfs command stream and the manifest) is deterministic.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    /// mtime given to everything written (the recipe's source_date_epoch).
    pub mtime: u64,
    entries: BTreeMap<String, Entry>,
    /// Which recipe artifact installed a path: a later entry from anywhere else on
    /// that path would drop the artifact while the SBOM still lists it.
    artifact_paths: BTreeMap<String, String>,
    /// Clashes seen while composing; [`seal`] refuses the layer when there are any.
    clashes: Vec<String>,
    /// The sha256 of host files whose bytes were verified or hashed already (a
    /// downloaded blob, an archive member hashed as it was extracted): the seal records
    /// it without reading the file again, and the disk checks the bytes against it as
    /// it lays them into the image.
    known: BTreeMap<String, Sha256>,
}

impl Layer {
    pub fn new(mtime: u64) -> Self {
        Self { mtime, ..Self::default() }
    }

    /// Add a file a recipe artifact installs (`artifact` names it). Anything else
    /// added at the same path, before or after, is a clash.
    pub fn artifact_file(&mut self, path: &str, content: Content, mode: u32, artifact: &str) {
        let key = normalize(path);
        // Two artifacts on one path are the caller's to report (it names both).
        if self.artifact_paths.remove(&key).is_none() && self.entries.contains_key(&key) {
            self.clashes
                .push(format!("{key}: artifact {artifact:?} installs it, but imgbuild writes it too"));
        }
        self.insert(path, Entry { kind: Kind::File(content), mode, uid: 0, gid: 0 });
        self.artifact_paths.insert(key, artifact.to_string());
    }

    /// Record the sha256 of the host file at `path` (see `known`); replacing the entry
    /// forgets it.
    pub fn know_digest(&mut self, path: &str, sha256: Sha256) {
        self.known.insert(normalize(path), sha256);
    }

    /// The recorded sha256 of the host file at `path`, if any.
    pub fn known_digest(&self, path: &str) -> Option<&Sha256> {
        self.known.get(&normalize(path))
    }

    /// What composing found clashing (see [`seal`]).
    pub fn clashes(&self) -> &[String] {
        &self.clashes
    }

    /// Add (or replace) a root-owned file; missing parents become 0755 root dirs.
    pub fn file(&mut self, path: &str, content: Content, mode: u32) {
        self.insert(path, Entry { kind: Kind::File(content), mode, uid: 0, gid: 0 });
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, Entry { kind: Kind::Dir, mode, uid: 0, gid: 0 });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Entry { kind: Kind::Symlink(target.to_string()), mode: 0o777, uid: 0, gid: 0 });
    }

    /// Add an entry with explicit ownership. Replacing an entry of the same kind is
    /// how later composition steps override earlier ones; replacing an artifact's
    /// file, or a directory by a file (or the other way round), is recorded as a clash.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = normalize(path);
        let mut parent = path.as_str();
        while let Some(i) = parent.rfind('/') {
            parent = &parent[..i];
            if parent.is_empty() {
                break;
            }
            let p = self.entries.entry(parent.to_string()).or_insert(Entry {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            if !matches!(p.kind, Kind::Dir) {
                self.clashes.push(format!("{path}: its parent {parent} is not a directory in the layer"));
            }
        }
        self.known.remove(&path);
        if let Some(old) = self.entries.get(&path) {
            let was_dir = matches!(old.kind, Kind::Dir);
            if was_dir != matches!(entry.kind, Kind::Dir) {
                self.clashes.push(format!("{path}: added as a directory and as a non-directory"));
            }
            if let Some(a) = self.artifact_paths.remove(&path) {
                self.clashes.push(format!(
                    "{path}: artifact {a:?} installs it, but imgbuild writes it too (the artifact would \
                     be dropped while the SBOM lists it)"
                ));
            }
        }
        self.entries.insert(path, entry);
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&normalize(path))
    }

    /// Entries in path order (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn normalize(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_in_order() {
        let mut l = Layer::new(0);
        l.file("/etc/a/b/c.conf", Content::Bytes(b"x".to_vec()), 0o644);
        let paths: Vec<_> = l.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/etc", "/etc/a", "/etc/a/b", "/etc/a/b/c.conf"]);
    }
}
