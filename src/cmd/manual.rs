//! `imgbuild completions SHELL` and `imgbuild man`: generated from the clap definitions,
//! so they can never drift from the commands they describe.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::Cli;

/// Shells `completions` writes a script for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    /// `source <(imgbuild completions bash)`, or save it as
    /// /usr/share/bash-completion/completions/imgbuild
    Bash,
    /// Save as `_imgbuild` in a directory on $fpath
    Zsh,
    /// Save as ~/.config/fish/completions/imgbuild.fish
    Fish,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write one page per command (imgbuild.1, imgbuild-build.1, …) into this directory and
    /// print their paths; without it, imgbuild.1 goes to stdout
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With --out: print the written paths as a JSON array
    #[arg(long, requires = "out")]
    pub json: bool,
}

pub fn completions(a: &CompletionsArgs) -> Result<()> {
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "imgbuild", &mut out);
    out.flush().context("writing to stdout")?;
    Ok(())
}

pub fn man(a: &ManArgs) -> Result<()> {
    // `help` is clap's own subcommand, documented by every page's OPTIONS already.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Subcommands only carry their full name (`imgbuild-cluster-init`) once built.
    cmd.build();
    let Some(dir) = &a.out else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd).render(&mut out).context("writing to stdout")?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut paths = Vec::new();
    write_page(&cmd, dir, &mut paths)?;
    super::emit(a.json, &paths, |out| {
        for p in &paths {
            writeln!(out, "{}", p.display())?;
        }
        Ok(())
    })
}

/// One page for `cmd` and, recursively, one per subcommand, named like git's
/// (`imgbuild-cluster-init.1`); each written through a temp file and a rename, so a
/// failed run never leaves a half-written page over a good one.
fn write_page(cmd: &clap::Command, dir: &std::path::Path, paths: &mut Vec<PathBuf>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing into {}", dir.display()))?;
    man.render(&mut tmp).with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(&path).with_context(|| format!("writing {}", path.display()))?;
    paths.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, paths)?;
    }
    Ok(())
}
