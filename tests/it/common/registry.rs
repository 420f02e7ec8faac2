//! A REAL OCI registry on 127.0.0.1 for tests: Debian's `docker-registry`
//! (distribution v2.8) with
//! - token authentication: every request needs a bearer token; its realm is a
//!   loopback token endpoint ([`TokenServer`]) that hands out ES256 JWTs to anonymous
//!   clients, signed by a test key whose certificate is the registry's
//!   `rootcertbundle` (distribution's token spec; the registry verifies them itself);
//! - the `redirect` storage middleware: blob GETs answer 307 to a second loopback
//!   server (`storage`) that serves the registry's own files and, like S3 behind a
//!   presigned URL, refuses requests that carry an `Authorization` header.
//!
//! Test images (deterministic tar.gz layers, configs, manifests, indexes) come from the
//! shared builder (`imgbuild_testkit::oci`) and are pushed here through the registry API.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::http;

// The test images themselves come from the shared builder (testkit/).
pub use imgbuild_testkit::oci::*;

const SERVICE: &str = "imgbuild-test-registry";
const ISSUER: &str = "imgbuild-test-token-issuer";

/// `None` (with a loud message) when docker-registry is not installed, unless `CI` is
/// set: then a missing registry fails the test.
pub fn docker_registry() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/docker-registry");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("docker-registry is missing (ci/test.sh installs Debian's docker-registry)");
    }
    eprintln!(
        "SKIP: docker-registry is not installed (apt-get install docker-registry); registry tests skipped"
    );
    None
}

/// The loopback token endpoint: `GET /token?service=…&scope=repository:NAME:ACTIONS`
/// answers `{"token": JWT, "expires_in": 300}` for anyone (anonymous pulls), granting
/// the actions asked for.
pub struct TokenServer {
    pub port: u16,
    /// Every token request's query string.
    pub requests: Arc<Mutex<Vec<String>>>,
    _fake: http::Fake,
}

struct Signer {
    cert_der: Vec<u8>,
    key: p256::ecdsa::SigningKey,
}

impl Signer {
    fn new() -> (Signer, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["token-issuer.test".into()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "imgbuild test token issuer");
        let cert = params.self_signed(&kp).expect("self-signed cert");
        let key =
            <p256::ecdsa::SigningKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_der(&kp.serialize_der())
                .expect("pkcs8");
        (Signer { cert_der: cert.der().to_vec(), key }, cert.pem())
    }

    fn token(&self, scope: &str) -> String {
        use p256::ecdsa::signature::Signer as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut access = Vec::new();
        // scope: repository:NAME:pull[,push] (several scopes are space-separated)
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            let mut parts = s.rsplitn(2, ':');
            let actions: Vec<&str> = parts.next().unwrap_or("").split(',').collect();
            let typ_name = parts.next().unwrap_or("");
            if let Some((typ, name)) = typ_name.split_once(':') {
                access.push(serde_json::json!({"type": typ, "name": name, "actions": actions}));
            }
        }
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "", "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", rand_core::RngCore::next_u64(&mut rand_core::OsRng)), "access": access,
        });
        let signing_input =
            format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig: p256::ecdsa::Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&sig.to_bytes()))
    }
}

