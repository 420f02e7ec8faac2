//! Cluster spec and secrets (`imgbuild cluster init`, `imgbuild cluster kubeconfig`).
//!
//! `init` writes `DIR/cluster.yaml` (the editable spec, [`spec`]) and `DIR/secrets/`
//! ([`pki`]) once; `imgbuild cloud-init` reads both and renders every node's seed,
//! so all nodes can be rendered before any exists and boot at the same moment.

pub mod addnode;
pub mod admin;
pub mod backup;
pub mod credfile;
pub mod diag;
pub mod init;
pub mod net;
pub mod pki;
pub mod plan;
pub mod registries;
pub mod remove;
pub mod s3;
pub mod spec;
pub mod token;
pub mod upgrade;

use std::path::{Path, PathBuf};

use anyhow::Result;
use base64::Engine;

use crate::exit::{Classify, Code};
use crate::reporter::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Invalid(String),
    /// cluster.yaml has errors (each with its field path and line).
    #[error("{0}")]
    Spec(diag::Diagnostics),
    #[error("refusing to overwrite {0} (secrets are generated once; use a new --dir)")]
    Exists(PathBuf),
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error("secrets: {0}")]
    Secrets(String),
    #[error("certificate generation: {0}")]
    Pki(String),
    /// A day-2 change that would harm the cluster (etcd quorum, version skew).
    #[error("refusing: {0}")]
    Refused(String),
}

impl ClusterError {
    pub(crate) fn pki(e: impl std::fmt::Display) -> Self {
        ClusterError::Pki(e.to_string())
    }
}

impl Classify for ClusterError {
    fn code(&self) -> Code {
        match self {
            ClusterError::Invalid(_)
            | ClusterError::Spec(_)
            | ClusterError::Exists(_)
            | ClusterError::Secrets(_) => Code::Input,
            ClusterError::Io(..) | ClusterError::Pki(_) | ClusterError::Refused(_) => Code::Runtime,
        }
    }
}

/// What `cluster init` is asked for (the command line, typed).
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Cluster name (DNS-1123 label)
    pub name: String,
    /// API endpoint HOST[:PORT] (the VIP, the load balancer, or the single control plane)
    pub endpoint: String,
    /// Number of control-plane nodes
    pub control_planes: u32,
    /// Number of worker nodes
    pub workers: u32,
    /// Pod network
    pub pod_cidr: String,
    /// Service network
    pub service_cidr: String,
    /// Nodes' IPv4 network: nodes get static addresses from .11 up, gateway .1
    pub node_cidr: Option<String>,
    /// With `node_cidr`: the NIC that gets each node's static address (default: the VIP's)
    pub interface: Option<String>,
    /// With `node_cidr`: the nodes' nameservers
    pub dns: Vec<String>,
    /// With `node_cidr`: the nodes' DNS search domains
    pub dns_search: Vec<String>,
    /// NTP servers of every node (empty: the image's default)
    pub ntp: Vec<String>,
    /// Announce the endpoint as a kube-vip VIP (ARP) on this interface
    pub vip_interface: Option<String>,
    /// The endpoint is an external load balancer
    pub external_lb: bool,
    /// SSH public key file for the nodes' default user (repeatable)
    pub ssh_keys: Vec<PathBuf>,
    /// Output directory (gets cluster.yaml and secrets/)
    pub dir: PathBuf,
}

pub use init::secrets_dir;

/// `cluster init`: write DIR/cluster.yaml and DIR/secrets/ once, all or nothing;
/// returns the spec's path.
pub fn init(a: &InitOptions, rep: &Reporter) -> Result<PathBuf> {
    let keys = init::read_ssh_keys(&a.ssh_keys)?;
    let text = init::initial_spec(a, &keys)?;
    let planned = init::check(&text, &a.dir.join("cluster.yaml"))?;
    for w in &planned.warnings {
        rep.warn(w.display(&planned.origin));
    }
    let mut rng = pki::Rng::from_env();
    let (secrets, path) = init::create(&a.dir, &text, &mut rng)?;
    rep.status(format_args!(
        "wrote {} ({} nodes) and {}/ (CAs: ECDSA P-256; discovery hash {})",
        path.display(),
        planned.nodes.len(),
        secrets_dir(&path).display(),
        secrets.ca.discovery_hash()?
    ));
    Ok(path)
}

/// The admin kubeconfig YAML for a loaded spec and its secrets.
pub fn kubeconfig_yaml(
    l: &plan::ClusterPlan,
    s: &pki::Secrets,
    kind: pki::AdminKind,
    days: u32,
    rng: &mut pki::Rng,
) -> Result<String, ClusterError> {
    let c = pki::admin_client_cert(&s.ca, kind, days, rng)?;
    let b64 = |x: &str| base64::engine::general_purpose::STANDARD.encode(x.as_bytes());
    let name = &l.spec.name;
    let user = match kind {
        pki::AdminKind::Admin => "kubernetes-admin",
        pki::AdminKind::SuperAdmin => "kubernetes-super-admin",
    };
    let ctx = format!("{user}@{name}");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "certificate-authority-data": b64(&s.ca.cert_pem),
            "server": format!("https://{}", l.control_plane_endpoint()),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(&c.cert_pem),
            "client-key-data": b64(&c.key_pem),
        }}],
        "contexts": [{"name": ctx, "context": {"cluster": name, "user": user}}],
        "current-context": ctx,
        "preferences": {},
    });
    serde_yaml::to_string(&doc).map_err(|e| ClusterError::Pki(e.to_string()))
}

/// `cluster kubeconfig`: an admin kubeconfig for the spec at `cluster`, signed offline.
pub fn kubeconfig(cluster: &Path, identity: pki::AdminKind, days: u32, rep: &Reporter) -> Result<String> {
    let l = plan::load(cluster)?;
    for w in &l.warnings {
        rep.warn(w.display(&l.origin));
    }
    let s = pki::Secrets::load(&secrets_dir(cluster))?;
    let mut rng = pki::Rng::from_env();
    Ok(kubeconfig_yaml(&l, &s, identity, days, &mut rng)?)
}
