//! The recipe: what goes into an image, pinned by digest. YAML, unknown fields
//! rejected, every error names the file, the field path and the line.
//!
//! A recipe is *data*: URL templates, digests, the roles that need an artifact and
//! where its files land. `plan` resolves it for one role and arch.

use std::collections::BTreeMap;
use std::path::Path;

use include_dir::{include_dir, Dir};
use serde::{Deserialize, Serialize};

use crate::exit::{Classify, Code};
use crate::types::{Arch, ImageRef, PackageRequest, PodSecurity, Profile, Role, Sha256};

/// Recipes shipped inside the binary; the first is the default.
static EMBEDDED: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/image-recipes");

/// Name of the recipe used when no `--recipe` is given.
pub const DEFAULT_RECIPE: &str = "ubuntu-24.04-k8s-v1.30.3";

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{origin}: {path}{line}: {msg}", line = fmt_line(*.line))]
    Invalid { origin: String, path: String, line: Option<usize>, msg: String },
    #[error("no embedded recipe named {0:?} (see `imgbuild recipe list`)")]
    UnknownEmbedded(String),
    #[error("reading recipe {path}")]
    Io { path: String, source: std::io::Error },
}

fn fmt_line(l: Option<usize>) -> String {
    l.map(|l| format!(" (line {l})")).unwrap_or_default()
}

impl Classify for RecipeError {
    fn code(&self) -> Code {
        match self {
            RecipeError::Io { .. } => Code::Runtime,
            _ => Code::Input,
        }
    }
}

/// Digest per arch, keyed by the arch's name (string keys keep error paths readable).
pub type PerArch = BTreeMap<String, Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseFormat {
    Qcow2,
    Raw,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kubernetes_version: String,
    pub arches: Vec<Arch>,
    /// mtime of every file the layer writes (reproducibility).
    pub source_date_epoch: u64,
    /// Default virtual disk size of the output (e.g. "8G"); `--disk-size` overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<String>,
    pub base: Base,
    pub artifacts: Vec<Artifact>,
    /// Helm charts installed after `kubeadm init` on the first control plane; each
    /// names a control-plane-only artifact (the pinned chart .tgz).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<Addon>,
    /// Ubuntu packages installed offline from a signed archive (see `apt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Packages>,
    /// Container images embedded per role and imported into containerd at boot (see
    /// `oci`); add-on images (`addons[].images`) come on top, for every role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
}

impl Recipe {
    /// The images a `role` carries, in recipe order: `images:` entries for the role,
    /// then each add-on's images (every role: the add-ons' DaemonSets run on every node
    /// and their Deployments may be scheduled on any), each reference once. A profile's
    /// add-on counts only when the build carries that profile (`profiles`), for workers
    /// too: its node agents (node-exporter, the log collector, a CSI node plugin) run there.
    pub fn images_for(&self, role: Role, profiles: &[Profile]) -> Vec<ImageRef> {
        let mut out: Vec<ImageRef> = Vec::new();
        let top = self.images.iter().filter(|i| i.roles.contains(&role)).map(|i| i.reference.clone());
        let addons = self
            .addons
            .iter()
            .filter(|a| a.profile.is_none_or(|p| profiles.contains(&p)))
            .flat_map(|a| a.images.iter())
            .filter_map(|s| ImageRef::parse(s).ok());
        for i in top.chain(addons) {
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// Every image of the recipe (any role) with the add-ons of `profiles`, each once.
    pub fn all_images(&self, profiles: &[Profile]) -> Vec<ImageRef> {
        let mut out = self.images_for(Role::ControlPlane, profiles);
        for i in self.images_for(Role::Worker, profiles) {
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }
}

/// `images[]`: a container image the roles in `roles` carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// `registry/repository:tag`, optionally `@sha256:…` (the index digest; else
    /// `imgbuild lock` pins it).
    #[serde(rename = "ref")]
    pub reference: ImageRef,
    pub roles: Vec<Role>,
}

/// `packages:`: Ubuntu packages resolved against a signed archive index and pinned in
/// `<recipe>.lock` by `imgbuild lock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Archive root per arch (amd64 lives under `ubuntu`, arm64 under `ubuntu-ports`),
    /// e.g. `https://snapshot.ubuntu.com/ubuntu/20240821T000000Z`.
    pub archive: BTreeMap<String, String>,
    /// Suites (`noble`, `noble-updates`…), searched together; the highest version wins.
    pub suites: Vec<String>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Name of a key embedded in the binary (`ubuntu-archive-2018`)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// …or an armored public key file, relative to the recipe file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Fingerprint the signing key must have (hex, spaces allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Package names, optionally pinned: `conntrack` or `conntrack=1:1.4.8-1ubuntu1`.
    pub install: Vec<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub name: String,
    pub version: String,
    pub format: BaseFormat,
    #[serde(default = "default_root_label")]
    pub root_label: String,
    pub urls: Vec<String>,
    pub sha256: PerArch,
}

fn default_root_label() -> String {
    "cloudimg-rootfs".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub version: String,
    pub roles: Vec<Role>,
    /// Optional with `chart:` (then the lock supplies the URL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Optional with `chart:` (then the lock supplies the digest).
    #[serde(default, skip_serializing_if = "PerArch::is_empty")]
    pub sha256: PerArch,
    pub install: Vec<Install>,
    /// A Helm chart named `name` at `version` in this repository: `imgbuild lock` resolves
    /// it to the `.tgz`'s URL and the digest the repository's index.yaml states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartSource>,
    /// `none`: this artifact is not signed upstream's way (a stand-in, a re-packaged
    /// file), so a build does not look for a cosign signature next to it even when it
    /// comes from a host that signs its files. Absent: a file from a signing host must
    /// carry `<url>.sig` and `<url>.cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ArtifactSignature>,
    /// Exact size in bytes per arch, optional: caps the download (a server that sends
    /// more is given up at once instead of filling the cache first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<BTreeMap<String, u64>>,
}

/// `artifacts[].chart`: where a chart artifact is published.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartSource {
    /// The Helm repository URL (the directory holding `index.yaml`), or `oci://REGISTRY/PATH`
    /// for a chart published as an OCI artifact (`helm push`; the chart is `PATH/<name>:<version>`).
    pub repo: String,
}

