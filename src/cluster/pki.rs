//! The cluster's secrets: three CAs, the service-account key pair, the bootstrap
//! token and the Secret-encryption key, generated once and read by `cloud-init`.
//!
//! Keys are ECDSA P-256. kubeadm v1.30 loads pre-placed CA and `sa` keys of RSA or
//! ECDSA type (keyutil parses PKCS#8), and P-256 keeps user-data small (the 64 KiB
//! OpenStack limit) and generation instant. Signatures are RFC 6979 deterministic
//! (RustCrypto `p256`), so that a seeded RNG gives byte-identical secrets for golden
//! tests; production always uses the OS RNG.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rand_chacha::rand_core::{CryptoRng, RngCore, SeedableRng};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, RemoteKeyPair, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::ClusterError;

/// Test-only: a seed that makes every secret predictable. INSECURE. Only builds with
/// the `test-seed` feature (test builds: see Cargo.toml) read it, and then warn; the
/// golden tests use it.
pub const TEST_SEED_ENV: &str = "IMGBUILD_TEST_SEED";

/// The RNG behind every secret: the OS RNG, or a seeded ChaCha20 for tests.
pub enum Rng {
    Os(rand_core::OsRng),
    Seeded(Box<rand_chacha::ChaCha20Rng>),
}

impl Rng {
    /// OS randomness; in test builds, a seeded RNG when [`TEST_SEED_ENV`] is set
    /// (with a loud warning).
    pub fn from_env() -> Self {
        #[cfg(feature = "test-seed")]
        if let Some(s) = std::env::var(TEST_SEED_ENV).ok().filter(|s| !s.is_empty()) {
            crate::reporter::always(format_args!(
                "warning: {TEST_SEED_ENV} is set: secrets are PREDICTABLE (tests only, never for a real cluster)"
            ));
            return Self::seeded(&s);
        }
        Rng::Os(rand_core::OsRng)
    }
    pub fn seeded(seed: &str) -> Self {
        let s: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
        Rng::Seeded(Box::new(rand_chacha::ChaCha20Rng::from_seed(s)))
    }
    pub fn is_seeded(&self) -> bool {
        matches!(self, Rng::Seeded(_))
    }
    /// "Now" for certificate validity; fixed when seeded so outputs are reproducible.
    pub fn now(&self) -> OffsetDateTime {
        match self {
            Rng::Os(_) => OffsetDateTime::now_utc(),
            Rng::Seeded(_) => rcgen::date_time_ymd(2025, 1, 1),
        }
    }
}

impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        match self {
            Rng::Os(r) => r.next_u32(),
            Rng::Seeded(r) => r.next_u32(),
        }
    }
    fn next_u64(&mut self) -> u64 {
        match self {
            Rng::Os(r) => r.next_u64(),
            Rng::Seeded(r) => r.next_u64(),
        }
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        match self {
            Rng::Os(r) => r.fill_bytes(d),
            Rng::Seeded(r) => r.fill_bytes(d),
        }
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        match self {
            Rng::Os(r) => r.try_fill_bytes(d),
            Rng::Seeded(r) => r.try_fill_bytes(d),
        }
    }
}
impl CryptoRng for Rng {}

/// rcgen signs through this so signatures are RFC 6979 (deterministic).
struct P256Signer {
    key: SigningKey,
    public: Vec<u8>,
}

impl RemoteKeyPair for P256Signer {
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig: DerSignature = self.key.sign(msg);
        Ok(sig.as_bytes().to_vec())
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

fn rcgen_key(key: &SigningKey) -> Result<KeyPair, ClusterError> {
    let public = key.verifying_key().to_encoded_point(false).as_bytes().to_vec();
    KeyPair::from_remote(Box::new(P256Signer { key: key.clone(), public })).map_err(ClusterError::pki)
}

fn key_pem(key: &SigningKey) -> Result<String, ClusterError> {
    Ok(key.to_pkcs8_pem(LineEnding::LF).map_err(ClusterError::pki)?.to_string())
}

/// SubjectPublicKeyInfo DER of a key: what kubeadm's discovery hash covers.
fn spki_der(key: &SigningKey) -> Result<Vec<u8>, ClusterError> {
    Ok(key.verifying_key().to_public_key_der().map_err(ClusterError::pki)?.as_bytes().to_vec())
}

fn serial(rng: &mut Rng) -> SerialNumber {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[0] &= 0x7f; // positive INTEGER
    b[0] |= 0x01; // no leading zero byte, fixed length
    SerialNumber::from_slice(&b)
}

/// A CA: certificate and key (PEM).
#[derive(Clone)]
pub struct Ca {
    pub cn: &'static str,
    pub cert_pem: String,
    pub key_pem: String,
    key: SigningKey,
}

impl Ca {
    fn params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    fn generate(cn: &'static str, rng: &mut Rng) -> Result<Self, ClusterError> {
        let key = SigningKey::random(rng);
        let mut p = Self::params(cn);
        let now = rng.now();
        p.not_before = now;
        // kubeadm's own CAs live ten years
        p.not_after = now + time::Duration::days(3650);
        p.serial_number = Some(serial(rng));
        let cert = p.self_signed(&rcgen_key(&key)?).map_err(ClusterError::pki)?;
        Ok(Ca { cn, cert_pem: cert.pem(), key_pem: key_pem(&key)?, key })
    }

