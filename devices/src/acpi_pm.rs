//! The hardware-reduced ACPI power-management register: sleep control, sleep status and reset
//! in one 8-bit I/O port.
//!
//! viaduct's FADT is hardware-reduced (no PM1 blocks), so it points `SLEEP_CONTROL_REG`,
//! `SLEEP_STATUS_REG` and `RESET_REG` at this single port. The guest powers off by writing
//! `SLP_EN | SLP_TYP(S5)` and reboots by writing the FADT's reset value.
//!
//! The three registers share the port without ambiguity: the reset value is compared first and
//! exactly; the sleep-status write Linux issues before sleeping (`WAK_STS`, 0x80) has `SLP_EN`
//! clear and so never sleeps.

use log::debug;

use crate::bus::BusDevice;
use crate::byte_access::{byte_read, byte_write};
use crate::exit::{ExitNotifier, ExitReason};

/// Sleep control register: `SLP_EN`, start the transition to the state in `SLP_TYP`.
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control register: position of the 3-bit `SLP_TYP` field.
pub const SLP_TYP_SHIFT: u8 = 2;
/// Sleep control register: mask of `SLP_TYP` after shifting it down.
pub const SLP_TYP_MASK: u8 = 0b111;
/// Sleep status register: `WAK_STS`, the platform has woken (write 1 to clear).
pub const WAK_STS: u8 = 1 << 7;

/// Why the register block could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiPmError {
    /// `SLP_TYP` is a 3-bit field, so this S5 sleep type could never be written.
    #[error("S5 sleep type {0} does not fit the 3-bit SLP_TYP field")]
    SleepTypeOutOfRange(u8),
}

/// The ACPI sleep control/status + reset register.
///
/// Exists to turn the guest's ACPI power-off and reset requests into an [`ExitReason`]. Only
/// S5 is a supported sleep state; a request for any other is refused by "waking up" at once
/// (setting `WAK_STS`), so a guest that polls the status register after writing sleep control
/// (as Linux does) carries on instead of spinning forever. After an S5 request `WAK_STS` stays
/// clear, so the guest keeps polling until the VMM stops it.
pub struct AcpiPmDevice {
    exit: ExitNotifier,
    reset_value: u8,
    s5_sleep_type: u8,
    wake_status: bool,
}

impl AcpiPmDevice {
    /// A register block that reports [`ExitReason::Reboot`] when `reset_value` is written and
    /// [`ExitReason::PowerOff`] when the guest enters sleep type `s5_sleep_type` (the value of
    /// the DSDT's `_S5_` package).
    pub fn new(
        exit: ExitNotifier,
        reset_value: u8,
        s5_sleep_type: u8,
    ) -> Result<Self, AcpiPmError> {
        if s5_sleep_type > SLP_TYP_MASK {
            return Err(AcpiPmError::SleepTypeOutOfRange(s5_sleep_type));
        }
        Ok(Self {
            exit,
            reset_value,
            s5_sleep_type,
            wake_status: false,
        })
    }

    fn sleep(&mut self, sleep_type: u8) {
        if sleep_type == self.s5_sleep_type {
            debug!("acpi: guest entered S5 (soft off)");
            self.exit.notify(ExitReason::PowerOff);
        } else {
            crate::warn_limited!(
                "acpi: guest requested sleep type {sleep_type}, which viaduct does not support; \
                 waking it at once"
            );
            self.wake_status = true;
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        byte_read(
            offset,
            data,
            1,
            |_| if self.wake_status { WAK_STS } else { 0 },
        );
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some((0, value)) = byte_write(offset, data) else {
            debug!(
                "acpi: ignoring {}-byte write at offset {offset:#x}",
                data.len()
            );
            return;
        };
        if value == self.reset_value {
            debug!("acpi: guest wrote the reset register");
            self.exit.notify(ExitReason::Reboot);
            return;
        }
        if value & WAK_STS != 0 {
            self.wake_status = false;
        }
        if value & SLP_EN != 0 {
            self.sleep((value >> SLP_TYP_SHIFT) & SLP_TYP_MASK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: u8 = 0x1;
    const S5: u8 = 5;

    fn device() -> (AcpiPmDevice, ExitNotifier) {
        let n = ExitNotifier::new().unwrap();
        (AcpiPmDevice::new(n.clone(), RESET, S5).unwrap(), n)
    }

    fn status(dev: &mut AcpiPmDevice) -> u8 {
        let mut b = [0xaa];
        dev.read(0, &mut b);
        b[0]
    }

    #[test]
    fn reset_value_reboots() {
        let (mut dev, n) = device();
        dev.write(0, &[RESET]);
        assert_eq!(n.reason(), Some(ExitReason::Reboot));
    }

    #[test]
    fn s5_powers_off() {
        let (mut dev, n) = device();
        assert_eq!(status(&mut dev), 0);
        // What Linux's acpi_hw_extended_sleep writes: clear WAK_STS, then SLP_TYP|SLP_EN.
        dev.write(0, &[WAK_STS]);
        assert_eq!(n.reason(), None);
        dev.write(0, &[(5 << 2) | (1 << 5)]);
        assert_eq!(n.reason(), Some(ExitReason::PowerOff));
        assert_eq!(
            status(&mut dev),
            0,
            "the guest keeps polling until it is stopped"
        );
    }

    #[test]
    fn other_sleep_states_are_refused_by_waking() {
        let (mut dev, n) = device();
        for typ in [1u8, 3, 4] {
            dev.write(0, &[WAK_STS]);
            assert_eq!(status(&mut dev), 0);
            dev.write(0, &[(typ << 2) | (1 << 5)]);
            assert_eq!(n.reason(), None, "S{typ}");
            assert_eq!(status(&mut dev), WAK_STS);
        }
        dev.write(0, &[WAK_STS]);
        assert_eq!(status(&mut dev), 0);
        assert_eq!(n.event().read().ok(), None, "no exit was signalled");
    }

    #[test]
    fn sleep_type_without_slp_en_does_nothing() {
        let (mut dev, n) = device();
        dev.write(0, &[5 << 2]);
        assert_eq!(n.reason(), None);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut dev, n) = device();
        dev.write(0, &[RESET, 0]);
        dev.write(0, &[(5 << 2) | (1 << 5), 0, 0, 0]);
        dev.write(0, &[]);
        dev.write(1, &[RESET]);
        dev.write(u64::MAX, &[(5 << 2) | (1 << 5)]);
        assert_eq!(n.reason(), None);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff; 2]);
        let mut one = [0u8; 1];
        dev.read(1, &mut one);
        assert_eq!(one, [0xff]);
    }

    #[test]
    fn out_of_range_sleep_type_is_rejected() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(
            AcpiPmDevice::new(n, RESET, 8).err(),
            Some(AcpiPmError::SleepTypeOutOfRange(8))
        );
    }
}
