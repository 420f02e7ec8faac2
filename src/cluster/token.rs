//! Join tokens for nodes added after the cluster's first day (`imgbuild cluster token
//! create`): a new kubeadm bootstrap token, created as a bootstrap-token Secret through
//! the Kubernetes API, and kept in `secrets/join-token.json` (0600) so that
//! `imgbuild cloud-init` renders joining nodes with it until it expires.
//!
//! The Secret follows kubeadm's bootstrap-token reference (the format kubeadm itself
//! writes in `kubeadm token create`): name `bootstrap-token-<token-id>` in
//! `kube-system`, type `bootstrap.kubernetes.io/token`, data `token-id`,
//! `token-secret`, `expiration` (RFC 3339), `usage-bootstrap-authentication` and
//! `usage-bootstrap-signing` ("true": discovery signs cluster-info with it, the
//! join authenticates with it), `auth-extra-groups`
//! (`system:bootstrappers:kubeadm:default-node-token`, the group kubeadm's RBAC lets
//! create CSRs, which are auto-approved) and a `description`. The token always
//! expires: `--ttl` defaults to 24h and 0 (never) is refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{pki, ClusterError};
use crate::kube::{self, Secret};
use crate::reporter::Reporter;

/// File in `secrets/` that holds the join token for nodes rendered from now on.
pub const JOIN_TOKEN_FILE: &str = "join-token.json";
/// The group kubeadm's default node token carries (its RBAC binds it).
pub const NODE_TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// What `cluster token create` is asked for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The cluster spec; the token is stored in secrets/join-token.json next to it.
    pub cluster: PathBuf,
    /// Kubeconfig of a cluster admin.
    pub kubeconfig: PathBuf,
    /// Context in the kubeconfig (default: its current-context).
    pub context: Option<String>,
    /// Lifetime, a Go duration (`24h`); 0 is refused.
    pub ttl: String,
}

/// `secrets/join-token.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinToken {
    pub token: String,
    /// RFC 3339, UTC (`2024-08-21T12:00:00Z`).
    pub expiration: String,
}

/// Seconds of a Go duration made of hours, minutes and seconds (`1h30m`, `90s`, `0`).
pub fn parse_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = match rest.as_bytes().first()? {
            b'h' => 3600,
            b'm' => 60,
            b's' => 1,
            _ => return None,
        };
        rest = &rest[1..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (!s.is_empty()).then_some(total)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, what Go's time.RFC3339 prints for a UTC time (whole seconds).
pub fn rfc3339(t: OffsetDateTime) -> String {
    crate::types::rfc3339(t)
}

/// Parse an RFC 3339 time, as Go's `time.Parse(time.RFC3339, …)` does for kubeadm: any offset
/// (kubeadm formats an expiration in the node's local time), fractional seconds allowed. Go
/// takes only `T` between date and time, where RFC 3339 (and `time`) also allow a space: the
/// API server's token authenticator would call such an expiration invalid, so this does too.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    if s.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The bootstrap-token Secret for `token` (`id.secret`), as kubeadm writes it.
pub fn bootstrap_token_secret(
    token: &str,
    expiration: &str,
    description: &str,
) -> Result<Secret, ClusterError> {
    let (id, secret) = token
        .split_once('.')
        .filter(|_| pki::is_bootstrap_token(token))
        .ok_or_else(|| ClusterError::Invalid("not a bootstrap token".into()))?;
    let mut s = Secret::new("kube-system", &format!("bootstrap-token-{id}"), "bootstrap.kubernetes.io/token");
    for (k, v) in [
        ("description", description),
        ("token-id", id),
        ("token-secret", secret),
        ("expiration", expiration),
        ("usage-bootstrap-authentication", "true"),
        ("usage-bootstrap-signing", "true"),
        ("auth-extra-groups", NODE_TOKEN_GROUP),
    ] {
        s.data.insert(k.to_string(), v.as_bytes().to_vec());
    }
    Ok(s)
}

/// The token joining nodes get: `secrets/join-token.json` when it exists (refused once
/// expired: a node rendered with it could never join), else `None` (the cluster's
/// initial token from `cluster init`).
pub fn for_joins(secrets: &Path) -> Result<Option<String>, ClusterError> {
    let p = secrets.join(JOIN_TOKEN_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClusterError::Io(format!("reading {}", p.display()), e)),
    };
    let jt: JoinToken =
        serde_json::from_str(&text).map_err(|e| ClusterError::Secrets(format!("{}: {e}", p.display())))?;
    if !pki::is_bootstrap_token(&jt.token) {
        return Err(ClusterError::Secrets(format!(
            "{}: token is not of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}",
            p.display()
        )));
    }
    let exp = parse_rfc3339(&jt.expiration).ok_or_else(|| {
        ClusterError::Secrets(format!("{}: expiration {:?} is not RFC 3339 UTC", p.display(), jt.expiration))
    })?;
    if exp <= OffsetDateTime::now_utc() {
        return Err(ClusterError::Invalid(format!(
            "the join token in {} expired at {}: a node rendered with it cannot join; create a new one with \
             `imgbuild cluster token create --cluster … --kubeconfig …`",
            p.display(),
            jt.expiration
        )));
    }
    Ok(Some(jt.token))
}

