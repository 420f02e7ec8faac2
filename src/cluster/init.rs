//! `imgbuild cluster init`: the first cluster.yaml and the cluster's secrets, written
//! all or nothing: everything is staged in a private directory next to the target and
//! moved into place with renames that never replace anything, so a failure leaves
//! neither a cluster.yaml nor a secrets directory behind (and never half of one).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::net::{Cidr, IfName};
use super::{pki, plan, spec, ClusterError, InitOptions};

/// `secrets/` next to a cluster.yaml.
pub fn secrets_dir(cluster_yaml: &Path) -> PathBuf {
    cluster_yaml.parent().unwrap_or(Path::new(".")).join("secrets")
}

pub fn read_ssh_keys(files: &[PathBuf]) -> Result<Vec<String>, ClusterError> {
    let mut keys = Vec::new();
    for f in files {
        let text = fs::read_to_string(f)
            .map_err(|e| ClusterError::Io(format!("reading SSH key {}", f.display()), e))?;
        keys.extend(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
        );
    }
    Ok(keys)
}

fn invalid(msg: impl Into<String>) -> ClusterError {
    ClusterError::Invalid(msg.into())
}

/// Render cluster.yaml for `init`'s arguments. Validated by parsing it back.
pub fn initial_spec(a: &InitOptions, ssh_keys: &[String]) -> Result<String, ClusterError> {
    if a.control_planes == 0 {
        return Err(invalid("--control-planes must be at least 1"));
    }
    if a.control_planes + a.workers > 4000 {
        return Err(invalid("more than 4000 nodes"));
    }
    let (ha_mode, ha_interface) = match (&a.vip_interface, a.external_lb) {
        (Some(i), _) => ("vip", Some(i.clone())),
        (None, true) => ("external-lb", None),
        (None, false) if a.control_planes > 1 => {
            return Err(invalid(format!(
                "{} control planes need an HA endpoint: pass --vip-interface IFACE or --external-lb",
                a.control_planes
            )))
        }
        (None, false) => ("none", None),
    };
    a.endpoint.parse::<super::net::Endpoint>().map_err(|e| invalid(format!("--endpoint: {e}")))?;
    for d in &a.dns {
        d.parse::<IpAddr>().map_err(|_| invalid(format!("--dns: {d:?} is not an IP address")))?;
    }
    // an IPv4 node network hands out .11, .12, … and gateway .1
    let node_net = match &a.node_cidr {
        Some(c) => {
            let cidr: Cidr = c.parse().map_err(|e| invalid(format!("--node-cidr: {e}")))?;
            match cidr.network().addr {
                IpAddr::V4(v) if cidr.len <= 30 => Some((u32::from(v), cidr.len)),
                _ => return Err(invalid("--node-cidr must be an IPv4 network of /30 or larger")),
            }
        }
        None => None,
    };
    let interface = a.interface.clone().or_else(|| a.vip_interface.clone());
    if node_net.is_some() {
        // Static addresses: systemd-resolved has no fallback servers, and only one NIC
        // may get each address.
        if a.dns.is_empty() {
            return Err(invalid(
                "--node-cidr gives the nodes static addresses, which need nameservers: pass --dns IP[,IP]",
            ));
        }
        match &interface {
            None => {
                return Err(invalid(
                    "--node-cidr needs the NIC the static addresses go on: pass --interface NAME (e.g. ens3), or set each node's MAC address in cluster.yaml",
                ))
            }
            Some(i) => {
                i.parse::<IfName>().map_err(|e| invalid(format!("--interface: {e}")))?;
            }
        }
    } else if !a.dns.is_empty() || !a.dns_search.is_empty() || a.interface.is_some() {
        return Err(invalid(
            "--dns, --dns-search and --interface configure static addresses: pass --node-cidr too",
        ));
    }
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
                    return Err(invalid(format!("--node-cidr is too small for {total} nodes")));
                }
                let ip = Ipv4Addr::from(base + host);
                (Some(format!("{ip}/{len}")), Some(Ipv4Addr::from(base + 1).to_string()))
            }
            None => (None, None),
        };
        nodes.push(minijinja::context! { name, role, address, gateway });
    }
    let env = crate::template::env().map_err(|e| invalid(format!("template: {e:#}")))?;
    let text = env
        .get_template("cluster.yaml.j2")
        .and_then(|t| {
            t.render(minijinja::context! {
                name => a.name, kubernetes_version => spec::KUBERNETES_VERSION, endpoint => a.endpoint,
                ha_mode, ha_interface, ha_address => None::<String>,
                pod_cidr => a.pod_cidr, service_cidr => a.service_cidr, node_cidr => a.node_cidr,
                interface => node_net.and(interface),
                dns => a.dns, dns_search => a.dns_search, ntp => a.ntp,
                ssh_keys, nodes, ingress_host => format!("backend.{}.internal", a.name),
            })
        })
        .map_err(|e| invalid(format!("rendering cluster.yaml: {e:#}")))?;
    Ok(text)
}

