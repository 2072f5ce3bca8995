//! The state file: which devices viaduct handed to vfio-pci and the driver each had before, so
//! that `viaduct unbind` (or the end of a `managed=on` VM) gives them back.
//!
//! ```json
//! {"version":1,"devices":[{"bdf":"0000:00:10.0","driver":"nvme","pid":null}]}
//! ```
//!
//! `driver` is `null` for a device that had no driver; `pid` is the viaduct process that bound
//! it for a `managed=on` VM (`null` for `viaduct bind`). The file is rewritten whole through a
//! temporary file and a rename, so a crash leaves the old or the new version, never half.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use super::json::{self, Value};
use super::HostError;

/// Format version written and accepted.
const VERSION: i64 = 1;

/// One device viaduct bound to vfio-pci.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundDevice {
    /// Its address.
    pub bdf: String,
    /// The driver it had before, `None` for none.
    pub driver: Option<String>,
    /// The viaduct process that bound it for a `managed=on` VM.
    pub pid: Option<u32>,
}

/// The contents of the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The devices, in the order they were bound.
    pub devices: Vec<BoundDevice>,
}

impl State {
    /// Reads `file`; a missing file is an empty state.
    pub fn load(file: &Path) -> Result<State, HostError> {
        let err = |detail: String| HostError::State {
            action: "read",
            file: file.to_path_buf(),
            detail,
        };
        let text = match fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(err(e.to_string())),
        };
        let v = json::parse(&text).map_err(|e| err(format!("it is not valid JSON ({e})")))?;
        if v.get("version").and_then(Value::as_int) != Some(VERSION) {
            return Err(err(format!(
                "it is not a version {VERSION} viaduct state file"
            )));
        }
        let devices = v
            .get("devices")
            .and_then(Value::as_array)
            .ok_or_else(|| err("it has no \"devices\" list".to_string()))?
            .iter()
            .map(|d| {
                Some(BoundDevice {
                    bdf: d.get("bdf")?.as_str()?.to_string(),
                    driver: d.get("driver")?.as_str().map(str::to_string),
                    pid: d
                        .get("pid")
                        .and_then(Value::as_int)
                        .and_then(|p| u32::try_from(p).ok()),
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| err("a device entry lacks \"bdf\" or \"driver\"".to_string()))?;
        Ok(State { devices })
    }

    /// Writes the state to `file` (creating its directory), or removes the file when empty.
    pub fn save(&self, file: &Path) -> Result<(), HostError> {
        let err = |detail: String| HostError::State {
            action: "write",
            file: file.to_path_buf(),
            detail,
        };
        if self.devices.is_empty() {
            return match fs::remove_file(file) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(err(e.to_string())),
                _ => Ok(()),
            };
        }
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let devices = self
            .devices
            .iter()
            .map(|d| {
                Value::object([
                    ("bdf", Value::Str(d.bdf.clone())),
                    ("driver", Value::opt_str(d.driver.as_deref())),
                    ("pid", d.pid.map_or(Value::Null, |p| Value::Int(p.into()))),
                ])
            })
            .collect();
        let v = Value::object([
            ("version", Value::Int(VERSION)),
            ("devices", Value::Array(devices)),
        ]);
        let tmp = file.with_extension("json.tmp");
        fs::write(&tmp, v.to_json_pretty() + "\n").map_err(|e| err(e.to_string()))?;
        fs::rename(&tmp, file).map_err(|e| err(e.to_string()))
    }

    /// The record for `bdf`.
    pub fn get(&self, bdf: &str) -> Option<&BoundDevice> {
        self.devices.iter().find(|d| d.bdf == bdf)
    }

    /// Records `device` unless `bdf` is already recorded (the first record knows the driver
    /// the device really came from).
    pub fn record(&mut self, device: BoundDevice) {
        if self.get(&device.bdf).is_none() {
            self.devices.push(device);
        }
    }

    /// Forgets `bdf`, returning its record.
    pub fn forget(&mut self, bdf: &str) -> Option<BoundDevice> {
        let i = self.devices.iter().position(|d| d.bdf == bdf)?;
        Some(self.devices.remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture::Fixture;

    #[test]
    fn save_load_round_trip_and_empty_state_removes_the_file() {
        let f = Fixture::new();
        let file = &f.paths.state_file;
        assert_eq!(State::load(file).unwrap(), State::default());
        let mut s = State::default();
        s.record(BoundDevice {
            bdf: "0000:00:10.0".into(),
            driver: Some("nvme".into()),
            pid: None,
        });
        s.record(BoundDevice {
            bdf: "0000:01:00.1".into(),
            driver: None,
            pid: Some(4242),
        });
        // A second record of the same device keeps the first driver.
        s.record(BoundDevice {
            bdf: "0000:00:10.0".into(),
            driver: Some("vfio-pci".into()),
            pid: None,
        });
        s.save(file).unwrap();
        let loaded = State::load(file).unwrap();
        assert_eq!(loaded, s);
        assert_eq!(
            loaded.get("0000:00:10.0").unwrap().driver.as_deref(),
            Some("nvme")
        );
        let mut loaded = loaded;
        loaded.forget("0000:00:10.0").unwrap();
        loaded.forget("0000:01:00.1").unwrap();
        loaded.save(file).unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn corrupt_state_file_is_reported_with_its_path() {
        let f = Fixture::new();
        let file = &f.paths.state_file;
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, "{not json").unwrap();
        let err = State::load(file).unwrap_err().to_string();
        assert!(err.contains("cannot read the state file"), "{err}");
        assert!(err.contains("bound.json"), "{err}");
        fs::write(file, r#"{"version":7,"devices":[]}"#).unwrap();
        assert!(State::load(file).is_err());
    }
}
