//! Tests of [`super::VirtioPciDevice`]: identity, capabilities, negotiation, activation,
//! reset, notifications and MSI-X delivery, driven like a guest driver would.

use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use vm_memory::{Bytes, GuestAddress};

use super::interrupt::ISR_QUEUE;
use super::*;
use crate::virtio::block::VirtioBlock;
use crate::virtio::features;
use crate::virtio::test_driver::{pattern, Buf, Driver, TempImage, DATA, QSIZE};

fn blk_driver(image: &TempImage) -> Driver {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image.0)
        .unwrap();
    let blk = VirtioBlock::from_file(file, "disk0".into(), false, Some("s")).unwrap();
    Driver::new(Box::new(blk))
}

/// Queues a one-sector read of sector 0.
fn read_sector0(d: &mut Driver) {
    d.mem
        .write_obj(VIRTIO_BLK_T_IN, GuestAddress(DATA))
        .unwrap();
    d.mem.write_obj(0u64, GuestAddress(DATA + 8)).unwrap();
    d.submit(&[
        Buf(DATA, 16, false),
        Buf(DATA + 0x1000, 512, true),
        Buf(DATA + 0x100, 1, true),
    ]);
}

/// Every capability as (offset, id, cfg_type for vendor-specific ones).
fn capabilities(dev: &VirtioPciDevice) -> Vec<(usize, u8, u8)> {
    let mut caps = Vec::new();
    let mut ptr = (dev.read_config(0x34 / 4) & 0xff) as usize;
    while ptr != 0 {
        let dw = dev.read_config(ptr / 4);
        caps.push((ptr, dw as u8, (dw >> 24) as u8));
        ptr = ((dw >> 8) & 0xff) as usize;
    }
    caps
}

fn cap_dword(dev: &VirtioPciDevice, cap: usize, at: usize) -> u32 {
    dev.read_config((cap + at) / 4)
}

#[test]
fn config_space_identifies_a_modern_virtio_blk_with_a_64_bit_bar() {
    let image = TempImage::new(&pattern(1));
    let d = blk_driver(&image);
    assert_eq!(d.dev.read_config(0), 0x1042_1af4);
    assert_eq!(
        d.dev.read_config(2),
        0x0100_0001,
        "class 01/00/00, revision 1"
    );
    assert_eq!(d.dev.read_config(0x2c / 4), 0x1100_1af4);
    assert_eq!(d.dev.read_config(0x3c / 4) >> 8 & 0xff, 0, "no INTx pin");
    assert_eq!(
        d.dev.bars(),
        vec![BarSpec::new(VIRTIO_BAR, BAR_SIZE, BarKind::Mem64)]
    );
    assert_eq!(d.dev.read_config(4) & 0b110, 0b100, "64-bit memory BAR");
    assert_eq!(d.dev.name(), "virtio disk0");
}

#[test]
fn a_32_bit_bar_is_available_and_io_bars_are_refused() {
    let image = TempImage::new(&pattern(1));
    let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    let router = Arc::new(crate::virtio::test_driver::FakeRouter::default());
    let blk = || {
        let f = std::fs::File::open(&image.0).unwrap();
        Box::new(VirtioBlock::from_file(f, "d".into(), true, None).unwrap())
    };
    let dev = VirtioPciDevice::new(blk(), mem.clone(), router.clone(), BarKind::Mem32).unwrap();
    assert_eq!(dev.bars()[0].kind, BarKind::Mem32);
    let e = VirtioPciDevice::new(blk(), mem, router, BarKind::Io)
        .err()
        .unwrap();
    assert!(matches!(e, VirtioPciError::IoBar { .. }), "{e}");
}

