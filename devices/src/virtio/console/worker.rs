//! The virtio-console worker: transmitq chains are written to the output, input bytes are
//! copied into receiveq buffers. One epoll set holds both queues' doorbells, the input (while
//! it may be read) and the stop eventfd.
//!
//! Input flow control: the input is watched only while no byte is waiting for a receive
//! buffer. When the guest has posted none (no driver yet, or it is not reading), the bytes
//! already read wait in `pending`, the input is left unread, and the next receiveq kick
//! delivers them.
//!
//! Input is held back until the port is surely connected in the guest: Linux's virtio_console
//! posts its receive buffers before it has set up the port's console (hvc) and throws away
//! what arrives in between, so bytes given at once (input that was waiting on stdin when the
//! guest booted) would be lost. The driver can only transmit once that set-up is (all but)
//! done, so input flows [`TX_GRACE`] after the first transmitted buffer, or at the latest
//! [`RX_FALLBACK`] after the first receive buffers for a guest that never writes.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{ConsoleInput, ConsoleOutput};
use crate::virtio::event_worker::{serve_queue, watch, EventHandler, EventWorker};
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt};

const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const INPUT_TOKEN: u64 = 2;
/// Bytes read from the input at a time.
const INPUT_CHUNK: usize = 4096;
/// How long after the guest's first transmission input is held back (see the module comment).
pub(super) const TX_GRACE: Duration = Duration::from_millis(100);
/// How long after the first receive buffers input waits at most for a transmission.
pub(super) const RX_FALLBACK: Duration = Duration::from_secs(10);

/// The host end of the port, as the worker gets it.
pub(super) struct Port {
    /// Where transmitted bytes go.
    pub(super) output: ConsoleOutput,
    /// Where received bytes come from.
    pub(super) input: Option<ConsoleInput>,
    /// How long input waits at most for the guest's first transmission.
    pub(super) rx_fallback: Duration,
}

/// The worker's state.
pub(super) struct ConsoleWorker {
    name: String,
    mem: Arc<GuestMemory>,
    rx: ActiveQueue,
    tx: ActiveQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    output: ConsoleOutput,
    input: Option<ConsoleInput>,
    input_watched: bool,
    pending: VecDeque<u8>,
    /// When the driver first kicked receiveq (it had posted buffers).
    rx_posted: Option<Instant>,
    /// When the driver first transmitted.
    first_tx: Option<Instant>,
    rx_fallback: Duration,
}

impl ConsoleWorker {
    /// Starts the worker thread of console `name`, serving `port`.
    pub(super) fn spawn(
        name: String,
        mem: Arc<GuestMemory>,
        [rx, tx]: [ActiveQueue; 2],
        interrupt: Arc<dyn VirtioInterrupt>,
        port: Port,
    ) -> std::io::Result<EventWorker> {
        let Port {
            output,
            input,
            rx_fallback,
        } = port;
        let epoll = Epoll::new()?;
        watch(&epoll, rx.notify.as_raw_fd(), RX_TOKEN)?;
        watch(&epoll, tx.notify.as_raw_fd(), TX_TOKEN)?;
        let worker = Self {
            name: name.clone(),
            mem,
            rx,
            tx,
            interrupt,
            output,
            input,
            input_watched: false,
            pending: VecDeque::new(),
            rx_posted: None,
            first_tx: None,
            rx_fallback,
        };
        EventWorker::spawn(format!("virtio-{name}"), epoll, worker)
    }

    /// Writes every transmitq chain to the output.
    fn transmit(&mut self) {
        let mut out = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let (mem, name) = (&*self.mem, &self.name);
        let served = serve_queue(&mut self.tx, mem, &*self.interrupt, name, |chain| {
            write_chain(name, mem, chain, &mut **out);
            0
        });
        if served > 0 {
            self.first_tx.get_or_insert_with(Instant::now);
            if let Err(e) = out.flush() {
                crate::warn_limited!("{name}: cannot write the guest's console output: {e}");
            }
        }
    }

