//! Maintainer scripts cannot run at build time (no root, no chroot, foreign arch). A
//! fresh install only runs `preinst install` and `postinst configure` (previous version
//! empty), so those two are evaluated for exactly that case: `if`/`case` branches that
//! cannot run are skipped, every command that can run must be a known one, and its
//! effect is reproduced at build time (`update-alternatives --install`) or at first boot
//! (`ldconfig`). Anything else refuses the package, naming the line.
//! `prerm`/`postrm` only run on removal on the node and are kept as they are.

/// One `update-alternatives --install` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AltInstall {
    pub link: String,
    pub name: String,
    pub path: String,
    pub priority: i64,
    /// (link, name, path) per `--slave`.
    pub slaves: Vec<(String, String, String)>,
}

/// What a package's install-time scripts need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    pub alternatives: Vec<AltInstall>,
    pub ldconfig: bool,
}

/// Code that only repairs leftovers of old releases and provably does nothing on a
/// current Ubuntu image, matched line by line (whitespace-normalised), with the reason.
const KNOWN_NOOPS: &[(&str, &[&str])] = &[(
    // ebtables (Debian/Ubuntu 2.0.11): removes /sbin/ebtables* symlinks that pointed at
    // /usr/sbin/ebtables* before the /sbin → /usr/sbin move. On a merged-/usr image /sbin
    // *is* usr/sbin, so readlink yields the alternatives link or nothing, never the match.
    "ebtables /sbin compat-symlink cleanup",
    &[
        "LIST=\"ebtables ebtables-save ebtables-restore\"",
        "for i in $LIST; do",
        "if [ -e \"/sbin/$i\" ] && [ $(readlink /sbin/$i) = /usr/sbin/$i ] ; then",
        "rm /sbin/$i",
        "fi",
        "done",
    ],
)];

/// Three-valued result of a shell condition under a fresh install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    True,
    False,
    Unknown,
}

enum Frame {
    /// `active`: this branch may run; `taken`: an earlier branch surely ran.
    If {
        active: bool,
        taken: bool,
    },
    Case {
        active: bool,
        matched: bool,
    },
}

