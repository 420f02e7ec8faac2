//! SHA-256 digests: validated when parsed, lowercase hex.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256 as Sha256Hasher};

/// A lowercase hex SHA-256 digest; validated when parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Sha256(String);

impl Sha256 {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_string()))
        } else {
            Err(format!("{s:?} is not a sha256 digest (64 lowercase hex characters)"))
        }
    }
    /// The digest a hasher fed elsewhere arrived at.
    pub fn of_hasher(h: Sha256Hasher) -> Self {
        Self(hex::encode(h.finalize()))
    }
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256Hasher::digest(bytes)))
    }
    /// The digest of everything `r` yields, and how many bytes that was; `progress` sees
    /// the size of every chunk read (1 MiB reads).
    pub fn of_reader(r: &mut impl Read, mut progress: impl FnMut(u64)) -> std::io::Result<(Self, u64)> {
        let mut h = Sha256Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            len += n as u64;
            progress(n as u64);
        }
        Ok((Self::from_hasher(h), len))
    }

    /// The digest of the file at `path`.
    pub fn of_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self::of_reader(&mut std::fs::File::open(path)?, |_| {})?.0)
    }

    pub fn from_hasher(h: Sha256Hasher) -> Self {
        Self(hex::encode(h.finalize()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Find `file`'s digest in a `sha256sum`-format list (`HEX  name` or `HEX *name`, one
/// per line). A name listed twice with different digests is ambiguous: no answer.
pub fn find_in_sums(sums: &str, file: &str) -> Option<Sha256> {
    let mut found: Option<Sha256> = None;
    for l in sums.lines() {
        let Some((h, name)) = l.split_once(char::is_whitespace) else { continue };
        let name = name.trim_start();
        let name = name.strip_prefix('*').unwrap_or(name);
        if name != file {
            continue;
        }
        let sha = Sha256::parse(&h.to_ascii_lowercase()).ok()?;
        match &found {
            Some(prev) if prev != &sha => return None,
            _ => found = Some(sha),
        }
    }
    found
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_lines_in_both_modes() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let s = format!(
            "{a} *ubuntu-24.04-server-cloudimg-amd64.img\n{b}  ubuntu-24.04-server-cloudimg-arm64.img\n"
        );
        assert_eq!(find_in_sums(&s, "ubuntu-24.04-server-cloudimg-amd64.img").unwrap().as_str(), a);
        assert_eq!(find_in_sums(&s, "ubuntu-24.04-server-cloudimg-arm64.img").unwrap().as_str(), b);
        assert!(find_in_sums(&s, "ubuntu-24.04-server-cloudimg-amd64.img.manifest").is_none());
        let twice = format!("{s}{b} *ubuntu-24.04-server-cloudimg-amd64.img\n");
        assert!(find_in_sums(&twice, "ubuntu-24.04-server-cloudimg-amd64.img").is_none());
    }
}