impl Artifact {
    /// A chart whose URL and digest come from the lock, not from the recipe.
    pub fn pinned_by_lock(&self) -> bool {
        self.chart.is_some() && self.urls.is_empty() && self.sha256.is_empty()
    }
}

/// An artifact's `signature:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactSignature {
    None,
}

/// A Helm chart the control plane installs after init (see `chart::addons`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addon {
    /// The artifact holding the chart .tgz (roles [control-plane], one install step).
    pub artifact: String,
    /// Helm release name.
    pub release: String,
    pub namespace: String,
    /// Install order (ascending); the CNI comes first.
    pub order: u32,
    /// The cluster network: nodes become Ready (and CoreDNS starts) only after it.
    #[serde(default)]
    pub cni: bool,
    /// Helm values baked into the image next to the chart.
    #[serde(default)]
    pub values: serde_json::Value,
    /// Every image the chart deploys with these values: embedded in every role's image
    /// (DaemonSets run on every node, Deployments may land on any).
    pub images: Vec<String>,
    /// The Pod Security level the add-on's namespace enforces (label
    /// `pod-security.kubernetes.io/enforce`); a namespace shared by several add-ons gets
    /// the most permissive of theirs. Default: the cluster's `baseline`.
    #[serde(default)]
    pub pod_security: PodSecurity,
    /// Installed only in images built with this profile (`build --profile`) on clusters
    /// that turn it on (`addons.profiles`); absent: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

/// Where an artifact's bytes land in the image. Without `from` the downloaded file
/// itself is installed; with `from`, the artifact is a tarball and `from` names a
/// member (`bin/containerd`) or a glob over one directory level (`bin/*`, `*`), in
/// which case `to` is a directory and ends with `/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    /// Octal permission bits, default "0755" (these are executables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Required when `mode` has the setuid (04000) or setgid (02000) bit: a privileged
    /// executable is never installed by accident.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub setid: bool,
}

impl Install {
    pub fn mode_bits(&self) -> u32 {
        self.mode.as_deref().and_then(|m| u32::from_str_radix(m, 8).ok()).unwrap_or(0o755)
    }
}

/// A parsed, validated recipe with where it came from and its digest.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    /// `embedded:NAME` or the file path.
    pub origin: String,
    /// sha256 of the recipe text: part of every build's identity.
    pub digest: Sha256,
    pub text: String,
}

/// Template variables allowed in URL and install templates.
const TEMPLATE_VARS: [&str; 3] = ["version", "arch", "name"];

/// Expand `{version}`, `{arch}` and `{name}`.
pub fn expand(template: &str, name: &str, version: &str, arch: Arch) -> String {
    template.replace("{version}", version).replace("{arch}", arch.as_str()).replace("{name}", name)
}

/// What is wrong with the `{...}` placeholders of a template, if anything.
fn template_problem(template: &str) -> Option<String> {
    let mut rest = template;
    loop {
        let open = rest.find('{');
        let close = rest.find('}');
        match (open, close) {
            (None, None) => return None,
            (Some(i), _) if close.is_none_or(|c| c > i) => {
                let after = &rest[i + 1..];
                let Some(j) = after.find('}').filter(|&j| !after[..j].contains('{')) else {
                    return Some(format!("unclosed `{{` in {template:?}"));
                };
                let var = &after[..j];
                if !TEMPLATE_VARS.contains(&var) {
                    return Some(format!("unknown template variable {{{var}}} (known: version, arch, name)"));
                }
                rest = &after[j + 1..];
            }
            _ => return Some(format!("`}}` without `{{` in {template:?}")),
        }
    }
}

/// Directories that belong to imgbuild in every image it builds (the manifest, the
/// release file, signatures, add-on values; the bootstrap and add-on scripts; the
/// embedded images' layout). A recipe may not install anything there: imgbuild's own
/// file would silently win, or a file of its own would be imported as an image blob.
/// (The last is where the layer writes the embedded images' layout.)
pub const IMGBUILD_DIRS: [&str; 3] = ["/etc/imgbuild", "/usr/libexec/imgbuild", "/usr/share/imgbuild/images"];

