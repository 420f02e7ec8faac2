//! The build plan: everything one build will do, resolved and typed before anything is
//! downloaded. The recipe is what a person writes (raw, per role and arch); the plan is
//! that recipe resolved for one role and arch plus the command's choices: the base
//! image, every artifact with its final URLs and where its files land, the locked Ubuntu
//! packages, the container images, the add-ons, the signature policy, and the output
//! (format, disk size, file stem). `recipe show` and `build --dry-run` print it; every later stage (fetch, layer,
//! disk, output) works from it.
//!
//! Everything a build downloads is an [`Item`] of some [`ItemKind`]; [`BuildPlan::items`]
//! lists them all, which is what fetch, the inputs digest, the manifest and the SBOM
//! iterate. A new kind of download gets a kind, a list here, and its place in `items`.

use std::path::PathBuf;

use serde::Serialize;

use crate::exit::{Classify, Code};
use crate::lockfile::{self, ArchLock, LockError, LockedImage, LockedManifest};
use crate::recipe::{expand, LoadedRecipe};
use crate::types::{Arch, Digest, ImageRef, ItemKind, OutFormat, Role, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{origin}: recipe {recipe} does not support arch {arch} (it pins: {pinned})")]
    Arch { origin: String, recipe: String, arch: Arch, pinned: String },
    #[error("{origin}: no sha256 for arch {arch}")]
    NoDigest { origin: String, arch: Arch },
    #[error("{0}")]
    DiskSize(String),
    /// A `chart:` artifact the lock does not pin yet (the message says which and how).
    #[error("{0}")]
    ChartNotLocked(String),
    #[error("--compress applies to qcow2 output only, not {0} (vmdk and ova are always compressed)")]
    Compress(OutFormat),
    #[error(transparent)]
    Lock(#[from] LockError),
}

impl Classify for PlanError {
    fn code(&self) -> Code {
        match self {
            PlanError::Lock(e) => e.code(),
            PlanError::Arch { .. }
            | PlanError::NoDigest { .. }
            | PlanError::DiskSize(_)
            | PlanError::ChartNotLocked(_)
            | PlanError::Compress(_) => Code::Input,
        }
    }
}

/// One download, fully resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub kind: ItemKind,
    pub name: String,
    pub version: String,
    /// Tried in order.
    pub urls: Vec<String>,
    pub sha256: Sha256,
    /// The exact size in bytes, where the recipe or the lock file says it: a download
    /// that would be larger is given up at once (else `fetch::size_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Where an artifact's files land; empty for other kinds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub install: Vec<InstallStep>,
}

/// What identifies an item among a plan's downloads (a name is unique within its kind).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    pub kind: ItemKind,
    pub name: String,
}

impl Item {
    pub fn key(&self) -> ItemKey {
        ItemKey { kind: self.kind, name: self.name.clone() }
    }

    /// What the download is, in a few words (the cache keeps it beside the blob).
    pub fn describe(&self) -> String {
        match self.kind {
            // Named by its digest: the image it belongs to says more.
            ItemKind::Image => format!("image blob of {}", self.version),
            k => format!("{k} {} {}", self.name, self.version),
        }
    }
}

/// `from`/`to` with template variables expanded.
#[derive(Debug, Clone, Serialize)]
pub struct InstallStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    pub mode: u32,
}

/// A recipe add-on resolved for a control plane: which chart file in the image to
/// install, where, with which values.
#[derive(Debug, Clone, Serialize)]
pub struct AddonItem {
    /// The artifact (chart) name and version.
    pub name: String,
    pub version: String,
    pub release: String,
    pub namespace: String,
    pub order: u32,
    pub cni: bool,
    /// Path of the chart .tgz in the image (the artifact's install target).
    pub chart: String,
    /// The chart file's pinned digest.
    pub sha256: Sha256,
    pub values: serde_json::Value,
    pub images: Vec<String>,
    /// The level the add-on's namespace enforces (see `chart::addons::namespaces`).
    pub pod_security: crate::types::PodSecurity,
    /// The profile the add-on belongs to (installed only where the cluster turns it on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::types::Profile>,
}

/// The Ubuntu packages of a build.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum PackagePlan {
    /// The recipe has no `packages:`.
    None,
    /// From the lock file: one item per .deb, in the lock's (name) order.
    Locked { lock_file: PathBuf, items: Vec<Item> },
    /// No lock file yet: a build resolves the packages against the signed archive first,
    /// exactly as `imgbuild lock` would (see `build::resolve_packages`).
    Unresolved { lock_file: PathBuf, requested: Vec<String> },
}

