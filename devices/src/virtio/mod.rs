//! Virtio 1.x devices: the device-type-independent contract ([`VirtioDevice`]), the modern
//! virtio-pci transport that exposes such a device as a PCI function ([`pci::VirtioPciDevice`]),
//! the block device ([`block::VirtioBlock`]), the console ([`console::VirtioConsole`], `hvc0`)
//! and the entropy device ([`rng::VirtioRng`]).
//!
//! The split follows the virtio specification: the transport owns everything the driver
//! negotiates through the common configuration (features, status, queue addresses, MSI-X vector
//! assignment) and hands the device its rings only once the driver sets DRIVER_OK. From then on
//! the device's own worker thread consumes the rings (through `virtio-queue`, never hand-written
//! ring code), woken by one eventfd per queue that the VMM registers as a KVM ioeventfd, and
//! signals completions through [`VirtioInterrupt`], which on the PCI transport is a lock-free
//! write to an MSI-X vector's irqfd. vCPUs therefore never wait for device I/O.
//!
//! Nothing here knows about KVM: interrupts go through `pci::routing::InterruptRouter`, the VMM
//! registers the notification eventfds.

pub mod block;
pub mod console;
mod event_worker;
pub mod net;
pub mod pci;
pub mod rng;
mod worker_thread;

#[cfg(test)]
mod test_driver;

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it: the VMM's mmap-backed RAM, without dirty tracking.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Feature bits common to every device type (the transport features).
pub mod features {
    use virtio_bindings::virtio_config::{VIRTIO_F_VERSION_1, VIRTIO_TRANSPORT_F_START};
    use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

    /// VIRTIO_F_VERSION_1: the device is a modern (1.x) device. Required by this transport.
    pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    /// VIRTIO_RING_F_INDIRECT_DESC: the driver may use indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
    /// VIRTIO_RING_F_EVENT_IDX: used/avail event suppression (not offered by viaduct's devices).
    pub const RING_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    /// First transport feature bit; bits below are device-type specific.
    pub const TRANSPORT_START: u32 = VIRTIO_TRANSPORT_F_START;
}

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    use virtio_bindings::virtio_config as c;

    /// The guest OS noticed the device.
    pub const ACKNOWLEDGE: u8 = c::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
    /// The guest OS knows how to drive it.
    pub const DRIVER: u8 = c::VIRTIO_CONFIG_S_DRIVER as u8;
    /// The driver is set up and ready: the device may use the queues.
    pub const DRIVER_OK: u8 = c::VIRTIO_CONFIG_S_DRIVER_OK as u8;
    /// Feature negotiation is complete (cleared by the device if it refuses the features).
    pub const FEATURES_OK: u8 = c::VIRTIO_CONFIG_S_FEATURES_OK as u8;
    /// The device hit an error it cannot recover from without a reset.
    pub const NEEDS_RESET: u8 = c::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
    /// The driver gave up on the device.
    pub const FAILED: u8 = c::VIRTIO_CONFIG_S_FAILED as u8;
}

/// A queue the driver enabled, handed to the device at activation.
pub struct ActiveQueue {
    /// Its index among the device's queues.
    pub index: u16,
    /// The validated ring addresses and size, ready to consume with `virtio_queue::QueueT`.
    pub queue: Queue,
    /// Signalled when the driver notifies the queue (a KVM ioeventfd, or the transport).
    pub notify: EventFd,
}

/// How a device tells the driver about completed work; implemented by the transport.
///
/// Both calls are cheap and never block on a lock held by a vCPU: the device's worker calls
/// them after every batch of used buffers.
pub trait VirtioInterrupt: Send + Sync {
    /// Used buffers were added to queue `queue`.
    fn signal_queue(&self, queue: u16);
    /// The device configuration changed (or the device needs a reset).
    fn signal_config(&self);
}

/// Why a device could not start on the queues the driver set up.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver's queue setup is unusable (size, alignment, outside guest memory).
    #[error("{device}: queue {queue} is unusable: {reason}")]
    BadQueue {
        /// The device (disk id or path).
        device: String,
        /// The queue index.
        queue: u16,
        /// What is wrong.
        reason: String,
    },
    /// The driver enabled none of the queues the device needs.
    #[error("{device}: the driver enabled no queue (queue {queue} is required)")]
    MissingQueue {
        /// The device (disk id or path).
        device: String,
        /// The queue the device cannot work without.
        queue: u16,
    },
    /// The worker thread or one of its resources could not be created.
    #[error("{device}: cannot start the worker thread: {source}")]
    Worker {
        /// The device (disk id or path).
        device: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The device-type-specific half of a virtio device: identity, features, configuration space,
/// queues, and the worker that serves them.
///
/// The transport calls these from a vCPU thread (under the VMM's device lock); `activate` must
/// therefore only start the worker, never do I/O itself.
pub trait VirtioDevice: Send {
    /// Virtio device id (`virtio_bindings::virtio_ids`, e.g. 2 for block).
    fn device_type(&self) -> u32;
    /// Human name for logs and errors (e.g. the disk id or path).
    fn name(&self) -> &str;
    /// Every feature bit the device offers, VERSION_1 included.
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Guest read of the device-specific configuration at `offset`. Bytes past the end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Guest write of the device-specific configuration at `offset`. Default: ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: ignored {}-byte write to read-only device config at {offset:#x}",
            self.name(),
            data.len()
        );
    }
    /// The driver set DRIVER_OK: start serving `queues` (the enabled ones, in index order) with
    /// the `acked_features` the driver accepted, signalling completions through `interrupt`.
    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop the worker (waiting for it) and forget the queues.
    /// Idempotent; also called before activation and on drop of the transport.
    fn reset(&mut self);
}
