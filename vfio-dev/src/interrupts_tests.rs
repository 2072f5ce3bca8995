//! Tests of MSI-X, MSI and INTx delivery through a [`crate::device::VfioPciDevice`] on the fake
//! device and router.

use pci::bar::BarIndex;
use pci::device::PciDevice;

use crate::access::irq;
use crate::device::VfioPciDevice;
use crate::fake::{gpu_like, nvme_like, open, Call, FakeRouter, FakeVfioDevice};

const TABLE: u64 = 0x2000;
const PBA: u64 = 0x3000;
/// Offset of the NVMe fixture's MSI-X Message Control.
const MSIX_CONTROL: usize = 0x52;

fn bar0() -> BarIndex {
    BarIndex::new(0).unwrap()
}

fn address(v: u16) -> u64 {
    0xfee0_0000 + (u64::from(v) << 12)
}

/// Programs table entry `v` with a recognisable message and the given mask bit.
fn program(dev: &mut VfioPciDevice, v: u16, masked: bool) {
    let base = TABLE + u64::from(v) * 16;
    dev.write_bar(bar0(), base, &address(v).to_le_bytes());
    dev.write_bar(bar0(), base + 8, &(0x40 + u32::from(v)).to_le_bytes());
    set_mask(dev, v, masked);
}

fn set_mask(dev: &mut VfioPciDevice, v: u16, masked: bool) {
    let base = TABLE + u64::from(v) * 16;
    dev.write_bar(bar0(), base + 12, &u32::from(masked).to_le_bytes());
}

fn msix_control(dev: &mut VfioPciDevice, value: u16) {
    dev.write_config(MSIX_CONTROL / 4, MSIX_CONTROL % 4, &value.to_le_bytes());
}

fn pba(dev: &mut VfioPciDevice) -> u64 {
    let mut b = [0; 8];
    dev.read_bar(bar0(), PBA, &mut b);
    u64::from_le_bytes(b)
}

fn attached(fake: &FakeVfioDevice, router: &FakeRouter, v: usize) -> Option<u32> {
    router.attached_gsi(fake.irq_fd(irq::MSIX, v))
}

#[test]
fn msix_table_writes_are_emulated_and_never_reach_the_device() {
    let (fake, _, mut dev) = open(nvme_like(), None);
    fake.take_calls();
    program(&mut dev, 3, false);
    assert!(fake.take_calls().is_empty());
    let mut data = [0; 4];
    dev.read_bar(bar0(), TABLE + 3 * 16 + 8, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x43);
}

#[test]
fn enabling_msix_hands_vfio_every_vector_and_routes_unmasked_ones() {
    let (fake, router, mut dev) = open(nvme_like(), None);
    program(&mut dev, 0, false);
    program(&mut dev, 1, true);
    fake.take_calls();
    msix_control(&mut dev, 0x8000);
    let calls = fake.take_calls();
    assert_eq!(
        calls,
        [
            Call::DisableIrq(irq::INTX),
            Call::EnableIrq {
                index: irq::MSIX,
                count: 33
            }
        ]
    );
    let gsi = attached(&fake, &router, 0).expect("vector 0 attached");
    assert_eq!(router.state().routes[&gsi], (address(0), 0x40));
    assert_eq!(router.state().routes.len(), 1);
    assert_eq!(attached(&fake, &router, 1), None);
    // INTx is off while MSI-X is on.
    assert!(router.state().level.is_empty());
    assert_eq!(dev.read_config(0x50 / 4) >> 16, 0x8020);
}

#[test]
fn masking_a_vector_detaches_its_irqfd_and_reprogramming_updates_its_route() {
    let (fake, router, mut dev) = open(nvme_like(), None);
    program(&mut dev, 4, false);
    msix_control(&mut dev, 0x8000);
    let gsi = attached(&fake, &router, 4).unwrap();
    set_mask(&mut dev, 4, true);
    assert_eq!(attached(&fake, &router, 4), None);
    dev.write_bar(bar0(), TABLE + 4 * 16 + 8, &0x99u32.to_le_bytes());
    set_mask(&mut dev, 4, false);
    assert_eq!(attached(&fake, &router, 4), Some(gsi));
    assert_eq!(router.state().routes[&gsi], (address(4), 0x99));
}

