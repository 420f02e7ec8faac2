//! Node operations of `imgbuild node remove`: read a Node, cordon it, drain it through
//! the Eviction API the way `kubectl drain` does (DaemonSet and mirror pods stay, a
//! PodDisruptionBudget that forbids an eviction now — 429 — is waited for within a
//! deadline), and delete it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Client, KubeError, ObjectMeta};

/// kubectl's annotation on the API copy of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// kubeadm's control-plane node label.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSpec {
    #[serde(default)]
    pub unschedulable: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default)]
    pub node_info: NodeInfo,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    #[serde(default)]
    pub kubelet_version: String,
}

impl Node {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
    pub fn is_control_plane(&self) -> bool {
        self.metadata.labels.contains_key(CONTROL_PLANE_LABEL)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: String,
}

impl Pod {
    fn ns_name(&self) -> (String, String) {
        (
            self.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }
    fn controller(&self) -> Option<&super::OwnerReference> {
        self.metadata.owner_references.iter().find(|o| o.controller == Some(true))
    }
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

pub fn get(c: &Client, name: &str) -> Result<Node, KubeError> {
    c.get(&format!("reading Node {name}"), &format!("/api/v1/nodes/{name}"))
}

pub fn list(c: &Client) -> Result<Vec<Node>, KubeError> {
    Ok(c.get::<List<Node>>("listing Nodes", "/api/v1/nodes")?.items)
}

/// Pods in `namespace` matching an equality-based label selector (`k=v,k2=v2`).
pub fn pods_by_label(c: &Client, namespace: &str, selector: &str) -> Result<Vec<Pod>, KubeError> {
    let q = selector.replace('=', "%3D").replace(',', "%2C");
    let path = format!("/api/v1/namespaces/{namespace}/pods?labelSelector={q}");
    Ok(c.get::<List<Pod>>(&format!("listing pods {selector} in {namespace}"), &path)?.items)
}

/// Mark the Node unschedulable (`kubectl cordon`).
pub fn cordon(c: &Client, name: &str) -> Result<(), KubeError> {
    c.merge_patch::<_, serde_json::Value>(
        &format!("cordoning Node {name}"),
        &format!("/api/v1/nodes/{name}"),
        &serde_json::json!({"spec": {"unschedulable": true}}),
    )
    .map(|_| ())
}

pub fn delete(c: &Client, name: &str) -> Result<(), KubeError> {
    c.delete(&format!("deleting Node {name}"), &format!("/api/v1/nodes/{name}"))
}

/// `policy/v1 Eviction`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Eviction {
    api_version: &'static str,
    kind: &'static str,
    metadata: ObjectMeta,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Api(#[from] KubeError),
    #[error("node {node}: {pods} declare no controller (nothing would recreate them elsewhere); pass --force to delete them with the node")]
    Unmanaged { node: String, pods: String },
    #[error("node {node}: {what} within {secs}s: {pods}")]
    Timeout { node: String, what: &'static str, secs: u64, pods: String },
}

impl crate::exit::Classify for DrainError {
    fn code(&self) -> crate::exit::Code {
        match self {
            DrainError::Api(e) => e.code(),
            _ => crate::exit::Code::Runtime,
        }
    }
}

/// What a drain did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// `namespace/name` of every pod evicted.
    pub evicted: Vec<String>,
    /// DaemonSet and mirror pods left in place, as kubectl drain leaves them.
    pub skipped: Vec<String>,
}

/// Evict every pod on `node` except DaemonSet and mirror pods, and wait until they
/// are gone. An eviction a PodDisruptionBudget forbids (429) is retried, backing off
/// from 1 s to 5 s (kubectl's interval), until `deadline`; unmanaged pods are refused
/// unless `force`. `progress` hears each step.
pub fn drain(
    c: &Client,
    node: &str,
    force: bool,
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> Result<Drained, DrainError> {
    let deadline = Instant::now() + timeout;
    let path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}");
    let pods = c.get::<List<Pod>>(&format!("listing the pods on {node}"), &path)?.items;
    let mut out = Drained::default();
    let mut todo = Vec::new();
    let mut unmanaged = Vec::new();
    for p in pods {
        let (ns, name) = p.ns_name();
        let id = format!("{ns}/{name}");
        if p.metadata.annotations.contains_key(MIRROR_ANNOTATION)
            || p.controller().is_some_and(|o| o.kind == "DaemonSet")
        {
            out.skipped.push(id);
            continue;
        }
        // finished pods hold nothing worth moving; kubectl deletes them too
        if p.controller().is_none() && !matches!(p.status.phase.as_str(), "Succeeded" | "Failed") {
            unmanaged.push(id.clone());
        }
        todo.push(p);
    }
    if !unmanaged.is_empty() && !force {
        return Err(DrainError::Unmanaged { node: node.into(), pods: unmanaged.join(", ") });
    }
    let mut waiting: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for p in &todo {
        let (ns, name) = p.ns_name();
        let id = format!("{ns}/{name}");
        let ev = Eviction {
            api_version: "policy/v1",
            kind: "Eviction",
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
        };
        let mut delay = Duration::from_secs(1);
        loop {
            let r = c.create::<_, serde_json::Value>(
                &format!("evicting pod {id}"),
                &format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"),
                &ev,
            );
            match r {
                Ok(_) => break,
                Err(KubeError::Api { code: 404, .. }) => break,
                Err(KubeError::Api { code: 429, message, .. }) => {
                    if Instant::now() + delay > deadline {
                        return Err(DrainError::Timeout {
                            node: node.into(),
                            what: "a PodDisruptionBudget kept forbidding the eviction",
                            secs: timeout.as_secs(),
                            pods: format!("{id} ({message})"),
                        });
                    }
                    progress(&format!(
                        "{id}: eviction not allowed yet ({message}); retrying in {}s",
                        delay.as_secs()
                    ));
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        progress(&format!("evicted {id}"));
        out.evicted.push(id.clone());
        waiting.insert(id, (format!("/api/v1/namespaces/{ns}/pods/{name}"), p.metadata.uid.clone()));
    }
    // an evicted pod lingers for its grace period; the drain is done when it is gone
    // (or replaced by a new pod of that name, which has another uid)
    while !waiting.is_empty() {
        let mut gone = Vec::new();
        for (id, (path, uid)) in &waiting {
            match c.get::<Pod>(&format!("reading pod {id}"), path) {
                Err(KubeError::Api { code: 404, .. }) => gone.push(id.clone()),
                Ok(p) if p.metadata.uid != *uid => gone.push(id.clone()),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for id in gone {
            waiting.remove(&id);
        }
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(DrainError::Timeout {
                node: node.into(),
                what: "evicted pods did not terminate",
                secs: timeout.as_secs(),
                pods: waiting.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(out)
}
