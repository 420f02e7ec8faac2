//! `imgbuild upload --target libvirt`: the image becomes a storage volume
//! `<stable name>.<format>` in a libvirt pool, streamed through the `virsh` client.
//!
//! Why `virsh` and not libvirt.so (the `virt` crate) or the RPC protocol: linking libvirt
//! would make every imgbuild user install it, while the client package is one apt-get
//! away on the hypervisor hosts that need it, speaks every URI transport (unix, ssh, tls)
//! with libvirt's own auth, and is what operators debug with anyway.
//!
//! Steps (docs/upload.md "libvirt"):
//! 1. `pool-info`: missing pool → exit 2, pool not running → exit 2, no connection → exit 1.
//! 2. Idempotency: the volume is complete only when the marker volume
//!    `<volume>.sha256` exists and holds `<sha256>  <volume>\n` (sha256sum format) and the
//!    volume's size matches. Libvirt's volume XML has no free-form metadata, so the
//!    marker is a tiny companion volume, written *after* the image bytes went through:
//!    its presence is the commit record. Complete → [`Outcome::AlreadyPresent`].
//! 3. Anything else under the name (an interrupted upload, a foreign volume) is replaced:
//!    marker deleted first, then the volume. No resume: a `dir` pool volume is created at
//!    full (sparse) size, so the daemon cannot tell how many bytes landed, and proving a
//!    prefix would cost a download of it.
//! 4. `vol-create-as --format raw --allocation 0` with the image's exact byte size: a sparse
//!    file of exactly that length, no `qemu-img` needed on the host. (Creating it as
//!    `qcow2` makes libvirt run `qemu-img create`, whose ~192 KiB header file outlives a
//!    smaller upload as trailing bytes.) The daemon refreshes the volume after the upload
//!    and a `dir` pool probes the format, so a qcow2 image shows up as `qcow2`.
//! 5. `vol-upload --offset 0 --length N /dev/stdin`, fed from here: progress and a sha256
//!    of exactly the bytes sent, compared with the verified digest (exit 3 when the file
//!    changed since). A failed upload deletes the partial volume; when even that fails
//!    (the daemon died), step 3 of the next run replaces it.
//! 6. Optional `--libvirt-verify`: `vol-download` the volume back and hash it: after an
//!    upload (mismatch: exit 3, volume deleted) and for a present volume (mismatch: replaced).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{ImageInfo, Outcome};
use crate::exit::{Classify, Code};
use crate::reporter::{human_bytes, Reporter};
use crate::tools::{Tool, ToolError};

pub const VIRSH: Tool = Tool { name: "virsh", hint: "sudo apt-get install -y libvirt-clients" };

/// Streaming granularity.
const CHUNK: usize = 256 * 1024;
/// Upper bound for reading a marker volume (it holds one sha256sum line).
const MARKER_MAX: u64 = 4096;

#[derive(Debug, Clone)]
pub struct LibvirtOptions {
    /// libvirt connection URI for --target libvirt (e.g. qemu+ssh://host/system)
    pub libvirt_uri: String,
    /// libvirt storage pool that receives the volume (--target libvirt)
    pub libvirt_pool: String,
    /// After uploading (or finding it present), download the volume back and check its sha256 (--target libvirt)
    pub libvirt_verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot connect to libvirt at {uri} (from --libvirt-uri / LIBVIRT_DEFAULT_URI): {detail}{hint}")]
    Connect { uri: String, detail: String, hint: &'static str },
    #[error("storage pool {pool:?} not found at {uri} (list them with: virsh -c '{uri}' pool-list --all)")]
    PoolNotFound { pool: String, uri: String },
    #[error("storage pool {pool:?} at {uri} is {state}, not running (start it with: virsh -c '{uri}' pool-start {pool})")]
    PoolNotRunning { pool: String, uri: String, state: String },
    #[error(
        "libvirt cannot take a {0} image as a volume (an OVA is an archive); build --format qcow2 or raw"
    )]
    UnsupportedFormat(String),
    #[error("{0} is empty")]
    Empty(PathBuf),
    #[error("{0:?} is not usable as a libvirt volume name (expected letters, digits, '.', '_', '-')")]
    BadName(String),
    #[error("virsh {cmd} failed at {uri}: {detail}")]
    Virsh { cmd: &'static str, uri: String, detail: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} changed while uploading: {detail}; the partial volume was discarded")]
    Changed { path: PathBuf, detail: String },
    #[error(
        "volume {vol} in pool {pool:?} at {uri} hashes to {actual} after the upload, expected {expected} \
         (--libvirt-verify); the volume was deleted"
    )]
    VerifyMismatch { vol: String, pool: String, uri: String, expected: String, actual: String },
}

