//! Deterministic chart packaging: the same chart files give the same `.tgz` bytes.
//!
//! Entries are the chart's files (no directory entries, as `helm package` writes them)
//! under `<name>/`, sorted by path, mode 0644, uid/gid 0 with empty owner names, one fixed
//! mtime; the gzip header carries no mtime and no file name.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use flate2::{Compression, GzBuilder};
use include_dir::Dir;
use serde::Deserialize;

use super::ignore::Rules;
use super::ChartError;

/// A packaged chart.
#[derive(Debug, Clone)]
pub struct Packaged {
    pub name: String,
    pub version: String,
    pub bytes: Vec<u8>,
}

impl Packaged {
    /// `<name>-<version>.tgz`, the file name Helm gives a package.
    pub fn file_name(&self) -> String {
        format!("{}-{}.tgz", self.name, self.version)
    }
}

/// The fields of Chart.yaml packaging needs; the rest is Helm's business.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChartMeta {
    api_version: Option<String>,
    name: Option<String>,
    version: Option<serde_yaml::Value>,
}

/// Deepest directory nesting followed (guards against symlink loops).
const MAX_DEPTH: usize = 32;

/// Package the chart in directory `dir`.
pub fn package_dir(dir: &Path, mtime: u64) -> Result<Packaged, ChartError> {
    let io = |p: &Path, source| ChartError::Io { path: p.display().to_string(), source };
    let ignore_file = dir.join(".helmignore");
    let mut rules = Rules::with_defaults();
    match std::fs::read_to_string(&ignore_file) {
        Ok(t) => rules.parse(&t).map_err(|msg| invalid(&ignore_file.display().to_string(), msg))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&ignore_file, e)),
    }
    if !dir.join("Chart.yaml").is_file() {
        return Err(invalid(&dir.display().to_string(), "no Chart.yaml: not a chart directory".into()));
    }
    let mut files = BTreeMap::new();
    let top = std::fs::canonicalize(dir).map_err(|e| io(dir, e))?;
    walk(&Walk { root: dir, top: &top, rules: &rules }, "", 0, &mut files)?;
    package_files(&dir.display().to_string(), files, mtime)
}

/// Helm's limit on one file of a chart (`MaxDecompressedFileSize`): a larger one
/// cannot be loaded from the package anyway.
const MAX_FILE_BYTES: u64 = 5 << 20;

struct Walk<'a> {
    root: &'a Path,
    /// `root`, canonical: every file packed must resolve below it.
    top: &'a Path,
    rules: &'a Rules,
}

/// Collect the chart's files. Symlinks are followed as `helm package` follows them,
/// but only to targets inside the chart directory: a link to a host file (`/etc/passwd`,
/// `../secrets`) is refused, never packed. Like Helm, files that are neither regular
/// files nor directories, and files over Helm's size limit, are refused too.
fn walk(w: &Walk, rel: &str, depth: usize, out: &mut BTreeMap<String, Vec<u8>>) -> Result<(), ChartError> {
    let dir = w.root.join(rel);
    let io = |p: &Path, source| ChartError::Io { path: p.display().to_string(), source };
    if depth > MAX_DEPTH {
        return Err(invalid(
            &dir.display().to_string(),
            "directories nested too deeply (symlink loop?)".into(),
        ));
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
        let e = e.map_err(|e| io(&dir, e))?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| invalid(&dir.display().to_string(), format!("file name {n:?} is not UTF-8")))?;
        names.push(name);
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel_path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let link = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?.file_type().is_symlink();
        let meta = std::fs::metadata(&path).map_err(|e| {
            invalid(
                &w.root.display().to_string(),
                format!("{rel_path}: cannot be read (a dangling symlink?): {e}"),
            )
        })?;
        if w.rules.ignored(&rel_path, meta.is_dir()) {
            continue;
        }
        if link {
            let target = std::fs::canonicalize(&path).map_err(|e| io(&path, e))?;
            if !target.starts_with(w.top) {
                return Err(invalid(
                    &w.root.display().to_string(),
                    format!(
                        "{rel_path}: symlink to {} leaves the chart directory; only links to files \
                         inside the chart are followed",
                        target.display()
                    ),
                ));
            }
        }
        if meta.is_dir() {
            walk(w, &rel_path, depth + 1, out)?;
        } else if meta.is_file() {
            if meta.len() > MAX_FILE_BYTES {
                return Err(invalid(
                    &w.root.display().to_string(),
                    format!("{rel_path}: {} bytes, more than Helm loads from a chart (5 MiB)", meta.len()),
                ));
            }
            let mut data = Vec::new();
            std::fs::File::open(&path)
                .and_then(|f| {
                    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE_BYTES + 1), &mut data)
                })
                .map_err(|e| io(&path, e))?;
            if data.len() as u64 > MAX_FILE_BYTES {
                return Err(invalid(&w.root.display().to_string(), format!("{rel_path}: grew past 5 MiB")));
            }
            out.insert(rel_path, data);
        } else {
            return Err(invalid(
                &w.root.display().to_string(),
                format!("{rel_path}: not a regular file or directory (a device, socket or fifo)"),
            ));
        }
    }
    Ok(())
}

/// Package a chart embedded in the binary (`include_dir`), applying its `.helmignore`.
pub fn package_embedded(dir: &Dir<'_>, origin: &str, mtime: u64) -> Result<Packaged, ChartError> {
    let mut rules = Rules::with_defaults();
    if let Some(f) = dir.get_file(".helmignore") {
        rules.parse(f.contents_utf8().unwrap_or_default()).map_err(|m| invalid(origin, m))?;
    }
    let mut files = BTreeMap::new();
    collect_embedded(dir, &rules, &mut files)?;
    package_files(origin, files, mtime)
}

