//! Cluster spec and secrets (`imgbuild cluster …`). (Being implemented.)

use anyhow::Result;

use crate::cli::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Write cluster.yaml and generate the cluster's secrets once
    Init,
}

pub fn run(_c: &ClusterCmd, _g: &Global) -> Result<()> {
    anyhow::bail!("imgbuild cluster: not implemented yet")
}
