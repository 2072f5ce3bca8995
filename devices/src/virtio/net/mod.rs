//! virtio-net on a TAP device.
//!
//! Queues: `N` receive/transmit pairs (`rx0, tx0, rx1, tx1, …`) and a control queue after them,
//! as the virtio spec numbers them. Each pair has a worker thread (module `worker`) and a tap
//! fd of its own (`IFF_MULTI_QUEUE` when `N > 1`), so pairs never contend; the control queue is
//! served by pair 0's worker. Frames cross between guest memory and the tap with
//! `readv`/`writev` on the descriptors' guest memory, header included: the tap speaks the same
//! 12-byte `virtio_net_hdr_v1`.
//!
//! Offered features: VERSION_1, MAC, STATUS (link up), CTRL_VQ, MQ, indirect descriptors,
//! EVENT_IDX (kicks and interrupts only when the other side waits for them), and
//! the offloads: checksum (CSUM, GUEST_CSUM) and TSO4/TSO6/ECN in both directions. What the
//! guest accepts for its receive side becomes the tap's `TUNSETOFFLOAD` at activation. Not
//! offered: MRG_RXBUF (each receive chain holds a whole frame, as in cloud-hypervisor), UFO,
//! CTRL_RX, MTU. Control commands: MQ_VQ_PAIRS_SET (range-checked, every pair stays
//! served); anything else is answered VIRTIO_NET_ERR.

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod tap;
mod worker;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net as vn;
use virtio_queue::QueueT;

pub use self::tap::{configure_host, interface_exists, valid_name, Tap, TapError, VNET_HDR_LEN};
use self::worker::Worker;
use crate::virtio::{
    features, ActivateError, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt,
};

/// Default entries per queue (cloud-hypervisor's default).
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest queue size (the split ring's limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Most queue pairs: the transport has at most 255 queues, one of them the control queue.
pub const MAX_QUEUE_PAIRS: u16 = 127;
/// Entries of the control queue.
pub const CTRL_QUEUE_SIZE: u16 = 64;

/// Offsets in `struct virtio_net_config`.
pub mod config_offset {
    /// 6 bytes: the MAC address.
    pub const MAC: usize = 0;
    /// le16: link status (`VIRTIO_NET_S_LINK_UP`).
    pub const STATUS: usize = 6;
    /// le16: queue pairs the device has (meaningful with MQ).
    pub const MAX_VIRTQUEUE_PAIRS: usize = 8;
    /// le16: MTU (meaningful with VIRTIO_NET_F_MTU, not offered).
    pub const MTU: usize = 10;
    /// Bytes of the structure exposed.
    pub const LEN: usize = 12;
}

/// An Ethernet address of a guest NIC.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six hex octets separated by colons.
    #[error("{0:?} is not a MAC address (six two-digit hex octets separated by ':', e.g. 52:54:00:12:34:56)")]
    Syntax(String),
    /// A group (multicast/broadcast) address.
    #[error(
        "{0} is a multicast address (the low bit of the first octet is set); a NIC needs a \
         unicast one, e.g. 52:54:00:12:34:56"
    )]
    Multicast(String),
    /// All zeros.
    #[error("00:00:00:00:00:00 is not a usable MAC address")]
    Zero,
}

