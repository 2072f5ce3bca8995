//! One queue pair's worker thread: moves frames between the guest's RX/TX rings and the pair's
//! tap fd, and (pair 0 only) answers the control queue.
//!
//! It waits (epoll) on the RX and TX doorbells, the tap and a stop eventfd. The tap's
//! readability is watched only while the guest has posted receive buffers: when the RX ring runs
//! dry the worker stops listening until the next RX kick, so a busy host never spins it. A
//! transmit the tap refuses with `EAGAIN` is put back and retried when the tap becomes writable.
//! Guest mistakes (a chain with the wrong direction, buffers outside memory, a header too
//! short) complete the chain with length 0 and a rate-limited warning; nothing the guest puts
//! in a ring can stop the worker.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_net as vn;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::tap::{Tap, VNET_HDR_LEN};
use crate::virtio::worker_thread::{stop_event, WorkerThread};
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt};

const STOP: u64 = 0;
const RX_KICK: u64 = 1;
const TX_KICK: u64 = 2;
const TAP: u64 = 3;
const CTRL_KICK: u64 = 4;

/// Frames received per wakeup before the worker looks at its other events (the tap stays
/// readable, so epoll brings it back).
const RX_BUDGET: usize = 256;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What one worker serves.
pub(crate) struct PairQueues {
    /// For the thread name and messages ("net0 pair 1").
    pub name: String,
    /// The pair's tap fd.
    pub tap: Arc<Tap>,
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The receive queue (even index).
    pub rx: ActiveQueue,
    /// The transmit queue (odd index).
    pub tx: ActiveQueue,
    /// The control queue, for pair 0.
    pub ctrl: Option<ActiveQueue>,
    /// The device's queue pairs (the range of MQ_VQ_PAIRS_SET).
    pub max_pairs: u16,
    /// Completion interrupts.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A running worker; stopping (or dropping) it waits for the thread to exit.
pub(crate) struct Worker(WorkerThread);

pub(crate) struct Context {
    q: PairQueues,
    epoll: Epoll,
    /// Listening for tap readability (the guest has receive buffers).
    rx_armed: bool,
    /// A transmit waits for the tap to become writable.
    tx_blocked: bool,
}

impl Worker {
    /// Starts the thread.
    pub(crate) fn spawn(q: PairQueues) -> io::Result<Self> {
        let stop = stop_event()?;
        let epoll = Epoll::new()?;
        let add = |fd, token, events| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(stop.as_raw_fd(), STOP, EventSet::IN)?;
        add(q.rx.notify.as_raw_fd(), RX_KICK, EventSet::IN)?;
        add(q.tx.notify.as_raw_fd(), TX_KICK, EventSet::IN)?;
        add(q.tap.as_raw_fd(), TAP, EventSet::IN)?;
        if let Some(ctrl) = &q.ctrl {
            add(ctrl.notify.as_raw_fd(), CTRL_KICK, EventSet::IN)?;
        }
        let name = format!("virtio-net {}", q.name);
        let ctx = Context {
            q,
            epoll,
            rx_armed: true,
            tx_blocked: false,
        };
        WorkerThread::spawn("virtio-net", name, stop, move || ctx.run()).map(Self)
    }

    /// Asks the thread to exit and waits for it.
    pub(crate) fn stop(self) {
        self.0.stop();
    }
}

/// The guest-memory buffers of one chain, in one direction, as iovecs.
struct Iovecs<'a> {
    slices: Vec<VolatileSlice<'a, ()>>,
    len: usize,
}

impl<'a> Iovecs<'a> {
    /// The chain's descriptors, all of which must be device-writable (`write`) or all
    /// device-readable; each inside guest memory.
    fn of(mem: &'a GuestMemory, descs: &[Descriptor], write: bool) -> Result<Self, String> {
        let mut slices = Vec::with_capacity(descs.len());
        let mut len = 0usize;
        for d in descs {
            if d.is_write_only() != write {
                return Err(format!(
                    "a device-{} descriptor in a {} chain",
                    if write { "readable" } else { "writable" },
                    if write { "receive" } else { "transmit" }
                ));
            }
            for s in mem.get_slices(d.addr(), d.len() as usize) {
                let s = s.map_err(|e| {
                    format!("buffer {:#x}+{:#x}: {e}", d.addr().raw_value(), d.len())
                })?;
                len += s.len();
                slices.push(s);
            }
        }
        Ok(Self { slices, len })
    }

