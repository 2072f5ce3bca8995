//! What the passthrough logic needs from a host VFIO device, as a trait so that tests can stand a
//! fake device (a recorded config space, fake BAR regions) behind it.

use std::os::fd::{AsRawFd, RawFd};

use vfio_bindings::bindings::vfio::{vfio_device_info, VFIO_DEVICE_FLAGS_RESET};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref};
/// The kernel's VFIO ioctl numbers this module needs and vfio-ioctls keeps private.
mod ioctl_numbers {
    #![allow(missing_docs)]
    use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
    use vmm_sys_util::ioctl_io_nr;

    ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
    ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);
}
use ioctl_numbers::{VFIO_DEVICE_GET_INFO, VFIO_DEVICE_RESET};

/// VFIO PCI region indices (`VFIO_PCI_*_REGION_INDEX`, from vfio-bindings).
pub mod region {
    use vfio_bindings::bindings::vfio as b;
    /// BAR0; BARn is `BAR0 + n`.
    pub const BAR0: u32 = b::VFIO_PCI_BAR0_REGION_INDEX;
    /// The expansion ROM.
    pub const ROM: u32 = b::VFIO_PCI_ROM_REGION_INDEX;
    /// PCI configuration space.
    pub const CONFIG: u32 = b::VFIO_PCI_CONFIG_REGION_INDEX;
}

/// VFIO PCI interrupt indices (`VFIO_PCI_*_IRQ_INDEX`, from vfio-bindings).
pub mod irq {
    use vfio_bindings::bindings::vfio as b;
    /// Legacy INTx.
    pub const INTX: u32 = b::VFIO_PCI_INTX_IRQ_INDEX;
    /// MSI.
    pub const MSI: u32 = b::VFIO_PCI_MSI_IRQ_INDEX;
    /// MSI-X.
    pub const MSIX: u32 = b::VFIO_PCI_MSIX_IRQ_INDEX;
}

/// `VFIO_REGION_INFO_FLAG_*` (from vfio-bindings).
pub mod region_flags {
    use vfio_bindings::bindings::vfio as b;
    /// The region can be read.
    pub const READ: u32 = b::VFIO_REGION_INFO_FLAG_READ;
    /// The region can be written.
    pub const WRITE: u32 = b::VFIO_REGION_INFO_FLAG_WRITE;
    /// The region can be mmapped.
    pub const MMAP: u32 = b::VFIO_REGION_INFO_FLAG_MMAP;
    /// The region info has capabilities.
    pub const CAPS: u32 = b::VFIO_REGION_INFO_FLAG_CAPS;
}

/// A capability of a region, as reported by `VFIO_DEVICE_GET_REGION_INFO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionCap {
    /// Only these `(offset, size)` areas of the region may be mmapped.
    SparseMmap(Vec<(u64, u64)>),
    /// The MSI-X table and PBA in this region may be mmapped (the kernel does not need to trap
    /// them); viaduct still traps them to emulate the table.
    MsixMappable,
    /// Another capability viaduct does not use.
    Other,
}

/// One VFIO region of the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_*` bits.
    pub flags: u32,
    /// Size in bytes (0: the region does not exist, e.g. an unimplemented BAR).
    pub size: u64,
    /// Offset of the region in the device fd, for `pread`/`pwrite`/`mmap`.
    pub offset: u64,
    /// Region capabilities.
    pub caps: Vec<RegionCap>,
}

/// Errors from interrupt setup on the host device.
#[derive(Debug, thiserror::Error)]
#[error("VFIO interrupt setup ({what}) failed: {detail}")]
pub struct IrqError {
    /// What was attempted, e.g. "enable MSI-X with 9 vectors".
    pub what: String,
    /// The underlying error.
    pub detail: String,
}

/// Who resets a function between one guest and the next. A reset is not free (an FLR waits
/// 100 ms, a GPU's secondary bus reset a second or more), so a device is reset once each way,
/// not twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetDuty {
    /// A PCI function bound to vfio-pci (or a variant driver built on vfio-pci-core). The
    /// kernel resets it itself when its VFIO fd is first opened, and again when the fd is last
    /// closed, whenever the function has a reset method (`VFIO_DEVICE_FLAGS_RESET` is set
    /// exactly when the reset at open worked). viaduct opens a device once at a time, so a
    /// `VFIO_DEVICE_RESET` of its own would only repeat the kernel's.
    Kernel,
    /// A mediated device: what its vendor driver does at open and close is its own, so viaduct
    /// asks for `VFIO_DEVICE_RESET` before the guest sees it and after the guest is gone.
    Vmm,
}