/// The latest `source_date_epoch`: 2446-05-10T22:38:55Z, the last second an ext4
/// inode with extra timestamp fields (the 256-byte inodes of every cloud image) can
/// store. Later values would wrap around to the past.
pub const MAX_SOURCE_DATE_EPOCH: u64 = i32::MAX as u64 + 3 * (1 << 32);

/// What is wrong with an expanded install destination, if anything. `dir`: the
/// destination is a directory (a glob `from`), written with a trailing `/`.
fn destination_problem(to: &str, dir: bool) -> Option<String> {
    if !to.starts_with('/') {
        return Some("must be an absolute path".into());
    }
    if to.trim_start_matches('/').is_empty() {
        return Some("is the root directory itself; name a path below /".into());
    }
    let body = match (dir, to.strip_suffix('/')) {
        (true, Some(b)) => b,
        (true, None) => return Some("a glob `from` needs a directory `to` ending in /".into()),
        (false, Some(_)) => {
            return Some("ends in / but names a file (only a glob `from` installs into a directory)".into())
        }
        (false, None) => to,
    };
    let segs: Vec<&str> = body[1..].split('/').collect();
    if segs.contains(&"..") {
        return Some("has a `..` segment".into());
    }
    if segs.iter().any(|s| s.is_empty() || *s == ".") {
        let clean: Vec<&str> = segs.iter().copied().filter(|s| !s.is_empty() && *s != ".").collect();
        return Some(format!("is not normalised (empty or `.` segments); write /{}", clean.join("/")));
    }
    if let Some(long) = segs.iter().find(|s| s.len() > 255) {
        return Some(format!("has a name of {} bytes; ext4 names are at most 255", long.len()));
    }
    // debugfs's command parser splits on whitespace and quotes.
    if body.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'') {
        return Some("has whitespace, quotes or control characters".into());
    }
    if let Some(d) = IMGBUILD_DIRS.iter().find(|d| body == **d || body.starts_with(&format!("{d}/"))) {
        return Some(format!("is inside {d}, which imgbuild itself writes"));
    }
    None
}

/// What is wrong with an expanded archive member name (or glob), if anything.
fn member_problem(from: &str) -> Option<String> {
    if from.is_empty() {
        return Some("is empty".into());
    }
    if from.starts_with('/') {
        return Some("is absolute; archive members are relative".into());
    }
    from.split('/').any(|s| s == "..").then(|| "has a `..` segment".into())
}

/// The names of the recipes embedded in the binary.
pub fn embedded_names() -> Vec<String> {
    let mut v: Vec<String> = EMBEDDED
        .files()
        .filter_map(|f| f.path().to_str())
        .filter_map(|p| p.strip_suffix(".yaml"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Load an embedded recipe by name.
pub fn load_embedded(name: &str) -> Result<LoadedRecipe, RecipeError> {
    let file = EMBEDDED
        .get_file(format!("{name}.yaml"))
        .ok_or_else(|| RecipeError::UnknownEmbedded(name.to_string()))?;
    let text = file.contents_utf8().unwrap_or_default();
    parse(text, &format!("embedded:{name}"))
}

/// Load `--recipe F`, or the default embedded recipe when `None`.
pub fn load(path: Option<&Path>) -> Result<LoadedRecipe, RecipeError> {
    match path {
        None => load_embedded(DEFAULT_RECIPE),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|source| RecipeError::Io { path: p.display().to_string(), source })?;
            parse(&text, &p.display().to_string())
        }
    }
}

/// Parse and validate recipe text. `origin` is only used in messages.
pub fn parse(text: &str, origin: &str) -> Result<LoadedRecipe, RecipeError> {
    // Maps would let the last of two equal keys win silently (a digest pinned twice).
    crate::nodup::check_yaml(text).map_err(|d| RecipeError::Invalid {
        origin: origin.into(),
        path: if d.path.is_empty() { d.key.clone() } else { format!("{}.{}", d.path, d.key) },
        line: d.line,
        msg: format!("{d}: a key may appear once in a mapping"),
    })?;
    let de = serde_yaml::Deserializer::from_str(text);
    let recipe: Recipe = match serde_path_to_error::deserialize(de) {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line());
            // serde_yaml appends "at line L column C"; the line is reported separately.
            let msg = inner.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg);
            // serde_yaml prefixes its own path; ours is more precise.
            let msg = match msg.split_once(": ") {
                Some((p, m)) if !p.contains(' ') => m,
                _ => msg,
            }
            .to_string();
            let path = if path == "." { "<document>".to_string() } else { path };
            return Err(RecipeError::Invalid { origin: origin.into(), path, line, msg });
        }
    };
    validate(&recipe).map_err(|(path, msg)| {
        let lines = crate::yamlpos::lines(text);
        let line = crate::yamlpos::line_of(&lines, &path);
        RecipeError::Invalid { origin: origin.into(), path, line, msg }
    })?;
    Ok(LoadedRecipe {
        recipe,
        origin: origin.to_string(),
        digest: Sha256::of(text.as_bytes()),
        text: text.to_string(),
    })
}

