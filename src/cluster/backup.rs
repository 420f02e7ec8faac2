//! `imgbuild cluster backup`: an etcd snapshot taken from outside the cluster through
//! etcd's API, with a short-lived client certificate signed offline by the cluster's
//! etcd CA (secrets/etcd-ca.*). The file is what `etcdctl snapshot save` writes
//! (database + SHA-256 trailer, verified before the file appears), 0600 because the
//! database holds every Secret of the cluster.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{pki, plan, secrets_dir, ClusterError};
use crate::etcd;
use crate::reporter::Reporter;

/// A snapshot of a large database over a slow link still finishes; a hung one does not
/// hold the command forever.
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(30 * 60);

pub struct BackupOptions {
    pub cluster: PathBuf,
    pub out: PathBuf,
    /// etcd client URLs to try in order (default: every control plane's static address, port 2379)
    pub endpoints: Vec<String>,
}

/// The etcd client identity for a day-2 command: signed now, valid one day.
pub fn etcd_tls(cluster: &Path, who: &str) -> Result<etcd::Tls, ClusterError> {
    let dir = secrets_dir(cluster);
    let s = pki::Secrets::load(&dir)?;
    let mut rng = pki::Rng::from_env();
    let c = pki::etcd_client_cert(&s.etcd_ca, who, 1, &mut rng)?;
    Ok(etcd::Tls {
        ca_pem: s.etcd_ca.cert_pem.into_bytes(),
        cert_pem: c.cert_pem,
        key_pem: c.key_pem,
        origin: dir,
    })
}

/// The client URLs of the control planes' etcd members as cluster.yaml knows them.
fn default_endpoints(l: &plan::ClusterPlan) -> Vec<String> {
    l.nodes
        .iter()
        .filter(|n| n.is_control_plane())
        .filter_map(|n| n.address())
        .map(|a| match a {
            std::net::IpAddr::V4(v4) => format!("https://{v4}:2379"),
            std::net::IpAddr::V6(v6) => format!("https://[{v6}]:2379"),
        })
        .collect()
}

/// Take the snapshot from the first endpoint that answers; returns what was written.
pub fn backup(o: &BackupOptions, rep: &Reporter) -> Result<etcd::Snapshot> {
    let l = plan::load(&o.cluster)?;
    let endpoints = if o.endpoints.is_empty() { default_endpoints(&l) } else { o.endpoints.clone() };
    if endpoints.is_empty() {
        return Err(ClusterError::Invalid(format!(
            "{}: no control plane has a static address; name etcd with --endpoint https://HOST:2379",
            o.cluster.display()
        ))
        .into());
    }
    let tls = etcd_tls(&o.cluster, "imgbuild-backup")?;
    let dir = o.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut last = Vec::new();
    for ep in &endpoints {
        let client = etcd::Client::new(ep, &tls)?;
        // a member that does not answer its status is skipped before any file is made
        let st = match client.status() {
            Ok(st) => st,
            Err(e) => {
                let msg = format!("{:#}", anyhow::Error::new(e));
                rep.warn(&msg);
                last.push(msg);
                continue;
            }
        };
        rep.status(format_args!(
            "snapshot from etcd {} at {ep} (revision {})",
            st.version, st.header.revision
        ));
        let mut tmp = tempfile::Builder::new()
            .prefix(".snapshot-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        let snap = {
            let mut w = std::io::BufWriter::new(tmp.as_file_mut());
            let snap = client.snapshot(&mut w, SNAPSHOT_LIMIT)?;
            w.flush().with_context(|| format!("writing {}", o.out.display()))?;
            snap
        };
        tmp.as_file().sync_all().with_context(|| format!("syncing {}", o.out.display()))?;
        tmp.persist(&o.out).with_context(|| format!("renaming to {}", o.out.display()))?;
        return Ok(snap);
    }
    Err(anyhow::anyhow!("no etcd member answered: {}", last.join("; ")))
}
