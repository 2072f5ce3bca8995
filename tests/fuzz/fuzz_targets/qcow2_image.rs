//! Disk images as viaduct opens them (devices/src/virtio/block: format detection, the refusals,
//! imago's qcow2 driver) and then serves them to a guest: the input's first bytes pick
//! read-only or not, auto-detection or `image_type=qcow2`, and the sectors of one read and one
//! write request; the rest is the image file (seeds: small qcow2 images with 512-byte clusters,
//! tests/fuzz/seeds/qcow2_image). An image viaduct opens gets a read and (read-write) a write
//! through the block worker's request path, so its header, L1/L2 tables and refcounts are all
//! the fuzzer's. Opening must fail with an error or succeed, serving must complete each
//! request with a virtio status; nothing may panic or hang.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use devices::virtio::block::fuzzing::serve_queue;
use devices::virtio::block::{BlockConfig, ImageType, VirtioBlock, QUEUE_SIZE};
use devices::virtio::GuestMemory;
use libfuzzer_sys::fuzz_target;
use viaduct_fuzz::Input;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const RAM: usize = 64 << 10;
/// Guest-memory layout: the ring (4 entries) at 0, each request's header, data and status.
const AVAIL: u64 = 4 * 16;
const USED: u64 = 0x100;
const REQUEST: [(u64, u64, u64); 2] = [(0x1000, 0x2000, 0x3000), (0x4000, 0x5000, 0x6000)];
const DATA_LEN: u32 = 4096;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// Where the image is written for each input (tmpfs, one file per fuzzing process).
fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::var_os("XDG_RUNTIME_DIR").map_or("/dev/shm".into(), PathBuf::from);
        dir.join(format!("viaduct-fuzz-qcow2-{}", std::process::id()))
    })
}

fn descriptor(mem: &GuestMemory, index: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let at = index * 16;
    mem.write_obj(addr, GuestAddress(at)).expect("desc addr");
    mem.write_obj(len, GuestAddress(at + 8)).expect("desc len");
    mem.write_obj(flags, GuestAddress(at + 12))
        .expect("desc flags");
    mem.write_obj(next, GuestAddress(at + 14))
        .expect("desc next");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let sectors = [input.u64() % (1 << 24), input.u64() % (1 << 24)];
    let image = input.rest();
    let path = image_path();
    let mut file = std::fs::File::create(path).expect("create the image file");
    file.write_all(image).expect("write the image file");
    drop(file);

    let readonly = flags & 1 != 0;
    let config = BlockConfig {
        path: path.clone(),
        image_type: (flags & 2 != 0).then_some(ImageType::Qcow2),
        backing_files: false,
        num_queues: 1,
        queue_size: QUEUE_SIZE,
        readonly,
        id: None,
        serial: None,
    };
    let Ok(blk) = VirtioBlock::open(&config) else {
        return;
    };

    // A read of `sectors[0]`, then (read-write only) a write of `sectors[1]`.
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest memory");
    let requests = if readonly { 1 } else { 2 };
    for (i, &(header, buffer, status)) in REQUEST.iter().enumerate().take(requests) {
        let kind: u32 = if i == 0 { 0 } else { 1 }; // VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
        mem.write_obj(kind, GuestAddress(header)).expect("type");
        mem.write_obj(sectors[i], GuestAddress(header + 8))
            .expect("sector");
        mem.write_obj(0xffu8, GuestAddress(status)).expect("status");
        let first = (i * 3) as u16;
        let data_flags = if i == 0 { VRING_DESC_F_WRITE } else { 0 };
        descriptor(
            &mem,
            u64::from(first),
            header,
            16,
            VRING_DESC_F_NEXT,
            first + 1,
        );
        descriptor(
            &mem,
            u64::from(first + 1),
            buffer,
            DATA_LEN,
            data_flags | VRING_DESC_F_NEXT,
            first + 2,
        );
        descriptor(&mem, u64::from(first + 2), status, 1, VRING_DESC_F_WRITE, 0);
        mem.write_obj(first, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .expect("avail ring");
    }
    mem.write_obj(requests as u16, GuestAddress(AVAIL + 2))
        .expect("avail idx");

    let Ok(mut queue) = Queue::new(8) else {
        return;
    };
    queue.set_size(8);
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(&mem));
    assert_eq!(serve_queue(&blk, &mem, &mut queue), requests);
    for &(_, _, status) in REQUEST.iter().take(requests) {
        let s: u8 = mem.read_obj(GuestAddress(status)).expect("status");
        assert!(s <= 2, "request completed with status {s}");
    }
});
