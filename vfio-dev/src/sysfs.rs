//! What sysfs says about a host device before VFIO is touched: which device a `--device path=`
//! names, its IOMMU group, its driver, and whether every member of the group can be handed to
//! VFIO.
//!
//! Everything here reads files under a sysfs root given as a parameter ([`HOST_SYSFS`] on a real
//! host), so the checks run in unit tests against fixture trees. Nothing here opens `/dev/vfio`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{GroupReport, VfioError};

/// Where sysfs is mounted on the host.
pub const HOST_SYSFS: &str = "/sys";

/// PCI class code (base class and subclass) of a PCI-to-PCI bridge.
const CLASS_PCI_BRIDGE: u32 = 0x0604;
/// PCI class code (base class and subclass) of a semi-transparent PCI-to-PCI bridge.
const CLASS_PCI_BRIDGE_SEMI: u32 = 0x0609;
/// Offset of the header-type byte in config space.
const HEADER_TYPE_OFFSET: usize = 0x0e;

/// The kind of device a `--device path=` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// A PCI function, named by its BDF (`0000:01:00.0`).
    Pci,
    /// A mediated device, named by its UUID, carved out of the PCI device `parent`.
    Mdev {
        /// The parent device's sysfs name (its BDF for a PCI parent).
        parent: String,
    },
}

/// Vendor, device and class as the device reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID (`0x10de` for NVIDIA).
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// 24-bit class code: base class, subclass, programming interface (`0x030000` for VGA).
    pub class: u32,
}

/// A host device found from its `--device path=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Its sysfs directory with symlinks resolved.
    pub path: PathBuf,
    /// BDF (`0000:01:00.0`) or mdev UUID: the name VFIO knows it by.
    pub name: String,
    /// PCI function or mdev.
    pub kind: DeviceKind,
    /// IOMMU group id (`/dev/vfio/<group>`).
    pub group: u32,
    /// The driver it is bound to, if any.
    pub driver: Option<String>,
    /// IDs from sysfs (PCI functions only; an mdev's come from its config space once opened).
    pub ids: Option<PciIds>,
}

/// Whether a group member lets the group be handed to VFIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    /// Bound to vfio-pci or another VFIO driver.
    Vfio,
    /// Bound to no driver.
    Unbound,
    /// A PCI bridge (any driver, usually pcieport): the kernel allows it.
    Bridge,
    /// Bound to pci-stub, which the kernel allows.
    Stub,
    /// Bound to a host driver: the group is not viable.
    Blocks,
}

/// One device of an IOMMU group, as listed in `/sys/kernel/iommu_groups/<N>/devices/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Its sysfs name (BDF).
    pub name: String,
    /// The driver it is bound to, if any.
    pub driver: Option<String>,
    /// Vendor ID, if readable.
    pub vendor_id: Option<u16>,
    /// Device ID, if readable.
    pub device_id: Option<u16>,
    /// 24-bit class code, if readable.
    pub class: Option<u32>,
    /// Config-space header type (bit 7, multi-function, masked off), if readable.
    pub header_type: Option<u8>,
}

/// Whether `driver` is a VFIO driver (vfio-pci, or a vendor variant such as `mlx5_vfio_pci`).
pub fn is_vfio_driver(driver: &str) -> bool {
    driver == "vfio-pci" || driver.contains("vfio")
}

impl GroupMember {
    /// Whether this is a PCI bridge (by header type or class code).
    pub fn is_bridge(&self) -> bool {
        let by_header = self.header_type.is_some_and(|h| h != 0);
        let by_class = self
            .class
            .is_some_and(|c| c >> 8 == CLASS_PCI_BRIDGE || c >> 8 == CLASS_PCI_BRIDGE_SEMI);
        by_header || by_class
    }

    /// Whether and why this member lets the group be handed to VFIO.
    pub fn status(&self) -> MemberStatus {
        match self.driver.as_deref() {
            None => MemberStatus::Unbound,
            Some(d) if is_vfio_driver(d) => MemberStatus::Vfio,
            Some("pcieport") => MemberStatus::Bridge,
            Some(_) if self.is_bridge() => MemberStatus::Bridge,
            Some("pci-stub") => MemberStatus::Stub,
            Some(_) => MemberStatus::Blocks,
        }
    }

    /// Whether this member keeps the group from being handed to VFIO.
    pub fn blocks(&self) -> bool {
        self.status() == MemberStatus::Blocks
    }

    /// Whether and why this member is fine, or that it blocks, for the group listing.
    pub fn verdict(&self) -> &'static str {
        match self.status() {
            MemberStatus::Vfio => "ok (VFIO driver)",
            MemberStatus::Unbound => "ok (unbound)",
            MemberStatus::Bridge => "ok (PCI bridge)",
            MemberStatus::Stub => "ok (pci-stub)",
            MemberStatus::Blocks => "BLOCKS the group",
        }
    }

    /// `vvvv:dddd kind`, e.g. `10de:1aef audio`, for the group listing.
    pub fn describe(&self) -> String {
        let ids = match (self.vendor_id, self.device_id) {
            (Some(v), Some(d)) => format!("{v:04x}:{d:04x}"),
            _ => "????:????".to_string(),
        };
        match self.class {
            Some(c) => format!("{ids} {}", class_name(c)),
            None => ids,
        }
    }
}