#[test]
fn vector_fired_while_masked_is_pending_and_delivered_on_unmask() {
    let (fake, router, mut dev) = open(nvme_like(), None);
    program(&mut dev, 2, true);
    msix_control(&mut dev, 0x8000);
    assert_eq!(pba(&mut dev), 0);
    fake.fire(irq::MSIX, 2);
    // Reading the PBA does not consume the event.
    assert_eq!(pba(&mut dev), 1 << 2);
    assert_eq!(pba(&mut dev), 1 << 2);
    set_mask(&mut dev, 2, false);
    assert!(attached(&fake, &router, 2).is_some());
    assert_eq!(pba(&mut dev), 0);
    // Signalled once after the attach, so the irqfd injects exactly one interrupt.
    assert_eq!(fake.take_count(irq::MSIX, 2), 1);
}

#[test]
fn function_mask_detaches_all_and_unmask_reattaches_unmasked_vectors() {
    let (fake, router, mut dev) = open(nvme_like(), None);
    program(&mut dev, 0, false);
    program(&mut dev, 1, false);
    program(&mut dev, 2, true);
    msix_control(&mut dev, 0x8000);
    assert_eq!(router.state().irqfds.len(), 2);
    msix_control(&mut dev, 0xc000);
    assert!(router.state().irqfds.is_empty());
    fake.fire(irq::MSIX, 1);
    assert_eq!(pba(&mut dev), 1 << 1);
    msix_control(&mut dev, 0x8000);
    assert!(attached(&fake, &router, 0).is_some());
    assert!(attached(&fake, &router, 1).is_some());
    assert_eq!(attached(&fake, &router, 2), None);
    assert_eq!(fake.take_count(irq::MSIX, 1), 1);
}

#[test]
fn enabling_under_function_mask_routes_nothing_until_unmasked() {
    // Linux enables MSI-X with the function masked, programs the table, then unmasks.
    let (fake, router, mut dev) = open(nvme_like(), None);
    msix_control(&mut dev, 0xc000);
    program(&mut dev, 0, false);
    assert!(router.state().irqfds.is_empty());
    msix_control(&mut dev, 0x8000);
    assert!(attached(&fake, &router, 0).is_some());
}

#[test]
fn disabling_msix_tears_down_routes_and_restores_intx() {
    let (fake, router, mut dev) = open(nvme_like(), None);
    program(&mut dev, 0, false);
    program(&mut dev, 5, false);
    msix_control(&mut dev, 0x8000);
    assert_eq!(router.state().allocated.len(), 2);
    fake.take_calls();
    msix_control(&mut dev, 0x0000);
    assert_eq!(
        fake.take_calls(),
        [
            Call::DisableIrq(irq::MSIX),
            Call::EnableIrq {
                index: irq::INTX,
                count: 1
            },
            Call::IntxUnmaskFd
        ]
    );
    let s = router.state();
    assert!(s.allocated.is_empty() && s.routes.is_empty() && s.irqfds.is_empty());
    assert_eq!(s.freed.len(), 2);
    assert!(s.level.contains_key(&5));
}

#[test]
fn intx_is_level_triggered_with_a_resample_eventfd() {
    let (fake, router, _dev) = open(nvme_like(), None);
    let calls = fake.take_calls();
    assert!(calls.ends_with(&[
        Call::EnableIrq {
            index: irq::INTX,
            count: 1
        },
        Call::IntxUnmaskFd
    ]));
    let s = router.state();
    let (fd, resample) = s.level[&5];
    assert_eq!(fd, fake.irq_fd(irq::INTX, 0));
    assert_ne!(fd, resample);
}