impl Classify for LibvirtError {
    fn code(&self) -> Code {
        match self {
            LibvirtError::Tool(_)
            | LibvirtError::Connect { .. }
            | LibvirtError::Virsh { .. }
            | LibvirtError::Io { .. } => Code::Runtime,
            LibvirtError::PoolNotFound { .. }
            | LibvirtError::PoolNotRunning { .. }
            | LibvirtError::UnsupportedFormat(_)
            | LibvirtError::Empty(_)
            | LibvirtError::BadName(_) => Code::Input,
            LibvirtError::Changed { .. } | LibvirtError::VerifyMismatch { .. } => Code::Integrity,
        }
    }
}

/// Upload `img` into the pool as `<name>.<format>` (see the module doc for the steps).
pub fn upload(img: &ImageInfo, args: &LibvirtOptions, progress: &Reporter) -> Result<Outcome, LibvirtError> {
    if img.format == "ova" {
        return Err(LibvirtError::UnsupportedFormat(img.format.clone()));
    }
    if img.size == 0 {
        // `--length 0` would mean "to the end" to libvirt; an empty image is no image.
        return Err(LibvirtError::Empty(img.path.clone()));
    }
    let vol = format!("{}.{}", img.name, img.format);
    let marker = format!("{vol}.sha256");
    if vol.is_empty()
        || vol.starts_with('.')
        || !vol.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(LibvirtError::BadName(vol));
    }
    let v = Virsh { bin: crate::tools::find(&VIRSH)?, uri: args.libvirt_uri.clone() };
    let pool = args.libvirt_pool.as_str();
    v.check_pool(pool)?;
    let marker_line = format!("{}  {vol}\n", img.sha256);

    let existing = v.vol_info(pool, &vol)?;
    if let Some(info) = &existing {
        let marker_ok = v.read_marker(pool, &marker)?.as_deref() == Some(marker_line.as_str());
        // Block devices (LVM, disks) round sizes up to their extent; files are exact.
        let size_ok = if info.is_file { info.physical == img.size } else { info.physical >= img.size };
        let why = if !marker_ok {
            "incomplete (no matching completion marker)"
        } else if !size_ok {
            "its size does not match the image"
        } else if !args.libvirt_verify {
            return Ok(Outcome::AlreadyPresent { id: v.vol_path(pool, &vol)? });
        } else {
            match v.verify(pool, &vol, img, progress) {
                Ok(()) => return Ok(Outcome::AlreadyPresent { id: v.vol_path(pool, &vol)? }),
                Err(LibvirtError::VerifyMismatch { .. }) => "its content does not match (--libvirt-verify)",
                Err(e) => return Err(e),
            }
        };
        progress.status(format!("replacing volume {vol} in pool {pool}: {why}"));
    }
    // The marker goes first: a marker must never vouch for a volume being rewritten.
    v.delete_if_exists(pool, &marker)?;
    if existing.is_some() {
        v.delete_if_exists(pool, &vol)?;
    }

    // Open before creating anything, so a missing file leaves no volume behind.
    let file = std::fs::File::open(&img.path).map_err(|source| LibvirtError::Io {
        what: "opening",
        path: img.path.clone(),
        source,
    })?;
    let start = Instant::now();
    v.create(pool, &vol, img.size)?;
    let task = progress.task(&format!("libvirt {vol}"), Some(img.size));
    let sent = v.stream_upload(pool, &vol, (&img.path, file), img.size, |n| task.inc(n));
    if let Err(e) = sent.and_then(|digest| check_sent(img, digest)) {
        task.abandon();
        // Best effort: with the daemon gone this fails too, and the next run replaces the volume.
        if v.delete_if_exists(pool, &vol).is_err() {
            progress.status(format!(
                "could not delete the partial volume {vol}; the next `imgbuild upload` replaces it"
            ));
        }
        return Err(e);
    }
    task.finish(&format!(
        "sent {} to pool {pool} as {vol} ({:.1} s)",
        human_bytes(img.size),
        start.elapsed().as_secs_f64()
    ));
    if args.libvirt_verify {
        if let Err(e) = v.verify(pool, &vol, img, progress) {
            // Never leave a volume behind that is known (or could not be shown) to be right.
            let _ = v.delete_if_exists(pool, &vol);
            return Err(e);
        }
    }
    v.create(pool, &marker, marker_line.len() as u64)?;
    if let Err(e) = v.stream_upload(
        pool,
        &marker,
        (&PathBuf::from(&marker), marker_line.as_bytes()),
        marker_line.len() as u64,
        |_| {},
    ) {
        let _ = v.delete_if_exists(pool, &marker);
        return Err(e);
    }
    Ok(Outcome::Uploaded { id: v.vol_path(pool, &vol)? })
}

