//! `imgbuild lint --cluster DIR/cluster.yaml [--image IMAGE…]`: one report across the
//! layers, before any VM boots. It lints what would actually be deployed: the rendered
//! `OUT/<node>/user-data` files when present (they may have been edited), else a fresh
//! in-memory rendering.
//!
//! Checks, each finding naming the node and the file it concerns:
//! - `spec`: cluster.yaml loads and validates (file:line);
//! - `schema`: every node's user-data against the embedded cloud-init schema;
//! - `kubeadm`: the kubeadm config inside user-data: apiVersion v1beta3 (Kubernetes
//!   1.30), the right kinds for the node's role, endpoint and certSANs, pod/service
//!   CIDRs and DNS domain, kubernetesVersion equal to the spec's and the image's;
//! - `size`: user-data against each target's budget (OpenStack 64 KiB, vSphere 512 KiB);
//! - `paths`: every absolute path or systemd unit user-data's commands use exists in
//!   the role's image (`--image`), unless user-data writes it itself;
//! - `version`: each image's Kubernetes version equals the cluster's.
//! - `values`: the spec's add-on values against the charts' `values.schema.json`, in
//!   Rust (the backend chart's always; a recipe add-on's when its chart is in the cache);
//! - `chart`: the embedded backend chart renders (`helm template`) with the add-on
//!   values the first control plane's user-data writes (a warning when helm is absent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cloudinit::render::{self, paths};
pub use crate::cluster::diag::Severity;
use crate::cluster::diag::{Diagnostic, Diagnostics};
use crate::cluster::plan::{self, ClusterPlan, JoinMode, NodePlan};
use crate::cluster::ClusterError;
use crate::exit::{Classify, Code};
use crate::manifest::Manifest;
use crate::types::Role;

/// Deployment targets and their user-data size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// OpenStack (Nova) metadata: 64 KiB
    Openstack,
    /// vSphere guestinfo: 512 KiB
    Vsphere,
}

impl Target {
    pub fn limit(self) -> usize {
        match self {
            Target::Openstack => 64 * 1024,
            Target::Vsphere => 512 * 1024,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Target::Openstack => "OpenStack",
            Target::Vsphere => "vSphere",
        }
    }
}

/// What `imgbuild lint` checks.
#[derive(Debug, Clone)]
pub struct LintOptions {
    /// The cluster spec (secrets/ next to it are used to render missing user-data).
    pub cluster: PathBuf,
    /// Directory holding rendered `<node>/user-data` (default: the cluster.yaml's directory).
    pub rendered: Option<PathBuf>,
    /// Role images built by `imgbuild build` (their manifests say the role).
    pub image: Vec<PathBuf>,
    /// Filesystem label of the images' root partition.
    pub root_label: String,
    /// Targets whose user-data size budget applies (default: all).
    pub target: Vec<Target>,
    /// The recipe the control-plane image was built from (default: the embedded one).
    pub recipe: Option<PathBuf>,
    /// The download cache holding the add-on charts (default: [`crate::cache::Cache::dir`]).
    pub cache_dir: Option<PathBuf>,
}

/// One problem, with what it concerns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub check: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    pub nodes: usize,
    pub images: usize,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

#[derive(Debug, thiserror::Error)]
#[error("lint: {0} error(s)")]
pub struct LintFailed(pub usize);

impl Classify for LintFailed {
    fn code(&self) -> Code {
        Code::Input
    }
}

/// A role image: its manifest (re-verified by inspect) and a way to test paths.
struct Image {
    path: PathBuf,
    manifest: Manifest,
    /// The image opened read-only (any format a build writes).
    open: crate::disk::OpenImage,
}

impl Image {
    fn open(path: &Path, label: &str) -> Result<Image> {
        let open = crate::output::OutputSet::beside(path).open(label)?;
        let manifest = crate::inspect::manifest_of(&open, path)?;
        Ok(Image { path: path.to_path_buf(), manifest, open })
    }

    fn has(&self, p: &str) -> Result<bool> {
        if self.manifest.files.iter().any(|f| f.path == p) {
            return Ok(true);
        }
        let root = &self.open.root;
        if root.read_file(p)?.is_some() || root.read_link(p)?.is_some() {
            return Ok(true);
        }
        let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
        let dir = if dir.is_empty() { "/" } else { dir };
        let listing = root.list(&[dir]).unwrap_or_default();
        Ok(listing.get(dir).is_some_and(|es| es.iter().any(|e| e.name == name)))
    }
}

