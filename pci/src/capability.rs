//! Walking capability lists — ours or a real device's — without trusting them.
//!
//! The standard list starts at the pointer at 0x34 and lives in 0x40..0x100; the PCIe extended
//! list starts at 0x100. A passed-through device's lists come from hardware and firmware that may
//! be buggy, so the walkers stop at a null or out-of-range pointer and never visit a dword twice:
//! a self-loop, a cycle or a pointer into the header ends the walk instead of hanging the VMM.

/// Config offset of the capabilities pointer in a type 0 header.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// First config offset a standard capability may occupy (end of the type 0 header).
pub const FIRST_CAPABILITY_OFFSET: usize = 0x40;
/// End of the standard (256-byte) config space.
pub const LEGACY_CONFIG_SIZE: usize = 0x100;
/// First PCIe extended capability, at the start of the extended config space.
pub const FIRST_EXT_CAPABILITY_OFFSET: usize = 0x100;
/// Size of a PCIe function's config space.
pub const CONFIG_SPACE_SIZE: usize = 0x1000;
/// Upper bound on standard capabilities: one per dword of 0x40..0x100.
pub const MAX_CAPABILITIES: usize = (LEGACY_CONFIG_SIZE - FIRST_CAPABILITY_OFFSET) / 4;

/// Standard capability ids used by this crate and its users.
pub mod id {
    /// Power management.
    pub const POWER_MANAGEMENT: u8 = 0x01;
    /// Message Signalled Interrupts.
    pub const MSI: u8 = 0x05;
    /// Vendor specific (used e.g. for the NVIDIA GPUDirect clique).
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    /// PCI Express.
    pub const PCI_EXPRESS: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// One entry of the standard capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Config offset of the capability's id byte.
    pub offset: u8,
    /// Capability id.
    pub id: u8,
}

/// Iterator over the standard capability list of a config-space image (at least 256 bytes;
/// shorter images end the walk where they end).
pub struct Capabilities<'a> {
    config: &'a [u8],
    next: usize,
    visited: u64,
}

impl<'a> Capabilities<'a> {
    /// Walks `config`, which starts at config offset 0. Does not look at the status register:
    /// a zero pointer at 0x34 means no capabilities.
    pub fn new(config: &'a [u8]) -> Self {
        let next = config.get(CAPABILITIES_POINTER).copied().unwrap_or(0);
        Self {
            config,
            next: usize::from(next),
            visited: 0,
        }
    }
}

impl Iterator for Capabilities<'_> {
    type Item = Capability;

    fn next(&mut self) -> Option<Capability> {
        // Bits 1:0 of every pointer are reserved and must be ignored.
        let offset = self.next & !0b11;
        if !(FIRST_CAPABILITY_OFFSET..LEGACY_CONFIG_SIZE).contains(&offset) {
            return None;
        }
        let bit = 1u64 << ((offset - FIRST_CAPABILITY_OFFSET) / 4);
        if self.visited & bit != 0 {
            log::warn!("PCI capability list loops back to {offset:#x}; walk stopped");
            return None;
        }
        self.visited |= bit;
        let id = *self.config.get(offset)?;
        self.next = usize::from(*self.config.get(offset + 1)?);
        Some(Capability {
            offset: offset as u8,
            id,
        })
    }
}

/// One entry of the PCIe extended capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtCapability {
    /// Config offset of the capability header.
    pub offset: u16,
    /// Extended capability id (header bits 15:0).
    pub id: u16,
    /// Capability version (header bits 19:16).
    pub version: u8,
}

/// Iterator over the PCIe extended capability list of a 4 KiB config-space image.
pub struct ExtCapabilities<'a> {
    config: &'a [u8],
    next: usize,
    visited: [u64; (CONFIG_SPACE_SIZE - FIRST_EXT_CAPABILITY_OFFSET) / 4 / 64],
}

impl<'a> ExtCapabilities<'a> {
    /// Walks `config` from 0x100. A header of 0 or all-ones (no PCIe, or a conventional PCI
    /// device behind ECAM) yields nothing.
    pub fn new(config: &'a [u8]) -> Self {
        Self {
            config,
            next: FIRST_EXT_CAPABILITY_OFFSET,
            visited: [0; 15],
        }
    }
}

