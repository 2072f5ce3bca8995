//! Queue count and size, and stopping a worker whose ring never runs dry.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::virtio::pci::layout::common;

use super::*;
use crate::virtio::test_driver::QSIZE;

const AVAIL: u64 = 0x2000;

#[test]
fn num_queues_and_queue_size_reach_the_driver() {
    let image = TempImage::new(&pattern(4));
    let cfg = BlockConfig {
        num_queues: 4,
        queue_size: 128,
        ..config(&image, false)
    };
    let mut d = Driver::new(Box::new(VirtioBlock::open(&cfg).unwrap()));
    assert_ne!(d.device_features() & 1 << VIRTIO_BLK_F_MQ, 0);
    assert_eq!(
        d.read(DEVICE_CFG_OFFSET + config_offset::NUM_QUEUES as u64, 2),
        4
    );
    assert_eq!(d.read(common::NUM_QUEUES, 2), 4);
    for q in 0..4 {
        d.write(common::QUEUE_SELECT, 2, q);
        assert_eq!(d.read(common::QUEUE_SIZE, 2), 128, "queue {q}");
    }
    drop(d);
    // One queue: no MQ feature.
    let mut d = started(&image, false);
    assert_eq!(d.device_features() & 1 << VIRTIO_BLK_F_MQ, 0);
}

#[test]
fn bad_queue_counts_and_sizes_are_refused() {
    let image = TempImage::new(&pattern(4));
    for (num_queues, queue_size) in [(0, 256), (MAX_QUEUES + 1, 256), (1, 100), (1, 0)] {
        let cfg = BlockConfig {
            num_queues,
            queue_size,
            ..config(&image, false)
        };
        let e = VirtioBlock::open(&cfg).err().unwrap();
        assert!(matches!(e, BlockError::Queues { .. }), "{e}");
    }
}

/// A driver that refills the ring as fast as the device drains it (a vCPU making the same
/// request available again each time one completes, so the ring never runs dry) must not
/// keep a reset, which joins the worker, from returning. The refill happens in the worker's
/// own after-request hook, so the ring is never empty whatever the scheduler does.
#[test]
fn reset_returns_while_the_driver_keeps_the_ring_full() {
    let image = TempImage::new(&pattern(4));
    let mut blk = VirtioBlock::open(&config(&image, false)).unwrap();
    let mem_slot: Arc<std::sync::OnceLock<Arc<GuestMemory>>> = Arc::default();
    let avail = Arc::new(AtomicU16::new(1));
    let served = Arc::new(AtomicU64::new(0));
    {
        let (mem_slot, avail, served) = (mem_slot.clone(), avail.clone(), served.clone());
        blk.set_after_request(Box::new(move || {
            served.fetch_add(1, Ordering::Relaxed);
            let mem = mem_slot.get().unwrap();
            let idx = avail.fetch_add(1, Ordering::Relaxed);
            let slot = AVAIL + 4 + u64::from(idx % QSIZE) * 2;
            mem.write_obj(0u16, GuestAddress(slot)).unwrap();
            mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
                .unwrap();
        }));
    }
    let mut d = Driver::new(Box::new(blk));
    mem_slot.set(d.mem.clone()).unwrap();
    d.start();
    header(&d, VIRTIO_BLK_T_IN, 0);
    d.submit(&[
        Buf(HEADER, 16, false),
        Buf(BUFFER, 512, true),
        Buf(STATUS, 1, true),
    ]);
    // From now on every completion makes the next request available.
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.load(Ordering::Relaxed) < 1000 {
        assert!(
            Instant::now() < deadline,
            "the device is not serving requests"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (done_tx, done_rx) = mpsc::channel();
    let resetter = std::thread::spawn(move || {
        d.write(common::DEVICE_STATUS, 1, 0);
        done_tx.send(()).unwrap();
        d
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the reset did not return within 10 s while the ring stayed full"
    );
    let d = resetter.join().unwrap();
    assert_eq!(d.mem_read(BUFFER, 512), pattern(1), "the reads were served");
    // Stopped for good: nothing is served after the reset returned.
    let after_reset = served.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(served.load(Ordering::Relaxed), after_reset);
}
