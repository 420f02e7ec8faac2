//! Cosign keyless blob signatures, verified offline: the form dl.k8s.io publishes next
//! to each binary (`<file>.sig`: base64 ECDSA signature; `<file>.cert`: base64 of the
//! PEM Fulcio certificate).
//!
//! Checks, all required: the certificate chains to a self-signed root of the trust root
//! (Fulcio root + intermediates); each CA was valid while the leaf was; the leaf is a
//! code-signing certificate whose SAN is exactly the expected identity and whose Fulcio
//! OIDC-issuer extension(s) (1.3.6.1.4.1.57264.1.1 raw, .1.8 DER UTF8String) are exactly
//! the expected issuer; and the ECDSA P-256/SHA-256 signature verifies over the file.
//!
//! Not checked, because it needs the network or data not available offline: the Rekor
//! transparency-log entry (which is also what gives cosign a trusted signing time). The
//! leaf lives ~10 minutes, so without a signing time (`signed_at`) its window is only
//! checked for consistency with its issuers, never against the clock.

use anyhow::Result;
use base64::Engine;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::{FromDer, GeneralName};

use super::net::{self, Got};
use super::VerifyError;
use crate::reporter::Reporter;

/// Identity that signs files on dl.k8s.io (keys-and-packages.md §3: binaries are signed
/// by krel-staging; krel-trust signs container images only).
pub const K8S_RELEASE_IDENTITY: &str = "krel-staging@k8s-releng-prod.iam.gserviceaccount.com";
/// OIDC issuer of that identity.
pub const K8S_RELEASE_ISSUER: &str = "https://accounts.google.com";

/// The Sigstore public-good Fulcio trust root: the root (O=sigstore.dev, CN=sigstore)
/// and the intermediate (CN=sigstore-intermediate), PEM. Sources and checks:
/// keys/README.md; [`EMBEDDED_FULCIO_FINGERPRINTS`] pins them, so a changed file fails
/// the tests.
pub const EMBEDDED_FULCIO_TRUST_ROOT: &str = include_str!("../../keys/sigstore-fulcio-v1.pem");

/// SHA-256 of the DER of the embedded root and intermediate, in file order.
pub const EMBEDDED_FULCIO_FINGERPRINTS: [&str; 2] = [
    "3ba7b6cc4e95469d4d334b49cb257ad8537076fa84b0ca87ff4ecfe6a54680c1",
    "15d795348226b4649f750f5802592c393bee7cc53c3b86982175b7ad087efe47",
];

const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const MAX_CHAIN: usize = 5;

/// What the certificate must say.
#[derive(Debug, Clone)]
pub struct Policy {
    pub identity: String,
    pub issuer: String,
}

impl Policy {
    /// The Kubernetes release policy for dl.k8s.io files.
    pub fn kubernetes_release() -> Policy {
        Policy { identity: K8S_RELEASE_IDENTITY.into(), issuer: K8S_RELEASE_ISSUER.into() }
    }
}

/// Trusted CA certificates (DER): self-signed roots are anchors, others intermediates.
#[derive(Debug, Clone)]
pub struct TrustRoot {
    certs: Vec<Vec<u8>>,
}

impl TrustRoot {
    /// Parse a PEM bundle; every block must be a CA certificate.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<TrustRoot, VerifyError> {
        let bad = |msg: String| VerifyError::TrustAnchor { origin: origin.to_string(), msg };
        let mut certs = Vec::new();
        for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let p = p.map_err(|e| bad(format!("bad PEM: {e}")))?;
            let c = p.parse_x509().map_err(|e| bad(format!("bad certificate: {e}")))?;
            if !c.is_ca() {
                return Err(bad(format!("{} is not a CA certificate", c.subject())));
            }
            certs.push(p.contents);
        }
        if certs.is_empty() {
            return Err(bad("no certificate in the trust root".into()));
        }
        Ok(TrustRoot { certs })
    }

    /// The embedded Sigstore public-good root ([`EMBEDDED_FULCIO_TRUST_ROOT`]).
    pub fn embedded() -> Result<TrustRoot, VerifyError> {
        TrustRoot::from_pem(EMBEDDED_FULCIO_TRUST_ROOT.as_bytes(), "embedded Sigstore Fulcio trust root")
    }

    /// The trust root a plan names.
    pub fn load(source: &crate::plan::TrustRootSource) -> Result<TrustRoot, VerifyError> {
        match source {
            crate::plan::TrustRootSource::Embedded => TrustRoot::embedded(),
            crate::plan::TrustRootSource::File(p) => {
                let pem = std::fs::read(p)
                    .map_err(|source| VerifyError::Io { what: p.display().to_string(), source })?;
                TrustRoot::from_pem(&pem, &p.display().to_string())
            }
        }
    }
}

