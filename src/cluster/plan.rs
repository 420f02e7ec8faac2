//! The validated cluster: what `cluster.yaml` says, as typed values. Validation
//! parses every network, address and endpoint once and returns them with a per-node
//! plan (how the node joins, its static network, its time servers); rendering and
//! `lint` work from this plan and never parse a spec string again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use super::diag::{Collector, Diagnostic, Diagnostics, Severity};
use super::net::{
    is_dns1123_label, is_dns1123_subdomain, is_hostname, unroutable, Cidr, Endpoint, IfName, Nic,
};
use super::registries::{self, RegistryPlan};
use super::spec::{self, ClusterSpec, HaMode, KUBERNETES_VERSION};
use super::ClusterError;
use crate::types::Role;

/// The port kube-apiserver listens on (kubeadm's `bindPort`) on every control plane.
pub const API_BIND_PORT: u16 = 6443;

/// How a node becomes part of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinMode {
    /// The first control plane: `kubeadm init`.
    Init,
    /// Another control plane: `kubeadm join` with a `controlPlane` section.
    JoinControlPlane,
    /// A worker: `kubeadm join`.
    JoinWorker,
}

impl JoinMode {
    /// The role name the baked bootstrap script reads from bootstrap.env.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinMode::Init => "init",
            JoinMode::JoinControlPlane => "join-control-plane",
            JoinMode::JoinWorker => "join-worker",
        }
    }
}

/// A node's static network: one address on one NIC, with its resolvers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNet {
    /// The address with its prefix length (`10.0.0.11/24`).
    pub address: Cidr,
    pub gateway: Option<IpAddr>,
    /// The NIC that gets the address (and nothing else does).
    pub nic: Nic,
    /// Other NICs configured by DHCP (a VM's public NIC next to its private one).
    pub dhcp: Vec<Nic>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl StaticNet {
    /// The gateway is outside the address's own prefix (a /32 with its provider's
    /// router), so the route to it must be declared on-link.
    pub fn gateway_on_link(&self) -> bool {
        self.gateway.is_some_and(|g| !self.address.contains(g))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// Position in `nodes` (for field paths and lines).
    pub index: usize,
    pub name: String,
    pub role: Role,
    pub mode: JoinMode,
    /// `None`: DHCP on the first NIC (cloud-init's fallback network configuration).
    pub net: Option<StaticNet>,
    /// NTP servers; empty = the image's default time configuration.
    pub ntp: Vec<String>,
}

impl NodePlan {
    pub fn is_control_plane(&self) -> bool {
        self.role == Role::ControlPlane
    }
    pub fn address(&self) -> Option<IpAddr> {
        self.net.as_ref().map(|n| n.address.addr)
    }
}

/// Where other nodes' traffic comes from, as far as the spec tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSources {
    /// `networking.node_cidr`: the nodes' own network.
    Network(Cidr),
    /// Every node has a static address: exactly those addresses (works for nodes on
    /// public addresses, where a whole provider network would be far too wide).
    Addresses(Vec<IpAddr>),
    /// Some node uses DHCP and no node network is declared.
    Unknown,
}

/// The validated spec.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// The spec as written (for values passed through verbatim, like add-on values).
    pub spec: ClusterSpec,
    pub origin: String,
    pub lines: HashMap<String, usize>,
    pub endpoint: Endpoint,
    /// kube-vip's virtual IP (mode vip).
    pub vip: Option<IpAddr>,
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    pub node_sources: NodeSources,
    pub nodes: Vec<NodePlan>,
    /// Registry mirrors and kubeadm's image repository and pull policy.
    pub registries: RegistryPlan,
    pub warnings: Vec<Diagnostic>,
    /// `backups.s3`, checked (the credentials are read when cloud-init is rendered).
    pub backup_s3: Option<super::s3::S3Target>,
}

