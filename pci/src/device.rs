//! The interface every function on a PCI segment implements: config space, BAR layout, and
//! the trapped part of its BARs.
//!
//! Passthrough devices (vfio-dev) and emulated ones implement it; the segment routes config
//! accesses to it and the VMM routes trapped BAR accesses to it. It is object-safe and `Send`
//! so segments can hold `Box<dyn PciDevice>` behind the VMM's lock.

use crate::bar::{BarIndex, BarSpec};
pub use crate::config_space::{ConfigWriteEffect, Decode};
use crate::error::PciError;

/// A PCI function as the segment and the VMM see it.
pub trait PciDevice: Send {
    /// A short human name for logs and errors (e.g. `vfio 0000:01:00.0`).
    fn name(&self) -> &str;

    /// Reads config dword `reg_idx` (0..1024). Beyond that, all-ones.
    fn read_config(&self, reg_idx: usize) -> u32;

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` within config dword `reg_idx`;
    /// returns what the VMM must do about it (BAR moves).
    fn write_config(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect;

    /// The BARs (and ROM) the device needs, for the VMM's allocator.
    fn bars(&self) -> Vec<BarSpec>;

    /// Called by the VMM after allocation: the BAR now lives at `addr` (and its register reads
    /// so).
    fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError>;

    /// A guest read at `offset` within BAR `index` that trapped to the VMM. Default: nothing
    /// answers, all-ones.
    fn read_bar(&mut self, index: BarIndex, offset: u64, data: &mut [u8]) {
        let _ = (index, offset);
        data.fill(0xff);
    }

    /// A guest write at `offset` within BAR `index` that trapped to the VMM. Default: dropped.
    fn write_bar(&mut self, index: BarIndex, offset: u64, data: &[u8]) {
        let _ = (index, offset, data);
    }

    /// Which BARs the function answers on now (command register decode bits, ROM enable); the
    /// VMM maps only those into the guest. Default: all of them, for a device that does not
    /// model the command register.
    fn decode(&self) -> Decode {
        Decode::ALL
    }

    /// The function is leaving the bus (detach, VM teardown): stop its interrupts, DMA and
    /// workers. Called once, after its BARs are gone from the guest. Default: nothing to stop.
    fn shutdown(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::BarKind;
    use crate::config_space::{ClassCode, ConfigSpace, DeviceIds};

    /// The smallest device: a config space and one BAR, default BAR access.
    struct Minimal(ConfigSpace);

    impl PciDevice for Minimal {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn read_config(&self, reg_idx: usize) -> u32 {
            self.0.read_config(reg_idx)
        }
        fn write_config(
            &mut self,
            reg_idx: usize,
            offset: usize,
            data: &[u8],
        ) -> ConfigWriteEffect {
            self.0.write_config(reg_idx, offset, data)
        }
        fn bars(&self) -> Vec<BarSpec> {
            self.0.bars()
        }
        fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError> {
            self.0.set_bar_address(index, addr)
        }
    }

    #[test]
    fn default_bar_access_reads_all_ones_and_the_trait_is_object_safe() {
        let ids = DeviceIds {
            vendor_id: 0x1234,
            device_id: 0x1111,
            class: ClassCode {
                base: 0x03,
                sub: 0,
                prog_if: 0,
            },
            revision_id: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        };
        let mut cs = ConfigSpace::new("minimal", &ids);
        let bar0 = BarIndex::new(0).unwrap();
        cs.add_bar(BarSpec::new(bar0, 0x1000, BarKind::Mem32))
            .unwrap();
        let mut dev: Box<dyn PciDevice> = Box::new(Minimal(cs));
        dev.set_bar_address(bar0, 0xe000_0000).unwrap();
        assert_eq!(dev.read_config(4), 0xe000_0000);
        let mut data = [0u8; 4];
        dev.read_bar(bar0, 0, &mut data);
        assert_eq!(data, [0xff; 4]);
        dev.write_bar(bar0, 0, &data);
        assert_eq!(dev.bars().len(), 1);
        assert_eq!(dev.name(), "minimal");
    }
}
