//! `imgbuild recipe list|show`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::plan::{BuildPlan, PackagePlan, PlanOptions};
use crate::recipe;
use crate::types::{size, Arch, Role};

#[derive(Debug, Subcommand)]
pub enum RecipeCmd {
    /// List the recipes embedded in this binary
    List(ListArgs),
    /// Show the build plan: every download with its final URLs and sha256, packages, output
    Show(ShowArgs),
}

/// Which recipe, role and arch a command plans for (`recipe show`, `fetch`, `build`).
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Recipe file (default: the embedded default recipe)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Node role
    #[arg(long, value_enum, default_value_t = Role::Worker)]
    pub role: Role,
    /// CPU architecture
    #[arg(long, value_enum, default_value_t = Arch::Amd64)]
    pub arch: Arch,
    /// Carry this add-on profile's charts in the control-plane image (repeatable); a
    /// cluster then turns it on with `addons.profiles` in cluster.yaml
    #[arg(long = "profile", value_enum)]
    pub profiles: Vec<crate::types::Profile>,
}

impl TargetArgs {
    pub fn load(&self) -> Result<recipe::LoadedRecipe, recipe::RecipeError> {
        recipe::load(self.recipe.as_deref())
    }

    /// Plan options for this target, the rest at `build`'s defaults.
    /// Signatures: the dl.k8s.io files' cosign signatures against the embedded
    /// Sigstore root (`build --cosign-trust-root` replaces the root).
    pub fn plan_options(&self) -> PlanOptions {
        let cosign = crate::verify::cosign::kubernetes_release_policy(crate::plan::TrustRootSource::Embedded);
        PlanOptions {
            recipe_path: self.recipe.clone(),
            signatures: crate::plan::SignaturePolicy { cosign: Some(cosign) },
            profiles: self.profiles.clone(),
            ..PlanOptions::new(self.role, self.arch)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: &RecipeCmd) -> Result<()> {
    match c {
        RecipeCmd::List(a) => list(a),
        RecipeCmd::Show(a) => show(a),
    }
}

/// One embedded recipe, as `recipe list` prints it.
#[derive(serde::Serialize)]
struct Listed {
    name: String,
    default: bool,
    kubernetes_version: String,
    arches: Vec<&'static str>,
    description: String,
}

fn list(a: &ListArgs) -> Result<()> {
    let mut rows = Vec::new();
    for name in recipe::embedded_names() {
        let r = recipe::load_embedded(&name)?;
        rows.push(Listed {
            default: name == recipe::DEFAULT_RECIPE,
            name,
            kubernetes_version: r.recipe.kubernetes_version.to_string(),
            arches: r.recipe.arches.iter().map(|a| a.as_str()).collect(),
            description: r.recipe.description.clone(),
        });
    }
    super::emit(a.json, &rows, |out| {
        for r in &rows {
            let default = if r.default { " (default)" } else { "" };
            writeln!(
                out,
                "{}{default}\tkubernetes {}\t{}\t{}",
                r.name,
                r.kubernetes_version,
                r.arches.join(","),
                r.description
            )?;
        }
        Ok(())
    })
}

fn show(a: &ShowArgs) -> Result<()> {
    let r = a.target.load()?;
    print_plan(&BuildPlan::resolve(&r, &a.target.plan_options())?, a.json)
}

/// The plan on stdout: pretty JSON, or one line per fact and a block per download.
pub fn print_plan(plan: &BuildPlan, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, plan)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "recipe   {} ({})", plan.recipe, plan.recipe_origin)?;
    writeln!(out, "digest   {}", plan.recipe_digest)?;
    writeln!(out, "target   {} {} kubernetes {}", plan.role, plan.arch, plan.kubernetes_version)?;
    let o = &plan.output;
    let size = o.disk_size.map_or("the base image's, grown when the layer does not fit".into(), size::human);
    writeln!(
        out,
        "output   {} (disk size: {size})",
        o.dir.join(format!("{}.{}", o.stem, o.format)).display()
    )?;
    match &plan.packages {
        PackagePlan::None => writeln!(out, "packages none")?,
        PackagePlan::Locked { lock_file, items } => {
            writeln!(out, "packages {} from {}", items.len(), lock_file.display())?
        }
        PackagePlan::Unresolved { lock_file, requested } => writeln!(
            out,
            "packages {} (no lock file {}: resolved against the archive when building)",
            requested.join(", "),
            lock_file.display()
        )?,
    }
    match &plan.signatures.cosign {
        None => writeln!(out, "signatures none checked")?,
        Some(c) => writeln!(
            out,
            "signatures cosign {} ({}) for {}{}, trust root {}",
            c.identity,
            c.issuer,
            c.hosts.join(" "),
            if c.unsigned.is_empty() {
                String::new()
            } else {
                format!(" except {} (signature: none)", c.unsigned.join(", "))
            },
            c.trust_root
        )?,
    }
    for a in &plan.addons {
        writeln!(
            out,
            "add-on   {} {} as {} in {} (order {})",
            a.name, a.version, a.release, a.namespace, a.order
        )?;
    }
    for img in &plan.images {
        match &img.resolved {
            None => writeln!(
                out,
                "image    {} (no lock entry: resolved when building, from the cache when pinned and \
                 cached, else the registry)",
                img.reference
            )?,
            Some(r) => writeln!(
                out,
                "image    {} -> {} ({} manifest {}, from the {})",
                img.reference,
                r.digest,
                plan.arch,
                r.manifest.digest,
                r.source.as_str()
            )?,
        }
    }
    for item in plan.items() {
        writeln!(
            out,
            "\n{} {}\n  {:<6} {}\n  sha256 {}",
            item.name, item.version, "kind", item.kind, item.sha256
        )?;
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
