//! The pvpanic I/O port: the guest kernel reports a panic by writing to it.
//!
//! The protocol (QEMU's `pvpanic` ISA device, Linux's `pvpanic` driver): reading the port
//! returns the events the device supports; the guest then writes one of them when it happens.

use log::{debug, info};

use crate::bus::BusDevice;
use crate::byte_access::{byte_read, byte_write};
use crate::exit::{ExitNotifier, ExitReason};

/// Event bit: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: the guest loaded a crash (kdump) kernel and will boot into it after a panic.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic device.
///
/// Exists so a guest panic stops the VM with [`ExitReason::GuestPanic`] (and a non-zero exit
/// status) instead of leaving it hung. Advertises [`PVPANIC_PANICKED`] and
/// [`PVPANIC_CRASH_LOADED`].
pub struct PvPanicDevice {
    exit: ExitNotifier,
}

impl PvPanicDevice {
    /// Events this device advertises to the guest.
    pub const SUPPORTED_EVENTS: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

    /// A pvpanic port that reports [`ExitReason::GuestPanic`] to `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanicDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        byte_read(offset, data, 1, |_| Self::SUPPORTED_EVENTS);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some((0, events)) = byte_write(offset, data) else {
            debug!(
                "pvpanic: ignoring {}-byte write at offset {offset:#x}",
                data.len()
            );
            return;
        };
        if events & PVPANIC_PANICKED != 0 {
            info!("pvpanic: guest kernel panicked");
            self.exit.notify(ExitReason::GuestPanic);
        } else if events & PVPANIC_CRASH_LOADED != 0 {
            info!("pvpanic: guest loaded a crash kernel");
        } else {
            debug!("pvpanic: ignoring unsupported events {events:#x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (PvPanicDevice, ExitNotifier) {
        let n = ExitNotifier::new().unwrap();
        (PvPanicDevice::new(n.clone()), n)
    }

    #[test]
    fn read_returns_supported_events() {
        let (mut dev, _) = device();
        let mut b = [0];
        dev.read(0, &mut b);
        assert_eq!(b, [0b11]);
    }

    #[test]
    fn panicked_stops_the_vm() {
        let (mut dev, n) = device();
        dev.write(0, &[1]);
        assert_eq!(n.reason(), Some(ExitReason::GuestPanic));
    }

    #[test]
    fn panicked_with_crash_loaded_is_a_panic() {
        let (mut dev, n) = device();
        dev.write(0, &[3]);
        assert_eq!(n.reason(), Some(ExitReason::GuestPanic));
    }

    #[test]
    fn crash_loaded_and_unknown_events_do_nothing() {
        let (mut dev, n) = device();
        dev.write(0, &[2]);
        dev.write(0, &[4]);
        dev.write(0, &[0]);
        assert_eq!(n.reason(), None);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut dev, n) = device();
        dev.write(0, &[1, 0]);
        dev.write(0, &[]);
        dev.write(1, &[1]);
        assert_eq!(n.reason(), None);
        let mut wide = [0u8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
    }
}
