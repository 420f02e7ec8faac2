//! The shared test world's builder: what it makes from the real default recipe is what the
//! recipe's install entries, `imgbuild --mirror` and apt expect.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild_testkit::mirror::{self, Packages};
use imgbuild_testkit::standin::{self, Standin};
use imgbuild_testkit::{archive, cache, oci, sha256_file, sha256_hex};
use serde_yaml::Value;

fn default_recipe() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Whether `tool` is on PATH: when it is not, a failure under `CI` (ci/test.sh installs
/// every tool), a loud skip elsewhere.
fn tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(tool).is_file())
        })
        .unwrap_or(false);
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{tool} is required in CI");
        eprintln!("SKIPPED: required tool `{tool}` not found on PATH; this check did not run");
    }
    found
}

/// (path, mode, bytes) of every regular file of a tar.gz.
fn members(tgz: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        out.insert(path, (mode, b));
    }
    out
}

#[test]
fn every_download_of_the_default_recipe_gets_a_stand_in_shaped_as_its_install_entries_read_it() {
    let recipe = default_recipe();
    let mut seen = 0;
    for art in recipe["artifacts"].as_sequence().unwrap() {
        if art["urls"].is_null() {
            continue;
        }
        seen += 1;
        let name = art["name"].as_str().unwrap();
        let packed = standin::pack(art, "amd64", &Standin::PerName).unwrap();
        assert_eq!(
            packed,
            standin::pack(art, "amd64", &Standin::PerName).unwrap(),
            "{name}: not deterministic"
        );
        let want = standin::members(art, "amd64").unwrap();
        let url = art["urls"][0].as_str().unwrap();
        if !want.is_empty() {
            let got = members(&packed);
            for m in &want {
                let base = m.rsplit('/').next().unwrap();
                let (mode, bytes) = got.get(m).unwrap_or_else(|| panic!("{name}: no member {m} in {got:?}"));
                assert_eq!(*mode, 0o755, "{name}: {m}");
                assert_eq!(bytes, &Standin::PerName.bytes(base), "{name}: {m}");
            }
        } else if url.ends_with(".tgz") || url.ends_with(".tar.gz") {
            let got = members(&packed);
            let chart = std::str::from_utf8(&got[&format!("{name}/Chart.yaml")].1).unwrap().to_string();
            assert!(chart.contains(&format!("name: {name}\n")), "{chart}");
            assert!(chart.starts_with("apiVersion: v2\n"), "{chart}");
        } else {
            assert_eq!(packed, Standin::PerName.bytes(name));
        }
    }
    assert!(seen >= 10, "only {seen} downloads in the default recipe?");
    // A glob entry picks the members the real tarball has under that pattern.
    let cni = recipe["artifacts"].as_sequence().unwrap().iter().find(|a| a["name"] == "cni-plugins").unwrap();
    assert_eq!(standin::members(cni, "amd64").unwrap(), ["bridge", "host-local", "loopback", "portmap"]);
    let etcd = recipe["artifacts"].as_sequence().unwrap().iter().find(|a| a["name"] == "etcd").unwrap();
    assert_eq!(
        standin::members(etcd, "amd64").unwrap(),
        ["etcd-v3.5.12-linux-amd64/etcdctl", "etcd-v3.5.12-linux-amd64/etcdutl"]
    );
}

#[test]
fn references_split_like_the_distribution_grammar() {
    use mirror::split_ref;
    let s =
        |a: &str, b: Option<&str>, c: Option<&str>| (a.to_string(), b.map(String::from), c.map(String::from));
    assert_eq!(split_ref("registry.k8s.io/pause:3.9"), s("registry.k8s.io/pause", Some("3.9"), None));
    assert_eq!(split_ref("localhost:5000/a/b"), s("localhost:5000/a/b", None, None));
    assert_eq!(split_ref("quay.io/c/d:v1@sha256:ab"), s("quay.io/c/d", Some("v1"), Some("sha256:ab")));
    assert_eq!(split_ref("quay.io/c/d@sha256:ab"), s("quay.io/c/d", None, Some("sha256:ab")));
    assert!(standin::glob_match("bin/*", "bin/ctr"));
    assert!(standin::glob_match("*", "bridge"));
    assert!(!standin::glob_match("bin/*", "ctr"));
    assert!(standin::glob_match("etcd-?3", "etcd-v3"));
}

