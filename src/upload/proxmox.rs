//! Proxmox VE target: the image becomes a file in a storage's `import` content
//! (`<storage>:import/<stable name>.<format>`, PVE ≥ 8.2), optionally a VM template that
//! imports it as its disk, with a cloud-init drive and a serial console.
//!
//! API calls (PVE API reference, `/api2/json`), in order:
//! 1. `GET /nodes/{node}/storage/{storage}/status`: the storage exists and has `import` content;
//!    with `--pve-template`, `GET /cluster/resources?type=vm`: the VMID is free or already this
//!    image's template;
//! 2. `GET /nodes/{node}/storage/{storage}/content?content=import`: the stable name already
//!    there with the image's size is a no-op (the name carries 12 hex digits of the sha256);
//! 3. `POST /nodes/{node}/storage/{storage}/upload`: multipart `content`, `checksum-algorithm`,
//!    `checksum` (PVE re-hashes before storing), then the file part, which pveproxy only accepts
//!    under the field name `filename` and with a Content-Length (no chunked encoding). The body is
//!    streamed from disk. The answer is a task UPID;
//! 4. `GET /nodes/{upid node}/tasks/{upid}/status` until `status=stopped`, `exitstatus=OK`;
//! 5. with `--pve-template`: `POST /nodes/{node}/qemu` (task), then
//!    `POST /nodes/{node}/qemu/{vmid}/template` (task on PVE 8, null before).
//!
//! PVE's upload cannot resume: an upload that fails mid-stream is started again from byte 0.

use std::fmt::Write as _;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{file_stream, ImageInfo, Meter, Outcome};
use crate::exit::{Classify, Code};
use crate::reporter::{human_bytes, Reporter};

/// Environment variable with the API token (preferred over the flag, which shows in `ps`).
pub const TOKEN_ENV: &str = "PVE_API_TOKEN";
/// Formats PVE accepts as `import` content (`UPLOAD_IMPORT_EXT_RE_1` in pve-storage).
pub const IMPORT_FORMATS: [&str; 4] = ["qcow2", "raw", "vmdk", "ova"];

