//! The template engine: embedded minijinja templates with strict undefined, where
//! every `{{ value }}` is emitted as a YAML flow scalar by the formatter, so no
//! value can break out of its position (newlines, `: `, `#`, `---`, quotes, `{{`).

use std::fmt::Write;

use include_dir::{include_dir, Dir};
use minijinja::{Environment, UndefinedBehavior, Value};

static TEMPLATES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/cloud-init/templates");

/// Quote a string as a YAML double-quoted scalar. Also a valid JSON string, except
/// that printable non-ASCII stays literal. Escapes everything YAML 1.1 and 1.2
/// parsers would not take literally (controls, DEL, C1, NEL, LS/PS, BOM).
pub fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
                || (0xd800..=0xdfff).contains(&(c as u32))
                || matches!(c as u32, 0xfffe | 0xffff) =>
            {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON value as a single-line YAML flow node with every string quoted.
pub fn flow(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => quote(s),
        serde_json::Value::Array(a) => format!("[{}]", a.iter().map(flow).collect::<Vec<_>>().join(", ")),
        serde_json::Value::Object(m) => format!(
            "{{{}}}",
            m.iter().map(|(k, v)| format!("{}: {}", quote(k), flow(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn format_value(out: &mut minijinja::Output, v: &Value) -> Result<(), minijinja::Error> {
    if v.is_safe() {
        // only strings the template marks `|safe` itself (never data) skip quoting
        return out.write_str(v.as_str().unwrap_or_default()).map_err(minijinja::Error::from);
    }
    let j = serde_json::to_value(v).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::BadSerialization, format!("value is not data: {e}"))
    })?;
    out.write_str(&flow(&j)).map_err(minijinja::Error::from)
}

/// The environment with all embedded templates loaded.
pub fn env() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_formatter(|out, _state, v| format_value(out, v));
    for f in TEMPLATES.files() {
        let name = f.path().to_string_lossy().into_owned();
        let body = f.contents_utf8().ok_or_else(|| {
            minijinja::Error::new(minijinja::ErrorKind::TemplateNotFound, format!("{name} is not UTF-8"))
        })?;
        env.add_template_owned(name, body)?;
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_round_trip() {
        let nasty = [
            "a: b",
            "# x",
            "'q\"",
            "{{ x }}",
            "---",
            "x\ny\r\n",
            "tab\there",
            "é ü 漢字 🚀",
            "\u{85}\u{2028}\u{feff}",
            "\u{7f}\u{1}",
            "- item",
            "&anchor *alias",
            "null",
            "true",
            "0x1F",
            "",
            " lead",
            "trail ",
            "%TAG",
            "@x",
            "`",
            "!!binary",
            "a\\b",
        ];
        for s in nasty {
            let doc = format!("k: {}\n", quote(s));
            let v: serde_yaml::Value = serde_yaml::from_str(&doc).unwrap();
            assert_eq!(v["k"].as_str(), Some(s), "{doc}");
            let j: serde_json::Value = serde_json::from_str(&quote(s)).unwrap();
            assert_eq!(j.as_str(), Some(s));
        }
    }

    #[test]
    fn strict_undefined_and_formatter() {
        let mut e = env().unwrap();
        e.add_template("t", "a: {{ x }}\nb: {{ y }}\n").unwrap();
        let t = e.get_template("t").unwrap();
        assert!(t.render(minijinja::context! { x => 1 }).is_err());
        let out = t.render(minijinja::context! { x => "a: b\n#c", y => vec!["p", "q"] }).unwrap();
        assert_eq!(out, "a: \"a: b\\n#c\"\nb: [\"p\", \"q\"]\n");
    }
}
