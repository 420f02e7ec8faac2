//! Process exit codes and how an error maps onto one.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | runtime failure: network, I/O, a missing tool, a failed external command |
//! | 2 | invalid input: command line, recipe, cluster spec |
//! | 3 | integrity failure: a digest or signature did not match |
//!
//! Module errors carry their own class through [`Classify`]; [`code_for`] walks an
//! `anyhow` chain and returns the class of the first error that knows it, so context
//! added at the edges never hides an integrity failure behind a generic "1".

use std::process::ExitCode;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Runtime = 1,
    Input = 2,
    Integrity = 3,
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> Self {
        ExitCode::from(c as u8)
    }
}

/// Implemented by every module error enum.
pub trait Classify {
    fn code(&self) -> Code;
}

/// A bare classified error for the edges (CLI validation and the like).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Classified {
    pub code: Code,
    pub msg: String,
}

impl Classified {
    pub fn input(msg: impl Into<String>) -> Self {
        Self { code: Code::Input, msg: msg.into() }
    }
    pub fn integrity(msg: impl Into<String>) -> Self {
        Self { code: Code::Integrity, msg: msg.into() }
    }
    pub fn runtime(msg: impl Into<String>) -> Self {
        Self { code: Code::Runtime, msg: msg.into() }
    }
}

impl Classify for Classified {
    fn code(&self) -> Code {
        self.code
    }
}

/// Try each known error type against one link of the chain.
macro_rules! classify_as {
    ($e:expr, $($t:ty),* $(,)?) => {{
        $( if let Some(x) = $e.downcast_ref::<$t>() { return Some(x.code()); } )*
    }};
}

fn classify_one(e: &(dyn std::error::Error + 'static)) -> Option<Code> {
    // Every module that defines an error enum adds it here.
    classify_as!(e, Classified, crate::recipe::RecipeError, crate::tools::ToolError,);
    classify_as!(e, crate::fetch::FetchError);
    classify_as!(e, crate::layer::LayerError);
    classify_as!(e, crate::chart::ChartError);
    classify_as!(e, crate::disk::DiskError);
    classify_as!(e, crate::cluster::ClusterError, crate::cloudinit::CloudInitError);
    classify_as!(e, crate::apt::AptError);
    classify_as!(e, crate::oci::OciError);
    classify_as!(e, crate::verify::VerifyError, crate::lint::LintFailed);
    classify_as!(e, crate::upload::UploadError, crate::upload::proxmox::ProxmoxError);
    classify_as!(e, crate::upload::libvirt::LibvirtError);
    classify_as!(e, crate::upload::glance::GlanceError);
    if e.downcast_ref::<clap::Error>().is_some() {
        return Some(Code::Input);
    }
    None
}

/// The exit code for an error: the first classified link wins, else runtime.
pub fn code_for(err: &anyhow::Error) -> Code {
    for link in err.chain() {
        if let Some(c) = classify_one(link) {
            return c;
        }
    }
    Code::Runtime
}
