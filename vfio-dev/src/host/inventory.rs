//! What the host's PCI devices are, as `viaduct devices` shows them: ids and class, driver,
//! IOMMU group and its other members, SR-IOV, mediated device types, and whether each is ready
//! for passthrough (bound to vfio-pci in a viable group).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{read_attr, read_u32, HostBdf, HostError, HostPaths};
use crate::sysfs::{self, class_name, is_vfio_driver, GroupMember};

/// Base class of mass-storage controllers.
const BASE_CLASS_STORAGE: u32 = 0x01;
/// Base class of network controllers.
const BASE_CLASS_NETWORK: u32 = 0x02;
/// Base class of display controllers (VGA, 3D, other).
const BASE_CLASS_DISPLAY: u32 = 0x03;
/// Base class of processing accelerators (compute GPUs without a display function).
const BASE_CLASS_ACCELERATOR: u32 = 0x12;

/// Which devices `viaduct devices --class` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassFilter {
    /// Display controllers and processing accelerators.
    Gpu,
    /// Network controllers.
    Net,
    /// Mass-storage controllers.
    Storage,
    /// Everything.
    All,
}

impl ClassFilter {
    /// Whether a device of 24-bit class `class` is listed.
    pub fn matches(self, class: u32) -> bool {
        let base = class >> 16;
        match self {
            ClassFilter::Gpu => base == BASE_CLASS_DISPLAY || base == BASE_CLASS_ACCELERATOR,
            ClassFilter::Net => base == BASE_CLASS_NETWORK,
            ClassFilter::Storage => base == BASE_CLASS_STORAGE,
            ClassFilter::All => true,
        }
    }
}

/// SR-IOV state of a physical function. In `viaduct devices --json` it is the `sriov` object,
/// with the sysfs attribute names as keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SriovInfo {
    /// `sriov_totalvfs`: how many VFs the device can have.
    #[serde(rename = "totalvfs")]
    pub total_vfs: u32,
    /// `sriov_numvfs`: how many are enabled.
    #[serde(rename = "numvfs")]
    pub num_vfs: u32,
    /// The enabled VFs' addresses (`virtfnN` links), in VF order.
    #[serde(rename = "vfs")]
    pub vfs: Vec<String>,
}

/// A mediated device type a parent offers (`mdev_supported_types/<id>/`). In
/// `viaduct devices --json` it is an element of `mdev_types`; `null` stands for an attribute
/// that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdevType {
    /// The type's directory name, e.g. `nvidia-63`: what `viaduct mdev create` takes.
    #[serde(rename = "type")]
    pub id: String,
    /// Its `name`, e.g. `GRID T4-1B`.
    #[serde(rename = "name")]
    pub name: Option<String>,
    /// How many more instances can be created now.
    #[serde(rename = "available_instances")]
    pub available_instances: Option<u32>,
}

/// One device as `viaduct devices --json` prints it: a [`PciFunction`] with its ids and class
/// in hex, the other members of its group and whether it is ready. Keys are written in field
/// order; an absent value is `null`, never a missing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its address, `DDDD:BB:DD.F`.
    #[serde(rename = "bdf")]
    pub bdf: String,
    /// Vendor ID, four hex digits.
    #[serde(rename = "vendor_id")]
    pub vendor_id: String,
    /// Device ID, four hex digits.
    #[serde(rename = "device_id")]
    pub device_id: String,
    /// 24-bit class code, six hex digits.
    #[serde(rename = "class")]
    pub class: String,
    /// What the class code means, e.g. `VGA`.
    #[serde(rename = "class_name")]
    pub class_name: String,
    /// The driver bound now.
    #[serde(rename = "driver")]
    pub driver: Option<String>,
    /// `driver_override`, when set.
    #[serde(rename = "driver_override")]
    pub driver_override: Option<String>,
    /// IOMMU group, `null` when the IOMMU is off.
    #[serde(rename = "iommu_group")]
    pub iommu_group: Option<u32>,
    /// The other members of the group (this device left out).
    #[serde(rename = "group_members")]
    pub group_members: Vec<GroupMateRecord>,
    /// SR-IOV, for a physical function that has the capability.
    #[serde(rename = "sriov")]
    pub sriov: Option<SriovInfo>,
    /// For a virtual function: its physical function's address.
    #[serde(rename = "physfn")]
    pub physfn: Option<String>,
    /// Mediated device types offered.
    #[serde(rename = "mdev_types")]
    pub mdev_types: Vec<MdevType>,
    /// Whether it can be passed through now ([`PciFunction::ready`]).
    #[serde(rename = "ready")]
    pub ready: bool,
    /// Why not, `null` when ready ([`PciFunction::not_ready_reason`]).
    #[serde(rename = "not_ready_reason")]
    pub not_ready_reason: Option<String>,
}

