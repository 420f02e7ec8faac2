//! `imgbuild cloud-init`: snapshots (secrets redacted) of every file for a
//! 3-control-plane, 2-worker cluster,
//! schema checks (in Rust at render time, here again with Python jsonschema and
//! Debian's cloud-init), hostile inputs, seeds, secrets hygiene, and the baked
//! bootstrap script driven by a kubeadm stub.

use crate::common::{self, ok, stderr, write_files};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SEED: &str = "imgbuild-golden-test";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoldenGoldenGoldenGoldenGoldenGoldenGold3n golden@test";
const NODES: [&str; 5] = ["demo-cp-1", "demo-cp-2", "demo-cp-3", "demo-worker-1", "demo-worker-2"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    common::bin().env(imgbuild::cluster::pki::TEST_SEED_ENV, SEED).args(args).output().unwrap()
}

/// `cluster init` of the golden cluster into `dir`.
pub(crate) fn golden_cluster(dir: &Path) -> PathBuf {
    let key = dir.join("id.pub");
    fs::write(&key, format!("{SSH_KEY}\n")).unwrap();
    common::cluster_init(dir.join("c"))
        .args(["--node-cidr", "10.0.0.0/24", "--vip-interface", "ens3", "--dns", "10.0.0.2,10.0.0.3"])
        .args(["--dns-search", "demo.internal", "--ntp", "10.0.0.4,ntp.demo.internal", "--ssh-key"])
        .args([key])
        .seed(SEED)
        .ok()
}

fn render(cluster: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a = vec!["cloud-init", "--cluster", cluster.to_str().unwrap(), "--out", out.to_str().unwrap()];
    a.extend_from_slice(extra);
    run(&a)
}

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap()
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// A tool the test needs: required in CI, else skipped with a note.
fn need(cmd: &'static str, why: &str) -> bool {
    common::tool(cmd) || {
        eprintln!("note: {why} did not run");
        false
    }
}

/// `text` with the cluster's secret material replaced by placeholders, for a snapshot: every
/// PEM block (raw, or with JSON-escaped newlines inside a quoted string) becomes
/// `[PEM <type>]`, base64 `*-data:` values of a kubeconfig `[BASE64]`, the values of the
/// secrets files (bootstrap token and its two halves, encryption key, the add-ons' admin
/// passwords and hash) `[<file>…]`, and
/// `sha256:<hex>` (the CA public key hash that discovery pins) `sha256:[HASH]`.
pub(crate) fn redact_secrets(text: &str, secrets: &Path) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("-----BEGIN ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "-----BEGIN ".len()..];
        let kind = &after[..after.find("-----").unwrap_or(0)];
        let end = format!("-----END {kind}-----");
        let Some(j) = after.find(&end) else { panic!("unterminated PEM block {kind:?}") };
        out.push_str(&format!("[PEM {kind}]"));
        rest = &after[j + end.len()..];
    }
    out.push_str(rest);
    let mut lines: Vec<String> = Vec::new();
    for line in out.lines() {
        match line.split_once("-data: ") {
            Some((k, _)) if !k.trim().contains(' ') => lines.push(format!("{k}-data: [BASE64]")),
            _ => lines.push(line.to_string()),
        }
    }
    let mut out = lines.join("\n") + if text.ends_with('\n') { "\n" } else { "" };
    // the add-ons' admin credentials: every value but the user name and the date
    for f in [imgbuild::cluster::admin::GRAFANA_FILE, imgbuild::cluster::admin::ARGOCD_FILE] {
        for (k, v) in fs::read_to_string(secrets.join(f)).unwrap().lines().filter_map(|l| l.split_once(": "))
        {
            if !["user", "mtime"].contains(&k) {
                out = out.replace(v.trim(), &format!("[{f} {k}]"));
            }
        }
    }
    for f in ["bootstrap-token", "encryption-key"] {
        let v = fs::read_to_string(secrets.join(f)).unwrap();
        let v = v.trim();
        out = out.replace(v, &format!("[{f}]"));
        if let Some((id, secret)) = v.split_once('.') {
            out = out
                .replace(secret, "[bootstrap-token secret]")
                .replace(&format!("\"{id}\""), "\"[bootstrap-token id]\"");
        }
    }
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("sha256:") {
        let hex = &rest[i + 7..];
        let n = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
        redacted.push_str(&rest[..i + 7]);
        if n == 64 {
            redacted.push_str("[HASH]");
            rest = &hex[64..];
        } else {
            rest = hex;
        }
    }
    redacted.push_str(rest);
    redacted
}

/// Snapshot `actual`, a file of the golden cluster at `rel`, with its secrets redacted.
fn golden(rel: &str, actual: &[u8], secrets: &Path) {
    let text = std::str::from_utf8(actual).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let name = format!("golden_{}", rel.replace(['/', '-', '.'], "_"));
    let redacted = redact_secrets(text, secrets);
    // no line of any secrets file (PEM base64, token, key, password) is left in the snapshot
    let admin = [imgbuild::cluster::admin::GRAFANA_FILE, imgbuild::cluster::admin::ARGOCD_FILE];
    for f in imgbuild::cluster::pki::FILES.into_iter().chain(admin) {
        let secret = fs::read_to_string(secrets.join(f)).unwrap();
        for line in secret.lines().filter(|l| !l.starts_with("-----")) {
            // a YAML file's values (not its user name and date), any other file's lines
            let value = match line.split_once(": ") {
                Some(("user" | "mtime", _)) => continue,
                Some((_, v)) => v,
                None => line,
            };
            assert!(value.len() < 16 || !redacted.contains(value), "{rel}: secrets/{f} left in the snapshot");
        }
    }
    insta::assert_snapshot!(name, redacted);
}

#[test]
fn golden_files_for_three_control_planes_and_two_workers() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let dir = c.parent().unwrap();
    let secrets = dir.join("secrets");
    golden("cluster.yaml", &fs::read(&c).unwrap(), &secrets);
    // the seed makes the secrets themselves reproducible (the snapshots leave them out)
    fs::create_dir_all(t.path().join("again")).unwrap();
    let again = golden_cluster(&t.path().join("again"));
    let admin = [imgbuild::cluster::admin::GRAFANA_FILE, imgbuild::cluster::admin::ARGOCD_FILE];
    for f in imgbuild::cluster::pki::FILES.into_iter().chain(admin) {
        let other = again.parent().unwrap().join("secrets").join(f);
        assert_eq!(fs::read(secrets.join(f)).unwrap(), fs::read(other).unwrap(), "secrets/{f} differs");
    }
    let out = t.path().join("out");
    ok(&render(&c, &out, &["--all", "--seed", "none"]));
    let mut n = 0;
    for node in NODES {
        for f in ["user-data", "meta-data", "network-config"] {
            golden(&format!("nodes/{node}/{f}"), &fs::read(out.join(node).join(f)).unwrap(), &secrets);
            n += 1;
        }
    }
    assert_eq!(n, 15);
    let o = run(&["cluster", "kubeconfig", "--cluster", c.to_str().unwrap()]);
    ok(&o);
    golden("kubeconfig", &o.stdout, &secrets);
    // a second render is byte-identical
    let out2 = t.path().join("out2");
    ok(&render(&c, &out2, &["--all", "--seed", "none"]));
    for node in NODES {
        assert_eq!(
            fs::read(out.join(node).join("user-data")).unwrap(),
            fs::read(out2.join(node).join("user-data")).unwrap()
        );
    }
}

