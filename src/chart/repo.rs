//! Chart pinning from a Helm repository: its `index.yaml` lists, per chart name, every
//! version with the URLs of its `.tgz` and the file's sha256 (`digest:`, the value
//! `helm repo index` writes and `helm pull --verify`-less installs trust). `imgbuild lock`
//! resolves a recipe's `name` + `version` against it to one URL and that digest; the build
//! then verifies the download like any other.
//!
//! What Helm does and this follows (helm/helm `pkg/repo/index.go`, `pkg/repo/chartrepo.go`):
//! the index is `<repo>/index.yaml`; an entry's `urls` may be absolute or relative to the
//! repository URL (helm joins them with the repository URL as a directory); versions are
//! matched exactly here (a lock pins one version, never a range).

use serde::Deserialize;

use super::ChartError;
use crate::types::Sha256;

/// An index larger than this is refused (the largest public indexes are tens of MB).
pub const MAX_INDEX_BYTES: usize = 64 << 20;

pub use crate::lockfile::LockedChart as ResolvedChart;

#[derive(Deserialize)]
struct Index {
    #[serde(rename = "apiVersion")]
    api_version: String,
    #[serde(default)]
    entries: std::collections::BTreeMap<String, Vec<Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    name: String,
    version: String,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    removed: bool,
}

/// The URL of a repository's index.
pub fn index_url(repo: &str) -> String {
    format!("{}/index.yaml", repo.trim_end_matches('/'))
}

/// Resolve `name` `version` in the index `bytes` of repository `repo`.
pub fn resolve(bytes: &[u8], repo: &str, name: &str, version: &str) -> Result<ResolvedChart, ChartError> {
    let origin = index_url(repo);
    let bad = |msg: String| ChartError::Invalid { origin: origin.clone(), msg };
    if bytes.len() > MAX_INDEX_BYTES {
        return Err(bad(format!("index is {} bytes, more than the {MAX_INDEX_BYTES} accepted", bytes.len())));
    }
    let index: Index =
        serde_yaml::from_slice(bytes).map_err(|e| bad(format!("not a Helm repository index: {e}")))?;
    if index.api_version != "v1" {
        return Err(bad(format!("apiVersion {:?} (a Helm repository index is v1)", index.api_version)));
    }
    let Some(versions) = index.entries.get(name) else {
        return Err(bad(format!("no chart named {name:?}")));
    };
    let Some(e) = versions.iter().find(|e| e.version == version && !e.removed) else {
        let mut known: Vec<&str> = versions.iter().map(|e| e.version.as_str()).take(10).collect();
        known.sort_unstable();
        return Err(bad(format!(
            "chart {name:?} has no version {version:?} (some it has: {})",
            known.join(", ")
        )));
    };
    if !e.name.is_empty() && e.name != name {
        return Err(bad(format!("entry {name:?} {version} names itself {:?}", e.name)));
    }
    let digest = e.digest.as_deref().ok_or_else(|| {
        bad(format!("{name} {version} has no digest: it cannot be pinned (the repository must publish one)"))
    })?;
    let sha256 = Sha256::parse(digest.strip_prefix("sha256:").unwrap_or(digest))
        .map_err(|m| bad(format!("{name} {version}: digest {digest:?}: {m}")))?;
    let url = e.urls.first().ok_or_else(|| bad(format!("{name} {version} lists no URL")))?;
    Ok(ResolvedChart {
        name: name.to_string(),
        version: version.to_string(),
        repo: repo.to_string(),
        url: absolute(repo, url).map_err(bad)?,
        sha256,
    })
}

/// An entry URL made absolute against the repository URL, as helm does (the repository
/// URL is a directory: `https://h/charts` + `x.tgz` = `https://h/charts/x.tgz`).
fn absolute(repo: &str, url: &str) -> Result<String, String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(url.to_string());
    }
    if url.contains("://") || url.starts_with('/') || url.split('/').any(|c| c == "..") {
        return Err(format!("entry URL {url:?} is neither absolute http(s) nor relative to the repository"));
    }
    Ok(format!("{}/{}", repo.trim_end_matches('/'), url.trim_start_matches("./")))
}

