//! `.helmignore` rules with Helm's semantics (helm.sh/helm/v3 pkg/ignore): the first
//! matching rule decides, `!` rules re-include, a trailing `/` matches directories only,
//! patterns without `/` match the base name, others the whole chart-relative path.
//! Globs are Go `filepath.Match` globs (`*`, `?`, `[...]`, `\` escapes; no `**`).

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    negate: bool,
    dir_only: bool,
    /// Match the whole relative path rather than the base name.
    full_path: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Helm's built-in rule: dotfiles in `templates/` are never part of a chart.
    pub fn with_defaults() -> Self {
        let mut r = Rules::default();
        r.push("templates/.?*");
        r
    }

    /// Add the lines of a `.helmignore` file. Errors name the first unsupported pattern.
    pub fn parse(&mut self, text: &str) -> Result<(), String> {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.contains("**") {
                return Err(format!("{line:?}: `**` is not supported in .helmignore (as in Helm)"));
            }
            if line == "/" {
                return Err("\"/\" would ignore the whole chart".into());
            }
            self.push(line);
        }
        Ok(())
    }

    fn push(&mut self, line: &str) {
        let (negate, rest) = match line.strip_prefix('!') {
            Some(r) => (true, r),
            None => (false, line),
        };
        let (dir_only, rest) = match rest.strip_suffix('/') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let full_path = rest.contains('/');
        let pattern = rest.trim_start_matches('/').to_string();
        self.rules.push(Rule { pattern, negate, dir_only, full_path });
    }

    /// Whether `path` (relative, `/`-separated) is ignored.
    pub fn ignored(&self, path: &str, is_dir: bool) -> bool {
        if path.is_empty() || path == "." {
            return false;
        }
        let base = path.rsplit('/').next().unwrap_or(path);
        for r in &self.rules {
            if r.dir_only && !is_dir {
                continue;
            }
            let subject = if r.full_path { path } else { base };
            if glob(r.pattern.as_bytes(), subject.as_bytes()) {
                return !r.negate;
            }
        }
        false
    }
}

/// Go `filepath.Match` on `/`-separated paths; malformed patterns match nothing.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => {
            // `*` never crosses a separator.
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some((b'?', rest)) => matches!(s.split_first(), Some((c, t)) if *c != b'/' && glob(rest, t)),
        Some((b'[', rest)) => {
            let Some((&c, t)) = s.split_first() else { return false };
            match class(rest, c) {
                Some((true, after)) if c != b'/' => glob(after, t),
                _ => false,
            }
        }
        Some((b'\\', rest)) => match (rest.split_first(), s.split_first()) {
            (Some((pc, pr)), Some((sc, sr))) if pc == sc => glob(pr, sr),
            _ => false,
        },
        Some((pc, rest)) => matches!(s.split_first(), Some((c, t)) if c == pc && glob(rest, t)),
    }
}

/// Match `c` against the class after `[`; returns (matched, pattern after `]`).
fn class(p: &[u8], c: u8) -> Option<(bool, &[u8])> {
    let (negated, mut p) = match p.first() {
        Some(b'^') | Some(b'!') => (true, &p[1..]),
        _ => (false, p),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let (&lo, rest) = p.split_first()?;
        if lo == b']' && !first {
            return Some((matched != negated, rest));
        }
        first = false;
        let (lo, rest) = if lo == b'\\' { rest.split_first().map(|(a, r)| (*a, r))? } else { (lo, rest) };
        p = rest;
        let hi = if p.first() == Some(&b'-') && p.get(1).is_some_and(|&b| b != b']') {
            let (&h, r) = p[1..].split_first()?;
            let (h, r) = if h == b'\\' { r.split_first().map(|(a, r)| (*a, r))? } else { (h, r) };
            p = r;
            h
        } else {
            lo
        };
        if lo <= c && c <= hi {
            matched = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_go_filepath_match() {
        assert!(glob(b"*.tgz", b"a.tgz"));
        assert!(!glob(b"*.tgz", b"dir/a.tgz"));
        assert!(glob(b"a?c", b"abc"));
        assert!(glob(b"[a-c]x", b"bx"));
        assert!(!glob(b"[^a-c]x", b"bx"));
        assert!(glob(b"\\*", b"*"));
        assert!(!glob(b"[a-", b"a"));
        assert!(glob(b".*.swp", b".v.swp"));
    }

    #[test]
    fn helmignore_semantics() {
        let mut r = Rules::with_defaults();
        r.parse("# comment\n\n*.tgz\n!keep.tgz\n.git/\n/top.txt\nci/*.yaml\n").unwrap();
        assert!(r.ignored("x.tgz", false));
        assert!(r.ignored("charts/x.tgz", false), "no slash: base name");
        assert!(r.ignored(".git", true));
        assert!(!r.ignored(".git", false), "trailing / matches directories only");
        assert!(r.ignored("top.txt", false));
        assert!(!r.ignored("sub/top.txt", false), "leading / anchors at the chart root");
        assert!(r.ignored("ci/a.yaml", false));
        assert!(r.ignored("templates/.hidden", false));
        assert!(!r.ignored("templates/x.yaml", false));
        assert!(r.parse("a/**/b").is_err());
    }

    #[test]
    fn first_matching_rule_wins_like_helm() {
        let mut r = Rules::default();
        r.parse("!keep.tgz\n*.tgz\n").unwrap();
        assert!(!r.ignored("keep.tgz", false));
        assert!(r.ignored("other.tgz", false));
        let mut r = Rules::default();
        r.parse("*.tgz\n!keep.tgz\n").unwrap();
        assert!(r.ignored("keep.tgz", false), "an earlier ignore rule wins, as in Helm");
    }
}
