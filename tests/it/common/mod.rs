//! Shared test support. Each integration test file does `mod common;`.

pub mod cluster;
pub mod fixture;
pub mod fulcio;
pub mod gpg;
pub mod hostile;
pub mod http;
pub mod registry;

pub use cluster::cluster_init;

/// The imgbuild binary under test.
pub fn bin() -> std::process::Command {
    // The default download cache (`cloud-init` and `lint` check add-on values against the
    // charts in it) is this test process's own, empty one: the user's ~/.cache/imgbuild
    // would make verdicts depend on what this machine fetched before.
    static XDG_CACHE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.env_remove("IMGBUILD_CACHE_DIR")
        .env_remove("IMGBUILD_MIRROR")
        .env("XDG_CACHE_HOME", XDG_CACHE.get_or_init(|| process_tempdir("xdg-cache")));
    c
}

/// Whether the external `tool` a test needs can run here: the one place a test decides to
/// skip. When it is missing the test panics if `CI` is set (ci/test.sh installs every tool, so
/// CI never passes by skipping), and otherwise prints a loud note and returns false for the
/// test to return early.
pub fn tool(tool: &'static str) -> bool {
    imgbuild::tools::for_test(tool).is_some()
}

/// Validate an SPDX document with the reference validator (PyPI spdx-tools' `pyspdxtools`,
/// installed by ci/test.sh): required in CI, skipped with a note elsewhere.
pub fn validate_spdx(path: &std::path::Path) {
    match std::process::Command::new("pyspdxtools").arg("--infile").arg(path).output() {
        Ok(o) => assert!(
            o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("invalid"),
            "pyspdxtools: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("note: pyspdxtools not installed (pip install spdx-tools); SPDX validation skipped")
        }
        Err(e) => panic!("pyspdxtools is required in CI: {e}"),
    }
}

/// Recipe text without container images and add-ons (for tests about other downloads:
/// pinned add-on images would need their registry or a cache holding them).
pub fn without_images(recipe_text: &str) -> String {
    let mut v: serde_yaml::Value = serde_yaml::from_str(recipe_text).expect("recipe YAML");
    let m = v.as_mapping_mut().expect("a mapping");
    m.remove("images");
    m.remove("addons");
    serde_yaml::to_string(&v).expect("YAML")
}

/// A loopback /24 `127.<second>.<n>` that no other test process on this machine uses
/// while the returned lock is held: etcd members bind fixed ports (2379, 2380) on their
/// addresses, and two test runs at once must not meet there. `n` starts from the process
/// id, so that an etcd a killed run left behind is rarely met either (its lock is gone).
pub fn loopback_net(second: u8) -> (String, std::fs::File) {
    // shared by every test process of this machine; the empty lock files stay (removing
    // one another process may be opening would let two processes lock different files)
    let dir = std::env::temp_dir().join("imgbuild-test-nets");
    std::fs::create_dir_all(&dir).unwrap();
    // like /tmp itself: every user's test runs take part (only the owner can chmod)
    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777));
    let start = std::process::id() % 250;
    for i in 0..250 {
        let n = (start + i) % 250 + 1;
        let lock = dir.join(format!("127.{second}.{n}.lock"));
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock).unwrap();
        if f.try_lock().is_ok() {
            return (format!("127.{second}.{n}"), f);
        }
    }
    panic!("every 127.{second}.N/24 is in use by another test process");
}

/// A loopback port free right now, for a real server that must be told its port (it can
/// be taken before the server binds it: servers that can bind port 0 should).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Run `c`, which must succeed: the command and its output otherwise.
pub fn run_ok(c: &mut std::process::Command) -> std::process::Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(out.status.success(), "{c:?} failed: {}", text(&out));
    out
}

