//! Stand-ins for a recipe's downloads, shaped like the real ones: the members each
//! artifact's `install` entries take out of a release tarball, a raw binary, or a Helm
//! chart package. The content of every binary is a shell script ([`Standin`]).

use std::io::Write as _;

use anyhow::{bail, Context as _, Result};
use serde_yaml::Value;

use crate::MTIME;

/// The members a glob `from` picks out of the real release tarballs (only what a node
/// uses; a glob cannot name its members, so they are listed here).
const GLOB_MEMBERS: &[(&str, &[&str])] = &[
    ("containerd", &["bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"]),
    ("cni-plugins", &["bridge", "host-local", "loopback", "portmap"]),
];

/// What every stand-in binary contains.
#[derive(Debug, Clone)]
pub enum Standin {
    /// A script naming the binary it stands in for (the Rust tests: which file went where
    /// is visible in the image).
    PerName,
    /// One multi-call script for every binary (the boot test's ci/boot/stub/standin, which
    /// acts by the name it is called as).
    Script(Vec<u8>),
}

impl Standin {
    /// The bytes of the stand-in for the binary called `name`.
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        match self {
            Standin::PerName => {
                format!("#!/bin/sh\n# imgbuild test stand-in for {name}\necho \"{name} stand-in\"\n")
                    .into_bytes()
            }
            Standin::Script(b) => b.clone(),
        }
    }
}

/// A recipe URL or member template with `{version}`, `{arch}` and `{name}` filled in.
pub fn render(template: &str, art: &Value, arch: &str) -> String {
    let field = |k: &str| match &art[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    template.replace("{version}", &field("version")).replace("{arch}", arch).replace("{name}", &field("name"))
}

/// Whether `name` matches the shell glob `pat` (`*`, `?`; like Python's fnmatch, `*`
/// crosses `/`).
pub fn glob_match(pat: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pat.as_bytes(), name.as_bytes())
}

/// The tarball members the install entries of artifact `art` read (empty: the download is
/// installed as a file).
pub fn members(art: &Value, arch: &str) -> Result<Vec<String>> {
    let name = art["name"].as_str().unwrap_or_default();
    let mut out = Vec::new();
    for ins in art["install"].as_sequence().into_iter().flatten() {
        let Some(from) = ins["from"].as_str() else { continue };
        let from = render(from, art, arch);
        if from.contains(['*', '?', '[']) {
            let dir = from.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
            let default = [format!("{dir}{name}")];
            let known: Vec<String> = GLOB_MEMBERS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, m)| m.iter().map(|s| s.to_string()).collect())
                .unwrap_or_else(|| default.to_vec());
            let picked: Vec<String> = known.into_iter().filter(|m| glob_match(&from, m)).collect();
            if picked.is_empty() {
                bail!("no stand-in members for {name} match {from:?}");
            }
            out.extend(picked);
        } else {
            out.push(from);
        }
    }
    Ok(out)
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = flate2::GzBuilder::new().mtime(MTIME as u32).write(Vec::new(), flate2::Compression::fast());
    gz.write_all(raw).expect("in-memory gzip");
    gz.finish().expect("in-memory gzip")
}

/// A deterministic tar.gz of `files` (path, bytes, mode), with an entry for every parent
/// directory when `dirs` (release tarballs have them, `helm package` writes none).
pub fn tarball(files: &[(String, Vec<u8>, u32)], dirs: bool) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = if !dirs {
        Vec::new()
    } else {
        files
            .iter()
            .flat_map(|(p, _, _)| {
                let parts: Vec<&str> = p.split('/').collect();
                (1..parts.len()).map(move |i| parts[..i].join("/"))
            })
            .collect()
    };
    dirs.sort();
    dirs.dedup();
    let header = |kind, size, mode| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for d in &dirs {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        tar.append_data(&mut h, format!("{d}/"), std::io::empty()).expect("in-memory tar");
    }
    let mut sorted: Vec<&(String, Vec<u8>, u32)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, b, mode) in sorted {
        let mut h = header(tar::EntryType::Regular, b.len() as u64, *mode);
        tar.append_data(&mut h, p, b.as_slice()).expect("in-memory tar");
    }
    gzip(&tar.into_inner().expect("in-memory tar"))
}

/// The `description` of every stand-in chart (how a check tells it from a real one).
pub const CHART_DESCRIPTION: &str = "imgbuild test stand-in";

/// A minimal, valid Helm chart package named `name` at `version`: it renders nothing.
pub fn chart(name: &str, version: &str) -> Vec<u8> {
    let files = [
        (
            format!("{name}/Chart.yaml"),
            format!("apiVersion: v2\nname: {name}\nversion: {version}\ndescription: {CHART_DESCRIPTION}\n"),
        ),
        (format!("{name}/values.yaml"), "{}\n".to_string()),
        (format!("{name}/templates/NOTES.txt"), "imgbuild test stand-in chart\n".to_string()),
    ];
    tarball(&files.map(|(p, t)| (p, t.into_bytes(), 0o644)), false)
}

/// The `version:` of artifact `art` as text (YAML may read `1.16` as a number).
pub fn version_of(art: &Value) -> String {
    match &art["version"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "0.0.0".into(),
    }
}

/// The stand-in download of artifact `art` for `arch`: a tarball of the members its
/// install entries take, a chart package (a tarball installed as a file), or the binary.
pub fn pack(art: &Value, arch: &str, standin: &Standin) -> Result<Vec<u8>> {
    let name = art["name"].as_str().context("an artifact without a name")?;
    let url0 = art["urls"][0].as_str().map(|u| render(u, art, arch)).unwrap_or_default();
    let is_tar = url0.ends_with(".tar.gz") || url0.ends_with(".tgz");
    let members = members(art, arch)?;
    if !members.is_empty() {
        if !is_tar {
            bail!("{name}: members from a non-tarball {url0:?}");
        }
        let files: Vec<(String, Vec<u8>, u32)> = members
            .into_iter()
            .map(|m| {
                let base = m.rsplit('/').next().unwrap_or(&m).to_string();
                (m, standin.bytes(&base), 0o755)
            })
            .collect();
        return Ok(tarball(&files, true));
    }
    if is_tar {
        return Ok(chart(name, &version_of(art)));
    }
    Ok(standin.bytes(name))
}
