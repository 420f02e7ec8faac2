//! Render one node's user-data, meta-data and network-config from the cluster plan,
//! and prove each document parses back to what was meant before it may be written.
//!
//! User-data is a list of sections ([`Renderer::sections`]): each renders its own part (files to write, or
//! a cloud-config module) and checks it (kubeadm kinds, data that parses back). The
//! assembled document is then checked as a whole: the cloud-init schema, every file
//! byte-exact, the size budget.

use minijinja::{context, Environment};
use serde::Serialize;

use super::{schema, CloudInitError};
use crate::cluster::net::{Cidr, Nic};
use crate::cluster::pki::Secrets;
use crate::cluster::plan::{ClusterPlan, JoinMode, NodePlan, StaticNet, API_BIND_PORT};
use crate::cluster::s3::S3Credentials;
use crate::cluster::spec::{HaMode, KUBE_VIP_IMAGE};

/// OpenStack Nova's user-data limit; other platforms allow more.
pub const USER_DATA_MAX: usize = 64 * 1024;
pub const USER_DATA_WARN: usize = 16 * 1024;

/// The NTP client cloud-init's ntp module configures: the one Ubuntu 24.04 ships
/// (chrony replaced it as the default only in 25.10). Named explicitly so that the
/// module never falls back to installing a package at first boot.
pub const NTP_CLIENT: &str = "systemd-timesyncd";

/// Where the image's baked scripts expect their data (keep in sync with
/// image-files/common/usr/libexec/imgbuild/{bootstrap,firewall}).
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
    /// The cluster's networks (`KIND CIDR` lines); loaded by imgbuild-firewall.service.
    pub const CLUSTER_NETWORKS: &str = "/etc/imgbuild/cluster-networks";
    /// Where the first control plane's bootstrap fetches an etcd snapshot to restore from.
    pub const RESTORE: &str = "/etc/imgbuild/restore.env";
    /// Snapshot retention and interval; read by the control-plane image's etcd-snapshot.
    pub const BACKUP_ENV: &str = "/etc/imgbuild/backup.env";
    /// The S3 access key pair etcd-snapshot signs uploads with (root-only).
    pub const BACKUP_S3_ENV: &str = "/etc/imgbuild/backup-s3.env";
}

/// An etcd snapshot the first control plane restores before `kubeadm init` (disaster
/// recovery): fetched by the bootstrap with curl, checked against `sha256` first.
#[derive(Debug, Clone)]
pub struct Restore {
    pub url: String,
    /// Hex SHA-256 of the whole snapshot file (what `cluster backup` prints).
    pub sha256: String,
}

impl Restore {
    /// http(s) URL without whitespace or quotes (it is data for curl, on one line), and
    /// a SHA-256 in hex.
    pub fn check(&self) -> Result<(), CloudInitError> {
        let u = &self.url;
        let scheme_ok = u.starts_with("https://") || u.starts_with("http://");
        if !scheme_ok
            || u.len() > 2048
            || !u.bytes().all(|b| b.is_ascii_graphic() && !b"\"'\\`$".contains(&b))
        {
            return Err(CloudInitError::Invalid(format!(
                "--restore-url {u:?}: expected an http(s) URL without spaces, quotes, backslashes, $ or `"
            )));
        }
        if self.sha256.len() != 64
            || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(CloudInitError::Invalid(format!(
                "--restore-sha256 {:?}: expected 64 lowercase hex digits (the first field `cluster backup` prints)",
                self.sha256
            )));
        }
        Ok(())
    }
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

/// What one section adds to a node's user-data.
#[derive(Debug, Default)]
struct Part {
    files: Vec<File>,
    /// Servers for cloud-init's `ntp` module.
    ntp: Option<Vec<String>>,
}

impl Part {
    fn file(path: &str, mode: &'static str, content: String) -> Part {
        Part { files: vec![File { path: path.to_string(), mode, content }], ntp: None }
    }
}

