//! The ACPI Generic Event Device (GED): how a hardware-reduced ACPI platform raises events.
//!
//! viaduct's FADT is hardware-reduced: there is no GPE block and no SCI, so the guest cannot be
//! told about a hotplug or a power-button press the PC way. The ACPI 6 answer is a Generic Event
//! Device (`_HID "ACPI0013"`): a device whose `_CRS` lists an interrupt and whose `_EVT` method
//! the OS runs when that interrupt fires. Linux's `evged` driver does exactly that.
//!
//! The register block is one 32-bit event register (cloud-hypervisor's protocol, widened from
//! its 1 byte). The VMM sets flags with [`AcpiGed::notify`], which also raises the interrupt;
//! the DSDT's `_EVT` reads the register, which returns the flags and clears them, and acts on
//! each set flag ([`GED_PCI_DEVICES_CHANGED`]: rescan the PCI hotplug slots,
//! [`GED_POWER_BUTTON`]: notify the power button).
//!
//! The VMM keeps the device in an `Arc<Mutex<AcpiGed>>`: the MMIO bus reaches it from vCPU
//! threads, and the VMM calls [`AcpiGed::notify`] from whichever thread has an event (the API
//! thread). The mutex makes "OR flags in" and "read and clear" atomic with respect to each
//! other, so no event is lost between them.

use std::io;

use log::debug;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Event flag: PCI devices were plugged or unplug-requested; the guest rescans the hotplug
/// controller (`\_SB_.PHPR.PSCN`). cloud-hypervisor's bit value.
pub const GED_PCI_DEVICES_CHANGED: u32 = 1 << 2;
/// Event flag: the power button was pressed; the guest gets `Notify(\_SB_.PWRB, 0x80)`.
/// cloud-hypervisor's bit value.
pub const GED_POWER_BUTTON: u32 = 1 << 3;

/// What a read the register block does not decode returns (nothing answers there).
const UNDECODED: u8 = 0xff;

/// The Generic Event Device's event register.
///
/// Exists so the VMM can raise ACPI events on a hardware-reduced platform: [`AcpiGed::notify`]
/// records the events and signals the interrupt eventfd (which the VMM registers with KVM as an
/// irqfd for the GED's GSI); the guest's read of the register takes them.
pub struct AcpiGed {
    irq: EventFd,
    pending: u32,
}

impl AcpiGed {
    /// A GED with no pending event whose interrupt is `irq`: every [`AcpiGed::notify`] writes
    /// 1 to it (an edge).
    pub fn new(irq: EventFd) -> Self {
        Self { irq, pending: 0 }
    }