struct Ctx<'a> {
    l: &'a ClusterPlan,
    findings: Vec<Finding>,
}

impl Ctx<'_> {
    fn error(
        &mut self,
        check: &'static str,
        node: Option<&str>,
        file: &str,
        line: Option<usize>,
        msg: String,
    ) {
        self.findings.push(Finding {
            severity: Severity::Error,
            check,
            node: node.map(String::from),
            file: file.to_string(),
            line,
            message: msg,
        });
    }
    fn warn(&mut self, check: &'static str, node: Option<&str>, file: &str, msg: String) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            check,
            node: node.map(String::from),
            file: file.to_string(),
            line: None,
            message: msg,
        });
    }
}

fn s<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a serde_yaml::Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn as_str(v: Option<&serde_yaml::Value>) -> Option<String> {
    v.and_then(|v| match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// The kubeadm documents in `text`, as (apiVersion, kind, document).
fn kubeadm_docs(text: &str) -> Result<Vec<(String, String, serde_yaml::Value)>, String> {
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(d).map_err(|e| format!("not YAML: {e}"))?;
        if v.is_null() {
            continue;
        }
        let api = as_str(v.get("apiVersion")).unwrap_or_default();
        let kind = as_str(v.get("kind")).unwrap_or_default();
        out.push((api, kind, v));
    }
    Ok(out)
}

use serde::Deserialize as _;

fn check_kubeadm(c: &mut Ctx, n: &NodePlan, file: &str, text: &str, image_version: Option<&str>) {
    let spec = &c.l.spec;
    let node = Some(n.name.as_str());
    // every finding here is an error of this node's kubeadm configuration, without a line
    let refuse = |c: &mut Ctx, msg: String| c.error("kubeadm", node, file, None, msg);
    let docs = match kubeadm_docs(text) {
        Ok(d) => d,
        Err(e) => return refuse(c, format!("{}: {e}", paths::KUBEADM)),
    };
    for (api, kind, _) in &docs {
        if api.starts_with("kubeadm.k8s.io/") && api != "kubeadm.k8s.io/v1beta3" {
            refuse(
                c,
                format!("{kind} has apiVersion {api}; Kubernetes 1.30 kubeadm needs kubeadm.k8s.io/v1beta3"),
            );
        }
    }
    let kinds: Vec<&str> = docs.iter().map(|(_, k, _)| k.as_str()).collect();
    let first = n.mode == JoinMode::Init;
    let want: &[&str] =
        if first { &["InitConfiguration", "ClusterConfiguration"] } else { &["JoinConfiguration"] };
    for k in want {
        if !kinds.contains(k) {
            let why =
                if first { "the first control plane initialises the cluster" } else { "this node joins" };
            refuse(c, format!("no {k} in {} ({why})", paths::KUBEADM));
        }
    }
    let endpoint = c.l.control_plane_endpoint();
    for (_, kind, d) in &docs {
        match kind.as_str() {
            "ClusterConfiguration" => {
                let v = as_str(d.get("kubernetesVersion")).unwrap_or_default();
                if v != spec.kubernetes_version {
                    refuse(
                        c,
                        format!("kubernetesVersion {v} is not the cluster's {}", spec.kubernetes_version),
                    );
                }
                if let Some(iv) = image_version {
                    if v != iv {
                        refuse(c, format!("kubernetesVersion {v} is not the image's {iv}"));
                    }
                }
                let ep = as_str(d.get("controlPlaneEndpoint")).unwrap_or_default();
                if ep != endpoint {
                    refuse(c, format!("controlPlaneEndpoint {ep} is not {endpoint}"));
                }
                let sans: Vec<String> = s(d, &["apiServer", "certSANs"])
                    .and_then(|v| v.as_sequence())
                    .map(|q| q.iter().filter_map(|x| as_str(Some(x))).collect())
                    .unwrap_or_default();
                let host = c.l.endpoint.host.to_string();
                if !sans.contains(&host) {
                    refuse(c, format!("apiServer.certSANs {sans:?} lacks the endpoint host {host}"));
                }
                for (key, want) in [
                    ("podSubnet", &c.l.pod_cidr.to_string()),
                    ("serviceSubnet", &c.l.service_cidr.to_string()),
                    ("dnsDomain", &spec.networking.dns_domain),
                ] {
                    let got = as_str(s(d, &["networking", key])).unwrap_or_default();
                    if got != *want {
                        refuse(c, format!("networking.{key} {got:?} is not the cluster's {want:?}"));
                    }
                }
            }
            "JoinConfiguration" => {
                let ep =
                    as_str(s(d, &["discovery", "bootstrapToken", "apiServerEndpoint"])).unwrap_or_default();
                if ep != endpoint {
                    refuse(c, format!("discovery.bootstrapToken.apiServerEndpoint {ep} is not {endpoint}"));
                }
                let cp = d.get("controlPlane").is_some_and(|v| !v.is_null());
                if cp != (n.role == Role::ControlPlane) {
                    refuse(
                        c,
                        format!(
                            "JoinConfiguration {} controlPlane but the node's role is {}",
                            if cp { "has" } else { "lacks" },
                            n.role.as_str()
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

/// The first directory on PATH holding an executable `name`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `helm template` of the embedded backend chart with the deployed values.
fn check_chart(c: &mut Ctx, node: &str, file: &str, values: Option<&str>) -> Result<()> {
    let Some(values) = values else {
        c.error(
            "chart",
            Some(node),
            file,
            None,
            format!("add-ons are enabled but user-data writes no {}", paths::ADDON_VALUES),
        );
        return Ok(());
    };
    let Some(helm) = on_path("helm") else {
        c.warn(
            "chart",
            Some(node),
            file,
            "helm not found on PATH: the backend chart was not rendered".into(),
        );
        return Ok(());
    };
    let chart = crate::chart::package_backend(0)?;
    let tmp = tempfile::tempdir()?;
    let tgz = tmp.path().join(chart.file_name());
    fs_err::write(&tgz, &chart.bytes)?;
    let vf = tmp.path().join("values.yaml");
    fs_err::write(&vf, values)?;
    let out = std::process::Command::new(&helm)
        .env("HELM_CACHE_HOME", tmp.path().join("cache"))
        .env("HELM_CONFIG_HOME", tmp.path().join("config"))
        .env("HELM_DATA_HOME", tmp.path().join("data"))
        .args(["template", "imgbuild-lint"])
        .arg(&tgz)
        .arg("-f")
        .arg(&vf)
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", helm.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).take(8).collect();
        c.error(
            "chart",
            Some(node),
            file,
            None,
            format!("helm template {} with {}: {}", chart.file_name(), paths::ADDON_VALUES, msg.join(" | ")),
        );
    }
    Ok(())
}

/// A spec diagnostic as a lint finding (check `spec`), with its line.
fn spec_finding(d: &Diagnostics, x: &Diagnostic) -> Finding {
    Finding {
        severity: x.severity,
        check: "spec",
        node: None,
        file: d.origin.clone(),
        line: x.line,
        message: x.text(),
    }
}

/// Absolute paths and systemd units that user-data's commands use.
fn referenced(doc: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let mut paths = Vec::new();
    let mut units = Vec::new();
    for key in ["runcmd", "bootcmd"] {
        for cmd in doc.get(key).and_then(|v| v.as_array()).into_iter().flatten() {
            let words: Vec<String> = match cmd {
                serde_json::Value::String(s) => s.split_whitespace().map(String::from).collect(),
                serde_json::Value::Array(a) => {
                    a.iter().filter_map(|x| x.as_str().map(String::from)).collect()
                }
                _ => Vec::new(),
            };
            let systemctl = words.first().is_some_and(|w| w == "systemctl" || w.ends_with("/systemctl"));
            for w in &words {
                let w = w.trim_matches(|c| c == '"' || c == '\'' || c == ';');
                if w.starts_with('/') && !w.starts_with("//") {
                    paths.push(w.to_string());
                } else if systemctl
                    && [".service", ".timer", ".target", ".socket", ".path", ".mount"]
                        .iter()
                        .any(|s| w.ends_with(s))
                {
                    units.push(w.to_string());
                }
            }
        }
    }
    (paths, units)
}

/// Lint everything; the report lists every finding (errors make `run` fail).
pub fn lint(a: &LintOptions) -> Result<Report> {
    let cluster_file = a.cluster.display().to_string();
    let mut images = Vec::new();
    for p in &a.image {
        images.push(Image::open(p, &a.root_label)?);
    }
    let l = match plan::load(&a.cluster) {
        Ok(l) => l,
        Err(ClusterError::Spec(d)) => {
            // A spec that does not validate: its diagnostics are the findings.
            let findings: Vec<Finding> = d.items.iter().map(|x| spec_finding(&d, x)).collect();
            return Ok(Report {
                cluster: cluster_file,
                nodes: 0,
                images: images.len(),
                errors: d.errors().count(),
                warnings: findings.len() - d.errors().count(),
                findings,
            });
        }
        Err(e) => return Err(e.into()),
    };
    // backups.s3's credentials file is part of the spec: a missing or unsafe one is a spec finding.
    let backup_s3 = match &l.backup_s3 {
        Some(t) => {
            let line = l.line("backups.s3.credentials_file").or(l.line("backups.s3"));
            match t.load_credentials(&a.cluster, line) {
                Ok(creds) => Some(creds),
                Err(ClusterError::Spec(d)) => {
                    let findings: Vec<Finding> = d.items.iter().map(|x| spec_finding(&d, x)).collect();
                    return Ok(Report {
                        cluster: cluster_file,
                        nodes: l.nodes.len(),
                        images: images.len(),
                        errors: findings.len(),
                        warnings: 0,
                        findings,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    let mut c = Ctx { l: &l, findings: Vec::new() };
    let d = Diagnostics { origin: cluster_file.clone(), items: l.warnings.clone() };
    c.findings.extend(d.items.iter().map(|x| spec_finding(&d, x)));
    let mut by_role: BTreeMap<&str, &Image> = BTreeMap::new();
    for im in &images {
        let f = im.path.display().to_string();
        if im.manifest.kubernetes_version != l.spec.kubernetes_version {
            c.error(
                "version",
                None,
                &f,
                None,
                format!(
                    "image is Kubernetes {} but the cluster is {}",
                    im.manifest.kubernetes_version, l.spec.kubernetes_version
                ),
            );
        }
        by_role.insert(im.manifest.role.as_str(), im);
    }
    let targets =
        if a.target.is_empty() { vec![Target::Openstack, Target::Vsphere] } else { a.target.clone() };
    let rendered_dir =
        a.rendered.clone().unwrap_or_else(|| a.cluster.parent().unwrap_or(Path::new(".")).to_path_buf());
    // Secrets are only needed when some node has no rendered user-data on disk.
    let need_render = l.nodes.iter().any(|n| !rendered_dir.join(&n.name).join("user-data").exists());
    let secrets = match need_render {
        true => Some(crate::cluster::pki::Secrets::load(&crate::cluster::secrets_dir(&a.cluster))?),
        false => None,
    };
    // The add-on values of the spec against their charts' schemas (in Rust, no helm).
    let charts = crate::cloudinit::addon_values::charts_for(&l, a.recipe.as_deref(), a.cache_dir.as_deref())?;
    // The profiles' admin credentials: lint never writes secrets; without the files (a
    // cluster directory older than them) it checks with throwaway ones and says so.
    let admin = match crate::cloudinit::addon_values::needs_admin(&l) {
        false => None,
        true => match crate::cluster::admin::AdminSecrets::load(&crate::cluster::secrets_dir(&a.cluster))? {
            Some(s) => Some(s),
            None => {
                c.warn(
                    "values",
                    None,
                    &cluster_file,
                    format!(
                        "{}/{{{},{}}} do not exist yet: `imgbuild cloud-init` generates them once",
                        crate::cluster::secrets_dir(&a.cluster).display(),
                        crate::cluster::admin::GRAFANA_FILE,
                        crate::cluster::admin::ARGOCD_FILE
                    ),
                );
                Some(
                    crate::cluster::admin::AdminSecrets::generate(&mut crate::cluster::pki::Rng::from_env())?,
                )
            }
        },
    };
    let inputs = crate::cloudinit::addon_values::ProfileInputs {
        dir: a.cluster.parent().unwrap_or(Path::new(".")),
        admin: admin.as_ref(),
    };
    let addon_files = match crate::cloudinit::addon_values::build(&l, &charts, inputs) {
        Ok(f) => {
            for w in &f.warnings {
                c.warn("values", None, &cluster_file, w.clone());
            }
            f
        }
        Err(e) => {
            for msg in e.to_string().lines() {
                let line = msg
                    .strip_prefix(&format!("{cluster_file}:"))
                    .and_then(|r| r.split_once(':'))
                    .and_then(|(n, _)| n.parse::<usize>().ok());
                c.error("values", None, &cluster_file, line, msg.to_string());
            }
            Default::default()
        }
    };
    let renderer = match &secrets {
        Some(s) => {
            let join = crate::cluster::token::for_joins(&crate::cluster::secrets_dir(&a.cluster))?;
            Some(
                render::Renderer::new(&l, s)?
                    .with_join_token(join)
                    .with_addons(&addon_files)
                    .with_backup_s3(backup_s3.clone()),
            )
        }
        None => None,
    };
    let first_cp = l.first_control_plane().name.clone();
    // (user-data file, values text) of the first control plane, for the chart check.
    let mut addon_values: Option<(String, Option<String>)> = None;
    for n in &l.nodes {
        let node = Some(n.name.as_str());
        let path = rendered_dir.join(&n.name).join("user-data");
        let (file, text) = match std::fs::read_to_string(&path) {
            Ok(t) => (path.display().to_string(), t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Nothing rendered on disk: lint a fresh rendering.
                let file = format!("{cluster_file} (rendered user-data of {})", n.name);
                let Some(r) = &renderer else { continue };
                match r.render_node(n) {
                    Ok(x) => (file, x.user_data),
                    Err(e) => {
                        let line = l.line(&format!("nodes[{}]", n.index));
                        c.error("schema", node, &cluster_file, line, format!("rendering user-data: {e}"));
                        continue;
                    }
                }
            }
            Err(e) => return Err(e.into()),
        };
        for t in &targets {
            if text.len() > t.limit() {
                c.error(
                    "size",
                    node,
                    &file,
                    None,
                    format!(
                        "user-data is {} bytes, over the {} limit of {} bytes",
                        text.len(),
                        t.name(),
                        t.limit()
                    ),
                );
            }
        }
        let doc = match crate::cloudinit::schema::check_user_data(&text) {
            Ok(d) => d,
            Err(e) => {
                c.error("schema", node, &file, None, e);
                match serde_yaml::from_str::<serde_json::Value>(&text) {
                    Ok(d) => d,
                    Err(_) => continue,
                }
            }
        };
        let written: Vec<(String, String)> = doc
            .get("write_files")
            .and_then(|w| w.as_array())
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let p = f.get("path")?.as_str()?.to_string();
                let content = f.get("content").and_then(|x| x.as_str()).unwrap_or_default().to_string();
                Some((p, content))
            })
            .collect();
        if n.name == first_cp {
            let v = written.iter().find(|(p, _)| p == paths::ADDON_VALUES).map(|(_, c)| c.clone());
            addon_values = Some((file.clone(), v));
        }
        let image = by_role.get(n.role.as_str()).copied();
        match written.iter().find(|(p, _)| p == paths::KUBEADM) {
            Some((_, k)) => {
                check_kubeadm(&mut c, n, &file, k, image.map(|im| im.manifest.kubernetes_version.as_str()))
            }
            None => c.error("kubeadm", node, &file, None, format!("user-data writes no {}", paths::KUBEADM)),
        }
        let Some(im) = image else { continue };
        let (ps, units) = referenced(&doc);
        let imf = im.path.display().to_string();
        for p in ps {
            if written.iter().any(|(w, _)| *w == p) {
                continue;
            }
            if !im.has(&p)? {
                c.error(
                    "paths",
                    node,
                    &file,
                    None,
                    format!("{p} is not in the {} image {imf}", n.role.as_str()),
                );
            }
        }
        for u in units {
            let dirs = ["/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"];
            let mut found = false;
            for d in dirs {
                let p = format!("{d}/{u}");
                if written.iter().any(|(w, _)| *w == p) || im.has(&p)? {
                    found = true;
                    break;
                }
            }
            if !found {
                c.error(
                    "paths",
                    node,
                    &file,
                    None,
                    format!("unit {u} is not in the {} image {imf}", n.role.as_str()),
                );
            }
        }
    }
    if l.spec.addons.as_ref().is_some_and(|a| a.enabled) {
        if let Some((file, values)) = addon_values {
            check_chart(&mut c, &first_cp, &file, values.as_deref())?;
        }
    }
    let findings = c.findings;
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    Ok(Report {
        cluster: cluster_file,
        nodes: l.nodes.len(),
        images: images.len(),
        errors,
        warnings: findings.len() - errors,
        findings,
    })
}
