//! `imgbuild cluster init` and `imgbuild cluster kubeconfig`: secrets, refusal to
//! overwrite, validation with line numbers, offline-signed admin kubeconfig.

use crate::common::{self, ok, stderr};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn init(dir: &Path, extra: &[&str]) -> Output {
    common::cluster_init(dir)
        .name("lab")
        .endpoint("192.168.50.10:6443")
        .args(["--node-cidr", "192.168.50.0/24", "--vip-interface", "eth0", "--dns", "192.168.50.1"])
        .args(extra)
        .output()
}

fn cluster(t: &Path) -> PathBuf {
    let d = t.join("lab");
    ok(&init(&d, &[]));
    d.join("cluster.yaml")
}

fn have(cmd: &'static str) -> bool {
    common::tool(cmd)
}

#[test]
fn init_writes_spec_and_private_secrets_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("lab");
    let o = init(&d, &["--control-planes", "3", "--workers", "4"]);
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d.join("cluster.yaml").display().to_string());
    let s = d.join("secrets");
    assert_eq!(fs::metadata(&s).unwrap().permissions().mode() & 0o777, 0o700);
    for f in imgbuild::cluster::pki::FILES {
        let m = fs::metadata(s.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{f}");
    }
    let token = fs::read_to_string(s.join("bootstrap-token")).unwrap();
    let token = token.trim();
    let (a, b) = token.split_once('.').unwrap();
    let lc = |x: &str| x.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    assert!(a.len() == 6 && b.len() == 16 && lc(a) && lc(b), "{token}");
    let key = fs::read_to_string(s.join("encryption-key")).unwrap();
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(key.trim()).unwrap().len(), 32);
    for f in ["ca", "etcd-ca", "front-proxy-ca"] {
        let crt = fs::read_to_string(s.join(format!("{f}.crt"))).unwrap();
        assert!(crt.starts_with("-----BEGIN CERTIFICATE-----"));
        let k = fs::read_to_string(s.join(format!("{f}.key"))).unwrap();
        assert!(k.starts_with("-----BEGIN PRIVATE KEY-----"));
    }
    // the spec parses and has the requested shape
    let spec: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(d.join("cluster.yaml")).unwrap()).unwrap();
    let nodes = spec["nodes"].as_sequence().unwrap();
    assert_eq!(nodes.len(), 7);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "control-plane").count(), 3);
    assert_eq!(spec["ha"]["mode"], "vip");
    assert_eq!(spec["nodes"][0]["address"], "192.168.50.11/24");
    assert!(spec["addons"]["backend"].is_mapping());

    // second init refuses, and changes nothing
    let before = fs::read(s.join("ca.key")).unwrap();
    let o = init(&d, &[]);
    common::exits_with(&o, 2, "refusing to overwrite");
    assert_eq!(before, fs::read(s.join("ca.key")).unwrap());
    // even when only the secrets are left
    fs::remove_file(d.join("cluster.yaml")).unwrap();
    let o = init(&d, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(before, fs::read(s.join("ca.key")).unwrap());

    // each run has fresh secrets
    let d2 = t.path().join("lab2");
    ok(&init(&d2, &[]));
    assert_ne!(fs::read(d2.join("secrets/ca.key")).unwrap(), before);
    assert_ne!(fs::read(d2.join("secrets/bootstrap-token")).unwrap(), token.as_bytes());
}

#[test]
fn ca_certificates_are_valid_cas_for_openssl() {
    if !have("openssl") {
        assert!(std::env::var_os("CI").is_none(), "openssl is required in CI");
        eprintln!("note: skipping: openssl not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let c = cluster(t.path());
    let s = c.parent().unwrap().join("secrets");
    for f in ["ca", "etcd-ca", "front-proxy-ca"] {
        let crt = s.join(format!("{f}.crt"));
        let o = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&crt).output().unwrap();
        ok(&o);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("CA:TRUE") && text.contains("Certificate Sign"), "{text}");
        assert!(text.contains("prime256v1"), "{text}");
        // self-signed and verifiable
        let o = Command::new("openssl").args(["verify", "-CAfile"]).arg(&crt).arg(&crt).output().unwrap();
        ok(&o);
        // the key belongs to the certificate
        let a = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -pubkey -noout -in '{}' | sha256sum; openssl pkey -pubout -in '{}' | sha256sum",
                crt.display(),
                s.join(format!("{f}.key")).display()
            ))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&a.stdout);
        let l: Vec<&str> = out.lines().collect();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0], l[1], "{f}: key does not match certificate");
    }
    // sa.pub is the public half of sa.key
    let o = Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(s.join("sa.key")).output().unwrap();
    ok(&o);
    assert_eq!(o.stdout, fs::read(s.join("sa.pub")).unwrap());
}

