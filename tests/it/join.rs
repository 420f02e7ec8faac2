//! Control planes join one at a time, and no attempt leaves a stale etcd member or
//! removes a healthy one: the real bootstrap script (image-files/…/bootstrap) runs
//! for several control planes of one cluster at once, against a REAL etcd cluster
//! (Debian's etcd-server, one process per simulated node on a loopback address),
//! the real etcdctl (lock, member list/remove) and openssl, with the stand-ins in
//! tests/it/standin/ for kubeadm (its join phases and etcd calls) and kubectl (the etcd
//! endpoint query, authenticated like an API server would).

use crate::common;

use crate::common::ok;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = "image-files/common/usr/libexec/imgbuild/bootstrap";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tools this test runs for real: required in CI, else skipped loudly.
fn tools_present() -> bool {
    let missing: Vec<&str> = ["etcd", "etcdctl", "openssl", "setsid"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing:?} required in CI (ci/test.sh installs etcd-server, etcd-client, openssl)"
    );
    eprintln!("note: SKIPPING the control-plane join tests: {missing:?} not installed (apt-get install etcd-server etcd-client)");
    false
}

/// A cluster of control planes (DHCP: kubeadm.yaml names no address, so the script
/// must find its etcd member by name or by the peer URL kubeadm wrote), its nodes'
/// roots materialised from their user-data, and the stand-ins' shared state.
struct World {
    t: tempfile::TempDir,
    net: String,
    /// keeps `net` this process's own (see `common::loopback_net`)
    _net_lock: fs::File,
    state: PathBuf,
    /// Bootstraps still running (process group ids), killed if the test panics.
    running: std::cell::RefCell<Vec<i32>>,
}

impl World {
    fn new(control_planes: u32, net_index: u8) -> World {
        let t = tempfile::tempdir().unwrap();
        // a loopback /24 of its own per test and process: etcd binds IP:2379/2380
        let (net, _net_lock) = common::loopback_net(60 + net_index);
        let dir = t.path().join("cluster");
        common::cluster_init(&dir)
            .name("jt")
            .endpoint(&format!("{net}.10:6443"))
            .nodes(control_planes, 1)
            .external_lb()
            .ok();
        let seeds = t.path().join("seeds");
        let out = common::cloud_init_all(dir.join("cluster.yaml"), &seeds);
        ok(&out);
        for i in 1..=control_planes {
            let node = format!("jt-cp-{i}");
            let ud = fs::read_to_string(seeds.join(&node).join("user-data")).unwrap();
            common::write_files_to(&ud, &t.path().join("nodes").join(&node));
        }
        let state = t.path().join("state");
        fs::create_dir_all(state.join("nodes")).unwrap();
        World { t, net, _net_lock, state, running: Default::default() }
    }

    /// A new disk for `node` (a replacement machine): its root as cloud-init writes it.
    fn fresh_disk(&self, node: &str) {
        let root = self.root(node);
        fs::remove_dir_all(&root).unwrap();
        let ud = fs::read_to_string(self.t.path().join("seeds").join(node).join("user-data")).unwrap();
        common::write_files_to(&ud, &root);
    }

    fn root(&self, node: &str) -> PathBuf {
        self.t.path().join("nodes").join(node)
    }

    fn ip(&self, node: &str) -> String {
        format!("{}.{}", self.net, 10 + node.rsplit('-').next().unwrap().parse::<u32>().unwrap())
    }