impl MacAddr {
    /// A random locally administered unicast address, as cloud-hypervisor makes when `mac=` is
    /// not given.
    pub fn random() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // No entropy source: a fixed address still works for one NIC.
            b = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        }
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        let syntax = || MacError::Syntax(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(syntax)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        let mac = MacAddr(out);
        if out[0] & 1 != 0 {
            return Err(MacError::Multicast(mac.to_string()));
        }
        if out == [0; 6] {
            return Err(MacError::Zero);
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// Offloads the device offers (`offload_csum`, `offload_tso`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offloads {
    /// Checksum offload both ways (CSUM, GUEST_CSUM).
    pub csum: bool,
    /// TCP segmentation offload both ways (HOST/GUEST TSO4, TSO6, ECN); needs `csum`.
    pub tso: bool,
}

impl Default for Offloads {
    fn default() -> Self {
        Self {
            csum: true,
            tso: true,
        }
    }
}

/// What the feature bits `features` offer, given the offloads.
pub fn offered_features(offloads: Offloads, queue_pairs: u16) -> u64 {
    let bit = |b: u32| 1u64 << b;
    let mut f = features::VERSION_1
        | features::RING_INDIRECT_DESC
        | features::RING_EVENT_IDX
        | bit(vn::VIRTIO_NET_F_MAC)
        | bit(vn::VIRTIO_NET_F_STATUS)
        | bit(vn::VIRTIO_NET_F_CTRL_VQ);
    if queue_pairs > 1 {
        f |= bit(vn::VIRTIO_NET_F_MQ);
    }
    if offloads.csum {
        f |= bit(vn::VIRTIO_NET_F_CSUM) | bit(vn::VIRTIO_NET_F_GUEST_CSUM);
        if offloads.tso {
            for b in [
                vn::VIRTIO_NET_F_HOST_TSO4,
                vn::VIRTIO_NET_F_HOST_TSO6,
                vn::VIRTIO_NET_F_HOST_ECN,
                vn::VIRTIO_NET_F_GUEST_TSO4,
                vn::VIRTIO_NET_F_GUEST_TSO6,
                vn::VIRTIO_NET_F_GUEST_ECN,
            ] {
                f |= bit(b);
            }
        }
    }
    f
}

/// The `TUNSETOFFLOAD` flags for the receive offloads the guest accepted: the kernel may then
/// hand us frames with partial checksums and TSO segments, which the guest finishes itself.
pub fn tap_offload_flags(acked: u64) -> u32 {
    let has = |b: u32| acked & (1u64 << b) != 0;
    let mut flags = 0;
    if has(vn::VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(vn::VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(vn::VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
        if has(vn::VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
            flags |= libc::TUN_F_TSO_ECN;
        }
    }
    flags
}

/// What the device is built from: its taps (one per queue pair) and guest-visible settings.
pub struct NetDeviceConfig {
    /// Names the NIC in messages (`id=`, else the tap's name).
    pub name: String,
    /// One open tap fd per queue pair (at least one).
    pub taps: Vec<Arc<Tap>>,
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// Entries of each RX/TX queue (a power of two).
    pub queue_size: u16,
    /// Offloads offered.
    pub offloads: Offloads,
}

/// A virtio-net device (type 1): the transport-independent half of a NIC on a tap.
pub struct VirtioNet {
    name: String,
    taps: Vec<Arc<Tap>>,
    features: u64,
    queue_sizes: Vec<u16>,
    config: [u8; config_offset::LEN],
    workers: Vec<Worker>,
}

impl VirtioNet {
    /// The device for `cfg` (one queue pair per tap).
    pub fn new(cfg: NetDeviceConfig) -> Self {
        let pairs = u16::try_from(cfg.taps.len())
            .unwrap_or(MAX_QUEUE_PAIRS)
            .clamp(1, MAX_QUEUE_PAIRS);
        let mut config = [0u8; config_offset::LEN];
        config[config_offset::MAC..config_offset::MAC + 6].copy_from_slice(&cfg.mac.0);
        let status = vn::VIRTIO_NET_S_LINK_UP as u16;
        config[config_offset::STATUS..config_offset::STATUS + 2]
            .copy_from_slice(&status.to_le_bytes());
        config[config_offset::MAX_VIRTQUEUE_PAIRS..config_offset::MAX_VIRTQUEUE_PAIRS + 2]
            .copy_from_slice(&pairs.to_le_bytes());
        let mut queue_sizes = vec![cfg.queue_size; usize::from(pairs) * 2];
        queue_sizes.push(CTRL_QUEUE_SIZE);
        let mut taps = cfg.taps;
        taps.truncate(usize::from(pairs));
        Self {
            name: cfg.name,
            taps,
            features: offered_features(cfg.offloads, pairs),
            queue_sizes,
            config,
            workers: Vec::new(),
        }
    }

    /// Queue pairs of the device.
    pub fn queue_pairs(&self) -> u16 {
        self.taps.len() as u16
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| self.config.get(at)).copied().unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.reset();
        let pairs = self.taps.len();
        let mut slots: Vec<Option<ActiveQueue>> = (0..=pairs * 2).map(|_| None).collect();
        let event_idx = acked_features & features::RING_EVENT_IDX != 0;
        for mut q in queues {
            q.queue.set_event_idx(event_idx);
            if let Some(slot) = slots.get_mut(usize::from(q.index)) {
                *slot = Some(q);
            }
        }
        let mut ctrl = slots.pop().flatten();
        if slots[0].is_none() || slots[1].is_none() {
            let queue = if slots[0].is_none() { 0 } else { 1 };
            return Err(ActivateError::MissingQueue {
                device: self.name.clone(),
                queue,
            });
        }
        let offload = tap_offload_flags(acked_features);
        for tap in &self.taps {
            if let Err(e) = tap.set_offload(offload) {
                crate::warn_limited!(
                    "{}: tap {}: TUNSETOFFLOAD({offload:#x}) failed: {e}; the guest receives \
                     frames with full checksums",
                    self.name,
                    tap.name()
                );
            }
        }
        let mut it = slots.into_iter();
        for (pair, tap) in self.taps.iter().enumerate() {
            let (rx, tx) = (it.next().flatten(), it.next().flatten());
            let (Some(rx), Some(tx)) = (rx, tx) else {
                log::debug!(
                    "{}: queue pair {pair} not enabled by the driver; not served",
                    self.name
                );
                continue;
            };
            let worker = Worker::spawn(worker::PairQueues {
                name: format!("{} pair {pair}", self.name),
                tap: tap.clone(),
                mem: mem.clone(),
                rx,
                tx,
                ctrl: if pair == 0 { ctrl.take() } else { None },
                max_pairs: pairs as u16,
                interrupt: interrupt.clone(),
            })
            .map_err(|source| ActivateError::Worker {
                device: self.name.clone(),
                source,
            })?;
            self.workers.push(worker);
        }
        Ok(())
    }

    fn reset(&mut self) {
        for worker in self.workers.drain(..) {
            worker.stop();
        }
    }
}

#[cfg(test)]
mod tests;