#[test]
fn kubeconfig_is_signed_by_the_cluster_ca() {
    let t = tempfile::tempdir().unwrap();
    let c = cluster(t.path());
    let o = common::bin().args(["cluster", "kubeconfig", "--cluster"]).arg(&c).output().unwrap();
    ok(&o);
    let kc: serde_yaml::Value = serde_yaml::from_slice(&o.stdout).unwrap();
    assert_eq!(kc["kind"], "Config");
    assert_eq!(kc["clusters"][0]["cluster"]["server"], "https://192.168.50.10:6443");
    assert_eq!(kc["current-context"], "kubernetes-admin@lab");
    use base64::Engine;
    let b64 = |v: &serde_yaml::Value| {
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()
    };
    let ca = b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"]);
    assert_eq!(ca, fs::read(c.parent().unwrap().join("secrets/ca.crt")).unwrap());
    let crt = b64(&kc["users"][0]["user"]["client-certificate-data"]);
    let key = b64(&kc["users"][0]["user"]["client-key-data"]);
    assert!(String::from_utf8_lossy(&key).contains("PRIVATE KEY"));

    // to a 0600 file, super-admin identity
    let out = t.path().join("super.conf");
    let o = common::bin()
        .args(["cluster", "kubeconfig", "--identity", "super-admin", "--days", "1", "--cluster"])
        .arg(&c)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    ok(&o);
    assert!(o.stdout.is_empty());
    assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let sk: serde_yaml::Value = serde_yaml::from_slice(&fs::read(&out).unwrap()).unwrap();
    let scrt = b64(&sk["users"][0]["user"]["client-certificate-data"]);

    if !have("openssl") {
        assert!(std::env::var_os("CI").is_none(), "openssl is required in CI");
        return;
    }
    let dir = t.path();
    fs::write(dir.join("admin.crt"), &crt).unwrap();
    fs::write(dir.join("super.crt"), &scrt).unwrap();
    let ca_path = c.parent().unwrap().join("secrets/ca.crt");
    for (f, subject) in [("admin.crt", "O=kubeadm:cluster-admins"), ("super.crt", "O=system:masters")] {
        let o = Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(&ca_path)
            .arg(dir.join(f))
            .output()
            .unwrap();
        ok(&o);
        let o = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "sep_comma_plus,space_eq", "-in"])
            .arg(dir.join(f))
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout).replace(" = ", "=");
        assert!(s.contains(subject), "{s}");
    }
}

