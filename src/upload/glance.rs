//! OpenStack Glance v2 upload target.
//!
//! Credentials come from a clouds.yaml entry (`--os-cloud` / `OS_CLOUD`) or, without one, from
//! the standard `OS_*` environment variables; a Keystone v3 token (password or application
//! credential) gives the image endpoint from the service catalog unless `--glance-endpoint`
//! overrides it. The sequence is: look for an active image with our name and digest (a no-op
//! when found), `POST /v2/images`, `PUT /v2/images/{id}/file` streamed from disk while hashing
//! (sha512 + md5), poll until `active`, then compare Glance's `os_hash_value` (or the legacy md5
//! `checksum`) with ours. Glance cannot resume a PUT: after a transport error the image is
//! re-read; a still `queued` image gets the whole PUT again (bounded), anything else is deleted
//! and recreated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::Md5;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};

use super::{ImageInfo, Outcome};
use crate::exit::{Classify, Code};
use crate::reporter::Reporter;

/// PUT attempts per image and images created per run: Glance has no resumable upload.
const MAX_PUTS: u32 = 3;
const MAX_CREATES: u32 = 2;
const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct GlanceOptions {
    /// Glance: cloud name in clouds.yaml (without it: the OS_* environment variables)
    pub os_cloud: Option<String>,
    /// Glance: image API base URL (e.g. https://glance.example:9292); overrides the service catalog
    pub glance_endpoint: Option<String>,
    /// Glance: image visibility
    pub glance_visibility: String,
    /// Glance: seconds to wait for the image to become active after the upload
    pub glance_wait: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GlanceError {
    #[error("glance: {0}")]
    Config(String),
    #[error("glance: authentication failed with credentials from {source_desc}: HTTP {status}{detail}")]
    Auth { source_desc: String, status: u16, detail: String },
    #[error(
        "glance: no `image` endpoint (interface {interface}{region}) in the service catalog \
         from {source_desc}; set --glance-endpoint or fix the region/interface"
    )]
    NoEndpoint { source_desc: String, interface: String, region: String },
    #[error("glance: {what}: HTTP {status}: {body}")]
    Http { what: String, status: u16, body: String },
    #[error("glance: {what}: {msg}")]
    Transport { what: String, msg: String },
    #[error("glance: reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("glance: image {id} went to status `{status}` instead of active")]
    Failed { id: String, status: String },
    #[error("glance: image {id} still `{status}` after {secs} s (--glance-wait)")]
    Timeout { id: String, status: String, secs: u64 },
    #[error("glance: upload of image {id} failed after {attempts} attempts: {last}")]
    Retries { id: String, attempts: u32, last: String },
    #[error("glance: image {id} reports no checksum (neither os_hash_value nor checksum); cannot verify it")]
    NoChecksum { id: String },
    #[error(
        "glance: image {id}: {what} mismatch: glance reports {got}, the uploaded file has {expected} \
         (the image was deleted)"
    )]
    Mismatch { id: String, what: String, expected: String, got: String },
}

