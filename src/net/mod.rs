//! The one network layer: every HTTP request imgbuild makes goes through here.
//!
//! - [`url`]: [`SafeUrl`], the only way a URL is printed (credentials redacted), and
//!   mirror rewriting ([`Mirror`], [`rewrite`]).
//! - [`client`]: the one client builder ([`ClientOptions`], TLS choices as options),
//!   the process's timeouts ([`Settings`], from `IMGBUILD_HTTP_TIMEOUT` /
//!   `IMGBUILD_HTTP_RETRIES`) and the one runtime ([`block_on`]).
//! - [`retry`]: the one retry policy (bounded attempts, resumes and deadline).
//! - [`body`]: bodies read into memory, always under a limit.
//! - [`get`]: small whole-file GETs (checksum lists, signatures, apt indexes).
//! - [`tls`]: certificate pinning.
//!
//! Users: `fetch` (the cache downloads), `get` callers (`apt`, `verify`, `oci`'s
//! registry client, `bearer`'s token request), `upload` (Glance, Proxmox), `kube`.

pub mod body;
pub mod client;
pub mod get;
pub mod retry;
pub mod tls;
pub mod url;

pub use body::{read_capped, BodyError};
pub use client::{block_on, runtime, settings, Client, ClientOptions, Settings, Trust};
pub use retry::{Progress, Retry, RetryPolicy};
pub use url::{redact, rewrite, BadMirror, Mirror, SafeUrl};

use crate::exit::{Classify, Code};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{var}={value:?}: expected {want}")]
    Setting { var: &'static str, value: String, want: &'static str },
    #[error("starting the network runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the network thread panicked")]
    Panicked,
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl Classify for NetError {
    fn code(&self) -> Code {
        match self {
            NetError::Setting { .. } | NetError::Tls(_) => Code::Input,
            NetError::Runtime(_) | NetError::Panicked => Code::Runtime,
        }
    }
}

/// An error with its sources on one line, credentials redacted: reqwest hides the
/// interesting part (refused, reset, the TLS alert) in the sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    redact(&s)
}
