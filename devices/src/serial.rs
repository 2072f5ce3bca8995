//! COM1: a 16550A UART, as a thin port-I/O adapter over `vm_superio::Serial`.
//!
//! vm-superio does the register emulation (and flushes the output writer after every byte, so
//! guest console lines appear as soon as they are written). This module maps bus accesses onto
//! it, raises the interrupt through an [`EventFdTrigger`], and offers the host side a way to
//! feed input without losing bytes when the guest's receive FIFO is full.
//!
//! COM1's IRQ 4 is edge-triggered, and vm-superio raises an edge only when a condition becomes
//! pending, as a real 16550's interrupt line rises. One edge lost on its way to the guest (a
//! masked IOAPIC pin, an injection an emulated platform drops) then leaves the condition
//! pending with no interrupt ever to come, and Linux's 8250 driver, which transmits only from
//! its interrupt handler, stops printing for good: the guest runs on with a dead console.
//! [`SerialDevice::reassert_unserviced_interrupt`], called periodically by the VMM, raises the
//! interrupt again when an enabled condition has stayed pending with no IIR read in between.

use std::io::{self, Write};

use log::{debug, warn};
use vm_superio::serial::{Error as UartError, SerialEvents};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::byte_access::{byte_read, byte_write};
use crate::trigger::EventFdTrigger;

/// Number of I/O ports a 16550 decodes (`base..base + 8`).
pub const SERIAL_PORT_COUNT: u8 = 8;

/// Offset of the Interrupt Identification Register (read side of offset 2).
const IIR_OFFSET: u8 = 2;
/// IER and IIR bits of the two conditions vm-superio raises: (IER enable bit, IIR pending bit).
const RAISED_CONDITIONS: [(u8, u8); 2] = [
    (0x01, 0x04), // received data available
    (0x02, 0x02), // transmitter holding register empty
];

/// Why host input could not be handed to the guest.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The bytes were queued but raising the receive interrupt failed. `accepted` bytes are in
    /// the FIFO already and must not be sent again.
    #[error("queued {accepted} input bytes but could not raise the serial interrupt: {source}")]
    Interrupt {
        /// How many bytes the FIFO took.
        accepted: usize,
        /// The eventfd write error.
        #[source]
        source: io::Error,
    },
}

/// Signals "the guest has drained the receive FIFO" to whoever holds back host input.
///
/// Exists so the VMM can stop reading stdin while the FIFO is full and resume on an event
/// instead of polling.
struct InputDrained(Option<EventFd>);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(evt) = &self.0 {
            // A saturated counter is still readable, so a failed write loses no wake-up.
            let _ = evt.write(1);
        }
    }
}

/// The guest's COM1 console.
///
/// Exists to put a vm-superio 16550 on the [`crate::bus::Bus`]: it decodes single-byte
/// accesses at offsets `0..8` (see [`crate::byte_access`] for everything else) and forwards
/// transmitted bytes to the output writer.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, InputDrained, Box<dyn Write + Send>>,
    /// Whether an output failure has been logged (a guest printing to a broken writer would
    /// otherwise log once per byte).
    output_error_logged: bool,
    /// IIR reads so far: each one acknowledges whatever was pending.
    iir_reads: u64,
    /// What the previous [`SerialDevice::reassert_unserviced_interrupt`] saw: `iir_reads`, and
    /// whether an enabled condition was pending.
    last_check: (u64, bool),
}

