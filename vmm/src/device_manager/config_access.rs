//! The guest's paths into PCI configuration space: each segment's ECAM window on the MMIO bus,
//! and the 0xCF8/0xCFC ports (segment 0) on the port bus. A write that moves a BAR or changes
//! decoding is acted on by the device manager before the segment is unlocked, so config writes
//! and the mapping changes they cause happen in the order the guest made them.
//!
//! They hold the device manager weakly: the manager owns the buses they sit on, and a strong
//! reference here would make a cycle that keeps every device (and its VFIO fd) alive.

use std::sync::{Arc, Mutex, Weak};

use devices::bus::BusDevice;
use pci::legacy_ports::LegacyConfigPorts;
use pci::segment::{PciSegment, RoutedWriteEffect};

use super::DeviceManager;

fn apply(
    manager: &Weak<DeviceManager>,
    segment: &mut PciSegment,
    routed: Option<RoutedWriteEffect>,
) {
    let (Some(routed), Some(manager)) = (routed, manager.upgrade()) else {
        return;
    };
    manager.apply_config_effect(segment, routed);
}

/// A segment's ECAM window as seen from the MMIO bus.
pub struct EcamAccess {
    segment: Arc<Mutex<PciSegment>>,
    manager: Weak<DeviceManager>,
}

impl EcamAccess {
    /// The ECAM window of `segment`.
    pub fn new(segment: Arc<Mutex<PciSegment>>, manager: Weak<DeviceManager>) -> Self {
        Self { segment, manager }
    }
}

impl BusDevice for EcamAccess {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.segment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ecam_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        let routed = segment.ecam_write(offset, data);
        apply(&self.manager, &mut segment, routed);
    }
}

/// The 0xCF8/0xCFC ports as seen from the port bus (segment 0 only).
pub struct LegacyPortAccess {
    ports: LegacyConfigPorts,
    segment: Arc<Mutex<PciSegment>>,
    manager: Weak<DeviceManager>,
}

impl LegacyPortAccess {
    /// The legacy ports in front of `segment`.
    pub fn new(segment: Arc<Mutex<PciSegment>>, manager: Weak<DeviceManager>) -> Self {
        Self {
            ports: LegacyConfigPorts::new(),
            segment,
            manager,
        }
    }
}

impl BusDevice for LegacyPortAccess {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        self.ports.read(&segment, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        let routed = self.ports.write(&mut segment, offset, data);
        apply(&self.manager, &mut segment, routed);
    }
}
