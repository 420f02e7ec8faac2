//! TEMPORARY minimal `imgbuild upload` (libvirt branch only): the upload helper's mod.rs
//! and CLI wiring replace this file at merge; only `pub mod libvirt;` carries over.

// ---- shared part (UPLOAD-INTERFACE.md: keep these definitions verbatim) ----
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
// ---- end of the shared part ----

pub mod libvirt;

use anyhow::{bail, Context, Result};

use crate::cli::Global;
use crate::exit::Classified;
use crate::manifest::Manifest;
use crate::progress::Progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A storage volume in a libvirt pool
    Libvirt,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// Where to upload
    #[arg(long, value_enum)]
    pub target: Target,
    /// The built image; `<stem>.manifest.json` and `<image>.sha256` must sit beside it
    pub image: PathBuf,
    #[command(flatten)]
    pub libvirt: libvirt::LibvirtArgs,
}

/// Read the sidecars, verify the digest, build [`ImageInfo`] (temporary; see the module doc).
fn image_info(path: &std::path::Path) -> Result<ImageInfo> {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let (stem, format) = file.rsplit_once('.').ok_or_else(|| Classified::input("image has no extension"))?;
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new(""));
    let sum_path = dir.join(format!("{file}.sha256"));
    let sum =
        std::fs::read_to_string(&sum_path).with_context(|| format!("reading {}", sum_path.display()))?;
    let expected = sum.split_whitespace().next().unwrap_or_default().to_string();
    let man_path = dir.join(format!("{stem}.manifest.json"));
    let m: Manifest = serde_json::from_slice(
        &std::fs::read(&man_path).with_context(|| format!("reading {}", man_path.display()))?,
    )
    .with_context(|| format!("parsing {}", man_path.display()))?;
    let sha256 = crate::output::sha256_file(path)?;
    if sha256 != expected {
        return Err(Classified::integrity(format!(
            "{}: sha256 mismatch: {} records {expected}, the image hashes to {sha256}; nothing was uploaded",
            path.display(),
            sum_path.display()
        ))
        .into());
    }
    let size = std::fs::metadata(path)?.len();
    let name = format!("{}-{}-{}-{}", m.recipe, m.role, m.arch, &sha256[..12]);
    Ok(ImageInfo {
        path: path.to_path_buf(),
        format: format.to_string(),
        size,
        sha256,
        name,
        recipe: m.recipe,
        role: m.role,
        arch: m.arch,
        k8s_version: m.kubernetes_version,
        imgbuild_version: m.imgbuild_version,
    })
}

pub fn run(a: &UploadArgs, g: &Global) -> Result<()> {
    if !a.image.is_file() {
        bail!(Classified::input(format!("image {} not found", a.image.display())));
    }
    let progress = Progress::new(g.quiet);
    let img = image_info(&a.image)?;
    let outcome = match a.target {
        Target::Libvirt => libvirt::upload(&img, &a.libvirt, &progress)?,
    };
    let id = match outcome {
        Outcome::Uploaded { id } => {
            progress.line(&format!("uploaded {id}"));
            id
        }
        Outcome::AlreadyPresent { id } => {
            progress.line(&format!("already present {id}"));
            id
        }
    };
    println!("{id}");
    Ok(())
}
