//! A TEST mirror and test recipe made from a real recipe: every download keeps its upstream
//! URL; the mirror holds a file at `www/<host>/<path>` for each of them (so `--mirror
//! https://host/=http://127.0.0.1:PORT/host/` serves it under the upstream layout), and the
//! test recipe pins the sha256 of what the mirror serves. The product then takes its
//! ordinary path: `imgbuild build --recipe test-recipe.yaml --mirror …`.
//!
//! - the base image is a file of the caller's (the Rust tests' small noble-shaped base, or
//!   the boot test's bootable Debian-made one), linked into the mirror;
//! - every artifact is a stand-in ([`crate::standin`]), or a real file the caller gives
//!   (the boot test's real containerd and runc);
//! - a chart `imgbuild lock` pins from its repository (`chart.repo`, no `urls`: the
//!   profiles' charts) stays unpinned in the test recipe; a stand-in package with the same
//!   name and version is listed in a test `index.yaml` at the repository's URL, or, for an
//!   `oci://` repository, stored as `helm push` stores it in the test registry's listing
//!   (`images.json`), so `lock --profile` pins it the ordinary way;
//! - `packages:` is dropped, or pointed at a signed test archive ([`crate::archive`]);
//! - every container image becomes a small two-arch TEST image under the same name
//!   ([`test_image`]); a reference that pins a digest pins the test image's instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_yaml::Value;

use crate::oci::{self, TestImage};
use crate::standin::{self, Standin};
use crate::{sha256_file, sha256_hex, write};

/// The arch every test download is made for.
pub const ARCH: &str = "amd64";
/// Where the test images keep their marker (what `ctr run` of one prints).
pub const MARKER: &str = "etc/imgbuild-test-image";
/// Where a test recipe's packages come from: a name that cannot resolve, so only the
/// `--mirror` rewrite to the loopback server reaches it.
pub const ARCHIVE_URL: &str = "http://archive.imgbuild-test.invalid/debian";

/// The recipe's `packages:` in the test recipe.
#[derive(Debug, Clone)]
pub enum Packages {
    /// Dropped (tests that install packages bring their own archive).
    Remove,
    /// Pointed at the archive in `dir` (its `www/`, `key.asc`, `fingerprint`, `versions`;
    /// [`crate::archive::write_archive`]): the same names, each pinned to the archive's
    /// version, plus `extra` names; the key is written beside the test recipe.
    Archive { dir: PathBuf, suite: String, component: String, extra: Vec<String> },
}

/// What to make.
#[derive(Debug, Clone)]
pub struct Options {
    pub standin: Standin,
    /// Artifacts served from these real files instead of a stand-in (artifact name -> file).
    pub real: BTreeMap<String, PathBuf>,
    pub packages: Packages,
    /// Where the test images' blobs go, each under its hex digest (imgbuild's cache
    /// `sha256/`, so builds embed them offline; or a store a registry is filled from).
    pub image_blobs: PathBuf,
    /// Where to list the test images (repo, tag, blobs, manifests, index) for a push into
    /// a registry.
    pub images_json: Option<PathBuf>,
    /// Keep the recipe's top-level `images:` (they need a registry holding the test
    /// images); false drops them.
    pub keep_recipe_images: bool,
    /// A static busybox as every amd64 test image's first layer (so the image can run).
    pub busybox: Option<Vec<u8>>,
    /// Keep `disk_size:` (the Rust tests' small bases choose their own size).
    pub keep_disk_size: bool,
    /// Only the test arch: `arches: [amd64]` and no other digests.
    pub only_arch: bool,
}

/// One download as the mirror serves it.
#[derive(Debug, Clone)]
pub struct Blob {
    pub path: PathBuf,
    pub sha256: String,
    /// Server path of the first URL (the upstream URL without `https:/`: `/host/path`).
    pub url_path: String,
}

/// A test image of the recipe, as `images.json` lists it.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    pub repo: String,
    pub tag: Option<String>,
    pub image: TestImage,
}

