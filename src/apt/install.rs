//! Installing `.deb` files into the [`Layer`] the way dpkg would: the data files with
//! their owners and modes, `/var/lib/dpkg/status` (base stanzas + one per new package,
//! sorted by name, no duplicates), `/var/lib/dpkg/info/<pkg>.{list,md5sums,conffiles,…}`,
//! and the effects of the maintainer scripts (see [`super::scripts`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use super::alternatives::AltDb;
use super::control::{self, Stanza};
use super::deb::{self, DataKind};
use super::scripts::{self, Effects};
use super::{io, AptError};
use crate::layer::{Content, Entry, Kind, Layer};

/// Read access to the base image's root filesystem.
pub trait BaseImage {
    /// A file's bytes, `None` when it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, AptError>;
    /// Of `paths`, those that are symlinks, with their targets.
    fn symlinks(&self, paths: &[&str]) -> Result<BTreeMap<String, String>, AptError>;
}

/// A closure serving files (and no symlinks) is a base image too (tests, lock).
impl<F: Fn(&str) -> Result<Option<Vec<u8>>, AptError>> BaseImage for F {
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, AptError> {
        self(path)
    }
    fn symlinks(&self, _: &[&str]) -> Result<BTreeMap<String, String>, AptError> {
        Ok(BTreeMap::new())
    }
}

impl BaseImage for crate::disk::RootFs {
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, AptError> {
        crate::disk::RootFs::read_file(self, path)
            .map_err(|e| AptError::Format { what: format!("base image {path}"), msg: e.to_string() })
    }
    fn symlinks(&self, paths: &[&str]) -> Result<BTreeMap<String, String>, AptError> {
        let err =
            |e: crate::disk::DiskError| AptError::Format { what: "base image".into(), msg: e.to_string() };
        let mut out = BTreeMap::new();
        for (p, e) in self.stat_many(paths).map_err(err)? {
            if e.mode & 0o170000 == 0o120000 {
                if let Some(t) = self.read_link(&p).map_err(err)? {
                    out.insert(p, t);
                }
            }
        }
        Ok(out)
    }
}

/// Top-level directories that a merged-/usr image has as symlinks into /usr. dpkg
/// writes through them; so must the layer (a directory entry there would clobber the
/// symlink), while the `.list` keeps the package's own path.
const USRMERGE: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

struct PathMap(Vec<(String, String)>);

impl PathMap {
    fn new(base: &dyn BaseImage) -> Result<PathMap, AptError> {
        let mut v = Vec::new();
        for (link, target) in base.symlinks(&USRMERGE)? {
            let abs = if target.starts_with('/') { target.clone() } else { format!("/{target}") };
            // Only the usual `usr/X` links; anything else is left alone.
            if abs.starts_with("/usr/") && !abs.contains("..") {
                v.push((link, abs));
            }
        }
        Ok(PathMap(v))
    }

    fn real(&self, path: &str) -> String {
        for (link, target) in &self.0 {
            if path == link {
                return target.clone();
            }
            if let Some(rest) = path.strip_prefix(link.as_str()).filter(|r| r.starts_with('/')) {
                return format!("{target}{rest}");
            }
        }
        path.to_string()
    }
}

/// What was installed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    /// (package, version), sorted.
    pub packages: Vec<(String, String)>,
    /// Alternatives whose links were written.
    pub alternatives: Vec<String>,
    /// Whether the first-boot ldconfig unit was added.
    pub ldconfig_unit: bool,
}

/// Files larger than this are staged in `workdir` instead of memory.
const INLINE_MAX: usize = 256 * 1024;

pub const LDCONFIG_UNIT: &str = "/etc/systemd/system/imgbuild-ldconfig.service";
const LDCONFIG_UNIT_TEXT: &str = "\
# Written by imgbuild: packages installed into the image at build time ship shared
# libraries, and their postinst/ldconfig trigger could not run then.
[Unit]
Description=Refresh the shared library cache for packages installed at image build time
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target kubelet.service
ConditionPathIsReadWrite=/etc

