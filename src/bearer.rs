//! The registry token flow for anonymous pulls (distribution's token spec, what
//! registry.k8s.io, ghcr.io, quay.io and Docker Hub use): a request without
//! credentials gets `401` with `WWW-Authenticate: Bearer realm="…",service="…",
//! scope="repository:<name>:pull"`; a GET of the realm with `service` and `scope`
//! returns `{"token": …}` (or `access_token`), sent back as `Authorization: Bearer`.
//! Tokens are cached per (realm, service, scope) until shortly before they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::net::Mirror;

/// A `Bearer` challenge's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Challenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Why a challenge cannot be answered anonymously.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the registry asks for credentials ({0}); imgbuild pulls anonymously")]
    NeedsCredentials(String),
    #[error("unreadable WWW-Authenticate header {0:?}")]
    BadChallenge(String),
    #[error("the token endpoint {url} answered: {msg}")]
    Token { url: String, msg: String },
}

/// Parse `WWW-Authenticate` (RFC 7235 auth-params; quoted strings may hold commas and
/// backslash escapes). Only `Bearer` can be answered without credentials.
pub fn parse_challenge(header: &str) -> Result<Challenge, AuthError> {
    let h = header.trim();
    let (scheme, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NeedsCredentials(format!("{scheme} authentication")));
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(AuthError::BadChallenge(header.to_string()));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(AuthError::BadChallenge(header.to_string())),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        params.insert(key.to_ascii_lowercase(), value);
    }
    let realm = params.remove("realm").ok_or_else(|| AuthError::BadChallenge(header.to_string()))?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return Err(AuthError::BadChallenge(header.to_string()));
    }
    Ok(Challenge { realm, service: params.remove("service"), scope: params.remove("scope") })
}

impl Challenge {
    /// The token request: the realm with `service` and `scope` as query parameters.
    pub fn token_url(&self) -> String {
        let mut url = self.realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for (k, v) in [("service", &self.service), ("scope", &self.scope)] {
            if let Some(v) = v {
                url.push(sep);
                url.push_str(k);
                url.push('=');
                url.push_str(&encode(v));
                sep = '&';
            }
        }
        url
    }
}

/// Percent-encode a query value (RFC 3986 unreserved characters stay).
fn encode(v: &str) -> String {
    let mut s = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A token and until when it may be used.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub until: Instant,
}

/// Parse the token endpoint's answer. `expires_in` defaults to 60 s (the spec's
/// minimum); the token is reused until 10 s before that.
pub fn parse_token(body: &[u8], url: &str) -> Result<Token, AuthError> {
    #[derive(Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| AuthError::Token { url: url.to_string(), msg: format!("not a token answer: {e}") })?;
    let value = a
        .token
        .or(a.access_token)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| AuthError::Token { url: url.to_string(), msg: "no usable token".into() })?;
    let life = Duration::from_secs(a.expires_in.unwrap_or(60).clamp(20, 24 * 3600));
    Ok(Token { value, until: Instant::now() + life - Duration::from_secs(10) })
}

/// Real token answers are a few KiB (a JWT); anything near this is not one.
const TOKEN_MAX: u64 = 1 << 20;

/// Ask `ch`'s realm for an anonymous token (no credentials are sent) through the one
/// network layer: mirror rewriting, the retry policy, a size limit, redacted URLs.
/// Blocking: async callers run it on a blocking thread.
pub fn request_token(ch: &Challenge, mirrors: &[Mirror]) -> Result<Token, AuthError> {
    let r = crate::net::get::request(&ch.token_url(), mirrors, &[], TOKEN_MAX)
        .map_err(|e| AuthError::Token { url: e.url.to_string(), msg: e.msg })?;
    let url = r.url.to_string();
    if !(200..300).contains(&r.status) {
        return Err(AuthError::Token { url, msg: format!("HTTP {}", r.status) });
    }
    parse_token(&r.body, &url)
}

