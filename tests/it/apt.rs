//! Offline Ubuntu package installation against a real signed apt repository made here:
//! .deb files built with `dpkg-deb --build`, a Packages index, an InRelease clearsigned
//! by a gpg key generated for the test, served over loopback HTTP.
use crate::common::{self, run_ok};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::http::{Fault, Server};
use imgbuild::apt::{self, control, AptError};
use imgbuild::layer::{Content, Kind, Layer};
use imgbuild::plan::{BuildPlan, PackagePlan, PlanOptions};
use imgbuild::types::{Arch, Role};
use imgbuild_testkit::archive;

/// Tools this test needs; in CI (`CI` set) a missing one is a failure, not a skip.
fn tools_present() -> bool {
    ["gpg", "gpg-agent", "dpkg-deb", "xz"].into_iter().all(common::tool)
}

fn sha256(b: &[u8]) -> String {
    imgbuild_testkit::sha256_hex(b)
}

/// A package to build: control fields, files (path, mode, content), symlinks, scripts.
struct Pkg<'a> {
    name: &'a str,
    version: &'a str,
    extra: &'a str,
    files: &'a [(&'a str, u32, &'a str)],
    links: &'a [(&'a str, &'a str)],
    control_files: &'a [(&'a str, u32, &'a str)],
    compress: &'a str,
}

fn build_deb(dir: &Path, p: &Pkg) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join(format!("src-{}", p.name));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    let control = format!(
        "Package: {}\nVersion: {}\nArchitecture: amd64\nMaintainer: Test <t@test.invalid>\n{}Description: test package {}\n",
        p.name, p.version, p.extra, p.name
    );
    std::fs::write(root.join("DEBIAN/control"), control).unwrap();
    let mut md5 = String::new();
    for (path, mode, text) in p.files {
        let f = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).unwrap();
        if !path.starts_with("/etc/") {
            md5.push_str(&format!("{}  {}\n", md5_of(text.as_bytes()), path.trim_start_matches('/')));
        }
    }
    std::fs::write(root.join("DEBIAN/md5sums"), md5).unwrap();
    for (link, target) in p.links {
        let l = root.join(link.trim_start_matches('/'));
        std::fs::create_dir_all(l.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, l).unwrap();
    }
    for (name, mode, text) in p.control_files {
        let f = root.join("DEBIAN").join(name);
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let out = dir.join(format!("{}_{}_amd64.deb", p.name, p.version));
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", &format!("-Z{}", p.compress), "--build"])
            .arg(&root)
            .arg(&out),
    );
    out
}

fn md5_of(b: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(b))
}

struct Fixture {
    /// Removed when the test process exits (a static is never dropped).
    dir: PathBuf,
    server: Server,
    debs: BTreeMap<String, PathBuf>,
}

const POSTINST_ALT: &str = "#!/bin/sh
set -e
case \"$1\" in
    configure)
        update-alternatives --install /usr/sbin/alty alty /usr/sbin/alty-legacy 10 \\
            --slave /usr/sbin/alty-save alty-save /usr/sbin/alty-legacy-save
    ;;
    abort-upgrade|abort-remove|abort-deconfigure)
    ;;
    *)
        echo \"postinst called with unknown argument \\`$1'\" >&2
        exit 1
    ;;
esac
exit 0
";

const BASE_STATUS: &str = "Package: basepkg
Status: install ok installed
Priority: required
Maintainer: Test <t@test.invalid>
Architecture: amd64
Version: 2.1-1
Description: in the base image

