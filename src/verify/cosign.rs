//! placeholder
#[derive(Debug, clap::Args)]
pub struct VerifyBlobArgs {}
pub fn run_verify_blob(_a: &VerifyBlobArgs, _g: &crate::cli::Global) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
