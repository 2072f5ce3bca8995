//! The control API: cloud-hypervisor's HTTP endpoints on a UNIX socket (`--api-socket`), for
//! what viaduct has. The server runs on its own threads (one accepting, one per connection,
//! never a vCPU thread); what a request does is behind the [`VmApi`] trait, so the HTTP side is
//! tested against a fake VM over a real socket.
//!
//! | endpoint | body | answer |
//! |---|---|---|
//! | `GET /api/v1/vmm.ping` | | 200 `{"build_version", "version", "pid", "features"}` |
//! | `GET /api/v1/vm.info` | | 200 `{"config", "state", "devices"}` |
//! | `PUT /api/v1/vm.add-device` | `{"path", "id"?, "pci_segment"?, "x_nv_gpudirect_clique"?, "managed"?}` | 200 `{"id", "bdf"}` |
//! | `PUT /api/v1/vm.remove-device` | `{"id"}` | 204 once the guest has ejected it |
//! | `PUT /api/v1/vm.shutdown`, `vm.reboot`, `vm.power-button`, `vmm.shutdown` | | 204 |
//!
//! Errors answer with a 4xx or 5xx status and, as cloud-hypervisor does, a one-line JSON array of
//! strings: the error and each of its causes.

pub mod http;
mod server;
pub mod socket;

use serde::{Deserialize, Serialize};

pub use server::{ApiListener, ApiServer};
pub use socket::{ApiSocket, SocketError};

/// `PUT /api/v1/vm.add-device`: cloud-hypervisor's `DeviceConfig` fields viaduct has.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddDeviceRequest {
    /// The device's sysfs directory.
    pub path: std::path::PathBuf,
    /// A name for it (default: its sysfs name).
    #[serde(default)]
    pub id: Option<String>,
    /// The guest PCI segment (default 0).
    #[serde(default)]
    pub pci_segment: Option<u16>,
    /// The NVIDIA GPUDirect clique id, 0..=15.
    #[serde(default)]
    pub x_nv_gpudirect_clique: Option<u8>,
    /// Bind it to vfio-pci for the VM and give it back on removal.
    #[serde(default)]
    pub managed: Option<bool>,
    /// cloud-hypervisor's vIOMMU switch; only `false` is accepted.
    #[serde(default)]
    pub iommu: Option<bool>,
}

/// `PUT /api/v1/vm.remove-device`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveDeviceRequest {
    /// The device's id.
    pub id: String,
}

/// The answer to `vm.add-device`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct AddedDevice {
    /// The device's id.
    pub id: String,
    /// Where the guest sees it: `0000:00:05.0`.
    pub bdf: String,
}

/// An error answer: its status and the messages of the error's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status, 4xx or 5xx.
    pub status: u16,
    /// The error and its causes, outermost first.
    pub messages: Vec<String>,
}

impl ApiError {
    /// An error of `status` from `error` and its `source()` chain.
    pub fn from_error(status: u16, error: &dyn std::error::Error) -> Self {
        let mut messages = vec![error.to_string()];
        let mut source = error.source();
        while let Some(e) = source {
            messages.push(e.to_string());
            source = e.source();
        }
        Self { status, messages }
    }

    /// An error of `status` with one message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            messages: vec![message.into()],
        }
    }

    /// The JSON body: an array of strings.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.messages).unwrap_or_else(|_| b"[\"error\"]".to_vec())
    }
}

/// Lets one operation of a kind run at a time: a second `add-device` while one is in progress
/// is refused with 409 rather than queued behind it.
#[derive(Default)]
pub struct OneAtATime {
    running: std::sync::Mutex<Option<&'static str>>,
}

/// Held while the operation runs; dropping it lets the next one in.
pub struct Running<'a>(&'a OneAtATime);

