//! A virtio-blk worker thread: one per request queue. It waits (epoll) on its queue's
//! notification eventfd and a stop eventfd, drains the queue through `virtio-queue`, and
//! signals the driver once per batch of used buffers. All disk I/O of a device happens on its
//! workers, never on a vCPU.
//!
//! A driver can keep a queue busy without end (a vCPU refilling the ring as fast as it is
//! drained). The worker therefore serves at most [`BATCH`] requests per turn and looks at the
//! stop eventfd between turns, so a device reset, which joins the workers, always returns.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{request, Disk};
use crate::virtio::worker_thread::{stop_event, WorkerThread};
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt};
use crate::warn_limited;

/// Epoll token of the stop eventfd.
const STOP_TOKEN: u64 = 0;
/// Epoll token of the queue's notification eventfd.
const QUEUE_TOKEN: u64 = 1;
/// Most requests served before the worker checks whether it must stop (and signals the
/// driver for what it completed so far).
pub(crate) const BATCH: usize = 64;

/// A running worker; stopping it (or dropping it) waits for the thread to finish its current
/// batch and exit.
pub(crate) struct Worker(WorkerThread);

/// What the thread owns.
struct Context {
    disk: Arc<Disk>,
    mem: Arc<GuestMemory>,
    queue: ActiveQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    epoll: Epoll,
}

/// Whether a turn left requests in the queue.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// The queue is empty and notifications are on again.
    Drained,
    /// [`BATCH`] requests were served and more are waiting.
    More,
}

impl Worker {
    /// Starts serving `queue` of `disk`.
    pub(crate) fn spawn(
        disk: Arc<Disk>,
        mem: Arc<GuestMemory>,
        queue: ActiveQueue,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let stop = stop_event()?;
        let epoll = Epoll::new()?;
        let add = |fd, token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        add(queue.notify.as_raw_fd(), QUEUE_TOKEN)?;
        let name = format!("virtio-blk {} q{}", disk.name, queue.index);
        let ctx = Context {
            disk,
            mem,
            queue,
            interrupt,
            epoll,
        };
        WorkerThread::spawn("virtio-blk", name, stop, move || ctx.run()).map(Self)
    }

    /// Asks the thread to exit and waits for it.
    pub(crate) fn stop(self) {
        self.0.stop();
    }
}

impl Context {
    fn run(mut self) {
        if !crate::thread_hook::worker_started(&self.disk.name) {
            return;
        }
        // Anything the driver queued before we listened (or a kick we would otherwise miss).
        let mut more = self.process() == Turn::More;
        let mut events = [EpollEvent::default(); 2];
        loop {
            // With work left, only look (timeout 0) whether we must stop, then go on.
            let timeout = if more { 0 } else { -1 };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("{}: worker stops, epoll failed: {e}", self.disk.name);
                    return;
                }
            };
            let ready = &events[..n];
            if ready.iter().any(|e| e.data() == STOP_TOKEN) {
                return;
            }
            if ready.iter().any(|e| e.data() == QUEUE_TOKEN) {
                let _ = self.queue.notify.read();
                more = true;
            }
            if more {
                more = self.process() == Turn::More;
            }
        }
    }

    /// Serves up to [`BATCH`] available requests, then signals the driver if any completed.
    fn process(&mut self) -> Turn {
        let mem = &*self.mem;
        let disk = &*self.disk;
        let q = &mut self.queue;
        let mut completed = 0usize;
        let mut idle_rounds = 0;
        let turn = loop {
            if let Err(e) = q.queue.disable_notification(mem) {
                warn_limited!("{}: queue {}: {e}", disk.name, q.index);
            }
            let mut popped = 0;
            while completed < BATCH {
                let Some(chain) = q.queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let len = request::execute(disk, mem, chain);
                if let Err(e) = q.queue.add_used(mem, head, len) {
                    warn_limited!(
                        "{}: queue {}: cannot complete request: {e}",
                        disk.name,
                        q.index
                    );
                }
                #[cfg(test)]
                if let Some(hook) = &disk.after_request {
                    hook();
                }
                popped += 1;
                completed += 1;
            }
            if completed >= BATCH {
                // Notifications stay off: the worker comes back without a kick.
                break Turn::More;
            }
            idle_rounds = if popped == 0 { idle_rounds + 1 } else { 0 };
            match q.queue.enable_notification(mem) {
                // More arrived while notifications were off; a ring whose index says so but
                // yields nothing twice in a row is broken, and is left alone until the next kick.
                Ok(true) if idle_rounds < 2 => continue,
                Ok(true) => {
                    warn_limited!(
                        "{}: queue {}: the available ring index is invalid",
                        disk.name,
                        q.index
                    );
                    break Turn::Drained;
                }
                Ok(false) => break Turn::Drained,
                Err(e) => {
                    warn_limited!("{}: queue {}: {e}", disk.name, q.index);
                    break Turn::Drained;
                }
            }
        };
        if completed > 0 && q.queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_queue(q.index);
        }
        turn
    }
}
