//! Container images inside node images, so that an air-gapped node has everything
//! kubeadm, kubelet and the add-ons start.
//!
//! - [`spec`]: OCI / Docker v2 manifests, indexes, media types, platform selection.
//! - [`registry`]: the distribution API for manifests and small blobs (`imgbuild lock`),
//!   with the anonymous token flow of `bearer`, on the network layer `net`.
//! - [`lock`]: tags and pinned indexes resolved to per-arch manifest digests in `<recipe>.lock`.
//! - [`layout`]: the OCI image layout's index and name list written into the image
//!   (the blobs themselves go in through `layer`) and what the boot-time
//!   import checks containerd against.

pub mod layout;
pub mod lock;
pub mod registry;
pub mod spec;

use std::fmt::Write as _;

pub use crate::types::{Digest, ImageRef};

use crate::exit::{Classify, Code};
use crate::net::SafeUrl;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Recipe or command-line input.
    #[error("{0}")]
    Input(String),
    #[error("{image}: {what} does not exist ({url})")]
    NotFound { image: String, what: String, url: SafeUrl },
    #[error("{image}: {msg}")]
    Unsupported { image: String, msg: String },
    #[error("{image}: {source}")]
    NoPlatform { image: String, source: spec::SpecError },
    #[error("{image}: digest mismatch for {what}: expected {expected}, got {actual}")]
    Integrity { image: String, what: String, expected: String, actual: String },
    #[error("--offline: {} image(s) have no entry in the lock for {arch} and must be resolved online; \
             run `imgbuild lock`:{}", .images.len(), list(.images))]
    Offline { arch: String, images: Vec<String> },
    #[error("{url}: {msg}")]
    Http { url: SafeUrl, msg: String },
    #[error("{url}: {source}")]
    Auth { url: SafeUrl, source: crate::bearer::AuthError },
    /// A cached document that can no longer be trusted, or an unreadable cache.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

fn list(v: &[String]) -> String {
    v.iter().fold(String::new(), |mut s, m| {
        let _ = write!(s, "\n  {m}");
        s
    })
}

impl Classify for OciError {
    fn code(&self) -> Code {
        match self {
            OciError::Input(_)
            | OciError::NotFound { .. }
            | OciError::Unsupported { .. }
            | OciError::NoPlatform { .. }
            | OciError::Offline { .. } => Code::Input,
            OciError::Integrity { .. } => Code::Integrity,
            OciError::Http { .. } | OciError::Auth { .. } => Code::Runtime,
            OciError::Cache(e) => e.code(),
        }
    }
}