impl Classify for GlanceError {
    fn code(&self) -> Code {
        match self {
            GlanceError::Config(_) | GlanceError::NoEndpoint { .. } => Code::Input,
            GlanceError::Mismatch { .. } => Code::Integrity,
            _ => Code::Runtime,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// A user or project: by id, or by name within a domain.
#[derive(Debug, Clone, PartialEq)]
enum Ident {
    Id(String),
    Name { name: String, domain: Domain },
}

#[derive(Debug, Clone, PartialEq)]
enum Domain {
    Id(String),
    Name(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Method {
    Password {
        user: Ident,
        password: String,
        project: Option<Ident>,
    },
    AppCred {
        id: Option<String>,
        name: Option<String>,
        user: Option<Ident>,
        secret: String,
    },
    /// No Keystone at all (a noauth Glance); needs an explicit endpoint.
    None,
}

/// Everything needed to get a token and find the image endpoint.
#[derive(Debug, Clone)]
struct Creds {
    /// Where they came from, for error messages: never contains a secret.
    source: String,
    auth_url: String,
    method: Method,
    region: Option<String>,
    interface: String,
    cacert: Option<PathBuf>,
    insecure: bool,
    endpoint_override: Option<String>,
}

impl Creds {
    fn secret(&self) -> Option<&str> {
        match &self.method {
            Method::Password { password, .. } => Some(password),
            Method::AppCred { secret, .. } => Some(secret),
            Method::None => None,
        }
    }
}

/// A flat view of auth settings, filled from env vars or a clouds.yaml entry.
#[derive(Debug, Default)]
struct Raw(BTreeMap<String, String>);

impl Raw {
    fn get(&self, k: &str) -> Option<String> {
        self.0.get(k).filter(|v| !v.is_empty()).cloned()
    }
}

const ENV_KEYS: &[(&str, &str)] = &[
    ("OS_AUTH_URL", "auth_url"),
    ("OS_AUTH_TYPE", "auth_type"),
    ("OS_USERNAME", "username"),
    ("OS_USER_ID", "user_id"),
    ("OS_PASSWORD", "password"),
    ("OS_PROJECT_NAME", "project_name"),
    ("OS_TENANT_NAME", "project_name"),
    ("OS_PROJECT_ID", "project_id"),
    ("OS_TENANT_ID", "project_id"),
    ("OS_USER_DOMAIN_NAME", "user_domain_name"),
    ("OS_USER_DOMAIN_ID", "user_domain_id"),
    ("OS_PROJECT_DOMAIN_NAME", "project_domain_name"),
    ("OS_PROJECT_DOMAIN_ID", "project_domain_id"),
    ("OS_DEFAULT_DOMAIN", "default_domain"),
    ("OS_REGION_NAME", "region_name"),
    ("OS_INTERFACE", "interface"),
    ("OS_ENDPOINT_TYPE", "interface"),
    ("OS_APPLICATION_CREDENTIAL_ID", "application_credential_id"),
    ("OS_APPLICATION_CREDENTIAL_NAME", "application_credential_name"),
    ("OS_APPLICATION_CREDENTIAL_SECRET", "application_credential_secret"),
    ("OS_CACERT", "cacert"),
    ("OS_INSECURE", "insecure"),
];

fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Creds, GlanceError> {
    let mut raw = Raw::default();
    for (var, key) in ENV_KEYS {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            raw.0.entry(key.to_string()).or_insert(v);
        }
    }
    build_creds(raw, "environment variables (OS_*)".to_string())
}

/// clouds.yaml locations in openstacksdk's order (`OS_CLIENT_CONFIG_FILE` first).
fn config_dirs(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(".")];
    match env("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => dirs.push(Path::new(&x).join("openstack")),
        None => {
            if let Some(h) = env("HOME").filter(|v| !v.is_empty()) {
                dirs.push(Path::new(&h).join(".config/openstack"));
            }
        }
    }
    dirs.push(PathBuf::from("/etc/openstack"));
    dirs
}

fn find_file(env: &dyn Fn(&str) -> Option<String>, var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = env(var).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    config_dirs(env).into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn read_yaml(p: &Path) -> Result<serde_yaml::Value, GlanceError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| GlanceError::Config(format!("reading {}: {e}", p.display())))?;
    serde_yaml::from_str(&text).map_err(|e| GlanceError::Config(format!("parsing {}: {e}", p.display())))
}

/// secure.yaml values override clouds.yaml ones, map by map (openstacksdk's merge).
fn merge(base: &mut serde_yaml::Value, over: &serde_yaml::Value) {
    match (base, over) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_mapping() && v.is_mapping() => merge(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn from_clouds_yaml(cloud: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Creds, GlanceError> {
    let path = find_file(env, "OS_CLIENT_CONFIG_FILE", "clouds.yaml").ok_or_else(|| {
        let tried: Vec<_> =
            config_dirs(env).iter().map(|d| d.join("clouds.yaml").display().to_string()).collect();
        GlanceError::Config(format!(
            "cloud `{cloud}` requested but no clouds.yaml found (tried {})",
            tried.join(", ")
        ))
    })?;
    let doc = read_yaml(&path)?;
    let mut entry = doc
        .get("clouds")
        .and_then(|c| c.get(cloud))
        .cloned()
        .ok_or_else(|| GlanceError::Config(format!("no cloud `{cloud}` in {}", path.display())))?;
    if let Some(sec) = find_file(env, "OS_CLIENT_SECURE_FILE", "secure.yaml") {
        if let Some(s) = read_yaml(&sec)?.get("clouds").and_then(|c| c.get(cloud)) {
            merge(&mut entry, s);
        }
    }
    let mut raw = Raw::default();
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_mapping()) {
        for (k, v) in auth {
            if let (Some(k), Some(v)) = (k.as_str(), scalar(v)) {
                let k = match k {
                    "tenant_name" => "project_name",
                    "tenant_id" => "project_id",
                    k => k,
                };
                raw.0.insert(k.to_string(), v);
            }
        }
    }
    for (key, to) in [
        ("auth_type", "auth_type"),
        ("region_name", "region_name"),
        ("interface", "interface"),
        ("cacert", "cacert"),
        ("image_endpoint_override", "endpoint_override"),
    ] {
        if let Some(v) = entry.get(key).and_then(scalar) {
            raw.0.insert(to.to_string(), v);
        }
    }
    if let Some(v) = entry.get("verify").and_then(|v| v.as_bool()) {
        raw.0.insert("insecure".into(), (!v).to_string());
    }
    build_creds(raw, format!("clouds.yaml {} (cloud `{cloud}`)", path.display()))
}

fn domain(raw: &Raw, prefix: &str) -> Domain {
    if let Some(id) = raw.get(&format!("{prefix}_domain_id")).or_else(|| raw.get("domain_id")) {
        return Domain::Id(id);
    }
    if let Some(n) = raw.get(&format!("{prefix}_domain_name")).or_else(|| raw.get("domain_name")) {
        return Domain::Name(n);
    }
    // As python-openstackclient: the `default` domain unless told otherwise.
    Domain::Id(raw.get("default_domain").unwrap_or_else(|| "default".into()))
}

fn build_creds(raw: Raw, source: String) -> Result<Creds, GlanceError> {
    let missing = |what: &str| GlanceError::Config(format!("{what} is not set in {source}"));
    let auth_type = raw.get("auth_type").unwrap_or_else(|| "password".into());
    let user = || -> Option<Ident> {
        raw.get("user_id")
            .map(Ident::Id)
            .or_else(|| raw.get("username").map(|name| Ident::Name { name, domain: domain(&raw, "user") }))
    };
    let method = match auth_type.as_str() {
        "password" | "v3password" => {
            let user = user().ok_or_else(|| missing("a user (OS_USERNAME / OS_USER_ID / auth.username)"))?;
            let password =
                raw.get("password").ok_or_else(|| missing("a password (OS_PASSWORD / auth.password)"))?;
            let project = raw.get("project_id").map(Ident::Id).or_else(|| {
                raw.get("project_name").map(|name| Ident::Name { name, domain: domain(&raw, "project") })
            });
            Method::Password { user, password, project }
        }
        "v3applicationcredential" | "applicationcredential" => {
            let secret = raw
                .get("application_credential_secret")
                .ok_or_else(|| missing("an application credential secret"))?;
            let id = raw.get("application_credential_id");
            let name = raw.get("application_credential_name");
            let user = user();
            if id.is_none() && (name.is_none() || user.is_none()) {
                return Err(missing("an application credential id (or a name plus its user)"));
            }
            Method::AppCred { id, name, user, secret }
        }
        "none" | "noauth" => Method::None,
        other => {
            return Err(GlanceError::Config(format!(
                "auth type `{other}` from {source} is not supported (password, v3applicationcredential, none)"
            )))
        }
    };
    let auth_url = match (&method, raw.get("auth_url")) {
        (_, Some(u)) => u,
        (Method::None, None) => String::new(),
        _ => return Err(missing("an auth URL (OS_AUTH_URL / auth.auth_url)")),
    };
    let interface = raw.get("interface").unwrap_or_else(|| "public".into());
    // Old-style names (`publicURL`) mean the same interface.
    let interface = interface.trim_end_matches("URL").to_string();
    let insecure = matches!(raw.get("insecure").as_deref(), Some("true" | "True" | "1" | "yes"));
    Ok(Creds {
        source,
        auth_url,
        method,
        region: raw.get("region_name"),
        interface,
        cacert: raw.get("cacert").map(PathBuf::from),
        insecure,
        endpoint_override: raw.get("endpoint_override"),
    })
}

fn resolve_creds(args: &GlanceOptions, env: &dyn Fn(&str) -> Option<String>) -> Result<Creds, GlanceError> {
    match args.os_cloud.as_deref().filter(|c| !c.is_empty()) {
        Some(cloud) => from_clouds_yaml(cloud, env),
        None => from_env(env),
    }
}

// ---------------------------------------------------------------------------------------------
// Keystone

fn ident_json(i: &Ident) -> Value {
    let dom = |d: &Domain| match d {
        Domain::Id(id) => json!({ "id": id }),
        Domain::Name(n) => json!({ "name": n }),
    };
    match i {
        Ident::Id(id) => json!({ "id": id }),
        Ident::Name { name, domain } => json!({ "name": name, "domain": dom(domain) }),
    }
}

/// The body of `POST /v3/auth/tokens`.
fn auth_body(m: &Method) -> Value {
    match m {
        Method::Password { user, password, project } => {
            let mut u = ident_json(user);
            u["password"] = json!(password);
            let mut auth = json!({ "identity": { "methods": ["password"], "password": { "user": u } } });
            if let Some(p) = project {
                auth["scope"] = json!({ "project": ident_json(p) });
            }
            json!({ "auth": auth })
        }
        Method::AppCred { id, name, user, secret } => {
            let mut ac = json!({ "secret": secret });
            match id {
                Some(id) => ac["id"] = json!(id),
                None => {
                    ac["name"] = json!(name);
                    if let Some(u) = user {
                        ac["user"] = ident_json(u);
                    }
                }
            }
            json!({ "auth": { "identity": { "methods": ["application_credential"], "application_credential": ac } } })
        }
        Method::None => Value::Null,
    }
}

fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

/// The image endpoint of the catalog for `interface` (and `region` when set).
fn image_endpoint(catalog: &Value, interface: &str, region: Option<&str>) -> Option<String> {
    catalog.as_array()?.iter().filter(|s| s["type"] == "image").find_map(|s| {
        s["endpoints"].as_array()?.iter().find_map(|e| {
            let in_region =
                region.is_none_or(|r| e["region"].as_str() == Some(r) || e["region_id"].as_str() == Some(r));
            (e["interface"].as_str() == Some(interface) && in_region)
                .then(|| e["url"].as_str().map(str::to_string))
                .flatten()
        })
    })
}

/// Keep `text` free of the secret, whatever a server echoes back.
fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

/// Token (None for noauth) and the image API base URL (without `/v2`).
async fn authenticate(
    client: &reqwest::Client,
    creds: &Creds,
    override_url: Option<&str>,
) -> Result<(Option<String>, String), GlanceError> {
    let over = override_url.map(str::to_string).or_else(|| creds.endpoint_override.clone());
    if creds.method == Method::None {
        let url = over.ok_or_else(|| {
            GlanceError::Config(format!(
                "auth type `none` from {} needs --glance-endpoint (no catalog without Keystone)",
                creds.source
            ))
        })?;
        return Ok((None, api_base(&url)));
    }
    let url = tokens_url(&creds.auth_url);
    let what = format!("Keystone {url}");
    let resp = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(auth_body(&creds.method).to_string())
        .send()
        .await
        .map_err(|e| GlanceError::Transport {
            what: what.clone(),
            msg: scrub(&e.to_string(), creds.secret()),
        })?;
    let status = resp.status().as_u16();
    let token = resp.headers().get("x-subject-token").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    if status == 401 || status == 403 {
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(|m| format!(": {m}")))
            .unwrap_or_default();
        let detail = scrub(&detail, creds.secret());
        return Err(GlanceError::Auth { source_desc: creds.source.clone(), status, detail });
    }
    if !(200..300).contains(&status) {
        return Err(GlanceError::Http { what, status, body: scrub(&short(&text), creds.secret()) });
    }
    let token = token.ok_or_else(|| GlanceError::Http {
        what: what.clone(),
        status,
        body: "no X-Subject-Token header in the answer".into(),
    })?;
    let endpoint = match over {
        Some(u) => u,
        None => {
            let body: Value = serde_json::from_str(&text).map_err(|e| GlanceError::Http {
                what: what.clone(),
                status,
                body: format!("bad JSON: {e}"),
            })?;
            image_endpoint(&body["token"]["catalog"], &creds.interface, creds.region.as_deref()).ok_or_else(
                || GlanceError::NoEndpoint {
                    source_desc: creds.source.clone(),
                    interface: creds.interface.clone(),
                    region: creds.region.as_deref().map(|r| format!(", region {r}")).unwrap_or_default(),
                },
            )?
        }
    };
    Ok((Some(token), api_base(&endpoint)))
}

/// `https://host:9292/v2/` → `https://host:9292`: requests add `/v2/...` themselves.
fn api_base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v2").unwrap_or(u).to_string()
}

fn short(text: &str) -> String {
    let t = text.trim();
    if t.len() > 400 {
        let mut end = 400;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &t[..end])
    } else {
        t.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Glance

/// Glance's `disk_format` and `container_format` for our image format.
pub fn formats(format: &str) -> (&'static str, &'static str) {
    match format {
        "raw" => ("raw", "bare"),
        "vmdk" => ("vmdk", "bare"),
        "vhdx" => ("vhdx", "bare"),
        "vhd" => ("vhd", "bare"),
        "ova" => ("vmdk", "ova"),
        _ => ("qcow2", "bare"),
    }
}

/// Glance's `architecture` property (libosinfo / nova names).
fn glance_arch(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        a => a,
    }
}

/// The POST /v2/images body: core attributes plus our properties (strings, top level).
fn create_body(img: &ImageInfo, visibility: &str) -> Value {
    let (disk, container) = formats(&img.format);
    json!({
        "name": img.name,
        "disk_format": disk,
        "container_format": container,
        "visibility": visibility,
        "os_distro": "ubuntu",
        "os_version": "24.04",
        "os_type": "linux",
        "hw_qemu_guest_agent": "yes",
        "architecture": glance_arch(&img.arch),
        "imgbuild_role": img.role,
        "imgbuild_recipe": img.recipe,
        "imgbuild_sha256": img.sha256,
        "imgbuild_version": img.imgbuild_version,
        "kubernetes_version": img.k8s_version,
    })
}

struct Api<'a> {
    client: &'a reqwest::Client,
    base: String,
    token: Option<String>,
    /// The credential source, named when Glance rejects the token.
    source: String,
}

impl Api<'_> {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.header("X-Auth-Token", t),
            None => r,
        }
    }

    /// Send, require 2xx, return the body parsed as JSON (Null when empty).
    async fn call(&self, what: &str, rb: reqwest::RequestBuilder) -> Result<Value, GlanceError> {
        let resp =
            rb.send().await.map_err(|e| GlanceError::Transport { what: what.to_string(), msg: chain(&e) })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| GlanceError::Transport { what: what.to_string(), msg: chain(&e) })?;
        if status == 401 {
            return Err(GlanceError::Auth {
                source_desc: self.source.clone(),
                status,
                detail: format!(" (Glance rejected the token on {what})"),
            });
        }
        if !(200..300).contains(&status) {
            return Err(GlanceError::Http { what: what.to_string(), status, body: short(&text) });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| GlanceError::Http {
            what: what.to_string(),
            status,
            body: format!("bad JSON: {e}"),
        })
    }

    async fn show(&self, id: &str) -> Result<Value, GlanceError> {
        self.call(&format!("GET image {id}"), self.req(reqwest::Method::GET, &format!("/v2/images/{id}")))
            .await
    }

    async fn delete(&self, id: &str) -> Result<(), GlanceError> {
        self.call(
            &format!("DELETE image {id}"),
            self.req(reqwest::Method::DELETE, &format!("/v2/images/{id}")),
        )
        .await
        .map(|_| ())
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Digests of the image file, as Glance may report them.
#[derive(Debug, Clone, PartialEq)]
struct Digests {
    sha512: String,
    md5: String,
    size: u64,
}

#[derive(Default)]
struct Hashing {
    sha512: Sha512,
    md5: Md5,
    sha256: Sha256,
    size: u64,
}

impl Hashing {
    fn update(&mut self, b: &[u8]) {
        self.sha512.update(b);
        self.md5.update(b);
        self.sha256.update(b);
        self.size += b.len() as u64;
    }
    /// The digests, plus the sha256 of what was actually read (to catch a file changed under us).
    fn finish(self) -> (Digests, String) {
        let d = Digests {
            sha512: hex::encode(self.sha512.finalize()),
            md5: hex::encode(self.md5.finalize()),
            size: self.size,
        };
        (d, hex::encode(self.sha256.finalize()))
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> GlanceError + '_ {
    move |e| GlanceError::Io { path: path.display().to_string(), source: e }
}

/// Hash the file from disk (only needed when an existing image has to be compared by digest).
fn hash_file(path: &Path) -> Result<Digests, GlanceError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Hashing::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish().0)
}

