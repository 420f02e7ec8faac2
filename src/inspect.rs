//! `imgbuild inspect`: read /etc/imgbuild/manifest.json out of an image offline and
//! re-verify every listed file. (Being implemented.)

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::Global;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// qcow2 or raw image
    pub image: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(_a: &InspectArgs, _g: &Global) -> Result<()> {
    anyhow::bail!("imgbuild inspect: not implemented yet")
}
