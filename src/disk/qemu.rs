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

/// qemu-img as the reference reader of the writers' output (the writers' unit tests).
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::process::Command;

    /// Whether qemu-img is here ([`crate::tools::for_test`]: required when CI is set,
    /// else a loud skip).
    pub fn have_qemu_img() -> bool {
        crate::tools::for_test("qemu-img").is_some()
    }

    /// `qemu-img check -f fmt` of `p` is clean; its report.
    pub fn check(p: &Path, fmt: &str) -> String {
        let o = Command::new("qemu-img").args(["check", "-f", fmt]).arg(p).output().unwrap();
        let report = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{report}{}", String::from_utf8_lossy(&o.stderr));
        report
    }

    /// `qemu-img info --output=json` of `p`, the format given or (`None`) probed.
    pub fn info(p: &Path, fmt: Option<&str>) -> serde_json::Value {
        let mut c = Command::new("qemu-img");
        c.args(["info", "--output=json"]);
        if let Some(f) = fmt {
            c.args(["-f", f]);
        }
        let o = c.arg(p).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The guest bytes qemu-img reads from `p` in format `fmt` (converted to raw beside it).
    pub fn guest_bytes(p: &Path, fmt: &str) -> Vec<u8> {
        let raw = p.with_extension("guest.raw");
        let st = Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(p)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        let b = std::fs::read(&raw).unwrap();
        std::fs::remove_file(&raw).unwrap();
        b
    }
}