/// Does this listed image hold exactly our bytes? Glance's own hash (and size) decide, as in the
/// post-upload verification; the `imgbuild_sha256` property is trusted only when Glance reports no
/// checksum at all, so an image left unverified (a timed-out or crashed run) is never taken on
/// the property alone.
fn same_image(img: &Value, ours: &ImageInfo, digests: &Digests) -> bool {
    match verify("", img, digests, &ours.sha256) {
        Ok(()) => true,
        Err(GlanceError::NoChecksum { .. }) => img["imgbuild_sha256"].as_str() == Some(ours.sha256.as_str()),
        Err(_) => false,
    }
}

/// Compare what Glance computed with what we sent: `os_hash_*` when present (sha512 by default;
/// sha256 also understood), else the legacy md5 `checksum`.
fn verify(id: &str, shown: &Value, ours: &Digests, sha256: &str) -> Result<(), GlanceError> {
    let mismatch = |what: &str, expected: &str, got: &str| GlanceError::Mismatch {
        id: id.to_string(),
        what: what.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
    };
    if let Some(size) = shown["size"].as_u64() {
        if size != ours.size {
            return Err(mismatch("size", &ours.size.to_string(), &size.to_string()));
        }
    }
    let algo = shown["os_hash_algo"].as_str().unwrap_or("");
    if let Some(value) = shown["os_hash_value"].as_str().filter(|v| !v.is_empty()) {
        let expected = match algo {
            "sha512" => Some(ours.sha512.as_str()),
            "sha256" => Some(sha256),
            _ => None,
        };
        if let Some(exp) = expected {
            return if value.eq_ignore_ascii_case(exp) { Ok(()) } else { Err(mismatch(algo, exp, value)) };
        }
    }
    match shown["checksum"].as_str().filter(|v| !v.is_empty()) {
        Some(c) if c.eq_ignore_ascii_case(&ours.md5) => Ok(()),
        Some(c) => Err(mismatch("md5 checksum", &ours.md5, c)),
        None => Err(GlanceError::NoChecksum { id: id.to_string() }),
    }
}

