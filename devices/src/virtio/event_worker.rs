//! A device worker thread driven by one epoll set, shared by the small virtio devices (console,
//! rng): the thread is confined through [`crate::thread_hook`] before it touches anything, then
//! hands every event but the stop eventfd's to the device's [`EventHandler`]. Stopping (or
//! dropping) the [`EventWorker`] waits for the thread to finish the event in hand and exit.
//!
//! Also [`serve_queue`]: pop every available chain of a queue, complete each, and signal the
//! driver once per batch.

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use virtio_queue::{DescriptorChain, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
pub(crate) struct EventWorker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

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
        let stop = EventFd::new(EFD_NONBLOCK)?;
        watch(&epoll, stop.as_raw_fd(), STOP_TOKEN)?;
        let handle = std::thread::Builder::new().name(name).spawn(move || {
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
        })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Asks the thread to exit and waits for it.
    pub(crate) fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot stop a virtio worker: {e}");
            return;
        }
        if handle.join().is_err() {
            log::error!("a virtio worker panicked");
        }
    }
}

impl Drop for EventWorker {
    fn drop(&mut self) {
        self.join();
    }
}

/// Completes every chain available on `q` with the length `serve` returns (bytes written into
/// the chain), then signals the driver if any completed. Returns how many completed.
///
/// Notifications stay enabled (no EVENT_IDX is offered), so a chain made available after the
/// last pop comes with a kick that wakes the worker again; a ring whose index is broken simply
/// yields no chain.
pub(crate) fn serve_queue(
    q: &mut ActiveQueue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    name: &str,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) -> usize {
    let mut completed = 0;
    while let Some(chain) = q.queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let len = serve(chain);
        if let Err(e) = q.queue.add_used(mem, head, len) {
            crate::warn_limited!("{name}: queue {}: cannot complete a chain: {e}", q.index);
        }
        completed += 1;
    }
    if completed > 0 && q.queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_queue(q.index);
    }
    completed
}