/// A container image of the role: its reference and, once known, what it resolved to.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePlan {
    pub reference: ImageRef,
    /// `None` until resolved (see `build::resolve_images`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<ResolvedImage>,
}

/// Where an image's digests came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// `<recipe>.lock`.
    Lock,
    /// A pinned digest whose documents are in the cache.
    Cache,
    /// Resolved through the registry by this build (no lock entry).
    Registry,
}

impl ImageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageSource::Lock => "lock file",
            ImageSource::Cache => "cache",
            ImageSource::Registry => "registry",
        }
    }
}

/// An image resolved for the plan's arch.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedImage {
    pub source: ImageSource,
    /// What the reference points at: an index (the digest containerd records) or the
    /// only manifest.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// This arch's manifest (the same document for a single-platform image).
    pub manifest: LockedManifest,
    /// The config and the layers, once the manifest was read (`build::resolve_images`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<BlobRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<BlobRef>,
}

/// A blob a manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl ResolvedImage {
    pub fn from_lock(l: &LockedImage, arch: Arch, source: ImageSource) -> Option<ResolvedImage> {
        Some(ResolvedImage {
            source,
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
            size: l.size,
            manifest: l.platforms.get(arch.as_str())?.clone(),
            config: None,
            layers: Vec::new(),
        })
    }

    /// Every blob of the image for this arch, in walk order: the top document, the
    /// platform manifest (when the top is an index), the config, the layers.
    pub fn blobs(&self) -> Vec<(&Digest, u64, BlobKind)> {
        let mut v = vec![(&self.digest, self.size, BlobKind::Manifest)];
        if self.manifest.digest != self.digest {
            v.push((&self.manifest.digest, self.manifest.size, BlobKind::Manifest));
        }
        v.extend(self.config.iter().chain(&self.layers).map(|b| (&b.digest, b.size, BlobKind::Blob)));
        v
    }
}

/// How the registry serves a blob: manifests and indexes under `/manifests/`, the rest
/// under `/blobs/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Manifest,
    Blob,
}

/// Which signatures a build verifies and records in the manifest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SignaturePolicy {
    /// Cosign keyless signatures (`<url>.sig` + `<url>.cert`) of the artifacts downloaded
    /// from `hosts`; `None`: none checked.
    pub cosign: Option<CosignPolicy>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CosignPolicy {
    /// The Fulcio root and intermediates.
    pub trust_root: TrustRootSource,
    /// The certificate's expected identity (SAN) and OIDC issuer.
    pub identity: String,
    pub issuer: String,
    /// URL prefixes whose files carry signatures next to them.
    pub hosts: Vec<String>,
    /// Artifacts from those hosts the recipe says are not signed (`signature: none`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsigned: Vec<String>,
}

/// Where the cosign trust root comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustRootSource {
    /// The Sigstore public-good Fulcio root and intermediate compiled into the binary.
    Embedded,
    /// A PEM bundle (`--cosign-trust-root`).
    File(PathBuf),
}

impl std::fmt::Display for TrustRootSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustRootSource::Embedded => f.write_str("embedded Sigstore public-good Fulcio root"),
            TrustRootSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What the build writes.
#[derive(Debug, Clone, Serialize)]
pub struct OutputPlan {
    pub format: OutFormat,
    /// The output directory.
    pub dir: PathBuf,
    /// `<recipe>-<role>-<arch>`: the stem of every output file.
    pub stem: String,
    /// Virtual disk size in bytes (`--disk-size`, else the recipe's); `None` keeps the
    /// base's size and grows only when the layer does not fit.
    pub disk_size: Option<u64>,
    /// Bytes the root filesystem must keep free after the layer when no size is asked
    /// for: [`UNPACK_FACTOR`] times the embedded images' size (containerd's copy of the
    /// blobs and the unpacked layers at the first boot); 0 without images. Room for
    /// workloads comes from the recipe's `disk_size` (the default recipe's is 20G).
    pub reserve: u64,
    /// qcow2 clusters zstd-compressed (`--compress`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub compress: bool,
}

/// What importing embedded images costs a node, in multiples of their (compressed)
/// size: containerd copies every blob into its content store (1×) and unpacks the
/// layers into snapshots (about twice the compressed size for binaries and text).
pub const UNPACK_FACTOR: u64 = 3;