/// Whole-request limit for the small JSON calls (not the upload).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts for idempotent GETs (connection failures and 5xx).
const GET_ATTEMPTS: u32 = 4;
const GET_BACKOFF: Duration = Duration::from_millis(250);
const UPLOAD_BACKOFF: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(8);
/// Task polling: starts fast (small uploads finish in well under a second), then backs off.
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_MAX: Duration = Duration::from_secs(2);
/// A PVE task that has not stopped after this long is reported as stuck.
const TASK_LIMIT: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone)]
pub struct ProxmoxOptions {
    /// Proxmox VE API URL, e.g. https://pve1.example.org:8006 (https only)
    pub pve_url: Option<String>,
    /// Node whose storage receives the image
    pub pve_node: Option<String>,
    /// Storage with `import` content (PVE >= 8.2)
    pub pve_storage: Option<String>,
    /// API token USER@REALM!TOKENID=SECRET; prefer $PVE_API_TOKEN (flags are visible in `ps`)
    pub pve_token: Option<String>,
    /// Pin the server certificate instead of verifying its chain: SHA256:AA:BB:... as the PVE GUI
    /// shows it (Node → System → Certificates)
    pub pve_fingerprint: Option<String>,
    /// Also create a VM template with this VMID from the image (disk, cloud-init drive, serial console)
    pub pve_template: Option<u32>,
    /// Storage for the template's disk and cloud-init drive (default: --pve-storage; needs `images`)
    pub pve_vm_storage: Option<String>,
    /// Template memory in MiB
    pub pve_memory: u32,
    /// Template CPU cores
    pub pve_cores: u32,
    /// Bridge of the template's virtio network interface ("none": no interface)
    pub pve_bridge: String,
    /// Times a failed upload is started again from byte 0 (PVE's upload cannot resume)
    pub pve_retries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxmoxError {
    #[error("--target proxmox needs {0}")]
    MissingOption(&'static str),
    #[error("--pve-url {url:?}: {msg}")]
    BadUrl { url: String, msg: String },
    #[error("no Proxmox VE API token: pass --pve-token or set ${TOKEN_ENV} (USER@REALM!TOKENID=SECRET)")]
    NoToken,
    #[error("the API token from {cred} is malformed: expected USER@REALM!TOKENID=SECRET")]
    BadToken { cred: String },
    #[error("--pve-fingerprint {0:?}: expected SHA256:AA:BB:... (32 bytes in hex, as the PVE GUI shows it)")]
    BadFingerprint(String),
    #[error("Proxmox VE cannot import {format} images (import content accepts {}); build with --format qcow2", IMPORT_FORMATS.join(", "))]
    UnsupportedFormat { format: String },
    #[error(
        "Proxmox VE rejected the API token {token_id} from {cred} (HTTP {status} {reason}): check the \
         token id and secret, and that the token is neither expired nor deleted"
    )]
    Auth { token_id: String, cred: String, status: u16, reason: String },
    #[error("{what}: permission denied for the API token {token_id} from {cred} (HTTP 403 {reason}){hint}")]
    Forbidden { what: String, token_id: String, cred: String, reason: String, hint: String },
    #[error("storage {storage:?} does not exist on node {node} ({detail})")]
    NoStorage { storage: String, node: String, detail: String },
    #[error(
        "storage {storage:?} does not accept disk-image imports (its content is {content:?}); enable \
         `import` (PVE >= 8.2): `pvesm set {storage} --content {content},import` or Datacenter → Storage \
         → Edit → Content → Import"
    )]
    NoImportContent { storage: String, content: String },
    #[error("VMID {vmid} is already used by {what}; choose another --pve-template VMID")]
    VmidTaken { vmid: u32, what: String },
    #[error(
        "TLS: {url} presented a certificate with fingerprint {actual}, not the pinned --pve-fingerprint \
         {expected}; nothing was sent"
    )]
    FingerprintMismatch { url: String, expected: String, actual: String },
    #[error(
        "TLS: cannot verify the certificate of {url}: {detail} (for a self-signed PVE certificate pass \
         --pve-fingerprint SHA256:... from Node → System → Certificates)"
    )]
    Tls { url: String, detail: String },
    #[error("{what}: HTTP {status} {reason}{errors}")]
    Http { what: String, status: u16, reason: String, errors: String },
    #[error("{what}: {detail}")]
    Net { what: String, detail: String },
    #[error("{what}: unexpected answer: {detail}")]
    Protocol { what: String, detail: String },
    #[error("Proxmox VE task {upid} failed: {exitstatus}")]
    Task { upid: String, exitstatus: String },
    #[error("Proxmox VE task {upid} has not finished after {secs} s")]
    TaskStuck { upid: String, secs: u64 },
    #[error("upload failed after {attempts} attempt(s) (PVE's upload cannot resume; each started from byte 0): {last}")]
    UploadFailed { attempts: u32, last: Box<ProxmoxError> },
    #[error("{what} {path}: {detail}")]
    Io { what: &'static str, path: String, detail: String },
}

impl Classify for ProxmoxError {
    fn code(&self) -> Code {
        use ProxmoxError::*;
        match self {
            MissingOption(_)
            | BadUrl { .. }
            | NoToken
            | BadToken { .. }
            | BadFingerprint(_)
            | UnsupportedFormat { .. }
            | NoStorage { .. }
            | NoImportContent { .. }
            | VmidTaken { .. } => Code::Input,
            FingerprintMismatch { .. } => Code::Integrity,
            // PVE re-hashed the upload against the sha256 we sent and it differed.
            Task { exitstatus, .. } if exitstatus.contains("checksum mismatch") => Code::Integrity,
            UploadFailed { last, .. } => match last.code() {
                Code::Integrity => Code::Integrity,
                _ => Code::Runtime,
            },
            Auth { .. }
            | Forbidden { .. }
            | Tls { .. }
            | Http { .. }
            | Net { .. }
            | Protocol { .. }
            | Task { .. }
            | TaskStuck { .. }
            | Io { .. } => Code::Runtime,
        }
    }
}

/// Options, token, pin and format checks that need no network, so a usage error shows
/// before a multi-GB image is hashed. [`upload`] runs them again.
pub fn preflight(format: &str, args: &ProxmoxOptions) -> Result<(), ProxmoxError> {
    Checked::new(format, args).map(|_| ())
}

struct Checked<'a> {
    url: &'a str,
    node: &'a str,
    storage: &'a str,
    token: Token,
    pin: Option<[u8; 32]>,
}