#[test]
fn roles_get_the_right_data_and_kubeadm_kinds() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let out = t.path().join("out");
    ok(&render(&c, &out, &["--all", "--seed", "none"]));
    let secrets = c.parent().unwrap().join("secrets");
    let ca_key = fs::read_to_string(secrets.join("ca.key")).unwrap();
    let token = fs::read_to_string(secrets.join("bootstrap-token")).unwrap().trim().to_string();
    let kinds = |text: &str| -> Vec<(String, String)> {
        serde_yaml::Deserializer::from_str(text)
            .map(|d| {
                let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
                (v["apiVersion"].as_str().unwrap().to_string(), v["kind"].as_str().unwrap().to_string())
            })
            .collect()
    };
    for node in NODES {
        let ud = fs::read_to_string(out.join(node).join("user-data")).unwrap();
        assert!(ud.starts_with("#cloud-config\n"));
        let v = yaml(&ud);
        assert_eq!(v["hostname"].as_str(), Some(node));
        assert_eq!(v["runcmd"][0], yaml("[systemctl, start, --no-block, imgbuild-bootstrap.service]"));
        assert_eq!(v["ssh_authorized_keys"][0].as_str(), Some(SSH_KEY));
        let files = write_files(&ud);
        let (mode, kubeadm) = &files["/etc/imgbuild/kubeadm.yaml"];
        assert_eq!(mode, "0600");
        let env = &files["/etc/imgbuild/bootstrap.env"].1;
        let meta = yaml(&fs::read_to_string(out.join(node).join("meta-data")).unwrap());
        assert_eq!(meta["local-hostname"].as_str(), Some(node));
        // node names already carry the cluster's: not doubled
        assert_eq!(meta["instance-id"].as_str(), Some(node));
        let net = yaml(&fs::read_to_string(out.join(node).join("network-config")).unwrap());
        assert_eq!(net["version"].as_u64(), Some(2));
        // the address on the one NIC named by --interface (--vip-interface), with the resolvers
        let eths = net["ethernets"].as_mapping().unwrap();
        assert_eq!(eths.len(), 1, "{net:?}");
        let e = &net["ethernets"]["ens3"];
        assert_eq!(
            e["addresses"][0].as_str().unwrap(),
            format!("10.0.0.{}/24", 11 + NODES.iter().position(|x| *x == node).unwrap())
        );
        assert_eq!(e["nameservers"], yaml("{addresses: [10.0.0.2, 10.0.0.3], search: [demo.internal]}"));
        assert_eq!(e["routes"], yaml("[{to: 0.0.0.0/0, via: 10.0.0.1}]"));
        // time through cloud-init's ntp module, with the client noble ships
        assert_eq!(
            v["ntp"],
            yaml("{enabled: true, ntp_client: systemd-timesyncd, servers: [10.0.0.4, ntp.demo.internal]}")
        );
        // the firewall's data: the node network, pods, services, the VIP
        let nets = &files["/etc/imgbuild/cluster-networks"];
        assert_eq!(nets.0, "0644");
        let lines: Vec<&str> = nets.1.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            ["node 10.0.0.0/24", "pod 10.244.0.0/16", "service 10.96.0.0/12", "endpoint 10.0.0.10/32"]
        );
        match node {
            "demo-cp-1" => {
                assert!(env.contains("IMGBUILD_ROLE=init\n"), "{env}");
                assert_eq!(
                    kinds(kubeadm),
                    [
                        ("kubeadm.k8s.io/v1beta3", "InitConfiguration"),
                        ("kubeadm.k8s.io/v1beta3", "ClusterConfiguration"),
                        ("kubelet.config.k8s.io/v1beta1", "KubeletConfiguration"),
                        ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"),
                    ]
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                );
                let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(kubeadm)
                    .map(|d| serde::Deserialize::deserialize(d).unwrap())
                    .collect();
                assert_eq!(docs[0]["bootstrapTokens"][0]["token"].as_str(), Some(token.as_str()));
                assert_eq!(docs[0]["localAPIEndpoint"]["advertiseAddress"].as_str(), Some("10.0.0.11"));
                let cc = &docs[1];
                assert_eq!(cc["controlPlaneEndpoint"].as_str(), Some("10.0.0.10:6443"));
                assert_eq!(cc["kubernetesVersion"].as_str(), Some("v1.30.3"));
                assert_eq!(cc["networking"]["podSubnet"].as_str(), Some("10.244.0.0/16"));
                assert_eq!(cc["networking"]["serviceSubnet"].as_str(), Some("10.96.0.0/12"));
                let args = &cc["apiServer"]["extraArgs"];
                assert_eq!(
                    args["encryption-provider-config"].as_str(),
                    Some("/etc/kubernetes/encryption/config.yaml")
                );
                assert_eq!(args["audit-policy-file"].as_str(), Some("/etc/kubernetes/audit/policy.yaml"));
                assert!(args["audit-log-path"].as_str().is_some());
                let k = &docs[2];
                assert_eq!(k["authentication"]["anonymous"]["enabled"].as_bool(), Some(false));
                assert_eq!(k["authentication"]["webhook"]["enabled"].as_bool(), Some(true));
                assert_eq!(k["authorization"]["mode"].as_str(), Some("Webhook"));
                assert_eq!(k["readOnlyPort"].as_u64(), Some(0));
                for b in
                    ["protectKernelDefaults", "rotateCertificates", "serverTLSBootstrap", "seccompDefault"]
                {
                    assert_eq!(k[b].as_bool(), Some(true), "{b}");
                }
                assert_eq!(k["cgroupDriver"].as_str(), Some("systemd"));
                // kube-vip: super-admin.conf during init, admin.conf afterwards
                let init = yaml(&files["/etc/imgbuild/kube-vip/init.yaml"].1);
                let steady = yaml(&files["/etc/imgbuild/kube-vip/kube-vip.yaml"].1);
                assert_eq!(
                    init["spec"]["volumes"][0]["hostPath"]["path"].as_str(),
                    Some("/etc/kubernetes/super-admin.conf")
                );
                assert_eq!(
                    steady["spec"]["volumes"][0]["hostPath"]["path"].as_str(),
                    Some("/etc/kubernetes/admin.conf")
                );
                assert_eq!(
                    steady["spec"]["containers"][0]["image"].as_str(),
                    Some("ghcr.io/kube-vip/kube-vip:v0.8.0")
                );
                let envs = steady["spec"]["containers"][0]["env"].as_sequence().unwrap();
                let get = |k: &str| {
                    envs.iter().find(|e| e["name"].as_str() == Some(k)).unwrap()["value"]
                        .as_str()
                        .unwrap()
                        .to_string()
                };
                assert_eq!(get("address"), "10.0.0.10");
                assert_eq!(get("vip_interface"), "ens3");
                assert_eq!(get("vip_arp"), "true");
                let values = &files["/etc/imgbuild/addons/values.yaml"];
                assert_eq!(values.0, "0600");
                assert_eq!(
                    yaml(&values.1)["image"]["repository"].as_str(),
                    Some("ghcr.io/stefanprodan/podinfo")
                );
                let enc = yaml(&files["/etc/kubernetes/encryption/config.yaml"].1);
                assert_eq!(enc["kind"].as_str(), Some("EncryptionConfiguration"));
                let key =
                    enc["resources"][0]["providers"][0]["secretbox"]["keys"][0]["secret"].as_str().unwrap();
                assert_eq!(key, fs::read_to_string(secrets.join("encryption-key")).unwrap().trim());
                assert_eq!(
                    yaml(&files["/etc/kubernetes/audit/policy.yaml"].1)["kind"].as_str(),
                    Some("Policy")
                );
            }
            _ => {
                assert_eq!(
                    kinds(kubeadm),
                    [("kubeadm.k8s.io/v1beta3".to_string(), "JoinConfiguration".to_string())]
                );
                let j = yaml(kubeadm);
                let bt = &j["discovery"]["bootstrapToken"];
                assert_eq!(bt["token"].as_str(), Some(token.as_str()));
                assert_eq!(bt["apiServerEndpoint"].as_str(), Some("10.0.0.10:6443"));
                assert!(!files.contains_key("/etc/imgbuild/addons/values.yaml"));
                assert!(!files.contains_key("/etc/imgbuild/kube-vip/init.yaml"));
                if node.contains("cp") {
                    assert!(env.contains("IMGBUILD_ROLE=join-control-plane\n"));
                    assert!(j["controlPlane"]["localAPIEndpoint"].is_mapping());
                    assert_eq!(files["/etc/imgbuild/pki/ca.key"], ("0600".to_string(), ca_key.clone()));
                    for f in [
                        "sa.key",
                        "sa.pub",
                        "front-proxy-ca.crt",
                        "front-proxy-ca.key",
                        "etcd/ca.crt",
                        "etcd/ca.key",
                    ] {
                        assert!(files.contains_key(&format!("/etc/imgbuild/pki/{f}")), "{f}");
                    }
                } else {
                    assert!(env.contains("IMGBUILD_ROLE=join-worker\n"));
                    assert!(j.get("controlPlane").is_none());
                    // workers never receive CA keys (or any private key)
                    assert!(!ud.contains("PRIVATE KEY"), "{node} got a private key");
                    assert!(!files.keys().any(|p| p.contains("/pki/")));
                }
            }
        }
    }
}

