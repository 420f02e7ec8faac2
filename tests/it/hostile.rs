//! Hostile and clumsy inputs, each one a defect that once crashed, hung or
//! succeeded wrongly: they must now end with a clear error and the right exit code
//! (2 for a bad input), within a time limit, leaving nothing behind.
use crate::common::{self, stderr};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::fixture::{self, sh, Fixture};
use crate::common::hostile;

use crate::common::run_limited;

fn imgbuild() -> Command {
    let mut c = common::bin();
    c.env("PATH", fixture::path_with_sbin());
    c
}

/// A copy of the fixture's raw base, edited by `edit`, as raw and as qcow2.
fn edited_base(fx: &Fixture, name: &str, edit: impl Fn(&Path)) -> (PathBuf, PathBuf) {
    let raw = fx.dir.path().join(format!("{name}.raw"));
    std::fs::copy(&fx.base.raw, &raw).unwrap();
    edit(&raw);
    let qcow2 = imgbuild_testkit::qemu::convert(
        &raw,
        Some("raw"),
        "qcow2",
        "",
        fx.dir.path().join(format!("{name}.qcow2")),
    );
    (raw, qcow2)
}

/// `imgbuild build` with `base` pinned and served; returns its output. Both the
/// fast path (qcow2 output) and the raw working copy path (raw output) run.
fn build_with_base(fx: &Fixture, base: &Path, format: &str) -> Output {
    build_recipe(fx, &fx.recipe_with_base(base), format)
}

/// `imgbuild build --format FORMAT` of `recipe` into `<fixture>/out-FORMAT`; a failed
/// build must leave that directory empty.
fn build_recipe(fx: &Fixture, recipe: &Path, format: &str) -> Output {
    let out = fx.dir.path().join(format!("out-{format}"));
    let o = run_limited(
        imgbuild()
            .args(["build", "--format", format, "--recipe", recipe.to_str().unwrap()])
            .args(["--cache-dir", fx.cache.to_str().unwrap(), "--output", out.to_str().unwrap()])
            .args(fx.mirrors.iter().flat_map(|m| ["--mirror", m.as_str()])),
        Duration::from_secs(120),
    );
    if o.status.code() != Some(0) {
        let left: Vec<_> =
            std::fs::read_dir(&out).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "a failed build left {left:?}");
    }
    o
}

fn assert_refused(o: &Output, what: &str, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(o));
    assert!(stderr(o).contains(needle), "{what}: {}", stderr(o));
}

/// A base whose disk `edit` broke is refused with exit 2 naming `needle` by both build
/// paths, instead of a panic (101), an endless loop or a copy of bytes from past the
/// end of the disk; nothing is left in the output directory.
fn base_is_refused(name: &str, edit: impl Fn(&Path, &Fixture), needle: &str) {
    let fx = fixture::noble_fixture();
    let (_, qcow2) = edited_base(&fx, name, |d| edit(d, &fx));
    for format in ["qcow2", "raw"] {
        let o = build_with_base(&fx, &qcow2, format);
        assert_refused(&o, &format!("{name} ({format})"), needle);
    }
}

/// Legal per UEFI, valid CRCs, but the kernel reads only 128-byte entries (this
/// panicked inside the `gpt` crate).
#[test]
fn base_with_256_byte_gpt_entries_is_refused() {
    base_is_refused("gpt-256", |d, _| hostile::gpt_entries_of_256_bytes(d), "128-byte entries");
}

#[test]
fn base_whose_root_partition_ends_past_the_disk_is_refused() {
    base_is_refused(
        "root-past-end",
        |d, _| hostile::gpt_partition_past_end(d, 1, 1 << 20),
        "partition 1 (LBA",
    );
}

/// The inode bitmap has 8 × 4096 bits: 65536 inodes per group indexed past it (panic).
#[test]
fn base_root_with_65536_inodes_per_group_is_refused() {
    base_is_refused(
        "ipg-65536",
        |d, fx| hostile::ext4_sb_u32(d, fx.base.part(1).offset, 0x28, 65536),
        "s_inodes_per_group 65536",
    );
}

/// s_first_data_block past the block count made the group count wrap (endless loop).
#[test]
fn base_root_with_first_data_block_past_its_end_is_refused() {
    base_is_refused(
        "first-data-block",
        |d, fx| hostile::ext4_sb_u32(d, fx.base.part(1).offset, 0x14, u32::MAX - 7),
        "s_first_data_block",
    );
}

