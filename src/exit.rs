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
