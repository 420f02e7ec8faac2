//! Small whole-file downloads (checksum lists, signatures, certificates) with
//! `--mirror FROM=TO` prefix rewrites; http(s) and file:// URLs.

use std::time::Duration;

use super::VerifyError;
use crate::fetch::Mirror;

/// Parse `FROM=TO` rewrites: the `--mirror` flags, then `$IMGBUILD_MIRROR` (space separated).
pub fn parse_mirrors(flags: &[String]) -> Result<Vec<Mirror>, VerifyError> {
    let env = std::env::var("IMGBUILD_MIRROR").unwrap_or_default();
    let mut out = Vec::new();
    for m in flags.iter().map(String::as_str).chain(env.split_whitespace()) {
        let Some((from, to)) = m.split_once('=').filter(|(f, t)| !f.is_empty() && !t.is_empty()) else {
            return Err(VerifyError::Input(format!("--mirror {m:?}: expected FROM=TO")));
        };
        out.push(Mirror { from: from.to_string(), to: to.to_string() });
    }
    Ok(out)
}

/// Apply the first matching prefix rewrite.
pub fn rewrite(url: &str, mirrors: &[Mirror]) -> String {
    for m in mirrors {
        if let Some(rest) = url.strip_prefix(&m.from) {
            return format!("{}{rest}", m.to);
        }
    }
    url.to_string()
}

/// A GET's outcome: the body, or "not there" (404/410, missing file) so callers can
/// try the next mirror.
pub enum Got {
    Body(Vec<u8>),
    NotFound,
}

/// GET `url` (after mirror rewriting) into memory; transient failures are retried.
pub fn get(url: &str, mirrors: &[Mirror]) -> Result<Got, VerifyError> {
    let real = rewrite(url, mirrors);
    let fail = |msg: String| VerifyError::Download { url: real.clone(), msg };
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
            .timeout(Duration::from_secs(300))
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
