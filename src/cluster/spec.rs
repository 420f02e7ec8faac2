//! `cluster.yaml`: the human-editable cluster spec. Unknown fields are rejected and
//! every semantic error names the field path and its line (via [`crate::yamlpos`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::net::Cidr;
use super::ClusterError;
use crate::types::Role;

/// Only this minor is built by the embedded recipe.
pub const KUBERNETES_VERSION: &str = "v1.30.3";
/// Pinned kube-vip (kubespray v2.26.0 pairs it with k8s 1.30; see shared/reference/pins.md §10).
pub const KUBE_VIP_IMAGE: &str = "ghcr.io/kube-vip/kube-vip:v0.8.0";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    #[serde(default = "default_version")]
    pub kubernetes_version: String,
    /// `HOST:PORT` (or `HOST`, port 6443) of the API server as clients see it.
    pub endpoint: String,
    #[serde(default)]
    pub ha: Ha,
    pub networking: Networking,
    #[serde(default)]
    pub bootstrap: BootstrapSettings,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub addons: Option<Addons>,
    /// Registry mirrors, kubeadm's imageRepository and pull policy ([`super::registries`]).
    #[serde(default)]
    pub registries: Option<super::registries::Registries>,
}

fn default_version() -> String {
    KUBERNETES_VERSION.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HaMode {
    /// kube-vip static pod announcing `ha.address` by ARP on `ha.interface`.
    Vip,
    /// An external load balancer already answers on the endpoint.
    ExternalLb,
    /// Single control plane, the endpoint is that node.
    #[default]
    None,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ha {
    #[serde(default)]
    pub mode: HaMode,
    /// Interface kube-vip announces the VIP on (vip mode).
    #[serde(default)]
    pub interface: Option<String>,
    /// The virtual IP (vip mode); defaults to the endpoint host when that is an IP.
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Networking {
    pub pod_cidr: String,
    pub service_cidr: String,
    /// The nodes' network; defaults to the networks of the nodes' static addresses.
    #[serde(default)]
    pub node_cidr: Option<String>,
    #[serde(default = "default_dns_domain")]
    pub dns_domain: String,
}

fn default_dns_domain() -> String {
    "cluster.local".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSettings {
    /// Lifetime of the bootstrap token (Go duration: `24h`, `90m`; `0` = never expires).
    #[serde(default = "default_ttl")]
    pub token_ttl: String,
    /// Total time a node keeps retrying init/join before giving up.
    #[serde(default = "default_budget")]
    pub retry_budget_seconds: u64,
}

fn default_ttl() -> String {
    "24h".into()
}
fn default_budget() -> u64 {
    1800
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        Self { token_ttl: default_ttl(), retry_budget_seconds: default_budget() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub role: Role,
    /// Static address with prefix length (`10.0.0.11/24`); absent = DHCP.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    /// Interface name or glob the static address goes on (default `e*`).
    #[serde(default)]
    pub interface: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addons {
    /// Install the add-ons after `kubeadm init` (the control-plane image's installer).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Helm values for the backend chart, passed through verbatim to
    /// `/etc/imgbuild/addons/values.yaml` on the first control plane.
    #[serde(default)]
    pub backend: serde_yaml::Mapping,
}

fn yes() -> bool {
    true
}

/// A validated spec plus facts derived from it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub spec: ClusterSpec,
    pub origin: String,
    pub lines: HashMap<String, usize>,
    pub endpoint_host: String,
    pub endpoint_port: u16,
    pub warnings: Vec<String>,
}

impl Loaded {
    pub fn first_control_plane(&self) -> &Node {
        // validate() guarantees one exists
        self.spec.nodes.iter().find(|n| n.role == Role::ControlPlane).unwrap_or(&self.spec.nodes[0])
    }
    pub fn control_plane_endpoint(&self) -> String {
        join_host_port(&self.endpoint_host, self.endpoint_port)
    }
    pub fn vip(&self) -> Option<String> {
        if self.spec.ha.mode != HaMode::Vip {
            return None;
        }
        self.spec.ha.address.clone().or_else(|| Some(self.endpoint_host.clone()))
    }
    pub fn line(&self, path: &str) -> Option<usize> {
        crate::yamlpos::line_of(&self.lines, path)
    }
}

pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a node name and hostname.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Split `HOST[:PORT]` / `[V6]:PORT`.
pub fn parse_endpoint(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or("unterminated [IPv6] in endpoint")?;
        (h.to_string(), p.strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        (s.to_string(), None)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let port = match port {
        None => 6443,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("{p:?} is not a TCP port")),
        },
    };
    if host.parse::<IpAddr>().is_err() && !is_dns1123_subdomain(&host) {
        return Err(format!("{host:?} is neither an IP address nor a DNS name"));
    }
    Ok((host, port))
}

fn is_iface(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:*-".contains(&b))
}

fn is_go_duration(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["h", "m", "s"].into_iter().find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
        any = true;
    }
    any
}

/// What an SSH public key line may hold: one line of printable text.
fn is_ssh_key(s: &str) -> bool {
    let known = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"];
    known.iter().any(|p| s.starts_with(p)) && !s.chars().any(|c| c.is_control())
}

struct Problems<'a> {
    lines: &'a HashMap<String, usize>,
    origin: &'a str,
    errors: Vec<String>,
}

impl Problems<'_> {
    fn at(&self, path: &str, msg: &str) -> String {
        match crate::yamlpos::line_of(self.lines, path) {
            Some(l) => format!("{}:{l}: {path}: {msg}", self.origin),
            None => format!("{}: {path}: {msg}", self.origin),
        }
    }
    fn err(&mut self, path: &str, msg: impl AsRef<str>) {
        let m = self.at(path, msg.as_ref());
        self.errors.push(m);
    }
}

/// Parse and validate `cluster.yaml` text. Warnings are returned, errors fail.
pub fn parse(src: &str, origin: &str) -> Result<Loaded, ClusterError> {
    let lines = crate::yamlpos::lines(src);
    let de = serde_yaml::Deserializer::from_str(src);
    let spec: ClusterSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line()).or_else(|| crate::yamlpos::line_of(&lines, &path));
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        let path = if path == "." { String::new() } else { format!(" {path}:") };
        ClusterError::Invalid(format!("{origin}{at}:{path} {inner}"))
    })?;
    validate(spec, origin, lines)
}