/// Everything one build will do.
#[derive(Debug, Clone, Serialize)]
pub struct BuildPlan {
    pub recipe: String,
    /// `embedded:NAME` or the recipe file.
    pub recipe_origin: String,
    pub recipe_digest: Sha256,
    pub kubernetes_version: String,
    pub role: Role,
    pub arch: Arch,
    pub source_date_epoch: u64,
    pub root_label: String,
    pub base: Item,
    pub artifacts: Vec<Item>,
    pub packages: PackagePlan,
    /// The role's container images, in recipe order (embedded, imported at boot).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImagePlan>,
    /// The images' blobs as downloads, each digest once (derived from `images`).
    #[serde(skip)]
    image_items: Vec<Item>,
    /// Helm add-ons in install order; empty except for control planes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<AddonItem>,
    pub signatures: SignaturePolicy,
    pub output: OutputPlan,
}

/// The command's choices a plan resolves with the recipe.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub role: Role,
    pub arch: Arch,
    /// The recipe file (`None`: embedded); its lock file sits next to it.
    pub recipe_path: Option<PathBuf>,
    pub format: OutFormat,
    pub output_dir: PathBuf,
    /// `--disk-size` as written; overrides the recipe's `disk_size`.
    pub disk_size: Option<String>,
    pub signatures: SignaturePolicy,
    /// Add-on profiles the image carries (`--profile`); add-ons of other profiles, and
    /// artifacts only they use, are left out.
    pub profiles: Vec<crate::types::Profile>,
    /// `--compress`: zstd-compressed qcow2 clusters.
    pub compress: bool,
}

impl PlanOptions {
    /// The defaults of `imgbuild build`: qcow2 into `out`, the recipe's disk size, no
    /// signature checks.
    pub fn new(role: Role, arch: Arch) -> PlanOptions {
        PlanOptions {
            role,
            arch,
            recipe_path: None,
            format: OutFormat::Qcow2,
            output_dir: PathBuf::from("out"),
            disk_size: None,
            signatures: SignaturePolicy::default(),
            profiles: Vec::new(),
            compress: false,
        }
    }
}

/// The options' signature policy, with the artifacts the recipe exempts.
fn signatures(r: &crate::recipe::Recipe, o: &SignaturePolicy) -> SignaturePolicy {
    let mut s = o.clone();
    if let Some(c) = &mut s.cosign {
        c.unsigned = r
            .artifacts
            .iter()
            .filter(|a| a.signature == Some(crate::recipe::ArtifactSignature::None))
            .map(|a| a.name.clone())
            .collect();
    }
    s
}