/// Result of one PUT: the digests of what was streamed, or why it failed.
enum PutResult {
    Done(Digests, String),
    /// Transport error or 5xx: worth looking at the image and maybe retrying.
    Retryable(String),
}

async fn put_file(
    api: &Api<'_>,
    id: &str,
    img: &ImageInfo,
    progress: &Reporter,
    attempt: u32,
) -> Result<PutResult, GlanceError> {
    let path = img.path.clone();
    let file = tokio::fs::File::open(&path).await.map_err(io_err(&img.path))?;
    let hashing = Arc::new(Mutex::new(Hashing::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let (h2, s2) = (hashing.clone(), sent.clone());
    let stream = futures_util::stream::unfold(Some(file), move |state| {
        let (h, s) = (h2.clone(), s2.clone());
        async move {
            use tokio::io::AsyncReadExt;
            let mut file = state?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    if let Ok(mut g) = h.lock() {
                        g.update(&buf);
                    }
                    s.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok::<Vec<u8>, std::io::Error>(buf), Some(file)))
                }
                // End the stream after handing the error to the HTTP client.
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    let label = if attempt > 1 { format!("glance (attempt {attempt})") } else { "glance upload".to_string() };
    let task = progress.task(&label, Some(img.size));
    let send = api
        .req(reqwest::Method::PUT, &format!("/v2/images/{id}/file"))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, img.size)
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    tokio::pin!(send);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let started = Instant::now();
    let resp = loop {
        tokio::select! {
            r = &mut send => break r,
            _ = tick.tick() => task.set_position(sent.load(Ordering::Relaxed)),
        }
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            task.abandon();
            return Ok(PutResult::Retryable(chain(&e)));
        }
    };
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if status >= 500 {
        task.abandon();
        return Ok(PutResult::Retryable(format!("HTTP {status}: {}", short(&text))));
    }
    if !(200..300).contains(&status) {
        task.abandon();
        return Err(GlanceError::Http { what: format!("PUT image {id} data"), status, body: short(&text) });
    }
    task.finish(&format!(
        "uploaded {} to glance image {id} ({:.1} s)",
        crate::reporter::human_bytes(img.size),
        started.elapsed().as_secs_f64()
    ));
    let h = match Arc::try_unwrap(hashing) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        // The client still holds the stream: take the state out.
        Err(arc) => arc.lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default(),
    };
    let (d, sha256) = h.finish();
    Ok(PutResult::Done(d, sha256))
}

