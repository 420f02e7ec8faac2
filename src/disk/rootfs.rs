//! The root filesystem of a raw disk: found by its ext4 label, read and written
//! with debugfs, checked with `e2fsck -fn`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::debugfs::{check_path, Debugfs, DirEntry};
use super::ext4::{self, Probe, Superblock};
use super::gpt::{self, Partition};
use super::DiskError;
use crate::layer::{Content, Kind, Layer};
use crate::tools;

/// The root partition of a raw disk image, or (the build's fast path, see
/// [`super::overlay`]) a metadata-only copy of the partition in a file of its own.
#[derive(Debug, Clone)]
pub struct RootFs {
    image: PathBuf,
    part: Partition,
    sb: Superblock,
    dfs: Debugfs,
    /// Set for a metadata-only copy: where regular files' data is read from.
    backing: Option<std::sync::Arc<Backing>>,
}

/// A layer file whose blocks debugfs allocated without writing them: its bytes are laid
/// in from `source` afterwards, once ([`lay_data`] on a raw disk, the output stream on
/// the fast path), instead of being copied into the filesystem by debugfs first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The path in the image.
    pub path: String,
    /// Where the bytes are on the build host (a verified blob, or a file extracted from one).
    pub source: PathBuf,
    pub size: u64,
    /// (first file block, first filesystem block, blocks), in file order, covering
    /// every block of the file.
    pub extents: Vec<(u64, u64, u64)>,
}

/// The base a metadata-only copy was made from: file data is faulted in from here.
#[derive(Debug)]
pub struct Backing {
    pub base: super::qcow2::Reader,
    /// Byte offset of the partition in the base's guest disk.
    pub offset: u64,
}

impl RootFs {
    /// Find the partition whose ext4 filesystem is labelled `label` (by the
    /// superblock, never by partition number).
    pub fn locate(image: &Path, label: &str) -> Result<RootFs, DiskError> {
        let parts = gpt::read(image)?;
        let mut f =
            std::fs::File::open(image).map_err(DiskError::io(format!("opening {}", image.display())))?;
        let mut found = Vec::new();
        for p in parts {
            let probe =
                ext4::probe(&mut f, p.offset(), p.len()).map_err(DiskError::io("reading a partition"))?;
            match probe {
                Probe::BadExt(l, msg) if l == label => {
                    return Err(DiskError::BadFs {
                        path: image.display().to_string(),
                        label: l,
                        part: p.number,
                        msg,
                    });
                }
                Probe::Ext(sb) if sb.label == label => {
                    if !sb.is_ext4() {
                        return Err(DiskError::RootNotExt4 {
                            path: image.display().to_string(),
                            label: label.into(),
                            part: p.number,
                            fs: sb.flavour().into(),
                        });
                    }
                    let dfs = Debugfs::new(image, p.offset())?;
                    return Ok(RootFs { image: image.to_path_buf(), part: p, sb, dfs, backing: None });
                }
                Probe::Other(fs, l)
                    if l == label || (fs == "xfs" && label.starts_with(&l) && !l.is_empty()) =>
                {
                    return Err(DiskError::RootNotExt4 {
                        path: image.display().to_string(),
                        label: label.into(),
                        part: p.number,
                        fs: fs.into(),
                    });
                }
                other => found.push(format!("{}: {}", p.number, other.label().unwrap_or("no label"))),
            }
        }
        Err(DiskError::NoRoot {
            path: image.display().to_string(),
            label: label.into(),
            found: if found.is_empty() { "no partitions".into() } else { found.join(", ") },
        })
    }

    /// A metadata-only copy of partition `part` at `file` (offset 0); reads of
    /// regular files fault their data in from `backing` first.
    pub fn on_partition_copy(file: &Path, part: Partition, backing: Backing) -> Result<RootFs, DiskError> {
        let mut f =
            std::fs::File::open(file).map_err(DiskError::io(format!("opening {}", file.display())))?;
        let len = f.metadata().map_err(DiskError::io("reading the partition copy"))?.len();
        let sb = match ext4::probe(&mut f, 0, len).map_err(DiskError::io("reading the partition copy"))? {
            Probe::Ext(sb) => sb,
            _ => {
                return Err(DiskError::Corrupt {
                    path: file.display().to_string(),
                    msg: "the metadata copy has no ext4 superblock".into(),
                })
            }
        };
        let dfs = Debugfs::new(file, 0)?;
        Ok(RootFs { image: file.to_path_buf(), part, sb, dfs, backing: Some(std::sync::Arc::new(backing)) })
    }

