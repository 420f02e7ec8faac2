//! Verified, concurrent downloads into the `cache`.
//!
//! Each artifact is streamed into `partial/<sha256>` in the cache while it is hashed,
//! and renamed to `sha256/<sha256>` only when the digest matches. URLs are tried in
//! order: 404/410 (and other non-transient answers) move on to the next URL; transient
//! failures (connect/reset/timeout, 408, 429, 5xx, a cut or stalled body) are retried
//! under the one bounded policy of `net::retry` (attempts, resumes and a
//! deadline per URL), resuming with `Range` from what is already on disk. Every
//! download has a size limit ([`size_limit`]): a server or `file://` source that sends
//! more is given up at once. URLs are printed redacted (`net::SafeUrl`).
//! A per-digest file lock lets several processes share one cache: the second waits,
//! then finds the blob. A `401` with a `Bearer` challenge (container registries) is
//! answered with an anonymous token (`bearer::request_token`, a small GET of
//! the network layer), cached per repository; image items also send the manifest
//! `Accept` list. Callers see a synchronous API ([`fetch`]) and get the verified blobs
//! keyed by plan item ([`Fetched`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_RANGE, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256 as Hasher};
use tokio::sync::{mpsc, Semaphore};

use crate::bearer::TokenCache;
use crate::cache::Cache;
use crate::exit::{Classify, Code};
pub use crate::net::{rewrite, Mirror};
use crate::net::{Progress, RetryPolicy, SafeUrl};
use crate::plan::{Item, ItemKey};
use crate::reporter::{human_bytes, Reporter, Task};
use crate::types::{ItemKind, Sha256};

/// Write/hash granularity: large enough that per-chunk overhead vanishes.
const BUF: usize = 256 * 1024;

/// The most bytes a download of `kind` may have: a pinned digest proves nothing until
/// the last byte, so without a limit a hostile mirror (or `file:///dev/zero`) fills
/// the cache's filesystem first. Each is far above its real size (the noble cloud
/// image is ~600 MB, the largest artifact ~100 MB, the largest .deb a few MB, the
/// largest container layer some hundred MB).
pub fn size_limit(kind: crate::types::ItemKind) -> u64 {
    use crate::types::ItemKind;
    match kind {
        ItemKind::Base => 8 << 30,
        ItemKind::Artifact => 2 << 30,
        ItemKind::Package => 1 << 30,
        // Image blobs carry their descriptor's size; this bounds one that does not.
        ItemKind::Image => 4 << 30,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("--offline: {} artifact(s) not in the cache {cache}:{}", .missing.len(), fmt_list(.missing))]
    Offline { cache: String, missing: Vec<String> },
    #[error("{name} {version}: every URL failed:{}", fmt_outcomes(.outcomes))]
    AllUrlsFailed { name: String, version: String, outcomes: Vec<(String, String)> },
    #[error(
        "{name} {version}: digest mismatch for {url}: expected sha256 {expected}, got sha256 {actual} \
         (nothing was kept in the cache)"
    )]
    Mismatch { name: String, version: String, url: String, expected: Sha256, actual: Sha256 },
    #[error(transparent)]
    BadMirror(#[from] crate::net::BadMirror),
    #[error("{name} {version}: {what}")]
    Io {
        name: String,
        version: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} downloads failed:{}", .0.len(), fmt_several(.0))]
    Several(Vec<FetchError>),
    #[error("{name} {version}: {source}")]
    Cache { name: String, version: String, source: crate::cache::CacheError },
}

fn fmt_outcomes(o: &[(String, String)]) -> String {
    o.iter().fold(String::new(), |mut s, (url, what)| {
        let _ = write!(s, "\n  {url}: {what}");
        s
    })
}

fn fmt_list(v: &[String]) -> String {
    v.iter().fold(String::new(), |mut s, m| {
        let _ = write!(s, "\n  {m}");
        s
    })
}

fn fmt_several(v: &[FetchError]) -> String {
    v.iter().fold(String::new(), |mut s, e| {
        let _ = write!(s, "\n- {}", e.to_string().replace('\n', "\n  "));
        s
    })
}

impl Classify for FetchError {
    fn code(&self) -> Code {
        match self {
            FetchError::Mismatch { .. } => Code::Integrity,
            FetchError::Cache { source, .. } => source.code(),
            FetchError::BadMirror(_) => Code::Input,
            FetchError::Offline { .. } | FetchError::AllUrlsFailed { .. } | FetchError::Io { .. } => {
                Code::Runtime
            }
            // An integrity failure anywhere outranks the rest: it must not hide behind a 1.
            FetchError::Several(v) => {
                if v.iter().any(|e| e.code() == Code::Integrity) {
                    Code::Integrity
                } else {
                    Code::Runtime
                }
            }
        }
    }
}

