//! The API over a real UNIX socket, against a fake VM: every endpoint, and every kind of bad
//! input answered with a 4xx and a JSON array of strings, the server still serving afterwards.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// A VM that records what it was asked; `add-device` of path "/slow" blocks until released.
#[derive(Default)]
struct FakeVm {
    calls: Mutex<Vec<String>>,
    busy: crate::api::OneAtATime,
    gate: Mutex<bool>,
}

impl VmApi for FakeVm {
    fn info(&self) -> Result<serde_json::Value, ApiError> {
        Ok(serde_json::json!({"state": "Running", "devices": []}))
    }
    fn add_device(&self, r: AddDeviceRequest) -> Result<AddedDevice, ApiError> {
        let _guard = self.busy.enter("add-device")?;
        self.calls
            .lock()
            .unwrap()
            .push(format!("add {}", r.path.display()));
        if r.path == std::path::Path::new("/slow") {
            while !*self.gate.lock().unwrap() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        match r.id.as_deref() {
            Some("taken") => Err(ApiError::new(409, "id taken is in use")),
            _ => Ok(AddedDevice {
                id: r.id.unwrap_or_else(|| "_vfio0".into()),
                bdf: "0000:00:03.0".into(),
            }),
        }
    }
    fn remove_device(&self, id: &str) -> Result<(), ApiError> {
        match id {
            "gpu0" => Ok(()),
            _ => Err(ApiError::new(404, format!("no device with id {id}"))),
        }
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        self.calls.lock().unwrap().push("shutdown".into());
        Ok(())
    }
    fn reboot(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn power_button(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn shutdown_vmm(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

struct Running {
    server: ApiServer,
    path: PathBuf,
    vm: Arc<FakeVm>,
}

fn start(name: &str) -> Running {
    let path = std::env::temp_dir().join(format!("viaduct-api-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let vm = Arc::new(FakeVm::default());
    let server = ApiServer::start(&ApiSocket::Path(path.clone()), vm.clone()).unwrap();
    Running { server, path, vm }
}

/// Sends `raw` and returns (status, body).
fn send(path: &PathBuf, raw: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(path).unwrap();
    // The server may answer (413) and close before all of an oversized request is written.
    let _ = s.write_all(raw);
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn put(path: &PathBuf, endpoint: &str, body: &str) -> (u16, String) {
    send(
        path,
        format!(
            "PUT /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn get(path: &PathBuf, endpoint: &str) -> (u16, String) {
    send(
        path,
        format!("GET /api/v1/{endpoint} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// A one-line JSON array of strings.
fn error_lines(body: &str) -> Vec<String> {
    assert!(!body.contains('\n'), "one line: {body:?}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON array ({e}): {body:?}"))
}

#[test]
fn endpoints_answer_as_cloud_hypervisor_does() {
    let r = start("endpoints");
    let (status, body) = get(&r.path, "vmm.ping");
    assert_eq!(status, 200);
    let ping: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ping["pid"], std::process::id());
    let (status, body) = get(&r.path, "vm.info");
    assert_eq!((status, body.contains("Running")), (200, true));
    let (status, body) = put(
        &r.path,
        "vm.add-device",
        r#"{"path":"/sys/bus/pci/devices/0000:01:00.0/","id":"gpu0","pci_segment":1}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<AddedDevice>(&body).unwrap(),
        AddedDevice {
            id: "gpu0".into(),
            bdf: "0000:00:03.0".into()
        }
    );
    assert_eq!(
        put(&r.path, "vm.remove-device", r#"{"id":"gpu0"}"#),
        (204, String::new())
    );
    for e in [
        "vm.shutdown",
        "vm.reboot",
        "vm.power-button",
        "vmm.shutdown",
    ] {
        assert_eq!(put(&r.path, e, "").0, 204, "{e}");
    }
    assert!(r.vm.calls.lock().unwrap().contains(&"shutdown".to_string()));
}

#[test]
fn bad_input_gets_a_4xx_with_a_json_error_and_the_server_goes_on() {
    let r = start("bad");
    let big = format!(r#"{{"path":"{}"}}"#, "x".repeat(http::MAX_BODY));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"HELLO\r\n\r\n".to_vec(), 400, "malformed HTTP"),
        (
            b"GET /api/v1/vm.nothing HTTP/1.1\r\n\r\n".to_vec(),
            404,
            "no endpoint vm.nothing",
        ),
        (
            b"GET /index.html HTTP/1.1\r\n\r\n".to_vec(),
            404,
            "under /api/v1/",
        ),
        (
            b"GET /api/v1/vm.add-device HTTP/1.1\r\n\r\n".to_vec(),
            405,
            "takes PUT",
        ),
        (
            format!(
                "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: {}\r\n\r\n{big}",
                big.len()
            )
            .into_bytes(),
            413,
            "too large",
        ),
    ];
    for (raw, status, want) in cases {
        let (got, body) = send(&r.path, &raw);
        assert_eq!(got, status, "{body}");
        let lines = error_lines(&body);
        assert!(lines.join(" ").contains(want), "{lines:?}");
    }
    for (endpoint, body, status, want) in [
        ("vm.add-device", "{not json", 400, "invalid request body"),
        (
            "vm.add-device",
            r#"{"path":"/x","colour":"red"}"#,
            400,
            "unknown field `colour`",
        ),
        ("vm.add-device", "", 400, "needs a JSON body"),
        (
            "vm.add-device",
            r#"{"id":"gpu0"}"#,
            400,
            "missing field `path`",
        ),
        (
            "vm.add-device",
            r#"{"path":"/x","id":"taken"}"#,
            409,
            "in use",
        ),
        (
            "vm.add-device",
            r#"{"path":"/x","pci_segment":70000}"#,
            400,
            "invalid value",
        ),
        (
            "vm.remove-device",
            r#"{"id":"nope"}"#,
            404,
            "no device with id nope",
        ),
        ("vm.remove-device", r#"{"name":"x"}"#, 400, "unknown field"),
    ] {
        let (got, text) = put(&r.path, endpoint, body);
        assert_eq!(got, status, "{endpoint} {body}: {text}");
        assert!(error_lines(&text).join(" ").contains(want), "{text}");
    }
    assert_eq!(get(&r.path, "vmm.ping").0, 200, "still serving");
}

#[test]
fn a_second_add_while_one_is_in_progress_is_refused() {
    let r = start("busy");
    let path = r.path.clone();
    let slow = std::thread::spawn(move || put(&path, "vm.add-device", r#"{"path":"/slow"}"#));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !r.vm.calls.lock().unwrap().iter().any(|c| c == "add /slow") {
        assert!(Instant::now() < deadline, "the slow add never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, body) = put(&r.path, "vm.add-device", r#"{"path":"/x"}"#);
    assert_eq!(status, 409, "{body}");
    assert!(error_lines(&body)[0].contains("add-device is already in progress"));
    *r.vm.gate.lock().unwrap() = true;
    assert_eq!(slow.join().unwrap().0, 200);
    assert_eq!(put(&r.path, "vm.add-device", r#"{"path":"/x"}"#).0, 200);
}

#[test]
fn a_client_that_never_sends_times_out_without_holding_others_up() {
    let r = start("silent");
    let mut silent = UnixStream::connect(&r.path).unwrap();
    let start = Instant::now();
    // Others are served meanwhile.
    assert_eq!(get(&r.path, "vmm.ping").0, 200);
    assert!(start.elapsed() < Duration::from_secs(2));
    let mut out = String::new();
    silent.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(start.elapsed() >= http::READ_TIMEOUT - Duration::from_millis(100));
}

#[test]
fn stopping_the_server_removes_its_socket() {
    let mut r = start("stop");
    assert!(r.path.exists());
    r.server.stop();
    assert!(!r.path.exists());
    assert!(UnixStream::connect(&r.path).is_err());
}
