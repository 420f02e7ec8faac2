//! The Kubernetes Secrets of the turned-on profiles, rendered for the first control
//! plane's user-data (`PROFILE_SECRETS_DIR/<profile>.yaml`, 0600) and applied by the
//! add-on installer right before the profile's chart, in the profile's namespace. The
//! charts' values (baked into the image by the recipe) point at them by name; each name
//! and key below is the one the pinned chart reads:
//!
//! | profile | Secret | keys | chart values that read it |
//! | --- | --- | --- | --- |
//! | monitoring | `grafana-admin` | `admin-user`, `admin-password` | grafana 8.3 `admin.existingSecret`/`userKey`/`passwordKey` |
//! | logging | `logging-otlp` | `authorization` (`Api-Token <token>`) | opentelemetry-collector 0.90 `extraEnvs` (`secretKeyRef`) as `OTLP_AUTHORIZATION`, which the collector expands in `config.exporters.otlphttp.headers.Authorization: ${env:OTLP_AUTHORIZATION}` |
//! | gitops | `argocd-secret` | `admin.password` (bcrypt), `admin.passwordMtime` | argo-cd 7.3 `configs.secret.createSecret: false`; Argo CD reads the Secret by that name |
//! | cinder | `cinder-csi-cloud-config` | `cloud.conf` | openstack-cinder-csi 2.30 `secret.enabled`/`create: false`/`name` |
//! | proxmox | `proxmox-csi-config` | `config.yaml` | proxmox-csi-plugin `existingConfigSecret`/`existingConfigSecretKey` |
//! | hcloud | `hcloud` | `token` | hcloud-csi 2.17 `controller.hcloudToken.existingSecret` |
//!
//! The CSI credentials are read from files next to cluster.yaml (like `backups.s3`'s):
//! each problem names the field (`addons.<profile>.credentials_file`) and never quotes
//! the file's content.

use std::path::Path;

use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use super::CloudInitError;
use crate::cluster::admin::AdminSecrets;
use crate::cluster::credfile;
use crate::cluster::spec::Addons;
use crate::types::Profile;

pub const GRAFANA_SECRET: &str = "grafana-admin";
pub const ARGOCD_SECRET: &str = "argocd-secret";
/// The logging profile's OTLP `Authorization` header. A Secret, not the collector's
/// values: the chart renders its `config` into a ConfigMap, readable with far less than
/// Secret access, and into every `helm get values`.
pub const LOGGING_SECRET: &str = "logging-otlp";
pub const LOGGING_KEY: &str = "authorization";
pub const CINDER_SECRET: &str = "cinder-csi-cloud-config";
pub const CINDER_KEY: &str = "cloud.conf";
pub const PROXMOX_SECRET: &str = "proxmox-csi-config";
pub const PROXMOX_KEY: &str = "config.yaml";
pub const HCLOUD_SECRET: &str = "hcloud";
pub const HCLOUD_KEY: &str = "token";

/// The default credentials file of a CSI profile (relative to cluster.yaml's directory).
pub fn default_credentials_file(p: Profile) -> Option<&'static str> {
    match p {
        Profile::Cinder => Some("secrets/cinder-cloud.conf"),
        Profile::Proxmox => Some("secrets/proxmox-csi.yaml"),
        Profile::Hcloud => Some("secrets/hcloud.yaml"),
        _ => None,
    }
}

/// A Secret manifest (type Opaque, `data` base64: server-side apply owns `data` fields
/// cleanly, `stringData` is write-only).
fn secret(
    name: &str,
    namespace: &str,
    labels: serde_json::Value,
    data: &[(&str, &str)],
) -> serde_json::Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut d = serde_json::Map::new();
    for (k, v) in data {
        d.insert(k.to_string(), json!(b64(v)));
    }
    let mut l = json!({"app.kubernetes.io/managed-by": "imgbuild"});
    if let (Some(m), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
        m.extend(extra.clone());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": l},
        "type": "Opaque",
        "data": d,
    })
}

/// The profile's Secret manifest (one YAML document), or None when it needs none.
/// `credential`: a CSI profile's credentials file, the logging profile's header value.
pub fn manifest(
    p: Profile,
    admin: Option<&AdminSecrets>,
    credential: Option<&str>,
) -> Result<Option<String>, CloudInitError> {
    let ns = p.namespace();
    let doc = match (p, admin, credential) {
        (Profile::Monitoring, Some(a), _) => secret(
            GRAFANA_SECRET,
            ns,
            json!({}),
            &[("admin-user", &a.grafana.user), ("admin-password", &a.grafana.password)],
        ),
        // Argo CD's own install manifest labels it so; Argo CD fills in the keys it
        // generates itself (server.secretkey) on first start.
        (Profile::Gitops, Some(a), _) => secret(
            ARGOCD_SECRET,
            ns,
            json!({"app.kubernetes.io/name": "argocd-secret", "app.kubernetes.io/part-of": "argocd"}),
            &[("admin.password", &a.argocd.bcrypt), ("admin.passwordMtime", &a.argocd.mtime)],
        ),
        (Profile::Logging, _, Some(h)) => secret(LOGGING_SECRET, ns, json!({}), &[(LOGGING_KEY, h)]),
        (Profile::Cinder, _, Some(c)) => secret(CINDER_SECRET, ns, json!({}), &[(CINDER_KEY, c)]),
        (Profile::Proxmox, _, Some(c)) => secret(PROXMOX_SECRET, ns, json!({}), &[(PROXMOX_KEY, c)]),
        (Profile::Hcloud, _, Some(c)) => secret(HCLOUD_SECRET, ns, json!({}), &[(HCLOUD_KEY, c)]),
        _ => return Ok(None),
    };
    let text = serde_yaml::to_string(&doc).map_err(|e| CloudInitError::Invalid(e.to_string()))?;
    Ok(Some(format!("# The {p} profile's Secret (imgbuild cloud-init; applied by imgbuild-addons before its chart).\n{text}")))
}