impl ClusterPlan {
    pub fn first_control_plane(&self) -> &NodePlan {
        // validation guarantees exactly one Init node
        self.nodes.iter().find(|n| n.mode == JoinMode::Init).unwrap_or(&self.nodes[0])
    }
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }
    /// `HOST:PORT` as kubeadm's controlPlaneEndpoint and every kubeconfig use it.
    pub fn control_plane_endpoint(&self) -> String {
        self.endpoint.to_string()
    }
    pub fn line(&self, path: &str) -> Option<usize> {
        crate::yamlpos::line_of(&self.lines, path)
    }
    /// The source networks the node firewall lets reach the cluster ports, each with
    /// what it is: the nodes (see [`NodeSources`]), the pod and service networks, the
    /// endpoint and the VIP. `None` for the nodes when they are unknown.
    pub fn firewall_sources(&self) -> (Option<Vec<Cidr>>, Vec<(&'static str, Cidr)>) {
        let nodes = match &self.node_sources {
            NodeSources::Network(c) => Some(vec![c.network()]),
            NodeSources::Addresses(a) => Some(a.iter().map(|ip| Cidr::host(*ip)).collect()),
            NodeSources::Unknown => None,
        };
        let mut other = vec![("pod", self.pod_cidr), ("service", self.service_cidr)];
        if let Some(ip) = self.endpoint.ip() {
            other.push(("endpoint", Cidr::host(ip)));
        }
        if let Some(v) = self.vip.filter(|v| Some(*v) != self.endpoint.ip()) {
            other.push(("vip", Cidr::host(v)));
        }
        (nodes, other)
    }
}

/// Parse and validate `cluster.yaml` text.
pub fn parse(src: &str, origin: &str) -> Result<ClusterPlan, ClusterError> {
    let (spec, lines) = spec::parse(src, origin).map_err(ClusterError::Spec)?;
    validate(spec, origin, lines).map_err(ClusterError::Spec)
}

pub fn load(path: &Path) -> Result<ClusterPlan, ClusterError> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| ClusterError::Io(format!("reading {}", path.display()), e))?;
    parse(&src, &path.display().to_string())
}

/// Parse `s` as a `T`, or record why not at `path`.
fn typed<T: FromStr<Err = String>>(c: &mut Collector, path: &str, s: &str) -> Option<T> {
    s.parse().map_err(|e: String| c.err(path, e)).ok()
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

/// Nameservers and search domains at `path` (`dns` or `nodes[i].dns`).
fn dns(c: &mut Collector, path: &str, d: &spec::Dns) -> (Vec<IpAddr>, Vec<String>) {
    let mut ns = Vec::new();
    for (i, s) in d.nameservers.iter().enumerate() {
        let p = format!("{path}.nameservers[{i}]");
        match s.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                c.err(&p, format!("{ip} cannot be a nameserver"))
            }
            Ok(ip) => ns.push(ip),
            Err(_) => c.err(&p, format!("{s:?} is not an IP address (nameservers are addresses)")),
        }
    }
    for (i, s) in d.search.iter().enumerate() {
        if !is_hostname(s) {
            c.err(&format!("{path}.search[{i}]"), format!("{s:?} is not a DNS domain"));
        }
    }
    (ns, d.search.clone())
}

/// NTP servers at `path` (`ntp` or `nodes[i].ntp`): host names or addresses.
fn ntp(c: &mut Collector, path: &str, n: &spec::Ntp) -> Vec<String> {
    if n.servers.is_empty() {
        c.err(&format!("{path}.servers"), "no servers (leave `ntp` out for the image's default)");
    }
    for (i, s) in n.servers.iter().enumerate() {
        let p = format!("{path}.servers[{i}]");
        match s.parse::<IpAddr>() {
            Ok(ip) if unroutable(ip).is_some() => c.err(&p, format!("{ip} cannot be a time server")),
            Ok(_) => {}
            Err(_) if is_hostname(s) => {}
            Err(_) => c.err(&p, format!("{s:?} is neither a host name nor an IP address")),
        }
    }
    n.servers.clone()
}

/// Cluster-wide settings a node inherits unless it names its own.
struct Defaults {
    interface: Option<IfName>,
    /// `networking.interface` is set (if invalid, already reported)
    interface_set: bool,
    dhcp: Vec<Nic>,
    dns: Option<(Vec<IpAddr>, Vec<String>)>,
    ntp: Vec<String>,
}

fn defaults(c: &mut Collector, spec: &ClusterSpec) -> Defaults {
    let net = &spec.networking;
    let interface = net.interface.as_ref().and_then(|s| {
        if s.parse::<Nic>().is_ok_and(|n| matches!(n, Nic::Mac(_))) {
            c.err(
                "networking.interface",
                "a MAC address names one VM's NIC: give it per node (nodes[].interface)",
            );
            return None;
        }
        typed::<IfName>(c, "networking.interface", s)
    });
    let mut dhcp = Vec::new();
    for (i, s) in net.dhcp_interfaces.iter().enumerate() {
        let p = format!("networking.dhcp_interfaces[{i}]");
        match s.parse::<Nic>() {
            Ok(Nic::Mac(_)) => {
                c.err(&p, "a MAC address names one VM's NIC: give it per node (nodes[].dhcp_interfaces)")
            }
            Ok(n) => dhcp.push(n),
            Err(e) => c.err(&p, e),
        }
    }
    let dns = spec.dns.as_ref().map(|d| dns(c, "dns", d));
    let ntp = spec.ntp.as_ref().map(|n| ntp(c, "ntp", n)).unwrap_or_default();
    Defaults { interface, interface_set: net.interface.is_some(), dhcp, dns, ntp }
}

