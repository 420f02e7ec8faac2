//! Dependency fields (`Depends`, `Pre-Depends`, `Provides`): comma-separated groups of
//! `|`-separated alternatives, each `name[:archqual] [(op version)]`.

use crate::types::debian::{Op, Version};

#[derive(Debug, Clone)]
pub struct Alt {
    pub name: String,
    pub constraint: Option<(Op, Version)>,
}

impl std::fmt::Display for Alt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({} {v})", op.as_str())?;
        }
        Ok(())
    }
}

/// One comma-separated group: satisfied by any of its alternatives.
pub type Group = Vec<Alt>;

/// Parse a relation field. Arch qualifiers (`:any`, `:native`, `:amd64`) are dropped:
/// one architecture is resolved at a time.
pub fn parse(field: &str) -> Result<Vec<Group>, String> {
    let mut groups = Vec::new();
    for g in field.split(',') {
        let g = g.trim();
        if g.is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for a in g.split('|') {
            alts.push(parse_alt(a.trim()).map_err(|e| format!("{e} in {g:?}"))?);
        }
        groups.push(alts);
    }
    Ok(groups)
}

fn parse_alt(s: &str) -> Result<Alt, String> {
    // Architecture restrictions `[...]` and build profiles `<...>` only occur in
    // source packages; an installed package never carries them.
    let (head, constraint) = match s.split_once('(') {
        Some((h, rest)) => {
            let inner = rest.trim_end().strip_suffix(')').ok_or("unclosed (")?.trim();
            let split = inner.find(|c: char| !"<>=".contains(c)).unwrap_or(inner.len());
            let (op, v) = inner.split_at(split);
            let op = Op::parse(op.trim()).ok_or_else(|| format!("bad relation operator {op:?}"))?;
            (h.trim(), Some((op, Version::parse(v.trim())?)))
        }
        None => (s, None),
    };
    let name = head.split(':').next().unwrap_or("").trim();
    if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    {
        return Err(format!("bad package name {name:?}"));
    }
    Ok(Alt { name: name.to_string(), constraint })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_alternatives_and_constraints() {
        let g =
            parse("libc6 (>= 2.34), libmnl0 (>= 1.0.3-4~), perl:any | perl-base (>> 5), netbase").unwrap();
        assert_eq!(g.len(), 3 + 1);
        assert_eq!(g[0][0].name, "libc6");
        assert_eq!(g[1][0].constraint.as_ref().unwrap().1.to_string(), "1.0.3-4~");
        assert_eq!(g[2].len(), 2);
        assert_eq!(g[2][0].name, "perl");
        assert_eq!(g[2][1].to_string(), "perl-base (>> 5)");
        assert!(parse("a (~~ 1)").is_err());
        assert!(parse("A").is_err());
        assert_eq!(parse("").unwrap().len(), 0);
    }
}
