//! What a CLI user expects: shell completions that load, man pages that render, and
//! `--json` on every command that prints data.

use crate::common;

use std::path::Path;
use std::process::Command;

use clap::CommandFactory;

use imgbuild::tools::for_test as tool;

fn stdout_of(args: &[&str]) -> String {
    let o = common::bin().args(args).output().unwrap();
    common::ok(&o);
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn bash_completion_parses_and_registers_imgbuild() {
    let Some(bash) = tool("bash") else { return };
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("imgbuild.bash");
    std::fs::write(&script, stdout_of(&["completions", "bash"])).unwrap();
    let o = Command::new(&bash).arg("-n").arg(&script).output().unwrap();
    common::ok(&o);
    // Sourced into a fresh non-interactive bash, the script must register a completion
    // function for the command (what `complete -p` lists).
    let o = Command::new(&bash)
        .arg("-c")
        .arg(r#"source "$1" && complete -p imgbuild"#)
        .arg("bash")
        .arg(&script)
        .output()
        .unwrap();
    common::ok(&o);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(listed.starts_with("complete ") && listed.trim_end().ends_with(" imgbuild"), "{listed}");
    // The completion knows the subcommands and their options (generated, not hand-written).
    let o = Command::new(&bash)
        .arg("-c")
        .arg(
            r#"source "$1"; COMP_WORDS=(imgbuild cluster in); COMP_CWORD=2; COMP_LINE="imgbuild cluster in";
               COMP_POINT=${#COMP_LINE}; _imgbuild imgbuild in cluster; printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(&script)
        .output()
        .unwrap();
    common::ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "init", "{}", common::stderr(&o));
}

#[test]
fn zsh_and_fish_completions_parse() {
    for (shell, ext) in [("zsh", "zsh"), ("fish", "fish")] {
        let Some(exe) = tool(shell) else { continue };
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join(format!("imgbuild.{ext}"));
        let text = stdout_of(&["completions", shell]);
        assert!(text.contains("cloud-init") && text.contains("role"), "{shell}: {text}");
        std::fs::write(&script, text).unwrap();
        let o = Command::new(&exe).arg("-n").arg(&script).output().unwrap();
        common::ok(&o);
        if shell == "fish" {
            // fish can ask its completion engine directly.
            let o = Command::new(&exe)
                .arg("-c")
                .arg(format!("source {}; complete -C 'imgbuild cluster in'", script.display()))
                .output()
                .unwrap();
            common::ok(&o);
            assert!(String::from_utf8_lossy(&o.stdout).starts_with("init"), "{}", common::stderr(&o));
        }
    }
}

#[test]
fn unknown_shell_is_bad_input() {
    let o = common::bin().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
}

/// Render a page the way `man -l` shows it; the plain text.
fn render(man: &Path, page: &Path) -> String {
    let o = Command::new(man)
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    common::ok(&o);
    let err = common::stderr(&o);
    // groff reports bad roff on stderr but man still exits 0.
    assert!(err.trim().is_empty(), "{}: {err}", page.display());
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn man_pages_render_for_every_command() {
    let Some(man) = tool("man") else { return };
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("man1");
    let listed = stdout_of(&["man", "--out", out.to_str().unwrap(), "--json"]);
    let pages: Vec<String> = serde_json::from_str(&listed).unwrap();
    // One page per command, subcommands included.
    let mut want = vec!["imgbuild".to_string()];
    fn walk(c: &clap::Command, prefix: &str, want: &mut Vec<String>) {
        for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("{prefix}-{}", s.get_name());
            want.push(name.clone());
            walk(s, &name, want);
        }
    }
    walk(&imgbuild::cmd::Cli::command(), "imgbuild", &mut want);
    let mut got: Vec<String> =
        pages.iter().map(|p| Path::new(p).file_stem().unwrap().to_string_lossy().into_owned()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for p in &pages {
        let text = render(&man, Path::new(p));
        let stem = Path::new(p).file_stem().unwrap().to_string_lossy().into_owned();
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{p}: {text}");
        assert!(text.contains(&stem), "{p} does not name {stem}: {text}");
    }
    let build = render(&man, &out.join("imgbuild-build.1"));
    assert!(build.contains("--check-reproducible") && build.contains("--json"), "{build}");
    // Without --out: the top page on stdout, the same bytes as the file.
    assert_eq!(stdout_of(&["man"]), std::fs::read_to_string(out.join("imgbuild.1")).unwrap());
}

/// Commands that print data but not as a `--json` choice, and why.
const NO_JSON: &[(&str, &str)] = &[
    ("imgbuild cloud-init", "writes files only; prints nothing on stdout"),
    ("imgbuild cluster kubeconfig", "prints a kubeconfig, itself a YAML document for kubectl"),
    ("imgbuild verify-blob", "always prints JSON"),
    ("imgbuild completions", "prints a shell script"),
];

#[test]
fn every_command_that_prints_data_takes_json() {
    fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let subs: Vec<_> = c.get_subcommands().filter(|s| s.get_name() != "help").collect();
        if subs.is_empty() {
            let has = c.get_arguments().any(|a| a.get_long() == Some("json"));
            let exempt = NO_JSON.iter().any(|(n, _)| *n == path);
            assert!(!(has && exempt), "{path} takes --json: drop it from NO_JSON");
            if !has && !exempt {
                missing.push(path.to_string());
            }
        }
        for s in subs {
            walk(s, &format!("{path} {}", s.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&imgbuild::cmd::Cli::command(), "imgbuild", &mut missing);
    assert!(missing.is_empty(), "commands without --json: {missing:?}");
}

#[test]
fn json_output_is_the_text_output_as_data() {
    let listed: serde_json::Value = serde_json::from_str(&stdout_of(&["recipe", "list", "--json"])).unwrap();
    let text = stdout_of(&["recipe", "list"]);
    let first = &listed[0];
    assert_eq!(first["default"], true);
    assert!(text.starts_with(&format!("{} (default)\t", first["name"].as_str().unwrap())), "{text}");

    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    let o = common::cluster_init(&dir).external_lb().args(["--json"]).output();
    common::ok(&o);
    let init: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cluster = init["cluster"].as_str().unwrap();
    assert!(Path::new(cluster).is_file(), "{init}");
    let o = common::bin().args(["cluster", "add-node", "--cluster", cluster, "--json"]).output().unwrap();
    common::ok(&o);
    let added: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(added["node"], "demo-worker-3");

    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/backend");
    let out = d.path().join("pkg");
    let o =
        common::bin().args(["chart", "package", "--json", "--out"]).arg(&out).arg(&chart).output().unwrap();
    common::ok(&o);
    let pkg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bytes = std::fs::read(pkg["path"].as_str().unwrap()).unwrap();
    assert_eq!(pkg["size"], bytes.len());
    assert_eq!(pkg["sha256"], imgbuild::types::Sha256::of(&bytes).as_str());
    assert_eq!(pkg["name"], "backend");
}