/// What [`make`] wrote.
pub struct Mirror {
    /// `<out>/www`: serve it as the mirror's root.
    pub www: PathBuf,
    /// The test recipe (also written to `<out>/test-recipe.yaml`).
    pub recipe: Value,
    pub recipe_path: PathBuf,
    /// Every download by artifact name, plus "base".
    pub blobs: BTreeMap<String, Blob>,
    /// `scheme://host` of every URL the mirror serves.
    pub hosts: Vec<String>,
    /// Hosts of every image's registry.
    pub registries: Vec<String>,
    pub images: Vec<ImageEntry>,
}

/// The `host/path` a repository name stands for, as docker and imgbuild read it: a first
/// component that is no host (no `.` or `:`, not `localhost`) means Docker Hub, and a
/// one-component name its `library/`.
pub fn registry_repo(name: &str) -> String {
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            name.to_string()
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    }
}

/// `host/path:tag@digest` -> (`host/path`, tag, digest).
pub fn split_ref(r: &str) -> (String, Option<String>, Option<String>) {
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d.to_string())),
        None => (r, None),
    };
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (name[..slash + i].to_string(), Some(name[slash + i + 1..].to_string()), digest),
        None => (name.to_string(), None, digest),
    }
}

/// The TEST image standing in for `repo:tag`: an OCI index with a linux/amd64 manifest
/// (`busybox`'s layer first when given, then a layer with [`MARKER`] naming the image)
/// and a linux/arm64 one (the marker layer only).
pub fn test_image(repo: &str, tag: Option<&str>, busybox: Option<&oci::TestLayer>) -> TestImage {
    let base = busybox.cloned();
    let mark =
        |arch: &str| oci::layer(&[(MARKER, format!("{repo}:{} {arch}\n", tag.unwrap_or("")).as_bytes())]);
    let amd64: Vec<oci::TestLayer> = base.into_iter().chain([mark("amd64")]).collect();
    let marker = format!("/{MARKER}");
    oci::image_running(&[("amd64", amd64), ("arm64", vec![mark("arm64")])], false, true, &["cat", &marker])
}

fn url_parts(url: &str) -> Result<(String, String, String)> {
    let (scheme, rest) = url.split_once("://").with_context(|| format!("unsupported URL {url:?}"))?;
    if !matches!(scheme, "http" | "https") {
        bail!("unsupported URL {url:?}");
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        bail!("unsupported URL {url:?}");
    }
    Ok((scheme.to_string(), host.to_string(), path.to_string()))
}

/// Put `data` (or a symlink to `link_to`) under every URL's path below `www`; returns
/// the URLs' `scheme://host` and the first one's server path.
fn place(
    www: &Path,
    urls: &[String],
    data: Option<&[u8]>,
    link_to: Option<&Path>,
) -> Result<(Vec<String>, String)> {
    let mut hosts = Vec::new();
    let mut first = None;
    for u in urls {
        let (scheme, host, path) = url_parts(u)?;
        let dest = www.join(&host).join(&path);
        if dest.symlink_metadata().is_ok() {
            std::fs::remove_file(&dest)?;
        }
        match (data, link_to) {
            (Some(d), _) => write(&dest, d)?,
            (None, Some(target)) => {
                std::fs::create_dir_all(dest.parent().context("a URL path")?)?;
                std::os::unix::fs::symlink(std::path::absolute(target)?, &dest)?;
            }
            (None, None) => bail!("nothing to place at {u}"),
        }
        hosts.push(format!("{scheme}://{host}"));
        first.get_or_insert(format!("/{host}/{path}"));
    }
    Ok((hosts, first.context("a download without URLs")?))
}

fn urls_of(v: &Value, arch: &str) -> Vec<String> {
    v["urls"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|u| standin::render(u, v, arch))
        .collect()
}

fn pin(v: &mut Value, sha: &str, only_arch: bool) {
    if only_arch || !v["sha256"].is_mapping() {
        v["sha256"] = Value::Mapping(Default::default());
    }
    v["sha256"][ARCH] = sha.into();
}

