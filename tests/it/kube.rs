//! Nodes added later: `imgbuild cluster add-node`, `imgbuild cluster token create`
//! (the Kubernetes client in src/kube) against a loopback HTTPS server that follows
//! the Kubernetes API reference for Secrets (tests/it/common/http.rs's API fake; TLS
//! with the cluster CA, client certificates verified), the seed rendered with the new
//! token accepted by the join path (the real bootstrap script, a kubeadm stand-in
//! that applies the API server's bootstrap-token authenticator rules), and the
//! bootstrap's etcd query run by a real kubectl against the same fake.

use crate::common;

use crate::common::{ok, stderr};

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use crate::common::http::{Fake, Request, Response, Tls};
use base64::Engine;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// openssl is how these tests sign the fake API server's certificate with the cluster CA.
fn have_openssl() -> bool {
    common::tool("openssl")
}

/// A cluster (`cluster init`, static addresses) and its admin kubeconfig.
struct Cluster {
    t: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let t = tempfile::tempdir().unwrap();
        common::cluster_init(t.path().join("c"))
            .endpoint("127.0.0.1:6443")
            .lan()
            .nodes(1, 1)
            .external_lb()
            .ok();
        let o = common::bin()
            .args(["cluster", "kubeconfig", "--cluster"])
            .arg(t.path().join("c/cluster.yaml"))
            .arg("--out")
            .arg(t.path().join("admin.conf"))
            .output()
            .unwrap();
        ok(&o);
        Cluster { t }
    }
    fn yaml(&self) -> PathBuf {
        self.t.path().join("c/cluster.yaml")
    }
    fn secrets(&self) -> PathBuf {
        self.t.path().join("c/secrets")
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.t.path().join(rel)
    }

    /// The admin kubeconfig pointed at `server`.
    fn kubeconfig_for(&self, server: &str) -> PathBuf {
        let k = fs::read_to_string(self.p("admin.conf")).unwrap().replace("https://127.0.0.1:6443", server);
        let p = self.p(&format!("admin-{}.conf", server.rsplit(':').next().unwrap()));
        fs::write(&p, k).unwrap();
        p
    }

    /// A serving certificate for 127.0.0.1 signed by the cluster CA (what kube-apiserver presents).
    fn server_tls(&self) -> Tls {
        let ca = self.secrets();
        let (crt, key) = common::openssl_sign(
            &self.p("apiserver"),
            &ca.join("ca.crt"),
            &ca.join("ca.key"),
            "/CN=kube-apiserver",
            "subjectAltName=IP:127.0.0.1,DNS:kubernetes\nextendedKeyUsage=serverAuth\n",
            1,
        );
        Tls {
            cert_chain_pem: fs::read_to_string(crt).unwrap(),
            key_pem: fs::read_to_string(key).unwrap(),
            client_ca_pem: Some(fs::read_to_string(ca.join("ca.crt")).unwrap()),
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    Response::json(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

/// The client's identity as kube-apiserver's x509 authenticator reads it (CN = user,
/// O = groups), or a bearer token from `tokens`.
fn authenticate(r: &Request, tokens: &[&str]) -> Option<(String, Vec<String>)> {
    if let Some(der) = r.client_certs.first() {
        let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = c.subject().iter_common_name().next()?.as_str().ok()?.to_string();
        let orgs =
            c.subject().iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
        return Some((cn, orgs));
    }
    let t = r.header("Authorization")?.strip_prefix("Bearer ")?;
    tokens.contains(&t).then(|| ("token-user".into(), vec!["kubeadm:cluster-admins".into()]))
}

/// A DNS-1123 subdomain, what the API requires of object names.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `POST /api/v1/namespaces/{namespace}/secrets` as the Kubernetes API reference
/// describes it (core/v1 Secret, "create a Secret"): JSON body, apiVersion/kind,
/// metadata.name a DNS subdomain, metadata.namespace empty or the path's, `data`
/// values base64 and keys of `[-._a-zA-Z0-9]+`, 409 AlreadyExists, 201 with the stored
/// object; 401 without valid credentials, 403 for an identity without rights.
fn secrets_api(
    store: Arc<Mutex<BTreeMap<String, Value>>>,
    tokens: Vec<&'static str>,
) -> impl Fn(&Request) -> Response {
    move |r: &Request| {
        let Some((_user, groups)) = authenticate(r, &tokens) else {
            return status(401, "Unauthorized", "Unauthorized");
        };
        if !groups.iter().any(|g| g == "kubeadm:cluster-admins" || g == "system:masters") {
            return status(403, "Forbidden", "secrets is forbidden");
        }
        let Some(ns) = r.path.strip_prefix("/api/v1/namespaces/").and_then(|p| p.strip_suffix("/secrets"))
        else {
            return status(404, "NotFound", "the server could not find the requested resource");
        };
        if r.method != "POST" {
            return status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            );
        }
        if r.header("Content-Type").map(|c| c.split(';').next().unwrap_or("")) != Some("application/json") {
            return status(415, "UnsupportedMediaType", "the body of the request was in an unknown format");
        }
        let Ok(mut obj) = serde_json::from_slice::<Value>(&r.body) else {
            return status(400, "BadRequest", "the object provided is unrecognized");
        };
        if obj["apiVersion"] != "v1" || obj["kind"] != "Secret" {
            return status(400, "BadRequest", "the object provided is not a v1 Secret");
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if !dns_subdomain(&name) {
            return status(422, "Invalid", &format!("Secret \"{name}\" is invalid: metadata.name"));
        }
        match obj["metadata"]["namespace"].as_str() {
            None | Some("") => obj["metadata"]["namespace"] = json!(ns),
            Some(n) if n == ns => {}
            Some(_) => {
                return status(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            }
        }
        for (k, v) in obj["data"].as_object().cloned().unwrap_or_default() {
            let key_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            let val_ok =
                v.as_str().is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
            if !key_ok || !val_ok {
                return status(422, "Invalid", &format!("Secret \"{name}\" is invalid: data[{k}]"));
            }
        }
        let key = format!("{ns}/{name}");
        let mut st = store.lock().unwrap();
        if st.contains_key(&key) {
            return status(409, "AlreadyExists", &format!("secrets \"{name}\" already exists"));
        }
        obj["metadata"]["uid"] = json!("0b1c2d3e-0000-4000-8000-000000000001");
        obj["metadata"]["resourceVersion"] = json!("1001");
        obj["metadata"]["creationTimestamp"] = json!("2024-08-21T00:00:00Z");
        st.insert(key, obj.clone());
        Response::json(201, &obj)
    }
}

/// k8s.io/cluster-bootstrap's token authenticator: does `token` authenticate against
/// the Secret `s` (name, type, id/secret, usage, expiration)?
fn authenticates(s: &Value, token: &str) -> bool {
    let data = |k: &str| s["data"][k].as_str().map(|v| String::from_utf8(b64(v)).unwrap());
    let Some((id, secret)) = token.split_once('.') else { return false };
    let exp = data("expiration").and_then(|e| imgbuild::cluster::token::parse_rfc3339(&e));
    s["metadata"]["name"] == format!("bootstrap-token-{id}")
        && s["type"] == "bootstrap.kubernetes.io/token"
        && data("token-id").as_deref() == Some(id)
        && data("token-secret").as_deref() == Some(secret)
        && data("usage-bootstrap-authentication").as_deref() == Some("true")
        && exp.is_some_and(|e| e > time::OffsetDateTime::now_utc())
}

fn token_create(c: &Cluster, kubeconfig: &Path, extra: &[&str]) -> Output {
    common::bin()
        .args(["cluster", "token", "create", "--cluster"])
        .arg(c.yaml())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .output()
        .unwrap()
}

/// `imgbuild cloud-init` of one node of `cluster` into `out`.
fn render_node(cluster: &Path, node: &str, out: &Path) -> Output {
    common::bin()
        .args(["cloud-init", "--cluster"])
        .arg(cluster)
        .args(["--node", node, "--seed", "none", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

fn kubeadm_token(user_data: &str) -> String {
    let kubeadm = &common::write_files(user_data)["/etc/imgbuild/kubeadm.yaml"].1;
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(kubeadm)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    match docs[0]["kind"].as_str() {
        Some("JoinConfiguration") => docs[0]["discovery"]["bootstrapToken"]["token"].as_str().unwrap().into(),
        _ => docs[0]["bootstrapTokens"][0]["token"].as_str().unwrap().into(),
    }
}

#[test]
fn token_create_posts_a_bootstrap_token_secret_and_the_new_seed_joins() {
    if !have_openssl() {
        return;
    }
    let c = Cluster::new();
    let store: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let api = Fake::api(Some(c.server_tls()), secrets_api(store.clone(), vec![]));
    let kc = c.kubeconfig_for(&api.base());

    // A node added weeks later: in the spec first, then a token, then its seed.
    let o = common::bin().args(["cluster", "add-node", "--cluster"]).arg(c.yaml()).output().unwrap();
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "demo-worker-2");

    let before = time::OffsetDateTime::now_utc();
    let o = token_create(&c, &kc, &[]);
    ok(&o);
    let file = c.secrets().join("join-token.json");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), file.display().to_string());
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let jt: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    let token = jt["token"].as_str().unwrap().to_string();
    assert!(imgbuild::cluster::pki::is_bootstrap_token(&token));
    assert!(!stderr(&o).contains(token.split('.').nth(1).unwrap()), "the secret half is printed");

    // One request, field by field.
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/api/v1/namespaces/kube-system/secrets"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let (user, groups) = authenticate(r, &[]).unwrap();
    assert_eq!(user, "kubernetes-admin");
    assert_eq!(groups, ["kubeadm:cluster-admins"]);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let top: BTreeSet<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(top, BTreeSet::from(["apiVersion", "kind", "metadata", "type", "data"]), "{body}");
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "bootstrap.kubernetes.io/token");
    let (id, secret) = token.split_once('.').unwrap();
    assert_eq!(
        body["metadata"],
        json!({"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"})
    );
    let data: BTreeMap<String, String> = body["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8(b64(v.as_str().unwrap())).unwrap()))
        .collect();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "auth-extra-groups",
            "description",
            "expiration",
            "token-id",
            "token-secret",
            "usage-bootstrap-authentication",
            "usage-bootstrap-signing"
        ]
    );
    assert_eq!(data["token-id"], id);
    assert_eq!(data["token-secret"], secret);
    assert_eq!(data["usage-bootstrap-authentication"], "true");
    assert_eq!(data["usage-bootstrap-signing"], "true");
    assert_eq!(data["auth-extra-groups"], "system:bootstrappers:kubeadm:default-node-token");
    assert!(data["description"].contains("demo"), "{}", data["description"]);
    assert_eq!(data["expiration"], jt["expiration"].as_str().unwrap());
    let exp = imgbuild::cluster::token::parse_rfc3339(&data["expiration"]).unwrap();
    let ttl = exp - before;
    assert!(
        ttl > time::Duration::hours(24) - time::Duration::minutes(2)
            && ttl <= time::Duration::hours(24) + time::Duration::minutes(2),
        "{ttl}"
    );

    // The new node's seed carries the new token; the first control plane keeps the initial one.
    let out = c.p("seeds");
    let o = common::cloud_init_all(c.yaml(), &out);
    ok(&o);
    let ud = fs::read_to_string(out.join("demo-worker-2/user-data")).unwrap();
    assert_eq!(kubeadm_token(&ud), token);
    let initial = fs::read_to_string(c.secrets().join("bootstrap-token")).unwrap();
    assert_eq!(kubeadm_token(&fs::read_to_string(out.join("demo-cp-1/user-data")).unwrap()), initial.trim());

    // The join path accepts it: the real bootstrap, a kubeadm that joins only with a
    // token the API server's bootstrap-token authenticator accepts (the Secrets the fake holds).
    let accepted: Vec<String> = store
        .lock()
        .unwrap()
        .values()
        .flat_map(|s| {
            [token.clone(), initial.trim().to_string()]
                .into_iter()
                .filter(|t| authenticates(s, t))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(accepted, std::slice::from_ref(&token));
    let root = c.p("node");
    common::write_files_to(&ud, &root);
    let bin = c.p("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(c.p("accepted"), accepted.join("\n") + "\n").unwrap();
    let stub = format!(
        "#!/bin/bash\n[ \"$1\" = reset ] && exit 0\n\
         t=$(sed -n 's/^ *token: *\"\\{{0,1\\}}\\([^\"]*\\)\"\\{{0,1\\}}$/\\1/p' \"$3\")\n\
         grep -qx \"$t\" '{}' && {{ echo 'This node has joined the cluster'; exit 0; }}\n\
         echo \"error execution phase preflight: couldn't validate the identity of the API Server: token id \\\"${{t%%.*}}\\\" is invalid for this cluster or it has expired\" >&2\nexit 1\n",
        c.p("accepted").display()
    );
    fs::write(bin.join("kubeadm"), stub).unwrap();
    fs::set_permissions(bin.join("kubeadm"), fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new("bash")
        .arg(repo().join("image-files/common/usr/libexec/imgbuild/bootstrap"))
        .env("IMGBUILD_ROOT", &root)
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
        .env("IMGBUILD_MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    ok(&o);
    let st: Value =
        serde_json::from_slice(&fs::read(root.join("run/imgbuild/bootstrap.json")).unwrap()).unwrap();
    assert_eq!(st["phase"], "done");
    assert_eq!(st["node"], "demo-worker-2");

    // A second token: the name differs, so the API creates it; the file is replaced.
    ok(&token_create(&c, &kc, &["--ttl", "90m"]));
    assert_eq!(store.lock().unwrap().len(), 2);
    let jt2: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_ne!(jt2["token"], jt["token"]);
}

#[test]
fn token_create_401_exits_1_naming_the_kubeconfig_and_writes_nothing() {
    if !have_openssl() {
        return;
    }
    let c = Cluster::new();
    let api = Fake::api(Some(c.server_tls()), secrets_api(Arc::default(), vec!["good.token"]));
    // a token kubeconfig with a token the server does not know
    let kc = c.p("token.conf");
    let ca = base64::engine::general_purpose::STANDARD.encode(fs::read(c.secrets().join("ca.crt")).unwrap());
    fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\n\
             users:\n- name: u\n  user:\n    token: stale.token\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\n",
            api.base()
        ),
    )
    .unwrap();
    let o = token_create(&c, &kc, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(&kc.display().to_string()) && e.contains("401"), "{e}");
    assert!(!e.contains("stale.token"), "{e}");
    assert!(!c.secrets().join("join-token.json").exists());
    assert_eq!(api.requests()[0].header("Authorization"), Some("Bearer stale.token"));
    // the same kubeconfig with the right token works
    fs::write(&kc, fs::read_to_string(&kc).unwrap().replace("stale.token", "good.token")).unwrap();
    ok(&token_create(&c, &kc, &[]));
}

#[test]
fn token_create_verifies_the_api_server_against_the_cluster_ca() {
    if !have_openssl() {
        return;
    }
    let c = Cluster::new();
    // an API server whose certificate the cluster CA did not sign
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let tls = Tls {
        cert_chain_pem: other.cert.pem(),
        key_pem: other.key_pair.serialize_pem(),
        client_ca_pem: None,
    };
    let api = Fake::api(Some(tls), secrets_api(Arc::default(), vec![]));
    let o = token_create(&c, &c.kubeconfig_for(&api.base()), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("TLS") && e.contains("certificate authority in kubeconfig"), "{e}");
    assert!(api.requests().is_empty(), "a request reached the wrong server");
    assert!(!c.secrets().join("join-token.json").exists());
}

#[test]
fn token_create_refuses_bad_input_with_exit_2() {
    let c = Cluster::new();
    let kc = c.p("admin.conf");
    let o = token_create(&c, &kc, &["--ttl", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("never expires"), "{}", stderr(&o));
    assert_eq!(token_create(&c, &kc, &["--ttl", "1d"]).status.code(), Some(2));
    let insecure = c.p("insecure.conf");
    fs::write(
        &insecure,
        fs::read_to_string(&kc)
            .unwrap()
            .replace("certificate-authority-data", "insecure-skip-tls-verify: true\n    x-ca"),
    )
    .unwrap();
    let o = token_create(&c, &insecure, &[]);
    common::exits_with(&o, 2, "insecure-skip-tls-verify");
    // an expired join token is refused by cloud-init, not used
    let exp = imgbuild::cluster::token::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
    fs::write(
        c.secrets().join("join-token.json"),
        format!("{{\"token\": \"abcdef.0123456789abcdef\", \"expiration\": \"{exp}\"}}"),
    )
    .unwrap();
    let o = common::cloud_init_all(c.yaml(), c.p("seeds"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expired at"), "{}", stderr(&o));
}

#[test]
fn add_node_appends_keeping_the_users_comments_and_formatting() {
    let c = Cluster::new();
    let mut text = fs::read_to_string(c.yaml()).unwrap();
    // a user's edits: a comment on a node, a blank line, a flow-style item
    text = text.replace(
        "  - name: \"demo-worker-1\"\n",
        "  # the first worker\n  - name: \"demo-worker-1\" # keep me\n\n",
    );
    assert!(text.contains("# keep me"));
    fs::write(c.yaml(), &text).unwrap();
    let add = |args: &[&str]| {
        common::bin().args(["cluster", "add-node", "--cluster"]).arg(c.yaml()).args(args).output().unwrap()
    };
    let o = add(&["--role", "control-plane"]);
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "demo-cp-2");
    let o = add(&["--name", "edge-1", "--address", "10.0.0.50/24"]);
    ok(&o);
    let after = fs::read_to_string(c.yaml()).unwrap();
    // only lines were inserted, all in one place, after the last node
    let old: Vec<&str> = text.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let at = old.iter().zip(&new).position(|(a, b)| a != b).unwrap();
    assert_eq!(&new[..at], &old[..at]);
    assert_eq!(&new[at + 8..], &old[at..], "{after}");
    assert_eq!(
        &new[at..at + 8],
        [
            "  - name: \"demo-cp-2\"",
            "    role: \"control-plane\"",
            "    address: \"10.0.0.13/24\"",
            "    gateway: \"10.0.0.1\"",
            "  - name: \"edge-1\"",
            "    role: \"worker\"",
            "    address: \"10.0.0.50/24\"",
            "    gateway: \"10.0.0.1\"",
        ]
    );
    assert_eq!(fs::metadata(c.yaml()).unwrap().permissions().mode() & 0o777, 0o600);
    // refusals: exit 2, the file untouched
    for args in [
        &["--name", "edge-1"][..],
        &["--name", "Bad_Name"],
        &["--address", "10.0.0.11/24"],
        &["--address", "nope"],
    ] {
        let o = add(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(fs::read_to_string(c.yaml()).unwrap(), after);
    // the new nodes render
    ok(&render_node(&c.yaml(), "edge-1", &c.p("seeds")));
}

/// The bootstrap's etcd query (kubeconfig it writes, client certificate it signs with
/// openssl, kubectl flags, jsonpath) with a real kubectl against the API fake: the
/// endpoints the API lists reach etcdctl.
#[test]
fn bootstrap_finds_etcd_with_a_real_kubectl() {
    if !have_openssl() {
        return;
    }
    let kubectl = match std::env::var_os("IMGBUILD_TEST_KUBECTL") {
        Some(k) => PathBuf::from(k),
        None => match Command::new("sh").args(["-c", "command -v kubectl"]).output() {
            Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "kubectl is required in CI (ci/test.sh provides it)"
                );
                eprintln!("note: SKIPPING: no kubectl");
                return;
            }
        },
    };
    let t = tempfile::tempdir().unwrap();
    common::cluster_init(t.path().join("c"))
        .name("kt")
        .endpoint("127.0.0.1:6443")
        .nodes(3, 0)
        .external_lb()
        .ok();
    let c = Cluster { t };
    let pods = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": [
        {"metadata": {"name": "etcd-kt-cp-1", "namespace": "kube-system",
            "labels": {"component": "etcd", "tier": "control-plane"},
            "annotations": {"kubeadm.kubernetes.io/etcd.advertise-client-urls": "https://10.0.0.11:2379"}},
         "spec": {"containers": [{"name": "etcd", "image": "registry.k8s.io/etcd:3.5.15-0"}]}},
        {"metadata": {"name": "etcd-kt-cp-3", "namespace": "kube-system",
            "labels": {"component": "etcd", "tier": "control-plane"},
            "annotations": {"kubeadm.kubernetes.io/etcd.advertise-client-urls": "https://[fd00::13]:2379"}},
         "spec": {"containers": [{"name": "etcd", "image": "registry.k8s.io/etcd:3.5.15-0"}]}}]});
    let api = Fake::api(Some(c.server_tls()), move |r: &Request| {
        let Some((_, groups)) = authenticate(r, &[]) else {
            return status(401, "Unauthorized", "Unauthorized");
        };
        if !groups.iter().any(|g| g == "kubeadm:cluster-admins") {
            return status(403, "Forbidden", "pods is forbidden");
        }
        let path = r.path.split('?').next().unwrap_or("");
        match path {
            "/api" => Response::json(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
            ),
            "/apis" => {
                Response::json(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
            }
            "/api/v1" => Response::json(
                200,
                &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["po"]}]}),
            ),
            "/api/v1/namespaces/kube-system/pods"
                if r.path.contains("labelSelector=component%3Detcd%2Ctier%3Dcontrol-plane") =>
            {
                Response::json(200, &pods)
            }
            _ => status(404, "NotFound", "the server could not find the requested resource"),
        }
    });
    ok(&render_node(&c.yaml(), "kt-cp-2", &c.p("seeds")));
    let root = c.p("node");
    common::write_files_to(&fs::read_to_string(c.p("seeds/kt-cp-2/user-data")).unwrap(), &root);
    let env = root.join("etc/imgbuild/bootstrap.env");
    let port = api.base().rsplit(':').next().unwrap().to_string();
    fs::write(
        &env,
        fs::read_to_string(&env).unwrap().replace("127.0.0.1:6443", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    // etcdctl records where it was sent and fails: the attempt ends there
    let bin = c.p("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(
        bin.join("etcdctl"),
        format!("#!/bin/sh\necho \"$@\" >> '{}'\nexit 1\n", c.p("etcdctl.log").display()),
    )
    .unwrap();
    fs::set_permissions(bin.join("etcdctl"), fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new("bash")
        .arg(repo().join("image-files/common/usr/libexec/imgbuild/bootstrap"))
        .env("IMGBUILD_ROOT", &root)
        .env("IMGBUILD_KUBECTL", &kubectl)
        .env("IMGBUILD_ETCDCTL", bin.join("etcdctl"))
        .env("IMGBUILD_MAX_ATTEMPTS", "1")
        .env("HOME", c.p("home"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    let st: Value =
        serde_json::from_slice(&fs::read(root.join("run/imgbuild/bootstrap.json")).unwrap()).unwrap();
    let eps = "https://10.0.0.11:2379,https://[fd00::13]:2379";
    assert_eq!(
        st["last_error"],
        format!("could not take the control-plane join lock from etcd at {eps} (see {}/var/log/imgbuild/kubeadm.log)", root.display()),
        "{st}"
    );
    let calls = fs::read_to_string(c.p("etcdctl.log")).unwrap();
    assert!(
        calls.contains(&format!("--endpoints={eps}"))
            && calls.contains("lock --ttl=30 imgbuild/control-plane-join"),
        "{calls}"
    );
    // the API saw the node's own short-lived identity
    let r = api
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/api/v1/namespaces/kube-system/pods"))
        .unwrap();
    let (user, groups) = authenticate(&r, &[]).unwrap();
    assert_eq!(
        (user.as_str(), groups),
        ("imgbuild-bootstrap:kt-cp-2", vec!["kubeadm:cluster-admins".to_string()])
    );
}
