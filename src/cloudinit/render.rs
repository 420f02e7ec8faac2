//! Render one node's user-data, meta-data and network-config, and prove each
//! document parses back to what was meant before it may be written.

use minijinja::{context, Environment};
use serde::Serialize;

use super::{schema, CloudInitError};

use crate::cluster::net::Cidr;
use crate::cluster::pki::Secrets;
use crate::cluster::registries::Registries;
use crate::cluster::spec::{HaMode, Loaded, Node, KUBE_VIP_IMAGE};
use crate::types::Role;

/// OpenStack Nova's user-data limit; other platforms allow more.
pub const USER_DATA_MAX: usize = 64 * 1024;
pub const USER_DATA_WARN: usize = 16 * 1024;

/// Where the image's bootstrap script expects its data (keep in sync with
/// image-files/common/usr/libexec/imgbuild/bootstrap).
pub mod paths {
    pub const ENV: &str = "/etc/imgbuild/bootstrap.env";
    pub const KUBEADM: &str = "/etc/imgbuild/kubeadm.yaml";
    pub const PKI: &str = "/etc/imgbuild/pki";
    pub const KUBE_VIP_INIT: &str = "/etc/imgbuild/kube-vip/init.yaml";
    pub const KUBE_VIP: &str = "/etc/imgbuild/kube-vip/kube-vip.yaml";
    pub const AUDIT_POLICY: &str = "/etc/kubernetes/audit/policy.yaml";
    pub const ENCRYPTION: &str = "/etc/kubernetes/encryption/config.yaml";
    /// Helm values for the backend chart; read by the control-plane image's add-on installer.
    pub const ADDON_VALUES: &str = "/etc/imgbuild/addons/values.yaml";
}

#[derive(Debug, Clone, Serialize)]
pub struct File {
    pub path: String,
    pub mode: &'static str,
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct Rendered {
    pub node: String,
    pub user_data: String,
    pub meta_data: String,
    pub network_config: Option<String>,
    /// The files user-data writes (for tests and inspection).
    pub files: Vec<File>,
    pub warnings: Vec<String>,
}

pub struct Renderer<'a> {
    l: &'a Loaded,
    s: &'a Secrets,
    env: Environment<'static>,
    ca_hash: String,
    audit: String,
    encryption: String,
    kube_vip: Option<(String, String)>,
    addon_values: Option<String>,
}

fn rendered_err(what: &str, e: impl std::fmt::Display) -> CloudInitError {
    CloudInitError::Rendered { what: what.to_string(), msg: format!("{e:#}") }
}

/// Parse a multi-document YAML text and require exactly these (apiVersion, kind) pairs.
pub fn check_kinds(text: &str, want: &[(&str, &str)]) -> Result<(), String> {
    let mut got = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(d).map_err(|e| e.to_string())?;
        let av = v.get("apiVersion").and_then(|x| x.as_str()).unwrap_or("").to_string();
        let k = v.get("kind").and_then(|x| x.as_str()).unwrap_or("").to_string();
        got.push((av, k));
    }
    let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    if got != want {
        return Err(format!("documents are {got:?}, expected {want:?}"));
    }
    Ok(())
}

use serde::Deserialize;

/// Values in bootstrap.env are written raw: allow only a boring charset.
fn env_safe(s: &str) -> Result<&str, CloudInitError> {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:[]".contains(&b)) {
        Ok(s)
    } else {
        Err(rendered_err("bootstrap.env", format!("unsafe value {s:?}")))
    }
}

