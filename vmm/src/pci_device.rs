//! Adapters between one PCI device shared by several owners (the segment's config path, the
//! buses that trap its BARs, the VMM that maps and moves them) and the traits each owner uses.

use std::sync::{Arc, Mutex, MutexGuard};

use devices::bus::{Bus, BusDevice};
use log::warn;
use pci::allocator::{SegmentAllocator, Space};
use pci::bar::{BarIndex, BarKind, BarSpec};
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

/// The allocator space a BAR of `kind` comes from.
pub fn space_of(kind: BarKind) -> Space {
    match kind {
        BarKind::Io => Space::Io,
        BarKind::Mem32 => Space::Mem32,
        BarKind::Mem64 => Space::Mem64,
    }
}

/// What every device with a trapped BAR does when the guest moves that BAR from `old` to `new`:
/// update the segment allocator's record and move the trap on `bus`. The guest has already
/// written the BAR, so problems (an overlap, a range outside the windows) are logged, not
/// returned; the device-specific parts (memory slots, doorbells) are the caller's.
pub fn move_trapped_bar<T: PciDevice + 'static>(
    name: &str,
    allocator: Option<&Arc<Mutex<SegmentAllocator>>>,
    bus: &Bus,
    device: &Arc<Mutex<T>>,
    spec: &BarSpec,
    old: u64,
    new: u64,
) {
    if let Some(allocator) = allocator {
        let moved = allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .relocate(space_of(spec.kind), old, new, spec.size);
        if let Err(e) = moved {
            warn!("{name}: guest moved BAR {:?} to {new:#x}: {e}", spec.index);
        }
    }
    bus.remove(old);
    let trap = Arc::new(Mutex::new(BarTrap::new(device.clone(), spec.index)));
    if let Err(e) = bus.insert(trap, new, spec.size) {
        warn!("{name}: BAR {:?} at {new:#x}: {e}", spec.index);
    }
}
