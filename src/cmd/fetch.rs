//! `imgbuild fetch`, and the download options `build` shares with it.

use std::path::PathBuf;

use anyhow::Result;

use crate::cache::Cache;
use crate::fetch::{FetchError, FetchOptions, Mirror, MAX_JOBS};
use crate::plan::{BuildPlan, Item};
use crate::reporter::Reporter;

/// Environment variable with space-separated `FROM=TO` mirrors (after `--mirror`s).
pub const MIRROR_ENV: &str = "IMGBUILD_MIRROR";

/// What to fetch and where from: shared by `fetch` and `build`.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub target: super::recipe::TargetArgs,
    /// Cache directory (default: $IMGBUILD_CACHE_DIR, else $XDG_CACHE_HOME/imgbuild, else
    /// ~/.cache/imgbuild)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network; fail naming what the cache lacks
    #[arg(long)]
    pub offline: bool,
    /// Rewrite a URL prefix: FROM=TO (repeatable; also $IMGBUILD_MIRROR="FROM=TO ...")
    #[arg(long = "mirror", value_name = "FROM=TO")]
    pub mirrors: Vec<String>,
    /// Concurrent downloads (1 to 64)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=MAX_JOBS as i64))]
    pub jobs: u16,
}

impl SourceArgs {
    /// The cache named by `--cache-dir`, else `$IMGBUILD_CACHE_DIR`, else the XDG default,
    /// used shared (waiting, with a message, while a `cache prune` runs).
    pub fn cache(&self, rep: &Reporter) -> Result<Cache> {
        super::cache::open(self.cache_dir.as_deref(), crate::cache::Access::Shared, rep, false)
    }

    /// `--mirror`s first, then `$IMGBUILD_MIRROR`; bad input is exit 2.
    pub fn fetch_options(&self) -> Result<FetchOptions, FetchError> {
        Ok(FetchOptions { offline: self.offline, mirrors: mirrors(&self.mirrors)?, jobs: self.jobs.into() })
    }
}

/// `--mirror FROM=TO` flags, then the space-separated `$IMGBUILD_MIRROR`.
pub fn mirrors(flags: &[String]) -> Result<Vec<Mirror>, FetchError> {
    let env = std::env::var(MIRROR_ENV).unwrap_or_default();
    Ok(Mirror::parse_all(flags.iter().map(String::as_str).chain(env.split_whitespace()))?)
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print JSON instead of one line per download
    #[arg(long)]
    pub json: bool,
}

/// One verified download in the cache, as `fetch` prints it.
#[derive(serde::Serialize)]
struct Fetched<'a> {
    name: &'a str,
    sha256: &'a str,
    path: &'a std::path::Path,
}

/// `imgbuild fetch`: resolve the plan, fetch every download (the base, the artifacts, the
/// locked packages, the images' blobs), print one line per download.
pub fn run(a: &FetchArgs, rep: &Reporter) -> Result<()> {
    let opts = a.source.fetch_options()?;
    let t = &a.source.target;
    let mut plan = BuildPlan::resolve(&t.load()?, &t.plan_options())?;
    let cache = a.source.cache(rep)?;
    crate::build::resolve_images(&mut plan, &cache, &opts, rep)?;
    let items: Vec<&Item> = plan.items().collect();
    let fetched = crate::fetch::fetch(&items, &cache, &opts, rep)?;
    // The signature files too, so that an --offline build can verify them (it always
    // verifies them; which root it trusts is the build's choice, not fetch's).
    if let (Some(cosign), false) = (&plan.signatures.cosign, opts.offline) {
        let src = crate::verify::cosign::SignatureSource {
            mirrors: opts.mirrors.clone(),
            offline: false,
            cache: Some(cache.clone()),
        };
        crate::verify::cosign::fetch_signatures(&plan, cosign, &src, rep)?;
    }
    let rows: Vec<Fetched> = items
        .iter()
        .filter_map(|item| {
            let path = fetched.get(item)?;
            Some(Fetched { name: &item.name, sha256: item.sha256.as_str(), path })
        })
        .collect();
    super::emit(a.json, &rows, |out| {
        for r in &rows {
            writeln!(out, "{}  {}  {}", r.sha256, r.path.display(), r.name)?;
        }
        Ok(())
    })
}