/// Assert that a command succeeded, showing its exit code and output when it did not.
pub fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// What a user sees of a command, for a snapshot: the exit code, then stdout and stderr
/// (each when not empty), with `tmp` (a test's temp dir) shown as `[TMP]`.
pub fn transcript(o: &std::process::Output, tmp: &std::path::Path) -> String {
    let tmp = tmp.to_str().expect("UTF-8 temp path");
    let mut t = format!("exit: {:?}\n", o.status.code());
    for (name, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        if !bytes.is_empty() {
            t.push_str(&format!("--- {name}\n{}", String::from_utf8_lossy(bytes).replace(tmp, "[TMP]")));
        }
    }
    t
}

/// A command's stdout and stderr, labelled, for an assertion's message or a `contains`.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `o` exited with `code` and its stderr says `needle` (the stderr shown when not).
#[track_caller]
pub fn exits_with(o: &std::process::Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    assert!(stderr(o).contains(needle), "{}", stderr(o));
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `imgbuild cloud-init --all --seed none` of `cluster` into `out`: every node's
/// user-data in its own directory, no seed images. The result, whatever it is.
pub fn cloud_init_all(
    cluster: impl AsRef<std::path::Path>,
    out: impl AsRef<std::path::Path>,
) -> std::process::Output {
    bin()
        .args(["cloud-init", "--all", "--seed", "none", "--cluster"])
        .arg(cluster.as_ref())
        .arg("--out")
        .arg(out.as_ref())
        .output()
        .unwrap()
}

/// A `#cloud-config`'s `write_files`: path -> (permissions, content); every entry must
/// have all three.
pub fn write_files(user_data: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(user_data).unwrap();
    let s = |f: &serde_yaml::Value, k: &str| {
        f[k].as_str().unwrap_or_else(|| panic!("write_files entry without {k}: {f:?}")).to_string()
    };
    doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| (s(f, "path"), (s(f, "permissions"), s(f, "content"))))
        .collect()
}

/// [`write_files`] of `node`'s user-data in a `cloud-init --out` directory.
pub fn node_files(out: &std::path::Path, node: &str) -> std::collections::BTreeMap<String, (String, String)> {
    write_files(&std::fs::read_to_string(out.join(node).join("user-data")).unwrap())
}

/// The content of the file at `path` that `node`'s user-data writes.
pub fn node_file(out: &std::path::Path, node: &str, path: &str) -> String {
    let mut files = node_files(out, node);
    files.remove(path).unwrap_or_else(|| panic!("{node}'s user-data writes no {path}")).1
}