/// What a CSI profile needs from cluster.yaml besides its credentials file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsiSettings {
    Cinder,
    /// The Proxmox storage new disks go to.
    Proxmox {
        storage: String,
    },
    Hcloud,
}

/// A CSI profile's loaded credentials: the Secret's one value and the chart values
/// `cloud-init` adds for the cluster.
#[derive(Clone)]
pub struct Csi {
    pub profile: Profile,
    pub value: String,
    pub settings: CsiSettings,
}

impl std::fmt::Debug for Csi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csi").field("profile", &self.profile).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxmoxCredentials {
    token_id: String,
    token_secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HcloudCredentials {
    token: String,
}

fn printable_token(s: &str) -> bool {
    (1..=512).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A label value / Proxmox ID: what the driver puts into topology labels and volume IDs.
fn is_name(s: &str) -> bool {
    (1..=63).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The problems of a `cloud.conf` (gcfg INI) for the Cinder driver: a `[Global]` section
/// with `auth-url` and one way to authenticate (cloud-provider-openstack's `AuthOpts`).
/// `use-clouds` is refused: the chart mounts no clouds.yaml into the driver's pods.
fn check_cloud_conf(text: &str) -> Result<(), String> {
    let mut section = String::new();
    let mut global: Vec<String> = Vec::new();
    let mut has_global = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(format!("line {}: a section header must end with ]", i + 1));
            };
            section = name.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
            has_global |= section == "global";
            continue;
        }
        if section.is_empty() {
            return Err(format!("line {}: a setting before the first [section]", i + 1));
        }
        let key = line.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("line {}: expected `name = value`", i + 1));
        }
        let has_value = line.split_once('=').is_some_and(|(_, v)| !v.trim().is_empty());
        if section == "global" && has_value {
            global.push(key);
        }
    }
    if !has_global {
        return Err("no [Global] section".into());
    }
    let has = |k: &str| global.iter().any(|g| g == k);
    if has("use-clouds") {
        return Err(
            "[Global] use-clouds: the chart mounts no clouds.yaml; put the credentials into [Global]".into(),
        );
    }
    if !has("auth-url") {
        return Err("[Global] has no auth-url (the Keystone URL)".into());
    }
    let password = has("password") && (has("username") || has("user-id"));
    let app_cred = has("application-credential-secret")
        && (has("application-credential-id") || has("application-credential-name"));
    if !(password || app_cred || has("trust-id")) {
        return Err(
            "[Global] has neither username/user-id + password nor application-credential-id/-name + application-credential-secret"
                .into(),
        );
    }
    Ok(())
}