/// A node's static network, or why it cannot have one.
fn static_net(
    c: &mut Collector,
    base: &str,
    n: &spec::Node,
    d: &Defaults,
    missing_dns: &mut Vec<usize>,
    index: usize,
) -> Option<StaticNet> {
    let Some(a) = &n.address else {
        for (set, field) in [
            (n.gateway.is_some(), "gateway"),
            (n.dns.is_some(), "dns"),
            (n.interface.is_some(), "interface"),
            (n.dhcp_interfaces.is_some(), "dhcp_interfaces"),
        ] {
            if set {
                c.err(
                    &format!("{base}.{field}"),
                    "needs a static `address` (without one, cloud-init configures the first NIC by DHCP)",
                );
            }
        }
        return None;
    };
    let ap = format!("{base}.address");
    let address = match a.parse::<Cidr>() {
        Ok(x) => x,
        Err(e) => {
            c.err(&ap, format!("{e} (write the address with its prefix length, e.g. 10.0.0.11/24)"));
            return None;
        }
    };
    let ip = address.addr;
    if let Some(why) = unroutable(ip) {
        c.err(&ap, format!("{ip} is {why}, not a node address"));
    } else if address.network_addr_reserved() == Some(ip) {
        c.err(&ap, format!("{ip} is the network address of {}, not a host", address.network()));
    } else if address.broadcast() == Some(ip) {
        c.err(&ap, format!("{ip} is the broadcast address of {}, not a host", address.network()));
    }
    let gateway = n.gateway.as_ref().and_then(|g| {
        let gp = format!("{base}.gateway");
        let gw = match g.parse::<IpAddr>() {
            Ok(x) => x,
            Err(_) => {
                c.err(&gp, format!("{g:?} is not an IP address"));
                return None;
            }
        };
        if gw.is_ipv4() != ip.is_ipv4() {
            c.err(&gp, format!("gateway {gw} and address {ip} are of different IP versions"));
        } else if gw == ip {
            c.err(
                &gp,
                format!("{gw} is the node's own address; the gateway is the router to other networks"),
            );
        } else if let Some(why) = unroutable(gw) {
            c.err(&gp, format!("{gw} is {why}, not a router"));
        } else if address.network_addr_reserved() == Some(gw) || address.broadcast() == Some(gw) {
            c.err(&gp, format!("{gw} is the network or broadcast address of {}", address.network()));
        }
        Some(gw)
    });
    let nic = match (&n.interface, &d.interface) {
        (Some(s), _) => typed::<Nic>(c, &format!("{base}.interface"), s),
        (None, Some(i)) => Some(Nic::Name(i.clone())),
        (None, None) if d.interface_set => None,
        (None, None) => {
            c.err(
                &format!("{base}.interface"),
                "a static address needs the NIC it goes on: set `interface` (a name like ens3, or the NIC's MAC address) here, or networking.interface for every node",
            );
            None
        }
    };
    let dhcp = match &n.dhcp_interfaces {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| typed::<Nic>(c, &format!("{base}.dhcp_interfaces[{i}]"), s))
            .collect(),
        None => d.dhcp.clone(),
    };
    if let Some(nic) = &nic {
        if dhcp.contains(nic) {
            c.err(
                &format!("{base}.dhcp_interfaces"),
                format!("{nic} gets the static address; it cannot use DHCP too"),
            );
        }
    }
    let (nameservers, search) = match (&n.dns, &d.dns) {
        (Some(x), _) => dns(c, &format!("{base}.dns"), x),
        (None, Some(x)) => x.clone(),
        (None, None) => (Vec::new(), Vec::new()),
    };
    if nameservers.is_empty() {
        missing_dns.push(index);
    }
    Some(StaticNet { address, gateway, nic: nic?, dhcp, nameservers, search })
}

