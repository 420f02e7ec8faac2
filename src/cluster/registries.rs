//! `registries:` in cluster.yaml: a team's own registry in front of, or instead of,
//! the images baked into the node images.
//!
//! - `mirrors`: per upstream registry (`registry.k8s.io`, `docker.io`, `_default` for
//!   every one), the endpoints containerd pulls through, written by user-data as
//!   containerd's own `certs.d/<registry>/hosts.toml` (containerd reads that directory
//!   on every pull: the image's config.toml sets `config_path`), with a CA file each
//!   when given. containerd always tries the registry itself last (`server`); with
//!   `fallback: false` the last endpoint takes that place too, so nothing leaves the
//!   network.
//! - `image_repository`: kubeadm's `imageRepository` (ClusterConfiguration): kubeadm
//!   then runs `<repository>/kube-apiserver:v1.30.3` …, which the node images do not
//!   embed (they carry the `registry.k8s.io` names), so they come from that registry.
//! - `pull_policy`: kubeadm's `nodeRegistration.imagePullPolicy` (init and join).
//!
//! Everything here is data: files in user-data and two kubeadm fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::diag::Collector;

/// The directory containerd's config.toml points `config_path` at.
pub const CERTS_D: &str = "/etc/containerd/certs.d";
/// kubeadm's default (and the names the node images embed).
pub const DEFAULT_REPOSITORY: &str = "registry.k8s.io";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    /// Upstream registry host (or `_default`) -> where to pull its images from.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// kubeadm's imageRepository (default registry.k8s.io).
    #[serde(default)]
    pub image_repository: Option<String>,
    /// kubeadm's image pull policy for init and join (default IfNotPresent).
    #[serde(default)]
    pub pull_policy: Option<PullPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Tried in order.
    pub endpoints: Vec<Endpoint>,
    /// Try the upstream registry itself after the endpoints (containerd's default).
    #[serde(default = "yes")]
    pub fallback: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `https://host[:port][/path]` (or `http://` for a registry without TLS).
    pub url: String,
    /// PEM CA certificate(s) the endpoint's TLS certificate chains to.
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub skip_verify: bool,
    /// The URL's path is the API root itself (no `/v2` appended).
    #[serde(default)]
    pub override_path: bool,
    /// What the endpoint may do: `pull` (fetch by digest) and `resolve` (tag to
    /// digest); nodes never push. Default both.
    #[serde(default = "pull_resolve")]
    pub capabilities: Vec<String>,
}

fn pull_resolve() -> Vec<String> {
    vec!["pull".into(), "resolve".into()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// What `registries` means for every node, validated: kubeadm's two fields as values
/// and the mirrors whose hosts.toml user-data writes.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryPlan {
    /// kubeadm's imageRepository (default registry.k8s.io).
    pub image_repository: String,
    /// kubeadm's image pull policy for init and join (default IfNotPresent).
    pub pull_policy: PullPolicy,
    /// Upstream registry host (or `_default`) -> its checked mirror.
    pub mirrors: BTreeMap<String, Mirror>,
}

impl Default for RegistryPlan {
    fn default() -> Self {
        RegistryPlan {
            image_repository: DEFAULT_REPOSITORY.to_string(),
            pull_policy: PullPolicy::IfNotPresent,
            mirrors: BTreeMap::new(),
        }
    }
}

/// Check `registries` (problems at field paths under `registries.`) and return its plan.
pub(crate) fn plan(c: &mut Collector, r: Option<&Registries>) -> RegistryPlan {
    let Some(r) = r else { return RegistryPlan::default() };
    for (host, m) in &r.mirrors {
        let at = format!("registries.mirrors.{host}");
        if host != "_default" && !crate::types::image::valid_domain(host) {
            c.err(&at, format!("{host:?} is not a registry host[:port] (or _default)"));
        }
        if m.endpoints.is_empty() {
            c.err(&format!("{at}.endpoints"), "at least one endpoint is required");
        }
        for (i, e) in m.endpoints.iter().enumerate() {
            let p = format!("{at}.endpoints[{i}]");
            if let Err(msg) = check_url(&e.url) {
                c.err(&format!("{p}.url"), msg);
            }
            if let Some(ca) = &e.ca {
                if let Err(msg) = check_ca(ca) {
                    c.err(&format!("{p}.ca"), msg);
                }
            }
            if e.capabilities.is_empty() || e.capabilities.iter().any(|c| c != "pull" && c != "resolve") {
                c.err(&format!("{p}.capabilities"), "a list of pull and resolve (nodes never push)");
            }
            if e.skip_verify {
                c.warn(
                    &format!("{p}.skip_verify"),
                    "TLS is not verified: anyone on the path can serve other images",
                );
            }
        }
    }
    let pull_policy = r.pull_policy.unwrap_or(PullPolicy::IfNotPresent);
    if let Some(repo) = &r.image_repository {
        let probe = format!("{repo}/pause:3.9");
        match crate::types::ImageRef::parse(&probe) {
            Ok(i)
                if format!("{}/{}", i.domain, i.path) == format!("{repo}/pause")
                    && repo.contains(['.', ':']) => {}
            _ => c.err(
                "registries.image_repository",
                format!(
                    "{repo:?} is not a registry host with an optional path (e.g. harbor.example.com/k8s)"
                ),
            ),
        }
        if repo != DEFAULT_REPOSITORY {
            c.warn(
                "registries.image_repository",
                format!(
                    "kubeadm will run {repo}/kube-apiserver:… and its other images from that registry; \
                     the node images embed only the {DEFAULT_REPOSITORY} names"
                ),
            );
            if pull_policy == PullPolicy::Never {
                c.err(
                    "registries.pull_policy",
                    format!("Never with image_repository {repo}: none of kubeadm's images would be present"),
                );
            }
        }
    }
    RegistryPlan {
        image_repository: r.image_repository.clone().unwrap_or_else(|| DEFAULT_REPOSITORY.to_string()),
        pull_policy,
        mirrors: r.mirrors.clone(),
    }
}

fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("{u:?} must start with https:// or http://"))?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    if !crate::types::image::valid_domain(host) {
        return Err(format!("{u:?}: {host:?} is not a host[:port]"));
    }
    let ok_path = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
    if !ok_path || u.len() > 2048 {
        return Err(format!("{u:?}: only a plain path may follow the host (no query, spaces or quotes)"));
    }
    Ok(())
}