    fn raw(&self) -> Vec<libc::iovec> {
        self.slices
            .iter()
            .map(|s| libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect()
    }
}

/// `readv`/`writev` on the tap, `EINTR` retried.
fn transfer(tap: &Tap, iov: &[libc::iovec], read: bool) -> io::Result<usize> {
    let count = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
    loop {
        // SAFETY: every iovec points into guest memory that stays mapped while the VM exists
        // (the worker holds `mem`), each within one region and of its slice's length.
        let n = unsafe {
            if read {
                libc::readv(tap.as_raw_fd(), iov.as_ptr(), count)
            } else {
                libc::writev(tap.as_raw_fd(), iov.as_ptr(), count)
            }
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes `bytes` at byte `offset` of the chain made of `descs`.
fn write_at(mem: &GuestMemory, descs: &[Descriptor], offset: usize, bytes: &[u8]) -> bool {
    let mut skip = offset;
    let mut written = 0;
    for d in descs {
        let len = d.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(bytes.len() - written);
        let Some(addr) = d.addr().checked_add(skip as u64) else {
            return false;
        };
        if mem.write_slice(&bytes[written..written + n], addr).is_err() {
            return false;
        }
        written += n;
        skip = 0;
        if written == bytes.len() {
            return true;
        }
    }
    false
}

impl Context {
    /// A worker's state without its thread, for the fuzz targets: `q`'s tap watched for input.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn unthreaded(q: PairQueues) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            q.tap.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TAP),
        )?;
        Ok(Self {
            q,
            epoll,
            rx_armed: true,
            tx_blocked: false,
        })
    }

    /// One turn of the worker's loop with every event ready: transmit, receive, control; then
    /// the tap becomes writable again and a receive kick arrives. Returns the queues.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn serve_all(mut self) -> PairQueues {
        self.process_tx();
        self.process_rx();
        self.process_ctrl();
        self.tx_blocked = false;
        self.process_tx();
        self.rx_armed = true;
        self.process_rx();
        self.q
    }

    fn run(mut self) {
        if !crate::thread_hook::worker_started(&self.q.name) {
            return;
        }
        // Whatever the driver queued before we listened.
        self.process_tx();
        self.process_rx();
        self.process_ctrl();
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("{}: worker stops, epoll failed: {e}", self.q.name);
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    STOP => return,
                    RX_KICK => {
                        let _ = self.q.rx.notify.read();
                        if !self.rx_armed {
                            self.rx_armed = true;
                            self.update_tap_interest();
                        }
                        self.process_rx();
                    }
                    TX_KICK => {
                        let _ = self.q.tx.notify.read();
                        self.process_tx();
                    }
                    TAP => {
                        let set = event.event_set();
                        if set.contains(EventSet::OUT) && self.tx_blocked {
                            self.tx_blocked = false;
                            self.update_tap_interest();
                            self.process_tx();
                        }
                        if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                            self.process_rx();
                        }
                    }
                    CTRL_KICK => {
                        if let Some(ctrl) = &self.q.ctrl {
                            let _ = ctrl.notify.read();
                        }
                        self.process_ctrl();
                    }
                    _ => {}
                }
            }
        }
    }

    fn update_tap_interest(&self) {
        let mut set = EventSet::empty();
        if self.rx_armed {
            set |= EventSet::IN;
        }
        if self.tx_blocked {
            set |= EventSet::OUT;
        }
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Modify,
            self.q.tap.as_raw_fd(),
            EpollEvent::new(set, TAP),
        ) {
            log::error!(
                "{}: cannot change what the worker waits for: {e}",
                self.q.name
            );
        }
    }

    /// Moves frames from the tap into the guest's receive buffers until either runs out.
    fn process_rx(&mut self) {
        if !self.rx_armed {
            return;
        }
        let mem = &*self.q.mem;
        let mut used = 0usize;
        // While buffers are posted the tap drives us: the guest need not kick.
        if let Err(e) = self.q.rx.queue.disable_notification(mem) {
            crate::warn_limited!("{}: receive queue: {e}", self.q.name);
        }
        let mut recheck = false;
        loop {
            if used == RX_BUDGET {
                break;
            }
            let Some(chain) = self.q.rx.queue.pop_descriptor_chain(mem) else {
                // No buffer: ask for a kick when the guest posts some, unless it just did.
                match self.q.rx.queue.enable_notification(mem) {
                    Ok(true) if !recheck => {
                        recheck = true;
                        continue;
                    }
                    Ok(true) => crate::warn_limited!(
                        "{}: receive queue: the available ring index is invalid",
                        self.q.name
                    ),
                    Ok(false) => {}
                    Err(e) => crate::warn_limited!("{}: receive queue: {e}", self.q.name),
                }
                // Stop listening to the tap until the guest posts buffers (RX kick).
                self.rx_armed = false;
                self.update_tap_interest();
                break;
            };
            recheck = false;
            let head = chain.head_index();
            let len = match self.receive_into(mem, chain) {
                Some(len) => len,
                None => {
                    // The tap is empty: the chain goes back for the next frame.
                    self.q.rx.queue.go_to_previous_position();
                    break;
                }
            };
            if let Err(e) = self.q.rx.queue.add_used(mem, head, len) {
                crate::warn_limited!("{}: receive queue: {e}", self.q.name);
            }
            used += 1;
        }
        if used > 0 && self.q.rx.queue.needs_notification(mem).unwrap_or(true) {
            self.q.interrupt.signal_queue(self.q.rx.index);
        }
    }

    /// Reads one frame into `chain`: the used length, or `None` when the tap has nothing.
    fn receive_into(&self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> Option<u32> {
        let descs: Vec<Descriptor> = chain.collect();
        let iov = match Iovecs::of(mem, &descs, true) {
            Ok(iov) if iov.len >= VNET_HDR_LEN => iov,
            Ok(iov) => {
                crate::warn_limited!(
                    "{}: a receive buffer of {} bytes cannot hold the {VNET_HDR_LEN}-byte header; \
                     returned empty",
                    self.q.name,
                    iov.len
                );
                return Some(0);
            }
            Err(reason) => {
                crate::warn_limited!(
                    "{}: bad receive buffer: {reason}; returned empty",
                    self.q.name
                );
                return Some(0);
            }
        };
        match transfer(&self.q.tap, &iov.raw(), true) {
            Ok(n) if n >= VNET_HDR_LEN => {
                // One buffer per frame (no MRG_RXBUF); the tap leaves the field alone.
                write_at(mem, &descs, NUM_BUFFERS_OFFSET, &1u16.to_le_bytes());
                Some(n as u32)
            }
            Ok(n) => {
                crate::warn_limited!("{}: the tap gave a {n}-byte frame; dropped", self.q.name);
                Some(0)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                crate::warn_limited!("{}: tap read failed: {e}", self.q.name);
                Some(0)
            }
        }
    }

    /// Sends every frame the guest queued, until the ring is empty or the tap is full.
    fn process_tx(&mut self) {
        if self.tx_blocked {
            return;
        }
        let mem = &*self.q.mem;
        let mut used = 0usize;
        let mut idle_rounds = 0;
        loop {
            if let Err(e) = self.q.tx.queue.disable_notification(mem) {
                crate::warn_limited!("{}: transmit queue: {e}", self.q.name);
            }
            let mut popped = 0;
            while let Some(chain) = self.q.tx.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                if !self.transmit(mem, &descs) {
                    self.q.tx.queue.go_to_previous_position();
                    self.tx_blocked = true;
                    self.update_tap_interest();
                    break;
                }
                if let Err(e) = self.q.tx.queue.add_used(mem, head, 0) {
                    crate::warn_limited!("{}: transmit queue: {e}", self.q.name);
                }
                popped += 1;
            }
            used += popped;
            if self.tx_blocked {
                // Resumed when the tap is writable; no kicks needed meanwhile.
                break;
            }
            idle_rounds = if popped == 0 { idle_rounds + 1 } else { 0 };
            match self.q.tx.queue.enable_notification(mem) {
                // More arrived while notifications were off; a ring whose index says so but
                // yields nothing twice in a row is broken, and is left alone until the next kick.
                Ok(true) if idle_rounds < 2 => continue,
                Ok(true) => {
                    crate::warn_limited!(
                        "{}: transmit queue: the available ring index is invalid",
                        self.q.name
                    );
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    crate::warn_limited!("{}: transmit queue: {e}", self.q.name);
                    break;
                }
            }
        }
        if used > 0 && self.q.tx.queue.needs_notification(mem).unwrap_or(true) {
            self.q.interrupt.signal_queue(self.q.tx.index);
        }
    }

    /// Writes one transmit chain to the tap; false when the tap is full (`EAGAIN`) and the
    /// chain must wait. A chain that cannot be sent is dropped (and counts as done).
    fn transmit(&self, mem: &GuestMemory, descs: &[Descriptor]) -> bool {
        match Iovecs::of(mem, descs, false) {
            Ok(iov) if iov.len >= VNET_HDR_LEN => match transfer(&self.q.tap, &iov.raw(), false) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // EINVAL: a header the tap refuses (bad GSO fields); EIO: link down.
                Err(e) => crate::warn_limited!(
                    "{}: a transmitted frame of {} bytes was dropped: {e}",
                    self.q.name,
                    iov.len
                ),
            },
            Ok(iov) => crate::warn_limited!(
                "{}: a transmit chain of {} bytes is shorter than the header; dropped",
                self.q.name,
                iov.len
            ),
            Err(reason) => {
                crate::warn_limited!("{}: bad transmit chain: {reason}; dropped", self.q.name)
            }
        }
        true
    }

    /// Answers every control command the driver queued.
    fn process_ctrl(&mut self) {
        let Some(ctrl) = self.q.ctrl.as_mut() else {
            return;
        };
        let mem = &*self.q.mem;
        let mut used = 0usize;
        let mut idle_rounds = 0;
        loop {
            let _ = ctrl.queue.disable_notification(mem);
            let mut popped = 0;
            while let Some(chain) = ctrl.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                let len = control_command(&self.q.name, mem, &descs, self.q.max_pairs);
                if let Err(e) = ctrl.queue.add_used(mem, head, len) {
                    crate::warn_limited!("{}: control queue: {e}", self.q.name);
                }
                popped += 1;
            }
            used += popped;
            idle_rounds = if popped == 0 { idle_rounds + 1 } else { 0 };
            match ctrl.queue.enable_notification(mem) {
                Ok(true) if idle_rounds < 2 => continue,
                Ok(true) => {
                    crate::warn_limited!(
                        "{}: control queue: the available ring index is invalid",
                        self.q.name
                    );
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    crate::warn_limited!("{}: control queue: {e}", self.q.name);
                    break;
                }
            }
        }
        if used > 0 && ctrl.queue.needs_notification(mem).unwrap_or(true) {
            self.q.interrupt.signal_queue(ctrl.index);
        }
    }
}