use crate::manifest::SignatureRecord;

/// Decode a `.cert` file: PEM, or base64 of PEM (dl.k8s.io), or base64 of DER.
pub fn decode_certificate(data: &[u8]) -> Result<Vec<u8>, String> {
    let pem_der = |b: &[u8]| -> Result<Vec<u8>, String> {
        let (_, p) = x509_parser::pem::parse_x509_pem(b).map_err(|e| format!("bad PEM: {e}"))?;
        Ok(p.contents)
    };
    let t = data.trim_ascii();
    if t.starts_with(b"-----BEGIN") {
        return pem_der(t);
    }
    let raw = b64(t).map_err(|e| format!("neither PEM nor base64: {e}"))?;
    if raw.trim_ascii_start().starts_with(b"-----BEGIN") {
        pem_der(raw.trim_ascii())
    } else {
        Ok(raw)
    }
}

/// Decode a `.sig` file: base64 of the DER ECDSA signature (or the raw DER).
/// Raw DER is recognised by its SEQUENCE header spanning exactly the file and taken
/// untrimmed: a signature's last bytes may well be 0x0a or 0x20.
pub fn decode_signature(data: &[u8]) -> Result<Vec<u8>, String> {
    if is_der_sequence(data) {
        return Ok(data.to_vec());
    }
    b64(data.trim_ascii()).map_err(|e| format!("not base64: {e}"))
}

/// A DER SEQUENCE (short or one-byte long length form, enough for any ECDSA
/// signature) whose length is the rest of `d`. Base64 text never starts this way:
/// a signature's base64 starts with `M`.
fn is_der_sequence(d: &[u8]) -> bool {
    match d {
        [0x30, n, rest @ ..] if *n < 0x80 => rest.len() == usize::from(*n),
        [0x30, 0x81, n, rest @ ..] => *n >= 0x80 && rest.len() == usize::from(*n),
        _ => false,
    }
}

fn b64(t: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    let clean: Vec<u8> = t.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean)
}

