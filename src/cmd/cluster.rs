//! `imgbuild cluster init|kubeconfig|add-node|token create`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cluster::{addnode, backup, pki, token, upgrade, InitOptions};
use crate::reporter::Reporter;
use crate::types::Role;

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

impl InitArgs {
    fn options(&self) -> InitOptions {
        InitOptions {
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            control_planes: self.control_planes,
            workers: self.workers,
            pod_cidr: self.pod_cidr.clone(),
            service_cidr: self.service_cidr.clone(),
            node_cidr: self.node_cidr.clone(),
            interface: self.interface.clone(),
            dns: self.dns.clone(),
            dns_search: self.dns_search.clone(),
            ntp: self.ntp.clone(),
            vip_interface: self.vip_interface.clone(),
            external_lb: self.external_lb,
            ssh_keys: self.ssh_keys.clone(),
            dir: self.dir.clone(),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Write cluster.yaml and generate the cluster's secrets once
    Init(Box<InitArgs>),
    /// Print an admin kubeconfig signed offline by the cluster CA
    Kubeconfig(KubeconfigArgs),
    /// Append a node to cluster.yaml, keeping its comments and formatting; prints its name
    AddNode(AddNodeArgs),
    /// Bootstrap tokens for nodes that join later
    #[command(subcommand)]
    Token(TokenCmd),
    /// Take an etcd snapshot through etcd's API (client certificate signed offline by the
    /// cluster's etcd CA); writes FILE 0600 and prints its SHA-256
    Backup(BackupArgs),
    /// Roll to a new Kubernetes version by replacing nodes: updates kubeadm-config (before new
    /// machines join), kube-proxy and optionally CoreDNS (once every control plane runs the new
    /// version), enforcing version skew; prints the nodes still to replace, in order
    Upgrade(UpgradeArgs),
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// Target Kubernetes version (vX.Y.Z): a later patch, or the next minor
    #[arg(long)]
    pub to: String,
    /// Kubeconfig of a cluster admin (e.g. from `imgbuild cluster kubeconfig`)
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Context in the kubeconfig (default: its current-context)
    #[arg(long)]
    pub context: Option<String>,
    /// Also roll the coredns Deployment to this image tag (with kube-proxy)
    #[arg(long)]
    pub coredns_tag: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The cluster spec; the etcd CA is read from secrets/ next to it
    #[arg(long)]
    pub cluster: PathBuf,
    /// Where to write the snapshot (replaced atomically once verified)
    #[arg(long)]
    pub out: PathBuf,
    /// etcd client URL to ask, in order (repeatable; default: every control plane's static
    /// address, port 2379)
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct AddNodeArgs {
    /// The cluster spec to extend
    #[arg(long)]
    pub cluster: PathBuf,
    /// Node name (DNS-1123 label; default: <cluster>-worker-N or <cluster>-cp-N)
    #[arg(long)]
    pub name: Option<String>,
    /// Node role
    #[arg(long, value_enum, default_value_t = Role::Worker)]
    pub role: Role,
    /// Static address with prefix length (default: the next free one on a statically
    /// addressed network, none (DHCP) otherwise)
    #[arg(long)]
    pub address: Option<String>,
    /// Gateway of the static address (default: the other nodes' gateway on that network)
    #[arg(long)]
    pub gateway: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create a bootstrap token through the Kubernetes API (a bootstrap-token Secret) and keep
    /// it in secrets/join-token.json, which cloud-init uses for joining nodes until it expires;
    /// prints that file's path
    Create(TokenCreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// The cluster spec; the token is stored in secrets/join-token.json next to it
    #[arg(long)]
    pub cluster: PathBuf,
    /// Kubeconfig of a cluster admin (e.g. from `imgbuild cluster kubeconfig`)
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Context in the kubeconfig (default: its current-context)
    #[arg(long)]
    pub context: Option<String>,
    /// Lifetime (Go duration: 24h, 90m, 1h30m); 0 (never expires) is refused
    #[arg(long, default_value = "24h")]
    pub ttl: String,
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

pub fn run(c: &ClusterCmd, rep: &Reporter) -> Result<()> {
    match c {
        ClusterCmd::Init(a) => init(a, rep),
        ClusterCmd::Kubeconfig(a) => kubeconfig(a, rep),
        ClusterCmd::AddNode(a) => {
            let o = addnode::AddNodeOptions {
                cluster: a.cluster.clone(),
                name: a.name.clone(),
                role: a.role,
                address: a.address.clone(),
                gateway: a.gateway.clone(),
            };
            let name = addnode::add(&o, rep)?;
            writeln!(std::io::stdout().lock(), "{name}")?;
            Ok(())
        }
        ClusterCmd::Token(TokenCmd::Create(a)) => {
            let o = token::CreateOptions {
                cluster: a.cluster.clone(),
                kubeconfig: a.kubeconfig.clone(),
                context: a.context.clone(),
                ttl: a.ttl.clone(),
            };
            let path = token::create(&o, rep)?;
            writeln!(std::io::stdout().lock(), "{}", path.display())?;
            Ok(())
        }
        ClusterCmd::Backup(a) => {
            let o = backup::BackupOptions {
                cluster: a.cluster.clone(),
                out: a.out.clone(),
                endpoints: a.endpoints.clone(),
            };
            let snap = backup::backup(&o, rep)?;
            rep.status(format_args!(
                "wrote {} ({}, SHA-256 trailer verified)",
                a.out.display(),
                crate::reporter::human_bytes(snap.size)
            ));
            writeln!(std::io::stdout().lock(), "{}  {}", snap.file_sha256, a.out.display())?;
            Ok(())
        }
        ClusterCmd::Upgrade(a) => {
            let o = upgrade::UpgradeOptions {
                kubeconfig: a.kubeconfig.clone(),
                context: a.context.clone(),
                to: a.to.clone(),
                coredns_tag: a.coredns_tag.clone(),
            };
            let r = upgrade::upgrade(&o, rep)?;
            if let Some(i) = &r.kube_proxy {
                rep.status(format_args!("kube-proxy DaemonSet -> {i}"));
            }
            if let Some(i) = &r.coredns {
                rep.status(format_args!("coredns Deployment -> {i}"));
            }
            for p in &r.pending {
                rep.status(format_args!("waiting: {p}"));
            }
            // stdout: the replacement order, one node a line, control planes first
            let mut out = std::io::stdout().lock();
            for (name, v, cp) in &r.order {
                writeln!(out, "{name}\t{}\t{v}", if *cp { "control-plane" } else { "worker" })?;
            }
            Ok(())
        }
    }
}

fn init(a: &InitArgs, rep: &Reporter) -> Result<()> {
    let path = crate::cluster::init(&a.options(), rep)?;
    writeln!(std::io::stdout().lock(), "{}", path.display())?;
    Ok(())
}

fn kubeconfig(a: &KubeconfigArgs, rep: &Reporter) -> Result<()> {
    let y = crate::cluster::kubeconfig(&a.cluster, a.identity, a.days, rep)?;
    match &a.out {
        Some(p) => {
            pki::write_private(p, y.as_bytes())?;
            rep.status(format_args!("wrote {}", p.display()));
        }
        None => std::io::stdout().lock().write_all(y.as_bytes()).context("writing to stdout")?,
    }
    Ok(())
}