impl<'a> Checked<'a> {
    fn new(format: &str, args: &'a ProxmoxOptions) -> Result<Checked<'a>, ProxmoxError> {
        let url = args.pve_url.as_deref().ok_or(ProxmoxError::MissingOption("--pve-url"))?;
        let node = args.pve_node.as_deref().ok_or(ProxmoxError::MissingOption("--pve-node"))?;
        let storage = args.pve_storage.as_deref().ok_or(ProxmoxError::MissingOption("--pve-storage"))?;
        if !IMPORT_FORMATS.contains(&format) {
            return Err(ProxmoxError::UnsupportedFormat { format: format.to_string() });
        }
        let token = Token::from_args(args.pve_token.as_deref())?;
        let pin = args.pve_fingerprint.as_deref().map(parse_fingerprint).transpose()?;
        Ok(Checked { url, node, storage, token, pin })
    }
}

/// Upload `img` into the storage's import content; with `--pve-template`, make a VM template.
pub fn upload(img: &ImageInfo, args: &ProxmoxOptions, progress: &Reporter) -> Result<Outcome, ProxmoxError> {
    let Checked { url, node, storage, token, pin } = Checked::new(&img.format, args)?;
    let api = Api::new(url, token, pin)?;

    api.check_storage(node, storage)?;
    // A VMID held by another guest is found before anything is sent.
    let make_template = match args.pve_template {
        Some(vmid) => api.template_needed(img, vmid, progress)?.then_some(vmid),
        None => None,
    };
    let file = format!("{}.{}", img.name, img.format);
    let volid = format!("{storage}:import/{file}");
    let outcome = match api.find_import(node, storage, &volid)? {
        Some(size) if size == img.size => Outcome::AlreadyPresent { id: volid.clone() },
        found => {
            if let Some(size) = found {
                progress.status(format!(
                    "{volid} exists with {size} bytes, not {}: replacing it (PVE overwrites)",
                    img.size
                ));
            }
            api.upload(img, node, storage, &file, args.pve_retries, progress)?;
            Outcome::Uploaded { id: volid.clone() }
        }
    };
    if let Some(vmid) = make_template {
        let vm_storage = args.pve_vm_storage.as_deref().unwrap_or(storage);
        api.template(img, args, node, vm_storage, &volid, vmid, progress)?;
    }
    Ok(outcome)
}

/// The API token and where it came from (for error messages; the secret is never shown).
struct Token {
    header: HeaderValue,
    id: String,
    source: String,
}

impl Token {
    fn from_args(flag: Option<&str>) -> Result<Token, ProxmoxError> {
        let (raw, source) = match flag {
            Some(t) => (t.to_string(), "--pve-token".to_string()),
            None => match std::env::var(TOKEN_ENV) {
                Ok(t) if !t.is_empty() => (t, format!("${TOKEN_ENV}")),
                _ => return Err(ProxmoxError::NoToken),
            },
        };
        let bad = || ProxmoxError::BadToken { cred: source.clone() };
        let raw = raw.trim();
        let raw = raw.strip_prefix("PVEAPIToken=").unwrap_or(raw);
        let (id, secret) = raw.split_once('=').ok_or_else(bad)?;
        let (user, tokenid) = id.split_once('!').ok_or_else(bad)?;
        let well_formed = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !user.contains('@') || !well_formed(user) || !well_formed(tokenid) || !well_formed(secret) {
            return Err(bad());
        }
        let mut header = HeaderValue::from_str(&format!("PVEAPIToken={id}={secret}")).map_err(|_| bad())?;
        header.set_sensitive(true);
        Ok(Token { header, id: id.to_string(), source })
    }
}

/// `SHA256:AA:BB:...` (also without the prefix or colons, any case) → the 32 bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], ProxmoxError> {
    let t = s.trim();
    let t = if t.len() > 7 && t[..7].eq_ignore_ascii_case("sha256:") { &t[7..] } else { t };
    let hexs: String = t.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hexs).map_err(|_| ProxmoxError::BadFingerprint(s.to_string()))?;
    bytes.try_into().map_err(|_| ProxmoxError::BadFingerprint(s.to_string()))
}

pub use crate::net::tls::format_fingerprint;

/// Percent-encode one path segment (UPIDs carry `:`, `@` and `!`).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// PVE VM names are DNS names: the stable name with anything else turned into `-`.
fn vm_name(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    let labels: Vec<&str> = s.split('.').map(|l| l.trim_matches('-')).filter(|l| !l.is_empty()).collect();
    labels.join(".")
}

