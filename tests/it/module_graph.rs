//! The dependency graph of the top-level modules of `src/`, derived from the code
//! (every `crate::` path outside comments), must have no cycle: dependencies point down,
//! from the command layer (`cmd`) to the value types (`types`, `exit`).
//!
//! Also checked: only `cmd` may use `cmd` (library modules never see the CLI), and the
//! bottom modules use nothing else of the crate. `cargo test --test it module_graph:: --
//! --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules at the bottom: nothing else of the crate below them.
const BOTTOM: [&str; 2] = ["types", "exit"];
/// The command layer: clap types and dispatch; nothing below may use it.
const TOP: &str = "cmd";

/// module -> (used module -> first place it is used, as `file:line`).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules named by `crate::…` paths on one line of code, including
/// grouped imports (`use crate::{a::X, b};`, possibly over several lines: `rest`
/// holds the text after the line for that case).
fn uses_in(line: &str, rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = line;
    while let Some(i) = s.find("crate::") {
        // `$crate::` is a macro's own crate, also a use; `foo_crate::` is not ours.
        let before = s[..i].chars().next_back();
        let after = &s[i + "crate::".len()..];
        s = after;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            // The group may continue on the following lines.
            let text = format!("{group}\n{rest}");
            let mut depth = 1;
            let mut item_start = true;
            for (k, c) in text.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        item_start = false;
                        let id = ident(&text[k..]);
                        if id != "self" {
                            out.push(id.to_string());
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let id = ident(after);
            if !id.is_empty() {
                out.push(id.to_string());
            }
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut g = Graph::new();
    for f in &files {
        let Some(m) = module_of(src, f) else { continue };
        g.entry(m.clone()).or_default();
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let rest = lines[n + 1..(n + 40).min(lines.len())].join("\n");
            for used in uses_in(code, &rest) {
                if used != m && modules.contains(&used) {
                    let at = format!("{}:{}", f.strip_prefix(src).unwrap().display(), n + 1);
                    g.get_mut(&m).unwrap().entry(used).or_insert(at);
                }
            }
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g[v].keys() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn top_level_modules_form_no_cycle() {
    let g = graph(&src());
    for (m, uses) in &g {
        println!("{m} -> {}", uses.keys().cloned().collect::<Vec<_>>().join(", "));
    }
    let found = cycles(&g);
    let report: Vec<String> = found
        .iter()
        .map(|scc| {
            let edges: Vec<String> = scc
                .iter()
                .flat_map(|a| {
                    g[a].iter()
                        .filter(|(b, _)| scc.contains(b))
                        .map(move |(b, at)| format!("    {a} -> {b} ({at})"))
                })
                .collect();
            format!("  cycle through {}:\n{}", scc.join(", "), edges.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "module dependency cycles:\n{}", report.join("\n"));
}

#[test]
fn only_the_command_layer_sees_the_command_layer() {
    let g = graph(&src());
    assert!(g.contains_key(TOP), "no src/{TOP} module");
    let bad: Vec<String> = g
        .iter()
        .filter(|(m, uses)| m.as_str() != TOP && uses.contains_key(TOP))
        .map(|(m, uses)| format!("{m} ({})", uses[TOP]))
        .collect();
    assert!(bad.is_empty(), "library modules using the command layer: {}", bad.join(", "));
}

#[test]
fn bottom_modules_use_nothing_of_the_crate() {
    let g = graph(&src());
    for m in BOTTOM {
        let uses = g.get(m).unwrap_or_else(|| panic!("no src/{m} module"));
        assert!(uses.is_empty(), "{m} uses {uses:?}");
    }
}

/// The parser itself: grouped, nested and multi-line imports, and paths that only look
/// like ours.
#[test]
fn paths_are_parsed() {
    assert_eq!(uses_in("use crate::fetch::{self, Mirror};", ""), ["fetch"]);
    assert_eq!(
        uses_in("use crate::{", "    cache::Cache,\n    plan::{Item, Plan},\n    self,\n};"),
        ["cache", "plan"]
    );
    assert_eq!(uses_in("let x = crate::a::f(crate::b::C);", ""), ["a", "b"]);
    assert_eq!(uses_in("other_crate::x::y; $crate::m::z", ""), ["m"]);
    let g: Graph = [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]
        .into_iter()
        .map(|(m, u)| (m.to_string(), u.iter().map(|x| (x.to_string(), String::new())).collect()))
        .collect();
    assert_eq!(cycles(&g), [vec!["a".to_string(), "b".into(), "c".into()]]);
}
