//! `imgbuild build --check-reproducible`: build the same job twice, each in its own
//! temp dir, and require byte-identical outputs (image, manifest, checksum, SBOM).
//! Only then are the first build's outputs moved into the output dir.

use std::path::Path;

use anyhow::{Context, Result};

use super::VerifyError;
use crate::build::{Composer, Job};
use crate::output::Outputs;

fn files(o: &Outputs) -> [(&'static str, &Path); 4] {
    [("image", &o.image), ("manifest", &o.manifest), ("checksum", &o.checksum), ("sbom", &o.sbom)]
}

/// Build `job` twice with `compose` and compare; on success the outputs of the first
/// build end up in `job.output_dir`, as a normal build's would.
pub fn check_reproducible(job: &Job, compose: &Composer) -> Result<Outputs> {
    std::fs::create_dir_all(&job.output_dir)
        .with_context(|| format!("creating output dir {}", job.output_dir.display()))?;
    let mut runs = Vec::new();
    for n in ["a", "b"] {
        let dir = tempfile::Builder::new()
            .prefix(&format!(".imgbuild-repro-{n}-"))
            .tempdir_in(&job.output_dir)
            .with_context(|| format!("creating a temp dir in {}", job.output_dir.display()))?;
        if !job.quiet {
            eprintln!("check-reproducible: build {n} in {}", dir.path().display());
        }
        let j = Job { output_dir: dir.path().to_path_buf(), ..job.clone() };
        let out = crate::build::build(&j, compose)?;
        runs.push((dir, out));
    }
    let (a, b) = (&runs[0].1, &runs[1].1);
    let mut diffs = Vec::new();
    for ((what, pa), (_, pb)) in files(a).into_iter().zip(files(b)) {
        let (da, db) = (crate::output::sha256_file(pa)?, crate::output::sha256_file(pb)?);
        if da != db {
            diffs.push(format!("{what}: {da} vs {db}"));
        }
    }
    if !diffs.is_empty() {
        return Err(VerifyError::integrity(
            "check-reproducible",
            format!("two builds differ: {}", diffs.join("; ")),
        )
        .into());
    }
    if !job.quiet {
        eprintln!("check-reproducible: both builds are identical (image sha256 {})", a.image_sha256);
    }
    // Sidecars first and the image last, like a normal build: a present image always
    // comes with its complete set of sidecars.
    let mv = |p: &Path| -> Result<std::path::PathBuf> {
        let to = job.output_dir.join(p.file_name().context("output without a file name")?);
        std::fs::rename(p, &to).with_context(|| format!("moving {} into place", to.display()))?;
        Ok(to)
    };
    let manifest = mv(&a.manifest)?;
    let checksum = mv(&a.checksum)?;
    let sbom = mv(&a.sbom)?;
    let image = mv(&a.image)?;
    Ok(Outputs { image, manifest, checksum, sbom, image_sha256: a.image_sha256.clone() })
}