    /// ORs `flags` into the pending events and signals the interrupt, once per call (the GED's
    /// interrupt is edge-triggered; the guest's `_EVT` reads every pending flag at once, so a
    /// second edge before it ran is harmless). `flags == 0` changes nothing and raises no
    /// interrupt.
    ///
    /// An error means the eventfd could not be written; the flags stay pending and the next
    /// successful notify delivers them. A saturated (non-blocking) eventfd already has an
    /// interrupt pending, which counts as success.
    pub fn notify(&mut self, flags: u32) -> io::Result<()> {
        if flags == 0 {
            return Ok(());
        }
        self.pending |= flags;
        match self.irq.write(1) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// The events notified and not yet read by the guest.
    pub fn pending(&self) -> u32 {
        self.pending
    }
}

impl BusDevice for AcpiGed {
    /// A 4-byte read at offset 0 returns the pending flags and clears them; a 1-byte read there
    /// returns (and clears) the low 8 bits, which hold every defined flag. Anything else reads
    /// as all-ones and clears nothing.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                data.copy_from_slice(&self.pending.to_le_bytes());
                self.pending = 0;
            }
            (0, 1) => {
                data[0] = self.pending as u8;
                self.pending &= !0xff;
            }
            _ => {
                debug!(
                    "ged: {}-byte read at offset {offset:#x} not decoded",
                    data.len()
                );
                data.fill(UNDECODED);
            }
        }
    }

    /// The register is read-only: writes are ignored.
    fn write(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "ged: ignoring {}-byte write at offset {offset:#x}",
            data.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    fn device() -> (AcpiGed, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (AcpiGed::new(irq.try_clone().unwrap()), irq)
    }

    fn read32(dev: &mut AcpiGed) -> u32 {
        let mut b = [0xaa; 4];
        dev.read(0, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn flags_are_bits_2_and_3() {
        assert_eq!(GED_PCI_DEVICES_CHANGED, 4);
        assert_eq!(GED_POWER_BUTTON, 8);
    }

    #[test]
    fn a_read_returns_the_flags_and_clears_them() {
        let (mut dev, irq) = device();
        assert_eq!(read32(&mut dev), 0);
        dev.notify(GED_PCI_DEVICES_CHANGED).unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(dev.pending(), GED_PCI_DEVICES_CHANGED);
        assert_eq!(read32(&mut dev), GED_PCI_DEVICES_CHANGED);
        assert_eq!(read32(&mut dev), 0, "read clears");
        assert_eq!(dev.pending(), 0);
    }

    #[test]
    fn notifies_accumulate_with_one_edge_each() {
        let (mut dev, irq) = device();
        dev.notify(GED_PCI_DEVICES_CHANGED).unwrap();
        dev.notify(GED_POWER_BUTTON).unwrap();
        dev.notify(GED_POWER_BUTTON).unwrap();
        assert_eq!(irq.read().unwrap(), 3, "one eventfd write per notify");
        assert_eq!(read32(&mut dev), GED_PCI_DEVICES_CHANGED | GED_POWER_BUTTON);
        assert_eq!(read32(&mut dev), 0);
    }

    #[test]
    fn notifying_nothing_raises_no_interrupt() {
        let (mut dev, irq) = device();
        dev.notify(0).unwrap();
        assert!(irq.read().is_err(), "no eventfd write");
        assert_eq!(read32(&mut dev), 0);
    }

    #[test]
    fn a_saturated_eventfd_still_records_the_event() {
        let (mut dev, irq) = device();
        irq.write(u64::MAX - 1).unwrap();
        dev.notify(GED_POWER_BUTTON).unwrap();
        assert_eq!(read32(&mut dev), GED_POWER_BUTTON);
    }

    #[test]
    fn byte_reads_take_the_low_byte() {
        let (mut dev, _irq) = device();
        dev.notify(GED_POWER_BUTTON | GED_PCI_DEVICES_CHANGED | 0x100)
            .unwrap();
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [0x0c]);
        assert_eq!(dev.pending(), 0x100, "only the bits returned are cleared");
        assert_eq!(read32(&mut dev), 0x100);
    }

    #[test]
    fn other_accesses_read_all_ones_and_clear_nothing() {
        let (mut dev, _irq) = device();
        dev.notify(GED_POWER_BUTTON).unwrap();
        let mut two = [0u8; 2];
        dev.read(0, &mut two);
        assert_eq!(two, [0xff; 2]);
        let mut eight = [0u8; 8];
        dev.read(0, &mut eight);
        assert_eq!(eight, [0xff; 8]);
        let mut four = [0u8; 4];
        dev.read(1, &mut four);
        assert_eq!(four, [0xff; 4]);
        dev.read(u64::MAX, &mut four);
        assert_eq!(four, [0xff; 4]);
        dev.read(0, &mut []);
        // Writes are ignored, whatever they hold.
        dev.write(0, &[0, 0, 0, 0]);
        dev.write(0, &[0xff]);
        dev.write(u64::MAX, &[1, 2, 3]);
        assert_eq!(read32(&mut dev), GED_POWER_BUTTON);
    }

    #[test]
    fn shared_between_a_vcpu_and_an_api_thread() {
        let (dev, irq) = device();
        let dev = Arc::new(Mutex::new(dev));
        let bus_side: Arc<Mutex<dyn BusDevice>> = dev.clone();
        let api = {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    dev.lock().unwrap().notify(GED_POWER_BUTTON).unwrap();
                }
            })
        };
        let mut seen = 0;
        while seen == 0 || !api.is_finished() {
            let mut b = [0u8; 4];
            bus_side.lock().unwrap().read(0, &mut b);
            seen |= u32::from_le_bytes(b);
        }
        api.join().unwrap();
        let mut b = [0u8; 4];
        bus_side.lock().unwrap().read(0, &mut b);
        seen |= u32::from_le_bytes(b);
        assert_eq!(seen, GED_POWER_BUTTON);
        assert_eq!(irq.read().unwrap(), 100);
    }
}
