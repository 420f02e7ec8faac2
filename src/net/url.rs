//! URLs as the user typed them, and as they may be shown.
//!
//! A URL may carry credentials (`https://user:token@mirror/…`, from a recipe, a lock
//! file or `--mirror`). [`SafeUrl`] is the one type that prints a URL: its `Display`
//! replaces the userinfo with `****`, so an error, a progress line or a manifest never
//! repeats a secret (the idea of uv's `DisplaySafeUrl`). The request itself uses the
//! full URL ([`SafeUrl::as_str`]).

use std::fmt;

/// A URL that never prints its credentials.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafeUrl(String);

impl SafeUrl {
    pub fn new(url: impl Into<String>) -> SafeUrl {
        SafeUrl(url.into())
    }

    /// The full URL, credentials included: for the request only, never for a message.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the URL carries userinfo (`user[:password]@`).
    pub fn has_credentials(&self) -> bool {
        userinfo_span(&self.0).is_some()
    }

    /// The URL as it may be shown.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Display for SafeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for SafeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

impl From<&str> for SafeUrl {
    fn from(s: &str) -> SafeUrl {
        SafeUrl::new(s)
    }
}

impl From<String> for SafeUrl {
    fn from(s: String) -> SafeUrl {
        SafeUrl::new(s)
    }
}

impl serde::Serialize for SafeUrl {
    /// Serialized for people (plans, reports): redacted like `Display`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// The byte range of the userinfo (without the `@`) of `scheme://userinfo@host…`.
/// Works on prefixes and on strings that are not valid URLs (a mirror `FROM=TO`, an
/// error message's URL), which is where a parser would give up and print everything.
fn userinfo_span(s: &str) -> Option<(usize, usize)> {
    let start = s.find("://")? + 3;
    let rest = &s[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last `@` of the authority: a password may itself contain an unescaped `@`.
    let at = rest[..end].rfind('@')?;
    Some((start, start + at))
}

/// One URL as it may be shown: `user:****@` for a password (the user name helps to
/// find the account), `****@` for a lone user name over HTTP (a token, as GitHub and
/// registries use it); a lone user name of another scheme (`qemu+ssh://root@host`) is
/// a login, not a secret, and stays.
fn redact_one(url: &str) -> String {
    let Some((a, b)) = userinfo_span(url) else { return url.to_string() };
    let info = &url[a..b];
    let shown = match info.split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        None if url.starts_with("http://") || url.starts_with("https://") => "****".to_string(),
        None => info.to_string(),
    };
    format!("{}{shown}{}", &url[..a], &url[b..])
}

/// `text` with the credentials of every URL in it redacted ([`redact_one`]); every URL inside a longer text too
/// (an error chain from the HTTP library may quote the URL it was given).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // the scheme is the run of URL-scheme characters before `://`
        let scheme_start =
            rest[..i].rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c))).map_or(0, |p| p + 1);
        let url_end = rest[i..].find(char::is_whitespace).map_or(rest.len(), |e| i + e);
        let url = &rest[scheme_start..url_end];
        out.push_str(&rest[..scheme_start]);
        out.push_str(&redact_one(url));
        rest = &rest[url_end..];
    }
    out.push_str(rest);
    out
}

/// A URL prefix rewrite (`--mirror FROM=TO`, or `IMGBUILD_MIRROR="FROM=TO FROM=TO"`).
#[derive(Clone, PartialEq, Eq)]
pub struct Mirror {
    pub from: String,
    pub to: String,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mirror({}={})", redact(&self.from), redact(&self.to))
    }
}

/// A `--mirror` that is not `FROM=TO` with URL prefixes (shown redacted).
#[derive(Debug, thiserror::Error)]
#[error("invalid mirror {0:?}: expected FROM=TO with http://, https:// or file:// URL prefixes")]
pub struct BadMirror(pub String);

impl Mirror {
    /// Parse `FROM=TO`; both sides must be URL prefixes.
    pub fn parse(s: &str) -> Result<Mirror, BadMirror> {
        let bad = || BadMirror(redact(s));
        let (from, to) = s.split_once('=').ok_or_else(bad)?;
        let is_url = |u: &str| {
            ["http://", "https://", "file://"].iter().any(|p| u.len() > p.len() && u.starts_with(p))
        };
        if !is_url(from) || !is_url(to) {
            return Err(bad());
        }
        Ok(Mirror { from: from.to_string(), to: to.to_string() })
    }

    /// Parse every `FROM=TO` of `specs`, in order (earlier ones win a tie in [`rewrite`]).
    pub fn parse_all<'a>(specs: impl IntoIterator<Item = &'a str>) -> Result<Vec<Mirror>, BadMirror> {
        specs.into_iter().map(Mirror::parse).collect()
    }
}

/// Rewrite `url` by the mirror with the longest matching `from` (the first on a tie).
pub fn rewrite(url: &str, mirrors: &[Mirror]) -> String {
    let mut best: Option<&Mirror> = None;
    for m in mirrors {
        if url.starts_with(&m.from) && best.is_none_or(|b| m.from.len() > b.from.len()) {
            best = Some(m);
        }
    }
    match best {
        Some(m) => format!("{}{}", m.to, &url[m.from.len()..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print() {
        for (raw, shown) in [
            ("http://user:token@host/x", "http://user:****@host/x"),
            ("https://token@host:8443/a?b=c", "https://****@host:8443/a?b=c"),
            ("https://u:p@ss@host/", "https://u:****@host/"),
            ("qemu+ssh://root@kvm1/system", "qemu+ssh://root@kvm1/system"),
            ("https://host/path@x", "https://host/path@x"),
            ("https://host", "https://host"),
            ("file:///srv/x", "file:///srv/x"),
        ] {
            let u = SafeUrl::new(raw);
            assert_eq!(u.to_string(), shown, "{raw}");
            assert_eq!(format!("{u:?}"), format!("{shown:?}"));
            assert_eq!(u.as_str(), raw);
        }
        assert_eq!(
            redact("error sending request for url (http://a:b@h/x): refused; see https://c@d/"),
            "error sending request for url (http://a:****@h/x): refused; see https://****@d/"
        );
        let m = Mirror::parse("https://dl.k8s.io=http://u:secret@m/k8s").unwrap();
        assert!(!format!("{m:?}").contains("secret"));
        let e = Mirror::parse("http://u:secret@m").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn mirror_parse_and_rewrite() {
        let m = |s| Mirror::parse(s).unwrap();
        let ms =
            vec![m("https://dl.k8s.io=http://127.0.0.1:1/k8s"), m("https://dl.k8s.io/release=file:///srv")];
        assert_eq!(rewrite("https://dl.k8s.io/release/v1/x", &ms), "file:///srv/v1/x");
        assert_eq!(rewrite("https://dl.k8s.io/other", &ms), "http://127.0.0.1:1/k8s/other");
        assert_eq!(rewrite("https://get.helm.sh/h", &ms), "https://get.helm.sh/h");
        for bad in ["nope", "https://a", "=http://b", "https://a=", "ftp://a=http://b", "https://a=b"] {
            assert!(Mirror::parse(bad).is_err(), "{bad}");
        }
    }
}
