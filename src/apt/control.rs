//! deb822 control data (Packages indexes, `DEBIAN/control`, `/var/lib/dpkg/status`,
//! Release files): stanzas of `Field: value` lines with indented continuation lines,
//! separated by blank lines. Field order and continuation text are kept verbatim so a
//! stanza written back is byte-identical to what dpkg wrote.

/// One stanza; field names compare case-insensitively, as in dpkg.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    /// (name, value). A multi-line value keeps its continuation lines after `\n`
    /// (each still indented); an empty first line makes the value start with `\n`.
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Set a field, replacing it in place or appending it.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.fields.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(f) => f.1 = value.to_string(),
            None => self.fields.push((name.to_string(), value.to_string())),
        }
    }

    /// Insert a field right after `after` (or append), replacing an existing one.
    pub fn insert_after(&mut self, after: &str, name: &str, value: &str) {
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        let at = self.fields.iter().position(|(n, _)| n.eq_ignore_ascii_case(after)).map(|i| i + 1);
        let at = at.unwrap_or(self.fields.len());
        self.fields.insert(at, (name.to_string(), value.to_string()));
    }

    /// Continuation lines of a multi-line field, unindented (e.g. `SHA256`, `Conffiles`).
    pub fn lines(&self, name: &str) -> impl Iterator<Item = &str> {
        self.get(name).unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty())
    }

    /// The stanza as text, ending in one newline (no blank separator line).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (n, v) in &self.fields {
            s.push_str(n);
            s.push(':');
            if !v.starts_with('\n') {
                s.push(' ');
            }
            s.push_str(v);
            s.push('\n');
        }
        s
    }
}

/// Parse deb822 text into stanzas. `origin` names the source in errors. Comment lines
/// (`#`) are skipped; CRLF is accepted (clearsigned text is CRLF-normalised).
pub fn parse(text: &str, origin: &str) -> Result<Vec<Stanza>, String> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    for (no, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some(last) = cur.fields.last_mut() else {
                return Err(format!("{origin}:{}: continuation line without a field", no + 1));
            };
            last.1.push('\n');
            last.1.push_str(line);
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("{origin}:{}: expected `Field: value`, got {line:?}", no + 1));
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("{origin}:{}: bad field name {name:?}", no + 1));
        }
        if cur.get(name).is_some() {
            return Err(format!("{origin}:{}: duplicate field {name:?} in one stanza", no + 1));
        }
        cur.fields.push((name.to_string(), value.trim().to_string()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Stanzas back to text: each ends in a newline, separated by one blank line.
pub fn to_text(stanzas: &[Stanza]) -> String {
    stanzas.iter().map(Stanza::to_text).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_multiline_fields() {
        let t = "Package: a\nStatus: install ok installed\nConffiles:\n /etc/a 0123\n /etc/b 4567\n\
                 Description: x\n y\n .\n z\n\nPackage: b\nVersion: 1\n";
        let s = parse(t, "t").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].lines("Conffiles").collect::<Vec<_>>(), ["/etc/a 0123", "/etc/b 4567"]);
        assert_eq!(s[0].get("package"), Some("a"));
        assert_eq!(to_text(&s), t);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(" x\n", "t").is_err());
        assert!(parse("Package a\n", "t").is_err());
        assert!(parse("A: 1\nA: 2\n", "t").is_err());
        assert_eq!(parse("\n\n# c\nA: 1\r\n\r\n\r\nB: 2", "t").unwrap().len(), 2);
    }
}