/// Lay out the mirror for `recipe` with base image `base` under `out` (`www/`,
/// `test-recipe.yaml`, `hosts.txt`, `images.json`, `registries.txt`, and the archive key
/// when [`Packages::Archive`]).
pub fn make(recipe: &Value, base: &Path, opts: &Options, out: &Path) -> Result<Mirror> {
    let www = out.join("www");
    std::fs::create_dir_all(&www)?;
    let mut test = recipe.clone();
    let known = [
        "name",
        "description",
        "kubernetes_version",
        "arches",
        "source_date_epoch",
        "disk_size",
        "base",
        "artifacts",
        "addons",
        "packages",
        "images",
    ];
    for k in test.as_mapping().context("a recipe is a mapping")?.keys() {
        let k = k.as_str().unwrap_or_default();
        if !known.contains(&k) {
            bail!("recipe section {k:?} has no test stand-in yet; extend testkit/src/mirror.rs");
        }
    }
    if opts.only_arch {
        test["arches"] = vec![Value::from(ARCH)].into();
    }
    if !opts.keep_disk_size {
        test.as_mapping_mut().context("a mapping")?.remove("disk_size");
    }
    let mut hosts = Vec::new();
    let mut blobs = BTreeMap::new();

    let b = &mut test["base"];
    let (h, url_path) = place(&www, &urls_of(b, ARCH), None, Some(base))?;
    hosts.extend(h);
    let sha = sha256_file(base)?;
    pin(b, &sha, opts.only_arch);
    blobs.insert("base".to_string(), Blob { path: base.to_path_buf(), sha256: sha, url_path });

    match &opts.packages {
        Packages::Remove => {
            test.as_mapping_mut().context("a mapping")?.remove("packages");
        }
        Packages::Archive { dir, suite, component, extra } => {
            if test["packages"].is_mapping() {
                hosts.extend(packages(&mut test["packages"], dir, suite, component, extra, &www, out)?);
            }
        }
    }

    if !opts.keep_recipe_images {
        test.as_mapping_mut().context("a mapping")?.remove("images");
    }
    let (mut images, mut registries) = test_images(&mut test, &opts.image_blobs, opts.busybox.as_deref())?;
    // Helm repositories of the unpinned charts: repository URL -> index entries.
    let mut indexes: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();

    for art in test["artifacts"].as_sequence_mut().into_iter().flatten() {
        let name = art["name"].as_str().context("an artifact without a name")?.to_string();
        if art["urls"].is_null() {
            // A chart pinned by `imgbuild lock` from its repository (the profiles' charts):
            // the test recipe leaves it unpinned, the mirror serves a stand-in package in
            // that repository, so `lock --profile` resolves it the ordinary way.
            let Some(repo) = art["chart"]["repo"].as_str() else {
                bail!("artifact {name} has neither urls nor chart.repo");
            };
            let version = standin::version_of(art);
            let data = standin::chart(&name, &version);
            let sha = sha256_hex(&data);
            let (url_path, path) = if let Some(path) = repo.strip_prefix("oci://") {
                let (entry, blob_url) = oci_chart(path, &name, &version, &data)?;
                entry.image.write_blobs(&opts.image_blobs)?;
                registries.push(path.split('/').next().unwrap_or_default().to_string());
                images.push(entry);
                (blob_url, opts.image_blobs.join(&sha))
            } else {
                let file = format!("{name}-{version}.tgz");
                let (h, url_path) =
                    place(&www, &[format!("{}/{file}", repo.trim_end_matches('/'))], Some(&data), None)?;
                hosts.extend(h);
                indexes
                    .entry(repo.trim_end_matches('/').to_string())
                    .or_default()
                    .push(index_entry(&name, &version, &sha, &file));
                let path = www.join(url_path.trim_start_matches('/'));
                (url_path, path)
            };
            blobs.insert(name, Blob { path, sha256: sha, url_path });
            continue;
        }
        let urls = urls_of(art, ARCH);
        let data = match opts.real.get(&name) {
            Some(f) => {
                let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                let want = standin::members(art, ARCH)?;
                if !want.is_empty() {
                    let have = tar_members(&data)?;
                    let missing: Vec<&String> = want.iter().filter(|m| !have.contains(m)).collect();
                    if !missing.is_empty() {
                        bail!("{name}: the real tarball {} lacks {missing:?}", f.display());
                    }
                }
                data
            }
            None => standin::pack(art, ARCH, &opts.standin)?,
        };
        let (h, url_path) = place(&www, &urls, Some(&data), None)?;
        hosts.extend(h);
        let sha = sha256_hex(&data);
        pin(art, &sha, opts.only_arch);
        // Stand-ins carry no cosign signature (tests/it/supply_verify.rs signs its own).
        if urls.first().is_some_and(|u| u.starts_with("https://dl.k8s.io/")) {
            art["signature"] = "none".into();
        }
        let path = www.join(url_path.trim_start_matches('/'));
        blobs.insert(name, Blob { path, sha256: sha, url_path });
    }

    for (repo, entries) in &indexes {
        let (h, _) = place(&www, &[format!("{repo}/index.yaml")], Some(&helm_index(entries)?), None)?;
        hosts.extend(h);
    }
    registries.sort();
    registries.dedup();
    hosts.sort();
    hosts.dedup();
    let recipe_path = out.join("test-recipe.yaml");
    let text = serde_yaml::to_string(&test)?;
    write(
        &recipe_path,
        format!("# GENERATED by imgbuild-testkit for the tests; TEST ONLY.\n{text}").as_bytes(),
    )?;
    write(&out.join("hosts.txt"), hosts.iter().map(|h| format!("{h}\n")).collect::<String>().as_bytes())?;
    write(
        &out.join("registries.txt"),
        registries.iter().map(|h| format!("{h}\n")).collect::<String>().as_bytes(),
    )?;
    let listing: Vec<serde_json::Value> = images
        .iter()
        .map(|e| {
            let mut blobs: Vec<String> = e.image.blobs.iter().map(|b| oci::sha256(b)).collect();
            blobs.sort();
            blobs.dedup();
            serde_json::json!({
                "repo": e.repo, "tag": e.tag, "blobs": blobs,
                "manifests": e.image.manifests.iter().map(|m| serde_json::json!({"digest": m.digest, "media_type": m.media_type})).collect::<Vec<_>>(),
                "index": {"digest": e.image.digest(), "media_type": e.image.top_media_type},
            })
        })
        .collect();
    if let Some(p) = &opts.images_json {
        write(p, serde_json::to_string_pretty(&listing)?.as_bytes())?;
    }
    Ok(Mirror { www, recipe: test, recipe_path, blobs, hosts, registries, images })
}

