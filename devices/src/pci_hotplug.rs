//! The ACPI PCI hotplug controller: the register block the DSDT's `\_SB_.PHPR` drives.
//!
//! cloud-hypervisor's protocol (itself QEMU's `acpi-pcihp` moved to MMIO, with a segment
//! selector in place of the bus selector). Four 32-bit registers; only 4-byte accesses are
//! decoded:
//!
//! | offset | name | read | write |
//! |---|---|---|---|
//! | 0x0 | PCIU | slots plugged on the selected segment since the last read ("up"); the read clears it | ignored |
//! | 0x4 | PCID | slots whose unplug the VMM requested since the last read ("down"); the read clears it | ignored |
//! | 0x8 | B0EJ | 0 | each set bit: the guest ejected that slot of the selected segment |
//! | 0xC | PSEG | the selected segment | select a segment; a number `>=` the segment count is ignored |
//!
//! How the guest uses it: the VMM sets a bit ([`PciHotplugController::plug`],
//! [`PciHotplugController::unplug_request`]) and raises the GED's
//! `GED_PCI_DEVICES_CHANGED` event; the guest's `_EVT` runs `PSCN`, which, for every segment,
//! selects it (PSEG) and notifies the slots set in PCIU (device check: Linux's acpiphp rescans
//! the slot) and PCID (eject request: acpiphp unbinds the driver, then calls the slot's `_EJ0`,
//! which selects the segment and writes the slot's bit to B0EJ). The B0EJ write is where the
//! device really leaves; it arrives on a vCPU thread and is handed to the VMM's callback.

use log::debug;

use crate::bus::BusDevice;

/// Register offset: PCIU, the "up" bitmap of the selected segment (read clears it).
pub const PCIU: u64 = 0x0;
/// Register offset: PCID, the "down" bitmap of the selected segment (read clears it).
pub const PCID: u64 = 0x4;
/// Register offset: B0EJ, eject the slots whose bits are written.
pub const B0EJ: u64 = 0x8;
/// Register offset: PSEG, the selected segment.
pub const PSEG: u64 = 0xC;
/// Size of the register block.
pub const REGISTER_BLOCK_SIZE: u64 = 0x10;

/// Slots on a segment's root bus: one bit each in PCIU, PCID and B0EJ.
pub const SLOTS_PER_SEGMENT: u8 = 32;

/// What an access the controller does not decode reads as.
const UNDECODED: u8 = 0xff;

/// Called for each slot the guest ejected, with `(segment, slot)`.
///
/// It runs on a vCPU thread, inside the guest's MMIO write, while the controller is locked: it
/// must not block (record the ejection and wake another thread to detach the device) and must
/// not lock the controller.
pub type EjectCallback = Box<dyn Fn(u16, u8) + Send>;

/// Why the VMM's request could not be recorded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    /// The segment does not exist.
    #[error("PCI segment {segment} does not exist (the hotplug controller has {num_segments})")]
    SegmentOutOfRange {
        /// The requested segment.
        segment: u16,
        /// How many segments the controller has.
        num_segments: u16,
    },
    /// The slot is not on a root bus.
    #[error("PCI slot {slot} does not exist (slots are 0..{SLOTS_PER_SEGMENT})")]
    SlotOutOfRange {
        /// The requested slot.
        slot: u8,
    },
}

/// Pending events of one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SegmentBits {
    up: u32,
    down: u32,
}

/// The PCI hotplug controller's register block, for `num_segments` segments.
///
/// Exists so the VMM can tell the guest that a slot was plugged or should be unplugged, and
/// learn when the guest has let go of it (the eject, through the [`EjectCallback`]). Every
/// guest value is accepted: nothing a guest writes can panic or reach a segment or slot that
/// does not exist.
pub struct PciHotplugController {
    segments: Vec<SegmentBits>,
    selected: u16,
    on_eject: EjectCallback,
}

impl PciHotplugController {
    /// A controller for segments `0..num_segments`, nothing pending, segment 0 selected.
    /// `on_eject` is called for every slot the guest ejects.
    pub fn new(num_segments: u16, on_eject: EjectCallback) -> Self {
        Self {
            segments: vec![SegmentBits::default(); usize::from(num_segments)],
            selected: 0,
            on_eject,
        }
    }

