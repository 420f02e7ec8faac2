//! Certificate pinning: trust exactly one server certificate, by its SHA-256
//! fingerprint (what the Proxmox VE GUI shows), whatever its issuer, name or dates.

use std::fmt::Write as _;
use std::sync::Mutex;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// `SHA256:AA:BB:…` (upper case), the form Proxmox VE shows.
pub fn format_fingerprint(d: &[u8]) -> String {
    let mut s = String::with_capacity(102);
    s.push_str("SHA256:");
    for (i, b) in d.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// Accepts exactly the certificate whose DER hashes to the pin (chain, name and validity
/// are what the user vouched for by pinning), but still checks the handshake signature,
/// so the peer must hold that certificate's private key.
#[derive(Debug)]
pub struct PinVerifier {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
    /// Fingerprint of a rejected certificate, for the error message.
    rejected: Mutex<Option<String>>,
}

impl PinVerifier {
    pub fn new(pin: [u8; 32]) -> PinVerifier {
        let provider = rustls::crypto::ring::default_provider();
        PinVerifier { pin, algs: provider.signature_verification_algorithms, rejected: Mutex::new(None) }
    }

    pub fn pin(&self) -> &[u8; 32] {
        &self.pin
    }

    /// The fingerprint of the certificate last refused, once.
    pub fn take_rejected(&self) -> Option<String> {
        self.rejected.lock().ok().and_then(|mut r| r.take())
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        if let Ok(mut r) = self.rejected.lock() {
            *r = Some(format_fingerprint(&got));
        }
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Whether a rustls error is somewhere in `e`'s chain. rustls' error reaches a caller
/// wrapped in io::Errors (hyper's connector, the TLS stream), whose `source()` skips
/// the error they wrap: those are unwrapped by hand.
pub fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if is_tls_error(inner) {
                    return true;
                }
            }
        }
        cur = c.source();
    }
    false
}
