//! `imgbuild upload --target glance` against a REAL glance-api (Debian's python3-glance, run with
//! the unauthenticated paste pipeline, sqlite and the file store, started and stopped here). In
//! front of it sits a loopback "front" server that is a Keystone v3 stand-in for
//! `POST /v3/auth/tokens` (Keystone is not the subject) and a forwarding proxy for `/v2/...` to
//! the real glance-api, which logs every request and can inject faults (cut an upload, report a
//! wrong hash).
use crate::common;
use crate::common::http::{Exchange, Fake, Request, Then};

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha512};

const PASSWORD: &str = "pa55-Word-glance";
const APP_SECRET: &str = "app-secret-7d1f";
const TOKEN: &str = "gAAAA-test-token";

// ---------------------------------------------------------------------------------------------
// The real glance-api

/// A Python that can import glance (Debian's python3-glance lives in /usr/bin/python3's path).
fn glance_python() -> Option<String> {
    let mut cands = vec![];
    if let Ok(p) = std::env::var("IMGBUILD_TEST_GLANCE_PYTHON") {
        cands.push(p);
    }
    cands.extend(["/usr/bin/python3".to_string(), "python3".to_string()]);
    cands.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import glance.cmd.api, glance.cmd.manage"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// None (after a printed note) when glance is not installed and we are not in CI.
fn glance_or_skip() -> Option<String> {
    match glance_python() {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI is set but no python3 can import glance (ci/test.sh installs python3-glance)")
        }
        None => {
            eprintln!(
                "note: glance-api not installed (apt-get install python3-glance); real-glance test skipped"
            );
            None
        }
    }
}

struct Glance {
    child: Child,
    port: u16,
    store: PathBuf,
    log: PathBuf,
}

impl Drop for Glance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PASTE_INI: &str = "\
[pipeline:glance-api]
pipeline = versionnegotiation unauthenticated-context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:unauthenticated-context]
paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory
";

fn py_main(python: &str, module: &str, argv0: &str, args: &[&str]) -> Command {
    let mut c = Command::new(python);
    let argv: Vec<String> =
        std::iter::once(argv0).chain(args.iter().copied()).map(|a| format!("{a:?}")).collect();
    c.arg("-c").arg(format!(
        "import sys; from {module} import main; sys.argv=[{}]; sys.exit(main())",
        argv.join(",")
    ));
    c
}

fn start_glance(python: &str, dir: &Path) -> Glance {
    let store = dir.join("images");
    std::fs::create_dir_all(&store).unwrap();
    let paste = dir.join("glance-api-paste.ini");
    std::fs::write(&paste, PASTE_INI).unwrap();
    let conf = dir.join("glance-api.conf");
    let conf_s = conf.to_str().unwrap();
    // glance-api cannot be handed a bound socket: it is told a port that was free a moment
    // ago, which another test's server may take before glance binds it (glance then gives
    // up after 30 s). Such a start is retried on a new port.
    for attempt in 1..=3 {
        let port = common::free_port();
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {port}\nworkers = 0\nenabled_backends = fs:file\n\
                 [database]\nconnection = sqlite:///{d}/glance.sqlite\n\
                 [paste_deploy]\nflavor =\nconfig_file = {paste}\n\
                 [glance_store]\ndefault_backend = fs\n\
                 [fs]\nfilesystem_store_datadir = {store}\n\
                 [os_glance_staging_store]\nfilesystem_store_datadir = {d}/staging\n\
                 [os_glance_tasks_store]\nfilesystem_store_datadir = {d}/tasks\n",
                paste = paste.display(),
                store = store.display(),
            ),
        )
        .unwrap();
        if attempt == 1 {
            let sync = py_main(
                python,
                "glance.cmd.manage",
                "glance-manage",
                &["--config-file", conf_s, "db", "sync"],
            )
            .output()
            .unwrap();
            assert!(
                sync.status.success(),
                "glance-manage db sync: {}",
                String::from_utf8_lossy(&sync.stderr)
            );
        }
        let log = dir.join("glance-api.log");
        let err_log = dir.join("glance-api.err");
        let child = py_main(python, "glance.cmd.api", "glance-api", &["--config-file", conf_s])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&err_log).unwrap())
            .spawn()
            .unwrap();
        let mut g = Glance { child, port, store: store.clone(), log };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(st)) = g.child.try_wait() {
                let err = std::fs::read_to_string(&err_log).unwrap_or_default();
                let log = std::fs::read_to_string(&g.log).unwrap_or_default();
                if attempt < 3 && format!("{err}{log}").contains("Could not bind to") {
                    eprintln!(
                        "glance-api: port {port} was taken meanwhile (attempt {attempt}); another port"
                    );
                    break;
                }
                panic!("glance-api exited ({st}): {err}");
            }
            // only glance answers this with an image list: not another test's server
            // that took the port
            if let Ok(v) = http_json(port, "GET", "/v2/images", None) {
                if v["images"].is_array() {
                    return g;
                }
            }
            assert!(Instant::now() < deadline, "glance-api did not answer within 120 s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// A one-shot HTTP/1.1 request straight to glance-api (test-side checks).
fn http_json(port: u16, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    // bounded: whatever holds the port may accept and never answer
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let resp = read_response(&mut BufReader::new(s))?;
    Ok(serde_json::from_slice(&resp.body).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing for the front server

struct Msg {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Msg {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Head = (String, Vec<(String, String)>);

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let mut headers = vec![];
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some((start.trim_end().to_string(), headers)))
}

fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut out = vec![];
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if n == 0 {
            let mut end = String::new();
            r.read_line(&mut end)?;
            return Ok(out);
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk)?;
        out.extend_from_slice(&chunk[..n]);
    }
}

fn read_response(r: &mut impl BufRead) -> std::io::Result<Msg> {
    let (start, headers) = read_head(r)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let m = Msg { start, headers, body: vec![] };
    let body = if m.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunked(r)?
    } else if let Some(n) = m.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut b = vec![0; n];
        r.read_exact(&mut b)?;
        b
    } else {
        let mut b = vec![];
        r.read_to_end(&mut b)?;
        b
    };
    Ok(Msg { body, ..m })
}

