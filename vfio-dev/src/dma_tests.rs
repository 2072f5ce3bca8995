use super::*;

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

/// Builds a `VFIO_IOMMU_GET_INFO` answer: header, then optionally an unrelated capability, then
/// the IOVA-range capability.
fn info_buf(pgsizes: u64, ranges: &[(u64, u64)], extra_cap_first: bool) -> Vec<u8> {
    let mut b = Vec::new();
    let mut caps = Vec::new();
    let mut off = INFO_SIZE;
    if extra_cap_first {
        // id 2 (migration), 24 bytes.
        let next = off + 24;
        caps.extend_from_slice(&2u16.to_ne_bytes());
        caps.extend_from_slice(&1u16.to_ne_bytes());
        caps.extend_from_slice(&(next as u32).to_ne_bytes());
        caps.extend_from_slice(&[0u8; 16]);
        off = next;
    }
    let _ = off;
    caps.extend_from_slice(&CAP_IOVA_RANGE.to_ne_bytes());
    caps.extend_from_slice(&1u16.to_ne_bytes());
    caps.extend_from_slice(&0u32.to_ne_bytes());
    caps.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
    caps.extend_from_slice(&0u32.to_ne_bytes());
    for (s, e) in ranges {
        caps.extend_from_slice(&s.to_ne_bytes());
        caps.extend_from_slice(&e.to_ne_bytes());
    }
    let argsz = (INFO_SIZE + caps.len()) as u32;
    b.extend_from_slice(&argsz.to_ne_bytes());
    b.extend_from_slice(&(INFO_PGSIZES | INFO_CAPS).to_ne_bytes());
    b.extend_from_slice(&pgsizes.to_ne_bytes());
    b.extend_from_slice(&(INFO_SIZE as u32).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&caps);
    b
}

/// What a 39-bit emulated VT-d reports: everything below 512 GiB except the MSI window.
const VTD39: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];

#[test]
fn iova_ranges_are_parsed_from_the_capability_chain() {
    let info = parse_iommu_info(&info_buf(0x40201000, &VTD39, true));
    assert_eq!(info.page_sizes, 0x40201000);
    assert_eq!(
        info.iova_ranges,
        Some(vec![
            IovaRange {
                start: 0,
                end: 0xfedf_ffff
            },
            IovaRange {
                start: 0xfef0_0000,
                end: (1 << 39) - 1
            },
        ])
    );
}

#[test]
fn info_without_caps_has_no_ranges() {
    let mut b = info_buf(0x1000, &VTD39, false);
    b[4..8].copy_from_slice(&INFO_PGSIZES.to_ne_bytes());
    let info = parse_iommu_info(&b[..INFO_SIZE]);
    assert_eq!(info.page_sizes, 0x1000);
    assert_eq!(info.iova_ranges, None);
}

#[test]
fn truncated_or_looping_chains_are_not_trusted() {
    let b = info_buf(0x1000, &VTD39, false);
    // Cut in the middle of the ranges: no ranges rather than garbage.
    assert_eq!(parse_iommu_info(&b[..b.len() - 4]).iova_ranges, None);
    // A capability whose next points at itself ends the walk.
    let mut b = info_buf(0x1000, &VTD39, true);
    b[INFO_SIZE + 4..INFO_SIZE + 8].copy_from_slice(&(INFO_SIZE as u32).to_ne_bytes());
    assert_eq!(parse_iommu_info(&b).iova_ranges, None);
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
fn get_info_ioctl_number_matches_the_kernel() {
    // _IO(';', VFIO_BASE + 12) in <linux/vfio.h>.
    assert_eq!(VFIO_IOMMU_GET_INFO(), 0x3b70);
}
