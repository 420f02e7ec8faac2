//! Command line: clap types and dispatch only. Each subcommand's arguments live
//! next to the code that runs it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::exit::{code_for, Code};
use crate::plan::Plan;
use crate::recipe::{self, Arch, Role};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime failure (network, I/O, missing tool, failed external command)
  2  invalid input (command line, recipe, cluster spec)
  3  integrity failure (digest or signature mismatch)";

#[derive(Debug, Parser)]
#[command(name = "imgbuild", version, about, after_help = EXIT_CODES, help_expected = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// No progress output on stderr (errors are still printed)
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List embedded recipes or show a resolved plan
    #[command(subcommand)]
    Recipe(RecipeCmd),
    /// Download and verify everything a role image needs into the cache
    Fetch(crate::fetch::FetchArgs),
    /// Build a role image: verified base + Kubernetes layer + hardening
    Build(crate::build::BuildArgs),
    /// Read and re-verify the manifest inside an image
    Inspect(crate::inspect::InspectArgs),
    /// Generate a cluster's spec and secrets, or an admin kubeconfig
    #[command(subcommand)]
    Cluster(crate::cluster::ClusterCmd),
    /// Render per-node cloud-init (user-data, meta-data, network-config, seed)
    CloudInit(crate::cloudinit::CloudInitArgs),
    /// Helm chart tooling
    #[command(subcommand)]
    Chart(crate::chart::ChartCmd),
    /// Resolve the recipe's Ubuntu packages and container images into <recipe>.lock
    Lock(crate::apt::LockArgs),
    /// Verify the base image's signed SHA256SUMS (Ubuntu key) and check or write the recipe digest
    BaseDigest(crate::verify::BaseDigestArgs),
    /// Verify a cosign keyless signature (.sig + .cert) over a file, offline
    VerifyBlob(crate::verify::VerifyBlobArgs),
    /// Verify a built image: checksum sidecar, in-image manifest (every file), sidecar manifest
    Verify(crate::verify::VerifyImageArgs),
    /// Lint a cluster across layers: user-data schema, kubeadm config, size budgets, image paths
    Lint(crate::lint::LintArgs),
    /// Upload a built image to libvirt, OpenStack Glance or Proxmox VE; prints the target's id
    Upload(crate::upload::UploadArgs),
}

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

/// Entry point of the binary: parse, run, map the error to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { Code::Input.into() } else { Code::Ok.into() };
        }
    };
    match run(cli) {
        Ok(()) => Code::Ok.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            code_for(&e).into()
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Recipe(RecipeCmd::List) => recipe_list(),
        Cmd::Recipe(RecipeCmd::Show(a)) => recipe_show(&a),
        Cmd::Fetch(a) => crate::fetch::run(&a, g),
        Cmd::Build(a) => crate::build::run(&a, g),
        Cmd::Inspect(a) => crate::inspect::run(&a, g),
        Cmd::Cluster(c) => crate::cluster::run(&c, g),
        Cmd::CloudInit(a) => crate::cloudinit::run(&a, g),
        Cmd::Chart(c) => crate::chart::run(&c, g),
        Cmd::Lock(a) => crate::apt::run_lock(&a, g),
        Cmd::BaseDigest(a) => crate::verify::run_base_digest(&a, g),
        Cmd::VerifyBlob(a) => crate::verify::run_verify_blob(&a, g),
        Cmd::Verify(a) => crate::verify::run_verify_image(&a, g),
        Cmd::Lint(a) => crate::lint::run(&a, g),
        Cmd::Upload(a) => crate::upload::run(&a, g),
    }
}

fn recipe_list() -> Result<()> {
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

fn recipe_show(a: &ShowArgs) -> Result<()> {
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