/// The stream's digest must be the one verified before the upload began.
fn check_sent(img: &ImageInfo, digest: String) -> Result<(), LibvirtError> {
    if digest == img.sha256 {
        return Ok(());
    }
    Err(LibvirtError::Changed {
        path: img.path.clone(),
        detail: format!("the bytes sent hash to {digest}, not the verified {}", img.sha256),
    })
}

/// What `vol-info --bytes --physical` says about a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VolInfo {
    is_file: bool,
    physical: u64,
}

/// One libvirt connection, driven through `virsh -q -c URI`.
struct Virsh {
    bin: PathBuf,
    uri: String,
}

impl Virsh {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        // English messages: errors are recognised by their text.
        c.env("LC_ALL", "C").arg("-q").arg("-c").arg(&self.uri).args(args);
        c
    }

    /// Run to completion; stdout on success, the classified error otherwise.
    fn run(&self, cmd: &'static str, args: &[&str]) -> Result<Vec<u8>, LibvirtError> {
        let mut all = vec![cmd];
        all.extend_from_slice(args);
        let out = self.cmd(&all).stdin(Stdio::null()).output().map_err(|source| LibvirtError::Io {
            what: "running",
            path: self.bin.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.error(cmd, &String::from_utf8_lossy(&out.stderr)))
    }

    fn error(&self, cmd: &'static str, stderr: &str) -> LibvirtError {
        classify(cmd, &self.uri, stderr)
    }

    fn check_pool(&self, pool: &str) -> Result<(), LibvirtError> {
        let out = self.run("pool-info", &[pool]).map_err(|e| match e {
            LibvirtError::Virsh { detail, .. } if detail.contains("Storage pool not found") => {
                LibvirtError::PoolNotFound { pool: pool.to_string(), uri: self.uri.clone() }
            }
            e => e,
        })?;
        let state = field(&String::from_utf8_lossy(&out), "State").unwrap_or_default();
        if state == "running" {
            return Ok(());
        }
        Err(LibvirtError::PoolNotRunning { pool: pool.into(), uri: self.uri.clone(), state })
    }

    /// `None` when the pool has no volume of that name.
    fn vol_info(&self, pool: &str, vol: &str) -> Result<Option<VolInfo>, LibvirtError> {
        let out = match self.run("vol-info", &["--bytes", "--physical", "--pool", pool, vol]) {
            Ok(o) => String::from_utf8_lossy(&o).into_owned(),
            Err(LibvirtError::Virsh { detail, .. }) if detail.contains("Storage volume not found") => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let physical = field(&out, "Physical")
            .and_then(|p| p.trim_end_matches(" bytes").parse().ok())
            .ok_or_else(|| self.error("vol-info", &format!("unexpected output: {out}")))?;
        Ok(Some(VolInfo { is_file: field(&out, "Type").as_deref() == Some("file"), physical }))
    }

    /// The marker's text, `None` when it is absent or too big to be one.
    fn read_marker(&self, pool: &str, marker: &str) -> Result<Option<String>, LibvirtError> {
        match self.vol_info(pool, marker)? {
            Some(i) if i.physical <= MARKER_MAX => {}
            _ => return Ok(None),
        }
        let out = self.run("vol-download", &["--pool", pool, marker, "/dev/stdout"])?;
        Ok(String::from_utf8(out).ok())
    }

    fn vol_path(&self, pool: &str, vol: &str) -> Result<String, LibvirtError> {
        let out = self.run("vol-path", &["--pool", pool, vol])?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    fn delete_if_exists(&self, pool: &str, vol: &str) -> Result<(), LibvirtError> {
        match self.run("vol-delete", &["--pool", pool, vol]) {
            Err(LibvirtError::Virsh { detail, .. }) if detail.contains("Storage volume not found") => Ok(()),
            r => r.map(|_| ()),
        }
    }

    fn create(&self, pool: &str, vol: &str, size: u64) -> Result<(), LibvirtError> {
        let size = size.to_string();
        let args = [pool, vol, &size, "--format", "raw", "--allocation", "0"];
        self.run("vol-create-as", &args).map(|_| ())
    }

    /// Stream exactly `len` bytes of `src` into `vol` through `vol-upload /dev/stdin`;
    /// returns the sha256 of what was sent. `src` ending early or holding more is an error.
    fn stream_upload(
        &self,
        pool: &str,
        vol: &str,
        (src_path, mut src): (&PathBuf, impl Read),
        len: u64,
        mut inc: impl FnMut(u64),
    ) -> Result<String, LibvirtError> {
        let len_s = len.to_string();
        let args = ["vol-upload", "--pool", pool, vol, "/dev/stdin", "--offset", "0", "--length", &len_s];
        let mut child = self
            .cmd(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LibvirtError::Io { what: "running", path: self.bin.clone(), source })?;
        let stderr = drain_stderr(&mut child);
        let mut hash = Sha256::new();
        let fed = feed(&mut child, &mut src, len, &mut hash, &mut inc);
        if let Err(Some(detail)) = fed {
            // Abort the stream rather than let virsh finish a short volume (the caller deletes it).
            let _ = child.kill();
            let _ = child.wait();
            return Err(LibvirtError::Changed { path: src_path.clone(), detail });
        }
        let status = child.wait();
        let err = stderr.join().unwrap_or_default();
        match status {
            Ok(s) if s.success() && fed.is_ok() => Ok(hex::encode(hash.finalize())),
            Ok(s) => Err(self.error("vol-upload", &with_status(&err, s))),
            Err(source) => Err(LibvirtError::Io { what: "waiting for", path: self.bin.clone(), source }),
        }
    }

    /// `vol-download` the volume and compare its sha256 with the image's.
    fn verify(
        &self,
        pool: &str,
        vol: &str,
        img: &ImageInfo,
        progress: &Reporter,
    ) -> Result<(), LibvirtError> {
        let mut child = self
            .cmd(&["vol-download", "--pool", pool, vol, "/dev/stdout"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LibvirtError::Io { what: "running", path: self.bin.clone(), source })?;
        let stderr = drain_stderr(&mut child);
        let task = progress.task(&format!("verify {vol}"), Some(img.size));
        let mut hash = Sha256::new();
        let mut total = 0u64;
        let mut read_err = None;
        if let Some(mut out) = child.stdout.take() {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        hash.update(&buf[..n]);
                        total += n as u64;
                        task.inc(n as u64);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        read_err = Some(e);
                        break;
                    }
                }
            }
        }
        let status = child.wait();
        let err = stderr.join().unwrap_or_default();
        if let Some(source) = read_err {
            task.abandon();
            return Err(LibvirtError::Io {
                what: "reading vol-download of",
                path: PathBuf::from(vol),
                source,
            });
        }
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                task.abandon();
                return Err(self.error("vol-download", &with_status(&err, s)));
            }
            Err(source) => {
                task.abandon();
                return Err(LibvirtError::Io { what: "waiting for", path: self.bin.clone(), source });
            }
        }
        // A block volume may be longer than the image: compare the image-sized prefix then.
        let actual = if total == img.size {
            hex::encode(hash.finalize())
        } else {
            format!("<{total} bytes, the image has {}>", img.size)
        };
        if actual != img.sha256 {
            task.abandon();
            return Err(LibvirtError::VerifyMismatch {
                vol: vol.into(),
                pool: pool.into(),
                uri: self.uri.clone(),
                expected: img.sha256.clone(),
                actual,
            });
        }
        task.finish(&format!("verified {vol}: sha256 {}", img.sha256));
        Ok(())
    }
}

