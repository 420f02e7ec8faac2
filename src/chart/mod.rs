//! Helm charts: deterministic packaging (`imgbuild chart package`), the embedded
//! backend chart, and the add-on files a control-plane image carries for
//! `imgbuild-addons.service` (see [`addons`]).

pub mod addons;
pub mod ignore;
pub mod package;
pub mod values;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use include_dir::{include_dir, Dir};

use crate::exit::{Classify, Code};

pub use package::{package_dir, Packaged};

/// The sample backend chart, packaged into every control-plane image.
static BACKEND: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/charts/backend");

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("{origin}: {msg}")]
    Invalid { origin: String, msg: String },
    #[error("{path}")]
    Io { path: String, source: std::io::Error },
}

impl Classify for ChartError {
    fn code(&self) -> Code {
        match self {
            ChartError::Invalid { .. } => Code::Input,
            ChartError::Io { .. } => Code::Runtime,
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