    /// The base a metadata-only copy reads file data from.
    pub fn backing(&self) -> Option<&Backing> {
        self.backing.as_deref()
    }

    /// After the partition copy was grown: the partition's new extent.
    pub(crate) fn set_partition(&mut self, p: Partition) {
        self.part = p;
    }

    /// True for a metadata-only partition copy (offset 0 in its own file).
    pub fn is_partition_copy(&self) -> bool {
        self.backing.is_some()
    }

    /// Copy the data blocks of `path` from the backing base into the copy.
    fn fault_in(&self, path: &str) -> Result<(), DiskError> {
        let Some(b) = &self.backing else { return Ok(()) };
        let Some(blocks) = self.dfs.blocks(path)? else { return Ok(()) };
        let bs = self.sb.block_size;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.image)
            .map_err(DiskError::io(format!("opening {}", self.image.display())))?;
        let mut buf = vec![0u8; bs as usize];
        for blk in blocks {
            b.base
                .read_at(&mut buf, b.offset + blk * bs)
                .map_err(DiskError::io(format!("reading block {blk} of {path} from the base")))?;
            std::os::unix::fs::FileExt::write_all_at(&f, &buf, blk * bs)
                .map_err(DiskError::io("writing the partition copy"))?;
        }
        Ok(())
    }

    pub fn image(&self) -> &Path {
        &self.image
    }
    pub fn partition(&self) -> &Partition {
        &self.part
    }
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }
    /// Byte offset of the filesystem in the image.
    pub fn offset(&self) -> u64 {
        if self.backing.is_some() {
            return 0;
        }
        self.part.offset()
    }
    /// `image?offset=BYTES` for e2fsprogs tools.
    pub fn spec(&self) -> &str {
        self.dfs.spec()
    }

    /// Re-read the superblock (after writing or resizing).
    pub fn refresh(&mut self) -> Result<(), DiskError> {
        if self.backing.is_some() {
            let mut f = std::fs::File::open(&self.image)
                .map_err(DiskError::io(format!("opening {}", self.image.display())))?;
            let len = f.metadata().map_err(DiskError::io("reading the superblock"))?.len();
            if let Probe::Ext(sb) =
                ext4::probe(&mut f, 0, len).map_err(DiskError::io("reading the superblock"))?
            {
                self.sb = sb;
            }
            return Ok(());
        }
        let label = self.sb.label.clone();
        *self = RootFs::locate(&self.image, &label)?;
        Ok(())
    }

    /// A file of the root filesystem, `None` if it does not exist. This is how
    /// steps before composing read the base (e.g. `/var/lib/dpkg/status`).
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, DiskError> {
        self.fault_in(path)?;
        self.dfs.cat(path)
    }

    /// A symlink's target, `None` if the path does not exist.
    pub fn read_link(&self, path: &str) -> Result<Option<String>, DiskError> {
        self.dfs.readlink(path)
    }

    /// The entries of each directory (absent when the directory does not exist).
    pub fn list(&self, dirs: &[&str]) -> Result<BTreeMap<String, Vec<DirEntry>>, DiskError> {
        self.dfs.list(dirs)
    }

    /// Metadata of each path (absent when it does not exist), from its parent's listing.
    pub fn stat_many(&self, paths: &[&str]) -> Result<BTreeMap<String, DirEntry>, DiskError> {
        let parents: BTreeSet<&str> = paths.iter().map(|p| parent(p)).collect();
        let listing = self.list(&parents.into_iter().collect::<Vec<_>>())?;
        let mut out = BTreeMap::new();
        for (dir, entries) in listing {
            for e in entries {
                out.insert(join(&dir, &e.name), e);
            }
        }
        let wanted: BTreeSet<&str> = paths.iter().copied().collect();
        out.retain(|k, _| wanted.contains(k.as_str()));
        Ok(out)
    }

    /// Bytes the filesystem can still give to new files (free minus root-reserved).
    pub fn available(&self) -> u64 {
        self.sb.free_blocks.saturating_sub(self.sb.reserved_blocks).saturating_mul(self.sb.block_size)
    }

    /// `e2fsck -fn`: read-only full check; any problem fails.
    pub fn fsck(&self) -> Result<(), DiskError> {
        fsck_spec(self.spec())
    }

    /// Write every entry of `layer` (see [`write_script`]). `workdir` holds the
    /// temp files for generated content. Files the layer takes from the build host
    /// (`Content::Path`) are only allocated, where the filesystem allows it (extents,
    /// no inline data): their data is the caller's to lay in, at the returned places.
    pub fn write_layer(&mut self, layer: &Layer, workdir: &Path) -> Result<Vec<Placed>, DiskError> {
        if self.sb.needs_recovery() {
            return Err(DiskError::Corrupt {
                path: self.image.display().to_string(),
                msg: "the root filesystem's journal needs recovery (not cleanly unmounted); \
                      refusing to write into it"
                    .into(),
            });
        }
        if layer.mtime > self.sb.max_time() {
            return Err(DiskError::TimeRange {
                epoch: layer.mtime,
                limit: if self.sb.max_time() == i32::MAX as u64 {
                    "2038-01-19T03:14:07Z"
                } else {
                    "2446-05-10T22:38:55Z"
                },
                inode_size: self.sb.inode_size,
            });
        }
        let dirs: Vec<&str> = std::iter::once("/")
            .chain(layer.iter().filter(|(_, e)| matches!(e.kind, Kind::Dir)).map(|(p, _)| p.as_str()))
            .collect();
        let listing = self.list(&dirs)?;
        let mut existing = BTreeMap::new();
        for (dir, entries) in &listing {
            for e in entries {
                existing.insert(join(dir, &e.name), e.clone());
            }
        }
        self.refuse_base_symlinks(layer, &existing)?;
        let src = workdir.join("layer-src");
        std::fs::create_dir_all(&src).map_err(DiskError::io(format!("creating {}", src.display())))?;
        let allocate = (self.sb.incompat & (INCOMPAT_EXTENTS | INCOMPAT_INLINE_DATA) == INCOMPAT_EXTENTS)
            .then_some(self.sb.block_size);
        let (script, pending) = write_script(layer, &existing, &src, allocate)?;
        let mut c_script = String::new();
        // Relative source names (0, 1, …) keep host paths out of the command parser.
        let _ = writeln!(c_script, "set_current_time @{}", layer.mtime);
        c_script.push_str(&script);
        // Where fallocate put each allocated file (leaf extents), read in the same run.
        for (path, _, _) in &pending {
            let _ = writeln!(c_script, "ex -l {path}");
        }
        let out = self.dfs.batch(&c_script, true, Some(layer.mtime), Some(&src))?;
        let mut found = parse_leaf_extents(&String::from_utf8_lossy(&out));
        let bs = self.sb.block_size;
        let mut placed = Vec::with_capacity(pending.len());
        let mut init = String::new();
        for (path, source, size) in pending {
            let raw = found.remove(&path).unwrap_or_default();
            let extents = check_extents(&path, &raw, size.div_ceil(bs))?;
            // fallocate maps blocks as unwritten extents (read as zeros): mark each
            // one written, as the data goes there before anything reads the file.
            if raw.iter().any(|e| e.3) {
                let _ = writeln!(init, "eo {path}");
                for &(l, p, n, _) in &raw {
                    let _ = writeln!(init, "goto_block {l}\nreplace_node {l} {n} {p}");
                }
                init.push_str("ec\n");
            }
            placed.push(Placed { path, source, size, extents });
        }
        if !init.is_empty() {
            self.dfs.batch(&init, true, Some(layer.mtime), None)?;
        }
        self.refresh()?;
        Ok(placed)
    }
}