fn check_ca(pem: &str) -> Result<(), String> {
    let mut n = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("a {} block; only CERTIFICATE blocks belong here", block.label));
        }
        block.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(())
}

/// The directory containerd looks the registry `host` up in.
pub fn host_dir(host: &str) -> String {
    format!("{CERTS_D}/{host}")
}

/// A TOML basic string (the values are validated URLs and file names).
fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `hosts.toml` for one registry, and the CA files it names (file name, PEM).
pub fn hosts_toml(host: &str, m: &Mirror) -> (String, Vec<(String, String)>) {
    let mut cas = Vec::new();
    let mut body = |e: &Endpoint, i: usize, indent: &str| -> String {
        let mut s = String::new();
        let caps: Vec<String> = e.capabilities.iter().map(|c| toml_str(c)).collect();
        s.push_str(&format!("{indent}capabilities = [{}]\n", caps.join(", ")));
        if let Some(pem) = &e.ca {
            let name = format!("endpoint-{i}-ca.crt");
            s.push_str(&format!("{indent}ca = {}\n", toml_str(&name)));
            let mut pem = pem.clone();
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            if !cas.iter().any(|(n, _): &(String, String)| *n == name) {
                cas.push((name, pem));
            }
        }
        if e.skip_verify {
            s.push_str(&format!("{indent}skip_verify = true\n"));
        }
        if e.override_path {
            s.push_str(&format!("{indent}override_path = true\n"));
        }
        s
    };
    let mut t =
        format!("# containerd registry configuration for {host}, written by imgbuild from cluster.yaml\n");
    match (m.fallback, m.endpoints.last()) {
        // The last endpoint also stands in for the upstream (containerd always tries
        // `server` last): nothing is pulled from elsewhere.
        (false, Some(last)) => {
            t.push_str(&format!("server = {}\n", toml_str(&last.url)));
            t.push_str(&body(last, m.endpoints.len() - 1, ""));
        }
        _ if host == "_default" => {}
        _ => {
            let upstream = if host == "docker.io" {
                "https://registry-1.docker.io".to_string()
            } else {
                format!("https://{host}")
            };
            t.push_str(&format!("server = {}\n", toml_str(&upstream)));
        }
    }
    // containerd (1.6 and 1.7) refuses a hosts.toml without [host] tables ("invalid
    // `host` tree") and then uses no mirror at all: every endpoint gets one, the
    // `server` stand-in included.
    for (i, e) in m.endpoints.iter().enumerate() {
        t.push_str(&format!("\n[host.{}]\n", toml_str(&e.url)));
        t.push_str(&body(e, i, "  "));
    }
    (t, cas)
}

/// Every file user-data writes for `registries`: (path, mode, content).
pub fn files(r: &RegistryPlan) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for (host, m) in &r.mirrors {
        let (toml, cas) = hosts_toml(host, m);
        let dir = host_dir(host);
        out.push((format!("{dir}/hosts.toml"), "0644", toml));
        for (name, pem) in cas {
            out.push((format!("{dir}/{name}"), "0644", pem));
        }
    }
    out
}
