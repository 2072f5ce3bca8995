//! Guest config accesses (ECAM, 0xCF8/0xCFC) on segment 0 holding the host bridge and an
//! emulated virtio-pci function: nothing panics, ids, class, capability pointer and BAR sizing
//! survive whatever the guest writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pci::address::SegmentId;
use pci::segment::PciSegment;
use viaduct_fuzz::{config_accesses, stub_virtio_pci, Identity, Input};

fuzz_target!(|data: &[u8]| {
    let mut segment = PciSegment::new(SegmentId(0));
    let bdf = segment
        .add_device(Box::new(stub_virtio_pci(1 << 20)))
        .expect("a free slot");
    let host = pci::address::Bdf::HOST_BRIDGE;
    let identities: Vec<Identity> = [host, bdf]
        .iter()
        .filter_map(|&b| Identity::of(&segment, b))
        .collect();
    config_accesses(&mut segment, &[0, bdf.device()], &mut Input::new(data));
    for id in &identities {
        id.check(&mut segment);
    }
});
