//! Charts pinned from a Helm repository: `imgbuild lock` resolves a recipe's chart name and
//! version against the repository's index.yaml (served on loopback, shaped like the
//! upstream indexes: relative and absolute URLs, `digest:` per version) into the lock; the
//! plan takes URL and digest from there, and the download is verified like any other. A
//! chart published in an OCI registry (`oci://`) is pinned from its manifest in a real registry.

use crate::common;

use std::path::Path;

use crate::common::http::Server;
use imgbuild::plan::{BuildPlan, PlanOptions};
use imgbuild::types::{Arch, Role, Sha256};

/// A real chart package (the embedded backend chart renamed) and its sha256.
fn chart_tgz(name: &str, version: &str) -> (Vec<u8>, Sha256) {
    let mut files = std::collections::BTreeMap::new();
    files.insert(
        "Chart.yaml".to_string(),
        format!("apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: v0.0.30\n").into_bytes(),
    );
    files.insert("values.yaml".to_string(), b"replicas: 1\n".to_vec());
    let bytes = imgbuild::chart::package::package_files(name, files, 0).unwrap().bytes;
    let sha = Sha256::of(&bytes);
    (bytes, sha)
}

/// index.yaml as `helm repo index` writes it (fields of the cilium and metrics-server
/// indexes in shared/reference/addons.md): one chart, several versions, one without digest.
fn index(name: &str, sha: &Sha256, absolute: Option<&str>) -> String {
    let url = absolute.map(str::to_string).unwrap_or_else(|| format!("{name}-0.0.30.tgz"));
    format!(
        "apiVersion: v1\nentries:\n  {name}:\n  - annotations:\n      artifacthub.io/license: Apache-2.0\n    \
         apiVersion: v2\n    appVersion: v0.0.30\n    created: \"2024-11-06T10:23:45.123456789Z\"\n    \
         description: Use HostPath for persistent local storage with Kubernetes\n    \
         digest: {sha}\n    home: https://github.com/rancher/local-path-provisioner\n    \
         name: {name}\n    type: application\n    urls:\n    - {url}\n    version: 0.0.30\n  \
         - apiVersion: v2\n    appVersion: v0.0.29\n    created: \"2024-08-01T00:00:00Z\"\n    \
         name: {name}\n    urls:\n    - {name}-0.0.29.tgz\n    version: 0.0.29\n\
         generated: \"2024-11-06T10:23:45.987654321Z\"\n"
    )
}

/// The default recipe without `packages:` plus a chart artifact pinned by the lock.
fn recipe(dir: &Path, repo: &str, extra: &str) -> std::path::PathBuf {
    let text = imgbuild::recipe::load(None).unwrap().text;
    let text = &text[..text.find("\npackages:\n").unwrap()];
    let text = text.replace(
        "\n# Installed by imgbuild-addons.service",
        &format!(
            "\n  - name: local-path-provisioner\n    version: 0.0.30\n    roles: [control-plane]\n    \
             chart:\n      repo: {repo}\n{extra}    install:\n      - to: /usr/share/imgbuild/addons/{{name}}-{{version}}.tgz\n        \
             mode: \"0644\"\n\n# Installed by imgbuild-addons.service"
        ),
    );
    // Container images need a registry (tests/oci_*.rs run a real one): as in the build
    // fixture, the add-on images become test images pinned by digest whose documents sit in
    // the cache `lock` is given (see `lock`), and the node images are left out.
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    v.as_mapping_mut().unwrap().remove("images");
    common::fixture::seed_addon_images(&mut v, &dir.join("cache"));
    let p = dir.join("recipe.yaml");
    std::fs::write(&p, serde_yaml::to_string(&v).unwrap()).unwrap();
    p
}

fn lock(recipe: &Path) -> std::process::Output {
    let cache = recipe.parent().unwrap().join("cache");
    common::bin()
        .args(["lock", "--json", "--recipe"])
        .arg(recipe)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap()
}

