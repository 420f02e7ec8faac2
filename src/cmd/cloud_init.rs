//! `imgbuild cloud-init`: per-node user-data, meta-data, network-config and seed.

use std::path::PathBuf;

use anyhow::Result;

use crate::cloudinit::render::Restore;
use crate::cloudinit::{CloudInitOptions, SeedKind};
use crate::reporter::Reporter;

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["node", "all"]))]
pub struct CloudInitArgs {
    /// The cluster spec; secrets are read from secrets/ next to it
    #[arg(long)]
    pub cluster: PathBuf,
    /// Render this node
    #[arg(long)]
    pub node: Option<String>,
    /// Render every node
    #[arg(long)]
    pub all: bool,
    /// Output directory: OUT/NODE/{user-data,meta-data,network-config,seed.*}
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// NoCloud seed image (volume label cidata)
    #[arg(long, value_enum, default_value_t = SeedKind::Iso)]
    pub seed: SeedKind,
    /// Recipe the control-plane image was built from: add-on overrides are checked against
    /// its add-ons (default: the embedded recipe)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Download cache whose add-on charts the overrides are checked against (default:
    /// $IMGBUILD_CACHE_DIR, else $XDG_CACHE_HOME/imgbuild, else ~/.cache/imgbuild)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Disaster recovery: the first control plane fetches this etcd snapshot (http/https) and
    /// restores it before `kubeadm init` (see docs/disaster-recovery.md)
    #[arg(long, requires = "restore_sha256")]
    pub restore_url: Option<String>,
    /// SHA-256 of the snapshot file (the first field `cluster backup` prints)
    #[arg(long, requires = "restore_url")]
    pub restore_sha256: Option<String>,
    /// NoCloud vendor-data (at most 1 MiB) written next to every node's user-data and
    /// into its seed: site settings that are not the cluster's, e.g. a local apt proxy
    #[arg(long, value_name = "FILE")]
    pub vendor_data: Option<PathBuf>,
}

pub fn run(a: &CloudInitArgs, rep: &Reporter) -> Result<()> {
    let opts = CloudInitOptions {
        cluster: a.cluster.clone(),
        node: a.node.clone(),
        out: a.out.clone(),
        seed: a.seed,
        recipe: a.recipe.clone(),
        cache_dir: a.cache_dir.clone(),
        restore: match (&a.restore_url, &a.restore_sha256) {
            (Some(url), Some(sha256)) => Some(Restore { url: url.clone(), sha256: sha256.clone() }),
            _ => None,
        },
        vendor_data: a.vendor_data.clone(),
    };
    crate::cloudinit::write(&opts, rep)
}
