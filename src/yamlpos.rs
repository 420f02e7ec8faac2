//! Line numbers for YAML paths, so a semantic error found after deserialising
//! ("artifacts[2].sha256 lacks arm64") can still point at the line that holds it.
//! serde_yaml reports positions only for its own parse errors.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

struct Collector {
    stack: Vec<Frame>,
    prefix: Vec<String>,
    lines: HashMap<String, usize>,
    /// Lines of a key path's later occurrences (a key repeated in its mapping).
    again: HashMap<String, usize>,
}

impl Collector {
    fn path_of(&self, seg: &str) -> String {
        let mut p = self.prefix.concat();
        p.push_str(seg);
        p
    }

    /// Called when a node (scalar or container start) begins at `line`; returns the
    /// path segment the node occupies in its parent.
    fn enter_node(&mut self, line: usize) -> Option<String> {
        let seg = match self.stack.last_mut() {
            None => return Some(String::new()),
            Some(Frame::Seq { index }) => {
                let s = format!("[{index}]");
                *index += 1;
                s
            }
            Some(Frame::Map { key }) => match key.take() {
                // This node is a value: its key was remembered.
                Some(k) => {
                    if self.prefix.concat().is_empty() {
                        k
                    } else {
                        format!(".{k}")
                    }
                }
                // This node is a key; handled by the caller.
                None => return None,
            },
        };
        let path = self.path_of(&seg);
        self.lines.entry(path).or_insert(line);
        Some(seg)
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(v, ..) => {
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None }));
                if is_key {
                    let seg = if self.prefix.concat().is_empty() { v.clone() } else { format!(".{v}") };
                    let path = self.path_of(&seg);
                    match self.lines.entry(path) {
                        std::collections::hash_map::Entry::Occupied(e) => {
                            self.again.entry(e.key().clone()).or_insert(line);
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(line);
                        }
                    }
                    if let Some(Frame::Map { key }) = self.stack.last_mut() {
                        *key = Some(v);
                    }
                } else {
                    self.enter_node(line);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let seg = self.enter_node(line).unwrap_or_default();
                self.prefix.push(seg);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.prefix.pop();
            }
            Event::Alias(_) => {
                self.enter_node(line);
            }
            _ => {}
        }
    }
}

/// Map from dotted path (`artifacts[2].sha256.arm64`) to 1-based line. Best effort:
/// returns an empty map when the text does not parse.
pub fn lines(src: &str) -> HashMap<String, usize> {
    collect(src).lines
}

/// The line where the key at `path` occurs a second time, if it does.
pub fn repeated_line(src: &str, path: &str) -> Option<usize> {
    collect(src).again.get(path).copied()
}

fn collect(src: &str) -> Collector {
    let mut c =
        Collector { stack: Vec::new(), prefix: Vec::new(), lines: HashMap::new(), again: HashMap::new() };
    let mut p = Parser::new_from_str(src);
    let _ = p.load(&mut c, false);
    c
}

/// The line of `path`, or of its nearest ancestor that has one.
pub fn line_of(lines: &HashMap<String, usize>, path: &str) -> Option<usize> {
    let mut p = path.to_string();
    loop {
        if let Some(l) = lines.get(&p) {
            return Some(*l);
        }
        let cut = p.rfind(['.', '['])?;
        p.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let src = "a: 1\nlist:\n  - name: x\n    sha:\n      amd64: y\n  - name: z\n";
        let l = lines(src);
        assert_eq!(l.get("a"), Some(&1));
        assert_eq!(l.get("list"), Some(&2));
        assert_eq!(l.get("list[0].name"), Some(&3));
        assert_eq!(l.get("list[0].sha.amd64"), Some(&5));
        assert_eq!(l.get("list[1].name"), Some(&6));
        assert_eq!(line_of(&l, "list[1].sha.arm64"), Some(6));
    }
}
