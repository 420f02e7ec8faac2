//! The package universe of one arch: every `Packages` index of the recipe's suites and
//! components, each verified against the SHA-256 in its suite's signed InRelease.

use std::collections::BTreeMap;
use std::io::Read;

use super::inrelease::{self, TrustedKey};
use super::net::{self, Got};
use super::relation::{self, Alt, Group};
use super::{control, AptError};
use crate::cache::Cache;
use crate::fetch::Mirror;
use crate::lockfile::{IndexRef, ReleaseRef};
use crate::reporter::Reporter;
use crate::types::debian::Version;
use crate::types::Sha256;

/// One binary package of an index.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub version: Version,
    pub architecture: String,
    /// Full URL of the .deb (archive root + `Filename`).
    pub url: String,
    pub size: u64,
    pub sha256: Sha256,
    /// Pre-Depends then Depends.
    pub depends: Vec<Group>,
    /// `Provides` entries; a versioned one is `name (= v)`.
    pub provides: Vec<Alt>,
}

#[derive(Debug, Default)]
pub struct Universe {
    pub entries: Vec<Entry>,
    pub releases: Vec<ReleaseRef>,
    pub indexes: Vec<IndexRef>,
}

/// Where and how to read the archive for one arch.
pub struct Source<'a> {
    pub archive: &'a str,
    pub suites: &'a [String],
    pub components: &'a [String],
    pub arch: &'a str,
    pub key: &'a TrustedKey,
    pub mirrors: &'a [Mirror],
    pub cache: Option<&'a Cache>,
    pub reporter: &'a Reporter,
}

/// Index file variants, most compact first.
const VARIANTS: [&str; 3] = ["Packages.xz", "Packages.gz", "Packages"];

/// Download and verify every InRelease and Packages index, and parse the entries.
pub fn load(src: &Source<'_>) -> Result<Universe, AptError> {
    let root = src.archive.trim_end_matches('/');
    let mut u = Universe::default();
    for suite in src.suites {
        let url = format!("{root}/dists/{suite}/InRelease");
        src.reporter.status(format_args!("apt: verifying {url}"));
        let bytes = match net::get(&url, src.mirrors, net::INRELEASE_LIMIT)? {
            Got::Body(b) => b,
            Got::NotFound => {
                return Err(AptError::Download { url, msg: "not found (HTTP 404/410)".into() });
            }
        };
        let text = String::from_utf8(bytes.clone()).map_err(|_| AptError::Signature {
            url: url.clone(),
            msg: "InRelease is not UTF-8 text".into(),
        })?;
        let rel = inrelease::verify(&text, src.key, &url)?;
        // A validly signed InRelease of another suite must not stand in for this one.
        let names = [rel.fields.get("Suite"), rel.fields.get("Codename")];
        if !names.iter().flatten().any(|n| n == suite) {
            return Err(AptError::Integrity {
                url,
                msg: format!("signed Release is for suite {:?}, not {suite:?}", names[0].unwrap_or("?")),
            });
        }
        u.releases.push(ReleaseRef { url: url.clone(), sha256: Sha256::of(&bytes), signer: rel.signer });
        for comp in src.components {
            let dir = format!("{comp}/binary-{}", src.arch);
            let listed: Vec<_> = VARIANTS
                .iter()
                .filter_map(|v| rel.sha256.get(&format!("{dir}/{v}")).map(|l| (*v, l)))
                .collect();
            if listed.is_empty() {
                return Err(AptError::Integrity {
                    url: url.clone(),
                    msg: format!("signed Release lists no {dir}/Packages index"),
                });
            }
            let mut got = None;
            for (variant, l) in listed {
                let iurl = format!("{root}/dists/{suite}/{dir}/{variant}");
                if let Some(raw) = fetch_verified(&iurl, l, src)? {
                    got = Some((variant, iurl, raw, l.sha256.clone()));
                    break;
                }
            }
            let Some((variant, iurl, raw, sha)) = got else {
                return Err(AptError::Download {
                    url: format!("{root}/dists/{suite}/{dir}/Packages*"),
                    msg: "no listed index variant could be downloaded".into(),
                });
            };
            let text =
                decompress(variant, &raw).map_err(|msg| AptError::Format { what: iurl.clone(), msg })?;
            parse_into(&text, root, &iurl, src.arch, &mut u.entries)?;
            u.indexes.push(IndexRef { url: iurl, sha256: sha });
        }
    }
    Ok(u)
}