/// The checkers read images people receive: a GPT they cannot read is exit 2 from
/// `inspect`, `verify` and `lint --image`, never a panic.
#[test]
fn checkers_refuse_a_gpt_with_256_byte_entries() {
    let fx = fixture::noble_fixture();
    let (raw, qcow2) = edited_base(&fx, "gpt-256", hostile::gpt_entries_of_256_bytes);
    for img in [&raw, &qcow2] {
        let o = run_limited(imgbuild().arg("inspect").arg(img), Duration::from_secs(60));
        assert_refused(&o, "inspect", "128-byte entries");
        // verify checks the sidecar first: give it a matching one.
        let sum = format!("{}  {}\n", fixture::sha256_file(img), img.file_name().unwrap().to_string_lossy());
        std::fs::write(format!("{}.sha256", img.display()), sum).unwrap();
        let d = imgbuild::manifest::Download {
            name: "b".into(),
            version: "1".into(),
            urls: vec![],
            sha256: "0".repeat(64),
        };
        let m = imgbuild::manifest::Manifest {
            imgbuild_version: "0".into(),
            recipe: "r".into(),
            recipe_digest: "0".repeat(64),
            role: "worker".into(),
            arch: "amd64".into(),
            kubernetes_version: "v1.30.3".into(),
            inputs_digest: "0".repeat(64),
            base: d,
            artifacts: vec![],
            packages: vec![],
            images: vec![],
            files: vec![],
            signatures: vec![],
        };
        std::fs::write(img.with_extension("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let o = run_limited(imgbuild().arg("verify").arg(img), Duration::from_secs(60));
        assert_refused(&o, "verify", "128-byte entries");
    }
    let cluster = fx.dir.path().join("c");
    common::cluster_init(&cluster).external_lb().nodes(1, 1).ok();
    let o = run_limited(
        imgbuild()
            .args(["lint", "--cluster", cluster.join("cluster.yaml").to_str().unwrap(), "--image"])
            .arg(&raw),
        Duration::from_secs(60),
    );
    assert_refused(&o, "lint --image", "128-byte entries");
}

/// The embedded default recipe with `from` replaced by `to` (once; it must occur).
fn recipe_text(edits: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml");
    let mut t = std::fs::read_to_string(path).unwrap();
    for (from, to) in edits {
        assert!(t.contains(from), "{from}");
        t = t.replacen(from, to, 1);
    }
    t
}

/// `recipe show` (reads and validates the recipe, nothing else) on an edited recipe.
fn show(edits: &[(&str, &str)]) -> Output {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("r.yaml");
    std::fs::write(&p, recipe_text(edits)).unwrap();
    run_limited(imgbuild().args(["recipe", "show", "--recipe"]).arg(&p), Duration::from_secs(30))
}

/// Exit 2 naming `field` at `line` (1-based, in the edited text) and saying `needle`.
fn refused_at(o: &Output, field: &str, line: usize, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains(&format!("{field} (line {line})")), "wanted {field} (line {line}): {e}");
    assert!(e.contains(needle), "wanted {needle:?}: {e}");
}

const KUBEADM_TO: &str = "      - to: /usr/local/bin/kubeadm\n";
/// Line of kubeadm's `to:` in the default recipe.
fn kubeadm_to_line() -> usize {
    recipe_text(&[]).lines().position(|l| l == KUBEADM_TO.trim_end()).unwrap() + 1
}

/// `to: /` used to build with exit 0 and write nothing.
#[test]
fn destination_root_is_refused() {
    let o = show(&[(KUBEADM_TO, "      - to: /\n")]);
    refused_at(&o, "artifacts[0].install[0].to", kubeadm_to_line(), "root directory");
}

/// Paths imgbuild writes itself used to drop the artifact silently (the SBOM still
/// listed it).
#[test]
fn destinations_imgbuild_owns_are_refused() {
    for to in [
        "/etc/imgbuild/manifest.json",
        "/etc/imgbuild/release",
        "/usr/libexec/imgbuild/bootstrap",
        "/usr/share/imgbuild/images/index.json",
    ] {
        let o = show(&[(KUBEADM_TO, &format!("      - to: {to}\n"))]);
        refused_at(&o, "artifacts[0].install[0].to", kubeadm_to_line(), "which imgbuild itself writes");
    }
}

/// The `..` rule ran before templates were expanded; `.` and empty segments passed
/// validation and failed inside debugfs.
#[test]
fn destinations_are_checked_expanded_and_normalised() {
    let o = show(&[
        ("    version: v1.30.3\n    roles: [control-plane, worker]\n    urls:\n      - https://dl.k8s.io/release/{version}/bin/linux/{arch}/kubeadm",
         "    version: ../../etc\n    roles: [control-plane, worker]\n    urls:\n      - https://dl.k8s.io/release/v1.30.3/bin/linux/{arch}/kubeadm"),
        (KUBEADM_TO, "      - to: /usr/local/{version}/kubeadm\n"),
    ]);
    refused_at(&o, "artifacts[0].install[0].to", kubeadm_to_line(), "`..` segment");
    assert!(stderr(&o).contains("/usr/local/../../etc/kubeadm"), "{}", stderr(&o));
    for (to, needle) in [("/etc/./kubeadm", "write /etc/kubeadm"), ("//etc//kubeadm", "write /etc/kubeadm")] {
        let o = show(&[(KUBEADM_TO, &format!("      - to: {to}\n"))]);
        refused_at(&o, "artifacts[0].install[0].to", kubeadm_to_line(), needle);
    }
}

/// `sha256: {amd64: A, amd64: B}` used to pin B silently.
#[test]
fn duplicate_keys_in_a_recipe_are_refused_at_the_repeat() {
    let amd = "      amd64: bb78c2a27027278ee644d523f583ed7fdba48b4fbf31e3cfb0e309b6457dda69\n";
    let twice =
        format!("{amd}      amd64: 9a37ddd5ea026639b7d85e98fa742e392df7aa5ec917bed0711a451613de3c1c\n");
    let o = show(&[(amd, &twice)]);
    let line = recipe_text(&[]).lines().position(|l| l == amd.trim_end()).unwrap() + 2;
    refused_at(&o, "artifacts[0].sha256.amd64", line, "duplicate key \"amd64\"");
}

/// Out of ext4's range the image said 1969 while the SBOM said year 584554051223.
#[test]
fn source_date_epoch_outside_ext4_is_refused() {
    let o = show(&[("source_date_epoch: 1724198400", "source_date_epoch: 18446744073709551615")]);
    let line = recipe_text(&[]).lines().position(|l| l.starts_with("source_date_epoch:")).unwrap() + 1;
    refused_at(&o, "source_date_epoch", line, "2446-05-10");
}

/// An unclosed `{version` was reported as the unknown variable `{version}`.
#[test]
fn an_unclosed_template_brace_is_named_as_such() {
    let o = show(&[(KUBEADM_TO, "      - to: /usr/local/bin/kubeadm-{version\n")]);
    refused_at(&o, "artifacts[0].install[0].to", kubeadm_to_line(), "unclosed `{`");
    assert!(!stderr(&o).contains("unknown template variable"), "{}", stderr(&o));
}

/// setuid/setgid bits need `setid: true`; with it the recipe is accepted.
#[test]
fn setuid_modes_need_an_explicit_opt_in() {
    let o = show(&[(KUBEADM_TO, &format!("{KUBEADM_TO}        mode: \"4755\"\n"))]);
    refused_at(&o, "artifacts[0].install[0].mode", kubeadm_to_line() + 1, "setid: true");
    let o = show(&[(KUBEADM_TO, &format!("{KUBEADM_TO}        mode: \"4755\"\n        setid: true\n"))]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// cluster.yaml: a repeated key is named with its path and the line of the repeat.
#[test]
fn duplicate_keys_in_cluster_yaml_are_refused_at_the_repeat() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    let spec = common::cluster_init(&dir).external_lb().nodes(1, 1).ok();
    let text = std::fs::read_to_string(&spec).unwrap();
    let pod = text.lines().find(|l| l.trim_start().starts_with("pod_cidr:")).unwrap().to_string();
    let line = text.lines().position(|l| l == pod).unwrap() + 2;
    std::fs::write(&spec, text.replacen(&pod, &format!("{pod}\n{pod}"), 1)).unwrap();
    let out = d.path().join("seeds");
    let o = imgbuild()
        .args(["cloud-init", "--all", "--cluster"])
        .arg(&spec)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(&format!(":{line}: networking.pod_cidr: duplicate key")), "{e}");
}

/// noble has `/lib` → `usr/lib`: a `to:` through it used to fail inside debugfs with
/// "-p: Ext2 inode is not a directory", naming neither the path nor the symlink.
#[test]
fn a_destination_through_a_base_symlink_names_the_symlink() {
    let fx = fixture::noble_fixture();
    let spec = format!("{}?offset={}", fx.base.raw.display(), fx.base.part(1).offset);
    let (_, qcow2) = edited_base(&fx, "usrmerge", |d| {
        let spec = spec.replace(&fx.base.raw.display().to_string(), &d.display().to_string());
        sh(Command::new("debugfs").args(["-w", "-R", "mkdir /usr/lib"]).arg(&spec));
        sh(Command::new("debugfs").args(["-w", "-R", "symlink /lib usr/lib"]).arg(&spec));
    });
    let recipe = fx.recipe_with_base(&qcow2);
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(text.contains("to: /usr/local/bin/kubeadm"));
    std::fs::write(&recipe, text.replacen("to: /usr/local/bin/kubeadm", "to: /lib/kubeadm-tools/kubeadm", 1))
        .unwrap();
    for format in ["qcow2", "raw"] {
        let o = build_recipe(&fx, &recipe, format);
        assert_refused(
            &o,
            format,
            "/lib/kubeadm-tools/kubeadm: /lib is a symlink in the base image (-> usr/lib)",
        );
        assert!(stderr(&o).contains("install below /usr/lib instead"), "{}", stderr(&o));
    }
}

/// Tampers with a cache entry: edit(entry, a file to link it to).
type CacheEdit = fn(&Path, &Path);

/// How a cache entry is tampered with: (what, edit).
fn cache_edits() -> [(&'static str, CacheEdit); 2] {
    [
        ("edited", |entry, _| {
            let mut b = std::fs::read(entry).unwrap();
            b[0] ^= 0x20;
            std::fs::write(entry, b).unwrap();
        }),
        ("symlink", |entry, target| {
            std::fs::remove_file(entry).unwrap();
            std::os::unix::fs::symlink(target, entry).unwrap();
        }),
    ]
}

/// "A present blob is a verified blob" let an edited cache entry, or one replaced by a
/// symlink to /etc/passwd, into the image with exit 0 while the SBOM showed the pinned
/// digest. Now: exit 3 naming the entry, nothing written, the entry removed, and the
/// next run downloads it again.
#[test]
fn a_tampered_cache_entry_is_an_integrity_failure() {
    let fx = fixture::noble_fixture();
    let out = fx.dir.path().join("out");
    let build = || {
        run_limited(
            imgbuild().args(["build", "--output", out.to_str().unwrap()]).args(fx.source_args()),
            Duration::from_secs(120),
        )
    };
    let o = build();
    assert!(o.status.success(), "{}", stderr(&o));
    let blob = fx.cache.join("sha256").join(&fx.blobs["kubelet"].sha256);
    each_tampering_is_refused_then_repaired(&fx, &build, &out, &blob, &fx.blobs["kubelet"].sha256, &|_| {});
}

/// Tamper with the cache entry `entry` in each way of [`cache_edits`]: the build is exit 3
/// naming it, writes nothing into `out`, removes the entry and never its target; the next
/// build succeeds and puts back content with sha256 `sha`; `also(what)` checks more then.
fn each_tampering_is_refused_then_repaired(
    fx: &Fixture,
    build: &dyn Fn() -> Output,
    out: &Path,
    entry: &Path,
    sha: &str,
    also: &dyn Fn(&str),
) {
    let passwd = fx.dir.path().join("passwd");
    std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    for (what, edit) in cache_edits() {
        std::fs::remove_dir_all(out).unwrap();
        edit(entry, &passwd);
        let o = build();
        assert_eq!(o.status.code(), Some(3), "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("cache entry {}", entry.display())), "{what}: {}", stderr(&o));
        assert!(!out.exists() || std::fs::read_dir(out).unwrap().count() == 0, "{what}: output written");
        assert!(std::fs::symlink_metadata(entry).is_err(), "{what}: entry kept");
        assert!(passwd.exists());
        let o = build();
        assert!(o.status.success(), "{what}: the next run fetches or inflates it again: {}", stderr(&o));
        assert_eq!(fixture::sha256_file(entry), sha);
        also(what);
    }
}

/// Archive members are kept in the cache (`members/<archive sha256>/`): the first build
/// inflates them, a warm build installs them as they are (same inodes, same image). A
/// member edited or replaced by a symlink is an integrity failure like any cache entry
/// (exit 3, nothing written, the entry removed; the next run inflates it again); an
/// index that changed since it was written is derived from the archive again.
#[test]
fn archive_members_in_the_cache_are_reused_and_checked() {
    use std::os::unix::fs::MetadataExt;
    let fx = fixture::noble_fixture();
    let out = fx.dir.path().join("out");
    let build = || {
        run_limited(
            imgbuild()
                .args(["build", "--role", "control-plane", "--output", out.to_str().unwrap()])
                .args(fx.source_args()),
            Duration::from_secs(120),
        )
    };
    let image_sha = || {
        let sums = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".qcow2.sha256"))
            .unwrap();
        std::fs::read_to_string(sums).unwrap()
    };
    let dir = fx.cache.join("members").join(&fx.blobs["containerd"].sha256);
    // Every kept member (name = digest) and the index, by inode.
    let inodes = || -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".stamp"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().ino()))
            .collect();
        v.sort();
        v
    };
    let o = build();
    assert!(o.status.success(), "{}", stderr(&o));
    let first = image_sha();
    let kept = inodes();
    // The fixture's containerd archive: bin/{containerd,containerd-shim-runc-v2,ctr}.
    assert_eq!(kept.len(), 4, "three members and the index: {kept:?}");
    for (name, _) in kept.iter().filter(|(n, _)| n != "index") {
        assert_eq!(&fixture::sha256_file(&dir.join(name)), name, "a member is named by its digest");
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index")).unwrap()).unwrap();
    assert_eq!(index["archive"], fx.blobs["containerd"].sha256.as_str());
    for archive in ["etcd", "helm", "cni-plugins", "crictl"] {
        assert!(fx.cache.join("members").join(&fx.blobs[archive].sha256).join("index").exists(), "{archive}");
    }

    std::fs::remove_dir_all(&out).unwrap();
    let o = build();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(inodes(), kept, "the warm build inflated the archive again");
    assert_eq!(image_sha(), first, "the same image from cached members");

    // An index changed since it was written is derived again (and the image is the same).
    std::fs::remove_dir_all(&out).unwrap();
    let mut ix = std::fs::read(dir.join("index")).unwrap();
    ix.push(b'\n');
    std::fs::write(dir.join("index"), ix).unwrap();
    let o = build();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image_sha(), first);
    assert_ne!(inodes(), kept, "the archive was inflated again");
    let kept = inodes();

    let (name, _) = kept.iter().find(|(n, _)| n != "index").unwrap().clone();
    let member = dir.join(&name);
    each_tampering_is_refused_then_repaired(&fx, &build, &out, &member, &name, &|what| {
        assert_eq!(image_sha(), first, "{what}")
    });
}