/// Another member of a device's IOMMU group, an element of [`DeviceRecord::group_members`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMateRecord {
    /// Its address.
    #[serde(rename = "bdf")]
    pub bdf: String,
    /// `vvvv:dddd`, `????:????` when unreadable.
    #[serde(rename = "ids")]
    pub ids: String,
    /// What its class code means, `null` when unreadable.
    #[serde(rename = "class_name")]
    pub class_name: Option<String>,
    /// The driver bound to it.
    #[serde(rename = "driver")]
    pub driver: Option<String>,
    /// Whether it keeps the group from being handed to VFIO ([`GroupMember::blocks`]).
    #[serde(rename = "blocks_group")]
    pub blocks_group: bool,
}

/// One host PCI function with everything `viaduct devices` reports about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address.
    pub bdf: HostBdf,
    /// Its sysfs directory, symlinks resolved.
    pub path: PathBuf,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// 24-bit class code.
    pub class: u32,
    /// The driver bound now.
    pub driver: Option<String>,
    /// `driver_override`, when set.
    pub driver_override: Option<String>,
    /// IOMMU group, `None` when the IOMMU is off.
    pub group: Option<u32>,
    /// Every member of the group, this device included.
    pub group_members: Vec<GroupMember>,
    /// SR-IOV, for a physical function that has the capability.
    pub sriov: Option<SriovInfo>,
    /// For a virtual function: its physical function's address.
    pub physfn: Option<String>,
    /// Mediated device types offered.
    pub mdev_types: Vec<MdevType>,
}

/// Reads the basename of a symlink's target, `None` if there is no link.
fn link_name(device: &str, link: &Path) -> Result<Option<String>, HostError> {
    Ok(sysfs::link_basename(device, link)?)
}

impl PciFunction {
    /// Reads device `bdf` from sysfs.
    pub fn read(paths: &HostPaths, bdf: &HostBdf) -> Result<Self, HostError> {
        let link = paths.pci_device(bdf);
        let path = fs::canonicalize(&link).map_err(|_| HostError::NoSuchDevice {
            bdf: bdf.to_string(),
            path: link.clone(),
        })?;
        let name = bdf.as_str();
        let group = match link_name(name, &path.join("iommu_group"))? {
            Some(g) => Some(
                g.parse::<u32>()
                    .map_err(|_| crate::error::VfioError::Sysfs {
                        device: name.to_string(),
                        file: path.join("iommu_group"),
                        detail: format!("the link names {g:?}, not a group number"),
                    })?,
            ),
            None => None,
        };
        let group_members = match group {
            Some(g) => sysfs::group_members(&paths.sys, g)?,
            None => Vec::new(),
        };
        let sriov = read_u32(&path.join("sriov_totalvfs")).map(|total_vfs| SriovInfo {
            total_vfs,
            num_vfs: read_u32(&path.join("sriov_numvfs")).unwrap_or(0),
            vfs: virtfns(&path),
        });
        Ok(PciFunction {
            vendor_id: sysfs::read_hex(name, &path, "vendor")? as u16,
            device_id: sysfs::read_hex(name, &path, "device")? as u16,
            class: sysfs::read_hex(name, &path, "class")?,
            driver: link_name(name, &path.join("driver"))?,
            driver_override: read_attr(&path.join("driver_override"))
                .filter(|s| !s.is_empty() && s != "(null)"),
            group,
            group_members,
            sriov,
            physfn: link_name(name, &path.join("physfn"))?,
            mdev_types: mdev_types(&path),
            bdf: bdf.clone(),
            path,
        })
    }

