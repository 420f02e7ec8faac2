//! Image references, parsed and normalised the way containerd's CRI plugin does it
//! (distribution's `reference.ParseDockerRef`): `nginx:1` is `docker.io/library/nginx:1`,
//! `index.docker.io` is `docker.io`. The normalised form is what a pod spec resolves to
//! on the node, so it is also the name an embedded image gets in containerd.
//!
//! Grammar (distribution/reference): `name [":" tag] ["@" digest]`, where the name is
//! `[domain "/"] path-component ("/" path-component)*`. The first component is a domain
//! when it contains `.` or `:` or is `localhost`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Sha256;

/// The `Accept` list of every manifest request: without the list and index types a
/// registry may answer a multi-arch tag with one platform's manifest (or schema 1).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The registry docker.io's API lives on.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DOCKER_HUB: &str = "docker.io";
/// Distribution limits the whole name (domain and path) to 255 characters.
const NAME_MAX: usize = 255;

/// A `sha256:<hex>` content digest (the only algorithm registries use for images).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(Sha256);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("{s:?} is not a sha256:<64 hex> digest (only sha256 is supported)"))?;
        Sha256::parse(hex).map(Digest).map_err(|e| format!("{s:?}: {e}"))
    }
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::of(bytes))
    }
    /// The 64 hex digits: the blob's name in the cache and in an OCI layout.
    pub fn sha256(&self) -> &Sha256 {
        &self.0
    }
    pub fn from_sha256(s: Sha256) -> Digest {
        Digest(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A normalised image reference with a tag, a digest or both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// `registry.k8s.io`, `docker.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// `kube-apiserver`, `cilium/cilium`, `library/nginx`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parse and normalise. A reference without tag and digest is refused: an image
    /// that goes into a node image must be pinned (`latest` is not a version).
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let bad = |why: &str| format!("{s:?} is not an image reference: {why}");
        if s.is_empty() || s.len() > 1024 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("empty, too long or contains whitespace"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(&e))?)),
            None => (s, None),
        };
        // A tag follows the last `:` after the last `/` (a `:` before it is a port).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad(&format!("tag {t:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad("it has neither a tag nor a digest (pin one: name:tag or name@sha256:…)"));
        }
        let (domain, path) = split_domain(name);
        if !valid_domain(&domain) {
            return Err(bad(&format!("{domain:?} is not a registry host[:port]")));
        }
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(bad(&format!(
                "repository {path:?} must be lowercase components [a-z0-9] joined by . _ __ or -, separated by /"
            )));
        }
        if domain.len() + 1 + path.len() > NAME_MAX {
            return Err(bad("the name is longer than 255 characters"));
        }
        Ok(ImageRef { domain, path, tag: tag.map(str::to_string), digest })
    }

    /// `domain/path`: the repository name containerd and kubelet use.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The host (and port) of the registry's API: docker.io's lives elsewhere.
    pub fn api_host(&self) -> &str {
        if self.domain == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.domain
        }
    }

    /// `https://<api host>/v2/<path>`: the base of every API URL of this repository
    /// (loopback registries included: mirrors rewrite URLs, never the scheme here).
    pub fn api_base(&self) -> String {
        format!("https://{}/v2/{}", self.api_host(), self.path)
    }

    /// `name:tag`, when the reference has a tag.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `name@digest` for a given digest (the reference's own or a resolved one).
    pub fn digest_name(&self, d: &Digest) -> String {
        format!("{}@{d}", self.name())
    }

    /// What a registry resolves: the digest when pinned, else the tag.
    pub fn api_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(), // parse() refuses this case
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImageRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// distribution's `splitDockerDomain`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = DOCKER_HUB.to_string();
    }
    if domain == DOCKER_HUB && !path.contains('/') {
        path = format!("library/{path}");
    }
    (domain, path)
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or any run of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

pub(crate) fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0b4a3ab41a4760d86b7fc945b8783747ba27f29dac30dd434d94f2c9e3679f39";

    #[test]
    fn normalises_like_containerd() {
        let r = ImageRef::parse("nginx:1.27").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:1.27");
        assert_eq!(r.api_base(), "https://registry-1.docker.io/v2/library/nginx");
        let r = ImageRef::parse("index.docker.io/bitnami/redis:7").unwrap();
        assert_eq!(r.name(), "docker.io/bitnami/redis");
        let r = ImageRef::parse(&format!("quay.io/cilium/cilium:v1.16.1@{D}")).unwrap();
        assert_eq!(
            (r.domain.as_str(), r.path.as_str(), r.tag.as_deref()),
            ("quay.io", "cilium/cilium", Some("v1.16.1"))
        );
        assert_eq!(r.api_reference(), D);
        assert_eq!(r.to_string(), format!("quay.io/cilium/cilium:v1.16.1@{D}"));
        let r = ImageRef::parse("localhost:5000/a/b:x").unwrap();
        assert_eq!((r.domain.as_str(), r.path.as_str()), ("localhost:5000", "a/b"));
        let r = ImageRef::parse("127.0.0.1:5000/registry.k8s.io/pause:3.9").unwrap();
        assert_eq!(r.path, "registry.k8s.io/pause");
        let r = ImageRef::parse(&format!("registry.k8s.io/pause@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.api_reference(), D);
        assert_eq!(r.tagged_name(), None);
    }

    #[test]
    fn refuses_what_distribution_refuses() {
        for bad in [
            "",
            "registry.k8s.io/pause",               // no tag, no digest
            "registry.k8s.io/Pause:3.9",           // uppercase path
            "registry.k8s.io/pause:-3.9",          // tag start
            "registry.k8s.io/pause:3.9@sha512:ab", // algorithm
            "registry.k8s.io/pause@sha256:abc",    // short digest
            "registry.k8s.io//pause:1",
            "registry.k8s.io/pa--use_:1",
            "reg istry/x:1",
            "host:99999999/x:1",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(valid_component("a__b") && valid_component("a---b") && !valid_component("a___b"));
    }
}
