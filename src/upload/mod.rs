//! `imgbuild upload`: put a built image where VMs boot from it.
//!
//! TEMPORARY minimal version from the glance branch (UPLOAD-INTERFACE.md): the upload
//! helper's mod.rs and CLI replace everything below the shared part at merge.
use std::path::PathBuf;

/// What an upload needs to know about a built image, read from its sidecars
/// (`<stem>.manifest.json` and `<image>.sha256` beside the image; see src/output.rs).
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The image file.
    pub path: PathBuf,
    /// qcow2 | raw | vmdk | vhdx | vhd | ova, from the file extension.
    pub format: String,
    pub size: u64,
    /// sha256 of the image file, verified against `<image>.sha256` before any byte is sent.
    pub sha256: String,
    /// Stable name: `<recipe>-<role>-<arch>-<first 12 hex digits of sha256>`.
    pub name: String,
    pub recipe: String,
    pub role: String,
    pub arch: String,
    pub k8s_version: String,
    pub imgbuild_version: String,
}

/// What happened at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Uploaded now; `id` is the target's identifier (volume path, Glance image id, PVE volid).
    Uploaded { id: String },
    /// An image with this name and sha256 already existed; nothing was sent.
    AlreadyPresent { id: String },
}

pub mod glance;

// ---- temporary (glance branch): minimal CLI and ImageInfo reader --------------------------

use anyhow::{Context, Result};

use crate::exit::Classified;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Glance,
}

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// Where to upload
    #[arg(long, value_enum)]
    pub target: Target,
    /// The built image (its `.sha256` and `.manifest.json` sidecars must sit beside it)
    pub image: PathBuf,
    #[command(flatten)]
    pub glance: glance::GlanceArgs,
}

impl ImageInfo {
    /// Read the sidecars and verify the image's sha256 against `<image>.sha256`.
    pub fn from_image(path: &std::path::Path) -> Result<ImageInfo> {
        let file_name = path.file_name().and_then(|n| n.to_str()).context("image path has no file name")?;
        let (stem, format) = file_name.rsplit_once('.').context("image file has no extension")?;
        let sums = std::fs::read_to_string(format!("{}.sha256", path.display()))
            .with_context(|| format!("reading {}.sha256", path.display()))?;
        let expected = sums.split_whitespace().next().unwrap_or("").to_string();
        let man_path = path.with_file_name(format!("{stem}.manifest.json"));
        let man: crate::manifest::Manifest = serde_json::from_slice(
            &std::fs::read(&man_path).with_context(|| format!("reading {}", man_path.display()))?,
        )
        .with_context(|| format!("parsing {}", man_path.display()))?;
        let sha256 = crate::output::sha256_file(path)?;
        if sha256 != expected {
            return Err(Classified::integrity(format!(
                "{}: sha256 {sha256} does not match its .sha256 sidecar ({expected})",
                path.display()
            ))
            .into());
        }
        let size = std::fs::metadata(path)?.len();
        Ok(ImageInfo {
            path: path.to_path_buf(),
            format: format.to_string(),
            size,
            name: format!("{}-{}-{}-{}", man.recipe, man.role, man.arch, &sha256[..12]),
            sha256,
            recipe: man.recipe,
            role: man.role,
            arch: man.arch,
            k8s_version: man.kubernetes_version,
            imgbuild_version: man.imgbuild_version,
        })
    }
}

pub fn run(a: &UploadArgs, g: &crate::cli::Global) -> Result<()> {
    let img = ImageInfo::from_image(&a.image)?;
    let progress = crate::progress::Progress::new(g.quiet);
    let outcome = match a.target {
        Target::Glance => glance::upload(&img, &a.glance, &progress)?,
    };
    let (what, id) = match &outcome {
        Outcome::Uploaded { id } => ("uploaded", id),
        Outcome::AlreadyPresent { id } => ("already present", id),
    };
    progress.line(&format!("{what} {id}"));
    println!("{id}");
    Ok(())
}
