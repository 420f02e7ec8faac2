//! Verified, concurrent downloads into the [`crate::cache`]. (Being implemented.)

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::Global;
use crate::recipe::{Arch, Role};

/// Where artifacts come from: shared by `fetch` and `build`.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Recipe file (default: the embedded default recipe)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Node role
    #[arg(long, value_enum, default_value_t = Role::Worker)]
    pub role: Role,
    /// CPU architecture
    #[arg(long, value_enum, default_value_t = Arch::Amd64)]
    pub arch: Arch,
    /// Cache directory (default: $IMGBUILD_CACHE_DIR, else ~/.cache/imgbuild)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network; fail naming what the cache lacks
    #[arg(long)]
    pub offline: bool,
    /// Rewrite a URL prefix: FROM=TO (repeatable)
    #[arg(long = "mirror", value_name = "FROM=TO")]
    pub mirrors: Vec<String>,
    /// Concurrent downloads
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub source: SourceArgs,
}

pub fn run(_a: &FetchArgs, _g: &Global) -> Result<()> {
    anyhow::bail!("imgbuild fetch: not implemented yet")
}

/// A URL prefix rewrite (`--mirror FROM=TO`, or `IMGBUILD_MIRROR="FROM=TO FROM=TO"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub from: String,
    pub to: String,
}

/// How to fetch, independent of the CLI.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    pub offline: bool,
    pub mirrors: Vec<Mirror>,
    pub jobs: usize,
    pub quiet: bool,
}

/// Ensure every item is in the cache, verified; returns the blob paths in `items`
/// order. API used by `imgbuild build`.
pub fn fetch_items(
    _items: &[&crate::plan::Item],
    _cache: &crate::cache::Cache,
    _opts: &FetchOptions,
) -> Result<Vec<PathBuf>> {
    anyhow::bail!("fetch: not implemented yet")
}
