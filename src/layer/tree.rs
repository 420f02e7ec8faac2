//! The static files of `image-files/{common,<role>}/`, embedded in the binary.
//!
//! Rules: a file below a `bin/`, `sbin/` or `libexec/` directory is executable
//! (0755), anything else 0644. A unit in `/etc/systemd/system/` whose `[Install]`
//! section says `WantedBy=X` (or `RequiredBy=X`) is enabled the way
//! `systemctl enable` does it: a symlink `/etc/systemd/system/X.wants/U` pointing
//! at the unit. Role files replace common files of the same path.

use include_dir::{include_dir, Dir, DirEntry};

use super::{Content, Layer};
use crate::types::Role;

static IMAGE_FILES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/image-files");

/// Where units live in the image, and where `systemctl enable` puts its links.
pub const UNIT_DIR: &str = "/etc/systemd/system";

const UNIT_SUFFIXES: [&str; 6] = [".service", ".socket", ".timer", ".path", ".target", ".mount"];

/// Every embedded file for `role` as (path in image, bytes), common first, so a
/// role file of the same path replaces the common one when inserted in order.
pub fn files(role: Role) -> Vec<(String, &'static [u8])> {
    let mut out = Vec::new();
    for top in ["common", role.as_str()] {
        if let Some(d) = IMAGE_FILES.get_dir(top) {
            walk(d, top, &mut out);
        }
    }
    out
}

fn walk(d: &'static Dir<'static>, top: &str, out: &mut Vec<(String, &'static [u8])>) {
    for e in d.entries() {
        match e {
            DirEntry::Dir(sub) => walk(sub, top, out),
            // Placeholders that keep empty directories in git are not image content.
            DirEntry::File(f) if f.path().file_name().is_some_and(|n| n == ".gitkeep") => {}
            DirEntry::File(f) => {
                let rel = f.path().strip_prefix(top).unwrap_or(f.path());
                out.push((format!("/{}", rel.to_string_lossy()), f.contents()));
            }
        }
    }
}

/// Mode by location: executables live in bin/, sbin/ and libexec/ directories.
pub fn mode_for(path: &str) -> u32 {
    let mut dirs = path.split('/').rev().skip(1);
    if dirs.any(|c| matches!(c, "bin" | "sbin" | "libexec")) {
        0o755
    } else {
        0o644
    }
}

/// The targets a unit's `[Install]` section asks to be wanted/required by, as
/// (`X.wants` or `X.requires` directory name) pairs.
pub fn install_targets(unit_text: &str) -> Vec<String> {
    let mut in_install = false;
    let mut out = Vec::new();
    for line in unit_text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let suffix = match key.trim() {
            "WantedBy" => "wants",
            "RequiredBy" => "requires",
            _ => continue,
        };
        out.extend(value.split_whitespace().map(|t| format!("{t}.{suffix}")));
    }
    out
}

/// Is `path` a unit directly in [`UNIT_DIR`] (not a drop-in, not in a .wants dir)?
pub fn unit_name(path: &str) -> Option<&str> {
    let name = path.strip_prefix(UNIT_DIR)?.strip_prefix('/')?;
    (!name.contains('/') && UNIT_SUFFIXES.iter().any(|s| name.ends_with(s))).then_some(name)
}

/// Enable the unit at `path` (in [`UNIT_DIR`]) as `systemctl enable` would.
pub fn enable(layer: &mut Layer, path: &str, text: &str) {
    if let Some(name) = unit_name(path) {
        for dir in install_targets(text) {
            layer.symlink(&format!("{UNIT_DIR}/{dir}/{name}"), path);
        }
    }
}

/// Install the embedded tree for `role`, enabling units that ask for it.
pub fn install(layer: &mut Layer, role: Role) {
    for (path, bytes) in files(role) {
        layer.file(&path, Content::Bytes(bytes.to_vec()), mode_for(&path));
        enable(layer, &path, &String::from_utf8_lossy(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_directory() {
        assert_eq!(mode_for("/usr/libexec/imgbuild/join.sh"), 0o755);
        assert_eq!(mode_for("/usr/local/sbin/x"), 0o755);
        assert_eq!(mode_for("/etc/bin.conf"), 0o644);
        assert_eq!(mode_for("/etc/systemd/system/kubelet.service"), 0o644);
        assert_eq!(mode_for("/bin"), 0o644);
    }

    #[test]
    fn install_section_parsing() {
        let u = "[Unit]\nWantedBy=nope.target\n[Install]\n# WantedBy=commented.target\n\
                 WantedBy=multi-user.target  graphical.target\nRequiredBy=x.target\n[X-Other]\nWantedBy=y\n";
        assert_eq!(
            install_targets(u),
            ["multi-user.target.wants", "graphical.target.wants", "x.target.requires"]
        );
        assert!(install_targets("[Service]\nExecStart=/bin/true\n").is_empty());
    }

    #[test]
    fn only_top_level_units_are_enabled() {
        assert_eq!(unit_name("/etc/systemd/system/kubelet.service"), Some("kubelet.service"));
        assert_eq!(unit_name("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"), None);
        assert_eq!(unit_name("/etc/systemd/system/multi-user.target.wants/x.service"), None);
        assert_eq!(unit_name("/etc/systemd/systemd.conf"), None);
    }
}
