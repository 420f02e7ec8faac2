//! Layer composition for both roles from stand-in blobs shaped like the real
//! release archives: every path, mode, owner, content and enablement symlink.
use crate::layer_fixture;

use imgbuild::layer::{Content, Kind, Layer};
use imgbuild::manifest::{FileKind, Manifest};
use imgbuild::types::Role;
use layer_fixture::{bytes, compose, stub, text};

fn mode_owner(layer: &Layer, path: &str) -> (u32, u32, u32) {
    let e = layer.get(path).unwrap_or_else(|| panic!("{path} missing from layer"));
    (e.mode, e.uid, e.gid)
}

fn assert_exec(layer: &Layer, path: &str, content_of: &str) {
    assert_eq!(mode_owner(layer, path), (0o755, 0, 0), "{path}");
    assert_eq!(bytes(layer, path), stub(content_of), "{path}");
}

fn symlink_target(layer: &Layer, path: &str) -> String {
    match &layer.get(path).unwrap_or_else(|| panic!("{path} missing")).kind {
        Kind::Symlink(t) => t.clone(),
        other => panic!("{path} is not a symlink: {other:?}"),
    }
}

#[test]
fn both_roles_have_the_node_stack() {
    for role in Role::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let (_, l) = compose(role, tmp.path());
        for b in ["kubeadm", "kubelet", "kubectl"] {
            assert_exec(&l, &format!("/usr/local/bin/{b}"), b);
        }
        assert_exec(&l, "/usr/local/sbin/runc", "runc");
        for b in ["containerd", "containerd-shim-runc-v2", "ctr", "containerd-stress"] {
            assert_exec(&l, &format!("/usr/local/bin/{b}"), &format!("bin/{b}"));
        }
        for p in ["bridge", "host-local", "loopback", "portmap", "bandwidth"] {
            assert_exec(&l, &format!("/opt/cni/bin/{p}"), &format!("./{p}"));
        }
        assert_exec(&l, "/usr/local/bin/crictl", "crictl");
        // Directories of the tarballs are not files; nothing of them lands anywhere.
        assert!(l.get("/usr/local/bin/bin").is_none());

        // containerd config: systemd cgroups, the pause image kubeadm 1.30 expects, CNI paths.
        let cfg: toml::Value = toml::from_str(&text(&l, "/etc/containerd/config.toml")).unwrap();
        assert_eq!(cfg["version"].as_integer(), Some(2));
        let cri = &cfg["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("registry.k8s.io/pause:3.9"));
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(runc["options"]["BinaryName"].as_str(), Some("/usr/local/sbin/runc"));
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/opt/cni/bin"));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/etc/cni/net.d"));

        let crictl: serde_yaml::Value = serde_yaml::from_str(&text(&l, "/etc/crictl.yaml")).unwrap();
        for k in ["runtime-endpoint", "image-endpoint"] {
            assert_eq!(crictl[k].as_str(), Some("unix:///run/containerd/containerd.sock"));
        }

        // Units point at where the binaries are; kubeadm's drop-in resets ExecStart.
        let cd = text(&l, "/etc/systemd/system/containerd.service");
        assert!(cd.contains("\nExecStart=/usr/local/bin/containerd\n") && cd.contains("Delegate=yes"));
        let kl = text(&l, "/etc/systemd/system/kubelet.service");
        assert!(kl.contains("\nExecStart=/usr/local/bin/kubelet\n"));
        let dropin = text(&l, "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf");
        assert!(dropin.contains("\nExecStart=\nExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS"));
        assert!(dropin.contains("EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env"));
        assert_eq!(mode_owner(&l, "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"), (0o644, 0, 0));

        // Enablement, exactly as `systemctl enable` links it.
        let w = "/etc/systemd/system/multi-user.target.wants";
        for u in ["containerd.service", "kubelet.service", "imgbuild-swapoff.service"] {
            assert_eq!(symlink_target(&l, &format!("{w}/{u}")), format!("/etc/systemd/system/{u}"));
        }
        assert_eq!(
            symlink_target(&l, "/etc/systemd/system/sysinit.target.wants/imgbuild-firewall.service"),
            "/etc/systemd/system/imgbuild-firewall.service"
        );
        // A drop-in is never "enabled".
        assert!(l.iter().all(|(p, _)| !p.ends_with(".wants/10-kubeadm.conf")));

        // Every symlink resolves inside the layer (or is a mask).
        for (p, e) in l.iter() {
            if let Kind::Symlink(t) = &e.kind {
                assert!(
                    t == "/dev/null" || matches!(l.get(t).map(|e| &e.kind), Some(Kind::File(_))),
                    "{p} -> {t}"
                );
            }
        }

        // Kernel modules and sysctls.
        let m = text(&l, "/etc/modules-load.d/k8s.conf");
        assert!(m.lines().any(|x| x == "overlay") && m.lines().any(|x| x == "br_netfilter"));
        let k = sysctls(&text(&l, "/etc/sysctl.d/99-zz-imgbuild-kubernetes.conf"));
        for (key, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.bridge.bridge-nf-call-iptables", "1"),
            ("net.bridge.bridge-nf-call-ip6tables", "1"),
            ("vm.overcommit_memory", "1"),
            ("vm.panic_on_oom", "0"),
            ("kernel.panic", "10"),
            ("kernel.panic_on_oops", "1"),
            ("kernel.keys.root_maxkeys", "1000000"),
            ("kernel.keys.root_maxbytes", "25000000"),
        ] {
            assert_eq!(k.get(key).map(String::as_str), Some(v), "{key}");
        }
        let h = sysctls(&text(&l, "/etc/sysctl.d/99-zz-imgbuild-hardening.conf"));
        for (key, v) in [
            ("kernel.kptr_restrict", "1"),
            ("kernel.dmesg_restrict", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "2"),
            ("net.ipv4.conf.en*.rp_filter", "2"),
            ("net.ipv4.conf.all.accept_redirects", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.all.accept_source_route", "0"),
            ("net.ipv4.tcp_syncookies", "1"),
            ("fs.protected_symlinks", "1"),
            ("fs.protected_regular", "2"),
        ] {
            assert_eq!(h.get(key).map(String::as_str), Some(v), "{key}");
        }
        // Hardening must never turn forwarding back off (pods need it).
        assert!(!h.contains_key("net.ipv4.ip_forward"));

        // sshd: first value wins, so the file must sort before cloud-init's 50-cloud-init.conf.
        let ssh = text(&l, "/etc/ssh/sshd_config.d/10-imgbuild-hardening.conf");
        for line in [
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "MaxAuthTries 3",
            "X11Forwarding no",
            "AllowAgentForwarding no",
        ] {
            assert!(ssh.lines().any(|x| x == line), "sshd drop-in lacks {line:?}");
        }
        assert!("10-imgbuild-hardening.conf" < "50-cloud-init.conf");

        let j = text(&l, "/etc/systemd/journald.conf.d/10-imgbuild.conf");
        assert!(j.contains("[Journal]") && j.contains("SystemMaxUse=512M") && j.contains("RuntimeMaxUse="));

        // Immutable node: periodic apt off and masked; swap masked and switched off.
        for u in [
            "apt-daily.timer",
            "apt-daily-upgrade.timer",
            "apt-daily.service",
            "apt-daily-upgrade.service",
            "unattended-upgrades.service",
            "swap.target",
        ] {
            assert_eq!(symlink_target(&l, &format!("/etc/systemd/system/{u}")), "/dev/null", "{u}");
        }
        let apt = text(&l, "/etc/apt/apt.conf.d/99-imgbuild-no-periodic");
        assert!(apt.contains("APT::Periodic::Unattended-Upgrade \"0\";"));
        let swapoff = text(&l, "/etc/systemd/system/imgbuild-swapoff.service");
        assert!(
            swapoff.contains("ExecStart=/usr/sbin/swapoff --all")
                && swapoff.contains("Before=kubelet.service")
        );

        // The firewall loader never flushes other tables; it runs early and again once
        // cloud-init wrote the cluster's networks, before the node joins.
        let fw = text(&l, "/etc/systemd/system/imgbuild-firewall.service");
        assert!(fw.contains("ExecStart=/usr/libexec/imgbuild/firewall"));
        assert!(fw.lines().filter(|x| x.starts_with("Exec")).all(|x| !x.contains("flush ruleset")));
        let loader = text(&l, "/usr/libexec/imgbuild/firewall");
        assert!(loader.contains("\"$NFT\" -f \"$CONF\"") && !loader.contains("flush ruleset"));
        assert_eq!(mode_owner(&l, "/usr/libexec/imgbuild/firewall"), (0o755, 0, 0));
        let again = text(&l, "/etc/systemd/system/imgbuild-firewall-cluster.service");
        assert!(again.contains("ConditionPathExists=/etc/imgbuild/cluster-networks"));
        assert!(again.contains("Before=imgbuild-bootstrap.service kubelet.service"));
        assert_eq!(
            symlink_target(
                &l,
                "/etc/systemd/system/multi-user.target.wants/imgbuild-firewall-cluster.service"
            ),
            "/etc/systemd/system/imgbuild-firewall-cluster.service"
        );
        assert_eq!(mode_owner(&l, "/etc/nftables.d"), (0o700, 0, 0));

        // Every parent directory exists as a root-owned 0755 dir (unless set otherwise).
        assert_eq!(mode_owner(&l, "/opt/cni/bin"), (0o755, 0, 0));
        assert!(matches!(l.get("/opt/cni").unwrap().kind, Kind::Dir));
    }
}