/// The media types `helm push` writes (helm `pkg/registry` `ConfigMediaType`,
/// `ChartLayerMediaType`): a chart is an OCI image manifest whose config is the chart's
/// metadata and whose layer is the `.tgz` itself, so the layer's digest is its sha256.
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
pub const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChartManifest {
    schema_version: u32,
    config: ChartDescriptor,
    layers: Vec<ChartDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChartDescriptor {
    media_type: String,
    digest: crate::types::Digest,
}

/// Resolve `name` `version` in an OCI registry (`oci://REGISTRY/PATH`, helm's form): the
/// manifest of `PATH/<name>:<version>` (helm writes `+` of a version as `_` in the tag)
/// through the distribution API with the anonymous token flow, and its one chart layer,
/// downloaded later from `/v2/PATH/<name>/blobs/<digest>` and verified against that digest.
pub fn resolve_oci(
    repo: &str,
    name: &str,
    version: &str,
    mirrors: &[crate::fetch::Mirror],
) -> Result<ResolvedChart, ChartError> {
    let bad = |msg: String| ChartError::Invalid { origin: repo.to_string(), msg };
    let path = repo.strip_prefix("oci://").unwrap_or(repo).trim_end_matches('/');
    let tag = version.replace('+', "_");
    let image = crate::types::ImageRef::parse(&format!("{path}/{name}:{tag}"))
        .map_err(|e| bad(format!("chart {name} {version}: {e}")))?;
    let oci =
        |e: crate::oci::OciError| ChartError::Oci { chart: format!("{name} {version}"), source: Box::new(e) };
    let reg = crate::oci::registry::Registry::new(mirrors.to_vec());
    let (_, body, _) =
        reg.raw_manifest(&image, &image.api_reference(), crate::oci::spec::OCI_MANIFEST).map_err(oci)?;
    let not_chart = |why: String| bad(format!("{image}: not a Helm chart ({why})"));
    let manifest: ChartManifest = serde_json::from_slice(&body).map_err(|e| not_chart(e.to_string()))?;
    if manifest.schema_version != 2 || manifest.config.media_type != HELM_CONFIG {
        return Err(not_chart(format!(
            "config of type {:?}, expected {HELM_CONFIG}",
            manifest.config.media_type
        )));
    }
    let layers: Vec<_> = manifest.layers.iter().filter(|l| l.media_type == HELM_CHART_LAYER).collect();
    let [layer] = layers.as_slice() else {
        return Err(not_chart(format!("{} layers of type {HELM_CHART_LAYER}, expected one", layers.len())));
    };
    Ok(ResolvedChart {
        name: name.to_string(),
        version: version.to_string(),
        repo: repo.to_string(),
        url: format!("{}/blobs/{}", image.api_base(), layer.digest),
        sha256: layer.digest.sha256().clone(),
    })
}

/// Fetch the repository's index (through the mirrors) and resolve `name` `version`; an
/// `oci://` repository is resolved through the registry API ([`resolve_oci`]).
pub fn resolve_online(
    repo: &str,
    name: &str,
    version: &str,
    mirrors: &[crate::fetch::Mirror],
) -> Result<ResolvedChart, ChartError> {
    if repo.starts_with("oci://") {
        return resolve_oci(repo, name, version, mirrors);
    }
    let url = index_url(repo);
    let bad = |msg: String| ChartError::Invalid { origin: url.clone(), msg };
    match crate::net::get::get(&url, mirrors, MAX_INDEX_BYTES as u64) {
        Ok(crate::net::get::Got::Body(b)) => resolve(&b, repo, name, version),
        Ok(crate::net::get::Got::NotFound) => Err(bad("not found: is this a Helm repository?".into())),
        Err(e) if e.too_large => {
            Err(bad(format!("more than the {MAX_INDEX_BYTES} bytes accepted: {}", e.msg)))
        }
        Err(e) => Err(ChartError::Fetch { url: e.url.to_string(), msg: e.msg }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "apiVersion: v1\nentries:\n  demo:\n  - name: demo\n    version: 1.2.0\n    \
        digest: 2d653f4826722da976791047f7f3d9e999526590ea4df2f36a3846aedbffae2d\n    urls: [demo-1.2.0.tgz]\n  \
        - name: demo\n    version: 1.1.0\n    digest: sha256:406c5bba515262c52e53b859af31af412cd8d2c332e277e98ec3e5f14382ecbf\n    \
        urls: [https://dl.example/demo-1.1.0.tgz]\n  - name: demo\n    version: 1.0.0\n    urls: [demo-1.0.0.tgz]\n\
        generated: \"2024-08-14T12:57:36Z\"\n";

    #[test]
    fn relative_and_absolute_urls_and_prefixed_digests() {
        let r = resolve(INDEX.as_bytes(), "https://charts.example/sub/", "demo", "1.2.0").unwrap();
        assert_eq!(r.url, "https://charts.example/sub/demo-1.2.0.tgz");
        assert_eq!(r.sha256.as_str(), "2d653f4826722da976791047f7f3d9e999526590ea4df2f36a3846aedbffae2d");
        let r = resolve(INDEX.as_bytes(), "https://charts.example", "demo", "1.1.0").unwrap();
        assert_eq!(r.url, "https://dl.example/demo-1.1.0.tgz");
        assert_eq!(r.sha256.as_str(), "406c5bba515262c52e53b859af31af412cd8d2c332e277e98ec3e5f14382ecbf");
    }

    #[test]
    fn what_cannot_be_pinned_is_an_error_naming_it() {
        let e =
            |n: &str, v: &str| resolve(INDEX.as_bytes(), "https://c.example", n, v).unwrap_err().to_string();
        assert!(e("demo", "1.0.0").contains("has no digest"), "{}", e("demo", "1.0.0"));
        assert!(e("demo", "9.9.9").contains("no version \"9.9.9\""));
        assert!(e("other", "1.0.0").contains("no chart named \"other\""));
        let bad = resolve(b"apiVersion: v2\nentries: {}\n", "https://c.example", "demo", "1").unwrap_err();
        assert!(bad.to_string().contains("apiVersion"));
        let up = INDEX.replace("demo-1.2.0.tgz", "../demo-1.2.0.tgz");
        assert!(resolve(up.as_bytes(), "https://c.example", "demo", "1.2.0").is_err());
    }
}