#[test]
fn capabilities_point_at_the_bar_regions() {
    let image = TempImage::new(&pattern(1));
    let d = blk_driver(&image);
    let caps = capabilities(&d.dev);
    let vendor: Vec<u8> = caps.iter().filter(|c| c.1 == 0x09).map(|c| c.2).collect();
    assert_eq!(
        vendor,
        [
            cap_type::COMMON_CFG,
            cap_type::NOTIFY_CFG,
            cap_type::ISR_CFG,
            cap_type::DEVICE_CFG,
            cap_type::PCI_CFG
        ]
    );
    assert_eq!(caps.last().unwrap().1, 0x11, "MSI-X last");
    let find = |t: u8| caps.iter().find(|c| c.1 == 0x09 && c.2 == t).unwrap().0;
    let notify = find(cap_type::NOTIFY_CFG);
    assert_eq!(cap_dword(&d.dev, notify, 4) & 0xff, 0, "BAR0");
    assert_eq!(cap_dword(&d.dev, notify, 8), NOTIFY_OFFSET as u32);
    assert_eq!(cap_dword(&d.dev, notify, 12), 4, "one queue");
    assert_eq!(cap_dword(&d.dev, notify, 16), NOTIFY_OFF_MULTIPLIER);
    let common = find(cap_type::COMMON_CFG);
    assert_eq!(cap_dword(&d.dev, common, 0) >> 16 & 0xff, 16, "cap_len");
    assert_eq!(cap_dword(&d.dev, common, 12), COMMON_CFG_LEN as u32);
    let msix = caps.last().unwrap().0;
    assert_eq!(
        cap_dword(&d.dev, msix, 0) >> 16,
        1,
        "2 vectors: queue + config"
    );
    assert_eq!(cap_dword(&d.dev, msix, 4), MSIX_TABLE_OFFSET);
    assert_eq!(cap_dword(&d.dev, msix, 8), MSIX_PBA_OFFSET);
}

#[test]
fn pci_cfg_window_reads_and_writes_the_bar() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    let caps = capabilities(&d.dev);
    let cap = caps.iter().find(|c| c.2 == cap_type::PCI_CFG).unwrap().0;
    let set = |d: &mut Driver, offset: u32, len: u32| {
        d.dev.write_config((cap + 4) / 4, 0, &[0]);
        d.dev.write_config((cap + 8) / 4, 0, &offset.to_le_bytes());
        d.dev.write_config((cap + 12) / 4, 0, &len.to_le_bytes());
    };
    set(&mut d, common::NUM_QUEUES as u32, 2);
    assert_eq!(d.dev.read_config((cap + 16) / 4) & 0xffff, 1);
    set(&mut d, common::DEVICE_STATUS as u32, 1);
    d.dev
        .write_config((cap + 16) / 4, 0, &[status::ACKNOWLEDGE]);
    assert_eq!(d.status(), status::ACKNOWLEDGE);
    set(&mut d, common::NUM_QUEUES as u32, 3);
    assert_eq!(d.dev.read_config((cap + 16) / 4), 0, "bad length reads 0");
}

#[test]
fn features_without_version_1_are_refused() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    let offered = d.device_features();
    assert_ne!(offered & features::VERSION_1, 0);
    let s = d.negotiate(offered & !features::VERSION_1);
    assert_eq!(s & status::FEATURES_OK, 0);
    assert_eq!(
        d.negotiate(features::VERSION_1 | 1 << 20) & status::FEATURES_OK,
        0
    );
    assert_ne!(d.negotiate(features::VERSION_1) & status::FEATURES_OK, 0);
}

#[test]
fn driver_ok_without_features_ok_needs_reset() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    d.negotiate(0);
    d.setup_queue(1);
    let s = d.driver_ok();
    assert_eq!(
        s & (status::DRIVER_OK | status::NEEDS_RESET),
        status::NEEDS_RESET
    );
}

#[test]
fn rings_outside_guest_memory_set_needs_reset_instead_of_activating() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    let f = d.device_features();
    d.negotiate(f);
    d.write(common::QUEUE_SELECT, 2, 0);
    d.write(common::QUEUE_DESC, 8, 1 << 40);
    d.write(common::QUEUE_DRIVER, 8, 0x2000);
    d.write(common::QUEUE_DEVICE, 8, 0x3000);
    d.write(common::QUEUE_ENABLE, 2, 1);
    assert_ne!(d.driver_ok() & status::NEEDS_RESET, 0);
    // A reset recovers.
    d.start();
    read_sector0(&mut d);
    d.wait_used(1);
}

