//! Command-line spellings of the library's enums (clap's `ValueEnum`), kept here so the
//! types themselves know nothing about clap. The names are the ones the YAML and the
//! output use (`control-plane`, `amd64`, `qcow2`, …).

use clap::builder::PossibleValue;
use clap::ValueEnum;

/// `value_enum!(Type { Variant => "name" ["help"], … })`
macro_rules! value_enum {
    ($t:ty { $($v:ident => $name:literal $(: $help:literal)?),* $(,)? }) => {
        impl ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(<$t>::$v),*]
            }
            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $(<$t>::$v => PossibleValue::new($name)$(.help($help))?,)*
                })
            }
        }
    };
}

value_enum!(crate::types::Role { ControlPlane => "control-plane", Worker => "worker" });
value_enum!(crate::types::Arch { Amd64 => "amd64", Arm64 => "arm64" });
value_enum!(crate::types::OutFormat {
    Qcow2 => "qcow2",
    Raw => "raw",
    Vmdk => "vmdk",
    Vhdx => "vhdx",
    Vhd => "vhd",
    Ova => "ova",
});
value_enum!(crate::cluster::pki::AdminKind {
    Admin => "admin": "O=kubeadm:cluster-admins, bound to cluster-admin by a ClusterRoleBinding kubeadm \
                       creates; revocable by deleting that binding (kubeadm ≥ 1.29's admin.conf)",
    SuperAdmin => "super-admin": "O=system:masters: break-glass, bypasses RBAC and cannot be revoked \
                                  before expiry",
});
value_enum!(crate::types::Profile {
    Monitoring => "monitoring": "Prometheus, Alertmanager, Grafana (kube-prometheus-stack); the backend scraped",
    Logging => "logging": "OpenTelemetry collector: node and pod logs to an OTLP endpoint (e.g. Dynatrace)",
    Gitops => "gitops": "Argo CD with an Application for the backend chart",
    Cinder => "cinder": "OpenStack Cinder CSI driver, its StorageClass the default",
    Proxmox => "proxmox": "Proxmox VE CSI driver, its StorageClass the default",
    Hcloud => "hcloud": "Hetzner Cloud CSI driver, its StorageClass the default",
});
value_enum!(crate::cloudinit::SeedKind {
    Iso => "iso": "ISO 9660 + Joliet + Rock Ridge, written in Rust (no tools needed)",
    Vfat => "vfat": "FAT, written in Rust (no tools needed)",
    None => "none": "Only the plain files",
});
value_enum!(crate::lint::Target {
    Openstack => "openstack": "OpenStack (Nova) metadata: 64 KiB",
    Vsphere => "vsphere": "vSphere guestinfo: 512 KiB",
});
value_enum!(crate::upload::Target {
    Libvirt => "libvirt": "A storage volume in a libvirt pool",
    Glance => "glance": "An OpenStack Glance v2 image",
    Proxmox => "proxmox": "A file in a Proxmox VE storage with `import` content (optionally a VM template)",
});
