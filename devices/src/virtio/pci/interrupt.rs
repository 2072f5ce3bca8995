//! Interrupts of a virtio-pci function: the ISR status byte and MSI-X vectors delivered through
//! KVM irqfds.
//!
//! The state is split by who touches it:
//! - [`InterruptShared`] (behind an `Arc`, shared with the device's worker) holds one eventfd per
//!   MSI-X vector, the vector assigned to each queue and to config changes, and the ISR bits, all
//!   atomics. Signalling a queue is an atomic OR on the ISR and one eventfd write: no lock, so a
//!   worker never waits for a vCPU that holds the device lock.
//! - [`MsixVectors`] (owned by the transport, used by vCPUs) holds the guest-visible MSI-X model
//!   (`pci::msix::Msix`) and each vector's GSI, route and irqfd state.
//!
//! Masking follows the passthrough layer (`vfio-dev`'s `interrupts.rs`): an irqfd is attached only
//! while its vector is deliverable (MSI-X enabled, function and vector unmasked). While detached,
//! the eventfd keeps counting what the device raised; that count *is* the pending bit the guest
//! reads in the PBA. On unmask the count is consumed, the irqfd attached and the eventfd
//! signalled once more, so KVM delivers the pending interrupt exactly once.
//!
//! INTx is not implemented (interrupt pin 0): drivers without MSI-X can still poll the ISR.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use pci::msi::MsiMessage;
use pci::msix::{Msix, MsixChange};
use pci::routing::{Gsi, InterruptRouter, RoutingError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::layout::NO_VECTOR;
use crate::virtio::VirtioInterrupt;

/// ISR bit 0: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit 1: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// The interrupt state the device's worker signals through, lock-free.
pub struct InterruptShared {
    name: String,
    events: Vec<EventFd>,
    queue_vectors: Vec<AtomicU16>,
    config_vector: AtomicU16,
    msix_enabled: AtomicBool,
    isr: AtomicU8,
}

impl InterruptShared {
    /// One eventfd per MSI-X vector (`vectors`), `queues` queues with no vector assigned.
    pub fn new(name: &str, vectors: u16, queues: usize) -> std::io::Result<Self> {
        Ok(Self {
            name: name.to_string(),
            events: (0..vectors)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<Result<_, _>>()?,
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_vector: AtomicU16::new(NO_VECTOR),
            msix_enabled: AtomicBool::new(false),
            isr: AtomicU8::new(0),
        })
    }

    /// The eventfd of MSI-X vector `vector`.
    pub fn event(&self, vector: u16) -> Option<&EventFd> {
        self.events.get(usize::from(vector))
    }

    /// Mirrors the driver's vector assignment (common config `msix_config` and
    /// `queue_msix_vector`).
    pub fn set_vectors(&self, config: u16, queues: impl Iterator<Item = u16>) {
        self.config_vector.store(config, Ordering::Release);
        for (slot, v) in self.queue_vectors.iter().zip(queues) {
            slot.store(v, Ordering::Release);
        }
    }

    /// Reads and clears the ISR status (the ISR region's read-to-clear semantics).
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// Clears the ISR and every pending count (device reset). Attached vectors have nothing to
    /// clear: KVM consumes their counts as it injects.
    pub fn clear(&self) {
        self.isr.store(0, Ordering::Release);
        for e in &self.events {
            let _ = e.read();
        }
    }

    fn set_msix_enabled(&self, enabled: bool) {
        self.msix_enabled.store(enabled, Ordering::Release);
    }

    fn raise(&self, isr_bit: u8, vector: u16) {
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        if !self.msix_enabled.load(Ordering::Acquire) || vector == NO_VECTOR {
            return;
        }
        match self.events.get(usize::from(vector)) {
            Some(event) => {
                if let Err(e) = event.write(1) {
                    log::warn!("{}: cannot signal MSI-X vector {vector}: {e}", self.name);
                }
            }
            None => log::debug!("{}: no MSI-X vector {vector}", self.name),
        }
    }
}

impl VirtioInterrupt for InterruptShared {
    fn signal_queue(&self, queue: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire));
        self.raise(ISR_QUEUE, vector);
    }

    fn signal_config(&self) {
        let vector = self.config_vector.load(Ordering::Acquire);
        self.raise(ISR_CONFIG, vector);
    }
}

/// The KVM side of one MSI-X vector.
#[derive(Default)]
struct Route {
    gsi: Option<Gsi>,
    message: Option<MsiMessage>,
    attached: bool,
}

/// The guest-visible MSI-X model and the routes and irqfds that implement it.
pub struct MsixVectors {
    name: String,
    /// The capability, table and masks as the guest programs them.
    pub model: Msix,
    routes: Vec<Route>,
    router: Arc<dyn InterruptRouter>,
    shared: Arc<InterruptShared>,
}

impl MsixVectors {
    /// Vectors for `model`, signalled through `shared`'s eventfds, routed with `router`.
    pub fn new(
        name: &str,
        model: Msix,
        router: Arc<dyn InterruptRouter>,
        shared: Arc<InterruptShared>,
    ) -> Self {
        let routes = (0..model.layout().table_size)
            .map(|_| Route::default())
            .collect();
        Self {
            name: name.to_string(),
            model,
            routes,
            router,
            shared,
        }
    }

