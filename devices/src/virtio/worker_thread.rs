//! What every virtio device's worker thread has in common: the eventfd that tells it to stop,
//! and the join. The device's thread watches the eventfd in its own epoll set and returns when
//! it fires; stopping (or dropping) a [`WorkerThread`] writes the eventfd and waits for the
//! thread to exit, so a device reset never returns while its worker still touches the rings.

use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A running device worker thread.
pub(crate) struct WorkerThread {
    /// The device kind, for messages ("virtio-blk").
    kind: &'static str,
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// A new stop eventfd, for the thread's epoll set.
pub(crate) fn stop_event() -> std::io::Result<EventFd> {
    EventFd::new(EFD_NONBLOCK)
}

impl WorkerThread {
    /// Runs `body` on thread `name`; `body` must return once `stop` (in its epoll set) fires.
    pub(crate) fn spawn(
        kind: &'static str,
        name: String,
        stop: EventFd,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new().name(name).spawn(body)?;
        Ok(Self {
            kind,
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
            log::error!("cannot stop a {} worker: {e}", self.kind);
            return;
        }
        if handle.join().is_err() {
            log::error!("a {} worker panicked", self.kind);
        }
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        self.join();
    }
}
