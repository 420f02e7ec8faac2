//! The Glance v2 image API: create, streamed PUT with hashing, wait for `active`,
//! compare Glance's digests with ours.

use super::*;

// ---------------------------------------------------------------------------------------------
// Glance

/// Glance's `disk_format` and `container_format` for our image format.
pub fn formats(format: &str) -> (&'static str, &'static str) {
    match format {
        "raw" => ("raw", "bare"),
        "vmdk" => ("vmdk", "bare"),
        "vhdx" => ("vhdx", "bare"),
        "vhd" => ("vhd", "bare"),
        "ova" => ("vmdk", "ova"),
        _ => ("qcow2", "bare"),
    }
}

/// Glance's `architecture` property (libosinfo / nova names).
pub(super) fn glance_arch(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        a => a,
    }
}

/// The POST /v2/images body: core attributes plus our properties (strings, top level).
pub(super) fn create_body(img: &ImageInfo, visibility: &str) -> Value {
    let (disk, container) = formats(&img.format);
    json!({
        "name": img.name,
        "disk_format": disk,
        "container_format": container,
        "visibility": visibility,
        "os_distro": "ubuntu",
        "os_version": "24.04",
        "os_type": "linux",
        "hw_qemu_guest_agent": "yes",
        "architecture": glance_arch(&img.arch),
        "imgbuild_role": img.role,
        "imgbuild_recipe": img.recipe,
        "imgbuild_sha256": img.sha256,
        "imgbuild_version": img.imgbuild_version,
        "kubernetes_version": img.k8s_version,
    })
}

pub(super) struct Api<'a> {
    pub(super) client: &'a reqwest::Client,
    pub(super) base: String,
    pub(super) token: Option<String>,
    /// The credential source, named when Glance rejects the token.
    pub(super) source: String,
}

impl Api<'_> {
    pub(super) fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.header("X-Auth-Token", t),
            None => r,
        }
    }

    /// Send, require 2xx, return the body parsed as JSON (Null when empty).
    pub(super) async fn call(&self, what: &str, rb: reqwest::RequestBuilder) -> Result<Value, GlanceError> {
        let resp =
            rb.send().await.map_err(|e| GlanceError::Transport { what: what.to_string(), msg: chain(&e) })?;
        let status = resp.status().as_u16();
        let body = crate::net::read_capped(resp, MAX_ANSWER)
            .await
            .map_err(|e| GlanceError::Transport { what: what.to_string(), msg: e.to_string() })?;
        let text = String::from_utf8_lossy(&body);
        if status == 401 {
            return Err(GlanceError::Auth {
                source_desc: self.source.clone(),
                status,
                detail: format!(" (Glance rejected the token on {what})"),
            });
        }
        if !(200..300).contains(&status) {
            return Err(GlanceError::Http { what: what.to_string(), status, body: short(&text) });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| GlanceError::Http {
            what: what.to_string(),
            status,
            body: format!("bad JSON: {e}"),
        })
    }

    pub(super) async fn show(&self, id: &str) -> Result<Value, GlanceError> {
        self.call(&format!("GET image {id}"), self.req(reqwest::Method::GET, &format!("/v2/images/{id}")))
            .await
    }

    pub(super) async fn delete(&self, id: &str) -> Result<(), GlanceError> {
        self.call(
            &format!("DELETE image {id}"),
            self.req(reqwest::Method::DELETE, &format!("/v2/images/{id}")),
        )
        .await
        .map(|_| ())
    }
}

pub(super) use crate::net::chain;

/// The largest API answer read (an image list or a catalog is kilobytes).
pub(super) const MAX_ANSWER: u64 = 16 << 20;

/// Digests of the image file, as Glance may report them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Digests {
    pub(super) sha512: String,
    pub(super) md5: String,
    pub(super) size: u64,
}

#[derive(Default)]
pub(super) struct Hashing {
    pub(super) sha512: Sha512,
    pub(super) md5: Md5,
    pub(super) sha256: Sha256,
    pub(super) size: u64,
}

impl Hashing {
    pub(super) fn update(&mut self, b: &[u8]) {
        self.sha512.update(b);
        self.md5.update(b);
        self.sha256.update(b);
        self.size += b.len() as u64;
    }
    /// The digests, plus the sha256 of what was actually read (to catch a file changed under us).
    pub(super) fn finish(self) -> (Digests, String) {
        let d = Digests {
            sha512: hex::encode(self.sha512.finalize()),
            md5: hex::encode(self.md5.finalize()),
            size: self.size,
        };
        (d, hex::encode(self.sha256.finalize()))
    }
}

pub(super) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> GlanceError + '_ {
    move |e| GlanceError::Io { path: path.display().to_string(), source: e }
}

/// Hash the file from disk (only needed when an existing image has to be compared by digest).
pub(super) fn hash_file(path: &Path) -> Result<Digests, GlanceError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Hashing::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish().0)
}

/// Does this listed image hold exactly our bytes? Glance's own hash (and size) decide, as in the
/// post-upload verification; the `imgbuild_sha256` property is trusted only when Glance reports no
/// checksum at all, so an image left unverified (a timed-out or crashed run) is never taken on
/// the property alone.
pub(super) fn same_image(img: &Value, ours: &ImageInfo, digests: &Digests) -> bool {
    match verify("", img, digests, &ours.sha256) {
        Ok(()) => true,
        Err(GlanceError::NoChecksum { .. }) => img["imgbuild_sha256"].as_str() == Some(ours.sha256.as_str()),
        Err(_) => false,
    }
}

