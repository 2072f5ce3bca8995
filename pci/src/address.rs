//! Where a PCI function lives: the segment (PCI domain) and the bus/device/function triple.
//!
//! These are the guest-visible coordinates: what `lspci` prints and what ECAM and the
//! 0xCF8 port decode. Host BDFs of passed-through devices are a different namespace and are
//! not modelled here.

use std::fmt;

use crate::error::PciError;

/// Number of device slots on one bus (5 bits of device number).
pub const DEVICES_PER_BUS: u8 = 32;
/// Number of functions per device (3 bits of function number).
pub const FUNCTIONS_PER_DEVICE: u8 = 8;

/// A PCI segment (PCI domain) number, as in ACPI `_SEG` and the MCFG table.
///
/// Exists so a segment id cannot be confused with a bus number or an index into a list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u16);

impl fmt::Display for SegmentId {
    /// Four hex digits, the domain part of `0000:00:03.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}", self.0)
    }
}

/// A bus/device/function address within one segment.
///
/// The constructor enforces the field widths (device 0..=31, function 0..=7) so that every
/// `Bdf` in the program can be encoded into ECAM and 0xCF8 addresses without truncation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// The host bridge's address on every segment.
    pub const HOST_BRIDGE: Bdf = Bdf {
        bus: 0,
        device: 0,
        function: 0,
    };

    /// Checked constructor.
    pub fn new(bus: u8, device: u8, function: u8) -> Result<Self, PciError> {
        if device >= DEVICES_PER_BUS || function >= FUNCTIONS_PER_DEVICE {
            return Err(PciError::InvalidBdf {
                bus,
                device,
                function,
            });
        }
        Ok(Self {
            bus,
            device,
            function,
        })
    }

    /// Bus number.
    pub fn bus(self) -> u8 {
        self.bus
    }

    /// Device (slot) number, 0..=31.
    pub fn device(self) -> u8 {
        self.device
    }

    /// Function number, 0..=7.
    pub fn function(self) -> u8 {
        self.function
    }

    /// Decodes the bus/device/function bits of an ECAM offset (bus 27:20, device 19:15,
    /// function 14:12). The register bits 11:0 are the caller's.
    pub fn from_ecam_offset(offset: u64) -> Self {
        Self {
            bus: ((offset >> 20) & 0xff) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
        }
    }

    /// Offset of this function's 4 KiB config space inside its segment's ECAM window.
    pub fn ecam_offset(self) -> u64 {
        (u64::from(self.bus) << 20)
            | (u64::from(self.device) << 15)
            | (u64::from(self.function) << 12)
    }
}

impl fmt::Display for Bdf {
    /// `bb:dd.f` in hex, as `lspci` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_displays_like_lspci() {
        assert_eq!(Bdf::new(0, 3, 0).unwrap().to_string(), "00:03.0");
        assert_eq!(Bdf::new(0xab, 0x1f, 7).unwrap().to_string(), "ab:1f.7");
        assert_eq!(SegmentId(1).to_string(), "0001");
    }

    #[test]
    fn bdf_rejects_out_of_range_device_and_function() {
        assert!(matches!(
            Bdf::new(0, 32, 0),
            Err(PciError::InvalidBdf { device: 32, .. })
        ));
        assert!(matches!(
            Bdf::new(0, 0, 8),
            Err(PciError::InvalidBdf { function: 8, .. })
        ));
    }

    #[test]
    fn ecam_offset_round_trips() {
        let bdf = Bdf::new(0, 3, 0).unwrap();
        assert_eq!(bdf.ecam_offset(), 0x1_8000);
        assert_eq!(Bdf::from_ecam_offset(0x1_8010), bdf);
        let odd = Bdf::new(2, 0x1f, 5).unwrap();
        assert_eq!(Bdf::from_ecam_offset(odd.ecam_offset() | 0xffc), odd);
    }
}
