//! Per-node cloud-init rendering (`imgbuild cloud-init`).
//!
//! User-data carries DATA only: the node's bootstrap settings, its kubeadm
//! configuration, the PKI a control plane needs and the add-on values; it then
//! starts `imgbuild-bootstrap.service`, whose logic is baked into the image
//! (image-files/common/usr/libexec/imgbuild/bootstrap). Every rendered document is
//! parsed back and checked (cloud-init 24.1 schema, kubeadm kinds, byte-exact file
//! contents) before anything is written.

pub mod addon_secrets;
pub mod addon_values;
pub mod iso;
pub mod render;
pub mod schema;
pub mod seed;

use std::path::PathBuf;

use anyhow::Result;

use crate::cluster::{pki, plan};
use crate::exit::{Classify, Code};
use crate::reporter::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error("internal: rendered {what} is invalid: {msg}")]
    Rendered { what: String, msg: String },
    #[error("{0}")]
    Seed(String),
}

impl Classify for CloudInitError {
    fn code(&self) -> Code {
        match self {
            CloudInitError::Invalid(_) => Code::Input,
            _ => Code::Runtime,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedKind {
    /// ISO 9660 + Joliet + Rock Ridge, written in Rust
    Iso,
    /// FAT, written in Rust (no tools needed)
    Vfat,
    /// Only the plain files
    None,
}

/// What `imgbuild cloud-init` renders, and where.
#[derive(Debug, Clone)]
pub struct CloudInitOptions {
    /// The cluster spec; secrets are read from secrets/ next to it.
    pub cluster: PathBuf,
    /// One node, or (`None`) every node.
    pub node: Option<String>,
    /// Output directory: OUT/NODE/{user-data,meta-data,network-config,seed.*}.
    pub out: PathBuf,
    pub seed: SeedKind,
    /// The recipe the control-plane image was built from (its add-ons; default: the
    /// embedded one).
    pub recipe: Option<PathBuf>,
    /// The download cache holding the add-on charts (default: [`crate::cache::Cache::dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Disaster recovery: the first control plane restores etcd from this snapshot.
    pub restore: Option<render::Restore>,
    /// NoCloud vendor-data put next to every node's user-data (and into its seed).
    pub vendor_data: Option<PathBuf>,
}

/// Render and write the seeds of `a`.
pub fn write(a: &CloudInitOptions, rep: &Reporter) -> Result<()> {
    let loaded = plan::load(&a.cluster)?;
    let secrets_dir = crate::cluster::secrets_dir(&a.cluster);
    let secrets = pki::Secrets::load(&secrets_dir)?;
    let join_token = crate::cluster::token::for_joins(&secrets_dir)?;
    let nodes: Vec<&plan::NodePlan> = match &a.node {
        Some(n) => match loaded.node(n) {
            Some(x) => vec![x],
            None => {
                let names: Vec<_> = loaded.nodes.iter().map(|x| x.name.as_str()).collect();
                return Err(CloudInitError::Invalid(format!(
                    "no node {n:?} in {} (nodes: {})",
                    a.cluster.display(),
                    names.join(", ")
                ))
                .into());
            }
        },
        None => loaded.nodes.iter().collect(),
    };
    let vendor_data = match &a.vendor_data {
        Some(p) => Some(seed::read_vendor_data(p)?),
        None => None,
    };
    let charts = addon_values::charts_for(&loaded, a.recipe.as_deref(), a.cache_dir.as_deref())?;
    // A cluster directory from before the profiles' admin credentials: made once, now.
    let admin = match addon_values::needs_admin(&loaded) {
        true => {
            let (s, created) =
                crate::cluster::admin::AdminSecrets::load_or_create(&secrets_dir, &mut pki::Rng::from_env())?;
            for f in created {
                rep.status(format_args!("generated {} (0600)", f.display()));
            }
            Some(s)
        }
        false => None,
    };
    let dir = a.cluster.parent().unwrap_or(std::path::Path::new("."));
    let inputs = addon_values::ProfileInputs { dir, admin: admin.as_ref() };
    let addons = addon_values::build(&loaded, &charts, inputs)?;
    for w in &addons.warnings {
        rep.warn(w);
    }
    if let Some(rs) = &a.restore {
        rs.check()?;
    }
    let backup_s3 = match &loaded.backup_s3 {
        Some(t) => {
            let line = loaded.line("backups.s3.credentials_file").or(loaded.line("backups.s3"));
            Some(t.load_credentials(&a.cluster, line)?)
        }
        None => None,
    };
    let r = render::Renderer::new(&loaded, &secrets)?
        .with_join_token(join_token)
        .with_backup_s3(backup_s3)
        .with_addons(&addons)
        .with_restore(a.restore.clone());
    let rendered = r.render_many(&nodes)?;
    for w in &loaded.warnings {
        rep.warn(w.display(&loaded.origin));
    }
    for w in rendered.iter().flat_map(|f| &f.warnings) {
        rep.warn(w);
    }
    seed::write_all(&a.out, &rendered, a.seed, vendor_data.as_deref())?;
    rep.status(format_args!("wrote cloud-init for {} node(s) into {}", rendered.len(), a.out.display()));
    Ok(())
}