[Service]
Type=oneshot
ExecStart=/sbin/ldconfig
RemainAfterExit=yes

[Install]
WantedBy=sysinit.target
";

/// Install `debs` (verified .deb files) into `layer` on top of a base image whose
/// `/var/lib/dpkg/status` is `base_status`. `base` is read for existing
/// `/var/lib/dpkg/alternatives/<name>` and the merged-/usr symlinks. `workdir` is
/// build-private.
pub fn install_into(
    layer: &mut Layer,
    debs: &[PathBuf],
    base_status: &str,
    base: &dyn BaseImage,
    workdir: &Path,
) -> Result<Installed, AptError> {
    let map = PathMap::new(base)?;
    let mut parsed = Vec::new();
    for p in debs {
        let bytes = std::fs::read(p).map_err(io(p.display().to_string()))?;
        let d = deb::read(&bytes).map_err(|msg| AptError::Format { what: p.display().to_string(), msg })?;
        parsed.push(d);
    }
    parsed.sort_by(|a, b| a.control.get("Package").cmp(&b.control.get("Package")));

    let mut status = control::parse(base_status, "base /var/lib/dpkg/status")
        .map_err(|msg| AptError::Format { what: "base /var/lib/dpkg/status".into(), msg })?;
    let mut out = Installed::default();
    let mut alts: Vec<scripts::AltInstall> = Vec::new();
    let mut need_ldconfig = false;
    let stage = workdir.join("apt-files");

    for d in &parsed {
        let field = |n: &str| {
            d.control.get(n).map(str::to_string).ok_or_else(|| AptError::Format {
                what: "package control".into(),
                msg: format!("missing {n}"),
            })
        };
        let (name, version, arch) = (field("Package")?, field("Version")?, field("Architecture")?);
        let refuse = |msg: String| AptError::Refused { pkg: format!("{name} {version}"), msg };
        let fx = effects(d).map_err(refuse)?;
        need_ldconfig |= fx.ldconfig;
        alts.extend(fx.alternatives);
        if let Some(t) = d.control_files.get("triggers") {
            let t = String::from_utf8_lossy(t);
            for l in t.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                match l.split_whitespace().collect::<Vec<_>>()[..] {
                    [a, "ldconfig"] if a.starts_with("activate") => need_ldconfig = true,
                    // Other activations (man-db, mime…) refresh caches that nothing here needs.
                    [a, _] if a.starts_with("activate") => {}
                    _ => return Err(refuse(format!("declares trigger {l:?}, which cannot be processed"))),
                }
            }
        }
        let multi_same = d.control.get("Multi-Arch") == Some("same");
        let info = if multi_same { format!("{name}:{arch}") } else { name.clone() };

        // Data files, in archive order; the .list mirrors that order, as dpkg writes it.
        let mut list = Vec::new();
        let mut contents: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for e in &d.data {
            list.push(if e.path == "/" { "/.".to_string() } else { e.path.clone() });
            if e.path == "/" {
                continue;
            }
            let real = map.real(&e.path);
            let kind = match &e.kind {
                DataKind::Dir => {
                    // Existing directories keep what the base or the layer gave them.
                    if layer.get(&real).is_none() {
                        layer.insert(&real, Entry { kind: Kind::Dir, mode: e.mode, uid: e.uid, gid: e.gid });
                    }
                    continue;
                }
                DataKind::Symlink(t) => Kind::Symlink(t.clone()),
                DataKind::File(b) => {
                    contents.insert(&e.path, b);
                    Kind::File(content(b, &stage, &e.path)?)
                }
                DataKind::HardLink(t) => {
                    let b = contents.get(t.as_str()).copied().ok_or_else(|| {
                        refuse(format!("hard link {} to {t}, which is not a file of the package", e.path))
                    })?;
                    contents.insert(&e.path, b);
                    Kind::File(content(b, &stage, &e.path)?)
                }
            };
            layer.insert(&real, Entry { kind, mode: e.mode, uid: e.uid, gid: e.gid });
        }

        // Conffiles with their md5, for the status stanza and `dpkg --verify`.
        let mut conffiles = Vec::new();
        if let Some(c) = d.control_files.get("conffiles") {
            for l in String::from_utf8_lossy(c).lines().map(str::trim).filter(|l| !l.is_empty()) {
                let path = l.split_whitespace().last().unwrap_or(l);
                if l.starts_with("remove-on-upgrade") {
                    continue;
                }
                let sum = contents
                    .get(path)
                    .map(|b| hex::encode(Md5::digest(b)))
                    .unwrap_or_else(|| "newconffile".into());
                conffiles.push((path.to_string(), sum));
            }
        }
        let md5sums = match d.control_files.get("md5sums") {
            Some(m) => m.clone(),
            None => contents
                .iter()
                .filter(|(p, _)| !conffiles.iter().any(|(c, _)| c == *p))
                .map(|(p, b)| format!("{}  {}\n", hex::encode(Md5::digest(b)), p.trim_start_matches('/')))
                .collect::<String>()
                .into_bytes(),
        };

        let dir = "/var/lib/dpkg/info";
        let mut list_text = list.join("\n");
        list_text.push('\n');
        layer.file(&format!("{dir}/{info}.list"), Content::Bytes(list_text.into_bytes()), 0o644);
        layer.file(&format!("{dir}/{info}.md5sums"), Content::Bytes(md5sums), 0o644);
        for (f, b) in &d.control_files {
            if f == "md5sums" {
                continue;
            }
            let exec = ["preinst", "postinst", "prerm", "postrm", "config"].contains(&f.as_str());
            layer.file(
                &format!("{dir}/{info}.{f}"),
                Content::Bytes(b.clone()),
                if exec { 0o755 } else { 0o644 },
            );
        }

        let mut st = d.control.clone();
        st.insert_after("Package", "Status", "install ok installed");
        if !conffiles.is_empty() {
            let v: String = conffiles.iter().map(|(p, s)| format!("\n {p} {s}")).collect();
            let before = st.fields.iter().position(|(n, _)| n.eq_ignore_ascii_case("Description"));
            st.fields.retain(|(n, _)| !n.eq_ignore_ascii_case("Conffiles"));
            st.fields.insert(before.unwrap_or(st.fields.len()), ("Conffiles".into(), v));
        }
        // One stanza per (package, arch): an installed package replaces the base's.
        status.retain(|s| !(s.get("Package") == Some(&name) && same_arch(s, &arch)));
        status.push(st);
        out.packages.push((name.clone(), version.clone()));
    }

    status.sort_by(|a, b| {
        (a.get("Package"), a.get("Architecture")).cmp(&(b.get("Package"), b.get("Architecture")))
    });
    check_status(&status)?;
    layer.file("/var/lib/dpkg/status", Content::Bytes(control::to_text(&status).into_bytes()), 0o644);

    out.alternatives = apply_alternatives(layer, &alts, base, &map)?;
    if need_ldconfig {
        layer.file(LDCONFIG_UNIT, Content::Bytes(LDCONFIG_UNIT_TEXT.as_bytes().to_vec()), 0o644);
        layer.symlink("/etc/systemd/system/sysinit.target.wants/imgbuild-ldconfig.service", LDCONFIG_UNIT);
        out.ldconfig_unit = true;
    }
    Ok(out)
}

