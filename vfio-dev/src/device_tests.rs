//! Tests of [`super::VfioPciDevice`]: BARs, config-space virtualization, mapping plan and the
//! GPUDirect clique capability, against the fake device.

use std::sync::Arc;

use pci::bar::{BarIndex, BarKind, BarMove, BarSpec};
use pci::capability::{Capabilities, Capability};

use super::*;
use crate::access::ResetDuty;
use crate::fake::{gpu_like, nvme_like, open, open_with, Call, FakeBuilder, FakeRouter, MMAP_RW};

fn bar(n: u8) -> BarIndex {
    BarIndex::new(n).unwrap()
}

fn read8(dev: &VfioPciDevice, offset: usize) -> u8 {
    dev.read_config(offset / 4).to_le_bytes()[offset % 4]
}

/// The 256 bytes the guest sees.
fn guest_image(dev: &VfioPciDevice) -> Vec<u8> {
    (0..64)
        .flat_map(|r| dev.read_config(r).to_le_bytes())
        .collect()
}

fn config_writes(calls: &[Call]) -> Vec<(u64, Vec<u8>)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::RegionWrite {
                index: region::CONFIG,
                offset,
                data,
            } => Some((*offset, data.clone())),
            _ => None,
        })
        .collect()
}

fn try_open(builder: FakeBuilder, clique: Option<u8>) -> Result<VfioPciDevice, DeviceError> {
    let mut dev = VfioPciDevice::new(
        "vfio test".into(),
        Arc::new(builder.build()),
        Arc::new(FakeRouter::default()),
        None,
        ResetDuty::Kernel,
    )?;
    if let Some(clique) = clique {
        dev.add_gpudirect_clique(clique)?;
    }
    Ok(dev)
}

#[test]
fn bars_are_sized_from_the_device() {
    let (fake, _, dev) = open(gpu_like(), None);
    assert_eq!(
        dev.bars(),
        [
            BarSpec::new(bar(0), 16 << 20, BarKind::Mem32),
            BarSpec::new(bar(1), 256 << 20, BarKind::Mem64).prefetchable(),
            BarSpec::new(bar(3), 32 << 20, BarKind::Mem64).prefetchable(),
            BarSpec::new(bar(5), 128, BarKind::Io),
            BarSpec::rom(512 << 10),
        ]
    );
    assert_eq!(fake.take_calls()[0], Call::Reset);
}

fn resets(calls: &[Call]) -> usize {
    calls.iter().filter(|c| **c == Call::Reset).count()
}

#[test]
fn a_vfio_pci_function_is_reset_by_the_kernel_only() {
    // vfio-pci resets the function as its fd is first opened and as it is last closed; a
    // VFIO_DEVICE_RESET of viaduct's on top would be a second reset (100 ms for an FLR) each
    // time.
    let (fake, _, mut dev) = open_with(nvme_like(), None, ResetDuty::Kernel);
    assert_eq!(resets(&fake.take_calls()), 0, "reset at open");
    dev.release();
    drop(dev);
    assert_eq!(resets(&fake.take_calls()), 0, "reset at release");
}

#[test]
fn an_mdev_is_reset_by_viaduct_before_the_guest_and_once_after_it() {
    let (fake, _, mut dev) = open_with(nvme_like(), None, ResetDuty::Vmm);
    let calls = fake.take_calls();
    assert_eq!(
        calls[0],
        Call::Reset,
        "the reset comes before anything is read"
    );
    assert_eq!(resets(&calls), 1);
    dev.release();
    dev.release();
    drop(dev);
    assert_eq!(resets(&fake.take_calls()), 1, "one reset after the guest");
}

#[test]
fn a_device_without_a_reset_method_opens_and_releases_either_way() {
    for duty in [ResetDuty::Kernel, ResetDuty::Vmm] {
        let (fake, _, mut dev) = open_with(nvme_like().without_reset(), None, duty);
        dev.release();
        drop(dev);
        assert_eq!(resets(&fake.take_calls()), 0, "{duty:?}");
    }
}