#[test]
fn validation_errors_name_the_line() {
    let t = tempfile::tempdir().unwrap();
    let c = cluster(t.path());
    let base = fs::read_to_string(&c).unwrap();
    let line_of = |needle: &str| base.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let check = |text: String, want: &[String]| {
        fs::write(&c, text).unwrap();
        let o = common::bin()
            .args(["cloud-init", "--all", "--seed", "none", "--cluster"])
            .arg(&c)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        for w in want {
            assert!(e.contains(w.as_str()), "missing {w:?} in:\n{e}");
        }
        // kubeconfig reads the same spec and fails the same way
        let o = common::bin().args(["cluster", "kubeconfig", "--cluster"]).arg(&c).output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(o.stdout.is_empty());
    };
    let file = c.display().to_string();
    // `from` replaced by `to` is refused with `msg`, at the line that holds `at`
    let refused_at = |at: &str, from: &str, to: &str, msg: &str| {
        check(base.replace(from, to), &[format!("{file}:{}: {msg}", line_of(at))])
    };
    // duplicate node name
    let cp2 = "name: \"lab-cp-2\"";
    refused_at(cp2, cp2, "name: \"lab-cp-1\"", "nodes[1].name: duplicate node name");
    // not a DNS-1123 label
    let w1 = "name: \"lab-worker-1\"";
    refused_at(w1, w1, "name: \"Lab_Worker\"", "nodes[3].name: \"Lab_Worker\" is not a DNS-1123 label");
    // overlapping CIDRs: service inside pods, pods covering the nodes
    refused_at(
        "service_cidr",
        "service_cidr: \"10.96.0.0/12\"",
        "service_cidr: \"10.244.10.0/24\"",
        "networking.service_cidr: 10.244.10.0/24 overlaps 10.244.0.0/16",
    );
    refused_at(
        "node_cidr",
        "pod_cidr: \"10.244.0.0/16\"",
        "pod_cidr: \"192.168.0.0/16\"",
        "networking.node_cidr: 192.168.50.0/24 overlaps 192.168.0.0/16",
    );
    // no control plane
    check(
        base.replace("role: \"control-plane\"", "role: \"worker\""),
        &["no node has role control-plane".into()],
    );
    // unknown field, with its line
    let lh = line_of("ha:");
    check(base.replace("ha:\n", "hax: 1\nha:\n"), &[format!("{file}:{lh}:")]);
    // several problems are all reported
    check(
        base.replace("name: \"lab-cp-2\"", "name: \"lab-cp-1\"")
            .replace("name: \"lab-worker-1\"", "name: \"-w\""),
        &["duplicate node name".into(), "\"-w\" is not a DNS-1123 label".into()],
    );
}

#[test]
fn warnings_for_even_control_planes_and_endpoint_outside() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("w");
    let o = common::cluster_init(&d)
        .name("w")
        .endpoint("10.9.9.9")
        .args(["--control-planes", "2"])
        .args(["--node-cidr", "192.168.50.0/24", "--interface", "ens3", "--dns", "192.168.50.1"])
        .external_lb()
        .output();
    ok(&o);
    let e = stderr(&o);
    assert!(e.contains("warning:") && e.contains("2 control planes"), "{e}");
    assert!(e.contains("endpoint 10.9.9.9 is outside the nodes' network"), "{e}");
    // the same warnings when rendering, which still succeeds
    let o = common::cloud_init_all(d.join("cluster.yaml"), t.path().join("o"));
    ok(&o);
    assert!(stderr(&o).contains("2 control planes"));
    // --quiet silences warnings and progress
    let o = common::bin()
        .args(["--quiet", "cloud-init", "--all", "--seed", "none", "--cluster"])
        .arg(d.join("cluster.yaml"))
        .arg("--out")
        .arg(t.path().join("o"))
        .output()
        .unwrap();
    ok(&o);
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn bad_init_arguments_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let cases: &[&[&str]] = &[
        &["--name", "bad name", "--endpoint", "10.0.0.1", "--control-planes", "1"],
        &["--name", "x\ny", "--endpoint", "10.0.0.1", "--control-planes", "1"],
        &["--name", "ok", "--endpoint", "10.0.0.1:99999", "--control-planes", "1"],
        &["--name", "ok", "--endpoint", "10.0.0.1", "--control-planes", "0"],
        // three control planes need a VIP or a load balancer
        &["--name", "ok", "--endpoint", "10.0.0.1"],
        &["--name", "ok", "--endpoint", "10.0.0.1", "--vip-interface", "eth0", "--external-lb"],
        &["--name", "ok", "--endpoint", "lb.example.com", "--vip-interface", "eth0"],
        &["--name", "ok", "--endpoint", "10.0.0.1", "--control-planes", "1", "--pod-cidr", "10.96.0.0/16"],
    ];
    for (i, args) in cases.iter().enumerate() {
        let d = t.path().join(format!("d{i}"));
        let o = common::bin().args(["cluster", "init"]).args(*args).arg("--dir").arg(&d).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!d.join("secrets").exists(), "{args:?} left secrets behind");
    }
    // an SSH key file with a non-key line is refused
    let k = t.path().join("k.pub");
    fs::write(&k, "not a key\n").unwrap();
    let d = t.path().join("dk");
    let o = common::cluster_init(&d)
        .name("ok")
        .endpoint("10.0.0.1")
        .args(["--control-planes", "1", "--ssh-key"])
        .args([&k])
        .output();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Everything `cluster init` writes, as a sorted listing of DIR (hidden staging
/// directories included).
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn init_is_all_or_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("lab");
    fs::create_dir(&d).unwrap();
    // a dangling cluster.yaml symlink: refused before any secret is written
    std::os::unix::fs::symlink("elsewhere/cluster.yaml", d.join("cluster.yaml")).unwrap();
    let o = init(&d, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("refusing to overwrite {}", d.join("cluster.yaml").display())));
    assert_eq!(listing(&d), ["cluster.yaml"], "init left something behind");
    // and once the path is free, a later run works (nothing half-written blocks it)
    fs::remove_file(d.join("cluster.yaml")).unwrap();
    ok(&init(&d, &[]));
    let l = listing(&d);
    assert!(l.contains(&"cluster.yaml".into()) && l.contains(&"secrets/ca.key".into()), "{l:?}");
    assert!(!l.iter().any(|p| p.starts_with('.')), "staging left behind: {l:?}");
    // an invalid invocation creates nothing, not even the directory
    let fresh = t.path().join("new/deeper");
    let o = common::cluster_init(&fresh)
        .name("lab")
        .endpoint("192.168.50.10")
        .args(["--node-cidr", "192.168.50.0/24", "--vip-interface", "eth0"])
        .output();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!fresh.exists());
}

