//! Debian version comparison, the algorithm of dpkg's `verrevcmp` (deb-version(7)):
//! `[epoch:]upstream[-revision]`, compared epoch first (numerically), then upstream and
//! revision alternating non-digit runs (`~` sorts before everything, even the end;
//! letters before non-letters) and digit runs (numerically). And the package requests
//! a recipe lists (`name` or `name=version`).

use std::cmp::Ordering;

/// A parsed Debian version. Equality is by comparison, so `1.0` == `0:1.0`.
#[derive(Debug, Clone)]
pub struct Version {
    pub epoch: u64,
    pub upstream: String,
    pub revision: String,
}

impl Version {
    /// Parse a version string; rejects empty upstream parts, bad epochs and spaces.
    pub fn parse(s: &str) -> Result<Version, String> {
        let s = s.trim();
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(format!("{s:?} is not a Debian version"));
        }
        let (epoch, rest) = match s.split_once(':') {
            Some((e, r)) => {
                let e = e.parse::<u64>().map_err(|_| format!("{s:?}: epoch {e:?} is not a number"))?;
                (e, r)
            }
            None => (0, s),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() || !upstream.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("{s:?}: upstream version must start with a digit"));
        }
        Ok(Version { epoch, upstream: upstream.to_string(), revision: revision.to_string() })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.epoch > 0 {
            write!(f, "{}:", self.epoch)?;
        }
        f.write_str(&self.upstream)?;
        if !self.revision.is_empty() {
            write!(f, "-{}", self.revision)?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, o: &Self) -> Ordering {
        self.epoch
            .cmp(&o.epoch)
            .then_with(|| verrevcmp(&self.upstream, &o.upstream))
            .then_with(|| verrevcmp(&self.revision, &o.revision))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Version {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Version {}

/// dpkg's character weight: `~` lowest, then end of string, letters, other symbols.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, compared character by character by weight.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        // Digit run, compared numerically without overflow (skip zeros, then length, then digits).
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        let c = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

/// A version relation operator of a dependency (`<<`, `<=`, `=`, `>=`, `>>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            // `<` and `>` are obsolete spellings meaning `<=` and `>=`.
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }

    /// Does `have` satisfy `have OP want`?
    pub fn holds(self, have: &Version, want: &Version) -> bool {
        let c = have.cmp(want);
        match self {
            Op::Lt => c == Ordering::Less,
            Op::Le => c != Ordering::Greater,
            Op::Eq => c == Ordering::Equal,
            Op::Ge => c != Ordering::Less,
            Op::Gt => c == Ordering::Greater,
        }
    }
}

/// A requested package: `name` or `name=version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRequest {
    pub name: String,
    pub version: Option<Version>,
}

impl PackageRequest {
    pub fn parse(s: &str) -> Result<PackageRequest, String> {
        let (name, v) = match s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(Version::parse(v)?)),
            None => (s.trim(), None),
        };
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        {
            return Err(format!("{name:?} is not a Debian package name"));
        }
        Ok(PackageRequest { name: name.to_string(), version: v })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_syntax() {
        let r = PackageRequest::parse("conntrack=1:1.4.8-1ubuntu1").unwrap();
        assert_eq!(r.name, "conntrack");
        assert_eq!(r.version.unwrap().to_string(), "1:1.4.8-1ubuntu1");
        assert!(PackageRequest::parse("Bad").is_err());
        assert!(PackageRequest::parse("a=").is_err());
    }

    fn cmp(a: &str, b: &str) -> Ordering {
        Version::parse(a).unwrap().cmp(&Version::parse(b).unwrap())
    }

    #[test]
    fn dpkg_ordering() {
        use Ordering::*;
        // Cases from dpkg's own test suite (t-version.c) and deb-version(7).
        let cases = [
            ("1.0", "1.0", Equal),
            ("0:1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1:0.1", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0a", Less),
            ("1.0a", "1.0+", Less),
            ("1.0-1", "1.0-1ubuntu1", Less),
            ("1.0-1ubuntu1", "1.0-2", Less),
            ("1.8.0.0-4build3", "1.8.0.0-4ubuntu0.1", Less),
            ("1:1.4.8-1ubuntu1", "1.4.9", Greater),
            ("1.0.010", "1.0.9", Greater),
            ("1.0.0010", "1.0.10", Equal),
            ("2.38-1", "2.34", Greater),
            ("1.0.3-4~", "1.0.3-4", Less),
            ("1.0.5-2build1", "1.0.3-4~", Greater),
            ("99999999999999999999999", "99999999999999999999998", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(cmp(a, b), want, "{a} vs {b}");
            assert_eq!(cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn parse_and_display() {
        let v = Version::parse("1:6.7-1build1").unwrap();
        assert_eq!((v.epoch, v.upstream.as_str(), v.revision.as_str()), (1, "6.7", "1build1"));
        assert_eq!(v.to_string(), "1:6.7-1build1");
        assert_eq!(Version::parse("2.0-a-b").unwrap().upstream, "2.0-a");
        assert!(Version::parse("").is_err());
        assert!(Version::parse("x:1").is_err());
        assert!(Version::parse("a1").is_err());
        assert!(Op::Ge.holds(&Version::parse("2.39").unwrap(), &Version::parse("2.38").unwrap()));
        assert!(!Op::Lt.holds(&Version::parse("1").unwrap(), &Version::parse("1").unwrap()));
    }
}
