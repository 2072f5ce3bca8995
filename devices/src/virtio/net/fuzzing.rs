//! The queue pair's worker without its thread, for the fuzz targets in tests/fuzz (built only
//! with the `fuzzing` feature): a fuzz input lays out the receive, transmit and control rings
//! and their buffers in guest memory, the "tap" is any packet fd (a socket pair's end), and one
//! turn of the worker serves all three queues exactly as the thread does.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::Tap;
use super::worker::{Context, PairQueues};
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt};

/// Counts the interrupts the worker raised.
#[derive(Default)]
struct Count(AtomicUsize);

impl VirtioInterrupt for Count {
    fn signal_queue(&self, _queue: u16) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn signal_config(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one turn left behind.
pub struct Served {
    /// The receive, transmit and control queues, with their indices where the turn left them.
    pub queues: (Queue, Queue, Option<Queue>),
    /// Interrupts raised.
    pub interrupts: usize,
}

fn active(index: u16, queue: Queue) -> io::Result<ActiveQueue> {
    Ok(ActiveQueue {
        index,
        queue,
        notify: EventFd::new(EFD_NONBLOCK)?,
    })
}

/// Serves `rx`, `tx` and `ctrl` (queues 0, 1 and 2) on `tap` (non-blocking; frames queued on
/// its peer are received, transmitted ones are written to it) for one turn of the worker.
pub fn serve(
    mem: Arc<GuestMemory>,
    tap: OwnedFd,
    rx: Queue,
    tx: Queue,
    ctrl: Option<Queue>,
    max_pairs: u16,
) -> io::Result<Served> {
    let interrupt = Arc::new(Count::default());
    let q = PairQueues {
        name: "fuzz".to_string(),
        tap: Arc::new(Tap::from_owned(tap, "fuzz")),
        mem,
        rx: active(0, rx)?,
        tx: active(1, tx)?,
        ctrl: ctrl.map(|q| active(2, q)).transpose()?,
        max_pairs,
        interrupt: interrupt.clone(),
    };
    let q = Context::unthreaded(q)?.serve_all();
    Ok(Served {
        queues: (q.rx.queue, q.tx.queue, q.ctrl.map(|c| c.queue)),
        interrupts: interrupt.0.load(Ordering::Relaxed),
    })
}
