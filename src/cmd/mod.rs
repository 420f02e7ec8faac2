//! The command layer: every clap type, the dispatch, the reporter each command gets, and
//! the mapping from an error to an exit code. One file per subcommand; each turns its
//! arguments into the typed options of the library modules below and prints the result
//! (data on stdout, everything else through the [`Reporter`]). Nothing below this module
//! knows about the command line.

mod build;
mod cache;
mod chart;
mod cloud_init;
mod cluster;
mod fetch;
mod inspect;
mod lint;
mod lock;
mod manual;
mod node;
mod recipe;
mod upload;
mod values;
mod verify;

pub use build::check_reproducible;

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::exit::{Classify, Code};
use crate::reporter::Reporter;

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
    Recipe(recipe::RecipeCmd),
    /// Download and verify everything a role image needs into the cache
    Fetch(fetch::FetchArgs),
    /// See the download cache, or prune it to what some recipes need
    #[command(subcommand)]
    Cache(cache::CacheCmd),
    /// Build a role image: verified base + Kubernetes layer + hardening
    Build(build::BuildArgs),
    /// Read and re-verify the manifest inside an image
    Inspect(inspect::InspectArgs),
    /// Generate a cluster's spec and secrets, or an admin kubeconfig
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Render per-node cloud-init (user-data, meta-data, network-config, seed)
    CloudInit(cloud_init::CloudInitArgs),
    /// Helm chart tooling
    #[command(subcommand)]
    Chart(chart::ChartCmd),
    /// Resolve the recipe's Ubuntu packages and container images into <recipe>.lock
    Lock(lock::LockArgs),
    /// Verify the base image's signed SHA256SUMS (Ubuntu key) and check or write the recipe digest
    BaseDigest(verify::BaseDigestArgs),
    /// Verify a cosign keyless signature (.sig + .cert) over a file, offline
    VerifyBlob(verify::VerifyBlobArgs),
    /// Verify a built image: checksum sidecar, in-image manifest (every file), sidecar manifest
    Verify(verify::VerifyImageArgs),
    /// Lint a cluster across layers: user-data schema, kubeadm config, size budgets, image paths
    Lint(lint::LintArgs),
    /// Day-2 node operations on a running cluster
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Upload a built image to libvirt, OpenStack Glance or Proxmox VE; prints the target's id
    Upload(upload::UploadArgs),
    /// Print a shell completion script (bash, zsh, fish)
    Completions(manual::CompletionsArgs),
    /// Print the man page, or write one page per command with --out DIR
    Man(manual::ManArgs),
}

/// Entry point of the binary: parse, run, print the error chain, map it to an exit code.
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
            // Nowhere to report a failure to print the error: the exit code still says it.
            let _ = std::io::stderr().lock().write_all(render_error(&e).as_bytes());
            code_for(&e).into()
        }
    }
}

/// Run one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let rep = Reporter::new(cli.global.quiet);
    // A bad timeout or retry setting is bad input before anything starts.
    crate::net::Settings::from_env()?;
    match cli.cmd {
        Cmd::Recipe(c) => recipe::run(&c),
        Cmd::Fetch(a) => fetch::run(&a, &rep),
        Cmd::Cache(c) => cache::run(&c, &rep),
        Cmd::Build(a) => build::run(&a, &rep),
        Cmd::Inspect(a) => inspect::run(&a),
        Cmd::Cluster(c) => cluster::run(&c, &rep),
        Cmd::CloudInit(a) => cloud_init::run(&a, &rep),
        Cmd::Chart(c) => chart::run(&c, &rep),
        Cmd::Lock(a) => lock::run(&a, &rep),
        Cmd::BaseDigest(a) => verify::run_base_digest(&a, &rep),
        Cmd::VerifyBlob(a) => verify::run_verify_blob(&a, &rep),
        Cmd::Verify(a) => verify::run_verify_image(&a, &rep),
        Cmd::Lint(a) => lint::run(&a, &rep),
        Cmd::Upload(a) => upload::run(&a, &rep),
        Cmd::Completions(a) => manual::completions(&a),
        Cmd::Man(a) => manual::man(&a),
        Cmd::Node(c) => node::run(&c, &rep),
    }
}