#[test]
fn queue_size_that_is_not_a_power_of_two_needs_reset() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    let f = d.device_features();
    d.negotiate(f);
    d.write(common::QUEUE_SIZE, 2, 12);
    d.write(common::QUEUE_DESC, 8, 0x1000);
    d.write(common::QUEUE_DRIVER, 8, 0x2000);
    d.write(common::QUEUE_DEVICE, 8, 0x3000);
    d.write(common::QUEUE_ENABLE, 2, 1);
    assert_ne!(d.driver_ok() & status::NEEDS_RESET, 0);
}

#[test]
fn common_config_rejects_wrong_widths_and_reports_queues() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    assert_eq!(d.read(common::NUM_QUEUES, 2), 1);
    assert_eq!(d.read(common::NUM_QUEUES, 4), 0xffff_ffff);
    assert_eq!(d.read(common::DEVICE_STATUS + 1, 2), 0xffff);
    assert_eq!(d.read(common::QUEUE_SIZE, 2), 256);
    assert_eq!(d.read(common::QUEUE_NOTIFY_OFF, 2), 0);
    d.write(common::QUEUE_SELECT, 2, 5);
    assert_eq!(d.read(common::QUEUE_SIZE, 2), 0, "absent queue");
    d.write(common::DEVICE_STATUS, 4, 0xf);
    assert_eq!(d.status(), 0, "4-byte status write ignored");
    assert_eq!(d.read(0x1000 - 4, 4), 0xffff_ffff, "hole reads all-ones");
}

#[test]
fn out_of_range_msix_vectors_read_back_as_no_vector() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    d.write(common::MSIX_CONFIG, 2, 0);
    assert_eq!(d.read(common::MSIX_CONFIG, 2), 0);
    d.write(common::MSIX_CONFIG, 2, 2);
    assert_eq!(d.read(common::MSIX_CONFIG, 2), u64::from(NO_VECTOR));
    d.write(common::QUEUE_MSIX_VECTOR, 2, 1);
    assert_eq!(d.read(common::QUEUE_MSIX_VECTOR, 2), 1);
    d.write(common::QUEUE_MSIX_VECTOR, 2, 7);
    assert_eq!(d.read(common::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
}

#[test]
fn reset_clears_status_features_queues_and_stops_the_worker() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    d.start();
    read_sector0(&mut d);
    d.wait_used(1);
    d.write(common::DEVICE_STATUS, 1, 0);
    assert_eq!(d.status(), 0);
    d.write(common::DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(d.read(common::DRIVER_FEATURE, 4), 0);
    assert_eq!(d.read(common::QUEUE_ENABLE, 2), 0);
    assert_eq!(d.read(common::QUEUE_SIZE, 2), 256);
    assert_eq!(d.read(common::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(d.read(common::QUEUE_DESC, 8), 0);
    // No worker: a new request is not served.
    read_sector0(&mut d);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.used_idx(), 1);
}

#[test]
fn ioeventfd_kicks_the_queue_without_a_bar_write() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    let fds = d.dev.ioeventfds();
    assert_eq!(fds.len(), 1);
    assert_eq!((fds[0].0, fds[0].1), (VIRTIO_BAR, NOTIFY_OFFSET));
    d.start();
    // Make a request available without touching the doorbell, then signal like KVM would.
    d.mem
        .write_obj(VIRTIO_BLK_T_IN, GuestAddress(DATA))
        .unwrap();
    let desc = [
        (DATA, 16u32, 1u16),
        (DATA + 0x1000, 512, 3),
        (DATA + 0x100, 1, 2),
    ];
    for (i, (addr, len, flags)) in desc.iter().enumerate() {
        let at = 0x1000 + i as u64 * 16;
        d.mem.write_obj(*addr, GuestAddress(at)).unwrap();
        d.mem.write_obj(*len, GuestAddress(at + 8)).unwrap();
        d.mem.write_obj(*flags, GuestAddress(at + 12)).unwrap();
        d.mem
            .write_obj(i as u16 + 1, GuestAddress(at + 14))
            .unwrap();
    }
    d.mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
    d.mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
    d.dev.ioeventfds()[0].2.write(1).unwrap();
    assert_eq!(d.wait_used(1), (0, 513));
    assert_eq!(
        d.mem.read_obj::<u8>(GuestAddress(DATA + 0x100)).unwrap() as u32,
        VIRTIO_BLK_S_OK
    );
}

#[test]
fn without_msix_a_completion_sets_the_isr_which_reads_clear() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    d.start();
    read_sector0(&mut d);
    d.wait_used(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut isr = 0;
    while isr == 0 && Instant::now() < deadline {
        isr = d.read(ISR_CFG_OFFSET, 1);
    }
    assert_eq!(isr, u64::from(ISR_QUEUE));
    assert_eq!(d.read(ISR_CFG_OFFSET, 1), 0);
    assert!(d.router.state().irqfds.is_empty());
}

/// Consumes and returns the count of MSI-X vector 1's eventfd (queue 0), as KVM would.
fn vector_count(d: &Driver) -> u64 {
    d.dev.shared.event(1).unwrap().read().unwrap_or(0)
}

#[test]
fn unmasked_vector_is_routed_and_signalled_through_its_irqfd() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    d.msix_entry(1, false);
    d.msix_control(0x8000);
    {
        let s = d.router.state();
        assert_eq!(
            s.routes.values().copied().collect::<Vec<_>>(),
            [(0xfee0_1000, 0x41)]
        );
        assert_eq!(s.irqfds.len(), 1);
    }
    assert!(d.dev.msix.is_attached(1));
    assert!(!d.dev.msix.is_attached(0), "vector 0 is still masked");
    d.start();
    read_sector0(&mut d);
    d.wait_used(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut count = 0;
    while count == 0 && Instant::now() < deadline {
        count = vector_count(&d);
    }
    assert_eq!(count, 1);
}

#[test]
fn completion_on_a_masked_vector_is_pending_and_delivered_on_unmask() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    d.msix_entry(1, true);
    d.msix_control(0x8000);
    assert!(d.router.state().irqfds.is_empty());
    d.start();
    read_sector0(&mut d);
    d.wait_used(1);
    let pba = u64::from(MSIX_PBA_OFFSET);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.read(pba, 8) == 0 && Instant::now() < deadline {}
    assert_eq!(d.read(pba, 8), 0b10, "vector 1 pending");
    assert!(
        d.router.state().irqfds.is_empty(),
        "not delivered while masked"
    );
    // Unmask: the irqfd is attached and the eventfd signalled once for KVM to inject.
    d.msix_entry(1, false);
    assert_eq!(d.router.state().irqfds.len(), 1);
    assert_eq!(d.read(pba, 8), 0);
    assert_eq!(vector_count(&d), 1);
    assert_eq!(vector_count(&d), 0, "delivered exactly once");
}

