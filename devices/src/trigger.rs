//! Adapters that let vm-superio devices signal the VMM through its own primitives.
//!
//! vm-superio devices raise events through its `Trigger` trait. viaduct has two kinds of event:
//! a guest interrupt (an `EventFd` KVM consumes as an irqfd) and a request to stop the VM (an
//! [`ExitNotifier`]). Each gets a small wrapper here.

use std::convert::Infallible;
use std::io;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitNotifier, ExitReason};

/// An interrupt line backed by an `EventFd`.
///
/// Exists because `Trigger` (vm-superio) cannot be implemented on `EventFd` (vmm-sys-util)
/// directly. The VMM registers a clone of the same eventfd with KVM as an irqfd, so every
/// trigger injects the device's GSI.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`; each trigger adds 1 to its counter.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The wrapped eventfd.
    pub fn event(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        match self.0.write(1) {
            // A non-blocking eventfd whose counter is saturated already has an interrupt
            // pending, which is all a trigger has to achieve.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }
}

/// A trigger that stops the VM for a fixed reason.
///
/// Exists so vm-superio devices whose only event is "the guest wants out" (the i8042 reset
/// line) report through the same [`ExitNotifier`] as the other devices.
#[derive(Clone)]
pub struct ExitTrigger {
    notifier: ExitNotifier,
    reason: ExitReason,
}

impl ExitTrigger {
    /// A trigger that calls `notifier.notify(reason)`.
    pub fn new(notifier: ExitNotifier, reason: ExitReason) -> Self {
        Self { notifier, reason }
    }
}

impl Trigger for ExitTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.notifier.notify(self.reason.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn eventfd_trigger_counts_and_tolerates_saturation() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = EventFdTrigger::new(evt.try_clone().unwrap());
        t.trigger().unwrap();
        t.trigger().unwrap();
        assert_eq!(evt.read().unwrap(), 2);
        // Saturate the counter (max is u64::MAX - 1): the next trigger would block.
        evt.write(u64::MAX - 1).unwrap();
        t.trigger().unwrap();
    }

    #[test]
    fn exit_trigger_notifies_its_reason() {
        let n = ExitNotifier::new().unwrap();
        ExitTrigger::new(n.clone(), ExitReason::Reboot)
            .trigger()
            .unwrap();
        assert_eq!(n.reason(), Some(ExitReason::Reboot));
    }
}
