//! The node firewall: `/etc/nftables.conf`, one nftables table (`inet imgbuild`)
//! filtering only the host's *input* hook, generated per role from the Kubernetes
//! port matrix (kubernetes.io "Ports and Protocols") plus the CNI overlay ports.
//!
//! Why only input: pod-to-pod and service traffic is forwarded or DNATed by
//! kube-proxy/the CNI; a drop policy on forward would break it. The table never
//! touches other tables (no `flush ruleset`), so reloading it leaves kube-proxy's
//! and the CNI's rules alone.
//!
//! The node network is unknown when the image is built, so "the cluster" is the
//! named set `cluster_v4`/`cluster_v6`, RFC 1918 + RFC 6598 (and IPv6 ULA) by
//! default. The cluster's own networks arrive as data in user-data
//! (`/etc/imgbuild/cluster-networks`); the baked loader
//! (`image-files/common/usr/libexec/imgbuild/firewall`) turns them into a set
//! replacement under [`RUN_DIR`], which this file includes, and loads both in one
//! transaction. Files in `/etc/nftables.d/*.nft` are included last (operator rules).

use crate::types::Role;

/// Who may reach a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Any address: SSH, the API server, NodePorts.
    Anywhere,
    /// Only addresses in the `cluster_v4`/`cluster_v6` sets.
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One row of the port matrix.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub proto: Proto,
    /// `"22"` or a range `"30000-32767"`.
    pub ports: &'static str,
    pub from: Source,
    pub what: &'static str,
}

const fn r(proto: Proto, ports: &'static str, from: Source, what: &'static str) -> Rule {
    Rule { proto, ports, from, what }
}

use Proto::{Tcp, Udp};
use Source::{Anywhere, Cluster};

/// Both roles.
const COMMON: &[Rule] = &[
    r(Tcp, "22", Anywhere, "SSH"),
    r(Tcp, "10250", Cluster, "kubelet API"),
    // CNI data and control planes.
    r(Udp, "8472", Cluster, "VXLAN (Cilium, Flannel)"),
    r(Udp, "4789", Cluster, "VXLAN (Calico)"),
    r(Udp, "6081", Cluster, "Geneve (Cilium)"),
    r(Tcp, "4240", Cluster, "Cilium health checks"),
    r(Tcp, "4244", Cluster, "Hubble server (Cilium)"),
    r(Udp, "51871", Cluster, "WireGuard (Cilium)"),
    r(Udp, "51820-51821", Cluster, "WireGuard (Calico, Flannel)"),
    r(Tcp, "179", Cluster, "BGP (Calico)"),
    r(Tcp, "5473", Cluster, "Typha (Calico)"),
];

/// Control plane only.
const CONTROL_PLANE: &[Rule] = &[
    r(Tcp, "6443", Anywhere, "Kubernetes API server"),
    r(Tcp, "2379-2380", Cluster, "etcd client and peer"),
    r(Tcp, "10257", Cluster, "kube-controller-manager"),
    r(Tcp, "10259", Cluster, "kube-scheduler"),
];

/// Worker only.
const WORKER: &[Rule] = &[
    r(Tcp, "10256", Cluster, "kube-proxy health"),
    r(Tcp, "30000-32767", Anywhere, "NodePort Services"),
    r(Udp, "30000-32767", Anywhere, "NodePort Services"),
];

/// The port matrix for `role`.
pub fn rules(role: Role) -> Vec<Rule> {
    let extra = match role {
        Role::ControlPlane => CONTROL_PLANE,
        Role::Worker => WORKER,
    };
    COMMON.iter().chain(extra).copied().collect()
}

/// Default members of the cluster network sets (see `types::private_ranges`).
pub use crate::types::private_ranges::{V4 as DEFAULT_CLUSTER_V4, V6 as DEFAULT_CLUSTER_V6};

/// Where an operator drops extra rules (included last).
pub const INCLUDE_DIR: &str = "/etc/nftables.d";
/// Where the firewall loader writes the cluster set replacement (included before
/// [`INCLUDE_DIR`], so operator files can still add to the sets).
pub const RUN_DIR: &str = "/run/imgbuild/firewall";

fn set_of(rules: &[Rule], proto: Proto, from: Source) -> String {
    let v: Vec<&str> = rules.iter().filter(|x| x.proto == proto && x.from == from).map(|x| x.ports).collect();
    v.join(", ")
}