#[test]
fn lock_pins_a_chart_from_the_repository_index_and_the_build_verifies_it() {
    let srv = Server::start();
    let (tgz, sha) = chart_tgz("local-path-provisioner", "0.0.30");
    srv.add_bytes("/charts/index.yaml", index("local-path-provisioner", &sha, None).into_bytes());
    srv.add_bytes("/charts/local-path-provisioner-0.0.30.tgz", tgz.clone());
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), &srv.url("/charts"), "");

    // Not pinned yet: the plan says what to run, and nothing is downloaded.
    let o = common::bin()
        .args(["recipe", "show", "--role", "control-plane", "--recipe"])
        .arg(&r)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    let err = common::stderr(&o);
    assert!(
        err.contains("chart local-path-provisioner 0.0.30") && err.contains("run `imgbuild lock`"),
        "{err}"
    );

    let o = lock(&r);
    common::ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lock_file = std::path::PathBuf::from(v["lock"].as_str().unwrap());
    let l: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&lock_file).unwrap()).unwrap();
    let c = &l["charts"][0];
    assert_eq!(c["name"], "local-path-provisioner");
    assert_eq!(c["version"], "0.0.30");
    assert_eq!(c["url"], srv.url("/charts/local-path-provisioner-0.0.30.tgz"));
    assert_eq!(c["sha256"], sha.as_str());
    assert_eq!(srv.hits("/charts/local-path-provisioner-0.0.30.tgz"), 0, "lock reads the index only");

    // The plan takes URL and digest from the lock; worker plans do not carry the chart.
    let lr = imgbuild::recipe::load(Some(&r)).unwrap();
    let o = PlanOptions { recipe_path: Some(r.clone()), ..PlanOptions::new(Role::ControlPlane, Arch::Amd64) };
    let plan = BuildPlan::resolve(&lr, &o).unwrap();
    let item = plan.artifacts.iter().find(|i| i.name == "local-path-provisioner").unwrap();
    assert_eq!(item.urls, [srv.url("/charts/local-path-provisioner-0.0.30.tgz")]);
    assert_eq!(item.sha256, sha);
    assert_eq!(item.install[0].to, "/usr/share/imgbuild/addons/local-path-provisioner-0.0.30.tgz");
    let wo = PlanOptions { recipe_path: Some(r.clone()), ..PlanOptions::new(Role::Worker, Arch::Amd64) };
    assert!(BuildPlan::resolve(&lr, &wo)
        .unwrap()
        .artifacts
        .iter()
        .all(|i| i.name != "local-path-provisioner"));

    // The download is verified against the pinned digest: good bytes land in the cache,
    // bytes the repository swapped afterwards are refused (exit 3).
    let cache = imgbuild::cache::Cache::open(Some(&d.path().join("cache"))).unwrap();
    let rep = imgbuild::reporter::Reporter::new(true);
    let opts = imgbuild::fetch::FetchOptions { offline: false, mirrors: Vec::new(), jobs: 1 };
    let got = imgbuild::fetch::fetch(&[item], &cache, &opts, &rep).unwrap();
    assert_eq!(std::fs::read(got.get(item).unwrap()).unwrap(), tgz);
    let mut swapped = tgz.clone();
    let n = swapped.len();
    swapped[n - 5] ^= 0xff;
    srv.add_bytes("/charts/local-path-provisioner-0.0.30.tgz", swapped);
    let cache2 = imgbuild::cache::Cache::open(Some(&d.path().join("cache2"))).unwrap();
    let e = imgbuild::fetch::fetch(&[item], &cache2, &opts, &rep).unwrap_err();
    assert_eq!(imgbuild::cmd::code_for(&e), imgbuild::exit::Code::Integrity);
}

#[test]
fn absolute_entry_urls_and_inline_digests_that_disagree() {
    let srv = Server::start();
    let (tgz, sha) = chart_tgz("local-path-provisioner", "0.0.30");
    let abs = srv.url("/releases/download/v0.0.30/local-path-provisioner-0.0.30.tgz");
    srv.add_bytes("/repo/index.yaml", index("local-path-provisioner", &sha, Some(&abs)).into_bytes());
    srv.add_bytes("/releases/download/v0.0.30/local-path-provisioner-0.0.30.tgz", tgz);
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), &srv.url("/repo/"), "");
    let o = lock(&r);
    common::ok(&o);
    let lock_file = d.path().join("recipe.yaml.lock");
    let l: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&lock_file).unwrap()).unwrap();
    assert_eq!(l["charts"][0]["url"], abs);

    // A digest written into the recipe as well must be the index's: else integrity, exit 3.
    let wrong = "0000000000000000000000000000000000000000000000000000000000000000";
    let d2 = tempfile::tempdir().unwrap();
    let extra = format!("    urls: [{abs}]\n    sha256:\n      amd64: {wrong}\n      arm64: {wrong}\n");
    let r = recipe(d2.path(), &srv.url("/repo"), &extra);
    let o = lock(&r);
    common::exits_with(&o, 3, "is not the digest");
    assert!(!d2.path().join("recipe.yaml.lock").exists());
}