/// `path` exists in any form, a dangling symlink included.
fn occupied(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Rename `from` to `to` unless `to` exists (atomically where the filesystem can).
fn rename_noreplace(from: &Path, to: &Path) -> Result<(), ClusterError> {
    use std::os::unix::ffi::OsStrExt;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ClusterError::Exists(to.to_path_buf()),
        _ => ClusterError::Io(format!("renaming {} to {}", from.display(), to.display()), e),
    };
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| io(e.into()));
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // a filesystem without RENAME_NOREPLACE: check, then rename
        Some(libc::EINVAL) | Some(libc::ENOSYS) if !occupied(to) => fs::rename(from, to).map_err(io),
        _ => Err(io(e)),
    }
}

/// Move the staged `secrets/` and `cluster.yaml` into `dir`: both or neither.
pub(crate) fn commit(dir: &Path, staged: &Path) -> Result<(), ClusterError> {
    let secrets = dir.join("secrets");
    let spec = dir.join("cluster.yaml");
    rename_noreplace(&staged.join("secrets"), &secrets)?;
    if let Err(e) = rename_noreplace(&staged.join("cluster.yaml"), &spec) {
        // ours (renamed in a moment ago with no-replace): back into the staging area
        if fs::rename(&secrets, staged.join("secrets")).is_err() {
            let _ = fs::remove_dir_all(&secrets);
        }
        return Err(e);
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Write `text` as DIR/cluster.yaml and fresh secrets as DIR/secrets/ (the add-on
/// profiles' admin credentials included, `cluster::admin`), all or nothing.
/// Returns the secrets and the path of cluster.yaml.
pub fn create(dir: &Path, text: &str, rng: &mut pki::Rng) -> Result<(pki::Secrets, PathBuf), ClusterError> {
    let path = dir.join("cluster.yaml");
    for p in [&path, &dir.join("secrets")] {
        if occupied(p) {
            return Err(ClusterError::Exists(p.clone()));
        }
    }
    let secrets = pki::Secrets::generate(rng)?;
    let admin = super::admin::AdminSecrets::generate(rng)?;
    let created = !dir.exists();
    let result = (|| {
        fs::create_dir_all(dir).map_err(|e| ClusterError::Io(format!("creating {}", dir.display()), e))?;
        let staged = tempfile::Builder::new()
            .prefix(".imgbuild-init-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(dir)
            .map_err(|e| ClusterError::Io(format!("creating a staging directory in {}", dir.display()), e))?;
        secrets.write(&staged.path().join("secrets"))?;
        admin.write(&staged.path().join("secrets"))?;
        pki::write_private(&staged.path().join("cluster.yaml"), text.as_bytes())?;
        commit(dir, staged.path())
    })();
    if let Err(e) = result {
        if created {
            // only removes what this run created: the directory is empty again
            let _ = fs::remove_dir(dir);
        }
        return Err(e);
    }
    Ok((secrets, path))
}

/// Parse the rendered spec back: the same checks as every later command.
pub fn check(text: &str, path: &Path) -> Result<plan::ClusterPlan, ClusterError> {
    plan::parse(text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_all_or_nothing() {
        let t = tempfile::tempdir().unwrap();
        let staged = t.path().join("stage");
        fs::create_dir_all(staged.join("secrets")).unwrap();
        fs::write(staged.join("secrets/ca.key"), "k").unwrap();
        fs::write(staged.join("cluster.yaml"), "c").unwrap();
        // cluster.yaml appeared after the first check (here: a dangling symlink)
        let dir = t.path().join("d");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", dir.join("cluster.yaml")).unwrap();
        let e = commit(&dir, &staged).unwrap_err();
        assert!(matches!(e, ClusterError::Exists(ref p) if p.ends_with("cluster.yaml")), "{e:?}");
        assert!(!dir.join("secrets").exists(), "half a cluster left behind");
        // an existing (even empty) secrets directory is never replaced
        fs::remove_file(dir.join("cluster.yaml")).unwrap();
        fs::create_dir(dir.join("secrets")).unwrap();
        let e = commit(&dir, &staged).unwrap_err();
        assert!(matches!(e, ClusterError::Exists(ref p) if p.ends_with("secrets")), "{e:?}");
        assert!(!dir.join("cluster.yaml").exists());
        fs::remove_dir(dir.join("secrets")).unwrap();
        commit(&dir, &staged).unwrap();
        assert_eq!(fs::read_to_string(dir.join("secrets/ca.key")).unwrap(), "k");
        assert_eq!(fs::read_to_string(dir.join("cluster.yaml")).unwrap(), "c");
    }
}
