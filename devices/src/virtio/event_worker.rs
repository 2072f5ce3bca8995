//! A device worker thread driven by one epoll set, shared by the small virtio devices (console,
//! rng): the thread is confined through [`crate::thread_hook`] before it touches anything, then
//! hands every event but the stop eventfd's to the device's [`EventHandler`]. Stopping (or
//! dropping) the [`EventWorker`] waits for the thread to finish the event in hand and exit.
//!
//! Also [`serve_queue`]: pop every available chain of a queue, complete each, and signal the
//! driver once per batch.

use std::os::fd::AsRawFd;

use virtio_queue::{DescriptorChain, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::virtio::worker_thread::{stop_event, WorkerThread};
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt};

/// Epoll token of the stop eventfd; handlers must not use it.
pub(crate) const STOP_TOKEN: u64 = u64::MAX;

/// What a device's worker does with its events.
pub(crate) trait EventHandler: Send + 'static {
    /// The device, for messages.
    fn name(&self) -> &str;
    /// Runs once, confined, before the first wait: serve what the driver queued before the
    /// thread listened.
    fn started(&mut self, epoll: &Epoll);
    /// One ready fd, registered by the device with `token`.
    fn event(&mut self, epoll: &Epoll, token: u64, events: EventSet);
    /// How long the next wait may last, in milliseconds (-1: until an event).
    fn timeout_ms(&self) -> i32 {
        -1
    }
    /// The wait that [`EventHandler::timeout_ms`] bounded ended without an event.
    fn timed_out(&mut self, _epoll: &Epoll) {}
}

/// A running worker thread.
pub(crate) struct EventWorker(WorkerThread);

/// Adds `fd` to `epoll` for input readiness under `token`.
pub(crate) fn watch(epoll: &Epoll, fd: i32, token: u64) -> std::io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}

impl EventWorker {
    /// Starts thread `name` serving `handler`'s fds, already registered in `epoll`.
    pub(crate) fn spawn<H: EventHandler>(
        name: String,
        epoll: Epoll,
        mut handler: H,
    ) -> std::io::Result<Self> {
        let stop = stop_event()?;
        watch(&epoll, stop.as_raw_fd(), STOP_TOKEN)?;
        WorkerThread::spawn("virtio", name, stop, move || {
            if !crate::thread_hook::worker_started(handler.name()) {
                return;
            }
            handler.started(&epoll);
            let mut events = vec![EpollEvent::default(); 8];
            loop {
                let n = match epoll.wait(handler.timeout_ms(), &mut events) {
                    Ok(0) => {
                        handler.timed_out(&epoll);
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("{}: worker stops, epoll failed: {e}", handler.name());
                        return;
                    }
                };
                for event in &events[..n] {
                    if event.data() == STOP_TOKEN {
                        return;
                    }
                    handler.event(&epoll, event.data(), event.event_set());
                }
            }
        })
        .map(Self)
    }

    /// Asks the thread to exit and waits for it.
    pub(crate) fn stop(self) {
        self.0.stop();
    }
}

/// Most chains [`serve_queue`] completes in one call.
pub(crate) const MAX_CHAINS_PER_TURN: usize = 64;

/// Completes the chains available on `q` with the length `serve` returns (bytes written into
/// the chain), at most [`MAX_CHAINS_PER_TURN`] of them, then signals the driver if any
/// completed. Returns how many completed.
///
/// Notifications stay enabled (no EVENT_IDX is offered), so a chain made available after the
/// last pop comes with a kick that wakes the worker again; a ring whose index is broken simply
/// yields no chain. When the bound cut the turn short, the queue's own notification is raised
/// so the worker comes back to it, after looking at its other events, the stop eventfd among
/// them: a driver that refills the ring as fast as it drains cannot keep a device reset, which
/// joins the worker, waiting.
pub(crate) fn serve_queue(
    q: &mut ActiveQueue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    name: &str,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) -> usize {
    let mut completed = 0;
    while completed < MAX_CHAINS_PER_TURN {
        let Some(chain) = q.queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = serve(chain);
        if let Err(e) = q.queue.add_used(mem, head, len) {
            crate::warn_limited!("{name}: queue {}: cannot complete a chain: {e}", q.index);
        }
        completed += 1;
    }
    if completed == MAX_CHAINS_PER_TURN {
        if let Err(e) = q.notify.write(1) {
            crate::warn_limited!("{name}: queue {}: cannot come back to it: {e}", q.index);
        }
    }
    if completed > 0 && q.queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_queue(q.index);
    }
    completed
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl VirtioInterrupt for Count {
        fn signal_queue(&self, _queue: u16) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn signal_config(&self) {}
    }

    /// A 256-entry queue at 0 with `chains` one-descriptor chains available.
    fn queue_with(mem: &GuestMemory, chains: u16) -> ActiveQueue {
        let (avail, used) = (0x1000u64, 0x2000u64);
        let mut queue = Queue::new(256).unwrap();
        queue.set_size(256);
        queue.set_desc_table_address(Some(0), Some(0));
        queue.set_avail_ring_address(Some(avail as u32), Some(0));
        queue.set_used_ring_address(Some(used as u32), Some(0));
        queue.set_ready(true);
        for i in 0..chains {
            let desc = u64::from(i) * 16;
            mem.write_obj(0x8000u64, GuestAddress(desc)).unwrap();
            mem.write_obj(16u32, GuestAddress(desc + 8)).unwrap();
            mem.write_obj(2u16, GuestAddress(desc + 12)).unwrap(); // device-writable
            mem.write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)))
                .unwrap();
        }
        mem.write_obj(chains, GuestAddress(avail + 2)).unwrap();
        ActiveQueue {
            index: 0,
            queue,
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    #[test]
    fn a_turn_is_bounded_and_the_queue_is_kicked_to_come_back() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let chains = MAX_CHAINS_PER_TURN as u16 * 2 + 10;
        let mut q = queue_with(&mem, chains);
        let irq = Count::default();
        assert_eq!(
            serve_queue(&mut q, &mem, &irq, "t", |_| 16),
            MAX_CHAINS_PER_TURN
        );
        assert_eq!(q.notify.read().unwrap(), 1, "the worker must come back");
        assert_eq!(
            serve_queue(&mut q, &mem, &irq, "t", |_| 16),
            MAX_CHAINS_PER_TURN
        );
        assert_eq!(q.notify.read().unwrap(), 1);
        assert_eq!(serve_queue(&mut q, &mem, &irq, "t", |_| 16), 10);
        assert!(q.notify.read().is_err(), "drained: no self-kick");
        assert_eq!(irq.0.load(Ordering::Relaxed), 3, "one interrupt per turn");
        let used_idx: u16 = mem.read_obj(GuestAddress(0x2002)).unwrap();
        assert_eq!(used_idx, chains);
    }
}
