//! The state file: which devices viaduct handed to vfio-pci and the driver each had before, so
//! that `viaduct unbind` (or the end of a `managed=on` VM) gives them back.
//!
//! ```json
//! {"version":1,"devices":[{"bdf":"0000:00:10.0","driver":"nvme","pid":null}]}
//! ```
//!
//! `driver` is `null` for a device that had no driver (the key must be there); `pid` is the
//! viaduct process that bound it for a `managed=on` VM (`null` or absent for `viaduct bind`).
//! The file is written indented and rewritten whole through a temporary file and a rename, so a
//! crash leaves the old or the new version, never half.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::HostError;

/// Format version written and accepted.
const VERSION: i64 = 1;

/// One device viaduct bound to vfio-pci: an element of the file's `devices` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundDevice {
    /// Its address.
    #[serde(rename = "bdf")]
    pub bdf: String,
    /// The driver it had before, `None` (`null`) for none. Required in the file, so that an
    /// entry that forgot it is not taken for a device that had no driver.
    #[serde(rename = "driver", deserialize_with = "Option::deserialize")]
    pub driver: Option<String>,
    /// The viaduct process that bound it for a `managed=on` VM.
    #[serde(rename = "pid", default)]
    pub pid: Option<u32>,
}

/// The file's top level, `{"version":1,"devices":[...]}`.
#[derive(Serialize, Deserialize)]
struct StateFile {
    /// Always [`VERSION`].
    #[serde(rename = "version")]
    version: i64,
    /// [`State::devices`].
    #[serde(rename = "devices")]
    devices: Vec<BoundDevice>,
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
        let v: Value =
            serde_json::from_str(&text).map_err(|e| err(format!("it is not valid JSON ({e})")))?;
        if v.get("version").and_then(Value::as_i64) != Some(VERSION) {
            return Err(err(format!(
                "it is not a version {VERSION} viaduct state file"
            )));
        }
        if !v.get("devices").is_some_and(Value::is_array) {
            return Err(err("it has no \"devices\" list".to_string()));
        }
        // The version and the list are right, so what can still fail is a device entry.
        let StateFile { devices, .. } = serde_json::from_value(v)
            .map_err(|e| err(format!("a device entry lacks \"bdf\" or \"driver\" ({e})")))?;
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
        let contents = StateFile {
            version: VERSION,
            devices: self.devices.clone(),
        };
        let text = serde_json::to_string_pretty(&contents).map_err(|e| err(e.to_string()))?;
        let tmp = file.with_extension("json.tmp");
        fs::write(&tmp, text + "\n").map_err(|e| err(e.to_string()))?;
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

    #[test]
    fn file_is_the_documented_indented_json() {
        let f = Fixture::new();
        let file = &f.paths.state_file;
        let s = State {
            devices: vec![
                BoundDevice {
                    bdf: "0000:00:10.0".into(),
                    driver: Some("nvme".into()),
                    pid: None,
                },
                BoundDevice {
                    bdf: "0000:01:00.1".into(),
                    driver: None,
                    pid: Some(4242),
                },
            ],
        };
        s.save(file).unwrap();
        assert_eq!(
            fs::read_to_string(file).unwrap(),
            "{\n  \"version\": 1,\n  \"devices\": [\n    {\n      \"bdf\": \"0000:00:10.0\",\n      \
             \"driver\": \"nvme\",\n      \"pid\": null\n    },\n    {\n      \
             \"bdf\": \"0000:01:00.1\",\n      \"driver\": null,\n      \"pid\": 4242\n    }\n  \
             ]\n}\n"
        );
        // The compact form of the module documentation reads too, and `pid` may be left out.
        fs::write(
            file,
            r#"{"version":1,"devices":[{"bdf":"0000:00:10.0","driver":"nvme","pid":null},
                {"bdf":"0000:01:00.1","driver":null,"pid":4242},
                {"bdf":"0000:02:00.0","driver":"igb"}]}"#,
        )
        .unwrap();
        let loaded = State::load(file).unwrap();
        assert_eq!(loaded.devices[..2], s.devices[..]);
        assert_eq!(
            loaded.devices[2],
            BoundDevice {
                bdf: "0000:02:00.0".into(),
                driver: Some("igb".into()),
                pid: None,
            }
        );
    }

    #[test]
    fn bad_json_or_wrong_version_is_refused_with_a_clear_message() {
        let f = Fixture::new();
        let file = &f.paths.state_file;
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        let refused = |text: &str| {
            fs::write(file, text).unwrap();
            let err = State::load(file).unwrap_err().to_string();
            let prefix = format!("cannot read the state file {}: ", file.display());
            assert!(err.starts_with(&prefix), "{text:?}: {err}");
            err[prefix.len()..].to_string()
        };
        for bad in ["", "{not json", "{\"version\":1,\"devices\":[]} x", "[1,"] {
            let why = refused(bad);
            assert!(why.starts_with("it is not valid JSON ("), "{bad:?}: {why}");
        }
        for wrong in [
            r#"{"version":7,"devices":[]}"#,
            r#"{"version":"1","devices":[]}"#,
            r#"{"version":1.5,"devices":[]}"#,
            r#"{"devices":[]}"#,
            "[]",
        ] {
            assert_eq!(
                refused(wrong),
                "it is not a version 1 viaduct state file",
                "{wrong:?}"
            );
        }
        for no_list in [r#"{"version":1}"#, r#"{"version":1,"devices":{}}"#] {
            assert_eq!(
                refused(no_list),
                "it has no \"devices\" list",
                "{no_list:?}"
            );
        }
        for entry in [
            r#"{"version":1,"devices":[{"bdf":"0000:00:10.0"}]}"#,
            r#"{"version":1,"devices":[{"driver":"nvme"}]}"#,
            r#"{"version":1,"devices":[{"bdf":10,"driver":"nvme"}]}"#,
        ] {
            let why = refused(entry);
            assert!(
                why.starts_with("a device entry lacks \"bdf\" or \"driver\" ("),
                "{entry:?}: {why}"
            );
        }
    }
}
