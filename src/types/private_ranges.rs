//! The address ranges the node firewall admits to the cluster ports when the cluster's
//! own networks are not known: the image's defaults (layer) and what user-data sends when
//! some node uses DHCP and no node network is declared (cloudinit).

/// RFC 1918 private ranges and RFC 6598 shared address space (used by some clouds and
/// CNIs).
pub const V4: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"];
/// IPv6 unique local addresses.
pub const V6: &[&str] = &["fc00::/7"];