/// The node a task runs on: `UPID:<node>:<pid>:...`.
fn upid_node(upid: &str) -> Option<&str> {
    let mut parts = upid.split(':');
    (parts.next() == Some("UPID")).then(|| parts.next()).flatten().filter(|n| !n.is_empty())
}

/// The one backoff formula (`net::RetryPolicy`) from `base`, capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let p = crate::net::RetryPolicy {
        backoff_base: base,
        backoff_cap: BACKOFF_CAP,
        ..crate::net::RetryPolicy::small(1)
    };
    p.backoff(attempt + 1)
}

/// A failed call: whether trying again may help.
struct Failure {
    err: ProxmoxError,
    transient: bool,
}

struct Api {
    http: reqwest::Client,
    /// The client as built (to name a certificate the pin refused).
    client: crate::net::Client,
    /// Origin as given (for messages) and the API root (`…/api2/json`).
    origin: String,
    root: String,
    token: Token,
    pin: Option<[u8; 32]>,
}

impl Api {
    fn new(url: &str, token: Token, pin: Option<[u8; 32]>) -> Result<Api, ProxmoxError> {
        let bad = |msg: &str| ProxmoxError::BadUrl { url: url.to_string(), msg: msg.to_string() };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if parsed.scheme() != "https" {
            return Err(bad("must be https:// (the API token must not travel unencrypted)"));
        }
        if parsed.host_str().is_none() || parsed.query().is_some() {
            return Err(bad("expected https://HOST[:PORT][/api2/json]"));
        }
        let mut root = parsed.as_str().trim_end_matches('/').to_string();
        if !root.ends_with("/api2/json") {
            root.push_str("/api2/json");
        }
        let origin = root.trim_end_matches("/api2/json").to_string();
        // PVE speaks HTTP/1.1 only; its upload handler needs Content-Length, which http1 sends.
        let opts = crate::net::ClientOptions {
            trust: pin.map_or(crate::net::Trust::System, crate::net::Trust::Pin),
            http1_only: true,
            ..Default::default()
        };
        let client = opts
            .build()
            .map_err(|e| ProxmoxError::Net { what: "HTTP client".into(), detail: e.to_string() })?;
        let http = client.http.clone();
        Ok(Api { http, client, origin, root, token, pin })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// Turn a transport error into the clearest error we can name.
    fn transport(&self, what: &str, e: &reqwest::Error) -> Failure {
        if let Some(pin) = &self.pin {
            if let Some(actual) = self.client.rejected_fingerprint() {
                return Failure {
                    err: ProxmoxError::FingerprintMismatch {
                        url: self.origin.clone(),
                        expected: format_fingerprint(pin),
                        actual,
                    },
                    transient: false,
                };
            }
        }
        let detail = chain(e);
        if crate::net::tls::is_tls_error(e) {
            return Failure { err: ProxmoxError::Tls { url: self.origin.clone(), detail }, transient: false };
        }
        Failure { err: ProxmoxError::Net { what: what.to_string(), detail }, transient: true }
    }

    /// Status and body → the `data` member, or a classified error.
    async fn answer(&self, what: &str, resp: reqwest::Response) -> Result<Value, Failure> {
        let status = resp.status();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(self.transport(what, &e)),
        };
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            let Some(mut v) = json else {
                return Err(Failure {
                    err: ProxmoxError::Protocol { what: what.into(), detail: "the body is not JSON".into() },
                    transient: false,
                });
            };
            return Ok(v.get_mut("data").map(Value::take).unwrap_or(Value::Null));
        }
        let err = match status {
            StatusCode::UNAUTHORIZED => ProxmoxError::Auth {
                token_id: self.token.id.clone(),
                cred: self.token.source.clone(),
                status: status.as_u16(),
                reason,
            },
            StatusCode::FORBIDDEN => ProxmoxError::Forbidden {
                what: what.into(),
                token_id: self.token.id.clone(),
                cred: self.token.source.clone(),
                reason,
                hint: String::new(),
            },
            _ => {
                let errors = json
                    .as_ref()
                    .and_then(|j| j.get("errors"))
                    .and_then(Value::as_object)
                    .map(|o| {
                        let parts: Vec<String> = o
                            .iter()
                            .map(|(k, v)| {
                                format!("{k}: {}", v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                            })
                            .collect();
                        format!(" ({})", parts.join("; "))
                    })
                    .unwrap_or_default();
                ProxmoxError::Http { what: what.into(), status: status.as_u16(), reason, errors }
            }
        };
        Err(Failure { err, transient: status.is_server_error() })
    }

