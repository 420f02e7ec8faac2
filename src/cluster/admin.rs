//! The add-on profiles' admin credentials (Grafana's for `monitoring`, Argo CD's for
//! `gitops`), generated once with the cluster's other secrets so the operator knows them
//! before the cluster exists, instead of fishing a chart-generated one out of the cluster.
//!
//! Each lives in its own 0600 YAML file in `secrets/` (never in cluster.yaml, never in an
//! image): `grafana-admin.yaml` (`user`, `password`) and `argocd-admin.yaml` (`password`,
//! its bcrypt hash and the hash's mtime). Argo CD keeps only a bcrypt hash in its
//! `argocd-secret` (`admin.password`, `admin.passwordMtime`), checked with Go's
//! `golang.org/x/crypto/bcrypt`; the hash is made here, once, so every rendering of a seed
//! carries the same bytes. Cost 10 is Go's `bcrypt.DefaultCost`, what Argo CD's own
//! `argocd account update-password` uses.

use std::path::{Path, PathBuf};

use rand_chacha::rand_core::RngCore;
use serde::{Deserialize, Serialize};

use super::pki::{self, Rng};
use super::ClusterError;

pub const GRAFANA_FILE: &str = "grafana-admin.yaml";
pub const ARGOCD_FILE: &str = "argocd-admin.yaml";
/// Grafana's admin login (the chart's `adminUser` default).
pub const GRAFANA_USER: &str = "admin";
/// Go's `bcrypt.DefaultCost`.
pub const BCRYPT_COST: u32 = 10;
const PASSWORD_LEN: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrafanaAdmin {
    pub user: String,
    pub password: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgocdAdmin {
    pub password: String,
    /// `$2a$10$…` of `password`.
    pub bcrypt: String,
    /// RFC 3339 UTC: when the password was set (Argo CD invalidates sessions older than it).
    pub mtime: String,
}

/// Both profiles' admin credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminSecrets {
    pub grafana: GrafanaAdmin,
    pub argocd: ArgocdAdmin,
}

// Never print a password, not even in a debug dump.
impl std::fmt::Debug for AdminSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSecrets").field("grafana_user", &self.grafana.user).finish_non_exhaustive()
    }
}