Package: zlast
Status: install ok installed
Maintainer: Test <t@test.invalid>
Architecture: all
Version: 1
Description: sorts after the new packages
";

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        if !tools_present() {
            return None;
        }
        let dir = common::process_tempdir("apt");
        let gpg = archive::Gpg::new(&dir.join("g")).unwrap();
        let good = gpg.gen("imgbuild test archive <good@test.invalid>", "rsa2048", "sign").unwrap();
        let other = gpg.gen("someone else <other@test.invalid>", "rsa2048", "sign").unwrap();
        std::fs::write(dir.join("good.asc"), gpg.export(&good).unwrap()).unwrap();
        std::fs::write(dir.join("other.asc"), gpg.export(&other).unwrap()).unwrap();
        std::fs::write(dir.join("good.fpr"), &good).unwrap();
        // Archive keys usually sign with a subkey (Debian's do): certify-only primary.
        let sub_primary = gpg.gen("subkey signer <sub@test.invalid>", "rsa2048", "cert").unwrap();
        gpg.add_signing_subkey(&sub_primary, "rsa2048").unwrap();
        std::fs::write(dir.join("sub.asc"), gpg.export(&sub_primary).unwrap()).unwrap();

        let pkgs = [
            Pkg {
                name: "tool",
                version: "1.0-1",
                extra: "Depends: libdep (>= 1.0), basepkg (>= 2.0)\n",
                files: &[
                    ("/usr/bin/tool", 0o755, "#!/bin/sh\necho tool\n"),
                    ("/usr/share/doc/tool/README", 0o644, "tool docs\n"),
                    ("/etc/tool.conf", 0o644, "setting = 1\n"),
                ],
                links: &[("/usr/bin/tool-link", "tool")],
                control_files: &[("conffiles", 0o644, "/etc/tool.conf\n")],
                compress: "xz",
            },
            Pkg {
                name: "libdep",
                version: "1.2-1",
                extra: "Multi-Arch: same\nPre-Depends: basepkg\n",
                files: &[("/usr/lib/x86_64-linux-gnu/libdep.so.1", 0o644, "not really ELF\n")],
                links: &[],
                control_files: &[("triggers", 0o644, "activate-noawait ldconfig\n")],
                compress: "gzip",
            },
            Pkg {
                name: "basepkg",
                version: "2.1-1",
                extra: "",
                files: &[("/usr/bin/basepkg", 0o755, "base\n"), ("/sbin/basepkg-tool", 0o755, "old path\n")],
                links: &[],
                control_files: &[],
                compress: "xz",
            },
            Pkg {
                name: "alty",
                version: "3",
                extra: "",
                files: &[
                    ("/usr/sbin/alty-legacy", 0o755, "legacy\n"),
                    ("/usr/sbin/alty-legacy-save", 0o755, "legacy save\n"),
                ],
                links: &[],
                control_files: &[("postinst", 0o755, POSTINST_ALT)],
                compress: "zstd",
            },
            Pkg {
                name: "needsmissing",
                version: "1",
                extra: "Depends: nowhere (>= 1) | alsonowhere\n",
                files: &[("/usr/bin/nm", 0o755, "x\n")],
                links: &[],
                control_files: &[],
                compress: "xz",
            },
            Pkg {
                name: "badscript",
                version: "1",
                extra: "",
                files: &[("/usr/bin/bad", 0o755, "x\n")],
                links: &[],
                control_files: &[("postinst", 0o755, "#!/bin/sh\nset -e\nadduser --system bad\n")],
                compress: "xz",
            },
        ];
        let server = Server::start();
        let mut debs = BTreeMap::new();
        for p in &pkgs {
            debs.insert(p.name.to_string(), build_deb(&dir, p));
        }
        // The archive as the shared builder lays it out (testkit/, the boot test's too).
        let spec = archive::Spec {
            origin: "imgbuild-test".into(),
            suite: "test".into(),
            version: None,
            component: "main".into(),
            arch: "amd64".into(),
            description: "TEST ONLY: packages built by tests/it/apt.rs".into(),
        };
        let debs_list: Vec<PathBuf> = debs.values().cloned().collect();
        let a = archive::write_archive(&dir.join("archive"), &debs_list, &spec, &gpg, &good).unwrap();
        let index = spec.index_dir();
        for prefix in ["/repo", "/tampered", "/subkey"] {
            server.add_dir(prefix, a.www.clone());
        }
        // The same index signed by the subkey.
        let by_subkey = gpg.clearsign(&sub_primary, &a.release).unwrap();
        server.add_bytes("/subkey/dists/test/InRelease", by_subkey);
        // Same signed InRelease, but an index that differs from what it signs.
        let mut bad = a.packages.clone();
        let at = bad.len() - 20;
        bad[at] ^= 1;
        server.add_bytes(&format!("/tampered/{index}/Packages.xz"), bad.clone());
        server.add_bytes(&format!("/tampered/{index}/Packages"), bad);
        std::fs::write(dir.join("status"), BASE_STATUS).unwrap();
        drop(gpg); // stops its agent: the fixture lives in a static and is never dropped
        Some(Fixture { dir, server, debs })
    })
    .as_ref()
}

/// A recipe in its own directory (so each test has its own lock file).
fn recipe(f: &Fixture, name: &str, prefix: &str, key: &str, install: &[&str]) -> PathBuf {
    let d = f.dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(f.dir.join(key), d.join("key.asc")).unwrap();
    let list: String = install.iter().map(|p| format!("    - {p}\n")).collect();
    let text = format!(
        "name: apt-test\nkubernetes_version: v1.30.3\narches: [amd64]\nsource_date_epoch: 1724198400\n\
         base:\n  name: base\n  version: '1'\n  format: raw\n  urls: [{u}/base.img]\n  sha256:\n    amd64: {z}\n\
         artifacts: []\n\
         packages:\n  archive:\n    amd64: {u}{prefix}\n  suites: [test]\n  key_file: key.asc\n  install:\n{list}",
        u = f.server.base(),
        z = "0".repeat(64),
    );
    let p = d.join("recipe.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn lock(f: &Fixture, recipe: &Path) -> Output {
    common::bin()
        .args(["--quiet", "lock", "--recipe"])
        .arg(recipe)
        .arg("--base-status")
        .arg(f.dir.join("status"))
        .arg("--cache-dir")
        .arg(recipe.parent().unwrap().join("cache"))
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn lock_file(recipe: &Path) -> imgbuild::lockfile::LockFile {
    imgbuild::lockfile::read_lock(&PathBuf::from(format!("{}.lock", recipe.display()))).unwrap()
}

#[test]
fn good_signature_resolves_minus_base_and_writes_a_deterministic_lock() {
    let Some(f) = fixture() else { return };
    let r = recipe(f, "good", "/repo", "good.asc", &["tool", "alty=3"]);
    let out = lock(f, &r);
    assert!(out.status.success(), "{}", stderr(&out));
    let lock_path = PathBuf::from(format!("{}.lock", r.display()));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), lock_path.display().to_string());
    let l = lock_file(&r);
    let a = &l.arches["amd64"];
    let names: Vec<_> = a.packages.iter().map(|p| (p.name.as_str(), p.requested)).collect();
    // basepkg is in the base status at a satisfying version: not re-installed;
    // libdep is not: pulled in as a dependency.
    assert_eq!(names, [("alty", true), ("libdep", false), ("tool", true)]);
    for p in &a.packages {
        let bytes = std::fs::read(&f.debs[&p.name]).unwrap();
        assert_eq!(p.sha256.as_str(), sha256(&bytes), "{}", p.name);
        assert_eq!(p.size, bytes.len() as u64);
        assert!(p.url.starts_with(&f.server.url("/repo/pool/main/")), "{}", p.url);
    }
    let fpr = std::fs::read_to_string(f.dir.join("good.fpr")).unwrap();
    assert_eq!(a.releases[0].signer, fpr);
    assert!(a.indexes[0].url.ends_with("main/binary-amd64/Packages.xz"));
    // Same inputs, same bytes (the second run reads the index from the cache).
    let first = std::fs::read(&lock_path).unwrap();
    assert!(lock(f, &r).status.success());
    assert_eq!(std::fs::read(&lock_path).unwrap(), first);
}

