//! `imgbuild upload --target libvirt|glance|proxmox IMAGE`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::reporter::Reporter;
use crate::upload::{glance, libvirt, proxmox, Outcome, Target, TargetOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// Where to upload
    #[arg(long, value_enum)]
    pub target: Target,
    /// The built image; `<stem>.manifest.json` and `<image>.sha256` must sit beside it
    pub image: PathBuf,
    #[command(flatten)]
    pub proxmox: ProxmoxArgs,
    #[command(flatten)]
    pub glance: GlanceArgs,
    #[command(flatten)]
    pub libvirt: LibvirtArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GlanceArgs {
    /// Glance: cloud name in clouds.yaml (without it: the OS_* environment variables)
    #[arg(long = "os-cloud", env = "OS_CLOUD", value_name = "NAME")]
    pub os_cloud: Option<String>,
    /// Glance: image API base URL (e.g. https://glance.example:9292); overrides the service catalog
    #[arg(long = "glance-endpoint", value_name = "URL")]
    pub glance_endpoint: Option<String>,
    /// Glance: image visibility
    #[arg(long = "glance-visibility", default_value = "private",
          value_parser = ["private", "shared", "community", "public"])]
    pub glance_visibility: String,
    /// Glance: seconds to wait for the image to become active after the upload
    #[arg(long = "glance-wait", default_value_t = 1800, value_name = "SECONDS")]
    pub glance_wait: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LibvirtArgs {
    /// libvirt connection URI for --target libvirt (e.g. qemu+ssh://host/system)
    #[arg(long = "libvirt-uri", env = "LIBVIRT_DEFAULT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// libvirt storage pool that receives the volume (--target libvirt)
    #[arg(long = "pool", default_value = "default")]
    pub libvirt_pool: String,
    /// After uploading (or finding it present), download the volume back and check its sha256 (--target libvirt)
    #[arg(long = "libvirt-verify")]
    pub libvirt_verify: bool,
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Proxmox VE (--target proxmox)")]
pub struct ProxmoxArgs {
    /// Proxmox VE API URL, e.g. https://pve1.example.org:8006 (https only)
    #[arg(long, value_name = "URL", required_if_eq("target", "proxmox"))]
    pub pve_url: Option<String>,
    /// Node whose storage receives the image
    #[arg(long, value_name = "NODE", required_if_eq("target", "proxmox"))]
    pub pve_node: Option<String>,
    /// Storage with `import` content (PVE >= 8.2)
    #[arg(long, value_name = "STORAGE", required_if_eq("target", "proxmox"))]
    pub pve_storage: Option<String>,
    /// API token USER@REALM!TOKENID=SECRET; prefer $PVE_API_TOKEN (flags are visible in `ps`)
    #[arg(long, value_name = "TOKEN")]
    pub pve_token: Option<String>,
    /// Pin the server certificate instead of verifying its chain: SHA256:AA:BB:... as the PVE GUI
    /// shows it (Node → System → Certificates)
    #[arg(long, value_name = "SHA256:..")]
    pub pve_fingerprint: Option<String>,
    /// Also create a VM template with this VMID from the image (disk, cloud-init drive, serial console)
    #[arg(long, value_name = "VMID")]
    pub pve_template: Option<u32>,
    /// Storage for the template's disk and cloud-init drive (default: --pve-storage; needs `images`)
    #[arg(long, value_name = "STORAGE")]
    pub pve_vm_storage: Option<String>,
    /// Template memory in MiB
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub pve_memory: u32,
    /// Template CPU cores
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub pve_cores: u32,
    /// Bridge of the template's virtio network interface ("none": no interface)
    #[arg(long, value_name = "BRIDGE", default_value = "vmbr0")]
    pub pve_bridge: String,
    /// Times a failed upload is started again from byte 0 (PVE's upload cannot resume)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub pve_retries: u32,
}

impl GlanceArgs {
    fn options(&self) -> glance::GlanceOptions {
        glance::GlanceOptions {
            os_cloud: self.os_cloud.clone(),
            glance_endpoint: self.glance_endpoint.clone(),
            glance_visibility: self.glance_visibility.clone(),
            glance_wait: self.glance_wait,
        }
    }
}

impl LibvirtArgs {
    fn options(&self) -> libvirt::LibvirtOptions {
        libvirt::LibvirtOptions {
            libvirt_uri: self.libvirt_uri.clone(),
            libvirt_pool: self.libvirt_pool.clone(),
            libvirt_verify: self.libvirt_verify,
        }
    }
}

impl ProxmoxArgs {
    fn options(&self) -> proxmox::ProxmoxOptions {
        proxmox::ProxmoxOptions {
            pve_url: self.pve_url.clone(),
            pve_node: self.pve_node.clone(),
            pve_storage: self.pve_storage.clone(),
            pve_token: self.pve_token.clone(),
            pve_fingerprint: self.pve_fingerprint.clone(),
            pve_template: self.pve_template,
            pve_vm_storage: self.pve_vm_storage.clone(),
            pve_memory: self.pve_memory,
            pve_cores: self.pve_cores,
            pve_bridge: self.pve_bridge.clone(),
            pve_retries: self.pve_retries,
        }
    }
}

/// Verify, upload, print the target's id on stdout.
pub fn run(a: &UploadArgs, rep: &Reporter) -> Result<()> {
    let o = TargetOptions {
        proxmox: a.proxmox.options(),
        glance: a.glance.options(),
        libvirt: a.libvirt.options(),
    };
    let (id, what) = match crate::upload::upload(a.target, &a.image, &o, rep)? {
        Outcome::Uploaded { id } => (id, "uploaded"),
        Outcome::AlreadyPresent { id } => (id, "already present"),
    };
    rep.status(format_args!("{what} {id}"));
    writeln!(std::io::stdout().lock(), "{id}")?;
    Ok(())
}