/// What `VFIO_DEVICE_RESET` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetOutcome {
    /// The kernel reset the function (with the method it picked: FLR, PM, bus reset…).
    Done,
    /// The device has no reset method VFIO can use (`VFIO_DEVICE_FLAGS_RESET` is clear).
    Unsupported,
    /// The reset ioctl failed with this errno.
    Failed(i32),
}

/// The host device, as the passthrough logic uses it.
pub trait VfioDeviceAccess: Send + Sync {
    /// Information about region `index`, or `None` when the device has no such region.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    /// Reads `buf.len()` bytes at `offset` of region `index` (all-ones when it fails).
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]);
    /// Writes `buf` at `offset` of region `index` (dropped when it fails).
    fn region_write(&self, index: u32, offset: u64, buf: &[u8]);
    /// Number of vectors interrupt `index` supports (0: not supported).
    fn irq_count(&self, index: u32) -> u32;
    /// Routes interrupt `index`'s vectors `0..fds.len()` to `fds` (`VFIO_DEVICE_SET_IRQS`).
    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> Result<(), IrqError>;
    /// Turns interrupt `index` off.
    fn disable_irq(&self, index: u32) -> Result<(), IrqError>;
    /// Unmasks INTx when `resample` is signalled (the guest's EOI), so level-triggered INTx works
    /// without a trip through the VMM.
    fn set_intx_unmask_fd(&self, resample: &EventFd) -> Result<(), IrqError>;
    /// Unmasks INTx now.
    fn unmask_intx(&self) -> Result<(), IrqError>;
    /// Whether the function has a reset method VFIO can use (`VFIO_DEVICE_FLAGS_RESET`), or
    /// the errno of `VFIO_DEVICE_GET_INFO`.
    fn reset_supported(&self) -> Result<bool, i32>;
    /// Resets the function if it supports reset, and says what happened.
    fn reset(&self) -> ResetOutcome;
    /// The device fd, for mmapping regions.
    fn device_fd(&self) -> RawFd;
}

fn irq_error(what: impl Into<String>, e: vfio_ioctls::VfioError) -> IrqError {
    IrqError {
        what: what.into(),
        detail: e.to_string(),
    }
}

impl VfioDeviceAccess for VfioDevice {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let size = self.get_region_size(index);
        let flags = self.get_region_flags(index);
        if size == 0 && flags == 0 {
            return None;
        }
        let caps = self
            .get_region_caps(index)
            .into_iter()
            .map(|cap| match cap {
                VfioRegionInfoCap::SparseMmap(s) => {
                    RegionCap::SparseMmap(s.areas.iter().map(|a| (a.offset, a.size)).collect())
                }
                VfioRegionInfoCap::MsixMappable => RegionCap::MsixMappable,
                _ => RegionCap::Other,
            })
            .collect();
        Some(RegionInfo {
            flags,
            size,
            offset: self.get_region_offset(index),
            caps,
        })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) {
        VfioDevice::region_read(self, index, buf, offset)
    }

    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) {
        VfioDevice::region_write(self, index, buf, offset)
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.get_irq_info(index).map_or(0, |i| i.count)
    }

    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> Result<(), IrqError> {
        VfioDevice::enable_irq(self, index, fds.to_vec()).map_err(|e| {
            irq_error(
                format!("enable interrupt index {index} with {} vectors", fds.len()),
                e,
            )
        })
    }

    fn disable_irq(&self, index: u32) -> Result<(), IrqError> {
        VfioDevice::disable_irq(self, index)
            .map_err(|e| irq_error(format!("disable interrupt index {index}"), e))
    }

    fn set_intx_unmask_fd(&self, resample: &EventFd) -> Result<(), IrqError> {
        self.set_irq_resample_fd(irq::INTX, vec![resample])
            .map_err(|e| irq_error("INTx resample eventfd", e))
    }

    fn unmask_intx(&self) -> Result<(), IrqError> {
        self.unmask_irq(irq::INTX)
            .map_err(|e| irq_error("INTx unmask", e))
    }

    fn reset_supported(&self) -> Result<bool, i32> {
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: `info` is a valid, writable vfio_device_info whose argsz is its size; the
        // kernel writes at most that much. The fd is a VFIO device.
        let ret = unsafe { ioctl_with_mut_ref(self, VFIO_DEVICE_GET_INFO(), &mut info) };
        if ret < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        Ok(info.flags & VFIO_DEVICE_FLAGS_RESET != 0)
    }

    fn reset(&self) -> ResetOutcome {
        match self.reset_supported() {
            Err(errno) => return ResetOutcome::Failed(errno),
            Ok(false) => return ResetOutcome::Unsupported,
            Ok(true) => {}
        }
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is a VFIO device.
        let ret = unsafe { ioctl(self, VFIO_DEVICE_RESET()) };
        if ret < 0 {
            return ResetOutcome::Failed(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            );
        }
        ResetOutcome::Done
    }

    fn device_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}
