//! How a device (or a vCPU thread) tells the VMM that the guest is done.

use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stops. The first reason reported wins; later ones are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5). viaduct exits 0.
    PowerOff,
    /// The guest asked to reboot (ACPI reset register or i8042 reset). viaduct exits 0.
    Reboot,
    /// The guest kernel reported a panic through pvpanic. viaduct exits non-zero.
    GuestPanic,
    /// A vCPU (or the VMM's event loop) stopped in a way the guest did not ask for (triple
    /// fault, KVM internal error, failed ioctl). Whoever reports it keeps the typed cause and
    /// returns it; viaduct exits non-zero.
    Failure,
}

/// Shared "stop the VM" signal: a reason slot plus an eventfd the event loop waits on.
#[derive(Clone)]
pub struct ExitNotifier {
    reason: Arc<Mutex<Option<ExitReason>>>,
    event: Arc<EventFd>,
}

impl ExitNotifier {
    /// Creates a notifier with no reason recorded yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Arc::new(Mutex::new(None)),
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// Records `reason` (unless one is already recorded) and wakes the event loop.
    pub fn notify(&self, reason: ExitReason) {
        {
            let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(reason);
            }
        }
        // A full counter still wakes the reader, so a failed write loses nothing.
        let _ = self.event.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable once a reason is recorded.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_reader() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.reason(), None);
        n.clone().notify(ExitReason::GuestPanic);
        n.notify(ExitReason::PowerOff);
        assert_eq!(n.reason(), Some(ExitReason::GuestPanic));
        assert_eq!(n.event().read().unwrap(), 2);
    }
}
