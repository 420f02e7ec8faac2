//! Real validators over everything the layer ships, written into a temp root:
//! shellcheck (scripts), `systemd-analyze verify --root` (units, with stub
//! executables; any output is a failure), `nft -c` (the firewall, both roles, as
//! the baked loader loads it with the cluster networks user-data carries), `sshd -T` (effective sshd settings,
//! even against a later file that tries to re-enable passwords), and a sysctl
//! syntax and key check.
use crate::layer_fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imgbuild::layer::{tree, Content, Kind, Layer};
use imgbuild::types::Role;
use layer_fixture::{have, materialize};

/// Compose + seal `role` and write it under `<tmp>/root`.
fn root_for(role: Role, tmp: &Path) -> (Layer, PathBuf) {
    let (plan, l) = layer_fixture::compose(role, &tmp.join("in"));
    let l = imgbuild::layer::seal(l, &plan, Vec::new()).unwrap().layer;
    let root = tmp.join("root");
    materialize(&l, &root);
    (l, root)
}

fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Shipped shell scripts: embedded/generated files with a sh/bash shebang (the
/// recipe's artifacts are upstream binaries and not ours to lint).
fn scripts(l: &Layer) -> Vec<String> {
    l.iter()
        .filter_map(|(p, e)| match &e.kind {
            Kind::File(Content::Bytes(b)) => {
                let first = b.split(|&c| c == b'\n').next().unwrap_or_default();
                let first = String::from_utf8_lossy(first);
                let sh = first.starts_with("#!")
                    && ["/sh", "/bash", "/dash", "env sh", "env bash"].iter().any(|s| first.contains(s));
                sh.then(|| p.clone())
            }
            _ => None,
        })
        .collect()
}

fn shellcheck(files: &[PathBuf]) -> Output {
    Command::new("shellcheck").args(["-S", "warning", "-f", "gcc"]).args(files).output().unwrap()
}

#[test]
fn shellcheck_passes_on_every_shipped_script() {
    if !have("shellcheck") {
        return;
    }
    // The check itself must bite: a known-bad script fails.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.sh");
    std::fs::write(&bad, "#!/bin/sh\ncd $1\nrm -rf $DIR/*\n").unwrap();
    let o = shellcheck(std::slice::from_ref(&bad));
    assert!(!o.status.success() && output_text(&o).contains("SC2164"), "{}", output_text(&o));

    for role in Role::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let (l, root) = root_for(role, tmp.path());
        let files: Vec<PathBuf> = scripts(&l).iter().map(|p| root.join(p.trim_start_matches('/'))).collect();
        eprintln!("{role}: {} shipped scripts", files.len());
        if files.is_empty() {
            continue;
        }
        let o = shellcheck(&files);
        assert!(o.status.success(), "{role}: shellcheck:\n{}", output_text(&o));
    }
}

/// Absolute executables named by `Exec*=` lines (prefixes `-@:+!|` stripped).
fn exec_paths(unit_text: &str) -> Vec<String> {
    unit_text
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.trim().starts_with("Exec"))
        .filter_map(|(_, v)| {
            let v = v.trim().trim_start_matches(['-', '@', ':', '+', '!', '|']);
            v.split_whitespace().next().filter(|p| p.starts_with('/')).map(str::to_string)
        })
        .collect()
}

