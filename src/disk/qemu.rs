//! qemu-img: a base image → the raw working copy (every output format is written by
//! this crate, [`super::formats`]).

use std::path::Path;

use super::{BaseFormat, DiskError};
use crate::tools::{self, Tool};

/// Run a tool found through [`tools::find`], failing with its stderr.
pub(crate) fn run(tool: &Tool, args: &[&std::ffi::OsStr]) -> Result<std::process::Output, DiskError> {
    let exe = tools::find(tool).map_err(|e| DiskError::Tool { tool: tool.name, msg: e.to_string() })?;
    let out = super::interrupt::command(exe)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| DiskError::Tool { tool: tool.name, msg: format!("cannot run: {e}") })?;
    if !out.status.success() {
        return Err(DiskError::Tool {
            tool: tool.name,
            msg: format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status),
        });
    }
    Ok(out)
}

/// Convert the base image to a sparse raw file at `dst`.
pub fn to_raw(src: &Path, fmt: BaseFormat, dst: &Path) -> Result<(), DiskError> {
    run(
        &tools::QEMU_IMG,
        &[
            "convert".as_ref(),
            "-f".as_ref(),
            fmt.qemu_name().as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    )?;
    Ok(())
}

/// qemu-img as the reference reader of the writers' output (the writers' unit tests):
/// the testkit's, which the integration tests use too.
#[cfg(test)]
pub(crate) mod testing {
    pub use imgbuild_testkit::qemu::{check, guest_bytes, info, run, to_raw};

    /// Whether qemu-img is here ([`crate::tools::for_test`]: required when CI is set,
    /// else a loud skip).
    pub fn have_qemu_img() -> bool {
        crate::tools::for_test("qemu-img").is_some()
    }
}
