//! Documents whose mappings repeat a key are refused. serde_yaml and serde_json let
//! the last of two equal keys win silently when the target is a map (`sha256: {amd64:
//! A, amd64: B}` pins B), and structs only say "duplicate field" without saying
//! where; every YAML or JSON document imgbuild reads is first checked with
//! [`check_yaml`] or [`check_json`], which name the field path and the line.
//!
//! Keys are compared by their text, as the string-keyed maps they end up in would
//! compare them (`1` and `'1'` are the same key there).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A repeated key: the path of the mapping that holds it (`artifacts[0].sha256`, or
/// empty for the top level), the key, and the line when the format says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub path: String,
    pub key: String,
    pub line: Option<usize>,
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "duplicate key {:?}", self.key)
    }
}

/// Check YAML text (every document of a stream). Syntax errors are left to the real
/// parse that follows, which reports them better.
pub fn check_yaml(text: &str) -> Result<(), Duplicate> {
    for doc in serde_yaml::Deserializer::from_str(text) {
        if let Err(e) = serde_path_to_error::deserialize::<_, Any>(doc) {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if let Some(key) = dup_key(&inner.to_string()) {
                let path = tidy(path);
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                // serde_yaml places the error at the mapping; the repeat is what to show.
                let line = crate::yamlpos::repeated_line(text, &at).or(inner.location().map(|l| l.line()));
                return Err(Duplicate { path, key, line });
            }
            return Ok(());
        }
    }
    Ok(())
}

/// Check JSON text.
pub fn check_json(text: &str) -> Result<(), Duplicate> {
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Any>(&mut de) {
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match dup_key(&inner.to_string()) {
                Some(key) => Err(Duplicate { path: tidy(path), key, line: Some(inner.line()) }),
                None => Ok(()),
            }
        }
        Ok(_) => Ok(()),
    }
}

const MARK: &str = "imgbuild-duplicate-key:";

fn dup_key(msg: &str) -> Option<String> {
    let rest = msg.split(MARK).nth(1)?;
    let end = rest.find('\u{0}')?;
    Some(rest[..end].to_string())
}

fn tidy(path: String) -> String {
    if path == "." {
        String::new()
    } else {
        path
    }
}

/// Accepts any document; fails on the first mapping that repeats a key.
struct Any;

impl<'de> Deserialize<'de> for Any {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
}

struct AnyVisitor;

macro_rules! accept {
    ($($f:ident: $t:ty),*) => {
        $(fn $f<E: de::Error>(self, _: $t) -> Result<Any, E> { Ok(Any) })*
    };
}

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Any;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    accept!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128, visit_u128: u128,
        visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);
    fn visit_unit<E: de::Error>(self) -> Result<Any, E> {
        Ok(Any)
    }
    fn visit_none<E: de::Error>(self) -> Result<Any, E> {
        Ok(Any)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Any, D::Error> {
        Any::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Any, D::Error> {
        Any::deserialize(d)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, a: A) -> Result<Any, A::Error> {
        // A YAML tag (`!x value`): check what it wraps.
        let (_, v): (Key, A::Variant) = a.variant()?;
        de::VariantAccess::newtype_variant::<Any>(v)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Any, A::Error> {
        while a.next_element::<Any>()?.is_some() {}
        Ok(Any)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Any, A::Error> {
        let mut seen = HashSet::new();
        while let Some(Key(k)) = a.next_key::<Key>()? {
            if let Some(k) = k {
                if !seen.insert(k.clone()) {
                    return Err(de::Error::custom(format!("{MARK}{k}\u{0}")));
                }
            }
            a.next_value::<Any>()?;
        }
        Ok(Any)
    }
}

/// A mapping key as text (`None` for keys that are themselves collections).
struct Key(Option<String>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

macro_rules! text {
    ($($f:ident: $t:ty),*) => {
        $(fn $f<E: de::Error>(self, v: $t) -> Result<Key, E> { Ok(Key(Some(v.to_string()))) })*
    };
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }
    text!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128, visit_u128: u128,
        visit_f64: f64, visit_str: &str);
    fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key(Some("null".into())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Key, A::Error> {
        AnyVisitor.visit_seq(a).map(|_| Key(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Key, A::Error> {
        AnyVisitor.visit_map(a).map(|_| Key(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_repeated_key_with_path_and_line() {
        let y =
            "name: x\nartifacts:\n  - name: a\n    sha256:\n      amd64: A\n      arm64: B\n      amd64: C\n";
        let d = check_yaml(y).unwrap_err();
        assert_eq!((d.path.as_str(), d.key.as_str()), ("artifacts[0].sha256", "amd64"));
        assert_eq!(d.line, Some(7));
        assert_eq!(check_yaml("a: {x: 1, x: 2}\n").unwrap_err().path, "a");
        assert_eq!(check_yaml("a: 1\nb: 2\na: 3\n").unwrap_err().line, Some(3));
        assert_eq!(check_yaml("1: x\n'1': y\n").unwrap_err().key, "1");
        assert!(check_yaml("a: {x: 1, y: [1, 1]}\nb: {x: 2}\n").is_ok());
        assert!(check_yaml("a: [unclosed\n").is_ok(), "syntax errors are the real parser's");
        let d = check_json("{\"a\": {\"k\": 1,\n \"k\": 2}}").unwrap_err();
        assert_eq!((d.path.as_str(), d.key.as_str(), d.line), ("a", "k", Some(2)));
        assert!(check_json("{\"a\": [{\"k\": 1}, {\"k\": 2}]}").is_ok());
    }
}
