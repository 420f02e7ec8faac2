//! kubeconfig files (`apiVersion: v1`, `kind: Config`): the context to use, its
//! cluster (server URL, CA) and its user (client certificate and key, or a bearer
//! token), with the file references of kubectl resolved against the file's directory.
//!
//! Only what can be verified is accepted: an `https://` server and a cluster CA to
//! check it against. `insecure-skip-tls-verify`, exec and auth-provider plugins and
//! basic auth are refused with a message rather than silently ignored.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::KubeError;

/// The parts of a kubeconfig this client reads; the rest (preferences, extensions)
/// is ignored like kubectl ignores what it does not know.
#[derive(Debug, Deserialize)]
struct File {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Option<ClusterEntry>,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    user: Option<UserEntry>,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Option<ContextEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct ClusterEntry {
    server: Option<String>,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<PathBuf>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
    #[serde(rename = "tls-server-name")]
    tls_server_name: Option<String>,
    #[serde(rename = "proxy-url")]
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct UserEntry {
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    #[serde(rename = "client-certificate")]
    cert_file: Option<PathBuf>,
    #[serde(rename = "client-key")]
    key_file: Option<PathBuf>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    exec: Option<serde_yaml::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_yaml::Value>,
    username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ContextEntry {
    cluster: String,
    user: String,
    namespace: Option<String>,
}

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// PEM certificate chain followed by its private key (what reqwest's identity takes).
    ClientCert {
        pem: Vec<u8>,
    },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    // never print key material or tokens
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ClientCert { .. } => f.write_str("ClientCert(..)"),
            Credentials::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// A resolved kubeconfig: everything needed to reach and authenticate to one API server.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    /// The file it came from (named in errors).
    pub path: PathBuf,
    pub context: String,
    /// `https://host[:port]`, no trailing slash.
    pub server: String,
    /// PEM of the CA(s) the server certificate must chain to.
    pub ca_pem: Vec<u8>,
    pub credentials: Credentials,
    pub namespace: Option<String>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(clean).map_err(|e| format!("{field}: not base64 ({e})"))
}

impl Kubeconfig {
    /// Load `path` and resolve `context` (default: `current-context`).
    pub fn load(path: &Path, context: Option<&str>) -> Result<Kubeconfig, KubeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KubeError::Config { path: path.to_path_buf(), msg: format!("reading it: {e}") })?;
        Self::parse(&text, path, context)
    }

