//! `imgbuild inspect`: the manifest inside an image, re-verified entry by entry.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;

use crate::manifest::FileKind;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image built by imgbuild: qcow2, raw, vmdk, vhdx, vhd or ova
    pub image: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Filesystem label of the root partition
    #[arg(long, default_value = "cloudimg-rootfs")]
    pub root_label: String,
}

pub fn run(a: &InspectArgs) -> Result<()> {
    crate::tools::require(&[crate::tools::DEBUGFS, crate::tools::QEMU_IMG])?;
    let m = crate::inspect::inspect(&a.image, &a.root_label)?;
    let mut out = String::new();
    if a.json {
        out = serde_json::to_string_pretty(&m)?;
        out.push('\n');
    } else {
        let _ = writeln!(out, "recipe      {} ({})", m.recipe, m.recipe_digest);
        let _ = writeln!(out, "target      {} {} kubernetes {}", m.role, m.arch, m.kubernetes_version);
        let _ = writeln!(out, "imgbuild    {}", m.imgbuild_version);
        let _ = writeln!(out, "inputs      {}", m.inputs_digest);
        let _ = writeln!(out, "base        {} {} sha256 {}", m.base.name, m.base.version, m.base.sha256);
        for d in &m.artifacts {
            let _ = writeln!(out, "artifact    {} {} sha256 {}", d.name, d.version, d.sha256);
        }
        for f in &m.files {
            let what = match f.kind {
                FileKind::File => f.sha256.clone().unwrap_or_default(),
                FileKind::Dir => "directory".into(),
                FileKind::Symlink => format!("-> {}", f.target.as_deref().unwrap_or("")),
            };
            let _ = writeln!(out, "file        {} {}:{} {} {what}", f.mode, f.uid, f.gid, f.path);
        }
        let _ = writeln!(out, "verified    {} entries", m.files.len());
    }
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())?;
    Ok(())
}
