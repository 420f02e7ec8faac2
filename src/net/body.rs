//! Bodies read into memory, always with a limit: a server decides how much it sends,
//! so a hostile or broken one must not decide how much memory imgbuild uses.

use futures_util::StreamExt;

/// Why a capped read failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than the {limit}-byte limit for this file{}", declared.map(|d| format!(" (it declares {d} bytes)")).unwrap_or_default())]
    TooLarge { limit: u64, declared: Option<u64> },
    #[error("reading the answer: {0}")]
    Read(String),
}

impl BodyError {
    /// A cut or stalled body may come whole next time; an oversized one will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, BodyError::Read(_))
    }
}

/// The whole body of `resp`, refusing more than `limit` bytes (by its Content-Length
/// before reading, and by counting while reading).
pub async fn read_capped(resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    if let Some(n) = resp.content_length().filter(|n| *n > limit) {
        return Err(BodyError::TooLarge { limit, declared: Some(n) });
    }
    let cap = resp.content_length().unwrap_or(0).min(limit).min(1 << 20);
    let mut out = Vec::with_capacity(usize::try_from(cap).unwrap_or(0));
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(super::chain(&e.without_url())))?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge { limit, declared: None });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Read a local file (a `file://` URL) with the same limit, without trusting its
/// reported size (`/dev/zero` has none).
pub fn read_file_capped(path: &std::path::Path, limit: u64) -> std::io::Result<Result<Vec<u8>, BodyError>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    f.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Ok(Err(BodyError::TooLarge { limit, declared: None }));
    }
    Ok(Ok(out))
}