impl RootFs {
    /// A layer directory that is a symlink in the base (noble's `/lib` → `usr/lib`):
    /// debugfs cannot write through it, and writing a directory in its place would
    /// break the base. Refused, naming the symlink, its target and where to write.
    fn refuse_base_symlinks(
        &self,
        layer: &Layer,
        existing: &BTreeMap<String, DirEntry>,
    ) -> Result<(), DiskError> {
        for (dir, _) in layer.iter().filter(|(_, e)| matches!(e.kind, Kind::Dir)) {
            if !existing.get(dir.as_str()).is_some_and(|e| e.is_symlink()) {
                continue;
            }
            let target = self.read_link(dir)?.unwrap_or_default();
            let resolved = if target.starts_with('/') {
                target.clone()
            } else {
                normalize(&format!("{}/{target}", parent(dir)))
            };
            let below = format!("{dir}/");
            let path = layer
                .iter()
                .map(|(p, _)| p)
                .find(|p| p.starts_with(&below) && !matches!(layer.get(p).map(|e| &e.kind), Some(Kind::Dir)))
                .cloned()
                .unwrap_or_else(|| dir.clone());
            return Err(DiskError::ThroughSymlink { path, symlink: dir.clone(), target, resolved });
        }
        Ok(())
    }
}

/// `/a/./b/../c` → `/a/c` (lexically; `..` above the root stays at the root).
fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;

