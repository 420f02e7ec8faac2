//! `imgbuild upload --target libvirt` against a real libvirtd (Debian's libvirt-daemon)
//! that each test starts in a temp dir: a session-mode daemon (as `nobody` when the test
//! runs as root, so it touches nothing under /run, /etc or /var) whose socket the client
//! reaches through `qemu+unix:///session?socket=…`, with a `dir` pool in the temp dir.
//! The daemon is killed when the test ends, pass or fail (Drop).
use crate::common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use imgbuild::exit::{Classify, Code};
use imgbuild::reporter::Reporter;
use imgbuild::upload::libvirt::{self, LibvirtOptions};
use imgbuild::upload::{ImageInfo, Outcome};

const POOL: &str = "imgtest";

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// virsh, libvirtd and qemu-img, or None (with a note) outside CI; in CI their absence fails.
fn tools() -> Option<PathBuf> {
    let missing: Vec<_> =
        ["virsh", "libvirtd", "qemu-img"].into_iter().filter(|t| which(t).is_none()).collect();
    if missing.is_empty() {
        return which("libvirtd");
    }
    assert!(
        !in_ci(),
        "CI lacks {missing:?} (ci/test.sh installs libvirt-clients, libvirt-daemon, qemu-utils)"
    );
    eprintln!("note: skipping: {missing:?} not installed (apt-get install libvirt-clients libvirt-daemon qemu-utils)");
    None
}

/// A libvirtd of its own: config, state and socket under a temp dir.
struct Daemon {
    dir: tempfile::TempDir,
    libvirtd: PathBuf,
    child: Option<Child>,
    uri: String,
    /// uid/gid to run as (root runs it as `nobody`: a session daemon keeps to its dirs).
    user: Option<(u32, u32)>,
}