/// A short name for a 24-bit PCI class code.
pub fn class_name(class: u32) -> &'static str {
    match class >> 8 {
        0x0106 => "SATA",
        0x0108 => "NVMe",
        0x0300 => "VGA",
        0x0302 => "3D",
        0x0403 => "audio",
        0x0600 => "host-bridge",
        0x0601 => "ISA-bridge",
        0x0604 | 0x0609 => "PCI-bridge",
        0x0c03 => "USB",
        0x0c05 => "SMBus",
        0x0c80 => "serial-bus",
        _ => match class >> 16 {
            0x01 => "storage",
            0x02 => "network",
            0x03 => "display",
            0x04 => "multimedia",
            0x05 => "memory",
            0x06 => "bridge",
            0x08 => "system",
            0x0c => "serial-bus",
            0x12 => "accelerator",
            _ => "device",
        },
    }
}

/// Whether `s` looks like a PCI address, `DDDD:BB:DD.F` or `BB:DD.F`.
pub(crate) fn looks_like_bdf(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
    let (rest, func) = match s.rsplit_once('.') {
        Some(x) => x,
        None => return false,
    };
    if !(func.len() == 1 && func.chars().all(|c| ('0'..='7').contains(&c))) {
        return false;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    match parts.as_slice() {
        [d, b, s] => hex(d, 4) && hex(b, 2) && hex(s, 2),
        [b, s] => hex(b, 2) && hex(s, 2),
        _ => false,
    }
}

/// A hint for a `--device path=` that does not exist.
fn missing_path_hint(path: &Path) -> String {
    let s = path.to_string_lossy();
    let s = s.trim_end_matches('/');
    if looks_like_bdf(s) {
        let full = if s.len() == 7 {
            format!("0000:{s}")
        } else {
            s.to_string()
        };
        return format!(" (for the PCI device {s}, give path=/sys/bus/pci/devices/{full}/)");
    }
    if s.starts_with("/sys/bus/pci/devices/") {
        return " (list the host's PCI devices with `ls /sys/bus/pci/devices` or `lspci -D`)"
            .to_string();
    }
    String::new()
}

/// What a path that is not a device directory is, for [`VfioError::NotADevice`].
fn what_it_is(path: &Path, meta: &fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        if path.join("devices").is_dir() || path.ends_with("devices") {
            return "a directory of devices, not a device".to_string();
        }
        return "a directory that is not a PCI device (no vendor or iommu_group)".to_string();
    }
    if t.is_char_device() && path.starts_with("/dev/vfio") {
        return "a VFIO group file; viaduct takes the device's sysfs directory, not /dev/vfio/N"
            .to_string();
    }
    let kind = if t.is_file() {
        "a regular file"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a directory"
    };
    kind.to_string()
}