/// Leaf extents per file from the `ex -l PATH` sections of a debugfs run's output:
/// (first logical block, first physical block, blocks, unwritten).
fn parse_leaf_extents(out: &str) -> BTreeMap<String, Vec<(u64, u64, u64, bool)>> {
    let mut map: BTreeMap<String, Vec<(u64, u64, u64, bool)>> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in out.lines() {
        if let Some(cmd) = line.strip_prefix("debugfs: ") {
            cur = cmd.strip_prefix("ex -l ").map(|p| p.trim().to_string());
            if let Some(p) = &cur {
                map.entry(p.clone()).or_default();
            }
            continue;
        }
        let Some(path) = &cur else { continue };
        // ` 1/ 1   2/ 83    40 -    79   8066 -   8105     40 Uninit`: level/depth,
        // entry/entries, logical first - last, physical first - last, length, flags.
        let nums: Vec<u64> = line
            .split(|c: char| c.is_whitespace() || c == '/' || c == '-')
            .filter_map(|w| w.parse().ok())
            .collect();
        if nums.len() == 9 && nums[0] == nums[1] {
            let uninit = line.trim_end().ends_with("Uninit");
            if let Some(v) = map.get_mut(path) {
                v.push((nums[4], nums[6], nums[8], uninit));
            }
        }
    }
    map
}

/// The extents of an allocated file as (file block, fs block, blocks), checked to map
/// blocks 0..`blocks` each exactly once, in order.
fn check_extents(
    path: &str,
    raw: &[(u64, u64, u64, bool)],
    blocks: u64,
) -> Result<Vec<(u64, u64, u64)>, DiskError> {
    let mut next = 0;
    let mut out = Vec::with_capacity(raw.len());
    for &(l, p, n, _) in raw {
        if l != next || n == 0 {
            break;
        }
        out.push((l, p, n));
        next += n;
    }
    if next != blocks || out.len() != raw.len() {
        return Err(DiskError::Debugfs {
            op: "writing the layer",
            detail: format!("{path}: fallocate mapped blocks {raw:?}, expected 0..{blocks} in order"),
        });
    }
    Ok(out)
}

