//! `viaduct mdev create PARENT TYPE [--uuid U]` and `viaduct mdev remove UUID`: checked writes
//! to `mdev_supported_types/TYPE/create` and `/sys/bus/mdev/devices/UUID/remove`.

use std::fs;
use std::path::PathBuf;

use super::inventory::{mdev_types, PciFunction};
use super::{HostBdf, HostError, HostPaths, SysfsWriter};

/// Whether `s` is a UUID in the 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A new random (version 4) UUID from the kernel's `/proc/sys/kernel/random/uuid`.
pub fn new_uuid(paths: &HostPaths) -> Result<String, HostError> {
    let file = paths.proc.join("sys/kernel/random/uuid");
    let text = fs::read_to_string(&file).map_err(|e| HostError::NoUuid {
        file: file.clone(),
        detail: e.to_string(),
    })?;
    let uuid = text.trim().to_ascii_lowercase();
    if !is_uuid(&uuid) {
        return Err(HostError::NoUuid {
            file,
            detail: format!("it holds {uuid:?}"),
        });
    }
    Ok(uuid)
}

/// A created mediated device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// Its UUID.
    pub uuid: String,
    /// `/sys/bus/mdev/devices/<uuid>`: what `--device path=` takes.
    pub path: PathBuf,
}

/// Creates a mediated device of type `mdev_type` on `parent`, with `uuid` or a new one.
pub fn create(
    paths: &HostPaths,
    w: &dyn SysfsWriter,
    parent: &HostBdf,
    mdev_type: &str,
    uuid: Option<&str>,
) -> Result<Created, HostError> {
    if let Some(u) = uuid.filter(|u| !is_uuid(u)) {
        return Err(HostError::BadUuid {
            given: u.to_string(),
        });
    }
    let f = PciFunction::read(paths, parent)?;
    let types = mdev_types(&f.path);
    if types.is_empty() {
        return Err(HostError::NoMdevSupport {
            bdf: parent.to_string(),
            driver: f.driver,
        });
    }
    let Some(t) = types.iter().find(|t| t.id == mdev_type) else {
        let offered: Vec<String> = types
            .iter()
            .map(|t| match &t.name {
                Some(n) => format!("{} ({n})", t.id),
                None => t.id.clone(),
            })
            .collect();
        return Err(HostError::MdevTypeNotOffered {
            bdf: parent.to_string(),
            wanted: mdev_type.to_string(),
            offered: offered.join(", "),
        });
    };
    let no_instances = || HostError::NoMdevInstances {
        bdf: parent.to_string(),
        mdev_type: mdev_type.to_string(),
    };
    if t.available_instances == Some(0) {
        return Err(no_instances());
    }
    let uuid = match uuid {
        Some(u) => u.to_ascii_lowercase(),
        None => new_uuid(paths)?,
    };
    if paths.mdev_device(&uuid).exists() {
        return Err(HostError::MdevExists { uuid });
    }
    let file = f
        .path
        .join("mdev_supported_types")
        .join(mdev_type)
        .join("create");
    w.write(&file, &uuid).map_err(|e| match e.raw_os_error() {
        Some(libc::EEXIST) => HostError::MdevExists { uuid: uuid.clone() },
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => no_instances(),
        _ => HostError::Write {
            action: format!("create a {mdev_type} mediated device on"),
            device: parent.to_string(),
            file: file.clone(),
            value: uuid.clone(),
            error: e,
        },
    })?;
    Ok(Created {
        path: PathBuf::from("/sys/bus/mdev/devices").join(&uuid),
        uuid,
    })
}

