//! The one HTTP client builder and the one runtime.
//!
//! Runtime policy: one multi-thread tokio runtime per process, started on first use
//! ([`runtime`]); blocking callers run their future on it with [`block_on`]; blocking
//! work inside it (hashing, file writes) goes to `spawn_blocking`. No module builds a
//! runtime of its own, so a small GET costs a request, not a thread pool.
//!
//! Every client comes from [`ClientOptions::build`]: the same user agent, timeouts
//! from [`Settings`], and the TLS choices as options (extra CA bundle, only the given
//! CA, a pinned certificate fingerprint, a client certificate, or no verification).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::tls::PinVerifier;
use super::NetError;

/// Timeouts and attempts, from the environment (documented in docs/recipe-format.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// No byte for this long (waiting for the answer, or inside a body) fails the attempt.
    pub read_timeout: Duration,
    /// Attempts per URL (see [`super::RetryPolicy`]).
    pub attempts: u32,
}

pub const ENV_TIMEOUT: &str = "IMGBUILD_HTTP_TIMEOUT";
pub const ENV_RETRIES: &str = "IMGBUILD_HTTP_RETRIES";

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            attempts: 4,
        }
    }
}

impl Settings {
    /// Defaults, overridden by `IMGBUILD_HTTP_TIMEOUT` (seconds without a byte; the
    /// connect timeout is the smaller of it and 10 s) and `IMGBUILD_HTTP_RETRIES`
    /// (attempts per URL, 1–100).
    pub fn from_env() -> Result<Settings, NetError> {
        let mut s = Settings::default();
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = var(ENV_TIMEOUT) {
            let secs: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|t: &f64| t.is_finite() && *t >= 0.1 && *t <= 3600.0)
                .ok_or_else(|| NetError::Setting {
                    var: ENV_TIMEOUT,
                    value: v.clone(),
                    want: "seconds, 0.1–3600",
                })?;
            s.read_timeout = Duration::from_secs_f64(secs);
            s.connect_timeout = s.connect_timeout.min(s.read_timeout);
        }
        if let Some(v) = var(ENV_RETRIES) {
            s.attempts = v.trim().parse().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| {
                NetError::Setting { var: ENV_RETRIES, value: v.clone(), want: "a number, 1–100" }
            })?;
        }
        Ok(s)
    }
}

/// The process's settings: the environment's, or the defaults where it is unusable
/// (the command layer checks [`Settings::from_env`] first and refuses bad values).
pub fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| Settings::from_env().unwrap_or_default())
}

/// The process's runtime.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, NetError> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("imgbuild-net")
        .build()
        .map_err(NetError::Runtime)?;
    // Two threads may race here; the loser's runtime is dropped outside any runtime.
    Ok(RT.get_or_init(|| rt))
}

/// Run `fut` to completion on the process runtime, from blocking code. A caller that is
/// itself inside a runtime (where `block_on` would panic) gets a plain thread.
pub fn block_on<F>(fut: F) -> Result<F::Output, NetError>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| s.spawn(|| rt.block_on(fut)).join().map_err(|_| NetError::Panicked));
    }
    Ok(rt.block_on(fut))
}

/// Which server certificates to trust.
#[derive(Clone, Default)]
pub enum Trust {
    /// The built-in and system roots.
    #[default]
    System,
    /// The built-in and system roots plus this PEM bundle (an OpenStack `cacert`).
    AlsoCa(Vec<u8>),
    /// This PEM bundle and nothing else (a cluster's CA: a public CA must not vouch for
    /// an API server).
    OnlyCa(Vec<u8>),
    /// Exactly the certificate with this SHA-256 fingerprint (Proxmox VE).
    Pin([u8; 32]),
    /// No verification (`insecure: true` in clouds.yaml, said loudly by the caller).
    Insecure,
}

/// How to build a client; [`ClientOptions::default`] is what downloads use.
#[derive(Clone, Default)]
pub struct ClientOptions {
    pub trust: Trust,
    /// Client certificate and key, PEM (Kubernetes API).
    pub identity: Option<Vec<u8>>,
    /// Limit for a whole request including its body (small JSON APIs); `None` leaves
    /// only the connect and read timeouts (streams of any length).
    pub total_timeout: Option<Duration>,
    /// HTTP/1.1 only (PVE's upload handler needs a Content-Length body).
    pub http1_only: bool,
    /// Override the read timeout (an upload waits for the server to store the data).
    pub read_timeout: Option<Duration>,
}

/// A built client, and its pin verifier (to name a refused fingerprint).
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pin: Option<Arc<PinVerifier>>,
}

impl Client {
    /// The fingerprint the pin refused in the last handshake, if it did.
    pub fn rejected_fingerprint(&self) -> Option<String> {
        self.pin.as_ref().and_then(|p| p.take_rejected())
    }
}

impl ClientOptions {
    pub fn build(&self) -> Result<Client, NetError> {
        let s = settings();
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(s.connect_timeout)
            .read_timeout(self.read_timeout.unwrap_or(s.read_timeout))
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = self.total_timeout {
            b = b.timeout(t);
        }
        if self.http1_only {
            b = b.http1_only();
        }
        let certs = |pem: &[u8]| {
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| NetError::Tls(format!("CA bundle: {e}")))
        };
        let mut pin = None;
        match &self.trust {
            Trust::System => {}
            Trust::AlsoCa(pem) => {
                for c in certs(pem)? {
                    b = b.add_root_certificate(c);
                }
            }
            Trust::OnlyCa(pem) => {
                b = b.tls_built_in_root_certs(false);
                for c in certs(pem)? {
                    b = b.add_root_certificate(c);
                }
            }
            Trust::Pin(fp) => {
                let v = Arc::new(PinVerifier::new(*fp));
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| NetError::Tls(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(v.clone());
                let mut cfg = match &self.identity {
                    Some(_) => return Err(NetError::Tls("a pinned server with a client certificate".into())),
                    None => cfg.with_no_client_auth(),
                };
                cfg.alpn_protocols = if self.http1_only {
                    vec![b"http/1.1".to_vec()]
                } else {
                    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
                };
                b = b.use_preconfigured_tls(cfg);
                pin = Some(v);
            }
            Trust::Insecure => b = b.danger_accept_invalid_certs(true),
        }
        if let Some(pem) = &self.identity {
            let id = reqwest::Identity::from_pem(pem)
                .map_err(|e| NetError::Tls(format!("client certificate/key: {e}")))?;
            b = b.identity(id);
        }
        let http = b.build().map_err(|e| NetError::Tls(format!("HTTP client: {}", super::chain(&e))))?;
        Ok(Client { http, pin })
    }
}
