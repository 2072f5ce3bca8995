//! The virtio-pci transport (devices/src/virtio/pci) as a driver drives it: common-config
//! accesses of any width (feature negotiation, status, queue setup and enable, DRIVER_OK and
//! reset), ISR, device config, doorbells, the MSI-X table/PBA and MSI-X enable through config
//! space, on a stub device that starts nothing. Nothing panics; num_queues stays 2; a status
//! write of 0 resets to 0; the device is never activated twice without a reset (the stub
//! asserts it).
#![no_main]

use devices::virtio::pci::layout::{common, COMMON_CFG_LEN, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET};
use libfuzzer_sys::fuzz_target;
use pci::bar::BarIndex;
use pci::device::PciDevice;
use viaduct_fuzz::{stub_virtio_pci, Input};

/// BAR offsets the driver uses, so most accesses land on a register.
const AREAS: [(u64, u64); 6] = [
    (0, COMMON_CFG_LEN),
    (0x1000, 4),
    (0x2000, 64),
    (0x3000, 8),
    (MSIX_TABLE_OFFSET as u64, 3 * 16),
    (MSIX_PBA_OFFSET as u64, 8),
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut dev = stub_virtio_pci(1 << 20);
    let bar = BarIndex::new(0).unwrap_or(BarIndex::ROM);
    let _ = dev.set_bar_address(bar, 0xe000_0000);
    let mut ops = 0;
    while !input.is_empty() && ops < 4096 {
        ops += 1;
        let op = input.u8();
        let sel = input.u8();
        let offset = if op & 0x80 != 0 {
            u64::from(input.u16())
        } else {
            let (base, len) = AREAS[usize::from(sel) % AREAS.len()];
            base + u64::from(input.u8()) % len
        };
        let len = input.access_len();
        match op % 8 {
            0..=3 => {
                let bytes = input.bytes(len).to_vec();
                dev.write_bar(bar, offset, &bytes);
                if offset == common::DEVICE_STATUS && bytes == [0] {
                    let mut status = [0xaa];
                    dev.read_bar(bar, common::DEVICE_STATUS, &mut status);
                    assert_eq!(status, [0], "status after a reset");
                }
            }
            4 | 5 => {
                let mut bytes = vec![0u8; len];
                dev.read_bar(bar, offset, &mut bytes);
                if offset == common::NUM_QUEUES && len == 2 {
                    assert_eq!(bytes, [2, 0], "num_queues");
                }
            }
            6 => {
                // Config space: the MSI-X capability (enable, function mask), the command
                // register, the virtio PCI-config window; anywhere else sometimes.
                let reg = if op & 0x40 != 0 {
                    usize::from(input.u16()) % 4096
                } else {
                    [
                        0x04, 0x10, 0x40, 0x42, 0x44, 0x48, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0,
                    ][usize::from(sel) % 12]
                        + usize::from(input.u8() % 20)
                };
                let bytes = input.bytes(len.min(4)).to_vec();
                if matches!(bytes.len(), 1 | 2 | 4) && reg % 4 + bytes.len() <= 4 {
                    let _ = dev.write_config(reg / 4, reg % 4, &bytes);
                }
            }
            _ => {
                let reg = usize::from(input.u16()) % 1024;
                let _ = dev.read_config(reg);
            }
        }
    }
    dev.shutdown();
});
