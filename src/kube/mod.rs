//! A small Kubernetes API client on reqwest, for the day-2 commands (`cluster token
//! create`, `cluster upgrade`'s ConfigMap and workload patches, `node remove`'s cordon,
//! eviction and delete in [`node`]; `etcd` rides on the same transport): a
//! kubeconfig ([`config`]) gives a client that trusts only the cluster's CA
//! (no built-in roots), authenticates with the kubeconfig's client certificate or
//! token, and turns the API's `Status` answers into typed errors that name the
//! kubeconfig.
//!
//! Blocking by contract: each call runs on the client's own single-thread runtime.
//! Reads (GET) are retried on transport errors, 429 and 5xx; writes are not (a
//! create that may have happened is reported, not repeated).

pub mod config;
pub mod node;

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use config::{Credentials, Kubeconfig};

use crate::exit::{Classify, Code};

const TIMEOUT: Duration = Duration::from_secs(30);
const READ_RETRIES: u32 = 3;
/// The largest answer read (a Secret or a node list is kilobytes).
const MAX_BODY: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("{server} rejected the credentials of kubeconfig {} (401 Unauthorized: expired, revoked or from another cluster)", kubeconfig.display())]
    Unauthorized { server: String, kubeconfig: PathBuf },
    #[error("{what}: forbidden for the user of kubeconfig {}: {message}", kubeconfig.display())]
    Forbidden { what: String, kubeconfig: PathBuf, message: String },
    #[error("{what}: {message} (HTTP {code}{})", reason.as_deref().map(|r| format!(", {r}")).unwrap_or_default())]
    Api { what: String, code: u16, reason: Option<String>, message: String },
    #[error("{what}: TLS with {server} failed ({detail}); its certificate must be signed by the certificate authority in kubeconfig {}", kubeconfig.display())]
    Tls { what: String, server: String, kubeconfig: PathBuf, detail: String },
    #[error("{what}: {detail}")]
    Transport { what: String, detail: String },
}

impl Classify for KubeError {
    fn code(&self) -> Code {
        match self {
            KubeError::Config { .. } => Code::Input,
            _ => Code::Runtime,
        }
    }
}

impl KubeError {
    /// The API's `reason` (AlreadyExists, NotFound, Conflict …) when it gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            KubeError::Api { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }
}

/// `metav1.ObjectMeta`, the fields this client sets or reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

/// `metav1.OwnerReference`, the fields read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
}

/// `core/v1 Secret`. `data` values are base64 on the wire; this type holds them
/// decoded (serialised with [`b64map`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, with = "b64map", skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Secret {
    pub fn new(namespace: &str, name: &str, type_: &str) -> Secret {
        Secret {
            api_version: "v1".into(),
            kind: "Secret".into(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Default::default(),
        }
    }
}

/// `map[string][]byte` as the API writes it: base64 strings.
mod b64map {
    use std::collections::BTreeMap;

    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<String, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(|b| (k, b))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// `metav1.Status`, the body of every API error.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub code: Option<u16>,
}

/// A connection to one API server, from a kubeconfig.
pub struct Client {
    http: reqwest::Client,
    config: Kubeconfig,
}

impl Client {
    pub fn new(config: Kubeconfig) -> Result<Client, KubeError> {
        let bad = |msg: String| KubeError::Config { path: config.path.clone(), msg };
        // the cluster's CA and nothing else: a public CA must not vouch for an API server
        let opts = crate::net::ClientOptions {
            trust: crate::net::Trust::OnlyCa(config.ca_pem.clone()),
            identity: match &config.credentials {
                Credentials::ClientCert { pem } => Some(pem.clone()),
                _ => None,
            },
            total_timeout: Some(TIMEOUT),
            ..Default::default()
        };
        let http = opts.build().map_err(|e| bad(e.to_string()))?.http;
        Ok(Client { http, config })
    }

    pub fn from_kubeconfig(path: &std::path::Path, context: Option<&str>) -> Result<Client, KubeError> {
        Client::new(Kubeconfig::load(path, context)?)
    }

    pub fn config(&self) -> &Kubeconfig {
        &self.config
    }

