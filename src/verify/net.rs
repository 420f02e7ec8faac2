//! Small whole-file downloads (checksum lists, signatures, certificates) through
//! [`crate::smallget`].

use std::time::Duration;

use super::VerifyError;
use crate::fetch::Mirror;
pub use crate::smallget::Got;

/// The same rewrite as fetch's (longest matching prefix).
pub fn rewrite(url: &str, mirrors: &[Mirror]) -> String {
    crate::fetch::rewrite(url, mirrors)
}

/// GET `url` (after mirror rewriting) into memory.
pub fn get(url: &str, mirrors: &[Mirror]) -> Result<Got, VerifyError> {
    crate::smallget::get(url, mirrors, Duration::from_secs(300))
        .map_err(|e| VerifyError::Download { url: e.url, msg: e.msg })
}