/// A password of letters and digits, every character equally likely (190 bits).
fn password(rng: &mut Rng) -> String {
    let mut s = String::with_capacity(PASSWORD_LEN);
    while s.len() < PASSWORD_LEN {
        let b = (rng.next_u32() & 0xff) as u8;
        // 248 = 4 * 62: reject the tail so no character is more likely than another
        if b < 248 {
            s.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    s
}

fn is_password(p: &str) -> bool {
    (8..=128).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_graphic())
}

/// The bcrypt hash of `password` in the `$2a$` form Argo CD's chart documents.
pub fn bcrypt_hash(password: &str, rng: &mut Rng) -> Result<String, ClusterError> {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let parts = bcrypt::hash_with_salt(password, BCRYPT_COST, salt)
        .map_err(|e| ClusterError::Secrets(format!("bcrypt: {e}")))?;
    Ok(parts.format_for_version(bcrypt::Version::TwoA))
}

impl AdminSecrets {
    pub fn generate(rng: &mut Rng) -> Result<Self, ClusterError> {
        let grafana = GrafanaAdmin { user: GRAFANA_USER.into(), password: password(rng) };
        let argo = password(rng);
        let bcrypt = bcrypt_hash(&argo, rng)?;
        let mtime = rng
            .now()
            .replace_nanosecond(0)
            .map_err(|e| ClusterError::Secrets(e.to_string()))?
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| ClusterError::Secrets(e.to_string()))?;
        Ok(AdminSecrets { grafana, argocd: ArgocdAdmin { password: argo, bcrypt, mtime } })
    }

    fn bodies(&self) -> Result<[(&'static str, String); 2], ClusterError> {
        Ok([(GRAFANA_FILE, yaml(&self.grafana)?), (ARGOCD_FILE, yaml(&self.argocd)?)])
    }

    /// Write both files into `dir` (0600), never replacing one.
    pub fn write(&self, dir: &Path) -> Result<(), ClusterError> {
        for (name, body) in self.bodies()? {
            pki::create_new_private(&dir.join(name), body.as_bytes())?;
        }
        Ok(())
    }

    /// Read both files from `dir`; `None` when neither exists (a cluster directory
    /// written before these secrets existed).
    pub fn load(dir: &Path) -> Result<Option<Self>, ClusterError> {
        let (g, a) = (dir.join(GRAFANA_FILE), dir.join(ARGOCD_FILE));
        if !g.exists() && !a.exists() {
            return Ok(None);
        }
        let grafana: GrafanaAdmin = read(&g, "user and password")?;
        let argocd: ArgocdAdmin = read(&a, "password, bcrypt and mtime")?;
        if !is_password(&grafana.password) || grafana.user.is_empty() {
            return Err(ClusterError::Secrets(format!("{}: empty user or unusable password", g.display())));
        }
        if !is_password(&argocd.password)
            || time::OffsetDateTime::parse(&argocd.mtime, &time::format_description::well_known::Rfc3339)
                .is_err()
        {
            return Err(ClusterError::Secrets(format!(
                "{}: unusable password or mtime (RFC 3339)",
                a.display()
            )));
        }
        // A hash that does not match the password would lock the operator out of Argo CD.
        if !bcrypt::verify(&argocd.password, &argocd.bcrypt).unwrap_or(false) {
            return Err(ClusterError::Secrets(format!(
                "{}: bcrypt is not the hash of password",
                a.display()
            )));
        }
        Ok(Some(AdminSecrets { grafana, argocd }))
    }

    /// [`Self::load`], generating and writing them (once, 0600) where they are missing.
    /// Returns the secrets and the files it created.
    pub fn load_or_create(dir: &Path, rng: &mut Rng) -> Result<(Self, Vec<PathBuf>), ClusterError> {
        if let Some(s) = Self::load(dir)? {
            return Ok((s, Vec::new()));
        }
        let s = Self::generate(rng)?;
        s.write(dir)?;
        Ok((s, vec![dir.join(GRAFANA_FILE), dir.join(ARGOCD_FILE)]))
    }

    /// Every secret value, for tests that scan outputs for leaks.
    pub fn values(&self) -> Vec<String> {
        vec![self.grafana.password.clone(), self.argocd.password.clone(), self.argocd.bcrypt.clone()]
    }
}

fn read<T: serde::de::DeserializeOwned>(p: &Path, keys: &str) -> Result<T, ClusterError> {
    let text =
        super::credfile::read(p, "generated by `imgbuild cluster init`").map_err(ClusterError::Secrets)?;
    super::credfile::yaml(p, &text, keys).map_err(ClusterError::Secrets)
}

fn yaml<T: Serialize>(v: &T) -> Result<String, ClusterError> {
    serde_yaml::to_string(v).map_err(|e| ClusterError::Secrets(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_uniform_letters_and_digits_and_the_hash_verifies() {
        let mut rng = Rng::seeded("admin");
        let s = AdminSecrets::generate(&mut rng).unwrap();
        assert_eq!(s.grafana.password.len(), PASSWORD_LEN);
        assert!(s.grafana.password.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(s.grafana.password, s.argocd.password);
        assert!(s.argocd.bcrypt.starts_with("$2a$10$"), "{}", s.argocd.bcrypt);
        assert!(bcrypt::verify(&s.argocd.password, &s.argocd.bcrypt).unwrap());
        assert_eq!(s.argocd.mtime, "2025-01-01T00:00:00Z");
        // seeded: reproducible (golden tests); the OS RNG: never the same twice
        assert_eq!(s, AdminSecrets::generate(&mut Rng::seeded("admin")).unwrap());
        let os = || AdminSecrets::generate(&mut Rng::Os(rand_core::OsRng)).unwrap();
        assert_ne!(os().grafana.password, os().grafana.password);
        assert!(!format!("{s:?}").contains(&s.grafana.password));
    }

    #[test]
    fn written_once_0600_and_a_tampered_hash_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mut rng = Rng::seeded("w");
        assert!(AdminSecrets::load(d.path()).unwrap().is_none());
        let (s, created) = AdminSecrets::load_or_create(d.path(), &mut rng).unwrap();
        assert_eq!(created.len(), 2);
        for f in [GRAFANA_FILE, ARGOCD_FILE] {
            let mode = std::fs::metadata(d.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let (again, created) = AdminSecrets::load_or_create(d.path(), &mut rng).unwrap();
        assert!(created.is_empty());
        assert_eq!(again, s);
        assert!(matches!(s.write(d.path()), Err(ClusterError::Exists(_))));
        let other = bcrypt_hash("not-the-password", &mut rng).unwrap();
        let text = std::fs::read_to_string(d.path().join(ARGOCD_FILE)).unwrap();
        std::fs::write(d.path().join(ARGOCD_FILE), text.replace(&s.argocd.bcrypt, &other)).unwrap();
        let e = AdminSecrets::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("bcrypt") && !e.contains(&s.argocd.password), "{e}");
    }
}