/// The boot test's shape: the archive's packages, real files for some artifacts, images
/// kept for a registry, every digest pinned to what the mirror serves.
#[test]
fn the_mirror_serves_every_url_and_the_test_recipe_pins_what_it_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = d.join("base.qcow2");
    std::fs::write(&base, b"a base image").unwrap();
    let runc = d.join("runc");
    std::fs::write(&runc, b"a real runc").unwrap();
    // An archive dir as `write_archive` leaves it (its content is apt's business here).
    let adir = d.join("archive");
    std::fs::create_dir_all(adir.join("www/dists")).unwrap();
    std::fs::write(
        adir.join("versions"),
        "conntrack=1:1.4.7-1+b2\nebtables=2.0.11-5\nethtool=1:6.1-1\nipset=7.17-1\nsocat=1.7.4.4-2\n",
    )
    .unwrap();
    std::fs::write(adir.join("fingerprint"), "0123456789ABCDEF0123456789ABCDEF01234567\n").unwrap();
    std::fs::write(adir.join("key.asc"), "-----BEGIN PGP PUBLIC KEY BLOCK-----\n").unwrap();
    let out = d.join("out");
    let opts = mirror::Options {
        standin: Standin::Script(b"#!/bin/sh\nexit 0\n".to_vec()),
        real: [("runc".to_string(), runc.clone())].into(),
        packages: Packages::Archive {
            dir: adir.clone(),
            suite: "bookworm".into(),
            component: "main".into(),
            extra: vec!["ipset".into()],
        },
        image_blobs: out.join("images/blobs"),
        images_json: Some(out.join("images/images.json")),
        keep_recipe_images: true,
        busybox: Some(b"a static busybox".to_vec()),
        keep_disk_size: true,
        only_arch: true,
    };
    let m = mirror::make(&default_recipe(), &base, &opts, &out).unwrap();
    let written: Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("test-recipe.yaml")).unwrap()).unwrap();
    assert_eq!(written, m.recipe);
    let r = &m.recipe;
    assert_eq!(r["arches"], serde_yaml::from_str::<Value>("[amd64]").unwrap());
    assert!(r["disk_size"].is_string());

    // Every URL of the base and the artifacts: a file at www/<host>/<path> with the pinned digest.
    let mut items: Vec<&Value> = vec![&r["base"]];
    items.extend(r["artifacts"].as_sequence().unwrap().iter().filter(|a| !a["urls"].is_null()));
    let hosts = std::fs::read_to_string(out.join("hosts.txt")).unwrap();
    for it in items {
        let sha = it["sha256"].as_mapping().unwrap();
        assert_eq!(sha.len(), 1, "{sha:?}: only the test arch is pinned");
        let pinned = sha["amd64"].as_str().unwrap();
        for u in it["urls"].as_sequence().unwrap() {
            let url = standin::render(u.as_str().unwrap(), it, "amd64");
            let (scheme_host, path) = url.split_at(url[8..].find('/').unwrap() + 8);
            assert!(hosts.lines().any(|h| h == scheme_host), "{scheme_host} not in hosts.txt");
            let file = m.www.join(&scheme_host["https://".len()..]).join(path.trim_start_matches('/'));
            assert_eq!(sha256_file(&file).unwrap(), pinned, "{url}");
        }
        if it["urls"][0].as_str().unwrap().starts_with("https://dl.k8s.io/") {
            assert_eq!(it["signature"], "none");
        }
    }
    assert_eq!(m.blobs["runc"].sha256, sha256_hex(b"a real runc"));
    assert_eq!(m.blobs["base"].sha256, sha256_hex(b"a base image"));

    // Packages: the recipe's names pinned to the archive's versions, plus the extra one.
    let p = &r["packages"];
    assert_eq!(p["archive"]["amd64"], mirror::ARCHIVE_URL);
    assert_eq!(p["fingerprint"], "0123456789ABCDEF0123456789ABCDEF01234567");
    let install: Vec<&str> =
        p["install"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(
        install,
        ["conntrack=1:1.4.7-1+b2", "socat=1.7.4.4-2", "ebtables=2.0.11-5", "ethtool=1:6.1-1", "ipset=7.17-1"]
    );
    assert!(out.join("boot-archive-key.asc").is_file());
    assert_eq!(
        std::fs::read_link(m.www.join("archive.imgbuild-test.invalid/debian")).unwrap(),
        std::path::absolute(adir.join("www")).unwrap()
    );

    // Images: every reference a test image; pinned ones pin the test image's index digest,
    // tags stay tags; every document and blob is in the store, listed in images.json.
    let listing: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("images/images.json")).unwrap()).unwrap();
    let tops = r["images"].as_sequence().unwrap().len();
    let addon_refs: Vec<&str> = r["addons"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|a| a["images"].as_sequence().unwrap().iter().map(|i| i.as_str().unwrap()))
        .collect();
    // The charts `lock` pins from a repository (the profiles'): unpinned in the test recipe,
    // a stand-in package in the repository's index.yaml, or a chart in the registry listing.
    let unpinned: Vec<&Value> =
        r["artifacts"].as_sequence().unwrap().iter().filter(|a| a["urls"].is_null()).collect();
    assert_eq!(unpinned.len(), 6, "one chart per profile");
    let mut oci_charts = 0;
    for a in &unpinned {
        let (name, version) = (a["name"].as_str().unwrap(), a["version"].as_str().unwrap());
        let repo = a["chart"]["repo"].as_str().unwrap();
        assert!(a["sha256"].is_null(), "{name}: left to the lock");
        let blob = &m.blobs[name];
        assert_eq!(sha256_file(&blob.path).unwrap(), blob.sha256);
        if let Some(path) = repo.strip_prefix("oci://") {
            oci_charts += 1;
            let e = m.images.iter().find(|e| e.repo == format!("{path}/{name}")).unwrap();
            assert_eq!(e.tag.as_deref(), Some(version));
            let man: serde_json::Value = serde_json::from_slice(&e.image.top).unwrap();
            assert_eq!(man["config"]["mediaType"], oci::HELM_CONFIG);
            assert_eq!(man["layers"][0]["mediaType"], oci::HELM_CHART_LAYER);
            assert_eq!(man["layers"][0]["digest"], format!("sha256:{}", blob.sha256));
            assert!(regs_has(&out, path.split('/').next().unwrap()));
            continue;
        }
        let host_path = repo.split_once("://").unwrap().1;
        let index: Value =
            serde_yaml::from_str(&std::fs::read_to_string(m.www.join(host_path).join("index.yaml")).unwrap())
                .unwrap();
        let entry = &index["entries"][name][0];
        assert_eq!(
            (entry["version"].as_str(), entry["digest"].as_str()),
            (Some(version), Some(blob.sha256.as_str()))
        );
        let file = m.www.join(host_path).join(entry["urls"][0].as_str().unwrap());
        assert_eq!(sha256_file(&file).unwrap(), blob.sha256, "{name}: the index's URL serves the package");
        assert!(hosts.lines().any(|h| repo.starts_with(h)), "{repo} not in hosts.txt");
    }
    assert_eq!(listing.len(), tops + addon_refs.len() + oci_charts);
    assert_eq!(m.images.len(), listing.len());
    for r in &addon_refs {
        let (repo, tag, digest) = mirror::split_ref(r);
        let e = m.images.iter().find(|e| e.repo == mirror::registry_repo(&repo) && e.tag == tag).unwrap();
        assert_eq!(digest.as_deref(), Some(e.image.digest().as_str()), "{r}");
    }
    for e in m.images.iter().filter(|e| e.image.top_media_type != oci::OCI_MANIFEST) {
        let hex = e.image.digest()["sha256:".len()..].to_string();
        assert_eq!(sha256_file(&out.join("images/blobs").join(&hex)).unwrap(), hex);
        for b in &e.image.blobs {
            assert!(out.join("images/blobs").join(sha256_hex(b)).is_file());
        }
        // amd64 runs busybox; both arches name the image.
        assert_eq!(e.image.manifests.len(), 2);
    }
    let regs = std::fs::read_to_string(out.join("registries.txt")).unwrap();
    assert!(regs.lines().any(|l| l == "registry.k8s.io"), "{regs}");
    assert!(regs.lines().any(|l| l == "quay.io"), "{regs}");
}