#[test]
fn discovery_hash_matches_openssl() {
    if !need("openssl", "the discovery hash cross-check") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let ca = c.parent().unwrap().join("secrets/ca.crt");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | sha256sum",
            ca.display()
        ))
        .output()
        .unwrap();
    ok(&o);
    let want = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!(want.len(), 64);
    let out = t.path().join("out");
    ok(&render(&c, &out, &["--node", "demo-worker-1", "--seed", "none"]));
    let ud = fs::read_to_string(out.join("demo-worker-1/user-data")).unwrap();
    let j = yaml(&write_files(&ud)["/etc/imgbuild/kubeadm.yaml"].1);
    assert_eq!(
        j["discovery"]["bootstrapToken"]["caCertHashes"][0].as_str(),
        Some(format!("sha256:{want}").as_str())
    );
    // only the requested node was rendered
    assert!(!out.join("demo-cp-1").exists());
}

const PY_SCHEMA: &str = r##"
import sys, json, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
v, rc = cls(schema), 0
for f in sys.argv[2:]:
    text = open(f, encoding="utf-8").read()
    assert text.startswith("#cloud-config\n"), f
    for e in v.iter_errors(yaml.safe_load(text)):
        print(f, "/".join(map(str, e.absolute_path)), e.message); rc = 1
sys.exit(rc)
"##;

fn python_has_jsonschema() -> bool {
    Command::new("python3").args(["-c", "import jsonschema, yaml"]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn every_user_data_passes_the_schema_in_python_and_cloud_init_22_4() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let out = t.path().join("out");
    ok(&render(&c, &out, &["--all", "--seed", "none"]));
    let files: Vec<String> =
        NODES.iter().map(|n| out.join(n).join("user-data").display().to_string()).collect();
    let schema = root().join("cloud-init/schema/schema-cloud-config-v1.json");
    if python_has_jsonschema() {
        let o = Command::new("python3").arg("-c").arg(PY_SCHEMA).arg(&schema).args(&files).output().unwrap();
        ok(&o);
    } else {
        assert!(!in_ci(), "python3 with jsonschema+pyyaml is required in CI (ci/test.sh pip-installs them)");
        eprintln!("note: skipping the Python jsonschema cross-check: pip install jsonschema pyyaml");
    }
    if need("cloud-init", "the cloud-init 22.4 schema check") {
        for f in &files {
            let o = Command::new("cloud-init").args(["schema", "--config-file", f]).output().unwrap();
            ok(&o);
        }
    }
}

#[test]
fn hostile_values_round_trip_byte_exact_or_are_rejected() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let nasty = "postgres://u:p@h/db?x=1 # not a comment\n---\nkey: value\n\"quoted\" 'single' {{ jinja }} {% raw %} \
                 é漢字🚀 \u{85}\u{2028}\t\\ end";
    let key_nasty = "ssh-ed25519 AAAA # x: y \"q\" 'r' {{ z }} --- é";
    let mut spec = fs::read_to_string(&c).unwrap();
    // written with the same quoting the templates use (raw NEL/LS would fold in YAML)
    let quoted = imgbuild::template::quote(nasty);
    spec = spec.replace(
        "    # secret:\n",
        &format!(
            "    secret:\n      env:\n        DATABASE_URL: {quoted}\n    podAnnotations:\n      \"weird: key #\": \"{{{{x}}}}\"\n"
        ),
    );
    spec =
        spec.replace(&format!("  - \"{SSH_KEY}\""), &format!("  - {}", imgbuild::template::quote(key_nasty)));
    fs::write(&c, &spec).unwrap();
    let out = t.path().join("out");
    ok(&render(&c, &out, &["--all", "--seed", "none"]));
    let ud = fs::read_to_string(out.join("demo-cp-1/user-data")).unwrap();
    let v = yaml(&ud);
    assert_eq!(v["ssh_authorized_keys"][0].as_str(), Some(key_nasty));
    let values = yaml(&write_files(&ud)["/etc/imgbuild/addons/values.yaml"].1);
    assert_eq!(values["secret"]["env"]["DATABASE_URL"].as_str(), Some(nasty));
    assert_eq!(values["podAnnotations"]["weird: key #"].as_str(), Some("{{x}}"));
    // and with PyYAML, which is what cloud-init uses
    if python_has_jsonschema() {
        let py = "import sys, yaml, json\nd = yaml.safe_load(open(sys.argv[1], encoding='utf-8'))\n\
                  f = [w for w in d['write_files'] if w['path'] == '/etc/imgbuild/addons/values.yaml'][0]\n\
                  v = yaml.safe_load(f['content'])\n\
                  sys.stdout.write(json.dumps([d['ssh_authorized_keys'][0], v['secret']['env']['DATABASE_URL']]))";
        let o =
            Command::new("python3").arg("-c").arg(py).arg(out.join("demo-cp-1/user-data")).output().unwrap();
        ok(&o);
        let got: Vec<String> = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(got, [key_nasty, nasty]);
    }

    // names and values that cannot be made safe are refused with exit 2
    let base = fs::read_to_string(&c).unwrap();
    for (from, to) in [
        ("name: \"demo-worker-2\"", "name: \"w2\\nhostname: evil\""),
        ("name: \"demo-worker-2\"", "name: \"w2: x\""),
        ("name: \"demo-worker-2\"", "name: \"w#2\""),
        ("name: \"demo-worker-2\"", "name: \"{{w2}}\""),
        ("name: \"demo-worker-2\"", "name: \"---\""),
        ("name: \"demo-worker-2\"", "name: \"wörker\""),
        ("name: \"demo-worker-2\"", "name: \"w'2\""),
        ("name: \"demo\"", "name: \"demo\\n- x\""),
        ("endpoint: \"10.0.0.10:6443\"", "endpoint: \"10.0.0.10:6443\\n#\""),
        ("interface: \"ens3\"", "interface: \"ens3\\\"\""),
    ] {
        let bad = base.replacen(from, to, 1);
        assert_ne!(bad, base, "{from}");
        fs::write(&c, &bad).unwrap();
        let o = render(&c, &t.path().join("bad"), &["--all", "--seed", "none"]);
        assert_eq!(o.status.code(), Some(2), "{to}: {}", stderr(&o));
        assert!(stderr(&o).contains("cluster.yaml:"), "{}", stderr(&o));
    }
    let bad_key = base.replace(
        &format!("  - {}", imgbuild::template::quote(key_nasty)),
        "  - \"ssh-ed25519 AAAA\\nruncmd: [reboot]\"",
    );
    fs::write(&c, &bad_key).unwrap();
    let o = render(&c, &t.path().join("bad"), &["--all"]);
    common::exits_with(&o, 2, "ssh_authorized_keys[0]");
}