/// The basename of the target of symlink `link`, or `None` when `link` does not exist.
pub(crate) fn link_basename(device: &str, link: &Path) -> Result<Option<String>, VfioError> {
    match fs::read_link(link) {
        Ok(target) => target
            .file_name()
            .map(|n| Some(n.to_string_lossy().into_owned()))
            .ok_or_else(|| VfioError::Sysfs {
                device: device.to_string(),
                file: link.to_path_buf(),
                detail: format!("the link points at {}", target.display()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VfioError::Sysfs {
            device: device.to_string(),
            file: link.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Parses a sysfs hex attribute such as `0x10de\n`.
fn parse_hex(s: &str) -> Option<u32> {
    let s = s.trim();
    u32::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

/// Reads the hex attribute `name` of the device at `dir`.
pub(crate) fn read_hex(device: &str, dir: &Path, name: &str) -> Result<u32, VfioError> {
    let file = dir.join(name);
    let text = fs::read_to_string(&file).map_err(|e| VfioError::Sysfs {
        device: device.to_string(),
        file: file.clone(),
        detail: e.to_string(),
    })?;
    parse_hex(&text).ok_or_else(|| VfioError::Sysfs {
        device: device.to_string(),
        file,
        detail: format!("expected a hex number, found {:?}", text.trim()),
    })
}

/// The header type from the first bytes of `config` (readable without privilege), if present.
fn read_header_type(dir: &Path) -> Option<u8> {
    let bytes = fs::read(dir.join("config")).ok()?;
    bytes.get(HEADER_TYPE_OFFSET).map(|h| h & 0x7f)
}

/// Resolves a `--device path=` (a PCI device's or an mdev's sysfs directory; trailing slash and
/// symlinks allowed) to the device it names. Checks that it exists, is a device and has an
/// IOMMU group; does not check its driver ([`check_driver`]) or its group ([`check_viable`]).
pub fn resolve_device(path: &Path) -> Result<HostDevice, VfioError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(_) => {
            return Err(VfioError::PathMissing {
                path: path.to_path_buf(),
                hint: missing_path_hint(path),
            })
        }
    };
    let not_a_device = |what: String| VfioError::NotADevice {
        path: path.to_path_buf(),
        what,
    };
    if !meta.is_dir() {
        return Err(not_a_device(what_it_is(path, &meta)));
    }
    let dir = fs::canonicalize(path).map_err(|_| VfioError::PathMissing {
        path: path.to_path_buf(),
        hint: String::new(),
    })?;
    let name = match dir.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => return Err(not_a_device("the root directory".to_string())),
    };

    let is_mdev = dir.join("mdev_type").exists();
    let is_pci = !is_mdev && dir.join("vendor").is_file() && dir.join("class").is_file();
    if !is_mdev && !is_pci {
        return Err(not_a_device(what_it_is(&dir, &meta)));
    }

    let group = match link_basename(&name, &dir.join("iommu_group"))? {
        Some(g) => g.parse::<u32>().map_err(|_| VfioError::Sysfs {
            device: name.clone(),
            file: dir.join("iommu_group"),
            detail: format!("the link names {g:?}, not a group number"),
        })?,
        None => {
            return Err(VfioError::NoIommuGroup {
                path: dir.clone(),
                device: name,
            })
        }
    };
    let driver = link_basename(&name, &dir.join("driver"))?;

    let (kind, ids) = if is_mdev {
        let parent = dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        (DeviceKind::Mdev { parent }, None)
    } else {
        let ids = PciIds {
            vendor_id: read_hex(&name, &dir, "vendor")? as u16,
            device_id: read_hex(&name, &dir, "device")? as u16,
            class: read_hex(&name, &dir, "class")?,
        };
        (DeviceKind::Pci, Some(ids))
    };

    Ok(HostDevice {
        path: dir,
        name,
        kind,
        group,
        driver,
        ids,
    })
}

/// Checks that a PCI device is bound to a VFIO driver. An mdev is bound by its parent's vendor
/// driver, so only its group is checked.
pub fn check_driver(dev: &HostDevice) -> Result<(), VfioError> {
    if dev.kind != DeviceKind::Pci {
        return Ok(());
    }
    match dev.driver.as_deref() {
        None => Err(VfioError::Unbound {
            device: dev.name.clone(),
        }),
        Some(d) if is_vfio_driver(d) => Ok(()),
        Some(d) => Err(VfioError::WrongDriver {
            device: dev.name.clone(),
            driver: d.to_string(),
        }),
    }
}

/// The members of IOMMU group `group`, sorted by name, each with its driver and class.
pub fn group_members(sysfs_root: &Path, group: u32) -> Result<Vec<GroupMember>, VfioError> {
    let dir = sysfs_root
        .join("kernel/iommu_groups")
        .join(group.to_string())
        .join("devices");
    let entries = fs::read_dir(&dir).map_err(|e| VfioError::Sysfs {
        device: format!("IOMMU group {group}"),
        file: dir.clone(),
        detail: e.to_string(),
    })?;
    let mut members = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| VfioError::Sysfs {
            device: format!("IOMMU group {group}"),
            file: dir.clone(),
            detail: e.to_string(),
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let hex = |attr: &str| read_hex(&name, &path, attr).ok();
        members.push(GroupMember {
            driver: link_basename(&name, &path.join("driver"))?,
            vendor_id: hex("vendor").map(|v| v as u16),
            device_id: hex("device").map(|v| v as u16),
            class: hex("class"),
            header_type: read_header_type(&path),
            name,
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}

/// Checks that every member of `device`'s IOMMU group lets the group be handed to VFIO: bound
/// to a VFIO driver, unbound, a bridge, or on pci-stub. The error lists every member.
pub fn check_viable(device: &str, group: u32, members: &[GroupMember]) -> Result<(), VfioError> {
    if members.iter().any(GroupMember::blocks) {
        return Err(VfioError::GroupNotViable(Box::new(GroupReport {
            device: device.to_string(),
            group,
            members: members.to_vec(),
            kernel_refused: false,
        })));
    }
    Ok(())
}

/// Everything sysfs can check before the group is opened: resolves `path`, checks the device's
/// driver and the viability of its group (for a PCI function; an mdev only needs to resolve).
pub fn prepare_device(sysfs_root: &Path, path: &Path) -> Result<HostDevice, VfioError> {
    let dev = resolve_device(path)?;
    if dev.kind != DeviceKind::Pci {
        // The kernel gives each mdev a group of its own, bound by the parent's vendor driver.
        return Ok(dev);
    }
    check_driver(&dev)?;
    let members = group_members(sysfs_root, dev.group)?;
    check_viable(&dev.name, dev.group, &members)?;
    Ok(dev)
}

#[cfg(test)]
#[path = "sysfs_tests.rs"]
pub(crate) mod tests;
