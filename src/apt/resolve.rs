//! Dependency resolution: the requested packages plus the closure of their
//! `Pre-Depends`/`Depends`, minus whatever the base image's dpkg status already
//! satisfies. For each dependency group the first satisfiable alternative wins (the
//! apt rule); candidates are the highest version satisfying the constraint. Conflicts
//! and Breaks are not evaluated: the recipe lists leaf tools, not replacements.

use std::collections::BTreeMap;

use super::index::{by_name, Entry};
use super::relation::{self, Alt};
use super::{control, AptError};
use crate::types::debian::Version;
use crate::types::PackageRequest as Request;

/// What the base image has installed (from `/var/lib/dpkg/status`).
#[derive(Debug, Default)]
pub struct BasePackages {
    pub versions: BTreeMap<String, Version>,
    /// Virtual name → (provider, provided version).
    pub provides: BTreeMap<String, Vec<(String, Option<Version>)>>,
}

impl BasePackages {
    /// Parse a dpkg status file; only packages in state `installed` count.
    pub fn parse(status: &str, arch: &str) -> Result<BasePackages, AptError> {
        let fmt = |msg: String| AptError::Format { what: "base /var/lib/dpkg/status".into(), msg };
        let mut out = BasePackages::default();
        for st in control::parse(status, "status").map_err(fmt)? {
            let (Some(name), Some(status)) = (st.get("Package"), st.get("Status")) else { continue };
            if status.split_whitespace().nth(2) != Some("installed") {
                continue;
            }
            let a = st.get("Architecture").unwrap_or("all");
            if a != arch && a != "all" {
                continue;
            }
            let Some(v) = st.get("Version") else { continue };
            let v = Version::parse(v).map_err(|e| fmt(format!("{name}: {e}")))?;
            for p in relation::parse(st.get("Provides").unwrap_or("")).map_err(fmt)?.into_iter().flatten() {
                let pv = p.constraint.map(|(_, v)| v);
                out.provides.entry(p.name).or_default().push((name.to_string(), pv));
            }
            out.versions.insert(name.to_string(), v);
        }
        Ok(out)
    }

    /// Is `alt` satisfied by the base? (A versioned dependency needs a real package or a
    /// versioned Provides, as in dpkg.)
    fn satisfies(&self, alt: &Alt) -> bool {
        let ok = |v: &Version| alt.constraint.as_ref().is_none_or(|(op, want)| op.holds(v, want));
        if self.versions.get(&alt.name).is_some_and(ok) {
            return true;
        }
        self.provides.get(&alt.name).is_some_and(|ps| {
            ps.iter().any(|(_, pv)| match (&alt.constraint, pv) {
                (None, _) => true,
                (Some((op, want)), Some(v)) => op.holds(v, want),
                (Some(_), None) => false,
            })
        })
    }
}

/// The result: packages to install, sorted by name.
#[derive(Debug)]
pub struct Resolution<'a> {
    pub install: Vec<(&'a Entry, bool)>,
    /// Requested packages the base already has at a satisfying version.
    pub already: Vec<String>,
}

/// Resolve `requests` for `arch` against `entries` minus `base`.
pub fn resolve<'a>(
    requests: &[Request],
    entries: &'a [Entry],
    base: &BasePackages,
    arch: &str,
) -> Result<Resolution<'a>, AptError> {
    let names = by_name(entries);
    let mut providers: BTreeMap<&str, Vec<(&Entry, Option<&Version>)>> = BTreeMap::new();
    for e in entries {
        for p in &e.provides {
            providers.entry(p.name.as_str()).or_default().push((e, p.constraint.as_ref().map(|c| &c.1)));
        }
    }
    let missing = |name: &str, msg: String| AptError::MissingPackage {
        name: name.to_string(),
        arch: arch.to_string(),
        msg,
    };
    let mut chosen: BTreeMap<String, (&Entry, bool)> = BTreeMap::new();
    let mut queue: Vec<&Entry> = Vec::new();
    let mut already = Vec::new();
    for r in requests {
        let cands = names.get(r.name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let pick = match &r.version {
            Some(v) => cands.iter().find(|e| &e.version == v),
            None => cands.first(),
        };
        let Some(e) = pick else {
            let have: Vec<_> = cands.iter().map(|e| e.version.to_string()).collect();
            return Err(missing(
                &r.name,
                match (&r.version, have.is_empty()) {
                    (_, true) => "not found in the archive's Packages indexes".into(),
                    (Some(v), false) => format!("version {v} not in the archive (has: {})", have.join(", ")),
                    (None, false) => "no candidate".into(),
                },
            ));
        };
        // Already in the base at this (or, unpinned, any) version: nothing to do.
        let in_base = base.versions.get(&r.name).is_some_and(|b| r.version.as_ref().is_none_or(|v| v == b));
        if in_base {
            already.push(r.name.clone());
            continue;
        }
        chosen.insert(e.name.clone(), (e, true));
        queue.push(e);
    }
    while let Some(e) = queue.pop() {
        'group: for group in &e.depends {
            // Satisfied by the base or by something already chosen?
            for alt in group {
                if base.satisfies(alt) || chosen_satisfies(&chosen, alt) {
                    continue 'group;
                }
            }
            // First satisfiable alternative from the archive.
            for alt in group {
                let ok = |v: &Version| alt.constraint.as_ref().is_none_or(|(op, want)| op.holds(v, want));
                let real = names.get(alt.name.as_str()).and_then(|c| c.iter().find(|x| ok(&x.version)));
                let virt = || {
                    providers.get(alt.name.as_str()).and_then(|ps| {
                        ps.iter()
                            .filter(|(_, pv)| alt.constraint.is_none() || pv.is_some_and(&ok))
                            .map(|(p, _)| *p)
                            .min_by(|a, b| a.name.cmp(&b.name).then(b.version.cmp(&a.version)))
                    })
                };
                let Some(pick) = real.copied().or_else(virt) else { continue };
                if let Some((have, _)) = chosen.get(&pick.name) {
                    return Err(missing(
                        &pick.name,
                        format!(
                            "{} {} needs {alt}, but {} {} was already chosen",
                            e.name, e.version, have.name, have.version
                        ),
                    ));
                }
                chosen.insert(pick.name.clone(), (pick, false));
                queue.push(pick);
                continue 'group;
            }
            let want: Vec<_> = group.iter().map(|a| a.to_string()).collect();
            return Err(missing(
                &group[0].name,
                format!(
                    "needed by {} {} as `{}`: not in the base image and not satisfiable from the archive",
                    e.name,
                    e.version,
                    want.join(" | ")
                ),
            ));
        }
    }
    let install = chosen.into_values().collect();
    Ok(Resolution { install, already })
}

