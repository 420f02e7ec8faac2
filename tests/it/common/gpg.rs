//! Throwaway OpenPGP keys made by a real gpg in their own GNUPGHOME: the signing keys of
//! the test cloud-image checksums (the test apt archives sign through
//! `imgbuild_testkit::archive`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run_ok;

/// testkit's keyring (one gpg invocation, one agent shutdown on drop) with the extra
/// operations the signature tests need: subkey fingerprints and detached signatures by
/// an exact (sub)key.
pub struct Gpg {
    inner: imgbuild_testkit::archive::Gpg,
}

impl Gpg {
    /// A new keyring in `dir/g` (short: gpg-agent's socket path must fit sockaddr_un).
    pub fn new(dir: &Path) -> Gpg {
        Gpg { inner: imgbuild_testkit::archive::Gpg::new(&dir.join("g")).unwrap() }
    }

    /// gpg on this keyring, without prompts.
    pub fn cmd(&self) -> Command {
        self.inner.cmd()
    }

    /// Fingerprints of the keys of `uid`: the primary first, then its subkeys.
    pub fn fprs(&self, uid: &str) -> Vec<String> {
        let out = run_ok(self.cmd().args(["--with-colons", "--list-keys", uid]));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines().filter_map(|l| l.strip_prefix("fpr:")).map(|l| l.trim_matches(':').to_string()).collect()
    }

    /// An RSA signing key (like Ubuntu's and Debian's); returns its fingerprint.
    pub fn gen(&self, uid: &str) -> String {
        self.inner.gen(uid, "rsa2048", "sign").unwrap()
    }

    /// Add a signing subkey to `primary`; returns the subkey's fingerprint.
    pub fn add_signing_subkey(&self, primary: &str) -> String {
        self.inner.add_signing_subkey(primary, "rsa2048").unwrap();
        self.fprs(primary)[1].clone()
    }

    /// The armored public key of `fpr` (with its subkeys).
    pub fn export(&self, fpr: &str) -> String {
        self.inner.export(fpr).unwrap()
    }

    /// `export` written to `path`, which it returns.
    pub fn export_to(&self, fpr: &str, path: PathBuf) -> PathBuf {
        std::fs::write(&path, self.export(fpr)).unwrap();
        path
    }

    /// A detached signature over `data`, binary or armored, by exactly the (sub)key `signer`.
    pub fn sign(&self, signer: &str, data: &[u8], dir: &Path, armor: bool) -> Vec<u8> {
        let (i, o) = (dir.join("to-sign"), dir.join("sig"));
        std::fs::write(&i, data).unwrap();
        let mut c = self.cmd();
        // a trailing `!` makes gpg use that key, not the signing subkey it would pick
        c.args(["--local-user", &format!("{signer}!"), "--digest-algo", "SHA512", "--detach-sign", "-o"])
            .arg(&o);
        if armor {
            c.arg("--armor");
        }
        run_ok(c.arg(&i));
        std::fs::read(o).unwrap()
    }
}
