//! Just enough IP prefix arithmetic for the spec checks (overlaps, containment).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP prefix like `10.244.0.0/16`; host bits may be set (`10.0.0.11/24` is a
/// node address with its network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl Cidr {
    fn mask(&self) -> u128 {
        let (_, width) = bits(self.addr);
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
        let addr = if self.is_v4() { IpAddr::V4((lo as u32).into()) } else { IpAddr::V6(lo.into()) };
        Cidr { addr, len: self.len }
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
}