/// At most this many downloads run at once (`--jobs`): more only opens more connections
/// to the same few hosts.
pub const MAX_JOBS: usize = 64;

/// How to fetch.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    pub offline: bool,
    pub mirrors: Vec<Mirror>,
    /// Concurrent downloads; 0 means the default (4), more than [`MAX_JOBS`] means that.
    pub jobs: usize,
}

/// The verified blobs of a build, by item (see `plan::ItemKey`).
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    blobs: BTreeMap<ItemKey, PathBuf>,
}

impl Fetched {
    /// The verified blob of `item`, if it was fetched.
    pub fn get(&self, item: &Item) -> Option<&Path> {
        self.blobs.get(&item.key()).map(PathBuf::as_path)
    }

    /// Record `blob` as the verified bytes of `item` (for callers that verified it
    /// themselves, e.g. tests with stand-in blobs).
    pub fn insert(&mut self, item: &Item, blob: PathBuf) {
        self.blobs.insert(item.key(), blob);
    }

    /// Everything fetched so far plus everything in `other`.
    pub fn extend(&mut self, other: Fetched) {
        self.blobs.extend(other.blobs);
    }
}

/// Ensure every item is in the cache, verified; the blobs by item. Blocks; runs its
/// own tokio runtime.
pub fn fetch(items: &[&Item], cache: &Cache, opts: &FetchOptions, progress: &Reporter) -> Result<Fetched> {
    let paths = fetch_items(items, cache, opts, progress)?;
    let blobs = items.iter().map(|i| i.key()).zip(paths).collect();
    Ok(Fetched { blobs })
}

/// [`fetch`], the blob paths in `items` order.
fn fetch_items(
    items: &[&Item],
    cache: &Cache,
    opts: &FetchOptions,
    progress: &Reporter,
) -> Result<Vec<PathBuf>> {
    let items: Vec<Item> = items
        .iter()
        .map(|i| Item { urls: i.urls.iter().map(|u| rewrite(u, &opts.mirrors)).collect(), ..(*i).clone() })
        .collect();
    let progress = progress.clone();
    if opts.offline {
        return offline(&items, cache, &progress).map_err(Into::into);
    }
    fetch_all(items, cache.clone(), opts, progress)
}

fn offline(items: &[Item], cache: &Cache, progress: &Reporter) -> Result<Vec<PathBuf>, FetchError> {
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for i in items {
        match cache.lookup(&i.sha256).map_err(|source| cache_err(i, source))? {
            Some(p) => {
                progress.status(format!("cached {} {}", i.name, i.version));
                paths.push(p);
            }
            None => missing.push(format!("{} {} (sha256 {})", i.name, i.version, i.sha256)),
        }
    }
    if missing.is_empty() {
        Ok(paths)
    } else {
        Err(FetchError::Offline { cache: cache.root().display().to_string(), missing })
    }
}

struct Ctx {
    client: reqwest::Client,
    cache: Cache,
    progress: Reporter,
    jobs: Semaphore,
    retry: RetryPolicy,
    /// Registry tokens (anonymous bearer flow), shared by every download of the run.
    tokens: TokenCache,
    /// For token endpoints, rewritten like every other URL.
    mirrors: Vec<Mirror>,
}

fn fetch_all(
    items: Vec<Item>,
    cache: Cache,
    opts: &FetchOptions,
    progress: Reporter,
) -> Result<Vec<PathBuf>> {
    let jobs = if opts.jobs == 0 { 4 } else { opts.jobs.min(MAX_JOBS) };
    let client = crate::net::get::shared_client().context("creating the HTTP client")?.clone();
    let retry = RetryPolicy::downloads(crate::net::settings().attempts);
    let ctx = Arc::new(Ctx {
        client,
        cache,
        progress,
        jobs: Semaphore::new(jobs),
        retry,
        tokens: TokenCache::default(),
        mirrors: opts.mirrors.clone(),
    });
    let results = crate::net::block_on(async {
        let handles: Vec<_> = items.into_iter().map(|i| tokio::spawn(fetch_one(ctx.clone(), i))).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await);
        }
        out
    })?;
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(Ok(p)) => paths.push(p),
            Ok(Err(e)) => errors.push(e),
            Err(join) => anyhow::bail!("download task failed: {join}"),
        }
    }
    match errors.len() {
        0 => Ok(paths),
        1 => Err(errors.remove(0).into()),
        _ => Err(FetchError::Several(errors).into()),
    }
}

