//! `imgbuild cache list|prune`: see what the download cache holds, and trim it to what
//! some recipes need.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::cache::{Access, Cache, Entry, EntryKind};
use crate::reporter::{human_bytes, Reporter};
use crate::types::Sha256;

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// Show what the download cache holds: each blob, archive member, signature and
    /// partial download with its digest, size and what it is, and totals
    List(ListArgs),
    /// Remove from the cache everything the given recipes do not need to build every role
    /// with every add-on profile (default: the embedded default recipe), or everything
    /// with --all
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Cache directory (default: $IMGBUILD_CACHE_DIR, else $XDG_CACHE_HOME/imgbuild, else
    /// ~/.cache/imgbuild)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Cache directory (default: $IMGBUILD_CACHE_DIR, else $XDG_CACHE_HOME/imgbuild, else
    /// ~/.cache/imgbuild)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Keep what this recipe (with its lock file) needs (repeatable; default: the
    /// embedded default recipe)
    #[arg(long = "recipe", value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
    /// Remove everything: empty the cache
    #[arg(long, conflicts_with = "recipes")]
    pub all: bool,
    /// Print what would be removed; remove nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse (exit 1) instead of waiting while a build or fetch uses the cache
    #[arg(long)]
    pub no_wait: bool,
    /// Print JSON instead of one line per removed entry
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: &CacheCmd, rep: &Reporter) -> Result<()> {
    match c {
        CacheCmd::List(a) => list(a, rep),
        CacheCmd::Prune(a) => prune(a, rep),
    }
}

/// Counts and bytes per kind of entry.
#[derive(Debug, Default, serde::Serialize)]
struct Totals {
    blobs: usize,
    blob_bytes: u64,
    members: usize,
    member_bytes: u64,
    partial: usize,
    partial_bytes: u64,
    signatures: usize,
    signature_bytes: u64,
    unknown: usize,
    unknown_bytes: u64,
    /// Every file, stamps, lock files and member indexes included.
    bytes: u64,
}

impl Totals {
    fn of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Totals {
        let mut t = Totals::default();
        for e in entries {
            t.bytes += e.size;
            let (n, b) = match e.kind {
                EntryKind::Blob => (&mut t.blobs, &mut t.blob_bytes),
                EntryKind::Member => (&mut t.members, &mut t.member_bytes),
                EntryKind::Partial => (&mut t.partial, &mut t.partial_bytes),
                EntryKind::Signature => (&mut t.signatures, &mut t.signature_bytes),
                EntryKind::Unknown => (&mut t.unknown, &mut t.unknown_bytes),
                EntryKind::Stamp | EntryKind::Lock | EntryKind::Index => continue,
            };
            *n += 1;
            *b += e.size;
        }
        t
    }

    fn line(&self) -> String {
        format!(
            "{} blobs ({}), {} archive members ({}), {} partial downloads ({}), {} signature files, \
             {} unknown ({}); {} in all",
            self.blobs,
            human_bytes(self.blob_bytes),
            self.members,
            human_bytes(self.member_bytes),
            self.partial,
            human_bytes(self.partial_bytes),
            self.signatures,
            self.unknown,
            human_bytes(self.unknown_bytes),
            human_bytes(self.bytes),
        )
    }
}

/// `cache list --json`.
#[derive(serde::Serialize)]
struct Listing<'a> {
    cache: &'a Path,
    entries: Vec<&'a Entry>,
    totals: Totals,
}

/// One table row: kind, digest (or `-`), size, what (an unnamed entry: its path too).
fn row(out: &mut dyn Write, e: &Entry) -> std::io::Result<()> {
    let sha = e.sha256.as_ref().map_or("-", Sha256::as_str);
    let what = match e.kind {
        EntryKind::Unknown => format!("{} ({})", e.what, e.path.display()),
        _ => e.what.clone(),
    };
    writeln!(out, "{:<9} {sha:<64} {:>10}  {what}", e.kind.as_str(), human_bytes(e.size))
}

/// The cache `--cache-dir` names, when it exists; a missing one is an empty cache (and
/// is not created by looking at it).
fn existing(dir: Option<&Path>, access: Access, rep: &Reporter, no_wait: bool) -> Result<Option<Cache>> {
    let root = Cache::dir(dir);
    match std::fs::symlink_metadata(&root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading cache directory {}", root.display())),
        Ok(_) => open(dir, access, rep, no_wait).map(Some),
    }
}