#[test]
fn msi_multi_message_routes_one_gsi_per_vector() {
    let (fake, router, mut dev) = open(gpu_like(), None);
    // Address 0xfee01000 (64-bit), data 0x50, then Enable with Multiple Message Enable = 4.
    dev.write_config(0x6c / 4, 0, &0xfee0_1000u32.to_le_bytes());
    dev.write_config(0x70 / 4, 0, &[0; 4]);
    dev.write_config(0x74 / 4, 0, &[0x50, 0x00]);
    fake.take_calls();
    dev.write_config(0x68 / 4, 2, &[0x21, 0x00]);
    assert_eq!(
        fake.take_calls(),
        [
            Call::DisableIrq(irq::INTX),
            Call::EnableIrq {
                index: irq::MSI,
                count: 4
            }
        ]
    );
    let s = router.state();
    let mut routes: Vec<_> = s.routes.values().copied().collect();
    routes.sort();
    assert_eq!(
        routes,
        [0x50, 0x51, 0x52, 0x53].map(|d| (0xfee0_1000u64, d))
    );
    assert_eq!(s.irqfds.len(), 4);
    drop(s);
    // The guest reads its own programming back, with Enable set.
    assert_eq!(dev.read_config(0x68 / 4), 0x00a5_7805);
}

#[test]
fn routing_failure_leaves_the_vector_undelivered_without_panicking() {
    let (fake, router, mut dev) = open(nvme_like(), None);
    router.state().fail_allocate = true;
    program(&mut dev, 0, false);
    msix_control(&mut dev, 0x8000);
    assert_eq!(attached(&fake, &router, 0), None);
    router.state().fail_allocate = false;
    set_mask(&mut dev, 0, true);
    set_mask(&mut dev, 0, false);
    assert!(attached(&fake, &router, 0).is_some());
}

#[test]
fn teardown_disables_interrupts_and_frees_every_gsi() {
    let (fake, router, mut dev) = open(nvme_like(), None);
    program(&mut dev, 0, false);
    program(&mut dev, 1, false);
    msix_control(&mut dev, 0x8000);
    fake.take_calls();
    drop(dev);
    assert_eq!(fake.take_calls(), [Call::DisableIrq(irq::MSIX)]);
    let s = router.state();
    assert!(s.allocated.is_empty() && s.routes.is_empty() && s.irqfds.is_empty());
    assert_eq!(s.freed.len(), 2);

    let (fake, router, mut dev) = open(nvme_like(), None);
    dev.shutdown();
    dev.shutdown();
    assert_eq!(fake.take_calls().last(), Some(&Call::DisableIrq(irq::INTX)));
    assert!(router.state().level.is_empty());
}

#[test]
fn msi_per_vector_mask_holds_back_delivery_and_shows_pending() {
    // 32-bit MSI with per-vector masks and 2 messages: mask at +0xc, pending at +0x10.
    let builder = crate::fake::FakeBuilder::new(0x1af4, 0x1234, [0x02, 0x00, 0x00], 256)
        .bar(0, 0x1000, (false, false, false), crate::fake::MMAP_RW)
        .cap(0x50, 0x05, &0x0102u16.to_le_bytes())
        .irqs(0, 2, 0);
    let (fake, router, mut dev) = open(builder, None);
    dev.write_config(0x54 / 4, 0, &0xfee0_0000u32.to_le_bytes());
    dev.write_config(0x58 / 4, 0, &[0x60, 0x00]);
    dev.write_config(0x5c / 4, 0, &2u32.to_le_bytes());
    dev.write_config(0x50 / 4, 2, &[0x11, 0x01]);
    assert_eq!(
        fake.take_calls().last(),
        Some(&Call::EnableIrq {
            index: irq::MSI,
            count: 2
        })
    );
    let msi_gsi = |v| router.attached_gsi(fake.irq_fd(irq::MSI, v));
    let gsi0 = msi_gsi(0).expect("vector 0 attached");
    assert_eq!(router.state().routes[&gsi0], (0xfee0_0000, 0x60));
    assert_eq!(msi_gsi(1), None);
    fake.fire(irq::MSI, 1);
    assert_eq!(dev.read_config(0x60 / 4), 0b10);
    dev.write_config(0x5c / 4, 0, &0u32.to_le_bytes());
    let gsi1 = msi_gsi(1).expect("vector 1 attached on unmask");
    assert_eq!(router.state().routes[&gsi1], (0xfee0_0000, 0x61));
    assert_eq!(dev.read_config(0x60 / 4), 0);
    assert_eq!(fake.take_count(irq::MSI, 1), 1);
}
