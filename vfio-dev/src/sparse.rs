//! Which parts of a passthrough BAR may be mapped straight into the guest.
//!
//! A pure function of the VFIO region description and the ranges that must stay trapped (the
//! MSI-X table and PBA): the VMM mmaps the resulting areas from the device fd and installs them
//! as KVM memory slots; every other byte of the BAR traps to `read_bar`/`write_bar`. Traps work
//! at page granularity, so a trapped range takes its whole 4 KiB pages with it.

use std::ops::Range;

use pci::bar::BarIndex;

use crate::access::{region_flags, RegionCap, RegionInfo};

/// Granularity of KVM memory slots and of the holes carved for trapped ranges.
pub const PAGE_SIZE: u64 = 4096;

/// A part of a BAR to mmap from the device fd and map into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapArea {
    /// The BAR.
    pub bar: BarIndex,
    /// Offset of the area within the BAR (page aligned).
    pub offset: u64,
    /// Length in bytes: a multiple of the page size, except for a BAR smaller than a page,
    /// whose single area (at offset 0) has the BAR's size; the VMM maps a whole page for it.
    pub size: u64,
    /// Offset to pass to `mmap` on the device fd (the region offset plus `offset`).
    pub region_offset: u64,
    /// Map readable (the region has `VFIO_REGION_INFO_FLAG_READ`).
    pub prot_read: bool,
    /// Map writable (the region has `VFIO_REGION_INFO_FLAG_WRITE`).
    pub prot_write: bool,
}

/// The mappable areas of BAR `bar` (`bar_size` bytes) described by `region`, leaving the pages
/// of every range in `trapped` (offsets within the BAR) unmapped.
///
/// Rules: nothing unless the region has `MMAP`; a `SparseMmap` capability restricts mapping to
/// its areas, otherwise the whole region is the candidate; trapped ranges are widened to whole
/// pages and cut out; what remains is trimmed to page boundaries, and a piece smaller than a page
/// survives only when it is a whole sub-page BAR at offset 0. A BAR whose trapped pages cover
/// everything yields no area, so it traps entirely.
pub fn mmap_areas(
    bar: BarIndex,
    bar_size: u64,
    region: &RegionInfo,
    trapped: &[Range<u64>],
) -> Vec<MmapArea> {
    if region.flags & region_flags::MMAP == 0 || bar.is_rom() {
        return Vec::new();
    }
    let limit = bar_size.min(region.size);
    let candidates: Vec<Range<u64>> = region
        .caps
        .iter()
        .find_map(|cap| match cap {
            RegionCap::SparseMmap(areas) => Some(
                areas
                    .iter()
                    .map(|&(off, size)| off..off.saturating_add(size).min(limit))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_else(|| std::iter::once(0..limit).collect());
    let holes: Vec<Range<u64>> = trapped
        .iter()
        .filter(|r| r.start < r.end)
        .map(|r| align_down(r.start)..align_up(r.end))
        .collect();
    let mut areas = Vec::new();
    for candidate in candidates {
        for piece in subtract(candidate, &holes) {
            let whole_small_bar = piece.start == 0 && piece.end == limit && limit < PAGE_SIZE;
            let piece = if whole_small_bar {
                piece
            } else {
                align_up(piece.start)..align_down(piece.end)
            };
            if piece.start >= piece.end {
                continue;
            }
            areas.push(MmapArea {
                bar,
                offset: piece.start,
                size: piece.end - piece.start,
                region_offset: region.offset + piece.start,
                prot_read: region.flags & region_flags::READ != 0,
                prot_write: region.flags & region_flags::WRITE != 0,
            });
        }
    }
    areas.sort_by_key(|a| a.offset);
    areas
}

/// `range` minus every hole, as ordered disjoint pieces.
fn subtract(range: Range<u64>, holes: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut pieces = vec![range];
    for hole in holes {
        pieces = pieces
            .into_iter()
            .flat_map(|p| {
                let before = p.start..p.end.min(hole.start);
                let after = p.start.max(hole.end)..p.end;
                [before, after].into_iter().filter(|r| r.start < r.end)
            })
            .collect();
    }
    pieces
}

fn align_down(v: u64) -> u64 {
    v & !(PAGE_SIZE - 1)
}

fn align_up(v: u64) -> u64 {
    v.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW_MMAP: u32 = region_flags::READ | region_flags::WRITE | region_flags::MMAP;

    fn region(flags: u32, size: u64, caps: Vec<RegionCap>) -> RegionInfo {
        RegionInfo {
            flags,
            size,
            offset: 0x10_0000_0000,
            caps,
        }
    }

    fn spans(areas: &[MmapArea]) -> Vec<(u64, u64)> {
        areas.iter().map(|a| (a.offset, a.size)).collect()
    }

    fn bar0() -> BarIndex {
        BarIndex::new(0).unwrap()
    }

    #[test]
    fn msix_table_and_pba_pages_are_carved_out_of_the_bar() {
        let r = region(RW_MMAP, 0x4000, vec![]);
        // 33-entry table at 0x2000, PBA at 0x3000: pages 2 and 3 stay trapped.
        let areas = mmap_areas(bar0(), 0x4000, &r, &[0x2000..0x2210, 0x3000..0x3008]);
        assert_eq!(spans(&areas), [(0, 0x2000)]);
        assert_eq!(areas[0].region_offset, 0x10_0000_0000);
        assert!(areas[0].prot_read && areas[0].prot_write);
    }

    #[test]
    fn a_table_in_the_middle_splits_the_bar_in_two() {
        let r = region(RW_MMAP, 0x10000, vec![]);
        let areas = mmap_areas(bar0(), 0x10000, &r, std::slice::from_ref(&(0x4800..0x4900)));
        assert_eq!(spans(&areas), [(0, 0x4000), (0x5000, 0xb000)]);
        assert_eq!(areas[1].region_offset, 0x10_0000_5000);
    }

    #[test]
    fn sparse_mmap_capability_limits_the_areas() {
        let caps = vec![RegionCap::SparseMmap(vec![(0, 0x1000), (0x8000, 0x8000)])];
        let r = region(RW_MMAP | region_flags::CAPS, 0x10000, caps);
        let areas = mmap_areas(bar0(), 0x10000, &r, std::slice::from_ref(&(0xc000..0xc100)));
        assert_eq!(
            spans(&areas),
            [(0, 0x1000), (0x8000, 0x4000), (0xd000, 0x3000)]
        );
    }

    #[test]
    fn non_mmappable_region_has_no_areas() {
        let r = region(region_flags::READ | region_flags::WRITE, 0x4000, vec![]);
        assert!(mmap_areas(bar0(), 0x4000, &r, &[]).is_empty());
    }

    #[test]
    fn a_bar_that_is_all_msix_traps_entirely() {
        let r = region(RW_MMAP, 0x2000, vec![]);
        assert!(mmap_areas(bar0(), 0x2000, &r, &[0x0..0x800, 0x1000..0x1008]).is_empty());
    }

    #[test]
    fn sub_page_bar_maps_only_at_offset_zero() {
        let r = region(region_flags::READ | region_flags::MMAP, 0x100, vec![]);
        let areas = mmap_areas(bar0(), 0x100, &r, &[]);
        assert_eq!(spans(&areas), [(0, 0x100)]);
        assert!(!areas[0].prot_write);
        // A sub-page sparse area away from offset 0 is dropped.
        let caps = vec![RegionCap::SparseMmap(vec![(0x1800, 0x200)])];
        let r = region(RW_MMAP, 0x4000, caps);
        assert!(mmap_areas(bar0(), 0x4000, &r, &[]).is_empty());
    }
}
