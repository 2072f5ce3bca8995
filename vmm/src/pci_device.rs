//! Adapters between one PCI device shared by several owners (the segment's config path, the
//! buses that trap its BARs, the VMM that maps and moves them) and the traits each owner uses.

use std::sync::{Arc, Mutex, MutexGuard};

use devices::bus::BusDevice;
use pci::bar::{BarIndex, BarSpec};
use pci::config_space::ConfigWriteEffect;
use pci::device::PciDevice;
use pci::error::PciError;

/// The PCI-bus view of a device that the VMM also keeps a handle to.
pub struct SharedDevice<T: PciDevice> {
    name: String,
    device: Arc<Mutex<T>>,
}

impl<T: PciDevice> SharedDevice<T> {
    /// Shares `device` under `name`.
    pub fn new(name: String, device: Arc<Mutex<T>>) -> Self {
        Self { name, device }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: PciDevice> PciDevice for SharedDevice<T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn read_config(&self, reg_idx: usize) -> u32 {
        self.lock().read_config(reg_idx)
    }
    fn write_config(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        self.lock().write_config(reg_idx, offset, data)
    }
    fn bars(&self) -> Vec<BarSpec> {
        self.lock().bars()
    }
    fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError> {
        self.lock().set_bar_address(index, addr)
    }
    fn read_bar(&mut self, index: BarIndex, offset: u64, data: &mut [u8]) {
        self.lock().read_bar(index, offset, data)
    }
    fn write_bar(&mut self, index: BarIndex, offset: u64, data: &[u8]) {
        self.lock().write_bar(index, offset, data)
    }
}

/// The trapped part of one BAR, on the MMIO or port bus.
pub struct BarTrap<T: PciDevice> {
    device: Arc<Mutex<T>>,
    bar: BarIndex,
}

impl<T: PciDevice> BarTrap<T> {
    /// Traps `bar` of `device`.
    pub fn new(device: Arc<Mutex<T>>, bar: BarIndex) -> Self {
        Self { device, bar }
    }
}

impl<T: PciDevice> BusDevice for BarTrap<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_bar(self.bar, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_bar(self.bar, offset, data)
    }
}