#[test]
fn a_recipe_section_without_a_stand_in_is_refused() {
    let mut r = default_recipe();
    r["something_new"] = "x".into();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("b");
    std::fs::write(&base, b"b").unwrap();
    let opts = mirror::Options {
        standin: Standin::PerName,
        real: BTreeMap::new(),
        packages: Packages::Remove,
        image_blobs: tmp.path().join("blobs"),
        images_json: None,
        keep_recipe_images: false,
        busybox: None,
        keep_disk_size: false,
        only_arch: false,
    };
    let e = mirror::make(&r, &base, &opts, &tmp.path().join("out")).err().unwrap();
    assert!(e.to_string().contains("something_new"), "{e}");
}

#[test]
fn the_cache_key_follows_the_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("list");
    std::fs::write(&f, "a\n").unwrap();
    let k1 = cache::key(&[&f]).unwrap();
    assert_eq!(k1, cache::key(&[&f]).unwrap());
    std::fs::write(&f, "b\n").unwrap();
    assert_ne!(k1, cache::key(&[&f]).unwrap());
    assert_eq!(cache::SOURCE_HASH.len(), 64);
}

/// The archive writer's output is accepted by the real apt: `apt-get update` verifies
/// InRelease with the archive's key (signed-by) and the index digests it lists, `apt-get
/// download` the .deb's SHA256 from the index.
#[test]
fn real_apt_get_accepts_the_archive() {
    if !["gpg", "gpg-agent", "dpkg-deb", "xz", "apt-get"].into_iter().all(tool) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let root = d.join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: hello-testkit\nVersion: 1:1.2-3\nArchitecture: amd64\nSource: libhello (1.2-3)\n\
         Maintainer: Test <t@test.invalid>\nDescription: a test package\n",
    )
    .unwrap();
    std::fs::write(root.join("usr/bin/hello-testkit"), "#!/bin/sh\necho hello\n").unwrap();
    let deb = d.join("hello.deb");
    let o = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gpg = archive::Gpg::new(&d.join("gnupg")).unwrap();
    let fpr = gpg.gen("testkit <testkit@test.invalid>", "rsa2048", "sign").unwrap();
    let spec = archive::Spec {
        origin: "imgbuild-testkit".into(),
        suite: "bookworm".into(),
        version: Some("12".into()),
        component: "main".into(),
        arch: "amd64".into(),
        description: "TEST ONLY".into(),
    };
    let a =
        archive::write_archive(&d.join("archive"), std::slice::from_ref(&deb), &spec, &gpg, &fpr).unwrap();
    assert_eq!(a.pool["hello-testkit"], "pool/main/libh/libhello/hello-testkit_1.2-3_amd64.deb");
    assert_eq!(a.versions["hello-testkit"], "1:1.2-3");

    // An apt of its own: every state, cache and source dir below `d`.
    let apt = d.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "etc/preferences.d", "etc/sources.list.d", "dl"] {
        std::fs::create_dir_all(apt.join(sub)).unwrap();
    }
    std::fs::write(apt.join("status"), "").unwrap();
    std::fs::write(
        apt.join("etc/sources.list"),
        format!(
            "deb [arch=amd64 signed-by={}] file:{} bookworm main\n",
            d.join("archive/key.asc").display(),
            a.www.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let o = Command::new("apt-get")
            .current_dir(apt.join("dl"))
            .args(["-o", &format!("Dir::Etc={}", apt.join("etc").display())])
            .args(["-o", &format!("Dir::State::Lists={}", apt.join("lists").display())])
            .args(["-o", &format!("Dir::State::status={}", apt.join("status").display())])
            .args(["-o", &format!("Dir::Cache={}", apt.join("cache").display())])
            .args([
                "-o",
                "APT::Architecture=amd64",
                "-o",
                "APT::Sandbox::User=root",
                "-o",
                "Debug::NoLocking=1",
            ])
            .args(args)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "apt-get {args:?}: {text}");
        text
    };
    let update = run(&["update"]);
    assert!(
        !update.contains("NO_PUBKEY") && !update.contains("not signed") && !update.contains("W:"),
        "{update}"
    );
    run(&["download", "hello-testkit"]);
    // apt names it with the epoch escaped: hello-testkit_1%3a1.2-3_amd64.deb
    let got = std::fs::read(apt.join("dl/hello-testkit_1%3a1.2-3_amd64.deb")).unwrap();
    assert_eq!(got, std::fs::read(&deb).unwrap());
}

fn regs_has(out: &Path, host: &str) -> bool {
    std::fs::read_to_string(out.join("registries.txt")).unwrap().lines().any(|l| l == host)
}
