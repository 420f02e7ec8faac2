//! Helm chart tooling (`imgbuild chart package`). (Being implemented.)

use anyhow::Result;

use crate::cli::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ChartCmd {
    /// Package a chart directory into a deterministic .tgz
    Package,
}

pub fn run(_c: &ChartCmd, _g: &Global) -> Result<()> {
    anyhow::bail!("imgbuild chart: not implemented yet")
}