#[test]
fn init_takes_dns_ntp_and_the_nic() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("lab");
    let o = init(
        &d,
        &["--dns", "192.168.50.2,192.168.50.3", "--dns-search", "lab.internal", "--ntp", "ntp.lab.internal"],
    );
    ok(&o);
    let spec: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(d.join("cluster.yaml")).unwrap()).unwrap();
    let y = |s: &str| serde_yaml::from_str::<serde_yaml::Value>(s).unwrap();
    // --dns is repeatable and comma-separated: the last --dns in init() wins over none
    assert_eq!(
        spec["dns"],
        y("{nameservers: [192.168.50.1, 192.168.50.2, 192.168.50.3], search: [lab.internal]}")
    );
    assert_eq!(spec["ntp"], y("{servers: [ntp.lab.internal]}"));
    // the NIC defaults to the VIP's
    assert_eq!(spec["networking"]["interface"], "eth0");
    let cases: &[(&[&str], &str)] = &[
        // static addresses need nameservers and their NIC
        (
            &["--node-cidr", "10.0.0.0/24", "--external-lb", "--interface", "ens3"],
            "--node-cidr gives the nodes static addresses, which need nameservers",
        ),
        (
            &["--node-cidr", "10.0.0.0/24", "--external-lb", "--dns", "10.0.0.2"],
            "--node-cidr needs the NIC the static addresses go on",
        ),
        (
            &["--node-cidr", "10.0.0.0/24", "--external-lb", "--dns", "10.0.0.2", "--interface", "e*"],
            "--interface: \"e*\" is a pattern",
        ),
        (
            &["--node-cidr", "10.0.0.0/24", "--external-lb", "--dns", "dns.lab", "--interface", "ens3"],
            "--dns: \"dns.lab\" is not an IP address",
        ),
        (&["--external-lb", "--dns", "10.0.0.2"], "pass --node-cidr too"),
        (
            &["--external-lb", "--ntp", "a b"],
            "ntp.servers[0]: \"a b\" is neither a host name nor an IP address",
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let d = t.path().join(format!("bad{i}"));
        let o = common::cluster_init(&d).name("lab").endpoint("10.0.0.10").args(*args).output();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: want {want:?} in {}", stderr(&o));
        assert!(!d.exists(), "{args:?} wrote {d:?}");
    }
}
