//! The finished guest disk as a stream, the one input of every output writer: its
//! virtual size, the 64 KiB clusters that may hold data (sorted, unique; every other
//! cluster reads as zeros) and a `fill(first, n, buf)` that supplies the bytes of `n`
//! consecutive clusters. The fast path ([`super::overlay`]) fills from the base with the
//! layer laid over it, the raw working copy path from the raw file
//! ([`clusters_of`], [`fill_from`]). The writers ([`super::qcow2`], [`super::vmdk`], [`super::vhd`],
//! [`super::formats`] for the OVA) consume it front to back, once.
//!
//! Also here: the helpers the writers share: the chunking of the cluster list
//! ([`runs`]), a hashing thread that digests the output as it is written
//! ([`Hasher`]), and the ordered worker pool that compresses chunks on every core
//! ([`compress_in_order`]) while the output stays the same for any number of threads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

/// Cluster size of the stream: qcow2's default cluster, a VMDK grain (128 sectors).
pub const CLUSTER_BITS: u32 = 16;
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Clusters filled and handed on per chunk (1 MiB).
pub const CHUNK_CLUSTERS: u64 = 16;

/// The chunks the writers fill: runs of consecutive clusters, at most
/// [`CHUNK_CLUSTERS`] each, as (first cluster, count).
pub fn runs(clusters: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut i = 0usize;
    std::iter::from_fn(move || {
        let first = *clusters.get(i)?;
        let mut n = 1u64;
        while i + (n as usize) < clusters.len() && n < CHUNK_CLUSTERS && clusters[i + n as usize] == first + n
        {
            n += 1;
        }
        i += n as usize;
        Some((first, n))
    })
}

/// The clusters of a sparse raw disk of `size` bytes that hold data (from its
/// `SEEK_DATA`/`SEEK_HOLE` extents).
pub fn clusters_of(f: &File, size: u64) -> std::io::Result<Vec<u64>> {
    let mut clusters: Vec<u64> = Vec::new();
    for (s, l) in super::sparse::data_extents(f)? {
        let end = (s + l).min(size);
        if end > s {
            clusters.extend(s / CLUSTER..end.div_ceil(CLUSTER));
        }
    }
    clusters.sort_unstable();
    clusters.dedup();
    Ok(clusters)
}

/// The fill of a raw disk: its bytes (zeros past its end).
pub fn fill_from(f: &File) -> impl FnMut(u64, u64, &mut [u8]) -> std::io::Result<()> + '_ {
    move |first: u64, _n: u64, buf: &mut [u8]| {
        let got = super::qcow2::read_upto(f, buf, first * CLUSTER)?;
        buf[got..].fill(0);
        Ok(())
    }
}

/// What the hashing thread digests next.
enum Piece {
    Bytes(Vec<u8>),
    Zeros(u64),
}

/// A thread that hashes the output in the order it is handed bytes, so the writer
/// never waits for SHA-256 and the file is never read back.
pub struct Hasher {
    tx: Option<SyncSender<Piece>>,
    back: Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<String>>,
}

impl Hasher {
    pub fn spawn() -> Hasher {
        Hasher::resume(<sha2::Sha256 as sha2::Digest>::new())
    }

    /// A hashing thread that goes on from `h`, a digest of the output's first bytes.
    pub fn resume(mut h: sha2::Sha256) -> Hasher {
        let (tx, rx) = sync_channel::<Piece>(4);
        let (back_tx, back) = std::sync::mpsc::channel::<Vec<u8>>();
        let thread = std::thread::spawn(move || {
            use sha2::Digest;
            let zeros = vec![0u8; CLUSTER as usize * CHUNK_CLUSTERS as usize];
            for p in rx {
                match p {
                    Piece::Bytes(b) => {
                        h.update(&b);
                        let _ = back_tx.send(b);
                    }
                    Piece::Zeros(mut n) => {
                        while n > 0 {
                            let k = n.min(zeros.len() as u64);
                            h.update(&zeros[..k as usize]);
                            n -= k;
                        }
                    }
                }
            }
            hex::encode(h.finalize())
        });
        Hasher { tx: Some(tx), back, thread: Some(thread) }
    }

    fn send(&self, p: Piece) -> std::io::Result<()> {
        match &self.tx {
            Some(tx) => tx.send(p).map_err(|_| std::io::Error::other("hash thread stopped")),
            None => Err(std::io::Error::other("hash thread finished")),
        }
    }

    /// Hash `b` next (the buffer comes back through [`Hasher::buffer`]).
    pub fn bytes(&self, b: Vec<u8>) -> std::io::Result<()> {
        self.send(Piece::Bytes(b))
    }