#[test]
fn user_data_size_limits() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let base = fs::read_to_string(&c).unwrap();
    let with = |n: usize| {
        base.replace("    # secret:\n", &format!("    podAnnotations:\n      blob: \"{}\"\n", "x".repeat(n)))
    };
    fs::write(&c, with(10_000)).unwrap();
    let o = render(&c, &t.path().join("o1"), &["--node", "demo-cp-1", "--seed", "none"]);
    ok(&o);
    assert!(stderr(&o).contains("warning:") && stderr(&o).contains("over 16 KiB"), "{}", stderr(&o));
    fs::write(&c, with(70_000)).unwrap();
    let o = render(&c, &t.path().join("o2"), &["--node", "demo-cp-1", "--seed", "none"]);
    common::exits_with(&o, 2, "64 KiB");
    assert!(stderr(&o).contains("cluster.yaml:"), "{}", stderr(&o));
    assert!(!t.path().join("o2/demo-cp-1/user-data").exists());
    // workers do not carry the add-on values, so they stay small
    let o = render(&c, &t.path().join("o3"), &["--node", "demo-worker-1", "--seed", "none"]);
    ok(&o);
}

#[test]
fn files_are_private_and_secrets_never_printed() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("id.pub");
    fs::write(&key, format!("{SSH_KEY}\n")).unwrap();
    let d = t.path().join("c");
    // real randomness here: no test seed
    let o = common::cluster_init(&d)
        .name("prod")
        .endpoint("10.1.0.10")
        .args(["--node-cidr", "10.1.0.0/24", "--interface", "ens3", "--dns", "10.1.0.2"])
        .external_lb()
        .args(["--ssh-key", key.to_str().unwrap()])
        .output();
    ok(&o);
    let mut printed = o.stdout.clone();
    printed.extend(&o.stderr);
    let c = d.join("cluster.yaml");
    let out = t.path().join("out");
    let o = common::bin()
        .args(["cloud-init", "--cluster", c.to_str().unwrap(), "--all", "--seed", "vfat", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    ok(&o);
    printed.extend(&o.stdout);
    printed.extend(&o.stderr);
    let printed = String::from_utf8_lossy(&printed).into_owned();
    let secrets = imgbuild::cluster::pki::Secrets::load(&d.join("secrets")).unwrap();
    for s in secrets.values() {
        let s = s.trim();
        assert!(!printed.contains(s), "a secret was printed");
        // also no PEM body line of a key
        for line in s.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!printed.contains(line), "a key line was printed");
        }
    }
    assert!(!printed.contains("PREDICTABLE"), "test seed leaked into a real run");
    assert_eq!(fs::metadata(&c).unwrap().permissions().mode() & 0o777, 0o600);
    for node in ["prod-cp-1", "prod-cp-2", "prod-cp-3", "prod-worker-1", "prod-worker-2"] {
        let nd = out.join(node);
        assert_eq!(fs::metadata(&nd).unwrap().permissions().mode() & 0o777, 0o700);
        for f in ["user-data", "meta-data", "network-config", "seed.img"] {
            assert_eq!(fs::metadata(nd.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{node}/{f}");
        }
    }
    // external-lb: no kube-vip anywhere
    let ud = fs::read_to_string(out.join("prod-cp-1/user-data")).unwrap();
    assert!(!ud.contains("kube-vip"));
}

#[test]
fn nocloud_seeds_iso_and_vfat() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let out = t.path().join("out");
    ok(&render(&c, &out, &["--node", "demo-cp-2", "--seed", "vfat"]));
    let nd = out.join("demo-cp-2");
    let img = nd.join("seed.img");
    // byte-identical on a re-render
    let first = fs::read(&img).unwrap();
    ok(&render(&c, &out, &["--node", "demo-cp-2", "--seed", "vfat"]));
    assert_eq!(first, fs::read(&img).unwrap());
    if need("blkid", "the seed label check") {
        let o = Command::new("blkid").arg("-p").arg(&img).output().unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("LABEL=\"CIDATA\"") && s.contains("TYPE=\"vfat\""), "{s}");
    }
    if need("mtype", "reading the vfat seed") {
        for f in ["user-data", "meta-data", "network-config"] {
            let o = Command::new("mtype").arg("-i").arg(&img).arg(format!("::{f}")).output().unwrap();
            ok(&o);
            assert_eq!(o.stdout, fs::read(nd.join(f)).unwrap(), "{f}");
        }
    }
    // the ISO seed is written by imgbuild itself: no tool needed to write it
    ok(&render(&c, &out, &["--node", "demo-cp-2", "--seed", "iso"]));
    let iso = nd.join("seed.iso");
    // the vfat seed of the earlier render is gone (it would be stale)
    assert!(!img.exists());
    assert_eq!(fs::metadata(&iso).unwrap().permissions().mode() & 0o777, 0o600);
    // byte-identical on a re-render, a second later
    let first = fs::read(&iso).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&render(&c, &out, &["--node", "demo-cp-2", "--seed", "iso"]));
    assert!(first == fs::read(&iso).unwrap(), "ISO seed is not reproducible");
    if need("isoinfo", "reading the ISO seed") {
        let o = Command::new("isoinfo").arg("-d").arg("-i").arg(&iso).output().unwrap();
        let d = String::from_utf8_lossy(&o.stdout);
        assert!(d.contains("Volume id: cidata"), "{d}");
        assert!(d.contains("Joliet") && d.contains("Rock Ridge"), "{d}");
        for f in ["user-data", "meta-data", "network-config"] {
            let o = Command::new("isoinfo")
                .args(["-R", "-x", &format!("/{f}"), "-i"])
                .arg(&iso)
                .output()
                .unwrap();
            ok(&o);
            assert_eq!(o.stdout, fs::read(nd.join(f)).unwrap(), "{f}");
        }
    }
}

#[test]
fn vendor_data_goes_next_to_user_data_and_into_the_seed() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let out = t.path().join("out");
    let vd = t.path().join("vendor-data");
    fs::write(&vd, "#cloud-config\napt:\n  proxy: http://proxy.internal:3142\n").unwrap();
    ok(&render(
        &c,
        &out,
        &["--node", "demo-worker-1", "--seed", "iso", "--vendor-data", vd.to_str().unwrap()],
    ));
    let nd = out.join("demo-worker-1");
    assert_eq!(fs::read(nd.join("vendor-data")).unwrap(), fs::read(&vd).unwrap());
    assert_eq!(fs::metadata(nd.join("vendor-data")).unwrap().permissions().mode() & 0o777, 0o600);
    if need("isoinfo", "reading the ISO seed") {
        let o = Command::new("isoinfo")
            .args(["-R", "-x", "/vendor-data", "-i"])
            .arg(nd.join("seed.iso"))
            .output()
            .unwrap();
        ok(&o);
        assert_eq!(o.stdout, fs::read(&vd).unwrap());
    }
    // a render without it drops the stale copy
    ok(&render(&c, &out, &["--node", "demo-worker-1", "--seed", "none"]));
    assert!(!nd.join("vendor-data").exists());
    // too large: bad input, nothing read unboundedly
    fs::write(&vd, vec![b'#'; (1 << 20) + 1]).unwrap();
    let o = render(&c, &out, &["--node", "demo-worker-1", "--vendor-data", vd.to_str().unwrap()]);
    common::exits_with(&o, 2, "larger than 1024 KiB");
}

