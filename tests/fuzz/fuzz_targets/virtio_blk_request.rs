//! virtio-blk request parsing and I/O (devices/src/virtio/block/request.rs) on a guest-memory
//! image: the input's first bytes pick the queue size (1..=256), the ring indices and whether
//! the disk is read-only; the rest is 64 KiB of guest RAM holding the descriptor table, the
//! available and used rings (packed from address 0) and the buffers, so descriptors, chains,
//! indirect tables, request headers and sectors are all the fuzzer's. The backing is a 1 MiB
//! memfd. Every available chain is served as the worker serves it; nothing may panic.
#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use devices::virtio::block::fuzzing::serve_queue;
use devices::virtio::block::VirtioBlock;
use devices::virtio::GuestMemory;
use libfuzzer_sys::fuzz_target;
use viaduct_fuzz::Input;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const RAM: usize = 64 << 10;
const DISK: u64 = 1 << 20;

/// The 1 MiB disk image, created once (its contents carry over between inputs).
fn disk() -> &'static File {
    static DISK_FILE: OnceLock<File> = OnceLock::new();
    DISK_FILE.get_or_init(|| {
        // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"viaduct-fuzz-disk".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(DISK).expect("size the memfd");
        file
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = 1u16 << (input.u8() % 9);
    let next_avail = input.u16();
    let next_used = input.u16();
    let flags = input.u8();
    let file = disk().try_clone().expect("dup the memfd");
    let Ok(blk) = VirtioBlock::from_file(file, "fuzz".into(), flags & 1 != 0, Some("fuzz-serial"))
    else {
        return;
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest memory");
    let image = input.rest();
    mem.write_slice(&image[..image.len().min(RAM)], GuestAddress(0))
        .expect("fill guest memory");

    let desc = 0u64;
    let avail = u64::from(size) * 16;
    let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
    let Ok(mut queue) = Queue::new(256) else {
        return;
    };
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    queue.set_next_avail(next_avail);
    queue.set_next_used(next_used);
    queue.set_event_idx(flags & 2 != 0);
    queue.set_ready(true);
    if !queue.is_valid(&mem) {
        return;
    }
    let popped = serve_queue(&blk, &mem, &mut queue);
    assert!(popped <= usize::from(u16::MAX) + 1);
});
