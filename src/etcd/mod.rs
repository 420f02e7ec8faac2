//! An etcd v3 client over etcd's gRPC gateway (JSON over HTTPS on the client port,
//! `/v3/...`, served by etcd 3.4 and later): the maintenance `Status` and `Snapshot`
//! calls and the cluster `MemberList` / `MemberRemove` calls, which is what the
//! day-2 commands need. The transport is the Kubernetes client's (`kube`):
//! TLS that trusts only the cluster's etcd CA and a client certificate it signed.
//!
//! The gateway's JSON follows protojson: 64-bit integers (member ids, revisions,
//! sizes) are strings, `bytes` are base64, and a streamed answer (Snapshot) is a
//! sequence of `{"result": …}` objects, one per line, or `{"error": …}`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::exit::{Classify, Code};
use crate::kube::{self, Credentials, KubeError, Kubeconfig};

/// One line of the snapshot stream carries at most etcd's 32 KiB chunk in base64;
/// anything much longer is not etcd talking.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoint}")]
    Api {
        endpoint: String,
        #[source]
        source: KubeError,
    },
    #[error("etcd at {endpoint}: {msg}")]
    Protocol { endpoint: String, msg: String },
    /// The snapshot's trailing SHA-256 does not match its contents.
    #[error("etcd snapshot from {endpoint} is corrupt: {msg}")]
    Integrity { endpoint: String, msg: String },
    #[error("{0}")]
    Refused(String),
    #[error("writing the snapshot: {0}")]
    Io(#[source] std::io::Error),
}

impl Classify for EtcdError {
    fn code(&self) -> Code {
        match self {
            EtcdError::Integrity { .. } => Code::Integrity,
            EtcdError::Api { source, .. } => source.code(),
            _ => Code::Runtime,
        }
    }
}

/// `etcdserverpb.Member`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    #[serde(rename = "ID", with = "u64_string")]
    pub id: u64,
    /// Empty for a member that was added but never started.
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

impl Member {
    /// The id as etcdctl prints it.
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id)
    }
}

/// `etcdserverpb.StatusResponse`, the fields used.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub version: String,
    #[serde(rename = "dbSize", with = "u64_string", default)]
    pub db_size: u64,
    #[serde(with = "u64_string", default)]
    pub leader: u64,
    #[serde(default)]
    pub header: Header,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    #[serde(with = "u64_string", default)]
    pub member_id: u64,
    #[serde(with = "u64_string", default)]
    pub revision: u64,
}

/// protojson writes uint64 as a decimal string (and omits zero values).
mod u64_string {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum N {
            S(String),
            N(u64),
        }
        match N::deserialize(d)? {
            N::N(n) => Ok(n),
            N::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
struct MemberListResponse {
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Serialize)]
struct MemberRemoveRequest {
    #[serde(rename = "ID")]
    id: String,
}

/// A client certificate and the CA to verify etcd's serving certificate with (PEM).
#[derive(Clone)]
pub struct Tls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
    /// What the credentials came from, named in errors (the cluster's secrets/).
    pub origin: PathBuf,
}

/// A connection to one etcd member's client URL.
pub struct Client {
    endpoint: String,
    http: kube::Client,
}

impl Client {
    pub fn new(endpoint: &str, tls: &Tls) -> Result<Client, EtcdError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if !endpoint.starts_with("https://") {
            return Err(EtcdError::Refused(format!(
                "etcd endpoint {endpoint}: only https:// is accepted (etcd serves its clients over TLS)"
            )));
        }
        let mut pem = tls.cert_pem.clone().into_bytes();
        pem.extend_from_slice(tls.key_pem.as_bytes());
        let config = Kubeconfig {
            path: tls.origin.clone(),
            context: String::new(),
            server: endpoint.clone(),
            ca_pem: tls.ca_pem.clone(),
            credentials: Credentials::ClientCert { pem },
            namespace: None,
        };
        let http = kube::Client::new(config)
            .map_err(|source| EtcdError::Api { endpoint: endpoint.clone(), source })?;
        Ok(Client { endpoint, http })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn api(&self, source: KubeError) -> EtcdError {
        EtcdError::Api { endpoint: self.endpoint.clone(), source }
    }

    /// Maintenance.Status of this member (answers only while the member is up).
    pub fn status(&self) -> Result<Status, EtcdError> {
        self.http
            .post("etcd status", "/v3/maintenance/status", &serde_json::json!({}))
            .map_err(|e| self.api(e))
    }

    /// Cluster.MemberList (linearizable: answered through the leader).
    pub fn member_list(&self) -> Result<Vec<Member>, EtcdError> {
        let r: MemberListResponse = self
            .http
            .post("etcd member list", "/v3/cluster/member/list", &serde_json::json!({"linearizable": true}))
            .map_err(|e| self.api(e))?;
        Ok(r.members)
    }

