//! The layer: every file, directory and symlink a build adds to the root filesystem,
//! with owner, mode and content fixed up front. It is pure data: the build's steps
//! (`build::steps`) fill it — [`artifacts`], [`tree`], [`hardening`] are the ones this
//! module owns — [`seal`] adds the release file and the manifest and returns the
//! manifest, and [`crate::disk`] writes it into the image.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::exit::{Classify, Code};

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
    #[error("{0:?} is not a network in CIDR form (address/prefix-length)")]
    BadNetwork(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl Classify for LayerError {
    fn code(&self) -> Code {
        match self {
            // The recipe names a member or layout the verified archive does not have.
            LayerError::Archive { .. }
            | LayerError::MissingMember { .. }
            | LayerError::Conflict { .. }
            | LayerError::BadNetwork(_) => Code::Input,
            LayerError::MissingDownload(_) | LayerError::Io { .. } => Code::Runtime,
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
}

impl Layer {
    pub fn new(mtime: u64) -> Self {
        Self { mtime, entries: BTreeMap::new() }
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

    /// Add an entry with explicit ownership.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = normalize(path);
        let mut parent = path.as_str();
        while let Some(i) = parent.rfind('/') {
            parent = &parent[..i];
            if parent.is_empty() {
                break;
            }
            self.entries.entry(parent.to_string()).or_insert(Entry {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
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