/// The `created`/`generated` time of the test indexes (the fixed tar mtime).
const INDEX_TIME: &str = "2024-08-21T00:00:00Z";

/// One chart version as `helm repo index` lists it: a URL relative to the repository
/// (helm's default) and the package's sha256 as `digest`.
fn index_entry(name: &str, version: &str, sha: &str, file: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v2", "created": INDEX_TIME, "description": standin::CHART_DESCRIPTION,
        "digest": sha, "name": name, "urls": [file], "version": version,
    })
}

/// A repository's `index.yaml` (apiVersion v1, entries by chart name).
fn helm_index(entries: &[serde_json::Value]) -> Result<Vec<u8>> {
    let mut by_name: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for e in entries {
        by_name.entry(e["name"].as_str().unwrap_or_default().to_string()).or_default().push(e.clone());
    }
    let doc = serde_json::json!({"apiVersion": "v1", "entries": by_name, "generated": INDEX_TIME});
    Ok(serde_yaml::to_string(&doc)?.into_bytes())
}

/// A chart as `helm push` stores it in a registry under `<path>/<name>:<version>` (a `+`
/// in the version written `_`): an OCI manifest whose config is the chart's metadata
/// ([`oci::HELM_CONFIG`]) and whose one layer is the `.tgz` ([`oci::HELM_CHART_LAYER`]);
/// returns it and the upstream URL path of the layer (`/<registry>/v2/<repo>/blobs/<digest>`).
fn oci_chart(path: &str, name: &str, version: &str, tgz: &[u8]) -> Result<(ImageEntry, String)> {
    let config = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v2", "name": name, "version": version, "description": standin::CHART_DESCRIPTION,
    }))?;
    let image = oci::single(oci::HELM_CONFIG, &config, &[(oci::HELM_CHART_LAYER, tgz)]);
    let repo = format!("{}/{name}", path.trim_end_matches('/'));
    let (host, rest) = repo.split_once('/').context("oci://REGISTRY/PATH")?;
    let url_path = format!("/{host}/v2/{rest}/blobs/{}", oci::sha256(tgz));
    Ok((ImageEntry { repo, tag: Some(version.replace('+', "_")), image }, url_path))
}

fn tar_members(tgz: &[u8]) -> Result<Vec<String>> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut out = Vec::new();
    for e in a.entries()? {
        out.push(e?.path()?.to_string_lossy().trim_end_matches('/').to_string());
    }
    Ok(out)
}

