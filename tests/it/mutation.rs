//! Mutation test over the binary parsers: many random mutations of valid inputs, each
//! built by the real binary under a timeout. A run must never panic (exit 101), hang,
//! die of a signal or exit with a code other than 0–3; a failed run leaves its output
//! directory empty and a successful one leaves exactly the four outputs; nothing is
//! written outside the output directory (`$TMPDIR`, `$HOME`, the cache and the recipe
//! directory are compared before and after).
//!
//! A mutation may leave its input valid (a byte of a reserved field, say): exit 0 with
//! a correct image is then right, so 0 is accepted; the report counts each exit code.
//!
//! Families (one per parser, see [`FAMILIES`]; a new one is a function that returns a
//! [`Case`]): the qcow2 header, its L1/L2 tables, the GPT header and entries, the root
//! ext4's superblock, group descriptors and first inodes, a tar artifact's member
//! headers, a .deb's ar/tar structure. GPT CRCs and the ext4 superblock checksum are
//! usually recomputed after mutating, so the checks behind them are reached too.
//!
//! Cases: `IMGBUILD_MUTATION_ROUNDS` rounds (default [`DEFAULT_ROUNDS`]), one case per
//! family each, from `IMGBUILD_MUTATION_SEED` (default [`DEFAULT_SEED`]): the same cases
//! on every run, so the verdict depends on the code alone, never on the clock or the
//! machine's speed. To explore further, `IMGBUILD_MUTATION_SEED=clock` takes a new seed
//! (always printed) and `IMGBUILD_MUTATION_SECS` runs rounds for that many seconds instead.
//! Each case's mutations come from (seed, family, case number) alone, so one case is
//! replayed with `IMGBUILD_MUTATION_ONLY=family:case` and the printed seed; a failing
//! case is also saved (input, command, output) under `target/tmp/mutation-failures/`.
//! `IMGBUILD_MUTATION_VERBOSE=1` prints each case's outcome and last line of stderr.
use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::fixture::{self, sh, Fixture};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Rounds of the default run: 128 cases, 40 s alone on 2 cores.
const DEFAULT_ROUNDS: u64 = 16;
/// The default run's seed: a fixed set of cases.
const DEFAULT_SEED: u64 = 0x1d6e_5eed;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The valid inputs every family mutates, and where their structures are.
struct World {
    fx: Fixture,
    base: Vec<u8>,
    /// Guest offset → host offset of the base qcow2's allocated clusters (`qemu-img map`).
    map: Vec<(u64, u64, u64)>,
    /// Byte offset of the root filesystem in the guest disk.
    root: u64,
    /// Host ranges of the L1 table and of each L2 table in the base qcow2.
    tables: Vec<(u64, u64)>,
    /// Block size and group descriptor blocks of the root filesystem.
    block: u64,
    gdt_blocks: u64,
    /// Inode table of group 0 (block number).
    itable: u64,
    /// The ext4 superblock checksum is recomputed (metadata_csum) when it checks out.
    sb_csum: bool,
    /// crictl as an uncompressed tar (a member header per 512-byte block).
    tar: Vec<u8>,
    deb: Vec<u8>,
    /// The fixture's recipe text (crictl pinned to `tar`).
    recipe: String,
}

/// What a case builds.
enum Case {
    /// A mutated base image, built to this output format.
    Base(Vec<u8>, &'static str),
    /// A mutated crictl tarball.
    Tar(Vec<u8>),
    /// A mutated .deb installed through the recipe's `packages:`.
    Deb(Vec<u8>),
}

type Mutator = fn(&World, &mut ChaCha8Rng, u64) -> Case;

/// The parser families, by name.
const FAMILIES: &[(&str, Mutator)] = &[
    ("qcow2-header", qcow2_header),
    ("qcow2-tables", qcow2_tables),
    ("gpt", gpt),
    ("ext4-superblock", ext4_superblock),
    ("ext4-descriptors", ext4_descriptors),
    ("ext4-inodes", ext4_inodes),
    ("tar", tar),
    ("deb", deb),
];

fn below(r: &mut ChaCha8Rng, n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        r.next_u64() % n
    }
}

/// Values parsers trip over: zero, one, all ones, sign bits, powers of two, nearby.
fn interesting(r: &mut ChaCha8Rng, old: u64, width: u32) -> u64 {
    let max = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
    let v = match below(r, 9) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max >> 1,
        4 => (max >> 1) + 1,
        5 => 1u64 << below(r, width as u64),
        6 => old.wrapping_add(1 + below(r, 16)),
        7 => old.wrapping_sub(1 + below(r, 16)),
        _ => old.wrapping_mul(2 + below(r, 1000)),
    };
    v & max
}

