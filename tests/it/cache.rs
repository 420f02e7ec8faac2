//! `imgbuild cache list|prune` on temp caches: the real binary, a real build before and
//! after a prune, and real `flock`s held by this process standing in for a running build
//! (or prune).

use crate::common::{self, fixture, stderr};

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use imgbuild::plan::{BuildPlan, PlanOptions};
use imgbuild::types::{Arch, Profile, Role, Sha256};

fn cache(args: &[&str], dir: &Path) -> Output {
    common::bin()
        .arg("cache")
        .args(args)
        .arg("--cache-dir")
        .arg(dir)
        .env("PATH", fixture::path_with_sbin())
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    common::ok(o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", common::text(o)))
}

/// Every file under `dir` with its size and mtime, for "nothing changed".
fn tree(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    fn walk(d: &Path, out: &mut Vec<(PathBuf, u64, std::time::SystemTime)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                walk(&p, out);
            } else {
                out.push((p.clone(), m.len(), m.modified().unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// The digests under `sha256/`.
fn blobs(cache: &Path) -> BTreeSet<String> {
    std::fs::read_dir(cache.join("sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A cache dir that does not exist is an empty cache, and looking at it does not create
/// it; an empty one lists nothing; an unreadable part is exit 1 naming its path; a bad
/// recipe is exit 2 before anything is touched.
#[test]
fn list_of_a_missing_or_empty_cache_and_its_errors() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("none");
    for args in [&["list", "--json"][..], &["prune", "--all", "--json"]] {
        let v = json(&cache(args, &missing));
        let entries = v.get("entries").or(v.get("removed")).unwrap();
        assert_eq!(entries.as_array().map(Vec::len), Some(0), "{v}");
        assert!(!missing.exists(), "{args:?} created the cache dir");
    }
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let v = json(&cache(&["list", "--json"], &empty));
    assert_eq!(v["entries"], serde_json::json!([]));
    assert_eq!(v["totals"]["blobs"], 0);
    assert_eq!(v["totals"]["bytes"], 0);
    assert_eq!(v["cache"], empty.display().to_string());
    let text = cache(&["list"], &empty);
    common::ok(&text);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("total: 0 blobs"), "{}", common::text(&text));

    // `cosign` is a file where a directory belongs: reading it fails, naming it.
    std::fs::write(empty.join("cosign"), b"").unwrap();
    let o = cache(&["list"], &empty);
    common::exits_with(&o, 1, &empty.join("cosign").display().to_string());
    std::fs::remove_file(empty.join("cosign")).unwrap();

    let bad = d.path().join("bad.yaml");
    std::fs::write(&bad, "name: [\n").unwrap();
    let before = tree(&empty);
    let o = cache(&["prune", "--recipe", bad.to_str().unwrap()], &empty);
    common::exits_with(&o, 2, "bad.yaml");
    assert_eq!(tree(&empty), before);
    let o = cache(&["prune", "--all", "--recipe", bad.to_str().unwrap()], &empty);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Build with recipe A, then with recipe B (the same with a new base pin); prune for B
/// keeps exactly B's downloads (and the members of its archives), sweeps A's base and a
/// half-written member dir; `--dry-run` before it removes nothing and reports the same.
/// Then B builds offline to the same bytes, and A offline fails naming its base.
#[test]
fn prune_keeps_exactly_what_the_new_pin_needs() {
    let fx = fixture::noble_fixture();
    let out = |n: &str| fx.dir.path().join(n).display().to_string();
    let (a1, b1, b2, a2) = (out("a1"), out("b1"), out("b2"), out("a2"));
    common::ok(&fixture::build(&fx, "worker", &["--output", &a1]));
    // B: the server now serves B's base where A's was.
    let base_b_dir = fx.dir.path().join("base-b");
    std::fs::create_dir_all(&base_b_dir).unwrap();
    let spec = fixture::BaseSpec { extra: vec![("etc/motd".into(), b"B\n".to_vec())], ..Default::default() };
    let base_b = fixture::make_base(&base_b_dir, &spec);
    let recipe_b = fx.recipe_with_base(&base_b.qcow2);
    let (rb, ra) = (recipe_b.to_str().unwrap(), fx.recipe.to_str().unwrap());
    common::ok(&fixture::build(&fx, "worker", &["--recipe", rb, "--output", &b1]));
    let base_a = fx.blobs["base"].sha256.clone();
    let base_b_sha = fixture::sha256_file(&base_b.qcow2);

    // list: every blob with its digest, size and what its stamp says.
    let v = json(&cache(&["list", "--json"], &fx.cache));
    let entries = v["entries"].as_array().unwrap();
    let entry = |sha: &str| entries.iter().find(|e| e["kind"] == "blob" && e["sha256"] == sha).cloned();
    let a = entry(&base_a).expect("A's base is listed");
    assert!(a["what"].as_str().unwrap().starts_with("base ubuntu-24.04"), "{a}");
    assert_eq!(a["size"], std::fs::metadata(&fx.base.qcow2).unwrap().len());
    assert!(entry(&base_b_sha).is_some());
    let kubelet = entry(&fx.blobs["kubelet"].sha256).unwrap();
    assert_eq!(kubelet["what"], "artifact kubelet v1.30.3", "{kubelet}");
    // Members are named by their archive's index: none listed is outside it.
    let members: Vec<_> = entries.iter().filter(|e| e["kind"] == "member").collect();
    assert!(
        !members.is_empty()
            && members.iter().all(|m| !m["what"].as_str().unwrap().contains("not in its index"))
    );
    let count = |k: &str| entries.iter().filter(|e| e["kind"] == k).count();
    assert_eq!(v["totals"]["blobs"], count("blob"));
    assert_eq!(v["totals"]["members"], count("member"));
    assert_eq!(
        v["totals"]["blob_bytes"],
        entries.iter().filter(|e| e["kind"] == "blob").map(|e| e["size"].as_u64().unwrap()).sum::<u64>()
    );
    for e in entries {
        for k in ["kind", "sha256", "archive", "size", "what", "path"] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
    }

    // The table: a header, one row per entry, the totals.
    let text = cache(&["list"], &fx.cache);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let row = text.lines().find(|l| l.contains(fx.blobs["kubelet"].sha256.as_str())).unwrap_or_default();
    assert!(row.starts_with("blob ") && row.ends_with("  artifact kubelet v1.30.3"), "{text}");
    assert!(text.starts_with("KIND ") && text.lines().last().unwrap().starts_with("total: "), "{text}");

    // Debris of an interrupted build: a member dir with a member but no index, and a
    // staging temp file beside a kept archive's members.
    let half = fx.cache.join("members").join(Sha256::of(b"some archive").as_str());
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join(Sha256::of(b"m").as_str()), b"m").unwrap();
    let kept_archive = members[0]["archive"].as_str().unwrap();
    let staging = fx.cache.join("members").join(kept_archive).join(".tmpAbCdEf");
    std::fs::write(&staging, b"half a member").unwrap();

    let before = tree(&fx.cache);
    let before_blobs = blobs(&fx.cache);
    let dry = json(&cache(&["prune", "--recipe", rb, "--dry-run", "--json"], &fx.cache));
    // Nothing is removed or changed (reading the image documents may stamp the ones a
    // test copied in without a stamp, as any build would).
    let after = tree(&fx.cache);
    let changed: Vec<_> = before.iter().filter(|f| !after.contains(f)).collect();
    assert!(changed.is_empty(), "--dry-run removed or changed {changed:?}");
    assert_eq!(dry["dry_run"], true);
    let pruned = json(&cache(&["prune", "--recipe", rb, "--json"], &fx.cache));
    let paths = |v: &serde_json::Value| -> Vec<String> {
        v["removed"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(paths(&dry), paths(&pruned), "the dry run reports what the prune removes");
    assert_eq!(pruned["freed"], dry["freed"]);
    let removed = paths(&pruned);
    assert!(removed.contains(&fx.cache.join("sha256").join(&base_a).display().to_string()));
    assert!(!half.exists() && !staging.exists(), "the half-written member dir and the temp file are swept");

    // Exactly B's downloads stay: the plan of every build B can make (both roles, both
    // arches: the test images are two-arch; each profile, where the lock pins its charts:
    // workers carry the profiles' node images), resolved as a build resolves them.
    let lr = imgbuild::recipe::load(Some(&recipe_b)).unwrap();
    let mut want = BTreeSet::new();
    let profiles = std::iter::once(None).chain(Profile::ALL.map(Some));
    for (profile, role, arch) in
        profiles.flat_map(|p| Role::ALL.into_iter().flat_map(move |r| Arch::ALL.map(move |a| (p, r, a))))
    {
        let o = PlanOptions {
            recipe_path: Some(recipe_b.clone()),
            profiles: profile.into_iter().collect(),
            ..PlanOptions::new(role, arch)
        };
        let Ok(mut plan) = BuildPlan::resolve(&lr, &o) else {
            assert!(profile.is_some() && role == Role::ControlPlane, "{role} {arch} {profile:?}");
            continue;
        };
        fx.resolve_images(&mut plan);
        want.extend(plan.items().map(|i| i.sha256.to_string()));
    }
    let kept = blobs(&fx.cache);
    let want: BTreeSet<String> = want.intersection(&before_blobs).cloned().collect();
    assert_eq!(
        kept.difference(&want).count() + want.difference(&kept).count(),
        0,
        "kept but not needed: {:?}; \
         needed but removed: {:?}",
        kept.difference(&want).collect::<Vec<_>>(),
        want.difference(&kept).collect::<Vec<_>>()
    );
    assert!(kept.contains(&base_b_sha) && !kept.contains(&base_a));
    // The kept archive's members are all still named by its index.
    let v = json(&cache(&["list", "--json"], &fx.cache));
    let left = v["entries"].as_array().unwrap();
    assert!(left.iter().filter(|e| e["kind"] == "member").count() > 0);
    assert!(left.iter().all(|e| e["kind"] != "unknown"), "{v}");
    assert!(left.iter().all(|e| e["kind"] != "member" || kept.contains(e["archive"].as_str().unwrap())));
    let again = json(&cache(&["prune", "--recipe", rb, "--json"], &fx.cache));
    assert_eq!(again["removed"], serde_json::json!([]), "a second prune has nothing to do");

    // B builds offline from what is left, to the same bytes; A cannot, and says why.
    common::ok(&fixture::build(&fx, "worker", &["--recipe", rb, "--offline", "--output", &b2]));
    let image = "ubuntu-24.04-k8s-v1.30.3-worker-amd64.qcow2";
    assert_eq!(
        fixture::sha256_file(&Path::new(&b1).join(image)),
        fixture::sha256_file(&Path::new(&b2).join(image)),
        "B's offline build after the prune is bit-identical"
    );
    let o = fixture::build(&fx, "worker", &["--recipe", ra, "--offline", "--output", &a2]);
    common::exits_with(&o, 1, "--offline");
    assert!(stderr(&o).contains("ubuntu-24.04"), "names the missing base: {}", stderr(&o));
}

/// Spawn `cmd`, wait until its stderr says `needle` (a line at a time, so a silent hang
/// fails the test), and return it still running with the rest of its stderr.
fn spawn_until(cmd: &mut Command, needle: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains(needle) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("no {needle:?} on stderr: {e}");
            }
        }
    }
    (child, rx)
}

/// Wait for `child` (bounded), its exit code.
fn finish(mut child: std::process::Child) -> Option<i32> {
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("still running after 60 s");
}

/// While a build holds the cache (its shared lock, held here by this process), prune says
/// so and waits, then runs once the build is done; `--no-wait` refuses at once. While a
/// prune holds it, a fetch says so and waits.
#[test]
fn prune_waits_for_builds_and_builds_for_a_prune() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cache");
    let c = imgbuild::cache::Cache::open(Some(&dir)).unwrap();
    let sha = Sha256::of(b"old");
    c.put(&sha, b"old", "artifact old v0").unwrap();
    drop(c);
    let lock = || {
        std::fs::OpenOptions::new().read(true).write(true).open(dir.join(imgbuild::cache::USE_LOCK)).unwrap()
    };

    let build = lock();
    build.lock_shared().unwrap();
    let o = cache(&["prune", "--all", "--no-wait"], &dir);
    common::exits_with(&o, 1, "in use by");
    assert!(dir.join("sha256").join(sha.as_str()).exists());
    let mut cmd = common::bin();
    cmd.args(["cache", "prune", "--all", "--cache-dir"]).arg(&dir);
    let (child, _) = spawn_until(&mut cmd, "waiting for it to finish");
    std::thread::sleep(Duration::from_millis(300));
    assert!(dir.join("sha256").join(sha.as_str()).exists(), "prune removed a blob while a build ran");
    drop(build);
    assert_eq!(finish(child), Some(0));
    assert!(!dir.join("sha256").join(sha.as_str()).exists());

    let prune = lock();
    prune.lock().unwrap();
    let recipe = d.path().join("r.yaml");
    std::fs::write(&recipe, common::without_images(imgbuild::recipe::load(None).unwrap().text.as_str()))
        .unwrap();
    let mut cmd = common::bin();
    cmd.args(["fetch", "--offline", "--recipe"]).arg(&recipe).arg("--cache-dir").arg(&dir);
    let (mut child, _) = spawn_until(&mut cmd, "in use by `imgbuild cache prune`");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "fetch went on while a prune held the cache");
    drop(prune);
    // It goes on once the prune is done (and fails: the cache is empty, it is offline).
    assert_eq!(finish(child), Some(1));
}

/// A cache this user may read but not write (a shared cache another account fills, a
/// read-only volume) still serves an offline build: the cache lock is then held on a
/// read-only descriptor. Root can write anywhere, so the build runs as `nobody`.
#[test]
fn a_cache_this_user_cannot_write_serves_an_offline_build() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test needs root to run a build as nobody"
        );
        eprintln!("SKIPPED: not root, cannot run a build as another user");
        return;
    }
    let fx = fixture::noble_fixture();
    let first = fx.dir.path().join("first");
    common::ok(&fixture::build(&fx, "worker", &["--output", first.to_str().unwrap()]));
    // nobody may not reach the binary where cargo built it (a checkout under /root).
    let exe = fx.dir.path().join("imgbuild");
    std::fs::copy(env!("CARGO_BIN_EXE_imgbuild"), &exe).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new(&exe);
        c.env_clear()
            .env("PATH", fixture::path_with_sbin())
            .env("HOME", fx.dir.path().join("nobody"))
            .env("TMPDIR", fx.dir.path().join("nobody"))
            .args(args)
            .uid(65534)
            .gid(65534);
        c.output().unwrap()
    };
    // Readable by everyone, writable by root only.
    let status = Command::new("chmod").arg("-R").arg("a+rX,go-w").arg(fx.dir.path()).status().unwrap();
    assert!(status.success());
    let home = fx.dir.path().join("nobody");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = home.join("out");
    let mut args = vec!["build", "--role", "worker", "--offline", "--output", out.to_str().unwrap()];
    let source = fx.source_args();
    args.extend(source.iter().map(String::as_str));
    let o = as_nobody(&args);
    common::ok(&o);
    let image = "ubuntu-24.04-k8s-v1.30.3-worker-amd64.qcow2";
    assert_eq!(fixture::sha256_file(&first.join(image)), fixture::sha256_file(&out.join(image)));
    // The same user cannot prune it, and says which file it could not open.
    let o = as_nobody(&["cache", "prune", "--all", "--cache-dir", fx.cache.to_str().unwrap()]);
    common::exits_with(&o, 1, "cache.lock");
}