/// Removes mediated device `uuid`.
pub fn remove(paths: &HostPaths, w: &dyn SysfsWriter, uuid: &str) -> Result<(), HostError> {
    if !is_uuid(uuid) {
        return Err(HostError::BadUuid {
            given: uuid.to_string(),
        });
    }
    let uuid = uuid.to_ascii_lowercase();
    let dir = paths.mdev_device(&uuid);
    if !dir.exists() {
        return Err(HostError::NoSuchMdev { uuid, path: dir });
    }
    let file = dir.join("remove");
    w.write(&file, "1").map_err(|e| HostError::Write {
        action: if e.raw_os_error() == Some(libc::EBUSY) {
            "remove (it is in use, probably by a running VM; stop that first)".to_string()
        } else {
            "remove".to_string()
        },
        device: format!("mediated device {uuid}"),
        file,
        value: "1".into(),
        error: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture::*;

    const UUID: &str = "c2e088c6-7fd5-4b7d-9d5b-0f8c2b3c0a11";

    fn t4() -> Fixture {
        let f = Fixture::new();
        f.pci("0000:03:00.0", T4, Some("nvidia"), Some(14));
        f.mdev_type("0000:03:00.0", "nvidia-63", "GRID T4-1B", 1);
        f.mdev_type("0000:03:00.0", "nvidia-64", "GRID T4-2B", 0);
        f
    }

    fn parent() -> HostBdf {
        Fixture::bdf("0000:03:00.0")
    }

    #[test]
    fn create_with_a_given_uuid_then_remove() {
        let f = t4();
        let k = KernelSim::new(&f);
        let c = create(&f.paths, &k, &parent(), "nvidia-63", Some(UUID)).unwrap();
        assert_eq!(c.uuid, UUID);
        assert_eq!(
            c.path,
            PathBuf::from(format!("/sys/bus/mdev/devices/{UUID}"))
        );
        assert_eq!(
            k.log(),
            [format!(
                "devices/pci0000:00/0000:03:00.0/mdev_supported_types/nvidia-63/create={UUID}"
            )]
        );
        assert!(f.paths.mdev_device(UUID).exists());
        // That used the last instance.
        let msg = create(&f.paths, &k, &parent(), "nvidia-63", None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("no available instances of mdev type nvidia-63"),
            "{msg}"
        );
        remove(&f.paths, &k, UUID).unwrap();
        assert!(!f.paths.mdev_device(UUID).exists());
        let msg = remove(&f.paths, &k, UUID).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("there is no mediated device {UUID}")),
            "{msg}"
        );
    }

    #[test]
    fn create_without_uuid_takes_the_kernels() {
        let f = t4();
        let k = KernelSim::new(&f);
        let c = create(&f.paths, &k, &parent(), "nvidia-63", None).unwrap();
        assert_eq!(c.uuid, "9b0e4c1d-2f3a-4b5c-8d6e-7f8091a2b3c4");
    }

    #[test]
    fn type_not_offered_lists_the_offered_ones() {
        let f = t4();
        let k = KernelSim::new(&f);
        let msg = create(&f.paths, &k, &parent(), "nvidia-99", None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "0000:03:00.0 does not offer the mdev type nvidia-99; it offers: nvidia-63 (GRID \
             T4-1B), nvidia-64 (GRID T4-2B)"
        );
        let msg = create(&f.paths, &k, &parent(), "nvidia-64", None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("available_instances is 0"), "{msg}");
        assert!(k.log().is_empty());
    }

    #[test]
    fn parent_without_mdev_support_and_bad_uuids() {
        let f = t4();
        f.pci("0000:00:10.0", NVME, Some("nvme"), Some(1));
        let k = KernelSim::new(&f);
        let msg = create(&f.paths, &k, &Fixture::bdf("0000:00:10.0"), "x", None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("offers no mediated device types"), "{msg}");
        assert!(msg.contains("(nvme)"), "{msg}");
        let msg = create(&f.paths, &k, &parent(), "nvidia-63", Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"nope\" is not a UUID"), "{msg}");
        k.fail_next("create", libc::EEXIST);
        let msg = create(&f.paths, &k, &parent(), "nvidia-63", Some(UUID))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("a mediated device {UUID} already exists")),
            "{msg}"
        );
    }

    #[test]
    fn uuid_shape() {
        assert!(is_uuid(UUID));
        assert!(is_uuid(&UUID.to_ascii_uppercase()));
        assert!(!is_uuid("c2e088c6-7fd5-4b7d-9d5b-0f8c2b3c0a1"));
        assert!(!is_uuid("c2e088c67fd54b7d9d5b0f8c2b3c0a11"));
        assert!(!is_uuid("g2e088c6-7fd5-4b7d-9d5b-0f8c2b3c0a11"));
    }
}