fn sha256_hex(b: &[u8]) -> String {
    crate::types::Sha256::of(b).as_str().to_string()
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, VerifyError> {
    let (rest, c) = X509Certificate::from_der(der)
        .map_err(|e| VerifyError::integrity(what, format!("bad certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(VerifyError::integrity(what, "trailing bytes after the certificate"));
    }
    Ok(c)
}

/// The Fulcio OIDC-issuer values: (.1.1 raw string, .1.8 DER UTF8String).
fn oidc_issuers(c: &X509Certificate<'_>) -> Result<(Option<String>, Option<String>), String> {
    let mut v1 = None;
    let mut v2 = None;
    for e in c.extensions() {
        let oid = e.oid.to_id_string();
        if oid == OID_ISSUER_V1 {
            v1 = Some(
                String::from_utf8(e.value.to_vec()).map_err(|_| "issuer extension (.1.1) is not UTF-8")?,
            );
        } else if oid == OID_ISSUER_V2 {
            // DER UTF8String: tag 0x0c, then a definite length.
            let (_, any) = x509_parser::der_parser::parse_der(e.value)
                .map_err(|_| "issuer extension (.1.8) is not DER".to_string())?;
            let s = any.as_str().map_err(|_| "issuer extension (.1.8) is not a UTF8String".to_string())?;
            v2 = Some(s.to_string());
        }
    }
    Ok((v1, v2))
}

/// Verify a cosign keyless signature over `blob`. `signed_at` (Unix seconds), when
/// known from a trusted source, must fall inside the leaf's validity.
pub fn verify_blob(
    blob: &[u8],
    signature: &[u8],
    certificate: &[u8],
    trust: &TrustRoot,
    policy: &Policy,
    signed_at: Option<i64>,
    what: &str,
) -> Result<SignatureRecord, VerifyError> {
    let fail = |msg: String| VerifyError::integrity(what, msg);
    let leaf_der = decode_certificate(certificate).map_err(|e| fail(format!("certificate: {e}")))?;
    let sig = decode_signature(signature).map_err(|e| fail(format!("signature: {e}")))?;
    let leaf = parse_cert(&leaf_der, what)?;

    // 1. Chain to a self-signed anchor in the trust root.
    let trusted: Vec<X509Certificate<'_>> =
        trust.certs.iter().map(|d| parse_cert(d, "trust root")).collect::<Result<_, _>>()?;
    let (lnb, lna) = (leaf.validity().not_before.timestamp(), leaf.validity().not_after.timestamp());
    if lnb >= lna {
        return Err(fail("certificate validity window is empty".into()));
    }
    let mut cur = &leaf;
    let mut anchor = None;
    for _ in 0..MAX_CHAIN {
        let issuer = trusted.iter().enumerate().find(|(_, ca)| {
            ca.subject().as_raw() == cur.issuer().as_raw()
                && cur.verify_signature(Some(ca.public_key())).is_ok()
        });
        let Some((i, ca)) = issuer else {
            return Err(fail(format!(
                "certificate issued by {} does not chain to the trust root",
                cur.issuer()
            )));
        };
        if !ca.is_ca() {
            return Err(fail(format!("{} is not a CA", ca.subject())));
        }
        if let Ok(Some(ku)) = ca.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(fail(format!("{} may not sign certificates", ca.subject())));
            }
        }
        // The CA must have been valid for the whole time the leaf was.
        let v = ca.validity();
        if v.not_before.timestamp() > lnb || v.not_after.timestamp() < lna {
            return Err(fail(format!("{} was not valid during the certificate's lifetime", ca.subject())));
        }
        if ca.subject().as_raw() == ca.issuer().as_raw() && ca.verify_signature(None).is_ok() {
            anchor = Some(i);
            break;
        }
        cur = ca;
    }
    let Some(anchor) = anchor else {
        return Err(fail("certificate chain does not end in a self-signed root of the trust root".into()));
    };
    if leaf.is_ca() {
        return Err(fail("the signing certificate is a CA certificate".into()));
    }
    if let Some(t) = signed_at {
        if t < lnb || t > lna {
            return Err(fail(format!("signing time {t} is outside the certificate's validity {lnb}..{lna}")));
        }
    }

    // 2. Code signing, identity, issuer.
    match leaf.extended_key_usage() {
        Ok(Some(eku)) if eku.value.code_signing => {}
        _ => return Err(fail("certificate is not for code signing (extendedKeyUsage)".into())),
    }
    let san = leaf.subject_alternative_name().map_err(|e| fail(format!("bad subjectAltName: {e}")))?;
    let names: Vec<String> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::RFC822Name(e) => Some(e.to_string()),
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !names.contains(&policy.identity) {
        return Err(fail(format!(
            "certificate identity {} is not the expected {}",
            if names.is_empty() { "(none)".to_string() } else { names.join(", ") },
            policy.identity
        )));
    }
    let (v1, v2) = oidc_issuers(&leaf).map_err(fail)?;
    if v1.is_none() && v2.is_none() {
        return Err(fail("certificate has no OIDC issuer extension".into()));
    }
    for got in [v1.as_ref(), v2.as_ref()].into_iter().flatten() {
        if *got != policy.issuer {
            return Err(fail(format!(
                "certificate OIDC issuer {got:?} is not the expected {:?}",
                policy.issuer
            )));
        }
    }

    // 3. The signature over the file.
    let spki = leaf.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    if spki.algorithm.algorithm.to_id_string() != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
        return Err(fail("certificate key is not ECDSA P-256".into()));
    }
    let pk = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        spki.subject_public_key.data.as_ref(),
    );
    pk.verify(blob, &sig).map_err(|_| fail("signature does not verify over the file".into()))?;

    Ok(SignatureRecord {
        artifact: String::new(),
        kind: "cosign-keyless".into(),
        file_sha256: sha256_hex(blob),
        identity: policy.identity.clone(),
        issuer: policy.issuer.clone(),
        certificate_sha256: sha256_hex(&leaf_der),
        root_sha256: sha256_hex(&trust.certs[anchor]),
        not_before: lnb,
        not_after: lna,
    })
}

/// Download `<url>.sig` and `<url>.cert` (mirrors applied) and verify them over `blob`.
pub fn verify_published(
    url: &str,
    blob: &[u8],
    mirrors: &[crate::fetch::Mirror],
    trust: &TrustRoot,
    policy: &Policy,
    signed_at: Option<i64>,
) -> Result<SignatureRecord, VerifyError> {
    let get = |suffix: &str| -> Result<Vec<u8>, VerifyError> {
        let u = format!("{url}{suffix}");
        match net::get(&u, mirrors)? {
            Got::Body(b) => Ok(b),
            Got::NotFound => Err(VerifyError::integrity(net::shown(&u, mirrors), "no signature published")),
        }
    };
    let (sig, cert) = (get(".sig")?, get(".cert")?);
    verify_blob(blob, &sig, &cert, trust, policy, signed_at, &net::shown(url, mirrors))
}

