//! Day-2 operations against a REAL etcd (Debian's etcd-server, TLS with certificates
//! signed by the cluster's own etcd CA, one process per member on loopback addresses)
//! and the loopback HTTPS Kubernetes API fake (tests/it/common/http.rs) following the API
//! reference for Nodes, Pods and the Eviction subresource:
//! - `cluster backup` through imgbuild's offline-signed etcd client certificate, the
//!   snapshot accepted by `etcdctl snapshot status`, restored into a new data directory
//!   that a new etcd serves the key from;
//! - `node remove`: cordon, eviction (PDB 429 waited for; DaemonSet and mirror pods
//!   left), etcd member removal with the quorum check, Node delete — requests checked
//!   field by field.

use crate::common;

use crate::common::{ok, stderr};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::http::{Fake, Request, Response, Tls};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn tools_present() -> bool {
    ["etcd", "etcdctl", "openssl", "curl", "setsid"].into_iter().all(common::tool)
}

fn sign(dir: &Path, ca: &Path, ca_name: &str, subject: &str, ext: &str) -> (PathBuf, PathBuf) {
    common::openssl_sign(
        dir,
        &ca.join(format!("{ca_name}.crt")),
        &ca.join(format!("{ca_name}.key")),
        subject,
        ext,
        1,
    )
}

/// A cluster (`cluster init`) and the etcd members started for it.
struct World {
    t: tempfile::TempDir,
    net: String,
    /// keeps `net` this process's own (see `common::loopback_net`)
    _net_lock: fs::File,
    etcds: Mutex<BTreeMap<String, Child>>,
}

impl World {
    fn new(net_index: u8) -> World {
        let t = tempfile::tempdir().unwrap();
        let (net, _net_lock) = common::loopback_net(90 + net_index);
        common::cluster_init(t.path().join("c"))
            .name("et")
            .endpoint("127.0.0.1:6443")
            .nodes(3, 1)
            .external_lb()
            .ok();
        World { t, net, _net_lock, etcds: Mutex::default() }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.t.path().join(rel)
    }
    fn yaml(&self) -> PathBuf {
        self.p("c/cluster.yaml")
    }
    fn secrets(&self) -> PathBuf {
        self.p("c/secrets")
    }
    fn ip(&self, i: u32) -> String {
        format!("{}.{}", self.net, 10 + i)
    }
    fn url(&self, i: u32) -> String {
        format!("https://{}:2379", self.ip(i))
    }

    /// etcd's serving/peer certificate for member `i` (kubeadm's etcd/server + etcd/peer
    /// in one: both usages, the member's IP).
    fn member_cert(&self, i: u32) -> (PathBuf, PathBuf) {
        let d = self.p(&format!("pki/member-{i}"));
        if d.join("crt.pem").exists() {
            return (d.join("crt.pem"), d.join("key.pem"));
        }
        let ext = format!(
            "subjectAltName=IP:{},DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n",
            self.ip(i)
        );
        sign(&d, &self.secrets(), "etcd-ca", &format!("/CN=et-cp-{i}"), &ext)
    }

