//! `backups.s3`: where the control planes upload their verified etcd snapshots (the
//! image's etcd-snapshot script, `curl --aws-sigv4`), and the credentials it signs with.
//!
//! The credentials never sit in cluster.yaml (a file people commit): they are read from
//! a 0600 YAML file in the cluster's secrets directory and reach only the control
//! planes, in a root-only file.

use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;

use super::diag::{Collector, Diagnostic, Diagnostics, Severity};
use super::spec::{S3Addressing, S3};
use super::ClusterError;

/// Where the credentials are when `credentials_file` is not set (in `secrets/`).
pub const DEFAULT_CREDENTIALS_FILE: &str = "secrets/backup-s3.yaml";

/// A validated `backups.s3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    /// The URL an object key is appended to: `ENDPOINT/BUCKET/` (path-style) or
    /// `SCHEME://BUCKET.HOST[:PORT]/` (virtual-hosted).
    pub bucket_url: String,
    pub region: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// As written, relative to cluster.yaml's directory.
    pub credentials_file: String,
}

/// An access key pair (`secrets/backup-s3.yaml`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

// Never print the secret, not even in a debug dump.
impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// S3's bucket naming rules: 3–63 lowercase letters, digits, dots and hyphens, starting
/// and ending with a letter or digit.
fn is_bucket_name(b: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && edge(b.chars().next())
        && edge(b.chars().last())
        && !b.contains("..")
}

/// Folder names that need no URL encoding and that curl does not rewrite (no `.`/`..`
/// segment, no empty one).
fn is_prefix_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

/// Check `backups.s3`, recording every problem with its field path.
pub(crate) fn check(c: &mut Collector, s: &S3) -> Option<S3Target> {
    let n = c.items.len();
    let url = match Url::parse(&s.endpoint) {
        Ok(u) => Some(u),
        Err(e) => {
            c.err("backups.s3.endpoint", format!("{:?} is not a URL: {e}", s.endpoint));
            None
        }
    };
    let url = url.filter(|u| {
        let ok = match u.scheme() {
            "https" => true,
            "http" if s.insecure_http => true,
            "http" => {
                c.err(
                    "backups.s3.endpoint",
                    "http:// sends snapshots (every Secret of the cluster) unencrypted; use https:// or set insecure_http: true for a lab",
                );
                return false;
            }
            _ => false,
        };
        if !ok
            || u.host_str().is_none()
            || !u.username().is_empty()
            || u.password().is_some()
            || u.path() != "/"
            || u.query().is_some()
            || u.fragment().is_some()
        {
            c.err(
                "backups.s3.endpoint",
                format!("{:?}: expected https://HOST[:PORT] (no path, user or query)", s.endpoint),
            );
            return false;
        }
        true
    });
    if !is_bucket_name(&s.bucket) {
        c.err(
            "backups.s3.bucket",
            format!("{:?} is not an S3 bucket name (3-63 lowercase letters, digits, '.', '-')", s.bucket),
        );
    }
    if s.region.is_empty()
        || s.region.len() > 64
        || !s.region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        c.err("backups.s3.region", format!("{:?} is not a region name (like us-east-1)", s.region));
    }
    let prefix = match s.prefix.as_deref().map(|p| p.trim_matches('/')) {
        None | Some("") => String::new(),
        Some(p) if p.len() <= 512 && p.split('/').all(is_prefix_segment) => format!("{p}/"),
        Some(p) => {
            c.err(
                "backups.s3.prefix",
                format!("{p:?}: expected folder names of letters, digits, '.', '_', '-' separated by '/'"),
            );
            String::new()
        }
    };
    if s.addressing == S3Addressing::VirtualHosted && s.bucket.contains('.') {
        c.warn(
            "backups.s3.bucket",
            "a bucket name with dots does not match the endpoint's wildcard TLS certificate in virtual-hosted addressing; use addressing: path",
        );
    }
    let credentials_file = s.credentials_file.clone().unwrap_or_else(|| DEFAULT_CREDENTIALS_FILE.into());
    if credentials_file.is_empty() {
        c.err("backups.s3.credentials_file", "empty path");
    }
    let url = url?;
    if c.items[n..].iter().any(|d| d.severity == Severity::Error) {
        return None;
    }
    let host = url.host_str()?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let bucket_url = match s.addressing {
        S3Addressing::Path => format!("{}://{host}{port}/{}/", url.scheme(), s.bucket),
        S3Addressing::VirtualHosted => format!("{}://{}.{host}{port}/", url.scheme(), s.bucket),
    };
    Some(S3Target { bucket_url, region: s.region.clone(), prefix, credentials_file })
}

/// Characters a credential may hold: it goes into a quoted curl config string and a
/// KEY=VALUE file, so no whitespace, quotes, backslash, `$` or backtick.
fn is_credential(s: &str, colon: bool) -> bool {
    (1..=256).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_graphic() && !b"\"'\\`$".contains(&b) && (colon || b != b':'))
}

impl S3Target {
    /// The credentials file, relative to `cluster_yaml`'s directory.
    pub fn credentials_path(&self, cluster_yaml: &Path) -> PathBuf {
        cluster_yaml.parent().unwrap_or(Path::new(".")).join(&self.credentials_file)
    }

