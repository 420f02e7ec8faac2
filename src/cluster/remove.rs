//! `imgbuild node remove`: take a node out of the cluster for good — cordon, drain
//! through the Eviction API, and for a control plane remove its etcd member (only
//! when the remaining members keep quorum), then delete the Node. With `cluster
//! add-node` this makes replacing a machine two commands.
//!
//! The safety check runs before anything changes and again right before the etcd
//! member goes: a refusal leaves the cluster as it was (or cordoned and drained, which
//! `kubectl uncordon` undoes).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{backup, ClusterError};
use crate::etcd::{self, Member};
use crate::kube::{self, node};
use crate::reporter::Reporter;

/// kubeadm's annotation on the etcd static pod: that member's client URL.
const ETCD_URL_ANNOTATION: &str = "kubeadm.kubernetes.io/etcd.advertise-client-urls";
/// How long etcd's "unhealthy cluster" answer to a member removal is waited out.
const UNHEALTHY_WAIT: Duration = Duration::from_secs(20);

pub struct RemoveOptions {
    pub name: String,
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    /// cluster.yaml, for the etcd CA (required for a control plane)
    pub cluster: Option<PathBuf>,
    /// Also delete pods no controller would recreate
    pub force: bool,
    /// Budget for the drain (PodDisruptionBudgets, grace periods)
    pub timeout: Duration,
}

/// What was removed.
#[derive(Debug)]
pub struct Removed {
    pub drained: node::Drained,
    /// The etcd member removed (hex id), for a control plane.
    pub etcd_member: Option<String>,
}

/// The cluster's etcd as this command sees it: a client per member URL the API
/// lists, the member list, and which members answer.
struct EtcdView {
    clients: Vec<etcd::Client>,
    members: Vec<Member>,
    healthy: Vec<u64>,
}

impl EtcdView {
    fn load(k: &kube::Client, tls: &etcd::Tls) -> Result<EtcdView> {
        let pods = node::pods_by_label(k, "kube-system", "component=etcd,tier=control-plane")?;
        let mut urls: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.annotations.get(ETCD_URL_ANNOTATION))
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect();
        urls.dedup();
        if urls.is_empty() {
            anyhow::bail!("the API lists no etcd pod with the {ETCD_URL_ANNOTATION} annotation: is this a kubeadm cluster?");
        }
        let clients = urls.iter().map(|u| etcd::Client::new(u, tls)).collect::<Result<Vec<_>, _>>()?;
        let mut errors = Vec::new();
        let mut members = None;
        for c in &clients {
            match c.member_list() {
                Ok(m) => {
                    members = Some(m);
                    break;
                }
                Err(e) => errors.push(format!("{:#}", anyhow::Error::new(e))),
            }
        }
        let Some(members) = members else {
            anyhow::bail!("no etcd member answered the member list: {}", errors.join("; "));
        };
        let mut healthy = Vec::new();
        for m in &members {
            let Some(url) = m.client_urls.first() else { continue };
            let c = etcd::Client::new(url, tls)?;
            if c.status().is_ok() {
                healthy.push(m.id);
            }
        }
        Ok(EtcdView { clients, members, healthy })
    }

    /// The member of node `name`: kubeadm names each member after its node.
    fn member_of(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    fn check(&self, target: Option<&Member>) -> Result<(), ClusterError> {
        match target {
            Some(t) => {
                etcd::removal_keeps_quorum(&self.members, t.id, &self.healthy).map_err(ClusterError::Refused)
            }
            None => Ok(()),
        }
    }

    /// Remove `id` through a member that answers and is not the one going. etcd's own
    /// check (`--strict-reconfig-check`) also wants the remaining quorum connected for
    /// its health interval (5 s) and answers "unhealthy cluster" (503) until then, e.g.
    /// right after another membership change: that answer is retried for a while.
    fn remove(&self, target: &Member) -> Result<()> {
        let deadline = std::time::Instant::now() + UNHEALTHY_WAIT;
        loop {
            let mut errors = Vec::new();
            let mut transient = false;
            for c in &self.clients {
                if target.client_urls.iter().any(|u| u.trim_end_matches('/') == c.endpoint()) {
                    continue;
                }
                match c.member_remove(target.id) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        transient |= matches!(
                            &e,
                            etcd::EtcdError::Api { source: kube::KubeError::Api { code: 503, .. }, .. }
                        );
                        errors.push(format!("{:#}", anyhow::Error::new(e)));
                    }
                }
            }
            if !transient || std::time::Instant::now() >= deadline {
                anyhow::bail!("could not remove etcd member {}: {}", target.hex_id(), errors.join("; "));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

pub fn remove(o: &RemoveOptions, rep: &Reporter) -> Result<Removed> {
    let k = kube::Client::from_kubeconfig(&o.kubeconfig, o.context.as_deref())?;
    let n = node::get(&k, &o.name).map_err(|e| match e {
        kube::KubeError::Api { code: 404, .. } => {
            anyhow::Error::new(ClusterError::Invalid(format!("the cluster has no Node named {}", o.name)))
        }
        e => anyhow::Error::new(e),
    })?;
    let mut etcd_ctx = None;
    if n.is_control_plane() {
        let Some(cluster) = &o.cluster else {
            return Err(ClusterError::Invalid(format!(
                "{} is a control plane: its etcd member must go too, which needs the cluster's etcd CA (--cluster cluster.yaml)",
                o.name
            ))
            .into());
        };
        let tls = backup::etcd_tls(cluster, "imgbuild-node-remove")?;
        let view = EtcdView::load(&k, &tls).context("reading etcd's members")?;
        let target = view.member_of(&o.name).cloned();
        view.check(target.as_ref())?;
        match &target {
            Some(t) => rep.status(format_args!(
                "{}: etcd member {} goes after the drain ({} of {} members answer)",
                o.name,
                t.hex_id(),
                view.healthy.len(),
                view.members.len()
            )),
            None => rep.warn(format_args!("{}: no etcd member of this name (already removed?)", o.name)),
        }
        etcd_ctx = Some(tls);
    }
    node::cordon(&k, &o.name)?;
    rep.status(format_args!("cordoned {}", o.name));
    let drained = node::drain(&k, &o.name, o.force, o.timeout, &|m| rep.status(m))?;
    rep.status(format_args!(
        "drained {}: {} pod(s) evicted, {} DaemonSet/mirror pod(s) left",
        o.name,
        drained.evicted.len(),
        drained.skipped.len()
    ));
    let mut etcd_member = None;
    if let Some(tls) = etcd_ctx {
        // membership may have changed during the drain: decide again on fresh facts
        let view = EtcdView::load(&k, &tls).context("reading etcd's members")?;
        if let Some(t) = view.member_of(&o.name).cloned() {
            view.check(Some(&t))?;
            view.remove(&t)?;
            rep.status(format_args!("removed etcd member {} ({})", t.hex_id(), o.name));
            etcd_member = Some(t.hex_id());
        }
    }
    node::delete(&k, &o.name)?;
    rep.status(format_args!("deleted Node {}; power its machine off", o.name));
    Ok(Removed { drained, etcd_member })
}