/// An unfinished download on disk: the file, the hash of its bytes so far, its length.
struct Partial {
    file: File,
    hasher: Hasher,
    len: u64,
    /// Some bytes were appended to a non-empty file (a resume): a mismatch may then
    /// come from stale bytes, which earns one clean retry.
    resumed: bool,
    /// Bytes before this offset have been handed to the kernel for writeback.
    flushed: u64,
}

impl Partial {
    /// Open (or create) the partial file and hash what it already holds.
    fn open(path: &std::path::Path) -> std::io::Result<Partial> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; BUF];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        file.seek(SeekFrom::Start(len))?;
        Ok(Partial { file, hasher, len, resumed: false, flushed: len })
    }

    fn append(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hasher.update(b);
        self.file.write_all(b)?;
        self.len += b.len() as u64;
        if self.len - self.flushed >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.flushed, self.len - self.flushed);
            self.flushed = self.len;
        }
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = Hasher::new();
        self.len = 0;
        self.resumed = false;
        self.flushed = 0;
        Ok(())
    }

    fn digest(&self) -> Sha256 {
        Sha256::from_hasher(self.hasher.clone())
    }
}

/// Start writing back dirty pages every this many bytes, so the fsync before the
/// blob is published waits for the tail only, not for the whole file.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Ask the kernel to start (not wait for) writeback of a range: disk and network
/// then work at the same time, as with RocksDB's `bytes_per_sync`. Best effort.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: plain syscall on a file descriptor we own for the duration of the call;
    // no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// How one URL ended.
enum UrlEnd {
    /// The body is complete on disk (not yet verified).
    Done,
    /// Give up on this URL, with the outcome for the error message.
    Next(String),
}

/// What went wrong in one attempt.
enum Attempt {
    /// Retry the same URL (after a backoff).
    Transient { what: String, retry_after: Option<Duration>, progress: Progress },
    /// Do not retry this URL.
    Next(String),
    /// A token was obtained for the registry's challenge: send the request again now.
    Authorized,
}

async fn blocking<T: Send + 'static>(
    item: &Item,
    what: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, FetchError> {
    let io = |source| FetchError::Io {
        name: item.name.clone(),
        version: item.version.clone(),
        what: what.to_string(),
        source,
    };
    tokio::task::spawn_blocking(f).await.map_err(|e| io(std::io::Error::other(e)))?.map_err(io)
}

fn cache_err(item: &Item, source: crate::cache::CacheError) -> FetchError {
    FetchError::Cache { name: item.name.clone(), version: item.version.clone(), source }
}

/// [`Cache::lookup`] off the async threads: it may hash a multi-GiB blob.
async fn lookup(ctx: &Ctx, item: &Item) -> Result<Option<PathBuf>, FetchError> {
    let (cache, sha) = (ctx.cache.clone(), item.sha256.clone());
    match tokio::task::spawn_blocking(move || cache.lookup(&sha)).await {
        Ok(r) => r.map_err(|source| cache_err(item, source)),
        Err(e) => Err(io_err(item, "checking the cache", std::io::Error::other(e))),
    }
}