/// Point `packages:` at the archive in `dir`; returns the archive URL's host.
fn packages(
    p: &mut Value,
    dir: &Path,
    suite: &str,
    component: &str,
    extra: &[String],
    www: &Path,
    out: &Path,
) -> Result<Vec<String>> {
    let read = |n: &str| {
        std::fs::read_to_string(dir.join(n)).with_context(|| format!("reading {}", dir.join(n).display()))
    };
    let versions: BTreeMap<String, String> = read("versions")?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, b)| (a.into(), b.into()))
        .collect();
    let mut names: Vec<String> = p["install"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| s.split('=').next().unwrap_or(s).trim().to_string())
        .collect();
    names.extend(extra.iter().cloned());
    let missing: Vec<&String> = names.iter().filter(|n| !versions.contains_key(*n)).collect();
    if !missing.is_empty() {
        bail!("the test archive lacks {missing:?}; add them to its package list");
    }
    write(&out.join("boot-archive-key.asc"), read("key.asc")?.as_bytes())?;
    let install: Vec<Value> = names.iter().map(|n| format!("{n}={}", versions[n]).into()).collect();
    let mut m = serde_yaml::Mapping::new();
    m.insert("archive".into(), serde_yaml::from_str(&format!("{{{ARCH}: {ARCHIVE_URL}}}"))?);
    m.insert("suites".into(), vec![Value::from(suite)].into());
    m.insert("components".into(), vec![Value::from(component)].into());
    m.insert("key_file".into(), "boot-archive-key.asc".into());
    m.insert("fingerprint".into(), read("fingerprint")?.trim().into());
    m.insert("install".into(), install.into());
    *p = Value::Mapping(m);
    let (hosts, _) = place(www, &[ARCHIVE_URL.to_string()], None, Some(&dir.join("www")))?;
    Ok(hosts)
}

/// Replace every image of recipe `test` (`images[].ref`, `addons[].images[]`) by a test
/// image ([`test_image`]) whose blobs go to `blob_dir`; returns them and the registry hosts.
pub fn test_images(
    test: &mut Value,
    blob_dir: &Path,
    busybox: Option<&[u8]>,
) -> Result<(Vec<ImageEntry>, Vec<String>)> {
    // (reference, whether an add-on lists it)
    let mut refs: Vec<(&mut Value, bool)> = Vec::new();
    let (top, addons) = {
        let m = test.as_mapping_mut().context("a mapping")?;
        let mut top = None;
        let mut addons = None;
        for (k, v) in m.iter_mut() {
            match k.as_str() {
                Some("images") => top = Some(v),
                Some("addons") => addons = Some(v),
                _ => {}
            }
        }
        (top, addons)
    };
    for i in top.and_then(Value::as_sequence_mut).into_iter().flatten() {
        refs.push((&mut i["ref"], false));
    }
    for a in addons.and_then(Value::as_sequence_mut).into_iter().flatten() {
        refs.extend(a["images"].as_sequence_mut().into_iter().flatten().map(|r| (r, true)));
    }
    let mut entries = Vec::new();
    let mut registries = Vec::new();
    let busybox = busybox.map(|b| oci::layer(&[("bin/busybox", b)]));
    for (r, addon) in refs {
        let text = r.as_str().context("an image reference is a string")?.to_string();
        let (named, tag, pinned) = split_ref(&text);
        let repo = registry_repo(&named);
        registries.push(repo.split('/').next().unwrap_or_default().to_string());
        let img = test_image(&repo, tag.as_deref(), busybox.as_ref());
        img.write_blobs(blob_dir)?;
        let repo_as_written = named;
        if pinned.is_some() || addon {
            // The core charts pin the upstream index digest: pin the test image's. A
            // profile's images are tags upstream (`lock` resolves them online); pinned here
            // too, so that a test world without a registry builds them from the cache.
            *r = match &tag {
                Some(t) => format!("{repo_as_written}:{t}@{}", img.digest()),
                None => format!("{repo_as_written}@{}", img.digest()),
            }
            .into();
        }
        entries.push(ImageEntry { repo, tag, image: img });
    }
    registries.sort();
    registries.dedup();
    Ok((entries, registries))
}