    fn from_pem(cn: &'static str, cert_pem: String, key_pem: String) -> Result<Self, ClusterError> {
        let key = SigningKey::from_pkcs8_pem(&key_pem)
            .map_err(|e| ClusterError::Secrets(format!("{cn} key: {e}")))?;
        let ca = Ca { cn, cert_pem, key_pem, key };
        // the key must belong to the certificate (its SPKI is inside the cert's DER)
        let der = pem_der(&ca.cert_pem)
            .ok_or_else(|| ClusterError::Secrets(format!("{cn} certificate is not PEM")))?;
        let spki = ca.spki_der()?;
        if !der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(ClusterError::Secrets(format!("{cn} key does not match its certificate")));
        }
        Ok(ca)
    }

    pub fn spki_der(&self) -> Result<Vec<u8>, ClusterError> {
        spki_der(&self.key)
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo, kubeadm's
    /// `discovery-token-ca-cert-hash`.
    pub fn discovery_hash(&self) -> Result<String, ClusterError> {
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(self.spki_der()?))))
    }
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Everything in `DIR/secrets/`.
#[derive(Clone)]
pub struct Secrets {
    pub ca: Ca,
    pub etcd_ca: Ca,
    pub front_proxy_ca: Ca,
    pub sa_key_pem: String,
    pub sa_pub_pem: String,
    pub token: String,
    /// 32 random bytes, base64 (what an EncryptionConfiguration `secret:` holds).
    pub encryption_key: String,
}

/// File names inside `secrets/`, matching kubeadm's names under /etc/kubernetes/pki.
pub const FILES: [&str; 10] = [
    "ca.crt",
    "ca.key",
    "etcd-ca.crt",
    "etcd-ca.key",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "sa.key",
    "sa.pub",
    "bootstrap-token",
    "encryption-key",
];