    /// Cluster.MemberRemove.
    pub fn member_remove(&self, id: u64) -> Result<(), EtcdError> {
        self.http
            .post::<_, serde_json::Value>(
                "etcd member remove",
                "/v3/cluster/member/remove",
                &MemberRemoveRequest { id: id.to_string() },
            )
            .map(|_| ())
            .map_err(|e| self.api(e))
    }

    /// Maintenance.Snapshot into `out`: etcd's backend database followed by the
    /// SHA-256 of it (what `etcdctl snapshot save` writes and `snapshot restore`
    /// checks). The hash is verified here before returning.
    pub fn snapshot(&self, out: &mut impl Write, limit: Duration) -> Result<Snapshot, EtcdError> {
        let mut dec = StreamDecoder::default();
        let mut io_err = None;
        let mut proto_err = None;
        let r = self.http.post_stream(
            "etcd snapshot",
            "/v3/maintenance/snapshot",
            &serde_json::json!({}),
            limit,
            |c| {
                let blobs = match dec.push(c) {
                    Ok(b) => b,
                    Err(m) => {
                        proto_err = Some(m.clone());
                        return Err(m);
                    }
                };
                for b in blobs {
                    if let Err(e) = out.write_all(&b) {
                        let m = e.to_string();
                        io_err = Some(e);
                        return Err(m);
                    }
                }
                Ok(())
            },
        );
        if let Some(e) = io_err {
            return Err(EtcdError::Io(e));
        }
        if let Some(msg) = proto_err {
            return Err(EtcdError::Protocol { endpoint: self.endpoint.clone(), msg });
        }
        r.map_err(|e| self.api(e))?;
        dec.finish().map_err(|msg| EtcdError::Protocol { endpoint: self.endpoint.clone(), msg })?;
        dec.verify().map_err(|msg| EtcdError::Integrity { endpoint: self.endpoint.clone(), msg })
    }
}

/// What a verified snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes written (database + 32-byte hash).
    pub size: u64,
    /// Hex SHA-256 of the database part (the trailer etcd appended).
    pub db_sha256: String,
    /// Hex SHA-256 of the whole file (what `sha256sum` prints).
    pub file_sha256: String,
}

/// Splits the gateway's stream into its JSON objects and decodes their blobs,
/// hashing everything but the last 32 bytes seen so far.
#[derive(Default)]
struct StreamDecoder {
    line: Vec<u8>,
    hasher: Sha256,
    whole: Sha256,
    /// The last (up to) 32 bytes: the trailer once the stream ends.
    tail: Vec<u8>,
    size: u64,
    remaining_zero: bool,
}

#[derive(Deserialize)]
struct StreamItem {
    result: Option<SnapshotChunk>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct SnapshotChunk {
    #[serde(default, with = "u64_string")]
    remaining_bytes: u64,
    #[serde(default)]
    blob: String,
}

impl StreamDecoder {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                if let Some(blob) = self.item(&line)? {
                    out.push(blob);
                }
            } else {
                if self.line.len() >= MAX_LINE {
                    return Err(format!("a snapshot stream message is longer than {MAX_LINE} bytes"));
                }
                self.line.push(b);
            }
        }
        Ok(out)
    }

    fn item(&mut self, line: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let it: StreamItem = serde_json::from_slice(line)
            .map_err(|e| format!("the snapshot stream is not etcd's JSON: {e}"))?;
        if let Some(e) = it.error {
            let msg = e.get("message").and_then(|m| m.as_str()).map(str::to_string).unwrap_or(e.to_string());
            return Err(format!("the snapshot failed: {msg}"));
        }
        let c = it.result.ok_or("a snapshot stream message has neither result nor error")?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(c.blob.as_bytes())
            .map_err(|e| format!("a snapshot chunk is not base64: {e}"))?;
        self.remaining_zero = c.remaining_bytes == 0;
        self.size += blob.len() as u64;
        self.whole.update(&blob);
        // everything but the newest 32 bytes is database
        self.tail.extend_from_slice(&blob);
        if self.tail.len() > 32 {
            let n = self.tail.len() - 32;
            self.hasher.update(&self.tail[..n]);
            self.tail.drain(..n);
        }
        Ok(Some(blob))
    }

    fn finish(&mut self) -> Result<(), String> {
        let line = std::mem::take(&mut self.line);
        self.item(&line)?;
        if !self.remaining_zero {
            return Err("the snapshot stream ended before etcd sent its last chunk".into());
        }
        Ok(())
    }

    fn verify(self) -> Result<Snapshot, String> {
        // etcd's backend is bbolt pages (multiples of 512 bytes) plus the 32-byte hash,
        // the test `etcdctl snapshot restore` applies too
        if self.size < 32 || (self.size - 32) % 512 != 0 {
            return Err(format!("{} bytes is not a database plus its SHA-256", self.size));
        }
        let sum = self.hasher.finalize();
        if sum.as_slice() != self.tail.as_slice() {
            return Err(format!(
                "SHA-256 of the database is {} but etcd's trailer says {}",
                hex::encode(sum),
                hex::encode(&self.tail)
            ));
        }
        Ok(Snapshot {
            size: self.size,
            db_sha256: hex::encode(sum),
            file_sha256: hex::encode(self.whole.finalize()),
        })
    }
}