    /// Whether this is a bridge of any kind (base class 06: host, ISA, PCI-to-PCI, ...): the
    /// host's own plumbing, never a passthrough candidate.
    pub fn is_bridge(&self) -> bool {
        self.class >> 16 == 0x06
    }

    /// `vvvv:dddd`.
    pub fn ids(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor_id, self.device_id)
    }

    /// The other members of its IOMMU group.
    pub fn others_in_group(&self) -> impl Iterator<Item = &GroupMember> {
        self.group_members
            .iter()
            .filter(move |m| m.name != self.bdf.as_str())
    }

    /// The other members of its group that keep the group from being handed to VFIO (bound to
    /// a host driver, not a bridge).
    pub fn blocking_members(&self) -> Vec<&GroupMember> {
        self.others_in_group().filter(|m| m.blocks()).collect()
    }

    /// `None` when the device can be passed through now, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.is_bridge() {
            return Some("a bridge: pass through the devices behind it".to_string());
        }
        let Some(group) = self.group else {
            return Some("no IOMMU group: the host IOMMU is off".to_string());
        };
        match self.driver.as_deref() {
            Some(d) if is_vfio_driver(d) => {}
            Some(d) => return Some(format!("on {d}, not vfio-pci: `viaduct bind {}`", self.bdf)),
            None => return Some(format!("no driver: `viaduct bind {}`", self.bdf)),
        }
        let blocking = self.blocking_members();
        if blocking.is_empty() {
            return None;
        }
        let list: Vec<String> = blocking
            .iter()
            .map(|m| format!("{} on {}", m.name, m.driver.as_deref().unwrap_or("none")))
            .collect();
        Some(format!(
            "IOMMU group {group} not viable: {}; `viaduct bind --group {}`",
            list.join(", "),
            self.bdf
        ))
    }

    /// Whether it is bound to vfio-pci in a viable group.
    pub fn ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// The record `viaduct devices --json` prints for it.
    pub fn to_record(&self) -> DeviceRecord {
        let group_members = self
            .others_in_group()
            .map(|m| GroupMateRecord {
                bdf: m.name.clone(),
                ids: m.describe_ids(),
                class_name: m.class.map(|c| class_name(c).to_string()),
                driver: m.driver.clone(),
                blocks_group: m.blocks(),
            })
            .collect();
        let not_ready_reason = self.not_ready_reason();
        DeviceRecord {
            bdf: self.bdf.to_string(),
            vendor_id: format!("{:04x}", self.vendor_id),
            device_id: format!("{:04x}", self.device_id),
            class: format!("{:06x}", self.class),
            class_name: class_name(self.class).to_string(),
            driver: self.driver.clone(),
            driver_override: self.driver_override.clone(),
            iommu_group: self.group,
            group_members,
            sriov: self.sriov.clone(),
            physfn: self.physfn.clone(),
            mdev_types: self.mdev_types.clone(),
            ready: not_ready_reason.is_none(),
            not_ready_reason,
        }
    }

    /// The notes column of the table: group mates, SR-IOV, mdev types, why it is not ready.
    fn notes(&self) -> String {
        let mut notes = Vec::new();
        let others: Vec<String> = self
            .others_in_group()
            .map(|m| {
                format!(
                    "{} ({})",
                    m.name,
                    m.driver.as_deref().unwrap_or("no driver")
                )
            })
            .collect();
        if !others.is_empty() {
            notes.push(format!("group with {}", others.join(", ")));
        }
        if let Some(s) = &self.sriov {
            notes.push(format!("SR-IOV {}/{} VFs", s.num_vfs, s.total_vfs));
        }
        if let Some(pf) = &self.physfn {
            notes.push(format!("VF of {pf}"));
        }
        for t in &self.mdev_types {
            notes.push(format!(
                "mdev {} ({}, {} free)",
                t.id,
                t.name.as_deref().unwrap_or("?"),
                t.available_instances
                    .map_or("?".to_string(), |n| n.to_string())
            ));
        }
        if let Some(r) = self.not_ready_reason() {
            notes.push(r);
        }
        notes.join("; ")
    }
}