/// Write a `#cloud-config`'s `write_files` under `root` (path, permissions, content), as
/// cloud-init would on the node: the root a bootstrap script runs against.
pub fn write_files_to(user_data: &str, root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for (path, (permissions, content)) in write_files(user_data) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        let mode = u32::from_str_radix(&permissions, 8).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Run `c` and kill it after `limit`: a hang is a failure, not a stuck test.
pub fn run_limited(c: &mut std::process::Command, limit: std::time::Duration) -> std::process::Output {
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("{c:?} still running after {limit:?} (killed): {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `openssl req` arguments for a new certificate request with a new P-256 key, unencrypted.
pub const OPENSSL_NEW_P256: [&str; 7] =
    ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A built worker image's stand-in for the upload tests, in `dir`: the raw `payload` as a
/// real qcow2 (hypervisors check the format of what they store), `k8s-worker-amd64.qcow2`,
/// with the sidecars `imgbuild build` writes next to it (`<image>.sha256` and
/// `k8s-worker-amd64.manifest.json`). Returns the image's path and SHA-256 (hex).
pub fn stand_in_image(dir: &std::path::Path, payload: &[u8]) -> (std::path::PathBuf, String) {
    let raw = dir.join("payload.raw");
    std::fs::write(&raw, payload).unwrap();
    let path =
        imgbuild_testkit::qemu::convert(&raw, Some("raw"), "qcow2", "", dir.join("k8s-worker-amd64.qcow2"));
    std::fs::remove_file(&raw).unwrap();
    let sha256 = imgbuild::types::Sha256::of_file(&path).unwrap().to_string();
    std::fs::write(dir.join("k8s-worker-amd64.qcow2.sha256"), format!("{sha256}  k8s-worker-amd64.qcow2\n"))
        .unwrap();
    let manifest = serde_json::json!({
        "imgbuild_version": "0.1.0", "recipe": "k8s", "recipe_digest": "0".repeat(64),
        "role": "worker", "arch": "amd64", "kubernetes_version": "v1.30.3", "inputs_digest": "1".repeat(64),
        "base": {"name": "ubuntu-24.04", "version": "20240821", "urls": [], "sha256": "2".repeat(64)},
        "artifacts": [], "files": [],
    });
    std::fs::write(dir.join("k8s-worker-amd64.manifest.json"), manifest.to_string()).unwrap();
    (path, sha256)
}

/// Real etcdctl (API v3) against the member at `https://{ip}:2379`, authenticated the way
/// a control plane's API server is: the etcd CA and kubeadm's apiserver-etcd-client
/// certificate under `pki` (a node's /etc/kubernetes/pki).
pub fn etcdctl_as_apiserver(pki: &std::path::Path, ip: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{ip}:2379"))
        .arg(format!("--cacert={}", pki.join("etcd/ca.crt").display()))
        .arg(format!("--cert={}", pki.join("apiserver-etcd-client.crt").display()))
        .arg(format!("--key={}", pki.join("apiserver-etcd-client.key").display()))
        .args(args)
        .output()
        .unwrap()
}

/// openssl signs a leaf certificate (P-256 key, `subject`, extensions `ext`, `days`) with
/// the CA `ca_crt`/`ca_key` in `dir`; returns (certificate, key) paths.
pub fn openssl_sign(
    dir: &std::path::Path,
    ca_crt: &std::path::Path,
    ca_key: &std::path::Path,
    subject: &str,
    ext: &str,
    days: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        ok(&std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap())
    };
    run(&[&OPENSSL_NEW_P256[..], &["-subj", subject, "-keyout", "key.pem", "-out", "req.csr"]].concat());
    std::fs::write(dir.join("ext"), ext).unwrap();
    let days = days.to_string();
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        ca_crt.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-set_serial",
        "9",
        "-days",
        &days,
        "-extfile",
        "ext",
        "-out",
        "crt.pem",
    ]);
    (dir.join("crt.pem"), dir.join("key.pem"))
}

/// Run `c` to completion like `Command::output`, and also return the peak resident set of
/// that one child in KiB: its `VmHWM`, sampled every few milliseconds (a high-water mark, so
/// a sample misses only growth in the last milliseconds of its life). Not `ru_maxrss`: Linux
/// counts into it the memory the child shared with this test process before its exec, and
/// this process holds every other test's data.
pub fn output_with_peak_rss(c: &mut std::process::Command) -> (std::process::Output, u64) {
    use std::io::Read;
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        // spawn returns after the exec: this is the new program's memory from the first read
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            let hwm =
                s.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().trim_end_matches(" kB"));
            if let Some(kib) = hwm.and_then(|v| v.trim().parse::<u64>().ok()) {
                peak_kib = peak_kib.max(kib);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(peak_kib > 0, "{c:?}: no VmHWM sample in {status_file}");
    let output = std::process::Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
    (output, peak_kib)
}

/// A temp dir for a fixture that lives as long as the test process (a `static` the tests of
/// a module share): statics are never dropped, so it is removed by an `atexit` hook instead,
/// which runs when the harness returns from main or exits with a failure.
pub fn process_tempdir(prefix: &str) -> std::path::PathBuf {
    use std::sync::{Mutex, Once};
    static DIRS: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());
    static HOOK: Once = Once::new();
    extern "C" fn remove_all() {
        if let Ok(dirs) = DIRS.lock() {
            for d in dirs.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    // SAFETY: registers a plain extern "C" function without arguments, as atexit(3) requires.
    HOOK.call_once(|| assert_eq!(unsafe { libc::atexit(remove_all) }, 0));
    // Short paths under /tmp: gpg-agent's socket path must fit sockaddr_un (108 bytes).
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap().keep();
    DIRS.lock().unwrap().push(dir.clone());
    dir
}
