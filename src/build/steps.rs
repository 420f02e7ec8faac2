//! The layer steps: an ordered list, each adding its part to the layer (later steps
//! replace earlier entries of the same path). [`default_steps`] is the build's list:
//!
//! | step | adds | code |
//! |------|------|------|
//! | artifacts | the recipe's downloads, installed as its `install:` says | `layer::artifacts` |
//! | files | `image-files/{common,<role>}`, units enabled | `layer::tree` |
//! | hardening | masked units, the firewall | `layer::hardening` |
//! | add-ons | backend chart, add-on values, installer index (control planes) | `chart::addons` |
//! | packages | the locked .debs, on top of the base's dpkg database | `apt::install_locked` |
//! | images | the role's container images as an OCI image layout, each blob once | `layer::images` |
//! | signatures | verified cosign records for the manifest (no files) | `verify::cosign` |
//!
//! A new kind of content is a new [`Step`] in this list; it reads the plan, the verified
//! blobs and (read-only) the base image, and writes only into [`Compose::layer`] or
//! [`Compose::signatures`]. The seal comes after the last step, outside the list.

use std::path::Path;

use anyhow::{Context, Result};

use crate::apt::BaseImage;
use crate::fetch::Fetched;
use crate::layer::{Content, Layer};
use crate::manifest::SignatureRecord;
use crate::plan::{BuildPlan, PackagePlan};
use crate::reporter::Reporter;
use crate::verify::cosign::SignatureSource;

/// What a step works with, and what the steps build up.
pub struct Compose<'a> {
    pub plan: &'a BuildPlan,
    pub fetched: &'a Fetched,
    /// A build-private directory for files the layer points at; it outlives the layer.
    pub work: &'a Path,
    /// The base image's root filesystem, read-only.
    pub base: &'a dyn BaseImage,
    pub reporter: &'a Reporter,
    pub layer: Layer,
    /// Verified signatures, recorded in the manifest by the seal.
    pub signatures: Vec<SignatureRecord>,
}

/// One part of the layer.
pub trait Step {
    /// For messages: `artifacts`, `packages`, …
    fn name(&self) -> &'static str;
    fn apply(&self, cx: &mut Compose<'_>) -> Result<()>;
}

/// Run `steps` in order over an empty layer.
pub fn compose<'a>(
    plan: &'a BuildPlan,
    fetched: &'a Fetched,
    work: &'a Path,
    base: &'a dyn BaseImage,
    reporter: &'a Reporter,
    steps: &[Box<dyn Step>],
) -> Result<Compose<'a>> {
    let mut cx = Compose {
        plan,
        fetched,
        work,
        base,
        reporter,
        layer: Layer::new(plan.source_date_epoch),
        signatures: Vec::new(),
    };
    for s in steps {
        s.apply(&mut cx).with_context(|| format!("layer step {}", s.name()))?;
    }
    Ok(cx)
}

/// The steps of a build, in order; `signatures` says where the cosign signature files
/// come from (mirrors, offline, the cache), as fetch does for the downloads.
pub fn default_steps(signatures: &SignatureSource) -> Vec<Box<dyn Step>> {
    vec![
        // The cache the signatures come from is the build's cache: archive members are kept there.
        Box::new(Artifacts { cache: signatures.cache.clone() }),
        Box::new(Files),
        Box::new(Hardening),
        Box::new(Addons),
        Box::new(Packages),
        Box::new(Images),
        Box::new(Signatures { source: signatures.clone() }),
    ]
}

/// Recipe artifacts: kubeadm/kubelet/kubectl, containerd, runc, CNI, crictl (+ etcd, helm, charts).
/// Archive members are kept in `cache` (inflated by the first build only), else (no
/// cache, or one this user may only read) inflated into the build's workdir.
pub struct Artifacts {
    pub cache: Option<crate::cache::Cache>,
}

impl Step for Artifacts {
    fn name(&self) -> &'static str {
        "artifacts"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> Result<()> {
        use crate::layer::artifacts::{install, Members};
        let members = match &self.cache {
            Some(c) if c.writable() => Members::Cache(c),
            _ => Members::Dir(cx.work),
        };
        Ok(install(&mut cx.layer, cx.plan, cx.fetched, members)?)
    }
}

/// `image-files/{common,<role>}`: units, containerd/crictl config, sysctl, sshd, journald, apt.
pub struct Files;

