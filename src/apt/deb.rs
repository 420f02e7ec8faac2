//! Reading a `.deb`: an `ar` archive of `debian-binary` (`2.0`), `control.tar[.gz|.xz|.zst]`
//! and `data.tar[.gz|.xz|.zst]` (deb(5)). Everything is read in memory: the packages
//! this installs are small tools.

use std::collections::BTreeMap;
use std::io::Read;

use super::control::{self, Stanza};
use super::index::decompress_bytes;

/// One member of `data.tar`, with its path made absolute (`./usr/bin/x` → `/usr/bin/x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// A hard link to an earlier member (absolute path).
    HardLink(String),
}

#[derive(Debug, Clone)]
pub struct DataEntry {
    pub path: String,
    pub kind: DataKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub struct Deb {
    pub control: Stanza,
    /// Other control members by file name (`md5sums`, `conffiles`, `postinst`…).
    pub control_files: BTreeMap<String, Vec<u8>>,
    /// data.tar members in archive order.
    pub data: Vec<DataEntry>,
}

/// Parse a .deb. Errors are plain messages; the caller names the package.
pub fn read(bytes: &[u8]) -> Result<Deb, String> {
    let members = ar_members(bytes)?;
    let get =
        |prefix: &str| members.iter().find(|(n, _)| n == prefix || n.starts_with(&format!("{prefix}.")));
    match members.first() {
        Some((n, b)) if n == "debian-binary" && b.starts_with(b"2.") => {}
        _ => return Err("not a Debian binary package (first member must be debian-binary 2.x)".into()),
    }
    let (cname, craw) = get("control.tar").ok_or("no control.tar member")?;
    let (dname, draw) = get("data.tar").ok_or("no data.tar member")?;
    let ctar = decompress_bytes(cname, craw).map_err(|e| format!("{cname}: {e}"))?;
    let dtar = decompress_bytes(dname, draw).map_err(|e| format!("{dname}: {e}"))?;

    let mut control_files = BTreeMap::new();
    for e in tar_entries(&ctar).map_err(|e| format!("{cname}: {e}"))? {
        if let DataKind::File(b) = e.kind {
            let name = e.path.trim_start_matches('/').to_string();
            if !name.is_empty() && !name.contains('/') {
                control_files.insert(name, b);
            }
        }
    }
    let ctext = control_files.remove("control").ok_or("control.tar has no control file")?;
    let ctext = String::from_utf8(ctext).map_err(|_| "control file is not UTF-8")?;
    let mut stanzas = control::parse(&ctext, "control")?;
    if stanzas.len() != 1 {
        return Err(format!("control file has {} stanzas, expected 1", stanzas.len()));
    }
    let control = stanzas.remove(0);
    let data = tar_entries(&dtar).map_err(|e| format!("{dname}: {e}"))?;
    Ok(Deb { control, control_files, data })
}

/// The members of an `ar` archive (common format, as dpkg-deb writes it).
fn ar_members(b: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let mut rest = b.strip_prefix(b"!<arch>\n").ok_or("not an ar archive")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 60 || &rest[58..60] != b"`\n" {
            return Err("truncated or corrupt ar member header".into());
        }
        let field = |a: usize, z: usize| String::from_utf8_lossy(&rest[a..z]).trim().to_string();
        let name = field(0, 16).trim_end_matches('/').to_string();
        let size: usize = field(48, 58).parse().map_err(|_| "bad ar member size")?;
        let body = rest.get(60..60 + size).ok_or("truncated ar member")?;
        out.push((name, body));
        let next = (60 + size + 1) & !1; // members are 2-byte aligned
        rest = rest.get(next.min(rest.len())..).unwrap_or(&[]);
    }
    Ok(out)
}

/// All entries of a tar stream; paths absolute and normalised, `..` refused.
fn tar_entries(tar_bytes: &[u8]) -> Result<Vec<DataEntry>, String> {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let raw = e.path().map_err(|e| e.to_string())?.to_string_lossy().to_string();
        let Some(path) = clean(&raw) else {
            return Err(format!("unsafe path {raw:?}"));
        };
        let h = e.header();
        let mode = h.mode().map_err(|e| e.to_string())? & 0o7777;
        let uid = h.uid().map_err(|e| e.to_string())? as u32;
        let gid = h.gid().map_err(|e| e.to_string())? as u32;
        let link = || -> Result<String, String> {
            Ok(e.link_name()
                .map_err(|e| e.to_string())?
                .ok_or("link without target")?
                .to_string_lossy()
                .to_string())
        };
        let kind = match h.entry_type() {
            tar::EntryType::Directory => DataKind::Dir,
            tar::EntryType::Symlink => DataKind::Symlink(link()?),
            tar::EntryType::Link => {
                let t = link()?;
                DataKind::HardLink(clean(&t).ok_or_else(|| format!("unsafe hard link {t:?}"))?)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut b = Vec::new();
                e.read_to_end(&mut b).map_err(|e| e.to_string())?;
                DataKind::File(b)
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            t => return Err(format!("{path}: unsupported tar entry type {t:?}")),
        };
        out.push(DataEntry { path, kind, mode, uid, gid });
    }
    Ok(out)
}

/// `./usr/bin/x` → `/usr/bin/x`; `./` → `/`; None for `..` components.
fn clean(p: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean("./usr/bin/x").as_deref(), Some("/usr/bin/x"));
        assert_eq!(clean("./").as_deref(), Some("/"));
        assert_eq!(clean("usr//lib/").as_deref(), Some("/usr/lib"));
        assert_eq!(clean("./../etc"), None);
    }

    #[test]
    fn rejects_non_debs() {
        assert!(read(b"hello").is_err());
        assert!(read(b"!<arch>\n").is_err());
    }
}
