//! Process exit codes and how an error maps onto one.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | runtime failure: network, I/O, a missing tool, a failed external command |
//! | 2 | invalid input: command line, recipe, cluster spec |
//! | 3 | integrity failure: a digest or signature did not match |
//!
//! Module errors carry their own class through [`Classify`]; the command layer walks an
//! error chain and exits with the class of the first error that knows it
//! (`cmd::code_for`). This module is at the bottom: every module may use it, it uses
//! none.

use std::path::{Path, PathBuf};
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

/// An I/O failure on a file: what was being done to it, and its path (a runtime failure).
/// Module errors that read and write files wrap it rather than each spelling it out.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct PathIo {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathIo {
    /// For `map_err`: the I/O error of doing `what` to `path`.
    pub fn at(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PathIo {
        let path = path.to_path_buf();
        move |source| PathIo { what, path, source }
    }
}

impl Classify for PathIo {
    fn code(&self) -> Code {
        Code::Runtime
    }
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
