//! The legacy configuration mechanism #1: an address latch at port 0xCF8 and a data window at
//! 0xCFC..0xCFF, as used by firmware and by Linux before (or without) ACPI MCFG.
//!
//! Only segment 0 is reachable this way and only the first 256 bytes of each function. The latch
//! is written and read as a dword only: Linux's `pci_conf1` probe writes 0x80000000 and expects
//! to read it back, and a byte write to 0xCFB (the probe's first step) must not disturb it.

use crate::address::Bdf;
use crate::segment::{PciSegment, RoutedWriteEffect};

/// First port of the mechanism (CONFIG_ADDRESS).
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Ports covered: CONFIG_ADDRESS (4) and CONFIG_DATA (4).
pub const LEGACY_PORTS_LEN: u64 = 8;
/// CONFIG_ADDRESS bit 31: the data window decodes.
pub const CONFIG_ENABLE: u32 = 1 << 31;
/// The latch bits that exist: enable, bus 23:16, device 15:11, function 10:8, register 7:2.
const ADDRESS_MASK: u32 = CONFIG_ENABLE | 0x00ff_fffc;
/// Offset of CONFIG_DATA from CONFIG_ADDRESS.
const DATA_OFFSET: u64 = 4;

/// The 0xCF8 address latch and the decoding of 0xCFC through it.
///
/// Holds only the latch; the segment is passed in on each access so that the VMM can keep one
/// lock around the segment shared with its ECAM window.
#[derive(Clone, Copy, Debug, Default)]
pub struct LegacyConfigPorts {
    address: u32,
}

impl LegacyConfigPorts {
    /// A latch reading 0 (disabled).
    pub fn new() -> Self {
        Self::default()
    }

    /// The latched CONFIG_ADDRESS.
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Guest read at `port_offset` from 0xCF8.
    pub fn read(&self, segment: &PciSegment, port_offset: u64, data: &mut [u8]) {
        match port_offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            DATA_OFFSET..LEGACY_PORTS_LEN => match self.target(port_offset) {
                Some((bdf, reg)) => segment.config_read(bdf, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    /// Guest write at `port_offset` from 0xCF8. Returns the effect of a config write.
    pub fn write(
        &mut self,
        segment: &mut PciSegment,
        port_offset: u64,
        data: &[u8],
    ) -> Option<RoutedWriteEffect> {
        match (port_offset, data) {
            (0, &[a, b, c, d]) => {
                self.address = u32::from_le_bytes([a, b, c, d]) & ADDRESS_MASK;
                None
            }
            (DATA_OFFSET..LEGACY_PORTS_LEN, _) => {
                let (bdf, reg) = self.target(port_offset)?;
                let effect = segment.config_write(bdf, reg, data);
                (!effect.is_empty()).then_some(RoutedWriteEffect { bdf, effect })
            }
            _ => None,
        }
    }

    /// Function and config offset the data window at `port_offset` reaches, if enabled.
    fn target(&self, port_offset: u64) -> Option<(Bdf, usize)> {
        if self.address & CONFIG_ENABLE == 0 {
            return None;
        }
        let a = self.address;
        let bdf = Bdf::new(
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
        )
        .ok()?;
        let reg = (a & 0xfc) as usize + (port_offset - DATA_OFFSET) as usize;
        Some((bdf, reg))
    }
}
