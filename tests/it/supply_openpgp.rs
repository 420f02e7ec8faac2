//! `imgbuild base-digest`: a SHA256SUMS signed (detached) by gpg keys made here, served
//! over loopback HTTP in the cloud-images directory layout, verified with rpgp.
use crate::common::{self, gpg::Gpg};

use std::process::Output;

use crate::common::http::Server;

const RECIPE: &str = include_str!("../../image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml");
const AMD64: &str = "0e25ca6ee9f08ec5d4f9910054b66ae7163c6152e81a3e67689d89bd6e4dfa69";
const ARM64: &str = "5ecac6447be66a164626744a87a27fd4e6c6606dc683e0a233870af63df4276a";
const DIR: &str = "/releases/noble/release-20240821";
const ARCHIVE: &str = "https://cloud-images-archive.ubuntu.com";
const PRIMARY: &str = "https://cloud-images.ubuntu.com";

/// In CI (`CI` set) a missing gpg is a failure, not a skip.
fn gpg_present() -> bool {
    common::tool("gpg") && common::tool("gpg-agent")
}

fn sums(amd64: &str) -> Vec<u8> {
    format!(
        "{amd64} *ubuntu-24.04-server-cloudimg-amd64.img\n\
         {} *ubuntu-24.04-server-cloudimg-amd64.img.manifest\n\
         {ARM64} *ubuntu-24.04-server-cloudimg-arm64.img\n",
        "c".repeat(64)
    )
    .into_bytes()
}

fn publish(srv: &Server, prefix: &str, sums: &[u8], sig: &[u8]) {
    srv.add_bytes(&format!("{prefix}{DIR}/SHA256SUMS"), sums.to_vec());
    srv.add_bytes(&format!("{prefix}{DIR}/SHA256SUMS.gpg"), sig.to_vec());
}

