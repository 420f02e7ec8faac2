//! Container images inside node images, so that an air-gapped node has everything
//! kubeadm, kubelet and the add-ons start.
//!
//! - [`reference`]: image references, normalised as containerd's CRI does it.
//! - [`spec`]: OCI / Docker v2 manifests, indexes, media types, platform selection.
//! - [`auth`]: the registries' anonymous bearer-token flow.
//! - [`registry`]: the distribution API for manifests and small blobs (`imgbuild lock`).
//! - [`lock`]: tags and pinned indexes resolved to per-arch manifest digests in `<recipe>.lock`.
//! - [`layout`]: the OCI image layout written into the image (each blob once) and the
//!   list the boot-time import checks containerd against.
//!
//! Which images a role gets: the recipe's `images:` entries naming the role, then
//! every add-on image (the add-ons' DaemonSets run on every node and their
//! Deployments may be scheduled on any).

pub mod auth;
pub mod layout;
pub mod lock;
pub mod reference;
pub mod registry;
pub mod spec;

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use reference::{Digest, ImageRef};

use crate::exit::{Classify, Code};
use crate::recipe::{Recipe, Role};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Recipe or command-line input.
    #[error("{0}")]
    Input(String),
    #[error("{image}: {what} does not exist ({url})")]
    NotFound { image: String, what: String, url: String },
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
    Http { url: String, msg: String },
    #[error("{url}: {source}")]
    Auth { url: String, source: auth::AuthError },
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
        }
    }
}

/// The images a `role` carries, in recipe order: `images:` entries for the role, then
/// each add-on's images (every role), each reference once.
pub fn images_for(r: &Recipe, role: Role) -> Vec<ImageRef> {
    let mut out: Vec<ImageRef> = Vec::new();
    let top = r.images.iter().filter(|i| i.roles.contains(&role)).map(|i| i.reference.clone());
    let addons = r.addons.iter().flat_map(|a| a.images.iter()).filter_map(|s| ImageRef::parse(s).ok());
    for i in top.chain(addons) {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Every image of the recipe (any role), each once.
pub fn all_images(r: &Recipe) -> Vec<ImageRef> {
    let mut out = images_for(r, Role::ControlPlane);
    for i in images_for(r, Role::Worker) {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Recipe checks of `images:` (called from [`crate::recipe`]): roles given once each,
/// no image listed twice, and no two images claiming one `name:tag` in containerd.
pub fn validate_recipe(r: &Recipe) -> Result<(), (String, String)> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut tags: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut claim = |path: String, i: &ImageRef| -> Result<(), (String, String)> {
        let key = i.to_string();
        if let Some(first) = seen.insert(key.clone(), path.clone()) {
            return Err((path, format!("{key} is already listed at {first}")));
        }
        if let Some(t) = i.tagged_name() {
            if let Some((first, other)) = tags.insert(t.clone(), (path.clone(), key.clone())) {
                return Err((path, format!("{key} and {other} ({first}) would both be {t} in containerd")));
            }
        }
        Ok(())
    };
    for (k, img) in r.images.iter().enumerate() {
        let p = format!("images[{k}]");
        if img.roles.is_empty() {
            return Err((format!("{p}.roles"), "at least one role is required".into()));
        }
        let mut roles = img.roles.clone();
        roles.sort();
        roles.dedup();
        if roles.len() != img.roles.len() {
            return Err((format!("{p}.roles"), "a role is listed twice".into()));
        }
        claim(format!("{p}.ref"), &img.reference)?;
    }
    for (i, a) in r.addons.iter().enumerate() {
        for (j, s) in a.images.iter().enumerate() {
            let p = format!("addons[{i}].images[{j}]");
            let img = ImageRef::parse(s).map_err(|e| (p.clone(), e))?;
            claim(p, &img)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> crate::recipe::LoadedRecipe {
        crate::recipe::load(None).unwrap()
    }

    #[test]
    fn roles_get_what_may_run_on_them() {
        let r = recipe().recipe;
        let names = |role| images_for(&r, role).iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let cp = names(Role::ControlPlane);
        let w = names(Role::Worker);
        for kubeadm in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"] {
            assert!(cp.iter().any(|i| i.contains(&format!("/{kubeadm}:"))), "{kubeadm} on control planes");
            assert!(!w.iter().any(|i| i.contains(&format!("/{kubeadm}:"))), "{kubeadm} not on workers");
        }
        for both in
            ["kube-proxy:v1.30.3", "coredns/coredns:v1.11.1", "pause:3.9", "cilium/cilium:", "cilium-envoy:"]
        {
            assert!(cp.iter().any(|i| i.contains(both)) && w.iter().any(|i| i.contains(both)), "{both}");
        }
        assert!(cp.iter().any(|i| i.contains("kube-vip")) && !w.iter().any(|i| i.contains("kube-vip")));
        // The charts' digests stay as the recipe pins them.
        assert!(
            w.iter()
                .any(|i| i
                    .ends_with("@sha256:0b4a3ab41a4760d86b7fc945b8783747ba27f29dac30dd434d94f2c9e3679f39"))
        );
        assert_eq!(all_images(&r).len(), cp.len() + w.iter().filter(|i| !cp.contains(i)).count());
    }

    #[test]
    fn recipe_errors_name_the_entry() {
        let text = recipe().text;
        let bad = |from: &str, to: &str| {
            assert!(text.contains(from), "{from}");
            crate::recipe::parse(&text.replacen(from, to, 1), "t.yaml").unwrap_err().to_string()
        };
        let e =
            bad("  - ref: registry.k8s.io/kube-apiserver:v1.30.3", "  - ref: registry.k8s.io/kube-apiserver");
        assert!(e.contains("images[0].ref") && e.contains("(line "), "{e}");
        let e = bad(
            "  - ref: registry.k8s.io/kube-scheduler:v1.30.3",
            "  - ref: registry.k8s.io/kube-apiserver:v1.30.3",
        );
        assert!(e.contains("images[2].ref") && e.contains("already listed at images[0].ref"), "{e}");
        let e = bad(
            "  - ref: registry.k8s.io/kube-scheduler:v1.30.3",
            "  - ref: registry.k8s.io/kube-apiserver:v1.30.3@sha256:0b4a3ab41a4760d86b7fc945b8783747ba27f29dac30dd434d94f2c9e3679f39",
        );
        assert!(e.contains("would both be registry.k8s.io/kube-apiserver:v1.30.3"), "{e}");
        let e = bad("quay.io/cilium/cilium:v1.16.1@", "quay.io/cilium/Cilium:v1.16.1@");
        assert!(e.contains("addons[0].images[0]"), "{e}");
    }
}