/// Serves one control command (`class u8, command u8, data…` readable, then a writable ack
/// byte); returns the used length (1 when the ack was written, 0 when the chain had no room).
pub(crate) fn control_command(
    name: &str,
    mem: &GuestMemory,
    descs: &[Descriptor],
    max_pairs: u16,
) -> u32 {
    let Some(ack) = descs.last().filter(|d| d.is_write_only() && d.len() >= 1) else {
        crate::warn_limited!("{name}: a control command without a writable ack byte; ignored");
        return 0;
    };
    let mut cmd = Vec::new();
    for d in descs.iter().take_while(|d| !d.is_write_only()) {
        let len = (d.len() as usize).min(64usize.saturating_sub(cmd.len()));
        let mut buf = vec![0u8; len];
        if mem.read_slice(&mut buf, d.addr()).is_err() {
            cmd.clear();
            break;
        }
        cmd.extend_from_slice(&buf);
    }
    let status = match cmd.as_slice() {
        [class, command, rest @ ..]
            if u32::from(*class) == vn::VIRTIO_NET_CTRL_MQ
                && u32::from(*command) == vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET =>
        {
            match rest {
                [lo, hi, ..] if (1..=max_pairs).contains(&u16::from_le_bytes([*lo, *hi])) => {
                    log::debug!(
                        "{name}: the driver uses {} queue pair(s)",
                        u16::from_le_bytes([*lo, *hi])
                    );
                    vn::VIRTIO_NET_OK
                }
                _ => {
                    crate::warn_limited!(
                        "{name}: MQ_VQ_PAIRS_SET out of range 1..={max_pairs}; refused"
                    );
                    vn::VIRTIO_NET_ERR
                }
            }
        }
        [class, command, ..] => {
            log::debug!("{name}: unsupported control command {class}.{command}");
            vn::VIRTIO_NET_ERR
        }
        _ => {
            crate::warn_limited!("{name}: a malformed control command; refused");
            vn::VIRTIO_NET_ERR
        }
    };
    let at: GuestAddress = ack.addr();
    match mem.write_obj(status as u8, at) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}
