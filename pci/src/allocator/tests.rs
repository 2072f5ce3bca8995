//! Tests of the BAR allocator: alignment, window choice, exhaustion messages, free, guest-chosen
//! addresses, and how many 16 MiB GPU BARs the aperture weights let a segment hold.

use super::*;
use crate::aperture::split_aperture;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn range(start: u64, size: u64) -> AddressRange {
    AddressRange::new(start, size).unwrap()
}

fn req(owner: &str, bar: u8, size: u64, space: Space) -> BarRequest {
    BarRequest {
        owner: owner.to_string(),
        bar,
        size,
        space,
    }
}

/// Segment `index` of the 32-bit aperture split by `weights`, with a 64 GiB 64-bit window
/// and 512 I/O ports.
fn segment(weights: &[u32], index: usize) -> SegmentAllocator {
    let mmio32 = split_aperture(range(0xC000_0000, 640 * MIB), weights, 4 * KIB).unwrap();
    let io = range(0x1000 + 0x200 * index as u64, 0x200);
    SegmentAllocator::new(
        index as u16,
        mmio32[index],
        range(0x1_4000_0000, 64 * GIB),
        io,
    )
}

/// How many 16 MiB 32-bit BARs (a GPU's BAR0) fit in the segment.
fn count_16m_bars(alloc: &mut SegmentAllocator) -> usize {
    (0..)
        .take_while(|&i| {
            alloc
                .allocate(req(&format!("gpu{i}"), 0, 16 * MIB, Space::Mem32))
                .is_ok()
        })
        .count()
}

#[test]
fn bars_are_naturally_aligned_in_unaligned_windows() {
    // Segment 1 of a 2:1 split starts at 0xDAAA_A000; the 64-bit window at 5 GiB.
    let mut alloc = segment(&[2, 1], 1);
    assert_eq!(alloc.window(Space::Mem32).start(), 0xDAAA_A000);
    for shift in 12..=26 {
        let size = 1u64 << shift;
        let addr = alloc.allocate(req("dev", 0, size, Space::Mem32)).unwrap();
        assert_eq!(addr % size, 0, "{size:#x} at {addr:#x}");
        assert!(alloc
            .window(Space::Mem32)
            .contains_range(&range(addr, size)));
    }
    for shift in 12..=30 {
        let size = 1u64 << shift;
        let addr = alloc.allocate(req("dev", 2, size, Space::Mem64)).unwrap();
        assert_eq!(addr % size, 0, "{size:#x} at {addr:#x}");
        assert!(alloc
            .window(Space::Mem64)
            .contains_range(&range(addr, size)));
    }
}

#[test]
fn no_two_bars_overlap_under_mixed_allocation_and_free() {
    let mut state: u64 = 0xba5e_ba11;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let mut alloc = segment(&[1, 1], 0);
    let mut live: Vec<(Space, u64, u64)> = Vec::new();
    for i in 0..2000 {
        let space = [Space::Io, Space::Mem32, Space::Mem64][next(3) as usize];
        let size = match space {
            Space::Io => 4 << next(5),
            _ => 16 << next(23),
        };
        if next(4) == 0 && !live.is_empty() {
            let (space, addr, size) = live.swap_remove(next(live.len() as u64) as usize);
            alloc.free(space, addr, size).unwrap();
        } else if let Ok(addr) = alloc.allocate(req(&format!("d{i}"), 0, size, space)) {
            assert_eq!(addr % size, 0);
            live.push((space, addr, size));
        }
    }
    assert!(live.len() > 100, "{} live BARs", live.len());
    let footprint = |space, size: u64| {
        if space == Space::Io {
            size
        } else {
            size.max(4 * KIB)
        }
    };
    let mut ranges: Vec<AddressRange> = live
        .iter()
        .map(|&(sp, a, s)| range(a, footprint(sp, s)))
        .collect();
    ranges.sort_by_key(|r| r.start());
    for pair in ranges.windows(2) {
        assert!(!pair[0].overlaps(&pair[1]), "{} and {}", pair[0], pair[1]);
    }
    // Freeing everything coalesces each window back into one block.
    for (space, addr, size) in live {
        alloc.free(space, addr, size).unwrap();
    }
    for space in [Space::Io, Space::Mem32, Space::Mem64] {
        assert_eq!(alloc.largest_free(space), alloc.window(space).size());
    }
}

