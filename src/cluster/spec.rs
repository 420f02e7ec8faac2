//! `cluster.yaml`: the human-editable cluster spec as written (strings, unknown fields
//! rejected). [`super::plan`] validates it into typed values; every problem names the
//! field path and its line (via `yamlpos`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::diag::{Diagnostic, Diagnostics, Severity};
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
    /// The nodes' resolvers (nodes with a static address; DHCP brings its own).
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Time servers of every node (cloud-init's ntp module); absent = the image's default.
    #[serde(default)]
    pub ntp: Option<Ntp>,
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
    #[serde(default)]
    pub backups: Backups,
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
    /// The interface that gets a node's static address, for every node that names none.
    #[serde(default)]
    pub interface: Option<String>,
    /// Interfaces configured by DHCP next to the static one (a VM's public NIC).
    #[serde(default)]
    pub dhcp_interfaces: Vec<String>,
}

fn default_dns_domain() -> String {
    "cluster.local".into()
}

/// Resolvers: `nameservers` (IP addresses) and `search` domains.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
}

/// NTP `servers` (host names or IP addresses).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ntp {
    #[serde(default)]
    pub servers: Vec<String>,
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
    /// Replaces the cluster-wide `dns` for this node.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Replaces the cluster-wide `ntp` for this node.
    #[serde(default)]
    pub ntp: Option<Ntp>,
    /// The NIC the static address goes on: interface name or MAC address.
    #[serde(default)]
    pub interface: Option<String>,
    /// Replaces `networking.dhcp_interfaces` for this node (names or MAC addresses).
    #[serde(default)]
    pub dhcp_interfaces: Option<Vec<String>>,
}

/// Scheduled etcd snapshots on every control plane (the image's
/// imgbuild-etcd-snapshot.timer, written to /etc/imgbuild/backup.env).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backups {
    /// Snapshots kept on each control plane (1–1000).
    #[serde(default = "default_retention")]
    pub retention: u32,
    /// Hours between snapshots (1–168).
    #[serde(default = "default_interval")]
    pub interval_hours: u32,
    /// Upload every verified snapshot to S3-compatible storage.
    #[serde(default)]
    pub s3: Option<S3>,
}

/// An S3-compatible bucket the control planes upload their snapshots to (SigV4).
/// The credentials never sit in cluster.yaml: they are read from `credentials_file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    /// `https://HOST[:PORT]` of the S3 API (no path).
    pub endpoint: String,
    pub bucket: String,
    /// The SigV4 signing region (`us-east-1` for most S3-compatibles).
    pub region: String,
    /// Folder inside the bucket (`prod/etcd`); objects are `<prefix>/<snapshot file name>`.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub addressing: S3Addressing,
    /// Allow an `http://` endpoint (a lab): snapshots and signatures travel unencrypted.
    #[serde(default)]
    pub insecure_http: bool,
    /// YAML file with `access_key_id` and `secret_access_key`, 0600; relative to
    /// cluster.yaml's directory. Default: `secrets/backup-s3.yaml`.
    #[serde(default)]
    pub credentials_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3Addressing {
    /// `ENDPOINT/BUCKET/KEY`: what MinIO and Ceph RGW answer without DNS set-up.
    #[default]
    Path,
    /// `BUCKET.ENDPOINT-HOST/KEY`.
    VirtualHosted,
}

fn default_retention() -> u32 {
    7
}
fn default_interval() -> u32 {
    6
}

impl Default for Backups {
    fn default() -> Self {
        Self { retention: default_retention(), interval_hours: default_interval(), s3: None }
    }
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
    /// Helm values overriding a recipe add-on's (by release name: `cilium`,
    /// `metrics-server`, `ingress-nginx`), written to `/etc/imgbuild/addons/<release>.yaml`
    /// on the first control plane and applied after the values baked into the image.
    #[serde(default)]
    pub values: BTreeMap<String, serde_yaml::Mapping>,
    /// Optional add-on profiles to install (`monitoring`, `logging`, `gitops`, and at most
    /// one CSI driver: `cinder`, `proxmox`, `hcloud`); the control-plane image must carry
    /// them (`imgbuild build --profile`).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// The `logging` profile's destination: an OTLP/HTTP endpoint and its API token
    /// (e.g. Dynatrace: `https://<env>.live.dynatrace.com/api/v2/otlp` and an access token
    /// with the logs.ingest scope). Delivered to the first control plane only, 0600.
    #[serde(default)]
    pub logging: Option<LoggingSpec>,
    /// The `gitops` profile's Git source of the backend chart: Argo CD's `Application`
    /// keeps the backend in sync with it.
    #[serde(default)]
    pub gitops: Option<GitopsSpec>,
    /// The `cinder` profile: OpenStack credentials for the Cinder CSI driver.
    #[serde(default)]
    pub cinder: Option<CinderSpec>,
    /// The `proxmox` profile: the Proxmox VE API the CSI driver creates disks through.
    #[serde(default)]
    pub proxmox: Option<ProxmoxSpec>,
    /// The `hcloud` profile: the Hetzner Cloud API token of the CSI driver.
    #[serde(default)]
    pub hcloud: Option<HcloudSpec>,
}

