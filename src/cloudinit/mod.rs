//! Per-node cloud-init rendering (`imgbuild cloud-init`). (Being implemented.)

use anyhow::Result;

use crate::cli::Global;

#[derive(Debug, clap::Args)]
pub struct CloudInitArgs {}

pub fn run(_a: &CloudInitArgs, _g: &Global) -> Result<()> {
    anyhow::bail!("imgbuild cloud-init: not implemented yet")
}