#[test]
fn function_mask_holds_interrupts_and_disable_drops_them() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    d.msix_entry(1, false);
    d.msix_control(0xc000);
    assert!(d.router.state().irqfds.is_empty(), "function masked");
    d.start();
    read_sector0(&mut d);
    d.wait_used(1);
    let pba = u64::from(MSIX_PBA_OFFSET);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.read(pba, 4) == 0 && Instant::now() < deadline {}
    assert_eq!(d.read(pba, 4), 0b10);
    d.msix_control(0x0000);
    assert_eq!(d.read(pba, 4), 0);
    d.msix_control(0x8000);
    assert_eq!(
        vector_count(&d),
        0,
        "what fired before the disable is dropped"
    );
    assert!(d.dev.msix.is_attached(1));
}

#[test]
fn dropping_the_device_releases_its_gsis() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    d.msix_entry(0, false);
    d.msix_entry(1, false);
    d.msix_control(0x8000);
    d.start();
    let router = d.router.clone();
    drop(d);
    let s = router.state();
    assert!(s.irqfds.is_empty() && s.routes.is_empty());
    assert_eq!(s.freed.len(), 2);
}

#[test]
fn queue_setup_is_frozen_once_enabled() {
    let image = TempImage::new(&pattern(1));
    let mut d = blk_driver(&image);
    let f = d.device_features();
    d.negotiate(f);
    d.setup_queue(1);
    d.write(common::QUEUE_SIZE, 2, 4);
    assert_eq!(d.read(common::QUEUE_SIZE, 2), u64::from(QSIZE));
    assert_eq!(d.read(common::QUEUE_DESC, 4), 0x1000);
    assert_eq!(d.read(common::QUEUE_DESC + 4, 4), 0);
}
