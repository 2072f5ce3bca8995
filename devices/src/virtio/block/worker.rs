//! The virtio-blk worker thread: waits (epoll) on the queues' notification eventfds and a stop
//! eventfd, drains each notified queue through `virtio-queue`, and signals the driver once per
//! batch of used buffers. All disk I/O of a device happens here, never on a vCPU.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::QueueT;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{request, Disk};
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt};

/// Epoll token of the stop eventfd; queue `i` uses token `i`.
const STOP_TOKEN: u64 = u64::MAX;

/// A running worker; stopping it (or dropping it) waits for the thread to finish its current
/// request and exit.
pub(crate) struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// What the thread owns.
struct Context {
    disk: Arc<Disk>,
    mem: Arc<GuestMemory>,
    queues: Vec<ActiveQueue>,
    interrupt: Arc<dyn VirtioInterrupt>,
    epoll: Epoll,
}

impl Worker {
    /// Starts serving `queues` of `disk`.
    pub(crate) fn spawn(
        disk: Arc<Disk>,
        mem: Arc<GuestMemory>,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let add = |fd, token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        for (i, q) in queues.iter().enumerate() {
            add(q.notify.as_raw_fd(), i as u64)?;
        }
        let thread_stop = stop.try_clone()?;
        let name = format!("virtio-blk {}", disk.name);
        let ctx = Context {
            disk,
            mem,
            queues,
            interrupt,
            epoll,
        };
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || ctx.run(thread_stop))?;
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
            log::error!("cannot stop a virtio-blk worker: {e}");
            return;
        }
        if handle.join().is_err() {
            log::error!("a virtio-blk worker panicked");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.join();
    }
}

impl Context {
    fn run(mut self, _stop: EventFd) {
        if !crate::thread_hook::worker_started(&self.disk.name) {
            return;
        }
        // Anything the driver queued before we listened (or a kick we would otherwise miss).
        for i in 0..self.queues.len() {
            self.process(i);
        }
        let mut events = vec![EpollEvent::default(); self.queues.len() + 1];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("{}: worker stops, epoll failed: {e}", self.disk.name);
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    STOP_TOKEN => return,
                    token => {
                        let i = token as usize;
                        let _ = self.queues[i].notify.read();
                        self.process(i);
                    }
                }
            }
        }
    }

    /// Serves every available request of queue `i`, then signals the driver if any completed.
    fn process(&mut self, i: usize) {
        let mem = &*self.mem;
        let disk = &*self.disk;
        let q = &mut self.queues[i];
        let mut completed = 0usize;
        let mut idle_rounds = 0;
        loop {
            if let Err(e) = q.queue.disable_notification(mem) {
                log::warn!("{}: queue {}: {e}", disk.name, q.index);
            }
            let mut popped = 0;
            while let Some(chain) = q.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = request::execute(disk, mem, chain);
                if let Err(e) = q.queue.add_used(mem, head, len) {
                    log::warn!(
                        "{}: queue {}: cannot complete request: {e}",
                        disk.name,
                        q.index
                    );
                }
                popped += 1;
            }
            completed += popped;
            idle_rounds = if popped == 0 { idle_rounds + 1 } else { 0 };
            match q.queue.enable_notification(mem) {
                // More arrived while notifications were off; a ring whose index says so but
                // yields nothing twice in a row is broken, and is left alone until the next kick.
                Ok(true) if idle_rounds < 2 => continue,
                Ok(true) => {
                    log::warn!(
                        "{}: queue {}: the available ring index is invalid",
                        disk.name,
                        q.index
                    );
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    log::warn!("{}: queue {}: {e}", disk.name, q.index);
                    break;
                }
            }
        }
        if completed > 0 && q.queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_queue(q.index);
        }
    }
}
