//! A PCI segment: one root bus (bus 0) with the host bridge in slot 0 and up to 31 devices,
//! reachable through the segment's ECAM window (and, on segment 0, the 0xCF8/0xCFC ports, see
//! [`crate::legacy_ports`]).
//!
//! Only function 0 of each slot is populated; other functions, other buses and empty slots read
//! all-ones and drop writes, which is how a guest learns that nothing is there. The VMM owns the
//! locking: it wraps a segment in a mutex and forwards bus accesses here.

use crate::address::{Bdf, SegmentId, DEVICES_PER_BUS};
use crate::config_space::{valid_access, ConfigWriteEffect, CONFIG_DWORDS};
use crate::device::PciDevice;
use crate::error::PciError;
use crate::host_bridge::HostBridge;

/// Bytes of ECAM window per bus (32 devices × 8 functions × 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// Size of one segment's ECAM window: bus 0 only.
pub const ECAM_WINDOW_SIZE: u64 = ECAM_BUS_SIZE;

/// A config write's effect, tagged with the function it reached, for callers (ECAM and port
/// paths) that do not decode addresses themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedWriteEffect {
    /// The function written.
    pub bdf: Bdf,
    /// What the VMM must do.
    pub effect: ConfigWriteEffect,
}

/// What occupies one slot of the root bus.
enum Slot {
    /// Nothing: config reads return all-ones.
    Free,
    /// Held for a device being attached (its INTx GSI depends on the slot, so the slot is chosen
    /// before the device is built); reads all-ones until the device is installed.
    Reserved,
    /// A device.
    Device(Box<dyn PciDevice>),
}

/// One PCI segment (domain) with its root bus.
pub struct PciSegment {
    id: SegmentId,
    slots: Vec<Slot>,
}

impl PciSegment {
    /// A segment with only the host bridge at 00:00.0.
    pub fn new(id: SegmentId) -> Self {
        let mut slots: Vec<Slot> = Vec::new();
        slots.resize_with(usize::from(DEVICES_PER_BUS), || Slot::Free);
        slots[0] = Slot::Device(Box::new(HostBridge::new()));
        Self { id, slots }
    }

    /// This segment's number.
    pub fn id(&self) -> SegmentId {
        self.id
    }

    /// Places `device` in the lowest free slot and returns its address.
    pub fn add_device(&mut self, device: Box<dyn PciDevice>) -> Result<Bdf, PciError> {
        let bdf = self.reserve(device.name())?;
        self.install(bdf, device)?;
        Ok(bdf)
    }

    /// Holds the lowest free slot for the device called `name` and returns its address. The
    /// slot reads as empty until [`PciSegment::install`] puts the device there, or
    /// [`PciSegment::remove`] frees it again.
    pub fn reserve(&mut self, name: &str) -> Result<Bdf, PciError> {
        let Some(slot) = self.slots.iter().position(|s| matches!(s, Slot::Free)) else {
            return Err(PciError::SegmentFull {
                segment: self.id,
                device: name.to_owned(),
            });
        };
        let bdf = Bdf::new(0, slot as u8, 0)?;
        self.slots[slot] = Slot::Reserved;
        Ok(bdf)
    }

    /// Puts `device` into the slot reserved for it at `bdf`.
    pub fn install(&mut self, bdf: Bdf, device: Box<dyn PciDevice>) -> Result<(), PciError> {
        let index = self.slot_index(bdf);
        match index.map(|s| &self.slots[s]) {
            Some(Slot::Reserved) => {}
            _ => {
                return Err(PciError::NotReserved {
                    segment: self.id,
                    slot: bdf.device(),
                    device: device.name().to_owned(),
                })
            }
        }
        log::info!("PCI {}:{bdf}: {}", self.id, device.name());
        if let Some(s) = index {
            self.slots[s] = Slot::Device(device);
        }
        Ok(())
    }

    /// Frees the slot at `bdf` (reserved or populated) and returns the device that was there.
    /// The host bridge cannot be removed.
    pub fn remove(&mut self, bdf: Bdf) -> Option<Box<dyn PciDevice>> {
        let s = self.slot_index(bdf).filter(|&s| s != 0)?;
        match std::mem::replace(&mut self.slots[s], Slot::Free) {
            Slot::Device(device) => Some(device),
            Slot::Reserved | Slot::Free => None,
        }
    }

