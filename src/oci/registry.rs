//! The OCI distribution API, read side: manifests by tag or digest and small blobs
//! (configs) into memory, for `imgbuild lock`. Every request sends the Accept list of
//! [`spec::ACCEPT`], answers the anonymous token flow of `bearer`, and every document
//! is checked against the digest asked for (or, for a tag, the `Docker-Content-Digest`
//! the registry names) before it is parsed. Large blobs (layers) go through
//! `fetch` into the content-addressed cache instead. Every request goes
//! through the one network layer (`net::get::request`: mirrors, the retry
//! policy, a size limit, redacted URLs).

use super::spec::{self, Document};
use super::OciError;
use crate::bearer::{self as auth, TokenCache};
use crate::net::get::{request, Response};
use crate::net::Mirror;
use crate::types::{Digest, ImageRef};

/// Image configs are a few KiB; Windows images' run to some hundred.
const CONFIG_MAX: u64 = 4 << 20;

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
        let (digest, body, content_type) = self.raw_manifest(image, reference, spec::ACCEPT)?;
        let doc = Document::parse(&body, content_type.as_deref())
            .map_err(|e| OciError::Unsupported { image: image.to_string(), msg: e.to_string() })?;
        Ok(Fetched { digest, bytes: body, doc })
    }

    /// A manifest's verified bytes and Content-Type, not parsed as an image's: for OCI
    /// artifacts (Helm charts) whose config and layers are not an image's.
    pub fn raw_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
        accept: &str,
    ) -> Result<(Digest, Vec<u8>, Option<String>), OciError> {
        let what = format!("manifest {reference}");
        let url = format!("{}/manifests/{reference}", image.api_base());
        let r = self.get_ok(image, &what, &url, Some(accept), spec::MANIFEST_MAX)?;
        // By tag, the registry names the digest it resolved (optional in the spec).
        let expected = Digest::parse(reference)
            .ok()
            .or_else(|| r.header("docker-content-digest").and_then(|h| Digest::parse(h.trim()).ok()));
        let digest = verified(image, &what, &r, expected.as_ref())?;
        let content_type = r.header("content-type").map(str::to_string);
        Ok((digest, r.body, content_type))
    }

    /// `GET /v2/<name>/blobs/<digest>` into memory (small blobs only), verified.
    pub fn small_blob(&self, image: &ImageRef, d: &Digest) -> Result<Vec<u8>, OciError> {
        let what = format!("blob {d}");
        let url = format!("{}/blobs/{d}", image.api_base());
        let r = self.get_ok(image, &what, &url, None, CONFIG_MAX)?;
        verified(image, &what, &r, Some(d))?;
        Ok(r.body)
    }

    /// [`Registry::get`] where only a 2xx answer is one: 404 names `what` as missing.
    fn get_ok(
        &self,
        image: &ImageRef,
        what: &str,
        url: &str,
        accept: Option<&str>,
        max: u64,
    ) -> Result<Response, OciError> {
        let r = self.get(image, url, accept, max)?;
        match r.status {
            200..=299 => Ok(r),
            404 => Err(OciError::NotFound { image: image.to_string(), what: what.to_string(), url: r.url }),
            s => Err(OciError::Http { url: r.url, msg: format!("HTTP {s}{}", api_error(&r.body)) }),
        }
    }

    /// One GET with the token flow: a cached token for the repository goes along; a
    /// 401 is answered with a (new) token and the request is sent once more.
    fn get(&self, image: &ImageRef, url: &str, accept: Option<&str>, max: u64) -> Result<Response, OciError> {
        let repo = image.api_base();
        let send = |token: Option<&str>| {
            let mut h: Vec<(&str, String)> = Vec::new();
            if let Some(a) = accept {
                h.push(("accept", a.to_string()));
            }
            if let Some(t) = token {
                h.push(("authorization", format!("Bearer {t}")));
            }
            request(url, &self.mirrors, &h, max).map_err(|e| OciError::Http { url: e.url, msg: e.msg })
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
                let t = auth::request_token(&ch, &self.mirrors)
                    .map_err(|e| OciError::Auth { url: r.url.clone(), source: e })?;
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
                    url: crate::net::SafeUrl::new(ch.realm).to_string(),
                    msg: "the registry refused the token it asked for".into(),
                },
            });
        }
        Ok(r)
    }
}

/// The digest of `r`'s body, which must be `expected` (when known): else exit code 3.
fn verified(
    image: &ImageRef,
    what: &str,
    r: &Response,
    expected: Option<&Digest>,
) -> Result<Digest, OciError> {
    let actual = Digest::of(&r.body);
    match expected {
        Some(e) if *e != actual => Err(OciError::Integrity {
            image: image.to_string(),
            what: format!("{what} from {}", r.url),
            expected: e.to_string(),
            actual: actual.to_string(),
        }),
        _ => Ok(actual),
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
