//! Detached OpenPGP signatures (`SHA256SUMS.gpg` over `SHA256SUMS`), verified with the
//! pure-Rust `pgp` crate against one embedded key. The signer is pinned to a single
//! fingerprint: Ubuntu publishes several keys and a keyring would accept any of them.

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{PublicKey, PublicSubkey};
use pgp::types::{KeyDetails, PublicKeyTrait};

use super::VerifyError;

/// The "UEC Image Automatic Signing Key <cdimage@ubuntu.com>", which signs the noble
/// cloud-image `SHA256SUMS.gpg` (Canonical's ubuntu-cloud-docs, verify-image-checksum).
/// The block is byte-identical to `ValveSoftware/steam-runtime` `ubuntu-cloud-key.txt`
/// (blob 6f440845…), sha256 4f6e8c3a079c8efa259395a641aa0dacab57462287d4a1d771edbac8f83d0590.
pub const UBUNTU_CLOUD_IMAGE_KEY: &str = include_str!("../../keys/ubuntu-cloudimage-signing-key.asc");
/// Its documented fingerprint; the only signer accepted for cloud-image checksums.
pub const UBUNTU_CLOUD_IMAGE_FINGERPRINT: &str = "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81";

/// A parsed public key whose self-signatures checked out.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: SignedPublicKey,
    /// Primary key fingerprint, uppercase hex.
    pub fingerprint: String,
}

/// Normalise a fingerprint as people write it ("D2EB 4462 …", lowercase, "0x…").
pub fn normalize_fingerprint(s: &str) -> Result<String, VerifyError> {
    let f: String = s.trim().trim_start_matches("0x").chars().filter(|c| !c.is_whitespace()).collect();
    let f = f.to_ascii_uppercase();
    if !(f.len() == 40 || f.len() == 64) || !f.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(VerifyError::Input(format!(
            "{s:?} is not a full OpenPGP fingerprint (40 or 64 hex digits)"
        )));
    }
    Ok(f)
}

fn fpr(k: &impl KeyDetails) -> String {
    k.fingerprint().to_string().to_ascii_uppercase()
}

/// Parse an armored (or binary) public key and check it is self-consistent: at least one
/// user ID carries a good self-signature. Third-party certifications (keyserver exports
/// carry some) are ignored, since we cannot check them and do not rely on them.
pub fn parse_key(data: &[u8], origin: &str) -> Result<TrustedKey, VerifyError> {
    let bad = |msg: String| VerifyError::TrustAnchor { origin: origin.to_string(), msg };
    let key = if data.trim_ascii_start().starts_with(b"-----BEGIN") {
        SignedPublicKey::from_armor_single(std::io::Cursor::new(data)).map(|(k, _)| k)
    } else {
        SignedPublicKey::from_bytes(std::io::Cursor::new(data))
    }
    .map_err(|e| bad(format!("not an OpenPGP public key: {e}")))?;
    let primary = &key.primary_key;
    let self_signed = key.details.users.iter().any(|u| {
        u.signatures.iter().any(|s| {
            issued_by(s, primary) && s.verify_certification(primary, pgp::types::Tag::UserId, &u.id).is_ok()
        })
    });
    if !self_signed {
        return Err(bad("no user ID with a good self-signature".into()));
    }
    let fingerprint = fpr(primary);
    Ok(TrustedKey { key, fingerprint })
}

/// The embedded Ubuntu cloud-image key, checked against its documented fingerprint.
pub fn ubuntu_cloud_image_key() -> Result<TrustedKey, VerifyError> {
    let k = parse_key(UBUNTU_CLOUD_IMAGE_KEY.as_bytes(), "embedded Ubuntu cloud-image key")?;
    if k.fingerprint != UBUNTU_CLOUD_IMAGE_FINGERPRINT {
        return Err(VerifyError::TrustAnchor {
            origin: "embedded Ubuntu cloud-image key".into(),
            msg: format!(
                "fingerprint {} is not the documented {UBUNTU_CLOUD_IMAGE_FINGERPRINT}",
                k.fingerprint
            ),
        });
    }
    Ok(k)
}

fn issued_by(sig: &pgp::packet::Signature, key: &impl PublicKeyTrait) -> bool {
    let f = key.fingerprint();
    let id = key.key_id();
    sig.issuer_fingerprint().iter().any(|x| **x == f) || sig.issuer().iter().any(|x| **x == id)
}