    /// Whether the slot of `bdf` is neither populated nor reserved.
    pub fn is_free(&self, bdf: Bdf) -> bool {
        self.slot_index(bdf)
            .is_some_and(|s| matches!(self.slots[s], Slot::Free))
    }

    /// The device at `bdf`, if one is there.
    pub fn device(&self, bdf: Bdf) -> Option<&dyn PciDevice> {
        match &self.slots[self.slot_index(bdf)?] {
            Slot::Device(d) => Some(d.as_ref()),
            _ => None,
        }
    }

    /// The device at `bdf`, mutably (e.g. to forward a trapped BAR access or a BAR move).
    pub fn device_mut(&mut self, bdf: Bdf) -> Option<&mut (dyn PciDevice + 'static)> {
        let s = self.slot_index(bdf)?;
        match &mut self.slots[s] {
            Slot::Device(d) => Some(d.as_mut()),
            _ => None,
        }
    }

    /// Every populated function with its address, host bridge included.
    pub fn devices(&self) -> impl Iterator<Item = (Bdf, &dyn PciDevice)> {
        self.slots.iter().enumerate().filter_map(|(slot, d)| {
            let bdf = Bdf::new(0, slot as u8, 0).ok()?;
            match d {
                Slot::Device(d) => Some((bdf, d.as_ref())),
                _ => None,
            }
        })
    }

    /// Config read of 1, 2 or 4 bytes at `offset` (0..4096) of `bdf`. An absent function or a
    /// malformed access reads all-ones.
    pub fn config_read(&self, bdf: Bdf, offset: usize, data: &mut [u8]) {
        let (reg_idx, within) = (offset / 4, offset % 4);
        match self.device(bdf) {
            Some(dev) if valid_access(reg_idx, within, data.len()) => {
                let bytes = dev.read_config(reg_idx).to_le_bytes();
                data.copy_from_slice(&bytes[within..within + data.len()]);
            }
            _ => data.fill(0xff),
        }
    }

    /// Config write of 1, 2 or 4 bytes at `offset` of `bdf`. Dropped for an absent function or
    /// a malformed access.
    pub fn config_write(&mut self, bdf: Bdf, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        let (reg_idx, within) = (offset / 4, offset % 4);
        if !valid_access(reg_idx, within, data.len()) {
            return ConfigWriteEffect::default();
        }
        match self.device_mut(bdf) {
            Some(dev) => dev.write_config(reg_idx, within, data),
            None => ConfigWriteEffect::default(),
        }
    }

    /// Guest read at `offset` in this segment's ECAM window: bus 27:20, device 19:15, function
    /// 14:12, register 11:0.
    pub fn ecam_read(&self, offset: u64, data: &mut [u8]) {
        match decode_ecam(offset) {
            Some((bdf, reg)) => self.config_read(bdf, reg, data),
            None => data.fill(0xff),
        }
    }

    /// Guest write at `offset` in this segment's ECAM window.
    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) -> Option<RoutedWriteEffect> {
        let (bdf, reg) = decode_ecam(offset)?;
        let effect = self.config_write(bdf, reg, data);
        (!effect.is_empty()).then_some(RoutedWriteEffect { bdf, effect })
    }

    fn slot_index(&self, bdf: Bdf) -> Option<usize> {
        (bdf.bus() == 0 && bdf.function() == 0).then_some(usize::from(bdf.device()))
    }
}

/// Function and register of an ECAM offset; `None` beyond the 256-bus range.
fn decode_ecam(offset: u64) -> Option<(Bdf, usize)> {
    if offset >= 256 * ECAM_BUS_SIZE {
        return None;
    }
    let reg = (offset & 0xfff) as usize;
    debug_assert!(reg / 4 < CONFIG_DWORDS);
    Some((Bdf::from_ecam_offset(offset), reg))
}

#[cfg(test)]
#[path = "segment_tests.rs"]
mod tests;
