//! Errors from taking ownership of a host device for passthrough: finding it in sysfs, checking
//! its IOMMU group, opening it through VFIO and DMA-mapping guest RAM.
//!
//! Every message is a sentence a user can act on: it names the device (its `--device path=` or
//! its BDF), the IOMMU group and the file involved, and says what to do. Errno values from the
//! kernel appear only as the last detail, never as the message.

use std::fmt;
use std::path::PathBuf;

use crate::sysfs::GroupMember;

/// Where the driver-binding commands point; always the real host's sysfs, whatever root the
/// checks ran against.
const HOST_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// The commands that hand PCI device `bdf` to vfio-pci. `bound` says whether it currently has a
/// driver to unbind from.
pub fn bind_commands(bdf: &str, bound: bool) -> String {
    let mut s = String::new();
    if bound {
        s.push_str(&format!(
            "    echo {bdf} > {HOST_PCI_DEVICES}/{bdf}/driver/unbind\n"
        ));
    }
    s.push_str(&format!(
        "    echo vfio-pci > {HOST_PCI_DEVICES}/{bdf}/driver_override\n"
    ));
    s.push_str(&format!(
        "    echo {bdf} > /sys/bus/pci/drivers/vfio-pci/bind"
    ));
    s
}

/// An IOMMU group that cannot be handed to VFIO, with every member and what blocks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    /// The device being opened (BDF or mdev UUID).
    pub device: String,
    /// The IOMMU group id.
    pub group: u32,
    /// Every device in `/sys/kernel/iommu_groups/<group>/devices/`.
    pub members: Vec<GroupMember>,
    /// The kernel (`VFIO_GROUP_GET_STATUS`) refused the group although the sysfs check passed.
    pub kernel_refused: bool,
}