type Section<'r> = fn(&Renderer<'r>, &NodePlan) -> Result<Part, CloudInitError>;

pub struct Renderer<'a> {
    l: &'a ClusterPlan,
    s: &'a Secrets,
    env: Environment<'static>,
    ca_hash: String,
    audit: String,
    encryption: String,
    kube_vip: Option<(String, String)>,
    /// The first control plane's add-on values files (path, content), see [`super::addon_values`].
    addon_files: Vec<(String, String)>,
    /// The token joining nodes use instead of the initial one (`cluster token create`).
    join_token: Option<String>,
    cluster_networks: String,
    restore: Option<Restore>,
    backup_s3: Option<S3Credentials>,
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

/// The cluster networks file: what the node firewall's cluster sets hold.
fn cluster_networks_text(l: &ClusterPlan) -> String {
    let (nodes, other) = l.firewall_sources();
    let mut out = String::from(
        "# The cluster's networks (imgbuild cloud-init; loaded by imgbuild-firewall.service):\n\
         # the sources that may reach kubelet, etcd and the CNI ports. One `KIND CIDR` per line.\n",
    );
    let mut seen = Vec::new();
    let mut add = |kind: &str, c: Cidr| {
        if !seen.contains(&c) {
            seen.push(c);
            out.push_str(&format!("{kind} {c}\n"));
        }
    };
    match nodes {
        Some(n) => n.into_iter().for_each(|c| add("node", c)),
        // nodes on DHCP without a declared network: the image's default private ranges
        None => {
            use crate::types::private_ranges::{V4, V6};
            for s in V4.iter().chain(V6) {
                if let Ok(c) = s.parse() {
                    add("private", c);
                }
            }
        }
    }
    for (kind, c) in other {
        add(kind, c);
    }
    out
}

/// `instance-id`: the node name, prefixed with the cluster's unless it already is
/// (`cluster init` names nodes `CLUSTER-cp-1`, …).
pub fn instance_id(cluster: &str, node: &str) -> String {
    match node.strip_prefix(cluster).and_then(|r| r.strip_prefix('-')) {
        Some(_) => node.to_string(),
        None => format!("{cluster}-{node}"),
    }
}