/// Compare what Glance computed with what we sent: `os_hash_*` when present (sha512 by default;
/// sha256 also understood), else the legacy md5 `checksum`.
pub(super) fn verify(id: &str, shown: &Value, ours: &Digests, sha256: &str) -> Result<(), GlanceError> {
    let mismatch = |what: &str, expected: &str, got: &str| GlanceError::Mismatch {
        id: id.to_string(),
        what: what.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
    };
    if let Some(size) = shown["size"].as_u64() {
        if size != ours.size {
            return Err(mismatch("size", &ours.size.to_string(), &size.to_string()));
        }
    }
    let algo = shown["os_hash_algo"].as_str().unwrap_or("");
    if let Some(value) = shown["os_hash_value"].as_str().filter(|v| !v.is_empty()) {
        let expected = match algo {
            "sha512" => Some(ours.sha512.as_str()),
            "sha256" => Some(sha256),
            _ => None,
        };
        if let Some(exp) = expected {
            return if value.eq_ignore_ascii_case(exp) { Ok(()) } else { Err(mismatch(algo, exp, value)) };
        }
    }
    match shown["checksum"].as_str().filter(|v| !v.is_empty()) {
        Some(c) if c.eq_ignore_ascii_case(&ours.md5) => Ok(()),
        Some(c) => Err(mismatch("md5 checksum", &ours.md5, c)),
        None => Err(GlanceError::NoChecksum { id: id.to_string() }),
    }
}

/// Result of one PUT: the digests of what was streamed, or why it failed.
pub(super) enum PutResult {
    Done(Digests, String),
    /// Transport error or 5xx: worth looking at the image and maybe retrying.
    Retryable(String),
}

pub(super) async fn put_file(
    api: &Api<'_>,
    id: &str,
    img: &ImageInfo,
    progress: &Reporter,
    attempt: u32,
) -> Result<PutResult, GlanceError> {
    let path = img.path.clone();
    let file = tokio::fs::File::open(&path).await.map_err(io_err(&img.path))?;
    let hashing = Arc::new(Mutex::new(Hashing::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let (h2, s2) = (hashing.clone(), sent.clone());
    let stream = futures_util::stream::unfold(Some(file), move |state| {
        let (h, s) = (h2.clone(), s2.clone());
        async move {
            use tokio::io::AsyncReadExt;
            let mut file = state?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    if let Ok(mut g) = h.lock() {
                        g.update(&buf);
                    }
                    s.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok::<Vec<u8>, std::io::Error>(buf), Some(file)))
                }
                // End the stream after handing the error to the HTTP client.
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    let label = if attempt > 1 { format!("glance (attempt {attempt})") } else { "glance upload".to_string() };
    let task = progress.task(&label, Some(img.size));
    let send = api
        .req(reqwest::Method::PUT, &format!("/v2/images/{id}/file"))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, img.size)
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    tokio::pin!(send);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let started = Instant::now();
    let resp = loop {
        tokio::select! {
            r = &mut send => break r,
            _ = tick.tick() => task.set_position(sent.load(Ordering::Relaxed)),
        }
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            task.abandon();
            return Ok(PutResult::Retryable(chain(&e)));
        }
    };
    let status = resp.status().as_u16();
    // An answer that does not arrive whole (or is absurdly large) reads as empty: the
    // status decides, and the message says less.
    let body = crate::net::read_capped(resp, MAX_ANSWER).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    if status >= 500 {
        task.abandon();
        return Ok(PutResult::Retryable(format!("HTTP {status}: {}", short(&text))));
    }
    if !(200..300).contains(&status) {
        task.abandon();
        return Err(GlanceError::Http { what: format!("PUT image {id} data"), status, body: short(&text) });
    }
    task.finish(&format!(
        "uploaded {} to glance image {id} ({:.1} s)",
        crate::reporter::human_bytes(img.size),
        started.elapsed().as_secs_f64()
    ));
    let h = match Arc::try_unwrap(hashing) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        // The client still holds the stream: take the state out.
        Err(arc) => arc.lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default(),
    };
    let (d, sha256) = h.finish();
    Ok(PutResult::Done(d, sha256))
}

/// The image's status once Glance has noticed a broken upload: `saving` turns into `queued`
/// (stream broken, Glance restores the image) or `active` (only our answer was lost).
pub(super) async fn settle(api: &Api<'_>, id: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.show(id).await.ok()?["status"].as_str()?.to_string();
        if status != "saving" || Instant::now() >= deadline {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Poll until `active`; `killed`/`deleted` or the deadline end it.
pub(super) async fn wait_active(api: &Api<'_>, id: &str, wait: Duration) -> Result<Value, GlanceError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let shown = api.show(id).await?;
        let status = shown["status"].as_str().unwrap_or("").to_string();
        match status.as_str() {
            "active" => return Ok(shown),
            "killed" | "deleted" | "pending_delete" | "deactivated" => {
                return Err(GlanceError::Failed { id: id.to_string(), status })
            }
            _ => {}
        }
        if start.elapsed() >= wait {
            return Err(GlanceError::Timeout { id: id.to_string(), status, secs: wait.as_secs() });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