/// The image's status once Glance has noticed a broken upload: `saving` turns into `queued`
/// (stream broken, Glance restores the image) or `active` (only our answer was lost).
async fn settle(api: &Api<'_>, id: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.show(id).await.ok()?["status"].as_str()?.to_string();
        if status != "saving" || Instant::now() >= deadline {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Poll until `active`; `killed`/`deleted` or the deadline end it.
async fn wait_active(api: &Api<'_>, id: &str, wait: Duration) -> Result<Value, GlanceError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let shown = api.show(id).await?;
        let status = shown["status"].as_str().unwrap_or("").to_string();
        match status.as_str() {
            "active" => return Ok(shown),
            "killed" | "deleted" | "pending_delete" | "deactivated" => {
                return Err(GlanceError::Failed { id: id.to_string(), status })
            }
            _ => {}
        }
        if start.elapsed() >= wait {
            return Err(GlanceError::Timeout { id: id.to_string(), status, secs: wait.as_secs() });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Upload `img` to Glance (see the module docs for the sequence).
pub fn upload(img: &ImageInfo, args: &GlanceOptions, progress: &Reporter) -> Result<Outcome, GlanceError> {
    let env = |k: &str| std::env::var(k).ok();
    let creds = resolve_creds(args, &env)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GlanceError::Transport { what: "starting the runtime".into(), msg: e.to_string() })?;
    // A caller inside a runtime gets a plain thread (a runtime cannot nest).
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            s.spawn(|| rt.block_on(run(img, args, &creds, progress)))
                .join()
                .unwrap_or_else(|_| Err(GlanceError::Config("upload thread panicked".into())))
        });
    }
    rt.block_on(run(img, args, &creds, progress))
}

