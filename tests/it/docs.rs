//! The docs say what the code does, checked where that is mechanical: every relative link
//! (and its `#anchor`) in README.md and docs/*.md resolves, every `imgbuild …` command line
//! the docs show names commands and flags the CLI has, and every command and long flag of the
//! CLI is named somewhere in the docs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, docs/*.md and the READMEs next to the things they describe.
fn markdown_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![
        root.join("README.md"),
        root.join("charts/backend/README.md"),
        root.join("keys/README.md"),
        root.join("cloud-init/schema/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

/// One line of a markdown file, split into what is prose and what is code.
struct Line {
    number: usize,
    /// The line with inline code spans blanked out; empty inside a fenced block.
    prose: String,
    /// Inline code spans of the line, or the whole line inside a fenced block.
    code: Vec<String>,
}

fn lines(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            out.push(Line { number: i + 1, prose: String::new(), code: vec![line.to_string()] });
            continue;
        }
        let mut prose = String::new();
        let mut code = Vec::new();
        let mut rest = line;
        while let Some(start) = rest.find('`') {
            // A span opened by N backticks is closed by the next run of exactly N.
            let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
            let fence = "`".repeat(ticks);
            let body = &rest[start + ticks..];
            let Some(end) = body.find(&fence) else { break };
            prose.push_str(&rest[..start]);
            prose.push_str(&" ".repeat(end + 2 * ticks));
            code.push(body[..end].trim().to_string());
            rest = &body[end + ticks..];
        }
        prose.push_str(rest);
        out.push(Line { number: i + 1, prose, code });
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (code ticks included),
/// spaces to hyphens; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while seen.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        seen.insert(unique);
    }
    seen
}

