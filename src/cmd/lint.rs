//! `imgbuild lint`: one report across cloud-init, kubeadm, size budgets, image paths.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::lint::{LintFailed, LintOptions, Severity, Target};
use crate::reporter::Reporter;

#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// The cluster spec (secrets/ next to it are used to render missing user-data)
    #[arg(long)]
    pub cluster: PathBuf,
    /// Directory holding rendered `<node>/user-data` (default: the cluster.yaml's directory)
    #[arg(long)]
    pub rendered: Option<PathBuf>,
    /// Role image built by `imgbuild build` (repeatable; its manifest says the role)
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// Filesystem label of the images' root partition
    #[arg(long, default_value = "cloudimg-rootfs")]
    pub root_label: String,
    /// Targets whose user-data size budget applies (repeatable; default: all)
    #[arg(long, value_enum)]
    pub target: Vec<Target>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Recipe the control-plane image was built from: add-on overrides are checked against
    /// its add-ons (default: the embedded recipe)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Download cache whose add-on charts the overrides are checked against (default:
    /// $IMGBUILD_CACHE_DIR, else $XDG_CACHE_HOME/imgbuild, else ~/.cache/imgbuild)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl LintArgs {
    fn options(&self) -> LintOptions {
        LintOptions {
            cluster: self.cluster.clone(),
            rendered: self.rendered.clone(),
            image: self.image.clone(),
            root_label: self.root_label.clone(),
            target: self.target.clone(),
            recipe: self.recipe.clone(),
            cache_dir: self.cache_dir.clone(),
        }
    }
}

pub fn run(a: &LintArgs, rep: &Reporter) -> Result<()> {
    if !a.image.is_empty() {
        crate::tools::require(&[crate::tools::DEBUGFS, crate::tools::QEMU_IMG])?;
    }
    let r = crate::lint::lint(&a.options())?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
    } else {
        for f in &r.findings {
            let sev = if f.severity == Severity::Error { "error" } else { "warning" };
            let node = f.node.as_deref().map(|n| format!(" node {n}")).unwrap_or_default();
            let at = f.line.map(|l| format!(":{l}")).unwrap_or_default();
            writeln!(out, "{sev}[{}]{node}: {}{at}: {}", f.check, f.file, f.message)?;
        }
    }
    out.flush()?;
    rep.status(format_args!(
        "lint: {} node(s), {} image(s): {} error(s), {} warning(s)",
        r.nodes, r.images, r.errors, r.warnings
    ));
    if r.errors > 0 {
        return Err(LintFailed(r.errors).into());
    }
    Ok(())
}
