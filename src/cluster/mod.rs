//! Cluster spec and secrets (`imgbuild cluster init`, `imgbuild cluster kubeconfig`).
//!
//! `init` writes `DIR/cluster.yaml` (the editable spec, [`spec`]) and `DIR/secrets/`
//! ([`pki`]) once; `imgbuild cloud-init` reads both and renders every node's seed,
//! so all nodes can be rendered before any exists and boot at the same moment.

pub mod diag;
pub mod init;
pub mod net;
pub mod pki;
pub mod plan;
pub mod spec;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine;

use crate::cli::Global;
use crate::exit::{Classify, Code};

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
            ClusterError::Io(..) | ClusterError::Pki(_) => Code::Runtime,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Write cluster.yaml and generate the cluster's secrets once
    Init(Box<InitArgs>),
    /// Print an admin kubeconfig signed offline by the cluster CA
    Kubeconfig(KubeconfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Cluster name (DNS-1123 label)
    #[arg(long)]
    pub name: String,
    /// API endpoint HOST[:PORT] (the VIP, the load balancer, or the single control plane)
    #[arg(long)]
    pub endpoint: String,
    /// Number of control-plane nodes
    #[arg(long, default_value_t = 3)]
    pub control_planes: u32,
    /// Number of worker nodes
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Pod network
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pod_cidr: String,
    /// Service network
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// Nodes' IPv4 network: nodes get static addresses from .11 up, gateway .1
    #[arg(long)]
    pub node_cidr: Option<String>,
    /// With --node-cidr: the NIC that gets each node's static address (default: --vip-interface)
    #[arg(long)]
    pub interface: Option<String>,
    /// With --node-cidr: the nodes' nameservers (IP addresses; comma-separated or repeated)
    #[arg(long, value_delimiter = ',')]
    pub dns: Vec<String>,
    /// With --node-cidr: the nodes' DNS search domains
    #[arg(long, value_delimiter = ',')]
    pub dns_search: Vec<String>,
    /// NTP servers of every node (default: the image's, Ubuntu's ntp.ubuntu.com and any from DHCP)
    #[arg(long, value_delimiter = ',')]
    pub ntp: Vec<String>,
    /// Announce the endpoint as a kube-vip VIP (ARP) on this interface
    #[arg(long, conflicts_with = "external_lb")]
    pub vip_interface: Option<String>,
    /// The endpoint is an external load balancer
    #[arg(long)]
    pub external_lb: bool,
    /// SSH public key file for the nodes' default user (repeatable)
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<PathBuf>,
    /// Output directory (gets cluster.yaml and secrets/)
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct KubeconfigArgs {
    /// The cluster spec; secrets are read from secrets/ next to it
    #[arg(long)]
    pub cluster: PathBuf,
    /// Write to this file (0600) instead of stdout
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Identity: admin (O=kubeadm:cluster-admins, revocable) or super-admin (O=system:masters, break-glass)
    #[arg(long, value_enum, default_value_t = pki::AdminKind::Admin)]
    pub identity: pki::AdminKind,
    /// Certificate lifetime in days
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

pub fn run(c: &ClusterCmd, g: &Global) -> Result<()> {
    match c {
        ClusterCmd::Init(a) => init(a, g),
        ClusterCmd::Kubeconfig(a) => kubeconfig(a, g),
    }
}

pub use init::secrets_dir;

fn init(a: &InitArgs, g: &Global) -> Result<()> {
    let keys = init::read_ssh_keys(&a.ssh_keys)?;
    let text = init::initial_spec(a, &keys)?;
    let planned = init::check(&text, &a.dir.join("cluster.yaml"))?;
    if !g.quiet {
        for w in &planned.warnings {
            eprintln!("{}", w.display(&planned.origin));
        }
    }
    let mut rng = pki::Rng::from_env();
    let (secrets, path) = init::create(&a.dir, &text, &mut rng)?;
    if !g.quiet {
        eprintln!(
            "wrote {} ({} nodes) and {}/ (CAs: ECDSA P-256; discovery hash {})",
            path.display(),
            planned.nodes.len(),
            secrets_dir(&path).display(),
            secrets.ca.discovery_hash()?
        );
    }
    println!("{}", path.display());
    Ok(())
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

fn kubeconfig(a: &KubeconfigArgs, g: &Global) -> Result<()> {
    let l = plan::load(&a.cluster)?;
    if !g.quiet {
        for w in &l.warnings {
            eprintln!("{}", w.display(&l.origin));
        }
    }
    let s = pki::Secrets::load(&secrets_dir(&a.cluster))?;
    let mut rng = pki::Rng::from_env();
    let y = kubeconfig_yaml(&l, &s, a.identity, a.days, &mut rng)?;
    match &a.out {
        Some(p) => {
            pki::write_private(p, y.as_bytes())?;
            if !g.quiet {
                eprintln!("wrote {}", p.display());
            }
        }
        None => std::io::stdout().lock().write_all(y.as_bytes()).context("writing to stdout")?,
    }
    Ok(())
}