/// Check `nodes`; returns the per-node plans (mode Init for the first control plane).
fn nodes(c: &mut Collector, spec: &ClusterSpec, d: &Defaults) -> Vec<NodePlan> {
    if spec.nodes.is_empty() {
        c.err("nodes", "no nodes");
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
    let mut macs: HashMap<Nic, usize> = HashMap::new();
    let mut missing_dns = Vec::new();
    let mut out = Vec::new();
    let mut have_init = false;
    for (i, n) in spec.nodes.iter().enumerate() {
        let base = format!("nodes[{i}]");
        if !is_dns1123_label(&n.name) {
            c.err(
                &format!("{base}.name"),
                format!("{:?} is not a DNS-1123 label (a-z, 0-9, '-', at most 63)", n.name),
            );
        }
        if let Some(j) = seen.insert(&n.name, i) {
            let other =
                c.line(&format!("nodes[{j}].name")).map(|l| format!(" (line {l})")).unwrap_or_default();
            c.err(
                &format!("{base}.name"),
                format!("duplicate node name {:?}, first used by nodes[{j}]{other}", n.name),
            );
        }
        let net = static_net(c, &base, n, d, &mut missing_dns, i);
        if let Some(s) = &net {
            if let Some(j) = addrs.insert(s.address.addr, i) {
                c.err(
                    &format!("{base}.address"),
                    format!("address {} is used twice (nodes[{j}])", s.address.addr),
                );
            }
            if let Nic::Mac(_) = s.nic {
                if let Some(j) = macs.insert(s.nic.clone(), i) {
                    c.err(
                        &format!("{base}.interface"),
                        format!("MAC address {} is used twice (nodes[{j}])", s.nic),
                    );
                }
            }
        }
        let ntp = match &n.ntp {
            Some(x) => ntp(c, &format!("{base}.ntp"), x),
            None => d.ntp.clone(),
        };
        let mode = match n.role {
            Role::ControlPlane if !have_init => {
                have_init = true;
                JoinMode::Init
            }
            Role::ControlPlane => JoinMode::JoinControlPlane,
            Role::Worker => JoinMode::JoinWorker,
        };
        out.push(NodePlan { index: i, name: n.name.clone(), role: n.role, mode, net, ntp });
    }
    if let Some(&first) = missing_dns.first() {
        c.err(
            &format!("nodes[{first}].address"),
            format!(
                "a static address needs nameservers ({} node(s) have none): set dns.nameservers for every node, or nodes[{first}].dns.nameservers; Ubuntu 24.04's systemd-resolved has no fallback servers, so nothing would resolve",
                missing_dns.len()
            ),
        );
    }
    if !spec.nodes.is_empty() && !have_init {
        c.err("nodes", "no node has role control-plane");
    }
    out
}

fn validate(
    spec: ClusterSpec,
    origin: &str,
    lines: HashMap<String, usize>,
) -> Result<ClusterPlan, Diagnostics> {
    let mut c = Collector::new(&lines);

    if !is_dns1123_label(&spec.name) {
        c.err("name", format!("{:?} is not a DNS-1123 label (a-z, 0-9, '-', at most 63)", spec.name));
    }
    let v = spec.kubernetes_version.strip_prefix('v').unwrap_or("");
    let parts: Vec<_> = v.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|x| x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit())) {
        c.err("kubernetes_version", format!("{:?} is not a version like v1.30.3", spec.kubernetes_version));
    } else if spec.kubernetes_version != KUBERNETES_VERSION {
        c.warn(
            "kubernetes_version",
            format!("the images are built for {KUBERNETES_VERSION}; kubeadm may refuse another version"),
        );
    }
    let endpoint = typed::<Endpoint>(&mut c, "endpoint", &spec.endpoint);

    // networks
    let net = &spec.networking;
    let pod = typed::<Cidr>(&mut c, "networking.pod_cidr", &net.pod_cidr).map(|x| x.network());
    let service = typed::<Cidr>(&mut c, "networking.service_cidr", &net.service_cidr).map(|x| x.network());
    if !is_dns1123_subdomain(&net.dns_domain) {
        c.err("networking.dns_domain", format!("{:?} is not a DNS name", net.dns_domain));
    }
    let node_cidr = net.node_cidr.as_ref().and_then(|s| typed::<Cidr>(&mut c, "networking.node_cidr", s));

    let d = defaults(&mut c, &spec);
    let nodes = nodes(&mut c, &spec, &d);
    let cps = nodes.iter().filter(|n| n.is_control_plane()).count();
    if cps > 0 && cps % 2 == 0 {
        c.warn(
            "nodes",
            format!("{cps} control planes: etcd with an even member count tolerates no more failures than one fewer; use 3"),
        );
    }

    let node_nets = node_networks(&mut c, node_cidr, &nodes);
    overlaps(&mut c, pod, service, &node_nets);
    let vip = ha(&mut c, &spec, endpoint.as_ref(), &nodes, cps);
    if let Some(ip) = endpoint.as_ref().and_then(Endpoint::ip) {
        if !node_nets.is_empty() && !node_nets.iter().any(|(_, x)| x.contains(ip)) {
            c.warn("endpoint", format!("endpoint {ip} is outside the nodes' network(s)"));
        }
        for n in &nodes {
            if let Some(s) = n.net.as_ref().filter(|s| s.address.contains(ip)) {
                if s.address.network_addr_reserved() == Some(ip) || s.address.broadcast() == Some(ip) {
                    c.err(
                        "endpoint",
                        format!("{ip} is the network or broadcast address of {}", s.address.network()),
                    );
                    break;
                }
            }
        }
    }

    let node_sources = match node_cidr {
        Some(nc) => NodeSources::Network(nc),
        None if nodes.iter().all(|n| n.net.is_some()) => {
            NodeSources::Addresses(nodes.iter().filter_map(NodePlan::address).collect())
        }
        None => {
            c.warn(
                "networking",
                "some nodes use DHCP and networking.node_cidr is not set: the node firewall lets the private ranges (RFC 1918, 100.64.0.0/10, fc00::/7) reach the cluster ports instead of the nodes' own network; set node_cidr",
            );
            NodeSources::Unknown
        }
    };

    if !is_go_duration(&spec.bootstrap.token_ttl) {
        c.err(
            "bootstrap.token_ttl",
            format!("{:?} is not a duration like 24h or 90m", spec.bootstrap.token_ttl),
        );
    }
    if spec.bootstrap.retry_budget_seconds == 0 {
        c.err("bootstrap.retry_budget_seconds", "must be positive");
    }
    if !(1..=1000).contains(&spec.backups.retention) {
        c.err("backups.retention", "snapshots kept per control plane: 1 to 1000");
    }
    if !(1..=168).contains(&spec.backups.interval_hours) {
        c.err("backups.interval_hours", "hours between snapshots: 1 to 168");
    }
    let backup_s3 = spec.backups.s3.as_ref().and_then(|s| super::s3::check(&mut c, s));
    for (i, k) in spec.ssh_authorized_keys.iter().enumerate() {
        if !is_ssh_key(k) {
            c.err(
                &format!("ssh_authorized_keys[{i}]"),
                "not a single-line SSH public key (ssh-…, ecdsa-…, sk-…)",
            );
        }
    }
    let registries = registries::plan(&mut c, spec.registries.as_ref());

    let items = std::mem::take(&mut c.items);
    let failed = items.iter().any(|x| x.severity == Severity::Error);
    let (Some(endpoint), Some(pod_cidr), Some(service_cidr), false) = (endpoint, pod, service, failed) else {
        let errors = items.into_iter().filter(|x| x.severity == Severity::Error).collect();
        return Err(Diagnostics { origin: origin.to_string(), items: errors });
    };
    Ok(ClusterPlan {
        spec,
        origin: origin.to_string(),
        lines,
        endpoint,
        vip,
        pod_cidr,
        service_cidr,
        node_sources,
        nodes,
        registries,
        warnings: items,
        backup_s3,
    })
}

