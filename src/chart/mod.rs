//! Helm charts: deterministic packaging (`imgbuild chart package`), the embedded
//! backend chart, and the add-on files a control-plane image carries for
//! `imgbuild-addons.service` (see [`addons`]).

pub mod addons;
pub mod ignore;
pub mod package;
pub mod repo;
pub mod values;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use include_dir::{include_dir, Dir};

use crate::exit::{Classify, Code};

pub use package::{package_dir, Packaged};

/// The sample backend chart, packaged into every control-plane image.
static BACKEND: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/charts/backend");
/// The default StorageClass (local-path-provisioner), packaged into every control-plane image.
static LOCAL_PATH: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/charts/local-path");
/// The gitops profile's Argo CD Application for the backend, packaged when the image
/// carries that profile.
static GITOPS_BACKEND: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/charts/gitops-backend");

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("{origin}: {msg}")]
    Invalid { origin: String, msg: String },
    #[error("{path}")]
    Io { path: String, source: std::io::Error },
    #[error("{url}: {msg}")]
    Fetch { url: String, msg: String },
    /// Resolving a chart published in an OCI registry (`oci://`).
    #[error("chart {chart}: {source}")]
    Oci { chart: String, source: Box<crate::oci::OciError> },
}

impl Classify for ChartError {
    fn code(&self) -> Code {
        match self {
            ChartError::Invalid { .. } => Code::Input,
            ChartError::Io { .. } | ChartError::Fetch { .. } => Code::Runtime,
            ChartError::Oci { source, .. } => source.code(),
        }
    }
}

/// Write `p` into `dir` as `<name>-<version>.tgz`, atomically (temp file + rename).
pub fn write_package(p: &Packaged, dir: &std::path::Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(p.file_name());
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing {}", dir.display()))?;
    tmp.write_all(&p.bytes).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(&path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The embedded backend chart, packaged with entry mtime `mtime`.
pub fn package_backend(mtime: u64) -> Result<Packaged, ChartError> {
    package::package_embedded(&BACKEND, "embedded:charts/backend", mtime)
}

/// The embedded storage chart (the cluster's default StorageClass), packaged with entry
/// mtime `mtime`.
pub fn package_local_path(mtime: u64) -> Result<Packaged, ChartError> {
    package::package_embedded(&LOCAL_PATH, "embedded:charts/local-path", mtime)
}

/// The embedded Argo CD Application chart of the gitops profile.
pub fn package_gitops_backend(mtime: u64) -> Result<Packaged, ChartError> {
    package::package_embedded(&GITOPS_BACKEND, "embedded:charts/gitops-backend", mtime)
}