impl OneAtATime {
    /// Starts `what`, or refuses when another operation is running.
    pub fn enter(&self, what: &'static str) -> Result<Running<'_>, ApiError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = *running {
            return Err(ApiError::new(
                409,
                format!("{other} is already in progress; wait for it to finish and retry {what}"),
            ));
        }
        *running = Some(what);
        Ok(Running(self))
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// What the API can ask of a running VM.
pub trait VmApi: Send + Sync {
    /// The VM's configuration, state and devices.
    fn info(&self) -> Result<serde_json::Value, ApiError>;
    /// Hot-adds a passthrough device.
    fn add_device(&self, request: AddDeviceRequest) -> Result<AddedDevice, ApiError>;
    /// Asks the guest to eject a device and detaches it once it has.
    fn remove_device(&self, id: &str) -> Result<(), ApiError>;
    /// Stops the VM as if it had powered off.
    fn shutdown(&self) -> Result<(), ApiError>;
    /// Stops the VM as if it had asked to reboot.
    fn reboot(&self) -> Result<(), ApiError>;
    /// Presses the ACPI power button (the guest decides what to do).
    fn power_button(&self) -> Result<(), ApiError>;
    /// Stops the VM and viaduct.
    fn shutdown_vmm(&self) -> Result<(), ApiError>;
}

/// The answer to `GET /api/v1/vmm.ping`.
pub fn ping() -> serde_json::Value {
    serde_json::json!({
        "build_version": env!("CARGO_PKG_VERSION"),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "features": [],
    })
}

fn json<T: Serialize>(value: &T) -> (u16, Vec<u8>) {
    match serde_json::to_vec(value) {
        Ok(body) => (200, body),
        Err(e) => (500, ApiError::new(500, e.to_string()).body()),
    }
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(400, "the request needs a JSON body"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("invalid request body: {e}")))
}

fn no_content(r: Result<(), ApiError>) -> (u16, Vec<u8>) {
    match r {
        Ok(()) => (204, Vec::new()),
        Err(e) => (e.status, e.body()),
    }
}

/// Answers one request: the status and the body.
pub fn dispatch(vm: &dyn VmApi, req: &http::Request) -> (u16, Vec<u8>) {
    const PREFIX: &str = "/api/v1/";
    let Some(endpoint) = req.path.strip_prefix(PREFIX) else {
        let e = ApiError::new(
            404,
            format!("no endpoint {}: the API is under {PREFIX}", req.path),
        );
        return (404, e.body());
    };
    let method = req.method.as_str();
    let expect = |want: &str| -> Result<(), (u16, Vec<u8>)> {
        if method == want {
            Ok(())
        } else {
            let e = ApiError::new(405, format!("{endpoint} takes {want}, not {method}"));
            Err((405, e.body()))
        }
    };
    let result = match endpoint {
        "vmm.ping" => expect("GET").map(|()| json(&ping())),
        "vm.info" => expect("GET").map(|()| match vm.info() {
            Ok(v) => json(&v),
            Err(e) => (e.status, e.body()),
        }),
        "vm.add-device" => expect("PUT").map(|()| {
            match parse_body::<AddDeviceRequest>(&req.body).and_then(|r| vm.add_device(r)) {
                Ok(added) => json(&added),
                Err(e) => (e.status, e.body()),
            }
        }),
        "vm.remove-device" => expect("PUT").map(|()| {
            no_content(
                parse_body::<RemoveDeviceRequest>(&req.body).and_then(|r| vm.remove_device(&r.id)),
            )
        }),
        "vm.shutdown" => expect("PUT").map(|()| no_content(vm.shutdown())),
        "vm.reboot" => expect("PUT").map(|()| no_content(vm.reboot())),
        "vm.power-button" => expect("PUT").map(|()| no_content(vm.power_button())),
        "vmm.shutdown" => expect("PUT").map(|()| no_content(vm.shutdown_vmm())),
        other => {
            let e = ApiError::new(
                404,
                format!(
                    "no endpoint {other}; viaduct has vmm.ping, vm.info, vm.add-device, \
                     vm.remove-device, vm.shutdown, vm.reboot, vm.power-button, vmm.shutdown"
                ),
            );
            Ok((404, e.body()))
        }
    };
    result.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests;
