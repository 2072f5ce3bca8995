//! One MSI or MSI-X vector delivered through KVM: the eventfd the device (VFIO or a virtio
//! worker) signals, the GSI it is injected through and the route that carries the guest's MSI
//! message. Shared by the virtio-pci transport and VFIO passthrough.
//!
//! The invariant ("deliver on unmask"):
//! - the irqfd is attached only while the vector is deliverable (enabled, function and vector
//!   unmasked); the owner decides that and calls [`MsiVector::attach`] or [`MsiVector::detach`]
//!   (or [`MsiVector::sync`] with the wanted message);
//! - while detached, the eventfd keeps counting what the device raised: that count *is* the
//!   pending bit the guest reads (PBA, MSI Pending Bits), checked with `poll` by
//!   [`MsiVector::is_pending`] and never consumed there;
//! - on attach the count is consumed, the irqfd attached, and the eventfd signalled once more,
//!   so KVM's irqfd wakeup delivers the pending interrupt exactly once. KVM also injects an
//!   already-signalled eventfd at assign time, but leaves its count set, which would make the
//!   vector look pending again after a later mask; re-signalling after consuming is
//!   deterministic and independent of that detail;
//! - detaching keeps the GSI and route for a cheap re-attach; only [`MsiVector::release`]
//!   removes the route and frees the GSI.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::msi::MsiMessage;
use crate::routing::{Gsi, InterruptRouter, RoutingError};

/// One MSI/MSI-X vector: its eventfd and its KVM side (lazily allocated GSI, the last route
/// programmed for it, whether its irqfd is attached). See the module documentation for the
/// deliver-on-unmask invariant it keeps.
#[derive(Debug)]
pub struct MsiVector {
    event: Arc<EventFd>,
    gsi: Option<Gsi>,
    route: Option<MsiMessage>,
    attached: bool,
}

impl MsiVector {
    /// A vector with a new non-blocking eventfd, no GSI and no route.
    pub fn new() -> io::Result<Self> {
        Ok(Self::with_event(Arc::new(EventFd::new(EFD_NONBLOCK)?)))
    }

    /// A vector signalled through `event`, which others may hold too (a device worker that
    /// signals it without taking the owner's lock). `event` should be non-blocking.
    pub fn with_event(event: Arc<EventFd>) -> Self {
        Self {
            event,
            gsi: None,
            route: None,
            attached: false,
        }
    }

    /// The eventfd the device signals.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// The GSI, once [`MsiVector::attach`] allocated one (until [`MsiVector::release`]).
    pub fn gsi(&self) -> Option<Gsi> {
        self.gsi
    }

    /// Whether the irqfd is attached, i.e. a signal on the eventfd is injected right away.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Makes the vector deliver `message`: allocates the GSI if it has none, (re)programs the
    /// route if `message` differs from the last one, and attaches the irqfd if it is detached.
    /// What fired while detached is consumed and signalled once more after the attach, so it
    /// is delivered exactly once. On failure the vector stays (or becomes) undelivered, its
    /// pending count intact.
    pub fn attach(
        &mut self,
        router: &dyn InterruptRouter,
        message: MsiMessage,
    ) -> Result<(), RoutingError> {
        let gsi = match self.gsi {
            Some(gsi) => gsi,
            None => *self.gsi.insert(router.allocate_gsi()?),
        };
        if self.route != Some(message) {
            self.route = None;
            router.set_msi_route(gsi, message.address, message.data)?;
            self.route = Some(message);
        }
        if !self.attached {
            // Deliver on unmask: consume what fired while detached, attach, then signal once so
            // the irqfd injects it.
            let pending = self.event.read().is_ok();
            if let Err(e) = router.attach_irqfd(&self.event, gsi) {
                if pending {
                    let _ = self.event.write(1);
                }
                return Err(e);
            }
            self.attached = true;
            if pending {
                let _ = self.event.write(1);
            }
        }
        Ok(())
    }

    /// Stops delivery: detaches the irqfd if attached, keeping the GSI and route for a cheap
    /// re-attach. From now on signals accumulate as the pending count.
    pub fn detach(&mut self, router: &dyn InterruptRouter) -> Result<(), RoutingError> {
        match (self.attached, self.gsi) {
            (true, Some(gsi)) => {
                self.attached = false;
                router.detach_irqfd(&self.event, gsi)
            }
            _ => Ok(()),
        }
    }

    /// Brings the vector to the wanted state: [`MsiVector::attach`] with `want` when it is
    /// deliverable, [`MsiVector::detach`] when it is not (`None`).
    pub fn sync(
        &mut self,
        router: &dyn InterruptRouter,
        want: Option<MsiMessage>,
    ) -> Result<(), RoutingError> {
        match want {
            Some(message) => self.attach(router, message),
            None => self.detach(router),
        }
    }

    /// Whether the device raised the vector while it was detached, so it waits for its unmask.
    /// Does not consume the count.
    pub fn is_pending(&self) -> bool {
        !self.attached && is_signalled(&self.event)
    }

    /// Clears the pending count (a stale signal that must not be delivered on the next enable).
    pub fn drain(&self) {
        let _ = self.event.read();
    }

    /// Detaches the irqfd, removes the route and frees the GSI; a vector without a GSI has
    /// nothing to release. Every step is attempted: the failures are returned, in order, and
    /// the GSI is freed regardless. The eventfd and its count are kept.
    pub fn release(&mut self, router: &dyn InterruptRouter) -> Vec<RoutingError> {
        let Some(gsi) = self.gsi.take() else {
            return Vec::new();
        };
        let mut results = Vec::new();
        if self.attached {
            results.push(router.detach_irqfd(&self.event, gsi));
            self.attached = false;
        }
        if self.route.take().is_some() {
            results.push(router.remove_route(gsi));
        }
        router.free_gsi(gsi);
        results.into_iter().filter_map(Result::err).collect()
    }
}

/// Whether `event` has a non-zero count, without consuming it.
fn is_signalled(event: &EventFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: event.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call, the count (1) matches, and
    // a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

#[cfg(test)]
#[path = "msi_vector_tests.rs"]
mod tests;