/// Targets of inline links `[text](target)` in a line's prose.
fn link_targets(prose: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = prose;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in lines(&text) {
            for target in link_targets(&line.prose) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let resolved = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
                let at = format!("{}:{}: {target}", rel(&file), line.number);
                if !resolved.exists() {
                    broken.push(format!("{at}: no such file"));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let Ok(linked) = std::fs::read_to_string(&resolved) else {
                        broken.push(format!("{at}: an anchor into something that is not a text file"));
                        continue;
                    };
                    if !anchors(&linked).contains(anchor) {
                        broken.push(format!("{at}: no heading with that anchor"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_githubs_rules() {
    let a =
        anchors("# Compressed qcow2 (`--compress`)\n## Nodes added later (`cluster add-node`)\n# A\n# A\n");
    let want = ["compressed-qcow2---compress", "nodes-added-later-cluster-add-node", "a", "a-1"];
    assert_eq!(a, want.iter().map(|s| s.to_string()).collect());
}

/// Words that end an `imgbuild …` command line in a doc: shell syntax and prose.
fn ends_command(word: &str) -> bool {
    matches!(word, "|" | "||" | "&&" | ";" | ">" | ">>" | "<" | "#" | "…" | "...")
        || word.starts_with('#')
        || word.starts_with('>')
        || word.starts_with("2>")
}

/// Every `imgbuild …` in the docs' code: the subcommands it names and each `--flag`
/// (checked against the command it follows, or a global flag).
fn check_command_line(cli: &clap::Command, words: &[&str], bad: &mut Vec<String>) {
    let mut cmd = cli;
    let mut path = vec!["imgbuild".to_string()];
    let mut expect_sub = cmd.has_subcommands();
    for word in words {
        // `[--flag VALUE]`: an optional flag in a synopsis
        let word = &word.trim_start_matches(['[', '(']);
        if ends_command(word) {
            break;
        }
        // A line continuation is not a word; values and positionals are skipped below.
        if *word == "\\" {
            continue;
        }
        if let Some(flag) = word.strip_prefix("--") {
            let flag = flag.split_once('=').map_or(flag, |(f, _)| f);
            let flag = flag.trim_end_matches([',', '.', ')', ']', ';', ':', '…']);
            if flag.is_empty() || flag == "help" || flag == "version" {
                continue;
            }
            let known = cmd.get_arguments().any(|a| a.get_long() == Some(flag))
                || cli.get_arguments().any(|a| a.get_long() == Some(flag) && a.is_global_set());
            if !known {
                bad.push(format!("`{} --{flag}`: no such flag", path.join(" ")));
            }
            continue;
        }
        if expect_sub {
            let word = word.trim_end_matches([',', '.', ')', ';', ':']);
            match cmd.find_subcommand(word) {
                Some(sub) => {
                    cmd = sub;
                    path.push(word.to_string());
                    expect_sub = cmd.has_subcommands();
                }
                None => {
                    // `imgbuild cluster …` in prose names a group, not a wrong command.
                    if word.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !word.is_empty() {
                        bad.push(format!("`{} {word}`: no such subcommand", path.join(" ")));
                    }
                    return;
                }
            }
        }
    }
}

/// Words after which a shell runs the next word as a command.
const SHELL_BEFORE: &[&str] =
    &["$", "sudo", "&&", "||", ";", "|", "<(", "$(", "then", "do", "time", "exec", "env"];

/// The `imgbuild …` command lines of a file's code: inline spans and fenced lines, a fenced
/// line ending in `\` joined with the next.
fn command_lines(cli: &clap::Command, text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for line in lines(text) {
        for code in &line.code {
            let code = match pending.take() {
                Some((n, head)) => (n, format!("{head} {code}")),
                None => (line.number, code.clone()),
            };
            if line.prose.is_empty() && code.1.trim_end().ends_with('\\') {
                pending = Some((code.0, code.1.trim_end().trim_end_matches('\\').to_string()));
                continue;
            }
            // A shell comment is prose.
            let words: Vec<&str> = code.1.split_whitespace().take_while(|w| !w.starts_with('#')).collect();
            for (i, w) in words.iter().enumerate() {
                // `imgbuild` (or a path to it) where a shell runs a command: first, or after
                // shell syntax; or `cargo run … --` of this crate.
                let runs = i == 0 || SHELL_BEFORE.contains(&words[i - 1]);
                let is_bin = runs && (*w == "imgbuild" || w.ends_with("/imgbuild"));
                let is_cargo = *w == "--" && words[..i].contains(&"run") && words[..i].contains(&"cargo");
                if is_bin || is_cargo {
                    out.push((code.0, words[i + 1..].join(" ")));
                }
            }
            // An inline span such as `build --profile monitoring`: a top-level command with
            // flags. Not `cloud-init`: in prose that is as often cloud-init's own CLI.
            let first = words.first().copied().unwrap_or_default();
            if !line.prose.is_empty()
                && words.iter().any(|w| w.starts_with("--"))
                && cli.find_subcommand(first).is_some()
                && first != "cloud-init"
            {
                out.push((code.0, words.join(" ")));
            }
        }
    }
    out
}

#[test]
fn every_command_line_in_the_docs_exists_in_the_cli() {
    let cli = imgbuild::cmd::Cli::command();
    let mut bad = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in command_lines(&cli, &text) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let mut found = Vec::new();
            check_command_line(&cli, &words, &mut found);
            bad.extend(found.into_iter().map(|b| format!("{}:{number}: {b}", rel(&file))));
        }
    }
    assert!(bad.is_empty(), "the docs name commands or flags the CLI does not have:\n{}", bad.join("\n"));
}

#[test]
fn the_command_line_check_catches_a_wrong_flag_and_command() {
    let cli = imgbuild::cmd::Cli::command();
    let mut bad = Vec::new();
    check_command_line(&cli, &["build", "--role", "worker", "--quiet", "--no-such"], &mut bad);
    check_command_line(&cli, &["cluster", "frobnicate", "--name", "x"], &mut bad);
    check_command_line(&cli, &["cluster", "init", "--name", "x", "|", "grep", "--nope"], &mut bad);
    assert_eq!(
        bad,
        ["`imgbuild build --no-such`: no such flag", "`imgbuild cluster frobnicate`: no such subcommand"]
    );
}

#[test]
fn every_command_and_long_flag_is_documented() {
    let mut all = String::new();
    for file in markdown_files() {
        all.push_str(&std::fs::read_to_string(&file).unwrap());
        all.push('\n');
    }
    fn walk(c: &clap::Command, path: &str, all: &str, missing: &mut Vec<String>) {
        for a in c.get_arguments() {
            if let Some(long) = a.get_long() {
                if !matches!(long, "help" | "version") && !all.contains(&format!("--{long}")) {
                    missing.push(format!("{path} --{long}"));
                }
            }
        }
        for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub = format!("{path} {}", s.get_name());
            // Named as on a command line, without the leading `imgbuild`.
            let named = sub.trim_start_matches("imgbuild ");
            if !all.contains(named) {
                missing.push(sub.clone());
            }
            walk(s, &sub, all, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&imgbuild::cmd::Cli::command(), "imgbuild", &all, &mut missing);
    assert!(missing.is_empty(), "commands and flags no doc names:\n{}", missing.join("\n"));
}

#[test]
fn the_module_map_names_every_top_level_module() {
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).unwrap();
    let arch = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    // The fenced block under "## Module map".
    let map = arch.split("## Module map").nth(1).and_then(|s| s.split("```").nth(1)).unwrap_or_default();
    let words: BTreeSet<&str> = map.split(|c: char| !(c.is_alphanumeric() || c == '_')).collect();
    let missing: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';'))
        .filter(|m| !words.contains(m))
        .collect();
    assert!(!map.is_empty(), "docs/architecture.md has no module map");
    assert!(missing.is_empty(), "modules missing from docs/architecture.md's module map: {missing:?}");
}

#[test]
fn the_readme_links_every_doc() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut missing = Vec::new();
    for file in markdown_files().iter().filter(|f| f.parent() == Some(&repo().join("docs"))) {
        let name = format!("(docs/{})", file.file_name().unwrap().to_string_lossy());
        if !readme.contains(&name) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "docs README.md does not link: {missing:?}");
}
