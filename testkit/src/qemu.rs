//! qemu-img as the reference reader of the images imgbuild writes (and, through [`convert`] and [`run`],
//! qemu's own writer for images to compare with): one set of calls for the writers' unit
//! tests (through `imgbuild::disk::qemu::testing`) and the integration tests. These are test assertions: each panics with qemu-img's output when qemu-img
//! refuses the image. Whether qemu-img is installed is the caller's question (the unit
//! tests skip loudly outside CI; the integration fixture needs it anyway).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn qemu_img(args: &str, paths: &[&Path]) -> Output {
    let mut c = Command::new("qemu-img");
    c.args(args.split_whitespace()).args(paths).env("LC_ALL", "C");
    c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"))
}

/// Run `qemu-img ARGS PATHS…` (`args` split at spaces, the paths after them), which must
/// succeed, e.g. qemu's own writer making a reference image to compare with; its output.
pub fn run(args: &str, paths: &[&Path]) -> Output {
    let o = qemu_img(args, paths);
    assert!(o.status.success(), "qemu-img {args} {paths:?}: {}", text(&o));
    o
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `qemu-img check -f fmt` of `p` finds no errors; its report. vpc (VHD) is a format
/// qemu-img has no check for: it must say so (exit 63), which is all there is to assert.
pub fn check(p: &Path, fmt: &str) -> String {
    let o = qemu_img(&format!("check -f {fmt}"), &[p]);
    let report = text(&o);
    if fmt == "vpc" {
        assert!(
            o.status.success() || (o.status.code() == Some(63) && report.contains("does not support checks")),
            "qemu-img check -f vpc {}: {report}",
            p.display()
        );
    } else {
        assert!(
            o.status.success() && report.contains("No errors were found"),
            "qemu-img check -f {fmt} {}: {report}",
            p.display()
        );
    }
    report
}

/// `qemu-img info --output=json` of `p`, in the format given or (`None`) the one
/// qemu-img probes.
pub fn info(p: &Path, fmt: Option<&str>) -> serde_json::Value {
    let o = run(&format!("info --output=json {}", fmt_flag(fmt)), &[p]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("qemu-img info {}: {e}", p.display()))
}

/// `qemu-img map --output=json` of `p` (format `fmt`, or probed with `None`): the
/// extents of the guest disk and where they lie in the file.
pub fn map(p: &Path, fmt: Option<&str>) -> serde_json::Value {
    let o = run(&format!("map --output=json {}", fmt_flag(fmt)), &[p]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("qemu-img map {}: {e}", p.display()))
}

/// `qemu-img compare`: `a` (format `fa`) and `b` (format `fb`) hold the same guest bytes
/// (exit 0, which qemu-img reports as "Images are identical").
pub fn same_guest(a: &Path, fa: &str, b: &Path, fb: &str) {
    let o = run(&format!("compare -f {fa} -F {fb}"), &[a, b]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Images are identical"),
        "qemu-img compare {} {}: {}",
        a.display(),
        b.display(),
        text(&o)
    );
}

/// `qemu-img convert` of `img` (format `fmt`, or probed with `None`) to `out` in format
/// `out_fmt`, `opts` (e.g. `-c -o compression_type=zstd`, or "") going to qemu's writer;
/// returns `out`.
pub fn convert(img: &Path, fmt: Option<&str>, out_fmt: &str, opts: &str, out: PathBuf) -> PathBuf {
    run(&format!("convert {} -O {out_fmt} {opts}", fmt_flag(fmt)), &[img, &out]);
    out
}

/// `qemu-img convert -O raw` of `img` (format `fmt`, or probed with `None`) to the raw
/// file `raw`; returns `raw`.
pub fn to_raw(img: &Path, fmt: Option<&str>, raw: PathBuf) -> PathBuf {
    convert(img, fmt, "raw", "", raw)
}

/// `-f FMT`, or nothing to let qemu-img probe the format.
fn fmt_flag(fmt: Option<&str>) -> String {
    fmt.map(|f| format!("-f {f}")).unwrap_or_default()
}

/// The guest bytes qemu-img reads from `p` in format `fmt` (converted to raw beside it).
pub fn guest_bytes(p: &Path, fmt: &str) -> Vec<u8> {
    let raw = to_raw(p, Some(fmt), p.with_extension("guest.raw"));
    let b = std::fs::read(&raw).unwrap_or_else(|e| panic!("reading {}: {e}", raw.display()));
    let _ = std::fs::remove_file(&raw);
    b
}