/// The pids of running processes whose parent is `parent` and whose command is `name`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else { continue };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && comm.ends_with(&format!("({name}")) {
            out.push(pid);
        }
    }
    out
}

fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            // polled while a build creates and removes files: an entry may be gone already
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(tree(&e.path()));
            }
        }
    }
    out
}

/// SIGINT while debugfs runs used to leave its command file in $TMPDIR: commands now
/// go through a pipe, so nothing is ever there to leave.
#[test]
fn sigint_during_debugfs_leaves_nothing_in_tmpdir() {
    let fx = fixture::noble_fixture();
    let out = fx.dir.path().join("out");
    let tmpdir = fx.dir.path().join("tmpdir");
    std::fs::create_dir_all(&tmpdir).unwrap();
    // debugfs only allocates now and is over in milliseconds: a poller on a loaded
    // machine can miss it. A `debugfs` first on PATH holds the writing call for a few
    // seconds before it runs the real one, so the signal lands inside that step.
    let real = ["/usr/sbin/debugfs", "/sbin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("debugfs (e2fsprogs) is not installed");
    let bin = fx.dir.path().join("slow-debugfs");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("debugfs");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\ncase \" $* \" in *\" -w \"*) sleep 5 ;; esac\nexec {real} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = imgbuild()
        .env("PATH", format!("{}:{}", bin.display(), fixture::path_with_sbin()))
        .env("TMPDIR", &tmpdir)
        .args(["build", "--role", "control-plane", "--output", out.to_str().unwrap()])
        .args(fx.source_args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let hit = loop {
        if !children_named(child.id(), "debugfs").is_empty() {
            break true;
        }
        if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(600) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if !hit {
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        panic!("never saw debugfs running; the build ended {:?}:\n{}", o.status, stderr(&o));
    }
    sh(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_eq!(tree(&tmpdir), Vec::<PathBuf>::new(), "left in $TMPDIR");
    assert_eq!(tree(&out), Vec::<PathBuf>::new(), "left in the output dir");
}

/// After SIGKILL nothing runs: the build's temp dir (a working copy of the disk) used
/// to stay forever. The next build in that output dir removes it, because its owner's
/// lock died with the owner; the live build of a second process is left alone.
#[test]
fn the_next_build_removes_a_killed_builds_temp_dir() {
    let fx = fixture::noble_fixture();
    let out = fx.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut child = imgbuild()
        .args(["build", "--output", out.to_str().unwrap()])
        .args(fx.source_args())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let left = loop {
        let found = tree(&out).into_iter().find(|p| p.ends_with("root.partition") || p.ends_with("disk.raw"));
        if let Some(p) = found {
            break p.parent().unwrap().to_path_buf();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no working copy appeared");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(left.exists(), "SIGKILL runs no cleanup");
    // Age the marker past the grace period instead of sleeping through it.
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(left.join(".owner")).unwrap().set_modified(old).unwrap();
    let o = run_limited(
        imgbuild().args(["build", "--output", out.to_str().unwrap()]).args(fx.source_args()),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!left.exists(), "stale temp dir kept");
    assert!(stderr(&o).contains(&format!("removed {}", left.display())), "{}", stderr(&o));
    let names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().starts_with(".imgbuild-")), "{names:?}");
}

/// A file of a .tgz, by its path in the archive.
fn tgz_file(tgz: &Path, name: &str) -> Option<Vec<u8>> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(tgz).unwrap()));
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut b).unwrap();
            return Some(b);
        }
    }
    None
}