impl Step for Files {
    fn name(&self) -> &'static str {
        "files"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> Result<()> {
        crate::layer::tree::install(&mut cx.layer, cx.plan.role);
        Ok(())
    }
}

/// Masked units and the per-role nftables firewall.
pub struct Hardening;

impl Step for Hardening {
    fn name(&self) -> &'static str {
        "hardening"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> Result<()> {
        crate::layer::hardening::install(&mut cx.layer, cx.plan.role);
        Ok(())
    }
}

/// Packaged backend chart, add-on values and the installer's index (control planes only).
pub struct Addons;

impl Step for Addons {
    fn name(&self) -> &'static str {
        "add-ons"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> Result<()> {
        for (path, bytes) in crate::chart::addons::files(cx.plan)? {
            cx.layer.file(&path, Content::Bytes(bytes), 0o644);
        }
        Ok(())
    }
}

/// The locked .debs, installed like dpkg would on top of the base's dpkg database.
pub struct Packages;

impl Step for Packages {
    fn name(&self) -> &'static str {
        "packages"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> Result<()> {
        let items = match &cx.plan.packages {
            PackagePlan::None => return Ok(()),
            PackagePlan::Locked { items, .. } if items.is_empty() => return Ok(()),
            PackagePlan::Locked { items, .. } => items,
            PackagePlan::Unresolved { lock_file, .. } => {
                anyhow::bail!("the packages are not resolved (no lock file {})", lock_file.display())
            }
        };
        let mut paths = Vec::new();
        for i in items {
            let blob = cx.fetched.get(i).with_context(|| format!("package {} was not fetched", i.name))?;
            paths.push(blob.to_path_buf());
        }
        let status = crate::apt::base::STATUS;
        let bytes = cx.base.read_file(status)?.with_context(|| format!("the base image has no {status}"))?;
        let text =
            String::from_utf8(bytes).with_context(|| format!("the base image's {status} is not UTF-8"))?;
        let want: Vec<(String, String)> = items.iter().map(|i| (i.name.clone(), i.version.clone())).collect();
        let got = crate::apt::install_locked(&mut cx.layer, &want, &paths, &text, cx.base, cx.work)?;
        let names: Vec<_> = got.packages.iter().map(|(n, v)| format!("{n} {v}")).collect();
        cx.reporter.status(format_args!("apt: installed {}", names.join(", ")));
        Ok(())
    }
}

/// The role's container images: an OCI image layout, imported by imgbuild-images.service.
pub struct Images;

impl Step for Images {
    fn name(&self) -> &'static str {
        "images"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> Result<()> {
        if cx.plan.images.is_empty() {
            return Ok(());
        }
        let mut embedded = Vec::new();
        for img in &cx.plan.images {
            let r = img.resolved.as_ref().filter(|r| r.config.is_some()).with_context(|| {
                format!("image {} is not resolved (build::resolve_images runs before fetch)", img.reference)
            })?;
            let mut blobs = Vec::new();
            for (d, size, _) in r.blobs() {
                let path = cx
                    .plan
                    .image_item(d)
                    .and_then(|i| cx.fetched.get(i))
                    .with_context(|| format!("image {}: blob {d} was not fetched", img.reference))?;
                blobs.push((d.clone(), size, path.to_path_buf()));
            }
            embedded.push(crate::oci::layout::Embedded {
                reference: img.reference.clone(),
                digest: r.digest.clone(),
                media_type: r.media_type.clone(),
                size: r.size,
                blobs,
            });
        }
        let st = crate::layer::images::add(&mut cx.layer, &embedded)?;
        cx.reporter.status(format_args!(
            "images: {} image(s), {} blob(s), {} in the layout ({} if each image were stored apart)",
            st.images,
            st.blobs,
            crate::reporter::human_bytes(st.bytes),
            crate::reporter::human_bytes(st.bytes_if_separate)
        ));
        Ok(())
    }
}

/// Cosign signatures of the artifacts from signing hosts, when the plan asks for them.
pub struct Signatures {
    pub source: SignatureSource,
}

impl Step for Signatures {
    fn name(&self) -> &'static str {
        "signatures"
    }
    fn apply(&self, cx: &mut Compose<'_>) -> Result<()> {
        let Some(policy) = &cx.plan.signatures.cosign else { return Ok(()) };
        let records = crate::verify::cosign::verify_plan_artifacts(
            cx.plan,
            cx.fetched,
            &self.source,
            policy,
            cx.reporter,
        )?;
        cx.signatures.extend(records);
        Ok(())
    }
}