    /// Hash `n` zero bytes next.
    pub fn zeros(&self, n: u64) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.send(Piece::Zeros(n))
    }

    /// A buffer the thread is done with, or a new one.
    pub fn buffer(&self) -> Vec<u8> {
        self.back.try_recv().unwrap_or_default()
    }

    /// Run `write`, which hands the output to the hasher, then finish: the digest, or
    /// the error (the thread is joined either way).
    pub fn around(self, write: impl FnOnce(&Hasher) -> std::io::Result<()>) -> std::io::Result<String> {
        let res = write(&self);
        let digest = self.finish()?;
        res?;
        Ok(digest)
    }

    /// The hex SHA-256 of everything handed over.
    pub fn finish(mut self) -> std::io::Result<String> {
        drop(self.tx.take());
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| std::io::Error::other("hash thread panicked")),
            None => Err(std::io::Error::other("hash thread finished")),
        }
    }
}

/// The hex SHA-256 of the file at `path`, for an output that cannot be hashed as it is
/// written (its first bytes depend on everything after them: an OVA, a compressed
/// qcow2). This thread reads while a [`Hasher`] hashes, so reading the file back costs
/// what hashing it costs, not reading plus hashing; a few chunks are in flight at most.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let chunk = CLUSTER * CHUNK_CLUSTERS;
    let mut f = File::open(path)?;
    Hasher::spawn().around(|hash| loop {
        let mut buf = hash.buffer();
        buf.clear();
        buf.reserve(chunk as usize);
        (&mut f).take(chunk).read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        hash.bytes(buf)?;
    })
}

/// A writer that hashes (inline) and counts what goes through it.
pub struct Hashing<W> {
    pub inner: W,
    hash: sha2::Sha256,
    pub written: u64,
}

impl<W: std::io::Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing { inner, hash: <sha2::Sha256 as sha2::Digest>::new(), written: 0 }
    }

    /// The hex SHA-256 of everything written, and the writer (flushed).
    pub fn finish(mut self) -> std::io::Result<(String, W)> {
        self.inner.flush()?;
        Ok((hex::encode(sha2::Digest::finalize(self.hash)), self.inner))
    }
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hash, &buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Fill the chunks of `clusters` in order on the calling thread, run `compress(state,
/// first, chunk)` on them on `threads` threads (each with its own `state` from
/// `new_state`, e.g. a compressor context), and hand the results to `consume(first, n,
/// result)` on one more thread, in cluster order. Each chunk is compressed on its own,
/// so what `consume` sees does not depend on `threads`.
pub fn compress_in_order<S, T, F, N, C, W>(
    clusters: &[u64],
    threads: usize,
    mut fill: F,
    new_state: N,
    compress: C,
    consume: W,
) -> std::io::Result<()>
where
    T: Send,
    F: FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
    N: Fn() -> std::io::Result<S> + Sync,
    C: Fn(&mut S, u64, &[u8]) -> std::io::Result<T> + Sync,
    W: FnMut(u64, u64, T) -> std::io::Result<()> + Send,
{
    type Job = (usize, u64, u64, Vec<u8>);
    let threads = threads.max(1);
    let (work_tx, work_rx) = sync_channel::<Job>(threads * 2);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = sync_channel::<(usize, u64, u64, T)>(threads * 2);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| -> std::io::Result<()> {
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (done_tx, back_tx, work_rx, compress, new_state) =
                (done_tx.clone(), back_tx.clone(), &work_rx, &compress, &new_state);
            workers.push(s.spawn(move || -> std::io::Result<()> {
                let mut state = new_state()?;
                loop {
                    let job =
                        work_rx.lock().map_err(|_| std::io::Error::other("worker lock poisoned"))?.recv();
                    let Ok((seq, first, n, buf)) = job else { return Ok(()) };
                    let out = compress(&mut state, first, &buf)?;
                    let _ = back_tx.send(buf);
                    if done_tx.send((seq, first, n, out)).is_err() {
                        return Ok(());
                    }
                }
            }));
        }
        drop((done_tx, back_tx));
        let writer = s.spawn(move || -> std::io::Result<()> {
            let mut consume = consume;
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0usize;
            for (seq, first, n, out) in done_rx {
                pending.insert(seq, (first, n, out));
                while let Some((first, n, out)) = pending.remove(&next) {
                    next += 1;
                    consume(first, n, out)?;
                }
            }
            Ok(())
        });
        let fed = (|| -> std::io::Result<()> {
            for (seq, (first, n)) in runs(clusters).enumerate() {
                let mut buf = back_rx.try_recv().unwrap_or_default();
                buf.resize((n * CLUSTER) as usize, 0);
                fill(first, n, &mut buf)?;
                work_tx
                    .send((seq, first, n, buf))
                    .map_err(|_| std::io::Error::other("compression stopped"))?;
            }
            Ok(())
        })();
        drop(work_tx);
        for w in workers {
            w.join().map_err(|_| std::io::Error::other("a compression thread panicked"))??;
        }
        // The writer's error first: a full disk stops it, and then the feeder only
        // sees that compression stopped.
        writer.join().map_err(|_| std::io::Error::other("the writer thread panicked"))??;
        fed
    })
}