/// Semantic checks serde cannot express. Errors are (field path, message).
fn validate(r: &Recipe) -> Result<(), (String, String)> {
    let err = |p: String, m: String| Err((p, m));
    if r.name.is_empty()
        || !r.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return err("name".into(), format!("{:?} must be non-empty [a-z0-9.-_]", r.name));
    }
    if r.arches.is_empty() {
        return err("arches".into(), "at least one arch is required".into());
    }
    if let Some(size) = &r.disk_size {
        crate::types::size::parse(size).map_err(|m| ("disk_size".to_string(), m))?;
    }
    if r.source_date_epoch > MAX_SOURCE_DATE_EPOCH {
        return err(
            "source_date_epoch".into(),
            format!(
                "{} is after 2446-05-10T22:38:55Z ({MAX_SOURCE_DATE_EPOCH}), the last time an ext4 inode stores",
                r.source_date_epoch
            ),
        );
    }
    let check_urls = |p: &str, urls: &[String]| -> Result<(), (String, String)> {
        if urls.is_empty() {
            return Err((format!("{p}.urls"), "at least one URL is required".into()));
        }
        for (i, u) in urls.iter().enumerate() {
            if !(u.starts_with("https://") || u.starts_with("http://") || u.starts_with("file://")) {
                return Err((format!("{p}.urls[{i}]"), format!("{u:?} is not an http(s) or file URL")));
            }
            if let Some(why) = template_problem(u) {
                return Err((format!("{p}.urls[{i}]"), why));
            }
        }
        Ok(())
    };
    let check_arches = |p: &str, sha: &PerArch| -> Result<(), (String, String)> {
        for k in sha.keys() {
            if !["amd64", "arm64"].contains(&k.as_str()) {
                return Err((format!("{p}.sha256.{k}"), format!("unknown arch {k:?} (known: amd64, arm64)")));
            }
        }
        for a in &r.arches {
            if !sha.contains_key(a.as_str()) {
                return Err((format!("{p}.sha256"), format!("missing sha256 for arch {a}")));
            }
        }
        Ok(())
    };
    if let Some(p) = &r.packages {
        validate_packages(r, p)?;
    }
    check_urls("base", &r.base.urls)?;
    check_arches("base", &r.base.sha256)?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in r.artifacts.iter().enumerate() {
        let p = format!("artifacts[{i}]");
        if a.name.is_empty() || a.name.contains('/') {
            return err(format!("{p}.name"), format!("{:?} is not a valid artifact name", a.name));
        }
        if !seen.insert(a.name.as_str()) {
            return err(format!("{p}.name"), format!("duplicate artifact {:?}", a.name));
        }
        if a.roles.is_empty() {
            return err(format!("{p}.roles"), "at least one role is required".into());
        }
        if let Some(c) = &a.chart {
            let oci = c
                .repo
                .strip_prefix("oci://")
                .is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace));
            if !(c.repo.starts_with("https://") || c.repo.starts_with("http://") || oci) {
                return err(
                    format!("{p}.chart.repo"),
                    format!("{:?} is not an http(s) Helm repository URL or an oci:// registry path", c.repo),
                );
            }
        }
        if !a.pinned_by_lock() {
            check_urls(&p, &a.urls)?;
            check_arches(&p, &a.sha256)?;
        }
        for (arch, n) in a.size.iter().flatten() {
            if !a.sha256.contains_key(arch) {
                return err(format!("{p}.size.{arch}"), format!("no sha256 for arch {arch:?}"));
            }
            if *n == 0 {
                return err(format!("{p}.size.{arch}"), "a size must be at least 1 byte".into());
            }
        }
        if a.install.is_empty() {
            return err(format!("{p}.install"), "at least one install entry is required".into());
        }
        for (j, ins) in a.install.iter().enumerate() {
            let q = format!("{p}.install[{j}]");
            for (field, t) in ins.from.iter().map(|f| ("from", f)).chain(std::iter::once(("to", &ins.to))) {
                if let Some(why) = template_problem(t) {
                    return err(format!("{q}.{field}"), why);
                }
            }
            let glob = ins.from.as_deref().is_some_and(|f| f.contains('*'));
            // Checked as expanded for every arch: `version: ../..` must not pass.
            for &arch in &r.arches {
                let x = |t: &str| expand(t, &a.name, &a.version, arch);
                let shown = |t: &str| {
                    let e = x(t);
                    if e == t {
                        format!("{t:?}")
                    } else {
                        format!("{t:?} (for {arch}: {e:?})")
                    }
                };
                if let Some(why) = destination_problem(&x(&ins.to), glob) {
                    return err(format!("{q}.to"), format!("{} {why}", shown(&ins.to)));
                }
                if let Some(from) = &ins.from {
                    if let Some(why) = member_problem(&x(from)) {
                        return err(format!("{q}.from"), format!("{} {why}", shown(from)));
                    }
                }
            }
            if let Some(m) = &ins.mode {
                let Some(bits) = u32::from_str_radix(m, 8).ok().filter(|&b| b <= 0o7777) else {
                    return err(format!("{q}.mode"), format!("{m:?} is not an octal mode"));
                };
                if bits & 0o1000 != 0 {
                    return err(
                        format!("{q}.mode"),
                        format!("{m:?} sets the sticky bit, which files do not use"),
                    );
                }
                if bits & 0o6000 != 0 && !ins.setid {
                    return err(
                        format!("{q}.mode"),
                        format!(
                            "{m:?} sets setuid/setgid: add `setid: true` to the install entry if intended"
                        ),
                    );
                }
            }
            if ins.setid && ins.mode_bits() & 0o6000 == 0 {
                return err(format!("{q}.setid"), "`setid: true` without a setuid/setgid mode".into());
            }
        }
    }
    validate_addons(r)
}