fn collect_embedded(
    dir: &Dir<'_>,
    rules: &Rules,
    out: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), ChartError> {
    for d in dir.dirs() {
        let rel = rel_str(d.path())?;
        if !rules.ignored(&rel, true) {
            collect_embedded(d, rules, out)?;
        }
    }
    for f in dir.files() {
        let rel = rel_str(f.path())?;
        if !rules.ignored(&rel, false) {
            out.insert(rel, f.contents().to_vec());
        }
    }
    Ok(())
}

fn rel_str(p: &Path) -> Result<String, ChartError> {
    p.to_str()
        .map(|s| s.replace('\\', "/"))
        .ok_or_else(|| invalid("embedded chart", format!("path {p:?} is not UTF-8")))
}

fn invalid(origin: &str, msg: String) -> ChartError {
    ChartError::Invalid { origin: origin.to_string(), msg }
}

/// Validate Chart.yaml and write the archive. `files` maps chart-relative paths to bytes.
pub fn package_files(
    origin: &str,
    files: BTreeMap<String, Vec<u8>>,
    mtime: u64,
) -> Result<Packaged, ChartError> {
    let chart_yaml = files
        .get("Chart.yaml")
        .ok_or_else(|| invalid(origin, "no Chart.yaml: not a chart directory".into()))?;
    let meta: ChartMeta =
        serde_yaml::from_slice(chart_yaml).map_err(|e| invalid(origin, format!("Chart.yaml: {e}")))?;
    if meta.api_version.as_deref() != Some("v2") && meta.api_version.as_deref() != Some("v1") {
        return Err(invalid(origin, "Chart.yaml: apiVersion must be v2 (or v1)".into()));
    }
    let name = meta.name.unwrap_or_default();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(invalid(origin, format!("Chart.yaml: name {name:?} must be non-empty [A-Za-z0-9._-]")));
    }
    let version = match meta.version {
        Some(serde_yaml::Value::String(s)) => s,
        Some(serde_yaml::Value::Number(n)) => n.to_string(),
        _ => return Err(invalid(origin, "Chart.yaml: version is required".into())),
    };
    if !is_semver(&version) {
        return Err(invalid(origin, format!("Chart.yaml: version {version:?} is not SemVer 2")));
    }
    let gz = GzBuilder::new().mtime(0).write(Vec::new(), Compression::best());
    let mut tar = tar::Builder::new(gz);
    for (rel, data) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        let io = |source| ChartError::Io { path: format!("{origin}: {rel}"), source };
        tar.append_data(&mut h, format!("{name}/{rel}"), data.as_slice()).map_err(io)?;
    }
    let io = |source| ChartError::Io { path: origin.to_string(), source };
    let mut gz = tar.into_inner().map_err(io)?;
    gz.flush().map_err(io)?;
    let bytes = gz.finish().map_err(io)?;
    Ok(Packaged { name, version, bytes })
}

/// `MAJOR.MINOR.PATCH[-pre][+build]` with numeric parts without leading zeros.
fn is_semver(v: &str) -> bool {
    let v = v.strip_prefix('v').unwrap_or(v);
    let (core, _build) = v.split_once('+').unwrap_or((v, ""));
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let ident_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let nums: Vec<&str> = core.split('.').collect();
    nums.len() == 3
        && nums.iter().all(|n| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n.len() == 1 || !n.starts_with('0'))
        })
        && pre.is_none_or(|p| p.split('.').all(ident_ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(extra: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        m.insert("Chart.yaml".to_string(), b"apiVersion: v2\nname: demo\nversion: 1.2.3\n".to_vec());
        for (k, v) in extra {
            m.insert(k.to_string(), v.as_bytes().to_vec());
        }
        m
    }

    #[test]
    fn archive_is_sorted_fixed_and_prefixed() {
        let p =
            package_files("t", chart(&[("values.yaml", "a: 1\n"), ("templates/x.yaml", "")]), 42).unwrap();
        assert_eq!(p.file_name(), "demo-1.2.3.tgz");
        // gzip header: magic, deflate, no flags (no name), mtime 0.
        assert_eq!(&p.bytes[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(p.bytes.as_slice()));
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()), (0o644, 0, 0));
            assert_eq!(h.mtime().unwrap(), 42);
            seen.push(e.path().unwrap().display().to_string());
        }
        assert_eq!(seen, ["demo/Chart.yaml", "demo/templates/x.yaml", "demo/values.yaml"]);
        let again = package_files("t", chart(&[("templates/x.yaml", ""), ("values.yaml", "a: 1\n")]), 42);
        assert_eq!(again.unwrap().bytes, p.bytes);
    }

    #[test]
    fn long_paths_survive() {
        let long = format!("templates/{}/x.yaml", "d".repeat(120));
        let p = package_files("t", chart(&[(&long, "k: v\n")]), 0).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(p.bytes.as_slice()));
        let paths: Vec<String> =
            a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert!(paths.contains(&format!("demo/{long}")), "{paths:?}");
    }

    #[test]
    fn bad_chart_yaml_is_input_error() {
        let mut m = chart(&[]);
        m.insert("Chart.yaml".into(), b"apiVersion: v2\nname: demo\nversion: one\n".to_vec());
        let e = package_files("t", m, 0).unwrap_err();
        assert!(e.to_string().contains("SemVer"), "{e}");
        assert!(package_files("t", BTreeMap::new(), 0).unwrap_err().to_string().contains("Chart.yaml"));
        assert!(
            is_semver("0.1.0") && is_semver("1.0.0-rc.1+b7") && !is_semver("01.0.0") && !is_semver("1.0")
        );
    }
}