/// Collect a child's stderr on a thread (so a chatty child never blocks on a full pipe).
fn drain_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let err = child.stderr.take();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = err {
            let _ = e.read_to_string(&mut s);
        }
        s
    })
}

/// Copy `len` bytes of `src` into the child's stdin, hashing them. `Err(Some(why))`: the
/// source did not hold exactly `len` bytes; `Err(None)`: the child stopped reading (its
/// stderr says why).
fn feed(
    child: &mut Child,
    src: &mut impl Read,
    len: u64,
    hash: &mut Sha256,
    inc: &mut impl FnMut(u64),
) -> Result<(), Option<String>> {
    let Some(mut stdin) = child.stdin.take() else { return Err(None) };
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => return Err(Some(format!("it ended after {} of {len} bytes", len - left))),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Some(format!("reading it failed after {} bytes: {e}", len - left))),
        };
        hash.update(&buf[..n]);
        stdin.write_all(&buf[..n]).map_err(|_| None)?;
        left -= n as u64;
        inc(n as u64);
    }
    // More bytes than the verified size: the file grew.
    match src.read(&mut buf[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Some(format!("it holds more than the verified {len} bytes"))),
        Err(e) => Err(Some(format!("reading it failed: {e}"))),
    }
    // Dropping stdin ends the stream.
}

