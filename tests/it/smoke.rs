use crate::common;

use crate::common::http::{Fault, Server};

#[test]
fn server_serves_ranges_and_faults() {
    let s = Server::start();
    s.add_bytes("/a", b"hello world".to_vec());
    s.fault("/a", vec![Fault::Status(503)]);
    let get = |range: Option<&str>| {
        let mut c = std::process::Command::new("curl");
        c.args(["-s", "-w", "%{http_code}", &s.url("/a")]);
        if let Some(r) = range {
            c.args(["-r", r]);
        }
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    assert_eq!(get(None), "503");
    assert_eq!(get(None), "hello world200");
    assert_eq!(get(Some("6-")), "world206");
}

#[test]
fn cli_reports_version_and_bad_usage() {
    let out = common::bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    let out = common::bin().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
