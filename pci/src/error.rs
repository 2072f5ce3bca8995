//! Errors of the PCI model, each naming what it is about (segment, slot, device, BAR) so that a
//! message read by a user points at the culprit.

use crate::address::SegmentId;
use crate::bar::BarIndex;

/// Why a PCI topology or config-space operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A bus/device/function triple out of range.
    #[error("{bus:02x}:{device:02x}.{function:x} is not a PCI address (device must be 0..=31, function 0..=7)")]
    InvalidBdf {
        /// Bus number.
        bus: u8,
        /// Device number as given.
        device: u8,
        /// Function number as given.
        function: u8,
    },
    /// Every slot of the segment's root bus is taken.
    #[error("PCI segment {segment} has no free slot for device {device}: all 32 slots of bus 0 are in use; put it on another segment")]
    SegmentFull {
        /// The full segment.
        segment: SegmentId,
        /// Name of the device that did not fit.
        device: String,
    },
    /// A device was installed in a slot that was not reserved for it.
    #[error("PCI segment {segment}: slot {slot:02x} was not reserved for device {device}")]
    NotReserved {
        /// The segment.
        segment: SegmentId,
        /// The slot.
        slot: u8,
        /// The device.
        device: String,
    },
    /// No device at the requested slot.
    #[error("PCI segment {segment} has no device in slot {slot:02x}")]
    NoDevice {
        /// The segment searched.
        segment: SegmentId,
        /// The empty slot.
        slot: u8,
    },
    /// A declared BAR is malformed (size, kind or index).
    #[error("{index} of {device}: {reason}")]
    InvalidBar {
        /// Device declaring the BAR.
        device: String,
        /// The offending BAR.
        index: BarIndex,
        /// What is wrong with it.
        reason: String,
    },
    /// An address given to a BAR does not fit it.
    #[error("{index} of {device} cannot be placed at {addr:#x}: {reason}")]
    BadBarAddress {
        /// Device owning the BAR.
        device: String,
        /// The BAR.
        index: BarIndex,
        /// The refused address.
        addr: u64,
        /// Why.
        reason: &'static str,
    },
    /// No room left in config space for a capability.
    #[error("no room in the config space of {device} for capability {id:#x} of {len} bytes")]
    CapabilitySpaceFull {
        /// Device whose config space is full.
        device: String,
        /// Capability id.
        id: u16,
        /// Capability length in bytes, header included.
        len: usize,
    },
    /// An MSI or MSI-X layout that cannot exist.
    #[error("invalid {what} for {device}: {reason}")]
    InvalidInterruptCapability {
        /// Device, or "device" when the model is built before it has a name.
        device: String,
        /// "MSI" or "MSI-X".
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}
