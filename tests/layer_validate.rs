//! Real validators over everything the layer ships, written into a temp root:
//! shellcheck (scripts), `systemd-analyze verify --root` (units, with stub
//! executables; any output is a failure), `nft -c` (the firewall, both roles, with
//! the documented first-boot narrowing file), `sshd -T` (effective sshd settings,
//! even against a later file that tries to re-enable passwords), and a sysctl
//! syntax and key check.
mod common;
mod layer_fixture;

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

fn nft_check(file: &Path) -> Output {
    // `nft -c` talks to the kernel in check mode: root does it directly, others in
    // a fresh user+network namespace.
    let mut c = if is_root() {
        Command::new("nft")
    } else {
        let mut c = Command::new("unshare");
        c.args(["-rn", "nft"]);
        c
    };
    let o = c.arg("-c").arg("-f").arg(file).output().unwrap();
    if is_root() && output_text(&o).contains("Operation not permitted") {
        // Root without CAP_NET_ADMIN (a container): a user namespace brings its own.
        return Command::new("unshare").args(["-rn", "nft", "-c", "-f"]).arg(file).output().unwrap();
    }
    o
}

#[test]
fn nft_accepts_both_firewalls_and_the_documented_narrowing() {
    if !have("nft") {
        return;
    }
    for role in Role::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let (_, root) = root_for(role, tmp.path());
        let conf = std::fs::read_to_string(root.join("etc/nftables.conf")).unwrap();
        let o = nft_check(&root.join("etc/nftables.conf"));
        assert!(o.status.success(), "{role}: nft -c:\n{}", output_text(&o));

        // The narrowing example from the file's own header, as first boot would write it.
        let example: String = conf
            .lines()
            .skip_while(|l| !l.contains("10-cluster.nft:"))
            .skip(1)
            .take_while(|l| l.starts_with("#   "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        assert!(example.contains("flush set inet imgbuild cluster_v4"), "{example}");
        let inc = root.join("etc/nftables.d");
        std::fs::write(inc.join("10-cluster.nft"), &example).unwrap();
        // What the cluster module renders for first boot.
        let nets = ["10.20.0.0/16", "10.244.0.0/16", "fd00:10::/64"].map(String::from);
        let rendered = imgbuild::layer::firewall::cluster_networks_nft(&nets).unwrap();
        std::fs::write(inc.join("11-cluster-rendered.nft"), &rendered).unwrap();
        std::fs::write(
            inc.join("20-extra.nft"),
            "add rule inet imgbuild input tcp dport 9100 ip saddr 10.20.0.5 accept\n",
        )
        .unwrap();
        let local = conf.replace("include \"/etc/nftables.d/", &format!("include \"{}/", inc.display()));
        assert_ne!(local, conf);
        std::fs::write(root.join("etc/nftables.local.conf"), &local).unwrap();
        let o = nft_check(&root.join("etc/nftables.local.conf"));
        assert!(o.status.success(), "{role}: nft -c with includes:\n{}", output_text(&o));

        // The check bites: a typo in a set is refused.
        std::fs::write(inc.join("30-bad.nft"), "add element inet imgbuild cluster_v4 { 10.0.0.0/33 }\n")
            .unwrap();
        let o = nft_check(&root.join("etc/nftables.local.conf"));
        assert!(!o.status.success(), "nft accepted a /33");
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
