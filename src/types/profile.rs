//! Add-on profiles: optional groups of add-ons a control-plane image may carry
//! (`imgbuild build --profile`) and a cluster may turn on (`addons.profiles` in
//! cluster.yaml). The set is closed: each profile's credentials, namespace and the
//! Secrets the cluster side creates for it are known here and in `cloudinit`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Prometheus, Alertmanager and Grafana (kube-prometheus-stack); the backend scraped.
    Monitoring,
    /// An OpenTelemetry collector shipping node and pod logs to an OTLP endpoint.
    Logging,
    /// Argo CD with an `Application` for the backend chart.
    Gitops,
    /// OpenStack Cinder volumes (cloud-provider-openstack's `openstack-cinder-csi` chart).
    Cinder,
    /// Proxmox VE disks (`proxmox-csi-plugin`).
    Proxmox,
    /// Hetzner Cloud volumes (`hcloud-csi`).
    Hcloud,
}

impl Profile {
    pub const ALL: [Profile; 6] = [
        Profile::Monitoring,
        Profile::Logging,
        Profile::Gitops,
        Profile::Cinder,
        Profile::Proxmox,
        Profile::Hcloud,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Monitoring => "monitoring",
            Profile::Logging => "logging",
            Profile::Gitops => "gitops",
            Profile::Cinder => "cinder",
            Profile::Proxmox => "proxmox",
            Profile::Hcloud => "hcloud",
        }
    }

    /// The namespace the profile's release installs into: the Secrets `cloud-init`
    /// renders for it (admin credentials, a CSI driver's cloud credentials) are created
    /// there, so the recipe may not move it.
    pub fn namespace(self) -> &'static str {
        match self {
            Profile::Monitoring => "monitoring",
            Profile::Logging => "logging",
            Profile::Gitops => "argocd",
            // Where the drivers' own install guides put them (their controllers read
            // the credentials Secret from the release namespace).
            Profile::Cinder | Profile::Hcloud => "kube-system",
            Profile::Proxmox => "csi-proxmox",
        }
    }

    /// The release of the profile's chart: cluster-specific values `cloud-init` renders for
    /// it go to `/etc/imgbuild/addons/<release>.yaml`, so the recipe may not rename it.
    pub fn release(self) -> &'static str {
        match self {
            Profile::Monitoring => "monitoring",
            Profile::Logging => "logging",
            Profile::Gitops => "argocd",
            Profile::Cinder => "cinder-csi",
            Profile::Proxmox => "proxmox-csi",
            Profile::Hcloud => "hcloud-csi",
        }
    }

    /// A hypervisor's CSI driver: its StorageClass becomes the cluster's default, and a
    /// cluster turns on at most one (its nodes run on one hypervisor).
    pub fn is_csi(self) -> bool {
        matches!(self, Profile::Cinder | Profile::Proxmox | Profile::Hcloud)
    }

    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The cluster.yaml fields (under `addons.<profile>`) a cluster that turns the profile
    /// on must set.
    pub fn required(self) -> &'static [&'static str] {
        match self {
            Profile::Logging => &["endpoint", "token"],
            Profile::Gitops => &["repo_url"],
            Profile::Proxmox => &["url", "region", "storage"],
            // their credentials are files in secrets/ (`credentials_file`, with a default)
            Profile::Cinder | Profile::Hcloud | Profile::Monitoring => &[],
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
