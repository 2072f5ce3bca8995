//! Interrupts of a virtio-pci function: the ISR status byte and MSI-X vectors delivered through
//! KVM irqfds.
//!
//! The state is split by who touches it:
//! - [`InterruptShared`] (behind an `Arc`, shared with the device's worker) holds one eventfd per
//!   MSI-X vector, the vector assigned to each queue and to config changes, and the ISR bits, all
//!   atomics. Signalling a queue is an atomic OR on the ISR and one eventfd write: no lock, so a
//!   worker never waits for a vCPU that holds the device lock.
//! - [`MsixVectors`] (owned by the transport, used by vCPUs) holds the guest-visible MSI-X model
//!   (`pci::msix::Msix`) and, per vector, a [`MsiVector`] sharing that vector's eventfd: its GSI,
//!   route and irqfd state.
//!
//! Masking follows the passthrough layer (`vfio-dev`'s `interrupts.rs`), through the same
//! [`MsiVector`]: an irqfd is attached only while its vector is deliverable (MSI-X enabled,
//! function and vector unmasked). While detached, the eventfd keeps counting what the device
//! raised; that count *is* the pending bit the guest reads in the PBA. On unmask the count is
//! consumed, the irqfd attached and the eventfd signalled once more, so KVM delivers the pending
//! interrupt exactly once.
//!
//! INTx is not implemented (interrupt pin 0): drivers without MSI-X can still poll the ISR.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use pci::msi_vector::MsiVector;
use pci::msix::{Msix, MsixChange};
use pci::routing::InterruptRouter;
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
    events: Vec<Arc<EventFd>>,
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
                .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
                .collect::<Result<_, _>>()?,
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_vector: AtomicU16::new(NO_VECTOR),
            msix_enabled: AtomicBool::new(false),
            isr: AtomicU8::new(0),
        })
    }

    /// The eventfd of MSI-X vector `vector`.
    pub fn event(&self, vector: u16) -> Option<&EventFd> {
        self.events.get(usize::from(vector)).map(|e| &**e)
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
        match self.event(vector) {
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

/// The guest-visible MSI-X model and the routes and irqfds that implement it.
pub struct MsixVectors {
    name: String,
    /// The capability, table and masks as the guest programs them.
    pub model: Msix,
    /// One per table entry that has an eventfd in `shared`.
    vectors: Vec<MsiVector>,
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
        let vectors = shared
            .events
            .iter()
            .take(usize::from(model.layout().table_size))
            .map(|e| MsiVector::with_event(Arc::clone(e)))
            .collect();
        Self {
            name: name.to_string(),
            model,
            vectors,
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
        self.vectors
            .get(usize::from(vector))
            .is_some_and(MsiVector::is_pending)
    }

    /// Whether `vector`'s irqfd is attached (it is deliverable and routed).
    #[cfg(test)]
    pub fn is_attached(&self, vector: u16) -> bool {
        self.vectors
            .get(usize::from(vector))
            .is_some_and(MsiVector::is_attached)
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
                    for vector in &self.vectors {
                        vector.drain();
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
        for v in 0..self.vectors.len() {
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
        let Some(vector) = self.vectors.get_mut(usize::from(v)) else {
            return;
        };
        if let Err(e) = vector.sync(&*self.router, want) {
            log::warn!("{}: MSI-X vector {v} is not delivered: {e}", self.name);
        }
    }
}

impl MsixVectors {
    /// Detaches every irqfd, removes the routes and frees the GSIs (the device is leaving the
    /// bus). Idempotent.
    pub fn release_all(&mut self) {
        for (v, vector) in self.vectors.iter_mut().enumerate() {
            for e in vector.release(&*self.router) {
                log::warn!("{}: MSI-X vector {v} teardown: {e}", self.name);
            }
        }
    }
}

impl Drop for MsixVectors {
    /// Detaches every irqfd, removes the routes and frees the GSIs.
    fn drop(&mut self) {
        self.release_all();
    }
}