/// The networks the nodes are on: `node_cidr` (every static address must lie in it), or
/// the networks of their static addresses; each with the field path that declares it.
fn node_networks(c: &mut Collector, node_cidr: Option<Cidr>, nodes: &[NodePlan]) -> Vec<(String, Cidr)> {
    let mut node_nets: Vec<(String, Cidr)> = Vec::new();
    match node_cidr {
        Some(nc) => {
            node_nets.push(("networking.node_cidr".into(), nc.network()));
            for n in nodes {
                if let Some(ip) = n.address().filter(|ip| !nc.contains(*ip)) {
                    c.err(
                        &format!("nodes[{}].address", n.index),
                        format!(
                            "{ip} is outside networking.node_cidr {}: the node firewall admits cluster traffic from node_cidr only",
                            nc.network()
                        ),
                    );
                }
            }
        }
        None => {
            for (i, s) in nodes.iter().filter_map(|n| n.net.as_ref().map(|s| (n.index, s))) {
                if !node_nets.iter().any(|(_, x)| *x == s.address.network()) {
                    node_nets.push((format!("nodes[{i}].address"), s.address.network()));
                }
            }
        }
    }
    node_nets
}

/// Pod, service and node networks must not overlap (node networks may, among themselves).
fn overlaps(c: &mut Collector, pod: Option<Cidr>, service: Option<Cidr>, node_nets: &[(String, Cidr)]) {
    let mut all: Vec<(String, Cidr)> = Vec::new();
    all.extend(pod.map(|x| ("networking.pod_cidr".to_string(), x)));
    all.extend(service.map(|x| ("networking.service_cidr".to_string(), x)));
    let cluster_nets = all.len();
    all.extend(node_nets.iter().cloned());
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            let (pi, ci) = &all[i];
            let (pj, cj) = &all[j];
            let both_nodes = i >= cluster_nets && j >= cluster_nets;
            if !both_nodes && ci.overlaps(cj) {
                c.err(pj, format!("{cj} overlaps {ci} ({pi})"));
            }
        }
    }
}

