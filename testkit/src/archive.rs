//! A signed apt archive laid out and signed like Ubuntu's:
//!
//! ```text
//! www/dists/<suite>/InRelease                    clearsigned by a key made for it
//! www/dists/<suite>/<component>/binary-<arch>/Packages (+ .xz), listed in InRelease
//!                                                 with MD5Sum and SHA256 digests and sizes
//! www/pool/<component>/<p>/<source>/<name>_<version>_<arch>.deb
//! key.asc, fingerprint, versions                  the public key (TEST ONLY), its
//!                                                 fingerprint, `package=version` lines
//! ```
//!
//! Keys and signatures come from a real gpg in a throw-away GNUPGHOME ([`Gpg`]): the
//! product verifies them with its own OpenPGP code, apt-get with gpgv.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use md5::Digest as _;

use crate::{run, sha256_hex, write};

/// A gpg with its own home directory; dropping it stops the agent it started.
pub struct Gpg {
    pub home: PathBuf,
}

impl Gpg {
    /// A gpg whose home is `home` (created, mode 0700).
    pub fn new(home: &Path) -> Result<Gpg> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))?;
        Ok(Gpg { home: home.to_path_buf() })
    }

    /// `gpg` in batch mode with an empty passphrase and this home.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", &self.home).args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }

    /// A new primary key for `uid` (`algo`: "rsa2048", …) with `usage` ("sign", or "cert"
    /// for a certify-only primary); returns its fingerprint.
    pub fn gen(&self, uid: &str, algo: &str, usage: &str) -> Result<String> {
        run(self.cmd().args(["--quick-gen-key", uid, algo, usage, "never"]))?;
        self.fpr(uid)
    }

    /// Add a signing subkey to the key `fpr` (archive keys usually sign with one).
    pub fn add_signing_subkey(&self, fpr: &str, algo: &str) -> Result<()> {
        run(self.cmd().args(["--quick-add-key", fpr, algo, "sign", "never"])).map(drop)
    }

    /// Fingerprint of the primary key of `uid`.
    pub fn fpr(&self, uid: &str) -> Result<String> {
        let out = run(self.cmd().args(["--with-colons", "--list-keys", uid]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let fpr = text.lines().find_map(|l| l.strip_prefix("fpr:")).map(|l| l.trim_matches(':').to_string());
        fpr.with_context(|| format!("gpg lists no fingerprint for {uid}"))
    }

    /// The armored public key `fpr`.
    pub fn export(&self, fpr: &str) -> Result<String> {
        Ok(String::from_utf8(run(self.cmd().args(["--armor", "--export", fpr]))?.stdout)?)
    }

    /// `text` clearsigned by `fpr` with SHA512 (an InRelease).
    pub fn clearsign(&self, fpr: &str, text: &str) -> Result<Vec<u8>> {
        let mut child = self
            .cmd()
            .args(["--local-user", fpr, "--digest-algo", "SHA512", "--clearsign"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running gpg --clearsign")?;
        child.stdin.take().context("gpg stdin")?.write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("gpg --clearsign failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // Only our agent: it is bound to this GNUPGHOME.
        let _ = Command::new("gpgconf").env("GNUPGHOME", &self.home).args(["--kill", "gpg-agent"]).output();
    }
}

/// What an archive says about itself in its Release file.
#[derive(Debug, Clone)]
pub struct Spec {
    pub origin: String,
    pub suite: String,
    /// The Release `Version:` (a Debian point release), if any.
    pub version: Option<String>,
    pub component: String,
    pub arch: String,
    pub description: String,
}

/// An archive as written: its index, the Release text it signed, the versions it holds.
#[derive(Debug, Clone)]
pub struct Archive {
    /// `<dir>/www`: serve this directory as the archive's root URL.
    pub www: PathBuf,
    /// The Packages index and its .xz.
    pub packages: Vec<u8>,
    pub packages_xz: Vec<u8>,
    /// The Release text (what InRelease clearsigns).
    pub release: String,
    /// Package name -> version.
    pub versions: BTreeMap<String, String>,
    /// Package name -> pool path (relative to `www`).
    pub pool: BTreeMap<String, String>,
}

impl Spec {
    /// `dists/<suite>/<component>/binary-<arch>`
    pub fn index_dir(&self) -> String {
        format!("dists/{}/{}/binary-{}", self.suite, self.component, self.arch)
    }
}

/// The control fields of a .deb (`dpkg-deb --field`), ending in one newline.
pub fn control(deb: &Path) -> Result<String> {
    let out = run(Command::new("dpkg-deb").arg("--field").arg(deb))?;
    Ok(String::from_utf8(out.stdout)?.trim_end_matches('\n').to_string() + "\n")
}

/// A control field's value (first line).
pub fn field<'a>(control: &'a str, name: &str) -> Option<&'a str> {
    control.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// Where Debian's pool keeps a package: `pool/<component>/<prefix>/<source>/<file>` (`lib`
/// sources by their first four letters; the file name drops the epoch).
pub fn pool_path(control: &str, component: &str) -> Result<String> {
    let package = field(control, "Package").context("a .deb without Package")?;
    let version = field(control, "Version").context("a .deb without Version")?;
    let arch = field(control, "Architecture").context("a .deb without Architecture")?;
    let source = field(control, "Source").and_then(|s| s.split_whitespace().next()).unwrap_or(package);
    let n = if source.starts_with("lib") { 4 } else { 1 };
    let prefix: String = source.chars().take(n).collect();
    let ver = version.split_once(':').map_or(version, |(_, v)| v);
    Ok(format!("pool/{component}/{prefix}/{source}/{package}_{ver}_{arch}.deb"))
}

/// `xz -9` of `data`.
pub fn xz(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("xz")
        .args(["-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running xz")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    feeder.join().map_err(|_| anyhow::anyhow!("xz feeder panicked"))??;
    if !out.status.success() {
        bail!("xz failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The Release text of an archive whose index files are `files` (path below the index
/// directory, bytes): Ubuntu's fields and its MD5Sum and SHA256 lists.
pub fn release(spec: &Spec, files: &[(&str, &[u8])]) -> String {
    let format = "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] UTC";
    let date = time::format_description::parse_borrowed::<2>(format)
        .ok()
        .and_then(|f| time::OffsetDateTime::now_utc().format(&f).ok())
        .unwrap_or_default();
    let mut r = format!(
        "Origin: {o}\nLabel: {o}\nSuite: {s}\n{v}Codename: {s}\nDate: {date}\nArchitectures: {a}\n\
         Components: {c}\nDescription: {d}\n",
        o = spec.origin,
        s = spec.suite,
        v = spec.version.as_ref().map(|v| format!("Version: {v}\n")).unwrap_or_default(),
        a = spec.arch,
        c = spec.component,
        d = spec.description,
    );
    let dir = format!("{}/binary-{}", spec.component, spec.arch);
    for (title, md5) in [("MD5Sum", true), ("SHA256", false)] {
        r.push_str(title);
        r.push_str(":\n");
        for (n, b) in files {
            let d = if md5 { hex::encode(md5::Md5::digest(b)) } else { sha256_hex(b) };
            r.push_str(&format!(" {d} {:>8} {dir}/{n}\n", b.len()));
        }
    }
    r
}

/// Lay out `debs` as the archive `spec` under `dir/www`, its InRelease signed by key `fpr`
/// of `gpg`; writes `dir/{key.asc,fingerprint,versions}` too.
pub fn write_archive(dir: &Path, debs: &[PathBuf], spec: &Spec, gpg: &Gpg, fpr: &str) -> Result<Archive> {
    let www = dir.join("www");
    let mut stanzas = BTreeMap::new();
    let mut versions = BTreeMap::new();
    let mut pool = BTreeMap::new();
    for deb in debs {
        let ctl = control(deb)?;
        let package = field(&ctl, "Package").context("a .deb without Package")?.to_string();
        let rel = pool_path(&ctl, &spec.component)?;
        let data = std::fs::read(deb).with_context(|| format!("reading {}", deb.display()))?;
        write(&www.join(&rel), &data)?;
        // Like dpkg-scanpackages: the control fields, then where the file is and its digests.
        let stanza = format!(
            "{ctl}Filename: {rel}\nSize: {}\nMD5sum: {}\nSHA256: {}\n",
            data.len(),
            hex::encode(md5::Md5::digest(&data)),
            sha256_hex(&data)
        );
        versions.insert(package.clone(), field(&ctl, "Version").unwrap_or_default().to_string());
        pool.insert(package.clone(), rel);
        stanzas.insert(package, stanza);
    }
    let packages = stanzas.into_values().collect::<Vec<_>>().join("\n").into_bytes();
    let packages_xz = xz(&packages)?;
    let idir = www.join(spec.index_dir());
    write(&idir.join("Packages"), &packages)?;
    write(&idir.join("Packages.xz"), &packages_xz)?;
    let release = release(spec, &[("Packages", &packages), ("Packages.xz", &packages_xz)]);
    write(&www.join(format!("dists/{}/InRelease", spec.suite)), &gpg.clearsign(fpr, &release)?)?;
    write(&dir.join("key.asc"), gpg.export(fpr)?.as_bytes())?;
    write(&dir.join("fingerprint"), format!("{fpr}\n").as_bytes())?;
    let lines: String = versions.iter().map(|(p, v)| format!("{p}={v}\n")).collect();
    write(&dir.join("versions"), lines.as_bytes())?;
    Ok(Archive { www, packages, packages_xz, release, versions, pool })
}