/// Download an index and check size and digest; `None` when it is not on the server.
fn fetch_verified(url: &str, l: &inrelease::Listed, src: &Source<'_>) -> Result<Option<Vec<u8>>, AptError> {
    if let Some(c) = src.cache {
        let found = c
            .lookup(&l.sha256)
            .map_err(|e| AptError::Integrity { url: url.to_string(), msg: e.to_string() })?;
        if let Some(p) = found {
            return std::fs::read(&p).map(Some).map_err(super::io(p.display().to_string()));
        }
    }
    // The signed Release says its size: more than that cannot be the index it signs.
    let bytes = match net::get_signed(url, src.mirrors, l.size)? {
        Got::Body(b) => b,
        Got::NotFound => return Ok(None),
    };
    let got = Sha256::of(&bytes);
    if bytes.len() as u64 != l.size || got != l.sha256 {
        return Err(AptError::Integrity {
            url: url.to_string(),
            msg: format!(
                "index does not match the signed InRelease: sha256 {got} size {} (expected {} size {})",
                bytes.len(),
                l.sha256,
                l.size
            ),
        });
    }
    if let Some(c) = src.cache {
        store(c, &l.sha256, &bytes, &format!("apt index {}", crate::net::redact(url)))?;
    }
    Ok(Some(bytes))
}

/// Put verified bytes into the cache under their digest; `what` names them.
pub fn store(cache: &Cache, sha: &Sha256, bytes: &[u8], what: &str) -> Result<(), AptError> {
    cache.put(sha, bytes, what).map_err(super::io(cache.blob_path(sha).display().to_string()))?;
    Ok(())
}

/// Decompress by the index variant's suffix (also used for `.deb` members).
pub fn decompress(name: &str, raw: &[u8]) -> Result<String, String> {
    let bytes = decompress_bytes(name, raw)?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

pub fn decompress_bytes(name: &str, raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(raw), &mut out)
            .map_err(|e| format!("xz: {e}"))?;
    } else if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(raw).read_to_end(&mut out).map_err(|e| format!("gzip: {e}"))?;
    } else if name.ends_with(".zst") {
        ruzstd::decoding::StreamingDecoder::new(raw)
            .map_err(|e| format!("zstd: {e}"))?
            .read_to_end(&mut out)
            .map_err(|e| format!("zstd: {e}"))?;
    } else {
        out = raw.to_vec();
    }
    Ok(out)
}

/// Parse a (decompressed, verified) Packages index for `arch`; `root` is the archive URL.
pub fn parse_text(text: &str, root: &str, url: &str, arch: &str) -> Result<Vec<Entry>, AptError> {
    let mut out = Vec::new();
    parse_into(text, root, url, arch, &mut out)?;
    Ok(out)
}

fn parse_into(text: &str, root: &str, url: &str, arch: &str, out: &mut Vec<Entry>) -> Result<(), AptError> {
    let fmt = |msg: String| AptError::Format { what: url.to_string(), msg };
    for st in control::parse(text, url).map_err(fmt)? {
        let field =
            |n: &str| st.get(n).ok_or_else(|| fmt(format!("stanza without {n}: {:?}", st.get("Package"))));
        let name = field("Package")?.to_string();
        let a = field("Architecture")?;
        if a != arch && a != "all" {
            continue;
        }
        let ctx = |e: String| fmt(format!("{name}: {e}"));
        let version = Version::parse(field("Version")?).map_err(ctx)?;
        let Some(sha) = st.get("SHA256") else { continue };
        let mut depends = relation::parse(st.get("Pre-Depends").unwrap_or("")).map_err(ctx)?;
        depends.extend(relation::parse(st.get("Depends").unwrap_or("")).map_err(ctx)?);
        let provides =
            relation::parse(st.get("Provides").unwrap_or("")).map_err(ctx)?.into_iter().flatten().collect();
        let filename = field("Filename")?;
        if filename.starts_with('/') || filename.split('/').any(|c| c == "..") {
            return Err(fmt(format!("{name}: unsafe Filename {filename:?}")));
        }
        out.push(Entry {
            version,
            architecture: a.to_string(),
            url: format!("{root}/{filename}"),
            size: field("Size")?.parse().map_err(|_| fmt(format!("{name}: bad Size")))?,
            sha256: Sha256::parse(sha).map_err(ctx)?,
            depends,
            provides,
            name,
        });
    }
    Ok(())
}

/// Entries by name, highest version first (stable for equal versions: first index wins).
pub fn by_name(entries: &[Entry]) -> BTreeMap<&str, Vec<&Entry>> {
    let mut m: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        m.entry(e.name.as_str()).or_default().push(e);
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| b.version.cmp(&a.version));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_for_the_arch() {
        let t = "Package: a\nVersion: 1\nArchitecture: amd64\nFilename: pool/a.deb\nSize: 3\nSHA256: \
                 0000000000000000000000000000000000000000000000000000000000000000\n\
                 Pre-Depends: p\nDepends: b (>= 1) | c\nProvides: v (= 1)\n\n\
                 Package: a\nVersion: 1\nArchitecture: arm64\nFilename: pool/x.deb\nSize: 3\n";
        let mut out = Vec::new();
        parse_into(t, "http://h/u", "i", "amd64", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].url, "http://h/u/pool/a.deb");
        assert_eq!(out[0].depends.len(), 2);
        assert_eq!(out[0].depends[0][0].name, "p");
        assert_eq!(out[0].provides[0].name, "v");
        let bad = t.replace("pool/a.deb", "../../etc/passwd");
        assert!(parse_into(&bad, "h", "i", "amd64", &mut Vec::new()).is_err());
    }
}