    fn node_state(&self, node: &str) -> PathBuf {
        let d = self.state.join("nodes").join(node);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// The bootstrap of `node`, in a process group of its own (a "machine").
    fn bootstrap(&self, node: &str) -> Command {
        let path = format!(
            "{}:{}",
            repo().join("tests/it/standin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("bash");
        c.arg(repo().join(SCRIPT))
            .env("PATH", path)
            .env("IMGBUILD_ROOT", self.root(node))
            .env("STANDIN_STATE", &self.state)
            .env("STANDIN_IP", self.ip(node))
            .env("STANDIN_ETCD_API_TIMEOUT", "2")
            .env("IMGBUILD_BACKOFF_INITIAL", "1")
            .env("IMGBUILD_BACKOFF_MAX", "2")
            .env("IMGBUILD_RETRY_BUDGET_SECONDS", "150")
            // short, for the lock of a killed machine to expire soon, yet long enough
            // that etcdctl's keepalive (every TTL/3) survives a loaded machine: a lease
            // lost mid-join would let two joins overlap
            .env("IMGBUILD_JOIN_LOCK_TTL", "10")
            .env("IMGBUILD_SYSTEMCTL", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        c
    }

    fn spawn(&self, node: &str) -> Child {
        let c = self.bootstrap(node).spawn().unwrap();
        self.running.borrow_mut().push(c.id() as i32);
        c
    }

    /// Wait for a bootstrap; a run that hangs is killed (its whole process group).
    fn finish(&self, mut c: Child, limit: Duration) -> Output {
        let t0 = Instant::now();
        let pid = c.id() as i32;
        loop {
            if c.try_wait().unwrap().is_some() {
                self.running.borrow_mut().retain(|p| *p != pid);
                return c.wait_with_output().unwrap();
            }
            if t0.elapsed() > limit {
                // SAFETY: kill(2) takes no memory; -pid is the process group this runner made.
                // SAFETY: kill(2) takes no memory; -pid is a process group this test started.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                self.running.borrow_mut().retain(|p| *p != pid);
                let o = c.wait_with_output().unwrap();
                panic!(
                    "bootstrap did not finish within {limit:?}\nstdout: {}\nstderr: {}\n{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr),
                    dump(self)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// real etcdctl with the first control plane's etcd client certificate
    fn etcdctl(&self, args: &[&str]) -> Output {
        common::etcdctl_as_apiserver(
            &self.root("jt-cp-1").join("etc/kubernetes/pki"),
            &self.ip("jt-cp-1"),
            args,
        )
    }

    /// (id, status, name, peer URLs, is learner) of every etcd member.
    fn members(&self) -> Vec<(String, String, String, String, bool)> {
        let o = self.etcdctl(&["member", "list", "-w", "simple"]);
        ok(&o);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(", ").collect();
                (f[0].into(), f[1].into(), f[2].into(), f[3].into(), f[5] == "true")
            })
            .collect()
    }

    fn status(&self, node: &str) -> serde_json::Value {
        serde_json::from_str(
            &fs::read_to_string(self.root(node).join("run/imgbuild/bootstrap.json")).unwrap(),
        )
        .unwrap()
    }

    fn read_state(&self, name: &str) -> String {
        fs::read_to_string(self.state.join(name)).unwrap_or_default()
    }

    fn init_first(&self) {
        let o = self.bootstrap("jt-cp-1").output().unwrap();
        ok(&o);
        assert_eq!(self.status("jt-cp-1")["phase"], "done");
    }
}

impl Drop for World {
    /// Stop the bootstraps still running and the etcd processes the stand-in started
    /// (by their recorded pids).
    fn drop(&mut self) {
        for pid in self.running.borrow().iter() {
            // SAFETY: kill(2) takes no memory; -pid is a process group this test started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        if let Ok(rd) = fs::read_dir(self.state.join("nodes")) {
            for e in rd.flatten() {
                if let Ok(pid) = fs::read_to_string(e.path().join("etcd.pid")) {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        // SAFETY: kill(2) takes no memory; the pid is an etcd this test started.
                        // SAFETY: kill(2) takes no memory; the pid is the etcd this test started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

/// What the stand-ins and the nodes recorded, for failure messages.
fn dump(w: &World) -> String {
    let mut s = format!("calls:\n{}", w.read_state("calls.log"));
    for n in ["jt-cp-1", "jt-cp-2", "jt-cp-3"] {
        let st = fs::read_to_string(w.root(n).join("run/imgbuild/bootstrap.json")).unwrap_or_default();
        s.push_str(&format!("--- {n}: {st}{}\n", kubeadm_log(w, n)));
    }
    s
}

fn kubeadm_log(w: &World, node: &str) -> String {
    fs::read_to_string(w.root(node).join("var/log/imgbuild/kubeadm.log")).unwrap_or_default()
}

/// Per node, the (added, promoted) times of its etcd phase, from the stand-in's log.
fn etcd_phases(w: &World) -> Vec<(String, f64, f64)> {
    let log = w.read_state("etcd-phase.log");
    let mut open: std::collections::HashMap<String, f64> = Default::default();
    let mut done = Vec::new();
    for l in log.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let t: f64 = f[0].parse().unwrap();
        match f[2] {
            "added" => {
                open.insert(f[1].to_string(), t);
            }
            "promoted" => done.push((f[1].to_string(), open.remove(f[1]).unwrap(), t)),
            _ => {}
        }
    }
    done
}

#[test]
fn control_planes_join_one_at_a_time_past_a_foreign_learner_without_resetting_a_voter() {
    if !tools_present() {
        return;
    }
    let w = World::new(3, 1);
    w.init_first();

    // Another join is in flight (a learner the lock knows nothing about): etcd admits
    // one learner, so every MemberAddAsLearner fails until it is gone.
    let ghost = format!("https://{}.99:2380", w.net);
    ok(&w.etcdctl(&["member", "add", "ghost", "--learner", &format!("--peer-urls={ghost}")]));
    // jt-cp-2 fails after its member was promoted (mark-control-plane times out once):
    // a reset there would remove a healthy voter.
    fs::write(w.node_state("jt-cp-2").join("fail-mark"), "1").unwrap();

    let cp2 = w.spawn("jt-cp-2");
    let cp3 = w.spawn("jt-cp-3");
    // The in-flight join ends once a node has run into it.
    let t0 = Instant::now();
    while !["jt-cp-2", "jt-cp-3"].iter().any(|n| kubeadm_log(&w, n).contains("too many learner members")) {
        assert!(t0.elapsed() < Duration::from_secs(90), "no join ran into the foreign learner\n{}", dump(&w));
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = w.members().into_iter().find(|m| m.3 == ghost).unwrap().0;
    ok(&w.etcdctl(&["member", "remove", &id]));

    let o2 = w.finish(cp2, Duration::from_secs(240));
    let o3 = w.finish(cp3, Duration::from_secs(240));
    ok(&o2);
    ok(&o3);

    // N healthy voting members, no learner, nothing stale.
    let members = w.members();
    let mut names: Vec<&str> = members.iter().map(|m| m.2.as_str()).collect();
    names.sort();
    assert_eq!(names, ["jt-cp-1", "jt-cp-2", "jt-cp-3"], "{members:?}");
    assert!(members.iter().all(|m| m.1 == "started" && !m.4), "{members:?}");
    for n in ["jt-cp-2", "jt-cp-3"] {
        let s = w.status(n);
        assert_eq!(s["phase"], "done", "{n}: {s}");
        assert_eq!(s["last_error"], "", "{n}: {s}");
    }
    // No reset removed a member (kubeadm's remove-etcd-member never runs), so none
    // removed a healthy one.
    let removals = w.read_state("removals.log");
    assert!(removals.is_empty(), "kubeadm reset removed etcd members:\n{removals}");

    // The failed attempts are reported with etcd's own reason, not kubeadm's trailer.
    let console = format!("{}{}", String::from_utf8_lossy(&o2.stdout), String::from_utf8_lossy(&o3.stdout));
    assert!(
        console.contains(
            "failed: error execution phase control-plane-join/etcd: error creating local etcd static pod manifest file: etcdserver: too many learner members in cluster"
        ),
        "{console}"
    );
    assert!(!console.contains("To see the stack trace"), "{console}");

    // jt-cp-2's voter was kept: after the mark-control-plane failure the next kubeadm
    // call finishes that phase, with no reset in between.
    let calls: Vec<String> = w
        .read_state("calls.log")
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("jt-cp-2"))
        .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .collect();
    let last_join = calls.iter().rposition(|c| c.starts_with("kubeadm join --config")).unwrap();
    assert!(
        calls[last_join + 1].starts_with("kubeadm join phase control-plane-join mark-control-plane"),
        "{calls:?}"
    );
    assert_eq!(calls.len(), last_join + 2, "{calls:?}");
    let o2s = String::from_utf8_lossy(&o2.stdout);
    assert!(o2s.contains("is a healthy voter: finishing the join"), "{o2s}");
    assert!(o2s.contains("mark-control-plane: error applying control-plane label and taints"), "{o2s}");

    // One at a time: no two nodes were between member add and promotion at once.
    let phases = etcd_phases(&w);
    assert_eq!(phases.len(), 2, "{phases:?}");
    let (a, b) = (&phases[0], &phases[1]);
    assert!(a.2 <= b.1 || b.2 <= a.1, "etcd joins overlapped: {phases:?}");
}

#[test]
fn a_learner_left_by_a_power_loss_is_removed_and_the_node_joins_after_the_reboot() {
    if !tools_present() {
        return;
    }
    let w = World::new(2, 2);
    w.init_first();

    // Power loss right after kubeadm added the member: the learner stays, unstarted,
    // and kubelet.conf already exists (kubelet-start runs before the etcd phase).
    fs::write(w.node_state("jt-cp-2").join("crash-after-add"), "").unwrap();
    let o = w.finish(w.spawn("jt-cp-2"), Duration::from_secs(120));
    assert!(!o.status.success());
    let stale = w.members();
    assert!(stale.iter().any(|m| m.1 == "unstarted" && m.4), "{stale:?}");
    assert!(w.root("jt-cp-2").join("etc/kubernetes/kubelet.conf").exists());

    // Reboot: /run is empty again.
    fs::remove_dir_all(w.root("jt-cp-2").join("run")).unwrap();
    let o = w.finish(w.spawn("jt-cp-2"), Duration::from_secs(120));
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("removing this node's etcd learner"), "{out}");
    assert!(!out.contains("kubeadm already ran"), "{out}");
    let members = w.members();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|m| m.1 == "started" && !m.4), "{members:?}");
    let s = w.status("jt-cp-2");
    assert_eq!(s["phase"], "done");
    // the attempt of the first boot counts
    assert_eq!(s["attempts"], 2, "{s}");
}

#[test]
fn a_replaced_control_plane_removes_the_member_of_the_machine_it_replaces() {
    if !tools_present() {
        return;
    }
    let w = World::new(3, 3);
    w.init_first();
    for n in ["jt-cp-2", "jt-cp-3"] {
        ok(&w.finish(w.spawn(n), Duration::from_secs(120)));
    }
    let before = w.members();
    assert_eq!(before.len(), 3, "{before:?}");

    // jt-cp-2's machine is gone (its etcd with it); a new one boots with the same seed.
    let pidfile = w.node_state("jt-cp-2").join("etcd.pid");
    let pid: i32 = fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) takes no memory; the pid is the etcd this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    fs::remove_file(&pidfile).unwrap();
    w.fresh_disk("jt-cp-2");
    let o = w.finish(w.spawn("jt-cp-2"), Duration::from_secs(120));
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("of the machine this node replaces (it does not answer"), "{out}");
    let after = w.members();
    let mut names: Vec<&str> = after.iter().map(|m| m.2.as_str()).collect();
    names.sort();
    assert_eq!(names, ["jt-cp-1", "jt-cp-2", "jt-cp-3"], "{after:?}");
    assert!(after.iter().all(|m| m.1 == "started" && !m.4), "{after:?}");
    let old = before.iter().find(|m| m.2 == "jt-cp-2").unwrap();
    assert!(after.iter().all(|m| m.0 != old.0), "the old member is gone: {after:?}");
    assert!(w.read_state("removals.log").is_empty());
}
