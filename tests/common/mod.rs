//! Shared test support. Each integration test file does `mod common;`.
#![allow(dead_code)]

pub mod fixture;
pub mod hostile;
pub mod http;
pub mod registry;

/// The imgbuild binary under test.
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.env_remove("IMGBUILD_CACHE_DIR").env_remove("IMGBUILD_MIRROR");
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

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write a `#cloud-config`'s `write_files` under `root` (path, permissions, content), as
/// cloud-init would on the node: the root a bootstrap script runs against.
pub fn write_files_to(user_data: &str, root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let doc: serde_yaml::Value = serde_yaml::from_str(user_data).unwrap();
    for f in doc["write_files"].as_sequence().unwrap() {
        let p = root.join(f["path"].as_str().unwrap().trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f["content"].as_str().unwrap()).unwrap();
        let mode = u32::from_str_radix(f["permissions"].as_str().unwrap(), 8).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}