#[test]
fn what_cannot_be_pinned_is_bad_input_naming_the_chart() {
    let srv = Server::start();
    let (_, sha) = chart_tgz("local-path-provisioner", "0.0.30");
    srv.add_bytes("/charts/index.yaml", index("local-path-provisioner", &sha, None).into_bytes());
    let d = tempfile::tempdir().unwrap();
    // 0.0.29 is listed without a digest; 9.9.9 not at all; a repository without an index.
    for (version, repo, want) in [
        ("0.0.29", srv.url("/charts"), "has no digest"),
        ("9.9.9", srv.url("/charts"), "has no version \"9.9.9\""),
        ("0.0.30", srv.url("/nothing"), "not found"),
    ] {
        let r = recipe(d.path(), &repo, "").to_path_buf();
        let mut v: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
        for a in v["artifacts"].as_sequence_mut().unwrap() {
            if a["name"] == "local-path-provisioner" {
                a["version"] = version.into();
            }
        }
        std::fs::write(&r, serde_yaml::to_string(&v).unwrap()).unwrap();
        let o = lock(&r);
        assert_eq!(o.status.code(), Some(2), "{version}: {}", common::stderr(&o));
        assert!(common::stderr(&o).contains(want), "{version}: {}", common::stderr(&o));
    }
}

