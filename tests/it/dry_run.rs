//! `imgbuild build --dry-run`: the complete build plan, printed before anything is
//! downloaded or written. Snapshots (insta, `tests/it/snapshots/`) pin the JSON for both
//! roles of the embedded recipe; a change fails (locally with a `.snap.new` beside the
//! snapshot to review, docs/testing.md).

use crate::common;

use std::path::Path;
use std::process::Output;

fn run(cwd: &Path, args: &[&str]) -> Output {
    let o = common::bin().current_dir(cwd).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// In an empty directory: no lock file next to the embedded recipe (its packages are
/// resolved at build time), relative paths in the plan, nothing written.
#[test]
fn dry_run_json_is_the_whole_plan() {
    let d = tempfile::tempdir().unwrap();
    let worker = run(d.path(), &["build", "--dry-run", "--json", "--role", "worker", "--arch", "amd64"]);
    insta::assert_snapshot!("dry_run_worker_amd64", stdout(&worker));
    let cp = run(
        d.path(),
        &[
            "build",
            "--dry-run",
            "--json",
            "--role",
            "control-plane",
            "--arch",
            "arm64",
            "--format",
            "vmdk",
            "--disk-size",
            "20G",
            "--output",
            "images",
            "--cosign-trust-root",
            "fulcio.pem",
        ],
    );
    insta::assert_snapshot!("dry_run_control_plane_arm64_vmdk", stdout(&cp));
    assert!(std::fs::read_dir(d.path()).unwrap().next().is_none(), "a dry run writes nothing");
}

/// The human form says the same, one fact a line and a block per download; `recipe show`
/// prints the same plan for the default options.
#[test]
fn dry_run_text_and_recipe_show_agree() {
    let d = tempfile::tempdir().unwrap();
    let text = stdout(&run(d.path(), &["build", "--dry-run", "--role", "worker"]));
    for want in [
        "recipe   ubuntu-24.04-k8s-v1.30.3 (embedded:ubuntu-24.04-k8s-v1.30.3)",
        "target   worker amd64 kubernetes v1.30.3",
        "output   out/ubuntu-24.04-k8s-v1.30.3-worker-amd64.qcow2 (disk size: 20G)",
        "image    registry.k8s.io/pause:3.9 (no lock entry: resolved when building",
        "packages conntrack=",
        "no lock file ubuntu-24.04-k8s-v1.30.3.yaml.lock",
        "signatures cosign krel-staging@k8s-releng-prod.iam.gserviceaccount.com (https://accounts.google.com) \
         for https://dl.k8s.io/, trust root embedded Sigstore public-good Fulcio root",
        "\nkubelet v1.30.3\n  kind   artifact\n",
        "  url    https://dl.k8s.io/release/v1.30.3/bin/linux/amd64/kubelet\n",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    assert_eq!(text, stdout(&run(d.path(), &["recipe", "show", "--role", "worker"])));
    let json = stdout(&run(d.path(), &["recipe", "show", "--json"]));
    assert_eq!(json, stdout(&run(d.path(), &["build", "--dry-run", "--json"])));
}

/// Plan errors are input errors, before any tool or download is needed.
#[test]
fn dry_run_checks_what_the_build_would_refuse() {
    let d = tempfile::tempdir().unwrap();
    let o = common::bin()
        .current_dir(d.path())
        .args(["build", "--dry-run", "--disk-size", "8X"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid disk size \"8X\""));
}

/// A worker built with a profile carries that profile's images (its node agents run on
/// every node) and no other profile's; without a profile, none.
#[test]
fn a_profiles_images_come_with_the_profile_on_a_worker_too() {
    let d = tempfile::tempdir().unwrap();
    let images = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["build", "--dry-run", "--json", "--role", "worker", "--arch", "amd64"];
        args.extend_from_slice(extra);
        let plan: serde_json::Value = serde_json::from_str(&stdout(&run(d.path(), &args))).unwrap();
        plan["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["reference"].as_str().unwrap().to_string())
            .collect()
    };
    let core = images(&[]);
    let with = images(&["--profile", "logging", "--profile", "cinder"]);
    assert!(core.iter().all(|i| with.contains(i)), "{with:?}");
    let added: Vec<&String> = with.iter().filter(|i| !core.contains(i)).collect();
    assert!(added.iter().any(|i| i.contains("/otel/opentelemetry-collector-k8s:0.99.0")), "{added:?}");
    assert!(added.iter().any(|i| i.contains("/provider-os/cinder-csi-plugin:v1.30.3")), "{added:?}");
    assert!(!with.iter().any(|i| i.contains("node-exporter") || i.contains("argocd")), "{with:?}");
    assert!(!core.iter().any(|i| i.contains("opentelemetry") || i.contains("cinder")), "{core:?}");
}