async fn fetch_one(ctx: Arc<Ctx>, item: Item) -> Result<PathBuf, FetchError> {
    let label = format!("{} {}", item.name, item.version);
    if let Some(p) = lookup(&ctx, &item).await? {
        ctx.progress.status(format!("cached {label}"));
        return Ok(p);
    }
    let _permit = ctx.jobs.acquire().await.map_err(|e| FetchError::Io {
        name: item.name.clone(),
        version: item.version.clone(),
        what: "waiting for a download slot".into(),
        source: std::io::Error::other(e),
    })?;
    let (cache, sha) = (ctx.cache.clone(), item.sha256.clone());
    let lock = blocking(&item, "locking the cache entry", move || cache.lock(&sha)).await?;
    // Another process may have published the blob while we waited for the lock.
    if let Some(p) = lookup(&ctx, &item).await? {
        ctx.progress.status(format!("cached {label}"));
        return Ok(p);
    }
    let start = Instant::now();
    let path = ctx.cache.partial_path(&item.sha256);
    let mut part = blocking(&item, "opening the partial download", move || Partial::open(&path)).await?;
    let task = ctx.progress.task(&label, None);
    let mut outcomes = Vec::new();
    let mut restarted = false;
    let mut u = 0;
    while u < item.urls.len() {
        let url = &item.urls[u];
        let shown = SafeUrl::new(url.as_str()).to_string();
        let (p, end) = fetch_url(&ctx, &item, url, part, &task).await?;
        part = p;
        match end {
            UrlEnd::Next(what) => {
                outcomes.push((shown, what));
                u += 1;
            }
            UrlEnd::Done => {
                let actual = part.digest();
                if actual == item.sha256 {
                    let size = part.len;
                    drop(part);
                    let (cache, sha, what) = (ctx.cache.clone(), item.sha256.clone(), item.describe());
                    let blob = blocking(&item, "publishing the verified download", move || {
                        cache.commit(&sha, &lock, &what)
                    })
                    .await?;
                    let secs = start.elapsed().as_secs_f64();
                    task.finish(&format!("fetched {label} ({}, {secs:.1} s)", human_bytes(size)));
                    return Ok(blob);
                }
                if part.resumed && !restarted {
                    // Stale partial bytes (an earlier run, another mirror): start over once.
                    restarted = true;
                    ctx.progress
                        .status(format!("{label}: digest mismatch after resuming; downloading again"));
                    part.reset().map_err(|e| io_err(&item, "truncating the partial download", e))?;
                    continue;
                }
                drop(part);
                let (cache, sha) = (ctx.cache.clone(), item.sha256.clone());
                blocking(&item, "removing the mismatching download", move || cache.discard(&sha, &lock))
                    .await?;
                task.abandon();
                return Err(FetchError::Mismatch {
                    name: item.name.clone(),
                    version: item.version.clone(),
                    url: shown,
                    expected: item.sha256.clone(),
                    actual,
                });
            }
        }
    }
    // A non-empty partial file stays: a later run resumes it. An empty one is clutter.
    task.abandon();
    if part.len == 0 {
        drop(part);
        let (cache, sha) = (ctx.cache.clone(), item.sha256.clone());
        blocking(&item, "removing an empty partial download", move || cache.discard(&sha, &lock)).await?;
    }
    Err(FetchError::AllUrlsFailed { name: item.name.clone(), version: item.version.clone(), outcomes })
}

fn io_err(item: &Item, what: &str, source: std::io::Error) -> FetchError {
    FetchError::Io { name: item.name.clone(), version: item.version.clone(), what: what.to_string(), source }
}

