//! Small whole-file GETs into memory: `imgbuild lock` (InRelease, Packages indexes) and
//! the supply-chain checks (SHA256SUMS, signatures, certificates). These files are
//! verified by signature, not by a committed digest, so they do not go through the
//! content-addressed cache; mirrors rewrite them exactly as downloads are rewritten.
//! Every body is read under a limit the caller names, before anything parses it.

use std::sync::OnceLock;

use reqwest::StatusCode;

use super::body::{read_capped, read_file_capped};
use super::{block_on, rewrite, settings, ClientOptions, Mirror, Progress, RetryPolicy, SafeUrl};

/// Limits for what callers read whole.
pub mod limit {
    /// Checksum lists, detached signatures, certificates (a real SHA256SUMS is ~2 KiB).
    pub const SMALL: u64 = 4 << 20;
    /// apt's InRelease and Packages indexes (noble universe's uncompressed Packages
    /// is ~70 MiB).
    pub const INDEX: u64 = 256 << 20;
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
    let fail = |msg: String| GetError { url: real.clone(), msg };
    if let Some(path) = real.as_str().strip_prefix("file://") {
        return match read_file_capped(std::path::Path::new(path), limit) {
            Ok(Ok(b)) => Ok(Got::Body(b)),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Got::NotFound),
            Err(e) => Err(fail(e.to_string())),
        };
    }
    let http = shared_client().map_err(|e| fail(e.to_string()))?;
    let policy = RetryPolicy::small(settings().attempts);
    let run = async {
        let mut retry = policy.start();
        loop {
            let (what, retry_after) = match http.get(real.as_str()).send().await {
                Ok(r) if r.status() == StatusCode::NOT_FOUND || r.status() == StatusCode::GONE => {
                    return Ok(Got::NotFound)
                }
                Ok(r) if r.status().is_success() => match read_capped(r, limit).await {
                    Ok(b) => return Ok(Got::Body(b)),
                    Err(e) if e.is_transient() => (e.to_string(), None),
                    Err(e) => return Err(e.to_string()),
                },
                Ok(r) if is_transient_status(r.status()) => (format!("HTTP {}", r.status()), retry_after(&r)),
                Ok(r) => return Err(format!("HTTP {}", r.status())),
                Err(e) => (super::chain(&e.without_url()), None),
            };
            match retry.failed(Progress::None, retry_after) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(format!("{what} ({})", retry.why_stopped())),
            }
        }
    };
    block_on(run).map_err(|e| fail(e.to_string()))?.map_err(fail)
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
