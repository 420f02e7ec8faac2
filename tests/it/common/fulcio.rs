//! Keyless (Fulcio-style) cosign signatures made here: a test CA chain (rcgen) and
//! short-lived leaves carrying Fulcio's extensions, signed the way cosign signs blobs.

use std::time::Duration;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

pub const IDENTITY: &str = imgbuild::verify::cosign::K8S_RELEASE_IDENTITY;
pub const ISSUER: &str = imgbuild::verify::cosign::K8S_RELEASE_ISSUER;
/// 2024-07-16T00:00:00Z, the default leaf's notBefore.
pub const SIGNED: i64 = 1721088000;

/// A CA certificate and its key.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A P-384 CA named `cn` (O=sigstore.dev, like Fulcio's), self-signed or issued by
/// `parent`, valid between the two dates.
pub fn ca(cn: &str, parent: Option<&Ca>, from: (i32, u8, u8), to: (i32, u8, u8)) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::OrganizationName, "sigstore.dev");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    let cert = match parent {
        None => p.self_signed(&key).unwrap(),
        Some(pa) => p.signed_by(&key, &pa.cert, &pa.key).unwrap(),
    };
    Ca { cert, key }
}

/// DER UTF8String, as Fulcio encodes the .1.8 extension.
fn utf8string(s: &str) -> Vec<u8> {
    assert!(s.len() < 128);
    let mut v = vec![0x0c, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// What a Fulcio leaf says; the default is a valid one for the Kubernetes release identity.
pub struct Leaf<'a> {
    pub identity: &'a str,
    /// the legacy issuer extension (1.3.6.1.4.1.57264.1.1)
    pub issuer_v1: Option<&'a str>,
    /// the issuer extension Fulcio writes now (1.3.6.1.4.1.57264.1.8)
    pub issuer_v2: Option<&'a str>,
    pub code_signing: bool,
    pub not_before: i64,
}

impl Default for Leaf<'_> {
    fn default() -> Self {
        Leaf {
            identity: IDENTITY,
            issuer_v1: Some(ISSUER),
            issuer_v2: Some(ISSUER),
            code_signing: true,
            not_before: SIGNED,
        }
    }
}

/// A 10-minute Fulcio-style leaf (P-256) issued by `by`; returns (PEM, key).
pub fn leaf(by: &Ca, l: &Leaf) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::Rfc822Name(l.identity.try_into().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if l.code_signing {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    }
    if let Some(i) = l.issuer_v1 {
        p.custom_extensions
            .push(CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 1], i.into()));
    }
    if let Some(i) = l.issuer_v2 {
        p.custom_extensions
            .push(CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], utf8string(i)));
    }
    let start = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(l.not_before as u64);
    p.not_before = start;
    p.not_after = start + Duration::from_secs(600);
    (p.signed_by(&key, &by.cert, &by.key).unwrap().pem(), key)
}

/// ECDSA P-256 / SHA-256, ASN.1 DER, as cosign signs blobs.
pub fn sign(key: &KeyPair, blob: &[u8]) -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.serialize_der(),
        &rng,
    )
    .unwrap();
    kp.sign(&rng, blob).unwrap().as_ref().to_vec()
}

/// Base64, as dl.k8s.io publishes `.sig` and `.cert` files.
pub fn b64(b: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.encode(b).into_bytes()
}

/// A test root and intermediate shaped like Sigstore's public-good chain.
pub struct Chain {
    pub root: Ca,
    pub inter: Ca,
}

impl Chain {
    pub fn new() -> Chain {
        let root = ca("sigstore", None, (2021, 1, 1), (2035, 1, 1));
        let inter = ca("sigstore-intermediate", Some(&root), (2022, 1, 1), (2031, 1, 1));
        Chain { root, inter }
    }

    /// The trust-root bundle (intermediate, then root) as `--trust-root` reads it.
    pub fn trust_pem(&self) -> String {
        format!("{}{}", self.inter.cert.pem(), self.root.cert.pem())
    }

    /// A default leaf's signature over `blob`: (`.sig`, `.cert`) as dl.k8s.io publishes them.
    pub fn sign_published(&self, blob: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (pem, key) = leaf(&self.inter, &Leaf::default());
        (b64(&sign(&key, blob)), b64(pem.as_bytes()))
    }
}