/// Analyse `preinst`/`postinst` text for a fresh install (`preinst install`,
/// `postinst configure` with an empty previous version): branches that cannot run then
/// (upgrade-only code, other `case` arms) are skipped; every command that can run must be
/// understood. `Err` carries the script and the refused line.
pub fn analyse(script: &str, text: &str) -> Result<Effects, String> {
    let arg1 = if script == "preinst" { "install" } else { "configure" };
    let mut lines: Vec<String> = logical_lines(text)
        .into_iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for (_, snippet) in KNOWN_NOOPS {
        if let Some(at) =
            lines.windows(snippet.len()).position(|w| w.iter().zip(snippet.iter()).all(|(a, b)| a == b))
        {
            lines.drain(at..at + snippet.len());
        }
    }
    let refuse = |l: &str, why: &str| format!("{script}: `{l}`: {why}");
    let mut fx = Effects::default();
    let mut stack: Vec<Frame> = Vec::new();
    for l in &lines {
        let l = l.as_str();
        let active = stack.iter().all(|f| match f {
            Frame::If { active, .. } | Frame::Case { active, .. } => *active,
        });
        let enclosing = stack.len().checked_sub(1).is_none_or(|n| {
            stack[..n].iter().all(|f| match f {
                Frame::If { active, .. } | Frame::Case { active, .. } => *active,
            })
        });
        if let Some(cond) = l.strip_prefix("if ") {
            let v = if active { condition(cond, arg1).map_err(|e| refuse(l, &e))? } else { Tri::False };
            stack.push(Frame::If { active: v != Tri::False, taken: v == Tri::True });
            continue;
        }
        if let Some(cond) = l.strip_prefix("elif ") {
            let v = if enclosing { condition(cond, arg1).map_err(|e| refuse(l, &e))? } else { Tri::False };
            match stack.last_mut() {
                Some(Frame::If { active, taken }) => {
                    *active = !*taken && v != Tri::False;
                    *taken |= v == Tri::True;
                }
                _ => return Err(refuse(l, "elif outside if")),
            }
            continue;
        }
        match l {
            "then" => continue,
            "else" => {
                match stack.last_mut() {
                    Some(Frame::If { active, taken }) => *active = !*taken,
                    _ => return Err(refuse(l, "else outside if")),
                }
                continue;
            }
            "fi" | "esac" => {
                if stack.pop().is_none() {
                    return Err(refuse(l, "unbalanced"));
                }
                continue;
            }
            ";;" => {
                if let Some(Frame::Case { active, .. }) = stack.last_mut() {
                    *active = false;
                }
                continue;
            }
            _ => {}
        }
        if let Some(subject) = l.strip_prefix("case ").and_then(|r| r.strip_suffix(" in")) {
            if !matches!(subject, "$1" | "\"$1\"") {
                return Err(refuse(l, "only `case \"$1\"` is understood"));
            }
            stack.push(Frame::Case { active: false, matched: false });
            continue;
        }
        if let Some(Frame::Case { active: a, matched }) = stack.last_mut() {
            if let Some(pats) = case_label(l) {
                let hit = !*matched && pats.iter().any(|p| *p == arg1 || *p == "*");
                *a = hit;
                *matched |= hit;
                continue;
            }
        }
        if !active || structural(l) {
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        match words[..] {
            ["update-alternatives", "--install", ..] => {
                fx.alternatives.push(parse_alt(&words[2..]).map_err(|e| refuse(l, &e))?);
            }
            // Only meaningful when something was installed before.
            ["update-alternatives", "--remove", ..]
            | ["update-rc.d", _, "remove"]
            | ["deb-systemd-helper", "disable" | "purge" | "unmask", ..] => {}
            ["ldconfig" | "/sbin/ldconfig"] => fx.ldconfig = true,
            // Conffile moves/removals only act when upgrading from an older version.
            ["dpkg-maintscript-helper", "rm_conffile" | "mv_conffile" | "symlink_to_dir" | "dir_to_symlink", ..] =>
                {}
            _ => {
                return Err(refuse(
                    l,
                    "imgbuild cannot reproduce this without running the script (it understands \
                     update-alternatives --install, ldconfig, dpkg-maintscript-helper and upgrade-only code)",
                ))
            }
        }
    }
    if !stack.is_empty() {
        return Err(format!("{script}: unbalanced if/case"));
    }
    Ok(fx)
}

/// `a|b)` → [a, b]; quotes dropped.
fn case_label(l: &str) -> Option<Vec<&str>> {
    let body = l.strip_suffix(')')?;
    if body.contains([' ', '$', '`', '(']) {
        return None;
    }
    Some(body.split('|').map(|p| p.trim_matches('"')).collect())
}

/// Evaluate an `if` condition (`[ "$1" = configure ] || …; then`) for a fresh install.
fn condition(c: &str, arg1: &str) -> Result<Tri, String> {
    let c = c.trim().trim_end_matches("then").trim().trim_end_matches(';').trim();
    let unescaped = c.replace("\\`", "");
    if unescaped.contains("$(") || unescaped.contains('`') {
        return Err("command substitution in a condition".into());
    }
    // Left-to-right, && and || with equal precedence, as the shell does.
    let mut acc: Option<Tri> = None;
    let mut op = "";
    let mut rest = c;
    loop {
        let (term, next, tail) = match (rest.find("&&"), rest.find("||")) {
            (Some(a), Some(o)) if a < o => (&rest[..a], "&&", &rest[a + 2..]),
            (_, Some(o)) => (&rest[..o], "||", &rest[o + 2..]),
            (Some(a), None) => (&rest[..a], "&&", &rest[a + 2..]),
            (None, None) => (rest, "", ""),
        };
        let v = test(term.trim(), arg1)?;
        acc = Some(match (acc, op) {
            (None, _) => v,
            (Some(x), "&&") => and(x, v),
            (Some(x), _) => or(x, v),
        });
        if next.is_empty() {
            break;
        }
        op = next;
        rest = tail;
    }
    Ok(acc.unwrap_or(Tri::Unknown))
}

fn and(a: Tri, b: Tri) -> Tri {
    match (a, b) {
        (Tri::False, _) | (_, Tri::False) => Tri::False,
        (Tri::True, Tri::True) => Tri::True,
        _ => Tri::Unknown,
    }
}

fn or(a: Tri, b: Tri) -> Tri {
    match (a, b) {
        (Tri::True, _) | (_, Tri::True) => Tri::True,
        (Tri::False, Tri::False) => Tri::False,
        _ => Tri::Unknown,
    }
}

/// One test: `[ … ]`, `test …` or `dpkg --compare-versions "$2" OP VER`.
fn test(t: &str, arg1: &str) -> Result<Tri, String> {
    let w: Vec<&str> = t.split_whitespace().map(|x| x.trim_matches('"').trim_matches('\'')).collect();
    let inner: &[&str] = match &w[..] {
        ["[", mid @ .., "]"] => mid,
        ["test", mid @ ..] => mid,
        ["dpkg", "--compare-versions", a, op, _v] => return Ok(compare_fresh(a, op)),
        _ => return Err(format!("condition `{t}` is not understood")),
    };
    Ok(match inner {
        // $1 is known; $2 (the previous version) is empty on a fresh install.
        ["$1", "=" | "==", x] | [x, "=" | "==", "$1"] => tri(*x == arg1),
        ["$1", "!=", x] | [x, "!=", "$1"] => tri(*x != arg1),
        ["-z", "$2"] => Tri::True,
        ["-n", "$2"] => Tri::False,
        // Anything else (file tests…) may go either way: the branch is analysed.
        _ if inner.iter().all(|x| !x.contains(['>', '<', ';', '&', '|'])) => Tri::Unknown,
        _ => return Err(format!("condition `{t}` is not understood")),
    })
}

fn tri(b: bool) -> Tri {
    if b {
        Tri::True
    } else {
        Tri::False
    }
}

/// `dpkg --compare-versions "$2" OP V` with `$2` empty: empty sorts before every version,
/// except for the `-nl` operators, where it sorts after.
fn compare_fresh(a: &str, op: &str) -> Tri {
    if a != "$2" {
        return Tri::Unknown;
    }
    match op {
        "lt" | "le" | "ne" | "<<" | "<=" | "<" => Tri::True,
        "gt" | "ge" | "eq" | ">>" | ">=" | ">" | "=" => Tri::False,
        "lt-nl" | "le-nl" => Tri::False,
        "gt-nl" | "ge-nl" => Tri::True,
        _ => Tri::Unknown,
    }
}

/// Lines with backslash continuations joined.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let l = raw.trim_end();
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Shell structure and no-op commands with no effect on the file system.
fn structural(l: &str) -> bool {
    let exact = ["set -e", "set -eu", "set -u", "done", ":", "true", "exit 0", "exit 1", "{", "}"];
    if exact.contains(&l) {
        return true;
    }
    // An escaped backquote (debhelper's "unknown argument \`$1'" message) is text.
    let unescaped = l.replace("\\`", "");
    let no_subst = !unescaped.contains("$(") && !unescaped.contains('`');
    // Messages to the terminal.
    no_subst
        && (l.starts_with("echo ") || l.starts_with("printf "))
        && !l.contains(" > ")
        && !l.contains(">>")
}

fn parse_alt(w: &[&str]) -> Result<AltInstall, String> {
    let [link, name, path, prio, rest @ ..] = w else {
        return Err("expected --install LINK NAME PATH PRIORITY".into());
    };
    let priority = prio.parse::<i64>().map_err(|_| format!("bad priority {prio:?}"))?;
    let mut slaves = Vec::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        match (*flag, it.next(), it.next(), it.next()) {
            ("--slave", Some(l), Some(n), Some(p)) => {
                slaves.push((l.to_string(), n.to_string(), p.to_string()))
            }
            _ => return Err(format!("unexpected {flag:?} (only --slave LINK NAME PATH is understood)")),
        }
    }
    let abs = |p: &str| p.starts_with('/') && !p.contains("..") && !p.contains('$');
    if !abs(link) || !abs(path) || slaves.iter().any(|(l, _, p)| !abs(l) || !abs(p)) {
        return Err("alternative links and paths must be literal absolute paths".into());
    }
    let ok_name = |n: &str| !n.is_empty() && !n.contains(['/', '$']) && !n.starts_with('.');
    if !ok_name(name) || slaves.iter().any(|(_, n, _)| !ok_name(n)) {
        return Err("bad alternative name".into());
    }
    Ok(AltInstall {
        link: link.to_string(),
        name: name.to_string(),
        path: path.to_string(),
        priority,
        slaves,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Debian/Ubuntu ebtables' postinst.
    const EBTABLES: &str = r#"#!/bin/sh
set -e

case "$1" in
    configure)
        update-alternatives --install /usr/sbin/ebtables ebtables /usr/sbin/ebtables-legacy 10 \
            --slave /usr/sbin/ebtables-save ebtables-save /usr/sbin/ebtables-legacy-save \
            --slave /usr/sbin/ebtables-restore ebtables-restore /usr/sbin/ebtables-legacy-restore
    ;;
    abort-upgrade|abort-remove|abort-deconfigure)
    ;;
    *)
        echo "postinst called with unknown argument \`$1'" >&2
        exit 1
    ;;