/// Write `buf` at `at` in `f` unless it is all zeros (left a hole: the file was sized
/// first, so holes read as zeros).
pub fn write_unless_zero(f: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
    if is_zero(buf) {
        return Ok(());
    }
    f.write_all_at(buf, at)
}

/// Whether `buf` is all zeros: OR-folded a page at a time, which the compiler turns
/// into wide vector loads (a byte-wise `all` with its early exit is not vectorised).
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096).all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// A GUID-sized identifier derived from `seed` (the build's inputs digest) and `what`:
/// what the writers put where a format wants a random one.
pub(crate) fn derived_id(seed: &str, what: &str) -> [u8; 16] {
    let d = crate::types::Sha256::of(format!("{seed}\n{what}").as_bytes());
    let mut id = [0u8; 16];
    if let Ok(b) = hex::decode(&d.as_str()[..32]) {
        id.copy_from_slice(&b);
    }
    // RFC 4122 version 4 / variant bits, so the value still looks like a UUID.
    id[7] = (id[7] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Test content by cluster: zeros, pseudo-random (incompressible) bytes or text.
#[cfg(test)]
pub(crate) fn test_pattern(g: u64, buf: &mut [u8]) {
    match g % 5 {
        0 => buf.fill(0),
        1 => {
            let mut x = g.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        _ => {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = b"kubelet binary text "[(i + g as usize) % 20];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps_and_chunk_size() {
        let c: Vec<u64> = (0..20).chain([25, 26]).collect();
        let r: Vec<(u64, u64)> = runs(&c).collect();
        assert_eq!(r, [(0, 16), (16, 4), (25, 2)]);
        assert_eq!(runs(&[]).count(), 0);
    }

    /// Results reach `consume` in cluster order whatever the thread count.
    #[test]
    fn pool_keeps_order() {
        let clusters: Vec<u64> = (0..200).chain(300..333).collect();
        for threads in [1, 3] {
            let mut seen = Vec::new();
            compress_in_order(
                &clusters,
                threads,
                |first, n, buf| {
                    buf.fill(first as u8 ^ n as u8);
                    Ok(())
                },
                || Ok(()),
                |_, first, buf| Ok((first, buf.len())),
                |first, n, (f2, len)| {
                    assert_eq!((first, n * CLUSTER), (f2, len as u64));
                    seen.push(first);
                    Ok(())
                },
            )
            .unwrap();
            let want: Vec<u64> = runs(&clusters).map(|r| r.0).collect();
            assert_eq!(seen, want, "{threads} threads");
        }
    }

    /// Read back on one thread and hashed on another, every byte once and in order:
    /// an empty file, less than a chunk, whole chunks, whole chunks and a tail.
    #[test]
    fn hash_file_is_the_files_sha256() {
        let d = tempfile::tempdir().unwrap();
        let chunk = (CLUSTER * CHUNK_CLUSTERS) as usize;
        for len in [0, 1, 4095, chunk, 3 * chunk, 3 * chunk + 513] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
            let p = d.path().join(format!("f{len}"));
            std::fs::write(&p, &bytes).unwrap();
            let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            assert_eq!(hash_file(&p).unwrap(), want, "{len}");
        }
        assert!(hash_file(&d.path().join("missing")).is_err());
    }

    #[test]
    fn hasher_hashes_bytes_and_zeros_in_order() {
        use sha2::Digest;
        let h = Hasher::spawn();
        h.bytes(b"abc".to_vec()).unwrap();
        h.zeros(3 << 20).unwrap();
        h.bytes(b"def".to_vec()).unwrap();
        let mut all = b"abc".to_vec();
        all.resize(3 + (3 << 20), 0);
        all.extend_from_slice(b"def");
        assert_eq!(h.finish().unwrap(), hex::encode(sha2::Sha256::digest(&all)));
    }
}