/// Hosts whose files carry cosign `.sig`/`.cert` next to them.
pub const SIGNED_HOSTS: &[&str] = &["https://dl.k8s.io/"];

/// The plan's cosign policy for a build: the Kubernetes release identity over the files
/// of [`SIGNED_HOSTS`], against `trust_root`.
pub fn kubernetes_release_policy(trust_root: crate::plan::TrustRootSource) -> crate::plan::CosignPolicy {
    let p = Policy::kubernetes_release();
    crate::plan::CosignPolicy {
        trust_root,
        identity: p.identity,
        issuer: p.issuer,
        hosts: SIGNED_HOSTS.iter().map(|h| h.to_string()).collect(),
        unsigned: Vec::new(),
    }
}

/// Where a build gets the `.sig`/`.cert` files: online, from next to the artifact's URL
/// (mirrors applied), kept in the cache under `cosign/<artifact sha256>.{sig,cert}`;
/// offline, from there. They are verified every time they are used, so the cache copy
/// needs no trust of its own.
#[derive(Debug, Clone, Default)]
pub struct SignatureSource {
    pub mirrors: Vec<crate::net::Mirror>,
    pub offline: bool,
    pub cache: Option<crate::cache::Cache>,
}

/// The artifacts of `plan` that `cosign` wants a signature for, with the URL it sits next to.
fn signed_artifacts<'a>(
    plan: &'a crate::plan::BuildPlan,
    cosign: &'a crate::plan::CosignPolicy,
) -> impl Iterator<Item = (&'a crate::plan::Item, &'a str)> {
    plan.artifacts.iter().filter(|a| !cosign.unsigned.contains(&a.name)).filter_map(|a| {
        a.urls
            .iter()
            .find(|u| cosign.hosts.iter().any(|h| u.starts_with(h.as_str())))
            .map(|u| (a, u.as_str()))
    })
}

impl SignatureSource {
    fn cached(&self, sha: &crate::types::Sha256, suffix: &str) -> Option<std::path::PathBuf> {
        self.cache.as_ref().map(|c| c.root().join("cosign").join(format!("{}{suffix}", sha.as_str())))
    }

    /// `<url>.sig` and `<url>.cert` of the artifact with digest `sha`.
    pub fn files(&self, url: &str, sha: &crate::types::Sha256) -> Result<(Vec<u8>, Vec<u8>), VerifyError> {
        let mut out = Vec::new();
        for suffix in [".sig", ".cert"] {
            let cached = self.cached(sha, suffix);
            if self.offline {
                let Some(p) = cached else {
                    return Err(VerifyError::Input("--offline cosign verification needs a cache".into()));
                };
                let limit = crate::net::get::limit::SMALL;
                match crate::net::body::read_file_capped(&p, limit) {
                    Ok(Ok(b)) => out.push(b),
                    Ok(Err(e)) => return Err(VerifyError::integrity(p.display().to_string(), e.to_string())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(VerifyError::Download {
                            url: net::shown(&format!("{url}{suffix}"), &self.mirrors),
                            msg: format!(
                                "--offline: the cosign signature is not in the cache ({}); run `imgbuild \
                                 fetch` online first, or mark the artifact `signature: none` in the recipe",
                                p.display()
                            ),
                        })
                    }
                    Err(source) => return Err(VerifyError::Io { what: p.display().to_string(), source }),
                }
                continue;
            }
            let u = format!("{url}{suffix}");
            let body = match net::get(&u, &self.mirrors)? {
                Got::Body(b) => b,
                Got::NotFound => {
                    return Err(VerifyError::integrity(
                        net::shown(&u, &self.mirrors),
                        "no signature published",
                    ))
                }
            };
            if let Some(p) = cached {
                store(&p, &body)
                    .map_err(|source| VerifyError::Io { what: p.display().to_string(), source })?;
            }
            out.push(body);
        }
        let cert = out.pop().unwrap_or_default();
        let sig = out.pop().unwrap_or_default();
        Ok((sig, cert))
    }
}