fn client(creds: &Creds) -> Result<reqwest::Client, GlanceError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(300))
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &creds.cacert {
        let pem =
            std::fs::read(ca).map_err(|e| GlanceError::Config(format!("reading {}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| GlanceError::Config(format!("CA bundle {}: {e}", ca.display())))?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if creds.insecure {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| GlanceError::Config(format!("HTTP client: {e}")))
}

async fn run(
    img: &ImageInfo,
    args: &GlanceOptions,
    creds: &Creds,
    progress: &Reporter,
) -> Result<Outcome, GlanceError> {
    let http = client(creds)?;
    let (token, base) = authenticate(&http, creds, args.glance_endpoint.as_deref()).await?;
    progress.status(format!("glance: {base} (credentials from {})", creds.source));
    let api = Api { client: &http, base, token, source: creds.source.clone() };

    // Idempotency: the name carries the digest prefix; the digest itself decides.
    let listed = api
        .call(
            "list images",
            api.req(reqwest::Method::GET, "/v2/images").query(&[("name", img.name.as_str())]),
        )
        .await?;
    let listed: Vec<Value> = listed["images"].as_array().cloned().unwrap_or_default();
    let active: Vec<&Value> = listed.iter().filter(|i| i["status"] == "active").collect();
    // Only a name match costs a local hashing pass (the name carries 48 bits of the sha256).
    let digests = if active.is_empty() {
        None
    } else {
        progress.status(format!("glance: {} image(s) named {}; comparing digests", active.len(), img.name));
        Some(hash_file(&img.path)?)
    };
    if let Some(found) = digests.as_ref().and_then(|d| active.iter().find(|i| same_image(i, img, d))) {
        let id = found["id"].as_str().unwrap_or_default().to_string();
        return Ok(Outcome::AlreadyPresent { id });
    }
    // A `queued` image of ours left by an interrupted run takes the data instead of a new one.
    let mut reuse = listed
        .iter()
        .find(|i| i["status"] == "queued" && i["imgbuild_sha256"].as_str() == Some(img.sha256.as_str()))
        .and_then(|i| i["id"].as_str().map(str::to_string));

    let wait = Duration::from_secs(args.glance_wait);
    let mut last = String::new();
    let mut attempts = 0;
    for _create in 0..MAX_CREATES {
        let id = match reuse.take() {
            Some(id) => {
                progress.status(format!("glance: reusing queued image {id}"));
                id
            }
            None => {
                let created = api
                    .call(
                        "create image",
                        api.req(reqwest::Method::POST, "/v2/images")
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(create_body(img, &args.glance_visibility).to_string()),
                    )
                    .await?;
                created["id"].as_str().map(str::to_string).ok_or_else(|| GlanceError::Http {
                    what: "create image".into(),
                    status: 201,
                    body: "no id in the answer".into(),
                })?
            }
        };
        let mut puts = 0;
        let outcome = loop {
            puts += 1;
            attempts += 1;
            match put_file(&api, &id, img, progress, puts).await {
                Ok(PutResult::Done(d, sha256)) => break Ok(Some((d, sha256))),
                Ok(PutResult::Retryable(msg)) => {
                    last = msg;
                    progress.status(format!("glance: upload to {id} interrupted: {last}"));
                    // The data may have landed even though the answer got lost.
                    match settle(&api, &id).await.as_deref() {
                        Some("queued") if puts < MAX_PUTS => continue,
                        Some("active") => break Ok(None),
                        _ => break Err(()),
                    }
                }
                Err(e) => {
                    let _ = api.delete(&id).await;
                    return Err(e);
                }
            }
        };
        let (ours, read_sha256) = match outcome {
            Ok(Some(x)) => x,
            // Data arrived despite the transport error: hash our file and verify as usual.
            Ok(None) => {
                let d = hash_file(&img.path)?;
                (d, img.sha256.clone())
            }
            Err(()) => {
                // Not queued any more (killed, half-saved): Glance cannot take the data again.
                let _ = api.delete(&id).await;
                continue;
            }
        };
        if read_sha256 != img.sha256 {
            let _ = api.delete(&id).await;
            return Err(GlanceError::Mismatch {
                id,
                what: "local file sha256 (changed while uploading?)".into(),
                expected: img.sha256.clone(),
                got: read_sha256,
            });
        }
        let shown = match wait_active(&api, &id, wait).await {
            Ok(v) => v,
            Err(e @ GlanceError::Failed { .. }) => {
                let _ = api.delete(&id).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = verify(&id, &shown, &ours, &img.sha256) {
            let _ = api.delete(&id).await;
            return Err(e);
        }
        return Ok(Outcome::Uploaded { id });
    }
    Err(GlanceError::Retries { id: img.name.clone(), attempts, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn env_password_defaults_domains_and_builds_scoped_body() {
        let env = env_of(&[
            ("OS_AUTH_URL", "https://ks:5000"),
            ("OS_USERNAME", "alice"),
            ("OS_PASSWORD", "s3cret"),
            ("OS_PROJECT_NAME", "k8s"),
            ("OS_INTERFACE", "internalURL"),
        ]);
        let c = from_env(&env).unwrap();
        assert_eq!(c.interface, "internal");
        assert_eq!(tokens_url(&c.auth_url), "https://ks:5000/v3/auth/tokens");
        let b = auth_body(&c.method);
        assert_eq!(b["auth"]["identity"]["methods"], json!(["password"]));
        assert_eq!(b["auth"]["identity"]["password"]["user"]["domain"], json!({"id": "default"}));
        assert_eq!(b["auth"]["scope"]["project"], json!({"name": "k8s", "domain": {"id": "default"}}));
    }

    #[test]
    fn appcred_by_id_is_unscoped() {
        let env = env_of(&[
            ("OS_AUTH_URL", "https://ks/v3/"),
            ("OS_AUTH_TYPE", "v3applicationcredential"),
            ("OS_APPLICATION_CREDENTIAL_ID", "ac1"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "xyz"),
        ]);
        let c = from_env(&env).unwrap();
        assert_eq!(tokens_url(&c.auth_url), "https://ks/v3/auth/tokens");
        let b = auth_body(&c.method);
        assert_eq!(
            b,
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac1", "secret": "xyz"}}}})
        );
    }

    #[test]
    fn missing_settings_are_input_errors_naming_the_source() {
        let e = from_env(&env_of(&[("OS_USERNAME", "a"), ("OS_PASSWORD", "p")])).unwrap_err();
        assert_eq!(e.code(), Code::Input);
        assert!(e.to_string().contains("environment variables"), "{e}");
        let e = from_env(&env_of(&[("OS_AUTH_TYPE", "v3token")])).unwrap_err();
        assert!(e.to_string().contains("v3token"), "{e}");
    }

    #[test]
    fn catalog_picks_interface_and_region() {
        let cat = json!([
            {"type": "identity", "endpoints": [{"interface": "public", "region": "r1", "url": "http://ks"}]},
            {"type": "image", "endpoints": [
                {"interface": "internal", "region": "r1", "url": "http://int1"},
                {"interface": "public", "region": "r1", "url": "http://pub1"},
                {"interface": "public", "region_id": "r2", "url": "http://pub2/v2/"}]}
        ]);
        assert_eq!(image_endpoint(&cat, "public", None).as_deref(), Some("http://pub1"));
        assert_eq!(image_endpoint(&cat, "public", Some("r2")).as_deref(), Some("http://pub2/v2/"));
        assert_eq!(image_endpoint(&cat, "internal", Some("r1")).as_deref(), Some("http://int1"));
        assert_eq!(image_endpoint(&cat, "admin", None), None);
        assert_eq!(api_base("http://pub2/v2/"), "http://pub2");
    }

    #[test]
    fn secure_yaml_merges_into_the_cloud() {
        let mut base: serde_yaml::Value =
            serde_yaml::from_str("auth: {auth_url: u, username: a}\nregion_name: r").unwrap();
        let over: serde_yaml::Value = serde_yaml::from_str("auth: {password: p}").unwrap();
        merge(&mut base, &over);
        assert_eq!(base["auth"]["username"].as_str(), Some("a"));
        assert_eq!(base["auth"]["password"].as_str(), Some("p"));
        assert_eq!(base["region_name"].as_str(), Some("r"));
    }

    #[test]
    fn verify_prefers_multihash_then_md5() {
        let d = Digests { sha512: "aa".into(), md5: "bb".into(), size: 3 };
        let ok = json!({"size": 3, "os_hash_algo": "sha512", "os_hash_value": "aa", "checksum": "zz"});
        assert!(verify("i", &ok, &d, "cc").is_ok());
        let bad = json!({"size": 3, "os_hash_algo": "sha512", "os_hash_value": "ab", "checksum": "bb"});
        assert_eq!(verify("i", &bad, &d, "cc").unwrap_err().code(), Code::Integrity);
        let old = json!({"size": 3, "checksum": "bb"});
        assert!(verify("i", &old, &d, "cc").is_ok());
        let none = json!({"size": 3});
        assert!(matches!(verify("i", &none, &d, "cc"), Err(GlanceError::NoChecksum { .. })));
        let size = json!({"size": 4, "checksum": "bb"});
        assert_eq!(verify("i", &size, &d, "cc").unwrap_err().code(), Code::Integrity);
    }

    #[test]
    fn appcred_by_name_names_its_user() {
        let env = env_of(&[
            ("OS_AUTH_URL", "https://ks"),
            ("OS_AUTH_TYPE", "v3applicationcredential"),
            ("OS_APPLICATION_CREDENTIAL_NAME", "uploader"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "xyz"),
            ("OS_USERNAME", "bob"),
            ("OS_USER_DOMAIN_ID", "d1"),
        ]);
        let b = auth_body(&from_env(&env).unwrap().method);
        assert_eq!(
            b["auth"]["identity"]["application_credential"],
            json!({"name": "uploader", "secret": "xyz", "user": {"name": "bob", "domain": {"id": "d1"}}})
        );
        let e = from_env(&env_of(&[
            ("OS_AUTH_URL", "https://ks"),
            ("OS_AUTH_TYPE", "v3applicationcredential"),
            ("OS_APPLICATION_CREDENTIAL_NAME", "uploader"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "xyz"),
        ]))
        .unwrap_err();
        assert_eq!(e.code(), Code::Input);
    }

    #[test]
    fn clouds_yaml_search_order() {
        let env = env_of(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")]);
        let dirs = config_dirs(&env);
        assert_eq!(dirs, [PathBuf::from("."), "/x/openstack".into(), "/etc/openstack".into()]);
        let env = env_of(&[("HOME", "/h")]);
        assert_eq!(config_dirs(&env)[1], PathBuf::from("/h/.config/openstack"));
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", "/c/my.yaml")]);
        assert_eq!(find_file(&env, "OS_CLIENT_CONFIG_FILE", "clouds.yaml"), Some("/c/my.yaml".into()));
    }

    #[test]
    fn existing_image_needs_glances_hash_unless_it_has_none() {
        let d = Digests { sha512: "aa".into(), md5: "bb".into(), size: 3 };
        let ours = ImageInfo {
            path: "x.qcow2".into(),
            format: "qcow2".into(),
            size: 3,
            sha256: "cc".into(),
            name: "n".into(),
            recipe: "r".into(),
            role: "worker".into(),
            arch: "amd64".into(),
            k8s_version: "v1.30.3".into(),
            imgbuild_version: "0.1.0".into(),
        };
        let good = json!({"size": 3, "os_hash_algo": "sha512", "os_hash_value": "aa"});
        assert!(same_image(&good, &ours, &d));
        let labelled_but_bad =
            json!({"size": 3, "os_hash_algo": "sha512", "os_hash_value": "ff", "imgbuild_sha256": "cc"});
        assert!(!same_image(&labelled_but_bad, &ours, &d));
        assert!(same_image(&json!({"imgbuild_sha256": "cc"}), &ours, &d));
        assert!(!same_image(&json!({"imgbuild_sha256": "dd"}), &ours, &d));
        assert_eq!(glance_arch("arm64"), "aarch64");
    }

    #[test]
    fn scrub_hides_the_secret() {
        assert_eq!(scrub("bad pw hunter2!", Some("hunter2")), "bad pw ***!");
        assert_eq!(formats("ova"), ("vmdk", "ova"));
        assert_eq!(formats("vhd"), ("vhd", "bare"));
    }
}
