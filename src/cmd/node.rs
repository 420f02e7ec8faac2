//! `imgbuild node remove`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::cluster::remove;
use crate::reporter::Reporter;

#[derive(Debug, clap::Subcommand)]
pub enum NodeCmd {
    /// Cordon and drain a node (Eviction API, PodDisruptionBudgets respected), remove its etcd
    /// member if it is a control plane (refused when that would break quorum), delete the Node
    Remove(RemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The Node's name
    pub name: String,
    /// Kubeconfig of a cluster admin (e.g. from `imgbuild cluster kubeconfig`)
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Context in the kubeconfig (default: its current-context)
    #[arg(long)]
    pub context: Option<String>,
    /// The cluster spec, whose secrets/ hold the etcd CA (required for a control plane)
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Also delete pods that no controller manages (like kubectl drain --force)
    #[arg(long)]
    pub force: bool,
    /// Seconds the drain may take (PodDisruptionBudgets, grace periods)
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
}

pub fn run(c: &NodeCmd, rep: &Reporter) -> Result<()> {
    match c {
        NodeCmd::Remove(a) => {
            let o = remove::RemoveOptions {
                name: a.name.clone(),
                kubeconfig: a.kubeconfig.clone(),
                context: a.context.clone(),
                cluster: a.cluster.clone(),
                force: a.force,
                timeout: Duration::from_secs(a.timeout),
            };
            remove::remove(&o, rep)?;
            writeln!(std::io::stdout().lock(), "{}", a.name)?;
            Ok(())
        }
    }
}