impl Iterator for ExtCapabilities<'_> {
    type Item = ExtCapability;

    fn next(&mut self) -> Option<ExtCapability> {
        let offset = self.next & !0b11;
        if !(FIRST_EXT_CAPABILITY_OFFSET..CONFIG_SPACE_SIZE).contains(&offset) {
            return None;
        }
        let dword = (offset - FIRST_EXT_CAPABILITY_OFFSET) / 4;
        let (word, bit) = (dword / 64, 1u64 << (dword % 64));
        if self.visited[word] & bit != 0 {
            log::warn!("PCIe extended capability list loops back to {offset:#x}; walk stopped");
            return None;
        }
        self.visited[word] |= bit;
        let bytes = self.config.get(offset..offset + 4)?;
        let header = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if header == 0 || header == u32::MAX {
            return None;
        }
        self.next = (header >> 20) as usize;
        Some(ExtCapability {
            offset: offset as u16,
            id: header as u16,
            version: ((header >> 16) & 0xf) as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        vec![0u8; CONFIG_SPACE_SIZE]
    }

    #[test]
    fn standard_walk_follows_next_pointers() {
        let mut c = image();
        c[0x34] = 0x50;
        c[0x50] = id::MSI;
        c[0x51] = 0x40;
        c[0x40] = id::MSIX;
        c[0x41] = 0;
        let caps: Vec<_> = Capabilities::new(&c).collect();
        assert_eq!(
            caps,
            [
                Capability {
                    offset: 0x50,
                    id: id::MSI
                },
                Capability {
                    offset: 0x40,
                    id: id::MSIX
                }
            ]
        );
    }

    #[test]
    fn self_loop_yields_the_capability_once() {
        let mut c = image();
        c[0x34] = 0x60;
        c[0x60] = id::PCI_EXPRESS;
        c[0x61] = 0x60;
        assert_eq!(Capabilities::new(&c).count(), 1);
    }

    #[test]
    fn pointer_into_the_header_ends_the_walk() {
        let mut c = image();
        c[0x34] = 0x40;
        c[0x40] = id::MSI;
        c[0x41] = 0x10;
        assert_eq!(Capabilities::new(&c).count(), 1);
        c[0x34] = 0x3c;
        assert_eq!(Capabilities::new(&c).count(), 0);
    }

    #[test]
    fn long_cycle_through_every_dword_stops_at_the_limit() {
        let mut c = vec![0xffu8; LEGACY_CONFIG_SIZE];
        c[0x34] = 0x40;
        for off in (0x40..0x100).step_by(4) {
            c[off] = 0x09;
            c[off + 1] = if off == 0xfc { 0x40 } else { (off + 4) as u8 };
        }
        assert_eq!(Capabilities::new(&c).count(), MAX_CAPABILITIES);
    }

    #[test]
    fn reserved_pointer_bits_are_ignored() {
        let mut c = image();
        c[0x34] = 0x43;
        c[0x40] = id::MSI;
        assert_eq!(Capabilities::new(&c).next().unwrap().offset, 0x40);
    }

    #[test]
    fn extended_walk_reads_headers_and_stops_on_loops() {
        let mut c = image();
        // AER (id 1, v1) at 0x100 -> 0x140; ARI (0xe, v1) at 0x140 -> 0x100 (loop).
        c[0x100..0x104].copy_from_slice(&(0x1u32 | (1 << 16) | (0x140 << 20)).to_le_bytes());
        c[0x140..0x144].copy_from_slice(&(0xeu32 | (1 << 16) | (0x100 << 20)).to_le_bytes());
        let caps: Vec<_> = ExtCapabilities::new(&c).collect();
        assert_eq!(caps.len(), 2);
        assert_eq!(
            caps[1],
            ExtCapability {
                offset: 0x140,
                id: 0xe,
                version: 1
            }
        );
    }

    #[test]
    fn absent_extended_space_yields_nothing() {
        assert_eq!(ExtCapabilities::new(&image()).count(), 0);
        assert_eq!(
            ExtCapabilities::new(&vec![0xff; CONFIG_SPACE_SIZE]).count(),
            0
        );
        assert_eq!(ExtCapabilities::new(&[0u8; 256]).count(), 0);
    }
}