    /// GET `path` (e.g. `/api/v1/namespaces/kube-system/secrets/x`).
    pub fn get<R: DeserializeOwned>(&self, what: &str, path: &str) -> Result<R, KubeError> {
        self.json(what, reqwest::Method::GET, path, None)
    }

    /// POST a new object to its collection `path`.
    pub fn create<T: Serialize, R: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        obj: &T,
    ) -> Result<R, KubeError> {
        let body = serde_json::to_vec(obj)
            .map_err(|e| KubeError::Transport { what: what.into(), detail: format!("encoding: {e}") })?;
        self.json(what, reqwest::Method::POST, path, Some(("application/json", body)))
    }

    /// PATCH with a JSON merge patch (RFC 7386).
    pub fn merge_patch<T: Serialize, R: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        patch: &T,
    ) -> Result<R, KubeError> {
        let body = serde_json::to_vec(patch)
            .map_err(|e| KubeError::Transport { what: what.into(), detail: format!("encoding: {e}") })?;
        self.json(what, reqwest::Method::PATCH, path, Some(("application/merge-patch+json", body)))
    }

    /// PATCH with a JSON patch (RFC 6902): list elements addressed by index, guarded by
    /// `test` operations (a merge patch would replace a whole list).
    pub fn json_patch<R: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        ops: &serde_json::Value,
    ) -> Result<R, KubeError> {
        let body = serde_json::to_vec(ops)
            .map_err(|e| KubeError::Transport { what: what.into(), detail: format!("encoding: {e}") })?;
        self.json(what, reqwest::Method::PATCH, path, Some(("application/json-patch+json", body)))
    }

    /// DELETE `path`; the answer (a Status or the deleted object) is not interpreted.
    pub fn delete(&self, what: &str, path: &str) -> Result<(), KubeError> {
        self.json::<serde_json::Value>(what, reqwest::Method::DELETE, path, None).map(|_| ())
    }

    /// Create a Secret in its namespace.
    pub fn create_secret(&self, s: &Secret) -> Result<Secret, KubeError> {
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let name = s.metadata.name.as_deref().unwrap_or("");
        self.create(&format!("creating Secret {ns}/{name}"), &format!("/api/v1/namespaces/{ns}/secrets"), s)
    }

    /// POST a JSON body and read a JSON answer (APIs that use POST for every call,
    /// like etcd's gRPC gateway). Not retried, like every write.
    pub fn post<T: Serialize, R: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &T,
    ) -> Result<R, KubeError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| KubeError::Transport { what: what.into(), detail: format!("encoding: {e}") })?;
        self.json(what, reqwest::Method::POST, path, Some(("application/json", body)))
    }

    /// POST a JSON body and hand the answer's body to `sink` chunk by chunk as it
    /// arrives (a streamed answer too large to hold, e.g. an etcd snapshot), within
    /// `limit` in total. An error status is read whole (bounded) and typed as usual.
    pub fn post_stream<T: Serialize>(
        &self,
        what: &str,
        path: &str,
        body: &T,
        limit: Duration,
        mut sink: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), KubeError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| KubeError::Transport { what: what.into(), detail: format!("encoding: {e}") })?;
        let url = format!("{}{path}", self.config.server);
        let mut req = self
            .http
            .post(&url)
            .timeout(limit)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .body(body);
        if let Credentials::Token(t) = &self.config.credentials {
            req = req.bearer_auth(t);
        }
        enum Fail {
            Http(reqwest::Error),
            Status(u16, Vec<u8>),
            Sink(String),
        }
        // The sink is the caller's (not Send): run on the process runtime from this
        // thread, which a blocking client is called from by contract.
        let rt = crate::net::runtime()
            .map_err(|e| KubeError::Transport { what: what.into(), detail: e.to_string() })?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(KubeError::Transport {
                what: what.into(),
                detail: "the Kubernetes client is blocking; it was called inside a tokio runtime".into(),
            });
        }
        let r = rt.block_on(async {
            let mut resp = req.send().await.map_err(Fail::Http)?;
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                let mut b = Vec::new();
                while let Some(c) = resp.chunk().await.map_err(Fail::Http)? {
                    if b.len() < 64 << 10 {
                        b.extend_from_slice(&c);
                    }
                }
                return Err(Fail::Status(status, b));
            }
            while let Some(c) = resp.chunk().await.map_err(Fail::Http)? {
                sink(&c).map_err(Fail::Sink)?;
            }
            Ok(())
        });
        match r {
            Ok(()) => Ok(()),
            Err(Fail::Http(e)) => Err(self.transport_error(what, &e)),
            Err(Fail::Status(code, b)) => Err(self.status_error(what, code, &b)),
            Err(Fail::Sink(detail)) => Err(KubeError::Transport { what: what.into(), detail }),
        }
    }

    fn json<R: DeserializeOwned>(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<R, KubeError> {
        let url = format!("{}{path}", self.config.server);
        let retries = if method == reqwest::Method::GET { READ_RETRIES } else { 0 };
        let mut attempt = 0;
        loop {
            let mut req = self.http.request(method.clone(), &url).header("Accept", "application/json");
            if let Credentials::Token(t) = &self.config.credentials {
                req = req.bearer_auth(t);
            }
            if let Some((ct, b)) = &body {
                req = req.header("Content-Type", *ct).body(b.clone());
            }
            let result = crate::net::block_on(async {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let bytes = crate::net::read_capped(resp, MAX_BODY).await.map_err(|e| e.to_string());
                Ok::<_, reqwest::Error>((status, bytes))
            })
            .map_err(|e| KubeError::Transport { what: what.into(), detail: e.to_string() })?;
            let result = match result {
                Ok((status, Ok(bytes))) => Ok((status, bytes)),
                Ok((_, Err(detail))) => return Err(KubeError::Transport { what: what.into(), detail }),
                Err(e) => Err(e),
            };
            let transient = match &result {
                Err(e) => !is_tls(e),
                Ok((code, _)) => *code == 429 || *code >= 500,
            };
            if transient && attempt < retries {
                attempt += 1;
                std::thread::sleep(crate::net::RetryPolicy::small(READ_RETRIES + 1).backoff(attempt));
                continue;
            }
            let (code, bytes) = result.map_err(|e| self.transport_error(what, &e))?;
            if (200..300).contains(&code) {
                return serde_json::from_slice(&bytes).map_err(|e| KubeError::Transport {
                    what: what.into(),
                    detail: format!("the API's answer is not the expected JSON: {e}"),
                });
            }
            return Err(self.status_error(what, code, &bytes));
        }
    }

    fn status_error(&self, what: &str, code: u16, body: &[u8]) -> KubeError {
        let st: Status = serde_json::from_slice(body).unwrap_or_else(|_| Status {
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
            ..Default::default()
        });
        match code {
            401 => KubeError::Unauthorized {
                server: self.config.server.clone(),
                kubeconfig: self.config.path.clone(),
            },
            403 => KubeError::Forbidden {
                what: what.into(),
                kubeconfig: self.config.path.clone(),
                message: st.message,
            },
            _ => KubeError::Api { what: what.into(), code, reason: st.reason, message: st.message },
        }
    }

    fn transport_error(&self, what: &str, e: &reqwest::Error) -> KubeError {
        let detail = chain(e);
        if is_tls(e) {
            return KubeError::Tls {
                what: what.into(),
                server: self.config.server.clone(),
                kubeconfig: self.config.path.clone(),
                detail,
            };
        }
        KubeError::Transport { what: format!("{what} at {}", self.config.server), detail }
    }
}

use crate::net::chain;

/// A failed TLS handshake (certificate not trusted, wrong name, client certificate
/// refused): not worth retrying, and a configuration problem to name.
fn is_tls(e: &reqwest::Error) -> bool {
    crate::net::tls::is_tls_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_data_is_base64_on_the_wire() {
        let mut s = Secret::new("kube-system", "bootstrap-token-abcdef", "bootstrap.kubernetes.io/token");
        s.data.insert("token-id".into(), b"abcdef".to_vec());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["type"], "bootstrap.kubernetes.io/token");
        assert_eq!(
            v["metadata"],
            serde_json::json!({"name": "bootstrap-token-abcdef", "namespace": "kube-system"})
        );
        assert_eq!(v["data"]["token-id"], "YWJjZGVm");
        let back: Secret = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