/// The Cinder CSI driver's credentials: a `cloud.conf` (the INI file
/// cloud-provider-openstack reads: `[Global]` with `auth-url` and a user or an
/// application credential) kept out of cluster.yaml, 0600.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CinderSpec {
    /// Relative to cluster.yaml's directory. Default: `secrets/cinder-cloud.conf`.
    #[serde(default)]
    pub credentials_file: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxSpec {
    /// `https://HOST:8006/api2/json`, the API of the Proxmox VE cluster the nodes run on.
    #[serde(default)]
    pub url: Option<String>,
    /// The name the driver gives that Proxmox cluster (the nodes' `topology.kubernetes.io/region`).
    #[serde(default)]
    pub region: Option<String>,
    /// The Proxmox storage new disks are created on (`local-lvm`, a Ceph pool's storage ID).
    #[serde(default)]
    pub storage: Option<String>,
    /// Accept the API's self-signed certificate (Proxmox's default one).
    #[serde(default)]
    pub insecure: bool,
    /// YAML with `token_id` (`USER@REALM!TOKEN`) and `token_secret`, 0600; relative to
    /// cluster.yaml's directory. Default: `secrets/proxmox-csi.yaml`.
    #[serde(default)]
    pub credentials_file: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HcloudSpec {
    /// YAML with `token` (a Read & Write API token of the project), 0600; relative to
    /// cluster.yaml's directory. Default: `secrets/hcloud.yaml`.
    #[serde(default)]
    pub credentials_file: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitopsSpec {
    /// The Git repository (https:// or ssh://).
    #[serde(default)]
    pub repo_url: Option<String>,
    /// The chart's directory in it (default `charts/backend`).
    #[serde(default)]
    pub path: Option<String>,
    /// Branch, tag or commit (default `HEAD`).
    #[serde(default)]
    pub revision: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSpec {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

fn yes() -> bool {
    true
}

/// serde_yaml's message without what the diagnostic already says: its own
/// `<path>: ` prefix and ` at line L column C` suffix.
fn bare_message(msg: &str, path: &str) -> String {
    let m = msg.strip_prefix(&format!("{path}: ")).unwrap_or(msg);
    match m.rfind(" at line ") {
        Some(i) if m[i + " at line ".len()..].split(" column ").all(|n| n.parse::<u64>().is_ok()) => {
            m[..i].to_string()
        }
        _ => m.to_string(),
    }
}

/// Deserialize `cluster.yaml` text (types and unknown fields only; no semantics).
/// Also returns the line of every field path.
pub fn parse(src: &str, origin: &str) -> Result<(ClusterSpec, HashMap<String, usize>), Diagnostics> {
    // Maps (add-on values, say) would let the last of two equal keys win silently.
    if let Err(d) = crate::nodup::check_yaml(src) {
        let path = if d.path.is_empty() { d.key.clone() } else { format!("{}.{}", d.path, d.key) };
        let message = format!("{d} (a key may appear once in a mapping)");
        return Err(Diagnostics {
            origin: origin.to_string(),
            items: vec![Diagnostic { severity: Severity::Error, path, line: d.line, message }],
        });
    }
    let lines = crate::yamlpos::lines(src);
    let de = serde_yaml::Deserializer::from_str(src);
    match serde_path_to_error::deserialize(de) {
        Ok(spec) => Ok((spec, lines)),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line()).or_else(|| crate::yamlpos::line_of(&lines, &path));
            let path = if path == "." { String::new() } else { path };
            let message = bare_message(&inner.to_string(), &path);
            Err(Diagnostics {
                origin: origin.to_string(),
                items: vec![Diagnostic { severity: Severity::Error, path, line, message }],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_names_its_field_and_line_once() {
        let src = "name: demo\nha:\n  mode: magic\n";
        let d = parse(src, "c.yaml").expect_err("bad variant");
        let item = &d.items[0];
        assert_eq!(item.path, "ha.mode");
        assert_eq!(item.line, Some(3));
        assert!(item.message.starts_with("unknown variant `magic`"), "{}", item.message);
        assert!(!item.message.contains("ha.mode") && !item.message.contains(" at line "), "{}", item.message);
    }

    #[test]
    fn bare_message_keeps_what_it_does_not_recognise() {
        assert_eq!(bare_message("a.b: oops at line 3 column 9", "a.b"), "oops");
        assert_eq!(bare_message("oops at line x", "a.b"), "oops at line x");
        assert_eq!(bare_message("other: oops", "a.b"), "other: oops");
    }
}