/// A key that may issue data signatures: the primary, or a signing subkey whose binding
/// (and back-signature) verifies.
enum Signer<'a> {
    Primary(&'a PublicKey),
    Sub(&'a PublicSubkey),
}

fn signers(k: &TrustedKey) -> Vec<(String, Signer<'_>)> {
    let mut v = vec![(k.fingerprint.clone(), Signer::Primary(&k.key.primary_key))];
    for sub in &k.key.public_subkeys {
        let signing = sub.signatures.iter().any(|s| s.key_flags().sign());
        if signing && sub.verify(&k.key.primary_key).is_ok() {
            v.push((fpr(&sub.key), Signer::Sub(&sub.key)));
        }
    }
    v
}

/// Verify a detached signature (armored or binary; it may hold several signature
/// packets) over `data`. Succeeds only if one signature verifies with the key or
/// subkey of `key` whose fingerprint is exactly `required_signer`; returns it.
pub fn verify_detached(
    data: &[u8],
    signature: &[u8],
    key: &TrustedKey,
    required_signer: &str,
    what: &str,
) -> Result<String, VerifyError> {
    let fail = |msg: String| VerifyError::integrity(what, msg);
    let required = normalize_fingerprint(required_signer)?;
    let sigs: Vec<DetachedSignature> = if signature.trim_ascii_start().starts_with(b"-----BEGIN") {
        let (iter, _) = DetachedSignature::from_armor_many(std::io::Cursor::new(signature))
            .map_err(|e| fail(format!("not an OpenPGP signature: {e}")))?;
        iter.collect::<Result<_, _>>()
    } else {
        DetachedSignature::from_bytes_many(std::io::Cursor::new(signature))
            .map_err(|e| fail(format!("not an OpenPGP signature: {e}")))?
            .collect::<Result<_, _>>()
    }
    .map_err(|e| fail(format!("not an OpenPGP signature: {e}")))?;
    if sigs.is_empty() {
        return Err(fail("the signature file holds no signature".into()));
    }
    let pinned: Vec<_> = signers(key).into_iter().filter(|(f, _)| *f == required).collect();
    if pinned.is_empty() {
        return Err(fail(format!(
            "the trusted key {} has no usable signing key with the required fingerprint {required}",
            key.fingerprint
        )));
    }
    for sig in &sigs {
        for (f, s) in &pinned {
            let ok = match s {
                Signer::Primary(k) => issued_by(&sig.signature, *k) && sig.verify(*k, data).is_ok(),
                Signer::Sub(k) => issued_by(&sig.signature, *k) && sig.verify(*k, data).is_ok(),
            };
            if ok {
                return Ok(f.clone());
            }
        }
    }
    let issuers: Vec<String> = sigs
        .iter()
        .flat_map(|s| {
            let fps =
                s.signature.issuer_fingerprint().into_iter().map(|f| f.to_string().to_ascii_uppercase());
            let ids = s
                .signature
                .issuer()
                .into_iter()
                .map(|i| format!("key id {}", i.to_string().to_ascii_uppercase()));
            fps.chain(ids).collect::<Vec<_>>()
        })
        .collect();
    Err(fail(format!(
        "no good signature by {required} (signature issued by: {})",
        if issuers.is_empty() { "unknown".to_string() } else { issuers.join(", ") }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_ubuntu_key_parses_with_documented_fingerprint() {
        let k = ubuntu_cloud_image_key().unwrap();
        assert_eq!(k.fingerprint, "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81");
        // The documented form with spaces normalises to the same value.
        assert_eq!(
            normalize_fingerprint("D2EB 4462 6FDD C30B 513D  5BB7 1A5D 6C4C 7DB8 7C81").unwrap(),
            UBUNTU_CLOUD_IMAGE_FINGERPRINT
        );
    }

    #[test]
    fn garbage_signature_is_an_integrity_error() {
        let k = ubuntu_cloud_image_key().unwrap();
        let e =
            verify_detached(b"x", b"not a signature", &k, UBUNTU_CLOUD_IMAGE_FINGERPRINT, "S").unwrap_err();
        assert!(matches!(e, VerifyError::Integrity { .. }), "{e}");
    }

    #[test]
    fn short_fingerprint_is_bad_input() {
        assert!(matches!(normalize_fingerprint("7DB87C81"), Err(VerifyError::Input(_))));
    }

    #[test]
    fn garbage_key_is_rejected() {
        assert!(parse_key(
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n",
            "t"
        )
        .is_err());
    }
}