/// Print a command's data on stdout: pretty JSON with `--json` (one document, for
/// scripts), else its text form (for people and `cut`).
fn emit<T: serde::Serialize>(
    json: bool,
    data: &T,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, data)?;
        writeln!(out)?;
    } else {
        text(&mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// The error as cargo prints one: `error: …`, then each underlying cause on its own
/// line under `Caused by:`. A cause whose text the previous message already contains
/// (an error that prints its source inline) is not repeated.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut links = Vec::new();
    for link in e.chain() {
        let msg = link.to_string();
        if links.last().is_some_and(|prev: &String| prev.contains(&msg)) {
            continue;
        }
        links.push(msg);
    }
    let mut s = String::new();
    let mut it = links.iter();
    let _ = writeln!(s, "error: {}", it.next().map(String::as_str).unwrap_or("unknown error"));
    let causes: Vec<&String> = it.collect();
    if !causes.is_empty() {
        s.push_str("\nCaused by:\n");
        for c in causes {
            let _ = writeln!(s, "  {}", c.replace('\n', "\n  "));
        }
    }
    // The last line of defence: whatever error quoted a URL, its credentials stay out.
    crate::net::redact(&s)
}

/// Try each known error type against one link of the chain.
macro_rules! classify_as {
    ($e:expr, $($t:ty),* $(,)?) => {{
        $( if let Some(x) = $e.downcast_ref::<$t>() { return Some(x.code()); } )*
    }};
}

fn classify_one(e: &(dyn std::error::Error + 'static)) -> Option<Code> {
    // Every module that defines an error enum adds it here.
    classify_as!(e, crate::exit::Classified, crate::recipe::RecipeError, crate::tools::ToolError);
    classify_as!(e, crate::plan::PlanError, crate::lockfile::LockError, crate::output::OutputError);
    classify_as!(e, crate::fetch::FetchError, crate::cache::CacheError);
    classify_as!(e, crate::layer::LayerError);
    classify_as!(e, crate::chart::ChartError);
    classify_as!(e, crate::disk::DiskError);
    classify_as!(e, crate::cluster::ClusterError, crate::cloudinit::CloudInitError);
    classify_as!(e, crate::apt::AptError);
    classify_as!(e, crate::oci::OciError);
    classify_as!(e, crate::verify::VerifyError, crate::lint::LintFailed);
    classify_as!(e, crate::upload::UploadError, crate::upload::proxmox::ProxmoxError);
    classify_as!(e, crate::upload::libvirt::LibvirtError);
    classify_as!(e, crate::upload::glance::GlanceError);
    classify_as!(e, crate::kube::KubeError, crate::kube::node::DrainError, crate::etcd::EtcdError);
    classify_as!(e, crate::net::NetError);
    if e.downcast_ref::<clap::Error>().is_some() {
        return Some(Code::Input);
    }
    None
}

/// The exit code for an error: the first classified link of the chain wins, so context
/// added at the edges never hides an integrity failure behind a generic 1; else runtime.
pub fn code_for(err: &anyhow::Error) -> Code {
    for link in err.chain() {
        if let Some(c) = classify_one(link) {
            return c;
        }
    }
    Code::Runtime
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_as_a_chain() {
        let e = anyhow::Error::new(std::io::Error::other("disk full"))
            .context("writing out/x.qcow2")
            .context("building worker");
        assert_eq!(
            render_error(&e),
            "error: building worker\n\nCaused by:\n  writing out/x.qcow2\n  disk full\n"
        );
        assert_eq!(render_error(&anyhow::anyhow!("plain")), "error: plain\n");
        // A message that already carries its cause does not repeat it.
        let e = anyhow::Error::new(crate::exit::Classified::input("bad: disk full"));
        assert_eq!(render_error(&e.context("x")), "error: x\n\nCaused by:\n  bad: disk full\n");
    }

    #[test]
    fn the_first_classified_link_decides() {
        let e = anyhow::Error::new(crate::exit::Classified::integrity("mismatch")).context("building");
        assert_eq!(code_for(&e), Code::Integrity);
        assert_eq!(code_for(&anyhow::anyhow!("unclassified")), Code::Runtime);
    }
}