/// Try one URL (with retries) until the body is complete on disk or the URL is given
/// up. `part` moves through blocking writer tasks, so it is passed by value.
async fn fetch_url(
    ctx: &Ctx,
    item: &Item,
    url: &str,
    mut part: Partial,
    task: &Task,
) -> Result<(Partial, UrlEnd), FetchError> {
    if let Some(rest) = url.strip_prefix("file://") {
        return copy_file(item, rest, part, task).await;
    }
    // Bounded: a resumed attempt that added bytes earns more room than one that got
    // nothing or started again from byte 0, and no attempt starts after the deadline.
    let mut retry = ctx.retry.start();
    let mut authorized = false;
    loop {
        let (p, result) = attempt(ctx, item, url, part, task).await?;
        part = p;
        let (what, retry_after, progress) = match result {
            Ok(()) => return Ok((part, UrlEnd::Done)),
            Err(Attempt::Next(what)) => return Ok((part, UrlEnd::Next(what))),
            // Once per URL: a second 401 with a fresh token is a refusal, not a challenge.
            Err(Attempt::Authorized) if !authorized => {
                authorized = true;
                continue;
            }
            Err(Attempt::Authorized) => {
                return Ok((
                    part,
                    UrlEnd::Next("HTTP 401: the registry refused the token it asked for".into()),
                ))
            }
            Err(Attempt::Transient { what, retry_after, progress }) => (what, retry_after, progress),
        };
        let Some(wait) = retry.failed(progress, retry_after) else {
            return Ok((part, UrlEnd::Next(format!("{what} ({})", retry.why_stopped()))));
        };
        ctx.progress.status(format!(
            "{} {}: {what}; attempt {} failed, retrying in {:.1} s",
            item.name,
            item.version,
            retry.attempts(),
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
    }
}

/// One HTTP request, its body streamed (hashed and written) into `part`. The outer
/// `Result` is fatal (local I/O); the inner one says what to do with this URL.
async fn attempt(
    ctx: &Ctx,
    item: &Item,
    url: &str,
    mut part: Partial,
    task: &Task,
) -> Result<(Partial, Result<(), Attempt>), FetchError> {
    let transient = |what: String| Attempt::Transient { what, retry_after: None, progress: Progress::None };
    let limit = item.size.unwrap_or_else(|| size_limit(item.kind));
    let truncate =
        |part: &mut Partial| part.reset().map_err(|e| io_err(item, "truncating the partial download", e));
    let offset = part.len;
    let mut req = ctx.client.get(url);
    if offset > 0 {
        req = req.header(RANGE, format!("bytes={offset}-"));
    }
    if item.kind == ItemKind::Image {
        req = req.header(ACCEPT, crate::types::image::MANIFEST_ACCEPT);
    }
    let scope = token_scope(url);
    let sent = ctx.tokens.for_repo(scope);
    if let Some(t) = &sent {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            // The URL is in the outcome list already; reqwest would repeat it.
            let builder = e.is_builder();
            let what = crate::net::chain(&e.without_url());
            // A name that does not resolve will not start resolving in a few
            // seconds (curl does not retry it either); a refused or reset connection may.
            if builder || what.contains("dns error") {
                return Ok((part, Err(Attempt::Next(what))));
            }
            return Ok((part, Err(transient(what))));
        }
    };
    let status = resp.status();
    match status {
        StatusCode::OK if offset > 0 => truncate(&mut part)?,
        StatusCode::OK => {}
        StatusCode::PARTIAL_CONTENT if offset > 0 && content_range_start(&resp) == Some(offset) => {
            part.resumed = true;
        }
        StatusCode::PARTIAL_CONTENT => {
            truncate(&mut part)?;
            return Ok((part, Err(transient("HTTP 206 for an unexpected range".into()))));
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            // The partial file may already be complete (a run died before the rename).
            if part.digest() == item.sha256 {
                return Ok((part, Ok(())));
            }
            truncate(&mut part)?;
            return Ok((part, Err(transient("HTTP 416 for the resume range".into()))));
        }
        s if s == StatusCode::REQUEST_TIMEOUT
            || s == StatusCode::TOO_MANY_REQUESTS
            || s.is_server_error() =>
        {
            let retry_after = crate::net::get::retry_after(&resp);
            let what = format!("HTTP {s}");
            return Ok((part, Err(Attempt::Transient { what, retry_after, progress: Progress::None })));
        }
        StatusCode::UNAUTHORIZED => {
            let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let next = match token(ctx, scope, sent.as_deref(), challenge).await {
                Ok(()) => Attempt::Authorized,
                Err(what) => Attempt::Next(format!("HTTP 401: {what}")),
            };
            return Ok((part, Err(next)));
        }
        s => return Ok((part, Err(Attempt::Next(format!("HTTP {s}"))))),
    }
    if let Some(len) = resp.content_length() {
        if part.len.saturating_add(len) > limit {
            truncate(&mut part)?;
            return Ok((part, Err(Attempt::Next(too_large(limit, Some(offset + len))))));
        }
        task.set_total(part.len + len);
    }
    task.set_position(part.len);
    let resumed = status == StatusCode::PARTIAL_CONTENT;
    stream_body(item, resp, part, task, limit, resumed).await
}

/// What a registry token is for: the repository part of a distribution API URL
/// (`…/v2/<name>/blobs/…` or `…/manifests/…`); other URLs stand for themselves.
fn token_scope(url: &str) -> &str {
    ["/blobs/", "/manifests/"].iter().find_map(|p| url.rfind(p).map(|i| &url[..i])).unwrap_or(url)
}

/// Answer a `401`'s challenge: a token another download of the run already holds for
/// it (when it is not the one `sent` and refused), else a new one from its realm
/// (anonymous: no credentials are sent); remembered for `scope`.
async fn token(ctx: &Ctx, scope: &str, sent: Option<&str>, header: &str) -> Result<(), String> {
    let ch = crate::bearer::parse_challenge(header).map_err(|e| e.to_string())?;
    if ctx.tokens.get(&ch).is_some_and(|t| Some(t.as_str()) != sent) {
        ctx.tokens.adopt(scope, &ch);
        return Ok(());
    }
    ctx.tokens.forget(&ch);
    // The token request is a small GET like any other (net::get: retries, size limit,
    // redacted URL); it blocks, so it runs beside the download tasks.
    let mirrors = ctx.mirrors.clone();
    let asked = ch.clone();
    let t = tokio::task::spawn_blocking(move || crate::bearer::request_token(&asked, &mirrors))
        .await
        .map_err(|e| format!("token request: {e}"))?
        .map_err(|e| e.to_string())?;
    ctx.tokens.put(scope, ch, t);
    Ok(())
}

fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// Stream the body: the network side fills 256 KiB buffers, a blocking writer hashes
/// and writes them, so network, hashing and disk overlap.
async fn stream_body(
    item: &Item,
    resp: reqwest::Response,
    mut part: Partial,
    task: &Task,
    limit: u64,
    resumed: bool,
) -> Result<(Partial, Result<(), Attempt>), FetchError> {
    let start = part.len;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut res = Ok(());
        while let Some(buf) = rx.blocking_recv() {
            if let Err(e) = part.append(&buf) {
                res = Err(e);
                break;
            }
        }
        (part, res)
    });
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::with_capacity(BUF);
    let mut received = 0u64;
    let mut net_err = None;
    let mut oversized = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                received += c.len() as u64;
                if start + received > limit {
                    oversized = true;
                    break;
                }
                task.inc(c.len() as u64);
                buf.extend_from_slice(&c);
                if buf.len() >= BUF {
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(BUF));
                    if tx.send(full).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
            }
            Err(e) => {
                net_err = Some(e);
                break;
            }
        }
    }
    if !buf.is_empty() {
        let _ = tx.send(buf).await;
    }
    drop(tx);
    let (mut part, res) =
        writer.await.map_err(|e| io_err(item, "writing the download", std::io::Error::other(e)))?;
    res.map_err(|e| io_err(item, "writing the partial download in the cache", e))?;
    if oversized {
        // Not worth keeping for a resume: no byte past the limit can be the pinned file.
        part.reset().map_err(|e| io_err(item, "truncating the partial download", e))?;
        return Ok((part, Err(Attempt::Next(too_large(limit, None)))));
    }
    let end = match net_err {
        None => Ok(()),
        Some(e) => Err(Attempt::Transient {
            what: format!("connection lost after {received} bytes: {}", crate::net::chain(&e)),
            retry_after: None,
            // Only a resume that added bytes is progress; a body that started again
            // from byte 0 (a 200 after a cut) has gained nothing.
            progress: if resumed && received > 0 { Progress::Resumed } else { Progress::None },
        }),
    };
    Ok((part, end))
}

