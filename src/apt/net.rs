//! Small downloads for `imgbuild lock` (InRelease, Packages indexes) through
//! [`crate::smallget`]. The `.deb` files themselves go through
//! [`crate::fetch::fetch`] in `build`.

use std::time::Duration;

use super::AptError;
use crate::fetch::Mirror;
pub use crate::smallget::Got;

/// The same rewrite as fetch's (longest matching prefix).
pub fn rewrite(url: &str, mirrors: &[Mirror]) -> String {
    crate::fetch::rewrite(url, mirrors)
}

/// GET `url` (after mirror rewriting) into memory.
pub fn get(url: &str, mirrors: &[Mirror]) -> Result<Got, AptError> {
    crate::smallget::get(url, mirrors, Duration::from_secs(600))
        .map_err(|e| AptError::Download { url: e.url, msg: e.msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_rewrite() {
        let m = Mirror::parse_all(["http://archive.ubuntu.com/ubuntu=http://m/u"]).unwrap();
        assert_eq!(rewrite("http://archive.ubuntu.com/ubuntu/dists/x", &m), "http://m/u/dists/x");
        assert_eq!(rewrite("http://other/x", &m), "http://other/x");
        assert!(Mirror::parse_all(["nope"]).is_err());
    }
}
