//! Guest config accesses (ECAM, 0xCF8/0xCFC) and trapped BAR accesses (the MSI-X table and PBA)
//! on a passthrough function backed by vfio-dev's fake host device: the NVMe-like or GPU-like
//! fixture, or a host config space taken from the input (what the host device declares is
//! parsed as from real hardware). Nothing panics; ids, class, capability pointer and BAR sizing
//! survive whatever the guest writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pci::address::SegmentId;
use pci::bar::BarIndex;
use pci::device::PciDevice;
use pci::legacy_ports::LegacyConfigPorts;
use pci::segment::PciSegment;
use vfio_dev::fake::{fuzz_device, FuzzFixture};
use viaduct_fuzz::{config_access, Identity, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let kind = input.u8();
    let fixture = match kind % 4 {
        0 => FuzzFixture::Nvme,
        1 => FuzzFixture::Gpu,
        _ => {
            let size = match (kind >> 2) % 4 {
                0 => 256,
                1 => 4096,
                2 => 0x40 + usize::from(input.u8()),
                _ => 256 + usize::from(input.u8()),
            };
            // A raw image: its length prefix, so the accesses after it are fuzzed too.
            let len = usize::from(input.u16()) % (size + 1);
            FuzzFixture::Raw {
                size,
                image: input.bytes(len),
            }
        }
    };
    let Ok(mut dev) = fuzz_device(fixture) else {
        return;
    };
    // The VMM places the BARs before the guest runs.
    for (i, spec) in dev.bars().iter().enumerate() {
        let _ = dev.set_bar_address(spec.index, 0xc000_0000 + (i as u64) * 0x1000_0000);
    }
    let mut segment = PciSegment::new(SegmentId(0));
    let bdf = segment.add_device(Box::new(dev)).expect("a free slot");
    let identity = Identity::of(&segment, bdf);
    let mut ports = LegacyConfigPorts::new();
    let mut ops = 0;
    while !input.is_empty() && ops < 4096 {
        ops += 1;
        if !input.u8().is_multiple_of(4) {
            config_access(&mut segment, &mut ports, &[bdf.device()], &mut input);
            continue;
        }
        // A trapped BAR access: the MSI-X table and PBA, or a BAR with nothing trapped.
        let Some(dev) = segment.device_mut(bdf) else {
            break;
        };
        let op = input.u8();
        let bar = BarIndex::new(op % 7).unwrap_or(BarIndex::ROM);
        let offset = u64::from(input.u16());
        let len = input.access_len();
        if op & 0x80 != 0 {
            let bytes = input.bytes(len).to_vec();
            dev.write_bar(bar, offset, &bytes);
        } else {
            let mut bytes = vec![0u8; len];
            dev.read_bar(bar, offset, &mut bytes);
        }
    }
    if let Some(id) = identity {
        id.check(&mut segment);
    }
    if let Some(mut dev) = segment.remove(bdf) {
        dev.shutdown();
    }
});
