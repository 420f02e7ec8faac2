//! The read-back of an output that cannot be hashed as it is written (an OVA, a
//! compressed qcow2), for ci/bench-readback.sh: `disk::stream::hash_file` (reading on
//! this thread, hashing on another) against reading and hashing on one thread
//! (`Sha256::of_file`, the baseline), alternately on the same file, from the page cache.
//!
//! Usage: `bench_readback FILE RUNS` prints every run and the medians.

use std::path::PathBuf;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let file = PathBuf::from(args.next().ok_or_else(|| std::io::Error::other("usage: FILE RUNS"))?);
    let runs: usize = args.next().and_then(|r| r.to_str()?.parse().ok()).unwrap_or(5).max(1);
    let len = std::fs::metadata(&file)?.len();
    // Once untimed: the file is in the page cache for every timed run, as a just-written
    // output is.
    let want = imgbuild::types::Sha256::of_file(&file)?;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let a = imgbuild::types::Sha256::of_file(&file)?;
        one.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let b = imgbuild::disk::stream::hash_file(&file)?;
        two.push(t.elapsed().as_secs_f64());
        if a != want || b != want.as_str() {
            return Err(std::io::Error::other("the two digests differ"));
        }
    }
    let show = |v: &[f64]| v.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(" ");
    println!("read-back of {} MiB:", len >> 20);
    println!("  read and hash on one thread (baseline): runs {}", show(&one));
    println!("  stream::hash_file (read | hash):        runs {}", show(&two));
    let (m1, m2) = (median(&mut one), median(&mut two));
    println!("  medians: {m1:.3} s vs {m2:.3} s; hash_file / baseline: {:.2}", m2 / m1);
    Ok(())
}
