//! The control API (vmm/src/api): HTTP request parsing (`http::read_request`) and dispatch with
//! its JSON bodies (`dispatch`), against a VM stub that accepts everything. Byte 0 picks the
//! mode: the raw bytes as a request, or a well-formed request built from a route (byte 1), a
//! method (byte 2) and the rest as its body, as cloud-hypervisor's http_api target does.
//! Nothing may panic; every answer has a status 200..=599 and a 4xx/5xx answer's body is a JSON
//! array of strings.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vmm::api::{dispatch, http, AddDeviceRequest, AddedDevice, ApiError, VmApi};

struct StubVm;

impl VmApi for StubVm {
    fn info(&self) -> Result<serde_json::Value, ApiError> {
        Ok(serde_json::json!({"state": "Running", "devices": []}))
    }
    fn add_device(&self, r: AddDeviceRequest) -> Result<AddedDevice, ApiError> {
        Ok(AddedDevice {
            id: r.id.unwrap_or_else(|| "_vfio0".into()),
            bdf: "0000:00:03.0".into(),
        })
    }
    fn remove_device(&self, id: &str) -> Result<(), ApiError> {
        if id.is_empty() {
            Err(ApiError::new(404, "no device with an empty id"))
        } else {
            Ok(())
        }
    }
    fn shutdown(&self) -> Result<(), ApiError> {
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

const ROUTES: [&str; 10] = [
    "vmm.ping",
    "vm.info",
    "vm.add-device",
    "vm.remove-device",
    "vm.shutdown",
    "vm.reboot",
    "vm.power-button",
    "vmm.shutdown",
    "vm.boot",
    "",
];
const METHODS: [&str; 6] = ["GET", "PUT", "PATCH", "POST", "DELETE", "G\u{0}T"];

fn answer(req: &http::Request) {
    let (status, body) = dispatch(&StubVm, req);
    assert!((200..=599).contains(&status), "status {status}");
    if status >= 400 {
        let messages: Vec<String> = serde_json::from_slice(&body).expect("a JSON array of strings");
        assert!(!messages.is_empty(), "an error without a message");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let raw = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let route = ROUTES[usize::from(rest.first().copied().unwrap_or(0)) % ROUTES.len()];
        let method = METHODS[usize::from(rest.get(1).copied().unwrap_or(0)) % METHODS.len()];
        let body = rest.get(2..).unwrap_or_default();
        let req = http::Request {
            method: method.into(),
            path: format!("/api/v1/{route}"),
            body: body.to_vec(),
        };
        answer(&req);
        let mut raw = format!(
            "{method} /api/v1/{route} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        raw
    };
    match http::read_request(&mut Cursor::new(&raw)) {
        Ok(req) => answer(&req),
        Err(e) => assert!((400..=499).contains(&e.status())),
    }
});
