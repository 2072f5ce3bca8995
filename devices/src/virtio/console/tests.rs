//! Tests of [`super::VirtioConsole`], driven through the virtio-pci transport like a guest
//! driver: receiveq is queue 0, transmitq queue 1.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pci::device::PciDevice;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::pci::layout::DEVICE_CFG_OFFSET;
use crate::virtio::status;
use crate::virtio::test_driver::{Buf, Driver, DATA};

/// An output the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Waits until `len` bytes arrived; returns them.
    fn wait_for(&self, len: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.0.lock().unwrap().clone();
            if got.len() >= len {
                return got;
            }
            assert!(Instant::now() < deadline, "only {got:?} arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

struct Console {
    d: Driver,
    out: Captured,
    /// The host end of the input: what is written here reaches the guest.
    host: Option<UnixStream>,
}

/// A started console; without a transmission, input waits `fallback` after the first
/// receive buffers.
fn console_with(with_input: bool, fallback: Duration) -> Console {
    let out = Captured::default();
    let (host, input) = if with_input {
        let (a, b) = UnixStream::pair().unwrap();
        (Some(a), Some(File::from(OwnedFd::from(b))))
    } else {
        (None, None)
    };
    let dev = VirtioConsole::new(
        "console",
        Box::new(out.clone()),
        input,
        ConsoleSize {
            cols: 132,
            rows: 43,
        },
    )
    .with_rx_fallback(fallback);
    let mut d = Driver::new(Box::new(dev));
    d.start_queues(2);
    Console { d, out, host }
}

fn console(with_input: bool) -> Console {
    console_with(with_input, Duration::from_millis(20))
}

#[test]
fn config_space_has_the_size_and_one_port_and_features_are_chs() {
    let dev = VirtioConsole::new(
        "console",
        Box::new(std::io::sink()),
        None,
        ConsoleSize { cols: 80, rows: 25 },
    );
    let mut d = Driver::new(Box::new(dev));
    let cfg = |d: &mut Driver, at: usize, len| d.read(DEVICE_CFG_OFFSET + at as u64, len);
    assert_eq!(cfg(&mut d, config_offset::COLS, 2), 80);
    assert_eq!(cfg(&mut d, config_offset::ROWS, 2), 25);
    assert_eq!(cfg(&mut d, config_offset::COLS, 4), 25 << 16 | 80);
    assert_eq!(cfg(&mut d, config_offset::MAX_NR_PORTS, 4), 1);
    assert_eq!(cfg(&mut d, config_offset::EMERG_WR, 4), 0);
    assert_eq!(
        cfg(&mut d, config_offset::LEN, 4),
        0,
        "past the end reads 0"
    );
    // The emergency-write register is not offered: a write changes nothing.
    d.write(DEVICE_CFG_OFFSET + config_offset::COLS as u64, 2, 1);
    assert_eq!(cfg(&mut d, config_offset::COLS, 2), 80);
    let f = d.device_features();
    assert_eq!(f, features::VERSION_1 | 1 << VIRTIO_CONSOLE_F_SIZE);
    // The device id the guest matches: 0x1040 + 3.
    assert_eq!(d.dev.read_config(0) >> 16, 0x1043);
}

#[test]
fn transmitted_buffers_reach_the_output_in_order() {
    let mut c = console(false);
    c.d.mem.write_slice(b"hello, ", GuestAddress(DATA)).unwrap();
    c.d.mem
        .write_slice(b"hvc0\n", GuestAddress(DATA + 0x100))
        .unwrap();
    c.d.submit_to(
        TX_QUEUE,
        &[Buf(DATA, 7, false), Buf(DATA + 0x100, 5, false)],
    );
    let (_, len) = c.d.wait_used_on(TX_QUEUE, 1);
    assert_eq!(len, 0, "transmit buffers are used with length 0");
    assert_eq!(c.out.wait_for(12), b"hello, hvc0\n");
    c.d.mem.write_slice(b"more", GuestAddress(DATA)).unwrap();
    c.d.submit_to(TX_QUEUE, &[Buf(DATA, 4, false)]);
    c.d.wait_used_on(TX_QUEUE, 2);
    assert_eq!(c.out.wait_for(16), b"hello, hvc0\nmore");
}

#[test]
fn input_fills_receive_buffers_and_waits_for_them() {
    let mut c = console(true);
    let mut host = c.host.take().unwrap();
    // Input before the guest posted any buffer waits for one.
    host.write_all(b"typed early").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.d.used_idx_of(RX_QUEUE), 0);
    c.d.submit_to(RX_QUEUE, &[Buf(DATA, 64, true)]);
    let (_, len) = c.d.wait_used_on(RX_QUEUE, 1);
    assert_eq!(len, 11);
    assert_eq!(c.d.mem_read(DATA, 11), b"typed early");
    // More than one buffer holds is split across buffers, in order.
    c.d.submit_to(RX_QUEUE, &[Buf(DATA + 0x100, 4, true)]);
    c.d.submit_to(
        RX_QUEUE,
        &[Buf(DATA + 0x200, 4, true), Buf(DATA + 0x300, 4, true)],
    );
    host.write_all(b"0123456789").unwrap();
    let (_, len) = c.d.wait_used_on(RX_QUEUE, 3);
    assert_eq!(len, 6);
    assert_eq!(c.d.mem_read(DATA + 0x100, 4), b"0123");
    assert_eq!(c.d.mem_read(DATA + 0x200, 4), b"4567");
    assert_eq!(c.d.mem_read(DATA + 0x300, 2), b"89");
}

#[test]
fn input_waits_until_the_guest_has_transmitted() {
    // Linux drops input that arrives before its port is set up, which the first
    // transmission proves; the fallback is out of reach here.
    let mut c = console_with(true, Duration::from_secs(60));
    let mut host = c.host.take().unwrap();
    host.write_all(b"early").unwrap();
    c.d.submit_to(RX_QUEUE, &[Buf(DATA, 64, true)]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.d.used_idx_of(RX_QUEUE),
        0,
        "input given before any output"
    );
    c.d.mem
        .write_slice(b"$ ", GuestAddress(DATA + 0x100))
        .unwrap();
    let sent = Instant::now();
    c.d.submit_to(TX_QUEUE, &[Buf(DATA + 0x100, 2, false)]);
    let (_, len) = c.d.wait_used_on(RX_QUEUE, 1);
    assert!(
        sent.elapsed() >= super::worker::TX_GRACE,
        "{:?}",
        sent.elapsed()
    );
    assert_eq!((len, c.d.mem_read(DATA, 5)), (5, b"early".to_vec()));
    assert_eq!(c.out.wait_for(2), b"$ ");
}

#[test]
fn input_reaches_a_guest_that_never_transmits_after_the_fallback() {
    let fallback = Duration::from_millis(300);
    let mut c = console_with(true, fallback);
    let mut host = c.host.take().unwrap();
    host.write_all(b"quiet guest").unwrap();
    let posted = Instant::now();
    c.d.submit_to(RX_QUEUE, &[Buf(DATA, 64, true)]);
    let (_, len) = c.d.wait_used_on(RX_QUEUE, 1);
    assert!(posted.elapsed() >= fallback, "{:?}", posted.elapsed());
    assert_eq!(len, 11);
}

#[test]
fn malformed_chains_complete_and_the_console_keeps_working() {
    let mut c = console(true);
    let mut host = c.host.take().unwrap();
    // Transmit buffer outside guest memory: used, nothing written out.
    c.d.submit_to(TX_QUEUE, &[Buf(1 << 40, 16, false)]);
    assert_eq!(c.d.wait_used_on(TX_QUEUE, 1).1, 0);
    // A receive "buffer" the device may not write, and one outside memory: completed empty,
    // the input stays for the next good buffer.
    c.d.submit_to(RX_QUEUE, &[Buf(DATA, 16, false)]);
    host.write_all(b"kept").unwrap();
    assert_eq!(c.d.wait_used_on(RX_QUEUE, 1).1, 0);
    c.d.submit_to(RX_QUEUE, &[Buf(1 << 40, 16, true)]);
    assert_eq!(c.d.wait_used_on(RX_QUEUE, 2).1, 0);
    c.d.submit_to(RX_QUEUE, &[Buf(DATA + 0x100, 16, true)]);
    assert_eq!(c.d.wait_used_on(RX_QUEUE, 3).1, 4);
    assert_eq!(c.d.mem_read(DATA + 0x100, 4), b"kept");
    c.d.mem.write_slice(b"ok", GuestAddress(DATA)).unwrap();
    c.d.submit_to(TX_QUEUE, &[Buf(DATA, 2, false)]);
    c.d.wait_used_on(TX_QUEUE, 2);
    assert_eq!(c.out.wait_for(2), b"ok");
}

#[test]
fn closed_input_stops_input_but_not_output() {
    let mut c = console(true);
    drop(c.host.take());
    c.d.submit_to(RX_QUEUE, &[Buf(DATA, 16, true)]);
    c.d.mem
        .write_slice(b"still", GuestAddress(DATA + 0x100))
        .unwrap();
    c.d.submit_to(TX_QUEUE, &[Buf(DATA + 0x100, 5, false)]);
    assert_eq!(c.out.wait_for(5), b"still");
    assert_eq!(c.d.used_idx_of(RX_QUEUE), 0, "no input to give");
}

#[test]
fn a_driver_without_the_transmit_queue_gets_needs_reset() {
    let dev = VirtioConsole::new(
        "console",
        Box::new(std::io::sink()),
        None,
        ConsoleSize::default(),
    );
    let mut d = Driver::new(Box::new(dev));
    let f = d.device_features();
    d.negotiate(f);
    d.setup_queue_at(RX_QUEUE, 1);
    assert_ne!(d.driver_ok() & status::NEEDS_RESET, 0);
}

#[test]
fn a_resize_updates_the_size_and_interrupts_a_driver_that_acked_size() {
    use crate::virtio::pci::layout::ISR_CFG_OFFSET;
    let dev = VirtioConsole::new(
        "console",
        Box::new(std::io::sink()),
        None,
        ConsoleSize::default(),
    );
    let resizer = dev.resizer();
    let mut d = Driver::new(Box::new(dev));
    d.start_queues(2);
    d.read(ISR_CFG_OFFSET, 1);
    assert!(resizer.resize(ConsoleSize {
        cols: 200,
        rows: 50
    }));
    let cfg = |d: &mut Driver, at: usize| d.read(DEVICE_CFG_OFFSET + at as u64, 2);
    assert_eq!(cfg(&mut d, config_offset::COLS), 200);
    assert_eq!(cfg(&mut d, config_offset::ROWS), 50);
    assert_eq!(d.read(ISR_CFG_OFFSET, 1) & 2, 2, "configuration interrupt");
    assert!(
        !resizer.resize(ConsoleSize {
            cols: 200,
            rows: 50
        }),
        "no change"
    );
    assert_eq!(d.read(ISR_CFG_OFFSET, 1), 0);

    // A driver without SIZE sees the new numbers but gets no interrupt.
    let dev = VirtioConsole::new(
        "console",
        Box::new(std::io::sink()),
        None,
        ConsoleSize::default(),
    );
    let resizer = dev.resizer();
    let mut d = Driver::new(Box::new(dev));
    d.negotiate(features::VERSION_1);
    d.setup_queue_at(RX_QUEUE, 1);
    d.setup_queue_at(TX_QUEUE, 2);
    d.driver_ok();
    d.read(ISR_CFG_OFFSET, 1);
    resizer.resize(ConsoleSize { cols: 90, rows: 30 });
    assert_eq!(d.read(ISR_CFG_OFFSET, 1), 0);
    assert_eq!(d.read(DEVICE_CFG_OFFSET, 2), 90);
}
