//! Small downloads for `imgbuild lock` (InRelease, Packages indexes): whole files in
//! memory, `--mirror FROM=TO` prefix rewrites, http(s) and file URLs. The `.deb` files
//! themselves go through [`crate::fetch::fetch_items`] in `build`.

use std::time::Duration;

use super::AptError;
use crate::fetch::Mirror;

/// Parse `FROM=TO` rewrites (the `--mirror` flags, then `$IMGBUILD_MIRROR`), as fetch does.
pub fn parse_mirrors(flags: &[String]) -> Result<Vec<Mirror>, AptError> {
    let env = std::env::var("IMGBUILD_MIRROR").unwrap_or_default();
    flags
        .iter()
        .map(String::as_str)
        .chain(env.split_whitespace())
        .map(|m| Mirror::parse(m).map_err(|e| AptError::Input(e.to_string())))
        .collect()
}

/// The same rewrite as fetch's (longest matching prefix).
pub fn rewrite(url: &str, mirrors: &[Mirror]) -> String {
    crate::fetch::rewrite(url, mirrors)
}

/// Outcome of a GET: the body, or "not there" (404/410/missing file), which callers
/// use to try the next variant of an index.
pub enum Got {
    Body(Vec<u8>),
    NotFound,
}

/// GET `url` (after mirror rewriting) into memory.
pub fn get(url: &str, mirrors: &[Mirror]) -> Result<Got, AptError> {
    let real = rewrite(url, mirrors);
    let fail = |msg: String| AptError::Download { url: real.clone(), msg };
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
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        // Transient failures are retried a few times; a 404/410 is an answer.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_rewrite() {
        let m = parse_mirrors(&["http://archive.ubuntu.com/ubuntu=http://m/u".into()]).unwrap();
        assert_eq!(rewrite("http://archive.ubuntu.com/ubuntu/dists/x", &m), "http://m/u/dists/x");
        assert_eq!(rewrite("http://other/x", &m), "http://other/x");
        assert!(parse_mirrors(&["nope".into()]).is_err());
    }
}