/// Open (and create) the cache `--cache-dir` names for `access`. While another process
/// uses it in a conflicting way (a prune, or builds while pruning), say so on stderr and
/// wait; with `no_wait`, refuse instead (exit 1).
pub(super) fn open(dir: Option<&Path>, access: Access, rep: &Reporter, no_wait: bool) -> Result<Cache> {
    let root = Cache::dir(dir);
    let who = match access {
        Access::Exclusive => "another imgbuild process (a build, fetch or lock)",
        Access::Shared => "`imgbuild cache prune`",
    };
    let mut busy = |lock: &Path| {
        if no_wait {
            return Err(std::io::Error::other(format!(
                "the cache is in use by {who} (it holds {}); run again when it is done",
                lock.display()
            )));
        }
        rep.status(format_args!(
            "cache {}: in use by {who} (it holds {}); waiting for it to finish",
            root.display(),
            lock.display()
        ));
        Ok(())
    };
    Cache::open_as(dir, access, &mut busy)
        .with_context(|| format!("opening cache directory {}", root.display()))
}

fn list(a: &ListArgs, rep: &Reporter) -> Result<()> {
    let root = Cache::dir(a.cache_dir.as_deref());
    let inv = match existing(a.cache_dir.as_deref(), Access::Shared, rep, false)? {
        Some(c) => c.scan(&crate::layer::artifacts::index_members)?,
        None => Default::default(),
    };
    let shown: Vec<&Entry> = inv.entries.iter().filter(|e| !e.kind.is_bookkeeping()).collect();
    let data = Listing { cache: &root, totals: Totals::of(&inv.entries), entries: shown };
    super::emit(a.json, &data, |out| {
        if !data.entries.is_empty() {
            writeln!(out, "{:<9} {:<64} {:>10}  WHAT", "KIND", "SHA256", "SIZE")?;
        }
        for e in &data.entries {
            row(out, e)?;
        }
        writeln!(out, "total: {}", data.totals.line())
    })
}

/// `cache prune --json`.
#[derive(serde::Serialize)]
struct Pruned<'a> {
    cache: &'a Path,
    dry_run: bool,
    /// The recipes whose needs were kept (`embedded:NAME` or the file); empty with `--all`.
    recipes: Vec<String>,
    removed: &'a [Entry],
    removed_totals: Totals,
    /// Bytes removed (with `--dry-run`: that would be).
    freed: u64,
}

fn prune(a: &PruneArgs, rep: &Reporter) -> Result<()> {
    // The recipes first: a bad one is exit 2 before the cache is waited for or touched.
    let recipes: Vec<(crate::recipe::LoadedRecipe, Option<&Path>)> = if a.all {
        Vec::new()
    } else if a.recipes.is_empty() {
        vec![(crate::recipe::load(None)?, None)]
    } else {
        a.recipes
            .iter()
            .map(|r| Ok((crate::recipe::load(Some(r))?, Some(r.as_path()))))
            .collect::<Result<_>>()?
    };
    let root = Cache::dir(a.cache_dir.as_deref());
    let removed = match existing(a.cache_dir.as_deref(), Access::Exclusive, rep, a.no_wait)? {
        None => Vec::new(),
        Some(cache) => {
            let mut keep = BTreeSet::new();
            for (lr, path) in &recipes {
                let (needs, unpinned) = crate::build::cache_needs(lr, *path, &cache)?;
                for why in unpinned {
                    rep.warn(format_args!(
                        "warning: the cache keeps nothing for what the lock does not pin: {why}"
                    ));
                }
                keep.extend(needs);
            }
            cache.prune(&keep, &crate::layer::artifacts::index_members, a.dry_run)?
        }
    };
    let totals = Totals::of(&removed);
    let data = Pruned {
        cache: &root,
        dry_run: a.dry_run,
        recipes: recipes.iter().map(|(lr, _)| lr.origin.clone()).collect(),
        removed: &removed,
        freed: totals.bytes,
        removed_totals: totals,
    };
    let verb = if a.dry_run { "would remove" } else { "removed" };
    super::emit(a.json, &data, |out| {
        for e in removed.iter().filter(|e| !e.kind.is_bookkeeping()) {
            write!(out, "{verb} ")?;
            row(out, e)?;
        }
        writeln!(out, "{verb}: {}", data.removed_totals.line())
    })
}
