//! `imgbuild cluster add-node`: append a node to cluster.yaml as text, after the last
//! item of `nodes:`, in the style of the first item, so the user's comments and
//! formatting stay as they are. The result is parsed back (every rule of the spec)
//! before it replaces the file (temp file + rename, 0600).
//!
//! Defaults follow `cluster init`: the name is `<cluster>-cp-N` / `<cluster>-worker-N`
//! (the next free N); on a statically addressed network the address is the lowest free
//! host address from .11 up in the nodes' network, and the gateway is the one the
//! other nodes of that network use.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::net::Cidr;
use super::plan::ClusterPlan;
use super::{pki, ClusterError};
use crate::reporter::Reporter;
use crate::types::Role;

/// What `cluster add-node` is asked for.
#[derive(Debug, Clone)]
pub struct AddNodeOptions {
    /// The cluster spec to extend.
    pub cluster: PathBuf,
    /// Node name (default: `<cluster>-worker-N` / `<cluster>-cp-N`).
    pub name: Option<String>,
    pub role: Role,
    /// Static address with prefix length (default: the next free one on a static
    /// network, none (DHCP) otherwise).
    pub address: Option<String>,
    /// Gateway of the static address (default: the other nodes' gateway on that network).
    pub gateway: Option<String>,
}

/// What to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub name: String,
    pub role: Role,
    pub address: Option<String>,
    pub gateway: Option<String>,
}

/// The `nodes:` block sequence of a cluster.yaml text.
struct NodesBlock {
    /// 0-based line after which the new item goes (the last line of the last item).
    last_line: usize,
    /// Column of the items' `-`.
    dash_col: usize,
    /// Column of the first key of an item.
    key_col: usize,
    /// The first item writes its name in double quotes (what `cluster init` writes).
    quoted: bool,
}

/// Walks the parser's events: the top-level mapping's keys, and inside the value of
/// `nodes` (a sequence, depth 2) where its items start and where its content ends.
#[derive(Default)]
struct Finder {
    /// Container nesting; the top-level mapping is 1.
    depth: usize,
    /// The next node at depth 1 is a key (else a value).
    value_next: bool,
    key: Option<String>,
    inside: bool,
    found: bool,
    first_item: Option<Marker>,
    last: Option<Marker>,
}

impl MarkedEventReceiver for Finder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(v, ..) => {
                if self.inside {
                    if self.depth == 2 {
                        self.first_item.get_or_insert(mark);
                    }
                    self.last = Some(mark);
                } else if self.depth == 1 {
                    if !self.value_next {
                        self.key = Some(v);
                    }
                    self.value_next = !self.value_next;
                }
            }
            Event::Alias(_) => {
                if self.inside {
                    self.last = Some(mark);
                } else if self.depth == 1 {
                    self.value_next = !self.value_next;
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.inside {
                    if self.depth == 2 {
                        self.first_item.get_or_insert(mark);
                    }
                    self.last = Some(mark);
                } else if self.depth == 1 && self.value_next {
                    if self.key.as_deref() == Some("nodes") && matches!(ev, Event::SequenceStart(..)) {
                        self.inside = true;
                        self.found = true;
                    }
                    self.value_next = false;
                }
                self.depth += 1;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.depth = self.depth.saturating_sub(1);
                if self.inside && self.depth == 1 {
                    self.inside = false;
                }
            }
            _ => {}
        }
    }
}

fn find_nodes(src: &str) -> Result<NodesBlock, String> {
    let mut f = Finder::default();
    let mut p = Parser::new_from_str(src);
    p.load(&mut f, false).map_err(|e| format!("not YAML: {e}"))?;
    if !f.found {
        return Err("no top-level `nodes:` list".into());
    }
    let (Some(first), Some(last)) = (f.first_item, f.last) else {
        return Err("`nodes:` is empty; add the first node by hand".into());
    };
    let lines: Vec<&str> = src.lines().collect();
    // The first item's line: `  - name: x` gives the dash column; a flow list
    // (`nodes: [...]`) has none and is refused.
    let first_line = lines.get(first.line().saturating_sub(1)).copied().unwrap_or("");
    let dash_col = first_line
        .char_indices()
        .take_while(|(i, _)| *i < first.col())
        .find(|(i, c)| *c == '-' && first_line[..*i].trim().is_empty())
        .map(|(i, _)| i)
        .ok_or_else(|| {
            "`nodes:` is a flow list ([...]); write it as a block list (one `- name: …` per node) to use add-node"
                .to_string()
        })?;
    let rest = &first_line[dash_col + 1..];
    let key_col = dash_col + 1 + (rest.len() - rest.trim_start().len());
    let quoted = rest.trim_start().split_once(':').is_some_and(|(_, v)| v.trim_start().starts_with('"'));
    // yaml-rust2's markers count lines from 1; the last content of the list, then any
    // following lines that belong to it (a block scalar: indented deeper than the dash)
    let mut last_line = last.line().saturating_sub(1);
    while let Some(next) = lines.get(last_line + 1) {
        let indent = next.len() - next.trim_start().len();
        if next.trim().is_empty() || next.trim_start().starts_with('#') || indent <= dash_col {
            break;
        }
        last_line += 1;
    }
    Ok(NodesBlock { last_line, dash_col, key_col, quoted })
}

