//! The OCI distribution API, read side: manifests by tag or digest and small blobs
//! (configs) into memory, for `imgbuild lock`. Every request sends the Accept list of
//! [`spec::ACCEPT`], answers the anonymous token flow of [`crate::bearer`], and every document
//! is checked against the digest asked for (or, for a tag, the `Docker-Content-Digest`
//! the registry names) before it is parsed. Large blobs (layers) go through
//! [`crate::fetch`] into the content-addressed cache instead.

use std::time::Duration;

use super::spec::{self, Document};
use super::OciError;
use crate::bearer::{self as auth, TokenCache};
use crate::fetch::Mirror;
use crate::smallget;
use crate::types::{Digest, ImageRef};

const TIMEOUT: Duration = Duration::from_secs(120);
/// Image configs are a few KiB; Windows images' run to some hundred.
const CONFIG_MAX: usize = 4 << 20;

/// A manifest or index as the registry served it, checked against its digest.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub doc: Document,
}

impl Fetched {
    pub fn media_type(&self) -> &str {
        self.doc.media_type()
    }
}

/// A registry client for one run (its token cache is shared by every request).
#[derive(Debug, Default)]
pub struct Registry {
    mirrors: Vec<Mirror>,
    tokens: TokenCache,
}

impl Registry {
    pub fn new(mirrors: Vec<Mirror>) -> Registry {
        Registry { mirrors, tokens: TokenCache::default() }
    }

    /// `GET /v2/<name>/manifests/<reference>` (a tag or a digest), verified.
    pub fn manifest(&self, image: &ImageRef, reference: &str) -> Result<Fetched, OciError> {
        let url = format!("{}/manifests/{reference}", image.api_base());
        let r = self.get(image, &url, Some(spec::ACCEPT), spec::MANIFEST_MAX)?;
        if r.status == 404 {
            return Err(OciError::NotFound {
                image: image.to_string(),
                what: format!("manifest {reference}"),
                url: r.url,
            });
        }
        if !(200..300).contains(&r.status) {
            return Err(OciError::Http {
                url: r.url,
                msg: format!("HTTP {}{}", r.status, api_error(&r.body)),
            });
        }
        let actual = Digest::of(&r.body);
        let expected = match Digest::parse(reference) {
            Ok(d) => Some(d),
            // A tag: the registry names the digest it resolved (optional in the spec).
            Err(_) => r.header("docker-content-digest").and_then(|h| Digest::parse(h.trim()).ok()),
        };
        if let Some(e) = expected.filter(|e| *e != actual) {
            return Err(OciError::Integrity {
                image: image.to_string(),
                what: format!("manifest {reference} from {}", r.url),
                expected: e.to_string(),
                actual: actual.to_string(),
            });
        }
        let doc = Document::parse(&r.body, r.header("content-type"))
            .map_err(|e| OciError::Unsupported { image: image.to_string(), msg: e.to_string() })?;
        Ok(Fetched { digest: actual, bytes: r.body, doc })
    }

    /// `GET /v2/<name>/blobs/<digest>` into memory (small blobs only), verified.
    pub fn small_blob(&self, image: &ImageRef, d: &Digest) -> Result<Vec<u8>, OciError> {
        let url = format!("{}/blobs/{d}", image.api_base());
        let r = self.get(image, &url, None, CONFIG_MAX)?;
        if r.status == 404 {
            return Err(OciError::NotFound {
                image: image.to_string(),
                what: format!("blob {d}"),
                url: r.url,
            });
        }
        if !(200..300).contains(&r.status) {
            return Err(OciError::Http {
                url: r.url,
                msg: format!("HTTP {}{}", r.status, api_error(&r.body)),
            });
        }
        let actual = Digest::of(&r.body);
        if actual != *d {
            return Err(OciError::Integrity {
                image: image.to_string(),
                what: format!("blob from {}", r.url),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(r.body)
    }

    /// One GET with the token flow: a cached token for the repository goes along; a
    /// 401 is answered with a (new) token and the request is sent once more.
    fn get(
        &self,
        image: &ImageRef,
        url: &str,
        accept: Option<&str>,
        max: usize,
    ) -> Result<smallget::Response, OciError> {
        let repo = image.api_base();
        let send = |token: Option<&str>| {
            let mut h: Vec<(&str, String)> = Vec::new();
            if let Some(a) = accept {
                h.push(("accept", a.to_string()));
            }
            if let Some(t) = token {
                h.push(("authorization", format!("Bearer {t}")));
            }
            smallget::request(url, &self.mirrors, TIMEOUT, &h, Some(max))
                .map_err(|e| OciError::Http { url: e.url, msg: e.msg })
        };
        let sent = self.tokens.for_repo(&repo);
        let r = send(sent.as_deref())?;
        if r.status != 401 {
            return Ok(r);
        }
        let header = r.header("www-authenticate").unwrap_or("").to_string();
        let ch =
            auth::parse_challenge(&header).map_err(|e| OciError::Auth { url: r.url.clone(), source: e })?;
        let token = match self.tokens.get(&ch) {
            Some(t) if sent.as_deref() != Some(t.as_str()) => t,
            _ => {
                self.tokens.forget(&ch);
                let t = self.token(&ch)?;
                let v = t.value.clone();
                self.tokens.put(&repo, ch.clone(), t);
                v
            }
        };
        let r = send(Some(&token))?;
        if r.status == 401 {
            self.tokens.forget(&ch);
            return Err(OciError::Auth {
                url: r.url,
                source: auth::AuthError::Token {
                    url: ch.realm,
                    msg: "the registry refused the token it asked for".into(),
                },
            });
        }
        Ok(r)
    }

    fn token(&self, ch: &auth::Challenge) -> Result<auth::Token, OciError> {
        let url = ch.token_url();
        let r = smallget::request(&url, &self.mirrors, TIMEOUT, &[], Some(1 << 20))
            .map_err(|e| OciError::Http { url: e.url, msg: e.msg })?;
        let fail = |msg: String| OciError::Auth {
            url: r.url.clone(),
            source: auth::AuthError::Token { url: r.url.clone(), msg },
        };
        if !(200..300).contains(&r.status) {
            return Err(fail(format!("HTTP {}", r.status)));
        }
        auth::parse_token(&r.body, &r.url).map_err(|e| OciError::Auth { url: r.url.clone(), source: e })
    }
}

/// The first message of a distribution API error body (`{"errors":[{"code","message"}]}`).
fn api_error(body: &[u8]) -> String {
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return String::new(),
    };
    let e = &v["errors"][0];
    match (e["code"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => format!(": {c}: {m}"),
        (Some(c), None) => format!(": {c}"),
        _ => String::new(),
    }
}