#[test]
fn each_kind_of_bar_goes_to_its_window() {
    let mut alloc = segment(&[1], 0);
    let a32 = alloc
        .allocate(req("nic", 0, 16 * KIB, Space::Mem32))
        .unwrap();
    let a64 = alloc
        .allocate(req("nic", 2, 16 * KIB, Space::Mem64))
        .unwrap();
    let rom = alloc
        .allocate(req("nic", ROM_BAR, 512 * KIB, Space::Mem32))
        .unwrap();
    let io = alloc.allocate(req("nic", 5, 128, Space::Io)).unwrap();
    assert!(alloc.window(Space::Mem32).contains(a32) && a32 < 1 << 32);
    assert!(alloc.window(Space::Mem64).contains(a64));
    assert!(alloc.window(Space::Mem32).contains(rom));
    assert_eq!(io, 0x1000);
}

#[test]
fn bar64_falls_back_to_the_32bit_window_without_a_64bit_window() {
    let mmio32 = range(0xC000_0000, 640 * MIB);
    let mut alloc = SegmentAllocator::new(3, mmio32, AddressRange::empty(0), range(0x1000, 0x100));
    let addr = alloc
        .allocate(req("gpu", 1, 256 * MIB, Space::Mem64))
        .unwrap();
    assert_eq!(addr, 0xC000_0000);
    assert_eq!(alloc.remaining(Space::Mem64), 384 * MIB);
    assert_eq!(alloc.remaining(Space::Mem32), 384 * MIB);
    alloc.free(Space::Mem64, addr, 256 * MIB).unwrap();
    assert_eq!(alloc.remaining(Space::Mem32), 640 * MIB);
}

#[test]
fn exhaustion_names_device_bar_size_segment_and_what_is_left() {
    let mut alloc = segment(&[2, 1], 1);
    assert_eq!(count_16m_bars(&mut alloc), 13);
    let err = alloc
        .allocate(req("gpu13", 0, 16 * MIB, Space::Mem32))
        .unwrap_err();
    let text = err.to_string();
    for needle in [
        "BAR 0 of gpu13 (16 MiB, 32-bit MMIO)",
        "PCI segment 1",
        "0xdaaaa000-0xe7ffffff (213.3 MiB)",
        "5.3 MiB free",
        "the largest free block is 5.3 MiB",
        "the largest BAR that still fits is 4 MiB",
        "--pci-segment pci_segment=1,mmio32_aperture_weight=W",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert!(matches!(
        err,
        AllocError::Exhausted {
            remaining: 0x55_6000,
            ..
        }
    ));
    let mut io = segment(&[1], 0);
    io.allocate(req("a", 0, 0x200, Space::Io)).unwrap();
    let text = io
        .allocate(req("b", 4, 4, Space::Io))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("I/O port window") && text.contains("0 bytes free"),
        "{text}"
    );
}

#[test]
fn weights_decide_how_many_16m_gpu_bars_fit() {
    // 640 MiB holds 40 naturally aligned 16 MiB BARs. Weights 1:1 give 320 MiB = 20 each.
    assert_eq!(count_16m_bars(&mut segment(&[1, 1], 0)), 20);
    assert_eq!(count_16m_bars(&mut segment(&[1, 1], 1)), 20);
    // Weights 2:1: segment 0 gets 426.7 MiB from 0xC000_0000 = 26 BARs; segment 1 starts at
    // 0xDAAA_A000, so 5.3 MiB before its first 16 MiB boundary only fits smaller BARs: 13.
    assert_eq!(count_16m_bars(&mut segment(&[2, 1], 0)), 26);
    assert_eq!(count_16m_bars(&mut segment(&[2, 1], 1)), 13);
    // Weights 3:1: 480 MiB = 30 BARs, and 160 MiB from 0xDE00_0000 = 10.
    assert_eq!(count_16m_bars(&mut segment(&[3, 1], 0)), 30);
    assert_eq!(count_16m_bars(&mut segment(&[3, 1], 1)), 10);
}