impl<'a> Renderer<'a> {
    pub fn new(l: &'a ClusterPlan, s: &'a Secrets) -> Result<Self, CloudInitError> {
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
        let kube_vip = match (l.spec.ha.mode, l.vip) {
            (HaMode::Vip, Some(vip)) => {
                let vip_cidr = if vip.is_ipv6() { "128" } else { "32" };
                let iface = l.spec.ha.interface.clone().unwrap_or_default();
                let one = |kubeconfig: &str| {
                    render(
                        "kube-vip.yaml.j2",
                        context! {
                            image => KUBE_VIP_IMAGE, vip => vip.to_string(), port => l.endpoint.port.to_string(),
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
        let cluster_networks = cluster_networks_text(l);
        // the firewall script takes `KIND CIDR` lines and nothing else
        for line in cluster_networks.lines().filter(|x| !x.starts_with('#')) {
            let ok = line.split_once(' ').is_some_and(|(k, c)| {
                k.bytes().all(|b| b.is_ascii_lowercase())
                    && c.parse::<Cidr>().is_ok_and(|x| x.to_string() == c)
            });
            if !ok {
                return Err(rendered_err("cluster networks", format!("bad line {line:?}")));
            }
        }
        Ok(Renderer {
            l,
            s,
            env,
            ca_hash,
            audit,
            encryption,
            kube_vip,
            addon_files: Vec::new(),
            join_token: None,
            cluster_networks,
            restore: None,
            backup_s3: None,
        })
    }

    /// The add-on values files the first control plane gets (checked by
    /// [`super::addon_values::build`]).
    pub fn with_addons(mut self, files: &super::addon_values::AddonFiles) -> Self {
        self.addon_files = files.files.clone();
        self
    }

    /// Render joining nodes with `token` (from `secrets/join-token.json`) instead of the
    /// cluster's initial bootstrap token; the first control plane keeps the initial one.
    pub fn with_join_token(mut self, token: Option<String>) -> Self {
        self.join_token = token;
        self
    }

    /// The first control plane restores etcd from `restore` instead of starting empty.
    pub fn with_restore(mut self, restore: Option<Restore>) -> Self {
        self.restore = restore;
        self
    }

    /// The credentials of `backups.s3` (control planes get them).
    pub fn with_backup_s3(mut self, credentials: Option<S3Credentials>) -> Self {
        self.backup_s3 = credentials;
        self
    }

    /// The sections of user-data, in the order their parts appear.
    fn sections() -> [(&'static str, Section<'a>); 11] {
        [
            ("bootstrap.env", Self::bootstrap_env),
            ("kubeadm", Self::kubeadm),
            ("control-plane PKI", Self::control_plane_pki),
            ("API server files", Self::apiserver_files),
            ("kube-vip", Self::kube_vip),
            ("add-on values", Self::addon_values),
            ("cluster networks", Self::cluster_networks),
            ("etcd backups", Self::backups),
            ("etcd restore", Self::restore),
            ("time", Self::time),
            ("registry mirrors", Self::registry_mirrors),
        ]
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, CloudInitError> {
        self.env.get_template(name).and_then(|t| t.render(ctx)).map_err(|e| rendered_err(name, e))
    }

    fn bootstrap_env(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        let spec = &self.l.spec;
        let kube_vip = self.kube_vip.is_some() && n.is_control_plane();
        let envf = self.render(
            "bootstrap.env.j2",
            context! {
                mode => n.mode.as_str(), node => env_safe(&n.name)?, cluster => env_safe(&spec.name)?,
                endpoint => env_safe(&self.l.control_plane_endpoint())?,
                kube_vip => if kube_vip { "1" } else { "0" },
                budget => spec.bootstrap.retry_budget_seconds.to_string(),
            },
        )?;
        Ok(Part::file(paths::ENV, "0644", envf))
    }

    fn kubeadm(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        let l = self.l;
        let spec = &l.spec;
        let node_ip = n.address().map(|a| a.to_string());
        let endpoint = l.control_plane_endpoint();
        let t = if n.mode == JoinMode::Init {
            let mut sans = vec![l.endpoint.host.to_string()];
            if let Some(v) = l.vip.map(|v| v.to_string()).filter(|v| !sans.contains(v)) {
                sans.push(v);
            }
            let t = self.render(
                "kubeadm-init.yaml.j2",
                context! {
                    node => n.name, cluster => spec.name, token => self.s.token, token_ttl => spec.bootstrap.token_ttl,
                    node_ip, bind_port => API_BIND_PORT, kubernetes_version => spec.kubernetes_version, endpoint,
                    pod_cidr => l.pod_cidr.to_string(), service_cidr => l.service_cidr.to_string(),
                    dns_domain => spec.networking.dns_domain, cert_sans => sans,
                    image_repository => self.l.registries.image_repository,
                    pull_policy => self.l.registries.pull_policy.as_str(),
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
                    token => self.join_token.as_deref().unwrap_or(&self.s.token), ca_hash => self.ca_hash,
                    node_ip, bind_port => API_BIND_PORT,
                    pull_policy => self.l.registries.pull_policy.as_str(),
                },
            )?;
            check_kinds(&t, &[("kubeadm.k8s.io/v1beta3", "JoinConfiguration")])
                .map_err(|e| rendered_err("kubeadm join config", e))?;
            t
        };
        Ok(Part::file(paths::KUBEADM, "0600", t))
    }

    /// The shared control-plane PKI; workers never get CA keys.
    fn control_plane_pki(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        let mut p = Part::default();
        if !n.is_control_plane() {
            return Ok(p);
        }
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
            p.files.push(File { path: format!("{}/{name}", paths::PKI), mode, content: body.clone() });
        }
        Ok(p)
    }

    fn apiserver_files(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        let mut p = Part::default();
        if n.is_control_plane() {
            p.files.push(File {
                path: paths::AUDIT_POLICY.into(),
                mode: "0600",
                content: self.audit.clone(),
            });
            p.files.push(File {
                path: paths::ENCRYPTION.into(),
                mode: "0600",
                content: self.encryption.clone(),
            });
        }
        Ok(p)
    }

    fn kube_vip(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        let mut p = Part::default();
        if let (Some((init, steady)), true) = (&self.kube_vip, n.is_control_plane()) {
            if n.mode == JoinMode::Init {
                p.files.push(File { path: paths::KUBE_VIP_INIT.into(), mode: "0600", content: init.clone() });
            }
            p.files.push(File { path: paths::KUBE_VIP.into(), mode: "0600", content: steady.clone() });
        }
        Ok(p)
    }

    /// The add-on values (checked against the charts' schemas by
    /// [`super::addon_values::build`]); the first control plane only.
    fn addon_values(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        let mut p = Part::default();
        if n.mode == JoinMode::Init {
            for (path, content) in &self.addon_files {
                p.files.push(File { path: path.clone(), mode: "0600", content: content.clone() });
            }
        }
        Ok(p)
    }

    fn cluster_networks(&self, _: &NodePlan) -> Result<Part, CloudInitError> {
        Ok(Part::file(paths::CLUSTER_NETWORKS, "0644", self.cluster_networks.clone()))
    }

    /// Every control plane snapshots its etcd member (see the image's etcd-snapshot) and,
    /// with `backups.s3`, uploads it: where to in backup.env, the key pair in a 0600 file.
    fn backups(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        if !n.is_control_plane() {
            return Ok(Part::default());
        }
        let b = &self.l.spec.backups;
        let mut env = format!(
            "IMGBUILD_BACKUP_RETENTION={}\nIMGBUILD_BACKUP_INTERVAL_HOURS={}\n",
            b.retention, b.interval_hours
        );
        let Some(t) = &self.l.backup_s3 else {
            return Ok(Part::file(paths::BACKUP_ENV, "0644", env));
        };
        let c = self.backup_s3.as_ref().ok_or_else(|| {
            rendered_err("backup-s3.env", "backups.s3 is set but its credentials were not loaded")
        })?;
        env.push_str(&format!(
            "IMGBUILD_BACKUP_S3_URL={}\nIMGBUILD_BACKUP_S3_PREFIX={}\nIMGBUILD_BACKUP_S3_REGION={}\n",
            t.bucket_url, t.prefix, t.region
        ));
        let mut p = Part::file(paths::BACKUP_ENV, "0644", env);
        p.files.push(File {
            path: paths::BACKUP_S3_ENV.into(),
            mode: "0600",
            content: format!(
                "IMGBUILD_S3_ACCESS_KEY_ID={}\nIMGBUILD_S3_SECRET_ACCESS_KEY={}\n",
                c.access_key_id, c.secret_access_key
            ),
        });
        Ok(p)
    }

    /// 0600: a presigned URL is a credential.
    fn restore(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        match (&self.restore, n.mode) {
            (Some(r), JoinMode::Init) => Ok(Part::file(
                paths::RESTORE,
                "0600",
                format!("IMGBUILD_RESTORE_SHA256={}\nIMGBUILD_RESTORE_URL={}\n", r.sha256, r.url),
            )),
            _ => Ok(Part::default()),
        }
    }

    fn time(&self, n: &NodePlan) -> Result<Part, CloudInitError> {
        Ok(Part { files: Vec::new(), ntp: (!n.ntp.is_empty()).then(|| n.ntp.clone()) })
    }

    /// containerd's hosts.toml (and CA files) per mirrored registry, on every node.
    fn registry_mirrors(&self, _: &NodePlan) -> Result<Part, CloudInitError> {
        let files = crate::cluster::registries::files(&self.l.registries)
            .into_iter()
            .map(|(path, mode, content)| File { path, mode, content })
            .collect();
        Ok(Part { files, ntp: None })
    }

    /// user-data from every section, checked as a whole.
    fn user_data(&self, n: &NodePlan) -> Result<(String, Vec<File>), CloudInitError> {
        let mut files = Vec::new();
        let mut ntp = None;
        for (name, section) in Self::sections() {
            let part = section(self, n).map_err(|e| match e {
                CloudInitError::Rendered { what, msg } => {
                    CloudInitError::Rendered { what: format!("{name} section: {what}"), msg }
                }
                e => e,
            })?;
            files.extend(part.files);
            ntp = ntp.or(part.ntp);
        }
        let spec = &self.l.spec;
        let user_data = self.render(
            "user-data.j2",
            context! {
                node => n.name, role => n.role.as_str(), cluster => spec.name,
                ssh_keys => spec.ssh_authorized_keys, files, ntp, ntp_client => NTP_CLIENT,
            },
        )?;
        let what = format!("user-data of {}", n.name);
        let doc = schema::check_user_data(&user_data).map_err(|e| rendered_err(&what, e))?;
        // every file must come back byte-exact from the YAML
        let back = doc.get("write_files").and_then(|w| w.as_array()).cloned().unwrap_or_default();
        if back.len() != files.len()
            || back.iter().zip(&files).any(|(b, f)| {
                b.get("path").and_then(|x| x.as_str()) != Some(f.path.as_str())
                    || b.get("content").and_then(|x| x.as_str()) != Some(f.content.as_str())
                    || b.get("permissions").and_then(|x| x.as_str()) != Some(f.mode)
            })
        {
            return Err(rendered_err(&what, "write_files do not round-trip"));
        }
        if doc.get("hostname").and_then(|x| x.as_str()) != Some(n.name.as_str()) {
            return Err(rendered_err(&what, "hostname does not round-trip"));
        }
        let ntp_back: Option<Vec<String>> = doc.get("ntp").map(|x| {
            x.get("servers")
                .and_then(|s| s.as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        });
        if ntp_back != ntp || (ntp.is_some() && doc["ntp"]["ntp_client"] != NTP_CLIENT) {
            return Err(rendered_err(&what, "ntp does not round-trip"));
        }
        Ok((user_data, files))
    }

    fn meta_data(&self, n: &NodePlan) -> Result<String, CloudInitError> {
        let iid = instance_id(&self.l.spec.name, &n.name);
        let meta_data = self.render("meta-data.j2", context! { instance_id => iid, node => n.name })?;
        let md: serde_yaml::Value =
            serde_yaml::from_str(&meta_data).map_err(|e| rendered_err("meta-data", e))?;
        if md.get("local-hostname").and_then(|x| x.as_str()) != Some(n.name.as_str())
            || md.get("instance-id").and_then(|x| x.as_str()) != Some(iid.as_str())
        {
            return Err(rendered_err("meta-data", "instance-id or local-hostname does not round-trip"));
        }
        Ok(meta_data)
    }

    /// network-config v2 (netplan): the static address on exactly one NIC, the DHCP
    /// NICs, nothing else.
    fn network_config(&self, net: &StaticNet) -> Result<String, CloudInitError> {
        // netplan ids: an interface name is its own id; a NIC matched by MAC gets one
        let entry = |nic: &Nic, id: String| match nic {
            Nic::Name(n) => context! { id => n.as_str(), mac => None::<String> },
            Nic::Mac(m) => context! { id, mac => m.to_string() },
        };
        let dhcp: Vec<_> = net.dhcp.iter().enumerate().map(|(i, d)| entry(d, format!("dhcp{i}"))).collect();
        let a = net.address;
        let t = self.render(
            "network-config.j2",
            context! {
                nic => entry(&net.nic, "static0".into()), address => a.to_string(),
                gateway => net.gateway.map(|g| g.to_string()), on_link => net.gateway_on_link(),
                default_route => if a.is_v4() { "0.0.0.0/0" } else { "::/0" },
                nameservers => net.nameservers.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                search => net.search, dhcp,
            },
        )?;
        check_network_config(&t, net).map_err(|e| rendered_err("network-config", e))?;
        Ok(t)
    }

    pub fn render_node(&self, n: &NodePlan) -> Result<Rendered, CloudInitError> {
        let l = self.l;
        let (user_data, files) = self.user_data(n)?;
        let mut warnings = Vec::new();
        let size = user_data.len();
        let where_ = match l.line(&format!("nodes[{}]", n.index)) {
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
        let meta_data = self.meta_data(n)?;
        let network_config = n.net.as_ref().map(|net| self.network_config(net)).transpose()?;
        Ok(Rendered { node: n.name.clone(), user_data, meta_data, network_config, files, warnings })
    }

    /// Render many nodes on all cores, in input order.
    pub fn render_many(&self, nodes: &[&NodePlan]) -> Result<Vec<Rendered>, CloudInitError> {
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

/// A netplan entry's NIC: its `match.macaddress`, else its id as an interface name.
fn entry_nic(id: &str, e: &serde_yaml::Value) -> Option<String> {
    if let Some(m) = e.get("match") {
        let keys: Vec<&str> = m.as_mapping()?.keys().filter_map(|k| k.as_str()).collect();
        return (keys == ["macaddress"]).then(|| m["macaddress"].as_str().map(String::from)).flatten();
    }
    Some(id.to_string())
}

/// The rendered network-config gives `net.address` to `net.nic` and to nothing else,
/// DHCP to exactly `net.dhcp`, and the resolvers as meant.
pub fn check_network_config(text: &str, net: &StaticNet) -> Result<(), String> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if v.get("version").and_then(|x| x.as_u64()) != Some(2) {
        return Err("not version 2".into());
    }
    let eths = v.get("ethernets").and_then(|x| x.as_mapping()).ok_or("no ethernets")?;
    let mut with_address = Vec::new();
    let mut dhcp = Vec::new();
    for (k, e) in eths {
        let id = k.as_str().ok_or("an ethernets key is not a string")?;
        let nic = entry_nic(id, e).ok_or_else(|| format!("{id}: matches by something other than one MAC"))?;
        let addrs: Vec<&str> = e
            .get("addresses")
            .and_then(|a| a.as_sequence())
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        if !addrs.is_empty() {
            with_address.push((nic.clone(), addrs, e));
        }
        if e.get("dhcp4").and_then(|x| x.as_bool()) == Some(true) {
            dhcp.push(nic);
        }
    }
    let [(nic, addrs, e)] = with_address.as_slice() else {
        return Err(format!("{} interfaces get addresses, expected exactly one", with_address.len()));
    };
    if *nic != net.nic.to_string() || *addrs != [net.address.to_string().as_str()] {
        return Err(format!("{nic} gets {addrs:?}, expected {} on {}", net.address, net.nic));
    }
    let ns: Vec<String> = e["nameservers"]["addresses"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    let want: Vec<String> = net.nameservers.iter().map(|x| x.to_string()).collect();
    if ns != want {
        return Err(format!("nameservers {ns:?}, expected {want:?}"));
    }
    let want: Vec<String> = net.dhcp.iter().map(|x| x.to_string()).collect();
    if dhcp != want {
        return Err(format!("DHCP on {dhcp:?}, expected {want:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_not_doubled() {
        assert_eq!(instance_id("demo", "demo-cp-1"), "demo-cp-1");
        assert_eq!(instance_id("demo", "cp-1"), "demo-cp-1");
        assert_eq!(instance_id("demo", "demolition"), "demo-demolition");
    }
}
