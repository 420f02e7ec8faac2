//! `imgbuild recipe list|show`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::plan::Plan;
use crate::recipe;
use crate::types::{Arch, Role};

#[derive(Debug, Subcommand)]
pub enum RecipeCmd {
    /// List the recipes embedded in this binary
    List,
    /// Show the resolved plan: every artifact with its final URLs and sha256
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Recipe file (default: the embedded default recipe)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Node role
    #[arg(long, value_enum, default_value_t = Role::Worker)]
    pub role: Role,
    /// CPU architecture
    #[arg(long, value_enum, default_value_t = Arch::Amd64)]
    pub arch: Arch,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: &RecipeCmd) -> Result<()> {
    match c {
        RecipeCmd::List => list(),
        RecipeCmd::Show(a) => show(a),
    }
}

fn list() -> Result<()> {
    let mut out = std::io::stdout().lock();
    for name in recipe::embedded_names() {
        let r = recipe::load_embedded(&name)?;
        let default = if name == recipe::DEFAULT_RECIPE { " (default)" } else { "" };
        let arches: Vec<_> = r.recipe.arches.iter().map(|a| a.as_str()).collect();
        writeln!(
            out,
            "{name}{default}\tkubernetes {}\t{}\t{}",
            r.recipe.kubernetes_version,
            arches.join(","),
            r.recipe.description
        )?;
    }
    Ok(())
}

fn show(a: &ShowArgs) -> Result<()> {
    let r = recipe::load(a.recipe.as_deref())?;
    let plan = Plan::resolve(&r, a.role, a.arch)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &plan)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "recipe   {} ({})", plan.recipe, r.origin)?;
    writeln!(out, "digest   {}", plan.recipe_digest)?;
    writeln!(out, "target   {} {} kubernetes {}", plan.role, plan.arch, plan.kubernetes_version)?;
    for item in plan.downloads() {
        writeln!(out, "\n{} {}\n  sha256 {}", item.name, item.version, item.sha256)?;
        for u in &item.urls {
            writeln!(out, "  url    {u}")?;
        }
        for i in &item.install {
            let from = i.from.as_deref().map(|f| format!("{f} -> ")).unwrap_or_default();
            writeln!(out, "  file   {from}{} ({:04o})", i.to, i.mode)?;
        }
    }
    Ok(())
}