/// `chart package` used to follow a symlink out of the chart and pack a host file.
/// Like `helm package`, links are followed, but only to files inside the chart.
#[test]
fn chart_package_never_packs_a_file_outside_the_chart() {
    let d = tempfile::tempdir().unwrap();
    let chart = d.path().join("demo");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: demo\nversion: 0.1.0\n").unwrap();
    std::fs::write(chart.join("values.yaml"), "replicas: 1\n").unwrap();
    let host = d.path().join("host-secret");
    std::fs::write(&host, "password: hunter2\n").unwrap();
    let out = d.path().join("out");
    let package = || {
        run_limited(
            imgbuild().args(["chart", "package", "--out"]).arg(&out).arg(&chart),
            Duration::from_secs(30),
        )
    };
    // Inside the chart: followed, packed with the target's bytes (what Helm does).
    std::os::unix::fs::symlink("../values.yaml", chart.join("templates/values-copy.yaml")).unwrap();
    let o = package();
    assert!(o.status.success(), "{}", stderr(&o));
    let tgz = out.join("demo-0.1.0.tgz");
    assert_eq!(tgz_file(&tgz, "demo/templates/values-copy.yaml").unwrap(), b"replicas: 1\n");
    std::fs::remove_dir_all(&out).unwrap();
    // Out of the chart, directly or through a linked directory: refused, nothing written.
    for (link, target) in [("templates/leak.yaml", host.clone()), ("linked", d.path().to_path_buf())] {
        std::os::unix::fs::symlink(&target, chart.join(link)).unwrap();
        let o = package();
        assert_eq!(o.status.code(), Some(2), "{link}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("{link}: symlink to")), "{}", stderr(&o));
        assert!(stderr(&o).contains("leaves the chart directory"), "{}", stderr(&o));
        assert!(!out.join("demo-0.1.0.tgz").exists(), "{link}: packed anyway");
        std::fs::remove_file(chart.join(link)).unwrap();
    }
    // A fifo is not a chart file (Helm: "cannot load irregular file").
    sh(Command::new("mkfifo").arg(chart.join("templates/pipe")));
    let o = package();
    common::exits_with(&o, 2, "templates/pipe: not a regular file");
}

/// The recipe's `disk_size` was not checked when the recipe was read: `recipe show`
/// and `fetch` succeeded and `build` failed without file, field or line.
#[test]
fn a_bad_recipe_disk_size_is_refused_when_the_recipe_is_read() {
    let line = recipe_text(&[]).lines().position(|l| l.starts_with("disk_size:")).unwrap() + 1;
    for (size, why) in [("lots", "expected a number"), ("8X", "unknown suffix"), ("4096T", "2 PiB")] {
        let o = show(&[("\ndisk_size: 20G\n", &format!("\ndisk_size: {size}\n"))]);
        refused_at(&o, "disk_size", line, why);
    }
}