#[test]
fn signature_by_a_signing_subkey_of_the_key_is_good() {
    let Some(f) = fixture() else { return };
    let r = recipe(f, "subkey", "/subkey", "sub.asc", &["tool"]);
    let out = lock(f, &r);
    assert!(out.status.success(), "{}", stderr(&out));
    // The same InRelease does not verify with an unrelated key.
    let r = recipe(f, "subkey-other", "/subkey", "good.asc", &["tool"]);
    assert_eq!(lock(f, &r).status.code(), Some(3));
}

/// InRelease is read before its signature can be checked: an endless one is cut at its
/// limit (it once grew in memory until the process died), exit 1, no lock written.
#[test]
fn an_endless_inrelease_is_cut_at_its_limit() {
    let Some(f) = fixture() else { return };
    f.server.fault_always("/endless/dists/test/InRelease", Fault::Endless);
    let r = recipe(f, "endless", "/endless", "good.asc", &["tool"]);
    let out = common::run_limited(
        common::bin()
            .args(["--quiet", "lock", "--recipe"])
            .arg(&r)
            .arg("--base-status")
            .arg(f.dir.join("status"))
            .arg("--cache-dir")
            .arg(r.parent().unwrap().join("cache")),
        std::time::Duration::from_secs(60),
    );
    common::exits_with(&out, 1, "larger than the 16777216-byte limit");
    assert!(!r.with_extension("yaml.lock").exists());
}

#[test]
fn signature_by_another_key_is_an_integrity_error() {
    let Some(f) = fixture() else { return };
    let r = recipe(f, "badsig", "/repo", "other.asc", &["tool"]);
    let out = lock(f, &r);
    common::exits_with(&out, 3, "signature");
    assert!(!r.with_extension("yaml.lock").exists());
}

#[test]
fn pinned_fingerprint_must_match_the_key() {
    let Some(f) = fixture() else { return };
    let r = recipe(f, "badfpr", "/repo", "good.asc", &["tool"]);
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("  key_file:", &format!("  fingerprint: {}\n  key_file:", "A".repeat(40)));
    std::fs::write(&r, text).unwrap();
    let out = lock(f, &r);
    common::exits_with(&out, 3, "fingerprint");
}

#[test]
fn tampered_packages_index_is_an_integrity_error() {
    let Some(f) = fixture() else { return };
    let r = recipe(f, "tampered", "/tampered", "good.asc", &["tool"]);
    let out = lock(f, &r);
    common::exits_with(&out, 3, "does not match the signed InRelease");
}

#[test]
fn missing_package_is_an_input_error_naming_it() {
    let Some(f) = fixture() else { return };
    let r = recipe(f, "missing", "/repo", "good.asc", &["tool", "no-such-pkg"]);
    let out = lock(f, &r);
    common::exits_with(&out, 2, "no-such-pkg");
    // An unsatisfiable dependency names the dependency and who needs it.
    let r = recipe(f, "missing-dep", "/repo", "good.asc", &["needsmissing"]);
    let out = lock(f, &r);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nowhere") && stderr(&out).contains("needsmissing"), "{}", stderr(&out));
}

#[test]
fn lock_refuses_a_package_whose_scripts_cannot_be_reproduced() {
    let Some(f) = fixture() else { return };
    let r = recipe(f, "badscript", "/repo", "good.asc", &["badscript"]);
    let out = lock(f, &r);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("badscript") && stderr(&out).contains("adduser --system bad"),
        "{}",
        stderr(&out)
    );
    assert!(!PathBuf::from(format!("{}.lock", r.display())).exists());
}

#[test]
fn build_refuses_a_missing_lock_offline_and_a_stale_lock() {
    let Some(f) = fixture() else { return };
    let r = recipe(f, "stale", "/repo", "good.asc", &["tool"]);
    let build = || {
        common::bin()
            .args(["--quiet", "build", "--offline", "--recipe"])
            .arg(&r)
            .arg("--cache-dir")
            .arg(r.parent().unwrap().join("cache"))
            .arg("--output")
            .arg(r.parent().unwrap().join("out"))
            .output()
            .unwrap()
    };
    // Offline, packages cannot be resolved without a lock.
    let out = build();
    common::exits_with(&out, 2, "imgbuild lock");
    assert!(lock(f, &r).status.success());
    // With a fresh lock the build gets past the lock check (and stops at the empty cache).
    let out = build();
    assert!(!stderr(&out).contains("imgbuild lock"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&r).unwrap().replace("    - tool\n", "    - tool\n    - alty\n");
    std::fs::write(&r, text).unwrap();
    let out = build();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("stale") && stderr(&out).contains("imgbuild lock"), "{}", stderr(&out));
}

