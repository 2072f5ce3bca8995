//! The i8042 keyboard controller, reduced to its CPU reset line.
//!
//! Guests reboot through the i8042 by writing the "pulse reset line" command (0xFE) to its
//! command port; Linux falls back to it when the ACPI reset register does not work. The command
//! decoding is vm-superio's [`vm_superio::I8042Device`]; this module maps it onto the bus and
//! turns the reset into [`ExitReason::Reboot`].
//!
//! Linux's boot-time probe of the controller is harmless: the status register reads 0 (output
//! buffer empty, input buffer empty), so its self-test and CTR commands (0xAA, 0x20, 0x60, ...)
//! time out waiting for a reply, the probe gives up, and none of them is 0xFE.

use log::debug;
use vm_superio::I8042Device as ResetOnlyI8042;

use crate::bus::BusDevice;
use crate::byte_access::{byte_read, byte_write};
use crate::exit::{ExitNotifier, ExitReason};
use crate::trigger::ExitTrigger;

/// Number of ports mapped for the i8042: data (offset 0) up to command/status (offset 4).
pub const I8042_PORT_COUNT: u8 = 5;
/// Offset of the data port (0x60 when mapped at 0x60).
pub const DATA_OFFSET: u8 = 0;
/// Offset of the command (write) / status (read) port (0x64 when mapped at 0x60).
pub const COMMAND_OFFSET: u8 = 4;
/// The command that pulses the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xFE;

/// Offset of system control port B (0x61) inside the mapped range. It belongs to the PIT and
/// is normally claimed by KVM's in-kernel PIT before an exit reaches us.
const PORT_B_OFFSET: u8 = 1;
/// Port B bit 5: PIT channel 2 output.
const PORT_B_PIT_OUT2: u8 = 1 << 5;

/// The i8042 CPU-reset line.
///
/// Exists so "reboot via keyboard controller" stops the VM with [`ExitReason::Reboot`], and so
/// the rest of the controller reads as present-but-idle rather than unmapped.
pub struct I8042Device {
    inner: ResetOnlyI8042<ExitTrigger>,
}

impl I8042Device {
    /// An i8042 that reports [`ExitReason::Reboot`] to `exit` on the reset command.
    pub fn new(exit: ExitNotifier) -> Self {
        Self {
            inner: ResetOnlyI8042::new(ExitTrigger::new(exit, ExitReason::Reboot)),
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        byte_read(offset, data, I8042_PORT_COUNT, |o| match o {
            // Should port B ever reach us (no in-kernel PIT), report PIT OUT2 high so loops
            // that wait for it (PIT-based TSC calibration) end instead of spinning forever.
            PORT_B_OFFSET => PORT_B_PIT_OUT2,
            // Data and status both read 0: no data, input buffer empty.
            o => self.inner.read(o),
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some((offset, value)) = byte_write(offset, data) else {
            debug!(
                "i8042: ignoring {}-byte write at offset {offset:#x}",
                data.len()
            );
            return;
        };
        if offset == COMMAND_OFFSET && value == CMD_RESET_CPU {
            debug!("i8042: guest pulsed the CPU reset line");
        }
        // Only (COMMAND_OFFSET, CMD_RESET_CPU) does anything, and ExitTrigger cannot fail.
        let _ = self.inner.write(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042Device, ExitNotifier) {
        let n = ExitNotifier::new().unwrap();
        (I8042Device::new(n.clone()), n)
    }

    #[test]
    fn reset_command_reboots() {
        let (mut dev, n) = device();
        dev.write(COMMAND_OFFSET.into(), &[0xFE]);
        assert_eq!(n.reason(), Some(ExitReason::Reboot));
    }

    #[test]
    fn linux_probe_sequence_does_not_reboot() {
        let (mut dev, n) = device();
        let mut b = [0xaa];
        dev.read(COMMAND_OFFSET.into(), &mut b);
        assert_eq!(b, [0], "status: nothing to read, ready for input");
        dev.read(DATA_OFFSET.into(), &mut b);
        assert_eq!(b, [0]);
        // Self-test, read/write CTR, disable/enable kbd and aux ports, aux loopback, aux write.
        for cmd in [
            0xAA, 0x20, 0x60, 0xAD, 0xAE, 0xA7, 0xA8, 0xA9, 0xD3, 0xD4, 0xFF, 0xFC,
        ] {
            dev.write(COMMAND_OFFSET.into(), &[cmd]);
        }
        // The reset command byte on the data port (e.g. as a CTR value or device command).
        dev.write(DATA_OFFSET.into(), &[0xFE]);
        dev.write(PORT_B_OFFSET.into(), &[0xFE]);
        assert_eq!(n.reason(), None);
    }

    #[test]
    fn odd_accesses_do_not_reboot() {
        let (mut dev, n) = device();
        dev.write(COMMAND_OFFSET.into(), &[0xFE, 0]);
        dev.write(COMMAND_OFFSET.into(), &[0xFE, 0xFE, 0xFE, 0xFE]);
        dev.write(COMMAND_OFFSET.into(), &[]);
        dev.write(u64::from(COMMAND_OFFSET) + 0x1_0000_0000, &[0xFE]);
        assert_eq!(n.reason(), None);
        let mut wide = [0u8; 2];
        dev.read(COMMAND_OFFSET.into(), &mut wide);
        assert_eq!(wide, [0xff; 2]);
    }

    #[test]
    fn port_b_reports_pit_output_high() {
        let (mut dev, _) = device();
        let mut b = [0];
        dev.read(PORT_B_OFFSET.into(), &mut b);
        assert_eq!(b[0] & PORT_B_PIT_OUT2, PORT_B_PIT_OUT2);
    }
}