/// `src` with `n` appended to its `nodes:` list.
pub fn append(src: &str, n: &NewNode) -> Result<String, String> {
    let b = find_nodes(src)?;
    let pad = |c: usize| " ".repeat(c);
    // `- ` then the first key at the first item's key column; later keys align with it
    let key_indent = pad(b.key_col);
    // values quoted like the first item's (JSON strings are valid YAML double-quoted scalars)
    let v = |s: &str| if b.quoted { serde_json::Value::from(s).to_string() } else { s.to_string() };
    let mut item = format!("{}-{}name: {}\n", pad(b.dash_col), pad(b.key_col - b.dash_col - 1), v(&n.name));
    item.push_str(&format!("{key_indent}role: {}\n", v(n.role.as_str())));
    if let Some(a) = &n.address {
        item.push_str(&format!("{key_indent}address: {}\n", v(a)));
    }
    if let Some(g) = &n.gateway {
        item.push_str(&format!("{key_indent}gateway: {}\n", v(g)));
    }
    let mut out = String::with_capacity(src.len() + item.len());
    for (i, line) in src.split_inclusive('\n').enumerate() {
        out.push_str(line);
        if i == b.last_line {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&item);
        }
    }
    Ok(out)
}

/// Fill in the defaults for `a` against the loaded spec.
pub fn plan(l: &ClusterPlan, a: &AddNodeOptions) -> Result<NewNode, ClusterError> {
    let spec = &l.spec;
    let names: HashSet<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    let name = match &a.name {
        Some(n) => {
            if names.contains(n.as_str()) {
                return Err(ClusterError::Invalid(format!(
                    "{}: a node named {n:?} exists already",
                    l.origin
                )));
            }
            n.clone()
        }
        None => {
            let kind = if a.role == Role::ControlPlane { "cp" } else { "worker" };
            (1..)
                .map(|i| format!("{}-{kind}-{i}", spec.name))
                .find(|c| !names.contains(c.as_str()))
                .unwrap_or_default()
        }
    };
    let statics: Vec<(Cidr, Option<&String>)> = spec
        .nodes
        .iter()
        .filter_map(|n| {
            n.address.as_ref().and_then(|x| x.parse::<Cidr>().ok()).map(|c| (c, n.gateway.as_ref()))
        })
        .collect();
    let address = match &a.address {
        Some(x) => Some(x.clone()),
        None => {
            let net = match &spec.networking.node_cidr {
                Some(c) => c.parse::<Cidr>().ok().map(|c| c.network()),
                None => statics.first().map(|(c, _)| c.network()),
            };
            match net {
                Some(net) => Some(next_free(net, &statics, a.gateway.as_deref()).ok_or_else(|| {
                    ClusterError::Invalid(format!("no free address left in {net}; pass --address"))
                })?),
                None => None,
            }
        }
    };
    let gateway = match (&a.gateway, &address) {
        (Some(g), _) => Some(g.clone()),
        (None, Some(addr)) => {
            let c: Option<Cidr> = addr.parse().ok();
            statics
                .iter()
                .find(|(s, g)| g.is_some() && c.is_some_and(|c| c.network() == s.network()))
                .and_then(|(_, g)| g.cloned())
        }
        (None, None) => None,
    };
    Ok(NewNode { name, role: a.role, address, gateway })
}

/// The lowest host address from .11 up in an IPv4 `net` that no node, gateway or the
/// broadcast address uses (`cluster init` hands out .11, .12, …).
fn next_free(net: Cidr, used: &[(Cidr, Option<&String>)], gateway: Option<&str>) -> Option<String> {
    let IpAddr::V4(base) = net.addr else { return None };
    let taken: HashSet<IpAddr> = used
        .iter()
        .flat_map(|(c, g)| [Some(c.addr), g.and_then(|g| g.parse().ok())])
        .flatten()
        .chain(gateway.and_then(|g| g.parse().ok()))
        .collect();
    let size: u64 = 1u64 << (32 - u32::from(net.len.min(32)));
    let base = u32::from(base);
    (11..size.saturating_sub(1))
        .map(|h| IpAddr::V4(Ipv4Addr::from(base + h as u32)))
        .find(|ip| !taken.contains(ip))
        .map(|ip| format!("{ip}/{}", net.len))
}