impl SerialDevice {
    /// A UART that raises its interrupt by writing to `interrupt` (registered with KVM as an
    /// irqfd) and writes guest output to `out`.
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self::build(interrupt, out, None)
    }

    /// Like [`SerialDevice::new`], and also writes to `input_drained` each time the guest reads
    /// the last byte of the receive FIFO: the moment to retry input that
    /// [`SerialDevice::enqueue_input`] did not accept.
    pub fn with_input_drained_event(
        interrupt: EventFd,
        out: Box<dyn Write + Send>,
        input_drained: EventFd,
    ) -> Self {
        Self::build(interrupt, out, Some(input_drained))
    }

    fn build(interrupt: EventFd, out: Box<dyn Write + Send>, drained: Option<EventFd>) -> Self {
        Self {
            uart: Serial::with_events(EventFdTrigger::new(interrupt), InputDrained(drained), out),
            output_error_logged: false,
            iir_reads: 0,
            last_check: (0, false),
        }
    }

    /// Whether an interrupt condition the guest enabled is pending (not yet acknowledged by an
    /// IIR read).
    fn enabled_condition_pending(&self) -> bool {
        let state = self.uart.state();
        RAISED_CONDITIONS.iter().any(|&(enable, pending)| {
            state.interrupt_enable & enable != 0 && state.interrupt_identification & pending != 0
        })
    }

    /// Raises the interrupt again if an enabled condition was pending at the previous call, is
    /// still pending, and the guest has not read IIR since: its edge was lost. Returns whether
    /// it raised. A guest that merely has not got round to it yet gets one spurious interrupt,
    /// which its handler answers by reading IIR, as for any other.
    pub fn reassert_unserviced_interrupt(&mut self) -> Result<bool, io::Error> {
        let pending = self.enabled_condition_pending();
        let (reads_then, pending_then) = self.last_check;
        self.last_check = (self.iir_reads, pending);
        if !(pending && pending_then && reads_then == self.iir_reads) {
            return Ok(false);
        }
        // A saturated counter (WouldBlock) is still a pending edge for KVM.
        match self.uart.interrupt_evt().event().write(1) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(true),
        }
    }

    /// The eventfd the UART raises its interrupt on.
    pub fn interrupt_event(&self) -> &EventFd {
        self.uart.interrupt_evt().event()
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest and raises the receive interrupt if the guest enabled
    /// it. Returns how many leading bytes of `bytes` were accepted; the caller keeps the rest
    /// and retries later. 0 means the FIFO is full, or the guest has the UART in loopback mode
    /// (where external input is not received).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return Ok(0);
        }
        // vm-superio takes min(capacity, len) bytes, unless in loopback mode (takes none).
        let accepted = self.uart.fifo_capacity().min(bytes.len());
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => Ok(n),
            Err(UartError::FullFifo) => Ok(0),
            Err(UartError::Trigger(source)) => Err(SerialError::Interrupt { accepted, source }),
            // enqueue_raw_bytes does no output I/O; treat it like a trigger failure anyway.
            Err(UartError::IOError(source)) => Err(SerialError::Interrupt { accepted, source }),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (uart, iir_reads) = (&mut self.uart, &mut self.iir_reads);
        byte_read(offset, data, SERIAL_PORT_COUNT, |o| {
            if o == IIR_OFFSET {
                *iir_reads += 1;
            }
            uart.read(o)
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some((offset, value)) = byte_write(offset, data) else {
            debug!(
                "serial: ignoring {}-byte write at offset {offset:#x}",
                data.len()
            );
            return;
        };
        if offset >= SERIAL_PORT_COUNT {
            return;
        }
        match self.uart.write(offset, value) {
            Ok(()) => {}
            Err(UartError::IOError(e)) => {
                if !self.output_error_logged {
                    warn!("serial: guest output is being lost: {e}");
                    self.output_error_logged = true;
                }
            }
            Err(UartError::Trigger(e)) => warn!("serial: cannot raise interrupt: {e}"),
            Err(UartError::FullFifo) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const RBR_THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LSR_DATA_READY: u8 = 0x01;
    const MCR: u64 = 4;
    const MCR_LOOP: u8 = 0x10;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Fixture {
        dev: SerialDevice,
        out: SharedBuf,
        irq: EventFd,
    }

    fn fixture() -> Fixture {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        Fixture { dev, out, irq }
    }

    fn read_byte(dev: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let mut f = fixture();
        for &b in b"hi\n" {
            f.dev.write(RBR_THR, &[b]);
        }
        assert_eq!(*f.out.0.lock().unwrap(), b"hi\n");
        // THR-empty interrupt not enabled: no interrupt.
        assert!(f.irq.read().is_err());
    }

    #[test]
    fn enabling_thr_empty_interrupt_raises_it() {
        let mut f = fixture();
        f.dev.write(IER, &[IER_THRE]);
        assert_eq!(f.irq.read().unwrap(), 1);
        assert_eq!(read_byte(&mut f.dev, IER), IER_THRE);
        // interrupt_event() is the eventfd the VMM passed in (same counter).
        f.dev.interrupt_event().write(3).unwrap();
        assert_eq!(f.irq.read().unwrap(), 3);
    }

    #[test]
    fn input_is_readable_and_interrupts_when_enabled() {
        let mut f = fixture();
        f.dev.write(IER, &[IER_RDA]);
        assert!(f.irq.read().is_err(), "nothing pending yet");
        assert_eq!(f.dev.enqueue_input(b"ab").unwrap(), 2);
        assert_eq!(f.irq.read().unwrap(), 1);
        assert_eq!(read_byte(&mut f.dev, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(read_byte(&mut f.dev, RBR_THR), b'a');
        assert_eq!(read_byte(&mut f.dev, RBR_THR), b'b');
        assert_eq!(read_byte(&mut f.dev, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn input_without_interrupt_enabled_is_still_queued() {
        let mut f = fixture();
        assert_eq!(f.dev.enqueue_input(b"x").unwrap(), 1);
        assert!(f.irq.read().is_err());
        assert_eq!(read_byte(&mut f.dev, RBR_THR), b'x');
        assert_eq!(f.dev.enqueue_input(b"").unwrap(), 0);
    }

    #[test]
    fn full_fifo_accepts_a_short_count_then_none() {
        let mut f = fixture();
        let cap = f.dev.fifo_capacity();
        assert_eq!(cap, 64);
        let input = vec![b'z'; cap + 10];
        assert_eq!(f.dev.enqueue_input(&input).unwrap(), cap);
        assert_eq!(f.dev.fifo_capacity(), 0);
        assert_eq!(f.dev.enqueue_input(b"more").unwrap(), 0);
        read_byte(&mut f.dev, RBR_THR);
        assert_eq!(f.dev.enqueue_input(b"more").unwrap(), 1);
    }

    #[test]
    fn loopback_mode_accepts_no_external_input() {
        let mut f = fixture();
        f.dev.write(MCR, &[MCR_LOOP]);
        assert_eq!(f.dev.enqueue_input(b"x").unwrap(), 0);
    }

    #[test]
    fn draining_the_fifo_signals_the_host() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::with_input_drained_event(
            irq,
            Box::new(io::sink()),
            drained.try_clone().unwrap(),
        );
        dev.enqueue_input(b"ab").unwrap();
        read_byte(&mut dev, RBR_THR);
        assert!(drained.read().is_err(), "one byte still queued");
        read_byte(&mut dev, RBR_THR);
        assert_eq!(drained.read().unwrap(), 1);
    }

    #[test]
    fn odd_sized_accesses_touch_nothing() {
        let mut f = fixture();
        f.dev.enqueue_input(b"q").unwrap();
        let mut two = [0u8; 2];
        f.dev.read(RBR_THR, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        let mut none = [0u8; 0];
        f.dev.read(RBR_THR, &mut none);
        f.dev.write(RBR_THR, b"ab");
        f.dev.write(RBR_THR, &[]);
        f.dev.write(IER, &[IER_THRE, 0]);
        f.dev.write(8, b"c");
        f.dev.write(u64::MAX, b"c");
        let mut one = [0u8; 1];
        f.dev.read(u64::MAX, &mut one);
        assert_eq!(one, [0xff]);
        assert!(f.out.0.lock().unwrap().is_empty());
        assert!(f.irq.read().is_err());
        // The queued byte was not consumed by the wide read.
        assert_eq!(read_byte(&mut f.dev, RBR_THR), b'q');
    }

    #[test]
    fn an_interrupt_left_pending_without_an_iir_read_is_raised_again() {
        let mut f = fixture();
        assert!(
            !f.dev.reassert_unserviced_interrupt().unwrap(),
            "nothing pending"
        );
        // THR empty and enabled: vm-superio raises one edge, which the guest never sees.
        f.dev.write(IER, &[IER_THRE]);
        assert_eq!(f.irq.read().unwrap(), 1);
        f.dev.write(RBR_THR, b"a");
        assert!(f.irq.read().is_err(), "vm-superio raises no second edge");
        // First look: pending, but it may just be on its way.
        assert!(!f.dev.reassert_unserviced_interrupt().unwrap());
        assert!(f.irq.read().is_err());
        // Still pending and no IIR read since: raised again.
        assert!(f.dev.reassert_unserviced_interrupt().unwrap());
        assert_eq!(f.irq.read().unwrap(), 1);
        // The guest's handler reads IIR: acknowledged, nothing more to raise.
        read_byte(&mut f.dev, IIR);
        assert!(!f.dev.reassert_unserviced_interrupt().unwrap());
        assert!(!f.dev.reassert_unserviced_interrupt().unwrap());
        assert!(f.irq.read().is_err());
    }

    #[test]
    fn a_serviced_or_disabled_interrupt_is_not_raised_again() {
        let mut f = fixture();
        f.dev.write(IER, &[IER_THRE]);
        assert!(!f.dev.reassert_unserviced_interrupt().unwrap());
        // The guest acknowledges and transmits again between two looks: each new condition
        // came with its own edge, so nothing was lost.
        read_byte(&mut f.dev, IIR);
        f.dev.write(RBR_THR, b"b");
        assert!(!f.dev.reassert_unserviced_interrupt().unwrap());
        // Pending but no longer enabled (the driver stopped transmitting): not an interrupt.
        f.dev.write(IER, &[0]);
        assert!(!f.dev.reassert_unserviced_interrupt().unwrap());
        assert!(!f.dev.reassert_unserviced_interrupt().unwrap());
        // Received data, enabled, never acknowledged: raised on the second look.
        let _ = f.irq.read();
        f.dev.write(IER, &[IER_RDA]);
        f.dev.enqueue_input(b"x").unwrap();
        assert_eq!(f.irq.read().unwrap(), 1);
        assert!(!f.dev.reassert_unserviced_interrupt().unwrap());
        assert!(f.dev.reassert_unserviced_interrupt().unwrap());
    }

    #[test]
    fn output_errors_are_survived() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("gone"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(Broken));
        dev.write(IER, &[IER_THRE]);
        assert_eq!(irq.read().unwrap(), 1);
        // Reading IIR acknowledges the THR-empty interrupt so the next byte raises it again.
        read_byte(&mut dev, 2);
        dev.write(RBR_THR, b"a");
        dev.write(RBR_THR, b"b");
        assert!(dev.output_error_logged);
        assert_eq!(
            irq.read().unwrap(),
            1,
            "THR-empty still raised despite the lost byte"
        );
    }
}