    /// Parse kubeconfig text; `path` names it in errors and anchors relative file names.
    pub fn parse(text: &str, path: &Path, context: Option<&str>) -> Result<Kubeconfig, KubeError> {
        let bad = |msg: String| KubeError::Config { path: path.to_path_buf(), msg };
        let f: File = serde_yaml::from_str(text).map_err(|e| bad(format!("not a kubeconfig: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
        let read = |what: &str, p: &Path| -> Result<Vec<u8>, KubeError> {
            let p = resolve(p);
            std::fs::read(&p).map_err(|e| bad(format!("{what} {}: {e}", p.display())))
        };

        let ctx_name = match context.map(str::to_string).or(f.current_context.clone()) {
            Some(c) if !c.is_empty() => c,
            _ => return Err(bad("no current-context and no --context given".into())),
        };
        let ctx = f
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .and_then(|c| c.context.as_ref())
            .ok_or_else(|| bad(format!("no context {ctx_name:?}")))?;
        let cluster = f
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .and_then(|c| c.cluster.as_ref())
            .ok_or_else(|| {
                bad(format!("context {ctx_name:?} names cluster {:?}, which is not in the file", ctx.cluster))
            })?;
        let user =
            f.users.iter().find(|u| u.name == ctx.user).and_then(|u| u.user.as_ref()).ok_or_else(|| {
                bad(format!("context {ctx_name:?} names user {:?}, which is not in the file", ctx.user))
            })?;

        let server =
            cluster.server.clone().ok_or_else(|| bad(format!("cluster {:?} has no server", ctx.cluster)))?;
        let server = server.trim_end_matches('/').to_string();
        let host = server.strip_prefix("https://").ok_or_else(|| {
            bad(format!("server {server:?} is not https:// (the API must be verified by TLS)"))
        })?;
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return Err(bad(format!("server {server:?} is not https://HOST[:PORT]")));
        }
        if cluster.insecure {
            return Err(bad("insecure-skip-tls-verify is set: refusing an API server that is not verified against the cluster CA".into()));
        }
        if cluster.tls_server_name.is_some() || cluster.proxy_url.is_some() {
            return Err(bad("tls-server-name and proxy-url are not supported".into()));
        }
        let ca_pem = match (&cluster.ca_data, &cluster.ca_file) {
            (Some(d), _) => b64("certificate-authority-data", d).map_err(bad)?,
            (None, Some(p)) => read("certificate-authority", p)?,
            (None, None) => {
                return Err(bad(format!(
                    "cluster {:?} has no certificate-authority(-data): the API server could not be verified",
                    ctx.cluster
                )))
            }
        };
        if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad("the cluster's certificate authority is not a PEM certificate".into()));
        }

        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(bad(format!(
                "user {:?} uses an exec or auth-provider plugin, which is not supported",
                ctx.user
            )));
        }
        if user.username.is_some() {
            return Err(bad(format!("user {:?} uses basic auth, which Kubernetes removed", ctx.user)));
        }
        let cert = match (&user.cert_data, &user.cert_file) {
            (Some(d), _) => Some(b64("client-certificate-data", d).map_err(bad)?),
            (None, Some(p)) => Some(read("client-certificate", p)?),
            _ => None,
        };
        let key = match (&user.key_data, &user.key_file) {
            (Some(d), _) => Some(b64("client-key-data", d).map_err(bad)?),
            (None, Some(p)) => Some(read("client-key", p)?),
            _ => None,
        };
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(p)) => Some(String::from_utf8_lossy(&read("tokenFile", p)?).trim().to_string()),
            _ => None,
        };
        let credentials = match (cert, key, token) {
            (Some(mut c), Some(k), _) => {
                if !c.ends_with(b"\n") {
                    c.push(b'\n');
                }
                c.extend_from_slice(&k);
                Credentials::ClientCert { pem: c }
            }
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(bad(format!(
                    "user {:?} has a client certificate or key without the other",
                    ctx.user
                )))
            }
            (None, None, Some(t)) if !t.is_empty() => Credentials::Token(t),
            _ => return Err(bad(format!("user {:?} has no client certificate and no token", ctx.user))),
        };
        Ok(Kubeconfig {
            path: path.to_path_buf(),
            context: ctx_name,
            server,
            ca_pem,
            credentials,
            namespace: ctx.namespace.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn cfg(user: &str, cluster_extra: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(CA);
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.10:6443/\n    certificate-authority-data: {ca}\n{cluster_extra}\
             users:\n- name: u\n  user:\n{user}\ncontexts:\n- name: a\n  context:\n    cluster: c\n    user: u\n    namespace: ns\n\
             - name: b\n  context:\n    cluster: missing\n    user: u\npreferences: {{}}\n"
        )
    }

    fn err(text: &str) -> String {
        match Kubeconfig::parse(text, Path::new("/k/admin.conf"), None) {
            Err(KubeError::Config { msg, .. }) => msg,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn certificate_and_token_users() {
        let k = Kubeconfig::parse(
            &cfg("    client-certificate-data: Y2VydAo=\n    client-key-data: a2V5Cg==\n", ""),
            Path::new("/k/admin.conf"),
            None,
        )
        .unwrap();
        assert_eq!(k.server, "https://10.0.0.10:6443");
        assert_eq!(k.context, "a");
        assert_eq!(k.namespace.as_deref(), Some("ns"));
        assert_eq!(k.ca_pem, CA.as_bytes());
        match k.credentials {
            Credentials::ClientCert { pem } => assert_eq!(pem, b"cert\nkey\n"),
            Credentials::Token(_) => panic!("token"),
        }
        let k = Kubeconfig::parse(&cfg("    token: abc.def\n", ""), Path::new("k"), None).unwrap();
        assert!(matches!(k.credentials, Credentials::Token(t) if t == "abc.def"));
        assert!(format!("{:?}", Kubeconfig::parse(&cfg("    token: s3cret\n", ""), Path::new("k"), None))
            .find("s3cret")
            .is_none());
    }

    #[test]
    fn relative_files_resolve_against_the_kubeconfig() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.crt"), CA).unwrap();
        std::fs::write(d.path().join("tok"), "t0k\n").unwrap();
        let text = "current-context: a\nclusters:\n- name: c\n  cluster:\n    server: https://k:6443\n    certificate-authority: ca.crt\n\
             users:\n- name: u\n  user:\n    tokenFile: tok\ncontexts:\n- name: a\n  context: {cluster: c, user: u}\n";
        let k = Kubeconfig::parse(text, &d.path().join("kc"), None).unwrap();
        assert_eq!(k.ca_pem, CA.as_bytes());
        assert!(matches!(k.credentials, Credentials::Token(t) if t == "t0k"));
    }

    #[test]
    fn refusals_name_the_problem() {
        assert!(err(&cfg("    token: t\n", "    insecure-skip-tls-verify: true\n"))
            .contains("insecure-skip-tls-verify"));
        assert!(err(&cfg("    token: t\n", "").replace("https://", "http://")).contains("not https://"));
        assert!(err(&cfg("    exec: {command: aws}\n", "")).contains("exec"));
        assert!(err(&cfg("    client-certificate-data: Y2VydAo=\n", "")).contains("without the other"));
        assert!(err(&cfg("    {}\n", "")).contains("no client certificate and no token"));
        assert!(err("current-context: a\n").contains("no context \"a\""));
        let no_ca = "current-context: a\nclusters:\n- name: c\n  cluster: {server: 'https://k'}\nusers:\n- name: u\n  user: {token: t}\n\
                     contexts:\n- name: a\n  context: {cluster: c, user: u}\n";
        assert!(err(no_ca).contains("no certificate-authority"));
        match Kubeconfig::parse(&cfg("    token: t\n", ""), Path::new("k"), Some("b")) {
            Err(KubeError::Config { msg, .. }) => assert!(msg.contains("cluster \"missing\""), "{msg}"),
            other => panic!("{other:?}"),
        }
        let m = err("[1, 2]");
        assert!(m.contains("not a kubeconfig"), "{m}");
    }
}
