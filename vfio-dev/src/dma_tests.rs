use super::*;
use crate::iommu_info::tests::{info_buf, VTD39};

const INF: u64 = libc::RLIM_INFINITY;
const GIB: u64 = 1 << 30;

#[test]
fn memlock_unlimited_or_large_enough_needs_nothing() {
    assert_eq!(memlock_plan(INF, INF, 8 * GIB), MemlockPlan::Enough);
    assert_eq!(
        memlock_plan(16 * GIB, 16 * GIB, 8 * GIB),
        MemlockPlan::Enough
    );
    assert_eq!(memlock_plan(8 * GIB, 8 * GIB, 8 * GIB), MemlockPlan::Enough);
}

#[test]
fn memlock_soft_limit_below_need_is_raised_when_hard_allows() {
    // The usual desktop default: 8 MiB soft, unlimited hard.
    assert_eq!(
        memlock_plan(8 << 20, INF, 2 * GIB),
        MemlockPlan::RaiseSoft(2 * GIB)
    );
    assert_eq!(
        memlock_plan(8 << 20, 4 * GIB, 2 * GIB),
        MemlockPlan::RaiseSoft(2 * GIB)
    );
}

#[test]
fn memlock_hard_limit_below_need_needs_privilege() {
    assert_eq!(
        memlock_plan(8 << 20, 64 << 20, 2 * GIB),
        MemlockPlan::RaiseHard(2 * GIB)
    );
}

#[test]
fn memlock_error_says_what_is_needed_and_how_to_raise_it() {
    let e = VfioError::Memlock {
        current: 8 << 20,
        need: 2 * GIB + MEMLOCK_MARGIN,
        ram: 2 * GIB,
        detail: "the hard limit is 8 MiB; setrlimit: Operation not permitted".to_string(),
    };
    let msg = e.to_string();
    assert!(
        msg.starts_with("RLIMIT_MEMLOCK is 8 MiB but passthrough pins all guest RAM"),
        "{msg}"
    );
    assert!(
        msg.contains("need at least 2.1 GiB (2 GiB of RAM plus 64 MiB of margin)"),
        "{msg}"
    );
    assert!(msg.contains("ulimit -l 2162688"), "{msg}");
    assert!(msg.contains("LimitMEMLOCK="), "{msg}");
    assert!(msg.contains("run viaduct as root"), "{msg}");
}

#[test]
fn cap_ipc_lock_is_read_from_capeff() {
    let root = "Name:\tviaduct\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
    let user = "Name:\tviaduct\nCapEff:\t0000000000000000\n";
    let only_ipc_lock = "CapEff:\t0000000000004000\n";
    assert!(status_has_capability(root, 14));
    assert!(!status_has_capability(user, 14));
    assert!(status_has_capability(only_ipc_lock, 14));
    assert!(!status_has_capability("", 14));
}

fn region(gpa: u64, size: u64) -> GuestRamRegion {
    GuestRamRegion {
        gpa,
        size,
        host_addr: 0x7f00_0000_0000usize as *mut u8,
    }
}

#[test]
fn ram_inside_the_iova_ranges_passes() {
    let info = parse_iommu_info(&info_buf(0x1000, &VTD39, false));
    // 3 GiB below the 32-bit hole, 5 GiB above 4 GiB.
    let ram = [region(0, 3 * GIB), region(4 * GIB, 5 * GIB)];
    assert!(check_regions(&ram, &info).is_ok());
}

#[test]
fn ram_beyond_a_39_bit_iommu_is_refused_with_the_range() {
    let info = parse_iommu_info(&info_buf(0x1000, &VTD39, false));
    let ram = [region(0, 3 * GIB), region(4 * GIB, 600 * GIB)];
    let msg = check_regions(&ram, &info).unwrap_err().to_string();
    assert!(
        msg.starts_with("guest RAM at 0x100000000..0x9700000000 (600 GiB)"),
        "{msg}"
    );
    assert!(msg.contains("0xfef00000..=0x7fffffffff"), "{msg}");
}

