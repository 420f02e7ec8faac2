//! Small whole-file GETs into memory: `imgbuild lock` (InRelease, Packages indexes) and
//! the supply-chain checks (SHA256SUMS, signatures, certificates). These files are
//! verified by signature, not by a committed digest, so they do not go through the
//! content-addressed cache; mirrors rewrite them exactly as downloads are rewritten.
//! Every body is read under a limit the caller names, before anything parses it.

use std::sync::OnceLock;

use reqwest::StatusCode;

use super::body::{read_capped, read_file_capped};
use super::{block_on, rewrite, settings, ClientOptions, Mirror, Progress, RetryPolicy, SafeUrl};

/// Limits for what callers read whole (apt names its own: an index's size is signed).
pub mod limit {
    /// Checksum lists, detached signatures, certificates (a real SHA256SUMS is ~2 KiB).
    pub const SMALL: u64 = 4 << 20;
}

/// A GET's outcome: the body, or "not there" (404/410, missing file) so callers can
/// try the next URL or index variant.
pub enum Got {
    Body(Vec<u8>),
    NotFound,
}

/// Why a GET failed, with the URL actually requested (after mirror rewriting).
#[derive(Debug)]
pub struct GetError {
    pub url: SafeUrl,
    pub msg: String,
    /// The answer was larger than the caller's limit (for a file whose size is signed,
    /// an integrity failure rather than a network one).
    pub too_large: bool,
}

/// The process's client for plain downloads (default options), built once: its
/// connection pool serves every small GET and every cache download.
pub fn shared_client() -> Result<&'static reqwest::Client, super::NetError> {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = C.get() {
        return Ok(c);
    }
    let c = ClientOptions::default().build()?;
    Ok(C.get_or_init(|| c.http))
}

/// GET `url` (after mirror rewriting) into memory, at most `limit` bytes. Transient
/// failures (connection errors, cut bodies, 408, 429, 5xx) are retried under the one
/// retry policy; a 404/410 is an answer.
pub fn get(url: &str, mirrors: &[Mirror], limit: u64) -> Result<Got, GetError> {
    let real = SafeUrl::new(rewrite(url, mirrors));
    if let Some(path) = real.as_str().strip_prefix("file://") {
        let fail = |msg: String| GetError { url: real.clone(), msg, too_large: false };
        return match read_file_capped(std::path::Path::new(path), limit) {
            Ok(Ok(b)) => Ok(Got::Body(b)),
            Ok(Err(e)) => Err(GetError { too_large: true, ..fail(e.to_string()) }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Got::NotFound),
            Err(e) => Err(fail(e.to_string())),
        };
    }
    let r = request(url, mirrors, &[], limit)?;
    match r.status {
        404 | 410 => Ok(Got::NotFound),
        s if (200..300).contains(&s) => Ok(Got::Body(r.body)),
        s => Err(GetError { url: r.url, msg: format!("HTTP {s}"), too_large: false }),
    }
}

/// A whole response: status, headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The URL requested (after mirror rewriting; before redirects).
    pub url: SafeUrl,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// GET `url` (after mirror rewriting) with extra request `headers`, the body at most
/// `limit` bytes. Any status is an answer except the transient ones (408, 429, 5xx),
/// which are retried like connection failures and cut bodies, under the one retry
/// policy. Redirects are followed; reqwest drops `Authorization` when one leaves the
/// origin.
pub fn request(
    url: &str,
    mirrors: &[Mirror],
    headers: &[(&str, String)],
    limit: u64,
) -> Result<Response, GetError> {
    let real = SafeUrl::new(rewrite(url, mirrors));
    let fail = |(msg, too_large): (String, bool)| GetError { url: real.clone(), msg, too_large };
    let http = shared_client().map_err(|e| fail((e.to_string(), false)))?;
    let policy = RetryPolicy::small(settings().attempts);
    let run = async {
        let mut retry = policy.start();
        loop {
            let mut req = http.get(real.as_str());
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let (what, retry_after) = match req.send().await {
                Ok(r) if is_transient_status(r.status()) => (format!("HTTP {}", r.status()), retry_after(&r)),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let headers = r.headers().clone();
                    match read_capped(r, limit).await {
                        Ok(body) => return Ok(Response { url: real.clone(), status, headers, body }),
                        Err(e) if e.is_transient() => (e.to_string(), None),
                        Err(e) => return Err((e.to_string(), true)),
                    }
                }
                Err(e) => (super::chain(&e.without_url()), None),
            };
            match retry.failed(Progress::None, retry_after) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err((format!("{what} ({})", retry.why_stopped()), false)),
            }
        }
    };
    block_on(run).map_err(|e| fail((e.to_string(), false)))?.map_err(fail)
}

/// 408, 429 and 5xx: the server may answer differently in a moment.
pub fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// A `Retry-After` in seconds (the HTTP-date form is treated as absent).
pub fn retry_after(r: &reqwest::Response) -> Option<std::time::Duration> {
    r.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs)
}
