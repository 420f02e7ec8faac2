//! `InRelease`: the archive's clearsigned Release file. Its OpenPGP signature is checked
//! against one trusted key (never a keyring: a keyring accepts any of its keys), and only
//! the *signed* text is parsed, so nothing outside the signature can add index digests.

use std::collections::BTreeMap;

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;

use super::control::{self, Stanza};
use super::AptError;
use crate::keys::EMBEDDED_KEYS;
use crate::types::Sha256;

/// A parsed public key with its fingerprint (uppercase hex).
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: SignedPublicKey,
    pub fingerprint: String,
}

/// Parse an armored public key and check its self-signatures.
pub fn parse_key(armored: &str, origin: &str) -> Result<TrustedKey, AptError> {
    let bad = |msg: String| AptError::Key { origin: origin.to_string(), msg };
    let (mut key, _) = SignedPublicKey::from_string(armored).map_err(|e| bad(e.to_string()))?;
    // Keyserver exports carry certifications by other keys, which cannot be checked
    // (and grant nothing here): keep only the key's own signatures, then verify them all.
    let (id, fp) = (key.key_id(), key.fingerprint());
    let own = |s: &pgp::packet::Signature| s.issuer().contains(&&id) || s.issuer_fingerprint().contains(&&fp);
    for u in &mut key.details.users {
        u.signatures.retain(own);
    }
    for u in &mut key.details.user_attributes {
        u.signatures.retain(own);
    }
    key.verify().map_err(|e| bad(format!("self-signature does not verify: {e}")))?;
    if key.details.users.iter().all(|u| u.signatures.is_empty()) {
        return Err(bad("no self-signed user id".into()));
    }
    let fingerprint = key.fingerprint().to_string().to_ascii_uppercase();
    Ok(TrustedKey { key, fingerprint })
}

/// An embedded key by name, checked against its recorded fingerprint.
pub fn embedded_key(name: &str) -> Result<TrustedKey, AptError> {
    let Some(k) = EMBEDDED_KEYS.iter().find(|k| k.name == name) else {
        let known: Vec<_> = EMBEDDED_KEYS.iter().map(|k| k.name).collect();
        return Err(AptError::Input(format!("no embedded key {name:?} (known: {})", known.join(", "))));
    };
    let t = parse_key(k.armored, &format!("embedded key {name}"))?;
    if t.fingerprint != k.fingerprint {
        return Err(AptError::Key {
            origin: format!("embedded key {name}"),
            msg: format!("fingerprint {} is not the recorded {}", t.fingerprint, k.fingerprint),
        });
    }
    Ok(t)
}

/// One file listed in the signed Release: size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub size: u64,
    pub sha256: Sha256,
}

/// The verified content of an InRelease.
#[derive(Debug, Clone)]
pub struct Release {
    pub fields: Stanza,
    /// Path relative to `dists/<suite>/` → size and digest.
    pub sha256: BTreeMap<String, Listed>,
    /// Fingerprint of the key that made the good signature.
    pub signer: String,
}

/// Verify a clearsigned InRelease with `key` (primary key, or a signing subkey bound to
/// it) and parse the signed text. Any failure is an integrity error.
pub fn verify(text: &str, key: &TrustedKey, url: &str) -> Result<Release, AptError> {
    let sig_err = |msg: String| AptError::Signature { url: url.to_string(), msg };
    let (msg, _) = CleartextSignedMessage::from_string(text)
        .map_err(|e| sig_err(format!("not a clearsigned OpenPGP message: {e}")))?;
    let mut ok = msg.verify(&key.key).is_ok();
    if !ok {
        for sub in &key.key.public_subkeys {
            // A signing subkey counts when one of its binding signatures verifies, with the
            // subkey's back-signature (rpgp's own check insists on every binding, and real
            // archive keys carry old ones that do not).
            let primary = &key.key.primary_key;
            let bound = sub.signatures.iter().any(|b| {
                b.key_flags().sign()
                    && b.verify_subkey_binding(primary, &sub.key).is_ok()
                    && b.embedded_signature()
                        .is_some_and(|e| e.verify_primary_key_binding(&sub.key, primary).is_ok())
            });
            if bound && msg.verify(&sub.key).is_ok() {
                ok = true;
                break;
            }
        }
    }
    if !ok {
        let issuers: Vec<String> = msg
            .signatures()
            .iter()
            .flat_map(|s| s.issuer_fingerprint().into_iter().map(|f| f.to_string().to_ascii_uppercase()))
            .collect();
        return Err(sig_err(format!(
            "no good signature by {} (signed by: {})",
            key.fingerprint,
            if issuers.is_empty() { "unknown".to_string() } else { issuers.join(", ") }
        )));
    }
    let signed = msg.signed_text();
    let stanzas = control::parse(&signed, url).map_err(|e| sig_err(format!("signed text: {e}")))?;
    let [fields] = <[Stanza; 1]>::try_from(stanzas)
        .map_err(|v| sig_err(format!("signed text has {} stanzas, expected 1", v.len())))?;
    let mut sha256 = BTreeMap::new();
    for line in fields.lines("SHA256") {
        let mut it = line.split_whitespace();
        let (Some(h), Some(size), Some(path), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(sig_err(format!("bad SHA256 line {line:?}")));
        };
        let sha = Sha256::parse(h).map_err(|e| sig_err(format!("SHA256 line: {e}")))?;
        let size = size.parse::<u64>().map_err(|_| sig_err(format!("bad size in {line:?}")))?;
        sha256.insert(path.to_string(), Listed { size, sha256: sha });
    }
    Ok(Release { fields, sha256, signer: key.fingerprint.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_archive_key_parses_with_recorded_fingerprint() {
        let k = embedded_key("ubuntu-archive-2018").unwrap();
        assert_eq!(k.fingerprint, "F6ECB3762474EDA9D21B7022871920D1991BC93C");
        assert!(embedded_key("nope").is_err());
    }

    #[test]
    fn garbage_is_a_signature_error() {
        let k = embedded_key("ubuntu-archive-2018").unwrap();
        let e = verify("Origin: Ubuntu\n", &k, "u").unwrap_err();
        assert!(matches!(e, AptError::Signature { .. }), "{e}");
    }
}