/// Load the credentials of CSI profile `p` (turned on in `a`), relative to `dir` (cluster.yaml's
/// directory); every problem is `(field, message)`.
pub fn load_csi(p: Profile, a: &Addons, dir: &Path) -> Result<Option<Csi>, Vec<(String, String)>> {
    let Some(default) = default_credentials_file(p) else { return Ok(None) };
    let field = format!("addons.{p}.credentials_file");
    let mut errs = Vec::new();
    let (file, settings) = match p {
        Profile::Cinder => {
            (a.cinder.as_ref().and_then(|c| c.credentials_file.clone()), Some(CsiSettings::Cinder))
        }
        Profile::Hcloud => {
            (a.hcloud.as_ref().and_then(|c| c.credentials_file.clone()), Some(CsiSettings::Hcloud))
        }
        _ => {
            let x = a.proxmox.clone().unwrap_or_default();
            // required fields are reported by the caller (Profile::required)
            let storage = x.storage.clone().unwrap_or_default();
            if !storage.is_empty() && !is_name(&storage) {
                errs.push((
                    "addons.proxmox.storage".into(),
                    format!("{storage:?} is not a Proxmox storage ID"),
                ));
            }
            if let Some(r) = x.region.as_deref().filter(|r| !r.is_empty() && !is_name(r)) {
                errs.push((
                    "addons.proxmox.region".into(),
                    format!(
                        "{r:?}: up to 63 letters, digits, '-', '_' and '.' (it becomes a node label value)"
                    ),
                ));
            }
            if let Some(u) = x.url.as_deref().filter(|u| !u.is_empty()) {
                let ok = reqwest::Url::parse(u).is_ok_and(|url| {
                    url.scheme() == "https"
                        && url.host_str().is_some()
                        && url.path().trim_end_matches('/') == "/api2/json"
                });
                if !ok {
                    errs.push((
                        "addons.proxmox.url".into(),
                        format!("{u:?}: expected https://HOST:8006/api2/json (the Proxmox VE API)"),
                    ));
                }
            }
            (x.credentials_file.clone(), Some(CsiSettings::Proxmox { storage }))
        }
    };
    let file = file.unwrap_or_else(|| default.to_string());
    let path = dir.join(&file);
    let what = match p {
        Profile::Cinder => "the cloud.conf of the Cinder CSI driver",
        Profile::Proxmox => "a YAML file with token_id and token_secret",
        _ => "a YAML file with token",
    };
    let value = match credfile::read(&path, what) {
        Err(e) => {
            errs.push((field.clone(), e));
            None
        }
        Ok(text) => match p {
            Profile::Cinder => match check_cloud_conf(&text) {
                Ok(()) => Some(text),
                Err(e) => {
                    errs.push((field.clone(), format!("{}: {e}", path.display())));
                    None
                }
            },
            Profile::Proxmox => {
                match credfile::yaml::<ProxmoxCredentials>(&path, &text, "token_id and token_secret") {
                    Err(e) => {
                        errs.push((field.clone(), e));
                        None
                    }
                    Ok(c) => {
                        let id_ok = c.token_id.split_once('@').is_some_and(|(user, rest)| {
                            !user.is_empty()
                                && rest
                                    .split_once('!')
                                    .is_some_and(|(realm, tok)| !realm.is_empty() && !tok.is_empty())
                        }) && printable_token(&c.token_id);
                        if !id_ok {
                            errs.push((
                                field.clone(),
                                format!("{}: token_id must be USER@REALM!TOKENNAME", path.display()),
                            ));
                        }
                        if !printable_token(&c.token_secret) {
                            errs.push((
                                field.clone(),
                                format!(
                                    "{}: token_secret must be 1-512 printable characters without spaces",
                                    path.display()
                                ),
                            ));
                        }
                        let x = a.proxmox.clone().unwrap_or_default();
                        // The driver's cloud config: one cluster (proxmox-csi-plugin's README).
                        let cfg = json!({"clusters": [{
                            "url": x.url.unwrap_or_default(),
                            "insecure": x.insecure,
                            "token_id": c.token_id,
                            "token_secret": c.token_secret,
                            "region": x.region.unwrap_or_default(),
                        }]});
                        serde_yaml::to_string(&cfg).ok()
                    }
                }
            }
            _ => match credfile::yaml::<HcloudCredentials>(&path, &text, "token") {
                Err(e) => {
                    errs.push((field.clone(), e));
                    None
                }
                Ok(c) if printable_token(&c.token) => Some(c.token),
                Ok(_) => {
                    errs.push((
                        field.clone(),
                        format!(
                            "{}: token must be 1-512 printable characters without spaces",
                            path.display()
                        ),
                    ));
                    None
                }
            },
        },
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(value.zip(settings).map(|(value, settings)| Csi { profile: p, value, settings }))
}

/// The cluster-specific chart values of a CSI profile (`/etc/imgbuild/addons/<release>.yaml`):
/// Proxmox's StorageClass needs the storage ID; the others need none.
pub fn csi_values(c: &Csi) -> Option<serde_json::Value> {
    match &c.settings {
        CsiSettings::Proxmox { storage } => Some(json!({"storageClass": [{
            "name": "proxmox",
            "storage": storage,
            "reclaimPolicy": "Delete",
            "fstype": "ext4",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        }]})),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_conf_needs_global_auth_url_and_a_credential() {
        let ok = "[Global]\nauth-url = https://keystone.example.test:5000/v3\napplication-credential-id = abc\napplication-credential-secret = s3cr3t\nregion = RegionOne\n\n[BlockStorage]\nignore-volume-az = true\n";
        check_cloud_conf(ok).unwrap();
        let user =
            "[Global]\nauth-url=https://k/v3\nusername=u\npassword=p\ndomain-name=Default\ntenant-name=t\n";
        check_cloud_conf(user).unwrap();
        for (bad, want) in [
            ("auth-url = x\n", "before the first"),
            ("[BlockStorage]\nx = 1\n", "no [Global]"),
            ("[Global]\nusername = u\npassword = p\n", "auth-url"),
            ("[Global]\nauth-url = https://k/v3\nusername = u\n", "neither"),
            ("[Global]\nuse-clouds = true\nauth-url=x\npassword=p\nusername=u\n", "use-clouds"),
            ("[Global\n", "end with ]"),
        ] {
            let e = check_cloud_conf(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}
