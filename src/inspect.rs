//! `imgbuild inspect`: read /etc/imgbuild/manifest.json out of an image offline and
//! re-verify every listed entry (content sha256 and size, mode, owner, symlink
//! target) with debugfs. Any mismatch is an integrity failure (exit 3).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::disk::{self, OpenImage, RootFs};
use crate::exit::Classified;
use crate::manifest::{FileKind, Manifest, IN_IMAGE_PATH};

/// Read and verify the manifest of the image at `image` (any format a build writes).
pub fn inspect(image: &Path, root_label: &str) -> Result<Manifest> {
    let open = crate::output::OutputSet::beside(image).open(root_label)?;
    manifest_of(&open, image)
}

/// The manifest of an opened image, every entry re-verified against its filesystem.
pub fn manifest_of(open: &OpenImage, image: &Path) -> Result<Manifest> {
    let root = &open.root;
    let bytes = root.read_file(IN_IMAGE_PATH)?.ok_or_else(|| {
        Classified::input(format!("{}: no {IN_IMAGE_PATH}: not built by imgbuild", image.display()))
    })?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Classified::integrity(format!("{}: {IN_IMAGE_PATH} is not a valid manifest: {e}", image.display()))
    })?;
    let problems = verify(root, &m, open.scratch())?;
    if !problems.is_empty() {
        let n = problems.len();
        return Err(Classified::integrity(format!(
            "{}: {n} {} not match the manifest:\n  {}",
            image.display(),
            if n == 1 { "entry does" } else { "entries do" },
            problems.join("\n  ")
        ))
        .into());
    }
    Ok(m)
}

/// Every mismatch between the manifest and the filesystem, one line each.
fn verify(root: &RootFs, m: &Manifest, tmp: &Path) -> Result<Vec<String>> {
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    for p in &paths {
        disk::debugfs::check_path(p).map_err(|e| Classified::integrity(e.to_string()))?;
    }
    let stats = root.stat_many(&paths)?;
    let dump_dir = tmp.join("dump");
    fs_err::create_dir_all(&dump_dir)?;
    let mut script = String::new();
    for (i, f) in m.files.iter().enumerate() {
        if f.kind == FileKind::File && stats.get(&f.path).is_some_and(|s| s.is_file()) {
            let _ = writeln!(script, "dump {} {i}", f.path);
        }
    }
    let dfs = disk::debugfs::Debugfs::new(root.image(), root.offset())?;
    dfs.batch(&script, false, None, Some(&dump_dir))?;

    let mut problems = Vec::new();
    for (i, f) in m.files.iter().enumerate() {
        let Some(st) = stats.get(&f.path) else {
            problems.push(format!("{}: missing", f.path));
            continue;
        };
        let mut bad = |what: String| problems.push(format!("{}: {what}", f.path));
        let kind_ok = match f.kind {
            FileKind::File => st.is_file(),
            FileKind::Dir => st.is_dir(),
            FileKind::Symlink => st.is_symlink(),
        };
        if !kind_ok {
            bad(format!("is a {}, manifest says {:?}", st.kind(), f.kind));
            continue;
        }
        // Directories the base already had keep the base's mode and owner (see
        // disk::rootfs), so only their kind is checked.
        if f.kind == FileKind::Dir {
            continue;
        }
        let mode = format!("{:04o}", st.mode & 0o7777);
        if f.kind == FileKind::File && mode != f.mode {
            bad(format!("mode {mode}, manifest says {}", f.mode));
        }
        if (st.uid, st.gid) != (f.uid, f.gid) {
            bad(format!("owner {}:{}, manifest says {}:{}", st.uid, st.gid, f.uid, f.gid));
        }
        match f.kind {
            FileKind::File => {
                let p = dump_dir.join(i.to_string());
                let sha = crate::types::Sha256::of_file(&p)?.to_string();
                let size = fs_err::metadata(&p)?.len();
                if Some(size) != f.size {
                    bad(format!("size {size}, manifest says {}", f.size.unwrap_or_default()));
                }
                if Some(&sha) != f.sha256.as_ref() {
                    bad(format!("sha256 {sha}, manifest says {}", f.sha256.as_deref().unwrap_or("")));
                }
                let _ = std::fs::remove_file(&p);
            }
            FileKind::Symlink => {
                let t = root.read_link(&f.path)?;
                if t.as_deref() != f.target.as_deref() {
                    bad(format!("points to {:?}, manifest says {:?}", t, f.target));
                }
            }
            FileKind::Dir => {}
        }
    }
    Ok(problems)
}
