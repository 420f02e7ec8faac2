//! Supply-chain gate: where digests come from, not only whether files match them.
//!
//! - [`openpgp`]: detached OpenPGP signatures (Ubuntu's `SHA256SUMS.gpg`) against an
//!   embedded key, with the signer pinned to one fingerprint.
//! - [`base`]: `imgbuild base-digest`: download the dated cloud-image build's signed
//!   `SHA256SUMS`, verify it, and check or write the recipe's base digests.
//! - [`cosign`]: cosign keyless blob signatures (`<file>.sig` + `<file>.cert`) as
//!   published next to dl.k8s.io binaries: Fulcio chain, identity, OIDC issuer, ECDSA.
//! - [`image`]: `imgbuild verify IMAGE` (checksum sidecar, manifests, inspect).

pub mod base;
pub mod cosign;
pub mod image;
pub mod net;
pub mod openpgp;

use crate::exit::{Classify, Code};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Bad command line, recipe or input file.
    #[error("{0}")]
    Input(String),
    /// A trust anchor (public key, root certificate) is unusable.
    #[error("{origin}: {msg}")]
    TrustAnchor { origin: String, msg: String },
    /// A signature, certificate or digest did not check out.
    #[error("{what}: {msg}")]
    Integrity { what: String, msg: String },
    #[error("{url}: download failed: {msg}")]
    Download { url: String, msg: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

impl Classify for VerifyError {
    fn code(&self) -> Code {
        match self {
            VerifyError::Input(_) => Code::Input,
            // A pinned key or root that does not parse or has the wrong fingerprint is
            // an integrity problem of the binary/inputs, not a transient one.
            VerifyError::TrustAnchor { .. } | VerifyError::Integrity { .. } => Code::Integrity,
            VerifyError::Download { .. } | VerifyError::Io { .. } => Code::Runtime,
        }
    }
}

impl VerifyError {
    pub(crate) fn integrity(what: impl Into<String>, msg: impl Into<String>) -> Self {
        VerifyError::Integrity { what: what.into(), msg: msg.into() }
    }
}
