//! Keystone v3: a token (password or application credential) and the image endpoint
//! from the service catalog.

use super::*;

// ---------------------------------------------------------------------------------------------
// Keystone

pub(super) fn ident_json(i: &Ident) -> Value {
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
pub(super) fn auth_body(m: &Method) -> Value {
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

pub(super) fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

/// The image endpoint of the catalog for `interface` (and `region` when set).
pub(super) fn image_endpoint(catalog: &Value, interface: &str, region: Option<&str>) -> Option<String> {
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
pub(super) fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

/// Token (None for noauth) and the image API base URL (without `/v2`).
pub(super) async fn authenticate(
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
    // An answer that does not arrive whole (or is absurdly large) reads as empty: the
    // status decides, and the message says less.
    let body = crate::net::read_capped(resp, MAX_ANSWER).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
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
pub(super) fn api_base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v2").unwrap_or(u).to_string()
}

pub(super) fn short(text: &str) -> String {
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
