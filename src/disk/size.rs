//! Disk sizes as users write them (`8G`), for `--disk-size`: [`crate::types::size`]
//! with the disk module's error.

use super::DiskError;

pub use crate::types::size::human;

/// Parse `s` into bytes, rounded up to a whole MiB (partition alignment).
pub fn parse(s: &str) -> Result<u64, DiskError> {
    crate::types::size::parse(s).map_err(|msg| DiskError::BadSize(s.to_string(), msg))
}
