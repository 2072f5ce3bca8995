//! The host bridge at 00:00.0 of every segment: the root of the segment's bus as the guest
//! enumerates it.
//!
//! It has no BARs and no capabilities; it exists because guests expect function 00:00.0 to be
//! a host bridge (class 06/00/00) and some drivers look for one.

use crate::bar::{BarIndex, BarSpec};
use crate::config_space::{ClassCode, ConfigSpace, ConfigWriteEffect, DeviceIds};
use crate::device::PciDevice;
use crate::error::PciError;

/// Intel's vendor id.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device id 0x0d57, the one cloud-hypervisor's `PciRoot` uses: no Linux driver binds to it, so
/// the bridge stays inert, and a guest image already run on cloud-hypervisor sees the same
/// device.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// Base class 0x06 (bridge), subclass 0x00 (host bridge), programming interface 0.
pub const HOST_BRIDGE_CLASS: ClassCode = ClassCode {
    base: 0x06,
    sub: 0x00,
    prog_if: 0x00,
};

/// The inert host bridge function.
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// A host bridge with the fixed ids above.
    pub fn new() -> Self {
        let ids = DeviceIds {
            vendor_id: HOST_BRIDGE_VENDOR_ID,
            device_id: HOST_BRIDGE_DEVICE_ID,
            class: HOST_BRIDGE_CLASS,
            revision_id: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        };
        Self {
            config: ConfigSpace::new("host bridge", &ids),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn name(&self) -> &str {
        self.config.name()
    }

    fn read_config(&self, reg_idx: usize) -> u32 {
        self.config.read_config(reg_idx)
    }

    fn write_config(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        self.config.write_config(reg_idx, offset, data)
    }

    fn bars(&self) -> Vec<BarSpec> {
        Vec::new()
    }

    fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError> {
        self.config.set_bar_address(index, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bridge_ids_and_class() {
        let hb = HostBridge::new();
        assert_eq!(hb.read_config(0), 0x0d57_8086);
        // Class 06/00/00, revision 0.
        assert_eq!(hb.read_config(2), 0x0600_0000);
        // Header type 0, single function.
        assert_eq!(hb.read_config(3) >> 16 & 0xff, 0);
        assert!(hb.bars().is_empty());
        assert_eq!(hb.read_config(4), 0);
    }

    #[test]
    fn host_bridge_ids_are_read_only_and_bars_absent() {
        let mut hb = HostBridge::new();
        hb.write_config(0, 0, &[0xff; 4]);
        hb.write_config(4, 0, &[0xff; 4]);
        assert_eq!(hb.read_config(0), 0x0d57_8086);
        assert_eq!(hb.read_config(4), 0);
        assert!(hb.set_bar_address(BarIndex::new(0).unwrap(), 0).is_err());
    }
}
