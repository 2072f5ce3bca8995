//! virtio-net's queue handling (devices/src/virtio/net/worker.rs) on a guest-memory image: the
//! input's first bytes pick each queue's size (1..=64), ring indices and EVENT_IDX, whether
//! there is a control queue, and up to 8 frames waiting on the "tap" (a SOCK_SEQPACKET socket
//! pair, which like a tap keeps frame boundaries); the rest is 64 KiB of guest RAM holding the
//! three rings (receive at 0x0, transmit at 0x1000, control at 0x2000) and every buffer, so
//! descriptors, chains, indirect tables, headers and control commands are all the fuzzer's.
//! One turn of the worker serves the three queues; nothing may panic, at most one interrupt
//! per queue served, and no transmitted frame longer than the chain that carried it.
#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use devices::virtio::net::fuzzing::serve;
use devices::virtio::GuestMemory;
use libfuzzer_sys::fuzz_target;
use viaduct_fuzz::Input;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const RAM: usize = 64 << 10;
const RING_STRIDE: u64 = 0x1000;

/// A queue of `size` entries with its rings packed from `base`, as the input sets it up.
fn queue(input: &mut Input, base: u64, mem: &GuestMemory) -> Option<Queue> {
    let size = 1u16 << (input.u8() % 7);
    let next_avail = input.u16();
    let next_used = input.u16();
    let event_idx = input.u8() & 1 != 0;
    let avail = base + u64::from(size) * 16;
    let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
    let mut q = Queue::new(64).ok()?;
    q.set_size(size);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_next_avail(next_avail);
    q.set_next_used(next_used);
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// A non-blocking SOCK_SEQPACKET pair: (the worker's "tap", its peer).
fn socket_pair(small_buffers: bool) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds into `fds` or fails.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and nothing else owns them.
    let (tap, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if small_buffers {
        // A full "tap" makes the worker put a transmit back and wait for it to drain.
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt reads `size` for its length.
        unsafe {
            libc::setsockopt(
                tap.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    (tap, peer)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let frames = usize::from(input.u8() % 9);
    let lengths: Vec<usize> = (0..frames)
        .map(|_| usize::from(input.u16() % 2048))
        .collect();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest memory");
    let (Some(rx), Some(tx)) = (
        queue(&mut input, 0, &mem),
        queue(&mut input, RING_STRIDE, &mem),
    ) else {
        return;
    };
    let ctrl = queue(&mut input, 2 * RING_STRIDE, &mem).filter(|_| flags & 1 != 0);
    let (tap, peer) = socket_pair(flags & 2 != 0);
    for len in lengths {
        let frame = input.bytes(len);
        // SAFETY: `frame` is valid for its length; a full socket just refuses the frame.
        unsafe { libc::send(peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    }
    let image = input.rest();
    mem.write_slice(&image[..image.len().min(RAM)], GuestAddress(0))
        .expect("fill guest memory");

    let served = serve(Arc::new(mem), tap, rx, tx, ctrl, 1).expect("serve");
    // Each of the five process_* calls of a turn raises at most one interrupt.
    assert!(served.interrupts <= 5, "{} interrupts", served.interrupts);
    // Every transmitted frame fits in the 64 KiB of guest memory it came from.
    let mut buf = vec![0u8; RAM + 1];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        // 0: the worker's end is closed (serve dropped it) and everything was read.
        if n <= 0 {
            break;
        }
        assert!(
            (n as usize) <= RAM,
            "a {n}-byte frame from 64 KiB of guest memory"
        );
    }
});