/// `imgbuild cluster token create`: the Secret through the API, then the file; returns
/// the file's path.
pub fn create(a: &CreateOptions, rep: &Reporter) -> anyhow::Result<PathBuf> {
    let ttl = match parse_duration(&a.ttl) {
        Some(0) => {
            return Err(ClusterError::Invalid(
                "--ttl 0 would create a token that never expires; give a lifetime (default 24h)".into(),
            )
            .into())
        }
        Some(s) => s,
        None => {
            return Err(
                ClusterError::Invalid(format!("--ttl {:?} is not a duration like 24h or 90m", a.ttl)).into()
            )
        }
    };
    let spec = super::plan::load(&a.cluster)?;
    let dir = super::secrets_dir(&a.cluster);
    if !dir.is_dir() {
        return Err(ClusterError::Invalid(format!(
            "{} is missing (run imgbuild cluster init)",
            dir.display()
        ))
        .into());
    }
    let client = kube::Client::from_kubeconfig(&a.kubeconfig, a.context.as_deref())?;
    let mut rng = pki::Rng::from_env();
    let token = pki::bootstrap_token(&mut rng);
    let now = OffsetDateTime::now_utc();
    let expiration = rfc3339(now + time::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 2)));
    let description =
        format!("imgbuild: for nodes added to cluster {} (created {})", spec.spec.name, rfc3339(now));
    let secret = bootstrap_token_secret(&token, &expiration, &description)?;
    client.create_secret(&secret)?;
    let path = dir.join(JOIN_TOKEN_FILE);
    let body = serde_json::to_vec_pretty(&JoinToken { token: token.clone(), expiration: expiration.clone() })
        .map_err(|e| ClusterError::Secrets(e.to_string()))?;
    pki::write_private(&path, &body)?;
    let id = token.split('.').next().unwrap_or_default();
    rep.status(format_args!(
        "created bootstrap token {id} (Secret kube-system/bootstrap-token-{id}, expires {expiration}) via {}; \
         `imgbuild cloud-init` renders joining nodes with it until then",
        client.config().server
    ));
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Some(86400));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("0"), Some(0));
        for bad in ["", "1d", "h", "10", "1h-", "99999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = time::Date::from_calendar_date(2024, time::Month::August, 21)
            .unwrap()
            .with_hms(7, 5, 9)
            .unwrap()
            .assume_utc();
        assert_eq!(rfc3339(t), "2024-08-21T07:05:09Z");
        assert_eq!(parse_rfc3339("2024-08-21T07:05:09Z"), Some(t));
        // What kubeadm writes on a node whose clock is not UTC: the same instant.
        assert_eq!(parse_rfc3339("2024-08-21T09:05:09+02:00"), Some(t));
        assert_eq!(
            parse_rfc3339("2024-08-21T07:05:09.5Z").map(|p| p.unix_timestamp()),
            Some(t.unix_timestamp())
        );
        for bad in ["2024-08-21 07:05:09Z", "2024-13-21T07:05:09Z", "2024-08-21T07:05:09", "2024-08-21", ""] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn join_token_file_is_used_until_it_expires() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(for_joins(d.path()).unwrap(), None);
        let write = |exp: OffsetDateTime| {
            let jt = JoinToken { token: "abcdef.0123456789abcdef".into(), expiration: rfc3339(exp) };
            std::fs::write(d.path().join(JOIN_TOKEN_FILE), serde_json::to_vec(&jt).unwrap()).unwrap();
        };
        write(OffsetDateTime::now_utc() + time::Duration::hours(1));
        assert_eq!(for_joins(d.path()).unwrap().as_deref(), Some("abcdef.0123456789abcdef"));
        write(OffsetDateTime::now_utc() - time::Duration::hours(1));
        match for_joins(d.path()) {
            Err(ClusterError::Invalid(m)) => {
                assert!(m.contains("expired at") && m.contains("token create"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