    /// One JSON call; GETs are retried on connection failures and 5xx.
    fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        form: &[(&str, String)],
    ) -> Result<Value, ProxmoxError> {
        let what = format!("{method} {path}");
        let attempts = if method == Method::GET { GET_ATTEMPTS } else { 1 };
        crate::net::block_on(async {
            let mut attempt = 0;
            loop {
                let mut req = self
                    .http
                    .request(method.clone(), self.url(path))
                    .header(AUTHORIZATION, self.token.header.clone())
                    .timeout(CALL_TIMEOUT);
                if !query.is_empty() {
                    req = req.query(query);
                }
                if !form.is_empty() {
                    req = req.form(form);
                }
                let result = match req.send().await {
                    Ok(resp) => self.answer(&what, resp).await,
                    Err(e) => Err(self.transport(&what, &e)),
                };
                match result {
                    Ok(v) => return Ok(v),
                    Err(f) if f.transient && attempt + 1 < attempts => {
                        tokio::time::sleep(backoff(GET_BACKOFF, attempt)).await;
                        attempt += 1;
                    }
                    Err(f) => return Err(f.err),
                }
            }
        })
        .map_err(|e| ProxmoxError::Net { what, detail: e.to_string() })?
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ProxmoxError> {
        self.call(Method::GET, path, query, &[])
    }

    fn check_storage(&self, node: &str, storage: &str) -> Result<(), ProxmoxError> {
        let path = format!("/nodes/{}/storage/{}/status", seg(node), seg(storage));
        let status = match self.get(&path, &[]) {
            Ok(v) => v,
            // pve-storage: raise_param_exc({ storage => "No such storage." }) → 400.
            Err(ProxmoxError::Http { status: 400, reason, errors, .. }) if errors.contains("storage") => {
                return Err(ProxmoxError::NoStorage {
                    storage: storage.into(),
                    node: node.into(),
                    detail: format!("HTTP 400 {reason}{errors}"),
                })
            }
            Err(ProxmoxError::Http { status: 500, reason, .. }) if reason.contains("does not exist") => {
                return Err(ProxmoxError::NoStorage {
                    storage: storage.into(),
                    node: node.into(),
                    detail: reason,
                })
            }
            Err(e) => return Err(e),
        };
        let content = status.get("content").and_then(Value::as_str).unwrap_or("").to_string();
        if !content.split(',').any(|c| c.trim() == "import") {
            return Err(ProxmoxError::NoImportContent { storage: storage.into(), content });
        }
        Ok(())
    }

    /// Size of `volid` in the storage's import content, if it is there.
    fn find_import(&self, node: &str, storage: &str, volid: &str) -> Result<Option<u64>, ProxmoxError> {
        let path = format!("/nodes/{}/storage/{}/content", seg(node), seg(storage));
        let list = self.get(&path, &[("content", "import")])?;
        let items = list.as_array().ok_or_else(|| ProxmoxError::Protocol {
            what: format!("GET {path}"),
            detail: "expected a list of volumes".into(),
        })?;
        Ok(items
            .iter()
            .find(|i| i.get("volid").and_then(Value::as_str) == Some(volid))
            .map(|i| i.get("size").and_then(Value::as_u64).unwrap_or(0)))
    }

    fn upload(
        &self,
        img: &ImageInfo,
        node: &str,
        storage: &str,
        file: &str,
        retries: u32,
        progress: &Reporter,
    ) -> Result<(), ProxmoxError> {
        let path = format!("/nodes/{}/storage/{}/upload", seg(node), seg(storage));
        let what = format!("POST {path}");
        let meter = Meter::new(progress, &format!("upload {file}"), img.size);
        let mut attempt = 0u32;
        let upid = loop {
            meter.reset();
            let result = match crate::net::block_on(self.upload_once(img, &path, &what, file, meter.clone()))
            {
                Ok(r) => r,
                Err(e) => return Err(ProxmoxError::Net { what, detail: e.to_string() }),
            };
            match result {
                Ok(upid) => break upid,
                Err(f) if f.transient && attempt < retries => {
                    progress.status(format!(
                        "upload of {file} failed ({}); starting again from byte 0 ({} of {retries} retries)",
                        f.err,
                        attempt + 1
                    ));
                    std::thread::sleep(backoff(UPLOAD_BACKOFF, attempt));
                    attempt += 1;
                }
                Err(f) if f.transient => {
                    meter.abandon();
                    return Err(ProxmoxError::UploadFailed { attempts: attempt + 1, last: Box::new(f.err) });
                }
                Err(f) => {
                    meter.abandon();
                    return Err(f.err);
                }
            }
        };
        meter.finish(&format!("sent {file} ({}), PVE task {upid}", human_bytes(img.size)));
        self.wait_task(&upid)?;
        Ok(())
    }

    async fn upload_once(
        &self,
        img: &ImageInfo,
        path: &str,
        what: &str,
        file: &str,
        meter: Meter,
    ) -> Result<String, Failure> {
        use reqwest::multipart::{Form, Part};
        let io_fail = |e: std::io::Error| Failure {
            err: ProxmoxError::Io {
                what: "reading",
                path: img.path.display().to_string(),
                detail: e.to_string(),
            },
            transient: false,
        };
        let stream = file_stream(&img.path, meter).await.map_err(io_fail)?;
        let part = Part::stream_with_length(reqwest::Body::wrap_stream(stream), img.size)
            .file_name(file.to_string())
            .mime_str("application/octet-stream")
            .map_err(|e| Failure {
                err: ProxmoxError::Protocol { what: what.into(), detail: e.to_string() },
                transient: false,
            })?;
        // pveproxy reads the plain fields first and takes the file part's `filename`
        // attribute as the `filename` parameter; the part must come last.
        let form = Form::new()
            .text("content", "import")
            .text("checksum-algorithm", "sha256")
            .text("checksum", img.sha256.clone())
            .part("filename", part);
        let req =
            self.http.post(self.url(path)).header(AUTHORIZATION, self.token.header.clone()).multipart(form);
        let resp = req.send().await.map_err(|e| self.transport(what, &e))?;
        let data = self.answer(what, resp).await.map_err(|mut f| {
            if let ProxmoxError::Forbidden { hint, .. } = &mut f.err {
                *hint = " (uploading needs Datastore.AllocateTemplate on the storage)".into();
            }
            f
        })?;
        match data.as_str() {
            Some(u) if u.starts_with("UPID:") => Ok(u.to_string()),
            _ => Err(Failure {
                err: ProxmoxError::Protocol {
                    what: what.into(),
                    detail: format!("expected a task UPID, got {data}"),
                },
                transient: false,
            }),
        }
    }

    /// Poll a task until it stops; its `exitstatus` must be `OK`.
    fn wait_task(&self, upid: &str) -> Result<(), ProxmoxError> {
        let node = upid_node(upid).ok_or_else(|| ProxmoxError::Protocol {
            what: "task".into(),
            detail: format!("malformed UPID {upid:?}"),
        })?;
        let path = format!("/nodes/{}/tasks/{}/status", seg(node), seg(upid));
        let start = std::time::Instant::now();
        let mut wait = POLL_FIRST;
        loop {
            let st = self.get(&path, &[])?;
            if st.get("status").and_then(Value::as_str) == Some("stopped") {
                let exit = st.get("exitstatus").and_then(Value::as_str).unwrap_or("(no exit status)");
                return if exit == "OK" {
                    Ok(())
                } else {
                    Err(ProxmoxError::Task { upid: upid.into(), exitstatus: exit.into() })
                };
            }
            if start.elapsed() > TASK_LIMIT {
                return Err(ProxmoxError::TaskStuck { upid: upid.into(), secs: TASK_LIMIT.as_secs() });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(POLL_MAX);
        }
    }

    /// Whether VMID still has to be made into the template: false when it already is a
    /// template of this image; an error when another guest holds it.
    fn template_needed(&self, img: &ImageInfo, vmid: u32, progress: &Reporter) -> Result<bool, ProxmoxError> {
        let vms = self.get("/cluster/resources", &[("type", "vm")])?;
        let existing = vms
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v.get("vmid").and_then(Value::as_u64) == Some(u64::from(vmid)));
        let Some(v) = existing else { return Ok(true) };
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        let is_template = v.get("template").and_then(Value::as_u64) == Some(1);
        if name == vm_name(&img.name) && is_template {
            progress.status(format!("template {vmid} ({name}) already present"));
            return Ok(false);
        }
        let kind = if is_template { "template" } else { "VM" };
        Err(ProxmoxError::VmidTaken { vmid, what: format!("{kind} {name:?}") })
    }

    #[allow(clippy::too_many_arguments)]
    fn template(
        &self,
        img: &ImageInfo,
        args: &ProxmoxOptions,
        node: &str,
        vm_storage: &str,
        volid: &str,
        vmid: u32,
        progress: &Reporter,
    ) -> Result<(), ProxmoxError> {
        let mut description = format!("imgbuild image {}\n", img.name);
        for (k, v) in img.metadata() {
            let _ = writeln!(description, "{k}: {v}");
        }
        let mut form: Vec<(&str, String)> = vec![
            ("vmid", vmid.to_string()),
            ("name", vm_name(&img.name)),
            ("description", description),
            ("ostype", "l26".into()),
            ("memory", args.pve_memory.to_string()),
            ("cores", args.pve_cores.to_string()),
            ("scsihw", "virtio-scsi-single".into()),
            ("scsi0", format!("{vm_storage}:0,import-from={volid}")),
            ("ide2", format!("{vm_storage}:cloudinit")),
            ("serial0", "socket".into()),
            ("vga", "serial0".into()),
            ("boot", "order=scsi0".into()),
            ("agent", "1".into()),
        ];
        if args.pve_bridge != "none" {
            form.push(("net0", format!("virtio,bridge={}", args.pve_bridge)));
        }
        let create = format!("/nodes/{}/qemu", seg(node));
        let upid = self.call(Method::POST, &create, &[], &form)?;
        let upid = upid.as_str().ok_or_else(|| ProxmoxError::Protocol {
            what: format!("POST {create}"),
            detail: format!("expected a task UPID, got {upid}"),
        })?;
        progress.status(format!("creating VM {vmid} from {volid} (task {upid})"));
        self.wait_task(upid)?;
        let tpl = format!("/nodes/{}/qemu/{vmid}/template", seg(node));
        // PVE 8 answers with a task, older versions with null.
        if let Some(upid) = self.call(Method::POST, &tpl, &[], &[])?.as_str() {
            self.wait_task(upid)?;
        }
        progress.status(format!("template {vmid} ({}) created", img.name));
        Ok(())
    }
}