/// The whole path: `imgbuild build` of the noble-shaped fixture image with packages from
/// the signed test repository, first resolved live (no lock), then from the lock; the
/// image is then read offline.
#[test]
fn build_installs_the_packages_into_the_image() {
    let Some(f) = fixture() else { return };
    let fx = common::fixture::noble_fixture();
    let d = fx.dir.path().join("with-packages");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(f.dir.join("good.asc"), d.join("key.asc")).unwrap();
    let text = std::fs::read_to_string(&fx.recipe).unwrap();
    let r = d.join("recipe.yaml");
    // An upstream-shaped archive URL (what the lock, the manifest and the SBOM record),
    // served by the test repository through a mirror.
    let archive = "http://archive.imgbuild.test/repo";
    let mirror = format!("http://archive.imgbuild.test={}", f.server.base());
    std::fs::write(
        &r,
        format!(
            "{text}packages:\n  archive:\n    amd64: {archive}\n    arm64: {archive}\n  suites: [test]\n  \
             key_file: key.asc\n  install: [tool, alty]\n"
        ),
    )
    .unwrap();
    let recipe_arg = r.display().to_string();
    let out1 = d.join("out1");
    let b = common::fixture::build(
        &fx,
        "worker",
        &["--recipe", &recipe_arg, "--mirror", &mirror, "--output", &out1.display().to_string()],
    );
    assert!(b.status.success(), "{}", stderr(&b));
    assert!(stderr(&b).contains("no lock file"), "{}", stderr(&b));
    let image1 = String::from_utf8_lossy(&b.stdout).trim().to_string();

    // Lock (the base is in the cache now), then build from the lock: same image.
    let l = common::bin()
        .args(["--quiet", "lock", "--arch", "amd64", "--mirror", &mirror, "--recipe"])
        .arg(&r)
        .arg("--cache-dir")
        .arg(&fx.cache)
        .env("PATH", common::fixture::path_with_sbin())
        .output()
        .unwrap();
    assert!(l.status.success(), "{}", stderr(&l));
    let names: Vec<_> = lock_file(&r).arches["amd64"].packages.iter().map(|p| p.name.clone()).collect();
    // basepkg is not in this base image: the dependency is installed.
    assert_eq!(names, ["alty", "basepkg", "libdep", "tool"]);
    // Lock downloaded the .debs: with the lock, the build works offline.
    let out2 = d.join("out2");
    let b = common::fixture::build(
        &fx,
        "worker",
        &["--offline", "--recipe", &recipe_arg, "--output", &out2.display().to_string()],
    );
    assert!(b.status.success(), "{}", stderr(&b));
    assert!(!stderr(&b).contains("no lock file"), "{}", stderr(&b));
    let image2 = String::from_utf8_lossy(&b.stdout).trim().to_string();
    assert_eq!(
        sha256(&std::fs::read(&image1).unwrap()),
        sha256(&std::fs::read(&image2).unwrap()),
        "live resolution and the lock give the same image"
    );

    // The image's identity includes every package it installs: the manifest lists them
    // (beside and, as `verify` checks, inside the image), the inputs digest covers them,
    // the SBOM names them.
    let locked = lock_file(&r).arches["amd64"].packages.clone();
    let stem = "ubuntu-24.04-k8s-v1.30.3-worker-amd64";
    let m: imgbuild::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(out2.join(format!("{stem}.manifest.json"))).unwrap()).unwrap();
    let got: Vec<_> =
        m.packages.iter().map(|p| (&p.name, &p.version, p.sha256.as_str(), p.urls.join(" "))).collect();
    let want: Vec<_> =
        locked.iter().map(|p| (&p.name, &p.version, p.sha256.as_str(), p.url.clone())).collect();
    assert_eq!(got, want);
    let v = common::bin()
        .env("PATH", common::fixture::path_with_sbin())
        .args(["verify", &image2])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", stderr(&v));
    let lr = imgbuild::recipe::load(Some(&r)).unwrap();
    let o = PlanOptions { recipe_path: Some(r.clone()), ..PlanOptions::new(Role::Worker, Arch::Amd64) };
    let mut plan = BuildPlan::resolve(&lr, &o).unwrap();
    // The fixture's (pinned, cached) add-on images complete the plan as the build does.
    fx.resolve_images(&mut plan);
    let inputs = imgbuild::layer::seal::inputs_text(&plan);
    for p in &locked {
        assert!(inputs.contains(&format!("package={} {} {}\n", p.name, p.version, p.sha256)), "{inputs}");
    }
    assert_eq!(m.inputs_digest, imgbuild::layer::inputs_digest(&plan));
    let mut without = plan.clone();
    without.packages = PackagePlan::None;
    assert_ne!(imgbuild::layer::inputs_digest(&without), m.inputs_digest, "packages change the identity");
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out2.join(format!("{stem}.spdx.json"))).unwrap()).unwrap();
    common::validate_spdx(&out2.join(format!("{stem}.spdx.json")));
    for p in &locked {
        let id = format!("SPDXRef-Package-deb-{}", p.name);
        let pkg = sbom["packages"].as_array().unwrap().iter().find(|x| x["SPDXID"] == id.as_str());
        let pkg = pkg.unwrap_or_else(|| panic!("{id} missing from the SBOM"));
        assert_eq!(
            (&pkg["name"], &pkg["versionInfo"]),
            (&p.name.as_str().into(), &p.version.as_str().into())
        );
        assert_eq!(pkg["checksums"][0]["checksumValue"], p.sha256.as_str());
        assert!(sbom["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["relatedSpdxElement"] == id.as_str()));
    }

    // Read the image offline.
    let raw = imgbuild_testkit::qemu::to_raw(Path::new(&image2), None, d.join("image.raw"));
    let part = common::fixture::read_parts(&raw).into_iter().find(|p| p.number == 1).unwrap();
    let spec = format!("{}?offset={}", raw.display(), part.offset);
    let cat = |p: &str| {
        let o = run_ok(Command::new("debugfs").env("PATH", common::fixture::path_with_sbin()).args([
            "-R",
            &format!("cat {p}"),
            &spec,
        ]));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let status = cat("/var/lib/dpkg/status");
    let stanzas = control::parse(&status, "status").unwrap();
    apt::install::check_status(&stanzas).unwrap();
    let names: Vec<_> = stanzas.iter().map(|s| s.get("Package").unwrap()).collect();
    assert_eq!(
        names,
        ["alty", "base-files", "basepkg", "iptables", "libc6", "libdep", "openssh-server", "tool"]
    );
    assert!(status.contains("Package: tool\nStatus: install ok installed\n"), "{status}");
    assert!(cat("/var/lib/dpkg/info/tool.list").lines().any(|l| l == "/usr/bin/tool"));
    assert!(cat("/var/lib/dpkg/info/libdep:amd64.list").contains("/usr/lib/x86_64-linux-gnu/libdep.so.1"));
    assert_eq!(cat("/usr/bin/tool"), "#!/bin/sh\necho tool\n");
    assert_eq!(cat("/etc/tool.conf"), "setting = 1\n");
    let stat = run_ok(Command::new("debugfs").env("PATH", common::fixture::path_with_sbin()).args([
        "-R",
        "stat /etc/alternatives/alty",
        &spec,
    ]));
    assert!(String::from_utf8_lossy(&stat.stdout).contains("Fast link dest: \"/usr/sbin/alty-legacy\""));
    // The image manifest lists the packages' files too (the seal comes last).
    assert!(cat("/etc/imgbuild/manifest.json").contains("/usr/bin/tool"));
}

fn text_of(layer: &Layer, path: &str) -> String {
    apt::install::layer_text(layer, path).unwrap_or_else(|| panic!("{path} not in the layer"))
}

/// The base image has the `alty` alternative already, with a better choice.
fn base_file(path: &str) -> Result<Option<Vec<u8>>, AptError> {
    Ok((path == "/var/lib/dpkg/alternatives/alty-none").then(Vec::new))
}

#[test]
fn install_into_writes_files_and_a_consistent_dpkg_database() {
    let Some(f) = fixture() else { return };
    let work = tempfile::tempdir().unwrap();
    let debs: Vec<PathBuf> = ["tool", "libdep", "alty"].iter().map(|n| f.debs[*n].clone()).collect();
    let mut layer = Layer::new(1724198400);
    let got = apt::install_into(&mut layer, &debs, BASE_STATUS, &base_file, work.path()).unwrap();
    assert_eq!(
        got.packages,
        [
            ("alty".to_string(), "3".to_string()),
            ("libdep".into(), "1.2-1".into()),
            ("tool".into(), "1.0-1".into())
        ]
    );

    // Files with modes and owners, symlinks.
    let tool = layer.get("/usr/bin/tool").unwrap();
    assert!(matches!(&tool.kind, Kind::File(Content::Bytes(b)) if b == b"#!/bin/sh\necho tool\n"));
    assert_eq!((tool.mode, tool.uid, tool.gid), (0o755, 0, 0));
    assert_eq!(layer.get("/usr/share/doc/tool/README").unwrap().mode, 0o644);
    assert!(matches!(&layer.get("/usr/bin/tool-link").unwrap().kind, Kind::Symlink(t) if t == "tool"));

    // Status: base stanzas kept, new ones added, sorted, separated, no duplicates.
    let status = text_of(&layer, "/var/lib/dpkg/status");
    let stanzas = control::parse(&status, "status").unwrap();
    let names: Vec<_> = stanzas.iter().map(|s| s.get("Package").unwrap()).collect();
    assert_eq!(names, ["alty", "basepkg", "libdep", "tool", "zlast"]);
    apt::install::check_status(&stanzas).unwrap();
    assert!(status
        .contains("\n\nPackage: basepkg\nStatus: install ok installed\nPriority: required\nMaintainer:"));
    let tool_st = &stanzas[3];
    assert_eq!(tool_st.get("Status"), Some("install ok installed"));
    assert_eq!(tool_st.get("Version"), Some("1.0-1"));
    let conf: Vec<_> = tool_st.lines("Conffiles").collect();
    assert_eq!(conf, [format!("/etc/tool.conf {}", md5_of(b"setting = 1\n"))]);

    // Info files; Multi-Arch: same packages are named pkg:arch.
    let list = text_of(&layer, "/var/lib/dpkg/info/tool.list");
    assert!(list.starts_with("/.\n"), "{list}");
    for p in [
        "/usr/bin/tool",
        "/usr/bin/tool-link",
        "/usr/share/doc/tool/README",
        "/etc/tool.conf",
        "/usr/share/doc",
    ] {
        assert!(list.lines().any(|l| l == p), "{p} missing from {list}");
    }
    assert!(text_of(&layer, "/var/lib/dpkg/info/tool.md5sums").contains("usr/bin/tool\n"));
    assert_eq!(text_of(&layer, "/var/lib/dpkg/info/tool.conffiles"), "/etc/tool.conf\n");
    assert!(text_of(&layer, "/var/lib/dpkg/info/libdep:amd64.list")
        .contains("/usr/lib/x86_64-linux-gnu/libdep.so.1"));
    assert_eq!(layer.get("/var/lib/dpkg/info/alty.postinst").unwrap().mode, 0o755);

    // update-alternatives, done at build time.
    let link = |p: &str| match &layer.get(p).unwrap_or_else(|| panic!("{p}")).kind {
        Kind::Symlink(t) => t.clone(),
        k => panic!("{p}: {k:?}"),
    };
    assert_eq!(link("/usr/sbin/alty"), "/etc/alternatives/alty");
    assert_eq!(link("/etc/alternatives/alty"), "/usr/sbin/alty-legacy");
    assert_eq!(link("/usr/sbin/alty-save"), "/etc/alternatives/alty-save");
    assert_eq!(link("/etc/alternatives/alty-save"), "/usr/sbin/alty-legacy-save");
    assert_eq!(
        text_of(&layer, "/var/lib/dpkg/alternatives/alty"),
        "auto\n/usr/sbin/alty\nalty-save\n/usr/sbin/alty-save\n\n/usr/sbin/alty-legacy\n10\n/usr/sbin/alty-legacy-save\n\n"
    );
    let (db, l1, l2) =
        real_update_alternatives(&["/usr/sbin/alty-legacy", "/usr/sbin/alty-legacy-save"], None);
    assert_eq!(
        text_of(&layer, "/var/lib/dpkg/alternatives/alty"),
        db,
        "same database as update-alternatives"
    );
    assert_eq!((link("/usr/sbin/alty"), link("/etc/alternatives/alty")), (l1, l2));
    // libdep ships a library with an ldconfig trigger: the first-boot unit is enabled.
    assert!(got.ldconfig_unit);
    assert!(text_of(&layer, apt::install::LDCONFIG_UNIT).contains("Before=sysinit.target kubelet.service"));
    assert!(layer.get("/etc/systemd/system/sysinit.target.wants/imgbuild-ldconfig.service").is_some());

    // Deterministic: the same inputs in another order give the same layer.
    let mut again = Layer::new(1724198400);
    let rev: Vec<PathBuf> = debs.iter().rev().cloned().collect();
    apt::install_into(&mut again, &rev, BASE_STATUS, &base_file, work.path()).unwrap();
    let dump = |l: &Layer| format!("{:?}", l.iter().collect::<Vec<_>>());
    assert_eq!(dump(&layer), dump(&again));

    // Real dpkg agrees: materialise the layer and query it offline.
    dpkg_check(&layer);
}

/// Write the layer into a directory (modes included) as a stand-in root file system.
fn materialise(layer: &Layer) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    for (p, e) in layer.iter() {
        let dest = root.path().join(p.trim_start_matches('/'));
        match &e.kind {
            Kind::Dir => std::fs::create_dir_all(&dest).unwrap(),
            Kind::File(c) => {
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                match c {
                    Content::Bytes(b) => std::fs::write(&dest, b).unwrap(),
                    Content::Path(s) => drop(std::fs::copy(s, &dest).unwrap()),
                }
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode)).unwrap();
            }
            Kind::Symlink(t) => {
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(t, &dest).unwrap();
            }
        }
    }
    // What every dpkg-managed base image has (multiarch database layout).
    std::fs::create_dir_all(root.path().join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.path().join("var/lib/dpkg/info/format"), "1\n").unwrap();
    root
}

