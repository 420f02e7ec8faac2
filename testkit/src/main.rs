//! `imgbuild-testkit`: the boot test's (ci/boot-test.sh) way to the shared test world.
//! Every subcommand prints the directory it made on stdout; progress goes to stderr.
//!
//!   imgbuild-testkit archive --packages LIST      signed TEST apt archive of real Debian
//!                                                 .debs (cached)
//!   imgbuild-testkit runtime                      real containerd + runc in the upstream
//!                                                 release layout (cached)
//!   imgbuild-testkit mirror --recipe R --base B --standin S --archive A [--runtime D] --out O
//!                                                 mirror layout + test recipe + test images

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use imgbuild_testkit::{archive, cache, mirror, run, standin, write};

#[derive(Parser)]
#[command(name = "imgbuild-testkit", about = "TEST ONLY: build imgbuild's test world")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or reuse from the cache) a signed TEST apt archive of the real Debian .debs
    /// named in LIST (`apt-get download` from the host's apt sources); prints its dir.
    Archive {
        /// One package a line; `#` comments. Part of the cache key.
        #[arg(long)]
        packages: PathBuf,
    },
    /// Build (or reuse) Debian's containerd and runc in the upstream release layout
    /// (containerd.tar.gz with bin/*, the runc binary, versions); prints its dir.
    Runtime,
    /// Lay out the mirror and the test recipe in OUT; prints OUT.
    Mirror {
        #[arg(long)]
        recipe: PathBuf,
        /// The base image the mirror serves (qcow2).
        #[arg(long)]
        base: PathBuf,
        /// The multi-call stand-in script every binary is.
        #[arg(long)]
        standin: PathBuf,
        /// The archive dir (`imgbuild-testkit archive`).
        #[arg(long)]
        archive: PathBuf,
        /// Requested on top of the recipe's packages.
        #[arg(long = "extra-package")]
        extra: Vec<String>,
        /// The runtime dir (`imgbuild-testkit runtime`): real containerd and runc.
        #[arg(long)]
        runtime: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

const SUITE: &str = "bookworm";
const COMPONENT: &str = "main";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("imgbuild-testkit: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let dir = match Cli::parse().cmd {
        Cmd::Archive { packages } => build_archive(&packages)?,
        Cmd::Runtime => build_runtime()?,
        Cmd::Mirror { recipe, base, standin, archive, extra, runtime, out } => {
            build_mirror(&recipe, &base, &standin, &archive, extra, runtime.as_deref(), &out)?;
            out
        }
    };
    println!("{}", dir.display());
    Ok(())
}