    /// Guest write to the MSI-X capability at `rel` from its start.
    pub fn write_capability(&mut self, rel: usize, data: &[u8]) {
        let changes = self.model.write_capability(rel, data);
        self.apply(&changes);
    }

    /// Guest write to the MSI-X table.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let changes = self.model.write_table(offset, data);
        self.apply(&changes);
    }

    /// Guest read of the PBA: a vector's bit is set while it fired and could not be delivered.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) || !self.model.enabled() {
            return;
        }
        let first = offset * 8;
        for (bit, vector) in (first..first + len * 8).enumerate() {
            if u16::try_from(vector).is_ok_and(|v| self.is_pending(v)) {
                data[bit / 8] |= 1 << (bit % 8);
            }
        }
    }

    /// Whether `vector` fired while it was not deliverable and waits for its unmask.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        match (self.routes.get(v), self.shared.event(vector)) {
            (Some(route), Some(event)) => !route.attached && is_signalled(event),
            _ => false,
        }
    }

    /// Whether `vector`'s irqfd is attached (it is deliverable and routed).
    #[cfg(test)]
    pub fn is_attached(&self, vector: u16) -> bool {
        self.routes
            .get(usize::from(vector))
            .is_some_and(|r| r.attached)
    }

    fn apply(&mut self, changes: &[MsixChange]) {
        for change in changes {
            match *change {
                MsixChange::Enabled => {
                    self.shared.set_msix_enabled(true);
                    self.sync_all();
                }
                MsixChange::Disabled => {
                    self.shared.set_msix_enabled(false);
                    self.sync_all();
                    // What fired before the disable must not be delivered on the next enable.
                    for v in 0..self.routes.len() {
                        if let Some(e) = self.shared.event(v as u16) {
                            let _ = e.read();
                        }
                    }
                }
                MsixChange::FunctionMasked | MsixChange::FunctionUnmasked => self.sync_all(),
                MsixChange::VectorUpdated(v)
                | MsixChange::VectorMasked(v)
                | MsixChange::VectorUnmasked(v) => self.sync(v),
                // The model's own pending bits are never set (the eventfds hold them); the
                // re-attach in `sync` delivers instead.
                MsixChange::Deliver { .. } => {}
            }
        }
    }

    fn sync_all(&mut self) {
        for v in 0..self.routes.len() {
            self.sync(v as u16);
        }
    }

    /// Brings vector `v` to its wanted state: attached with the programmed route while
    /// deliverable, detached (GSI and route kept for a cheap re-attach) otherwise.
    fn sync(&mut self, v: u16) {
        let want = self
            .model
            .is_deliverable(v)
            .then(|| self.model.message(v))
            .flatten();
        let (Some(route), Some(event)) =
            (self.routes.get_mut(usize::from(v)), self.shared.event(v))
        else {
            return;
        };
        let result = match want {
            Some(message) => attach(&*self.router, route, event, message),
            None => match (route.attached, route.gsi) {
                (true, Some(gsi)) => {
                    route.attached = false;
                    self.router.detach_irqfd(event, gsi)
                }
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            log::warn!("{}: MSI-X vector {v} is not delivered: {e}", self.name);
        }
    }
}

impl Drop for MsixVectors {
    /// Detaches every irqfd, removes the routes and frees the GSIs.
    fn drop(&mut self) {
        for (v, route) in self.routes.iter_mut().enumerate() {
            let Some(gsi) = route.gsi.take() else {
                continue;
            };
            let Some(event) = self.shared.event(v as u16) else {
                continue;
            };
            if route.attached {
                if let Err(e) = self.router.detach_irqfd(event, gsi) {
                    log::warn!("{}: MSI-X vector {v} teardown: {e}", self.name);
                }
            }
            if route.message.take().is_some() {
                if let Err(e) = self.router.remove_route(gsi) {
                    log::warn!("{}: MSI-X vector {v} teardown: {e}", self.name);
                }
            }
            self.router.free_gsi(gsi);
        }
    }
}

fn attach(
    router: &dyn InterruptRouter,
    route: &mut Route,
    event: &EventFd,
    message: MsiMessage,
) -> Result<(), RoutingError> {
    let gsi = match route.gsi {
        Some(gsi) => gsi,
        None => *route.gsi.insert(router.allocate_gsi()?),
    };
    if route.message != Some(message) {
        route.message = None;
        router.set_msi_route(gsi, message.address, message.data)?;
        route.message = Some(message);
    }
    if !route.attached {
        // Deliver on unmask: consume what fired while detached, attach, then signal once so the
        // irqfd injects it.
        let pending = event.read().is_ok();
        if let Err(e) = router.attach_irqfd(event, gsi) {
            if pending {
                let _ = event.write(1);
            }
            return Err(e);
        }
        route.attached = true;
        if pending {
            let _ = event.write(1);
        }
    }
    Ok(())
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