#[test]
fn sizing_probe_restores_the_host_bar_registers() {
    let (fake, _, _dev) = open(gpu_like(), None);
    assert_eq!(fake.config_u32(0x10), 0x8000_0000);
    assert_eq!(fake.config_u32(0x14), 0x8000_000c);
    assert_eq!(fake.config_u32(0x18), 0x40);
    assert_eq!(fake.config_u32(0x24), 0x8000_0001);
    assert_eq!(fake.config_u32(0x30), 0xfe00_0000);
}

#[test]
fn guest_bar_probe_is_answered_from_the_shadow_and_never_reaches_the_device() {
    let (fake, _, mut dev) = open(nvme_like(), None);
    dev.set_bar_address(bar(0), 0x1_2000_0000).unwrap();
    assert_eq!(dev.read_config(4), 0x2000_0004);
    assert_eq!(dev.read_config(5), 0x1);
    fake.take_calls();
    dev.write_config(4, 0, &[0xff; 4]);
    dev.write_config(5, 0, &[0xff; 4]);
    assert_eq!(dev.read_config(4), 0xffff_c004);
    assert_eq!(dev.read_config(5), 0xffff_ffff);
    assert!(config_writes(&fake.take_calls()).is_empty());
    // The host register still holds the host address.
    assert_eq!(fake.config_u32(0x10), 0x8000_0004);
}

#[test]
fn guest_moving_a_bar_is_reported() {
    let (_, _, mut dev) = open(nvme_like(), None);
    dev.set_bar_address(bar(0), 0x1_2000_0000).unwrap();
    assert!(dev
        .write_config(4, 0, &0xe000_0000u32.to_le_bytes())
        .is_empty());
    let effect = dev.write_config(5, 0, &[0; 4]);
    assert_eq!(
        effect.bar_moves,
        [BarMove {
            index: bar(0),
            kind: BarKind::Mem64,
            old: 0x1_2000_0000,
            new: 0xe000_0000,
            size: 0x4000,
        }]
    );
}

#[test]
fn header_multifunction_bit_is_hidden() {
    let (fake, _, dev) = open(nvme_like(), None);
    assert_eq!(fake.config_u32(0x0c) >> 16 & 0xff, 0x80);
    assert_eq!(read8(&dev, 0x0e), 0x00);
}

#[test]
fn identity_and_command_pass_through_to_the_device() {
    let (fake, _, mut dev) = open(nvme_like(), None);
    assert_eq!(dev.read_config(0), 0x0010_1b36);
    assert_eq!(dev.read_config(2) >> 8, 0x01_08_02);
    fake.take_calls();
    dev.write_config(1, 0, &[0x06, 0x00]);
    assert_eq!(config_writes(&fake.take_calls()), [(4, vec![0x06, 0x00])]);
    assert_eq!(fake.config_u32(0x04) & 0xffff, 0x0006);
}

/// A gate that says yes or no, and counts how often it was asked.
struct Gate {
    answer: Result<(), NoDma>,
    asked: std::sync::atomic::AtomicUsize,
}

impl DmaReady for Gate {
    fn wait_for_dma(&self, device: &str) -> Result<(), NoDma> {
        assert_eq!(device, "vfio test");
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.answer.clone()
    }
}

fn gate(answer: Result<(), NoDma>) -> Arc<Gate> {
    Arc::new(Gate {
        answer,
        asked: Default::default(),
    })
}