/// Push `tgz` as `helm push` does: the chart's metadata as config, the `.tgz` as the one
/// layer, tagged `version`; returns the layer's digest and the config's digest and size.
fn push_chart(
    reg: &common::registry::Registry,
    name: &str,
    version: &str,
    tgz: &[u8],
) -> (String, String, usize) {
    let layer = reg.push_blob(name, tgz);
    let config = format!(r#"{{"apiVersion":"v2","name":"{name}","version":"{version}"}}"#);
    let config_digest = reg.push_blob(name, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": common::registry::OCI_MANIFEST,
        "config": {"mediaType": imgbuild::chart::repo::HELM_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": imgbuild::chart::repo::HELM_CHART_LAYER, "digest": layer, "size": tgz.len()}],
    });
    reg.push_manifest(name, version, common::registry::OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    (layer, config_digest, config.len())
}

/// A chart published only as an OCI artifact (`helm push`, like proxmox-csi-plugin on
/// ghcr.io): `oci://REGISTRY/PATH` in the recipe; `lock` resolves `PATH/<name>:<version>`
/// through a REAL registry (token flow) to the digest of its chart layer, and the
/// download of that blob (token, redirect to storage) is verified against it.
#[test]
fn lock_pins_an_oci_chart_from_its_manifest_and_the_download_is_verified() {
    use common::registry::{Registry, OCI_MANIFEST};
    let Some(reg) = Registry::start() else { return };
    let (tgz, sha) = chart_tgz("local-path-provisioner", "0.0.30");
    let name = "charts/local-path-provisioner";
    let (layer, config_digest, config_len) = push_chart(&reg, name, "0.0.30", &tgz);
    // An image, not a chart, under another tag.
    let not_chart = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": tgz.len()}],
    });
    reg.push_manifest(name, "0.0.29", OCI_MANIFEST, &serde_json::to_vec(&not_chart).unwrap());

    let mirror = reg.mirror_for("registry.test");
    let lock_oci = |r: &Path| {
        let cache = r.parent().unwrap().join("cache");
        common::bin()
            .args(["lock", "--json", "--recipe"])
            .arg(r)
            .arg("--cache-dir")
            .arg(cache)
            .args(["--mirror", &mirror])
            .output()
            .unwrap()
    };
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), "oci://registry.test/charts", "");
    common::ok(&lock_oci(&r));
    let l: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("recipe.yaml.lock")).unwrap()).unwrap();
    let c = &l["charts"][0];
    assert_eq!(c["repo"], "oci://registry.test/charts");
    assert_eq!(c["url"], format!("https://registry.test/v2/{name}/blobs/sha256:{sha}"));
    assert_eq!(c["sha256"], sha.as_str());

    let lr = imgbuild::recipe::load(Some(&r)).unwrap();
    let o = PlanOptions { recipe_path: Some(r.clone()), ..PlanOptions::new(Role::ControlPlane, Arch::Amd64) };
    let plan = BuildPlan::resolve(&lr, &o).unwrap();
    let item = plan.artifacts.iter().find(|i| i.name == "local-path-provisioner").unwrap();
    let cache = imgbuild::cache::Cache::open(Some(&d.path().join("cache"))).unwrap();
    let rep = imgbuild::reporter::Reporter::new(true);
    let mirrors = imgbuild::net::Mirror::parse_all([mirror.as_str()]).unwrap();
    let opts = imgbuild::fetch::FetchOptions { offline: false, mirrors, jobs: 1 };
    let got = imgbuild::fetch::fetch(&[item], &cache, &opts, &rep).unwrap();
    assert_eq!(std::fs::read(got.get(item).unwrap()).unwrap(), tgz);
    // Storage that serves other bytes for the blob: integrity, nothing kept.
    let mut swapped = tgz.clone();
    let n = swapped.len();
    swapped[n - 5] ^= 0xff;
    std::fs::write(reg.blob_file(&layer), swapped).unwrap();
    let cache2 = imgbuild::cache::Cache::open(Some(&d.path().join("cache2"))).unwrap();
    let e = imgbuild::fetch::fetch(&[item], &cache2, &opts, &rep).unwrap_err();
    assert_eq!(imgbuild::cmd::code_for(&e), imgbuild::exit::Code::Integrity);

    // A version the registry does not have, and a tag that is an image: bad input naming it.
    for (version, want) in [("9.9.9", "does not exist"), ("0.0.29", "not a Helm chart")] {
        let d = tempfile::tempdir().unwrap();
        let r = recipe(d.path(), "oci://registry.test/charts", "");
        let text =
            std::fs::read_to_string(&r).unwrap().replace("version: 0.0.30", &format!("version: {version}"));
        std::fs::write(&r, text).unwrap();
        let o = lock_oci(&r);
        assert_eq!(o.status.code(), Some(2), "{version}: {}", common::stderr(&o));
        assert!(common::stderr(&o).contains(want), "{version}: {}", common::stderr(&o));
        assert!(common::stderr(&o).contains("local-path-provisioner"), "{}", common::stderr(&o));
    }
}

/// The embedded recipe's proxmox profile: `lock --profile proxmox` pins
/// proxmox-csi-plugin 0.2.5 from oci://ghcr.io/sergelogvinov/charts (here a real registry
/// behind `--mirror`), and the control-plane plan with the profile then installs it as
/// release proxmox-csi in csi-proxmox.
#[test]
fn lock_pins_the_proxmox_profile_chart_from_its_oci_registry() {
    let Some(reg) = common::registry::Registry::start() else { return };
    let (tgz, sha) = chart_tgz("proxmox-csi-plugin", "0.2.5");
    push_chart(&reg, "sergelogvinov/charts/proxmox-csi-plugin", "0.2.5", &tgz);
    let d = tempfile::tempdir().unwrap();
    let text = imgbuild::recipe::load(None).unwrap().text;
    let mut v: serde_yaml::Value =
        serde_yaml::from_str(&text[..text.find("\npackages:\n").unwrap()]).unwrap();
    v.as_mapping_mut().unwrap().remove("images");
    common::fixture::seed_addon_images(&mut v, &d.path().join("cache"));
    let r = d.path().join("recipe.yaml");
    std::fs::write(&r, serde_yaml::to_string(&v).unwrap()).unwrap();
    let o = common::bin()
        .args(["lock", "--recipe"])
        .arg(&r)
        .arg("--cache-dir")
        .arg(d.path().join("cache"))
        .args(["--profile", "proxmox", "--mirror", &reg.mirror_for("ghcr.io")])
        .output()
        .unwrap();
    common::ok(&o);
    let lr = imgbuild::recipe::load(Some(&r)).unwrap();
    let o = PlanOptions {
        recipe_path: Some(r.clone()),
        profiles: vec![imgbuild::types::Profile::Proxmox],
        ..PlanOptions::new(Role::ControlPlane, Arch::Amd64)
    };
    let plan = BuildPlan::resolve(&lr, &o).unwrap();
    let item = plan.artifacts.iter().find(|i| i.name == "proxmox-csi-plugin").unwrap();
    assert_eq!(item.sha256, sha);
    assert_eq!(
        item.urls,
        [format!("https://ghcr.io/v2/sergelogvinov/charts/proxmox-csi-plugin/blobs/sha256:{sha}")]
    );
    let a = plan.addons.iter().find(|a| a.release == "proxmox-csi").unwrap();
    assert_eq!((a.namespace.as_str(), a.profile), ("csi-proxmox", Some(imgbuild::types::Profile::Proxmox)));
}

