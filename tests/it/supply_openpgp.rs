//! `imgbuild base-digest`: a SHA256SUMS signed (detached) by gpg keys made here, served
//! over loopback HTTP in the cloud-images directory layout, verified with rpgp.
use crate::common::{self, gpg::Gpg, text};

use std::path::Path;
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

/// `base-digest` against `srv` with `extra`, which must exit with `want`.
fn base_digest_exits(srv: &Server, extra: &[&str], want: i32) -> Output {
    let o = base_digest(srv, extra);
    assert_eq!(o.status.code(), Some(want), "{}", text(&o));
    o
}

/// A temp dir with a gpg keyring and a loopback server to publish signed lists on.
struct World {
    dir: tempfile::TempDir,
    gpg: Gpg,
    srv: Server,
}

impl World {
    /// None where gpg is missing (a failure in CI, see [`gpg_present`]): the test returns.
    fn new() -> Option<World> {
        if !gpg_present() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let gpg = Gpg::new(dir.path());
        Some(World { dir, gpg, srv: Server::start() })
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// A new signing key for `uid`: its fingerprint and the path of its exported public key.
    fn key(&self, uid: &str, file: &str) -> (String, String) {
        let fpr = self.gpg.gen(uid);
        let path = self.gpg.export_to(&fpr, self.d().join(file));
        (fpr, path.to_str().unwrap().to_string())
    }

    /// A detached signature over `body` by exactly `signer`.
    fn sign(&self, signer: &str, body: &[u8], armor: bool) -> Vec<u8> {
        self.gpg.sign(signer, body, self.d(), armor)
    }
}

#[test]
fn detached_signatures_pinned_to_one_signer() {
    let Some(w) = World::new() else { return };
    let (good, key) = w.key("imgbuild test cloud images <good@test.invalid>", "good.asc");
    let key = key.as_str();
    let other = w.gpg.gen("another key <other@test.invalid>");
    let srv = &w.srv;
    let body = sums(AMD64);

    // Good signature, binary (as Ubuntu publishes it): accepted, digest printed.
    publish(srv, "/archive", &body, &w.sign(&good, &body, false));
    let o = base_digest_exits(srv, &["--key", key, "--signer", &good, "--arch", "amd64"], 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with(&format!("amd64\t{AMD64}\tubuntu-24.04-server-cloudimg-amd64.img\t")), "{out}");
    assert!(out.contains(&format!("signed-by {good}")), "{out}");
    assert_eq!(srv.hits(&format!("/archive{DIR}/SHA256SUMS.gpg")), 1);

    // Armored signature, every arch, JSON; fingerprint given with spaces and lowercase.
    publish(srv, "/archive", &body, &w.sign(&good, &body, true));
    let spaced: String =
        good.to_ascii_lowercase().as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c) + " ").collect();
    let o = base_digest_exits(srv, &["--key", key, "--signer", &spaced, "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["arch"], "amd64");
    assert_eq!(v[1]["arch"], "arm64");
    assert_eq!(v[1]["sha256"], ARM64);
    assert_eq!(v[1]["signer"], good.as_str());

    // Signed by another key: exit 3, and the message names who did sign.
    publish(srv, "/archive", &body, &w.sign(&other, &body, false));
    let o = base_digest_exits(srv, &["--key", key, "--signer", &good, "--arch", "amd64"], 3);
    assert!(text(&o).contains(&other), "{}", text(&o));

    // Tampered list (signature was over the original): exit 3.
    let sig = w.sign(&good, &body, false);
    let tampered = sums(&"d".repeat(64));
    publish(srv, "/archive", &tampered, &sig);
    base_digest_exits(srv, &["--key", key, "--signer", &good, "--arch", "amd64"], 3);

    // A valid signature by the trusted key file, but the pinned signer is someone else: exit 3.
    publish(srv, "/archive", &body, &sig);
    base_digest_exits(srv, &["--key", key, "--signer", &other, "--arch", "amd64"], 3);

    // Default trust is the embedded Ubuntu key: our test signature must not pass it.
    let o = base_digest_exits(srv, &["--arch", "amd64"], 3);
    assert!(text(&o).contains("D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"), "{}", text(&o));

    // No signature next to the list: exit 3, never trusted unsigned.
    let srv2 = Server::start();
    srv2.add_bytes(&format!("/archive{DIR}/SHA256SUMS"), body.clone());
    base_digest_exits(&srv2, &["--key", key, "--signer", &good, "--arch", "amd64"], 3);

    // The archive host lacks the build: the next base URL's directory is used.
    let srv3 = Server::start();
    publish(&srv3, "/primary", &body, &sig);
    base_digest_exits(&srv3, &["--key", key, "--signer", &good, "--arch", "amd64"], 0);
    assert_eq!(srv3.hits(&format!("/primary{DIR}/SHA256SUMS")), 1);

    // Nowhere to be found: runtime failure (1), not an integrity verdict.
    base_digest_exits(&Server::start(), &["--key", key, "--signer", &good, "--arch", "amd64"], 1);
}

#[test]
fn signing_subkey_must_be_the_pinned_one() {
    let Some(w) = World::new() else { return };
    let primary = w.gpg.gen("subkey signer <sub@test.invalid>");
    let sub = w.gpg.add_signing_subkey(&primary);
    let key = w.gpg.export_to(&primary, w.d().join("k.asc"));
    let key = key.to_str().unwrap();
    let srv = &w.srv;
    let body = sums(AMD64);
    publish(srv, "/archive", &body, &w.sign(&sub, &body, false));
    let o = base_digest_exits(srv, &["--key", key, "--signer", &sub, "--arch", "amd64"], 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("signed-by {sub}")));
    // Made by the subkey, but the primary is pinned: not the documented signer.
    base_digest_exits(srv, &["--key", key, "--signer", &primary, "--arch", "amd64"], 3);
}

#[test]
fn mismatching_recipe_digest_fails_or_is_written() {
    let Some(w) = World::new() else { return };
    let (good, key) = w.key("imgbuild test cloud images <good@test.invalid>", "good.asc");
    let key = key.as_str();
    let srv = &w.srv;
    // Upstream's signed list says a different amd64 digest than the recipe pins.
    let newer = "e".repeat(64);
    let body = sums(&newer);
    publish(srv, "/archive", &body, &w.sign(&good, &body, false));
    let recipe = w.d().join("r.yaml");
    std::fs::write(&recipe, RECIPE).unwrap();
    let r = recipe.to_str().unwrap();

    let o = base_digest_exits(srv, &["--key", key, "--signer", &good, "--recipe", r], 3);
    assert!(text(&o).contains(&newer), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&recipe).unwrap(), RECIPE, "no --write: recipe untouched");

    base_digest_exits(srv, &["--key", key, "--signer", &good, "--recipe", r, "--write"], 0);
    let written = std::fs::read_to_string(&recipe).unwrap();
    assert_eq!(written, RECIPE.replace(AMD64, &newer));

    // Now in agreement.
    base_digest_exits(srv, &["--key", key, "--signer", &good, "--recipe", r], 0);

    // --write on the embedded recipe is bad input.
    base_digest_exits(srv, &["--key", key, "--signer", &good, "--write"], 2);
}