esac

# Automatically added by dh_makeshlibs/13.14.1ubuntu5
if [ "$1" = "configure" ]; then
	ldconfig
fi
# End automatically added section
exit 0
"#;

    #[test]
    fn ebtables_postinst_is_understood() {
        let fx = analyse("postinst", EBTABLES).unwrap();
        assert!(fx.ldconfig);
        assert_eq!(fx.alternatives.len(), 1);
        let a = &fx.alternatives[0];
        assert_eq!((a.link.as_str(), a.name.as_str(), a.priority), ("/usr/sbin/ebtables", "ebtables", 10));
        assert_eq!(a.slaves[1].1, "ebtables-restore");
    }

    /// The structure of Debian's ebtables 2.0.11 postinst: upgrade-only branches, the
    /// /sbin compat cleanup, alternatives for configure or abort-upgrade.
    const EBTABLES_DEBIAN: &str = r#"#!/bin/sh
set -e

if [ "$1" = "configure" ]; then
    if dpkg --compare-versions "$2" le-nl "2.0.10.4-3.2~"; then
	if [ -d /var/lib/ebtables ]; then
	    rmdir --ignore-fail-on-non-empty /var/lib/ebtables
	fi
    fi
    if dpkg --compare-versions "$2" le "2.0.10.4+snapshot20181205-2"; then
	update-rc.d ebtables remove
	deb-systemd-helper disable ebtables.service
	deb-systemd-helper purge ebtables.service
    fi
    # Clean-up the old compat symlinks for /sbin -> /usr/sbin
    LIST="ebtables ebtables-save ebtables-restore"
    for i in $LIST; do
	if [ -e "/sbin/$i" ] && [ $(readlink /sbin/$i) = /usr/sbin/$i ] ; then
	    rm /sbin/$i
	fi
    done
