//! Typed network values of the cluster spec: IP prefixes (overlaps, containment,
//! network and broadcast addresses), the API endpoint, MAC addresses and interface
//! names, each parsed once and never handled as a string again.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP prefix like `10.244.0.0/16`; host bits may be set (`10.0.0.11/24` is a
/// node address with its network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

fn bits(a: IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(v) => (u32::from(v) as u128, 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn from_bits(v4: bool, b: u128) -> IpAddr {
    if v4 {
        IpAddr::V4((b as u32).into())
    } else {
        IpAddr::V6(b.into())
    }
}

impl Cidr {
    /// One address as a prefix of its own (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    fn width(&self) -> u8 {
        bits(self.addr).1
    }

    fn mask(&self) -> u128 {
        let width = self.width();
        if self.len == 0 {
            0
        } else {
            let full = if width == 32 { u32::MAX as u128 } else { u128::MAX };
            (full >> (width - self.len)) << (width - self.len)
        }
    }

    fn range(&self) -> (u128, u128) {
        let (b, width) = bits(self.addr);
        let full = if width == 32 { u32::MAX as u128 } else { u128::MAX };
        let lo = b & self.mask();
        (lo, lo | (full & !self.mask()))
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The network itself (host bits cleared).
    pub fn network(&self) -> Cidr {
        let (lo, _) = self.range();
        Cidr { addr: from_bits(self.is_v4(), lo), len: self.len }
    }

    /// Whether this is a single address (`/32`, `/128`).
    pub fn is_host(&self) -> bool {
        self.len == self.width()
    }

    /// The IPv4 broadcast address of a network that has one (prefix /30 or shorter:
    /// /31 point-to-point links and /32 hosts have none, RFC 3021).
    pub fn broadcast(&self) -> Option<IpAddr> {
        if !self.is_v4() || self.len > 30 {
            return None;
        }
        Some(from_bits(true, self.range().1))
    }

    /// The network address as a host address: unusable for a node where the network
    /// has more than two addresses (IPv4 /30 or shorter; IPv6 subnet-router anycast
    /// for /127 or shorter, RFC 4291 §2.6.1).
    pub fn network_addr_reserved(&self) -> Option<IpAddr> {
        let reserved = if self.is_v4() { self.len <= 30 } else { self.len <= 126 };
        reserved.then(|| from_bits(self.is_v4(), self.range().0))
    }

    pub fn overlaps(&self, o: &Cidr) -> bool {
        if self.is_v4() != o.is_v4() {
            return false;
        }
        let (a0, a1) = self.range();
        let (b0, b1) = o.range();
        a0 <= b1 && b0 <= a1
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.is_v4() != ip.is_ipv4() {
            return false;
        }
        let (lo, hi) = self.range();
        let (b, _) = bits(ip);
        lo <= b && b <= hi
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("{s:?} is not in CIDR notation (ADDR/LEN)"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
        let len: u8 = l.parse().map_err(|_| format!("{l:?} is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max}"));
        }
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why an address cannot be where clients or nodes send packets to: unspecified
/// (`0.0.0.0`, `::`), loopback, multicast or the limited broadcast address.
pub fn unroutable(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v) if v.is_broadcast() => Some("the broadcast address"),
        _ => None,
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a node name and hostname.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name of lowercase DNS-1123 labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A host name as resolvers and NTP clients take it (letters of either case,
/// digits, `-`; labels of at most 63; an optional trailing dot).
pub fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The host part of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(n) => f.write_str(n),
        }
    }
}

/// The API endpoint `HOST[:PORT]` / `[V6]:PORT` (port 6443 when omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host,
    pub port: u16,
}

impl Endpoint {
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Dns(_) => None,
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or("unterminated [IPv6] in endpoint")?;
            (
                h,
                match p {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| format!("{p:?} after ] is not :PORT"))?),
                },
            )
        } else if s.matches(':').count() > 1 {
            (s, None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            None => 6443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("{p:?} is not a TCP port")),
            },
        };
        let host = match host.parse::<IpAddr>() {
            // (loopback stays possible: a single-node cluster may use its own 127.0.0.1)
            Ok(ip) => {
                if let Some(why) = unroutable(ip).filter(|_| !ip.is_loopback()) {
                    return Err(format!("{ip} is {why}: nodes and clients cannot reach the API there"));
                }
                Host::Ip(ip)
            }
            Err(_) if is_dns1123_subdomain(host) => Host::Dns(host.to_string()),
            Err(_) => return Err(format!("{host:?} is neither an IP address nor a DNS name")),
        };
        Ok(Endpoint { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Host::Ip(IpAddr::V6(v)) => write!(f, "[{v}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// An Ethernet MAC address, shown lowercase with colons (as netplan and the kernel do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address like 52:54:00:12:34:56");
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 || s.len() != 17 || s.contains(':') == s.contains('-') {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (o, p) in b.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if b[0] & 1 == 1 {
            return Err(format!("{s:?} is a multicast MAC address, never a NIC's own"));
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

/// A network interface name as the kernel accepts it (at most 15 bytes; no `/`,
/// `:` or whitespace; not `.` or `..`), and no glob: a pattern may match several
/// NICs, and exactly one NIC must get a node's static address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.bytes().any(|b| b"*?[]".contains(&b)) {
            return Err(format!(
                "{s:?} is a pattern that may match several NICs; name one interface, or give its MAC address"
            ));
        }
        let ok = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
        if ok {
            Ok(IfName(s.to_string()))
        } else {
            Err(format!("{s:?} is not an interface name (at most 15 of a-z, A-Z, 0-9, '-', '_', '.', '@')"))
        }
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which NIC of a VM: by interface name, or by MAC address (which the hypervisor
/// assigns and which, unlike a name, does not depend on the PCI slot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Nic {
    Name(IfName),
    Mac(MacAddr),
}

impl FromStr for Nic {
    type Err = String;
    /// A MAC address is 17 characters, an interface name at most 15: the two never
    /// collide.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() == 17 && s.bytes().filter(|b| *b == b':' || *b == b'-').count() == 5 {
            return s.parse().map(Nic::Mac);
        }
        s.parse().map(Nic::Name)
    }
}

impl fmt::Display for Nic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Nic::Name(n) => write!(f, "{n}"),
            Nic::Mac(m) => write!(f, "{m}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_and_contain() {
        assert!(c("10.96.0.0/12").overlaps(&c("10.100.0.0/16")));
        assert!(!c("10.96.0.0/12").overlaps(&c("10.244.0.0/16")));
        assert!(c("10.0.0.11/24").contains("10.0.0.200".parse().unwrap()));
        assert!(!c("10.0.0.11/24").contains("10.0.1.1".parse().unwrap()));
        assert_eq!(c("10.0.0.11/24").network().to_string(), "10.0.0.0/24");
        assert!(c("fd00::/64").overlaps(&c("fd00::1/128")));
        assert!(!c("fd00::/64").overlaps(&c("10.0.0.0/8")));
        assert!(c("0.0.0.0/0").overlaps(&c("192.168.0.0/16")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
    }

    #[test]
    fn network_and_broadcast_addresses() {
        assert_eq!(c("10.0.0.11/24").broadcast(), Some("10.0.0.255".parse().unwrap()));
        assert_eq!(c("10.0.0.11/24").network_addr_reserved(), Some("10.0.0.0".parse().unwrap()));
        assert_eq!(c("10.0.0.1/31").broadcast(), None);
        assert_eq!(c("10.0.0.1/31").network_addr_reserved(), None);
        assert_eq!(c("10.0.0.1/32").broadcast(), None);
        assert_eq!(c("fd00::5/64").network_addr_reserved(), Some("fd00::".parse().unwrap()));
        assert_eq!(c("fd00::5/64").broadcast(), None);
        assert!(Cidr::host("10.1.2.3".parse().unwrap()).is_host());
    }

    #[test]
    fn endpoints() {
        let e: Endpoint = "k8s.example.com".parse().unwrap();
        assert_eq!((e.host.to_string(), e.port), ("k8s.example.com".into(), 6443));
        let e: Endpoint = "[fd00::1]:443".parse().unwrap();
        assert_eq!((e.ip(), e.to_string()), (Some("fd00::1".parse().unwrap()), "[fd00::1]:443".into()));
        assert_eq!("fd00::1".parse::<Endpoint>().unwrap().to_string(), "[fd00::1]:6443");
        for bad in ["a b:1", "x:0", "0.0.0.0:6443", "[::]:6443", "224.0.0.1", "255.255.255.255"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} accepted");
        }
        assert!("0.0.0.0".parse::<Endpoint>().unwrap_err().contains("unspecified"));
        // a single-node cluster may name its own loopback address
        assert!("127.0.0.1:6443".parse::<Endpoint>().is_ok());
    }

    #[test]
    fn nics() {
        assert_eq!("52:54:00:AB:cd:01".parse::<Nic>().unwrap().to_string(), "52:54:00:ab:cd:01");
        assert_eq!("52-54-00-ab-cd-01".parse::<Nic>().unwrap().to_string(), "52:54:00:ab:cd:01");
        assert!(matches!("ens3".parse::<Nic>().unwrap(), Nic::Name(_)));
        assert!(matches!("enp0s31f6".parse::<Nic>().unwrap(), Nic::Name(_)));
        for bad in
            ["e*", "eth[01]", "", "a/b", "eth0:1", "sixteen-chars-xx", "..", "01:00:5e:00:00:01", "52:54:00"]
        {
            assert!(bad.parse::<Nic>().is_err(), "{bad:?} accepted");
        }
        assert!("e*".parse::<Nic>().unwrap_err().contains("several NICs"));
    }

    #[test]
    fn hostnames() {
        assert!(is_hostname("ntp.ubuntu.com") && is_hostname("Time.Example.") && is_hostname("10.0.0.1"));
        assert!(!is_hostname("a b") && !is_hostname("-x.com") && !is_hostname("") && !is_hostname("a..b"));
    }
}
