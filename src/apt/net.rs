//! Small downloads for `imgbuild lock` (InRelease, Packages indexes) through
//! `net::get`. The `.deb` files themselves go through
//! `fetch::fetch` in `build`.

use super::AptError;
pub use crate::net::get::Got;
pub use crate::net::{rewrite, Mirror};

/// GET `url` (after mirror rewriting) into memory, at most `limit` bytes.
pub fn get(url: &str, mirrors: &[Mirror], limit: u64) -> Result<Got, AptError> {
    crate::net::get::get(url, mirrors, limit)
        .map_err(|e| AptError::Download { url: e.url.to_string(), msg: e.msg })
}

/// GET a file whose size a signed Release states: more bytes than that cannot be the
/// file the signature covers (an integrity failure, like a wrong digest).
pub fn get_signed(url: &str, mirrors: &[Mirror], size: u64) -> Result<Got, AptError> {
    crate::net::get::get(url, mirrors, size).map_err(|e| match e.too_large {
        true => AptError::Integrity {
            url: e.url.to_string(),
            msg: format!("index does not match the signed InRelease (size {size}): {}", e.msg),
        },
        false => AptError::Download { url: e.url.to_string(), msg: e.msg },
    })
}

/// The most an InRelease may have (noble's is ~250 KiB); read before its signature is
/// checked.
pub const INRELEASE_LIMIT: u64 = 16 << 20;