/// The HA settings; returns the VIP in mode vip.
fn ha(
    c: &mut Collector,
    spec: &ClusterSpec,
    endpoint: Option<&Endpoint>,
    nodes: &[NodePlan],
    cps: usize,
) -> Option<IpAddr> {
    let ha = &spec.ha;
    // kube-vip (ARP) and a single control plane put the endpoint on a node itself:
    // clients reach kube-apiserver's own port there.
    if let Some(e) = endpoint.filter(|e| ha.mode != HaMode::ExternalLb && e.port != API_BIND_PORT) {
        c.err(
            "endpoint",
            format!(
                "port {} is not kube-apiserver's {API_BIND_PORT}: without a load balancer (ha.mode external-lb) clients connect to the API server itself",
                e.port
            ),
        );
    }
    match ha.mode {
        HaMode::Vip => {
            match &ha.interface {
                Some(f) => {
                    typed::<IfName>(c, "ha.interface", f);
                }
                None => c.err("ha", "mode vip needs `interface` (the NIC kube-vip announces the VIP on)"),
            }
            let vip = match (&ha.address, endpoint.map(|e| &e.host)) {
                (Some(a), _) => match a.parse::<IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        c.err("ha.address", format!("{a:?} is not an IP address"));
                        None
                    }
                },
                (None, Some(super::net::Host::Ip(ip))) => Some(*ip),
                (None, Some(h)) => {
                    c.err(
                        "ha",
                        format!(
                            "mode vip needs an IP `address` (the endpoint host {:?} is not an IP)",
                            h.to_string()
                        ),
                    );
                    None
                }
                (None, None) => None,
            };
            if let Some(ip) = vip {
                if let Some(why) = unroutable(ip) {
                    c.err("ha.address", format!("the VIP {ip} is {why}"));
                }
                let addrs: HashSet<IpAddr> = nodes.iter().filter_map(NodePlan::address).collect();
                if addrs.contains(&ip) {
                    c.err("ha.address", format!("the VIP {ip} is also a node address"));
                }
            }
            vip
        }
        HaMode::ExternalLb | HaMode::None => {
            if ha.mode == HaMode::None && cps > 1 {
                c.err(
                    "ha.mode",
                    format!("{cps} control planes need an HA endpoint: mode vip or external-lb"),
                );
            }
            if ha.interface.is_some() || ha.address.is_some() {
                c.err("ha", "interface/address only apply to mode vip");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: demo
endpoint: 10.0.0.10:6443
ha: {mode: vip, interface: ens3}
networking: {pod_cidr: 10.244.0.0/16, service_cidr: 10.96.0.0/12, interface: ens3}
dns: {nameservers: [10.0.0.2]}
nodes:
  - {name: cp-1, role: control-plane, address: 10.0.0.11/24, gateway: 10.0.0.1, dns: {nameservers: [10.0.0.1]}}
  - {name: cp-2, role: control-plane, address: 10.0.0.12/24}
  - {name: cp-3, role: control-plane, address: 10.0.0.13/24}
  - {name: w-1, role: worker}
";

    fn err(src: &str) -> String {
        match parse(src, "c.yaml") {
            Err(ClusterError::Spec(d)) => d.to_string(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn good_spec() {
        let l = parse(GOOD, "c.yaml").unwrap();
        let w: Vec<String> = l.warnings.iter().map(|d| d.text()).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("some nodes use DHCP"), "{w:?}");
        assert_eq!(l.control_plane_endpoint(), "10.0.0.10:6443");
        assert_eq!(l.vip, Some("10.0.0.10".parse().unwrap()));
        assert_eq!(l.first_control_plane().name, "cp-1");
        let modes: Vec<JoinMode> = l.nodes.iter().map(|n| n.mode).collect();
        use JoinMode::*;
        assert_eq!(modes, [Init, JoinControlPlane, JoinControlPlane, JoinWorker]);
        let cp1 = l.nodes[0].net.as_ref().unwrap();
        assert_eq!(cp1.nameservers, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(cp1.nic, Nic::Name("ens3".parse().unwrap()));
        assert_eq!(l.nodes[1].net.as_ref().unwrap().nameservers, ["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert!(l.nodes[3].net.is_none());
        assert_eq!(l.node_sources, NodeSources::Unknown);
    }

    #[test]
    fn duplicate_and_bad_names_have_lines() {
        let m = err(&GOOD.replace("name: cp-2", "name: cp-1").replace("name: w-1", "name: W_1"));
        assert!(m.contains("c.yaml:8: nodes[1].name: duplicate node name \"cp-1\""), "{m}");
        assert!(m.contains("(line 7)"), "{m}");
        assert!(m.contains("c.yaml:10: nodes[3].name: \"W_1\" is not a DNS-1123 label"), "{m}");
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
        let w: Vec<String> = l.warnings.iter().map(|d| d.display("c.yaml").to_string()).collect();
        let w = w.join("\n");
        assert!(w.contains("2 control planes"), "{w}");
        assert!(w.contains("warning: c.yaml:2: endpoint: endpoint 192.168.1.10 is outside"), "{w}");
    }

    #[test]
    fn unknown_field_and_type_errors_have_lines() {
        let m = err(&GOOD.replace("ha: {", "hax: 1\nha: {"));
        assert!(m.starts_with("c.yaml:3:"), "{m}");
        let m = err(&GOOD.replace("role: worker", "role: boss"));
        assert!(m.contains("c.yaml:10:"), "{m}");
    }

    #[test]
    fn addresses_that_are_no_host_and_unroutable_endpoints_are_refused() {
        for (from, to, want) in [
            (
                "10.0.0.12/24}",
                "10.0.0.0/24}",
                "nodes[1].address: 10.0.0.0 is the network address of 10.0.0.0/24",
            ),
            ("10.0.0.12/24}", "10.0.0.255/24}", "nodes[1].address: 10.0.0.255 is the broadcast address"),
            (
                "10.0.0.12/24}",
                "10.0.0.12/24, gateway: 10.0.0.12}",
                "nodes[1].gateway: 10.0.0.12 is the node's own address",
            ),
            (
                "10.0.0.12/24}",
                "10.0.0.12/24, gateway: 10.0.0.255}",
                "nodes[1].gateway: 10.0.0.255 is the network or broadcast",
            ),
            ("10.0.0.12/24}", "fd00::12/64, gateway: 10.0.0.1}", "different IP versions"),
            (
                "endpoint: 10.0.0.10:6443",
                "endpoint: 0.0.0.0:6443",
                "c.yaml:2: endpoint: 0.0.0.0 is the unspecified address",
            ),
            (
                "endpoint: 10.0.0.10:6443",
                "endpoint: \"[::]:6443\"",
                "endpoint: :: is the unspecified address",
            ),
            ("endpoint: 10.0.0.10:6443", "endpoint: 10.0.0.10:443", "port 443 is not kube-apiserver's 6443"),
            (
                "ha: {mode: vip, interface: ens3}",
                "ha: {mode: vip, interface: ens3, address: 0.0.0.0}",
                "the VIP 0.0.0.0 is the unspecified",
            ),
        ] {
            let src = GOOD.replacen(from, to, 1);
            assert_ne!(src, GOOD, "{from}");
            let m = err(&src);
            assert!(m.contains(want), "{to}: {m}");
        }
        // a /31 has no network or broadcast address; a /32 with its router on-link is fine
        let ok = GOOD
            .replace("10.0.0.12/24}", "10.0.0.12/31, gateway: 10.0.0.13}")
            .replace("10.0.0.13/24}", "203.0.113.7/32, gateway: 172.31.1.1}");
        let l = parse(&ok, "c.yaml").unwrap();
        assert!(l.nodes[2].net.as_ref().unwrap().gateway_on_link());
        assert!(!l.nodes[1].net.as_ref().unwrap().gateway_on_link());
    }

    #[test]
    fn static_addresses_need_nameservers_and_one_nic() {
        let m = err(&GOOD.replace("dns: {nameservers: [10.0.0.2]}\n", ""));
        assert!(
            m.contains("c.yaml:7: nodes[1].address: a static address needs nameservers (2 node(s) have none): set dns.nameservers"),
            "{m}"
        );
        let m = err(&GOOD.replace(", interface: ens3}\ndns", "}\ndns"));
        assert!(m.contains("c.yaml:8: nodes[1].interface: a static address needs the NIC it goes on"), "{m}");
        let m = err(&GOOD.replace("interface: ens3}\ndns", "interface: \"e*\"}\ndns"));
        assert!(m.contains("networking.interface: \"e*\" is a pattern that may match several NICs"), "{m}");
        let mac = GOOD.replace(
            "10.0.0.12/24}",
            "10.0.0.12/24, interface: \"52:54:00:00:00:12\", dhcp_interfaces: [eth0]}",
        );
        let l = parse(&mac, "c.yaml").unwrap();
        let n = l.nodes[1].net.as_ref().unwrap();
        assert_eq!(n.nic.to_string(), "52:54:00:00:00:12");
        assert_eq!(n.dhcp, [Nic::Name("eth0".parse().unwrap())]);
        let m = err(&mac.replace("10.0.0.13/24}", "10.0.0.13/24, interface: \"52:54:00:00:00:12\"}"));
        assert!(
            m.contains("nodes[2].interface: MAC address 52:54:00:00:00:12 is used twice (nodes[1])"),
            "{m}"
        );
        let m = err(&mac.replace("[eth0]", "[\"52:54:00:00:00:12\"]"));
        assert!(m.contains("52:54:00:00:00:12 gets the static address; it cannot use DHCP too"), "{m}");
        let m = err(&GOOD.replace(
            "{name: w-1, role: worker}",
            "{name: w-1, role: worker, dns: {nameservers: [10.0.0.1]}}",
        ));
        assert!(m.contains("nodes[3].dns: needs a static `address`"), "{m}");
        let m = err(&GOOD.replace("[10.0.0.2]", "[dns.example.com]"));
        assert!(m.contains("dns.nameservers[0]: \"dns.example.com\" is not an IP address"), "{m}");
    }

    #[test]
    fn ntp_servers_with_overrides_and_node_sources() {
        let src = GOOD.replacen("dns: {", "ntp: {servers: [ntp.example.com, 10.0.0.3]}\ndns: {", 1).replace(
            "{name: w-1, role: worker}",
            "{name: w-1, role: worker, address: 10.0.0.21/24, ntp: {servers: [10.0.0.4]}}",
        );
        let l = parse(&src, "c.yaml").unwrap();
        assert_eq!(l.nodes[0].ntp, ["ntp.example.com", "10.0.0.3"]);
        assert_eq!(l.nodes[3].ntp, ["10.0.0.4"]);
        assert!(matches!(&l.node_sources, NodeSources::Addresses(a) if a.len() == 4));
        let (nodes, other) = l.firewall_sources();
        assert_eq!(nodes.unwrap()[0].to_string(), "10.0.0.11/32");
        let other: Vec<String> = other.iter().map(|(k, c)| format!("{k} {c}")).collect();
        assert_eq!(other, ["pod 10.244.0.0/16", "service 10.96.0.0/12", "endpoint 10.0.0.10/32"]);
        let m = err(&src.replace("[ntp.example.com, 10.0.0.3]", "[\"a b\"]"));
        assert!(
            m.contains("c.yaml:5: ntp.servers[0]: \"a b\" is neither a host name nor an IP address"),
            "{m}"
        );
        let m = err(&src.replace("[ntp.example.com, 10.0.0.3]", "[]"));
        assert!(m.contains("ntp.servers: no servers"), "{m}");
        // a declared node network: addresses must lie in it
        let m = err(&src.replace("interface: ens3}\nntp", "interface: ens3, node_cidr: 10.0.0.0/28}\nntp"));
        assert!(m.contains("nodes[3].address: 10.0.0.21 is outside networking.node_cidr 10.0.0.0/28"), "{m}");
    }

    #[test]
    fn go_durations() {
        assert!(is_go_duration("1h30m") && !is_go_duration("1d") && !is_go_duration(""));
    }
}
