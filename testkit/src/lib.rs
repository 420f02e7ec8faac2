//! TEST ONLY: the one builder of imgbuild's test world, shared by the Rust integration tests
//! (a dev-dependency) and the boot test (`imgbuild-testkit`, called by ci/boot-test.sh).
//!
//! - [`archive`]: a signed apt archive laid out like Ubuntu's (pool, Packages(.xz),
//!   Release/InRelease clearsigned by a gpg key made for it);
//! - [`standin`]: stand-ins for the recipe's downloads, packed the way each artifact's
//!   `install` entries read them (raw files, release tarballs, Helm chart packages);
//! - [`oci`]: OCI/Docker test images (deterministic layers, configs, manifests, indexes);
//! - [`mirror`]: the mirror layout (`www/<host>/<path>` for every upstream URL) and the test
//!   recipe pinning what the mirror serves, with the recipe's packages pointed at a test
//!   archive and its container images replaced by test images;
//! - [`cache`]: the boot test's cache of expensive inputs, keyed by their hash and by this
//!   crate's own source (a changed builder never reuses an old result);
//! - [`qemu`]: qemu-img as the reference reader of the images imgbuild writes (check,
//!   info, compare, convert to raw), for the writers' unit tests and the integration tests.
//!
//! The bootable Debian-made base of the boot test stays ci/boot/build-base.sh (mmdebstrap:
//! no Rust twin); the small noble-shaped base of the Rust tests is tests/it/common/fixture.rs.

pub mod archive;
pub mod cache;
pub mod mirror;
pub mod oci;
pub mod qemu;
pub mod standin;

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};

/// Fixed mtime of every generated tar member (2024-08-21T00:00:00Z, the recipe's
/// `source_date_epoch`): the stand-ins and their digests are the same on every run.
pub const MTIME: u64 = 1_724_198_400;

/// Hex sha256 of `b`.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Hex sha256 of the file at `p`, streamed.
pub fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Run `cmd`; an error (with its stderr) unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// Write `bytes` to `p`, creating its parent directories.
pub fn write(p: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
}
