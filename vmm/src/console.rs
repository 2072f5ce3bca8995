//! Host stdin → guest COM1 input, the terminal's raw mode while the guest owns it, the
//! virtio console's size following the terminal's, the event-loop subscriber that notices
//! the VM has stopped, and the watch that re-raises a COM1 interrupt whose edge was lost.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;

use devices::serial::SerialDevice;

/// Puts stdin in raw mode (when it is a terminal) and restores canonical mode when dropped, so
/// keystrokes such as Ctrl-C reach the guest and the shell is usable after viaduct exits.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a TTY.
    pub fn enter() -> Self {
        let stdin = io::stdin();
        // SAFETY: isatty only inspects the descriptor.
        let is_tty = unsafe { libc::isatty(stdin.as_raw_fd()) } == 1;
        let active = is_tty && stdin.lock().set_raw_mode().is_ok();
        Self { active }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            if let Err(e) = io::stdin().lock().set_canon_mode() {
                warn!("could not restore the terminal: {e}");
            }
        }
    }
}

const STDIN_TOKEN: u32 = 0;
const DRAINED_TOKEN: u32 = 1;

/// Forwards stdin to the UART, holding back what the guest's FIFO cannot take until the guest
/// drains it (stdin is not read meanwhile, so nothing is dropped).
pub struct StdinForwarder {
    serial: Arc<Mutex<SerialDevice>>,
    input_drained: EventFd,
    pending: VecDeque<u8>,
    stdin_open: bool,
    stdin_watched: bool,
}

impl StdinForwarder {
    /// A forwarder into `serial`; `input_drained` is the UART's "FIFO empty" event.
    pub fn new(serial: Arc<Mutex<SerialDevice>>, input_drained: EventFd) -> Self {
        Self {
            serial,
            input_drained,
            pending: VecDeque::new(),
            stdin_open: true,
            stdin_watched: false,
        }
    }

    fn stdin_events() -> Events {
        Events::with_data_raw(io::stdin().as_raw_fd(), STDIN_TOKEN, EventSet::IN)
    }

    fn flush_pending(&mut self) {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let chunk = front.to_vec();
            let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
            match serial.enqueue_input(&chunk) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) => {
                    warn!("serial input: {e}");
                    let devices::serial::SerialError::Interrupt { accepted, .. } = e;
                    self.pending.drain(..accepted);
                    break;
                }
            }
        }
    }

    fn update_stdin_watch(&mut self, ops: &mut EventOps) {
        let want = self.stdin_open && self.pending.is_empty();
        if want != self.stdin_watched {
            let res = if want {
                ops.add(Self::stdin_events())
            } else {
                ops.remove(Self::stdin_events())
            };
            match res {
                Ok(()) => self.stdin_watched = want,
                Err(e) => {
                    debug!("stdin cannot be watched ({e:?}); guest input disabled");
                    self.stdin_open = false;
                }
            }
        }
    }

    fn read_stdin(&mut self) {
        let mut buf = [0u8; 64];
        match io::stdin().lock().read(&mut buf) {
            Ok(0) => {
                debug!("stdin closed; no more guest input");
                self.stdin_open = false;
            }
            Ok(n) => self.pending.extend(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("reading stdin failed ({e}); no more guest input");
                self.stdin_open = false;
            }
        }
    }
}

impl MutEventSubscriber for StdinForwarder {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STDIN_TOKEN => {
                if events.event_set().intersects(EventSet::IN) {
                    self.read_stdin();
                } else {
                    self.stdin_open = false;
                }
            }
            _ => {
                let _ = self.input_drained.read();
            }
        }
        self.flush_pending();
        self.update_stdin_watch(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.input_drained,
            DRAINED_TOKEN,
            EventSet::IN,
        )) {
            warn!("cannot watch the serial FIFO ({e:?}); guest input disabled");
            return;
        }
        self.update_stdin_watch(ops);
    }
}

/// Looks at COM1 every [`LostInterruptWatch::PERIOD`] from the event loop and raises its
/// interrupt again when the guest left an enabled condition unacknowledged for a whole period
/// (`SerialDevice::reassert_unserviced_interrupt`): without it one lost edge silences the
/// guest's console for the rest of its life.
pub struct LostInterruptWatch {
    serial: Arc<Mutex<SerialDevice>>,
    next: Instant,
    raised: u64,
}

impl LostInterruptWatch {
    /// How often COM1 is looked at: long enough that a guest handling its interrupts is never
    /// disturbed, short enough that a lost edge costs its console half a second.
    pub const PERIOD: Duration = Duration::from_millis(500);

    /// A watch over `serial`.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self {
            serial,
            next: Instant::now() + Self::PERIOD,
            raised: 0,
        }
    }

    /// Called after every turn of the event loop; looks at COM1 once the period is over.
    pub fn tick(&mut self) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + Self::PERIOD;
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        match serial.reassert_unserviced_interrupt() {
            Ok(false) => {}
            Ok(true) => {
                self.raised += 1;
                if self.raised == 1 {
                    log::info!(
                        "serial: the guest left a COM1 interrupt unacknowledged for {:?}; \
                         raised it again (its edge was lost; later ones are counted at exit)",
                        Self::PERIOD
                    );
                }
            }
            Err(e) => devices::warn_limited!("serial: cannot raise interrupt: {e}"),
        }
    }

    /// Says at exit how many interrupts had to be raised again.
    pub fn report(self) {
        if self.raised > 0 {
            log::info!(
                "serial: {} COM1 interrupt(s) raised again after the guest left them \
                 unacknowledged",
                self.raised
            );
        }
    }
}

/// Sets a flag once the VM's exit eventfd fires.
pub struct ExitWatcher {
    event: EventFd,
    done: Arc<AtomicBool>,
}

impl ExitWatcher {
    /// Watches `event` (a clone of the exit notifier's eventfd) and raises `done`.
    pub fn new(event: EventFd, done: Arc<AtomicBool>) -> Self {
        Self { event, done }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        self.done.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            warn!("cannot watch the exit event ({e:?})");
            self.done.store(true, Ordering::Release);
        }
    }
}

/// On SIGWINCH (its eventfd), gives the virtio console the terminal's new size.
pub struct ResizeWatcher {
    event: EventFd,
    resizer: devices::virtio::console::ConsoleResizer,
}

impl ResizeWatcher {
    /// Watches `event` (written by the SIGWINCH handler) for `resizer`'s console.
    pub fn new(event: EventFd, resizer: devices::virtio::console::ConsoleResizer) -> Self {
        Self { event, resizer }
    }
}

impl MutEventSubscriber for ResizeWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        let size = crate::console_rng::terminal_size();
        if self.resizer.resize(size) {
            debug!(
                "console resized to {} columns, {} rows",
                size.cols, size.rows
            );
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            warn!("cannot watch terminal resizes ({e:?}); the guest console keeps its size");
        }
    }
}
