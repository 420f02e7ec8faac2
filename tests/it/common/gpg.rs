//! Throwaway OpenPGP keys made by a real gpg in their own GNUPGHOME: the signing keys of
//! the test cloud-image checksums (the test apt archives sign through
//! `imgbuild_testkit::archive`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run_ok;

pub struct Gpg {
    pub home: PathBuf,
}

impl Gpg {
    /// A new keyring in `dir/g` (short: gpg-agent's socket path must fit sockaddr_un).
    pub fn new(dir: &Path) -> Gpg {
        let home = dir.join("g");
        std::fs::create_dir(&home).unwrap();
        Gpg { home }
    }

    /// gpg on this keyring, without prompts.
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

    /// Fingerprints of the keys of `uid`: the primary first, then its subkeys.
    pub fn fprs(&self, uid: &str) -> Vec<String> {
        let out = run_ok(self.cmd().args(["--with-colons", "--list-keys", uid]));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines().filter_map(|l| l.strip_prefix("fpr:")).map(|l| l.trim_matches(':').to_string()).collect()
    }

    /// Fingerprint of the primary key of `uid`.
    pub fn fpr(&self, uid: &str) -> String {
        self.fprs(uid)[0].clone()
    }

    /// An RSA signing key (like Ubuntu's and Debian's); returns its fingerprint.
    pub fn gen(&self, uid: &str) -> String {
        run_ok(self.cmd().args(["--quick-gen-key", uid, "rsa2048", "sign", "never"]));
        self.fpr(uid)
    }

    /// Add a signing subkey to `primary`; returns the subkey's fingerprint.
    pub fn add_signing_subkey(&self, primary: &str) -> String {
        run_ok(self.cmd().args(["--quick-add-key", primary, "rsa2048", "sign", "never"]));
        self.fprs(primary)[1].clone()
    }

    /// The armored public key of `fpr` (with its subkeys).
    pub fn export(&self, fpr: &str) -> String {
        String::from_utf8(run_ok(self.cmd().args(["--armor", "--export", fpr])).stdout).unwrap()
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

impl Drop for Gpg {
    fn drop(&mut self) {
        // Stop the agent this keyring started (only ours: it is bound to our GNUPGHOME).
        let _ = Command::new("gpgconf").env("GNUPGHOME", &self.home).args(["--kill", "gpg-agent"]).output();
    }
}