/// virsh's stderr, or how it ended when it said nothing (killed by a signal).
fn with_status(stderr: &str, status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if !stderr.trim().is_empty() {
        return stderr.to_string();
    }
    match status.signal() {
        Some(libc::SIGPIPE) => "virsh died of SIGPIPE: the connection to the daemon broke".into(),
        Some(sig) => format!("virsh was killed by signal {sig}"),
        None => format!("virsh exited with {status} and no message"),
    }
}

/// `Key:   value` from virsh's info tables.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Map virsh's stderr onto an error: connection and auth problems name the URI.
fn classify(cmd: &'static str, uri: &str, stderr: &str) -> LibvirtError {
    let detail = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("error: ").trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let detail = if detail.is_empty() { "no error message".to_string() } else { detail };
    let connect = [
        "failed to connect to the hypervisor",
        "Failed to connect socket",
        "authentication failed",
        "End of file while reading data",
        "Cannot recv data",
        "Cannot write data",
        "no connection driver available",
        "not connected",
    ];
    if connect.iter().any(|c| detail.contains(c)) {
        let hint = if detail.contains("Permission denied") || detail.contains("authentication") {
            " (the socket or polkit refused this user: join the `libvirt` group, or use a URI you may \
             access such as qemu:///session)"
        } else {
            ""
        };
        return LibvirtError::Connect { uri: uri.to_string(), detail, hint };
    }
    LibvirtError::Virsh { cmd, uri: uri.to_string(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virsh_errors_are_classified() {
        // Real virsh 9.0 messages.
        let denied = "error: failed to connect to the hypervisor\nerror: Failed to connect socket to \
                      '/var/run/libvirt/libvirt-sock': Permission denied\n";
        let e = classify("pool-info", "qemu:///system", denied);
        assert_eq!(e.code(), Code::Runtime);
        let msg = e.to_string();
        assert!(msg.contains("qemu:///system") && msg.contains("Permission denied"), "{msg}");
        assert!(msg.contains("libvirt` group"), "{msg}");

        let gone = "error: failed to connect to the hypervisor\nerror: Failed to connect socket to \
                    '/tmp/x': No such file or directory\n";
        let msg = classify("pool-info", "qemu+unix:///system?socket=/tmp/x", gone).to_string();
        assert!(msg.contains("qemu+unix:///system?socket=/tmp/x") && !msg.contains("group"), "{msg}");

        let other = "error: failed to get vol 'x'\nerror: Storage volume not found: no storage vol\n";
        match classify("vol-info", "u", other) {
            LibvirtError::Virsh { detail, .. } => {
                assert_eq!(detail, "failed to get vol 'x'; Storage volume not found: no storage vol")
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn info_fields() {
        let t = "Name:           a.qcow2\nType:           file\nCapacity:       67108864 bytes\n\
                 Physical:       3473408 bytes\n";
        assert_eq!(field(t, "Type").as_deref(), Some("file"));
        assert_eq!(field(t, "Physical").as_deref(), Some("3473408 bytes"));
        assert_eq!(field(t, "State"), None);
    }

    #[test]
    fn classes() {
        assert_eq!(LibvirtError::PoolNotFound { pool: "p".into(), uri: "u".into() }.code(), Code::Input);
        assert_eq!(LibvirtError::UnsupportedFormat("ova".into()).code(), Code::Input);
        let c = LibvirtError::Changed { path: "x".into(), detail: "d".into() };
        assert_eq!(c.code(), Code::Integrity);
    }
}