#[test]
fn unknown_node_and_missing_selection() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let o = render(&c, &t.path().join("o"), &["--node", "nope", "--seed", "none"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("demo-cp-1"), "{}", stderr(&o));
    let o = render(&c, &t.path().join("o"), &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = render(&c, &t.path().join("o"), &["--all", "--node", "demo-cp-1"]);
    assert_eq!(o.status.code(), Some(2));
}

// ---------------------------------------------------------------------------
// The baked bootstrap script, driven by stubs in a temporary root.

const SCRIPT: &str = "image-files/common/usr/libexec/imgbuild/bootstrap";

struct Node {
    _t: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
    calls: PathBuf,
}

/// Materialise a node's write_files under a temp root, with stub kubeadm and systemctl.
fn node_root(user_data: &str, kubeadm_rc: &str) -> Node {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    for (path, (mode, content)) in write_files(user_data) {
        let p = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(u32::from_str_radix(&mode, 8).unwrap())).unwrap();
    }
    let bin = t.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let calls = t.path().join("calls");
    // the kubeadm stub records its arguments; exit codes come from a file, one per call
    let stub = format!(
        "#!/bin/sh\necho \"kubeadm $*\" >> '{calls}'\necho \"stub kubeadm output for $1\"\n\
         rcs='{rcs}'\nif [ \"$1\" = reset ]; then exit 0; fi\n\
         n=$(grep -c '^kubeadm \\(init\\|join\\)' '{calls}')\n\
         rc=$(printf '%s\\n' $rcs | sed -n \"${{n}}p\")\n\
         if [ \"${{rc:-0}}\" != 0 ]; then echo 'error execution phase preflight: couldn'\"'\"'t validate the identity of the API Server' >&2; fi\n\
         exit \"${{rc:-0}}\"\n",
        calls = calls.display(),
        rcs = kubeadm_rc
    );
    fs::write(bin.join("kubeadm"), stub).unwrap();
    fs::write(bin.join("systemctl"), format!("#!/bin/sh\necho \"systemctl $*\" >> '{}'\n", calls.display()))
        .unwrap();
    // A control plane's join also asks the API for etcd and etcd for the join lock and
    // the member list (tests/join.rs drives that part against a real etcd): one member,
    // never this node, and a lock that is always free.
    fs::write(bin.join("kubectl"), "#!/bin/sh\necho https://127.0.0.1:2379\n").unwrap();
    fs::write(
        bin.join("etcdctl"),
        "#!/bin/bash\nfor a in \"$@\"; do case $a in\n\
         lock) echo imgbuild/control-plane-join/1; exec sleep 60 ;;\n\
         list) echo '1, started, other-cp, https://127.0.0.1:2380, https://127.0.0.1:2379, false'; exit 0 ;;\n\
         esac; done\n",
    )
    .unwrap();
    for s in ["kubeadm", "systemctl", "kubectl", "etcdctl"] {
        fs::set_permissions(bin.join(s), fs::Permissions::from_mode(0o755)).unwrap();
    }
    Node { _t: t, root, bin, calls }
}

