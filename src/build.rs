//! `imgbuild build`: plan → fetch → layer → disk → output. (Being implemented.)

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::Global;

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub source: crate::fetch::SourceArgs,
    /// Output directory
    #[arg(long, default_value = "out")]
    pub output: PathBuf,
}

pub fn run(_a: &BuildArgs, _g: &Global) -> Result<()> {
    let _debs = crate::apt::lock::build_check(&_a.source)?; // apt (issue 6): .deb downloads from <recipe>.lock
    anyhow::bail!("imgbuild build: not implemented yet")
}
