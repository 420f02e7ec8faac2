// include_dir! embeds image-files/ and image-recipes/ but cannot tell cargo to
// rebuild when they change (stable Rust); this build script does.
fn main() {
    println!("cargo:rerun-if-changed=image-files");
    println!("cargo:rerun-if-changed=image-recipes");
}