    /// How many segments the controller serves.
    pub fn num_segments(&self) -> u16 {
        // `segments` was built from a u16 length.
        self.segments.len() as u16
    }

    /// The segment PSEG selects.
    pub fn selected_segment(&self) -> u16 {
        self.selected
    }

    /// The slots' bit, after checking both numbers.
    fn bits(&mut self, segment: u16, slot: u8) -> Result<(&mut SegmentBits, u32), HotplugError> {
        let num_segments = self.num_segments();
        if slot >= SLOTS_PER_SEGMENT {
            return Err(HotplugError::SlotOutOfRange { slot });
        }
        let bits =
            self.segments
                .get_mut(usize::from(segment))
                .ok_or(HotplugError::SegmentOutOfRange {
                    segment,
                    num_segments,
                })?;
        Ok((bits, 1 << slot))
    }

    /// Records that a device was plugged into `slot` of `segment`: sets its PCIU bit, so the
    /// guest's next scan sends the slot a device check and the guest enumerates it.
    pub fn plug(&mut self, segment: u16, slot: u8) -> Result<(), HotplugError> {
        let (bits, bit) = self.bits(segment, slot)?;
        bits.up |= bit;
        Ok(())
    }

    /// Asks the guest to give up the device in `slot` of `segment`: sets its PCID bit, so the
    /// guest's next scan sends the slot an eject request. The device leaves only when the guest
    /// ejects it (the [`EjectCallback`]).
    pub fn unplug_request(&mut self, segment: u16, slot: u8) -> Result<(), HotplugError> {
        let (bits, bit) = self.bits(segment, slot)?;
        bits.down |= bit;
        Ok(())
    }

    /// The `(up, down)` bitmaps of `segment` not yet read by the guest, or `None` for a
    /// segment that does not exist.
    pub fn pending(&self, segment: u16) -> Option<(u32, u32)> {
        self.segments
            .get(usize::from(segment))
            .map(|b| (b.up, b.down))
    }

    fn selected_bits(&mut self) -> Option<&mut SegmentBits> {
        self.segments.get_mut(usize::from(self.selected))
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            PCIU => self
                .selected_bits()
                .map_or(0, |b| std::mem::take(&mut b.up)),
            PCID => self
                .selected_bits()
                .map_or(0, |b| std::mem::take(&mut b.down)),
            B0EJ => 0,
            PSEG => u32::from(self.selected),
            _ => u32::MAX,
        }
    }

    /// The guest ejected the slots set in `bitmap` on the selected segment: each one's pending
    /// bits are dropped (the device is gone, a stale "up" or "down" would only confuse the
    /// guest's next scan) and the VMM is told, lowest slot first.
    fn eject(&mut self, bitmap: u32) {
        let segment = self.selected;
        let Some(bits) = self.selected_bits() else {
            crate::warn_limited!(
                "pci hotplug: eject of slots {bitmap:#x} with no segment selected; ignored"
            );
            return;
        };
        bits.up &= !bitmap;
        bits.down &= !bitmap;
        for slot in 0..SLOTS_PER_SEGMENT {
            if bitmap & (1 << slot) != 0 {
                debug!("pci hotplug: guest ejected segment {segment} slot {slot}");
                (self.on_eject)(segment, slot);
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            B0EJ => self.eject(value),
            PSEG => match u16::try_from(value) {
                Ok(segment) if segment < self.num_segments() => self.selected = segment,
                _ => debug!("pci hotplug: ignoring selection of segment {value:#x}"),
            },
            _ => debug!("pci hotplug: ignoring write of {value:#x} at offset {offset:#x}"),
        }
    }
}

/// Whether `offset` is the start of one of the four registers.
fn is_register(offset: u64) -> bool {
    matches!(offset, PCIU | PCID | B0EJ | PSEG)
}

