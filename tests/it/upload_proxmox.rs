//! Acceptance tests of `imgbuild upload --target proxmox` against a loopback
//! server that follows the Proxmox VE API reference: HTTPS with a self-signed certificate
//! (rcgen; the client pins it with --pve-fingerprint), `PVEAPIToken` auth, storage status
//! and import content listings, pveproxy's multipart upload rules (file part named
//! `filename`, Content-Length, no chunked encoding), tasks that run for a few polls, VM
//! creation and template conversion. No real PVE can run here.
//!
//! The image is a real qcow2 (`qemu-img convert` of pseudo-random bytes) with the
//! manifest and sha256 sidecars in the shape src/output.rs writes them.

use crate::common::http::{Exchange, Fake, Then, Tls};
use crate::common::{self, stderr};

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

const NODE: &str = "pve1";
const TOKEN_ID: &str = "root@pam!imgbuild";
const SECRET: &str = "5f1e2d3c-aaaa-4bbb-8ccc-0123456789ab";
/// Polls a task answers `running` before it stops.
const TASK_POLLS: u32 = 2;

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    /// Percent-decoded path (as pveproxy's `uri_unescape`), without the query.
    path: String,
    query: String,
    auth: Option<String>,
    content_type: Option<String>,
    content_length: Option<usize>,
    chunked: bool,
    body: Vec<u8>,
    /// The body was cut off by the server (fault injection).
    cut: bool,
}

/// Applied to the state when a task stops with OK (the file lands, the VM appears).
type OnOk = Box<dyn FnOnce(&mut State) + Send>;

/// A created VM: name, template flag, the create call's parameters.
type Vm = (String, bool, Vec<(String, String)>);

struct Task {
    polls_left: u32,
    exitstatus: String,
    on_ok: Option<OnOk>,
}

#[derive(Default)]
struct State {
    /// storage → content list (`"iso,import"`).
    storages: BTreeMap<String, String>,
    /// volid → bytes.
    files: BTreeMap<String, Vec<u8>>,
    tasks: HashMap<String, Task>,
    /// vmid → (name, template, create parameters).
    vms: BTreeMap<u32, Vm>,
    log: Vec<Req>,
    /// Upload requests to cut off mid-body before serving normally.
    cut_uploads: u32,
    /// Flip a byte of the next upload's data, as a corrupted transfer would.
    corrupt: bool,
    /// Don't keep uploads: hash the file part while reading and record (length, sha256).
    sink: bool,
    sunk: Option<(usize, String)>,
    /// GETs to answer with 503 before serving normally.
    unavailable_gets: u32,
    seq: u32,
}

struct Pve {
    port: u16,
    fingerprint: String,
    state: Arc<Mutex<State>>,
    _fake: Fake,
}

impl Pve {
    fn start() -> Pve {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let der = ck.cert.der().clone();
        let fingerprint = fingerprint_of(der.as_ref());
        let tls =
            Tls { cert_chain_pem: ck.cert.pem(), key_pem: ck.key_pair.serialize_pem(), client_ca_pem: None };
        let mut st = State::default();
        st.storages.insert("local".into(), "iso,vztmpl,import,images".into());
        st.storages.insert("backup".into(), "backup,iso".into());
        let state = Arc::new(Mutex::new(st));
        let s2 = state.clone();
        let fake = Fake::start(Some(tls), move |x| serve(x, &s2));
        Pve { port: fake.port, fingerprint, state, _fake: fake }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> Vec<Req> {
        self.state.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// `METHOD /path` of every request, `/api2/json` stripped.
    fn sequence(&self) -> Vec<String> {
        self.log()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path.trim_start_matches("/api2/json")))
            .collect()
    }
}

