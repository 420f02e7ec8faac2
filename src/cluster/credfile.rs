//! Credentials files next to cluster.yaml (`backups.s3`, the CSI profiles): kept out of
//! cluster.yaml (a file people commit), 0600, small. Every problem is a message naming
//! the file, never quoting its content.

use std::path::Path;

/// The largest credentials file accepted.
pub const MAX_BYTES: u64 = 64 * 1024;

/// Read `path`; `what` says what the file should hold (for the message when it is missing).
pub fn read(path: &Path, what: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e} ({what}, mode 0600)", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by others (mode {mode:04o}); run chmod 600 on it",
                path.display()
            ));
        }
    }
    if meta.len() > MAX_BYTES {
        return Err(format!("{} is larger than 64 KiB", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse YAML credentials; serde_yaml's message may quote the input, so only its
/// location is kept.
pub fn yaml<T: serde::de::DeserializeOwned>(path: &Path, text: &str, keys: &str) -> Result<T, String> {
    serde_yaml::from_str(text).map_err(|e| {
        let at = e.location().map(|l| format!(" at line {}", l.line())).unwrap_or_default();
        format!("{}{at}: expected exactly the keys {keys}", path.display())
    })
}