impl Daemon {
    fn start() -> Option<Daemon> {
        let libvirtd = tools()?;
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY: plain libc lookups; getpwnam's result is read before any other call.
        let user = unsafe {
            if libc::geteuid() == 0 {
                let pw = libc::getpwnam(c"nobody".as_ptr());
                assert!(!pw.is_null(), "no `nobody` user to run libvirtd as");
                Some(((*pw).pw_uid, (*pw).pw_gid))
            } else {
                None
            }
        };
        let mut d = Daemon { libvirtd, uri: String::new(), child: None, user, dir };
        std::fs::set_permissions(d.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        for sub in ["run", "config", "cache", "data", "home", "pool"] {
            let p = d.dir.path().join(sub);
            std::fs::create_dir(&p).expect("mkdir");
            if let Some((uid, gid)) = d.user {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
            }
        }
        d.uri = format!("qemu+unix:///session?socket={}", d.path("run/libvirt/libvirt-sock").display());
        d.spawn();
        let target = d.path("pool");
        let target = target.to_str().expect("utf-8 path");
        // Persistent + autostart, so a restarted daemon brings the pool back.
        d.ok(&["pool-define-as", POOL, "dir", "--target", target]);
        d.ok(&["pool-start", POOL]);
        d.ok(&["pool-autostart", POOL]);
        Some(d)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// (Re)start libvirtd on the same dirs and wait until it answers.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("libvirtd.log"))
            .expect("log");
        let mut c = Command::new(&self.libvirtd);
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.path("home"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_DATA_HOME", self.path("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        // SAFETY: prctl is async-signal-safe. Runs after the uid change (which would clear it):
        // if the test process dies without unwinding, the kernel kills the daemon too.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(c.spawn().expect("starting libvirtd"));
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("libvirtd exited ({st}):\n{}", self.log());
            }
            if self.virsh(&["uri"]).status.success() {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "libvirtd did not answer:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("libvirtd.log")).unwrap_or_default()
    }

    /// SIGKILL: what a crashed or OOM-killed daemon looks like to the client.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .env("LC_ALL", "C")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()
            .expect("running virsh")
    }

    fn ok(&self, args: &[&str]) -> Vec<u8> {
        let o = self.virsh(args);
        assert!(o.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    }

    /// Volume names in the pool, sorted.
    fn volumes(&self) -> Vec<String> {
        self.ok(&["pool-refresh", POOL]);
        let out = String::from_utf8(self.ok(&["vol-list", POOL])).expect("utf-8");
        let mut v: Vec<String> =
            out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
        v.sort();
        v
    }

    fn args(&self, pool: &str) -> LibvirtOptions {
        LibvirtOptions { libvirt_uri: self.uri.clone(), libvirt_pool: pool.into(), libvirt_verify: false }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A built-image stand-in: an 8 MiB qcow2 with a patterned payload and the sidecars
/// `imgbuild build` writes (`<stem>.manifest.json`, `<image>.sha256`).
struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
    info: ImageInfo,
}

fn image(seed: u8) -> Image {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = vec![0u8; 24 << 20];
    // Non-zero 64 KiB blocks every 192 KiB: a qcow2 of about 8 MiB.
    for (i, chunk) in bytes.chunks_mut(64 << 10).enumerate() {
        if i % 3 == 0 {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8).wrapping_add(seed) | 1;
            }
        }
    }
    let (path, sha256) = common::stand_in_image(dir.path(), &bytes);
    let size = std::fs::metadata(&path).expect("stat").len();
    let info = ImageInfo {
        path: path.clone(),
        format: "qcow2".into(),
        size,
        name: format!("k8s-worker-amd64-{}", &sha256[..12]),
        sha256,
        recipe: "k8s".into(),
        role: "worker".into(),
        arch: "amd64".into(),
        k8s_version: "v1.30.3".into(),
        imgbuild_version: "0.1.0".into(),
    };
    Image { _dir: dir, path, info }
}

fn upload_cli(img: &Path, extra: &[&str]) -> Output {
    common::bin().args(["upload", "--target", "libvirt"]).arg(img).args(extra).output().expect("imgbuild")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn upload_is_byte_exact_and_reupload_is_a_noop() {
    let Some(d) = Daemon::start() else { return };
    let img = image(0);
    let vol = format!("{}.qcow2", img.info.name);
    let out = upload_cli(&img.path, &["--libvirt-uri", &d.uri, "--pool", POOL]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    let in_pool = d.path("pool").join(&vol);
    assert_eq!(text(&out.stdout).trim(), in_pool.to_str().expect("utf-8"), "stdout is the volume path");
    assert!(text(&out.stderr).contains(&format!("uploaded {}", in_pool.display())), "{}", text(&out.stderr));

    // The bytes, both on disk in the pool dir and as the daemon serves them.
    let original = std::fs::read(&img.path).expect("read");
    assert!(std::fs::read(&in_pool).expect("read volume") == original, "pool file differs from the image");
    let downloaded = d.ok(&["vol-download", "--pool", POOL, &vol, "/dev/stdout"]);
    assert!(downloaded == original, "vol-download differs from the image");
    // The daemon probed the format of the raw-created volume.
    let xml = text(&d.ok(&["vol-dumpxml", "--pool", POOL, &vol]));
    assert!(xml.contains("<format type='qcow2'/>"), "{xml}");
    // The completion marker, in sha256sum format next to the volume.
    let marker = std::fs::read_to_string(d.path("pool").join(format!("{vol}.sha256"))).expect("marker");
    assert_eq!(marker, format!("{}  {vol}\n", img.info.sha256));
    assert_eq!(d.volumes(), [vol.clone(), format!("{vol}.sha256")]);

    // Again: nothing is sent (the file is not rewritten), the same id is reported.
    let mtime = |p: &Path| std::fs::metadata(p).expect("stat").modified().expect("mtime");
    let before = mtime(&in_pool);
    std::thread::sleep(Duration::from_millis(20));
    let again = upload_cli(&img.path, &["--libvirt-uri", &d.uri, "--pool", POOL, "--libvirt-verify"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(again.stdout, out.stdout);
    let err = text(&again.stderr);
    assert!(err.contains("already present") && !err.contains(" to pool "), "{err}");
    assert!(err.contains(&format!("verified {vol}: sha256 {}", img.info.sha256)), "{err}");
    assert_eq!(mtime(&in_pool), before, "the volume was rewritten");

    // The library API says the same.
    let got = libvirt::upload(&img.info, &d.args(POOL), &Reporter::plain(true)).expect("upload");
    assert_eq!(got, Outcome::AlreadyPresent { id: in_pool.display().to_string() });

    // Corrupt the stored volume (same size): the marker still vouches for it, so a plain
    // re-upload trusts it; --libvirt-verify notices and replaces it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&in_pool).expect("open volume");
        f.write_all_at(b"corrupted", original.len() as u64 / 2).expect("corrupt");
    }
    let trusting = upload_cli(&img.path, &["--libvirt-uri", &d.uri, "--pool", POOL]);
    assert!(text(&trusting.stderr).contains("already present"), "{}", text(&trusting.stderr));
    let fixed = upload_cli(&img.path, &["--libvirt-uri", &d.uri, "--pool", POOL, "--libvirt-verify"]);
    assert!(fixed.status.success(), "{}", text(&fixed.stderr));
    let err = text(&fixed.stderr);
    assert!(
        err.contains(&format!("replacing volume {vol} in pool {POOL}: its content does not match")),
        "{err}"
    );
    assert!(err.contains("uploaded ") && err.contains(&format!("verified {vol}")), "{err}");
    assert!(std::fs::read(&in_pool).expect("read volume") == original, "not repaired");

    // A different image (another digest) becomes a second volume beside the first.
    let other = image(7);
    let o = upload_cli(&other.path, &["--libvirt-uri", &d.uri, "--pool", POOL, "--libvirt-verify", "-q"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(o.stderr.is_empty(), "--quiet: {}", text(&o.stderr));
    assert_eq!(d.volumes().len(), 4);
    let p2 = d.path("pool").join(format!("{}.qcow2", other.info.name));
    assert!(std::fs::read(p2).expect("read") == std::fs::read(&other.path).expect("read"));
}

#[test]
fn missing_or_stopped_pool_is_exit_2() {
    let Some(d) = Daemon::start() else { return };
    let img = image(1);
    let out = upload_cli(&img.path, &["--libvirt-uri", &d.uri, "--pool", "nosuchpool"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("storage pool \"nosuchpool\" not found") && err.contains(&d.uri), "{err}");

    let stopped = d.path("stopped");
    std::fs::create_dir(&stopped).expect("mkdir");
    d.ok(&["pool-define-as", "stopped", "dir", "--target", stopped.to_str().expect("utf-8")]);
    let out = upload_cli(&img.path, &["--libvirt-uri", &d.uri, "--pool", "stopped"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is inactive, not running"), "{}", text(&out.stderr));
    // Nothing was created anywhere.
    assert!(d.volumes().is_empty());
}

#[test]
fn unreachable_uri_is_exit_1_naming_it() {
    if tools().is_none() {
        return;
    }
    let img = image(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = format!("qemu+unix:///system?socket={}/nothing-listens-here", dir.path().display());
    // From the environment, as LIBVIRT_DEFAULT_URI users set it.
    let out = common::bin()
        .args(["upload", "--target", "libvirt"])
        .arg(&img.path)
        .env("LIBVIRT_DEFAULT_URI", &uri)
        .output()
        .expect("imgbuild");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("cannot connect to libvirt at {uri}")), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");

    // No virsh at all: exit 1 with the install hint.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = common::bin()
        .args(["upload", "--target", "libvirt"])
        .arg(&img.path)
        .env("PATH", empty.path())
        .env("IMGBUILD_SBIN_DIRS", empty.path())
        .output()
        .expect("imgbuild");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("apt-get install -y libvirt-clients"), "{}", text(&out.stderr));
}

/// A FIFO standing in for the image file, so the test decides when the stream stops.
fn fifo(dir: &Path) -> PathBuf {
    let p = dir.join("image.fifo");
    let c = std::ffi::CString::new(p.to_str().expect("utf-8")).expect("cstring");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    p
}

/// Feed `bytes[..cut]` into the FIFO, call `mid` (e.g. kill the daemon), then the rest
/// unless `truncate` (then the writer just closes: a stream that ends early).
fn feed_fifo(
    p: PathBuf,
    bytes: Vec<u8>,
    cut: usize,
    truncate: bool,
    mid: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).expect("open fifo");
        f.write_all(&bytes[..cut]).expect("first part");
        mid();
        if !truncate {
            // The reader may be gone by now (the upload failed): EPIPE is expected.
            let _ = f.write_all(&bytes[cut..]);
        }
    })
}

#[test]
fn interrupted_uploads_leave_no_broken_volume() {
    let Some(mut d) = Daemon::start() else { return };
    let img = image(3);
    let bytes = std::fs::read(&img.path).expect("read");
    let tmp = tempfile::tempdir().expect("tempdir");
    let quiet = Reporter::plain(true);

    // 1. The stream ends half-way (the file shrank under us): exit class 3, volume deleted.
    let f = fifo(tmp.path());
    let info = ImageInfo { path: f.clone(), ..img.info.clone() };
    let w = feed_fifo(f.clone(), bytes.clone(), bytes.len() / 2, true, || {});
    let e = libvirt::upload(&info, &d.args(POOL), &quiet).expect_err("a truncated stream must fail");
    w.join().expect("writer");
    assert_eq!(e.code(), Code::Integrity, "{e}");
    assert!(e.to_string().contains(&format!("ended after {} of {}", bytes.len() / 2, bytes.len())), "{e}");
    assert!(d.volumes().is_empty(), "left behind: {:?}", d.volumes());
    assert_eq!(std::fs::read_dir(d.path("pool")).expect("ls").count(), 0);

    // 2. Every byte arrives but they are not the verified ones: exit class 3, volume deleted.
    let forged = ImageInfo { sha256: "0".repeat(64), ..img.info.clone() };
    let e = libvirt::upload(&forged, &d.args(POOL), &quiet).expect_err("a digest mismatch must fail");
    assert_eq!(e.code(), Code::Integrity, "{e}");
    assert!(e.to_string().contains(&format!("hash to {}", img.info.sha256)), "{e}");
    assert!(d.volumes().is_empty(), "left behind: {:?}", d.volumes());

    // 3. The daemon dies mid-upload: exit class 1 naming the URI. The partial volume cannot be
    //    deleted then, but it has no completion marker, so the next upload replaces it.
    let pid = d.child.as_ref().map(|c| c.id()).expect("daemon pid");
    let w = feed_fifo(f.clone(), bytes.clone(), bytes.len() / 2, false, move || {
        // SAFETY: killing the daemon this test started, by pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let e = libvirt::upload(&info, &d.args(POOL), &quiet).expect_err("a dead daemon must fail the upload");
    w.join().expect("writer");
    eprintln!("daemon killed mid-upload: {e}");
    assert_eq!(e.code(), Code::Runtime, "{e}");
    assert!(e.to_string().contains(&d.uri), "{e}");
    d.kill();
    d.spawn();
    let vol = format!("{}.qcow2", img.info.name);
    assert_eq!(d.volumes(), std::slice::from_ref(&vol), "the partial volume, without a marker");
    assert!(std::fs::read(d.path("pool").join(&vol)).expect("read") != bytes);

    let out = upload_cli(&img.path, &["--libvirt-uri", &d.uri, "--pool", POOL]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("replacing volume {vol} in pool {POOL}: incomplete")), "{err}");
    assert!(err.contains("uploaded "), "{err}");
    assert!(std::fs::read(d.path("pool").join(&vol)).expect("read") == bytes);
    assert_eq!(d.volumes(), [vol.clone(), format!("{vol}.sha256")]);
}

#[test]
fn ova_is_refused_before_connecting() {
    let img = image_info_only("ova");
    let e = libvirt::upload(&img, &args("qemu+unix:///system?socket=/nonexistent"), &Reporter::plain(true))
        .expect_err("ova");
    assert_eq!(e.code(), Code::Input, "{e}");
}

fn image_info_only(format: &str) -> ImageInfo {
    ImageInfo {
        path: PathBuf::from("/nonexistent/x"),
        format: format.into(),
        size: 1,
        sha256: "0".repeat(64),
        name: "k8s-worker-amd64-000000000000".into(),
        recipe: "k8s".into(),
        role: "worker".into(),
        arch: "amd64".into(),
        k8s_version: "v1.30.3".into(),
        imgbuild_version: "0.1.0".into(),
    }
}

fn args(uri: &str) -> LibvirtOptions {
    LibvirtOptions { libvirt_uri: uri.into(), libvirt_pool: "default".into(), libvirt_verify: false }
}