impl BusDevice for PciHotplugController {
    /// A 4-byte read of one of the four registers; anything else reads as all-ones and
    /// changes nothing.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 4 && is_register(offset) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            debug!(
                "pci hotplug: {}-byte read at offset {offset:#x} not decoded",
                data.len()
            );
            data.fill(UNDECODED);
        }
    }

    /// A 4-byte write of B0EJ or PSEG; anything else is dropped.
    fn write(&mut self, offset: u64, data: &[u8]) {
        match <[u8; 4]>::try_from(data) {
            Ok(value) if is_register(offset) => {
                self.write_register(offset, u32::from_le_bytes(value))
            }
            _ => debug!(
                "pci hotplug: ignoring {}-byte write at offset {offset:#x}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Ejected = Arc<Mutex<Vec<(u16, u8)>>>;

    fn controller(num_segments: u16) -> (PciHotplugController, Ejected) {
        let ejected = Ejected::default();
        let record = ejected.clone();
        let dev = PciHotplugController::new(
            num_segments,
            Box::new(move |segment, slot| record.lock().unwrap().push((segment, slot))),
        );
        (dev, ejected)
    }

    fn read(dev: &mut PciHotplugController, offset: u64) -> u32 {
        let mut b = [0xaa; 4];
        dev.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write(dev: &mut PciHotplugController, offset: u64, value: u32) {
        dev.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn up_and_down_bitmaps_clear_on_read() {
        let (mut dev, ejected) = controller(1);
        assert_eq!((read(&mut dev, PCIU), read(&mut dev, PCID)), (0, 0));
        dev.plug(0, 3).unwrap();
        dev.plug(0, 5).unwrap();
        dev.unplug_request(0, 7).unwrap();
        assert_eq!(dev.pending(0), Some((0b10_1000, 1 << 7)));
        assert_eq!(read(&mut dev, PCIU), 0b10_1000);
        assert_eq!(read(&mut dev, PCIU), 0, "PCIU read clears");
        assert_eq!(read(&mut dev, PCID), 1 << 7);
        assert_eq!(read(&mut dev, PCID), 0, "PCID read clears");
        assert_eq!(read(&mut dev, B0EJ), 0);
        assert!(ejected.lock().unwrap().is_empty(), "reads eject nothing");
    }

    #[test]
    fn pseg_selects_whose_bitmaps_are_read_and_ejected() {
        let (mut dev, ejected) = controller(3);
        assert_eq!(read(&mut dev, PSEG), 0);
        dev.plug(0, 1).unwrap();
        dev.plug(2, 4).unwrap();
        dev.unplug_request(1, 6).unwrap();

        write(&mut dev, PSEG, 2);
        assert_eq!(read(&mut dev, PSEG), 2);
        assert_eq!(dev.selected_segment(), 2);
        assert_eq!((read(&mut dev, PCIU), read(&mut dev, PCID)), (1 << 4, 0));
        write(&mut dev, PSEG, 1);
        assert_eq!((read(&mut dev, PCIU), read(&mut dev, PCID)), (0, 1 << 6));
        write(&mut dev, B0EJ, 1 << 6);
        write(&mut dev, PSEG, 0);
        assert_eq!((read(&mut dev, PCIU), read(&mut dev, PCID)), (1 << 1, 0));
        assert_eq!(*ejected.lock().unwrap(), [(1, 6)]);
    }

    #[test]
    fn out_of_range_segments_are_not_selected() {
        let (mut dev, ejected) = controller(2);
        write(&mut dev, PSEG, 1);
        for bad in [2, 3, 0xffff, 0x1_0000, 0x1_0001, u32::MAX] {
            write(&mut dev, PSEG, bad);
            assert_eq!(read(&mut dev, PSEG), 1, "PSEG = {bad:#x} kept segment 1");
        }
        // An eject still goes to the segment that really is selected.
        write(&mut dev, B0EJ, 1 << 2);
        assert_eq!(*ejected.lock().unwrap(), [(1, 2)]);
    }

    #[test]
    fn vmm_requests_outside_the_segments_and_slots_are_errors() {
        let (mut dev, _) = controller(2);
        assert_eq!(
            dev.plug(2, 1),
            Err(HotplugError::SegmentOutOfRange {
                segment: 2,
                num_segments: 2
            })
        );
        assert_eq!(
            dev.unplug_request(u16::MAX, 1),
            Err(HotplugError::SegmentOutOfRange {
                segment: u16::MAX,
                num_segments: 2
            })
        );
        assert_eq!(
            dev.plug(0, 32),
            Err(HotplugError::SlotOutOfRange { slot: 32 })
        );
        assert_eq!(
            dev.unplug_request(1, u8::MAX),
            Err(HotplugError::SlotOutOfRange { slot: u8::MAX })
        );
        dev.plug(1, 31).unwrap();
        dev.unplug_request(1, 0).unwrap();
        assert_eq!(dev.pending(0), Some((0, 0)));
        assert_eq!(dev.pending(1), Some((1 << 31, 1)));
        assert_eq!(dev.pending(2), None);
    }

    #[test]
    fn one_b0ej_write_ejects_every_set_slot_lowest_first() {
        let (mut dev, ejected) = controller(2);
        write(&mut dev, PSEG, 1);
        dev.plug(1, 9).unwrap();
        dev.unplug_request(1, 3).unwrap();
        dev.unplug_request(1, 4).unwrap();
        write(&mut dev, B0EJ, (1 << 31) | (1 << 9) | (1 << 3) | 1);
        assert_eq!(*ejected.lock().unwrap(), [(1, 0), (1, 3), (1, 9), (1, 31)]);
        assert_eq!(
            dev.pending(1),
            Some((0, 1 << 4)),
            "ejected slots' pending bits are dropped, the others stay"
        );
        write(&mut dev, B0EJ, 0);
        assert_eq!(ejected.lock().unwrap().len(), 4, "writing 0 ejects nothing");
        write(&mut dev, B0EJ, u32::MAX);
        assert_eq!(ejected.lock().unwrap().len(), 36);
        assert_eq!(read(&mut dev, B0EJ), 0);
    }

    #[test]
    fn only_aligned_4_byte_accesses_are_decoded() {
        let (mut dev, ejected) = controller(2);
        dev.plug(0, 1).unwrap();
        for (offset, len) in [
            (PCIU, 1),
            (PCIU, 2),
            (PCIU, 8),
            (1, 4),
            (0x10, 4),
            (u64::MAX, 4),
        ] {
            let mut b = vec![0u8; len];
            dev.read(offset, &mut b);
            assert!(
                b.iter().all(|&x| x == 0xff),
                "{len}-byte read at {offset:#x}"
            );
        }
        dev.read(PCIU, &mut []);
        assert_eq!(dev.pending(0), Some((1 << 1, 0)), "odd reads clear nothing");

        dev.write(B0EJ, &[0xff]);
        dev.write(B0EJ, &[0xff, 0xff]);
        dev.write(B0EJ, &[0xff; 8]);
        dev.write(B0EJ + 1, &[0xff; 4]);
        dev.write(u64::MAX, &[0xff; 4]);
        dev.write(PSEG, &[1]);
        dev.write(PSEG, &[]);
        assert!(ejected.lock().unwrap().is_empty());
        assert_eq!(dev.selected_segment(), 0);
        // PCIU and PCID are read-only.
        write(&mut dev, PCIU, 0);
        write(&mut dev, PCID, u32::MAX);
        assert_eq!(dev.pending(0), Some((1 << 1, 0)));
    }

    #[test]
    fn a_controller_without_segments_answers_zero() {
        let (mut dev, ejected) = controller(0);
        assert_eq!(dev.num_segments(), 0);
        assert!(matches!(
            dev.plug(0, 1),
            Err(HotplugError::SegmentOutOfRange { .. })
        ));
        write(&mut dev, PSEG, 0);
        assert_eq!(read(&mut dev, PSEG), 0);
        assert_eq!((read(&mut dev, PCIU), read(&mut dev, PCID)), (0, 0));
        write(&mut dev, B0EJ, 1);
        assert!(ejected.lock().unwrap().is_empty());
    }

    #[test]
    fn the_eject_callback_runs_behind_the_bus() {
        let (dev, ejected) = controller(1);
        let bus = crate::bus::Bus::new();
        bus.insert(Arc::new(Mutex::new(dev)), 0xFE00_1000, REGISTER_BLOCK_SIZE)
            .unwrap();
        assert!(bus.write(0xFE00_1000 + B0EJ, &(1u32 << 5).to_le_bytes()));
        assert_eq!(*ejected.lock().unwrap(), [(0, 5)]);
    }
}