const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A kubeadm bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`, unbiased.
pub fn bootstrap_token(rng: &mut Rng) -> String {
    let mut pick = |n: usize| -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            let b = (rng.next_u32() & 0xff) as u8;
            // 252 = 7 * 36: reject the tail so every character is equally likely
            if b < 252 {
                s.push(TOKEN_ALPHABET[(b % 36) as usize] as char);
            }
        }
        s
    };
    let id = pick(6);
    format!("{id}.{}", pick(16))
}

pub fn is_bootstrap_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| TOKEN_ALPHABET.contains(&b));
    matches!(t.split_once('.'), Some((a, b)) if ok(a, 6) && ok(b, 16))
}

impl Secrets {
    pub fn generate(rng: &mut Rng) -> Result<Self, ClusterError> {
        let ca = Ca::generate("kubernetes", rng)?;
        let etcd_ca = Ca::generate("etcd-ca", rng)?;
        let front_proxy_ca = Ca::generate("front-proxy-ca", rng)?;
        let sa = SigningKey::random(rng);
        let sa_pub_pem = sa.verifying_key().to_public_key_pem(LineEnding::LF).map_err(ClusterError::pki)?;
        let token = bootstrap_token(rng);
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Ok(Secrets {
            ca,
            etcd_ca,
            front_proxy_ca,
            sa_key_pem: key_pem(&sa)?,
            sa_pub_pem,
            token,
            encryption_key: base64::engine::general_purpose::STANDARD.encode(k),
        })
    }

    fn contents(&self) -> [(&'static str, String); 10] {
        [
            ("ca.crt", self.ca.cert_pem.clone()),
            ("ca.key", self.ca.key_pem.clone()),
            ("etcd-ca.crt", self.etcd_ca.cert_pem.clone()),
            ("etcd-ca.key", self.etcd_ca.key_pem.clone()),
            ("front-proxy-ca.crt", self.front_proxy_ca.cert_pem.clone()),
            ("front-proxy-ca.key", self.front_proxy_ca.key_pem.clone()),
            ("sa.key", self.sa_key_pem.clone()),
            ("sa.pub", self.sa_pub_pem.clone()),
            ("bootstrap-token", format!("{}\n", self.token)),
            ("encryption-key", format!("{}\n", self.encryption_key)),
        ]
    }

    /// Every secret value, for tests that scan outputs for leaks.
    pub fn values(&self) -> Vec<String> {
        self.contents()
            .into_iter()
            .filter(|(n, _)| !n.ends_with(".crt") && *n != "sa.pub")
            .map(|(_, v)| v)
            .collect()
    }

    /// Write into `dir` (created 0700, files 0600). Refuses when any secret exists.
    pub fn write(&self, dir: &Path) -> Result<(), ClusterError> {
        for f in FILES {
            if dir.join(f).exists() {
                return Err(ClusterError::Exists(dir.join(f)));
            }
        }
        fs::create_dir_all(dir).map_err(|e| ClusterError::Io(format!("creating {}", dir.display()), e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| ClusterError::Io(format!("chmod {}", dir.display()), e))?;
        for (name, body) in self.contents() {
            write_private(&dir.join(name), body.as_bytes())?;
        }
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self, ClusterError> {
        let read = |n: &str| -> Result<String, ClusterError> {
            let p = dir.join(n);
            let meta =
                fs::metadata(&p).map_err(|e| ClusterError::Io(format!("reading {}", p.display()), e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                crate::reporter::always(format_args!(
                    "warning: {} is readable by group/others; chmod 600 it",
                    p.display()
                ));
            }
            fs::read_to_string(&p).map_err(|e| ClusterError::Io(format!("reading {}", p.display()), e))
        };
        let token = read("bootstrap-token")?.trim().to_string();
        if !is_bootstrap_token(&token) {
            return Err(ClusterError::Secrets(
                "bootstrap-token is not of the form [a-z0-9]{6}.[a-z0-9]{16}".into(),
            ));
        }
        let encryption_key = read("encryption-key")?.trim().to_string();
        match base64::engine::general_purpose::STANDARD.decode(&encryption_key) {
            Ok(k) if k.len() == 32 => {}
            _ => return Err(ClusterError::Secrets("encryption-key is not 32 bytes of base64".into())),
        }
        let sa_key_pem = read("sa.key")?;
        SigningKey::from_pkcs8_pem(&sa_key_pem).map_err(|e| ClusterError::Secrets(format!("sa.key: {e}")))?;
        Ok(Secrets {
            ca: Ca::from_pem("kubernetes", read("ca.crt")?, read("ca.key")?)?,
            etcd_ca: Ca::from_pem("etcd-ca", read("etcd-ca.crt")?, read("etcd-ca.key")?)?,
            front_proxy_ca: Ca::from_pem(
                "front-proxy-ca",
                read("front-proxy-ca.crt")?,
                read("front-proxy-ca.key")?,
            )?,
            sa_key_pem,
            sa_pub_pem: read("sa.pub")?,
            token,
            encryption_key,
        })
    }
}

/// Atomically and durably write a 0600 file (temp file in the same directory,
/// fsync, rename).
pub fn write_private(path: &Path, body: &[u8]) -> Result<(), ClusterError> {
    write_private_with(path, body, true)
}

/// Like [`write_private`]; `durable: false` skips the fsync, for outputs that
/// are cheap to regenerate (thousands of seeds would otherwise wait on the disk).
pub fn write_private_with(path: &Path, body: &[u8], durable: bool) -> Result<(), ClusterError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| ClusterError::Io(format!("creating a temp file in {}", dir.display()), e))?;
    tmp.write_all(body).map_err(|e| ClusterError::Io(format!("writing {}", path.display()), e))?;
    if durable {
        tmp.as_file().sync_all().map_err(|e| ClusterError::Io(format!("syncing {}", path.display()), e))?;
    }
    tmp.persist(path).map_err(|e| ClusterError::Io(format!("renaming to {}", path.display()), e.error))?;
    Ok(())
}

/// Create `path` 0600 only if it does not exist (for cluster.yaml).
pub fn create_new_private(path: &Path, body: &[u8]) -> Result<(), ClusterError> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        match e.kind() {
            std::io::ErrorKind::AlreadyExists => ClusterError::Exists(PathBuf::from(path)),
            _ => ClusterError::Io(format!("creating {}", path.display()), e),
        }
    })?;
    f.write_all(body).map_err(|e| ClusterError::Io(format!("writing {}", path.display()), e))?;
    Ok(())
}

/// Who the offline-signed admin kubeconfig authenticates as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminKind {
    /// O=kubeadm:cluster-admins, bound to cluster-admin by a ClusterRoleBinding
    /// kubeadm creates; revocable by deleting that binding (kubeadm ≥ 1.29's admin.conf)
    Admin,
    /// O=system:masters: break-glass, bypasses RBAC and cannot be revoked before expiry
    SuperAdmin,
}

/// A client certificate + key signed by the cluster CA.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn admin_client_cert(
    ca: &Ca,
    kind: AdminKind,
    days: u32,
    rng: &mut Rng,
) -> Result<ClientCert, ClusterError> {
    let (cn, org) = match kind {
        AdminKind::Admin => ("kubernetes-admin", "kubeadm:cluster-admins"),
        AdminKind::SuperAdmin => ("kubernetes-super-admin", "system:masters"),
    };
    client_cert(ca, Some(org), cn, days, rng)
}

/// A client certificate for etcd, signed by the cluster's etcd CA: etcd (with
/// `--client-cert-auth`, as kubeadm runs it) admits any client its CA signed, like
/// kubeadm's own `apiserver-etcd-client` (which carries no organisation either).
pub fn etcd_client_cert(
    etcd_ca: &Ca,
    cn: &str,
    days: u32,
    rng: &mut Rng,
) -> Result<ClientCert, ClusterError> {
    client_cert(etcd_ca, None, cn, days, rng)
}

fn client_cert(
    ca: &Ca,
    org: Option<&str>,
    cn: &str,
    days: u32,
    rng: &mut Rng,
) -> Result<ClientCert, ClusterError> {
    let key = SigningKey::random(rng);
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let now = rng.now();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(days.into());
    p.serial_number = Some(serial(rng));
    // The issuer is rebuilt from the CA's fixed subject and its key: that is all
    // the signature, issuer DN and authority key id depend on.
    let ca_key = rcgen_key(&ca.key)?;
    let issuer = Ca::params(ca.cn).self_signed(&ca_key).map_err(ClusterError::pki)?;
    let cert = p.signed_by(&rcgen_key(&key)?, &issuer, &ca_key).map_err(ClusterError::pki)?;
    Ok(ClientCert { cert_pem: cert.pem(), key_pem: key_pem(&key)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format_and_seeded_determinism() {
        let mut r = Rng::seeded("x");
        for _ in 0..200 {
            assert!(is_bootstrap_token(&bootstrap_token(&mut r)));
        }
        assert!(!is_bootstrap_token("abcdef.0123456789abcdeF"));
        assert!(!is_bootstrap_token("abcde.0123456789abcdef"));
        let a = Secrets::generate(&mut Rng::seeded("s")).unwrap();
        let b = Secrets::generate(&mut Rng::seeded("s")).unwrap();
        assert_eq!(a.contents(), b.contents());
        let c = Secrets::generate(&mut Rng::Os(rand_core::OsRng)).unwrap();
        assert_ne!(a.token, c.token);
        assert_ne!(a.ca.key_pem, c.ca.key_pem);
    }

    #[test]
    fn write_refuses_overwrite_and_load_roundtrips() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("secrets");
        let s = Secrets::generate(&mut Rng::seeded("w")).unwrap();
        s.write(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        for f in FILES {
            assert_eq!(fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
        }
        assert!(matches!(s.write(&dir), Err(ClusterError::Exists(_))));
        let l = Secrets::load(&dir).unwrap();
        assert_eq!(l.contents(), s.contents());
        // a key that does not match its certificate is refused
        fs::write(dir.join("ca.key"), &s.etcd_ca.key_pem).unwrap();
        assert!(matches!(Secrets::load(&dir), Err(ClusterError::Secrets(_))));
    }
}