use crate::net::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        let d: Vec<u8> = (0u8..32).collect();
        let f = format_fingerprint(&d);
        assert!(f.starts_with("SHA256:00:01:02:"));
        assert_eq!(parse_fingerprint(&f).ok().map(|b| b.to_vec()), Some(d.clone()));
        assert_eq!(parse_fingerprint(&f.to_lowercase()).ok().map(|b| b.to_vec()), Some(d.clone()));
        assert_eq!(parse_fingerprint(&hex::encode(&d)).ok().map(|b| b.to_vec()), Some(d));
        assert!(parse_fingerprint("SHA256:00:01").is_err());
        assert!(parse_fingerprint("zz").is_err());
    }

    #[test]
    fn vm_names_are_dns_names() {
        assert_eq!(
            vm_name("ubuntu-24.04-k8s-v1.30.3-worker-amd64-7afb9cbe3fc1"),
            "ubuntu-24.04-k8s-v1.30.3-worker-amd64-7afb9cbe3fc1"
        );
        assert_eq!(vm_name("my_recipe-worker-amd64-0123456789ab"), "my-recipe-worker-amd64-0123456789ab");
        assert_eq!(vm_name("-a..b_"), "a.b");
    }

    #[test]
    fn upids_and_segments() {
        let u = "UPID:pve1:0000A1B2:0012C3D4:6745F0A1:imgcopy::root@pam!imgbuild:";
        assert_eq!(upid_node(u), Some("pve1"));
        assert_eq!(upid_node("nope"), None);
        assert_eq!(
            seg(u),
            "UPID%3Apve1%3A0000A1B2%3A0012C3D4%3A6745F0A1%3Aimgcopy%3A%3Aroot%40pam%21imgbuild%3A"
        );
    }

    #[test]
    fn tokens_never_echo_the_secret() {
        let t = Token::from_args(Some("root@pam!ci=0b3c-secret")).map_err(|e| e.to_string());
        let t = t.as_ref().ok();
        assert_eq!(t.map(|t| t.id.as_str()), Some("root@pam!ci"));
        assert_eq!(t.map(|t| t.source.as_str()), Some("--pve-token"));
        for bad in ["root@pam=x", "rootpam!ci=x", "root@pam!ci=", "root@pam!ci=a b"] {
            let e = Token::from_args(Some(bad)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("--pve-token") && !e.contains(bad), "{bad}: {e}");
        }
    }
}