fn fingerprint_of(der: &[u8]) -> String {
    let d = Sha256::digest(der);
    let hexes: Vec<String> = d.iter().map(|b| format!("{b:02X}")).collect();
    format!("SHA256:{}", hexes.join(":"))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn respond(x: &mut Exchange, code: u16, reason: &str, body: &serde_json::Value) -> std::io::Result<()> {
    x.respond(
        code,
        reason,
        &[("Content-Type", "application/json;charset=UTF-8")],
        body.to_string().as_bytes(),
    )
}

fn serve(x: &mut Exchange, st: &Arc<Mutex<State>>) -> std::io::Result<Then> {
    let target = x.req.path.clone();
    let (raw_path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut req = Req {
        method: x.req.method.clone(),
        path: decode(raw_path),
        query: query.to_string(),
        auth: x.req.header("authorization").map(str::to_string),
        content_type: x.req.header("content-type").map(str::to_string),
        content_length: x.req.content_length(),
        chunked: x.req.header("transfer-encoding").is_some(),
        body: Vec::new(),
        cut: false,
    };
    // pveproxy: chunked transfer encoding is refused outright.
    if req.chunked {
        st.lock().unwrap().log.push(req);
        respond(x, 501, "chunked transfer encoding not supported", &serde_json::json!({"data": null}))?;
        return Ok(Then::Close);
    }
    let is_upload = req.method == "POST" && req.path.ends_with("/upload");
    let len = req.content_length.unwrap_or(0);
    let cut = is_upload && {
        let mut s = st.lock().unwrap();
        let c = s.cut_uploads > 0;
        s.cut_uploads = s.cut_uploads.saturating_sub(1);
        c
    };
    if cut {
        // Take part of the body, then drop the connection like a network failure.
        let mut buf = vec![0u8; len / 3];
        x.reader().read_exact(&mut buf)?;
        req.body = buf;
        req.cut = true;
        st.lock().unwrap().log.push(req);
        x.cut();
        return Ok(Then::Close);
    }
    if is_upload && st.lock().unwrap().sink {
        let sunk = sink_file_part(x.reader(), &req, len)?;
        let mut s = st.lock().unwrap();
        s.sunk = Some(sunk);
        s.log.push(req);
        let upid = new_task(&mut s, "imgcopy", "", "OK", None);
        drop(s);
        respond(x, 200, "OK", &serde_json::json!({ "data": upid }))?;
        return Ok(Then::Next);
    }
    req.body = x.body()?;
    st.lock().unwrap().log.push(req.clone());
    if req.method == "GET" && {
        let mut s = st.lock().unwrap();
        let fail = s.unavailable_gets > 0;
        s.unavailable_gets = s.unavailable_gets.saturating_sub(1);
        fail
    } {
        respond(x, 503, "Service Unavailable", &serde_json::json!({"data": null}))?;
        return Ok(Then::Next);
    }
    let (code, reason, json) = route(&req, st);
    respond(x, code, &reason, &json)?;
    Ok(Then::Next)
}

/// Read a multipart upload of `len` bytes without keeping it: the file part (last, under
/// `filename`) is hashed as it streams by. Returns its length and sha256.
fn sink_file_part(conn: &mut dyn BufRead, req: &Req, len: usize) -> std::io::Result<(usize, String)> {
    let bad = |m: &str| std::io::Error::other(m.to_string());
    let boundary = req
        .content_type
        .as_deref()
        .and_then(|c| c.strip_prefix("multipart/form-data; boundary="))
        .ok_or_else(|| bad("not multipart"))?
        .to_string();
    let mut head = vec![0u8; len.min(64 * 1024)];
    conn.read_exact(&mut head)?;
    let needle = b"name=\"filename\"";
    let at = head.windows(needle.len()).position(|w| w == needle).ok_or_else(|| bad("no file part"))?;
    let start =
        at + head[at..].windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("part head"))? + 4;
    let trailer = format!("\r\n--{boundary}--\r\n").into_bytes();
    let flen = len - start - trailer.len();
    let mut h = Sha256::new();
    let mut rest = Vec::new();
    let mut take = |chunk: &[u8], pos: usize, h: &mut Sha256| {
        // `pos` is the body offset of chunk[0].
        let lo = start.saturating_sub(pos).min(chunk.len());
        let hi = (start + flen).saturating_sub(pos).min(chunk.len());
        h.update(&chunk[lo..hi]);
        rest.extend_from_slice(&chunk[hi..]);
    };
    take(&head, 0, &mut h);
    let mut pos = head.len();
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        let n = conn.read(&mut buf[..(len - pos).min(1 << 20)])?;
        if n == 0 {
            return Err(bad("short body"));
        }
        take(&buf[..n], pos, &mut h);
        pos += n;
    }
    if rest != trailer {
        return Err(bad("bad trailer"));
    }
    Ok((flen, hex::encode(h.finalize())))
}

fn ok(data: serde_json::Value) -> (u16, String, serde_json::Value) {
    (200, "OK".into(), serde_json::json!({ "data": data }))
}

fn new_task(s: &mut State, kind: &str, id: &str, exitstatus: &str, on_ok: Option<OnOk>) -> String {
    s.seq += 1;
    let upid = format!("UPID:{NODE}:0000{:04X}:0012C3D4:6745F0A1:{kind}:{id}:{TOKEN_ID}:", s.seq);
    s.tasks.insert(upid.clone(), Task { polls_left: TASK_POLLS, exitstatus: exitstatus.into(), on_ok });
    upid
}