/// Append the node `a` asks for to its cluster.yaml; returns the node's name.
pub fn add(a: &AddNodeOptions, rep: &Reporter) -> anyhow::Result<String> {
    let path = &a.cluster;
    let origin = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ClusterError::Io(format!("reading {origin}"), e))?;
    let l = super::plan::parse(&src, &origin)?;
    let n = plan(&l, a)?;
    let text = append(&src, &n).map_err(|e| ClusterError::Invalid(format!("{origin}: {e}")))?;
    // every rule of the spec again, on the new text, before anything is written
    let back = super::plan::parse(&text, &origin)?;
    let added = back.spec.nodes.iter().find(|x| x.name == n.name);
    if added.is_none_or(|x| x.role != n.role || x.address != n.address || x.gateway != n.gateway)
        || back.spec.nodes.len() != l.spec.nodes.len() + 1
    {
        return Err(ClusterError::Invalid(format!(
            "{origin}: the appended node did not parse back as written; add it by hand"
        ))
        .into());
    }
    pki::write_private(path, text.as_bytes())?;
    for w in &back.warnings {
        rep.warn(w.display(&back.origin));
    }
    let addr = n.address.as_deref().map(|a| format!(", {a}")).unwrap_or_else(|| ", DHCP".into());
    rep.status(format_args!(
        "added {} ({}{addr}) to {origin}; render its seed with `imgbuild cloud-init --cluster {origin} --node {}` \
         (first `imgbuild cluster token create` when the cluster's bootstrap token may have expired)",
        n.name,
        n.role.as_str(),
        n.name
    ));
    Ok(n.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, address: Option<&str>, gateway: Option<&str>) -> NewNode {
        NewNode {
            name: name.into(),
            role: Role::Worker,
            address: address.map(String::from),
            gateway: gateway.map(String::from),
        }
    }

    #[test]
    fn appends_after_the_last_item_and_keeps_comments() {
        let src = "name: demo # the name\nnodes:\n  # first\n  - name: a\n    role: control-plane\n    address: 10.0.0.11/24 # cp\n\n  - name: b\n    role: worker\n# Add-ons …\naddons:\n  enabled: true\n";
        let out = append(src, &node("c", Some("10.0.0.13/24"), Some("10.0.0.1"))).unwrap();
        assert_eq!(
            out,
            "name: demo # the name\nnodes:\n  # first\n  - name: a\n    role: control-plane\n    address: 10.0.0.11/24 # cp\n\n  - name: b\n    role: worker\n  - name: c\n    role: worker\n    address: 10.0.0.13/24\n    gateway: 10.0.0.1\n# Add-ons …\naddons:\n  enabled: true\n"
        );
    }

    #[test]
    fn follows_the_items_indentation_and_flow_items() {
        let src = "nodes:\n- {name: a, role: control-plane}\n-   name: b\n    role: worker\nx: 1";
        let out = append(src, &node("c", None, None)).unwrap();
        assert_eq!(out, "nodes:\n- {name: a, role: control-plane}\n-   name: b\n    role: worker\n- name: c\n  role: worker\nx: 1");
        let src = "nodes:\n    -   name: a\n        role: worker\n";
        let out = append(src, &node("c", None, None)).unwrap();
        assert!(out.ends_with("    -   name: c\n        role: worker\n"), "{out}");
        // quoted like `cluster init` writes it
        let src = "nodes:\n  - name: \"a\"\n    role: \"worker\"\n";
        let out = append(src, &node("c", Some("10.0.0.5/24"), None)).unwrap();
        assert!(
            out.ends_with("  - name: \"c\"\n    role: \"worker\"\n    address: \"10.0.0.5/24\"\n"),
            "{out}"
        );
        // a last node whose last value is a block scalar continues on later lines
        let src = "nodes:\n  - name: a\n    role: worker\n    note: |\n      x\n      y\nend: 1\n";
        let out = append(src, &node("c", None, None)).unwrap();
        assert!(out.contains("      y\n  - name: c\n    role: worker\nend: 1\n"), "{out}");
    }

    #[test]
    fn refuses_what_it_cannot_edit_in_place() {
        assert!(append("nodes: [{name: a, role: worker}]\n", &node("c", None, None))
            .unwrap_err()
            .contains("flow list"));
        assert!(append("nodes: []\n", &node("c", None, None)).unwrap_err().contains("empty"));
        assert!(append("name: x\n", &node("c", None, None)).unwrap_err().contains("no top-level"));
        // `nodes` nested elsewhere is not the list
        assert!(append("x:\n  nodes:\n    - name: a\n", &node("c", None, None))
            .unwrap_err()
            .contains("no top-level"));
    }

    #[test]
    fn next_free_address_skips_nodes_and_gateways() {
        let net: Cidr = "10.0.0.0/24".parse().unwrap();
        let used: Vec<(Cidr, Option<&String>)> =
            vec![("10.0.0.11/24".parse().unwrap(), None), ("10.0.0.12/24".parse().unwrap(), None)];
        assert_eq!(next_free(net, &used, Some("10.0.0.13")).as_deref(), Some("10.0.0.14/24"));
        let tiny: Cidr = "10.0.0.0/29".parse().unwrap();
        assert_eq!(next_free(tiny, &[], None), None);
    }
}
