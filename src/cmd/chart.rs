//! `imgbuild chart package`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::reporter::Reporter;

#[derive(Debug, clap::Subcommand)]
pub enum ChartCmd {
    /// Package a chart directory into a deterministic .tgz; prints its path
    Package(PackageArgs),
}

#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    /// Chart directory (contains Chart.yaml)
    pub dir: PathBuf,
    /// Output directory (created if missing)
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// mtime of every archive entry, in seconds since the epoch
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    pub source_date_epoch: u64,
}

pub fn run(c: &ChartCmd, rep: &Reporter) -> Result<()> {
    match c {
        ChartCmd::Package(a) => {
            let p = crate::chart::package_dir(&a.dir, a.source_date_epoch)?;
            let path = crate::chart::write_package(&p, &a.out)?;
            rep.status(format_args!("packaged {} {} ({} bytes)", p.name, p.version, p.bytes.len()));
            writeln!(std::io::stdout().lock(), "{}", path.display())?;
            Ok(())
        }
    }
}
