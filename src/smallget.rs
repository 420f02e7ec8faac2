//! Small whole-file GETs into memory, shared by `imgbuild lock` (InRelease, Packages
//! indexes) and the supply-chain checks (SHA256SUMS, signatures, certificates). These
//! files are verified by signature, not by a committed digest, so they do not go
//! through the content-addressed cache; mirrors rewrite them exactly as
//! [`crate::fetch`] does (longest matching prefix).

use std::time::Duration;

use crate::fetch::{rewrite, Mirror};

/// A GET's outcome: the body, or "not there" (404/410, missing file) so callers can
/// try the next URL or index variant.
pub enum Got {
    Body(Vec<u8>),
    NotFound,
}

/// Why a GET failed, with the URL actually requested (after mirror rewriting).
#[derive(Debug)]
pub struct GetError {
    pub url: String,
    pub msg: String,
}

/// GET `url` (after mirror rewriting) into memory; transient failures (connection
/// errors, 5xx) are retried a few times, a 404/410 is an answer.
pub fn get(url: &str, mirrors: &[Mirror], timeout: Duration) -> Result<Got, GetError> {
    let real = rewrite(url, mirrors);
    if let Some(path) = real.strip_prefix("file://") {
        return match std::fs::read(path) {
            Ok(b) => Ok(Got::Body(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Got::NotFound),
            Err(e) => Err(GetError { url: real, msg: e.to_string() }),
        };
    }
    let r = request(url, mirrors, timeout, &[], None)?;
    match r.status {
        404 | 410 => Ok(Got::NotFound),
        s if (200..300).contains(&s) => Ok(Got::Body(r.body)),
        s => Err(GetError { url: r.url, msg: format!("HTTP {s}") }),
    }
}

/// A whole response: status, headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The URL requested (after mirror rewriting; before redirects).
    pub url: String,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// GET `url` (after mirror rewriting) with extra request `headers`; any status is an
/// answer except 5xx and connection failures, which are retried a few times. The body
/// is refused beyond `max_body` bytes (None: unbounded, for signed files). Redirects
/// are followed; reqwest drops `Authorization` when one leaves the origin.
pub fn request(
    url: &str,
    mirrors: &[Mirror],
    timeout: Duration,
    headers: &[(&str, String)],
    max_body: Option<usize>,
) -> Result<Response, GetError> {
    let real = rewrite(url, mirrors);
    let fail = |msg: String| GetError { url: real.clone(), msg };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("starting the HTTP runtime: {e}")))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(timeout)
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut last = String::new();
        for attempt in 0..3u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
            }
            let mut req = client.get(&real);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let mut r = match req.send().await {
                Ok(r) if r.status().is_server_error() => {
                    last = format!("HTTP {}", r.status());
                    continue;
                }
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let mut body = Vec::new();
            loop {
                match r.chunk().await {
                    Ok(Some(c)) => {
                        body.extend_from_slice(&c);
                        if max_body.is_some_and(|m| body.len() > m) {
                            return Err(fail(format!(
                                "the answer is larger than {} bytes",
                                max_body.unwrap_or(0)
                            )));
                        }
                    }
                    Ok(None) => return Ok(Response { url: real.clone(), status, headers, body }),
                    Err(e) => {
                        last = e.to_string();
                        break;
                    }
                }
            }
        }
        Err(fail(last))
    })
}
