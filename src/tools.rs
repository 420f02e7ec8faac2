//! External tools imgbuild drives, checked up front with an install hint, so a build
//! never fails half-way because `debugfs` is missing.

use std::path::PathBuf;

use crate::exit::{Classify, Code};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("required tool `{tool}` not found on PATH; install it with: {hint}")]
    Missing { tool: &'static str, hint: &'static str },
}

impl Classify for ToolError {
    fn code(&self) -> Code {
        Code::Runtime
    }
}

/// A tool and how to get it on Debian/Ubuntu.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub name: &'static str,
    pub hint: &'static str,
}

pub const DEBUGFS: Tool = Tool { name: "debugfs", hint: "sudo apt-get install -y e2fsprogs" };
pub const E2FSCK: Tool = Tool { name: "e2fsck", hint: "sudo apt-get install -y e2fsprogs" };
pub const RESIZE2FS: Tool = Tool { name: "resize2fs", hint: "sudo apt-get install -y e2fsprogs" };
pub const QEMU_IMG: Tool = Tool { name: "qemu-img", hint: "sudo apt-get install -y qemu-utils" };

/// Find `tool` on PATH (also /usr/sbin and /sbin, where e2fsprogs lives but which
/// are not on an ordinary user's PATH on Debian).
pub fn find(tool: &Tool) -> Result<PathBuf, ToolError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // IMGBUILD_SBIN_DIRS replaces the sbin fallback (tests use it to hide tools).
    let sbin = std::env::var_os("IMGBUILD_SBIN_DIRS").unwrap_or_else(|| "/usr/sbin:/sbin".into());
    let extra: Vec<PathBuf> = std::env::split_paths(&sbin).collect();
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(tool.name))
        .find(|p| is_executable(p))
        .ok_or(ToolError::Missing { tool: tool.name, hint: tool.hint })
}

/// Check all of `tools`, reporting the first one missing.
pub fn require(tools: &[Tool]) -> Result<(), ToolError> {
    tools.iter().try_for_each(|t| find(t).map(|_| ()))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// For tests that drive a real tool: its path, or None (after a loud note) when it is missing
/// here. Under CI (env `CI` set) a missing tool is a failure, never a quiet skip: ci/test.sh
/// installs every tool the suite uses. Integration tests reach it through `tests/it/common`.
#[doc(hidden)]
pub fn for_test(name: &'static str) -> Option<PathBuf> {
    match find(&Tool { name, hint: "ci/test.sh installs it" }) {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_some() => panic!("{e}: required in CI"),
        Err(e) => {
            crate::reporter::always(format!("SKIPPED: {e}; this check did not run"));
            None
        }
    }
}