impl TokenServer {
    fn start(signer: Arc<Signer>) -> TokenServer {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let fake = http::Fake::start(None, move |x| {
            let target = x.req.path.clone();
            let query = target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
            let params: BTreeMap<String, String> = reqwest::Url::parse(&format!("http://token.test{target}"))
                .map(|u| u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
                .unwrap_or_default();
            reqs.lock().unwrap().push(query);
            let (status, body) = if !target.starts_with("/token")
                || params.get("service").map(String::as_str) != Some(SERVICE)
            {
                (400, r#"{"details":"unknown service"}"#.to_string())
            } else {
                let t = signer.token(params.get("scope").map(String::as_str).unwrap_or(""));
                (200, serde_json::json!({"token": t, "access_token": t, "expires_in": 300}).to_string())
            };
            x.respond(
                status,
                http::reason(status),
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )?;
            Ok(http::Then::Next)
        });
        TokenServer { port: fake.port, requests, _fake: fake }
    }
}

/// The running registry and its helpers. Dropping it stops the registry process.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub tokens: TokenServer,
    pub storage: http::Server,
    child: Child,
    signer: Arc<Signer>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server on `port` is this registry: `GET /v2/` answers 401 naming our
/// token endpoint. A bare connect could reach another test's server that took the port
/// between [`super::free_port`] and the registry's own bind.
fn answers_as_registry(port: u16, token_port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.take(64 << 10).read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.starts_with("HTTP/1.") && answer.contains(&format!("127.0.0.1:{token_port}/token"))
}

impl Registry {
    /// Start one; `None` when docker-registry is missing (see [`docker_registry`]).
    pub fn start() -> Option<Registry> {
        let bin = docker_registry()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let (signer, cert_pem) = Signer::new();
        let signer = Arc::new(signer);
        let cert = dir.path().join("token-issuer.pem");
        std::fs::write(&cert, cert_pem).expect("cert");
        let tokens = TokenServer::start(signer.clone());
        let storage = http::Server::start();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        storage.add_dir("/", data.clone());
        storage.refuse_authorization();
        for attempt in 0..5 {
            let port = super::free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                 middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: http://127.0.0.1:{sp}/\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: imgbuild-test\n\
                 auth:\n  token:\n    realm: http://127.0.0.1:{tp}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {cert}\n",
                data = data.display(),
                sp = storage.port,
                tp = tokens.port,
                cert = cert.display(),
            );
            let cfg = dir.path().join("config.yml");
            std::fs::write(&cfg, config).expect("config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(120) {
                if answers_as_registry(port, tokens.port) {
                    return Some(Registry { port, dir, tokens, storage, child, signer });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("docker-registry did not start (attempt {attempt}): {}", self_log(&dir));
        }
        panic!("docker-registry did not start: {}", self_log(&dir));
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `--mirror` that sends `https://<host>/v2/…` (a recipe's registry) here.
    pub fn mirror_for(&self, host: &str) -> String {
        format!("https://{host}/v2/={}/v2/", self.base())
    }

    /// The registry's own file for a blob (tamper with it to simulate corrupted storage).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    pub fn log(&self) -> String {
        self_log(&self.dir)
    }

    fn push_token(&self, name: &str) -> String {
        self.signer.token(&format!("repository:{name}:pull,push"))
    }

    /// Upload a blob (monolithic: POST, then PUT with the digest).
    pub fn push_blob(&self, name: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let auth = format!("Bearer {}", self.push_token(name));
        let r = send(
            "POST",
            &format!("{}/v2/{name}/blobs/uploads/", self.base()),
            &[("authorization", &auth)],
            Vec::new(),
        );
        assert_eq!(r.0, 202, "start upload: {} {}", r.0, String::from_utf8_lossy(&r.2));
        let loc = r.1.get("location").cloned().expect("upload location");
        let loc = if loc.starts_with('/') { format!("{}{loc}", self.base()) } else { loc };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = send(
            "PUT",
            &format!("{loc}{sep}digest={digest}"),
            &[("authorization", &auth), ("content-type", "application/octet-stream")],
            bytes.to_vec(),
        );
        assert_eq!(r.0, 201, "finish upload: {} {}", r.0, String::from_utf8_lossy(&r.2));
        digest
    }

    /// PUT a manifest or index under `reference` (a tag or its digest).
    pub fn push_manifest(&self, name: &str, reference: &str, media_type: &str, bytes: &[u8]) -> String {
        let auth = format!("Bearer {}", self.push_token(name));
        let r = send(
            "PUT",
            &format!("{}/v2/{name}/manifests/{reference}", self.base()),
            &[("authorization", &auth), ("content-type", media_type)],
            bytes.to_vec(),
        );
        assert_eq!(r.0, 201, "push manifest {name}:{reference}: {} {}", r.0, String::from_utf8_lossy(&r.2));
        sha256(bytes)
    }

    /// Push every blob, manifest and the index of `img` and tag it.
    pub fn push_image(&self, name: &str, tag: &str, img: &TestImage) {
        for b in &img.blobs {
            self.push_blob(name, b);
        }
        for m in &img.manifests {
            self.push_manifest(name, &m.digest, &m.media_type, &m.bytes);
        }
        self.push_manifest(name, tag, &img.top_media_type, &img.top);
    }
}

fn self_log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
}

/// One HTTP request (status, lowercase headers, body).
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let mut req = client.request(method.parse().expect("method"), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.body(body).send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        (status, headers, r.bytes().await.expect("body").to_vec())
    })
}