#[test]
fn bus_mastering_waits_for_the_dma_map_once() {
    let (fake, _, mut dev) = open(nvme_like(), None);
    let g = gate(Ok(()));
    dev.set_dma_ready(g.clone());
    fake.take_calls();
    // Memory decoding alone does not ask.
    dev.write_config(1, 0, &[0x02, 0x00]);
    assert_eq!(g.asked.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Bus mastering asks, then passes through; later writes do not ask again.
    dev.write_config(1, 0, &[0x06, 0x00, 0x00, 0x00]);
    dev.write_config(1, 0, &[0x04]);
    assert_eq!(g.asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        config_writes(&fake.take_calls()),
        [
            (4, vec![0x02, 0x00]),
            (4, vec![0x06, 0x00, 0x00, 0x00]),
            (4, vec![0x04])
        ]
    );
    assert_eq!(fake.config_u32(0x04) & 0xffff, 0x0004);
}

#[test]
fn bus_mastering_stays_off_when_guest_ram_is_not_mapped() {
    for answer in [NoDma::MapFailed("ENOMEM".into()), NoDma::Stopping] {
        bus_mastering_stays_off(answer);
    }
}

fn bus_mastering_stays_off(answer: NoDma) {
    let (fake, _, mut dev) = open(nvme_like(), None);
    let g = gate(Err(answer));
    dev.set_dma_ready(g.clone());
    fake.take_calls();
    dev.write_config(1, 0, &[0x06, 0x00]);
    dev.write_config(1, 0, &[0x07]);
    assert_eq!(g.asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(
        config_writes(&fake.take_calls()),
        [(4, vec![0x02, 0x00]), (4, vec![0x03])]
    );
    assert_eq!(fake.config_u32(0x04) & 0x04, 0);
}

/// Found by the pci_config_vfio fuzz target: a byte write to the vendor id reached the device,
/// so the guest-visible identity depended on the kernel dropping it.
#[test]
fn writes_to_the_read_only_header_never_reach_the_device() {
    let (fake, _, mut dev) = open(gpu_like(), None);
    let before: Vec<u32> = [0, 2, 3, 11, 13].map(|r| dev.read_config(r)).to_vec();
    fake.take_calls();
    dev.write_config(0, 0, &[0x25]);
    dev.write_config(0, 0, &[0xff, 0xff, 0xff, 0xff]);
    dev.write_config(2, 0, &[0xff, 0xff, 0xff, 0xff]);
    dev.write_config(3, 2, &[0x00]);
    dev.write_config(11, 0, &[0xff, 0xff, 0xff, 0xff]);
    dev.write_config(13, 0, &[0x00]);
    assert!(config_writes(&fake.take_calls()).is_empty());
    let after: Vec<u32> = [0, 2, 3, 11, 13].map(|r| dev.read_config(r)).to_vec();
    assert_eq!(before, after);
    // Cache line size and latency timer, in the same dword as the header type, still pass.
    dev.write_config(3, 0, &[0x10, 0x40]);
    assert_eq!(
        config_writes(&fake.take_calls()),
        [(0x0c, vec![0x10, 0x40])]
    );
}

#[test]
fn malformed_config_writes_are_dropped() {
    let (fake, _, mut dev) = open(nvme_like(), None);
    fake.take_calls();
    dev.write_config(1, 0, &[1, 2, 3]);
    dev.write_config(1, 3, &[1, 2]);
    dev.write_config(1024, 0, &[1]);
    assert!(fake.take_calls().is_empty());
    assert_eq!(dev.read_config(1024), u32::MAX);
}

#[test]
fn interrupt_pin_comes_from_the_device_and_line_is_the_gsi() {
    let (fake, _, mut dev) = open(nvme_like(), None);
    assert_eq!((read8(&dev, 0x3c), read8(&dev, 0x3d)), (5, 1));
    fake.take_calls();
    dev.write_config(15, 0, &[0x0b, 0x02]);
    assert_eq!((read8(&dev, 0x3c), read8(&dev, 0x3d)), (0x0b, 1));
    assert!(fake.take_calls().is_empty());
    // Without an INTx GSI the guest sees no pin.
    let dev = try_open(nvme_like(), None).unwrap();
    assert_eq!(read8(&dev, 0x3d), 0);
}

#[test]
fn msix_capability_reads_come_from_the_model() {
    let (_, _, dev) = open(nvme_like(), None);
    // id 0x11, next 0x60, Table Size 33 - 1, disabled.
    assert_eq!(dev.read_config(0x50 / 4), 0x0020_6011);
    assert_eq!(dev.read_config(0x54 / 4), 0x2000);
    assert_eq!(dev.read_config(0x58 / 4), 0x3000);
}

#[test]
fn rom_is_readable_and_read_only() {
    let (fake, _, mut dev) = open(gpu_like(), None);
    fake.region_write(region::ROM, 0, &[0x55, 0xaa]);
    fake.take_calls();
    let mut sig = [0; 2];
    dev.read_bar(BarIndex::ROM, 0, &mut sig);
    assert_eq!(sig, [0x55, 0xaa]);
    dev.write_bar(BarIndex::ROM, 0, &[0, 0]);
    assert!(fake.take_calls().is_empty());
    let mut beyond = [0; 4];
    dev.read_bar(BarIndex::ROM, 512 << 10, &mut beyond);
    assert_eq!(beyond, [0xff; 4]);
}

#[test]
fn bar_accesses_outside_msix_reach_the_device_region() {
    let (fake, _, mut dev) = open(nvme_like(), None);
    fake.take_calls();
    dev.write_bar(bar(0), 0x14, &0x0046_0001u32.to_le_bytes());
    assert_eq!(
        fake.take_calls(),
        [Call::RegionWrite {
            index: 0,
            offset: 0x14,
            data: vec![1, 0, 0x46, 0]
        }]
    );
    let mut back = [0; 4];
    dev.read_bar(bar(0), 0x14, &mut back);
    assert_eq!(u32::from_le_bytes(back), 0x0046_0001);
}

#[test]
fn mmap_plan_carves_msix_pages_and_skips_io_and_rom() {
    let (_, _, dev) = open(nvme_like(), None);
    let areas = dev.mmap_areas();
    assert_eq!(areas.len(), 1);
    assert_eq!(
        (areas[0].bar, areas[0].offset, areas[0].size),
        (bar(0), 0, 0x2000)
    );
    assert_eq!(areas[0].region_offset, 0);

    let (_, _, dev) = open(gpu_like(), None);
    let spans: Vec<_> = dev
        .mmap_areas()
        .iter()
        .map(|a| (a.bar.get(), a.offset, a.size, a.region_offset))
        .collect();
    assert_eq!(
        spans,
        [
            (0, 0, 16 << 20, 0),
            (1, 0, 256 << 20, 1 << 40),
            (3, 0, 32 << 20, 3 << 40)
        ]
    );
}

#[test]
fn resizable_bar_extended_capability_is_hidden_but_the_list_still_walks() {
    let (_, _, dev) = open(nvme_like(), None);
    assert_eq!(dev.read_config(0x100 / 4), 0x1482_0001);
    // Id 0 (null capability), version and next kept.
    assert_eq!(dev.read_config(0x148 / 4), 0x0001_0000);
}

#[test]
fn clique_capability_is_placed_at_d4_and_linked_last() {
    let (fake, _, mut dev) = open(gpu_like(), Some(3));
    assert_eq!(dev.clique_offset(), Some(0xd4));
    let image = guest_image(&dev);
    assert_eq!(
        image[0xd4..0xdc],
        [0x09, 0x00, 0x08, 0x50, 0x32, 0x50, 0x18, 0x00]
    );
    assert_eq!(image[0xb5], 0xd4);
    let caps: Vec<Capability> = Capabilities::new(&image).collect();
    assert_eq!(
        caps.iter().map(|c| (c.offset, c.id)).collect::<Vec<_>>(),
        [
            (0x60, 0x01),
            (0x68, 0x05),
            (0x78, 0x10),
            (0xb4, 0x09),
            (0xd4, 0x09)
        ]
    );
    // The capability and the patched link are read-only.
    fake.take_calls();
    dev.write_config(0xd4 / 4, 0, &[0xff; 4]);
    dev.write_config(0xb4 / 4, 1, &[0x00]);
    assert!(config_writes(&fake.take_calls()).is_empty());
    assert_eq!(read8(&dev, 0xb5), 0xd4);
}

#[test]
fn clique_falls_back_to_c8_when_d4_is_taken() {
    let builder = gpu_like().cap(0xd0, 0x09, &[0x08]);
    let dev = try_open(builder, Some(1)).unwrap();
    assert_eq!(dev.clique_offset(), Some(0xc8));
    let image = guest_image(&dev);
    assert_eq!(image[0xd1], 0xc8);
    assert_eq!(
        image[0xc8..0xd0],
        [0x09, 0x00, 0x08, 0x50, 0x32, 0x50, 0x08, 0x00]
    );
}

#[test]
fn clique_without_room_is_an_error() {
    let builder = nvme_like()
        .cap(0x48, 0x09, &[0x08])
        .cap(0xa0, 0x09, &[0x60]);
    let err = try_open(builder, Some(0)).err().unwrap();
    assert!(matches!(err, DeviceError::NoRoomForClique { .. }));
    assert!(err.to_string().starts_with("vfio test: no room"));
}

#[test]
fn clique_id_above_15_is_rejected() {
    let err = try_open(gpu_like(), Some(16)).err().unwrap();
    assert!(matches!(
        err,
        DeviceError::CliqueOutOfRange { clique: 16, .. }
    ));
    assert!(err.to_string().contains("vfio test"));
}

#[test]
fn clique_creates_a_capability_list_when_the_device_has_none() {
    let builder = FakeBuilder::new(0x10de, 0x1234, [0x03, 0x02, 0x00], 256).bar(
        0,
        0x1000,
        (false, false, false),
        crate::fake::MMAP_RW,
    );
    let dev = try_open(builder, Some(2)).unwrap();
    let image = guest_image(&dev);
    assert_eq!(image[0x06] & 0x10, 0x10);
    assert_eq!(image[0x34], 0xd4);
    let caps: Vec<Capability> = Capabilities::new(&image).collect();
    assert_eq!(
        caps,
        [Capability {
            offset: 0xd4,
            id: 0x09
        }]
    );
    // A conventional device's extended space reads all-ones.
    assert_eq!(dev.read_config(0x100 / 4), u32::MAX);
}

#[test]
fn msix_capability_running_past_config_space_is_refused_not_a_panic() {
    for offset in [0xf8, 0xfc] {
        let builder = FakeBuilder::new(0x1b36, 0x0010, [1, 8, 2], 256)
            .bar(0, 0x4000, (false, true, false), MMAP_RW)
            .irqs(1, 0, 4)
            .cap(offset, id::MSIX, &[0x03, 0x00]);
        let err = try_open(builder, None).err().expect("refused");
        let text = err.to_string() + &format!(" {:?}", err);
        assert!(
            text.contains("runs past the end of the 256-byte config space"),
            "{offset:#x}: {text}"
        );
    }
}

#[test]
fn msi_capability_is_checked_for_its_full_length() {
    // 64-bit MSI with per-vector masking needs 24 bytes: at 0xf0 it would end at 0x108.
    let builder = FakeBuilder::new(0x10de, 0x1db6, [3, 2, 0], 256)
        .irqs(1, 1, 0)
        .cap(0xf0, id::MSI, &[0x80, 0x01]);
    let err = try_open(builder, None).err().expect("refused");
    assert!(err.to_string().contains("MSI") || format!("{err:?}").contains("MSI"));
    assert!(format!("{err:?}").contains("24-byte"), "{err:?}");
    // Without masking it needs 14 and fits at 0xf0.
    let builder = FakeBuilder::new(0x10de, 0x1db6, [3, 2, 0], 256)
        .irqs(1, 1, 0)
        .cap(0xf0, id::MSI, &[0x80, 0x00]);
    assert!(try_open(builder, None).is_ok());
}

#[test]
fn config_region_of_odd_size_is_read_in_whole_dwords() {
    // A 258-byte region used to panic in the dword copy.
    let builder = FakeBuilder::new(0x1b36, 0x0010, [1, 8, 2], 258).bar(
        0,
        0x4000,
        (false, true, false),
        MMAP_RW,
    );
    let dev = try_open(builder, None).expect("opens");
    assert_eq!(read8(&dev, 0), 0x36);
}