impl BuildPlan {
    /// Resolve `lr` for `o.role`/`o.arch`. Input errors (exit 2): the recipe does not pin
    /// the arch, a bad disk size, a stale lock file.
    pub fn resolve(lr: &LoadedRecipe, o: &PlanOptions) -> Result<BuildPlan, PlanError> {
        let (r, arch, role) = (&lr.recipe, o.arch, o.role);
        if !r.arches.contains(&arch) {
            return Err(PlanError::Arch {
                origin: lr.origin.clone(),
                recipe: r.name.clone(),
                arch,
                pinned: r.arches.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        // Validation guarantees every listed arch has a digest.
        let digest = |m: &crate::recipe::PerArch| {
            m.get(arch.as_str())
                .cloned()
                .ok_or_else(|| PlanError::NoDigest { origin: lr.origin.clone(), arch })
        };
        let b = &r.base;
        let base = Item {
            kind: ItemKind::Base,
            name: b.name.clone(),
            version: b.version.clone(),
            urls: b.urls.iter().map(|u| expand(u, &b.name, &b.version, arch)).collect(),
            sha256: digest(&b.sha256)?,
            size: None,
            install: Vec::new(),
        };
        let mut artifacts = Vec::new();
        let lock_file = lockfile::lock_path(lr, o.recipe_path.as_deref());
        let mut locked_charts = None;
        for a in r.artifacts.iter().filter(|a| a.roles.contains(&role) && !left_out(r, a, &o.profiles)) {
            let x = |t: &str| expand(t, &a.name, &a.version, arch);
            let (urls, sha256) = match &a.chart {
                Some(c) if a.pinned_by_lock() => {
                    let charts = match &locked_charts {
                        Some(c) => c,
                        None => locked_charts.insert(lockfile::read_charts(lr, &lock_file)?),
                    };
                    let hit = charts
                        .iter()
                        .find(|l| l.name == a.name && l.version == a.version && l.repo == c.repo);
                    let Some(l) = hit else {
                        let flags: String = r
                            .addons
                            .iter()
                            .filter(|ad| ad.artifact == a.name)
                            .filter_map(|ad| ad.profile)
                            .map(|p| format!(" --profile {p}"))
                            .collect();
                        return Err(PlanError::ChartNotLocked(format!(
                            "{}: chart {} {} from {} is not pinned in {}: run `imgbuild lock{flags}` on a \
                             machine that reaches the repository",
                            lr.origin,
                            a.name,
                            a.version,
                            c.repo,
                            lock_file.display()
                        )));
                    };
                    (vec![l.url.clone()], l.sha256.clone())
                }
                _ => (a.urls.iter().map(|u| x(u)).collect(), digest(&a.sha256)?),
            };
            artifacts.push(Item {
                kind: ItemKind::Artifact,
                name: a.name.clone(),
                version: a.version.clone(),
                urls,
                sha256,
                size: a.size.as_ref().and_then(|m| m.get(arch.as_str()).copied()),
                install: a
                    .install
                    .iter()
                    .map(|i| InstallStep {
                        from: i.from.as_deref().map(x),
                        to: x(&i.to),
                        mode: i.mode_bits(),
                    })
                    .collect(),
            });
        }
        let addons =
            if role == Role::ControlPlane { addons(lr, &artifacts, &o.profiles) } else { Vec::new() };
        let packages = match &r.packages {
            None => PackagePlan::None,
            Some(p) => {
                let lock_file = lock_file.clone();
                if lock_file.is_file() {
                    let al =
                        lockfile::read_for(lr, &lock_file, o.recipe_path.as_deref(), arch, &base.sha256)?;
                    PackagePlan::Locked { items: package_items(&al), lock_file }
                } else {
                    PackagePlan::Unresolved { lock_file, requested: p.install.clone() }
                }
            }
        };
        if o.compress && o.format != OutFormat::Qcow2 {
            return Err(PlanError::Compress(o.format));
        }
        let disk_size = match o.disk_size.as_deref().or(r.disk_size.as_deref()) {
            Some(s) => Some(crate::types::size::parse(s).map_err(PlanError::DiskSize)?),
            None => None,
        };
        let wanted = r.images_for(role, &o.profiles);
        let locked = match wanted.is_empty() {
            true => Vec::new(),
            false => lockfile::read_images(lr, &lockfile::lock_path(lr, o.recipe_path.as_deref()))?,
        };
        let images = wanted
            .into_iter()
            .map(|reference| {
                let l = locked.iter().find(|l| l.covers(&reference, arch));
                let resolved = l.and_then(|l| ResolvedImage::from_lock(l, arch, ImageSource::Lock));
                ImagePlan { reference, resolved }
            })
            .collect();
        let mut plan = BuildPlan {
            recipe: r.name.clone(),
            recipe_origin: lr.origin.clone(),
            recipe_digest: lr.digest.clone(),
            kubernetes_version: r.kubernetes_version.clone(),
            role,
            arch,
            source_date_epoch: r.source_date_epoch,
            root_label: b.root_label.clone(),
            base,
            artifacts,
            packages,
            images,
            image_items: Vec::new(),
            addons,
            signatures: signatures(r, &o.signatures),
            output: OutputPlan {
                format: o.format,
                dir: o.output_dir.clone(),
                stem: format!("{}-{role}-{arch}", r.name),
                disk_size,
                reserve: 0,
                compress: o.compress,
            },
        };
        plan.refresh_image_items();
        Ok(plan)
    }

    /// Every download of the build, by kind: the base image, the artifacts, the locked
    /// packages, the images' blobs. Fetch, the inputs digest, the manifest and the SBOM
    /// all follow this.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        std::iter::once(&self.base)
            .chain(self.artifacts.iter())
            .chain(self.packages().iter())
            .chain(self.image_items.iter())
    }

    /// The images' blobs known so far, each digest once.
    pub fn image_items(&self) -> &[Item] {
        &self.image_items
    }

    /// The download of an image blob by its digest.
    pub fn image_item(&self, d: &Digest) -> Option<&Item> {
        self.image_items.iter().find(|i| i.sha256 == *d.sha256())
    }

    /// Set what image `i` resolved to (or its config and layers, once read) and derive
    /// the downloads again.
    pub fn resolve_image(&mut self, i: usize, r: ResolvedImage) {
        if let Some(img) = self.images.get_mut(i) {
            img.resolved = Some(r);
        }
        self.refresh_image_items();
    }

    /// One download per distinct blob, in image order; a blob several repositories
    /// serve gets each repository's URL (tried in order).
    fn refresh_image_items(&mut self) {
        let mut items: Vec<Item> = Vec::new();
        for img in &self.images {
            let Some(r) = &img.resolved else { continue };
            for (d, size, kind) in r.blobs() {
                let path = match kind {
                    BlobKind::Manifest => "manifests",
                    BlobKind::Blob => "blobs",
                };
                let url = format!("{}/{path}/{d}", img.reference.api_base());
                match items.iter_mut().find(|i| i.sha256 == *d.sha256()) {
                    Some(i) if !i.urls.contains(&url) => i.urls.push(url),
                    Some(_) => {}
                    None => items.push(Item {
                        kind: ItemKind::Image,
                        name: d.to_string(),
                        version: img.reference.to_string(),
                        urls: vec![url],
                        sha256: d.sha256().clone(),
                        // The descriptor's size: a registry that sends more is cut off.
                        size: Some(size),
                        install: Vec::new(),
                    }),
                }
            }
        }
        let sizes: std::collections::BTreeMap<&Digest, u64> = self
            .images
            .iter()
            .filter_map(|i| i.resolved.as_ref())
            .flat_map(|r| r.blobs())
            .map(|(d, s, _)| (d, s))
            .collect();
        let bytes: u64 = sizes.values().sum();
        self.output.reserve = UNPACK_FACTOR * bytes;
        self.image_items = items;
    }

    /// The locked packages (empty when there are none or they are not resolved yet).
    pub fn packages(&self) -> &[Item] {
        match &self.packages {
            PackagePlan::Locked { items, .. } => items,
            PackagePlan::None | PackagePlan::Unresolved { .. } => &[],
        }
    }

    /// Complete a plan whose packages were [`PackagePlan::Unresolved`] with a fresh
    /// resolution (what `imgbuild lock` would write for this arch).
    pub fn lock_packages(&mut self, al: &ArchLock) {
        if let PackagePlan::Unresolved { lock_file, .. } = &self.packages {
            self.packages = PackagePlan::Locked { lock_file: lock_file.clone(), items: package_items(al) };
        }
    }

    /// `<recipe>-<role>-<arch>`: the stem of every output file.
    pub fn stem(&self) -> &str {
        &self.output.stem
    }
}

/// One plan item per locked .deb.
pub fn package_items(al: &ArchLock) -> Vec<Item> {
    al.packages
        .iter()
        .map(|d| Item {
            kind: ItemKind::Package,
            name: d.name.clone(),
            version: d.version.clone(),
            urls: vec![d.url.clone()],
            sha256: d.sha256.clone(),
            size: Some(d.size),
            install: Vec::new(),
        })
        .collect()
}

/// The recipe's add-ons resolved against a control plane's artifacts, in install order.
/// Whether artifact `a` is used only by add-ons of profiles the build leaves out.
pub fn left_out(
    r: &crate::recipe::Recipe,
    a: &crate::recipe::Artifact,
    profiles: &[crate::types::Profile],
) -> bool {
    let users: Vec<_> = r.addons.iter().filter(|ad| ad.artifact == a.name).collect();
    !users.is_empty() && users.iter().all(|ad| ad.profile.is_some_and(|p| !profiles.contains(&p)))
}

fn addons(lr: &LoadedRecipe, artifacts: &[Item], profiles: &[crate::types::Profile]) -> Vec<AddonItem> {
    let mut addons = Vec::new();
    for ad in &lr.recipe.addons {
        if ad.profile.is_some_and(|p| !profiles.contains(&p)) {
            continue;
        }
        // Validation guarantees the artifact exists with exactly one install step.
        let Some(item) = artifacts.iter().find(|i| i.name == ad.artifact) else { continue };
        let Some(step) = item.install.first() else { continue };
        addons.push(AddonItem {
            name: item.name.clone(),
            version: item.version.clone(),
            release: ad.release.clone(),
            namespace: ad.namespace.clone(),
            order: ad.order,
            cni: ad.cni,
            chart: step.to.clone(),
            sha256: item.sha256.clone(),
            values: ad.values.clone(),
            images: ad.images.clone(),
            pod_security: ad.pod_security,
            profile: ad.profile,
        });
    }
    addons.sort_by_key(|a| a.order);
    addons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(role: Role, arch: Arch) -> BuildPlan {
        let r = crate::recipe::load(None).unwrap();
        BuildPlan::resolve(&r, &PlanOptions::new(role, arch)).unwrap()
    }

    #[test]
    fn worker_has_no_control_plane_tools() {
        let p = plan(Role::Worker, Arch::Amd64);
        let names: Vec<_> = p.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert!(names.contains(&"kubelet"));
        assert!(!names.contains(&"helm") && !names.contains(&"etcd"));
        assert_eq!(p.artifacts[0].urls[0], "https://dl.k8s.io/release/v1.30.3/bin/linux/amd64/kubeadm");
        let cp = plan(Role::ControlPlane, Arch::Arm64);
        let etcd = cp.artifacts.iter().find(|a| a.name == "etcd").unwrap();
        assert_eq!(etcd.install[0].from.as_deref(), Some("etcd-v3.5.12-linux-arm64/etcdctl"));
        assert_eq!(cp.stem(), "ubuntu-24.04-k8s-v1.30.3-control-plane-arm64");
    }

    #[test]
    fn addons_resolve_for_control_planes_only() {
        let cp = plan(Role::ControlPlane, Arch::Amd64);
        let a: Vec<_> = cp.addons.iter().map(|a| (a.release.as_str(), a.chart.as_str())).collect();
        assert_eq!(
            a,
            [
                ("cilium", "/usr/share/imgbuild/addons/cilium-1.16.1.tgz"),
                ("metrics-server", "/usr/share/imgbuild/addons/metrics-server-3.12.2.tgz"),
                ("ingress-nginx", "/usr/share/imgbuild/addons/ingress-nginx-4.11.5.tgz"),
            ]
        );
        assert!(cp.addons[0].cni && !cp.addons[1].cni);
        assert_eq!(
            cp.addons[2].sha256.as_str(),
            "7035b6656a07f85792d0d8e103b9bff84510db0e81d11db4e322709b07783ffa"
        );
        let w = plan(Role::Worker, Arch::Arm64);
        assert!(w.addons.is_empty());
        assert!(!w.artifacts.iter().any(|a| a.name == "cilium" || a.name == "ingress-nginx"));
    }

    #[test]
    fn items_are_keyed_by_kind_and_name() {
        let mut p = plan(Role::Worker, Arch::Amd64);
        assert!(matches!(p.packages, PackagePlan::Unresolved { .. }), "no lock next to the embedded recipe");
        let al: ArchLock = serde_json::from_value(serde_json::json!({
            "base_sha256": p.base.sha256, "releases": [], "indexes": [], "already_in_base": [],
            "packages": [{"name": "kubelet", "version": "1.0", "architecture": "amd64",
                          "url": "http://x/kubelet.deb", "sha256": Sha256::of(b"deb"), "size": 3,
                          "requested": true}]
        }))
        .unwrap();
        p.lock_packages(&al);
        let keys: Vec<ItemKey> = p.items().map(Item::key).collect();
        // An artifact and a package of the same name are different items.
        let kubelets: Vec<_> = keys.iter().filter(|k| k.name == "kubelet").map(|k| k.kind).collect();
        assert_eq!(kubelets, [ItemKind::Artifact, ItemKind::Package]);
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        assert_eq!(keys[0].kind, ItemKind::Base);
    }

    #[test]
    fn disk_size_is_checked_when_planning() {
        let r = crate::recipe::load(None).unwrap();
        let mut o = PlanOptions::new(Role::Worker, Arch::Amd64);
        o.disk_size = Some("8G".into());
        assert_eq!(BuildPlan::resolve(&r, &o).unwrap().output.disk_size, Some(8 << 30));
        o.disk_size = Some("8X".into());
        let e = BuildPlan::resolve(&r, &o).unwrap_err();
        assert_eq!(e.code(), Code::Input);
        assert!(e.to_string().contains("\"8X\""), "{e}");
    }

    #[test]
    fn compress_is_refused_for_every_format_but_qcow2_with_a_message_that_fits() {
        let r = crate::recipe::load(None).unwrap();
        let mut o = PlanOptions::new(Role::Worker, Arch::Amd64);
        o.compress = true;
        assert!(BuildPlan::resolve(&r, &o).is_ok());
        for format in [OutFormat::Raw, OutFormat::Vmdk, OutFormat::Ova, OutFormat::Vhd, OutFormat::Vhdx] {
            o.format = format;
            let e = BuildPlan::resolve(&r, &o).unwrap_err();
            assert_eq!(e.code(), Code::Input);
            assert_eq!(
                e.to_string(),
                format!("--compress applies to qcow2 output only, not {format} (vmdk and ova are always compressed)")
            );
        }
    }
}
