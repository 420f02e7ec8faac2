//! Trust anchors compiled into the binary: OpenPGP public keys with the fingerprint each
//! must have. Sources and checks: keys/README.md.

/// A public key shipped inside the binary, with the fingerprint it must have.
pub struct EmbeddedKey {
    pub name: &'static str,
    pub armored: &'static str,
    /// Uppercase hex, no spaces.
    pub fingerprint: &'static str,
}

/// Archive keys a recipe can name with `packages.key`.
pub const EMBEDDED_KEYS: &[EmbeddedKey] = &[EmbeddedKey {
    name: "ubuntu-archive-2018",
    armored: include_str!("../keys/ubuntu-archive-2018.asc"),
    fingerprint: "F6ECB3762474EDA9D21B7022871920D1991BC93C",
}];

/// Normalise a fingerprint for comparison: hex digits only, uppercase.
pub fn normalize_fingerprint(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase()
}