#[test]
fn freed_space_is_reused() {
    let mut alloc = segment(&[1], 0);
    let a = alloc.allocate(req("a", 0, 16 * MIB, Space::Mem32)).unwrap();
    let b = alloc.allocate(req("b", 0, 16 * MIB, Space::Mem32)).unwrap();
    assert_ne!(a, b);
    assert_eq!(
        alloc.free(Space::Mem32, a, 8 * MIB),
        Err(AllocError::NotAllocated {
            space: Space::Mem32,
            addr: a,
            size: 8 * MIB,
            segment: 0
        })
    );
    alloc.free(Space::Mem32, a, 16 * MIB).unwrap();
    assert!(
        alloc.free(Space::Mem32, a, 16 * MIB).is_err(),
        "double free"
    );
    assert_eq!(
        alloc.allocate(req("c", 0, 16 * MIB, Space::Mem32)).unwrap(),
        a
    );
}

#[test]
fn small_bars_fill_gaps_instead_of_splitting_large_blocks() {
    // Best fit: after a 16 MiB BAR at 0xDB00_0000, the 5.3 MiB lead-in is the smallest block.
    let mut alloc = segment(&[2, 1], 1);
    assert_eq!(
        alloc
            .allocate(req("gpu", 0, 16 * MIB, Space::Mem32))
            .unwrap(),
        0xDB00_0000
    );
    assert_eq!(
        alloc
            .allocate(req("nic", 0, 64 * KIB, Space::Mem32))
            .unwrap(),
        0xDAAB_0000
    );
    assert_eq!(alloc.largest_allocatable(Space::Mem32), 128 * MIB);
}

#[test]
fn sub_page_memory_bars_get_a_page_of_their_own() {
    let mut alloc = segment(&[1], 0);
    let a = alloc.allocate(req("hda", 0, 16, Space::Mem32)).unwrap();
    let b = alloc.allocate(req("hda", 1, 256, Space::Mem32)).unwrap();
    assert_eq!(b - a, 4 * KIB);
    assert_eq!(alloc.remaining(Space::Mem32), 640 * MIB - 8 * KIB);
}

#[test]
fn guest_chosen_addresses_are_checked() {
    let mut alloc = segment(&[1], 0);
    let a = alloc
        .allocate(req("gpu0", 0, 16 * MIB, Space::Mem32))
        .unwrap();
    let err = alloc
        .reserve(req("gpu1", 0, 32 * MIB, Space::Mem32), a & !(32 * MIB - 1))
        .unwrap_err();
    assert_eq!(err.to_string(), "BAR 0 of gpu1 at 0xc0000000-0xc1ffffff (32 MiB) overlaps BAR 0 of gpu0 at 0xc0000000-0xc0ffffff (16 MiB)");
    assert!(matches!(
        alloc.reserve(req("x", 0, 16 * MIB, Space::Mem32), 0xC080_0000),
        Err(AllocError::Misaligned { .. })
    ));
    let outside = alloc
        .reserve(req("x", 0, 16 * MIB, Space::Mem32), 0xE800_0000)
        .unwrap_err();
    assert!(
        matches!(outside, AllocError::OutsideWindow { .. }),
        "{outside}"
    );
    // A free, aligned address is taken, and later allocations avoid it.
    alloc
        .reserve(req("x", 0, 16 * MIB, Space::Mem32), 0xC100_0000)
        .unwrap();
    assert_eq!(
        alloc.allocate(req("y", 0, 16 * MIB, Space::Mem32)).unwrap(),
        0xC200_0000
    );
    // A 64-bit BAR may be put below 4 GiB by the guest; a 32-bit one never above.
    alloc
        .reserve(req("z", 2, 4 * KIB, Space::Mem64), 0xC300_0000)
        .unwrap();
    assert!(alloc
        .reserve(req("w", 0, 4 * KIB, Space::Mem32), 0x1_4000_0000)
        .is_err());
}

