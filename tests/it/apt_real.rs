//! Real-data check and benchmark (ignored: needs a Debian host's apt lists, `lz4` and
//! `gpg`): verifies the host's bookworm InRelease with Debian's automatic signing key,
//! checks the Packages index against it, and resolves conntrack, socat, ebtables and
//! ethtool against the host's own dpkg status, timing each step.
//! Run: `cargo test --release --test it -- --ignored --nocapture apt_real::`.

use std::process::Command;
use std::time::Instant;

use imgbuild::apt::{index, inrelease, resolve};
use imgbuild::types::PackageRequest as Request;
use imgbuild::types::Sha256;

#[test]
#[ignore]
fn debian_bookworm_index_signature_and_resolution() {
    let lists = "/var/lib/apt/lists";
    let rel =
        std::fs::read_to_string(format!("{lists}/deb.debian.org_debian_dists_bookworm_InRelease")).unwrap();
    let home = tempfile::tempdir().unwrap();
    let key = Command::new("gpg")
        .env("GNUPGHOME", home.path())
        .args([
            "--batch",
            "--no-default-keyring",
            "--keyring",
            "/usr/share/keyrings/debian-archive-bookworm-automatic.gpg",
        ])
        .args(["--armor", "--export"])
        .output()
        .unwrap();
    let _ = Command::new("gpgconf").env("GNUPGHOME", home.path()).args(["--kill", "all"]).output();
    let key = inrelease::parse_key(&String::from_utf8(key.stdout).unwrap(), "bookworm automatic").unwrap();

    let t = Instant::now();
    let r = inrelease::verify(&rel, &key, "bookworm/InRelease").unwrap();
    eprintln!("InRelease ({} bytes) verified in {:?}, signer {}", rel.len(), t.elapsed(), r.signer);

    let t = Instant::now();
    let out = Command::new("lz4cat")
        .arg(format!("{lists}/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"))
        .output()
        .unwrap();
    let plain = out.stdout;
    let listed = &r.sha256["main/binary-amd64/Packages"];
    assert_eq!((plain.len() as u64, Sha256::of(&plain)), (listed.size, listed.sha256.clone()));
    eprintln!(
        "Packages ({} MB) matches the signed digest ({:?} incl. lz4cat)",
        plain.len() >> 20,
        t.elapsed()
    );

    let t = Instant::now();
    let text = String::from_utf8(plain).unwrap();
    let entries = index::parse_text(&text, "http://deb.debian.org/debian", "Packages", "amd64").unwrap();
    eprintln!("parsed {} entries in {:?}", entries.len(), t.elapsed());

    let t = Instant::now();
    let status = std::fs::read_to_string("/var/lib/dpkg/status").unwrap();
    let base = resolve::BasePackages::parse(&status, "amd64").unwrap();
    let reqs: Vec<Request> =
        ["conntrack", "socat", "ebtables", "ethtool"].iter().map(|s| Request::parse(s).unwrap()).collect();
    let res = resolve::resolve(&reqs, &entries, &base, "amd64").unwrap();
    let mut got: Vec<String> = res.install.iter().map(|(e, _)| format!("{} {}", e.name, e.version)).collect();
    got.extend(res.already.iter().map(|n| format!("{n} (in base)")));
    eprintln!("resolved in {:?}: {}", t.elapsed(), got.join(", "));
}