/// Render `/etc/nftables.conf` for `role`.
pub fn nftables_conf(role: Role) -> String {
    let rules = rules(role);
    let mut comments = String::new();
    for x in &rules {
        let proto = if x.proto == Tcp { "tcp" } else { "udp" };
        let from = if x.from == Anywhere { "anywhere" } else { "cluster" };
        comments.push_str(&format!("#   {proto:<3} {:<11} {from:<8} {}\n", x.ports, x.what));
    }
    let sets = [
        ("public_tcp", Tcp, Anywhere),
        ("public_udp", Udp, Anywhere),
        ("cluster_tcp", Tcp, Cluster),
        ("cluster_udp", Udp, Cluster),
    ];
    let mut port_sets = String::new();
    for (name, proto, from) in sets {
        let elems = set_of(&rules, proto, from);
        let elements =
            if elems.is_empty() { String::new() } else { format!("\n\t\telements = {{ {elems} }}") };
        port_sets.push_str(&format!(
            "\tset {name} {{\n\t\ttype inet_service\n\t\tflags interval{elements}\n\t}}\n\n"
        ));
    }
    format!(
        r#"#!/usr/sbin/nft -f
# Node firewall for the {role} role (written by imgbuild; see docs/hardening.md).
# Loaded by imgbuild-firewall.service. Only the host's input hook is filtered:
# forwarded pod and service traffic is left to kube-proxy and the CNI.
#
# Port matrix (proto, ports, allowed from, purpose):
{comments}#
# "cluster" means the sets cluster_v4/cluster_v6 below. Their elements here are
# defaults (private ranges): imgbuild-firewall.service replaces them with the
# cluster's networks from /etc/imgbuild/cluster-networks (written by cloud-init)
# through {RUN_DIR}/*.nft. Extra rules go in {INCLUDE_DIR}/*.nft, e.g.
#   add rule inet imgbuild input tcp dport 9100 ip saddr 10.20.0.5 accept
# then `systemctl reload imgbuild-firewall`.

# Replace only this table, atomically; never `flush ruleset` (kube-proxy and the
# CNI keep their own tables).
table inet imgbuild
delete table inet imgbuild

table inet imgbuild {{
	# auto-merge: the cluster's networks may contain each other (an endpoint
	# inside the node network)
	set cluster_v4 {{
		type ipv4_addr
		flags interval
		auto-merge
		elements = {{ {v4} }}
	}}

	set cluster_v6 {{
		type ipv6_addr
		flags interval
		auto-merge
		elements = {{ {v6} }}
	}}

{port_sets}	chain input {{
		type filter hook input priority filter; policy drop;

		iif "lo" accept
		ct state established,related accept
		ct state invalid drop

		# Diagnostics and path-MTU discovery; IPv6 neighbour discovery and router
		# advertisements (the cloud's IPv6 depends on them).
		ip protocol icmp icmp type {{ echo-request, destination-unreachable, time-exceeded, parameter-problem }} accept
		ip6 nexthdr ipv6-icmp icmpv6 type {{ echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query }} accept

		# DHCP replies (broadcast offers are not "established").
		udp sport 67 udp dport 68 accept
		ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept

		tcp dport @public_tcp accept
		udp dport @public_udp accept

		ip saddr @cluster_v4 tcp dport @cluster_tcp accept
		ip saddr @cluster_v4 udp dport @cluster_udp accept
		ip6 saddr @cluster_v6 tcp dport @cluster_tcp accept
		ip6 saddr @cluster_v6 udp dport @cluster_udp accept
		# Calico IP-in-IP encapsulation.
		ip saddr @cluster_v4 ip protocol ipip accept
	}}
}}

# The cluster's networks (no file: the defaults above stay), then operator rules.
include "{RUN_DIR}/*.nft"
include "{INCLUDE_DIR}/*.nft"
"#,
        role = role.as_str(),
        v4 = DEFAULT_CLUSTER_V4.join(", "),
        v6 = DEFAULT_CLUSTER_V6.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_port_matrix() {
        let cp = nftables_conf(Role::ControlPlane);
        let w = nftables_conf(Role::Worker);
        assert!(cp.contains(
            "set public_tcp {\n\t\ttype inet_service\n\t\tflags interval\n\t\telements = { 22, 6443 }"
        ));
        assert!(cp.contains("2379-2380") && cp.contains("10257") && cp.contains("10259"));
        assert!(!cp.contains("30000-32767"));
        assert!(w.contains("elements = { 22, 30000-32767 }"), "{w}");
        assert!(w.contains(
            "set public_udp {\n\t\ttype inet_service\n\t\tflags interval\n\t\telements = { 30000-32767 }"
        ));
        assert!(!w.contains("6443") && !w.contains("2379"));
        assert!(w.contains("10256"));
        for c in [&cp, &w] {
            let code: Vec<&str> = c.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
            assert!(code.iter().any(|l| l.contains("hook input priority filter; policy drop;")));
            // Never wipe other tables; never filter forwarded pod traffic.
            assert!(!code.iter().any(|l| l.contains("flush ruleset") || l.contains("hook forward")));
            assert!(c.contains("10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10"));
            let run = c.find("include \"/run/imgbuild/firewall/*.nft\"").unwrap();
            assert!(run < c.find("include \"/etc/nftables.d/*.nft\"").unwrap());
        }
    }
}