fn same_arch(s: &Stanza, arch: &str) -> bool {
    // Only Multi-Arch: same packages coexist per arch; otherwise one stanza per name.
    s.get("Multi-Arch") != Some("same") || s.get("Architecture") == Some(arch)
}

/// The effects of the install-time scripts; `config` (debconf) is never supported.
fn effects(d: &deb::Deb) -> Result<Effects, String> {
    if d.control_files.contains_key("config") {
        return Err("has a debconf config script, which needs an interactive configure step".into());
    }
    let mut fx = Effects::default();
    for s in ["preinst", "postinst"] {
        if let Some(b) = d.control_files.get(s) {
            let f = scripts::analyse(s, &String::from_utf8_lossy(b))?;
            fx.ldconfig |= f.ldconfig;
            fx.alternatives.extend(f.alternatives);
        }
    }
    Ok(fx)
}

fn content(b: &[u8], stage: &Path, path: &str) -> Result<Content, AptError> {
    if b.len() <= INLINE_MAX {
        return Ok(Content::Bytes(b.to_vec()));
    }
    let p = stage.join(path.trim_start_matches('/'));
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir.display().to_string()))?;
    }
    std::fs::write(&p, b).map_err(io(p.display().to_string()))?;
    Ok(Content::Path(p))
}

