//! Offline installation of Ubuntu packages into the image layer, verified like apt does
//! it: `InRelease` signed by a pinned key → `Packages` index by its signed SHA-256 →
//! each `.deb` by the index's SHA-256 (recorded in `<recipe>.lock`).
//!
//! - [`inrelease`]: OpenPGP clearsigned verification (rpgp), Release parsing.
//! - [`index`]: downloading and verifying the `Packages` indexes.
//! - [`relation`], [`control`]: dependency fields, deb822 (versions: `types::debian`).
//! - [`resolve`]: the dependency closure minus what the base image already has.
//! - [`lock`]: resolving the packages `imgbuild lock` writes into `lockfile`.
//! - [`deb`]: reading `.deb` archives; [`install`]: unpacking into a `layer::Layer`
//!   and writing the dpkg database; [`scripts`]: what maintainer scripts may do.
//! - [`base`]: the base image's `/var/lib/dpkg/status`.

pub mod alternatives;
pub mod base;
pub mod control;
pub mod deb;
pub mod index;
pub mod inrelease;
pub mod install;
pub mod lock;
pub mod net;
pub mod relation;
pub mod resolve;
pub mod scripts;

pub use install::{install_into, BaseImage, Installed};
pub use lock::install_locked;

use crate::exit::{Classify, Code};

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// Bad recipe/lock/command input.
    #[error("{0}")]
    Input(String),
    #[error("package {name:?} ({arch}): {msg}")]
    MissingPackage { name: String, arch: String, msg: String },
    #[error("{pkg}: {msg}")]
    Refused { pkg: String, msg: String },
    #[error("{origin}: bad OpenPGP key: {msg}")]
    Key { origin: String, msg: String },
    #[error("{url}: signature check failed: {msg}")]
    Signature { url: String, msg: String },
    #[error("{url}: {msg}")]
    Integrity { url: String, msg: String },
    #[error("{url}: download failed: {msg}")]
    Download { url: String, msg: String },
    #[error("{what}: {msg}")]
    Format { what: String, msg: String },
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
}

impl Classify for AptError {
    fn code(&self) -> Code {
        match self {
            AptError::Input(_) | AptError::MissingPackage { .. } | AptError::Refused { .. } => Code::Input,
            AptError::Key { .. } | AptError::Signature { .. } | AptError::Integrity { .. } => Code::Integrity,
            AptError::Download { .. } | AptError::Format { .. } | AptError::Io { .. } => Code::Runtime,
        }
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AptError {
    let what = what.into();
    move |source| AptError::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_recipe_lists_the_four_packages() {
        let r = crate::recipe::load(None).unwrap();
        let p = r.recipe.packages.as_ref().unwrap();
        let names: Vec<_> =
            p.install.iter().map(|s| crate::types::PackageRequest::parse(s).unwrap().name).collect();
        assert_eq!(names, ["conntrack", "socat", "ebtables", "ethtool"]);
        assert_eq!(p.key.as_deref(), Some("ubuntu-archive-2018"));
        let fp = crate::keys::normalize_fingerprint(p.fingerprint.as_deref().unwrap());
        assert_eq!(fp, inrelease::embedded_key("ubuntu-archive-2018").unwrap().fingerprint);
    }
}
