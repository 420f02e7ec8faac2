//! The loopback HTTP/1.1 fake every test server is built on: one accept loop on 127.0.0.1,
//! plain or TLS (rustls, optionally verifying client certificates against a test CA), a log
//! of every request, and a handler closure that answers each request on its connection. A
//! handler can answer whole requests (`Fake::api`: a `Request` in, a `Response` out, as the
//! Kubernetes fakes do), stream a body (Proxmox's upload sink), or misbehave at the socket
//! (a cut connection, a stall, a reason phrase an upstream puts its message in).
//!
//! On top of it: `Server`, a file server for upstream-shaped downloads (honours `Range`, can
//! be told to misbehave per path).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A request body a fake reads whole: more is an error, not memory filled by a runaway client.
const MAX_BODY: usize = 64 << 20;

/// A request as a fake sees it (the request log keeps these).
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body, when the handler read it whole (`Exchange::body`); empty otherwise.
    pub body: Vec<u8>,
    /// DER of the client's certificate chain, when it presented one (TLS only; the
    /// server verified it against `Tls::client_ca_pem`).
    pub client_certs: Vec<Vec<u8>>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// A whole answer (`Fake::api` handlers return one).
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response { status, content_type: "application/json".into(), body: serde_json::to_vec(v).unwrap() }
    }
}

/// The standard reason phrase of `status` (what the fakes send unless told otherwise).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// The server's certificate chain and key (PEM), and the CA that signs the client
/// certificates it accepts (none: it asks for no client certificate).
#[derive(Clone)]
pub struct Tls {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// What the connection does after a handler answered.
pub enum Then {
    /// Read the next request (HTTP/1.1 keep-alive).
    Next,
    /// Close the connection.
    Close,
}

/// One request being answered: its head (and body, once read), the connection to answer on.
pub struct Exchange<'a> {
    pub req: Request,
    conn: &'a mut BufReader<Box<dyn Stream>>,
    tcp: &'a TcpStream,
    log: &'a Mutex<Vec<Request>>,
    logged: bool,
    /// The handler read the body (whole or as a stream).
    body_taken: bool,
}