/// Tokens by challenge, shared by every request of a run, and the challenge each
/// repository answered with, so later requests to it carry the token right away.
#[derive(Debug, Default)]
pub struct TokenCache {
    inner: Mutex<Tokens>,
}

#[derive(Debug, Default)]
struct Tokens {
    by_challenge: HashMap<Challenge, Token>,
    by_repo: HashMap<String, Challenge>,
}

impl TokenCache {
    /// A still-valid token for `ch`.
    pub fn get(&self, ch: &Challenge) -> Option<String> {
        let m = self.inner.lock().ok()?;
        m.by_challenge.get(ch).filter(|t| t.until > Instant::now()).map(|t| t.value.clone())
    }

    /// A still-valid token for a repository (its API base URL) that was challenged before.
    pub fn for_repo(&self, repo: &str) -> Option<String> {
        let m = self.inner.lock().ok()?;
        let ch = m.by_repo.get(repo)?;
        m.by_challenge.get(ch).filter(|t| t.until > Instant::now()).map(|t| t.value.clone())
    }

    /// Remember `t` for `ch`, and `ch` as what `repo` asks for.
    pub fn put(&self, repo: &str, ch: Challenge, t: Token) {
        if let Ok(mut m) = self.inner.lock() {
            m.by_repo.insert(repo.to_string(), ch.clone());
            m.by_challenge.insert(ch, t);
        }
    }

    /// Send `ch`'s (valid) token to `repo` too; false when there is none.
    pub fn adopt(&self, repo: &str, ch: &Challenge) -> bool {
        let Ok(mut m) = self.inner.lock() else { return false };
        let valid = m.by_challenge.get(ch).is_some_and(|t| t.until > Instant::now());
        if valid {
            m.by_repo.insert(repo.to_string(), ch.clone());
        }
        valid
    }

    /// Forget a token the registry refused.
    pub fn forget(&self, ch: &Challenge) {
        if let Ok(mut m) = self.inner.lock() {
            m.by_challenge.remove(ch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:kube-vip/kube-vip:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://ghcr.io/token");
        assert_eq!(
            c.token_url(),
            "https://ghcr.io/token?service=ghcr.io&scope=repository%3Akube-vip%2Fkube-vip%3Apull"
        );
        let c = parse_challenge(
            r#"bearer realm="https://auth.example/t?x=1", scope="repository:a/b:pull,push", error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull,push"));
        assert_eq!(c.service, None);
        assert!(c.token_url().starts_with("https://auth.example/t?x=1&scope="));
        assert!(matches!(parse_challenge(r#"Basic realm="Registry""#), Err(AuthError::NeedsCredentials(_))));
        assert!(parse_challenge(r#"Bearer service="x""#).is_err());
        assert!(parse_challenge(r#"Bearer realm="https://x"#).is_err());
        assert!(parse_challenge(r#"Bearer realm="file:///etc/passwd""#).is_err());
    }

    #[test]
    fn tokens() {
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#, "u").unwrap();
        assert_eq!(t.value, "abc");
        let t = parse_token(br#"{"access_token":"def"}"#, "u").unwrap();
        assert_eq!(t.value, "def");
        assert!(parse_token(br#"{"token":""}"#, "u").is_err());
        assert!(parse_token(br#"{"token":"a\nb"}"#, "u").is_err());
        let cache = TokenCache::default();
        let ch = parse_challenge(r#"Bearer realm="https://r/t",service="s""#).unwrap();
        cache.put("https://r/v2/a", ch.clone(), t);
        assert_eq!(cache.get(&ch).as_deref(), Some("def"));
        assert_eq!(cache.for_repo("https://r/v2/a").as_deref(), Some("def"));
        assert_eq!(cache.for_repo("https://r/v2/b"), None);
        cache.forget(&ch);
        assert_eq!(cache.get(&ch), None);
        assert_eq!(cache.for_repo("https://r/v2/a"), None);
    }
}