/// The API, as far as the client uses it.
fn route(req: &Req, st: &Arc<Mutex<State>>) -> (u16, String, serde_json::Value) {
    if req.auth.as_deref() != Some(&format!("PVEAPIToken={TOKEN_ID}={SECRET}")) {
        return (401, "invalid token value!".into(), serde_json::json!({"data": null}));
    }
    let Some(rel) = req.path.strip_prefix("/api2/json") else {
        return (501, "no such uri".into(), serde_json::json!({"data": null}));
    };
    let segs: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
    let mut s = st.lock().unwrap();
    let no_storage = || {
        (
            400,
            "Parameter verification failed.".to_string(),
            serde_json::json!({"data": null, "errors": {"storage": "No such storage."}}),
        )
    };
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["nodes", NODE, "storage", sid, "status"]) => match s.storages.get(*sid) {
            Some(content) => ok(serde_json::json!({
                "type": "dir", "content": content, "active": 1, "enabled": 1, "shared": 0,
                "total": 100u64 << 30, "used": 1u64 << 30, "avail": 99u64 << 30,
            })),
            None => no_storage(),
        },
        ("GET", ["nodes", NODE, "storage", sid, "content"]) => {
            if !s.storages.contains_key(*sid) {
                return no_storage();
            }
            let want = form_pairs(&req.query);
            let prefix = format!("{sid}:import/");
            let items: Vec<_> = s
                .files
                .iter()
                .filter(|(v, _)| v.starts_with(&prefix) && want.iter().any(|(k, v)| k == "content" && v == "import"))
                .map(|(v, b)| {
                    let format = v.rsplit('.').next().unwrap_or("");
                    serde_json::json!({"volid": v, "format": format, "size": b.len(), "content": "import", "ctime": 1732600000})
                })
                .collect();
            ok(serde_json::json!(items))
        }
        ("POST", ["nodes", NODE, "storage", sid, "upload"]) => {
            let Some(content) = s.storages.get(*sid).cloned() else { return no_storage() };
            let Some(parts) = multipart(req) else {
                return (501, "upload failed".into(), serde_json::json!({"data": null}));
            };
            // pveproxy: plain fields are parameters; the file part must be named `filename`,
            // and its filename attribute becomes the `filename` parameter.
            let mut params: BTreeMap<String, String> = BTreeMap::new();
            let mut data = None;
            for p in &parts {
                match &p.filename {
                    Some(f) if p.name == "filename" => {
                        params.insert("filename".into(), f.clone());
                        data = Some(p.body.clone());
                    }
                    Some(_) => return (501, "upload failed".into(), serde_json::json!({"data": null})),
                    None => {
                        params.insert(p.name.clone(), String::from_utf8_lossy(&p.body).into_owned());
                    }
                }
            }
            let Some(mut data) = data else {
                return (501, "upload failed".into(), serde_json::json!({"data": null}));
            };
            if std::mem::take(&mut s.corrupt) {
                data[0] ^= 1;
            }
            if params.get("content").map(String::as_str) != Some("import") {
                return (
                    400,
                    "Parameter verification failed.".into(),
                    serde_json::json!({"data": null, "errors": {"content": "value must be import here"}}),
                );
            }
            let filename = params["filename"].clone();
            let ext_ok = ["qcow2", "raw", "vmdk", "ova"].iter().any(|e| filename.ends_with(&format!(".{e}")));
            if !ext_ok || !filename.chars().all(|c| c.is_ascii_alphanumeric() || "-.+=_".contains(c)) {
                return (
                    400,
                    "Parameter verification failed.".into(),
                    serde_json::json!({"data": null, "errors": {"filename": "invalid filename or wrong extension"}}),
                );
            }
            if !content.split(',').any(|c| c == "import") {
                return (
                    500,
                    format!("storage '{sid}' does not support 'import' content"),
                    serde_json::json!({"data": null}),
                );
            }
            let got = hex::encode(Sha256::digest(&data));
            let mut exit = "OK".to_string();
            if params.get("checksum-algorithm").map(String::as_str) == Some("sha256") {
                let want = params.get("checksum").cloned().unwrap_or_default();
                if want.to_lowercase() != got {
                    exit = format!("checksum mismatch: got '{got}' != expect '{want}'");
                }
            }
            let volid = format!("{sid}:import/{filename}");
            let upid = new_task(
                &mut s,
                "imgcopy",
                "",
                &exit,
                Some(Box::new(move |s: &mut State| {
                    s.files.insert(volid, data);
                })),
            );
            ok(serde_json::json!(upid))
        }
        ("GET", ["nodes", node, "tasks", upid, "status"]) => {
            let Some(t) = s.tasks.get_mut(*upid) else {
                return (
                    500,
                    "unable to open file - No such file or directory".to_string(),
                    serde_json::json!({"data": null}),
                );
            };
            if t.polls_left > 0 {
                t.polls_left -= 1;
                return ok(
                    serde_json::json!({"status": "running", "upid": upid, "node": node, "type": "imgcopy"}),
                );
            }
            let exit = t.exitstatus.clone();
            let on_ok = t.on_ok.take();
            if exit == "OK" {
                if let Some(f) = on_ok {
                    f(&mut s);
                }
            }
            ok(serde_json::json!({"status": "stopped", "exitstatus": exit, "upid": upid, "node": node}))
        }
        ("GET", ["cluster", "resources"]) => {
            let vms: Vec<_> = s
                .vms
                .iter()
                .map(|(id, (name, tpl, _))| serde_json::json!({"id": format!("qemu/{id}"), "type": "qemu", "vmid": id, "name": name, "node": NODE, "template": u8::from(*tpl), "status": "stopped"}))
                .collect();
            ok(serde_json::json!(vms))
        }
        ("POST", ["nodes", NODE, "qemu"]) => {
            let form = form_pairs(&String::from_utf8_lossy(&req.body));
            let get = |k: &str| form.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
            let Some(vmid) = get("vmid").and_then(|v| v.parse::<u32>().ok()) else {
                return (
                    400,
                    "Parameter verification failed.".into(),
                    serde_json::json!({"data": null, "errors": {"vmid": "property is missing and it is not optional"}}),
                );
            };
            if s.vms.contains_key(&vmid) {
                return (
                    500,
                    format!("unable to create VM {vmid} - VM {vmid} already exists on node '{NODE}'"),
                    serde_json::json!({"data": null}),
                );
            }
            // import-from must name an existing import volume.
            let src = get("scsi0")
                .and_then(|v| v.split(",import-from=").nth(1).map(str::to_string))
                .unwrap_or_default();
            let exit = if s.files.contains_key(&src) {
                "OK".to_string()
            } else {
                format!("volume '{src}' does not exist")
            };
            let name = get("name").unwrap_or_default();
            let upid = new_task(
                &mut s,
                "qmcreate",
                &vmid.to_string(),
                &exit,
                Some(Box::new(move |s: &mut State| {
                    s.vms.insert(vmid, (name, false, form));
                })),
            );
            ok(serde_json::json!(upid))
        }
        ("POST", ["nodes", NODE, "qemu", vmid, "template"]) => {
            let Ok(vmid) = vmid.parse::<u32>() else { return no_storage() };
            if !s.vms.contains_key(&vmid) {
                return (
                    500,
                    format!("Configuration file 'nodes/{NODE}/qemu-server/{vmid}.conf' does not exist"),
                    serde_json::json!({"data": null}),
                );
            }
            let upid = new_task(
                &mut s,
                "qmtemplate",
                &vmid.to_string(),
                "OK",
                Some(Box::new(move |s: &mut State| {
                    if let Some(vm) = s.vms.get_mut(&vmid) {
                        vm.1 = true;
                    }
                })),
            );
            ok(serde_json::json!(upid))
        }
        _ => {
            (501, format!("Method '{} {rel}' not implemented", req.method), serde_json::json!({"data": null}))
        }
    }
}

struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// multipart/form-data with the boundary from Content-Type, parsed strictly.
fn multipart(req: &Req) -> Option<Vec<Part>> {
    let ct = req.content_type.as_deref()?;
    let boundary = ct.strip_prefix("multipart/form-data; boundary=")?;
    let delim = format!("--{boundary}").into_bytes();
    let body = &req.body;
    let find =
        |from: usize| body[from..].windows(delim.len()).position(|w| w == delim.as_slice()).map(|p| p + from);
    let mut parts = Vec::new();
    let mut pos = find(0)?;
    loop {
        let after = pos + delim.len();
        if body[after..].starts_with(b"--") {
            return Some(parts);
        }
        let start = after + 2; // CRLF
        let next = find(start)?;
        let chunk = &body[start..next - 2]; // strip the CRLF before the delimiter
        let head_end = chunk.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&chunk[..head_end]).into_owned();
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(':')?;
            if k.eq_ignore_ascii_case("content-disposition") {
                for p in v.split(';').map(str::trim) {
                    if let Some(n) = p.strip_prefix("name=") {
                        name = Some(n.trim_matches('"').to_string());
                    } else if let Some(f) = p.strip_prefix("filename=") {
                        filename = Some(f.trim_matches('"').to_string());
                    }
                }
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_string());
            }
        }
        parts.push(Part { name: name?, filename, content_type, body: chunk[head_end + 4..].to_vec() });
        pos = next;
    }
}

/// A built image's three files: a real qcow2, its manifest and its sha256 sidecar.
struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
    /// `<recipe>-<role>-<arch>-<12 hex>.qcow2`.
    file: String,
}