pub fn load(path: &Path) -> Result<Loaded, ClusterError> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| ClusterError::Io(format!("reading {}", path.display()), e))?;
    parse(&src, &path.display().to_string())
}

fn validate(spec: ClusterSpec, origin: &str, lines: HashMap<String, usize>) -> Result<Loaded, ClusterError> {
    let mut p = Problems { lines: &lines, origin, errors: Vec::new() };
    let mut warnings = Vec::new();
    let warn_at = |p: &Problems, path: &str, msg: &str| format!("warning: {}", p.at(path, msg));

    if !is_dns1123_label(&spec.name) {
        p.err("name", format!("{:?} is not a DNS-1123 label (a-z, 0-9, '-', at most 63)", spec.name));
    }
    let v = spec.kubernetes_version.strip_prefix('v').unwrap_or("");
    let parts: Vec<_> = v.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|x| x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit())) {
        p.err("kubernetes_version", format!("{:?} is not a version like v1.30.3", spec.kubernetes_version));
    } else if spec.kubernetes_version != KUBERNETES_VERSION {
        warnings.push(warn_at(
            &p,
            "kubernetes_version",
            &format!("the images are built for {KUBERNETES_VERSION}; kubeadm may refuse another version"),
        ));
    }
    let (endpoint_host, endpoint_port) = match parse_endpoint(&spec.endpoint) {
        Ok(x) => x,
        Err(e) => {
            p.err("endpoint", e);
            (String::new(), 6443)
        }
    };

    // networking
    let mut nets: Vec<(String, Cidr)> = Vec::new();
    for (path, val) in [
        ("networking.pod_cidr", &spec.networking.pod_cidr),
        ("networking.service_cidr", &spec.networking.service_cidr),
    ] {
        match val.parse::<Cidr>() {
            Ok(c) => nets.push((path.to_string(), c.network())),
            Err(e) => p.err(path, e),
        }
    }
    if !is_dns1123_subdomain(&spec.networking.dns_domain) {
        p.err("networking.dns_domain", format!("{:?} is not a DNS name", spec.networking.dns_domain));
    }
    let mut node_nets: Vec<(String, Cidr)> = Vec::new();
    if let Some(n) = &spec.networking.node_cidr {
        match n.parse::<Cidr>() {
            Ok(c) => node_nets.push(("networking.node_cidr".into(), c.network())),
            Err(e) => p.err("networking.node_cidr", e),
        }
    }

    // nodes
    if spec.nodes.is_empty() {
        p.err("nodes", "no nodes");
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut addrs: HashSet<IpAddr> = HashSet::new();
    let explicit_node_net = !node_nets.is_empty();
    for (i, n) in spec.nodes.iter().enumerate() {
        let base = format!("nodes[{i}]");
        if !is_dns1123_label(&n.name) {
            p.err(
                &format!("{base}.name"),
                format!("{:?} is not a DNS-1123 label (a-z, 0-9, '-', at most 63)", n.name),
            );
        }
        if let Some(j) = seen.insert(&n.name, i) {
            let other = crate::yamlpos::line_of(&lines, &format!("nodes[{j}].name"))
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            p.err(
                &format!("{base}.name"),
                format!("duplicate node name {:?}, first used by nodes[{j}]{other}", n.name),
            );
        }
        if let Some(a) = &n.address {
            match a.parse::<Cidr>() {
                Ok(c) => {
                    if !addrs.insert(c.addr) {
                        p.err(&format!("{base}.address"), format!("address {} is used twice", c.addr));
                    }
                    if !explicit_node_net && !node_nets.iter().any(|(_, x)| *x == c.network()) {
                        node_nets.push((format!("{base}.address"), c.network()));
                    }
                }
                Err(e) => p.err(
                    &format!("{base}.address"),
                    format!("{e} (write the address with its prefix length, e.g. 10.0.0.11/24)"),
                ),
            }
        } else if n.gateway.is_some() || !n.dns.is_empty() {
            p.err(&format!("{base}.address"), "gateway/dns need a static address");
        }
        if let Some(g) = &n.gateway {
            if g.parse::<IpAddr>().is_err() {
                p.err(&format!("{base}.gateway"), format!("{g:?} is not an IP address"));
            }
        }
        for (k, d) in n.dns.iter().enumerate() {
            if d.parse::<IpAddr>().is_err() {
                p.err(&format!("{base}.dns[{k}]"), format!("{d:?} is not an IP address"));
            }
        }
        if let Some(f) = &n.interface {
            if !is_iface(f) {
                p.err(&format!("{base}.interface"), format!("{f:?} is not an interface name"));
            }
        }
    }
    let cps = spec.nodes.iter().filter(|n| n.role == Role::ControlPlane).count();
    if cps == 0 && !spec.nodes.is_empty() {
        p.err("nodes", "no node has role control-plane");
    }
    if cps > 0 && cps % 2 == 0 {
        warnings.push(warn_at(
            &p,
            "nodes",
            &format!("{cps} control planes: etcd with an even member count tolerates no more failures than one fewer; use 3"),
        ));
    }

    // overlaps between pod, service and node networks
    let mut all = nets.clone();
    all.extend(node_nets.iter().cloned());
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            let (pi, ci) = &all[i];
            let (pj, cj) = &all[j];
            let both_nodes = i >= nets.len() && j >= nets.len();
            if !both_nodes && ci.overlaps(cj) {
                p.err(pj, format!("{cj} overlaps {ci} ({pi})"));
            }
        }
    }

    // HA
    match spec.ha.mode {
        HaMode::Vip => {
            match &spec.ha.interface {
                Some(f) if is_iface(f) && !f.contains('*') => {}
                Some(f) => p.err("ha.interface", format!("{f:?} is not an interface name")),
                None => p.err("ha", "mode vip needs `interface` (the NIC kube-vip announces the VIP on)"),
            }
            let vip = spec.ha.address.clone().unwrap_or_else(|| endpoint_host.clone());
            if vip.parse::<IpAddr>().is_err() {
                p.err(
                    "ha",
                    format!(
                        "mode vip needs an IP `address` (the endpoint host {endpoint_host:?} is not an IP)"
                    ),
                );
            } else if let Ok(ip) = vip.parse::<IpAddr>() {
                if addrs.contains(&ip) {
                    p.err("ha.address", format!("the VIP {ip} is also a node address"));
                }
            }
        }
        HaMode::ExternalLb => {
            if spec.ha.interface.is_some() || spec.ha.address.is_some() {
                p.err("ha", "interface/address only apply to mode vip");
            }
        }
        HaMode::None => {
            if cps > 1 {
                p.err(
                    "ha.mode",
                    format!("{cps} control planes need an HA endpoint: mode vip or external-lb"),
                );
            }
            if spec.ha.interface.is_some() || spec.ha.address.is_some() {
                p.err("ha", "interface/address only apply to mode vip");
            }
        }
    }
    if let Ok(ip) = endpoint_host.parse::<IpAddr>() {
        if !node_nets.is_empty() && !node_nets.iter().any(|(_, c)| c.contains(ip)) {
            warnings.push(warn_at(
                &p,
                "endpoint",
                &format!("endpoint {ip} is outside the nodes' network(s)"),
            ));
        }
    }

    if !is_go_duration(&spec.bootstrap.token_ttl) {
        p.err(
            "bootstrap.token_ttl",
            format!("{:?} is not a duration like 24h or 90m", spec.bootstrap.token_ttl),
        );
    }
    if spec.bootstrap.retry_budget_seconds == 0 {
        p.err("bootstrap.retry_budget_seconds", "must be positive");
    }
    for (i, k) in spec.ssh_authorized_keys.iter().enumerate() {
        if !is_ssh_key(k) {
            p.err(
                &format!("ssh_authorized_keys[{i}]"),
                "not a single-line SSH public key (ssh-…, ecdsa-…, sk-…)",
            );
        }
    }

    if let Some(r) = &spec.registries {
        let (errors, warns) = super::registries::validate(r);
        for (path, msg) in errors {
            p.err(&path, msg);
        }
        warnings.extend(warns.iter().map(|(path, msg)| warn_at(&p, path, msg)));
    }

    if !p.errors.is_empty() {
        return Err(ClusterError::Invalid(p.errors.join("\n")));
    }
    Ok(Loaded { spec, origin: origin.to_string(), lines, endpoint_host, endpoint_port, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: demo
endpoint: 10.0.0.10:6443
ha: {mode: vip, interface: ens3}
networking: {pod_cidr: 10.244.0.0/16, service_cidr: 10.96.0.0/12}
nodes:
  - {name: cp-1, role: control-plane, address: 10.0.0.11/24, gateway: 10.0.0.1, dns: [10.0.0.1]}
  - {name: cp-2, role: control-plane, address: 10.0.0.12/24}
  - {name: cp-3, role: control-plane, address: 10.0.0.13/24}
  - {name: w-1, role: worker}
";

    fn err(src: &str) -> String {
        match parse(src, "c.yaml") {
            Err(ClusterError::Invalid(m)) => m,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn good_spec() {
        let l = parse(GOOD, "c.yaml").unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(l.control_plane_endpoint(), "10.0.0.10:6443");
        assert_eq!(l.vip().as_deref(), Some("10.0.0.10"));
        assert_eq!(l.first_control_plane().name, "cp-1");
    }

    #[test]
    fn duplicate_and_bad_names_have_lines() {
        let m = err(&GOOD.replace("name: cp-2", "name: cp-1").replace("name: w-1", "name: W_1"));
        assert!(m.contains("c.yaml:7: nodes[1].name: duplicate node name \"cp-1\""), "{m}");
        assert!(m.contains("(line 6)"), "{m}");
        assert!(m.contains("c.yaml:9: nodes[3].name: \"W_1\" is not a DNS-1123 label"), "{m}");
    }

    #[test]
    fn overlaps_and_no_control_plane() {
        let m = err(&GOOD.replace("10.96.0.0/12", "10.244.128.0/20"));
        assert!(
            m.contains("c.yaml:4: networking.service_cidr: 10.244.128.0/20 overlaps 10.244.0.0/16"),
            "{m}"
        );
        let m = err(&GOOD.replace("10.244.0.0/16", "10.0.0.0/16"));
        assert!(m.contains("nodes[0].address: 10.0.0.0/24 overlaps 10.0.0.0/16"), "{m}");
        let m = err(&GOOD.replace("role: control-plane", "role: worker"));
        assert!(m.contains("no node has role control-plane"), "{m}");
    }

    #[test]
    fn warnings() {
        let src = GOOD
            .replace("  - {name: cp-3, role: control-plane, address: 10.0.0.13/24}\n", "")
            .replace("10.0.0.10:6443", "192.168.1.10:6443");
        let l = parse(&src, "c.yaml").unwrap();
        let w = l.warnings.join("\n");
        assert!(w.contains("2 control planes"), "{w}");
        assert!(w.contains("c.yaml:2: endpoint: endpoint 192.168.1.10 is outside"), "{w}");
    }

    #[test]
    fn unknown_field_and_type_errors_have_lines() {
        let m = err(&GOOD.replace("ha: {", "hax: 1\nha: {"));
        assert!(m.starts_with("c.yaml:3:"), "{m}");
        let m = err(&GOOD.replace("role: worker", "role: boss"));
        assert!(m.contains("c.yaml:9:"), "{m}");
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(parse_endpoint("k8s.example.com").unwrap(), ("k8s.example.com".into(), 6443));
        assert_eq!(parse_endpoint("[fd00::1]:443").unwrap(), ("fd00::1".into(), 443));
        assert!(parse_endpoint("a b:1").is_err());
        assert!(parse_endpoint("x:0").is_err());
        assert!(is_go_duration("1h30m") && !is_go_duration("1d") && !is_go_duration(""));
    }
}
