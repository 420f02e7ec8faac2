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
    let fail = |msg: String| GetError { url: real.clone(), msg };
    if let Some(path) = real.strip_prefix("file://") {
        return match std::fs::read(path) {
            Ok(b) => Ok(Got::Body(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Got::NotFound),
            Err(e) => Err(fail(e.to_string())),
        };
    }
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
            match client.get(&real).send().await {
                Ok(r) if r.status() == 404 || r.status() == 410 => return Ok(Got::NotFound),
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) => return Ok(Got::Body(b.to_vec())),
                    Err(e) => last = e.to_string(),
                },
                Ok(r) if r.status().is_server_error() => last = format!("HTTP {}", r.status()),
                Ok(r) => return Err(fail(format!("HTTP {}", r.status()))),
                Err(e) => last = e.to_string(),
            }
        }
        Err(fail(last))
    })
}