fn base_digest(srv: &Server, extra: &[&str]) -> Output {
    let mut c = common::bin();
    c.args(["base-digest", "--mirror", &format!("{ARCHIVE}={}/archive", srv.base())]);
    c.args(["--mirror", &format!("{PRIMARY}={}/primary", srv.base())]);
    c.args(extra);
    c.output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn detached_signatures_pinned_to_one_signer() {
    if !gpg_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gpg = Gpg::new(d);
    let good = gpg.gen("imgbuild test cloud images <good@test.invalid>");
    let other = gpg.gen("another key <other@test.invalid>");
    let good_asc = gpg.export_to(&good, d.join("good.asc"));
    let key = good_asc.to_str().unwrap();
    let srv = Server::start();
    let body = sums(AMD64);

    // Good signature, binary (as Ubuntu publishes it): accepted, digest printed.
    publish(&srv, "/archive", &body, &gpg.sign(&good, &body, d, false));
    let o = base_digest(&srv, &["--key", key, "--signer", &good, "--arch", "amd64"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with(&format!("amd64\t{AMD64}\tubuntu-24.04-server-cloudimg-amd64.img\t")), "{out}");
    assert!(out.contains(&format!("signed-by {good}")), "{out}");
    assert_eq!(srv.hits(&format!("/archive{DIR}/SHA256SUMS.gpg")), 1);

    // Armored signature, every arch, JSON; fingerprint given with spaces and lowercase.
    publish(&srv, "/archive", &body, &gpg.sign(&good, &body, d, true));
    let spaced: String =
        good.to_ascii_lowercase().as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c) + " ").collect();
    let o = base_digest(&srv, &["--key", key, "--signer", &spaced, "--json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["arch"], "amd64");
    assert_eq!(v[1]["arch"], "arm64");
    assert_eq!(v[1]["sha256"], ARM64);
    assert_eq!(v[1]["signer"], good.as_str());

    // Signed by another key: exit 3, and the message names who did sign.
    publish(&srv, "/archive", &body, &gpg.sign(&other, &body, d, false));
    let o = base_digest(&srv, &["--key", key, "--signer", &good, "--arch", "amd64"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains(&other), "{}", text(&o));

    // Tampered list (signature was over the original): exit 3.
    let sig = gpg.sign(&good, &body, d, false);
    let tampered = sums(&"d".repeat(64));
    publish(&srv, "/archive", &tampered, &sig);
    let o = base_digest(&srv, &["--key", key, "--signer", &good, "--arch", "amd64"]);
    assert_eq!(code(&o), 3, "{}", text(&o));

    // A valid signature by the trusted key file, but the pinned signer is someone else: exit 3.
    publish(&srv, "/archive", &body, &sig);
    let o = base_digest(&srv, &["--key", key, "--signer", &other, "--arch", "amd64"]);
    assert_eq!(code(&o), 3, "{}", text(&o));

    // Default trust is the embedded Ubuntu key: our test signature must not pass it.
    let o = base_digest(&srv, &["--arch", "amd64"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains("D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"), "{}", text(&o));

    // No signature next to the list: exit 3, never trusted unsigned.
    let srv2 = Server::start();
    srv2.add_bytes(&format!("/archive{DIR}/SHA256SUMS"), body.clone());
    let o = base_digest(&srv2, &["--key", key, "--signer", &good, "--arch", "amd64"]);
    assert_eq!(code(&o), 3, "{}", text(&o));

    // The archive host lacks the build: the next base URL's directory is used.
    let srv3 = Server::start();
    publish(&srv3, "/primary", &body, &sig);
    let o = base_digest(&srv3, &["--key", key, "--signer", &good, "--arch", "amd64"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(srv3.hits(&format!("/primary{DIR}/SHA256SUMS")), 1);

    // Nowhere to be found: runtime failure (1), not an integrity verdict.
    let o = base_digest(&Server::start(), &["--key", key, "--signer", &good, "--arch", "amd64"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
}

#[test]
fn signing_subkey_must_be_the_pinned_one() {
    if !gpg_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gpg = Gpg::new(d);
    let primary = gpg.gen("subkey signer <sub@test.invalid>");
    let sub = gpg.add_signing_subkey(&primary);
    let key = gpg.export_to(&primary, d.join("k.asc"));
    let key = key.to_str().unwrap();
    let srv = Server::start();
    let body = sums(AMD64);
    publish(&srv, "/archive", &body, &gpg.sign(&sub, &body, d, false));
    let o = base_digest(&srv, &["--key", key, "--signer", &sub, "--arch", "amd64"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("signed-by {sub}")));
    // Made by the subkey, but the primary is pinned: not the documented signer.
    let o = base_digest(&srv, &["--key", key, "--signer", &primary, "--arch", "amd64"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
}

#[test]
fn mismatching_recipe_digest_fails_or_is_written() {
    if !gpg_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gpg = Gpg::new(d);
    let good = gpg.gen("imgbuild test cloud images <good@test.invalid>");
    let key = gpg.export_to(&good, d.join("good.asc"));
    let key = key.to_str().unwrap();
    let srv = Server::start();
    // Upstream's signed list says a different amd64 digest than the recipe pins.
    let newer = "e".repeat(64);
    let body = sums(&newer);
    publish(&srv, "/archive", &body, &gpg.sign(&good, &body, d, false));
    let recipe = d.join("r.yaml");
    std::fs::write(&recipe, RECIPE).unwrap();
    let r = recipe.to_str().unwrap();

    let o = base_digest(&srv, &["--key", key, "--signer", &good, "--recipe", r]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains(&newer), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&recipe).unwrap(), RECIPE, "no --write: recipe untouched");

    let o = base_digest(&srv, &["--key", key, "--signer", &good, "--recipe", r, "--write"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let written = std::fs::read_to_string(&recipe).unwrap();
    assert_eq!(written, RECIPE.replace(AMD64, &newer));

    // Now in agreement.
    let o = base_digest(&srv, &["--key", key, "--signer", &good, "--recipe", r]);
    assert_eq!(code(&o), 0, "{}", text(&o));

    // --write on the embedded recipe is bad input.
    let o = base_digest(&srv, &["--key", key, "--signer", &good, "--write"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
}
