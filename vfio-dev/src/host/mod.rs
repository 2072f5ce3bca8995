//! Host-side device management: what the host's PCI devices are and whether they are ready for
//! passthrough ([`inventory`]), handing them to vfio-pci and back ([`binding`], remembered in a
//! [`state`] file), SR-IOV virtual functions ([`sriov`]), mediated devices ([`mdev`]), the
//! preflight report ([`check`]) and `managed=on` devices bound for the life of one VM
//! ([`managed`]).
//!
//! Everything here works on a [`HostPaths`]: the sysfs, procfs and `/dev` roots and the state
//! file, `/sys`, `/proc`, `/dev` and `/run/viaduct/bound.json` on a real host, fixture trees in
//! tests. Writes to sysfs go through a [`SysfsWriter`], so tests see every write a kernel would
//! have seen and can answer with its errno. This module does not open VFIO files or talk to KVM.

pub mod binding;
pub mod check;
mod error;
#[cfg(test)]
pub(crate) mod fixture;
pub mod inventory;
pub mod managed;
pub mod mdev;
pub mod memory;
pub mod rootdisk;
pub mod sriov;
pub mod state;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use error::HostError;

/// Environment variable overriding the sysfs root (default `/sys`), for tests.
pub const ENV_SYSFS_ROOT: &str = "VIADUCT_SYSFS_ROOT";
/// Environment variable overriding the procfs root (default `/proc`), for tests.
pub const ENV_PROC_ROOT: &str = "VIADUCT_PROC_ROOT";
/// Environment variable overriding the device-node root (default `/dev`), for tests.
pub const ENV_DEV_ROOT: &str = "VIADUCT_DEV_ROOT";
/// Environment variable overriding the state file (default [`DEFAULT_STATE_FILE`]).
pub const ENV_STATE_FILE: &str = "VIADUCT_STATE_FILE";
/// Where viaduct remembers which driver each device it bound to vfio-pci came from. `/run` is
/// a tmpfs: the record goes away with a reboot, as do the bindings it describes.
pub const DEFAULT_STATE_FILE: &str = "/run/viaduct/bound.json";

/// The driver passthrough needs.
pub const VFIO_PCI: &str = "vfio-pci";

/// Where the host's kernel interfaces are: `/sys`, `/proc`, `/dev` and the state file on a real
/// host, a fixture tree in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// sysfs root.
    pub sys: PathBuf,
    /// procfs root.
    pub proc: PathBuf,
    /// Device-node root.
    pub dev: PathBuf,
    /// The state file of [`state`].
    pub state_file: PathBuf,
}

impl HostPaths {
    /// The real host's paths, each overridable by its `VIADUCT_*` environment variable.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        HostPaths {
            sys: var(ENV_SYSFS_ROOT, "/sys"),
            proc: var(ENV_PROC_ROOT, "/proc"),
            dev: var(ENV_DEV_ROOT, "/dev"),
            state_file: var(ENV_STATE_FILE, DEFAULT_STATE_FILE),
        }
    }

    /// `sys`, `proc`, `dev` and `run/viaduct/bound.json` under one directory (fixtures).
    pub fn under(root: &Path) -> Self {
        HostPaths {
            sys: root.join("sys"),
            proc: root.join("proc"),
            dev: root.join("dev"),
            state_file: root.join("run/viaduct/bound.json"),
        }
    }

    /// `<sys>/bus/pci/devices/<bdf>`.
    pub fn pci_device(&self, bdf: &HostBdf) -> PathBuf {
        self.sys.join("bus/pci/devices").join(bdf.as_str())
    }

    /// `<sys>/bus/pci/drivers/<driver>`.
    pub fn pci_driver(&self, driver: &str) -> PathBuf {
        self.sys.join("bus/pci/drivers").join(driver)
    }

    /// `<sys>/bus/mdev/devices/<uuid>`.
    pub fn mdev_device(&self, uuid: &str) -> PathBuf {
        self.sys.join("bus/mdev/devices").join(uuid)
    }
}

/// A host PCI address, `DDDD:BB:DD.F` in lower case: the name sysfs and VFIO know a device by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostBdf(String);

impl HostBdf {
    /// The address as sysfs spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HostBdf {
    type Err = HostError;

    /// Accepts `DDDD:BB:DD.F`, `BB:DD.F` (domain 0) or a sysfs path ending in either
    /// (`/sys/bus/pci/devices/0000:01:00.0/`), in any case.
    fn from_str(s: &str) -> Result<Self, HostError> {
        let bad = || HostError::BadBdf {
            given: s.to_string(),
        };
        let last = s.trim_end_matches('/').rsplit('/').next().ok_or_else(bad)?;
        let last = last.strip_prefix("path=").unwrap_or(last);
        if !crate::sysfs::looks_like_bdf(last) {
            return Err(bad());
        }
        let full = if last.len() == 7 {
            format!("0000:{last}")
        } else {
            last.to_string()
        };
        let full = full.to_ascii_lowercase();
        // Device numbers are 5 bits wide.
        let slot = u8::from_str_radix(&full[8..10], 16).map_err(|_| bad())?;
        if slot > 0x1f {
            return Err(bad());
        }
        Ok(HostBdf(full))
    }
}

/// How viaduct writes to sysfs. The kernel acts on each write (binds a driver, enables VFs); a
/// fixture tree has no kernel, so tests supply a writer that records the writes and plays the
/// kernel's part.
pub trait SysfsWriter {
    /// Writes `value` to the existing attribute `file` in one `write(2)`.
    fn write(&self, file: &Path, value: &str) -> io::Result<()>;
}

/// Writes to the real sysfs: opens the existing attribute for writing (never creates it) and
/// writes the value in one call, as `echo value > file` does.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelWriter;

impl SysfsWriter for KernelWriter {
    fn write(&self, file: &Path, value: &str) -> io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).open(file)?;
        f.write_all(value.as_bytes())
    }
}

/// Reads a sysfs attribute, trimmed; `None` when it does not exist or cannot be read.
pub(crate) fn read_attr(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Reads a decimal sysfs attribute.
pub(crate) fn read_u32(path: &Path) -> Option<u32> {
    read_attr(path)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_forms_are_normalised() {
        let full: HostBdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(full.as_str(), "0000:01:00.0");
        assert_eq!(
            "01:00.1".parse::<HostBdf>().unwrap().as_str(),
            "0000:01:00.1"
        );
        assert_eq!(
            "/sys/bus/pci/devices/0000:3B:00.0/"
                .parse::<HostBdf>()
                .unwrap()
                .as_str(),
            "0000:3b:00.0"
        );
        assert_eq!(
            "path=/sys/bus/pci/devices/0000:00:10.0"
                .parse::<HostBdf>()
                .unwrap()
                .as_str(),
            "0000:00:10.0"
        );
    }

    #[test]
    fn bdf_rejects_what_is_not_an_address() {
        for bad in [
            "",
            "nvme0",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "1:0.0",
        ] {
            let err = bad.parse::<HostBdf>().unwrap_err().to_string();
            assert!(err.contains("is not a PCI address"), "{bad}: {err}");
        }
    }

    #[test]
    fn paths_under_a_root() {
        let p = HostPaths::under(Path::new("/x"));
        let bdf: HostBdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(
            p.pci_device(&bdf),
            PathBuf::from("/x/sys/bus/pci/devices/0000:01:00.0")
        );
        assert_eq!(
            p.pci_driver("vfio-pci"),
            PathBuf::from("/x/sys/bus/pci/drivers/vfio-pci")
        );
        assert_eq!(p.state_file, PathBuf::from("/x/run/viaduct/bound.json"));
    }
}