/// Ask the real dpkg about the materialised layer (`--root`/`--admindir`, no root needed).
fn dpkg_check(layer: &Layer) {
    let root = materialise(layer);
    let admin = root.path().join("var/lib/dpkg");
    let q = run_ok(Command::new("dpkg-query").arg(format!("--admindir={}", admin.display())).args([
        "-W",
        "-f",
        "${Package} ${Version} ${db:Status-Abbrev}\n",
    ]));
    assert!(q.stderr.is_empty(), "dpkg-query: {}", stderr(&q));
    let q = String::from_utf8_lossy(&q.stdout).to_string();
    assert!(
        q.contains("tool 1.0-1 ii") && q.contains("libdep 1.2-1 ii") && q.contains("basepkg 2.1-1 ii"),
        "{q}"
    );
    let l = run_ok(
        Command::new("dpkg-query")
            .arg(format!("--admindir={}", admin.display()))
            .args(["-L", "tool", "libdep"]),
    );
    let l = String::from_utf8_lossy(&l.stdout).to_string();
    assert!(l.contains("/usr/bin/tool\n") && l.contains("/usr/lib/x86_64-linux-gnu/libdep.so.1"), "{l}");
    let v = Command::new("dpkg")
        .arg(format!("--root={}", root.path().display()))
        .args(["--verify", "tool", "libdep", "alty"])
        .output()
        .unwrap();
    assert!(
        v.status.success() && v.stdout.is_empty() && v.stderr.is_empty(),
        "dpkg --verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        stderr(&v)
    );
    // A changed file is noticed, so the check above is not vacuous.
    std::fs::write(root.path().join("usr/bin/tool"), "changed").unwrap();
    let v = Command::new("dpkg")
        .arg(format!("--root={}", root.path().display()))
        .args(["--verify", "tool"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("/usr/bin/tool"), "{}", stderr(&v));
}

/// Run the real update-alternatives on a scratch root holding `files` (and an optional
/// existing database), and return its database file and the link targets.
fn real_update_alternatives(files: &[&str], existing: Option<&str>) -> (String, String, String) {
    let r = tempfile::tempdir().unwrap();
    for f in files {
        let p = r.path().join(f.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x").unwrap();
    }
    for d in ["etc/alternatives", "var/lib/dpkg/alternatives"] {
        std::fs::create_dir_all(r.path().join(d)).unwrap();
    }
    if let Some(db) = existing {
        std::fs::write(r.path().join("var/lib/dpkg/alternatives/alty"), db).unwrap();
        std::os::unix::fs::symlink("/etc/alternatives/alty", r.path().join("usr/sbin/alty")).unwrap();
        std::os::unix::fs::symlink("/usr/sbin/alty-nft", r.path().join("etc/alternatives/alty")).unwrap();
    }
    let mut c = Command::new("update-alternatives");
    c.arg("--root").arg(r.path()).args([
        "--quiet",
        "--install",
        "/usr/sbin/alty",
        "alty",
        "/usr/sbin/alty-legacy",
        "10",
    ]);
    c.args(["--slave", "/usr/sbin/alty-save", "alty-save", "/usr/sbin/alty-legacy-save"]);
    run_ok(&mut c);
    let db = std::fs::read_to_string(r.path().join("var/lib/dpkg/alternatives/alty")).unwrap();
    let l1 = std::fs::read_link(r.path().join("usr/sbin/alty")).unwrap().display().to_string();
    let l2 = std::fs::read_link(r.path().join("etc/alternatives/alty")).unwrap().display().to_string();
    (db, l1, l2)
}

fn link_of(layer: &Layer, p: &str) -> String {
    match &layer.get(p).unwrap_or_else(|| panic!("{p}")).kind {
        Kind::Symlink(t) => t.clone(),
        k => panic!("{p}: {k:?}"),
    }
}

#[test]
fn install_into_refuses_unknown_maintainer_script_commands() {
    let Some(f) = fixture() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut layer = Layer::new(0);
    let e =
        apt::install_into(&mut layer, &[f.debs["badscript"].clone()], BASE_STATUS, &base_file, work.path())
            .unwrap_err();
    assert!(matches!(e, AptError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("adduser --system bad"), "{e}");
}

#[test]
fn install_merges_with_an_existing_alternative_of_the_base() {
    let Some(f) = fixture() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut layer = Layer::new(0);
    let existing =
        "auto\n/usr/sbin/alty\nalty-save\n/usr/sbin/alty-save\n\n/usr/sbin/alty-nft\n20\n/usr/sbin/alty-nft-save\n\n";
    let base = |p: &str| -> Result<Option<Vec<u8>>, AptError> {
        Ok((p == "/var/lib/dpkg/alternatives/alty").then(|| existing.as_bytes().to_vec()))
    };
    apt::install_into(&mut layer, &[f.debs["alty"].clone()], BASE_STATUS, &base, work.path()).unwrap();
    let db = text_of(&layer, "/var/lib/dpkg/alternatives/alty");
    assert!(db.contains("/usr/sbin/alty-legacy\n10\n") && db.contains("/usr/sbin/alty-nft\n20\n"), "{db}");
    // The base's higher-priority choice stays selected, as update-alternatives decides.
    let files = [
        "/usr/sbin/alty-legacy",
        "/usr/sbin/alty-legacy-save",
        "/usr/sbin/alty-nft",
        "/usr/sbin/alty-nft-save",
    ];
    let (real_db, l1, l2) = real_update_alternatives(&files, Some(existing));
    assert_eq!(db, real_db);
    assert_eq!(link_of(&layer, "/etc/alternatives/alty"), l2);
    assert_eq!(link_of(&layer, "/usr/sbin/alty"), l1);
    assert_eq!(l2, "/usr/sbin/alty-nft");
    assert!(layer.get("/usr/sbin/alty-legacy").is_some());
}

/// `lock` without --base-status reads /var/lib/dpkg/status from the verified base image in
/// the cache: a qcow2 with a GPT whose ext4 partition is labelled like the recipe says.
#[test]
fn lock_reads_the_base_status_from_the_cached_base_image() {
    let Some(f) = fixture() else { return };
    if !["sgdisk", "mkfs.ext4", "qemu-img", "debugfs"].into_iter().all(common::tool) {
        return;
    }
    let r = recipe(f, "fromimage", "/repo", "good.asc", &["tool"]);
    let d = r.parent().unwrap();
    let rootdir = d.join("rootfs");
    std::fs::create_dir_all(rootdir.join("var/lib/dpkg")).unwrap();
    // The base has libdep as well this time: only tool is needed.
    let status = format!(
        "{BASE_STATUS}\nPackage: libdep\nStatus: install ok installed\nMaintainer: T <t@t>\n\
         Architecture: amd64\nMulti-Arch: same\nVersion: 1.5\nDescription: x\n"
    );
    std::fs::write(rootdir.join("var/lib/dpkg/status"), status).unwrap();
    let raw = d.join("disk.raw");
    let sh = |c: &str| run_ok(Command::new("sh").args(["-c", &format!("PATH=$PATH:/sbin:/usr/sbin; {c}")]));
    // mkfs first: mke2fs clears the start of the device, GPT included.
    sh(&format!(
        "truncate -s 24M {1} && mkfs.ext4 -q -F -L cloudimg-rootfs -d {0} -E offset=1048576 {1} 20M",
        rootdir.display(),
        raw.display()
    ));
    sh(&format!("sgdisk -n 1:2048:43007 -c 1:root {}", raw.display()));
    let qcow = imgbuild_testkit::qemu::convert(&raw, Some("raw"), "qcow2", "", d.join("disk.qcow2"));
    let bytes = std::fs::read(&qcow).unwrap();
    let digest = sha256(&bytes);
    let cache = d.join("cache");
    std::fs::create_dir_all(cache.join("sha256")).unwrap();
    std::fs::write(cache.join("sha256").join(&digest), &bytes).unwrap();
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("format: raw", "format: qcow2")
        .replace(&"0".repeat(64), &digest);
    std::fs::write(&r, text).unwrap();

    let out = common::bin()
        .args(["--quiet", "lock", "--recipe"])
        .arg(&r)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let a = &lock_file(&r).arches["amd64"];
    let names: Vec<_> = a.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["tool"]);
    assert_eq!(a.base_sha256.as_str(), digest);

    // Without the base in the cache: an input error that says what to do.
    let out = common::bin()
        .args(["--quiet", "lock", "--recipe"])
        .arg(&r)
        .arg("--cache-dir")
        .arg(d.join("empty-cache"))
        .output()
        .unwrap();
    common::exits_with(&out, 2, "imgbuild fetch");
}

/// A merged-/usr base: /sbin and /lib are symlinks into /usr.
struct UsrMerged;

impl apt::BaseImage for UsrMerged {
    fn read_file(&self, _: &str) -> Result<Option<Vec<u8>>, AptError> {
        Ok(None)
    }
    fn symlinks(&self, paths: &[&str]) -> Result<BTreeMap<String, String>, AptError> {
        let have = [("/sbin", "usr/sbin"), ("/lib", "usr/lib"), ("/bin", "usr/bin")];
        Ok(have
            .iter()
            .filter(|(p, _)| paths.contains(p))
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect())
    }
}

#[test]
fn files_under_merged_usr_symlinks_go_through_them() {
    let Some(f) = fixture() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut layer = Layer::new(0);
    apt::install_into(&mut layer, &[f.debs["basepkg"].clone()], BASE_STATUS, &UsrMerged, work.path())
        .unwrap();
    // dpkg writes through the /sbin symlink; the .list keeps the package's path.
    assert!(matches!(layer.get("/usr/sbin/basepkg-tool").map(|e| &e.kind), Some(Kind::File(_))));
    assert!(layer.get("/sbin").is_none() && layer.get("/sbin/basepkg-tool").is_none());
    assert!(text_of(&layer, "/var/lib/dpkg/info/basepkg.list").lines().any(|l| l == "/sbin/basepkg-tool"));
}

/// The first-boot ldconfig unit passes `systemd-analyze verify` (fake root with the
/// host's unit library and a stub ldconfig, as validators need).
#[test]
fn ldconfig_unit_passes_systemd_analyze_verify() {
    let Some(f) = fixture() else { return };
    if !common::tool("systemd-analyze") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut layer = Layer::new(0);
    let got =
        apt::install_into(&mut layer, &[f.debs["libdep"].clone()], BASE_STATUS, &base_file, work.path())
            .unwrap();
    assert!(got.ldconfig_unit);
    let root = materialise(&layer);
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    run_ok(Command::new("cp").args(["-a", "/usr/lib/systemd/system"]).arg(r.join("usr/lib/systemd/")));
    std::fs::create_dir_all(r.join("sbin")).unwrap();
    std::fs::write(r.join("sbin/ldconfig"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(r.join("sbin/ldconfig"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", r.display()))
        .args(["verify", "--man=no", "imgbuild-ldconfig.service"])
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success() && all.trim().is_empty(), "{all}");
}

/// imgbuild's Debian version ordering (`types::debian`) against the real dpkg
/// (`dpkg --compare-versions`), over random versions of the characters that matter to the
/// ordering. This is also why the comparison is
/// hand-written: the `debversion` crate (0.5.5) orders an empty digit run before `0`,
/// so it puts `3~` before `3~0~Z~~` and `1a` before `1a0`, where dpkg does not.
#[test]
fn orders_as_dpkg_does() {
    if !common::tool("dpkg") {
        return;
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    const CH: &[u8] = b"0012399.+~~abzAZ";
    let mut version = || {
        let mut v = String::new();
        if next(4) == 0 {
            v.push_str(&format!("{}:", next(3)));
        }
        v.push(char::from(b'0' + next(10) as u8));
        for _ in 0..next(7) {
            v.push(char::from(CH[next(CH.len())]));
        }
        if next(2) == 0 {
            v.push('-');
            for _ in 0..1 + next(4) {
                v.push(char::from(CH[next(CH.len())]));
            }
        }
        v
    };
    let dpkg_says = |a: &str, op: &str, b: &str| {
        let o = Command::new("dpkg").args(["--compare-versions", a, op, b]).output().unwrap();
        o.status.success()
    };
    let mut pairs = vec![("3~".to_string(), "3~0~Z~~".to_string()), ("1a".into(), "1a0".into())];
    pairs.extend((0..150).map(|_| (version(), version())));
    let mut compared = 0;
    for (a, b) in pairs {
        let (Ok(va), Ok(vb)) =
            (imgbuild::types::debian::Version::parse(&a), imgbuild::types::debian::Version::parse(&b))
        else {
            continue;
        };
        compared += 1;
        let want = if dpkg_says(&a, "lt", &b) {
            std::cmp::Ordering::Less
        } else if dpkg_says(&a, "eq", &b) {
            std::cmp::Ordering::Equal
        } else {
            std::cmp::Ordering::Greater
        };
        assert_eq!(va.cmp(&vb), want, "{a} vs {b}");
    }
    assert!(compared > 140, "only {compared} pairs parsed");
}