/// Would removing `target` keep etcd able to commit? After the removal the cluster
/// has the other voting members; a majority of them must answer (`healthy` holds the
/// ids of members whose client URL answered). A learner never counts for quorum.
pub fn removal_keeps_quorum(members: &[Member], target: u64, healthy: &[u64]) -> Result<(), String> {
    let Some(t) = members.iter().find(|m| m.id == target) else {
        return Ok(());
    };
    if t.is_learner {
        return Ok(());
    }
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner && m.id != target).collect();
    if voters.is_empty() {
        return Err(format!(
            "{} is etcd's only voting member: removing it would leave no cluster (restore from a snapshot instead)",
            display(t)
        ));
    }
    let up = voters.iter().filter(|m| healthy.contains(&m.id)).count();
    let need = voters.len() / 2 + 1;
    if up < need {
        let down: Vec<String> =
            voters.iter().filter(|m| !healthy.contains(&m.id)).map(|m| display(m)).collect();
        return Err(format!(
            "removing {} would break etcd's quorum: {} voting member(s) would remain, {need} must answer, \
             {up} do ({} not); bring those back or replace them first",
            display(t),
            voters.len(),
            down.join(", ")
        ));
    }
    Ok(())
}

fn display(m: &Member) -> String {
    if m.name.is_empty() {
        format!("member {} (unstarted)", m.hex_id())
    } else {
        format!("member {} ({})", m.hex_id(), m.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, learner: bool) -> Member {
        Member { id, name: format!("n{id}"), peer_urls: vec![], client_urls: vec![], is_learner: learner }
    }

    #[test]
    fn quorum_after_removal() {
        let three = [m(1, false), m(2, false), m(3, false)];
        // all up: removing any leaves 2 of 2
        assert!(removal_keeps_quorum(&three, 3, &[1, 2, 3]).is_ok());
        // 3 is down: removing it leaves 1 and 2, both up
        assert!(removal_keeps_quorum(&three, 3, &[1, 2]).is_ok());
        // 3 is down: removing 2 would leave 1 and 3 with only 1 answering
        let e = removal_keeps_quorum(&three, 2, &[1, 2]).unwrap_err();
        assert!(e.contains("break etcd's quorum") && e.contains("n3"), "{e}");
        // the last voter is never removed
        assert!(removal_keeps_quorum(&[m(1, false)], 1, &[1]).unwrap_err().contains("only voting member"));
        // a learner does not count, either as target or as a voter
        assert!(removal_keeps_quorum(&[m(1, false), m(2, true)], 2, &[1]).is_ok());
        assert!(removal_keeps_quorum(&[m(1, false), m(2, true)], 1, &[1, 2]).is_err());
        // an unknown id: nothing to remove, nothing to break
        assert!(removal_keeps_quorum(&three, 9, &[]).is_ok());
    }

    #[test]
    fn stream_decoding_checks_the_trailer() {
        let db = vec![7u8; 1024];
        let sum = Sha256::digest(&db);
        let mut all = db.clone();
        all.extend_from_slice(&sum);
        let enc = |b: &[u8], rem: usize| {
            format!(
                "{{\"result\":{{\"remaining_bytes\":\"{rem}\",\"blob\":\"{}\"}}}}\n",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        };
        let text = format!("{}{}", enc(&all[..700], all.len() - 700), enc(&all[700..], 0));
        let mut d = StreamDecoder::default();
        // fed in odd pieces, as TLS records arrive
        let mut got = Vec::new();
        for piece in text.as_bytes().chunks(13) {
            for b in d.push(piece).unwrap() {
                got.extend(b);
            }
        }
        d.finish().unwrap();
        assert_eq!(got, all);
        let got = d.verify().unwrap();
        assert_eq!((got.size, got.db_sha256), (all.len() as u64, hex::encode(sum)));
        assert_eq!(got.file_sha256, hex::encode(Sha256::digest(&all)));

        // one flipped byte
        let mut bad = all.clone();
        bad[10] ^= 1;
        let mut d = StreamDecoder::default();
        d.push(enc(&bad, 0).as_bytes()).unwrap();
        d.finish().unwrap();
        assert!(d.verify().unwrap_err().contains("SHA-256"));

        // cut short: the last message never came
        let mut d = StreamDecoder::default();
        d.push(enc(&all[..700], 10).as_bytes()).unwrap();
        assert!(d.finish().unwrap_err().contains("ended before"));

        // an error mid-stream
        let mut d = StreamDecoder::default();
        let e = d.push(b"{\"error\":{\"code\":2,\"message\":\"etcdserver: no space\"}}\n").unwrap_err();
        assert!(e.contains("no space"), "{e}");
    }
}