fn image() -> Image {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    // 3 MiB of data: the upload spans many stream chunks.
    std::fs::write(&raw, common::fixture::pseudo_random(b"upload-proxmox", 3 << 20)).unwrap();
    let path = imgbuild_testkit::qemu::convert(
        &raw,
        Some("raw"),
        "qcow2",
        "",
        dir.path().join("k8s-v1.30-worker-amd64.qcow2"),
    );
    std::fs::remove_file(&raw).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let download = |name: &str| imgbuild::manifest::Download {
        name: name.into(),
        version: "1".into(),
        urls: vec![format!("https://example.invalid/{name}")],
        sha256: "ab".repeat(32),
    };
    let manifest = imgbuild::manifest::Manifest {
        imgbuild_version: "0.1.0".into(),
        recipe: "k8s-v1.30".into(),
        recipe_digest: "cd".repeat(32),
        role: "worker".into(),
        arch: "amd64".into(),
        kubernetes_version: "v1.30.3".into(),
        inputs_digest: "ef".repeat(32),
        base: download("ubuntu-24.04"),
        artifacts: vec![download("kubeadm")],
        packages: vec![],
        images: vec![],
        files: vec![],
        signatures: vec![],
    };
    let mut man = serde_json::to_vec_pretty(&manifest).unwrap();
    man.push(b'\n');
    std::fs::write(dir.path().join("k8s-v1.30-worker-amd64.manifest.json"), man).unwrap();
    std::fs::write(
        dir.path().join("k8s-v1.30-worker-amd64.qcow2.sha256"),
        format!("{sha256}  k8s-v1.30-worker-amd64.qcow2\n"),
    )
    .unwrap();
    let file = format!("k8s-v1.30-worker-amd64-{}.qcow2", &sha256[..12]);
    Image { _dir: dir, path, bytes, sha256, file }
}

/// `imgbuild upload --target proxmox` with the token in $PVE_API_TOKEN unless `extra` has one.
fn upload(
    pve: &Pve,
    img: &Path,
    fingerprint: Option<&str>,
    env_token: Option<&str>,
    extra: &[&str],
) -> Output {
    upload_cmd(pve, img, fingerprint, env_token, extra).output().unwrap()
}

fn upload_cmd(
    pve: &Pve,
    img: &Path,
    fingerprint: Option<&str>,
    env_token: Option<&str>,
    extra: &[&str],
) -> Command {
    let mut c = common::bin();
    c.args(["upload", "--target", "proxmox"]).arg(img);
    c.args(["--pve-url", &pve.url(), "--pve-node", NODE]);
    if !extra.contains(&"--pve-storage") {
        c.args(["--pve-storage", "local"]);
    }
    if let Some(f) = fingerprint {
        c.args(["--pve-fingerprint", f]);
    }
    c.env_remove("PVE_API_TOKEN");
    if let Some(t) = env_token {
        c.env("PVE_API_TOKEN", t);
    }
    c.args(extra);
    c
}

fn good_token() -> String {
    format!("{TOKEN_ID}={SECRET}")
}

