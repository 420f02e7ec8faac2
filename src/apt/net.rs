//! Small downloads for `imgbuild lock` (InRelease, Packages indexes) through
//! [`crate::net::get`]. The `.deb` files themselves go through
//! [`crate::fetch::fetch`] in `build`.

use super::AptError;
use crate::net::get::limit;
pub use crate::net::get::Got;
pub use crate::net::{rewrite, Mirror};

/// GET `url` (after mirror rewriting) into memory, at most an index's size.
pub fn get(url: &str, mirrors: &[Mirror]) -> Result<Got, AptError> {
    crate::net::get::get(url, mirrors, limit::INDEX)
        .map_err(|e| AptError::Download { url: e.url.to_string(), msg: e.msg })
}