/// Temp file + rename: a reader never sees half a signature.
fn store(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Put the signature files of every artifact `cosign` wants signed into the cache
/// (`imgbuild fetch`, so that an `--offline` build can verify them later).
pub fn fetch_signatures(
    plan: &crate::plan::BuildPlan,
    cosign: &crate::plan::CosignPolicy,
    src: &SignatureSource,
    rep: &Reporter,
) -> Result<usize, VerifyError> {
    let mut n = 0;
    for (a, url) in signed_artifacts(plan, cosign) {
        src.files(url, &a.sha256)?;
        rep.status(format_args!("cosign: fetched the signature of {}", a.name));
        n += 1;
    }
    Ok(n)
}

/// Verify the published signature of every plan artifact downloaded from one of the
/// policy's hosts (its first such URL), over the verified blob. In plan order. An
/// artifact the recipe marks `signature: none` is skipped; any other without a
/// signature is an integrity failure.
pub fn verify_plan_artifacts(
    plan: &crate::plan::BuildPlan,
    fetched: &crate::fetch::Fetched,
    src: &SignatureSource,
    cosign: &crate::plan::CosignPolicy,
    rep: &Reporter,
) -> Result<Vec<SignatureRecord>, VerifyError> {
    let trust = TrustRoot::load(&cosign.trust_root)?;
    let policy = Policy { identity: cosign.identity.clone(), issuer: cosign.issuer.clone() };
    let mut out = Vec::new();
    for (a, url) in signed_artifacts(plan, cosign) {
        let Some(blob) = fetched.get(a) else {
            return Err(VerifyError::Input(format!("no download for artifact {}", a.name)));
        };
        let bytes = std::fs::read(blob)
            .map_err(|source| VerifyError::Io { what: blob.display().to_string(), source })?;
        rep.status(format_args!("cosign: verifying {} ({})", a.name, policy.identity));
        let (sig, cert) = src.files(url, &a.sha256)?;
        let shown = net::shown(url, &src.mirrors);
        let mut r = verify_blob(&bytes, &sig, &cert, &trust, &policy, None, &shown)?;
        if r.file_sha256 != a.sha256.as_str() {
            return Err(VerifyError::integrity(shown, "signed file is not the pinned download"));
        }
        r.artifact = a.name.clone();
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_defaults_are_the_binaries_identity() {
        let p = Policy::kubernetes_release();
        assert_eq!(p.identity, "krel-staging@k8s-releng-prod.iam.gserviceaccount.com");
        assert_eq!(p.issuer, "https://accounts.google.com");
    }

    #[test]
    fn the_embedded_root_is_sigstores_public_good_root_and_intermediate() {
        let t = TrustRoot::embedded().unwrap();
        let got: Vec<String> = t.certs.iter().map(|d| sha256_hex(d)).collect();
        assert_eq!(got, EMBEDDED_FULCIO_FINGERPRINTS);
        let subjects: Vec<String> =
            t.certs.iter().map(|d| parse_cert(d, "t").unwrap().subject().to_string()).collect();
        assert_eq!(subjects, ["O=sigstore.dev, CN=sigstore", "O=sigstore.dev, CN=sigstore-intermediate"]);
    }

    #[test]
    fn undecodable_inputs_are_errors() {
        assert!(decode_certificate(b"%%% not base64").is_err());
        assert!(decode_signature(b"%%%").is_err());
    }

    #[test]
    fn raw_der_signatures_keep_trailing_whitespace_bytes() {
        // r and s chosen so the DER ends in a newline or a space byte, which trimming
        // would cut off; base64 with surrounding whitespace still decodes.
        for last in [0x0a, 0x20, 0x09, 0x41] {
            let mut der = vec![0x30, 0x08, 0x02, 0x02, 0x01, 0x0a, 0x02, 0x02, 0x01, last];
            assert_eq!(decode_signature(&der).unwrap(), der);
            let text = format!("\n {}\n", base64::engine::general_purpose::STANDARD.encode(&der));
            assert_eq!(decode_signature(text.as_bytes()).unwrap(), der);
            der.push(0x0a);
            assert!(decode_signature(&der).is_err(), "a DER header not spanning the file is not raw DER");
        }
        let long: Vec<u8> = [0x30, 0x81, 0x80].into_iter().chain(std::iter::repeat_n(0x0a, 0x80)).collect();
        assert_eq!(decode_signature(&long).unwrap(), long);
        assert!(TrustRoot::from_pem(b"", "t").is_err());
    }
}
