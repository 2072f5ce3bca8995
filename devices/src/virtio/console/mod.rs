//! virtio-console with one port, which a Linux guest drives as `hvc0`.
//!
//! Two queues of 256 entries: receiveq (0, host → guest) and transmitq (1, guest → host),
//! served by a worker thread (module `worker`) started when the driver sets DRIVER_OK. Offered
//! features: VERSION_1 and SIZE (the terminal's columns and rows; a [`ConsoleResizer`] changes
//! them and interrupts the driver, as cloud-hypervisor does on SIGWINCH); no MULTIPORT and no
//! EMERG_WRITE, as cloud-hypervisor. What the guest writes goes to
//! the [`ConsoleOutput`]; what the [`ConsoleInput`] delivers (the VMM's stdin for `--console
//! tty`) is copied into the guest's receive buffers, and the input is not read while bytes are
//! still waiting for buffers, so nothing is dropped.

mod worker;

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;

use self::worker::{ConsoleWorker, Port};
use crate::virtio::event_worker::EventWorker;
use crate::virtio::{
    features, ActivateError, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt,
};

/// Entries of each queue (cloud-hypervisor's size).
pub const QUEUE_SIZE: u16 = 256;
/// VIRTIO_CONSOLE_F_SIZE: `cols` and `rows` of the configuration are valid (virtio 1.x, 5.3.3;
/// virtio-bindings has no console header).
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
/// Index of receiveq (port 0 input, host → guest).
pub const RX_QUEUE: u16 = 0;
/// Index of transmitq (port 0 output, guest → host).
pub const TX_QUEUE: u16 = 1;

/// Offsets in `struct virtio_console_config`.
pub mod config_offset {
    /// le16: columns of the console (valid with VIRTIO_CONSOLE_F_SIZE).
    pub const COLS: usize = 0;
    /// le16: rows of the console.
    pub const ROWS: usize = 2;
    /// le32: most ports (meaningful with MULTIPORT; 1 here).
    pub const MAX_NR_PORTS: usize = 4;
    /// le32: emergency write register (meaningful with EMERG_WRITE, not offered).
    pub const EMERG_WR: usize = 8;
    /// Bytes of the structure.
    pub const LEN: usize = 12;
}

/// Where the guest's console output goes; shared with the worker, and kept across resets.
pub type ConsoleOutput = Arc<Mutex<Box<dyn Write + Send>>>;

/// Where guest input comes from: a pollable file (a terminal, a pipe), read by the worker when
/// epoll says it is readable. It is never set non-blocking (that would change the terminal for
/// the shell too).
pub type ConsoleInput = Arc<File>;

/// The console's size as the guest sees it (`struct winsize` columns and rows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// What the device and its [`ConsoleResizer`]s share: the configuration space, and the
/// interrupt to raise when it changes (set while the driver runs with SIZE acked).
#[derive(Default)]
struct SizeState {
    config: [u8; config_offset::LEN],
    notify: Option<Arc<dyn VirtioInterrupt>>,
}

fn lock(state: &Mutex<SizeState>) -> std::sync::MutexGuard<'_, SizeState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Changes the console size the guest sees (the host terminal was resized), from any thread.
#[derive(Clone)]
pub struct ConsoleResizer(Arc<Mutex<SizeState>>);

impl ConsoleResizer {
    /// Sets columns and rows; a driver that acked SIZE gets a configuration interrupt (Linux
    /// then resizes hvc0). Returns whether anything changed.
    pub fn resize(&self, size: ConsoleSize) -> bool {
        let mut state = lock(&self.0);
        let mut config = state.config;
        config[config_offset::COLS..][..2].copy_from_slice(&size.cols.to_le_bytes());
        config[config_offset::ROWS..][..2].copy_from_slice(&size.rows.to_le_bytes());
        if config == state.config {
            return false;
        }
        state.config = config;
        if let Some(interrupt) = &state.notify {
            interrupt.signal_config();
        }
        true
    }
}

/// A virtio-console device (type 3) with one port.
pub struct VirtioConsole {
    name: String,
    output: ConsoleOutput,
    input: Option<ConsoleInput>,
    state: Arc<Mutex<SizeState>>,
    queue_sizes: [u16; 2],
    worker: Option<EventWorker>,
    rx_fallback: std::time::Duration,
}

impl VirtioConsole {
    /// A console named `name` writing guest output to `output`, feeding the guest from `input`
    /// (none: the guest reads nothing), reporting `size` to the guest.
    pub fn new(
        name: impl Into<String>,
        output: Box<dyn Write + Send>,
        input: Option<File>,
        size: ConsoleSize,
    ) -> Self {
        let mut state = SizeState::default();
        state.config[config_offset::MAX_NR_PORTS..][..4].copy_from_slice(&1u32.to_le_bytes());
        let console = Self {
            name: name.into(),
            output: Arc::new(Mutex::new(output)),
            input: input.map(Arc::new),
            state: Arc::new(Mutex::new(state)),
            queue_sizes: [QUEUE_SIZE; 2],
            worker: None,
            rx_fallback: worker::RX_FALLBACK,
        };
        console.resizer().resize(size);
        console
    }

    /// Shortens the wait for a guest that never transmits (for tests).
    #[cfg(test)]
    pub(crate) fn with_rx_fallback(mut self, wait: std::time::Duration) -> Self {
        self.rx_fallback = wait;
        self
    }

    /// A handle that changes the size the guest sees.
    pub fn resizer(&self) -> ConsoleResizer {
        ConsoleResizer(self.state.clone())
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | 1 << VIRTIO_CONSOLE_F_SIZE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = lock(&self.state).config;
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
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
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let missing = |queue| ActivateError::MissingQueue {
            device: self.name.clone(),
            queue,
        };
        let rx = rx.ok_or_else(|| missing(RX_QUEUE))?;
        let tx = tx.ok_or_else(|| missing(TX_QUEUE))?;
        let port = Port {
            output: self.output.clone(),
            input: self.input.clone(),
            rx_fallback: self.rx_fallback,
        };
        let worker =
            ConsoleWorker::spawn(self.name.clone(), mem, [rx, tx], interrupt.clone(), port)
                .map_err(|source| ActivateError::Worker {
                    device: self.name.clone(),
                    source,
                })?;
        self.worker = Some(worker);
        if acked_features & 1 << VIRTIO_CONSOLE_F_SIZE != 0 {
            lock(&self.state).notify = Some(interrupt);
        }
        Ok(())
    }

    fn reset(&mut self) {
        lock(&self.state).notify = None;
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

#[cfg(test)]
mod tests;