#[test]
fn ram_over_the_msi_window_is_refused() {
    let info = parse_iommu_info(&info_buf(0x1000, &VTD39, false));
    let msg = check_regions(&[region(0, 4 * GIB)], &info)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("outside the IOVA ranges"), "{msg}");
}

#[test]
fn misaligned_ram_is_refused() {
    let info = IommuInfo {
        page_sizes: 0x1000 | 0x20_0000,
        iova_ranges: None,
        dma_avail: None,
    };
    let err = check_regions(&[region(0x800, 0x1000)], &info).unwrap_err();
    assert!(matches!(err, VfioError::Misaligned { page: 0x1000, .. }));
}

#[test]
fn time_per_gib_scales_with_bytes() {
    let s = DmaStats {
        bytes: 4 * GIB,
        elapsed: Duration::from_millis(800),
    };
    assert_eq!(s.per_gib(), Duration::from_millis(200));
    let none = DmaStats {
        bytes: 0,
        elapsed: Duration::from_millis(5),
    };
    assert_eq!(none.per_gib(), Duration::ZERO);
}

#[test]
fn guest_ram_is_mapped_in_pieces_that_end_on_gib_boundaries() {
    const GIB: u64 = 1 << 30;
    // 3 GiB of low RAM below the 32-bit hole, and 5.5 GiB from 4 GiB up: each is cut at every
    // GiB, its host address moving with it, and the last piece is what is left.
    let low = GuestRamRegion {
        gpa: 0,
        size: 3 * GIB,
        host_addr: (16 * GIB) as *mut u8,
    };
    let high = GuestRamRegion {
        gpa: 4 * GIB,
        size: 5 * GIB + GIB / 2,
        host_addr: (64 * GIB) as *mut u8,
    };
    let pieces = map_pieces(&[low, high]);
    let got: Vec<(u64, u64, usize)> = pieces
        .iter()
        .map(|p| (p.gpa, p.size, p.host_addr as usize))
        .collect();
    let mut want: Vec<(u64, u64, usize)> = (0..3)
        .map(|i| (i * GIB, GIB, ((16 + i) * GIB) as usize))
        .collect();
    for i in 0..5 {
        want.push(((4 + i) * GIB, GIB, ((64 + i) * GIB) as usize));
    }
    want.push((9 * GIB, GIB / 2, (69 * GIB) as usize));
    assert_eq!(got, want);
    // A region that starts and ends inside a GiB stays whole; a region across one boundary is
    // cut there; an empty one gives nothing.
    let small = region(0x10_0000, 0x20_0000);
    assert_eq!(map_pieces(&[small]).len(), 1);
    let across = region(GIB - 0x20_0000, 0x40_0000);
    let cut: Vec<(u64, u64)> = map_pieces(&[across])
        .iter()
        .map(|p| (p.gpa, p.size))
        .collect();
    assert_eq!(cut, [(GIB - 0x20_0000, 0x20_0000), (GIB, 0x20_0000)]);
    assert!(map_pieces(&[region(GIB, 0)]).is_empty());
}

#[test]
fn unmapping_a_region_takes_every_piece_inside_it_and_nothing_else() {
    const GIB: u64 = 1 << 30;
    let regions = [region(0, 2 * GIB), region(4 * GIB, GIB)];
    let piece = |iova, size| DmaMapping { iova, size };
    assert!(within(&piece(0, GIB), &regions));
    assert!(within(&piece(GIB, GIB), &regions));
    assert!(within(&piece(4 * GIB, GIB), &regions));
    // A peer-to-peer BAR mapping elsewhere, and one that overlaps a region's end, stay.
    assert!(!within(&piece(3 * GIB, 0x1000), &regions));
    assert!(!within(&piece(GIB, 2 * GIB), &regions));
}