fn sysctls(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not key = value: {l:?}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// systemd-sysctl applies /etc/sysctl.d and /usr/lib/sysctl.d files in one order by file
/// name: ours must come after the distribution's (procps' 99-protect-links.conf reset
/// fs.protected_fifos to 1 in the boot test) and before a CNI's 99-zzz-* override.
#[test]
fn sysctl_files_sort_after_the_distribution_and_before_cni_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, l) = compose(Role::Worker, tmp.path());
    let ours: Vec<&String> = l
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with("/etc/sysctl.d/") && p.ends_with(".conf"))
        .collect();
    assert!(!ours.is_empty());
    for p in ours {
        let name = p.rsplit('/').next().unwrap();
        for distro in ["50-default.conf", "99-protect-links.conf", "99-sysctl.conf", "99-cloudimg-ipv6.conf"]
        {
            assert!(name > distro, "{name} must sort after {distro}");
        }
        assert!(name < "99-zzz-override_cilium.conf", "{name} must sort before Cilium's override");
    }
}

#[test]
fn roles_differ_where_they_should() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, cp) = compose(Role::ControlPlane, &tmp.path().join("cp"));
    let (_, w) = compose(Role::Worker, &tmp.path().join("w"));

    assert_exec(&cp, "/usr/local/bin/etcdctl", "etcd-v3.5.12-linux-amd64/etcdctl");
    assert_exec(&cp, "/usr/local/bin/etcdutl", "etcd-v3.5.12-linux-amd64/etcdutl");
    assert_exec(&cp, "/usr/local/bin/helm", "linux-amd64/helm");
    // Only the named members: not the etcd server, not helm's LICENSE.
    assert!(cp.get("/usr/local/bin/etcd").is_none() && cp.get("/usr/local/bin/LICENSE").is_none());
    for b in ["etcdctl", "etcdutl", "helm"] {
        assert!(w.get(&format!("/usr/local/bin/{b}")).is_none(), "worker has {b}");
    }

    let cpf = text(&cp, "/etc/nftables.conf");
    let wf = text(&w, "/etc/nftables.conf");
    assert!(cpf.contains("elements = { 22, 6443 }"), "{cpf}");
    assert!(cpf.contains("2379-2380") && cpf.contains("10257") && cpf.contains("10259"));
    assert!(!cpf.contains("30000-32767"));
    assert!(wf.contains("elements = { 22, 30000-32767 }"), "{wf}");
    assert!(wf.contains("10256") && !wf.contains("6443") && !wf.contains("2379"));
    for f in [&cpf, &wf] {
        assert!(f.contains("ip saddr @cluster_v4 tcp dport @cluster_tcp accept"));
        assert!(f.contains("10250"));
    }
}