#[test]
fn uploads_streamed_multipart_polls_the_task_and_makes_a_template() {
    let pve = Pve::start();
    let img = image();
    let fp = pve.fingerprint.clone();
    let out = upload(&pve, &img.path, Some(&fp), Some(&good_token()), &["--pve-template", "9000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let volid = format!("local:import/{}", img.file);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{volid}\n"));
    assert!(
        img.file.starts_with("k8s-v1.30-worker-amd64-")
            && img.file.len() == "k8s-v1.30-worker-amd64-".len() + 12 + 6
    );

    let log = pve.log();
    let upids: Vec<String> = log
        .iter()
        .filter(|r| r.path.contains("/tasks/"))
        .map(|r| r.path.split('/').nth(6).unwrap().to_string())
        .collect();
    let (up, create, tpl) = (&upids[0], &upids[TASK_POLLS as usize + 1], upids.last().unwrap());
    assert!(
        up.contains(":imgcopy:") && create.contains(":qmcreate:9000:") && tpl.contains(":qmtemplate:9000:")
    );
    let polls = |u: &str| vec![format!("GET /nodes/{NODE}/tasks/{u}/status"); TASK_POLLS as usize + 1];
    let mut want = vec![
        format!("GET /nodes/{NODE}/storage/local/status"),
        "GET /cluster/resources".into(),
        format!("GET /nodes/{NODE}/storage/local/content"),
        format!("POST /nodes/{NODE}/storage/local/upload"),
    ];
    want.extend(polls(up));
    want.push(format!("POST /nodes/{NODE}/qemu"));
    want.extend(polls(create));
    want.push(format!("POST /nodes/{NODE}/qemu/9000/template"));
    want.extend(polls(tpl));
    assert_eq!(pve.sequence(), want);
    assert_eq!(log[2].query, "content=import");
    assert_eq!(log.iter().find(|r| r.path.ends_with("/cluster/resources")).unwrap().query, "type=vm");
    for r in &log {
        assert_eq!(
            r.auth.as_deref(),
            Some(format!("PVEAPIToken={TOKEN_ID}={SECRET}").as_str()),
            "{}",
            r.path
        );
    }

    // The multipart body: plain fields first, the file part last under `filename`.
    let up_req = &log[3];
    assert!(!up_req.chunked);
    assert_eq!(up_req.content_length, Some(up_req.body.len()));
    let parts = multipart(up_req).expect("a multipart/form-data body");
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["content", "checksum-algorithm", "checksum", "filename"]);
    assert_eq!(parts[0].body, b"import");
    assert_eq!(parts[1].body, b"sha256");
    assert_eq!(parts[2].body, img.sha256.as_bytes());
    assert!(parts[..3].iter().all(|p| p.filename.is_none()));
    assert_eq!(parts[3].filename.as_deref(), Some(img.file.as_str()));
    assert_eq!(parts[3].content_type.as_deref(), Some("application/octet-stream"));
    assert!(parts[3].body == img.bytes, "the file part's bytes differ from the image");
    assert!(pve.state.lock().unwrap().files[&volid] == img.bytes);

    // The VM: created with the import as its disk, then converted to a template.
    let st = pve.state.lock().unwrap();
    let (name, template, params) = &st.vms[&9000];
    assert!(*template);
    assert_eq!(name, &img.file.trim_end_matches(".qcow2"));
    let p: BTreeMap<&str, &str> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expect = [
        ("vmid", "9000".to_string()),
        ("memory", "2048".into()),
        ("cores", "2".into()),
        ("scsihw", "virtio-scsi-single".into()),
        ("scsi0", format!("local:0,import-from={volid}")),
        ("ide2", "local:cloudinit".into()),
        ("serial0", "socket".into()),
        ("vga", "serial0".into()),
        ("boot", "order=scsi0".into()),
        ("agent", "1".into()),
        ("net0", "virtio,bridge=vmbr0".into()),
        ("ostype", "l26".into()),
    ];
    for (k, v) in expect {
        assert_eq!(p.get(k).copied(), Some(v.as_str()), "{k}");
    }
    let desc = p["description"];
    for m in [
        "k8s_version: v1.30.3",
        "role: worker",
        "imgbuild_version: 0.1.0",
        &format!("sha256: {}", img.sha256),
    ] {
        assert!(desc.contains(m), "description lacks {m}: {desc}");
    }
    drop(st);

    // Again: the same digest is there and so is the template, so nothing is sent or created.
    pve.clear_log();
    let again = upload(&pve, &img.path, Some(&fp), Some(&good_token()), &["--pve-template", "9000"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout), format!("{volid}\n"));
    assert!(stderr(&again).contains(&format!("already present {volid}")), "{}", stderr(&again));
    assert_eq!(
        pve.sequence(),
        [
            format!("GET /nodes/{NODE}/storage/local/status"),
            "GET /cluster/resources".to_string(),
            format!("GET /nodes/{NODE}/storage/local/content"),
        ]
    );
}

