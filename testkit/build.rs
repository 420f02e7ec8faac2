//! IMGBUILD_TESTKIT_SOURCE_HASH: the sha256 of this crate's sources, part of every boot-test
//! cache key (src/cache.rs), so a changed builder never reuses what an older one built.
use sha2::{Digest as _, Sha256};
use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src/").flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let mut files = vec![Path::new("Cargo.toml").to_path_buf(), Path::new("build.rs").to_path_buf()];
    walk(Path::new("src"), &mut files);
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(f).expect("a source file"));
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rustc-env=IMGBUILD_TESTKIT_SOURCE_HASH={}", hex::encode(h.finalize()));
}