fn sealed(role: Role, tmp: &std::path::Path) -> (Layer, Manifest) {
    let (plan, l) = compose(role, tmp);
    let s = imgbuild::layer::seal(l, &plan, Vec::new()).unwrap();
    (s.layer, s.manifest)
}

#[test]
fn seal_writes_release_and_a_complete_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let (l, m) = sealed(Role::ControlPlane, tmp.path());
    let plan = layer_fixture::plan(Role::ControlPlane);

    let rel = text(&l, "/etc/imgbuild/release");
    let kv: std::collections::BTreeMap<_, _> = rel
        .lines()
        .filter(|x| !x.starts_with('#'))
        .map(|x| {
            let (k, v) = x.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    assert_eq!(kv["NAME"], "ubuntu-24.04-k8s-v1.30.3");
    assert_eq!(kv["VERSION"], env!("CARGO_PKG_VERSION"));
    assert_eq!(kv["KUBERNETES_VERSION"], "v1.30.3");
    assert_eq!(kv["ROLE"], "control-plane");
    assert_eq!(kv["ARCH"], "amd64");
    assert_eq!(kv["INPUTS_DIGEST"], m.inputs_digest);
    assert_eq!(m.inputs_digest.len(), 64);
    // The release file is shell-sourceable.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{rel}\nprintf %s \"$ROLE $INPUTS_DIGEST\""))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("control-plane {}", m.inputs_digest));

    // The in-image manifest is the returned one, byte for byte.
    let in_image: Manifest = serde_json::from_slice(&bytes(&l, "/etc/imgbuild/manifest.json")).unwrap();
    assert_eq!(in_image, m);
    assert_eq!(m.imgbuild_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(m.recipe_digest, plan.recipe_digest.to_string());
    assert_eq!(m.base.sha256, plan.base.sha256.to_string());
    assert_eq!(m.base.urls, plan.base.urls);
    assert_eq!(m.artifacts.len(), plan.artifacts.len());
    for (a, p) in m.artifacts.iter().zip(&plan.artifacts) {
        assert_eq!((&a.name, &a.sha256, &a.urls), (&p.name, &p.sha256.to_string(), &p.urls));
    }

    // Every entry but the manifest itself, in path order, with correct digests.
    let listed: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    let expected: Vec<&str> =
        l.iter().map(|(p, _)| p.as_str()).filter(|p| *p != "/etc/imgbuild/manifest.json").collect();
    assert_eq!(listed, expected);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    for f in &m.files {
        let e = l.get(&f.path).unwrap();
        assert_eq!(f.mode, format!("{:04o}", e.mode));
        assert_eq!((f.uid, f.gid), (0, 0));
        match (&e.kind, &f.kind) {
            (Kind::File(_), FileKind::File) => {
                let b = bytes(&l, &f.path);
                assert_eq!(f.size, Some(b.len() as u64));
                // A verified blob's digest is recorded as pinned, without reading the
                // file (the disk checks the bytes as it lays them in; the stand-in blobs
                // here are not the pinned ones); everything else is hashed.
                let want = match l.known_digest(&f.path) {
                    Some(k) => k.clone(),
                    None => imgbuild::types::Sha256::of(&b),
                };
                assert_eq!(f.sha256.as_deref(), Some(want.as_str()), "{}", f.path);
            }
            (Kind::Dir, FileKind::Dir) => assert!(f.sha256.is_none() && f.target.is_none()),
            (Kind::Symlink(t), FileKind::Symlink) => assert_eq!(f.target.as_ref(), Some(t)),
            other => panic!("{}: kind mismatch {other:?}", f.path),
        }
    }
    let kubelet = m.files.iter().find(|f| f.path == "/usr/local/bin/kubelet").unwrap();
    assert_eq!(kubelet.mode, "0755");
    let pinned = plan.artifacts.iter().find(|a| a.name == "kubelet").unwrap().sha256.to_string();
    assert_eq!(kubelet.sha256.as_deref(), Some(pinned.as_str()));
    // Archive members are hashed as they are extracted.
    let ctr = m.files.iter().find(|f| f.path == "/usr/local/bin/ctr").unwrap();
    assert_eq!(ctr.sha256.as_deref(), Some(imgbuild::types::Sha256::of(&bytes(&l, &ctr.path)).as_str()));
    assert!(m.files.iter().any(|f| f.path == "/etc/imgbuild/release"));
}

#[test]
fn composing_twice_gives_the_same_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    for role in Role::ALL {
        let (l1, m1) = sealed(role, &tmp.path().join(format!("{role}-1")));
        let (l2, m2) = sealed(role, &tmp.path().join(format!("{role}-2")));
        assert_eq!(m1, m2);
        assert_eq!(bytes(&l1, "/etc/imgbuild/manifest.json"), bytes(&l2, "/etc/imgbuild/manifest.json"));
        assert_eq!(l1.mtime, 1724198400);
    }
    let (_, cp) = sealed(Role::ControlPlane, &tmp.path().join("cp"));
    let (_, w) = sealed(Role::Worker, &tmp.path().join("w"));
    assert_ne!(cp.inputs_digest, w.inputs_digest);
}

#[test]
fn inputs_digest_follows_every_input() {
    let base = layer_fixture::plan(Role::Worker);
    let d = imgbuild::layer::inputs_digest(&base);
    let mut p = base.clone();
    p.artifacts[0].sha256 = imgbuild::types::Sha256::of(b"other");
    assert_ne!(imgbuild::layer::inputs_digest(&p), d);
    let mut p = base.clone();
    p.recipe_digest = imgbuild::types::Sha256::of(b"other recipe");
    assert_ne!(imgbuild::layer::inputs_digest(&p), d);
    let mut p = base.clone();
    p.arch = imgbuild::types::Arch::Arm64;
    assert_ne!(imgbuild::layer::inputs_digest(&p), d);
}

// ---- errors ----

fn compose_err(
    role: Role,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, std::path::PathBuf>, &std::path::Path),
) -> anyhow::Error {
    let tmp = tempfile::tempdir().unwrap();
    let plan = layer_fixture::plan(role);
    let mut dl = layer_fixture::downloads(&plan, tmp.path());
    edit(&mut dl, tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    layer_fixture::compose_layer(&plan, &dl, &work).unwrap_err()
}

fn put(
    dl: &mut std::collections::BTreeMap<String, std::path::PathBuf>,
    dir: &std::path::Path,
    name: &str,
    bytes: &[u8],
) {
    let p = dir.join(format!("bad-{name}"));
    std::fs::write(&p, bytes).unwrap();
    dl.insert(name.to_string(), p);
}

#[test]
fn missing_member_is_a_clear_input_error() {
    let e = compose_err(Role::ControlPlane, |dl, dir| {
        put(dl, dir, "helm", &layer_fixture::targz(&["linux-arm64/", "linux-arm64/helm"]))
    });
    let msg = format!("{e:#}");
    assert!(
        msg.contains("helm") && msg.contains("linux-amd64/helm") && msg.contains("linux-arm64/helm"),
        "{msg}"
    );
    assert_eq!(imgbuild::cmd::code_for(&e), imgbuild::exit::Code::Input);

    // A glob that matches nothing is as wrong as a missing member.
    let e = compose_err(Role::Worker, |dl, dir| {
        put(dl, dir, "containerd", &layer_fixture::targz(&["usr/bin/x"]))
    });
    assert!(format!("{e:#}").contains("bin/*"), "{e:#}");
}

#[test]
fn non_archives_and_corrupt_archives_are_refused() {
    let e = compose_err(Role::Worker, |dl, dir| {
        put(dl, dir, "crictl", b"#!/bin/sh\nnot a tarball at all, just text\n")
    });
    assert!(format!("{e:#}").contains("crictl"), "{e:#}");
    assert_eq!(imgbuild::cmd::code_for(&e), imgbuild::exit::Code::Input);

    let mut gz = layer_fixture::targz(layer_fixture::CRICTL);
    gz.truncate(gz.len() / 2);
    let e = compose_err(Role::Worker, |dl, dir| put(dl, dir, "crictl", &gz));
    assert!(format!("{e:#}").contains("crictl"), "{e:#}");
}

/// A tar whose first member's raw name is `name` (bypassing the tar crate's own checks).
fn evil_tar(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_old();
    let raw = &mut h.as_old_mut().name;
    raw[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o755);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    let data = b"#!/bin/sh\n";
    h.set_size(if kind == tar::EntryType::Regular { data.len() as u64 } else { 0 });
    h.set_cksum();
    if kind == tar::EntryType::Regular {
        b.append(&h, &data[..]).unwrap();
    } else {
        b.append(&h, std::io::empty()).unwrap();
    }
    let mut good = tar::Header::new_gnu();
    good.set_size(data.len() as u64);
    good.set_mode(0o755);
    b.append_data(&mut good, "crictl", &data[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn unsafe_archive_paths_are_refused() {
    for name in ["../../etc/cron.d/x", "/etc/passwd", "a/../../b"] {
        let tgz = evil_tar(name, tar::EntryType::Regular, None);
        let e = compose_err(Role::Worker, |dl, dir| put(dl, dir, "crictl", &tgz));
        let msg = format!("{e:#}");
        assert!(msg.contains("..") || msg.contains("absolute"), "{name}: {msg}");
    }
    // A symlink named like the wanted member is not followed, it is refused.
    let tgz = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "crictl", "/etc/shadow").unwrap();
        b.into_inner().unwrap().finish().unwrap()
    };
    let e = compose_err(Role::Worker, |dl, dir| put(dl, dir, "crictl", &tgz));
    assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
}

#[test]
fn missing_download_is_reported() {
    let e = compose_err(Role::Worker, |dl, _| {
        dl.remove("runc");
    });
    assert!(format!("{e:#}").contains("\"runc\""), "{e:#}");
}

#[test]
fn layer_api_for_hooks() {
    // What other modules' compose hooks rely on: replacing an entry, parents implied.
    let mut l = Layer::new(0);
    l.file("/usr/libexec/imgbuild/x.sh", Content::Bytes(b"a".to_vec()), 0o755);
    l.file("/usr/libexec/imgbuild/x.sh", Content::Bytes(b"b".to_vec()), 0o755);
    assert_eq!(bytes(&l, "/usr/libexec/imgbuild/x.sh"), b"b");
    assert!(matches!(l.get("/usr/libexec").unwrap().kind, Kind::Dir));
}

/// Benchmark (run with `cargo test --release --test it -- --ignored --nocapture layer::`):
/// compose + seal from blobs of the real artifacts' sizes (incompressible data, the
/// worst case for hashing and the easiest for inflating).
#[test]
#[ignore]
fn bench_compose_and_seal_realistic_sizes() {
    use std::io::Write;
    const MB: usize = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let plan = layer_fixture::plan(Role::ControlPlane);
    // A cheap deterministic PRNG: test data only.
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut rand = |n: usize| {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(n);
        v
    };
    let mut tgz = |members: &[(&str, usize)]| {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, size) in members {
            let data = rand(*size);
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    };
    let cni: Vec<(String, usize)> = (0..20).map(|i| (format!("./plugin{i}"), 4 * MB)).collect();
    let cni_ref: Vec<(&str, usize)> = cni.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let blobs: Vec<(&str, Vec<u8>)> = vec![
        (
            "containerd",
            tgz(&[
                ("bin/containerd", 50 * MB),
                ("bin/containerd-shim-runc-v2", 12 * MB),
                ("bin/ctr", 25 * MB),
            ]),
        ),
        ("cni-plugins", tgz(&cni_ref)),
        ("crictl", tgz(&[("crictl", 40 * MB)])),
        (
            "etcd",
            tgz(&[
                ("etcd-v3.5.12-linux-amd64/etcdctl", 22 * MB),
                ("etcd-v3.5.12-linux-amd64/etcdutl", 20 * MB),
            ]),
        ),
        ("helm", tgz(&[("linux-amd64/helm", 50 * MB)])),
    ];
    let mut dl = std::collections::BTreeMap::new();
    for a in &plan.artifacts {
        let bytes = match blobs.iter().find(|(n, _)| *n == a.name) {
            Some((_, b)) => b.clone(),
            None => rand(match a.name.as_str() {
                "kubelet" => 100 * MB,
                "runc" => 10 * MB,
                _ => 50 * MB,
            }),
        };
        let p = tmp.path().join(&a.name);
        std::fs::File::create(&p).unwrap().write_all(&bytes).unwrap();
        dl.insert(a.name.clone(), p);
    }
    let total: u64 = dl.values().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let t = std::time::Instant::now();
    let l = layer_fixture::compose_layer(&plan, &dl, &work).unwrap();
    let t_compose = t.elapsed();
    let m = imgbuild::layer::seal(l, &plan, Vec::new()).unwrap().manifest;
    let t_all = t.elapsed();
    let hashed: u64 = m.files.iter().filter_map(|f| f.size).sum();
    eprintln!(
        "bench: {} MiB of blobs, {} MiB of layer files: compose {:.2} s, seal {:.2} s, total {:.2} s",
        total >> 20,
        hashed >> 20,
        t_compose.as_secs_f64(),
        (t_all - t_compose).as_secs_f64(),
        t_all.as_secs_f64()
    );
}

#[test]
fn a_reused_workdir_is_cleaned_per_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = layer_fixture::plan(Role::Worker);
    let dl = layer_fixture::downloads(&plan, tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    layer_fixture::compose_layer(&plan, &dl, &work).unwrap();
    let l = layer_fixture::compose_layer(&plan, &dl, &work).unwrap();
    assert_eq!(bytes(&l, "/usr/local/bin/ctr"), stub("bin/ctr"));
    // Only what the second run extracted is there.
    let n = std::fs::read_dir(work.join("artifact-containerd")).unwrap().count();
    assert_eq!(n, layer_fixture::CONTAINERD.iter().filter(|m| !m.ends_with('/')).count());
}

/// An artifact installed where imgbuild writes a file of its own used to vanish (the
/// later step replaced it) while the SBOM listed it: the layer refuses to seal.
#[test]
fn an_artifact_on_a_path_imgbuild_writes_is_a_clash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plan = layer_fixture::plan(Role::Worker);
    plan.artifacts[0].install[0].to = "/etc/containerd/config.toml".into();
    let dl = layer_fixture::downloads(&plan, tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let layer = layer_fixture::compose_layer(&plan, &dl, &work).unwrap();
    let e = anyhow::Error::from(imgbuild::layer::seal(layer, &plan, Vec::new()).unwrap_err());
    let msg = format!("{e:#}");
    assert!(msg.contains("/etc/containerd/config.toml") && msg.contains("\"kubeadm\""), "{msg}");
    assert_eq!(imgbuild::cmd::code_for(&e), imgbuild::exit::Code::Input);
    // A file where the layer needs a directory is refused the same way.
    let mut l = Layer::new(0);
    l.file("/etc/x", Content::Bytes(b"a".to_vec()), 0o644);
    l.file("/etc/x/y", Content::Bytes(b"b".to_vec()), 0o644);
    assert!(l.clashes()[0].contains("parent /etc/x is not a directory"), "{:?}", l.clashes());
}

/// A member name longer than a file name may be was extracted under a host path of
/// that name and failed (exit 1) naming the host temp path: now host files are
/// numbered and the member is named (exit 2).
#[test]
fn an_overlong_member_name_is_named_not_the_host_path() {
    let long = format!("bin/{}", "c".repeat(300));
    let tgz = layer_fixture::targz(&["bin/", &long]);
    let tmp = tempfile::tempdir().unwrap();
    let e = compose_err(Role::Worker, |dl, dir| put(dl, dir, "containerd", &tgz));
    let msg = format!("{e:#}");
    assert!(msg.contains(&"c".repeat(300)) && msg.contains("at most 255"), "{msg}");
    assert!(!msg.contains("artifact-containerd/"), "names a host path: {msg}");
    assert_eq!(imgbuild::cmd::code_for(&e), imgbuild::exit::Code::Input);
    drop(tmp);
}