#[test]
fn systemd_analyze_verify_passes_on_every_unit() {
    if !have("systemd-analyze") {
        return;
    }
    for role in Role::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let (l, root) = root_for(role, tmp.path());
        // The host's unit library, so targets like multi-user.target resolve.
        std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        let st = Command::new("cp")
            .args(["-a", "/usr/lib/systemd/system"])
            .arg(root.join("usr/lib/systemd"))
            .status()
            .unwrap();
        assert!(st.success());

        let units: Vec<String> = l
            .iter()
            .filter(|(p, e)| matches!(e.kind, Kind::File(_)) && tree::unit_name(p).is_some())
            .map(|(p, _)| p.clone())
            .collect();
        assert!(units.len() >= 4, "{units:?}");
        // Stub every executable a unit or its drop-ins run that the root lacks
        // (those from the base image: nft, swapoff, modprobe).
        let mut stubs = 0;
        for u in &units {
            let mut text = layer_fixture::text(&l, u);
            for (p, _) in l.iter().filter(|(p, _)| p.starts_with(&format!("{u}.d/"))) {
                text.push_str(&layer_fixture::text(&l, p));
            }
            for exe in exec_paths(&text) {
                let host = root.join(exe.trim_start_matches('/'));
                if !host.exists() {
                    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
                    std::fs::write(&host, "#!/bin/sh\n").unwrap();
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).unwrap();
                    stubs += 1;
                }
            }
        }
        assert!(stubs >= 3, "expected stubs for nft, swapoff, modprobe");
        let names: Vec<&str> = units.iter().filter_map(|u| tree::unit_name(u)).collect();
        let o = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.display()))
            .args(&names)
            .output()
            .unwrap();
        // Non-fatal problems (unknown keys) print but exit 0: any output fails.
        let out = output_text(&o);
        assert!(
            o.status.success() && out.trim().is_empty(),
            "{role}: systemd-analyze verify {names:?}:\n{out}"
        );
    }
}

/// The cluster-networks data user-data writes for `spec` (rendered by the library).
fn cluster_networks(spec: &str) -> String {
    let plan = imgbuild::cluster::plan::parse(spec, "cluster.yaml").unwrap();
    let secrets =
        imgbuild::cluster::pki::Secrets::generate(&mut imgbuild::cluster::pki::Rng::seeded("fw")).unwrap();
    let r = imgbuild::cloudinit::render::Renderer::new(&plan, &secrets).unwrap();
    let out = r.render_node(&plan.nodes[0]).unwrap();
    let path = imgbuild::cloudinit::render::paths::CLUSTER_NETWORKS;
    out.files.into_iter().find(|f| f.path == path).map(|f| f.content).unwrap()
}

