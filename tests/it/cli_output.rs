//! How the command layer talks: errors as a cargo-style chain on stderr, and no panic
//! when stderr (or stdout) is a closed pipe, as with `imgbuild build … 2>&1 | head -1`.
//! The messages users meet most (bad input: exit 2, and the top `--help`) are insta
//! snapshots: a change in wording shows up in review.

use crate::common;

use std::process::Stdio;

use imgbuild::plan::{BuildPlan, PlanOptions};
use imgbuild::types::{Arch, Role, Sha256};

/// A pipe whose read end is already closed: every write to the other end fails with
/// EPIPE, deterministically (what `| head -1` does once head has exited). std's pipe is
/// close-on-exec, so a child another test spawns meanwhile does not inherit it.
fn broken_pipe() -> std::io::PipeWriter {
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    w
}

/// Run imgbuild with stdout and stderr on a broken pipe; its exit code.
fn exit_code_on_broken_pipe(args: &[&str]) -> Option<i32> {
    let w = broken_pipe();
    let out = common::bin()
        .args(args)
        .stdout(Stdio::from(w.try_clone().unwrap()))
        .stderr(Stdio::from(w))
        .status()
        .unwrap();
    out.code()
}

/// A recipe (the default one, worker/amd64 digests replaced) and a cache that holds only
/// its base image: `fetch --offline` reports the cached base, then fails naming the rest.
fn half_cached(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let lr = imgbuild::recipe::load(None).unwrap();
    let plan = BuildPlan::resolve(&lr, &PlanOptions::new(Role::Worker, Arch::Amd64)).unwrap();
    let mut text = lr.text.clone();
    let cache = dir.join("cache");
    std::fs::create_dir_all(cache.join("sha256")).unwrap();
    for (i, item) in plan.items().enumerate() {
        let bytes = format!("stand-in for {}", item.name).into_bytes();
        let sha = Sha256::of(&bytes);
        text = text.replace(item.sha256.as_str(), sha.as_str());
        if i == 0 {
            std::fs::write(cache.join("sha256").join(sha.as_str()), &bytes).unwrap();
        }
    }
    let recipe = dir.join("recipe.yaml");
    std::fs::write(&recipe, common::without_images(&text)).unwrap();
    (recipe, cache)
}

#[test]
fn a_closed_stderr_is_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let (recipe, cache) = half_cached(d.path());
    let fetch = ["fetch", "--offline", "--recipe", recipe.to_str().unwrap()];
    let fetch = [&fetch[..], &["--cache-dir", cache.to_str().unwrap()]].concat();
    // First as usual: a progress line, then the error.
    let o = common::bin().args(&fetch).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cached ubuntu-24.04-server-cloudimg") && err.contains("error: --offline"), "{err}");
    // Then into a closed pipe, several times (the panic used to depend on timing).
    for _ in 0..3 {
        assert_eq!(exit_code_on_broken_pipe(&fetch), Some(1));
    }
    // A failing build: its error is the only thing it writes.
    let missing = d.path().join("missing.yaml");
    let build = ["build", "--recipe", missing.to_str().unwrap(), "--output", d.path().to_str().unwrap()];
    assert_eq!(exit_code_on_broken_pipe(&build), Some(1));
    // Data on stdout into a closed pipe is an I/O failure (exit 1), not a panic.
    assert_eq!(exit_code_on_broken_pipe(&["recipe", "show"]), Some(1));
}

#[test]
fn errors_print_as_a_cause_chain() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing.yaml");
    let o = common::bin().args(["recipe", "show", "--recipe", missing.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let want =
        format!("error: reading recipe {}\n\nCaused by:\n  No such file or directory", missing.display());
    assert!(err.starts_with(&want), "{err}");
}

/// A filesystem error names its path at every level (fs-err in the cache), and the chain
/// prints the way cargo prints one: `error:`, a blank line, `Caused by:`, indented causes.
#[test]
fn a_filesystem_error_names_its_path_in_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let not_a_dir = d.path().join("cache");
    std::fs::write(&not_a_dir, b"a file where the cache directory should be").unwrap();
    let o = common::bin()
        .args(["fetch", "--offline", "--quiet", "--cache-dir"])
        .arg(&not_a_dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).replace(d.path().to_str().unwrap(), "[TMP]");
    insta::assert_snapshot!("fs_error_chain", err);
}

/// `imgbuild ARGS` in `dir` (relative paths in the messages), its transcript.
fn transcript_in(dir: &std::path::Path, args: &[&str]) -> String {
    let o = common::bin().current_dir(dir).env_remove("COLUMNS").args(args).output().unwrap();
    common::transcript(&o, dir)
}

#[test]
fn top_level_help() {
    let d = tempfile::tempdir().unwrap();
    insta::assert_snapshot!("help", transcript_in(d.path(), &["--help"]));
}

/// A recipe field with a bad value, and a bad flag: exit 2 before anything is fetched.
#[test]
fn build_bad_input_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let recipe = include_str!("../../image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml");
    assert!(recipe.contains("\ndisk_size: 20G\n"));
    std::fs::write(d.path().join("bad.yaml"), recipe.replace("\ndisk_size: 20G\n", "\ndisk_size: 20Q\n"))
        .unwrap();
    let args =
        ["build", "--recipe", "bad.yaml", "--role", "worker", "--output", "out", "--cache-dir", "cache"];
    insta::assert_snapshot!("build_bad_recipe_field", transcript_in(d.path(), &args));
    assert!(!d.path().join("out").exists() && !d.path().join("cache").exists(), "wrote before refusing");
    insta::assert_snapshot!("build_bad_role", transcript_in(d.path(), &["build", "--role", "nonsense"]));
}

#[test]
fn cluster_init_bad_field_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let init = ["cluster", "init", "--endpoint", "10.0.0.10", "--control-planes", "1", "--dir", "c"];
    let bad_name = [&init[..], &["--name", "Bad_Name"]].concat();
    insta::assert_snapshot!("cluster_init_bad_name", transcript_in(d.path(), &bad_name));
    let bad_cidr = [&init[..], &["--name", "demo", "--pod-cidr", "10.244.0.0/33"]].concat();
    insta::assert_snapshot!("cluster_init_bad_pod_cidr", transcript_in(d.path(), &bad_cidr));
    assert!(!d.path().join("c/secrets").exists(), "secrets written for a refused spec");
}

/// A cluster.yaml edited by hand into an invalid one: `cloud-init` and `lint` refuse it
/// with the file, line and field.
#[test]
fn cloud_init_and_lint_bad_field_exit_2() {
    let d = tempfile::tempdir().unwrap();
    common::cluster_init(d.path().join("c")).endpoint("10.0.0.10").args(["--control-planes", "1"]).ok();
    let spec = std::fs::read_to_string(d.path().join("c/cluster.yaml")).unwrap();
    assert!(spec.contains("pod_cidr: \"10.244.0.0/16\""));
    std::fs::write(d.path().join("c/cluster.yaml"), spec.replace("10.244.0.0/16", "10.244.0.0/33")).unwrap();
    let cloud_init = ["cloud-init", "--cluster", "c/cluster.yaml", "--all", "--out", "seeds"];
    insta::assert_snapshot!("cloud_init_bad_pod_cidr", transcript_in(d.path(), &cloud_init));
    assert!(!d.path().join("seeds").exists(), "rendered from a refused spec");
    insta::assert_snapshot!(
        "lint_bad_pod_cidr",
        transcript_in(d.path(), &["lint", "--cluster", "c/cluster.yaml"])
    );
}