#[test]
fn relocation_moves_a_bar_or_leaves_it_in_place() {
    let mut alloc = segment(&[1], 0);
    let a = alloc
        .allocate(req("gpu0", 0, 16 * MIB, Space::Mem32))
        .unwrap();
    let b = alloc
        .allocate(req("gpu1", 0, 16 * MIB, Space::Mem32))
        .unwrap();
    assert!(matches!(
        alloc.relocate(Space::Mem32, a, b, 16 * MIB),
        Err(AllocError::Overlap { .. })
    ));
    // Still at `a`: a fresh reservation there is refused.
    assert!(alloc
        .reserve(req("x", 0, 16 * MIB, Space::Mem32), a)
        .is_err());
    // Rewriting the same address is a no-op, but the size must still match.
    alloc.relocate(Space::Mem32, a, a, 16 * MIB).unwrap();
    assert!(alloc.relocate(Space::Mem32, a, a, 8 * MIB).is_err());
    alloc
        .relocate(Space::Mem32, a, 0xE000_0000, 16 * MIB)
        .unwrap();
    alloc
        .reserve(req("x", 0, 16 * MIB, Space::Mem32), a)
        .unwrap();
    let err = alloc
        .reserve(req("y", 0, 16 * MIB, Space::Mem32), 0xE000_0000)
        .unwrap_err();
    assert!(err.to_string().contains("BAR 0 of gpu0"), "{err}");
}

#[test]
fn malformed_requests_are_refused() {
    let mut alloc = segment(&[1], 0);
    for (bar, size, space) in [
        (0, 0, Space::Mem32),
        (0, 24 * KIB, Space::Mem32),
        (0, 8, Space::Mem64),
        (0, 2, Space::Io),
        (ROM_BAR, 64 * KIB, Space::Mem64),
        (5, 4 * KIB, Space::Mem64),
        (7, 4 * KIB, Space::Mem32),
    ] {
        let err = alloc.allocate(req("dev", bar, size, space)).unwrap_err();
        assert!(matches!(err, AllocError::InvalidRequest { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&format!("BAR {bar} of dev: ")),
            "{err}"
        );
    }
}

#[test]
fn only_owner_sees_other_bars_sharing_a_page() {
    let mut a = segment(&[1], 0);
    // The guest packs two 256-byte BARs into one page; a third sits alone on the next page.
    a.reserve(req("nic", 0, 256, Space::Mem32), 0xC000_0000)
        .unwrap();
    a.reserve(req("nic", 1, 256, Space::Mem32), 0xC000_0100)
        .unwrap();
    a.reserve(req("edu", 0, 256, Space::Mem32), 0xC000_1000)
        .unwrap();
    assert!(!a.only_owner(Space::Mem32, 0xC000_0000, 4 * KIB));
    assert!(a.only_owner(Space::Mem32, 0xC000_1000, 4 * KIB));
    // An allocated sub-page BAR takes its page: nothing else can be in it.
    let placed = a.allocate(req("virtio", 0, 64, Space::Mem32)).unwrap();
    assert!(a.only_owner(Space::Mem32, placed, 4 * KIB));
    // A 64-bit BAR may live in the 32-bit window; it is seen there too.
    a.reserve(req("gpu", 2, 4 * KIB, Space::Mem64), 0xC000_3000)
        .unwrap();
    assert!(!a.only_owner(Space::Mem32, 0xC000_2F00, 4 * KIB));
}