impl fmt::Display for GroupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = vec![format!(
            "IOMMU group {} of {} is not viable: every device in the group must be bound to \
             vfio-pci (or be unbound, or be a PCI bridge) before any of them can be passed \
             through.",
            self.group, self.device
        )];
        if self.kernel_refused {
            lines.push(format!(
                "The kernel (VFIO_GROUP_GET_STATUS on /dev/vfio/{}) refused the group. If every \
                 member below looks usable, a driver was bound in the meantime, or the group is \
                 already attached to another VFIO container.",
                self.group
            ));
        }
        lines.push(format!(
            "Members of /sys/kernel/iommu_groups/{}/devices/:",
            self.group
        ));
        for m in &self.members {
            let this = if m.name == self.device {
                " <- the device being passed through"
            } else {
                ""
            };
            lines.push(format!(
                "    {:<14} {:<16} {:<18} {}{}",
                m.name,
                m.driver.as_deref().unwrap_or("(no driver)"),
                m.describe(),
                m.verdict(),
                this
            ));
        }
        let blocking: Vec<&GroupMember> = self.members.iter().filter(|m| m.blocks()).collect();
        if !blocking.is_empty() {
            lines.push(
                "For each device that blocks the group, bind it to vfio-pci as well (as root):"
                    .to_string(),
            );
            for m in &blocking {
                lines.push(bind_commands(&m.name, m.driver.is_some()));
            }
            let paths: Vec<String> = blocking
                .iter()
                .map(|m| format!("path={HOST_PCI_DEVICES}/{}/", m.name))
                .collect();
            lines.push(format!(
                "If the guest should use them too (a GPU's HDMI audio function, say), also pass \
                 them to viaduct: --device {}",
                paths.join(" ")
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}

/// Errors from host-side VFIO ownership.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The `--device path=` does not exist.
    #[error("--device path={}: no such file or directory{hint}", .path.display())]
    PathMissing {
        /// The path as given.
        path: PathBuf,
        /// A suggestion, e.g. the sysfs path of a bare BDF (empty when there is none).
        hint: String,
    },

    /// The path exists but is not the sysfs directory of a PCI or mdev device.
    #[error(
        "--device path={}: {what}: expected /sys/bus/pci/devices/DDDD:BB:DD.F (a PCI device) or \
         /sys/bus/mdev/devices/UUID (a mediated device)",
        .path.display()
    )]
    NotADevice {
        /// The path as given.
        path: PathBuf,
        /// What it is instead, e.g. "a directory that is not a PCI device".
        what: String,
    },

    /// The device has no IOMMU group: the host IOMMU is off.
    #[error(
        "{device} ({}) has no IOMMU group ({}/iommu_group is missing): the host IOMMU is off. \
         Enable VT-d / AMD-Vi in the firmware and boot the host with intel_iommu=on (Intel) or \
         amd_iommu=on (AMD) plus iommu=pt on the kernel command line; check with \
         `ls /sys/kernel/iommu_groups`. VFIO's noiommu mode is not supported",
        .path.display(), .path.display()
    )]
    NoIommuGroup {
        /// The device's sysfs directory.
        path: PathBuf,
        /// BDF or mdev UUID.
        device: String,
    },

    /// The PCI device is bound to a host driver other than vfio-pci.
    #[error(
        "{device} is bound to the host driver {driver}, so the host is using it. Hand it to \
         vfio-pci first (as root; `modprobe vfio-pci` if needed):\n{}",
        bind_commands(.device, true)
    )]
    WrongDriver {
        /// The BDF.
        device: String,
        /// The driver it is bound to.
        driver: String,
    },

    /// The PCI device is bound to no driver.
    #[error(
        "{device} is not bound to any driver; passthrough needs it bound to vfio-pci (as root; \
         `modprobe vfio-pci` if needed):\n{}",
        bind_commands(.device, false)
    )]
    Unbound {
        /// The BDF.
        device: String,
    },

    /// Some member of the IOMMU group keeps it from being handed to VFIO.
    #[error("{0}")]
    GroupNotViable(Box<GroupReport>),

    /// A sysfs attribute could not be read or made no sense.
    #[error("cannot read {} for {device}: {detail}", .file.display())]
    Sysfs {
        /// The device concerned.
        device: String,
        /// The sysfs file or link.
        file: PathBuf,
        /// What went wrong.
        detail: String,
    },

    /// `/dev/vfio/vfio` does not exist.
    #[error(
        "/dev/vfio/vfio does not exist: the vfio modules are not loaded. Load them with \
         `modprobe vfio-pci` (as root)"
    )]
    ModulesNotLoaded,

    /// A `/dev/vfio` file could not be opened for lack of permission.
    #[error("permission denied opening {}{}: {remedy}", .file.display(), .context)]
    PermissionDenied {
        /// The file.
        file: PathBuf,
        /// What the file is for, e.g. " (IOMMU group 12 of 0000:01:00.0)"; may be empty.
        context: String,
        /// What to do.
        remedy: String,
    },

    /// The group is open in another process.
    #[error(
        "IOMMU group {group} of {device} is in use by another process (another VM?): \
         /dev/vfio/{group} can be open in only one process at a time; stop the other user \
         (`fuser -v /dev/vfio/{group}` shows it)"
    )]
    GroupBusy {
        /// BDF or mdev UUID.
        device: String,
        /// IOMMU group id.
        group: u32,
    },

    /// Setting up the VFIO container or the KVM VFIO device failed.
    #[error("cannot set up VFIO for this VM: {what}: {detail}")]
    Setup {
        /// The step, e.g. "creating the KVM VFIO device".
        what: String,
        /// The cause and remedy.
        detail: String,
    },

    /// Opening the device through its group failed in a step with no dedicated variant.
    #[error("cannot open {device} (IOMMU group {group}) through VFIO: {what}: {detail}")]
    Open {
        /// BDF or mdev UUID.
        device: String,
        /// IOMMU group id.
        group: u32,
        /// The step that failed.
        what: String,
        /// The cause and, where known, the remedy.
        detail: String,
    },

    /// RLIMIT_MEMLOCK is too low to pin guest RAM and could not be raised.
    #[error(
        "RLIMIT_MEMLOCK is {} but passthrough pins all guest RAM: need at least {} ({} of RAM \
         plus {} of margin) and could not raise it ({detail}). Raise it with `ulimit -l {}` \
         (KiB) in the launching shell, LimitMEMLOCK={} in a systemd unit, an entry in \
         /etc/security/limits.conf, or run viaduct as root",
        human(*.current), human(*.need), human(*.ram), human(.need - .ram), .need / 1024,
        .need
    )]
    Memlock {
        /// The soft limit in bytes.
        current: u64,
        /// Bytes needed.
        need: u64,
        /// Bytes of guest RAM to pin.
        ram: u64,
        /// Why raising failed.
        detail: String,
    },

    /// Guest RAM falls outside the IOVA ranges the host IOMMU can translate.
    #[error(
        "guest RAM at {:#x}..{:#x} ({}) is outside the IOVA ranges the host IOMMU can map \
         ({ranges}); passthrough uses IOVA = guest physical address, so give the guest less \
         RAM, or use a host IOMMU with a wider address width",
        .gpa, .gpa + .size, human(*.size)
    )]
    IovaOutOfRange {
        /// Guest physical start of the region.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// The valid ranges, formatted.
        ranges: String,
    },

    /// A region is not aligned to the IOMMU's smallest page size.
    #[error(
        "guest RAM at {:#x} ({} at host address {:#x}) is not aligned to the host IOMMU's \
         smallest page size {:#x}",
        .gpa, human(*.size), .host_addr, .page
    )]
    Misaligned {
        /// Guest physical start of the region.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// Host virtual address.
        host_addr: usize,
        /// The smallest IOMMU page size.
        page: u64,
    },

    /// `map_guest_memory` was called before any device was opened (no IOMMU is set yet).
    #[error(
        "cannot DMA-map guest RAM before a device is opened: the container has no IOMMU until \
         its first group is attached (open every --device first)"
    )]
    NoDevice,

    /// Mapping guest RAM was given up because the VM is stopping (nothing of it stays mapped).
    #[error(
        "stopped DMA-mapping guest RAM after {} of {}: the VM is stopping",
        human(*.mapped),
        human(*.total)
    )]
    DmaStopped {
        /// Bytes mapped (and unmapped again) before the stop.
        mapped: u64,
        /// Bytes there were to map.
        total: u64,
    },

    /// `VFIO_IOMMU_MAP_DMA` or `VFIO_IOMMU_UNMAP_DMA` failed.
    #[error("cannot {op} guest RAM at {:#x}..{:#x} ({}) for device DMA: {detail}",
        .gpa, .gpa + .size, human(*.size))]
    Dma {
        /// "map" or "unmap".
        op: &'static str,
        /// Guest physical start (= IOVA).
        gpa: u64,
        /// Bytes.
        size: u64,
        /// The cause and, where known, the remedy.
        detail: String,
    },
}

/// `bytes` as a short human-readable size (`512 MiB`, `8 GiB`, `4096 B`).
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        let one = 1u64 << shift;
        if bytes >= one {
            if bytes.is_multiple_of(one) {
                return format!("{} {unit}", bytes >> shift);
            }
            return format!("{:.1} {unit}", bytes as f64 / one as f64);
        }
    }
    format!("{bytes} B")
}

/// An `io::Error`'s errno as a short description without the "(os error N)" suffix.
pub(crate) fn describe_errno(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
