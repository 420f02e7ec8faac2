//! Maintainer scripts cannot run at build time (no root, no chroot, foreign arch). A
//! fresh install only runs `preinst install` and `postinst configure`, so those two are
//! read line by line: shell structure and a few known commands are accepted, and the
//! effects that matter are reproduced at build time (`update-alternatives --install`)
//! or at first boot (`ldconfig`). Anything else refuses the package, naming the line.
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

/// Analyse `preinst`/`postinst` text. `Err` carries the script and the refused line.
pub fn analyse(script: &str, text: &str) -> Result<Effects, String> {
    let mut fx = Effects::default();
    for line in logical_lines(text) {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || structural(l) {
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        match words[0] {
            "update-alternatives" if words.get(1) == Some(&"--install") => {
                fx.alternatives.push(parse_alt(&words[2..]).map_err(|e| format!("{script}: {e} in {l:?}"))?);
            }
            // Removal paths (abort-install/-upgrade) never run on a fresh install.
            "update-alternatives" if words.get(1) == Some(&"--remove") => {}
            "ldconfig" | "/sbin/ldconfig" if words.len() == 1 => fx.ldconfig = true,
            // Conffile moves/removals only act when upgrading from an older version.
            "dpkg-maintscript-helper"
                if words.get(1).is_some_and(|w| {
                    ["rm_conffile", "mv_conffile", "symlink_to_dir", "dir_to_symlink"].contains(w)
                }) => {}
            _ => {
                return Err(format!(
                    "{script} runs `{l}`, which imgbuild cannot reproduce without running the script \
                     (known: update-alternatives --install, ldconfig, dpkg-maintscript-helper)"
                ))
            }
        }
    }
    Ok(fx)
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
    let exact = [
        "set -e", "set -eu", "set -u", ";;", "esac", "fi", "then", "else", "done", ":", "true", "exit 0",
        "exit 1", "{", "}",
    ];
    if exact.contains(&l) {
        return true;
    }
    // An escaped backquote (debhelper's "unknown argument \`$1'" message) is text.
    let unescaped = l.replace("\\`", "");
    let no_subst = !unescaped.contains("$(") && !unescaped.contains('`');
    // `case "$1" in`, `configure)`, `abort-upgrade|abort-remove)`, `*)`.
    if no_subst && l.starts_with("case ") && l.ends_with(" in") {
        return true;
    }
    if no_subst
        && l.ends_with(')')
        && !l.contains(' ')
        && l.trim_end_matches(')')
            .split('|')
            .all(|w| w == "*" || w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_\"".contains(&b)))
    {
        return true;
    }
    // Tests on the script's arguments: `if [ "$1" = configure ]; then`.
    let test = |s: &str| {
        s.strip_prefix("if [ ")
            .or_else(|| s.strip_prefix("elif [ "))
            .and_then(|r| r.strip_suffix(" ]; then").or_else(|| r.strip_suffix(" ]")))
            .is_some_and(|cond| cond.split_whitespace().all(|w| !w.contains(['>', '<', ';', '&', '|'])))
    };
    if no_subst && test(l) {
        return true;
    }
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

    #[test]
    fn unknown_commands_are_refused_with_the_line() {
        let e = analyse("postinst", "#!/bin/sh\nset -e\nadduser --system foo\n").unwrap_err();
        assert!(e.contains("adduser --system foo"), "{e}");
        assert!(analyse("postinst", "echo $(rm -rf /)\n").is_err());
        assert!(analyse("postinst", "update-alternatives --install a b c 1\n").is_err());
        assert!(analyse("postinst", "if [ -x /usr/bin/x ] && x; then\n").is_err());
    }
}