// ---------------------------------------------------------------------------------------------
// The front server: Keystone stand-in + logging, fault-injecting proxy to glance-api

#[derive(Clone, Debug)]
struct Logged {
    method: String,
    path: String,
    token: Option<String>,
    /// Body of Keystone requests (JSON), for the auth-body assertions.
    body: Option<Value>,
    put_content_length: Option<String>,
}

#[derive(Default)]
struct Faults {
    /// Cut the next `cuts_left` PUTs after this many body bytes.
    cut_put_after: usize,
    cuts_left: usize,
    /// Report a wrong os_hash_value on image GETs.
    corrupt_hash: bool,
    /// Report this status on image GETs.
    force_status: Option<String>,
    /// Answer every `/v2` request with 401 (a token Glance does not accept).
    glance_401: bool,
}

struct Front {
    port: u16,
    log: Arc<Mutex<Vec<Logged>>>,
    faults: Arc<Mutex<Faults>>,
    _fake: Fake,
}

impl Front {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
    fn glance_calls(&self) -> Vec<(String, String)> {
        self.log().into_iter().filter(|l| l.path.starts_with("/v2")).map(|l| (l.method, l.path)).collect()
    }
}

/// `glance_port`: where `/v2` is forwarded (None: a Keystone-only front, catalog points at it).
fn start_front(glance_port: Option<u16>) -> Front {
    let (log, faults): (Arc<Mutex<Vec<Logged>>>, Arc<Mutex<Faults>>) = Default::default();
    let (l2, f2) = (log.clone(), faults.clone());
    let fake = Fake::start(None, move |x| serve(x, glance_port, &l2, &f2));
    Front { port: fake.port, log, faults, _fake: fake }
}