impl<'a> Renderer<'a> {
    pub fn new(l: &'a Loaded, s: &'a Secrets) -> Result<Self, CloudInitError> {
        let env = crate::template::env().map_err(|e| rendered_err("templates", e))?;
        let ca_hash = s.ca.discovery_hash().map_err(|e| rendered_err("discovery hash", e))?;
        let render = |name: &str, ctx: minijinja::Value| -> Result<String, CloudInitError> {
            env.get_template(name).and_then(|t| t.render(ctx)).map_err(|e| rendered_err(name, e))
        };
        let audit = render("audit-policy.yaml.j2", context! {})?;
        check_kinds(&audit, &[("audit.k8s.io/v1", "Policy")]).map_err(|e| rendered_err("audit policy", e))?;
        let encryption = render("encryption-config.yaml.j2", context! { key => s.encryption_key })?;
        check_kinds(&encryption, &[("apiserver.config.k8s.io/v1", "EncryptionConfiguration")])
            .map_err(|e| rendered_err("encryption config", e))?;
        let kube_vip = match (l.spec.ha.mode, l.vip()) {
            (HaMode::Vip, Some(vip)) => {
                let vip_cidr = if vip.contains(':') { "128" } else { "32" };
                let iface = l.spec.ha.interface.clone().unwrap_or_default();
                let one = |kubeconfig: &str| {
                    render(
                        "kube-vip.yaml.j2",
                        context! {
                            image => KUBE_VIP_IMAGE, vip, port => l.endpoint_port.to_string(),
                            interface => iface, vip_cidr, kubeconfig,
                        },
                    )
                };
                let init = one("/etc/kubernetes/super-admin.conf")?;
                let steady = one("/etc/kubernetes/admin.conf")?;
                for t in [&init, &steady] {
                    check_kinds(t, &[("v1", "Pod")]).map_err(|e| rendered_err("kube-vip manifest", e))?;
                }
                Some((init, steady))
            }
            _ => None,
        };
        let addon_values = match &l.spec.addons {
            Some(a) if a.enabled => {
                let header =
                    "# Helm values for charts/backend, from the addons.backend section of cluster.yaml.\n";
                let body = if a.backend.is_empty() {
                    "{}\n".to_string()
                } else {
                    serde_yaml::to_string(&a.backend).map_err(|e| rendered_err("add-on values", e))?
                };
                Some(format!("{header}{body}"))
            }
            _ => None,
        };
        Ok(Renderer { l, s, env, ca_hash, audit, encryption, kube_vip, addon_values })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, CloudInitError> {
        self.env.get_template(name).and_then(|t| t.render(ctx)).map_err(|e| rendered_err(name, e))
    }

    pub fn render_node(&self, n: &Node) -> Result<Rendered, CloudInitError> {
        let l = self.l;
        let spec = &l.spec;
        let first = n.name == l.first_control_plane().name;
        let cp = n.role == Role::ControlPlane;
        let mode = match (first, cp) {
            (true, _) => "init",
            (false, true) => "join-control-plane",
            (false, false) => "join-worker",
        };
        let address: Option<Cidr> = match &n.address {
            Some(a) => Some(a.parse().map_err(|e| CloudInitError::Invalid(format!("{}: {e}", n.name)))?),
            None => None,
        };
        let node_ip = address.map(|c| c.addr.to_string());
        let endpoint = l.control_plane_endpoint();
        let kube_vip = self.kube_vip.is_some() && cp;

        let mut files = Vec::new();
        let mut add = |path: &str, mode: &'static str, content: String| {
            files.push(File { path: path.to_string(), mode, content });
        };
        let budget = spec.bootstrap.retry_budget_seconds.to_string();
        let envf = self.render(
            "bootstrap.env.j2",
            context! {
                mode, node => env_safe(&n.name)?, cluster => env_safe(&spec.name)?,
                endpoint => env_safe(&endpoint)?, kube_vip => if kube_vip { "1" } else { "0" }, budget,
            },
        )?;
        add(paths::ENV, "0644", envf);

        let kubeadm = if first {
            let mut sans = vec![l.endpoint_host.clone()];
            if let Some(v) = l.vip() {
                if !sans.contains(&v) {
                    sans.push(v);
                }
            }
            let t = self.render(
                "kubeadm-init.yaml.j2",
                context! {
                    node => n.name, cluster => spec.name, token => self.s.token, token_ttl => spec.bootstrap.token_ttl,
                    node_ip, bind_port => 6443, kubernetes_version => spec.kubernetes_version, endpoint,
                    pod_cidr => spec.networking.pod_cidr, service_cidr => spec.networking.service_cidr,
                    dns_domain => spec.networking.dns_domain, cert_sans => sans,
                    image_repository => Registries::image_repository(spec.registries.as_ref()),
                    pull_policy => Registries::pull_policy(spec.registries.as_ref()).as_str(),
                },
            )?;
            check_kinds(
                &t,
                &[
                    ("kubeadm.k8s.io/v1beta3", "InitConfiguration"),
                    ("kubeadm.k8s.io/v1beta3", "ClusterConfiguration"),
                    ("kubelet.config.k8s.io/v1beta1", "KubeletConfiguration"),
                    ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"),
                ],
            )
            .map_err(|e| rendered_err("kubeadm init config", e))?;
            t
        } else {
            let t = self.render(
                "kubeadm-join.yaml.j2",
                context! {
                    node => n.name, role => n.role.as_str(), cluster => spec.name, endpoint,
                    token => self.s.token, ca_hash => self.ca_hash, node_ip, bind_port => 6443,
                    pull_policy => Registries::pull_policy(spec.registries.as_ref()).as_str(),
                },
            )?;
            check_kinds(&t, &[("kubeadm.k8s.io/v1beta3", "JoinConfiguration")])
                .map_err(|e| rendered_err("kubeadm join config", e))?;
            t
        };
        add(paths::KUBEADM, "0600", kubeadm);

        if cp {
            // the shared control-plane PKI; workers never get CA keys
            let s = self.s;
            for (name, mode, body) in [
                ("ca.crt", "0644", &s.ca.cert_pem),
                ("ca.key", "0600", &s.ca.key_pem),
                ("sa.key", "0600", &s.sa_key_pem),
                ("sa.pub", "0644", &s.sa_pub_pem),
                ("front-proxy-ca.crt", "0644", &s.front_proxy_ca.cert_pem),
                ("front-proxy-ca.key", "0600", &s.front_proxy_ca.key_pem),
                ("etcd/ca.crt", "0644", &s.etcd_ca.cert_pem),
                ("etcd/ca.key", "0600", &s.etcd_ca.key_pem),
            ] {
                add(&format!("{}/{name}", paths::PKI), mode, body.clone());
            }
            add(paths::AUDIT_POLICY, "0600", self.audit.clone());
            add(paths::ENCRYPTION, "0600", self.encryption.clone());
            if let Some((init, steady)) = &self.kube_vip {
                if first {
                    add(paths::KUBE_VIP_INIT, "0600", init.clone());
                }
                add(paths::KUBE_VIP, "0600", steady.clone());
            }
        }
        if first {
            if let Some(v) = &self.addon_values {
                add(paths::ADDON_VALUES, "0600", v.clone());
            }
        }
        // Registry mirrors: containerd's hosts.toml (and CA files), on every node.
        for (path, mode, content) in crate::cluster::registries::files(spec.registries.as_ref()) {
            add(&path, mode, content);
        }

        let user_data = self.render(
            "user-data.j2",
            context! {
                node => n.name, role => n.role.as_str(), cluster => spec.name,
                ssh_keys => spec.ssh_authorized_keys, files,
            },
        )?;
        let doc = schema::check_user_data(&user_data)
            .map_err(|e| rendered_err(&format!("user-data of {}", n.name), e))?;
        // every file must come back byte-exact from the YAML
        let back = doc.get("write_files").and_then(|w| w.as_array()).cloned().unwrap_or_default();
        if back.len() != files.len()
            || back.iter().zip(&files).any(|(b, f)| {
                b.get("path").and_then(|x| x.as_str()) != Some(f.path.as_str())
                    || b.get("content").and_then(|x| x.as_str()) != Some(f.content.as_str())
                    || b.get("permissions").and_then(|x| x.as_str()) != Some(f.mode)
            })
        {
            return Err(rendered_err(&format!("user-data of {}", n.name), "write_files do not round-trip"));
        }
        if doc.get("hostname").and_then(|x| x.as_str()) != Some(n.name.as_str()) {
            return Err(rendered_err(&format!("user-data of {}", n.name), "hostname does not round-trip"));
        }

        let mut warnings = Vec::new();
        let size = user_data.len();
        let at = l.line(&format!("nodes[{}]", spec.nodes.iter().position(|x| x.name == n.name).unwrap_or(0)));
        let where_ = match at {
            Some(line) => format!("{}:{line}: node {}", l.origin, n.name),
            None => format!("{}: node {}", l.origin, n.name),
        };
        if size > USER_DATA_MAX {
            return Err(CloudInitError::Invalid(format!(
                "{where_}: user-data is {size} bytes, over the 64 KiB (65536) limit of OpenStack and others; shorten the add-on values or SSH keys"
            )));
        }
        if size > USER_DATA_WARN {
            warnings.push(format!(
                "warning: {where_}: user-data is {size} bytes (over 16 KiB; some platforms limit it)"
            ));
        }

        let meta_data = self.render(
            "meta-data.j2",
            context! { instance_id => format!("{}-{}", spec.name, n.name), node => n.name },
        )?;
        let md: serde_yaml::Value =
            serde_yaml::from_str(&meta_data).map_err(|e| rendered_err("meta-data", e))?;
        if md.get("local-hostname").and_then(|x| x.as_str()) != Some(n.name.as_str()) {
            return Err(rendered_err("meta-data", "local-hostname does not round-trip"));
        }

        let network_config = match address {
            Some(c) => {
                let t = self.render(
                    "network-config.j2",
                    context! {
                        interface => n.interface.clone().unwrap_or_else(|| "e*".into()),
                        address => c.to_string(), gateway => n.gateway,
                        default_route => if c.is_v4() { "0.0.0.0/0" } else { "::/0" },
                        dns => n.dns,
                    },
                )?;
                let v: serde_yaml::Value =
                    serde_yaml::from_str(&t).map_err(|e| rendered_err("network-config", e))?;
                if v.get("version").and_then(|x| x.as_u64()) != Some(2) {
                    return Err(rendered_err("network-config", "not version 2"));
                }
                Some(t)
            }
            None => None,
        };
        Ok(Rendered { node: n.name.clone(), user_data, meta_data, network_config, files, warnings })
    }

    /// Render many nodes on all cores, in input order.
    pub fn render_many(&self, nodes: &[&Node]) -> Result<Vec<Rendered>, CloudInitError> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
        if nodes.len() < 8 || threads == 1 {
            return nodes.iter().map(|n| self.render_node(n)).collect();
        }
        let chunk = nodes.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || c.iter().map(|n| self.render_node(n)).collect::<Result<Vec<_>, _>>())
                })
                .collect();
            let mut out = Vec::with_capacity(nodes.len());
            for h in handles {
                match h.join() {
                    Ok(r) => out.extend(r?),
                    Err(_) => return Err(rendered_err("nodes", "a render thread panicked")),
                }
            }
            Ok(out)
        })
    }
}
