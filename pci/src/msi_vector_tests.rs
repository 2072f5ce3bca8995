//! Tests of [`super::MsiVector`] against a router that logs every call it gets.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::*;

/// One call the router got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Allocate(u32),
    Free(u32),
    Route(u32, u32),
    Unroute(u32),
    Attach(u32, RawFd),
    Detach(u32),
}

/// An [`InterruptRouter`] that logs its calls; GSIs count up from 100. `attach_irqfd` fails
/// while `refuse_attach` is set (and is then not logged).
#[derive(Default)]
struct Log {
    calls: Mutex<Vec<Call>>,
    allocated: AtomicU32,
    refuse_attach: Mutex<bool>,
}

impl Log {
    fn push(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    /// The calls so far, emptying the log.
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl InterruptRouter for Log {
    fn allocate_gsi(&self) -> Result<Gsi, RoutingError> {
        let gsi = 100 + self.allocated.fetch_add(1, Ordering::Relaxed);
        self.push(Call::Allocate(gsi));
        Ok(Gsi(gsi))
    }
    fn free_gsi(&self, gsi: Gsi) {
        self.push(Call::Free(gsi.0));
    }
    fn set_msi_route(&self, gsi: Gsi, address: u64, data: u32) -> Result<(), RoutingError> {
        assert_eq!(address, ADDRESS);
        self.push(Call::Route(gsi.0, data));
        Ok(())
    }
    fn remove_route(&self, gsi: Gsi) -> Result<(), RoutingError> {
        self.push(Call::Unroute(gsi.0));
        Ok(())
    }
    fn attach_irqfd(&self, event: &EventFd, gsi: Gsi) -> Result<(), RoutingError> {
        if *self.refuse_attach.lock().unwrap() {
            return Err(RoutingError {
                what: "irqfd".into(),
                detail: "refused".into(),
            });
        }
        self.push(Call::Attach(gsi.0, event.as_raw_fd()));
        Ok(())
    }
    fn detach_irqfd(&self, _: &EventFd, gsi: Gsi) -> Result<(), RoutingError> {
        self.push(Call::Detach(gsi.0));
        Ok(())
    }
    fn attach_level_irqfd(&self, _: &EventFd, _: &EventFd, _: Gsi) -> Result<(), RoutingError> {
        unreachable!("MSI vectors are edge triggered")
    }
    fn detach_level_irqfd(&self, _: &EventFd, _: Gsi) -> Result<(), RoutingError> {
        unreachable!("MSI vectors are edge triggered")
    }
}

const ADDRESS: u64 = 0xfee0_0000;

fn msg(data: u32) -> MsiMessage {
    MsiMessage {
        address: ADDRESS,
        data,
    }
}

#[test]
fn attach_allocates_and_routes_once() {
    let log = Log::default();
    let mut v = MsiVector::new().unwrap();
    let fd = v.event().as_raw_fd();
    assert_eq!((v.gsi(), v.is_attached()), (None, false));

    v.attach(&log, msg(0x40)).unwrap();
    v.attach(&log, msg(0x40)).unwrap();
    assert_eq!(
        log.take(),
        [
            Call::Allocate(100),
            Call::Route(100, 0x40),
            Call::Attach(100, fd)
        ]
    );
    assert_eq!((v.gsi(), v.is_attached()), (Some(Gsi(100)), true));
}

#[test]
fn reattach_with_a_changed_message_updates_the_route() {
    let log = Log::default();
    let mut v = MsiVector::new().unwrap();
    v.attach(&log, msg(0x40)).unwrap();
    log.take();

    v.attach(&log, msg(0x41)).unwrap();
    assert_eq!(log.take(), [Call::Route(100, 0x41)]);
    assert_eq!(v.gsi(), Some(Gsi(100)));
}

#[test]
fn detach_keeps_the_gsi_and_route_for_a_cheap_reattach() {
    let log = Log::default();
    let mut v = MsiVector::new().unwrap();
    let fd = v.event().as_raw_fd();
    v.detach(&log).unwrap();
    assert_eq!(log.take(), [], "nothing to detach yet");
    v.attach(&log, msg(0x40)).unwrap();
    log.take();

    v.detach(&log).unwrap();
    v.detach(&log).unwrap();
    assert_eq!(log.take(), [Call::Detach(100)]);
    assert_eq!((v.gsi(), v.is_attached()), (Some(Gsi(100)), false));

    v.sync(&log, Some(msg(0x40))).unwrap();
    assert_eq!(log.take(), [Call::Attach(100, fd)]);
    v.sync(&log, None).unwrap();
    assert_eq!(log.take(), [Call::Detach(100)]);
}

#[test]
fn pending_while_detached_is_delivered_exactly_once_on_attach() {
    let log = Log::default();
    let mut v = MsiVector::new().unwrap();
    assert!(!v.is_pending());
    v.event().write(2).unwrap();
    assert!(v.is_pending());
    assert!(v.is_pending(), "checking does not consume");

    v.attach(&log, msg(0x40)).unwrap();
    // Attached, so not pending, and the eventfd holds exactly one signal for the irqfd.
    assert!(!v.is_pending());
    assert_eq!(v.event().read().unwrap(), 1);
    assert!(v.event().read().is_err());
}

#[test]
fn nothing_pending_means_nothing_signalled_on_attach() {
    let mut v = MsiVector::new().unwrap();
    v.attach(&Log::default(), msg(0x40)).unwrap();
    assert!(v.event().read().is_err());
}

#[test]
fn a_refused_attach_keeps_the_vector_pending() {
    let log = Log::default();
    let mut v = MsiVector::new().unwrap();
    v.event().write(1).unwrap();
    *log.refuse_attach.lock().unwrap() = true;

    assert!(v.attach(&log, msg(0x40)).is_err());
    assert!(!v.is_attached() && v.is_pending());

    *log.refuse_attach.lock().unwrap() = false;
    v.attach(&log, msg(0x40)).unwrap();
    assert_eq!(v.event().read().unwrap(), 1);
}

#[test]
fn drain_clears_the_pending_count() {
    let v = MsiVector::new().unwrap();
    v.event().write(3).unwrap();
    v.drain();
    assert!(!v.is_pending());
    v.drain();
}

#[test]
fn release_detaches_removes_the_route_and_frees_the_gsi() {
    let log = Log::default();
    let mut v = MsiVector::new().unwrap();
    let fd = v.event().as_raw_fd();
    assert!(v.release(&log).is_empty());
    assert_eq!(log.take(), [], "no GSI: nothing to release");

    v.attach(&log, msg(0x40)).unwrap();
    log.take();
    assert!(v.release(&log).is_empty());
    assert_eq!(
        log.take(),
        [Call::Detach(100), Call::Unroute(100), Call::Free(100)]
    );
    assert_eq!((v.gsi(), v.is_attached()), (None, false));
    assert!(v.release(&log).is_empty());
    assert_eq!(log.take(), [], "released twice");

    // Detached vectors release too, and a released vector starts over.
    v.attach(&log, msg(0x40)).unwrap();
    v.detach(&log).unwrap();
    log.take();
    assert!(v.release(&log).is_empty());
    assert_eq!(log.take(), [Call::Unroute(101), Call::Free(101)]);
    v.attach(&log, msg(0x40)).unwrap();
    assert_eq!(
        log.take(),
        [
            Call::Allocate(102),
            Call::Route(102, 0x40),
            Call::Attach(102, fd)
        ]
    );
}

#[test]
fn a_shared_event_is_the_same_eventfd() {
    let event = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let v = MsiVector::with_event(Arc::clone(&event));
    assert_eq!(v.event().as_raw_fd(), event.as_raw_fd());
    event.write(1).unwrap();
    assert!(v.is_pending());
}