/// Validation of `packages:`; errors are (field path, message).
fn validate_packages(r: &Recipe, p: &Packages) -> Result<(), (String, String)> {
    let e = |f: &str, m: String| Err((format!("packages.{f}"), m));
    for (a, url) in &p.archive {
        if !["amd64", "arm64"].contains(&a.as_str()) {
            return e(&format!("archive.{a}"), format!("unknown arch {a:?} (known: amd64, arm64)"));
        }
        if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file://")) {
            return e(&format!("archive.{a}"), format!("{url:?} is not an http(s) or file URL"));
        }
    }
    for a in &r.arches {
        if !p.archive.contains_key(a.as_str()) {
            return e("archive", format!("missing archive URL for arch {a}"));
        }
    }
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if p.suites.is_empty() {
        return e("suites", "at least one suite is required".into());
    }
    for (i, s) in p.suites.iter().enumerate() {
        if !word(s) {
            return e(&format!("suites[{i}]"), format!("{s:?} is not a suite name"));
        }
    }
    if p.components.is_empty() {
        return e("components", "at least one component is required".into());
    }
    for (i, c) in p.components.iter().enumerate() {
        if !word(c) {
            return e(&format!("components[{i}]"), format!("{c:?} is not a component name"));
        }
    }
    match (&p.key, &p.key_file) {
        (Some(_), Some(_)) => return e("key", "give either key or key_file, not both".into()),
        (None, None) => return e("key", "a signing key is required (key or key_file)".into()),
        (Some(k), None) if !crate::keys::EMBEDDED_KEYS.iter().any(|x| x.name == k) => {
            let known: Vec<_> = crate::keys::EMBEDDED_KEYS.iter().map(|x| x.name).collect();
            return e("key", format!("no embedded key {k:?} (known: {})", known.join(", ")));
        }
        _ => {}
    }
    if let Some(f) = &p.fingerprint {
        let n = crate::keys::normalize_fingerprint(f);
        if n.len() != 40 || !n.bytes().all(|b| b.is_ascii_hexdigit()) {
            return e("fingerprint", format!("{f:?} is not a v4 fingerprint (40 hex digits)"));
        }
    }
    if p.install.is_empty() {
        return e("install", "at least one package is required".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in p.install.iter().enumerate() {
        let req = PackageRequest::parse(s).map_err(|m| (format!("packages.install[{i}]"), m))?;
        if !seen.insert(req.name.clone()) {
            return e(&format!("install[{i}]"), format!("duplicate package {:?}", req.name));
        }
    }
    Ok(())
}

/// Release names the installer reserves: the backend's, and `values` because the
/// backend's user values file is /etc/imgbuild/addons/values.yaml.
pub const RESERVED_RELEASES: [&str; 2] = ["backend", "values"];

fn validate_addons(r: &Recipe) -> Result<(), (String, String)> {
    let dns_label = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let mut releases = std::collections::BTreeSet::new();
    let mut orders = std::collections::BTreeSet::new();
    for (i, a) in r.addons.iter().enumerate() {
        let p = format!("addons[{i}]");
        let Some(art) = r.artifacts.iter().find(|x| x.name == a.artifact) else {
            return Err((format!("{p}.artifact"), format!("no artifact named {:?}", a.artifact)));
        };
        if art.roles != [Role::ControlPlane] {
            return Err((
                format!("{p}.artifact"),
                format!(
                    "artifact {:?} must have roles [control-plane] (add-ons are control-plane only)",
                    art.name
                ),
            ));
        }
        if art.install.len() != 1 || art.install[0].from.is_some() || !art.install[0].to.ends_with(".tgz") {
            return Err((
                format!("{p}.artifact"),
                format!(
                    "artifact {:?} must install the chart file itself to one path ending in .tgz",
                    art.name
                ),
            ));
        }
        if !dns_label(&a.release, 53) || RESERVED_RELEASES.contains(&a.release.as_str()) {
            return Err((
                format!("{p}.release"),
                format!(
                    "{:?} must be a DNS label of at most 53 characters, not backend or values",
                    a.release
                ),
            ));
        }
        if !releases.insert(a.release.as_str()) {
            return Err((format!("{p}.release"), format!("duplicate release {:?}", a.release)));
        }
        if !dns_label(&a.namespace, 63) {
            return Err((format!("{p}.namespace"), format!("{:?} is not a DNS label", a.namespace)));
        }
        // cloud-init renders a profile's Secrets into its namespace and its cluster values
        // into <release>.yaml: both are the profile's own.
        if let Some(prof) = a.profile.filter(|p| p.release() != a.release) {
            return Err((
                format!("{p}.release"),
                format!("the {prof} profile's release is {:?}", prof.release()),
            ));
        }
        if let Some(prof) = a.profile.filter(|p| p.namespace() != a.namespace) {
            return Err((
                format!("{p}.namespace"),
                format!(
                    "the {prof} profile installs into {:?} (the cluster's Secrets for it are created there)",
                    prof.namespace()
                ),
            ));
        }
        if !orders.insert(a.order) {
            return Err((format!("{p}.order"), format!("duplicate order {}", a.order)));
        }
        if !(a.values.is_object() || a.values.is_null()) {
            return Err((format!("{p}.values"), "must be a mapping of Helm values".into()));
        }
        // A profile's chart may be unpinned in the recipe (resolved by the lock): its images
        // are then only known by rendering it.
        if a.images.is_empty() && a.profile.is_none() {
            return Err((format!("{p}.images"), "list the images the chart deploys".into()));
        }
        for (j, img) in a.images.iter().enumerate() {
            ImageRef::parse(img).map_err(|e| (format!("{p}.images[{j}]"), e))?;
        }
    }
    validate_images(r)
}

/// What the images listed so far claim: each reference, and each `name:tag` in containerd.
#[derive(Clone, Default)]
struct Claims {
    seen: BTreeMap<String, String>,
    tags: BTreeMap<String, (String, String)>,
}

impl Claims {
    fn claim(&mut self, path: String, i: &ImageRef) -> Result<(), (String, String)> {
        let key = i.to_string();
        if let Some(first) = self.seen.insert(key.clone(), path.clone()) {
            return Err((path, format!("{key} is already listed at {first}")));
        }
        if let Some(t) = i.tagged_name() {
            if let Some((first, other)) = self.tags.insert(t.clone(), (path.clone(), key.clone())) {
                return Err((path, format!("{key} and {other} ({first}) would both be {t} in containerd")));
            }
        }
        Ok(())
    }
}

/// `images:` checks: roles given once each, no image listed twice (add-on images
/// included), and no two images claiming one `name:tag` in containerd. Two profiles may
/// list the same image (the CSI drivers share sidecars): each is checked against the core
/// images and its own, since a build carries the images of the profiles it names only.
fn validate_images(r: &Recipe) -> Result<(), (String, String)> {
    let mut core = Claims::default();
    for (k, img) in r.images.iter().enumerate() {
        let p = format!("images[{k}]");
        if img.roles.is_empty() {
            return Err((format!("{p}.roles"), "at least one role is required".into()));
        }
        let mut roles = img.roles.clone();
        roles.sort();
        roles.dedup();
        if roles.len() != img.roles.len() {
            return Err((format!("{p}.roles"), "a role is listed twice".into()));
        }
        core.claim(format!("{p}.ref"), &img.reference)?;
    }
    let mut profiles: BTreeMap<Profile, Claims> = BTreeMap::new();
    // The core add-ons first, wherever they stand, so that every profile is checked
    // against all of them.
    let core_first = r.addons.iter().enumerate().filter(|(_, a)| a.profile.is_none());
    for (i, a) in core_first.chain(r.addons.iter().enumerate().filter(|(_, a)| a.profile.is_some())) {
        let claims = match a.profile {
            None => &mut core,
            Some(p) => profiles.entry(p).or_insert_with(|| core.clone()),
        };
        for (j, s) in a.images.iter().enumerate() {
            let p = format!("addons[{i}].images[{j}]");
            let img = ImageRef::parse(s).map_err(|e| (p.clone(), e))?;
            claims.claim(p, &img)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_recipe_parses() {
        let r = load(None).unwrap();
        assert_eq!(r.recipe.name, DEFAULT_RECIPE);
        assert_eq!(r.recipe.kubernetes_version, "v1.30.3");
        assert!(embedded_names().contains(&DEFAULT_RECIPE.to_string()));
    }

    #[test]
    fn bad_sha_reports_path_and_line() {
        let text = load(None)
            .unwrap()
            .text
            .replace("bb78c2a27027278ee644d523f583ed7fdba48b4fbf31e3cfb0e309b6457dda69", "bb78c2");
        let line = text.lines().position(|l| l.contains("amd64: bb78c2")).unwrap() + 1;
        let e = parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("artifacts[0].sha256.amd64"), "{e}");
        assert!(e.contains(&format!("(line {line})")), "{e}");
    }

    #[test]
    fn missing_arch_reports_path_and_line() {
        let text = load(None)
            .unwrap()
            .text
            .replace("      arm64: 6590f2447c87346aac29e2ab42fe4f29873f9bf154ee878f00da4c81bfdb8ea2\n", "");
        let e = parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("artifacts[0].sha256") && e.contains("arm64"), "{e}");
        assert!(e.contains("(line "), "{e}");
    }

    #[test]
    fn templates_and_destinations() {
        assert_eq!(template_problem("/x/{version}-{arch}/{name}"), None);
        assert!(template_problem("/x/{version").unwrap().contains("unclosed"));
        assert!(template_problem("/x/{ver{version}").unwrap().contains("unclosed"));
        assert!(template_problem("/x/version}").unwrap().contains("without"));
        assert!(template_problem("/x/{os}").unwrap().contains("unknown template variable {os}"));
        assert_eq!(destination_problem("/usr/local/bin/x", false), None);
        assert_eq!(destination_problem("/usr/local/bin/", true), None);
        assert_eq!(destination_problem("/etc/imgbuildx", false), None);
        for (to, dir, why) in [
            ("usr/x", false, "absolute"),
            ("/", true, "root directory"),
            ("//", false, "root directory"),
            ("/usr/local/bin", true, "ending in /"),
            ("/usr/local/bin/", false, "names a file"),
            ("/a/../b", false, "`..`"),
            ("/a/./b", false, "write /a/b"),
            ("/a//b/", true, "write /a/b"),
            ("/a b", false, "whitespace"),
            (&format!("/usr/{}", "n".repeat(256)), false, "at most 255"),
            ("/etc/imgbuild", false, "imgbuild itself"),
            ("/usr/libexec/imgbuild/", true, "imgbuild itself"),
        ] {
            let p = destination_problem(to, dir).unwrap_or_default();
            assert!(p.contains(why), "{to}: {p:?}");
        }
        assert_eq!(member_problem("./bin/*"), None);
        assert!(member_problem("../x").is_some() && member_problem("/x").is_some());
    }

    fn addon_err(from: &str, to: &str) -> String {
        let text = load(None).unwrap().text;
        assert!(text.contains(from), "{from}");
        parse(&text.replacen(from, to, 1), "t.yaml").unwrap_err().to_string()
    }

    #[test]
    fn addons_are_validated_with_paths() {
        let r = load(None).unwrap().recipe;
        let names: Vec<_> = r.addons.iter().map(|a| a.release.as_str()).collect();
        assert_eq!(
            names,
            [
                "cilium",
                "metrics-server",
                "ingress-nginx",
                "monitoring",
                "logging",
                "argocd",
                "cinder-csi",
                "proxmox-csi",
                "hcloud-csi"
            ]
        );
        // A profile's release and namespace are its own (cloud-init renders into them).
        let e = addon_err(
            "    release: hcloud-csi
    namespace: kube-system",
            "    release: hcloud
    namespace: kube-system",
        );
        assert!(e.contains("addons[8].release") && e.contains("hcloud-csi"), "{e}");
        let e = addon_err("    namespace: csi-proxmox", "    namespace: storage");
        assert!(e.contains("addons[7].namespace") && e.contains("csi-proxmox"), "{e}");
        // The core add-ons list their images; a profile's may leave them to the pinned chart.
        let r = load(None).unwrap().text;
        let without_images = |after: &str| {
            let at = r.find(after).unwrap();
            let images = at + r[at..].find("    images:\n").unwrap();
            let end = images + r[images..].find("\n\n").unwrap();
            format!("{}    images: []{}", &r[..images], &r[end..])
        };
        let e = parse(&without_images("  - artifact: metrics-server\n"), "t.yaml").unwrap_err().to_string();
        assert!(e.contains("addons[1].images") && e.contains("list the images"), "{e}");
        parse(&without_images("    profile: gitops\n"), "t.yaml")
            .expect("a profile's add-on may list no images");
        // Two profiles may list one image (the CSI drivers' sidecars); one profile may not twice.
        let e = addon_err(
            "      - registry.k8s.io/sig-storage/csi-attacher:v4.9.0",
            "      - registry.k8s.io/sig-storage/csi-attacher:v4.9.0\n      - docker.io/hetznercloud/hcloud-csi-driver:v2.17.0",
        );
        assert!(e.contains("addons[8].images") && e.contains("already listed"), "{e}");
        let e = addon_err(
            "      - docker.io/hetznercloud/hcloud-csi-driver:v2.17.0",
            "      - docker.io/hetznercloud/hcloud-csi-driver:v2.17.0\n      - quay.io/cilium/cilium:v1.16.1@sha256:0b4a3ab41a4760d86b7fc945b8783747ba27f29dac30dd434d94f2c9e3679f39",
        );
        assert!(e.contains("addons[8].images") && e.contains("addons[0].images"), "{e}");
        let e = addon_err("    profile: gitops\n", "    profile: tracing\n");
        assert!(e.contains("addons[5].profile") || e.contains("tracing"), "{e}");
        let e = addon_err("  - artifact: metrics-server", "  - artifact: nope");
        assert!(e.contains("addons[1].artifact") && e.contains("(line "), "{e}");
        let e = addon_err("    release: ingress-nginx", "    release: backend");
        assert!(e.contains("addons[2].release"), "{e}");
        let e = addon_err("    order: 20", "    order: 10");
        assert!(e.contains("addons[1].order") && e.contains("duplicate"), "{e}");
        let e = addon_err("  - artifact: cilium", "  - artifact: kubelet");
        assert!(e.contains("control-plane"), "{e}");
        let e = addon_err("  - artifact: cilium", "  - artifact: helm");
        assert!(e.contains(".tgz"), "{e}");
        let e = addon_err("    namespace: ingress-nginx", "    namespace: Ingress_Nginx");
        assert!(e.contains("addons[2].namespace"), "{e}");
        let e = addon_err("    order: 10", "    order: 10\n    colour: red");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn roles_get_what_may_run_on_them() {
        let r = load(None).unwrap().recipe;
        let names = |role| r.images_for(role, &[]).iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let cp = names(Role::ControlPlane);
        let w = names(Role::Worker);
        for kubeadm in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"] {
            assert!(cp.iter().any(|i| i.contains(&format!("/{kubeadm}:"))), "{kubeadm} on control planes");
            assert!(!w.iter().any(|i| i.contains(&format!("/{kubeadm}:"))), "{kubeadm} not on workers");
        }
        for both in
            ["kube-proxy:v1.30.3", "coredns/coredns:v1.11.1", "pause:3.9", "cilium/cilium:", "cilium-envoy:"]
        {
            assert!(cp.iter().any(|i| i.contains(both)) && w.iter().any(|i| i.contains(both)), "{both}");
        }
        assert!(cp.iter().any(|i| i.contains("kube-vip")) && !w.iter().any(|i| i.contains("kube-vip")));
        assert!(w.iter().any(|i| i.contains("podinfo")) && !cp.iter().any(|i| i.contains("podinfo")));
        // The charts' digests stay as the recipe pins them.
        let cilium = "@sha256:0b4a3ab41a4760d86b7fc945b8783747ba27f29dac30dd434d94f2c9e3679f39";
        assert!(w.iter().any(|i| i.ends_with(cilium)));
        assert_eq!(r.all_images(&[]).len(), cp.len() + w.iter().filter(|i| !cp.contains(i)).count());
    }

    /// A profile's images come with the profile only, on both roles (its node agents run on
    /// workers), and every turned-on profile adds at least one.
    #[test]
    fn profile_images_come_with_their_profile_only() {
        let r = load(None).unwrap().recipe;
        let names =
            |role, p: &[Profile]| r.images_for(role, p).iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let core = names(Role::Worker, &[]);
        assert!(!core.iter().any(|i| i.contains("node-exporter") || i.contains("opentelemetry")), "{core:?}");
        for p in Profile::ALL {
            for role in [Role::ControlPlane, Role::Worker] {
                let with = names(role, &[p]);
                let without = names(role, &[]);
                assert!(with.len() > without.len(), "{p}: no images of its own");
                assert!(without.iter().all(|i| with.contains(i)), "{p}: core images kept");
            }
        }
        let w = names(Role::Worker, &[Profile::Monitoring, Profile::Logging]);
        assert!(w.iter().any(|i| i.contains("prometheus/node-exporter:")), "{w:?}");
        assert!(w.iter().any(|i| i.contains("opentelemetry-collector-k8s:")), "{w:?}");
        let all = r.all_images(&[Profile::Cinder]);
        assert!(all.iter().any(|i| i.to_string().contains("cinder-csi-plugin:")));
        assert!(!r.all_images(&[]).iter().any(|i| i.to_string().contains("cinder-csi-plugin:")));
    }

    #[test]
    fn image_errors_name_the_entry() {
        let e = addon_err(
            "  - ref: registry.k8s.io/kube-apiserver:v1.30.3",
            "  - ref: registry.k8s.io/kube-apiserver",
        );
        assert!(e.contains("images[0].ref") && e.contains("(line "), "{e}");
        let e = addon_err(
            "  - ref: registry.k8s.io/kube-scheduler:v1.30.3",
            "  - ref: registry.k8s.io/kube-apiserver:v1.30.3",
        );
        assert!(e.contains("images[2].ref") && e.contains("already listed at images[0].ref"), "{e}");
        let e = addon_err(
            "  - ref: registry.k8s.io/kube-scheduler:v1.30.3",
            "  - ref: registry.k8s.io/kube-apiserver:v1.30.3@sha256:0b4a3ab41a4760d86b7fc945b8783747ba27f29dac30dd434d94f2c9e3679f39",
        );
        assert!(e.contains("would both be registry.k8s.io/kube-apiserver:v1.30.3"), "{e}");
        let e = addon_err("quay.io/cilium/cilium:v1.16.1@", "quay.io/cilium/Cilium:v1.16.1@");
        assert!(e.contains("addons[0].images[0]"), "{e}");
        let e = addon_err(
            "  - ref: registry.k8s.io/kube-proxy:v1.30.3\n    roles: [control-plane, worker]",
            "  - ref: registry.k8s.io/kube-proxy:v1.30.3\n    roles: [worker, worker]",
        );
        assert!(e.contains("images[3].roles") && e.contains("twice"), "{e}");
    }

    #[test]
    fn recipe_errors_name_the_field() {
        let text = load(None).unwrap().text.replace("key: ubuntu-archive-2018", "key: nope");
        let e = parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("packages.key") && e.contains("nope"), "{e}");
        let text = load(None).unwrap().text.replace("    - socat=", "    - conntrack=");
        let e = parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("packages.install[1]") && e.contains("duplicate"), "{e}");
    }
}