/// 1–4 random edits inside `ranges` of `b`: bit flips, random bytes, interesting
/// little/big-endian integers at aligned offsets, copies from elsewhere in the range.
fn mutate(b: &mut [u8], ranges: &[(u64, u64)], r: &mut ChaCha8Rng, big_endian: bool) {
    let ranges: Vec<(usize, usize)> = ranges
        .iter()
        .map(|&(s, l)| (s as usize, (s + l).min(b.len() as u64) as usize))
        .filter(|(s, e)| s < e)
        .collect();
    if ranges.is_empty() {
        return;
    }
    for _ in 0..1 + below(r, 4) {
        let (s, e) = ranges[below(r, ranges.len() as u64) as usize];
        let at = s + below(r, (e - s) as u64) as usize;
        match below(r, 4) {
            0 => b[at] ^= 1 << below(r, 8),
            1 => b[at] = r.next_u64() as u8,
            2 => {
                let w = [2usize, 4, 8][below(r, 3) as usize];
                let at = at & !(w - 1);
                if at < s || at + w > e {
                    continue;
                }
                let mut x = [0u8; 8];
                x[..w].copy_from_slice(&b[at..at + w]);
                let old = if big_endian {
                    let mut y = [0u8; 8];
                    y[8 - w..].copy_from_slice(&b[at..at + w]);
                    u64::from_be_bytes(y)
                } else {
                    u64::from_le_bytes(x)
                };
                let v = interesting(r, old, (w * 8) as u32);
                if big_endian {
                    b[at..at + w].copy_from_slice(&v.to_be_bytes()[8 - w..]);
                } else {
                    b[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
            }
            _ => {
                let len = 1 + below(r, 16) as usize;
                let from = s + below(r, (e - s) as u64) as usize;
                if from + len <= e && at + len <= e {
                    b.copy_within(from..from + len, at);
                }
            }
        }
    }
}

impl World {
    fn host(&self, guest: u64) -> Option<u64> {
        self.map.iter().find(|&&(s, l, _)| guest >= s && guest < s + l).map(|&(s, _, h)| h + guest - s)
    }

    /// Host ranges for a guest range (it lies within one allocated cluster run).
    fn guest(&self, start: u64, len: u64) -> Vec<(u64, u64)> {
        self.host(start).map(|h| vec![(h, len)]).unwrap_or_default()
    }
}

fn qcow2_header(w: &World, r: &mut ChaCha8Rng, n: u64) -> Case {
    let mut b = w.base.clone();
    mutate(&mut b, &[(0, 112)], r, true);
    Case::Base(b, if n % 2 == 0 { "qcow2" } else { "raw" })
}

fn qcow2_tables(w: &World, r: &mut ChaCha8Rng, _: u64) -> Case {
    let mut b = w.base.clone();
    mutate(&mut b, &w.tables, r, true);
    Case::Base(b, "qcow2")
}

fn gpt(w: &World, r: &mut ChaCha8Rng, n: u64) -> Case {
    let mut b = w.base.clone();
    let ranges = w.guest(0, 34 * 512);
    let Some(&(h, _)) = ranges.first() else { return Case::Base(b, "qcow2") };
    // The protective MBR's records, the header's fields, the used entries (1, 14-16),
    // or anywhere in the table.
    let targeted = [(h + 446, 64), (h + 512, 92), (h + 1024, 128), (h + 1024 + 13 * 128, 3 * 128)];
    match below(r, 3) {
        0 => mutate(&mut b, &ranges, r, false),
        _ => mutate(&mut b, &targeted, r, false),
    }
    // Mostly with valid CRCs, so the checks behind them run.
    if below(r, 4) != 0 {
        if let Some(&(h, _)) = ranges.first() {
            let h = h as usize;
            let hdr = &b[h + 512..h + 1024];
            let size = u32::from_le_bytes(hdr[12..16].try_into().unwrap()) as usize;
            let (lba, count, esize) = (
                u64::from_le_bytes(hdr[72..80].try_into().unwrap()),
                u32::from_le_bytes(hdr[80..84].try_into().unwrap()) as u64,
                u32::from_le_bytes(hdr[84..88].try_into().unwrap()) as u64,
            );
            let arr = (lba.saturating_mul(512), count.saturating_mul(esize));
            if lba < 128 && arr.0 + arr.1 <= 65536 {
                let crc = CRC32.checksum(&b[h + arr.0 as usize..h + (arr.0 + arr.1) as usize]);
                b[h + 512 + 88..h + 512 + 92].copy_from_slice(&crc.to_le_bytes());
            }
            if (92..=512).contains(&size) {
                b[h + 512 + 16..h + 512 + 20].fill(0);
                let crc = CRC32.checksum(&b[h + 512..h + 512 + size]);
                b[h + 512 + 16..h + 512 + 20].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    Case::Base(b, if n % 2 == 0 { "qcow2" } else { "raw" })
}

/// Recompute the superblock checksum (metadata_csum: crc32c of the first 1020 bytes).
fn reseal_sb(w: &World, b: &mut [u8]) {
    if let Some(h) = w.host(w.root + 1024).map(|h| h as usize) {
        if w.sb_csum {
            let c = !CRC32C.checksum(&b[h..h + 0x3FC]);
            b[h + 0x3FC..h + 0x400].copy_from_slice(&c.to_le_bytes());
        }
    }
}

fn ext4_superblock(w: &World, r: &mut ChaCha8Rng, n: u64) -> Case {
    let mut b = w.base.clone();
    mutate(&mut b, &w.guest(w.root + 1024, 0x200), r, false);
    if below(r, 4) != 0 {
        reseal_sb(w, &mut b);
    }
    Case::Base(b, if n % 2 == 0 { "qcow2" } else { "raw" })
}

fn ext4_descriptors(w: &World, r: &mut ChaCha8Rng, n: u64) -> Case {
    let mut b = w.base.clone();
    let first = if w.block == 1024 { 2 } else { 1 };
    mutate(&mut b, &w.guest(w.root + first * w.block, w.gdt_blocks * w.block), r, false);
    Case::Base(b, if n % 2 == 0 { "qcow2" } else { "raw" })
}

fn ext4_inodes(w: &World, r: &mut ChaCha8Rng, _: u64) -> Case {
    let mut b = w.base.clone();
    // The reserved inodes and the first files: root directory, journal, lost+found, ...
    mutate(&mut b, &w.guest(w.root + w.itable * w.block, 16 * 256), r, false);
    Case::Base(b, "qcow2")
}

fn tar(w: &World, r: &mut ChaCha8Rng, _: u64) -> Case {
    let mut t = w.tar.clone();
    let headers: Vec<(u64, u64)> = (0..t.len() as u64 / 512).map(|i| (i * 512, 512)).collect();
    // Member headers mostly; sometimes anywhere.
    if below(r, 4) == 0 {
        mutate(&mut t, &[(0, w.tar.len() as u64)], r, false);
    } else {
        mutate(&mut t, &headers[..headers.len().min(4)], r, false);
    }
    Case::Tar(t)
}

fn deb(w: &World, r: &mut ChaCha8Rng, _: u64) -> Case {
    let mut d = w.deb.clone();
    // The ar headers and the first tar headers of each member, or anywhere.
    let ranges =
        if below(r, 3) == 0 { vec![(0, d.len() as u64)] } else { vec![(0, 2048.min(d.len() as u64))] };
    mutate(&mut d, &ranges, r, false);
    Case::Deb(d)
}

fn qemu_map(qcow2: &Path) -> Vec<(u64, u64, u64)> {
    imgbuild_testkit::qemu::map(qcow2, None)
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_bool() == Some(true))
        .filter_map(|e| Some((e["start"].as_u64()?, e["length"].as_u64()?, e["offset"].as_u64()?)))
        .collect()
}

fn world() -> World {
    let fx = fixture::noble_fixture();
    let base = std::fs::read(&fx.base.qcow2).unwrap();
    let map = qemu_map(&fx.base.qcow2);
    let root = fx.base.part(1).offset;
    let be64 = |o: usize| u64::from_be_bytes(base[o..o + 8].try_into().unwrap());
    let (l1_size, l1_off) = (u32::from_be_bytes(base[36..40].try_into().unwrap()) as u64, be64(40));
    let mut tables = vec![(l1_off, l1_size * 8)];
    for i in 0..l1_size as usize {
        let l2 = be64(l1_off as usize + i * 8) & 0x00ff_ffff_ffff_fe00;
        if l2 != 0 {
            tables.push((l2, 1 << 16));
        }
    }
    let sb = fixture_read(&fx.base.raw, root + 1024, 1024);
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as u64;
    let block = 1024 << le32(&sb, 0x18);
    let groups = (le32(&sb, 0x04) - le32(&sb, 0x14)).div_ceil(le32(&sb, 0x20));
    let desc = if le32(&sb, 0x60) & 0x80 != 0 { u16::from_le_bytes([sb[0xFE], sb[0xFF]]) as u64 } else { 32 };
    let gdt_blocks = (groups * desc).div_ceil(block);
    let gdt = fixture_read(&fx.base.raw, root + block.max(2048), 64);
    let itable = le32(&gdt, 8);
    let sb_csum = le32(&sb, 0x64) & 0x400 != 0 && !CRC32C.checksum(&sb[..0x3FC]) as u64 == le32(&sb, 0x3FC);
    if le32(&sb, 0x64) & 0x400 != 0 && !sb_csum {
        eprintln!("mutation: the superblock checksum does not verify as crc32c; not recomputed");
    }

    // crictl as a plain tar, a .deb with uncompressed members (tar headers visible).
    let d = fx.dir.path().join("mutation-inputs");
    std::fs::create_dir_all(d.join("crictl")).unwrap();
    std::fs::write(d.join("crictl/crictl"), b"#!/bin/sh\necho crictl stand-in\n").unwrap();
    sh(Command::new("tar")
        // fixed times: the same bytes (and so the same cases) on every run
        .args(["--format=gnu", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-cf"])
        .arg(d.join("crictl.tar"))
        .arg("-C")
        .arg(d.join("crictl"))
        .arg("crictl"));
    let tar = std::fs::read(d.join("crictl.tar")).unwrap();
    let pkg = d.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/demo")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: demo\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: T <t@test.invalid>\n\
         Description: mutation test package\n",
    )
    .unwrap();
    std::fs::write(pkg.join("usr/share/demo/README"), "demo\n").unwrap();
    sh(Command::new("dpkg-deb")
        .env("SOURCE_DATE_EPOCH", "0")
        .args(["--root-owner-group", "-Znone", "--build"])
        .arg(&pkg)
        .arg(d.join("demo.deb")));
    let deb = std::fs::read(d.join("demo.deb")).unwrap();

    // The fixture's recipe with crictl pinned to the plain tar, served and fetched once
    // so every case runs --offline from a full cache.
    let crictl = &fx.blobs["crictl"];
    fx.server.add_file(&crictl.url_path, d.join("crictl.tar"));
    let recipe = std::fs::read_to_string(&fx.recipe).unwrap().replace(&crictl.sha256, &sha256(&tar));
    std::fs::write(&fx.recipe, &recipe).unwrap();
    let o = common::bin()
        .env("PATH", fixture::path_with_sbin())
        .args(["fetch", "--role", "control-plane"])
        .args(fx.source_args())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    World { fx, base, map, root, tables, block, gdt_blocks, itable, sb_csum, tar, deb, recipe }
}

fn fixture_read(p: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(p).unwrap().read_exact_at(&mut b, off).unwrap();
    b
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Every file under `dir` with its size and mtime, except under `skip`.
fn snapshot(dir: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (m.len(), m.modified().unwrap()));
        }
    }
    out
}

/// The outcome of one case: `Ok(exit code)` or what went wrong.
fn run_case(w: &World, case: &Case, dir: &Path) -> (Result<i32, String>, String) {
    let out = dir.join("out");
    let (tmp, home) = (dir.join("tmp"), dir.join("home"));
    for d in [&out, &tmp, &home] {
        std::fs::create_dir_all(d).unwrap();
    }
    let cache = &w.fx.cache;
    let put = |bytes: &[u8]| -> (String, PathBuf) {
        let sha = sha256(bytes);
        let p = cache.join("sha256").join(&sha);
        if !p.exists() {
            std::fs::write(&p, bytes).unwrap();
        }
        (sha, p)
    };
    let recipe = dir.join("recipe.yaml");
    let (mut role, mut format, added) = ("worker", "qcow2", Vec::new());
    let mut added = added;
    match case {
        Case::Base(b, f) => {
            let (sha, p) = put(b);
            added.push((sha.clone(), p));
            format = f;
            let base_sha = &w.fx.blobs["base"].sha256;
            std::fs::write(&recipe, w.recipe.replace(base_sha, &sha)).unwrap();
        }
        Case::Tar(t) => {
            let (sha, p) = put(t);
            added.push((sha.clone(), p));
            std::fs::write(&recipe, w.recipe.replace(&sha256(&w.tar), &sha)).unwrap();
        }
        Case::Deb(d) => {
            let (sha, p) = put(d);
            added.push((sha.clone(), p));
            role = "worker";
            let text = format!(
                "{}packages:\n  archive: {{amd64: \"http://127.0.0.1:9/ubuntu\", arm64: \"http://127.0.0.1:9/ports\"}}\n  \
                 suites: [noble]\n  key: ubuntu-archive-2018\n  install: [demo]\n",
                w.recipe
            );
            std::fs::write(&recipe, &text).unwrap();
            let lr = imgbuild::recipe::parse(&text, "mutation").unwrap();
            let digest = imgbuild::lockfile::packages_digest(lr.recipe.packages.as_ref());
            let lock = serde_json::json!({
                "lock_version": imgbuild::lockfile::LOCK_VERSION,
                "recipe": lr.recipe.name,
                "packages_digest": digest.as_str(),
                "arches": {"amd64": {
                    "base_sha256": w.fx.blobs["base"].sha256,
                    "releases": [], "indexes": [], "already_in_base": [],
                    "packages": [{"name": "demo", "version": "1.0-1", "architecture": "amd64",
                        "url": "http://127.0.0.1:9/ubuntu/pool/main/d/demo/demo_1.0-1_amd64.deb",
                        "sha256": sha, "size": d.len(), "requested": true}],
                }},
            });
            std::fs::write(dir.join("recipe.yaml.lock"), serde_json::to_vec_pretty(&lock).unwrap()).unwrap();
        }
    }
    // Archive members the build keeps in the cache are derived from verified archives,
    // like stamps from verified blobs: a build may add them.
    let skip: Vec<PathBuf> = [out.clone(), cache.join("members")]
        .into_iter()
        .chain(added.iter().flat_map(|(sha, p)| [p.clone(), cache.join("stamps").join(sha)]))
        .collect();
    let before = snapshot(w.fx.dir.path(), &skip);
    let mut c = common::bin();
    // In the case's directory, so a stray relative write lands where it is seen.
    c.current_dir(dir)
        .env("PATH", fixture::path_with_sbin())
        .env("TMPDIR", &tmp)
        .env("HOME", &home)
        .args(["--quiet", "build", "--offline", "--role", role, "--format", format])
        .arg("--recipe")
        .arg(&recipe)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--output")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let cmdline = format!("{c:?}");
    let mut child = c.spawn().unwrap();
    // Read stderr while the case runs: a child blocked on a full pipe would look hung.
    let mut e = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = std::io::Read::read_to_end(&mut e, &mut err);
        String::from_utf8_lossy(&err).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > CASE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let err = reader.join().unwrap_or_default();
    let verdict = (|| {
        let Some(status) = status else { return Err(format!("hung: killed after {CASE_TIMEOUT:?}")) };
        let Some(code) = status.code() else { return Err(format!("killed by a signal: {status}")) };
        if !(0..=3).contains(&code) {
            return Err(format!("exit code {code}"));
        }
        let left: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if code == 0 && (left.len() != 4 || left.iter().any(|n| n.starts_with('.'))) {
            return Err(format!("exit 0 but the output dir holds {left:?}"));
        }
        if code != 0 && !left.is_empty() {
            return Err(format!("exit {code} but the output dir holds {left:?}"));
        }
        let after = snapshot(w.fx.dir.path(), &skip);
        let changed: Vec<_> = after
            .iter()
            .filter(|(p, v)| before.get(*p) != Some(v) && !p.starts_with(cache.join("stamps")))
            .map(|(p, _)| p.display().to_string())
            .chain(
                before.keys().filter(|p| !after.contains_key(*p)).map(|p| format!("removed {}", p.display())),
            )
            .filter(|p| {
                !p.ends_with(&*tmp.display().to_string()) && !p.ends_with(&*home.display().to_string())
            })
            .collect();
        if !changed.is_empty() {
            return Err(format!("wrote outside the output dir: {changed:?}"));
        }
        Ok(code)
    })();
    for (sha, p) in added {
        if p != w.fx.blobs["base"].path
            && !w.fx.blobs.values().any(|b| b.sha256 == sha)
            && sha != sha256(&w.tar)
        {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(cache.join("stamps").join(&sha));
        }
    }
    (verdict, format!("{cmdline}\n{err}"))
}

fn save_failure(name: &str, seed: u64, n: u64, case: &Case, log: &str, why: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutation-failures").join(format!("{name}-{seed}-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, bytes) = match case {
        Case::Base(b, _) => ("base.qcow2", b),
        Case::Tar(t) => ("crictl.tar", t),
        Case::Deb(d) => ("demo.deb", d),
    };
    std::fs::write(dir.join(file), bytes).unwrap();
    std::fs::write(
        dir.join("README"),
        format!(
            "{why}\n\nreplay: IMGBUILD_MUTATION_SEED={seed} IMGBUILD_MUTATION_ONLY={name}:{n} \
             cargo test --test it mutation:: -- --nocapture\n\n{log}"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn mutated_inputs_never_crash_hang_or_write_outside_the_output() {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let number =
        |k: &str| env(k).map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{k}={v}: not a number")));
    // a time budget only when asked for: how many cases fit would depend on the machine
    let budget = number("IMGBUILD_MUTATION_SECS").map(Duration::from_secs);
    let rounds = number("IMGBUILD_MUTATION_ROUNDS").unwrap_or(DEFAULT_ROUNDS);
    let seed = match env("IMGBUILD_MUTATION_SEED").as_deref() {
        None => DEFAULT_SEED,
        Some("clock") => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        }
        Some(_) => number("IMGBUILD_MUTATION_SEED").unwrap_or(DEFAULT_SEED),
    };
    let only = env("IMGBUILD_MUTATION_ONLY");
    let limit = match budget {
        Some(b) => format!("{} s", b.as_secs()),
        None => format!("{rounds} rounds"),
    };
    eprintln!("mutation: seed {seed}, {limit} (IMGBUILD_MUTATION_SEED / _ROUNDS / _SECS / _ONLY)");
    // `family` alone: that family's cases; `family:case`: exactly that case.
    let only: Option<(String, Option<u64>)> = only.map(|o| match o.split_once(':') {
        Some((f, c)) => (f.to_string(), Some(c.parse().unwrap_or_else(|_| panic!("{o}: not family:case")))),
        None => (o, None),
    });
    if let Some((f, _)) = &only {
        assert!(FAMILIES.iter().any(|(name, _)| name == f), "no mutation family {f:?}");
    }
    let w = world();
    let cases_dir = w.fx.dir.path().join("cases");
    let start = Instant::now();
    let mut counts: BTreeMap<&str, BTreeMap<i32, u64>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut n = 0u64;
    let mut round = match &only {
        Some((_, Some(c))) => *c,
        _ => 0,
    };
    loop {
        let over = match budget {
            Some(b) => start.elapsed() > b,
            None => round >= rounds,
        };
        if over && !matches!(only, Some((_, Some(_)))) {
            break;
        }
        for (i, &(name, mutator)) in FAMILIES.iter().enumerate() {
            if only.as_ref().is_some_and(|(f, _)| f != name) {
                continue;
            }
            let k = round;
            // Each case's randomness depends on (seed, family, case) only: replayable.
            let mut r = ChaCha8Rng::seed_from_u64(
                seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k << 20,
            );
            let case = mutator(&w, &mut r, k);
            let dir = cases_dir.join(format!("{name}-{k}"));
            let (verdict, log) = run_case(&w, &case, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            n += 1;
            if std::env::var_os("IMGBUILD_MUTATION_VERBOSE").is_some() {
                let last = log.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
                eprintln!("mutation: {name}:{k}: {verdict:?}: {last}");
            }
            match verdict {
                Ok(code) => *counts.entry(name).or_default().entry(code).or_default() += 1,
                Err(why) => {
                    let saved = save_failure(name, seed, k, &case, &log, &why);
                    eprintln!("mutation: {name}:{k} FAILED: {why} (saved in {})", saved.display());
                    failures.push(format!("{name}:{k}: {why}"));
                    *counts.entry(name).or_default().entry(-1).or_default() += 1;
                }
            }
        }
        if matches!(only, Some((_, Some(_)))) {
            break;
        }
        round += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("mutation: {n} cases in {secs:.0} s (seed {seed}); exit codes per family (-1 = failure):");
    for (name, c) in &counts {
        eprintln!("  {name:18} {c:?}");
    }
    assert!(failures.is_empty(), "seed {seed}: {} failing case(s):\n{}", failures.len(), failures.join("\n"));
    assert!(n > 0, "no case ran");
}
