//! Problems found in a cluster spec, each with its field path and line: one type for
//! `cluster init`, `cloud-init` and `lint`, which prints them as findings as they are.

use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem of the spec at `path` (`nodes[2].address`; empty for the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    /// `path: message` (or the message alone), without file and line.
    pub fn text(&self) -> String {
        if self.path.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.path, self.message)
        }
    }

    /// `[warning: ]FILE[:LINE]: path: message`.
    pub fn display<'a>(&'a self, origin: &'a str) -> impl fmt::Display + 'a {
        struct D<'a>(&'a Diagnostic, &'a str);
        impl fmt::Display for D<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.0.severity == Severity::Warning {
                    f.write_str("warning: ")?;
                }
                match self.0.line {
                    Some(l) => write!(f, "{}:{l}: {}", self.1, self.0.text()),
                    None => write!(f, "{}: {}", self.1, self.0.text()),
                }
            }
        }
        D(self, origin)
    }
}

/// Every problem of one file, in the order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    pub origin: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", d.display(&self.origin))?;
        }
        Ok(())
    }
}

/// Collects diagnostics, resolving each path's line from the YAML source.
pub(crate) struct Collector<'a> {
    lines: &'a HashMap<String, usize>,
    pub items: Vec<Diagnostic>,
}

impl<'a> Collector<'a> {
    pub fn new(lines: &'a HashMap<String, usize>) -> Self {
        Collector { lines, items: Vec::new() }
    }
    pub fn line(&self, path: &str) -> Option<usize> {
        crate::yamlpos::line_of(self.lines, path)
    }
    fn push(&mut self, severity: Severity, path: &str, message: String) {
        let line = self.line(path);
        self.items.push(Diagnostic { severity, path: path.to_string(), line, message });
    }
    pub fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.push(Severity::Error, path, msg.into());
    }
    pub fn warn(&mut self, path: &str, msg: impl Into<String>) {
        self.push(Severity::Warning, path, msg.into());
    }
}