fn too_large(limit: u64, declared: Option<u64>) -> String {
    let declared = declared.map(|d| format!(" (it declares {})", human_bytes(d))).unwrap_or_default();
    format!("larger than the {} limit for this kind of download{declared}", human_bytes(limit))
}

/// A `file://` source (an air-gapped mirror): copy it, hashing, from the start.
async fn copy_file(
    item: &Item,
    path: &str,
    mut part: Partial,
    task: &Task,
) -> Result<(Partial, UrlEnd), FetchError> {
    let src = PathBuf::from(path);
    let limit = item.size.unwrap_or_else(|| size_limit(item.kind));
    // Outer io::Result: our cache file failed (fatal); inner: the source failed (next URL).
    let joined = tokio::task::spawn_blocking(move || {
        let res = (|| -> std::io::Result<Result<u64, std::io::Error>> {
            let mut f = match File::open(&src) {
                Ok(f) => f,
                Err(e) => return Ok(Err(e)),
            };
            part.reset()?;
            let mut buf = vec![0u8; BUF];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => return Ok(Err(e)),
                };
                if n == 0 {
                    return Ok(Ok(part.len));
                }
                if part.len + n as u64 > limit {
                    part.reset()?;
                    return Ok(Err(std::io::Error::other(too_large(limit, None))));
                }
                part.append(&buf[..n])?;
            }
        })();
        (part, res)
    })
    .await;
    let (part, res) =
        joined.map_err(|e| io_err(item, "copying a file:// source", std::io::Error::other(e)))?;
    match res.map_err(|e| io_err(item, "writing the partial download in the cache", e))? {
        Ok(len) => {
            task.set_total(len);
            task.set_position(len);
            Ok((part, UrlEnd::Done))
        }
        Err(e) => Ok((part, UrlEnd::Next(e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_outranks_other_failures() {
        let mismatch = FetchError::Mismatch {
            name: "a".into(),
            version: "1".into(),
            url: "u".into(),
            expected: Sha256::of(b"a"),
            actual: Sha256::of(b"b"),
        };
        let failed = FetchError::AllUrlsFailed { name: "b".into(), version: "1".into(), outcomes: vec![] };
        assert_eq!(FetchError::Several(vec![failed, mismatch]).code(), Code::Integrity);
    }
}
