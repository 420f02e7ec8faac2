//! A real HTTP/1.1 server on 127.0.0.1 for tests: serves in-memory or on-disk files
//! under upstream-shaped paths, honours `Range`, logs every request, and can be told
//! to misbehave per path (status codes, a connection cut mid-body).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &st);
                });
            }
        });
        Server { port, state }
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

fn handle(mut conn: TcpStream, st: &Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut range = None;
        let mut authorization = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("range") {
                    range = Some(v.trim().to_string());
                }
                authorization |= k.eq_ignore_ascii_case("authorization");
            }
        }
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
            write!(conn, "HTTP/1.1 400 Only one auth mechanism allowed\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        if let Some(Fault::Delay(d)) = fault {
            std::thread::sleep(d);
        }
        if let Some(Fault::Status(code)) = fault {
            record(code);
            write!(conn, "HTTP/1.1 {code} Test\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        if let Some(Fault::Silent) = fault {
            record(0);
            std::thread::sleep(std::time::Duration::from_secs(3600));
            return Ok(());
        }
        if let Some(Fault::Endless) = fault {
            record(200);
            write!(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![b'x'; 64 * 1024];
            loop {
                conn.write_all(&chunk)?; // ends when the client hangs up
            }
        }
        let Some(body) = body else {
            record(404);
            write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
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
            if status == 206 { "Partial Content" } else { "OK" },
            declared
        );
        if status == 206 {
            head.push_str(&format!("Content-Range: bytes {from}-{}/{len}\r\n", len - 1));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes())?;
        if method == "HEAD" {
            continue;
        }
        let limit = match fault {
            Some(Fault::CutAfter(n) | Fault::IgnoreRangeCut(n) | Fault::StallAfter(n)) => Some(n),
            Some(Fault::LongerLength(_)) => Some(len - from),
            _ => None,
        };
        let mut sent = 0u64;
        let mut send = |chunk: &[u8], conn: &mut TcpStream| -> std::io::Result<bool> {
            let take = match limit {
                Some(n) => (n.saturating_sub(sent)).min(chunk.len() as u64) as usize,
                None => chunk.len(),
            };
            conn.write_all(&chunk[..take])?;
            sent += take as u64;
            Ok(limit.is_none_or(|n| sent < n))
        };
        match &body {
            Body::Bytes(b) => {
                send(&b[from as usize..], &mut conn)?;
            }
            Body::File(p) => {
                let mut f = std::fs::File::open(p)?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from))?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 || !send(&buf[..n], &mut conn)? {
                        break;
                    }
                }
            }
        }
        if let Some(Fault::StallAfter(_)) = fault {
            conn.flush()?;
            std::thread::sleep(std::time::Duration::from_secs(3600));
            return Ok(());
        }
        if limit.is_some() {
            // Simulate a dropped connection.
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// API fakes: the same loopback server, answering through a handler instead of files,
// over plain HTTP or TLS (rustls), optionally asking for a client certificate. A fake
// that follows an upstream API reference (e.g. Kubernetes Secrets) is a handler.

/// A request as an API fake sees it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// DER of the client's certificate chain, when it presented one (TLS only; the
    /// server verified it against `Tls::client_ca_pem`).
    pub client_certs: Vec<Vec<u8>>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

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

/// The server's certificate chain and key (PEM), and the CA that signs the client
/// certificates it accepts (none: it asks for no client certificate).
#[derive(Clone)]
pub struct Tls {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

pub struct ApiServer {
    pub port: u16,
    pub tls: bool,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl ApiServer {
    pub fn start(
        tls: Option<Tls>,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> ApiServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let cfg = tls.as_ref().map(|t| {
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
                    let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .allow_unauthenticated()
                    .build()
                    .unwrap();
                    b.with_client_cert_verifier(v)
                }
                None => b.with_no_client_auth(),
            };
            Arc::new(b.with_single_cert(certs, key).unwrap())
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, is_tls) = (requests.clone(), cfg.is_some());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (cfg, reqs, handler) = (cfg.clone(), reqs.clone(), handler.clone());
                std::thread::spawn(move || match cfg {
                    Some(cfg) => {
                        let Ok(tls) = rustls::ServerConnection::new(cfg) else { return };
                        let mut s = rustls::StreamOwned::new(tls, conn);
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
                        let _ = serve_api(s, certs, &reqs, &*handler);
                    }
                    None => {
                        let _ = serve_api(conn, Vec::new(), &reqs, &*handler);
                    }
                });
            }
        });
        ApiServer { port, tls: is_tls, requests }
    }

    pub fn base(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_api<S: Read + Write>(
    stream: S,
    client_certs: Vec<Vec<u8>>,
    reqs: &Mutex<Vec<Request>>,
    handler: &Handler,
) -> std::io::Result<()> {
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
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
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        // bounded: a fake never needs more, and a runaway client must not fill memory
        let mut body = vec![0u8; len.min(16 << 20)];
        r.read_exact(&mut body)?;
        let req = Request { method, path, headers, body, client_certs: client_certs.clone() };
        reqs.lock().unwrap().push(req.clone());
        let resp = handler(&req);
        let reason = match resp.status {
            200 => "OK",
            201 => "Created",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            409 => "Conflict",
            422 => "Unprocessable Entity",
            _ => "Status",
        };
        let w = r.get_mut();
        write!(
            w,
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
            resp.status,
            resp.content_type,
            resp.body.len()
        )?;
        w.write_all(&resp.body)?;
        w.flush()?;
    }
}