impl Exchange<'_> {
    /// Read the whole body (`Content-Length` or chunked), bounded by `MAX_BODY`; the request
    /// log keeps it.
    pub fn body(&mut self) -> std::io::Result<Vec<u8>> {
        self.body_taken = true;
        let too_big = || std::io::Error::other("request body larger than the fake accepts");
        let body = if self.req.chunked() {
            let mut out = Vec::new();
            loop {
                let mut line = String::new();
                self.conn.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(std::io::Error::other)?;
                if out.len() + n > MAX_BODY {
                    return Err(too_big());
                }
                let mut chunk = vec![0; n + 2];
                self.conn.read_exact(&mut chunk)?;
                if n == 0 {
                    break out;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else {
            let len = self.req.content_length().unwrap_or(0);
            if len > MAX_BODY {
                return Err(too_big());
            }
            let mut b = vec![0; len];
            self.conn.read_exact(&mut b)?;
            b
        };
        self.req.body = body.clone();
        Ok(body)
    }

    /// The body as a stream, for a handler that must not hold it in memory (it reads at
    /// most `Content-Length` bytes itself).
    pub fn reader(&mut self) -> &mut dyn BufRead {
        self.body_taken = true;
        self.conn
    }

    /// Answer with `status` and `reason` (upstreams that put their message into the reason
    /// phrase, like Proxmox, need their own), the headers, and `body` with its length.
    pub fn respond(
        &mut self,
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let w = self.raw();
        w.write_all(head.as_bytes())?;
        w.write_all(body)?;
        w.flush()
    }

    /// The connection to write an answer by hand (a declared length the body does not
    /// have, bytes without end).
    pub fn raw(&mut self) -> &mut dyn Write {
        self.log_once();
        self.conn.get_mut()
    }

    /// The port the client connected to (a fake that names itself in its answers).
    pub fn local_port(&self) -> u16 {
        self.tcp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Drop the connection now, like a network failure.
    pub fn cut(&mut self) {
        self.log_once();
        let _ = self.conn.get_mut().flush();
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }

    /// Logged before the answer goes out: a client that has its answer finds its request in
    /// the log.
    fn log_once(&mut self) {
        if !self.logged {
            self.logged = true;
            self.log.lock().unwrap().push(self.req.clone());
        }
    }
}

type Handler = dyn Fn(&mut Exchange) -> std::io::Result<Then> + Send + Sync;

/// A running fake: its port and request log. Dropping it stops accepting connections and
/// lets go of the handler (and whatever the handler holds: a test's world with its child
/// processes and temp dir) once the open connections end.
pub struct Fake {
    pub port: u16,
    pub tls: bool,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // wake the accept loop so that it sees the flag
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Fake {
    /// Serve every request with `handler`, over TLS when `tls` is given.
    pub fn start(
        tls: Option<Tls>,
        handler: impl Fn(&mut Exchange) -> std::io::Result<Then> + Send + Sync + 'static,
    ) -> Fake {
        let cfg = tls.as_ref().map(server_config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (log2, stop2, is_tls) = (log.clone(), stop.clone(), cfg.is_some());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let (cfg, log, handler) = (cfg.clone(), log2.clone(), handler.clone());
                std::thread::spawn(move || {
                    let Ok(tcp2) = tcp.try_clone() else { return };
                    let (stream, certs): (Box<dyn Stream>, _) = match cfg {
                        Some(cfg) => {
                            let Ok(tls) = rustls::ServerConnection::new(cfg) else { return };
                            let mut s = rustls::StreamOwned::new(tls, tcp);
                            // finish the handshake first: the peer's certificates are known after it
                            while s.conn.is_handshaking() {
                                if s.conn.complete_io(&mut s.sock).is_err() {
                                    return;
                                }
                            }
                            let certs: Vec<Vec<u8>> = s
                                .conn
                                .peer_certificates()
                                .map(|c| c.iter().map(|d| d.to_vec()).collect())
                                .unwrap_or_default();
                            (Box::new(s), certs)
                        }
                        None => (Box::new(tcp), Vec::new()),
                    };
                    let _ = serve(BufReader::new(stream), &tcp2, certs, &log, &*handler);
                });
            }
        });
        Fake { port, tls: is_tls, log, stop }
    }

    /// An API fake: each request is read whole and answered by `handler`.
    pub fn api(tls: Option<Tls>, handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Fake {
        Fake::start(tls, move |x| {
            x.body()?;
            let r = handler(&x.req);
            x.respond(r.status, reason(r.status), &[("Content-Type", &r.content_type)], &r.body)?;
            Ok(Then::Next)
        })
    }

    pub fn base(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

fn server_config(t: &Tls) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(t.cert_chain_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_slice(t.key_pem.as_bytes()).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match &t.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            // a client may come without a certificate (a bearer token): the
            // handler decides, like the API server's authenticators
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(b.with_single_cert(certs, key).unwrap())
}

/// Read request heads off one connection and hand each to `handler`, until the client
/// hangs up or the handler closes.
fn serve(
    mut conn: BufReader<Box<dyn Stream>>,
    tcp: &TcpStream,
    client_certs: Vec<Vec<u8>>,
    log: &Mutex<Vec<Request>>,
    handler: &Handler,
) -> std::io::Result<()> {
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if conn.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let req = Request { method, path, headers, body: Vec::new(), client_certs: client_certs.clone() };
        let mut x = Exchange { req, conn: &mut conn, tcp, log, logged: false, body_taken: false };
        let then = handler(&mut x);
        x.log_once();
        if let Then::Close = then? {
            return Ok(());
        }
        // a body the handler left unread must not be parsed as the next request
        if !x.body_taken {
            if x.req.chunked() {
                return Ok(());
            }
            let len = x.req.content_length().unwrap_or(0) as u64;
            std::io::copy(&mut (&mut conn).take(len), &mut std::io::sink())?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The file server: in-memory or on-disk files under upstream-shaped paths, `Range`, a log
// with each answer's status, and faults per path.

#[derive(Clone)]
pub enum Body {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

/// What the server does for one request to a path; consumed in order, then `Serve`.
#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16),
    /// Send headers for the full body, then only `n` bytes, then close.
    CutAfter(u64),
    /// Wait this long before answering, then serve normally (keeps a download in
    /// flight, e.g. so that two clients overlap).
    Delay(std::time::Duration),
    /// Answer 200 with the whole length whatever the `Range`, send `n` bytes, close
    /// (a server that ignores Range and cuts the body).
    IgnoreRangeCut(u64),
    /// Declare `extra` bytes more than the body has, send the body, close.
    LongerLength(u64),
    /// Send the headers and `n` bytes, then nothing more, keeping the connection open.
    StallAfter(u64),
    /// Read the request and never answer.
    Silent,
    /// 200 without a length, then bytes until the client hangs up.
    Endless,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
    /// The request carried an `Authorization` header.
    pub authorization: bool,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Body>,
    /// URL prefix -> directory: files found there at request time (blob storage).
    dirs: Vec<(String, PathBuf)>,
    /// Answer requests that carry `Authorization` with 400, as S3 does for presigned
    /// URLs ("Only one auth mechanism allowed").
    refuse_authorization: bool,
    faults: HashMap<String, VecDeque<Fault>>,
    /// Faults applied to every request of a path (after the queued ones).
    always: HashMap<String, Fault>,
    log: Vec<Logged>,
}

pub struct Server {
    pub port: u16,
    state: Arc<Mutex<State>>,
    _fake: Fake,
}

impl Server {
    pub fn start() -> Server {
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let fake = Fake::start(None, move |x| handle(x, &st));
        Server { port: fake.port, state, _fake: fake }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base(), path)
    }

    pub fn add_bytes(&self, path: &str, bytes: Vec<u8>) {
        self.state.lock().unwrap().files.insert(path.to_string(), Body::Bytes(Arc::new(bytes)));
    }

    pub fn add_file(&self, path: &str, file: PathBuf) {
        self.state.lock().unwrap().files.insert(path.to_string(), Body::File(file));
    }

    /// Serve the files below `dir` under the URL prefix `prefix` (e.g. `/`).
    pub fn add_dir(&self, prefix: &str, dir: PathBuf) {
        self.state.lock().unwrap().dirs.push((prefix.to_string(), dir));
    }

    /// Refuse (400) any request with an `Authorization` header, like blob storage
    /// behind a registry's redirect.
    pub fn refuse_authorization(&self) {
        self.state.lock().unwrap().refuse_authorization = true;
    }

    pub fn fault(&self, path: &str, faults: Vec<Fault>) {
        self.state.lock().unwrap().faults.insert(path.to_string(), faults.into());
    }

    /// Misbehave the same way on every request for `path`.
    pub fn fault_always(&self, path: &str, fault: Fault) {
        self.state.lock().unwrap().always.insert(path.to_string(), fault);
    }

    /// Requests for `path` so far, whatever their answer.
    pub fn requests(&self, path: &str) -> usize {
        self.log().iter().filter(|l| l.path == path).count()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests for `path` that got a 2xx answer.
    pub fn hits(&self, path: &str) -> usize {
        self.log().iter().filter(|l| l.path == path && (200..300).contains(&l.status)).count()
    }
}

fn handle(x: &mut Exchange, st: &Arc<Mutex<State>>) -> std::io::Result<Then> {
    let method = x.req.method.clone();
    let path = x.req.path.clone();
    let range = x.req.header("range").map(str::to_string);
    let authorization = x.req.header("authorization").is_some();
    let (body, fault, refuse) = {
        let mut s = st.lock().unwrap();
        let fault = s.faults.get_mut(&path).and_then(|q| q.pop_front());
        let fault = fault.or_else(|| s.always.get(&path).cloned());
        let from_dir = || {
            s.dirs.iter().find_map(|(prefix, dir)| {
                let rel = path.strip_prefix(prefix.as_str())?.split('?').next()?;
                let f = dir.join(rel.trim_start_matches('/'));
                (!rel.contains("..") && f.is_file()).then_some(Body::File(f))
            })
        };
        let body = s.files.get(&path).cloned().or_else(from_dir);
        (body, fault, s.refuse_authorization && authorization)
    };
    let record = |status: u16| {
        st.lock().unwrap().log.push(Logged {
            path: path.clone(),
            range: range.clone(),
            status,
            authorization,
        });
    };
    if refuse {
        record(400);
        x.respond(400, "Only one auth mechanism allowed", &[], b"")?;
        return Ok(Then::Next);
    }
    if let Some(Fault::Delay(d)) = fault {
        std::thread::sleep(d);
    }
    if let Some(Fault::Status(code)) = fault {
        record(code);
        x.respond(code, "Test", &[], b"")?;
        return Ok(Then::Next);
    }
    if let Some(Fault::Silent) = fault {
        record(0);
        std::thread::sleep(std::time::Duration::from_secs(3600));
        return Ok(Then::Close);
    }
    if let Some(Fault::Endless) = fault {
        record(200);
        let w = x.raw();
        write!(w, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
        let chunk = vec![b'x'; 64 * 1024];
        loop {
            w.write_all(&chunk)?; // ends when the client hangs up
        }
    }
    let Some(body) = body else {
        record(404);
        x.respond(404, "Not Found", &[], b"")?;
        return Ok(Then::Next);
    };
    let len = match &body {
        Body::Bytes(b) => b.len() as u64,
        Body::File(p) => std::fs::metadata(p)?.len(),
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s < len);
    let (status, from) = match (start, &fault) {
        (_, Some(Fault::IgnoreRangeCut(_))) => (200, 0),
        (Some(s), _) => (206, s),
        (None, _) => (200, 0),
    };
    let declared = match fault {
        Some(Fault::LongerLength(extra)) => len - from + extra,
        _ => len - from,
    };
    record(status);
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n",
        reason(status),
        declared
    );
    if status == 206 {
        head.push_str(&format!("Content-Range: bytes {from}-{}/{len}\r\n", len - 1));
    }
    head.push_str("\r\n");
    let w = x.raw();
    w.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(Then::Next);
    }
    let limit = match fault {
        Some(Fault::CutAfter(n) | Fault::IgnoreRangeCut(n) | Fault::StallAfter(n)) => Some(n),
        Some(Fault::LongerLength(_)) => Some(len - from),
        _ => None,
    };
    let mut sent = 0u64;
    let mut send = |chunk: &[u8], w: &mut dyn Write| -> std::io::Result<bool> {
        let take = match limit {
            Some(n) => (n.saturating_sub(sent)).min(chunk.len() as u64) as usize,
            None => chunk.len(),
        };
        w.write_all(&chunk[..take])?;
        sent += take as u64;
        Ok(limit.is_none_or(|n| sent < n))
    };
    match &body {
        Body::Bytes(b) => {
            send(&b[from as usize..], w)?;
        }
        Body::File(p) => {
            let mut f = std::fs::File::open(p)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from))?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 || !send(&buf[..n], w)? {
                    break;
                }
            }
        }
    }
    w.flush()?;
    if let Some(Fault::StallAfter(_)) = fault {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        return Ok(Then::Close);
    }
    if limit.is_some() {
        // Simulate a dropped connection.
        x.cut();
        return Ok(Then::Close);
    }
    Ok(Then::Next)
}
