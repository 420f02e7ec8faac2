//! `imgbuild verify-blob`: cosign keyless signatures made here with a test Fulcio-like
//! CA chain (rcgen) and a short-lived leaf carrying the Fulcio extensions, checked the
//! way dl.k8s.io publishes them (`.sig` base64, `.cert` base64 of PEM).
use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::fulcio::{b64, ca, leaf, sign, Chain, Leaf, IDENTITY, ISSUER, SIGNED};
use crate::common::http::Server;
use crate::common::text;

struct Fixture {
    dir: tempfile::TempDir,
    ca: Chain,
    trust: PathBuf,
    blob: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = Chain::new();
        let trust = dir.path().join("trust.pem");
        std::fs::write(&trust, ca.trust_pem()).unwrap();
        let blob: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        Fixture { dir, ca, trust, blob }
    }

    /// Write blob, blob.sig and blob.cert (dl.k8s.io encodings) under `name`.
    fn publish(&self, name: &str, blob: &[u8], cert_pem: &str, sig: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, blob).unwrap();
        std::fs::write(self.dir.path().join(format!("{name}.sig")), b64(sig)).unwrap();
        std::fs::write(self.dir.path().join(format!("{name}.cert")), b64(cert_pem.as_bytes())).unwrap();
        p
    }

    /// A correctly signed blob for the given leaf options.
    fn signed(&self, name: &str, l: &Leaf) -> PathBuf {
        let (pem, key) = leaf(&self.ca.inter, l);
        let sig = sign(&key, &self.blob);
        self.publish(name, &self.blob, &pem, &sig)
    }

    fn verify(&self, file: &Path, extra: &[&str]) -> Output {
        let mut c = common::bin();
        c.arg("verify-blob").arg(file).arg("--trust-root").arg(&self.trust).args(extra);
        c.output().unwrap()
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn assert_rejected(o: &Output, needle: &str) {
    assert_eq!(code(o), 3, "{}", text(o));
    assert!(text(o).contains(needle), "expected {needle:?} in\n{}", text(o));
}

#[test]
fn good_signature_is_accepted_and_recorded() {
    let f = Fixture::new();
    let file = f.signed("kubeadm", &Leaf::default());
    let o = f.verify(&file, &[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rec["kind"], "cosign-keyless");
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["issuer"], ISSUER);
    assert_eq!(rec["not_before"], SIGNED);
    assert_eq!(rec["not_after"], SIGNED + 600);
    let sha = imgbuild::types::Sha256::of(&f.blob);
    assert_eq!(rec["file_sha256"], sha.as_str());
    let root_der = f.ca.root.cert.der().to_vec();
    assert_eq!(rec["root_sha256"], imgbuild::types::Sha256::of(&root_der).as_str());

    // Only the legacy (.1.1) or only the new (.1.8) issuer extension: both forms work.
    for l in [Leaf { issuer_v2: None, ..Leaf::default() }, Leaf { issuer_v1: None, ..Leaf::default() }] {
        let file = f.signed("one-ext", &l);
        let o = f.verify(&file, &[]);
        assert_eq!(code(&o), 0, "{}", text(&o));
    }

    // Plain PEM certificate and raw DER signature given explicitly; a trusted signing
    // time inside the 10-minute window is accepted, one outside is not.
    let (pem, key) = leaf(&f.ca.inter, &Leaf::default());
    let sig = sign(&key, &f.blob);
    let d = f.dir.path();
    std::fs::write(d.join("x.pem"), &pem).unwrap();
    std::fs::write(d.join("x.der-sig"), &sig).unwrap();
    let args = |t: i64| {
        vec![
            "--certificate".to_string(),
            d.join("x.pem").display().to_string(),
            "--signature".to_string(),
            d.join("x.der-sig").display().to_string(),
            "--signed-at".to_string(),
            t.to_string(),
        ]
    };
    let a = args(SIGNED + 60);
    let o = f.verify(&file, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code(&o), 0, "{}", text(&o));
    let a = args(SIGNED + 3600);
    let o = f.verify(&file, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_rejected(&o, "outside the certificate's validity");
}

#[test]
fn wrong_identity_issuer_chain_or_blob_is_exit_3() {
    let f = Fixture::new();

    // Image-signing identity, not the binaries' one.
    let file = f.signed(
        "id",
        &Leaf { identity: "krel-trust@k8s-releng-prod.iam.gserviceaccount.com", ..Leaf::default() },
    );
    assert_rejected(&f.verify(&file, &[]), "is not the expected krel-staging@");

    // Another OIDC issuer, in both extensions or only in one of them.
    let gh = "https://token.actions.githubusercontent.com";
    let file = f.signed("iss", &Leaf { issuer_v1: Some(gh), issuer_v2: Some(gh), ..Leaf::default() });
    assert_rejected(&f.verify(&file, &[]), "OIDC issuer");
    let file = f.signed("iss2", &Leaf { issuer_v2: Some(gh), ..Leaf::default() });
    assert_rejected(&f.verify(&file, &[]), "OIDC issuer");
    let file = f.signed("iss3", &Leaf { issuer_v1: None, issuer_v2: None, ..Leaf::default() });
    assert_rejected(&f.verify(&file, &[]), "no OIDC issuer");

    // A look-alike chain (same names, other keys) that the trust root does not hold.
    let evil_root = ca("sigstore", None, (2021, 1, 1), (2035, 1, 1));
    let evil_inter = ca("sigstore-intermediate", Some(&evil_root), (2022, 1, 1), (2031, 1, 1));
    let (pem, key) = leaf(&evil_inter, &Leaf::default());
    let file = f.publish("chain", &f.blob, &pem, &sign(&key, &f.blob));
    assert_rejected(&f.verify(&file, &[]), "does not chain to the trust root");
    // ...even when the attacker's intermediate is in the bundle: its claimed root's
    // key did not sign it, so the chain still fails.
    let bundle = f.dir.path().join("bad-trust.pem");
    std::fs::write(&bundle, format!("{}{}", evil_inter.cert.pem(), f.ca.root.cert.pem())).unwrap();
    let o = common::bin().arg("verify-blob").arg(&file).arg("--trust-root").arg(&bundle).output().unwrap();
    assert_rejected(&o, "does not chain to the trust root");
    // A bundle with only an intermediate has no anchor: a correct leaf is refused too.
    let good = f.signed("anchorless", &Leaf::default());
    std::fs::write(&bundle, f.ca.inter.cert.pem()).unwrap();
    let o = common::bin().arg("verify-blob").arg(&good).arg("--trust-root").arg(&bundle).output().unwrap();
    assert_rejected(&o, "does not chain to the trust root");

    // Tampered blob: one byte changed after signing.
    let file = f.signed("tamper", &Leaf::default());
    let mut b = f.blob.clone();
    b[4242] ^= 1;
    std::fs::write(&file, b).unwrap();
    assert_rejected(&f.verify(&file, &[]), "does not verify over the file");

    // Signature by a different key than the certificate's.
    let (pem, _) = leaf(&f.ca.inter, &Leaf::default());
    let (_, other_key) = leaf(&f.ca.inter, &Leaf::default());
    let file = f.publish("swap", &f.blob, &pem, &sign(&other_key, &f.blob));
    assert_rejected(&f.verify(&file, &[]), "does not verify over the file");

    // Leaf issued while the intermediate was not valid (before 2022).
    let file = f.signed("early", &Leaf { not_before: 1609459200 + 86400, ..Leaf::default() });
    assert_rejected(&f.verify(&file, &[]), "was not valid");

    // Not a code-signing certificate.
    let file = f.signed("eku", &Leaf { code_signing: false, ..Leaf::default() });
    assert_rejected(&f.verify(&file, &[]), "code signing");

    // A caller expecting another identity gets exit 3 for the real one.
    let file = f.signed("policy", &Leaf::default());
    let o = f.verify(&file, &["--certificate-identity", "someone@example.com"]);
    assert_rejected(&o, "someone@example.com");
    let o = f.verify(&file, &["--certificate-oidc-issuer", "https://issuer.example"]);
    assert_rejected(&o, "https://issuer.example");
}

#[test]
fn published_next_to_the_url_and_fail_closed_without_trust_root() {
    let f = Fixture::new();
    let file = f.signed("kubelet", &Leaf::default());
    let srv = Server::start();
    let path = "/release/v1.30.3/bin/linux/amd64/kubelet";
    let d = f.dir.path();
    srv.add_bytes(&format!("{path}.sig"), std::fs::read(d.join("kubelet.sig")).unwrap());
    srv.add_bytes(&format!("{path}.cert"), std::fs::read(d.join("kubelet.cert")).unwrap());
    let url = format!("https://dl.k8s.io{path}");
    let mirror = format!("https://dl.k8s.io={}", srv.base());
    let o = f.verify(&file, &["--url", &url, "--mirror", &mirror]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(srv.hits(&format!("{path}.cert")), 1);

    // No .sig published: integrity failure, never "unsigned is fine".
    let url = "https://dl.k8s.io/release/v1.30.3/bin/linux/amd64/kubectl";
    assert_rejected(&f.verify(&file, &["--url", url, "--mirror", &mirror]), "no signature published");

    // Without --trust-root the embedded Sigstore public-good root is the anchor: a
    // certificate from the test CA does not chain to it (exit 3).
    let o = common::bin()
        .arg("verify-blob")
        .arg(&file)
        .arg("--signature")
        .arg(d.join("kubelet.sig"))
        .arg("--certificate")
        .arg(d.join("kubelet.cert"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains("does not chain to the trust root"), "{}", text(&o));
}

/// A signature whose DER ends in an ASCII whitespace byte (0x09, 0x0a, 0x0c, 0x0d, 0x20:
/// about one random signature in 50) verifies, published base64 or as the raw DER: the
/// raw bytes are never trimmed. Such signatures are searched for here, not hoped for.
#[test]
fn a_signature_ending_in_a_whitespace_byte_verifies_base64_and_raw() {
    let f = Fixture::new();
    let (pem, key) = leaf(&f.ca.inter, &Leaf::default());
    for last in [0x0a, 0x20] {
        // one signature in 256 ends so: not finding one in 20,000 has odds of e^-78
        let sig = (0..20_000)
            .map(|_| sign(&key, &f.blob))
            .find(|s| s.last() == Some(&last))
            .expect("a signature ending in the byte");
        let name = format!("ends-{last:02x}");
        let file = f.publish(&name, &f.blob, &pem, &sig);
        let o = f.verify(&file, &[]);
        assert_eq!(code(&o), 0, "base64 of a signature ending in {last:#04x}: {}", text(&o));
        std::fs::write(f.dir.path().join(format!("{name}.sig")), &sig).unwrap();
        let o = f.verify(&file, &[]);
        assert_eq!(code(&o), 0, "raw DER ending in {last:#04x}: {}", text(&o));
    }
}
