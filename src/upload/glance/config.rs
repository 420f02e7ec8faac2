//! Where the credentials come from: a clouds.yaml entry (`--os-cloud` / `OS_CLOUD`,
//! merged with secure.yaml) or the standard `OS_*` environment variables.

use super::*;

// ---------------------------------------------------------------------------------------------
// Credentials

/// A user or project: by id, or by name within a domain.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ident {
    Id(String),
    Name { name: String, domain: Domain },
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Domain {
    Id(String),
    Name(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Method {
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
pub(super) struct Creds {
    /// Where they came from, for error messages: never contains a secret.
    pub(super) source: String,
    pub(super) auth_url: String,
    pub(super) method: Method,
    pub(super) region: Option<String>,
    pub(super) interface: String,
    pub(super) cacert: Option<PathBuf>,
    pub(super) insecure: bool,
    pub(super) endpoint_override: Option<String>,
}

impl Creds {
    pub(super) fn secret(&self) -> Option<&str> {
        match &self.method {
            Method::Password { password, .. } => Some(password),
            Method::AppCred { secret, .. } => Some(secret),
            Method::None => None,
        }
    }
}

/// A flat view of auth settings, filled from env vars or a clouds.yaml entry.
#[derive(Debug, Default)]
pub(super) struct Raw(BTreeMap<String, String>);

impl Raw {
    pub(super) fn get(&self, k: &str) -> Option<String> {
        self.0.get(k).filter(|v| !v.is_empty()).cloned()
    }
}

pub(super) const ENV_KEYS: &[(&str, &str)] = &[
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

pub(super) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Creds, GlanceError> {
    let mut raw = Raw::default();
    for (var, key) in ENV_KEYS {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            raw.0.entry(key.to_string()).or_insert(v);
        }
    }
    build_creds(raw, "environment variables (OS_*)".to_string())
}

/// clouds.yaml locations in openstacksdk's order (`OS_CLIENT_CONFIG_FILE` first).
pub(super) fn config_dirs(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
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

pub(super) fn find_file(env: &dyn Fn(&str) -> Option<String>, var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = env(var).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    config_dirs(env).into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

pub(super) fn read_yaml(p: &Path) -> Result<serde_yaml::Value, GlanceError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| GlanceError::Config(format!("reading {}: {e}", p.display())))?;
    serde_yaml::from_str(&text).map_err(|e| GlanceError::Config(format!("parsing {}: {e}", p.display())))
}

/// secure.yaml values override clouds.yaml ones, map by map (openstacksdk's merge).
pub(super) fn merge(base: &mut serde_yaml::Value, over: &serde_yaml::Value) {
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

pub(super) fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn from_clouds_yaml(
    cloud: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Creds, GlanceError> {
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

pub(super) fn domain(raw: &Raw, prefix: &str) -> Domain {
    if let Some(id) = raw.get(&format!("{prefix}_domain_id")).or_else(|| raw.get("domain_id")) {
        return Domain::Id(id);
    }
    if let Some(n) = raw.get(&format!("{prefix}_domain_name")).or_else(|| raw.get("domain_name")) {
        return Domain::Name(n);
    }
    // As python-openstackclient: the `default` domain unless told otherwise.
    Domain::Id(raw.get("default_domain").unwrap_or_else(|| "default".into()))
}

pub(super) fn build_creds(raw: Raw, source: String) -> Result<Creds, GlanceError> {
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

pub(super) fn resolve_creds(
    args: &GlanceOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Creds, GlanceError> {
    match args.os_cloud.as_deref().filter(|c| !c.is_empty()) {
        Some(cloud) => from_clouds_yaml(cloud, env),
        None => from_env(env),
    }
}