fn chosen_satisfies(chosen: &BTreeMap<String, (&Entry, bool)>, alt: &Alt) -> bool {
    let ok = |v: &Version| alt.constraint.as_ref().is_none_or(|(op, want)| op.holds(v, want));
    if chosen.get(&alt.name).is_some_and(|(e, _)| ok(&e.version)) {
        return true;
    }
    chosen.values().any(|(e, _)| {
        e.provides.iter().any(|p| {
            p.name == alt.name
                && (alt.constraint.is_none() || p.constraint.as_ref().is_some_and(|(_, v)| ok(v)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Sha256;

    fn entry(name: &str, v: &str, deps: &str, provides: &str) -> Entry {
        Entry {
            name: name.into(),
            version: Version::parse(v).unwrap(),
            architecture: "amd64".into(),
            url: format!("http://x/{name}_{v}.deb"),
            size: 1,
            sha256: Sha256::of(name.as_bytes()),
            depends: relation::parse(deps).unwrap(),
            provides: relation::parse(provides).unwrap().into_iter().flatten().collect(),
        }
    }

    fn req(s: &str) -> Request {
        Request::parse(s).unwrap()
    }

    #[test]
    fn closure_minus_base() {
        let entries = vec![
            entry("tool", "1", "libc6 (>= 2.34), libfoo (>= 1.0~) | libbar, mta", ""),
            entry("libfoo", "0.9", "", ""),
            entry("libbar", "2", "libc6", ""),
            entry("libc6", "2.39", "", ""),
            entry("postfix", "3", "", "mta"),
            entry("exim", "4", "", "mta"),
        ];
        let status =
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.39-0ubuntu8\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n";
        let base = BasePackages::parse(status, "amd64").unwrap();
        let r = resolve(&[req("tool")], &entries, &base, "amd64").unwrap();
        let got: Vec<_> = r.install.iter().map(|(e, req)| (e.name.as_str(), *req)).collect();
        // libc6 is in the base; libfoo 0.9 is too old so libbar is taken; exim is the
        // first mta provider by name.
        assert_eq!(got, [("exim", false), ("libbar", false), ("tool", true)]);
    }

    #[test]
    fn errors_name_the_package() {
        let entries = vec![entry("tool", "1", "libgone (>= 2)", "")];
        let base = BasePackages::default();
        let e = resolve(&[req("nosuch")], &entries, &base, "amd64").unwrap_err();
        assert!(matches!(&e, AptError::MissingPackage { name, .. } if name == "nosuch"), "{e}");
        let e = resolve(&[req("tool=2")], &entries, &base, "amd64").unwrap_err().to_string();
        assert!(e.contains("tool") && e.contains("has: 1"), "{e}");
        let e = resolve(&[req("tool")], &entries, &base, "amd64").unwrap_err().to_string();
        assert!(e.contains("libgone") && e.contains("needed by tool"), "{e}");
    }

    #[test]
    fn requested_package_in_base_is_skipped_and_versioned_provides_count() {
        let entries = vec![entry("tool", "1", "virt (>= 2)", ""), entry("v", "1", "", "virt (= 3)")];
        let base = BasePackages::parse(
            "Package: tool\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n",
            "amd64",
        )
        .unwrap();
        let r = resolve(&[req("tool")], &entries, &base, "amd64").unwrap();
        assert!(r.install.is_empty());
        assert_eq!(r.already, ["tool"]);
        let r = resolve(&[req("tool")], &entries, &BasePackages::default(), "amd64").unwrap();
        assert_eq!(r.install.len(), 2);
    }
}