/// The test world serves every profile chart the way its repository does (testkit: a
/// stand-in package listed in the repository's index.yaml; proxmox-csi-plugin pushed to a
/// REAL registry as `helm push` stores it): `lock --profile` pins each to the stand-in's
/// digest through `--mirror`, exactly as it pins the real ones, and the control-plane plan
/// with the profiles carries them. This is the path ci/boot-test.sh takes.
#[test]
fn lock_pins_every_profile_chart_from_the_test_worlds_repositories() {
    let fx = common::fixture::noble_fixture();
    let Some(reg) = common::registry::Registry::start() else { return };
    let mut pushed = 0;
    for e in fx.images.iter().filter(|e| e.image.top_media_type == common::registry::OCI_MANIFEST) {
        let config =
            serde_json::from_slice::<serde_json::Value>(&e.image.top).unwrap()["config"]["mediaType"].clone();
        if config != imgbuild::chart::repo::HELM_CONFIG {
            continue;
        }
        let (_, path) = e.repo.split_once('/').unwrap();
        reg.push_image(path, e.tag.as_deref().unwrap(), &e.image);
        pushed += 1;
    }
    assert_eq!(pushed, 1, "the test world publishes proxmox-csi-plugin in a registry");
    let mut cmd = common::bin();
    cmd.args(["lock", "--json"]).args(fx.source_args()).args(["--mirror", &reg.mirror_for("ghcr.io")]);
    for p in imgbuild::types::Profile::ALL {
        cmd.args(["--profile", p.as_str()]);
    }
    common::ok(&cmd.output().unwrap());
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.recipe.with_extension("yaml.lock")).unwrap())
            .unwrap();
    let charts = lock["charts"].as_array().unwrap();
    let unpinned: Vec<&serde_yaml::Value> =
        fx.recipe_value["artifacts"].as_sequence().unwrap().iter().filter(|a| a["urls"].is_null()).collect();
    assert_eq!(charts.len(), unpinned.len(), "{charts:#?}");
    assert_eq!(unpinned.len(), 6, "one chart per profile");
    for a in unpinned {
        let (name, version, repo) = (
            a["name"].as_str().unwrap(),
            a["version"].as_str().unwrap(),
            a["chart"]["repo"].as_str().unwrap(),
        );
        let c = charts.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} not in the lock"));
        let sha = &fx.blobs[name].sha256;
        assert_eq!(c["sha256"], sha.as_str(), "{name}");
        assert_eq!(c["version"], version, "{name}");
        let want = match repo.strip_prefix("oci://") {
            Some(p) => {
                let (host, path) = p.split_once('/').unwrap();
                format!("https://{host}/v2/{path}/{name}/blobs/sha256:{sha}")
            }
            None => format!("{repo}/{name}-{version}.tgz"),
        };
        assert_eq!(c["url"], want, "{name}");
    }
    let lr = imgbuild::recipe::load(Some(&fx.recipe)).unwrap();
    let o = PlanOptions {
        recipe_path: Some(fx.recipe.clone()),
        profiles: imgbuild::types::Profile::ALL.to_vec(),
        ..PlanOptions::new(Role::ControlPlane, Arch::Amd64)
    };
    let plan = BuildPlan::resolve(&lr, &o).unwrap();
    for c in charts {
        let item = plan.artifacts.iter().find(|i| c["name"] == i.name.as_str()).unwrap();
        assert_eq!(item.sha256.as_str(), c["sha256"].as_str().unwrap());
    }
}