fn keystone(x: &mut Exchange, body: &Value) -> std::io::Result<()> {
    let id = &body["auth"]["identity"];
    let ok = match id["methods"][0].as_str() {
        Some("password") => id["password"]["user"]["password"] == PASSWORD,
        Some("application_credential") => id["application_credential"]["secret"] == APP_SECRET,
        _ => false,
    };
    if !ok {
        let b = json!({"error": {"code": 401, "title": "Unauthorized",
            "message": "The request you have made requires authentication."}});
        return x.respond(
            401,
            "Unauthorized",
            &[("Content-Type", "application/json")],
            b.to_string().as_bytes(),
        );
    }
    let url = format!("http://127.0.0.1:{}", x.local_port());
    let b = json!({"token": {"methods": ["password"], "catalog": [
        {"type": "identity", "name": "keystone", "endpoints": [
            {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": format!("{url}/v3")}]},
        {"type": "image", "name": "glance", "endpoints": [
            {"interface": "internal", "region": "RegionOne", "region_id": "RegionOne", "url": "http://127.0.0.1:9/"},
            {"interface": "public", "region": "RegionTwo", "region_id": "RegionTwo", "url": "http://127.0.0.1:9/"},
            {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": url}]}
    ]}});
    x.respond(
        201,
        "Created",
        &[("Content-Type", "application/json"), ("X-Subject-Token", TOKEN)],
        b.to_string().as_bytes(),
    )
}

fn serve(
    x: &mut Exchange,
    glance_port: Option<u16>,
    log: &Mutex<Vec<Logged>>,
    faults: &Mutex<Faults>,
) -> std::io::Result<Then> {
    let (method, path) = (x.req.method.clone(), x.req.path.clone());
    let len = x.req.content_length().unwrap_or(0);
    let cut = {
        let mut f = faults.lock().unwrap();
        (method == "PUT" && f.cuts_left > 0).then(|| {
            f.cuts_left -= 1;
            f.cut_put_after
        })
    };
    let mut entry = Logged {
        method: method.clone(),
        path: path.clone(),
        token: x.req.header("x-auth-token").map(str::to_string),
        body: None,
        put_content_length: if method == "PUT" {
            x.req.header("content-length").map(str::to_string)
        } else {
            None
        },
    };
    if let (Some(n), Some(gp)) = (cut, glance_port) {
        // Forward the head and `n` body bytes, then drop both connections mid-upload.
        log.lock().unwrap().push(entry);
        let mut up = TcpStream::connect(("127.0.0.1", gp))?;
        write_head(&mut up, &x.req, len)?;
        let mut part = vec![0; n];
        x.reader().read_exact(&mut part)?;
        up.write_all(&part)?;
        up.flush()?;
        std::thread::sleep(Duration::from_millis(300));
        let _ = up.shutdown(std::net::Shutdown::Both);
        x.cut();
        return Ok(Then::Close);
    }
    let body = x.body()?;
    if method == "POST" && path.starts_with("/v3/auth/tokens") {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        entry.body = Some(v.clone());
        log.lock().unwrap().push(entry);
        keystone(x, &v)?;
        return Ok(Then::Next);
    }
    log.lock().unwrap().push(entry);
    if faults.lock().unwrap().glance_401 {
        x.respond(401, "Unauthorized", &[], b"")?;
        return Ok(Then::Next);
    }
    let Some(gp) = glance_port else {
        x.respond(404, "Not Found", &[], b"")?;
        return Ok(Then::Next);
    };
    let mut up = TcpStream::connect(("127.0.0.1", gp))?;
    write_head(&mut up, &x.req, body.len())?;
    up.write_all(&body)?;
    let resp = read_response(&mut BufReader::new(up))?;
    let mut out = resp.body.clone();
    let is_show = method == "GET" && path.starts_with("/v2/images/") && !path.ends_with("/file");
    let (corrupt, force) = {
        let f = faults.lock().unwrap();
        (f.corrupt_hash, f.force_status.clone())
    };
    if is_show && (corrupt || force.is_some()) {
        if let Ok(mut v) = serde_json::from_slice::<Value>(&out) {
            if corrupt && v["os_hash_value"].is_string() {
                v["os_hash_value"] = json!("0".repeat(128));
            }
            if let Some(st) = force {
                v["status"] = json!(st);
            }
            out = v.to_string().into_bytes();
        }
    }
    // Glance's own status line, passed through
    let status = resp.start.split_once(' ').map(|x| x.1).unwrap_or("502 Bad Gateway");
    let (code, reason) = status.split_once(' ').unwrap_or((status, ""));
    let code = code.parse().unwrap_or(502);
    let ct = resp.header("content-type").unwrap_or("application/json").to_string();
    x.respond(code, reason, &[("Content-Type", &ct)], &out)?;
    Ok(Then::Next)
}

/// The request's head as glance-api gets it: its own length, one request per connection.
fn write_head(up: &mut TcpStream, req: &Request, len: usize) -> std::io::Result<()> {
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        let k_l = k.to_ascii_lowercase();
        if !["connection", "content-length", "transfer-encoding"].contains(&k_l.as_str()) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!("Content-Length: {len}\r\nConnection: close\r\n\r\n"));
    up.write_all(head.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Images and the CLI

struct Img {
    path: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
    name: String,
}

/// A real qcow2 (Glance checks the format of what it stores) with pseudo-random content,
/// plus the sidecars `imgbuild build` writes.
fn make_image(dir: &Path, seed: u64, mib: usize) -> Img {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = vec![0u8; mib << 20];
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let sub = dir.join(format!("out-{seed}"));
    std::fs::create_dir_all(&sub).unwrap();
    let (path, sha256) = common::stand_in_image(&sub, &data);
    let bytes = std::fs::read(&path).unwrap();
    let name = format!("k8s-worker-amd64-{}", &sha256[..12]);
    Img { path, bytes, sha256, name }
}

/// The binary with a clean OpenStack environment (nothing leaks in from the caller's shell).
fn upload_cmd(img: &Img, home: &Path) -> Command {
    let mut c = common::bin();
    for (k, _) in std::env::vars() {
        if k.starts_with("OS_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", home).env("XDG_CONFIG_HOME", home.join(".config")).current_dir(home);
    c.args(["upload", "--target", "glance"]).arg(&img.path);
    c
}

fn with_env_password(c: &mut Command, front: &Front, password: &str) {
    c.env("OS_AUTH_URL", format!("{}/v3", front.base()))
        .env("OS_USERNAME", "imgbuild")
        .env("OS_PASSWORD", password)
        .env("OS_PROJECT_NAME", "k8s-images")
        .env("OS_USER_DOMAIN_NAME", "Default")
        .env("OS_PROJECT_DOMAIN_NAME", "Default")
        .env("OS_REGION_NAME", "RegionOne");
}

fn run(mut c: Command) -> (i32, String, String) {
    let out: Output = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_clouds_yaml(dir: &Path, auth_url: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("clouds.yaml"),
        format!(
            "clouds:\n  other:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n      username: nobody\n      password: x\n\
             \x20 images:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {auth_url}\n\
             \x20     application_credential_id: ac-42\n    region_name: RegionOne\n"
        ),
    )
    .unwrap();
    // The secret sits in secure.yaml, merged into the cloud as openstacksdk does.
    std::fs::write(
        dir.join("secure.yaml"),
        format!("clouds:\n  images:\n    auth:\n      application_credential_secret: {APP_SECRET}\n"),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn real_glance_upload_verify_noop_retry_and_mismatch() {
    let Some(python) = glance_or_skip() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let glance = start_glance(&python, &tmp.path().join("glance"));
    let front = start_front(Some(glance.port));
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    // 1. First upload with OS_* password credentials.
    let img = make_image(tmp.path(), 1, 3);
    let mut c = upload_cmd(&img, &home);
    with_env_password(&mut c, &front, PASSWORD);
    let (code, stdout, stderr) = run(c);
    assert_eq!(code, 0, "stderr: {stderr}");
    let id = stdout.trim().to_string();
    assert_eq!(id.len(), 36, "an image UUID on stdout: {stdout:?}");
    assert!(stderr.contains(&format!("uploaded {id}")), "{stderr}");
    assert!(!stderr.contains(PASSWORD) && !stdout.contains(PASSWORD));

    let ks: Vec<_> = front.log().into_iter().filter(|l| l.path.starts_with("/v3")).collect();
    assert_eq!(ks.len(), 1);
    let body = ks[0].body.clone().unwrap();
    assert_eq!(body["auth"]["identity"]["methods"], json!(["password"]));
    assert_eq!(
        body["auth"]["identity"]["password"]["user"],
        json!({"name": "imgbuild", "domain": {"name": "Default"}, "password": PASSWORD})
    );
    assert_eq!(
        body["auth"]["scope"]["project"],
        json!({"name": "k8s-images", "domain": {"name": "Default"}})
    );
    let calls = front.glance_calls();
    assert_eq!(
        calls.iter().map(|(m, p)| (m.as_str(), p.split('?').next().unwrap())).take(3).collect::<Vec<_>>(),
        vec![
            ("GET", "/v2/images"),
            ("POST", "/v2/images"),
            ("PUT", format!("/v2/images/{id}/file").as_str())
        ]
    );
    assert!(calls[0].1.contains(&format!("name={}", img.name)), "{calls:?}");
    assert!(calls[3..].iter().all(|(m, p)| m == "GET" && *p == format!("/v2/images/{id}")), "{calls:?}");
    let log = front.log();
    assert!(log.iter().filter(|l| l.path.starts_with("/v2")).all(|l| l.token.as_deref() == Some(TOKEN)));
    let put = log.iter().find(|l| l.method == "PUT").unwrap();
    assert_eq!(put.put_content_length.as_deref(), Some(img.bytes.len().to_string().as_str()));

    // What glance-api stored: the bytes, status, hashes, properties.
    let stored = std::fs::read(glance.store.join(&id)).unwrap();
    assert!(stored == img.bytes, "file store holds different bytes");
    let shown = http_json(glance.port, "GET", &format!("/v2/images/{id}"), None).unwrap();
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["name"], img.name);
    assert_eq!(shown["os_hash_algo"], "sha512");
    assert_eq!(shown["os_hash_value"], hex::encode(Sha512::digest(&img.bytes)));
    assert_eq!(shown["checksum"], hex::encode(md5::Md5::digest(&img.bytes)));
    assert_eq!(shown["size"], img.bytes.len());
    for (k, v) in [
        ("disk_format", "qcow2"),
        ("container_format", "bare"),
        ("visibility", "private"),
        ("os_distro", "ubuntu"),
        ("os_version", "24.04"),
        ("os_type", "linux"),
        ("hw_qemu_guest_agent", "yes"),
        ("architecture", "x86_64"),
        ("imgbuild_role", "worker"),
        ("imgbuild_version", "0.1.0"),
        ("kubernetes_version", "v1.30.3"),
    ] {
        assert_eq!(shown[k], v, "property {k}");
    }
    assert_eq!(shown["imgbuild_sha256"], img.sha256);

    // 2. Re-upload: clouds.yaml (+ secure.yaml) cloud `images` via OS_CLOUD, application
    // credential; the env's wrong password must not be used. A no-op: nothing sent.
    write_clouds_yaml(&home.join(".config/openstack"), &format!("{}/v3", front.base()));
    let before = front.glance_calls().len();
    let mut c = upload_cmd(&img, &home);
    with_env_password(&mut c, &front, "wrong-env-password");
    c.env("OS_CLOUD", "images");
    let (code, stdout, stderr) = run(c);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stdout.trim(), id);
    assert!(stderr.contains(&format!("already present {id}")), "{stderr}");
    assert!(stderr.contains("clouds.yaml") && stderr.contains("`images`"), "{stderr}");
    let after = front.glance_calls();
    assert_eq!(after[before..].iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), vec!["GET"]);
    let ks = front.log().into_iter().rfind(|l| l.path.starts_with("/v3")).unwrap();
    assert_eq!(
        ks.body.unwrap(),
        json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": "ac-42", "secret": APP_SECRET}}}})
    );

    // 3. An upload cut after 1 MiB: the image is back to `queued`, the PUT is repeated from the start.
    let img2 = make_image(tmp.path(), 2, 3);
    {
        let mut f = front.faults.lock().unwrap();
        (f.cut_put_after, f.cuts_left) = (1 << 20, 1);
    }
    let before = front.glance_calls().len();
    let mut c = upload_cmd(&img2, &home);
    with_env_password(&mut c, &front, PASSWORD);
    let (code, stdout, stderr) = run(c);
    assert_eq!(code, 0, "stderr: {stderr}\nglance log: {}", std::fs::read_to_string(&glance.log).unwrap());
    let id2 = stdout.trim().to_string();
    let calls = &front.glance_calls()[before..];
    assert_eq!(calls.iter().filter(|(m, _)| m == "POST").count(), 1, "{calls:?}");
    assert_eq!(calls.iter().filter(|(m, _)| m == "PUT").count(), 2, "{calls:?}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(std::fs::read(glance.store.join(&id2)).unwrap() == img2.bytes);

    // 3b. Cut three times: the queued image has had its PUTs; it is deleted and created anew.
    let img2b = make_image(tmp.path(), 12, 2);
    {
        let mut f = front.faults.lock().unwrap();
        (f.cut_put_after, f.cuts_left) = (1 << 20, 3);
    }
    let before = front.glance_calls().len();
    let mut c = upload_cmd(&img2b, &home);
    with_env_password(&mut c, &front, PASSWORD);
    let (code, stdout, stderr) = run(c);
    assert_eq!(code, 0, "stderr: {stderr}");
    let calls = &front.glance_calls()[before..];
    let count = |m: &str| calls.iter().filter(|(x, _)| x == m).count();
    assert_eq!((count("POST"), count("PUT"), count("DELETE")), (2, 4, 1), "{calls:?}");
    let listed = http_json(glance.port, "GET", &format!("/v2/images?name={}", img2b.name), None).unwrap();
    assert_eq!(listed["images"].as_array().unwrap().len(), 1, "the abandoned image is deleted");
    assert_eq!(listed["images"][0]["id"], stdout.trim());
    assert!(std::fs::read(glance.store.join(stdout.trim())).unwrap() == img2b.bytes);

    // 4. Glance reports a different sha512: exit 3, and the bad image is deleted.
    let img3 = make_image(tmp.path(), 3, 1);
    front.faults.lock().unwrap().corrupt_hash = true;
    let mut c = upload_cmd(&img3, &home);
    with_env_password(&mut c, &front, PASSWORD);
    let (code, _stdout, stderr) = run(c);
    front.faults.lock().unwrap().corrupt_hash = false;
    assert_eq!(code, 3, "stderr: {stderr}");
    assert!(stderr.contains("sha512 mismatch"), "{stderr}");
    let listed = http_json(glance.port, "GET", &format!("/v2/images?name={}", img3.name), None).unwrap();
    assert_eq!(listed["images"], json!([]), "the mismatching image must be deleted");
    let ids: Vec<String> = std::fs::read_dir(&glance.store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 3, "only the three good images stay in the store: {ids:?}");

    // 5. Glance kills the image: exit 1, the image is deleted.
    let img4 = make_image(tmp.path(), 4, 1);
    front.faults.lock().unwrap().force_status = Some("killed".into());
    let mut c = upload_cmd(&img4, &home);
    with_env_password(&mut c, &front, PASSWORD);
    let (code, _, stderr) = run(c);
    front.faults.lock().unwrap().force_status = None;
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stderr.contains("went to status `killed`"), "{stderr}");
    let listed = http_json(glance.port, "GET", &format!("/v2/images?name={}", img4.name), None).unwrap();
    assert_eq!(listed["images"], json!([]));

    // 6. Never active within --glance-wait: exit 1. The image (really active in Glance) stays, and
    // the next run finds it by name and accepts it only after comparing Glance's hash with ours.
    let img5 = make_image(tmp.path(), 5, 1);
    front.faults.lock().unwrap().force_status = Some("saving".into());
    let mut c = upload_cmd(&img5, &home);
    with_env_password(&mut c, &front, PASSWORD);
    c.args(["--glance-wait", "1"]);
    let (code, _, stderr) = run(c);
    front.faults.lock().unwrap().force_status = None;
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stderr.contains("still `saving` after 1 s"), "{stderr}");
    let mut c = upload_cmd(&img5, &home);
    with_env_password(&mut c, &front, PASSWORD);
    let (code, stdout5, stderr) = run(c);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stderr.contains("comparing digests") && stderr.contains("already present"), "{stderr}");
    assert!(std::fs::read(glance.store.join(stdout5.trim())).unwrap() == img5.bytes);

    // 7. A `queued` image of ours left by an interrupted run (created here straight at glance-api)
    // takes the data: no POST, the PUT goes to that image.
    let img6 = make_image(tmp.path(), 6, 1);
    let leftover = http_json(
        glance.port,
        "POST",
        "/v2/images",
        Some(&json!({"name": img6.name, "disk_format": "qcow2", "container_format": "bare",
                     "imgbuild_sha256": img6.sha256})),
    )
    .unwrap();
    let lid = leftover["id"].as_str().unwrap().to_string();
    let before = front.glance_calls().len();
    let mut c = upload_cmd(&img6, &home);
    with_env_password(&mut c, &front, PASSWORD);
    let (code, stdout, stderr) = run(c);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stdout.trim(), lid);
    let calls = &front.glance_calls()[before..];
    assert!(!calls.iter().any(|(m, _)| m == "POST"), "{calls:?}");
    assert!(calls.contains(&("PUT".to_string(), format!("/v2/images/{lid}/file"))), "{calls:?}");
    assert!(std::fs::read(glance.store.join(&lid)).unwrap() == img6.bytes);

    // 8. OS_AUTH_TYPE=none: straight at the noauth glance-api (`/v2/` suffix tolerated), no Keystone.
    let img7 = make_image(tmp.path(), 9, 1);
    let mut c = upload_cmd(&img7, &home);
    c.env("OS_AUTH_TYPE", "none")
        .args(["--glance-endpoint", &format!("http://127.0.0.1:{}/v2/", glance.port)]);
    let (code, stdout, stderr) = run(c);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(std::fs::read(glance.store.join(stdout.trim())).unwrap() == img7.bytes);
}

#[test]
fn wrong_password_exits_1_naming_the_source_without_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let front = start_front(None);
    let img = make_image(tmp.path(), 7, 1);
    let bad = "Hunter2-not-the-password";
    let mut c = upload_cmd(&img, tmp.path());
    with_env_password(&mut c, &front, bad);
    let (code, stdout, stderr) = run(c);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("authentication failed") && stderr.contains("environment variables (OS_*)"),
        "{stderr}"
    );
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(!stderr.contains(bad) && !stdout.contains(bad), "the password leaked: {stderr}");
    assert!(front.glance_calls().is_empty());

    // Keystone accepts, Glance rejects the token: also exit 1 naming the source.
    front.faults.lock().unwrap().glance_401 = true;
    let mut c = upload_cmd(&img, tmp.path());
    with_env_password(&mut c, &front, PASSWORD);
    let (code, _, stderr) = run(c);
    front.faults.lock().unwrap().glance_401 = false;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Glance rejected the token") && stderr.contains("environment variables"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD) && !stderr.contains(TOKEN), "{stderr}");

    // Same through clouds.yaml in ./ (first in the search order): names the file and the cloud.
    std::fs::write(
        tmp.path().join("clouds.yaml"),
        format!(
            "clouds:\n  prod:\n    auth:\n      auth_url: {}/v3\n      username: u\n      password: {bad}\n      \
             project_id: p1\n",
            front.base()
        ),
    )
    .unwrap();
    let mut c = upload_cmd(&img, tmp.path());
    c.args(["--os-cloud", "prod"]);
    let (code, _, stderr) = run(c);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("clouds.yaml") && stderr.contains("(cloud `prod`)"), "{stderr}");
    assert!(!stderr.contains(bad), "{stderr}");
    let ks = front.log().into_iter().last().unwrap().body.unwrap();
    assert_eq!(ks["auth"]["scope"]["project"], json!({"id": "p1"}));
    assert_eq!(ks["auth"]["identity"]["password"]["user"]["domain"], json!({"id": "default"}));
}

#[test]
fn clouds_yaml_selection_and_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let front = start_front(None);
    let img = make_image(tmp.path(), 8, 1);
    let home = tmp.path().join("home");
    write_clouds_yaml(&home.join(".config/openstack"), &format!("{}/v3", front.base()));

    // Unknown cloud: input error naming the file.
    let mut c = upload_cmd(&img, &home);
    c.env("OS_CLOUD", "nope");
    let (code, _, stderr) = run(c);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("no cloud `nope`") && stderr.contains(".config/openstack/clouds.yaml"),
        "{stderr}"
    );

    // The selected cloud authenticates (application credential from clouds.yaml + secure.yaml).
    // OS_* variables are ignored once a cloud is selected (OS_INTERFACE=admin would find no
    // endpoint), so the catalog's public RegionOne endpoint is used: this Keystone-only front
    // answers the image list with 404.
    let mut c = upload_cmd(&img, &home);
    c.env("OS_CLOUD", "images").env("OS_INTERFACE", "admin");
    let (code, _, stderr) = run(c);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("list images: HTTP 404"), "{stderr}");
    let ks = front.log().into_iter().find(|l| l.path.starts_with("/v3")).unwrap().body.unwrap();
    assert_eq!(ks["auth"]["identity"]["application_credential"]["id"], "ac-42");

    // Env credentials for a region without an image endpoint: exit 2 naming interface and region.
    let mut c = upload_cmd(&img, &home);
    with_env_password(&mut c, &front, PASSWORD);
    c.env("OS_REGION_NAME", "RegionThree");
    let (code, _, stderr) = run(c);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("region RegionThree"), "{stderr}");

    // Missing OS_AUTH_URL: input error.
    let mut c = upload_cmd(&img, &home);
    c.env("OS_USERNAME", "u").env("OS_PASSWORD", "p");
    let (code, _, stderr) = run(c);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("auth URL"), "{stderr}");
}
