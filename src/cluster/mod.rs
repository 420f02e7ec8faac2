//! Cluster spec and secrets (`imgbuild cluster init`, `imgbuild cluster kubeconfig`).
//!
//! `init` writes `DIR/cluster.yaml` (the editable spec, [`spec`]) and `DIR/secrets/`
//! ([`pki`]) once; `imgbuild cloud-init` reads both and renders every node's seed,
//! so all nodes can be rendered before any exists and boot at the same moment.

pub mod net;
pub mod pki;
pub mod registries;
pub mod spec;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use base64::Engine;

use crate::exit::{Classify, Code};
use crate::reporter::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Invalid(String),
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
            ClusterError::Invalid(_) | ClusterError::Exists(_) | ClusterError::Secrets(_) => Code::Input,
            ClusterError::Io(..) | ClusterError::Pki(_) => Code::Runtime,
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
    /// Announce the endpoint as a kube-vip VIP (ARP) on this interface
    pub vip_interface: Option<String>,
    /// The endpoint is an external load balancer
    pub external_lb: bool,
    /// SSH public key file for the nodes' default user (repeatable)
    pub ssh_keys: Vec<PathBuf>,
    /// Output directory (gets cluster.yaml and secrets/)
    pub dir: PathBuf,
}

/// `secrets/` next to a cluster.yaml.
pub fn secrets_dir(cluster_yaml: &Path) -> PathBuf {
    cluster_yaml.parent().unwrap_or(Path::new(".")).join("secrets")
}

pub fn read_ssh_keys(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| ClusterError::Io(format!("reading SSH key {}", f.display()), e))?;
        keys.extend(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
        );
    }
    Ok(keys)
}

/// Render cluster.yaml for `init`'s arguments. Validated by parsing it back.
pub fn initial_spec(a: &InitOptions, ssh_keys: &[String]) -> Result<String, ClusterError> {
    if a.control_planes == 0 {
        return Err(ClusterError::Invalid("--control-planes must be at least 1".into()));
    }
    if a.control_planes + a.workers > 4000 {
        return Err(ClusterError::Invalid("more than 4000 nodes".into()));
    }
    let (ha_mode, ha_interface) = match (&a.vip_interface, a.external_lb) {
        (Some(i), _) => ("vip", Some(i.clone())),
        (None, true) => ("external-lb", None),
        (None, false) if a.control_planes > 1 => {
            return Err(ClusterError::Invalid(format!(
                "{} control planes need an HA endpoint: pass --vip-interface IFACE or --external-lb",
                a.control_planes
            )))
        }
        (None, false) => ("none", None),
    };
    spec::parse_endpoint(&a.endpoint).map_err(|e| ClusterError::Invalid(format!("--endpoint: {e}")))?;
    // an IPv4 node network hands out .11, .12, … and gateway .1
    let node_net = match &a.node_cidr {
        Some(c) => {
            let cidr: net::Cidr =
                c.parse().map_err(|e| ClusterError::Invalid(format!("--node-cidr: {e}")))?;
            match cidr.network().addr {
                IpAddr::V4(v) if cidr.len <= 30 => Some((u32::from(v), cidr.len)),
                _ => {
                    return Err(ClusterError::Invalid(
                        "--node-cidr must be an IPv4 network of /30 or larger".into(),
                    ))
                }
            }
        }
        None => None,
    };
    let mut nodes = Vec::new();
    let total = a.control_planes + a.workers;
    for i in 0..total {
        let (name, role) = if i < a.control_planes {
            (format!("{}-cp-{}", a.name, i + 1), "control-plane")
        } else {
            (format!("{}-worker-{}", a.name, i - a.control_planes + 1), "worker")
        };
        let (address, gateway) = match node_net {
            Some((base, len)) => {
                let host = 11 + i;
                let size = if len == 0 { u32::MAX } else { (1u32 << (32 - len)) - 1 };
                if host >= size {
                    return Err(ClusterError::Invalid(format!("--node-cidr is too small for {total} nodes")));
                }
                let ip = std::net::Ipv4Addr::from(base + host);
                (Some(format!("{ip}/{len}")), Some(std::net::Ipv4Addr::from(base + 1).to_string()))
            }
            None => (None, None),
        };
        nodes.push(minijinja::context! { name, role, address, gateway });
    }
    let env = crate::template::env().map_err(|e| ClusterError::Invalid(format!("template: {e:#}")))?;
    let text = env
        .get_template("cluster.yaml.j2")
        .and_then(|t| {
            t.render(minijinja::context! {
                name => a.name, kubernetes_version => spec::KUBERNETES_VERSION, endpoint => a.endpoint,
                ha_mode, ha_interface, ha_address => None::<String>,
                pod_cidr => a.pod_cidr, service_cidr => a.service_cidr, node_cidr => a.node_cidr,
                ssh_keys, nodes, ingress_host => format!("backend.{}.internal", a.name),
            })
        })
        .map_err(|e| ClusterError::Invalid(format!("rendering cluster.yaml: {e:#}")))?;
    Ok(text)
}

/// `cluster init`: write DIR/cluster.yaml and DIR/secrets/ once; returns the spec's path.
pub fn init(a: &InitOptions, rep: &Reporter) -> Result<PathBuf> {
    let keys = read_ssh_keys(&a.ssh_keys)?;
    let text = initial_spec(a, &keys)?;
    let path = a.dir.join("cluster.yaml");
    let loaded = spec::parse(&text, &path.display().to_string())?;
    for w in &loaded.warnings {
        rep.warn(w);
    }
    if path.exists() {
        return Err(ClusterError::Exists(path).into());
    }
    let sdir = secrets_dir(&path);
    for f in pki::FILES {
        if sdir.join(f).exists() {
            return Err(ClusterError::Exists(sdir.join(f)).into());
        }
    }
    let mut rng = pki::Rng::from_env();
    let secrets = pki::Secrets::generate(&mut rng)?;
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| ClusterError::Io(format!("creating {}", a.dir.display()), e))?;
    secrets.write(&sdir)?;
    pki::create_new_private(&path, text.as_bytes())?;
    rep.status(format_args!(
        "wrote {} ({} nodes) and {}/ (CAs: ECDSA P-256; discovery hash {})",
        path.display(),
        loaded.spec.nodes.len(),
        sdir.display(),
        secrets.ca.discovery_hash()?
    ));
    Ok(path)
}

/// The admin kubeconfig YAML for a loaded spec and its secrets.
pub fn kubeconfig_yaml(
    l: &spec::Loaded,
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
    let l = spec::load(cluster)?;
    for w in &l.warnings {
        rep.warn(w);
    }
    let s = pki::Secrets::load(&secrets_dir(cluster))?;
    let mut rng = pki::Rng::from_env();
    Ok(kubeconfig_yaml(&l, &s, identity, days, &mut rng)?)
}
