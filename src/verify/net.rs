//! Small whole-file downloads (checksum lists, signatures, certificates) through
//! `net::get`, each at most [`limit::SMALL`] bytes: they are read before
//! their signature is checked.

use super::VerifyError;
use crate::net::get::limit;
pub use crate::net::get::Got;
pub use crate::net::{rewrite, Mirror};

/// GET `url` (after mirror rewriting) into memory.
pub fn get(url: &str, mirrors: &[Mirror]) -> Result<Got, VerifyError> {
    crate::net::get::get(url, mirrors, limit::SMALL)
        .map_err(|e| VerifyError::Download { url: e.url.to_string(), msg: e.msg })
}

/// `url` after mirror rewriting, as it may be printed.
pub fn shown(url: &str, mirrors: &[Mirror]) -> String {
    crate::net::redact(&rewrite(url, mirrors))
}
