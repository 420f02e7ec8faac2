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

mod auth;
mod config;
mod image;

use auth::*;
use config::*;
pub use image::formats;
use image::*;

/// Upload `img` to Glance (see the module docs for the sequence).
pub fn upload(img: &ImageInfo, args: &GlanceOptions, progress: &Reporter) -> Result<Outcome, GlanceError> {
    let env = |k: &str| std::env::var(k).ok();
    let creds = resolve_creds(args, &env)?;
    crate::net::block_on(run(img, args, &creds, progress))
        .map_err(|e| GlanceError::Transport { what: "upload".into(), msg: e.to_string() })?
}

/// The one client builder with the cloud's TLS choices: its `cacert` in addition to
/// the system roots, or no verification with `insecure`.
fn client(creds: &Creds) -> Result<reqwest::Client, GlanceError> {
    let trust = if creds.insecure {
        crate::net::Trust::Insecure
    } else if let Some(ca) = &creds.cacert {
        let pem =
            std::fs::read(ca).map_err(|e| GlanceError::Config(format!("reading {}: {e}", ca.display())))?;
        crate::net::Trust::AlsoCa(pem)
    } else {
        crate::net::Trust::System
    };
    // After the last byte of a multi-GiB PUT, Glance may store the data before it answers.
    let opts = crate::net::ClientOptions {
        trust,
        read_timeout: Some(Duration::from_secs(300)),
        ..Default::default()
    };
    let c = opts.build().map_err(|e| GlanceError::Config(format!("{e} (cacert {:?})", creds.cacert)))?;
    Ok(c.http)
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
