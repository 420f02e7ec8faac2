//! `imgbuild upload`: put a built image where VMs boot from it (libvirt, OpenStack Glance,
//! Proxmox VE), under a stable name derived from its manifest and digest.
//!
//! Before any byte is sent the image is re-hashed and compared with its `<image>.sha256`
//! sidecar (mismatch: exit 3), and `<stem>.manifest.json` supplies recipe, role, arch and
//! versions. Each target lives in its own module with the same shape: `<Target>Options`,
//! `<Target>Error` (classified) and a blocking `upload(&ImageInfo, &Options, &Reporter)`.

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

pub mod glance;
pub mod libvirt;
pub mod proxmox;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::exit::{Classify, Code};
use crate::output::{OutputError, OutputSet};
use crate::reporter::{Reporter, Task};

/// Formats `build` can write, by file extension.
pub const FORMATS: [&str; 6] = ["qcow2", "raw", "vmdk", "vhdx", "vhd", "ova"];
/// Hex digits of the sha256 in the stable name.
pub const SHORT_DIGEST: usize = 12;
/// Read granularity for hashing and streaming.
pub const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A storage volume in a libvirt pool
    Libvirt,
    /// An OpenStack Glance v2 image
    Glance,
    /// A file in a Proxmox VE storage with `import` content (optionally a VM template)
    Proxmox,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Libvirt => "libvirt",
            Target::Glance => "glance",
            Target::Proxmox => "proxmox",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{path}: unknown image format {ext:?} (expected one of: {})", FORMATS.join(", "))]
    UnknownFormat { path: PathBuf, ext: String },
    /// The image and its sidecars did not verify: nothing was sent.
    #[error("{0}; nothing was uploaded")]
    Output(#[source] OutputError),
    #[error("--target {0} is not available in this build")]
    TargetUnavailable(&'static str),
}

impl Classify for UploadError {
    fn code(&self) -> Code {
        match self {
            UploadError::Output(e) => e.code(),
            UploadError::UnknownFormat { .. } | UploadError::TargetUnavailable(_) => Code::Input,
        }
    }
}

/// `<recipe>-<role>-<arch>-<first 12 hex digits>`.
pub fn stable_name(recipe: &str, role: &str, arch: &str, sha256: &str) -> String {
    let short = sha256.get(..SHORT_DIGEST).unwrap_or(sha256);
    format!("{recipe}-{role}-{arch}-{short}")
}

impl ImageInfo {
    /// Read the sidecars, re-hash the image and compare with `<image>.sha256`.
    /// A mismatch is [`UploadError::Mismatch`] (exit 3); nothing has been sent yet.
    pub fn from_image(path: &Path, progress: &Reporter) -> Result<ImageInfo, UploadError> {
        let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        if !FORMATS.contains(&ext.as_str()) {
            return Err(UploadError::UnknownFormat { path: path.to_path_buf(), ext });
        }
        let set = OutputSet::beside(path);
        // The image first (missing, not a file), then the small sidecars, then the hash.
        let size = crate::disk::open::regular_file(path).map_err(|e| UploadError::Output(e.into()))?;
        let manifest = set.read_manifest().map_err(UploadError::Output)?;
        let sha256 = set.verify_checksum(progress).map_err(UploadError::Output)?.to_string();
        Ok(ImageInfo {
            path: path.to_path_buf(),
            format: ext,
            size,
            name: stable_name(&manifest.recipe, &manifest.role, &manifest.arch, &sha256),
            sha256,
            recipe: manifest.recipe,
            role: manifest.role,
            arch: manifest.arch,
            k8s_version: manifest.kubernetes_version,
            imgbuild_version: manifest.imgbuild_version,
        })
    }

    /// The metadata every target attaches (as properties, labels or a description).
    pub fn metadata(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("imgbuild_version", self.imgbuild_version.clone()),
            ("k8s_version", self.k8s_version.clone()),
            ("recipe", self.recipe.clone()),
            ("role", self.role.clone()),
            ("arch", self.arch.clone()),
            ("sha256", self.sha256.clone()),
        ])
    }
}

/// A progress task shared between the code that streams bytes and the code that
/// reports the result; `reset` rewinds it when a target restarts a failed transfer.
#[derive(Debug, Clone)]
pub struct Meter {
    task: Arc<Task>,
    progress: Reporter,
}

impl Meter {
    pub fn new(progress: &Reporter, label: &str, total: u64) -> Meter {
        Meter { task: Arc::new(progress.task(label, Some(total))), progress: progress.clone() }
    }

    pub fn inc(&self, n: u64) {
        self.task.inc(n);
    }

    pub fn reset(&self) {
        self.task.set_position(0);
    }

    /// Replace the bar with `msg`. If a stream still holds a clone (an HTTP stack may drop
    /// a finished body late), the line is printed anyway and the bar goes when it is dropped.
    pub fn finish(self, msg: &str) {
        match Arc::try_unwrap(self.task) {
            Ok(t) => t.finish(msg),
            Err(_) => self.progress.status(msg),
        }
    }

    pub fn abandon(self) {
        if let Ok(t) = Arc::try_unwrap(self.task) {
            t.abandon();
        }
    }
}

/// A `Read` that advances a [`Meter`] by every byte read (for targets that stream
/// through a blocking writer, e.g. a child process's stdin).
pub struct ProgressReader<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> ProgressReader<R> {
    pub fn new(inner: R, meter: Meter) -> Self {
        ProgressReader { inner, meter }
    }

    pub fn into_inner(self) -> (R, Meter) {
        (self.inner, self.meter)
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.inc(n as u64);
        Ok(n)
    }
}

/// The image file as an async stream of chunks for a streaming HTTP body
/// (`reqwest::Body::wrap_stream`), advancing `meter`; the file is never held in memory.
/// Every call opens the file afresh, so a retried request starts from byte 0.
pub async fn file_stream(
    path: &Path,
    meter: Meter,
) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    Ok(futures_util::stream::unfold(Some((file, meter)), |state| async move {
        let (mut file, meter) = state?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                meter.inc(n as u64);
                Some((Ok(buf), Some((file, meter))))
            }
            // Yield the error, then end the stream.
            Err(e) => Some((Err(e), None)),
        }
    }))
}

/// Per-target settings of one upload.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    pub proxmox: proxmox::ProxmoxOptions,
    pub glance: glance::GlanceOptions,
    pub libvirt: libvirt::LibvirtOptions,
}

/// `imgbuild upload`: target checks that need neither the network nor the image's digest
/// (usage errors first), then verify the image against its sidecars, then upload.
pub fn upload(target: Target, image: &Path, o: &TargetOptions, progress: &Reporter) -> Result<Outcome> {
    let ext = image.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    if target == Target::Proxmox {
        proxmox::preflight(&ext, &o.proxmox)?;
    }
    let img = ImageInfo::from_image(image, progress)?;
    progress.status(format!("uploading {} as {} to {}", img.path.display(), img.name, target.as_str()));
    let outcome = match target {
        Target::Proxmox => proxmox::upload(&img, &o.proxmox, progress)?,
        Target::Glance => glance::upload(&img, &o.glance, progress)?,
        Target::Libvirt => libvirt::upload(&img, &o.libvirt, progress)?,
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(stable_name("k8s-1.30", "worker", "amd64", sha), "k8s-1.30-worker-amd64-0123456789ab");
    }
}