    /// Read and check the credentials; every problem names `backups.s3.credentials_file`
    /// and its line in `cluster_yaml` (bad input, exit 2).
    pub fn load_credentials(
        &self,
        cluster_yaml: &Path,
        line: Option<usize>,
    ) -> Result<S3Credentials, ClusterError> {
        let path = self.credentials_path(cluster_yaml);
        let bad = |message: String| {
            ClusterError::Spec(Diagnostics {
                origin: cluster_yaml.display().to_string(),
                items: vec![Diagnostic {
                    severity: Severity::Error,
                    path: "backups.s3.credentials_file".into(),
                    line,
                    message,
                }],
            })
        };
        let text = super::credfile::read(&path, "a YAML file with access_key_id and secret_access_key")
            .map_err(bad)?;
        let creds: S3Credentials =
            super::credfile::yaml(&path, &text, "access_key_id and secret_access_key").map_err(bad)?;
        if !is_credential(&creds.access_key_id, false) {
            return Err(bad(format!(
                "{}: access_key_id must be 1-256 printable characters without ':', quotes, '\\', '$' or '`'",
                path.display()
            )));
        }
        if !is_credential(&creds.secret_access_key, true) {
            return Err(bad(format!(
                "{}: secret_access_key must be 1-256 printable characters without quotes, '\\', '$' or '`'",
                path.display()
            )));
        }
        Ok(creds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: &str) -> S3 {
        S3 {
            endpoint: endpoint.into(),
            bucket: "etcd-backups".into(),
            region: "us-east-1".into(),
            prefix: Some("/prod/etcd/".into()),
            addressing: S3Addressing::Path,
            insecure_http: false,
            credentials_file: None,
        }
    }

    fn run(s: &S3) -> (Option<S3Target>, Vec<String>) {
        let lines = std::collections::HashMap::new();
        let mut c = Collector::new(&lines);
        let t = check(&mut c, s);
        (t, c.items.iter().map(|d| format!("{}: {}", d.path, d.message)).collect())
    }

    #[test]
    fn path_style_and_virtual_hosted_urls() {
        let (t, errs) = run(&spec("https://s3.example.com:9000"));
        assert!(errs.is_empty(), "{errs:?}");
        let t = t.unwrap();
        assert_eq!(t.bucket_url, "https://s3.example.com:9000/etcd-backups/");
        assert_eq!(t.prefix, "prod/etcd/");
        assert_eq!(t.credentials_file, DEFAULT_CREDENTIALS_FILE);
        let mut v = spec("https://s3.eu-central-1.amazonaws.com/");
        v.addressing = S3Addressing::VirtualHosted;
        v.prefix = None;
        let t = run(&v).0.unwrap();
        assert_eq!(t.bucket_url, "https://etcd-backups.s3.eu-central-1.amazonaws.com/");
        assert_eq!(t.prefix, "");
    }

    #[test]
    fn http_needs_insecure_http_and_bad_values_are_named() {
        let (t, errs) = run(&spec("http://10.0.0.5:9000"));
        assert!(t.is_none());
        assert!(errs[0].starts_with("backups.s3.endpoint: http://"), "{errs:?}");
        let mut lab = spec("http://10.0.0.5:9000");
        lab.insecure_http = true;
        assert_eq!(run(&lab).0.unwrap().bucket_url, "http://10.0.0.5:9000/etcd-backups/");
        let mut bad = spec("https://user:pw@s3.example.com/some/path");
        bad.bucket = "Etcd_Backups".into();
        bad.region = "us east".into();
        bad.prefix = Some("a/../b".into());
        let errs = run(&bad).1;
        let fields: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            ["backups.s3.endpoint", "backups.s3.bucket", "backups.s3.region", "backups.s3.prefix"],
            "{errs:?}"
        );
    }

    #[test]
    fn credentials_need_mode_0600_and_both_keys_and_never_print_the_secret() {
        let d = tempfile::tempdir().unwrap();
        let yaml = d.path().join("cluster.yaml");
        let t = run(&spec("https://s3.example.com")).0.unwrap();
        let e = t.load_credentials(&yaml, Some(9)).unwrap_err().to_string();
        assert!(e.contains("backups.s3.credentials_file") && e.contains(":9"), "{e}");
        std::fs::create_dir(d.path().join("secrets")).unwrap();
        let f = d.path().join(DEFAULT_CREDENTIALS_FILE);
        std::fs::write(&f, "access_key_id: AKIDEXAMPLE\nsecret_access_key: s3cr3t/x+y\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = t.load_credentials(&yaml, None).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = t.load_credentials(&yaml, None).unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AKIDEXAMPLE", "s3cr3t/x+y"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        std::fs::write(&f, "access_key_id: AKIDEXAMPLE\nsecret: s3cr3t\n").unwrap();
        let e = t.load_credentials(&yaml, None).unwrap_err().to_string();
        assert!(e.contains("secret_access_key") && !e.contains("s3cr3t"), "{e}");
    }
}