fi

if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ]; then
    update-alternatives \
	--install /usr/sbin/ebtables ebtables /usr/sbin/ebtables-legacy 10 \
	--slave /usr/sbin/ebtables-restore ebtables-restore /usr/sbin/ebtables-legacy-restore \
	--slave /usr/sbin/ebtables-save ebtables-save /usr/sbin/ebtables-legacy-save
fi

# Automatically added by dh_installdeb/13.6
dpkg-maintscript-helper rm_conffile /etc/init.d/ebtables 2.0.10.4\+snapshot20181205-2 -- "$@"
# End automatically added section
exit 0
"#;

    #[test]
    fn debian_ebtables_postinst_is_evaluated_for_a_fresh_install() {
        let fx = analyse("postinst", EBTABLES_DEBIAN).unwrap();
        assert!(!fx.ldconfig);
        assert_eq!(fx.alternatives.len(), 1);
        assert_eq!(fx.alternatives[0].path, "/usr/sbin/ebtables-legacy");
        assert_eq!(fx.alternatives[0].slaves[0].1, "ebtables-restore");
        // The upgrade-only branch is skipped on a fresh install…
        let up = EBTABLES_DEBIAN.replace("rmdir --ignore-fail-on-non-empty", "rm -rf");
        assert!(analyse("postinst", &up).is_ok());
        // …but the same command where it does run is refused.
        let run = EBTABLES_DEBIAN.replace("update-rc.d ebtables remove", "rm -rf /var/lib/x");
        assert!(analyse("postinst", &run).unwrap_err().contains("rm -rf /var/lib/x"));
        // Other case arms than configure do not run.
        let t = "case \"$1\" in\n configure)\n ldconfig\n ;;\n remove)\n adduser x\n ;;\nesac\n";
        assert!(analyse("postinst", t).unwrap().ldconfig);
        assert!(analyse("preinst", t).is_ok_and(|f| !f.ldconfig));
        assert!(analyse("postinst", "if [ \"$1\" = configure ]; then\nfoo\n").is_err());
    }

    #[test]
    fn unknown_commands_are_refused_with_the_line() {
        let e = analyse("postinst", "#!/bin/sh\nset -e\nadduser --system foo\n").unwrap_err();
        assert!(e.contains("adduser --system foo"), "{e}");
        assert!(analyse("postinst", "echo $(rm -rf /)\n").is_err());
        assert!(analyse("postinst", "update-alternatives --install a b c 1\n").is_err());
        assert!(analyse("postinst", "if [ -x /usr/bin/x ] && x; then\n").is_err());
    }
}