impl GroupMember {
    /// `vvvv:dddd`, or `????:????` when unreadable.
    pub fn describe_ids(&self) -> String {
        match (self.vendor_id, self.device_id) {
            (Some(v), Some(d)) => format!("{v:04x}:{d:04x}"),
            _ => "????:????".to_string(),
        }
    }
}

/// The VFs of a PF, from its `virtfnN` links in N order.
fn virtfns(dir: &Path) -> Vec<String> {
    let mut vfs: Vec<(u32, String)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("virtfn")?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            Some((n, target.file_name()?.to_string_lossy().into_owned()))
        })
        .collect();
    vfs.sort();
    vfs.into_iter().map(|(_, v)| v).collect()
}

/// The mediated device types under `mdev_supported_types/`, sorted by id.
pub(crate) fn mdev_types(dir: &Path) -> Vec<MdevType> {
    let mut types: Vec<MdevType> = fs::read_dir(dir.join("mdev_supported_types"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| MdevType {
            id: e.file_name().to_string_lossy().into_owned(),
            name: read_attr(&e.path().join("name")),
            available_instances: read_u32(&e.path().join("available_instances")),
        })
        .collect();
    types.sort_by(|a, b| a.id.cmp(&b.id));
    types
}

/// Every PCI function of the host, sorted by address.
pub fn list(paths: &HostPaths) -> Result<Vec<PciFunction>, HostError> {
    let dir = paths.sys.join("bus/pci/devices");
    let entries = fs::read_dir(&dir).map_err(|e| crate::error::VfioError::Sysfs {
        device: "the PCI bus".to_string(),
        file: dir.clone(),
        detail: e.to_string(),
    })?;
    let mut bdfs: Vec<HostBdf> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    bdfs.sort();
    bdfs.iter().map(|b| PciFunction::read(paths, b)).collect()
}

/// The JSON array `viaduct devices --json` prints: one [`DeviceRecord`] per device, indented
/// by two spaces per level.
pub fn json(devices: &[PciFunction]) -> String {
    let records: Vec<DeviceRecord> = devices.iter().map(PciFunction::to_record).collect();
    // Strings, integers, booleans and structs with string keys: nothing here can fail.
    serde_json::to_string_pretty(&records).expect("device records serialize to JSON")
}

/// The human table of `viaduct devices`.
pub fn table(devices: &[PciFunction]) -> String {
    let mut rows = vec![[
        "BDF".to_string(),
        "IDS".to_string(),
        "CLASS".to_string(),
        "DRIVER".to_string(),
        "GROUP".to_string(),
        "READY".to_string(),
        "NOTES".to_string(),
    ]];
    for d in devices {
        rows.push([
            d.bdf.to_string(),
            d.ids(),
            format!("{:04x} {}", d.class >> 8, class_name(d.class)),
            d.driver.clone().unwrap_or_else(|| "-".to_string()),
            d.group.map_or("-".to_string(), |g| g.to_string()),
            if d.ready() { "yes" } else { "no" }.to_string(),
            d.notes(),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[path = "inventory_tests.rs"]
mod tests;