    /// How long input must still wait (zero: it may go to the guest now); `None` while there
    /// is nothing to count from yet.
    fn rx_wait(&self) -> Option<Duration> {
        let after_tx = self.first_tx.map(|t| TX_GRACE.saturating_sub(t.elapsed()));
        let fallback = self
            .rx_posted
            .map(|t| self.rx_fallback.saturating_sub(t.elapsed()));
        match (after_tx, fallback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether input may go to the guest yet.
    fn rx_settled(&self) -> bool {
        self.rx_wait().is_some_and(|d| d.is_zero())
    }

    /// Copies pending input into receive buffers while both last.
    fn receive(&mut self) {
        if !self.rx_settled() {
            return;
        }
        let mem = &*self.mem;
        let mut completed = false;
        while !self.pending.is_empty() {
            let Some(chain) = self.rx.queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = fill_chain(&self.name, mem, chain, &mut self.pending);
            if let Err(e) = self.rx.queue.add_used(mem, head, len) {
                crate::warn_limited!("{}: receiveq: cannot complete a buffer: {e}", self.name);
            }
            completed = true;
        }
        if completed && self.rx.queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_queue(self.rx.index);
        }
    }

    /// Reads what the input has (it is readable) into `pending`.
    fn read_input(&mut self, epoll: &Epoll) {
        let Some(input) = self.input.clone() else {
            return;
        };
        let mut buf = [0u8; INPUT_CHUNK];
        match (&*input).read(&mut buf) {
            Ok(0) => {
                log::debug!(
                    "{}: the input closed; the guest gets no more input",
                    self.name
                );
                self.close_input(epoll);
            }
            Ok(n) => self.pending.extend(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(e) => {
                log::warn!(
                    "{}: reading the input failed ({e}); no more guest input",
                    self.name
                );
                self.close_input(epoll);
            }
        }
    }

    fn close_input(&mut self, epoll: &Epoll) {
        self.set_input_watch(epoll, false);
        self.input = None;
    }

    /// Watches the input exactly when it is open and nothing waits for a receive buffer.
    fn update_input_watch(&mut self, epoll: &Epoll) {
        let want = self.input.is_some() && self.pending.is_empty();
        self.set_input_watch(epoll, want);
    }

    fn set_input_watch(&mut self, epoll: &Epoll, want: bool) {
        let Some(input) = &self.input else {
            return;
        };
        if want == self.input_watched {
            return;
        }
        let (op, event) = if want {
            (
                ControlOperation::Add,
                EpollEvent::new(EventSet::IN, INPUT_TOKEN),
            )
        } else {
            (ControlOperation::Delete, EpollEvent::default())
        };
        match epoll.ctl(op, input.as_raw_fd(), event) {
            Ok(()) => self.input_watched = want,
            Err(e) => {
                // A regular file or /dev/null cannot be polled: the guest gets no input.
                log::debug!(
                    "{}: the input cannot be watched ({e}); no guest input",
                    self.name
                );
                self.input = None;
                self.input_watched = false;
            }
        }
    }
}

impl EventHandler for ConsoleWorker {
    fn name(&self) -> &str {
        &self.name
    }

    fn started(&mut self, epoll: &Epoll) {
        self.transmit();
        self.receive();
        self.update_input_watch(epoll);
    }

    fn event(&mut self, epoll: &Epoll, token: u64, events: EventSet) {
        match token {
            RX_TOKEN => {
                let _ = self.rx.notify.read();
                self.rx_posted.get_or_insert_with(Instant::now);
                self.receive();
            }
            TX_TOKEN => {
                let _ = self.tx.notify.read();
                self.transmit();
                self.receive();
            }
            INPUT_TOKEN => {
                if events.contains(EventSet::IN) {
                    self.read_input(epoll);
                } else if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    self.close_input(epoll);
                }
                self.receive();
            }
            _ => {}
        }
        self.update_input_watch(epoll);
    }

    fn timeout_ms(&self) -> i32 {
        match self.rx_wait() {
            Some(left) if !self.pending.is_empty() && !left.is_zero() => {
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
            }
            _ => -1,
        }
    }

    fn timed_out(&mut self, epoll: &Epoll) {
        self.receive();
        self.update_input_watch(epoll);
    }
}

/// Writes the device-readable buffers of `chain` to `out`. Write errors are logged (rate
/// limited) and the bytes dropped: the guest is never stalled by a broken output.
fn write_chain(
    name: &str,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    out: &mut dyn Write,
) {
    let mut reader = match Reader::new(mem, chain) {
        Ok(r) => r,
        Err(e) => {
            crate::warn_limited!("{name}: transmitq: unusable buffer, dropped: {e}");
            return;
        }
    };
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Err(e) = out.write_all(&buf[..n]) {
                    crate::warn_limited!("{name}: cannot write the guest's console output: {e}");
                    return;
                }
            }
            Err(e) => {
                crate::warn_limited!("{name}: transmitq: cannot read a buffer: {e}");
                return;
            }
        }
    }
}

/// Moves as much of `pending` as fits into the device-writable buffers of `chain`; returns
/// the bytes moved (the used length). A chain with no usable writable buffer takes nothing.
fn fill_chain(
    name: &str,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    pending: &mut VecDeque<u8>,
) -> u32 {
    let mut writer = match Writer::new(mem, chain) {
        Ok(w) => w,
        Err(e) => {
            crate::warn_limited!("{name}: receiveq: unusable buffer, completed empty: {e}");
            return 0;
        }
    };
    let n = writer.available_bytes().min(pending.len());
    if n == 0 {
        crate::warn_limited!("{name}: receiveq: a buffer without writable space");
        return 0;
    }
    let bytes = &pending.make_contiguous()[..n];
    match writer.write_all(bytes) {
        Ok(()) => {
            pending.drain(..n);
            n as u32
        }
        Err(e) => {
            crate::warn_limited!("{name}: receiveq: cannot write a buffer: {e}");
            0
        }
    }
}
