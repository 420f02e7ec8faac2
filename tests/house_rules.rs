//! The repository's house rules that are not Rust lints: every shell script under `ci/` is
//! shellcheck-clean (settings in `ci/.shellcheckrc`), and the declared `rust-version` is one
//! the locked dependencies build with.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every shell script under `dir`: a `.sh` name, a shell shebang, or a `# shellcheck shell=`
/// directive (the sourced helpers).
fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            shell_scripts(&p, out);
            continue;
        }
        let text = std::fs::read(&p).unwrap();
        let first =
            String::from_utf8_lossy(text.split(|&b| b == b'\n').next().unwrap_or_default()).into_owned();
        let shebang = first.starts_with("#!")
            && ["/sh", "/bash", "env sh", "env bash"].iter().any(|s| first.contains(s));
        if p.extension().is_some_and(|e| e == "sh") || shebang || first.starts_with("# shellcheck shell=") {
            out.push(p);
        }
    }
}

fn shellcheck(cwd: &Path, files: &[PathBuf]) -> std::process::Output {
    Command::new("shellcheck")
        .current_dir(cwd)
        .args(["-x", "-S", "style", "-f", "gcc"])
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn shellcheck_passes_on_every_ci_script() {
    if !common::tool("shellcheck") {
        return;
    }
    let root = repo();
    let mut files = Vec::new();
    shell_scripts(&root.join("ci"), &mut files);
    let rel: Vec<PathBuf> = files.iter().map(|f| f.strip_prefix(&root).unwrap().to_path_buf()).collect();
    for must in ["ci/test.sh", "ci/boot-test.sh", "ci/boot/lib.sh", "ci/boot/guest/vendor-data"] {
        assert!(rel.iter().any(|f| f == Path::new(must)), "{must} not found among {rel:?}");
    }
    let o = shellcheck(&root, &rel);
    assert!(
        o.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // The check bites: with the same settings (a copy of ci/.shellcheckrc beside it), an
    // unquoted expansion fails.
    let t = tempfile::tempdir().unwrap();
    std::fs::copy(root.join("ci/.shellcheckrc"), t.path().join(".shellcheckrc")).unwrap();
    std::fs::write(t.path().join("bad.sh"), "#!/bin/sh\nd=$1\nrm -rf $d/tmp\n").unwrap();
    let o = shellcheck(t.path(), &[PathBuf::from("bad.sh")]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stdout).contains("SC2086"), "{o:?}");
}
