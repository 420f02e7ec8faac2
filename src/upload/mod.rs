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
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::exit::{Classify, Code};
use crate::manifest::Manifest;
use crate::reporter::{human_bytes, Reporter, Task};

/// Formats `build` (and the output-format work of issue 8) can write, by file extension.
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
    #[error("image {0} not found")]
    NoImage(PathBuf),
    #[error("{path}: unknown image format {ext:?} (expected one of: {})", FORMATS.join(", "))]
    UnknownFormat { path: PathBuf, ext: String },
    #[error("{what} {path} is missing (it is written beside the image by `imgbuild build`)")]
    MissingSidecar { what: &'static str, path: PathBuf },
    #[error("{path}: {msg}")]
    BadSidecar { path: PathBuf, msg: String },
    #[error(
        "{path}: sha256 mismatch: {sidecar} records {expected}, the image hashes to {actual}; \
         nothing was uploaded"
    )]
    Mismatch { path: PathBuf, sidecar: PathBuf, expected: String, actual: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--target {0} is not available in this build")]
    TargetUnavailable(&'static str),
}

impl Classify for UploadError {
    fn code(&self) -> Code {
        match self {
            UploadError::Mismatch { .. } => Code::Integrity,
            UploadError::Io { .. } => Code::Runtime,
            UploadError::NoImage(_)
            | UploadError::UnknownFormat { .. }
            | UploadError::MissingSidecar { .. }
            | UploadError::BadSidecar { .. }
            | UploadError::TargetUnavailable(_) => Code::Input,
        }
    }
}

/// `<recipe>-<role>-<arch>-<first 12 hex digits>`.
pub fn stable_name(recipe: &str, role: &str, arch: &str, sha256: &str) -> String {
    let short = sha256.get(..SHORT_DIGEST).unwrap_or(sha256);
    format!("{recipe}-{role}-{arch}-{short}")
}

/// Sidecar paths of `image`: (`<stem>.manifest.json`, `<image>.sha256`), as src/output.rs names them.
pub fn sidecars(image: &Path) -> (PathBuf, PathBuf) {
    let file = image.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = image.file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = image.parent().unwrap_or_else(|| Path::new(""));
    (dir.join(format!("{stem}.manifest.json")), dir.join(format!("{file}.sha256")))
}

impl ImageInfo {
    /// Read the sidecars, re-hash the image and compare with `<image>.sha256`.
    /// A mismatch is [`UploadError::Mismatch`] (exit 3); nothing has been sent yet.
    pub fn from_image(path: &Path, progress: &Reporter) -> Result<ImageInfo, UploadError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(UploadError::NoImage(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(UploadError::NoImage(path.to_path_buf()))
            }
            Err(e) => return Err(io("reading", path, e)),
        };
        let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        if !FORMATS.contains(&ext.as_str()) {
            return Err(UploadError::UnknownFormat { path: path.to_path_buf(), ext });
        }
        let (man_path, sum_path) = sidecars(path);
        let read = |what: &'static str, p: &Path| -> Result<Vec<u8>, UploadError> {
            std::fs::read(p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => UploadError::MissingSidecar { what, path: p.to_path_buf() },
                _ => io("reading", p, e),
            })
        };
        let man_bytes = read("manifest", &man_path)?;
        let sum_bytes = read("checksum file", &sum_path)?;
        let manifest: Manifest = serde_json::from_slice(&man_bytes).map_err(|e| UploadError::BadSidecar {
            path: man_path.clone(),
            msg: format!("not a manifest: {e}"),
        })?;
        let expected = parse_sha256_file(&sum_bytes)
            .ok_or_else(|| UploadError::BadSidecar {
                path: sum_path.clone(),
                msg: "expected `<64 hex digits>  <file name>` (sha256sum format)".into(),
            })?
            .to_ascii_lowercase();
        let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let task = progress.task(&format!("sha256 {file_name}"), Some(meta.len()));
        let actual = match hash_file(path, &task) {
            Ok(h) => h,
            Err(e) => {
                task.abandon();
                return Err(io("hashing", path, e));
            }
        };
        if actual != expected {
            task.abandon();
            return Err(UploadError::Mismatch {
                path: path.to_path_buf(),
                sidecar: sum_path,
                expected,
                actual,
            });
        }
        task.finish(&format!("verified sha256 {file_name} ({})", human_bytes(meta.len())));
        Ok(ImageInfo {
            path: path.to_path_buf(),
            format: ext,
            size: meta.len(),
            name: stable_name(&manifest.recipe, &manifest.role, &manifest.arch, &actual),
            sha256: actual,
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

fn io(what: &'static str, path: &Path, source: std::io::Error) -> UploadError {
    UploadError::Io { what, path: path.to_path_buf(), source }
}

/// First field of a sha256sum line, if it is 64 hex digits.
fn parse_sha256_file(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let first = text.split_whitespace().next()?;
    (first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit())).then_some(first)
}

fn hash_file(path: &Path, task: &Task) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        task.inc(n as u64);
    }
    Ok(hex::encode(h.finalize()))
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
        let (m, s) = sidecars(Path::new("out/k8s-worker-amd64.qcow2"));
        assert_eq!(m, Path::new("out/k8s-worker-amd64.manifest.json"));
        assert_eq!(s, Path::new("out/k8s-worker-amd64.qcow2.sha256"));
    }

    #[test]
    fn sha256_sidecar_format() {
        let sha = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(parse_sha256_file(format!("{sha}  x.qcow2\n").as_bytes()), Some(sha));
        assert_eq!(parse_sha256_file(b"abc  x.qcow2\n"), None);
        assert_eq!(parse_sha256_file(b""), None);
    }
}