    /// Start member `i` of an `initial`-member cluster (members 1..=initial), data in `data`.
    fn start_etcd(&self, i: u32, cluster: &[(String, u32)], data: &Path, state: &str) {
        let (crt, key) = self.member_cert(i);
        let ca = self.secrets().join("etcd-ca.crt");
        let initial: Vec<String> =
            cluster.iter().map(|(n, j)| format!("{n}=https://{}:2380", self.ip(*j))).collect();
        let name = cluster.iter().find(|(_, j)| *j == i).unwrap().0.clone();
        let log = fs::File::create(self.p(&format!("etcd-{i}.log"))).unwrap();
        let child = Command::new("etcd")
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", self.url(i)))
            .arg(format!("--advertise-client-urls={}", self.url(i)))
            .arg(format!("--listen-peer-urls=https://{}:2380", self.ip(i)))
            .arg(format!("--initial-advertise-peer-urls=https://{}:2380", self.ip(i)))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--cert-file={}", crt.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg("--client-cert-auth=true")
            .arg(format!("--trusted-ca-file={}", ca.display()))
            .arg(format!("--peer-cert-file={}", crt.display()))
            .arg(format!("--peer-key-file={}", key.display()))
            .arg("--peer-client-cert-auth=true")
            .arg(format!("--peer-trusted-ca-file={}", ca.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.etcds.lock().unwrap().insert(format!("{i}"), child);
    }

    fn stop_etcd(&self, i: u32) {
        if let Some(mut c) = self.etcds.lock().unwrap().remove(&format!("{i}")) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Real etcdctl against member `i`, authenticated with member `i`'s certificate.
    fn etcdctl(&self, i: u32, args: &[&str]) -> Output {
        let (crt, key) = self.member_cert(i);
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url(i)))
            .arg(format!("--cacert={}", self.secrets().join("etcd-ca.crt").display()))
            .arg(format!("--cert={}", crt.display()))
            .arg(format!("--key={}", key.display()))
            .arg("--dial-timeout=2s")
            .args(args)
            .output()
            .unwrap()
    }

    fn wait_healthy(&self, i: u32) {
        let t0 = Instant::now();
        loop {
            if self.etcdctl(i, &["endpoint", "health"]).status.success() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "etcd {i} did not become healthy: {}",
                fs::read_to_string(self.p(&format!("etcd-{i}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Members 1..=n, started and healthy.
    fn etcd_cluster(&self, n: u32) -> Vec<(String, u32)> {
        let members: Vec<(String, u32)> = (1..=n).map(|i| (format!("et-cp-{i}"), i)).collect();
        for i in 1..=n {
            self.start_etcd(i, &members, &self.p(&format!("etcd-data-{i}")), "new");
        }
        for i in 1..=n {
            self.wait_healthy(i);
        }
        members
    }

    /// Member names etcd lists (via member `via`).
    fn member_names(&self, via: u32) -> Vec<String> {
        let o = self.etcdctl(via, &["member", "list", "-w", "json"]);
        ok(&o);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut n: Vec<String> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap_or("").to_string())
            .collect();
        n.sort();
        n
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut *self.etcds.lock().unwrap()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn backup_is_a_valid_snapshot_that_restores() {
    if !tools_present() {
        return;
    }
    let w = World::new(1);
    w.etcd_cluster(1);
    ok(&w.etcdctl(1, &["put", "/registry/demo/key", "hello from before the disaster"]));

    // the first endpoint is down: the next one is asked; nothing of the attempt remains
    let out = w.p("backups/snap.db");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = common::bin()
        .args(["cluster", "backup", "--cluster"])
        .arg(w.yaml())
        .args(["--endpoint", &format!("https://{}:2379", w.ip(7)), "--endpoint", &w.url(1), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    ok(&o);
    let bytes = fs::read(&out).unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(stdout, format!("{}  {}\n", hex::encode(Sha256::digest(&bytes)), out.display()));
    assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(stderr(&o).contains(&w.ip(7)), "the dead endpoint is reported: {}", stderr(&o));
    let leftovers: Vec<_> =
        fs::read_dir(out.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // what etcd's own tools say of it
    let st = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&out)
        .output()
        .unwrap();
    ok(&st);
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(st["totalKey"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["revision"].as_u64().unwrap() >= 2, "{st}");

    // restore into a new data directory as a new single-member cluster, serve it, read the key
    let restored = w.p("restored");
    let peer = format!("https://{}:2380", w.ip(2));
    let r = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&out)
        .arg(format!("--data-dir={}", restored.display()))
        .args([
            "--name",
            "et-cp-2",
            "--initial-cluster",
            &format!("et-cp-2={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .output()
        .unwrap();
    ok(&r);
    w.stop_etcd(1);
    w.start_etcd(2, &[("et-cp-2".into(), 2)], &restored, "new");
    w.wait_healthy(2);
    let g = w.etcdctl(2, &["get", "/registry/demo/key", "--print-value-only"]);
    ok(&g);
    assert_eq!(String::from_utf8_lossy(&g.stdout).trim(), "hello from before the disaster");
    assert_eq!(w.member_names(2), vec!["et-cp-2"]);
}

#[test]
fn backup_refuses_an_etcd_of_another_cluster() {
    if !tools_present() {
        return;
    }
    let w = World::new(2);
    w.etcd_cluster(1);
    // another cluster's secrets: its etcd CA neither trusts our etcd nor is trusted by it
    let other = w.p("other");
    common::cluster_init(&other).name("ot").endpoint("127.0.0.1:6443").nodes(1, 0).ok();
    let out = w.p("snap.db");
    let o = common::bin()
        .args(["cluster", "backup", "--cluster"])
        .arg(other.join("cluster.yaml"))
        .args(["--endpoint", &w.url(1), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("TLS") || stderr(&o).contains("certificate"), "{}", stderr(&o));
    assert!(!out.exists());
    // http:// is refused as bad input before anything is dialled
    let o = common::bin()
        .args(["cluster", "backup", "--cluster"])
        .arg(w.yaml())
        .args(["--endpoint", "http://127.0.0.1:2379", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("only https://"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------
// The Kubernetes API fake for node removal.

fn status(code: u16, reason: &str, message: &str) -> Response {
    Response::json(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn success(code: u16) -> Response {
    Response::json(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code}),
    )
}

/// The cluster the fake serves: Nodes, Pods (with how many evictions each pod's
/// PodDisruptionBudget still refuses), the etcd static pods.
#[derive(Default)]
struct Store {
    nodes: BTreeMap<String, Value>,
    /// `ns/name` -> (pod, evictions still refused with 429)
    pods: BTreeMap<String, (Value, u32)>,
    /// member names etcd listed when the Node was deleted (the member must go first)
    members_at_delete: Vec<String>,
    /// ConfigMaps, DaemonSets, Deployments by API path
    objects: BTreeMap<String, Value>,
}

/// RFC 6902 `test` and `replace` (what a guarded image update uses): all or nothing.
fn json_patch(obj: &Value, ops: &Value) -> Result<Value, String> {
    let mut out = obj.clone();
    for op in ops.as_array().ok_or("a JSON patch is an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        let target = out.pointer_mut(path).ok_or(format!("path {path} does not exist"))?;
        match op["op"].as_str() {
            Some("test") if *target == op["value"] => {}
            Some("test") => return Err(format!("testing value {path} failed")),
            Some("replace") => *target = op["value"].clone(),
            o => return Err(format!("unsupported op {o:?}")),
        }
    }
    Ok(out)
}

fn node_obj(name: &str, cp: bool) -> Value {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if cp {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
    }
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels},
           "spec": {}, "status": {"nodeInfo": {"kubeletVersion": "v1.30.3"}}})
}

fn pod_obj(ns: &str, name: &str, node: &str, owner: Option<&str>, annotations: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "annotations": annotations},
        "spec": {"nodeName": node}, "status": {"phase": "Running"}});
    if let Some(kind) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": format!("{name}-owner"), "uid": "o", "controller": true}]);
    }
    p
}

/// Nodes, Pods, Eviction as the API reference describes them (core/v1 Node read/patch/
/// delete, Pod list with fieldSelector/labelSelector, policy/v1 Eviction create: body
/// name and namespace must match the path, 429 TooManyRequests while a disruption
/// budget forbids it, 201 Success and the pod gone after), for an admin client
/// certificate of the cluster CA only.
fn api(
    store: Arc<Mutex<Store>>,
    w: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
) -> impl Fn(&Request) -> Response {
    move |r: &Request| {
        let Some(der) = r.client_certs.first() else { return status(401, "Unauthorized", "Unauthorized") };
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        if !c.subject().iter_organization().any(|o| o.as_str() == Ok("kubeadm:cluster-admins")) {
            return status(403, "Forbidden", "forbidden");
        }
        let mut st = store.lock().unwrap();
        let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
        let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (r.method.as_str(), seg.as_slice()) {
            ("GET", ["api", "v1", "nodes", name]) => match st.nodes.get(*name) {
                Some(n) => Response::json(200, n),
                None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            },
            ("PATCH", ["api", "v1", "nodes", name]) => {
                if r.header("Content-Type") != Some("application/merge-patch+json") {
                    return status(415, "UnsupportedMediaType", "unsupported patch type");
                }
                let patch: Value = serde_json::from_slice(&r.body).unwrap();
                let Some(n) = st.nodes.get_mut(*name) else { return status(404, "NotFound", "not found") };
                if let Some(u) = patch["spec"]["unschedulable"].as_bool() {
                    n["spec"]["unschedulable"] = json!(u);
                }
                Response::json(200, n)
            }
            ("DELETE", ["api", "v1", "nodes", name]) => {
                if st.nodes.remove(*name).is_none() {
                    return status(404, "NotFound", "not found");
                }
                st.members_at_delete = w();
                success(200)
            }
            ("GET", ["api", "v1", "nodes"]) => {
                let items: Vec<Value> = st.nodes.values().cloned().collect();
                Response::json(
                    200,
                    &json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items}),
                )
            }
            ("GET", [..]) if st.objects.contains_key(path) => Response::json(200, &st.objects[path]),
            ("PATCH", [..]) if st.objects.contains_key(path) => {
                let obj = st.objects[path].clone();
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                let new = match r.header("Content-Type") {
                    // a ConfigMap update: merge patch, optimistic concurrency on resourceVersion
                    Some("application/merge-patch+json") => {
                        let rv = &body["metadata"]["resourceVersion"];
                        if !rv.is_null() && *rv != obj["metadata"]["resourceVersion"] {
                            return status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again");
                        }
                        let mut o = obj.clone();
                        for (k, v) in body["data"].as_object().unwrap() {
                            o["data"][k] = v.clone();
                        }
                        o
                    }
                    Some("application/json-patch+json") => match json_patch(&obj, &body) {
                        Ok(o) => o,
                        Err(m) => return status(422, "Invalid", &m),
                    },
                    _ => return status(415, "UnsupportedMediaType", "unsupported patch type"),
                };
                let mut new = new;
                let rv: u64 = obj["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
                new["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
                st.objects.insert(path.to_string(), new.clone());
                Response::json(200, &new)
            }
            ("GET", ["api", "v1", "pods"]) => {
                let node =
                    query.strip_prefix("fieldSelector=spec.nodeName%3D").expect("a nodeName field selector");
                let items: Vec<Value> = st
                    .pods
                    .values()
                    .filter(|(p, _)| p["spec"]["nodeName"] == node)
                    .map(|(p, _)| p.clone())
                    .collect();
                Response::json(
                    200,
                    &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
                )
            }
            ("GET", ["api", "v1", "namespaces", "kube-system", "pods"]) => {
                assert_eq!(query, "labelSelector=component%3Detcd%2Ctier%3Dcontrol-plane");
                let items: Vec<Value> = st
                    .pods
                    .values()
                    .filter(|(p, _)| p["metadata"]["labels"]["component"] == "etcd")
                    .map(|(p, _)| p.clone())
                    .collect();
                Response::json(
                    200,
                    &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
                )
            }
            ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
                match st.pods.get(&format!("{ns}/{name}")) {
                    Some((p, _)) => Response::json(200, p),
                    None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
                }
            }
            ("POST", ["api", "v1", "namespaces", ns, "pods", name, "eviction"]) => {
                let ev: Value = serde_json::from_slice(&r.body).unwrap();
                if ev["apiVersion"] != "policy/v1"
                    || ev["kind"] != "Eviction"
                    || ev["metadata"]["name"] != *name
                    || !(ev["metadata"]["namespace"].is_null() || ev["metadata"]["namespace"] == *ns)
                {
                    return status(400, "BadRequest", "name in URL does not match name in Eviction object");
                }
                let key = format!("{ns}/{name}");
                match st.pods.get_mut(&key) {
                    None => status(404, "NotFound", "not found"),
                    Some((_, refused)) if *refused > 0 => {
                        *refused -= 1;
                        status(
                            429,
                            "TooManyRequests",
                            "Cannot evict pod as it would violate the pod's disruption budget.",
                        )
                    }
                    Some(_) => {
                        st.pods.remove(&key);
                        success(201)
                    }
                }
            }
            _ => status(404, "NotFound", "the server could not find the requested resource"),
        }
    }
}

impl World {
    fn server_tls(&self) -> Tls {
        let (crt, key) = sign(
            &self.p("apiserver"),
            &self.secrets(),
            "ca",
            "/CN=kube-apiserver",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        Tls {
            cert_chain_pem: fs::read_to_string(crt).unwrap(),
            key_pem: fs::read_to_string(key).unwrap(),
            client_ca_pem: Some(fs::read_to_string(self.secrets().join("ca.crt")).unwrap()),
        }
    }

    fn kubeconfig(&self, server: &str) -> PathBuf {
        let o = common::bin().args(["cluster", "kubeconfig", "--cluster"]).arg(self.yaml()).output().unwrap();
        ok(&o);
        let k = String::from_utf8_lossy(&o.stdout).replace("https://127.0.0.1:6443", server);
        let p = self.p("admin.conf");
        fs::write(&p, k).unwrap();
        p
    }
}

fn remove(kubeconfig: &Path, cluster: Option<&Path>, name: &str, extra: &[&str]) -> Output {
    let mut c = common::bin();
    c.args(["node", "remove", name, "--kubeconfig"]).arg(kubeconfig).args(extra);
    if let Some(y) = cluster {
        c.arg("--cluster").arg(y);
    }
    c.output().unwrap()
}

#[test]
fn node_remove_drains_removes_the_etcd_member_and_keeps_quorum() {
    if !tools_present() {
        return;
    }
    let w = Arc::new(World::new(3));
    w.etcd_cluster(3);
    let store = Arc::new(Mutex::new(Store::default()));
    {
        let mut st = store.lock().unwrap();
        for i in 1..=3 {
            let n = format!("et-cp-{i}");
            st.nodes.insert(n.clone(), node_obj(&n, true));
            let mut etcd = pod_obj(
                "kube-system",
                &format!("etcd-{n}"),
                &n,
                None,
                json!({
                "kubernetes.io/config.mirror": "abc",
                "kubeadm.kubernetes.io/etcd.advertise-client-urls": w.url(i)}),
            );
            etcd["metadata"]["labels"] = json!({"component": "etcd", "tier": "control-plane"});
            st.pods.insert(format!("kube-system/etcd-{n}"), (etcd, 0));
            st.pods.insert(
                format!("kube-system/kube-proxy-{i}"),
                (pod_obj("kube-system", &format!("kube-proxy-{i}"), &n, Some("DaemonSet"), json!({})), 0),
            );
        }
        st.nodes.insert("et-worker-1".into(), node_obj("et-worker-1", false));
        // a Deployment's pod whose budget refuses two evictions before allowing one
        st.pods.insert(
            "default/web-1".into(),
            (pod_obj("default", "web-1", "et-cp-2", Some("ReplicaSet"), json!({})), 2),
        );
        st.pods
            .insert("default/bare".into(), (pod_obj("default", "bare", "et-worker-1", None, json!({})), 0));
    }
    let wm = w.clone();
    let server = Fake::api(Some(w.server_tls()), api(store.clone(), Arc::new(move || wm.member_names(1))));
    let kc = w.kubeconfig(&server.base());
    let y = w.yaml();

    // a control plane without the etcd CA: refused as bad input before any change
    let o = remove(&kc, None, "et-cp-3", &[]);
    common::exits_with(&o, 2, "--cluster");
    // member 2 dies: removing member 3 would leave 1 and 2 with one answering
    w.stop_etcd(2);
    let before = server.requests().len();
    let o = remove(&kc, Some(&y), "et-cp-3", &[]);
    common::exits_with(&o, 1, "would break etcd's quorum");
    assert!(server.requests()[before..].iter().all(|r| r.method == "GET"), "a refusal changes nothing");
    assert_eq!(w.member_names(1), vec!["et-cp-1", "et-cp-2", "et-cp-3"]);

    // the dead member's node goes: drained (the budget waited for), member removed, Node deleted
    let before = server.requests().len();
    let o = remove(&kc, Some(&y), "et-cp-2", &["--timeout", "60"]);
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "et-cp-2\n");
    let reqs: Vec<Request> = server.requests()[before..].to_vec();
    let writes: Vec<(&str, &str)> =
        reqs.iter().filter(|r| r.method != "GET").map(|r| (r.method.as_str(), r.path.as_str())).collect();
    assert_eq!(
        writes,
        vec![
            ("PATCH", "/api/v1/nodes/et-cp-2"),
            ("POST", "/api/v1/namespaces/default/pods/web-1/eviction"),
            ("POST", "/api/v1/namespaces/default/pods/web-1/eviction"),
            ("POST", "/api/v1/namespaces/default/pods/web-1/eviction"),
            ("DELETE", "/api/v1/nodes/et-cp-2"),
        ],
        "DaemonSet and mirror pods are not evicted"
    );
    let patch = reqs.iter().find(|r| r.method == "PATCH").unwrap();
    assert_eq!(patch.header("Content-Type"), Some("application/merge-patch+json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&patch.body).unwrap(),
        json!({"spec": {"unschedulable": true}})
    );
    let ev = reqs.iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(ev.header("Content-Type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&ev.body).unwrap(),
        json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web-1", "namespace": "default"}})
    );
    {
        let st = store.lock().unwrap();
        assert_eq!(st.members_at_delete, vec!["et-cp-1", "et-cp-3"], "the etcd member goes before the Node");
        assert!(!st.nodes.contains_key("et-cp-2"));
        assert!(
            st.pods.contains_key("kube-system/kube-proxy-2")
                && st.pods.contains_key("kube-system/etcd-et-cp-2")
        );
    }
    assert_eq!(w.member_names(1), vec!["et-cp-1", "et-cp-3"]);

    // two healthy voters: removing one leaves one that answers
    ok(&remove(&kc, Some(&y), "et-cp-3", &[]));
    assert_eq!(w.member_names(1), vec!["et-cp-1"]);
    // never the last voter
    let o = remove(&kc, Some(&y), "et-cp-1", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("only voting member"), "{}", stderr(&o));
    assert!(store.lock().unwrap().nodes.contains_key("et-cp-1"));

    // a worker needs no etcd; a pod without a controller needs --force, like kubectl drain
    let o = remove(&kc, None, "et-worker-1", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("default/bare") && stderr(&o).contains("--force"), "{}", stderr(&o));
    ok(&remove(&kc, None, "et-worker-1", &["--force"]));
    assert!(!store.lock().unwrap().nodes.contains_key("et-worker-1"));
    // an unknown node is bad input
    let o = remove(&kc, None, "nope", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

const CLUSTER_CONFIGURATION: &str = "apiServer:\n  certSANs:\n  - 127.0.0.1\napiVersion: kubeadm.k8s.io/v1beta3\nclusterName: et\ncontrolPlaneEndpoint: 127.0.0.1:6443\nimageRepository: registry.k8s.io\nkind: ClusterConfiguration\nkubernetesVersion: v1.30.3\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n";

fn workload(kind: &str, name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": "kube-system", "resourceVersion": "10"},
           "spec": {"template": {"spec": {"containers": [
               {"name": "sidecar", "image": "registry.k8s.io/pause:3.9"},
               {"name": name, "image": image}]}}}})
}

fn upgrade(kc: &Path, to: &str, extra: &[&str]) -> Output {
    common::bin()
        .args(["cluster", "upgrade", "--to", to, "--kubeconfig"])
        .arg(kc)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn cluster_upgrade_updates_the_cluster_objects_in_order_and_enforces_skew() {
    if !tools_present() {
        return;
    }
    let w = Arc::new(World::new(4));
    let store = Arc::new(Mutex::new(Store::default()));
    {
        let mut st = store.lock().unwrap();
        for (n, cp) in [("et-cp-1", true), ("et-cp-2", true), ("et-worker-1", false)] {
            st.nodes.insert(n.into(), node_obj(n, cp));
        }
        st.objects.insert(
            "/api/v1/namespaces/kube-system/configmaps/kubeadm-config".into(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "kubeadm-config", "namespace": "kube-system", "resourceVersion": "5"},
                   "data": {"ClusterConfiguration": CLUSTER_CONFIGURATION}}),
        );
        st.objects.insert(
            "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy".into(),
            workload("DaemonSet", "kube-proxy", "registry.k8s.io/kube-proxy:v1.30.3"),
        );
        st.objects.insert(
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns".into(),
            workload("Deployment", "coredns", "registry.k8s.io/coredns/coredns:v1.11.1"),
        );
    }
    let server = Fake::api(Some(w.server_tls()), api(store.clone(), Arc::new(Vec::new)));
    let kc = w.kubeconfig(&server.base());

    // skew: no skipped minor, no downgrade, no malformed version — and nothing changes
    for (to, msg) in [("v1.32.0", "one minor at a time"), ("v1.30.1", "downgrade")] {
        let o = upgrade(&kc, to, &[]);
        assert_eq!(o.status.code(), Some(1), "{to}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{to}: {}", stderr(&o));
    }
    let o = upgrade(&kc, "1.31", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(server.requests().iter().all(|r| r.method == "GET"));

    // before the roll: the ClusterConfiguration only (kube-proxy waits for the control planes)
    let o = upgrade(&kc, "v1.31.0", &["--coredns-tag", "v1.11.3"]);
    ok(&o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "et-cp-1\tcontrol-plane\tv1.30.3\net-cp-2\tcontrol-plane\tv1.30.3\net-worker-1\tworker\tv1.30.3\n"
    );
    let writes: Vec<Request> = server.requests().into_iter().filter(|r| r.method != "GET").collect();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].path, "/api/v1/namespaces/kube-system/configmaps/kubeadm-config");
    assert_eq!(writes[0].header("Content-Type"), Some("application/merge-patch+json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&writes[0].body).unwrap(),
        json!({"metadata": {"resourceVersion": "5"},
               "data": {"ClusterConfiguration": CLUSTER_CONFIGURATION.replace("v1.30.3", "v1.31.0")}})
    );
    assert!(stderr(&o).contains("kube-proxy v1.31.0: after every control plane"), "{}", stderr(&o));

    // the control planes were replaced: kube-proxy and CoreDNS follow, guarded JSON patches
    for n in ["et-cp-1", "et-cp-2"] {
        store.lock().unwrap().nodes.get_mut(n).unwrap()["status"]["nodeInfo"]["kubeletVersion"] =
            json!("v1.31.0");
    }
    let before = server.requests().len();
    let o = upgrade(&kc, "v1.31.0", &["--coredns-tag", "v1.11.3"]);
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "et-worker-1\tworker\tv1.30.3\n");
    let writes: Vec<Request> =
        server.requests()[before..].iter().filter(|r| r.method != "GET").cloned().collect();
    let paths: Vec<&str> = writes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy",
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
        ]
    );
    assert_eq!(writes[0].header("Content-Type"), Some("application/json-patch+json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&writes[0].body).unwrap(),
        json!([
            {"op": "test", "path": "/spec/template/spec/containers/1/name", "value": "kube-proxy"},
            {"op": "test", "path": "/spec/template/spec/containers/1/image", "value": "registry.k8s.io/kube-proxy:v1.30.3"},
            {"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": "registry.k8s.io/kube-proxy:v1.31.0"},
        ])
    );
    let st = store.lock().unwrap();
    assert_eq!(
        st.objects["/apis/apps/v1/namespaces/kube-system/deployments/coredns"]["spec"]["template"]["spec"]
            ["containers"][1]["image"],
        "registry.k8s.io/coredns/coredns:v1.11.3"
    );
    assert_eq!(
        st.objects["/api/v1/namespaces/kube-system/configmaps/kubeadm-config"]["data"]
            ["ClusterConfiguration"],
        CLUSTER_CONFIGURATION.replace("v1.30.3", "v1.31.0")
    );
    drop(st);
    // a third run has nothing left to change
    let before = server.requests().len();
    ok(&upgrade(&kc, "v1.31.0", &["--coredns-tag", "v1.11.3"]));
    assert!(server.requests()[before..].iter().all(|r| r.method == "GET"));
}

/// A control plane's root for the etcd-snapshot script: the etcd CA and the client
/// certificate kubeadm signs for the API server (a client of the etcd CA).
fn snapshot_node(w: &World) -> PathBuf {
    let root = w.p("node");
    let pki = root.join("etc/kubernetes/pki");
    fs::create_dir_all(pki.join("etcd")).unwrap();
    fs::copy(w.secrets().join("etcd-ca.crt"), pki.join("etcd/ca.crt")).unwrap();
    let (crt, key) = sign(
        &w.p("pki/apiserver-etcd-client"),
        &w.secrets(),
        "etcd-ca",
        "/O=system:masters/CN=kube-apiserver-etcd-client",
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
    );
    fs::copy(crt, pki.join("apiserver-etcd-client.crt")).unwrap();
    fs::copy(key, pki.join("apiserver-etcd-client.key")).unwrap();
    root
}

fn snapshot_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("image-files/control-plane/usr/libexec/imgbuild/etcd-snapshot")
}

/// The control planes' scheduled snapshot script (the image's etcd-snapshot), run
/// against a node root with kubeadm's etcd client certificate and a real etcd.
#[test]
fn scheduled_snapshot_saves_verifies_and_keeps_the_newest() {
    if !tools_present() {
        return;
    }
    let w = World::new(5);
    w.etcd_cluster(1);
    ok(&w.etcdctl(1, &["put", "k", "v"]));
    let root = snapshot_node(&w);
    // the files cloud-init writes on a control plane (rendered by imgbuild itself)
    let seeds = w.p("seeds");
    ok(&common::cloud_init_all(w.yaml(), &seeds));
    common::write_files_to(&fs::read_to_string(seeds.join("et-cp-1/user-data")).unwrap(), &root);
    assert_eq!(
        fs::read_to_string(root.join("etc/imgbuild/backup.env")).unwrap(),
        "IMGBUILD_BACKUP_RETENTION=7\nIMGBUILD_BACKUP_INTERVAL_HOURS=6\n"
    );
    fs::write(
        root.join("etc/imgbuild/backup.env"),
        "IMGBUILD_BACKUP_RETENTION=2\nIMGBUILD_BACKUP_INTERVAL_HOURS=1\n",
    )
    .unwrap();
    let script = snapshot_script();
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let run = |offset: u64| {
        Command::new("bash")
            .arg(&script)
            .env("IMGBUILD_ROOT", &root)
            .env("IMGBUILD_ETCD_ENDPOINT", w.url(1))
            .env("IMGBUILD_ETCDUTL", "etcdutl-not-installed")
            .env("IMGBUILD_NOW", (t0 + offset).to_string())
            .env("IMGBUILD_SNAPSHOT_TIMEOUT", "60")
            .output()
            .unwrap()
    };
    let dir = root.join("var/lib/imgbuild/etcd-snapshots");
    let snaps = || {
        let mut v: Vec<String> = fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let status = || -> Value {
        serde_json::from_str(&fs::read_to_string(root.join("var/lib/imgbuild/etcd-snapshot.json")).unwrap())
            .unwrap()
    };
    // not joined yet: nothing to snapshot
    let o = run(0);
    ok(&o);
    assert!(snaps().is_empty());
    fs::create_dir_all(root.join("var/lib/imgbuild")).unwrap();
    fs::write(root.join("var/lib/imgbuild/bootstrap.done"), "bootstrapped\n").unwrap();

    ok(&run(0));
    assert_eq!(snaps().len(), 1);
    let st = status();
    assert_eq!(st["result"], "ok", "{st}");
    assert!(st["revision"].as_u64().unwrap() >= 2 && st["total_keys"].as_u64().unwrap() >= 1, "{st}");
    let first = dir.join(&snaps()[0]);
    assert!(snaps()[0].starts_with("etcd-et-cp-1-"), "{:?}", snaps());
    assert_eq!(fs::metadata(&first).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    ok(&Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status"])
        .arg(&first)
        .output()
        .unwrap());
    // within the interval: nothing new; after it: one more, and only the newest two stay
    let o = run(1800);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to do"));
    assert_eq!(snaps().len(), 1);
    ok(&run(3600));
    ok(&run(7200));
    let kept = snaps();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(!dir.join(first.file_name().unwrap()).exists(), "the oldest goes");
    assert_eq!(status()["kept"], 2);
    // etcd down: a failure in the status and the exit code, no partial file
    w.stop_etcd(1);
    let o = run(20000);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(status()["result"], "failed");
    assert_eq!(snaps(), kept);
}

/// moto's S3 server with IAM authentication on (tests/it/s3/moto_s3.py): every request's
/// SigV4 signature is recomputed from the secret and checked. Required in CI (ci/test.sh
/// installs it), skipped with a note elsewhere.
struct S3Server {
    child: Child,
    python: String,
    port: u16,
    writer: (String, String),
    reader: (String, String),
}

impl S3Server {
    fn start(bucket: &str) -> Option<S3Server> {
        let python = std::env::var("IMGBUILD_MOTO_PYTHON").unwrap_or_else(|_| "python3".into());
        let has = Command::new(&python).args(["-c", "import moto.server, boto3, requests"]).output();
        if !has.is_ok_and(|o| o.status.success()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "{python} cannot import moto[server] (ci/test.sh installs it)"
            );
            eprintln!(
                "note: {python} has no moto[server] (pip install 'moto[server]'); S3 upload test SKIPPED"
            );
            return None;
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/s3/moto_s3.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["serve", bucket])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("moto_s3.py serve: {e}: {line:?}"));
        let pair = |k: &str| (v[k][0].as_str().unwrap().to_string(), v[k][1].as_str().unwrap().to_string());
        Some(S3Server {
            port: v["port"].as_u64().unwrap() as u16,
            writer: pair("writer"),
            reader: pair("reader"),
            child,
            python,
        })
    }

    /// `moto_s3.py get|list` signed with the reader's key pair.
    fn client(&self, args: &[&str]) -> Output {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/s3/moto_s3.py");
        let port = self.port.to_string();
        Command::new(&self.python)
            .arg(script)
            .arg(args[0])
            .args([port.as_str(), self.reader.0.as_str(), self.reader.1.as_str()])
            .args(&args[1..])
            .output()
            .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A verified snapshot is uploaded to a real S3 API (moto, signatures checked) at
/// `<prefix><file name>` with the snapshot's exact bytes; a wrong secret is refused by
/// the server, the script reports it in its exit code, output and status file and keeps
/// the local snapshot; no secret appears in curl's argv, the output or the status.
#[test]
fn scheduled_snapshot_uploads_to_s3_and_keeps_it_when_refused() {
    if !tools_present() {
        return;
    }
    let Some(s3) = S3Server::start("etcd-backups") else { return };
    let w = World::new(8);
    w.etcd_cluster(1);
    ok(&w.etcdctl(1, &["put", "k", "v"]));
    let root = snapshot_node(&w);
    let yaml = fs::read_to_string(w.yaml()).unwrap();
    fs::write(
        w.yaml(),
        format!(
            "{yaml}backups:\n  s3:\n    endpoint: http://127.0.0.1:{}\n    insecure_http: true\n    bucket: etcd-backups\n    region: us-east-1\n    prefix: prod/etcd\n",
            s3.port
        ),
    )
    .unwrap();
    let creds = w.secrets().join("backup-s3.yaml");
    fs::write(&creds, format!("access_key_id: {}\nsecret_access_key: {}\n", s3.writer.0, s3.writer.1))
        .unwrap();
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
    let seeds = w.p("seeds");
    let o = common::cloud_init_all(w.yaml(), &seeds);
    ok(&o);
    assert!(!format!("{o:?}").contains(&s3.writer.1));
    common::write_files_to(&fs::read_to_string(seeds.join("et-cp-1/user-data")).unwrap(), &root);
    fs::create_dir_all(root.join("var/lib/imgbuild")).unwrap();
    fs::write(root.join("var/lib/imgbuild/bootstrap.done"), "bootstrapped\n").unwrap();
    // curl as the script finds it on PATH, recording its argv (world-readable in /proc)
    let real_curl =
        String::from_utf8(Command::new("sh").args(["-c", "command -v curl"]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
    let bin = w.p("bin");
    fs::create_dir_all(&bin).unwrap();
    let argv = w.p("curl-argv");
    fs::write(
        bin.join("curl"),
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" >>'{}'\nexec '{real_curl}' \"$@\"\n", argv.display()),
    )
    .unwrap();
    fs::set_permissions(bin.join("curl"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let run = |offset: u64| {
        common::run_limited(
            Command::new("bash")
                .arg(snapshot_script())
                .env("PATH", &path)
                .env("IMGBUILD_ROOT", &root)
                .env("IMGBUILD_ETCD_ENDPOINT", w.url(1))
                .env("IMGBUILD_ETCDUTL", "etcdutl-not-installed")
                .env("IMGBUILD_NOW", (t0 + offset).to_string())
                .env("IMGBUILD_SNAPSHOT_TIMEOUT", "60")
                .env("IMGBUILD_S3_TIMEOUT", "20"),
            Duration::from_secs(120),
        )
    };
    let dir = root.join("var/lib/imgbuild/etcd-snapshots");
    let snaps = || {
        let mut v: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let status_text = || fs::read_to_string(root.join("var/lib/imgbuild/etcd-snapshot.json")).unwrap();
    let status = || -> Value { serde_json::from_str(&status_text()).unwrap() };

    let o = run(0);
    ok(&o);
    let st = status();
    assert_eq!((st["result"].as_str(), st["upload"].as_str()), (Some("ok"), Some("ok")), "{st}");
    let first = snaps();
    assert_eq!(first.len(), 1, "{first:?}");
    let key = format!("prod/etcd/{}", first[0]);
    assert_eq!(st["upload_key"], key.as_str());
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains(&format!("uploaded http://127.0.0.1:{}/etcd-backups/{key}", s3.port)));
    // the object holds the snapshot's exact bytes
    let got = w.p("downloaded.db");
    ok(&s3.client(&["get", "etcd-backups", &key, got.to_str().unwrap()]));
    assert_eq!(fs::read(&got).unwrap(), fs::read(dir.join(&first[0])).unwrap());

    // a wrong secret: the server refuses the signature; the new local snapshot stays
    let env = root.join("etc/imgbuild/backup-s3.env");
    // the last character changed: moto's random secrets end in any of 64 characters,
    // `x` among them, so no fixed replacement is always different
    let (head, last) = s3.writer.1.split_at(s3.writer.1.len() - 1);
    let wrong = format!("{head}{}", if last == "x" { "y" } else { "x" });
    assert_ne!(wrong, s3.writer.1);
    fs::write(
        &env,
        format!("IMGBUILD_S3_ACCESS_KEY_ID={}\nIMGBUILD_S3_SECRET_ACCESS_KEY={wrong}\n", s3.writer.0),
    )
    .unwrap();
    let o = run(7 * 3600);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    let st = status();
    assert_eq!(
        (st["result"].as_str(), st["upload"].as_str()),
        (Some("upload_failed"), Some("failed")),
        "{st}"
    );
    let msg = st["message"].as_str().unwrap();
    assert!(msg.contains("HTTP 403") && msg.contains("SignatureDoesNotMatch"), "{msg}");
    let now = snaps();
    assert_eq!(now.len(), 2, "the snapshot whose upload failed is kept: {now:?}");
    assert_eq!(st["file"].as_str().unwrap(), dir.join(&now[1]).to_str().unwrap());
    let listed = s3.client(&["list", "etcd-backups"]);
    ok(&listed);
    assert_eq!(String::from_utf8_lossy(&listed.stdout), format!("{key}\n"), "nothing else landed");
    assert!(String::from_utf8_lossy(&o.stdout).contains("upload failed (the local snapshot stays)"));

    // no secret in argv, output or status; the access key id goes through stdin too
    let recorded = fs::read_to_string(&argv).unwrap();
    assert!(recorded.contains("--aws-sigv4") && recorded.contains("aws:amz:us-east-1:s3"), "{recorded}");
    for secret in [&s3.writer.1, &wrong, &s3.writer.0] {
        assert!(!recorded.contains(secret.as_str()), "curl argv holds a credential: {recorded}");
        assert!(!status_text().contains(secret.as_str()));
        assert!(!format!("{o:?}").contains(secret.as_str()));
    }
}

/// The control planes' certificate renewal script (the image's certs-renew) on a node
/// root with certificates openssl signed from the cluster's CAs, one of them close to
/// expiry, and a kubeadm stand-in whose `certs renew all` re-signs them.
#[test]
fn certificates_close_to_expiry_are_renewed_and_static_pods_restarted() {
    if !tools_present() {
        return;
    }
    let w = World::new(6);
    let root = w.p("node");
    let k8s = root.join("etc/kubernetes");
    let pki = k8s.join("pki");
    fs::create_dir_all(pki.join("etcd")).unwrap();
    fs::create_dir_all(k8s.join("manifests")).unwrap();
    fs::create_dir_all(root.join("var/lib/imgbuild")).unwrap();
    fs::write(root.join("var/lib/imgbuild/bootstrap.done"), "bootstrapped\n").unwrap();
    let leaf = |name: &str, ca: &str, days: u32| {
        let (crt, key) = (w.secrets().join(format!("{ca}.crt")), w.secrets().join(format!("{ca}.key")));
        let (c, _) = common::openssl_sign(&w.p(&format!("certs/{name}")), &crt, &key, "/CN=x", "", days);
        fs::read_to_string(c).unwrap()
    };
    for (name, ca, days) in [
        ("apiserver", "ca", 10),
        ("apiserver-kubelet-client", "ca", 300),
        ("front-proxy-client", "front-proxy-ca", 300),
        ("etcd/server", "etcd-ca", 300),
    ] {
        fs::write(pki.join(format!("{name}.crt")), leaf(name, ca, days)).unwrap();
    }
    use base64::Engine;
    let admin = base64::engine::general_purpose::STANDARD.encode(leaf("admin", "ca", 300));
    fs::write(k8s.join("admin.conf"), format!("apiVersion: v1\nkind: Config\nusers:\n- name: a\n  user:\n    client-certificate-data: {admin}\n")).unwrap();
    for p in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        fs::write(k8s.join(format!("manifests/{p}.yaml")), format!("kind: Pod # {p}\n")).unwrap();
    }
    // kubeadm's `certs renew all`: every leaf re-signed for a year
    let standin = w.p("kubeadm");
    fs::write(
        &standin,
        "#!/bin/bash\nprintf '%s\\n' \"$*\" >>\"$STANDIN_LOG\"\n[ \"$RENEW\" = 1 ] || exit 0\n\
         for f in \"$IMGBUILD_ROOT\"/etc/kubernetes/pki/*.crt \"$IMGBUILD_ROOT\"/etc/kubernetes/pki/etcd/*.crt; do\n\
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=renewed -days 365 -keyout /dev/null -out \"$f\" 2>/dev/null\n\
         done\n",
    )
    .unwrap();
    fs::set_permissions(&standin, fs::Permissions::from_mode(0o755)).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("image-files/control-plane/usr/libexec/imgbuild/certs-renew");
    let log = w.p("kubeadm.log");
    let run = |renews: bool| {
        Command::new("bash")
            .arg(&script)
            .env("IMGBUILD_ROOT", &root)
            .env("IMGBUILD_KUBEADM", &standin)
            .env("IMGBUILD_STATIC_POD_WAIT", "0")
            .env("STANDIN_LOG", &log)
            .env("RENEW", if renews { "1" } else { "0" })
            .output()
            .unwrap()
    };
    let status = || -> Value {
        serde_json::from_str(&fs::read_to_string(root.join("var/lib/imgbuild/certs.json")).unwrap()).unwrap()
    };
    // a kubeadm that renews nothing: the script notices and fails
    let o = run(false);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(status()["result"], "failed");
    assert_eq!(status()["expiring"], "apiserver");
    // the real renewal: kubeadm called once, each static pod restarted, in order, manifests back
    let o = run(true);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    let restarts: Vec<&str> =
        out.lines().filter_map(|l| l.strip_prefix("imgbuild-certs-renew: restarted static pod ")).collect();
    assert_eq!(restarts, ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"], "{out}");
    for p in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        assert_eq!(
            fs::read_to_string(k8s.join(format!("manifests/{p}.yaml"))).unwrap(),
            format!("kind: Pod # {p}\n")
        );
    }
    assert_eq!(status()["result"], "renewed");
    assert_eq!(fs::read_to_string(&log).unwrap(), "certs renew all\ncerts renew all\n");
    // nothing close to expiry: nothing done
    let o = run(true);
    ok(&o);
    assert_eq!(status()["result"], "valid");
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 2);
}

/// cluster.yaml's `backups` section: validated with field path and line, like the rest.
#[test]
fn backups_section_errors_name_field_and_line() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("c");
    let y = common::cluster_init(&dir).name("bk").endpoint("127.0.0.1:6443").nodes(1, 0).ok();
    let base = fs::read_to_string(&y).unwrap();
    let line = base.lines().count() + 2;
    for (section, field) in [
        ("backups:\n  retention: 0\n", "backups.retention"),
        ("backups:\n  interval_hours: 500\n", "backups.interval_hours"),
        ("backups:\n  every: 3\n", "backups"),
    ] {
        fs::write(&y, format!("{base}{section}")).unwrap();
        let o = common::cloud_init_all(&y, t.path().join("o"));
        assert_eq!(o.status.code(), Some(2), "{section}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(field) && e.contains(&format!(":{line}")),
            "{section}: want {field} at line {line}: {e}"
        );
    }
    fs::write(&y, format!("{base}backups:\n  retention: 3\n  interval_hours: 12\n")).unwrap();
    let out = t.path().join("ok");
    ok(&common::cloud_init_all(&y, &out));
    assert!(fs::read_to_string(out.join("bk-cp-1/user-data"))
        .unwrap()
        .contains("IMGBUILD_BACKUP_RETENTION=3\\nIMGBUILD_BACKUP_INTERVAL_HOURS=12\\n"));
}

/// `backups.s3`: a missing bucket, credentials file or https, in cloud-init and lint, is
/// bad input (exit 2) naming the field and its line; the credentials never reach stdout
/// or stderr, and only control planes get them, in a 0600 file.
#[test]
fn backups_s3_errors_name_field_and_line_and_credentials_reach_control_planes_only() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("c");
    let y = common::cluster_init(&dir).name("bk").endpoint("127.0.0.1:6443").nodes(1, 1).ok();
    let base = fs::read_to_string(&y).unwrap();
    // line numbers of the appended section: backups: is base+1, s3: base+2, its first field base+3
    let s3 = |fields: &str| format!("{base}backups:\n  s3:\n{fields}");
    let full = "    endpoint: https://s3.example.com\n    bucket: etcd-backups\n    region: eu-1\n    prefix: prod/etcd\n";
    let n = base.lines().count();
    let creds = dir.join("secrets/backup-s3.yaml");
    let cases: Vec<(String, &str, usize)> = vec![
        (s3("    endpoint: https://s3.example.com\n    region: eu-1\n"), "bucket", n + 3),
        (
            s3("    endpoint: http://s3.example.com\n    bucket: etcd-backups\n    region: eu-1\n"),
            "backups.s3.endpoint",
            n + 3,
        ),
        (s3(full), "backups.s3.credentials_file", n + 2),
        (s3(&format!("{full}    credentials_file: elsewhere.yaml\n")), "backups.s3.credentials_file", n + 7),
    ];
    for (yaml, field, line) in &cases {
        fs::write(&y, yaml).unwrap();
        for cmd in ["cloud-init", "lint"] {
            let mut c = common::bin();
            c.arg(cmd).arg("--cluster").arg(&y);
            if cmd == "cloud-init" {
                c.args(["--all", "--seed", "none", "--out"]).arg(t.path().join("o"));
            }
            let o = c.output().unwrap();
            assert_eq!(o.status.code(), Some(2), "{cmd} {yaml}: {}", stderr(&o));
            let e = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
            assert!(
                e.contains(field) && e.contains(&format!(":{line}")),
                "{cmd}: want {field} at line {line}: {e}"
            );
        }
    }
    // a credentials file others can read is refused
    fs::write(&y, s3(full)).unwrap();
    fs::write(&creds, "access_key_id: AKIDEXAMPLE\nsecret_access_key: wJalr/K7MDENG+bPxRfi\n").unwrap();
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o644)).unwrap();
    let render = |out: &Path| common::cloud_init_all(&y, out);
    let o = render(&t.path().join("o"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("chmod 600") && !stderr(&o).contains("wJalr"), "{}", stderr(&o));
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
    let out = t.path().join("ok");
    let o = render(&out);
    ok(&o);
    assert!(!format!("{o:?}").contains("wJalr"));
    let root = t.path().join("cp");
    common::write_files_to(&fs::read_to_string(out.join("bk-cp-1/user-data")).unwrap(), &root);
    assert_eq!(
        fs::read_to_string(root.join("etc/imgbuild/backup.env")).unwrap(),
        "IMGBUILD_BACKUP_RETENTION=7\nIMGBUILD_BACKUP_INTERVAL_HOURS=6\n\
         IMGBUILD_BACKUP_S3_URL=https://s3.example.com/etcd-backups/\nIMGBUILD_BACKUP_S3_PREFIX=prod/etcd/\n\
         IMGBUILD_BACKUP_S3_REGION=eu-1\n"
    );
    let env = root.join("etc/imgbuild/backup-s3.env");
    assert_eq!(
        fs::read_to_string(&env).unwrap(),
        "IMGBUILD_S3_ACCESS_KEY_ID=AKIDEXAMPLE\nIMGBUILD_S3_SECRET_ACCESS_KEY=wJalr/K7MDENG+bPxRfi\n"
    );
    assert_eq!(fs::metadata(&env).unwrap().permissions().mode() & 0o777, 0o600);
    let worker = fs::read_to_string(out.join("bk-worker-1/user-data")).unwrap();
    assert!(!worker.contains("wJalr") && !worker.contains("backup"), "workers get no backup files");
    // virtual-hosted addressing puts the bucket into the host name
    fs::write(&y, s3(&format!("{full}    addressing: virtual-hosted\n"))).unwrap();
    let out = t.path().join("vh");
    ok(&render(&out));
    assert!(fs::read_to_string(out.join("bk-cp-1/user-data"))
        .unwrap()
        .contains("IMGBUILD_BACKUP_S3_URL=https://etcd-backups.s3.example.com/\\n"));
}

/// Disaster recovery on the first control plane: the real bootstrap script (with the
/// kubeadm stand-in of tests/it/standin, whose init runs a real etcd on /var/lib/etcd and
/// applies kubeadm's DirAvailable--var-lib-etcd preflight) fetches the snapshot
/// `cluster backup` took, checks its SHA-256, restores it with the real etcdctl as a
/// one-member etcd named after the node, and `kubeadm init` adopts it: the key written
/// before the disaster is read back through the new member.
#[test]
fn first_control_plane_boots_into_a_cluster_restored_from_a_snapshot() {
    if !tools_present() {
        return;
    }
    // DHCP nodes: the restored member advertises the default route's address (given)
    let w = World::new(7);
    let node_ip = w.ip(5);
    // the cluster before the disaster, and its backup
    w.etcd_cluster(1);
    ok(&w.etcdctl(1, &["put", "/registry/configmaps/default/survivor", "still here"]));
    let snap = w.p("snap.db");
    let o = common::bin()
        .args(["cluster", "backup", "--cluster"])
        .arg(w.yaml())
        .args(["--endpoint", &w.url(1), "--out"])
        .arg(&snap)
        .output()
        .unwrap();
    ok(&o);
    let sha = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string();
    w.stop_etcd(1);
    let files = common::http::Server::start();
    files.add_file("/backups/snap.db", snap.clone());
    let url = files.url("/backups/snap.db");

    let state = w.p("state");
    let boot = |sha: &str, tag: &str| -> (Output, PathBuf) {
        let seeds = w.p(&format!("seeds-{tag}"));
        ok(&common::bin()
            .args(["cloud-init", "--node", "et-cp-1", "--seed", "none", "--cluster"])
            .arg(w.yaml())
            .args(["--restore-url", &url, "--restore-sha256", sha, "--out"])
            .arg(&seeds)
            .output()
            .unwrap());
        let ud = fs::read_to_string(seeds.join("et-cp-1/user-data")).unwrap();
        let root = w.p(&format!("root-{tag}"));
        common::write_files_to(&ud, &root);
        assert_eq!(
            fs::metadata(root.join("etc/imgbuild/restore.env")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::create_dir_all(state.join("nodes")).unwrap();
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let o = Command::new("bash")
            .arg(repo.join("image-files/common/usr/libexec/imgbuild/bootstrap"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    repo.join("tests/it/standin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("IMGBUILD_ROOT", &root)
            .env("STANDIN_STATE", &state)
            .env("STANDIN_IP", &node_ip)
            .env("IMGBUILD_ETCDUTL", "etcdutl-not-installed")
            .env("IMGBUILD_NODE_IP", &node_ip)
            .env("IMGBUILD_BACKOFF_INITIAL", "1")
            .env("IMGBUILD_MAX_ATTEMPTS", "2")
            .env("IMGBUILD_SYSTEMCTL", "true")
            .output()
            .unwrap();
        (o, root)
    };
    struct KillEtcd(PathBuf);
    impl Drop for KillEtcd {
        fn drop(&mut self) {
            if let Ok(pid) = fs::read_to_string(self.0.join("nodes/et-cp-1/etcd.pid")) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
        }
    }
    let _guard = KillEtcd(state.clone());

    // a snapshot that is not the one named: refused before anything is restored
    let (o, root) = boot(&"0".repeat(64), "bad");
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("SHA-256 is {sha}")), "{out}");
    assert!(!root.join("var/lib/etcd/member").exists());

    let (o, root) = boot(&sha, "good");
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("phase etcd-restore: etcd restored from snapshot"), "{out}");
    let calls = fs::read_to_string(state.join("calls.log")).unwrap();
    assert!(
        calls.contains("kubeadm init --config")
            && calls.contains("--ignore-preflight-errors=DirAvailable--var-lib-etcd"),
        "{calls}"
    );
    // the restored member serves the data of before, alone, under this node's name
    let pki = root.join("etc/kubernetes/pki");
    let ctl = |args: &[&str]| common::etcdctl_as_apiserver(&pki, &node_ip, args);
    let g = ctl(&["get", "/registry/configmaps/default/survivor", "--print-value-only"]);
    ok(&g);
    assert_eq!(String::from_utf8_lossy(&g.stdout).trim(), "still here");
    let m = ctl(&["member", "list", "-w", "json"]);
    ok(&m);
    let m: Value = serde_json::from_slice(&m.stdout).unwrap();
    let members = m["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{m}");
    assert_eq!(members[0]["name"], "et-cp-1");
    assert_eq!(members[0]["peerURLs"], json!([format!("https://{node_ip}:2380")]));
}
