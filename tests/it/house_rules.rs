//! The repository's house rules that are not Rust lints: every shell script under `ci/` is
//! shellcheck-clean (settings in `ci/.shellcheckrc`), and the declared `rust-version` is one
//! the locked dependencies build with.
use crate::common;

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

/// `1.89`, `1.89.0` → (1, 89, 0).
fn rust_version(v: &str) -> (u64, u64, u64) {
    let mut it = v.split('.').map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The half of the MSRV check that needs no second toolchain (ci/msrv.sh builds with it): the
/// declared rust-version is at least every rust-version the locked dependencies of the library
/// and the binary declare (dev-dependencies are the tests' business), for the Linux targets.
#[test]
fn rust_version_covers_every_locked_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut msrv_deps: Vec<(String, String)> = Vec::new();
    let mut ours = None;
    for target in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
        let o = Command::new(&cargo)
            .current_dir(repo())
            .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", target])
            .output()
            .unwrap();
        assert!(o.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&o.stderr));
        let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let root = m["resolve"]["root"].as_str().unwrap().to_string();
        let pkgs: std::collections::HashMap<&str, &serde_json::Value> =
            m["packages"].as_array().unwrap().iter().map(|p| (p["id"].as_str().unwrap(), p)).collect();
        ours = pkgs[root.as_str()]["rust_version"].as_str().map(str::to_string);
        let nodes: std::collections::HashMap<&str, &serde_json::Value> = m["resolve"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].as_str().unwrap(), n))
            .collect();
        // Walk normal and build dependencies from the root.
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![root.as_str()];
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            for d in nodes[id]["deps"].as_array().unwrap() {
                let not_dev =
                    d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].as_str() != Some("dev"));
                if not_dev {
                    todo.push(d["pkg"].as_str().unwrap());
                }
            }
        }
        for id in seen {
            let p = pkgs[id];
            if let (Some(rv), false) = (p["rust_version"].as_str(), id == root) {
                msrv_deps.push((
                    format!("{} {}", p["name"].as_str().unwrap(), p["version"].as_str().unwrap()),
                    rv.into(),
                ));
            }
        }
    }
    let ours = ours.expect("Cargo.toml declares rust-version");
    assert!(msrv_deps.len() > 50, "too few dependencies declare a rust-version: {msrv_deps:?}");
    let newer: Vec<_> = msrv_deps.iter().filter(|(_, rv)| rust_version(rv) > rust_version(&ours)).collect();
    assert!(newer.is_empty(), "rust-version {ours} is older than these locked dependencies need: {newer:?}");
}

/// The container image (`Containerfile`, built by CI) compiles imgbuild with a Rust no older
/// than the declared rust-version: cargo refuses an older one.
#[test]
fn the_containers_rust_is_at_least_the_rust_version() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    let ours = manifest["package"]["rust-version"].as_str().expect("Cargo.toml declares rust-version");
    let c = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let from = c
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("the Containerfile builds FROM rust:<version>-…");
    let tag = from.split(|ch: char| !(ch.is_ascii_digit() || ch == '.')).next().unwrap();
    assert!(
        rust_version(tag) >= rust_version(ours),
        "Containerfile builds with Rust {tag}, older than rust-version {ours}"
    );
}