/// Run the baked firewall loader in `root` with an `nft` that checks (`nft -c`) a copy
/// of what it is given whose includes point into `root`; returns the loader's output
/// and the configurations nft was asked to load, in order.
fn run_loader(root: &Path) -> (Output, Vec<String>) {
    let wrapper = root.join("nft-check");
    let unshare = if is_root() { "" } else { "unshare -rn " };
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
# test-only nft: check (never load) a copy whose includes point into the test root
n=$(($(cat "{r}/nft-calls" 2>/dev/null || echo 0) + 1))
echo "$n" >"{r}/nft-calls"
sed 's|include "/|include "{r}/|' "$2" >"{r}/nft-check.$n.conf"
{{ for f in "{r}"/run/imgbuild/firewall/*.nft; do [ -e "$f" ] && cat "$f"; done; }} >"{r}/nft-check.$n.cluster"
out=$({unshare}nft -c -f "{r}/nft-check.$n.conf" 2>&1) && exit 0
case $out in *"Operation not permitted"*) exec unshare -rn nft -c -f "{r}/nft-check.$n.conf" ;; esac
echo "$out" >&2
exit 1
"#,
            r = root.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(root.join("nft-calls"));
    let o = Command::new("bash")
        .arg(root.join("usr/libexec/imgbuild/firewall"))
        .env("IMGBUILD_ROOT", root)
        .env("IMGBUILD_NFT", &wrapper)
        .output()
        .unwrap();
    let calls: usize =
        std::fs::read_to_string(root.join("nft-calls")).map(|s| s.trim().parse().unwrap()).unwrap_or(0);
    let loaded = (1..=calls)
        .map(|n| std::fs::read_to_string(root.join(format!("nft-check.{n}.cluster"))).unwrap())
        .collect();
    (o, loaded)
}

#[test]
fn nft_loads_both_firewalls_with_the_cluster_networks_from_user_data() {
    if !have("nft") {
        return;
    }
    let private = "name: fw
endpoint: 10.20.0.10:6443
ha: {mode: vip, interface: ens3}
networking: {pod_cidr: 10.244.0.0/16, service_cidr: 10.96.0.0/12, node_cidr: 10.20.0.0/24, interface: ens3}
dns: {nameservers: [10.20.0.1]}
nodes:
  - {name: cp-1, role: control-plane, address: 10.20.0.11/24}
  - {name: w-1, role: worker}
";
    // nodes on public addresses only, an IPv6 pod network: the nodes' own addresses
    let public = "name: fw
endpoint: 203.0.113.11:6443
networking: {pod_cidr: fd00:10::/56, service_cidr: fd00:20::/112}
dns: {nameservers: [9.9.9.9]}
nodes:
  - {name: cp-1, role: control-plane, address: 203.0.113.11/32, gateway: 172.31.1.1, interface: eth0}
  - {name: w-1, role: worker, address: 198.51.100.7/24, gateway: 198.51.100.1, interface: eth0}
";
    for role in Role::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let (_, root) = root_for(role, tmp.path());
        let data = root.join("etc/imgbuild/cluster-networks");
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();

        // no data (an image booted without imgbuild's user-data): the defaults
        let (o, loaded) = run_loader(&root);
        assert!(o.status.success(), "{role}: {}", output_text(&o));
        assert_eq!(loaded, [""], "{role}");
        assert!(output_text(&o).contains("the image's default private ranges"));

        for (spec, want4, want6) in [
            (private, "{ 10.20.0.0/24, 10.244.0.0/16, 10.96.0.0/12, 10.20.0.10/32 }", None),
            (public, "{ 203.0.113.11/32, 198.51.100.7/32 }", Some("{ fd00:10::/56, fd00:20::/112 }")),
        ] {
            std::fs::write(&data, cluster_networks(spec)).unwrap();
            let (o, loaded) = run_loader(&root);
            assert!(o.status.success(), "{role}: {}", output_text(&o));
            assert_eq!(loaded.len(), 1, "{role}: {loaded:?}");
            assert!(
                loaded[0].contains(&format!("add element inet imgbuild cluster_v4 {want4}\n")),
                "{}",
                loaded[0]
            );
            match want6 {
                Some(w) => {
                    assert!(loaded[0].contains(&format!("add element inet imgbuild cluster_v6 {w}\n")))
                }
                None => assert!(
                    loaded[0].contains("flush set inet imgbuild cluster_v6\n")
                        && !loaded[0].contains("cluster_v6 {")
                ),
            }
        }

        // an operator's extra rule in /etc/nftables.d still loads with it
        std::fs::write(
            root.join("etc/nftables.d/20-extra.nft"),
            "add rule inet imgbuild input tcp dport 9100 ip saddr 10.20.0.5 accept\n",
        )
        .unwrap();
        let (o, _) = run_loader(&root);
        assert!(o.status.success(), "{role}: {}", output_text(&o));

        // data nft refuses: the defaults are loaded instead, and the unit fails
        std::fs::write(&data, "node 10.20.0.0/33\n").unwrap();
        let (o, loaded) = run_loader(&root);
        assert!(!o.status.success(), "{role}: a /33 was accepted");
        assert_eq!(loaded.len(), 2, "{loaded:?}");
        assert!(loaded[0].contains("10.20.0.0/33") && loaded[1].is_empty(), "{loaded:?}");
        assert!(output_text(&o).contains("loading the image's defaults"), "{}", output_text(&o));
        // data that is no list of networks never reaches nft
        for bad in ["node 10.0.0.0/8 } ; flush ruleset\n", "node 10.0.0.0\n", "10.0.0.0/8\n", "node x/8\n"] {
            std::fs::write(&data, bad).unwrap();
            let (o, loaded) = run_loader(&root);
            assert!(!o.status.success(), "{bad:?} accepted");
            assert_eq!(loaded, [""], "{bad:?}: {loaded:?}");
            assert!(!root.join("run/imgbuild/firewall/10-cluster-networks.nft").exists());
        }
    }
}

/// Run `sshd -T` on a config that includes `dropins` (first value wins), without
/// touching the host: a private mount namespace supplies /run/sshd.
fn sshd_effective(dir: &Path, dropins: &Path) -> String {
    let key = dir.join("hostkey");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let main = dir.join("sshd_config");
    // Like Ubuntu's sshd_config: the drop-ins are included first.
    std::fs::write(
        &main,
        format!(
            "Include {}/*.conf\nHostKey {}\nKbdInteractiveAuthentication yes\n",
            dropins.display(),
            key.display()
        ),
    )
    .unwrap();
    let script = format!(
        "mount -t tmpfs none /run && mkdir /run/sshd && exec /usr/sbin/sshd -T -f {}",
        main.display()
    );
    let mut o = Command::new("unshare").args(["-rm", "sh", "-c", &script]).output().unwrap();
    if !o.status.success() && is_root() && !output_text(&o).contains("sshd") {
        // No namespaces here (e.g. a container): root may create the directory
        // the openssh-server package creates anyway.
        std::fs::create_dir_all("/run/sshd").unwrap();
        o = Command::new("/usr/sbin/sshd").arg("-T").arg("-f").arg(&main).output().unwrap();
    }
    assert!(o.status.success(), "sshd -T:\n{}", output_text(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn sshd_hardening_wins_over_cloud_init() {
    if !have("sshd") || !have("ssh-keygen") || !have("unshare") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, root) = root_for(Role::Worker, tmp.path());
    let d = root.join("etc/ssh/sshd_config.d");
    // What cloud-init writes for `ssh_pwauth: true`.
    std::fs::write(d.join("50-cloud-init.conf"), "PasswordAuthentication yes\nPermitRootLogin yes\n")
        .unwrap();
    let eff = sshd_effective(tmp.path(), &d);
    for line in [
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin no",
        "maxauthtries 3",
        "x11forwarding no",
        "allowagentforwarding no",
        "allowtcpforwarding no",
        "permitemptypasswords no",
    ] {
        assert!(eff.lines().any(|l| l == line), "sshd -T lacks {line:?}:\n{eff}");
    }
}

#[test]
fn sysctl_files_are_well_formed_and_name_real_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (l, _) = root_for(Role::ControlPlane, tmp.path());
    let files: Vec<&String> = l.iter().map(|(p, _)| p).filter(|p| p.starts_with("/etc/sysctl.d/")).collect();
    assert!(files.len() >= 2 && files.iter().all(|p| p.ends_with(".conf")), "{files:?}");
    let mut seen = std::collections::BTreeMap::new();
    let proc_sys = Path::new("/proc/sys/kernel").exists();
    for f in files {
        for (n, line) in layer_fixture::text(&l, f).lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("{f}:{}: not `key = value`", n + 1));
            let (k, v) = (k.trim().trim_start_matches('-'), v.trim());
            assert!(
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b)),
                "{f}:{}: bad key {k:?}",
                n + 1
            );
            assert!(!v.is_empty() && !v.contains(char::is_whitespace), "{f}:{}: bad value {v:?}", n + 1);
            assert!(seen.insert(k.to_string(), f.clone()).is_none(), "{k} set twice");
            // The key must exist in this kernel (bridge keys need br_netfilter loaded).
            // A glob component (`conf.en*.rp_filter`) is checked through the `all` entry.
            let concrete: Vec<&str> = k.split('.').map(|c| if c.contains('*') { "all" } else { c }).collect();
            let p = Path::new("/proc/sys").join(concrete.join("/"));
            let optional = k.starts_with("net.bridge.")
                || (k.starts_with("net.ipv6.") && !Path::new("/proc/sys/net/ipv6").exists());
            if proc_sys && !optional {
                assert!(p.exists(), "{f}:{}: no such sysctl {k} ({})", n + 1, p.display());
            }
        }
    }
    assert!(seen.contains_key("net.ipv4.ip_forward") && seen.contains_key("kernel.keys.root_maxbytes"));
}
