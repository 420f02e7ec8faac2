//! Offline installation of Ubuntu packages into the image layer, verified like apt does
//! it: `InRelease` signed by a pinned key → `Packages` index by its signed SHA-256 →
//! each `.deb` by the index's SHA-256 (recorded in `<recipe>.lock`).
//!
//! - [`inrelease`]: OpenPGP clearsigned verification (rpgp), Release parsing.
//! - [`index`]: downloading and verifying the `Packages` indexes.
//! - [`version`], [`relation`], [`control`]: dpkg's version order, dependency fields, deb822.
//! - [`resolve`]: the dependency closure minus what the base image already has.
//! - [`lock`]: `imgbuild lock` and the lock file `build` uses.
//! - [`deb`]: reading `.deb` archives; [`install`]: unpacking into a [`crate::layer::Layer`]
//!   and writing the dpkg database; [`scripts`]: what maintainer scripts may do.
//! - [`base`]: the base image's `/var/lib/dpkg/status`.

pub mod alternatives;
pub mod base;
pub mod build;
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
pub mod version;

pub use build::{composer, for_build};
pub use install::{install_into, BaseImage, Installed};
pub use lock::{build_items, install_locked, run_lock, BuildDebs, LockArgs, LockFile};

use crate::exit::{Classify, Code};
use crate::recipe::{Packages, Recipe};

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// Bad recipe/lock/command input.
    #[error("{0}")]
    Input(String),
    #[error("package {name:?} ({arch}): {msg}")]
    MissingPackage { name: String, arch: String, msg: String },
    #[error("{0}")]
    StaleLock(String),
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
            AptError::Input(_)
            | AptError::MissingPackage { .. }
            | AptError::StaleLock(_)
            | AptError::Refused { .. } => Code::Input,
            AptError::Key { .. } | AptError::Signature { .. } | AptError::Integrity { .. } => Code::Integrity,
            AptError::Download { .. } | AptError::Format { .. } | AptError::Io { .. } => Code::Runtime,
        }
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AptError {
    let what = what.into();
    move |source| AptError::Io { what, source }
}

/// A requested package: `name` or `name=version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub version: Option<version::Version>,
}

impl Request {
    pub fn parse(s: &str) -> Result<Request, String> {
        let (name, v) = match s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(version::Version::parse(v)?)),
            None => (s.trim(), None),
        };
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        {
            return Err(format!("{name:?} is not a Debian package name"));
        }
        Ok(Request { name: name.to_string(), version: v })
    }
}

/// Normalise a fingerprint for comparison: hex digits only, uppercase.
pub fn normalize_fingerprint(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase()
}

/// Recipe validation of `packages:` (called from [`crate::recipe`]); errors are
/// (field path, message).
pub fn validate_recipe(r: &Recipe, p: &Packages) -> Result<(), (String, String)> {
    let e = |f: &str, m: String| Err((format!("packages.{f}"), m));
    for (a, url) in &p.archive {
        if !["amd64", "arm64"].contains(&a.as_str()) {
            return e(&format!("archive.{a}"), format!("unknown arch {a:?} (known: amd64, arm64)"));
        }
        if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file://")) {
            return e(&format!("archive.{a}"), format!("{url:?} is not an http(s) or file URL"));
        }
    }
    for a in &r.arches {
        if !p.archive.contains_key(a.as_str()) {
            return e("archive", format!("missing archive URL for arch {a}"));
        }
    }
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if p.suites.is_empty() {
        return e("suites", "at least one suite is required".into());
    }
    for (i, s) in p.suites.iter().enumerate() {
        if !word(s) {
            return e(&format!("suites[{i}]"), format!("{s:?} is not a suite name"));
        }
    }
    if p.components.is_empty() {
        return e("components", "at least one component is required".into());
    }
    for (i, c) in p.components.iter().enumerate() {
        if !word(c) {
            return e(&format!("components[{i}]"), format!("{c:?} is not a component name"));
        }
    }
    match (&p.key, &p.key_file) {
        (Some(_), Some(_)) => return e("key", "give either key or key_file, not both".into()),
        (None, None) => return e("key", "a signing key is required (key or key_file)".into()),
        (Some(k), None) if !inrelease::EMBEDDED_KEYS.iter().any(|x| x.name == k) => {
            let known: Vec<_> = inrelease::EMBEDDED_KEYS.iter().map(|x| x.name).collect();
            return e("key", format!("no embedded key {k:?} (known: {})", known.join(", ")));
        }
        _ => {}
    }
    if let Some(f) = &p.fingerprint {
        let n = normalize_fingerprint(f);
        if n.len() != 40 || !n.bytes().all(|b| b.is_ascii_hexdigit()) {
            return e("fingerprint", format!("{f:?} is not a v4 fingerprint (40 hex digits)"));
        }
    }
    if p.install.is_empty() {
        return e("install", "at least one package is required".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in p.install.iter().enumerate() {
        let req = Request::parse(s).map_err(|m| (format!("packages.install[{i}]"), m))?;
        if !seen.insert(req.name.clone()) {
            return e(&format!("install[{i}]"), format!("duplicate package {:?}", req.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_recipe_lists_the_four_packages() {
        let r = crate::recipe::load(None).unwrap();
        let p = r.recipe.packages.as_ref().unwrap();
        let names: Vec<_> = p.install.iter().map(|s| Request::parse(s).unwrap().name).collect();
        assert_eq!(names, ["conntrack", "socat", "ebtables", "ethtool"]);
        assert_eq!(p.key.as_deref(), Some("ubuntu-archive-2018"));
        let fp = normalize_fingerprint(p.fingerprint.as_deref().unwrap());
        assert_eq!(fp, inrelease::embedded_key("ubuntu-archive-2018").unwrap().fingerprint);
    }

    #[test]
    fn request_syntax() {
        let r = Request::parse("conntrack=1:1.4.8-1ubuntu1").unwrap();
        assert_eq!(r.name, "conntrack");
        assert_eq!(r.version.unwrap().to_string(), "1:1.4.8-1ubuntu1");
        assert!(Request::parse("Bad").is_err());
        assert!(Request::parse("a=").is_err());
    }

    #[test]
    fn recipe_errors_name_the_field() {
        let text = crate::recipe::load(None).unwrap().text.replace("key: ubuntu-archive-2018", "key: nope");
        let e = crate::recipe::parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("packages.key") && e.contains("nope"), "{e}");
        let text = crate::recipe::load(None).unwrap().text.replace("    - socat=", "    - conntrack=");
        let e = crate::recipe::parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("packages.install[1]") && e.contains("duplicate"), "{e}");
    }
}