/// Lay the data of `placed` files into the raw disk `image` whose root filesystem
/// (blocks of `block_size`) starts at `fs_offset`: each file is read once, hashed as
/// it is read and checked against `expected` (its sha256), and written at its blocks,
/// the last block's tail zeroed.
pub fn lay_data(
    image: &Path,
    fs_offset: u64,
    block_size: u64,
    placed: &[Placed],
    expected: &dyn Fn(&str) -> Option<String>,
) -> Result<(), DiskError> {
    use sha2::Digest;
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(DiskError::io(format!("opening {}", image.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    for p in placed {
        let mut src = std::fs::File::open(&p.source).map_err(DiskError::io(format!(
            "{}: opening {}",
            p.path,
            p.source.display()
        )))?;
        let mut h = sha2::Sha256::new();
        for &(l, b, n) in &p.extents {
            let (mut at, end) = (l * block_size, (l + n) * block_size);
            let mut to = fs_offset + b * block_size;
            while at < end {
                let want = ((end - at) as usize).min(buf.len());
                let data = (p.size.saturating_sub(at) as usize).min(want);
                src.read_exact(&mut buf[..data]).map_err(DiskError::io(format!(
                    "{}: reading {}",
                    p.path,
                    p.source.display()
                )))?;
                h.update(&buf[..data]);
                buf[data..want].fill(0);
                f.write_all_at(&buf[..want], to)
                    .map_err(DiskError::io(format!("writing {}", image.display())))?;
                (at, to) = (at + want as u64, to + want as u64);
            }
        }
        check_digest(&p.path, &p.source, &hex::encode(h.finalize()), &expected(&p.path).unwrap_or_default())?;
    }
    Ok(())
}

/// The bytes read from `source` for the layer file `path` hash to `want` (what the
/// manifest records), else the source changed after it was verified (exit 3).
pub fn check_digest(path: &str, source: &Path, actual: &str, want: &str) -> Result<(), DiskError> {
    if want != actual {
        return Err(DiskError::Changed {
            path: path.to_string(),
            source_file: source.display().to_string(),
            expected: want.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// `e2fsck -fn SPEC` (SPEC may be `image?offset=BYTES`).
pub fn fsck_spec(spec: &str) -> Result<(), DiskError> {
    let exe =
        tools::find(&tools::E2FSCK).map_err(|e| DiskError::Tool { tool: "e2fsck", msg: e.to_string() })?;
    let out = super::interrupt::command(exe)
        .args(["-fn", spec])
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| DiskError::Tool { tool: "e2fsck", msg: format!("cannot run: {e}") })?;
    if !out.status.success() {
        return Err(DiskError::Fsck(format!(
            "{}{}(exit {})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code().unwrap_or(-1)
        )));
    }
    Ok(())
}

/// Bytes the layer will take in a filesystem with `block` sized blocks: every file
/// rounded up to blocks, a block per new directory and symlink, plus 2 % for extent
/// and directory growth.
pub fn layer_bytes(layer: &Layer, block: u64) -> Result<u64, DiskError> {
    let mut total = 0u64;
    for (path, e) in layer.iter() {
        total += match &e.kind {
            Kind::Dir | Kind::Symlink(_) => block,
            Kind::File(Content::Bytes(b)) => (b.len() as u64).div_ceil(block) * block,
            Kind::File(Content::Path(p)) => {
                let len = std::fs::metadata(p)
                    .map_err(DiskError::io(format!("{path}: reading {}", p.display())))?
                    .len();
                len.div_ceil(block) * block
            }
        };
    }
    Ok(total + total / 50)
}

/// A file to allocate only: (path in the image, file on the host, size).
type Pending = (String, PathBuf, u64);

/// The debugfs commands for `layer`, given what already exists. Generated content
/// is written to `src/<n>`; host files are linked there, so commands name sources
/// by number relative to `src`. With `allocate` (the block size), host files are not
/// copied: each becomes an empty file `fallocate`d to its size (returned as pending).
fn write_script(
    layer: &Layer,
    existing: &BTreeMap<String, DirEntry>,
    src: &Path,
    allocate: Option<u64>,
) -> Result<(String, Vec<Pending>), DiskError> {
    let mut pending = Vec::new();
    let empty = "empty";
    if allocate.is_some() {
        std::fs::write(src.join(empty), b"").map_err(DiskError::io(format!("staging {}", src.display())))?;
    }
    let t = layer.mtime;
    let mut s = String::new();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let times = |s: &mut String, p: &str| {
        for f in ["atime", "mtime", "ctime", "crtime"] {
            let _ = writeln!(s, "sif {p} {f} @{t}");
        }
    };
    let owner = |s: &mut String, p: &str, uid: u32, gid: u32| {
        let _ = writeln!(s, "sif {p} uid {uid}\nsif {p} gid {gid}");
    };
    let clash = |p: &str, have: &DirEntry, want: &str| DiskError::TypeClash {
        path: p.to_string(),
        existing: have.kind().into(),
        wanted: want.into(),
    };
    for (n, (path, e)) in layer.iter().enumerate() {
        if path == "/" {
            continue;
        }
        check_path(path)?;
        let have = existing.get(path.as_str());
        match &e.kind {
            Kind::Dir => {
                match have {
                    Some(h) if !h.is_dir() => return Err(clash(path, h, "directory")),
                    Some(_) => {
                        // Existing directories keep the base's mode and owner unless the
                        // layer asks for something other than the default root 0755.
                        if (e.mode, e.uid, e.gid) != (0o755, 0, 0) {
                            let _ = writeln!(s, "sif {path} mode 0{:o}", 0o040000 | (e.mode & 0o7777));
                            owner(&mut s, path, e.uid, e.gid);
                        }
                        continue;
                    }
                    None => {
                        let _ = writeln!(s, "mkdir {path}");
                        let _ = writeln!(s, "sif {path} mode 0{:o}", 0o040000 | (e.mode & 0o7777));
                        owner(&mut s, path, e.uid, e.gid);
                        touched.insert(path.clone());
                    }
                }
            }
            Kind::File(content) => {
                if let Some(h) = have {
                    if h.is_dir() {
                        return Err(clash(path, h, "file"));
                    }
                    let _ = writeln!(s, "rm {path}");
                }
                if let (Some(bs), Content::Path(p)) = (allocate, content) {
                    let len = std::fs::metadata(p)
                        .map_err(DiskError::io(format!("{path}: source {}", p.display())))?
                        .len();
                    let _ = writeln!(s, "write {empty} {path}");
                    if len > 0 {
                        let _ = writeln!(s, "fallocate {path} 0 {}", (len - 1) / bs);
                        let _ = writeln!(s, "sif {path} size {len}");
                        pending.push((path.clone(), p.clone(), len));
                    }
                    let _ = writeln!(s, "sif {path} mode 0{:o}", 0o100000 | (e.mode & 0o7777));
                    owner(&mut s, path, e.uid, e.gid);
                    times(&mut s, path);
                    touched.insert(parent(path).to_string());
                    continue;
                }
                let name = n.to_string();
                let dst = src.join(&name);
                match content {
                    Content::Bytes(b) => std::fs::write(&dst, b),
                    Content::Path(p) => {
                        // debugfs copies it: a digest nothing checked yet is checked here.
                        if let Some(want) = layer.known_digest(path) {
                            let got = std::fs::File::open(p)
                                .and_then(|mut f| crate::types::Sha256::of_reader(&mut f, |_| {}))
                                .map_err(DiskError::io(format!("{path}: reading {}", p.display())))?
                                .0;
                            check_digest(path, p, got.as_str(), want.as_str())?;
                        }
                        let abs = std::fs::canonicalize(p)
                            .map_err(DiskError::io(format!("{path}: source {}", p.display())))?;
                        std::os::unix::fs::symlink(abs, &dst)
                    }
                }
                .map_err(DiskError::io(format!("staging {path}")))?;
                let _ = writeln!(s, "write {name} {path}");
                let _ = writeln!(s, "sif {path} mode 0{:o}", 0o100000 | (e.mode & 0o7777));
                owner(&mut s, path, e.uid, e.gid);
            }
            Kind::Symlink(target) => {
                check_path(target)?;
                if let Some(h) = have {
                    if h.is_dir() {
                        return Err(clash(path, h, "symlink"));
                    }
                    let _ = writeln!(s, "rm {path}");
                }
                let _ = writeln!(s, "symlink {path} {target}");
                owner(&mut s, path, e.uid, e.gid);
            }
        }
        times(&mut s, path);
        touched.insert(parent(path).to_string());
    }
    // Directories whose entries changed got debugfs's clock; pin them explicitly too.
    for d in touched {
        times(&mut s, &d);
    }
    Ok((s, pending))
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replaces_files_and_keeps_existing_dirs() {
        let d = tempfile::tempdir().unwrap();
        let mut l = Layer::new(100);
        l.file("/etc/a.conf", Content::Bytes(b"x".to_vec()), 0o640);
        l.symlink("/etc/b", "/etc/a.conf");
        let mut ex = BTreeMap::new();
        let de = |name: &str, mode| DirEntry { name: name.into(), inode: 1, mode, uid: 0, gid: 0, size: 0 };
        ex.insert("/etc".to_string(), de("etc", 0o040755));
        ex.insert("/etc/a.conf".to_string(), de("a.conf", 0o100644));
        let (s, _) = write_script(&l, &ex, d.path(), None).unwrap();
        assert!(!s.contains("mkdir /etc\n"));
        assert!(s.contains("rm /etc/a.conf\nwrite 1 /etc/a.conf\nsif /etc/a.conf mode 0100640\n"));
        assert!(s.contains("symlink /etc/b /etc/a.conf\n"));
        assert!(s.contains("sif /etc mtime @100\n"));
        assert_eq!(std::fs::read(d.path().join("1")).unwrap(), b"x");
        ex.insert("/etc/b".to_string(), de("b", 0o040755));
        assert!(matches!(write_script(&l, &ex, d.path(), None), Err(DiskError::TypeClash { .. })));
    }

    /// The bytes of a placed file go into its blocks (the last block's tail zeroed),
    /// once, checked against the expected sha256; a source that does not hash to it is
    /// an integrity failure (exit 3).
    #[test]
    fn placed_files_are_laid_in_and_checked() {
        use crate::exit::{Classify, Code};
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk");
        std::fs::write(&img, vec![0xAAu8; 16 * 1024]).unwrap();
        let src = d.path().join("src");
        let data: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&src, &data).unwrap();
        // 1024-byte blocks at offset 2048: file blocks 0 and 1 at fs blocks 5 and 2.
        let p = Placed {
            path: "/usr/bin/x".into(),
            source: src.clone(),
            size: data.len() as u64,
            extents: vec![(0, 5, 1), (1, 2, 1)],
        };
        let sha = crate::types::Sha256::of(&data).to_string();
        lay_data(&img, 2048, 1024, std::slice::from_ref(&p), &|_| Some(sha.clone())).unwrap();
        let disk = std::fs::read(&img).unwrap();
        assert_eq!(&disk[2048 + 5 * 1024..2048 + 6 * 1024], &data[..1024]);
        assert_eq!(&disk[2048 + 2 * 1024..2048 + 2 * 1024 + 476], &data[1024..]);
        assert!(disk[2048 + 2 * 1024 + 476..2048 + 3 * 1024].iter().all(|&b| b == 0));
        assert!(disk[..2048 + 2 * 1024].iter().all(|&b| b == 0xAA));
        let e = lay_data(&img, 2048, 1024, &[p], &|_| Some("0".repeat(64))).unwrap_err();
        assert_eq!(e.code(), Code::Integrity, "{e}");
        assert!(e.to_string().contains("/usr/bin/x") && e.to_string().contains(&sha), "{e}");
    }

    #[test]
    fn leaf_extents_are_parsed_from_debugfs_output() {
        let out = "debugfs: write empty /a\nAllocated inode: 12\ndebugfs: ex -l /a\n\
                   Level Entries       Logical        Physical Length Flags\n \
                   1/ 1   1/ 83     0 -    39   7986 -   8025     40 Uninit\n \
                   1/ 1   2/ 83    40 -    40   8066 -   8066      1 \n\
                   debugfs: ex -l /b\ndebugfs: sif /b size 3\n";
        let m = parse_leaf_extents(out);
        assert_eq!(m["/a"], [(0, 7986, 40, true), (40, 8066, 1, false)]);
        assert!(m["/b"].is_empty());
        assert_eq!(check_extents("/a", &m["/a"], 41).unwrap(), [(0, 7986, 40), (40, 8066, 1)]);
        assert!(check_extents("/a", &m["/a"], 42).is_err());
        assert!(check_extents("/a", &[(1, 5, 1, false)], 1).is_err());
    }
}