impl Node {
    fn run(&self, extra: &[(&str, &str)]) -> Output {
        let mut c = Command::new("bash");
        c.arg(root().join(SCRIPT))
            .env("IMGBUILD_ROOT", &self.root)
            .env("PATH", format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("IMGBUILD_BACKOFF_INITIAL", "0")
            .env("IMGBUILD_BACKOFF_MAX", "0");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    }
    fn calls(&self) -> Vec<String> {
        fs::read_to_string(&self.calls).unwrap_or_default().lines().map(String::from).collect()
    }
    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(self.root.join("run/imgbuild/bootstrap.json")).unwrap())
            .unwrap()
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn rendered_user_data(node: &str) -> (tempfile::TempDir, String) {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let out = t.path().join("out");
    ok(&render(&c, &out, &["--all", "--seed", "none"]));
    let ud = fs::read_to_string(out.join(node).join("user-data")).unwrap();
    (t, ud)
}

#[test]
fn bootstrap_first_control_plane_init_then_idempotent() {
    let (_t, ud) = rendered_user_data("demo-cp-1");
    let n = node_root(&ud, "0");
    fs::create_dir_all(n.p("etc/systemd/system")).unwrap();
    fs::write(n.p("etc/systemd/system/imgbuild-addons.service"), "[Service]\n").unwrap();
    let o = n.run(&[]);
    ok(&o);
    let cfg = n.p("etc/imgbuild/kubeadm.yaml");
    assert_eq!(
        n.calls(),
        [
            format!(
                "kubeadm init --config {} --skip-token-print --skip-certificate-key-print",
                cfg.display()
            ),
            "systemctl start --no-block imgbuild-addons.service".to_string(),
        ]
    );
    let console = String::from_utf8_lossy(&o.stdout);
    for phase in ["phase start", "phase kubeadm-init: attempt 1", "phase done", "phase addons"] {
        assert!(console.contains(phase), "{console}");
    }
    assert_eq!(fs::read_to_string(n.p("run/cluster-api/bootstrap-success.complete")).unwrap(), "success\n");
    let s = n.status();
    assert_eq!(s["phase"], "done");
    assert_eq!(s["role"], "init");
    assert_eq!(s["node"], "demo-cp-1");
    assert_eq!(s["attempts"], 1);
    assert_eq!(s["last_error"], "");
    // PKI pre-placed where kubeadm looks, keys 0600; the staging copies are the
    // scrubber's (scrub_removes_every_copy_of_user_data_secrets_once_joined)
    for (f, mode) in [("ca.key", 0o600), ("ca.crt", 0o644), ("etcd/ca.key", 0o600), ("sa.pub", 0o644)] {
        let m = fs::metadata(n.p(&format!("etc/kubernetes/pki/{f}"))).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    // kube-vip switched to admin.conf after init
    let vip = fs::read_to_string(n.p("etc/kubernetes/manifests/kube-vip.yaml")).unwrap();
    assert!(vip.contains("path: \"/etc/kubernetes/admin.conf\""), "{vip}");
    assert!(n.p("var/lib/imgbuild/bootstrap.done").exists());
    // kubeadm's output goes to a private log, not to the console
    assert!(!console.contains("stub kubeadm output"));
    assert_eq!(
        fs::metadata(n.p("var/log/imgbuild/kubeadm.log")).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // reboot: /run is empty again, kubeadm must not run again
    fs::remove_dir_all(n.p("run")).unwrap();
    let o = n.run(&[]);
    ok(&o);
    let calls = n.calls();
    assert_eq!(calls.iter().filter(|c| c.starts_with("kubeadm")).count(), 1, "{calls:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("already bootstrapped"));
    assert!(n.p("run/cluster-api/bootstrap-success.complete").exists());
    assert_eq!(n.status()["phase"], "done");
    // the attempt count survives the reboot (/run/imgbuild/bootstrap.json does not)
    assert_eq!(n.status()["attempts"], 1);
}

/// What kubeadm v1.30 prints when a preflight check fails: progress lines, the error,
/// the check, a hint and the generic trailer (cmd/kubeadm/app/util/error.go and the
/// phase runner; the same shape appears in countless public logs).
const KUBEADM_PREFLIGHT_FAILURE: &str = "[preflight] Running pre-flight checks
error execution phase preflight: [preflight] Some fatal errors occurred:
\t[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: /proc/sys/net/ipv4/ip_forward contents are not set to 1
\t[ERROR Swap]: running with swap on is not supported. Please disable swap
[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`
To see the stack trace of this error execute with --v=5 or higher
";

#[test]
fn bootstrap_reports_kubeadms_cause_not_its_trailer() {
    let (_t, ud) = rendered_user_data("demo-worker-1");
    let n = node_root(&ud, "1");
    let out = n.root.join("kubeadm-output");
    fs::write(&out, KUBEADM_PREFLIGHT_FAILURE).unwrap();
    fs::write(
        n.bin.join("kubeadm"),
        format!(
            "#!/bin/sh\necho \"kubeadm $*\" >> '{}'\n[ \"$1\" = reset ] && exit 0\ncat '{}' >&2\nexit 1\n",
            n.calls.display(),
            out.display()
        ),
    )
    .unwrap();
    let o = n.run(&[("IMGBUILD_MAX_ATTEMPTS", "1")]);
    assert_eq!(o.status.code(), Some(1));
    let want = "error execution phase preflight: [preflight] Some fatal errors occurred: \
                [ERROR FileContent--proc-sys-net-ipv4-ip_forward]: /proc/sys/net/ipv4/ip_forward contents are not set to 1; \
                [ERROR Swap]: running with swap on is not supported. Please disable swap";
    let s = n.status();
    assert_eq!(s["last_error"], want, "{s}");
    let console = String::from_utf8_lossy(&o.stdout);
    assert!(
        console.contains(&format!("phase failed: kubeadm join failed 1 time(s) within 1800s; last: {want}")),
        "{console}"
    );
    assert!(!console.contains("stack trace"), "{console}");

    // An error outside a phase (printed as it is) and a silent failure.
    fs::write(&out, "I0102 15:04:05.000000    1234 join.go:1] a klog line\ncouldn't create a Kubernetes client from file \"/etc/kubernetes/kubelet.conf\": open /etc/kubernetes/kubelet.conf: no such file or directory\nTo see the stack trace of this error execute with --v=5 or higher\n").unwrap();
    fs::remove_dir_all(n.p("run")).unwrap();
    assert_eq!(n.run(&[("IMGBUILD_MAX_ATTEMPTS", "1")]).status.code(), Some(1));
    assert_eq!(
        n.status()["last_error"],
        "couldn't create a Kubernetes client from file \"/etc/kubernetes/kubelet.conf\": open /etc/kubernetes/kubelet.conf: no such file or directory"
    );
    fs::write(&out, "").unwrap();
    fs::remove_dir_all(n.p("run")).unwrap();
    assert_eq!(n.run(&[("IMGBUILD_MAX_ATTEMPTS", "1")]).status.code(), Some(1));
    assert_eq!(n.status()["last_error"], "kubeadm failed without output");
}

#[test]
fn bootstrap_runs_once_per_boot_and_counts_attempts_across_reboots() {
    let (_t, ud) = rendered_user_data("demo-worker-2");
    let n = node_root(&ud, "1 1 1 0");
    let o = n.run(&[("IMGBUILD_MAX_ATTEMPTS", "2")]);
    assert_eq!(o.status.code(), Some(1));
    let first = n.status();
    assert_eq!(first["phase"], "failed");
    assert_eq!(first["attempts"], 2);
    let joins = |n: &Node| n.calls().iter().filter(|c| c.starts_with("kubeadm join")).count();
    assert_eq!(joins(&n), 2);

    // cloud-init's runcmd (or anyone) starts the unit again during the same boot:
    // no second retry budget, the status stays as the first run left it.
    let o = n.run(&[("IMGBUILD_MAX_ATTEMPTS", "2")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("already ran during this boot (phase failed)"));
    assert_eq!(joins(&n), 2, "{:?}", n.calls());
    assert_eq!(n.status(), first);

    // A reboot runs it again, and the count goes on: 2 more attempts, success at the 4th.
    fs::remove_dir_all(n.p("run")).unwrap();
    let o = n.run(&[("IMGBUILD_MAX_ATTEMPTS", "2")]);
    ok(&o);
    assert_eq!(joins(&n), 4);
    let s = n.status();
    assert_eq!(s["phase"], "done");
    assert_eq!(s["attempts"], 4);
    // done, then started again in the same boot: a report, success
    let o = n.run(&[]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already ran during this boot (phase done)"));
    assert_eq!(joins(&n), 4);
}

/// The unit must not hold multi-user.target (and cloud-final.service, which is ordered
/// after it) for as long as the bootstrap retries: a oneshot's start job lasts until
/// the script exits, and a target waits for the start jobs of the units it wants.
#[test]
fn bootstrap_unit_does_not_hold_up_boot() {
    let unit =
        fs::read_to_string(root().join("image-files/common/etc/systemd/system/imgbuild-bootstrap.service"))
            .unwrap();
    let service: Vec<&str> = unit.lines().map(str::trim).collect();
    assert!(service.contains(&"Type=exec"), "{unit}");
    assert!(service.contains(&"RemainAfterExit=yes"), "{unit}");
    assert!(service.contains(&"WantedBy=multi-user.target"), "{unit}");
}

#[test]
fn bootstrap_kube_vip_uses_super_admin_during_init() {
    let (_t, ud) = rendered_user_data("demo-cp-1");
    // a kubeadm stub that captures the manifest kube-vip runs with during init
    let n = node_root(&ud, "0");
    let capture = n.root.join("vip-during-init");
    let stub = format!(
        "#!/bin/sh\necho \"kubeadm $*\" >> '{}'\ncp '{}' '{}'\n",
        n.calls.display(),
        n.p("etc/kubernetes/manifests/kube-vip.yaml").display(),
        capture.display()
    );
    fs::write(n.bin.join("kubeadm"), stub).unwrap();
    ok(&n.run(&[]));
    let during = fs::read_to_string(capture).unwrap();
    assert!(during.contains("path: \"/etc/kubernetes/super-admin.conf\""), "{during}");
}

#[test]
fn bootstrap_worker_join_retries_with_backoff() {
    let (_t, ud) = rendered_user_data("demo-worker-1");
    let n = node_root(&ud, "1 1 0");
    let o = n.run(&[]);
    ok(&o);
    let cfg = n.p("etc/imgbuild/kubeadm.yaml").display().to_string();
    let join = format!("kubeadm join --config {cfg}");
    assert_eq!(
        n.calls(),
        [join.clone(), "kubeadm reset -f".into(), join.clone(), "kubeadm reset -f".into(), join]
    );
    let console = String::from_utf8_lossy(&o.stdout);
    assert!(console.contains("phase retry-wait: attempt 1 failed"), "{console}");
    assert!(console.contains("phase kubeadm-join: attempt 3"), "{console}");
    let s = n.status();
    assert_eq!(s["phase"], "done");
    assert_eq!(s["attempts"], 3);
    assert_eq!(s["role"], "join-worker");
    // a worker never has CA keys on disk
    assert!(!n.p("etc/kubernetes/pki/ca.key").exists());
    assert!(n.p("run/cluster-api/bootstrap-success.complete").exists());
}

#[test]
fn bootstrap_gives_up_after_budget_and_reports() {
    let (_t, ud) = rendered_user_data("demo-cp-2");
    let n = node_root(&ud, "1 1 1 1 1 1 1 1 1 1");
    let o = n.run(&[("IMGBUILD_MAX_ATTEMPTS", "3")]);
    assert_eq!(o.status.code(), Some(1));
    let s = n.status();
    assert_eq!(s["phase"], "failed");
    assert_eq!(s["attempts"], 3);
    assert_eq!(s["role"], "join-control-plane");
    assert!(s["last_error"].as_str().unwrap().contains("couldn't validate the identity"), "{s}");
    assert!(!n.p("run/cluster-api/bootstrap-success.complete").exists());
    assert!(!n.p("var/lib/imgbuild/bootstrap.done").exists());
    // PKI is re-placed before every attempt (kubeadm reset empties it)
    assert!(n.p("etc/kubernetes/pki/front-proxy-ca.key").exists());
    // the time budget also stops it: 1 s budget, 2 s backoff
    let n2 = node_root(&ud, "1 1 1 1");
    let o = n2.run(&[
        ("IMGBUILD_RETRY_BUDGET_SECONDS", "1"),
        ("IMGBUILD_BACKOFF_INITIAL", "2"),
        ("IMGBUILD_BACKOFF_MAX", "2"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(n2.status()["attempts"], 1);
    // the control plane joined by config: kubeadm refuses --control-plane next to --config
    let j = yaml(&fs::read_to_string(n.p("etc/imgbuild/kubeadm.yaml")).unwrap());
    assert!(j["controlPlane"].is_mapping());
}

#[test]
fn bootstrap_rejects_code_in_its_data_file() {
    let (_t, ud) = rendered_user_data("demo-worker-2");
    let n = node_root(&ud, "0");
    let env = n.p("etc/imgbuild/bootstrap.env");
    let text = fs::read_to_string(&env).unwrap();
    fs::write(&env, text.replace("IMGBUILD_CLUSTER=demo", "IMGBUILD_CLUSTER=$(touch /tmp/pwned)")).unwrap();
    let o = n.run(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(n.calls().is_empty());
    assert_eq!(n.status()["phase"], "failed");
}

#[test]
fn shellcheck_and_systemd_analyze_verify() {
    let script = root().join(SCRIPT);
    if need("shellcheck", "shellcheck of the bootstrap script") {
        let o = Command::new("shellcheck").args(["-S", "style", "-f", "gcc"]).arg(&script).output().unwrap();
        ok(&o);
    }
    if !need("systemd-analyze", "systemd-analyze verify of the bootstrap unit") {
        return;
    }
    // fake root: the host's unit library plus our files (ExecStart must exist)
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    fs::create_dir_all(r.join("usr/libexec/imgbuild")).unwrap();
    let cp =
        Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(r.join("usr/lib/systemd/")).status();
    assert!(cp.unwrap().success());
    fs::copy(&script, r.join("usr/libexec/imgbuild/bootstrap")).unwrap();
    let unit = "imgbuild-bootstrap.service";
    fs::copy(
        root().join("image-files/common/etc/systemd/system").join(unit),
        r.join("etc/systemd/system").join(unit),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .arg(unit)
        .output()
        .unwrap();
    ok(&o);
    // non-fatal problems exit 0 but print: treat any output as failure
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(all.trim().is_empty(), "{all}");
}

#[test]
fn bootstrap_status_carries_the_image_import_status() {
    let (_t, ud) = rendered_user_data("demo-worker-1");
    let n = node_root(&ud, "0");
    // Without an import (an image built without images:) the field is null.
    ok(&n.run(&[]));
    assert!(n.status()["images"].is_null(), "{}", n.status());
    // With imgbuild-images.service's status (it runs first), bootstrap.json embeds it.
    fs::remove_dir_all(n.p("run")).unwrap();
    fs::create_dir_all(n.p("run/imgbuild")).unwrap();
    let line =
        r#"{"phase": "done", "images": 12, "imported": 12, "seconds": 41, "last_error": "", "updated": "x"}"#;
    fs::write(n.p("run/imgbuild/images.json"), format!("{line}\n")).unwrap();
    ok(&n.run(&[]));
    let s = n.status();
    assert_eq!(
        (s["images"]["phase"].as_str(), s["images"]["imported"].as_u64()),
        (Some("done"), Some(12)),
        "{s}"
    );
    assert_eq!(s["phase"], "done");
}

/// Replace the golden cluster's spec with `spec` (same secrets) and render `node`.
fn render_spec(t: &Path, spec: &str, node: &str) -> (Output, PathBuf) {
    let c = golden_cluster(t);
    fs::write(&c, spec).unwrap();
    let out = t.join("out");
    (render(&c, &out, &["--node", node, "--seed", "none"]), out.join(node))
}

/// A VM with a private NIC (named by MAC, static) and a public one (DHCP); a node on a
/// public /32 whose router is on-link. The network-config goes through what a noble
/// node runs: cloud-init's renderer (netplan output) and `netplan generate`, whose
/// systemd-networkd files must put the address on exactly the named NIC.
#[test]
fn the_static_address_lands_on_one_named_nic_through_cloud_init_and_netplan() {
    if !need("cloud-init", "cloud-init's network renderer") || !need("netplan", "netplan generate") {
        return;
    }
    let spec = "name: demo
endpoint: 10.0.0.10:6443
ha: {mode: external-lb}
networking: {pod_cidr: 10.244.0.0/16, service_cidr: 10.96.0.0/12, dhcp_interfaces: [eth0]}
dns: {nameservers: [10.0.0.2], search: [demo.internal]}
nodes:
  - {name: demo-cp-1, role: control-plane, address: 10.0.0.11/24, gateway: 10.0.0.1, interface: \"52:54:00:12:34:11\"}
  - {name: demo-worker-1, role: worker, address: 203.0.113.7/32, gateway: 172.31.1.1, interface: ens10, dhcp_interfaces: []}
";
    for (node, want_match, want_dhcp) in [
        ("demo-cp-1", "MACAddress=52:54:00:12:34:11", Some("Name=eth0")),
        ("demo-worker-1", "Name=ens10", None),
    ] {
        let t = tempfile::tempdir().unwrap();
        let (o, dir) = render_spec(t.path(), spec, node);
        ok(&o);
        let root = t.path().join("root");
        let o = Command::new("cloud-init")
            .args([
                "devel",
                "net-convert",
                "--kind",
                "yaml",
                "--distro",
                "ubuntu",
                "--output-kind",
                "netplan",
            ])
            .arg("--network-data")
            .arg(dir.join("network-config"))
            .arg("--directory")
            .arg(&root)
            .output()
            .unwrap();
        ok(&o);
        let o = Command::new("netplan").arg("generate").arg("--root-dir").arg(&root).output().unwrap();
        ok(&o);
        let mut networks = BTreeMap::new();
        for e in fs::read_dir(root.join("run/systemd/network")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "network") {
                networks.insert(
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    fs::read_to_string(&p).unwrap(),
                );
            }
        }
        let with_address: Vec<&String> = networks.values().filter(|t| t.contains("\nAddress=")).collect();
        assert_eq!(with_address.len(), 1, "{node}: {networks:#?}");
        let st = with_address[0];
        // netplan matches a MAC as the NIC's permanent address
        let m = st.split("\n\n").next().unwrap();
        assert!(m.starts_with("[Match]\n") && m.lines().any(|l| l.ends_with(want_match)), "{node}: {st}");
        assert!(!networks.values().any(|t| t.contains("Name=e*")), "{networks:#?}");
        assert!(st.contains("DNS=10.0.0.2\n") && st.contains("Domains=demo.internal\n"), "{st}");
        match want_dhcp {
            Some(m) => {
                let d: Vec<&String> = networks.values().filter(|t| t.contains("DHCP=ipv4")).collect();
                assert_eq!(d.len(), 1, "{networks:#?}");
                assert!(d[0].contains(m) && !d[0].contains("Address="), "{}", d[0]);
                assert!(st.contains("Address=10.0.0.11/24\n") && st.contains("Gateway=10.0.0.1\n"), "{st}");
            }
            None => {
                assert_eq!(networks.len(), 1, "{networks:#?}");
                // a /32 reaches its router only with the route declared on-link
                assert!(st.contains("Address=203.0.113.7/32\n"), "{st}");
                assert!(st.contains("Gateway=172.31.1.1\n") && st.contains("GatewayOnLink=true"), "{st}");
            }
        }
    }
}

/// Static addressing without nameservers, or with a NIC pattern, is refused by
/// `cloud-init` and by `lint` (exit 2, the field and its line).
#[test]
fn static_addressing_needs_nameservers_and_one_nic() {
    let t = tempfile::tempdir().unwrap();
    let c = golden_cluster(t.path());
    let base = fs::read_to_string(&c).unwrap();
    let file = c.display().to_string();
    let line_of = |needle: &str| base.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let no_dns = {
        let a = base.find("\ndns:\n").unwrap() + 1;
        let b = a + base[a..].find("\n# Time servers").unwrap() + 1;
        format!("{}{}", &base[..a], &base[b..])
    };
    let addr_line = line_of("address: \"10.0.0.11/24\"") - 3; // the lines removed above
    let glob = base.replace("  interface: \"ens3\"\n  # NICs", "  interface: \"e*\"\n  # NICs");
    let iface_line =
        base.lines().collect::<Vec<_>>().iter().rposition(|l| *l == "  interface: \"ens3\"").unwrap() + 1;
    for (text, line, msg) in [
        (&no_dns, addr_line, "nodes[0].address: a static address needs nameservers (5 node(s) have none)"),
        (&glob, iface_line, "networking.interface: \"e*\" is a pattern that may match several NICs"),
    ] {
        let want = format!("{file}:{line}: {msg}");
        assert_ne!(text, &base);
        fs::write(&c, text).unwrap();
        let o = render(&c, &t.path().join("o"), &["--all", "--seed", "none"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(&want), "want {want:?} in:\n{}", stderr(&o));
        let o = run(&[
            "lint",
            "--cluster",
            c.to_str().unwrap(),
            "--rendered",
            t.path().join("none").to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let f = &r["findings"][0];
        assert_eq!(f["check"], "spec");
        assert_eq!(f["line"].as_u64(), Some(line as u64), "{f}");
        assert!(f["message"].as_str().unwrap().starts_with(msg), "{f}");
    }
}

const SCRUB: &str = "image-files/common/usr/libexec/imgbuild/scrub-secrets";

fn scrub(n: &Node) -> Output {
    let o = Command::new("bash").arg(root().join(SCRUB)).env("IMGBUILD_ROOT", &n.root).output().unwrap();
    ok(&o);
    o
}

/// Every regular file under `dir` (relative path, content), symlinks not followed.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// A node's disk after its first boot, cloud-init 24.x's copies of user-data included:
/// after the join no secret of user-data is left anywhere but /etc/kubernetes.
#[test]
fn scrub_removes_every_copy_of_user_data_secrets_once_joined() {
    let (t, ud) = rendered_user_data("demo-cp-1");
    let secrets = imgbuild::cluster::pki::Secrets::load(&t.path().join("c/secrets")).unwrap();
    // what would give a secret away: every PEM body line of the keys, the token, the key
    let mut needles: Vec<String> = Vec::new();
    for v in secrets.values() {
        if v.contains("PRIVATE KEY") {
            needles.extend(v.lines().filter(|l| !l.starts_with("-----")).skip(1).map(String::from));
        } else {
            needles.push(v.trim().to_string());
        }
    }
    let n = node_root(&ud, "0");
    let inst = n.p("var/lib/cloud/instances/demo-cp-1");
    fs::create_dir_all(inst.join("sem")).unwrap();
    let copies = [
        ("user-data.txt", ud.clone()),
        ("user-data.txt.i", format!("Content-Type: multipart/mixed\n\n{ud}")),
        ("cloud-config.txt", ud.clone()),
        ("obj.pkl", format!("\u{80}\u{4}pickle userdata_raw {ud:?}")),
    ];
    for (f, body) in &copies {
        fs::write(inst.join(f), body).unwrap();
    }
    fs::write(inst.join("vendor-data.txt"), "#cloud-config\n{}\n").unwrap();
    fs::write(inst.join("sem/config_runcmd"), "").unwrap();
    std::os::unix::fs::symlink("instances/demo-cp-1", n.p("var/lib/cloud/instance")).unwrap();
    fs::create_dir_all(n.p("run/cloud-init")).unwrap();
    let combined = n.p("run/cloud-init/combined-cloud-config.json");
    fs::write(&combined, serde_json::to_string(&yaml(&ud)).unwrap()).unwrap();

    // before the node joined: everything stays (the bootstrap still needs it)
    let o = scrub(&n);
    assert!(String::from_utf8_lossy(&o.stdout).contains("has not joined yet"));
    assert!(inst.join("user-data.txt").exists() && n.p("etc/imgbuild/pki/ca.key").exists());

    ok(&n.run(&[]));
    // an add-on's values override (cluster.yaml addons.values.<release>) sits next to them
    fs::write(n.p("etc/imgbuild/addons/ingress-nginx.yaml"), "controller: {replicaCount: 2}\n").unwrap();
    // the add-on installer is still at work: its values stay
    fs::create_dir_all(n.p("var/lib/imgbuild/addons")).unwrap();
    let resume = n.p("etc/systemd/system/multi-user.target.wants/imgbuild-addons.service");
    fs::create_dir_all(resume.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/etc/systemd/system/imgbuild-addons.service", &resume).unwrap();
    let o = scrub(&n);
    let console = String::from_utf8_lossy(&o.stdout);
    assert!(console.contains("removed 14 copies of user-data's secrets"), "{console}");
    assert!(n.p("etc/imgbuild/addons/values.yaml").exists());
    assert!(n.p("etc/imgbuild/addons/ingress-nginx.yaml").exists());
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(n.p("run/imgbuild/scrub.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "done");
    let removed: Vec<&str> =
        status["removed"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    for want in [
        "/etc/imgbuild/pki/ca.key",
        "/etc/imgbuild/pki/etcd/ca.key",
        "/etc/imgbuild/kubeadm.yaml",
        "/var/lib/cloud/instances/demo-cp-1/user-data.txt",
        "/var/lib/cloud/instances/demo-cp-1/user-data.txt.i",
        "/var/lib/cloud/instances/demo-cp-1/cloud-config.txt",
        "/var/lib/cloud/instances/demo-cp-1/obj.pkl",
        "/run/cloud-init/combined-cloud-config.json",
    ] {
        assert!(removed.contains(&want), "{want} not in {removed:?}");
    }
    // no secret anywhere but in the live /etc/kubernetes
    for (path, body) in files_under(&n.root) {
        if path.starts_with("etc/kubernetes/") {
            continue;
        }
        let text = String::from_utf8_lossy(&body);
        for needle in &needles {
            assert!(!text.contains(needle.as_str()), "{path} still holds a secret ({needle:.12}…)");
        }
    }
    assert!(
        n.p("etc/kubernetes/pki/ca.key").exists() && n.p("etc/kubernetes/encryption/config.yaml").exists()
    );
    assert!(inst.join("vendor-data.txt").exists() && inst.join("sem/config_runcmd").exists());

    // the installer is done: the values go too; a second run finds nothing left
    fs::remove_file(&resume).unwrap();
    scrub(&n);
    assert!(!n.p("etc/imgbuild/addons").exists());
    let o = scrub(&n);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no copy of user-data's secrets left"));
}