#[test]
fn reupload_of_the_same_digest_is_a_noop() {
    let pve = Pve::start();
    let img = image();
    let fp = pve.fingerprint.clone();
    let first = upload(&pve, &img.path, Some(&fp), Some(&good_token()), &["--quiet"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(first.stderr.is_empty(), "--quiet: {}", stderr(&first));
    pve.clear_log();
    let second = upload(&pve, &img.path, Some(&fp), Some(&good_token()), &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(second.stdout, first.stdout);
    assert!(stderr(&second).contains("already present local:import/"), "{}", stderr(&second));
    assert!(pve.log().iter().all(|r| r.method == "GET"), "{:?}", pve.sequence());
    assert_eq!(pve.sequence().len(), 2);
}

#[test]
fn unauthorized_names_the_credential_source_and_hides_the_secret() {
    let pve = Pve::start();
    let img = image();
    let fp = pve.fingerprint.clone();
    let wrong = "root@pam!imgbuild=00000000-dead-beef-0000-000000000000";
    let via_env = upload(&pve, &img.path, Some(&fp), Some(wrong), &[]);
    assert_eq!(via_env.status.code(), Some(1), "{}", stderr(&via_env));
    let e = stderr(&via_env);
    assert!(e.contains("$PVE_API_TOKEN") && e.contains("root@pam!imgbuild") && e.contains("401"), "{e}");
    assert!(!e.contains("dead-beef") && !e.contains(SECRET), "{e}");

    let via_flag = upload(&pve, &img.path, Some(&fp), None, &["--pve-token", wrong]);
    assert_eq!(via_flag.status.code(), Some(1), "{}", stderr(&via_flag));
    let e = stderr(&via_flag);
    assert!(e.contains("--pve-token") && !e.contains("$PVE_API_TOKEN") && !e.contains("dead-beef"), "{e}");

    // No token at all: a usage error before any request.
    pve.clear_log();
    let none = upload(&pve, &img.path, Some(&fp), None, &[]);
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    assert!(stderr(&none).contains("PVE_API_TOKEN"));
    assert!(pve.log().is_empty());
}

#[test]
fn unknown_storage_and_storage_without_import_exit_2() {
    let pve = Pve::start();
    let img = image();
    let fp = pve.fingerprint.clone();
    let missing = upload(&pve, &img.path, Some(&fp), Some(&good_token()), &["--pve-storage", "nosuch"]);
    common::exits_with(&missing, 2, "storage \"nosuch\" does not exist");

    let no_import = upload(&pve, &img.path, Some(&fp), Some(&good_token()), &["--pve-storage", "backup"]);
    assert_eq!(no_import.status.code(), Some(2), "{}", stderr(&no_import));
    let e = stderr(&no_import);
    assert!(e.contains("pvesm set backup --content backup,iso,import") && e.contains("8.2"), "{e}");
    assert!(pve.log().iter().all(|r| !r.path.ends_with("/upload")));
}

#[test]
fn a_vmid_held_by_another_guest_exits_2_before_anything_is_sent() {
    let pve = Pve::start();
    pve.state.lock().unwrap().vms.insert(9001, ("db-1".into(), false, vec![]));
    let img = image();
    let out = upload(
        &pve,
        &img.path,
        Some(&pve.fingerprint),
        Some(&good_token()),
        &["--pve-template", "9001", "--pve-bridge", "none"],
    );
    common::exits_with(&out, 2, "VMID 9001 is already used by VM \"db-1\"");
    assert!(!pve.sequence().iter().any(|r| r.starts_with("POST /nodes/pve1/qemu")), "{:?}", pve.sequence());
    // Checked before anything is sent.
    assert!(out.stdout.is_empty());
    assert!(!pve.sequence().iter().any(|r| r.ends_with("/upload")), "{:?}", pve.sequence());
}

#[test]
fn idempotent_gets_are_retried_on_5xx() {
    let pve = Pve::start();
    pve.state.lock().unwrap().unavailable_gets = 2;
    let img = image();
    let out = upload(&pve, &img.path, Some(&pve.fingerprint), Some(&good_token()), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seq = pve.sequence();
    let status = format!("GET /nodes/{NODE}/storage/local/status");
    assert_eq!(seq[..3], [status.clone(), status.clone(), status]);
    assert_eq!(seq.iter().filter(|r| r.ends_with("/upload")).count(), 1);
}

#[test]
fn tampered_image_exits_3_and_sends_nothing() {
    let pve = Pve::start();
    let img = image();
    let mut bytes = img.bytes.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&img.path, bytes).unwrap();
    let out = upload(&pve, &img.path, Some(&pve.fingerprint), Some(&good_token()), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sha256 mismatch") && stderr(&out).contains(&img.sha256),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    assert!(pve.log().is_empty(), "{:?}", pve.sequence());
}

#[test]
fn missing_sidecars_and_unsupported_formats_exit_2() {
    let pve = Pve::start();
    let img = image();
    let sum = img.path.with_file_name("k8s-v1.30-worker-amd64.qcow2.sha256");
    let man = img.path.with_file_name("k8s-v1.30-worker-amd64.manifest.json");
    let sum_bytes = std::fs::read(&sum).unwrap();
    std::fs::remove_file(&sum).unwrap();
    let out = upload(&pve, &img.path, Some(&pve.fingerprint), Some(&good_token()), &[]);
    common::exits_with(&out, 2, &sum.display().to_string());
    std::fs::write(&sum, sum_bytes).unwrap();
    std::fs::remove_file(&man).unwrap();
    let out = upload(&pve, &img.path, Some(&pve.fingerprint), Some(&good_token()), &[]);
    common::exits_with(&out, 2, &man.display().to_string());

    // vhdx is not a PVE import format: refused before any request.
    let img = image();
    let vhdx = img.path.with_extension("vhdx");
    std::fs::rename(&img.path, &vhdx).unwrap();
    std::fs::rename(
        img.path.with_file_name("k8s-v1.30-worker-amd64.qcow2.sha256"),
        vhdx.with_file_name("k8s-v1.30-worker-amd64.vhdx.sha256"),
    )
    .unwrap();
    let out = upload(&pve, &vhdx, Some(&pve.fingerprint), Some(&good_token()), &[]);
    common::exits_with(&out, 2, "cannot import vhdx");
    assert!(pve.log().is_empty(), "{:?}", pve.sequence());
}

#[test]
fn a_connection_cut_mid_upload_is_retried_from_the_start() {
    let pve = Pve::start();
    pve.state.lock().unwrap().cut_uploads = 1;
    let img = image();
    let out = upload(&pve, &img.path, Some(&pve.fingerprint), Some(&good_token()), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("starting again from byte 0"), "{}", stderr(&out));
    let uploads: Vec<Req> = pve.log().into_iter().filter(|r| r.path.ends_with("/upload")).collect();
    assert_eq!(uploads.len(), 2);
    assert!(uploads[0].cut && !uploads[1].cut);
    let parts = multipart(&uploads[1]).unwrap();
    assert!(parts[3].body == img.bytes);
    let volid = format!("local:import/{}", img.file);
    assert!(pve.state.lock().unwrap().files[&volid] == img.bytes);

    // Cut every time: gives up after 1 + --pve-retries attempts, exit 1.
    let pve = Pve::start();
    pve.state.lock().unwrap().cut_uploads = 10;
    let out = upload(&pve, &img.path, Some(&pve.fingerprint), Some(&good_token()), &["--pve-retries", "1"]);
    common::exits_with(&out, 1, "upload failed after 2 attempt(s)");
    assert_eq!(pve.log().iter().filter(|r| r.path.ends_with("/upload")).count(), 2);
}

#[test]
fn tls_pinning_wrong_fingerprint_and_unpinned_self_signed_fail_clearly() {
    let pve = Pve::start();
    let img = image();
    let other = fingerprint_of(b"some other certificate");
    let out = upload(&pve, &img.path, Some(&other), Some(&good_token()), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains(&pve.fingerprint) && e.contains(&other) && e.contains("not the pinned --pve-fingerprint"),
        "{e}"
    );
    assert!(!e.contains(SECRET));

    // Without a pin the self-signed certificate fails chain verification.
    let out = upload(&pve, &img.path, None, Some(&good_token()), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("TLS: cannot verify the certificate")
            && stderr(&out).contains("--pve-fingerprint"),
        "{}",
        stderr(&out)
    );
    // The token never reached the server.
    assert!(pve.log().is_empty(), "{:?}", pve.sequence());

    // Malformed pin: usage error.
    let out = upload(&pve, &img.path, Some("SHA256:12:34"), Some(&good_token()), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_checksum_mismatch_reported_by_pve_exits_3() {
    // PVE re-hashes the upload against the sha256 sent with it; a corrupted transfer fails its task.
    let pve = Pve::start();
    pve.state.lock().unwrap().corrupt = true;
    let img = image();
    let out = upload(&pve, &img.path, Some(&pve.fingerprint), Some(&good_token()), &[]);
    common::exits_with(&out, 3, "checksum mismatch");
    assert!(out.stdout.is_empty());
    assert!(!pve.state.lock().unwrap().files.contains_key(&format!("local:import/{}", img.file)));
}

#[test]
fn a_large_image_is_streamed_not_buffered() {
    // 256 MiB: peak RSS of the imgbuild process must stay far below the image size.
    const SIZE: usize = 256 << 20;
    let img = image();
    let dir = img.path.parent().unwrap();
    let raw = dir.join("k8s-v1.30-worker-amd64.raw");
    let mut h = Sha256::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        for _ in 0..SIZE >> 20 {
            f.write_all(&block).unwrap();
            h.update(&block);
        }
    }
    let sha = hex::encode(h.finalize());
    std::fs::write(
        dir.join("k8s-v1.30-worker-amd64.raw.sha256"),
        format!("{sha}  k8s-v1.30-worker-amd64.raw\n"),
    )
    .unwrap();
    let pve = Pve::start();
    pve.state.lock().unwrap().sink = true;
    let t = std::time::Instant::now();
    let (out, max_rss_kib) = common::output_with_peak_rss(&mut upload_cmd(
        &pve,
        &raw,
        Some(&pve.fingerprint),
        Some(&good_token()),
        &[],
    ));
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", stderr(&out));
    let sunk = pve.state.lock().unwrap().sunk.clone();
    assert_eq!(sunk, Some((SIZE, sha)), "the file part differs from the image");
    let max_rss_mib = max_rss_kib as f64 / 1024.0;
    eprintln!(
        "streamed {} MiB in {secs:.1} s (hash + TLS upload); peak RSS of imgbuild {max_rss_mib:.0} MiB",
        SIZE >> 20
    );
    assert!(max_rss_mib < 96.0, "peak RSS {max_rss_mib:.0} MiB: the image is being buffered");
    std::fs::remove_file(&raw).unwrap();
}