/// The status file invariant: every stanza has Package and Status, no (package, arch)
/// twice.
pub fn check_status(status: &[Stanza]) -> Result<(), AptError> {
    let mut seen = std::collections::BTreeSet::new();
    for s in status {
        let (Some(p), Some(_)) = (s.get("Package"), s.get("Status")) else {
            return Err(AptError::Format {
                what: "/var/lib/dpkg/status".into(),
                msg: format!("stanza without Package/Status: {:?}", s.get("Package")),
            });
        };
        let arch = if s.get("Multi-Arch") == Some("same") { s.get("Architecture") } else { None };
        if !seen.insert((p, arch)) {
            return Err(AptError::Format {
                what: "/var/lib/dpkg/status".into(),
                msg: format!("package {p} appears twice"),
            });
        }
    }
    Ok(())
}

/// Register alternatives like `update-alternatives --install` in auto mode: merge into the
/// base's `/var/lib/dpkg/alternatives/<name>`, and point the links at the best choice
/// unless the base selected one manually.
fn apply_alternatives(
    layer: &mut Layer,
    alts: &[scripts::AltInstall],
    base: &dyn BaseImage,
    map: &PathMap,
) -> Result<Vec<String>, AptError> {
    let mut dbs: BTreeMap<String, AltDb> = BTreeMap::new();
    for a in alts {
        if !dbs.contains_key(&a.name) {
            let path = format!("/var/lib/dpkg/alternatives/{}", a.name);
            let db = match base.read_file(&path)? {
                Some(b) => AltDb::parse(&String::from_utf8_lossy(&b))
                    .map_err(|msg| AptError::Format { what: format!("base {path}"), msg })?,
                None => AltDb::new(&a.link),
            };
            dbs.insert(a.name.clone(), db);
        }
        let db = dbs.get_mut(&a.name).ok_or_else(|| AptError::Input("alternative vanished".into()))?;
        db.add(a);
    }
    for (name, db) in &dbs {
        layer.file(
            &format!("/var/lib/dpkg/alternatives/{name}"),
            Content::Bytes(db.to_text(name).into_bytes()),
            0o644,
        );
        if db.manual {
            continue;
        }
        for (link, alt_name, target) in db.links(name) {
            let via = format!("/etc/alternatives/{alt_name}");
            layer.symlink(&map.real(&link), &via);
            layer.symlink(&via, &target);
        }
    }
    Ok(dbs.into_keys().collect())
}

/// Read `/var/lib/dpkg/info/*.list`-style text from the layer (tests and inspect).
pub fn layer_text(layer: &Layer, path: &str) -> Option<String> {
    match &layer.get(path)?.kind {
        Kind::File(Content::Bytes(b)) => Some(String::from_utf8_lossy(b).to_string()),
        Kind::File(Content::Path(p)) => std::fs::read_to_string(p).ok(),
        _ => None,
    }
}