fn names(list: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

fn build_archive(list: &Path) -> Result<PathBuf> {
    let wanted = names(list)?;
    cache::cached("archive", &[list], "versions", |dest| {
        let dl = dest.join("dl");
        std::fs::create_dir_all(&dl)?;
        cache::apt_download(&wanted, &dl)?;
        let debs = cache::debs_in(&dl)?;
        let gpg = archive::Gpg::new(&dest.join("gnupg"))?;
        let fpr = gpg.gen(
            "imgbuild boot-test archive (TEST ONLY) <boot-test@imgbuild.invalid>",
            "rsa4096",
            "sign",
        )?;
        let spec = archive::Spec {
            origin: "imgbuild-boot-test".into(),
            suite: SUITE.into(),
            version: Some("12".into()),
            component: COMPONENT.into(),
            arch: mirror::ARCH.into(),
            description: "TEST ONLY: real Debian 12 packages for the imgbuild boot tests".into(),
        };
        let a = archive::write_archive(dest, &debs, &spec, &gpg, &fpr)?;
        drop(gpg);
        // The secret key lives only while signing.
        std::fs::remove_dir_all(dest.join("gnupg"))?;
        std::fs::remove_dir_all(&dl)?;
        let got: Vec<&String> = a.versions.keys().collect();
        let mut want: Vec<&String> = wanted.iter().collect();
        want.sort();
        if got != want {
            bail!("apt-get download gave {got:?}, wanted {want:?}");
        }
        Ok(())
    })
}

/// Package -> (path in the package, path in the layout).
const RUNTIME: &[(&str, &[(&str, &str)])] = &[
    (
        "containerd",
        &[
            ("usr/bin/containerd", "bin/containerd"),
            ("usr/bin/containerd-shim-runc-v2", "bin/containerd-shim-runc-v2"),
            ("usr/bin/ctr", "bin/ctr"),
        ],
    ),
    ("runc", &[("usr/sbin/runc", "runc")]),
];

fn build_runtime() -> Result<PathBuf> {
    cache::cached("runtime", &[], "versions", |dest| {
        let dl = dest.join("dl");
        std::fs::create_dir_all(&dl)?;
        let pkgs: Vec<String> = RUNTIME.iter().map(|(p, _)| p.to_string()).collect();
        cache::apt_download(&pkgs, &dl)?;
        let mut versions = BTreeMap::new();
        let mut containerd = Vec::new();
        for deb in cache::debs_in(&dl)? {
            let ctl = archive::control(&deb)?;
            let pkg = archive::field(&ctl, "Package").context("Package")?.to_string();
            let files =
                RUNTIME.iter().find(|(p, _)| *p == pkg).map(|(_, f)| *f).context("an unasked package")?;
            let x = dl.join(format!("{pkg}.x"));
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
            for (src, dst) in files {
                let bytes = std::fs::read(x.join(src)).with_context(|| format!("{pkg} has no {src}"))?;
                if pkg == "containerd" {
                    containerd.push((dst.to_string(), bytes, 0o755));
                } else {
                    write(&dest.join(dst), &bytes)?;
                    use std::os::unix::fs::PermissionsExt as _;
                    std::fs::set_permissions(dest.join(dst), std::fs::Permissions::from_mode(0o755))?;
                }
            }
            versions.insert(pkg, archive::field(&ctl, "Version").unwrap_or_default().to_string());
        }
        if versions.len() != RUNTIME.len() {
            bail!("apt-get download gave {versions:?}, wanted {pkgs:?}");
        }
        std::fs::remove_dir_all(&dl)?;
        // The release tarball's layout: bin/ and its members, fixed mtimes (a stable digest).
        write(&dest.join("containerd.tar.gz"), &standin::tarball(&containerd, true))?;
        let lines: String = versions.iter().map(|(p, v)| format!("{p}={v}\n")).collect();
        write(&dest.join("versions"), lines.as_bytes())
    })
}

fn build_mirror(
    recipe: &Path,
    base: &Path,
    standin: &Path,
    archive: &Path,
    extra: Vec<String>,
    runtime: Option<&Path>,
    out: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(recipe).with_context(|| format!("reading {}", recipe.display()))?;
    let mut v: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", recipe.display()))?;
    let name = v["name"].as_str().unwrap_or("recipe").to_string();
    v["name"] = format!("{name}-boottest").into();
    v["description"] = "TEST ONLY (ci/boot-test.sh): Debian-made base and stand-in binaries".into();
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (install busybox-static)")?;
    if busybox.windows(7).any(|w| w == b"ld-linux") {
        bail!("/bin/busybox is dynamically linked; install busybox-static");
    }
    let mut real = BTreeMap::new();
    if let Some(r) = runtime {
        real.insert("containerd".to_string(), r.join("containerd.tar.gz"));
        real.insert("runc".to_string(), r.join("runc"));
    }
    let opts = mirror::Options {
        standin: standin::Standin::Script(
            std::fs::read(standin).with_context(|| format!("reading {}", standin.display()))?,
        ),
        real,
        packages: mirror::Packages::Archive {
            dir: archive.to_path_buf(),
            suite: SUITE.into(),
            component: COMPONENT.into(),
            extra,
        },
        image_blobs: out.join("images/blobs"),
        images_json: Some(out.join("images/images.json")),
        keep_recipe_images: true,
        busybox: Some(busybox),
        keep_disk_size: true,
        only_arch: true,
    };
    let m = mirror::make(&v, base, &opts, out)?;
    eprintln!(
        "mirror: {} downloads from {} hosts, {} test images, recipe {}",
        m.blobs.len(),
        m.hosts.len(),
        m.images.len(),
        m.recipe_path.display()
    );
    Ok(())
}
