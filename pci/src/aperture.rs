//! Address ranges, and the split of an MMIO (or I/O port) aperture among PCI segments by weight.
//!
//! Every segment gets its own window of each aperture; the `--pci-segment
//! mmio32_aperture_weight=W,mmio64_aperture_weight=W` options choose how large. The arithmetic is
//! cloud-hypervisor's (`create_mmio_allocators`), so the same weights give the same windows:
//!
//! ```text
//! unit    = floor(size / (alignment * Σ weights)) * alignment
//! base_i  = start + (w_0 + … + w_{i-1}) * unit
//! size_i  = unit * w_i            (the last segment: everything up to the aperture's end)
//! ```
//!
//! The windows tile the aperture: no overlap, no gap, and the rounding remainder (less than
//! `alignment * Σ weights`) goes to the last segment instead of being lost. Bases are multiples
//! of `alignment` *relative to the aperture start*; they are aligned absolutely when the start
//! is, which viaduct's layout guarantees.

use std::fmt;

use thiserror::Error;

/// A range of guest addresses (memory or I/O ports) given by its first address and its size.
///
/// [`end`](Self::end) is *exclusive* (`start + size`, like `Range::end`) and
/// [`last`](Self::last) is the inclusive last address (what ACPI `_CRS` and the tables of
/// `docs/memory-map.md` show). A range may be empty (`size == 0`). Invariant: `start + size`
/// fits in a `u64`, so `end()` never overflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressRange {
    start: u64,
    size: u64,
}

impl AddressRange {
    /// `[start, start + size)`, or `None` if `start + size` does not fit in a `u64`.
    pub const fn new(start: u64, size: u64) -> Option<Self> {
        match start.checked_add(size) {
            Some(_) => Some(Self { start, size }),
            None => None,
        }
    }

    /// `[start, last]` with an inclusive end, or `None` if `last < start` or `last == u64::MAX`.
    pub const fn from_inclusive(start: u64, last: u64) -> Option<Self> {
        if last < start || last == u64::MAX {
            return None;
        }
        Some(Self {
            start,
            size: last - start + 1,
        })
    }

    /// An empty range at `start` (e.g. a segment without a 64-bit window).
    pub const fn empty(start: u64) -> Self {
        Self { start, size: 0 }
    }

    /// First address.
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// Number of addresses.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// Whether the range holds no address.
    pub const fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// First address past the range (exclusive end).
    pub const fn end(&self) -> u64 {
        self.start + self.size
    }

    /// Last address of the range (inclusive end), `None` when the range is empty.
    pub const fn last(&self) -> Option<u64> {
        if self.size == 0 {
            None
        } else {
            Some(self.start + self.size - 1)
        }
    }

    /// Whether `addr` is inside the range.
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.size
    }

    /// Whether every address of `other` is inside this range (an empty `other` is contained
    /// when its start is inside or at the end of this range).
    pub const fn contains_range(&self, other: &AddressRange) -> bool {
        other.start >= self.start && other.end() <= self.end()
    }

    /// Whether the two ranges share at least one address (empty ranges overlap nothing).
    pub const fn overlaps(&self, other: &AddressRange) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && self.start < other.end()
            && other.start < self.end()
    }
}

impl fmt::Display for AddressRange {
    /// `0xc0000000-0xdaaa9fff (426.7 MiB)`, inclusive; `empty at 0x…` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last() {
            Some(last) => write!(
                f,
                "{:#x}-{:#x} ({})",
                self.start,
                last,
                HumanSize(self.size)
            ),
            None => write!(f, "empty at {:#x}", self.start),
        }
    }
}

/// A byte count shown for people: `16 MiB`, `4 KiB`, `426.7 MiB`, `12 bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let bytes = self.0;
        if bytes < 1024 {
            return write!(f, "{bytes} bytes");
        }
        let mut index = 0;
        while index + 1 < UNITS.len() && bytes >> (10 * (index + 2)) > 0 {
            index += 1;
        }
        let shift = 10 * (index + 1);
        if bytes & ((1u64 << shift) - 1) == 0 {
            write!(f, "{} {}", bytes >> shift, UNITS[index])
        } else {
            // Lossy on purpose: this is for messages; the exact value is printed next to it
            // where it matters.
            let value = bytes as f64 / (1u64 << shift) as f64;
            write!(f, "{value:.1} {}", UNITS[index])
        }
    }
}

/// Why an aperture could not be split among segments.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ApertureError {
    /// The weight list is empty: a VM always has at least segment 0.
    #[error("cannot split an aperture among zero PCI segments")]
    NoSegments,
    /// A segment has weight 0 and would get no window at all.
    #[error(
        "PCI segment {segment} has aperture weight 0; every segment needs a weight of at least 1"
    )]
    ZeroWeight {
        /// Index of the offending segment.
        segment: usize,
    },
    /// The split alignment is zero or not a power of two.
    #[error("aperture split alignment {alignment:#x} is not a power of two")]
    BadAlignment {
        /// The alignment that was asked for.
        alignment: u64,
    },
    /// The aperture cannot give every unit of weight one `alignment` block.
    #[error(
        "the aperture {window} is too small to split among {segments} PCI segment(s) with total \
         weight {total_weight} in {alignment_human} units: it needs at least {needed:#x} bytes \
         ({needed_human}); lower the aperture weights or the number of segments",
        alignment_human = HumanSize(*.alignment),
        needed_human = HumanSize(u64::try_from(*.needed).unwrap_or(u64::MAX)),
    )]
    TooSmall {
        /// The aperture that was to be split.
        window: AddressRange,
        /// Number of segments.
        segments: usize,
        /// Sum of the weights.
        total_weight: u64,
        /// Alignment of every window base (relative to the aperture start).
        alignment: u64,
        /// Smallest aperture size that would have worked (`alignment * total_weight`).
        needed: u128,
    },
}

/// Splits `window` among `weights.len()` segments in proportion to `weights`, every base a
/// multiple of `alignment` from `window.start()`; segment `i` gets element `i` of the result.
///
/// The result tiles `window` exactly: consecutive, non-overlapping, the last window ending where
/// `window` ends (it absorbs the rounding remainder). Every window is at least
/// `alignment * weight` long.
pub fn split_aperture(
    window: AddressRange,
    weights: &[u32],
    alignment: u64,
) -> Result<Vec<AddressRange>, ApertureError> {
    if weights.is_empty() {
        return Err(ApertureError::NoSegments);
    }
    if let Some(segment) = weights.iter().position(|&w| w == 0) {
        return Err(ApertureError::ZeroWeight { segment });
    }
    if !alignment.is_power_of_two() {
        return Err(ApertureError::BadAlignment { alignment });
    }
    // u128 throughout: Σ weights * alignment can exceed u64 (96 × u32::MAX × 4 GiB).
    let total_weight: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let size = u128::from(window.size());
    let block = u128::from(alignment) * total_weight;
    let unit = size / block * u128::from(alignment);
    if unit == 0 {
        return Err(ApertureError::TooSmall {
            window,
            segments: weights.len(),
            total_weight: u64::try_from(total_weight).unwrap_or(u64::MAX),
            alignment,
            needed: block,
        });
    }

    let mut windows = Vec::with_capacity(weights.len());
    let mut weight_before: u128 = 0;
    for (index, &weight) in weights.iter().enumerate() {
        // offset <= unit * total_weight <= size, so these narrowings cannot fail.
        let offset = u64::try_from(weight_before * unit).expect("offset within the window");
        let base = window.start() + offset;
        let len = if index + 1 == weights.len() {
            window.end() - base
        } else {
            u64::try_from(unit * u128::from(weight)).expect("share within the window")
        };
        windows.push(AddressRange {
            start: base,
            size: len,
        });
        weight_before += u128::from(weight);
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn range(start: u64, last: u64) -> AddressRange {
        AddressRange::from_inclusive(start, last).unwrap()
    }

    /// The 32-bit PCI aperture of viaduct and cloud-hypervisor (640 MiB).
    fn mmio32() -> AddressRange {
        range(0xC000_0000, 0xE7FF_FFFF)
    }

    /// Checks that `windows` tile `window` and follow the documented arithmetic.
    fn assert_tiles(
        window: AddressRange,
        weights: &[u32],
        alignment: u64,
        windows: &[AddressRange],
    ) {
        assert_eq!(windows.len(), weights.len());
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let unit = window.size() / (alignment * total) * alignment;
        let mut next = window.start();
        for (i, (w, &weight)) in windows.iter().zip(weights).enumerate() {
            assert_eq!(w.start(), next, "window {i} starts where the previous ends");
            assert_eq!(
                (w.start() - window.start()) % alignment,
                0,
                "window {i} base aligned"
            );
            if i + 1 < windows.len() {
                assert_eq!(w.size(), unit * u64::from(weight), "window {i} size");
            } else {
                assert!(w.size() >= unit * u64::from(weight));
                assert!(w.size() - unit * u64::from(weight) < alignment * total);
            }
            for other in &windows[i + 1..] {
                assert!(!w.overlaps(other));
            }
            next = w.end();
        }
        assert_eq!(
            next,
            window.end(),
            "the last window reaches the aperture end"
        );
    }

    #[test]
    fn one_segment_gets_the_whole_window() {
        let w = split_aperture(mmio32(), &[1], 4 * KIB).unwrap();
        assert_eq!(w, vec![mmio32()]);
        let w = split_aperture(mmio32(), &[7], 4 * KIB).unwrap();
        assert_eq!(w, vec![mmio32()]);
    }

    #[test]
    fn equal_weights_halve_the_32bit_aperture() {
        let w = split_aperture(mmio32(), &[1, 1], 4 * KIB).unwrap();
        assert_eq!(
            w,
            vec![
                range(0xC000_0000, 0xD3FF_FFFF),
                range(0xD400_0000, 0xE7FF_FFFF)
            ]
        );
        assert_eq!(w[0].size(), 320 * MIB);
    }

    #[test]
    fn weights_two_to_one_give_segment_zero_two_thirds() {
        let w = split_aperture(mmio32(), &[2, 1], 4 * KIB).unwrap();
        assert_eq!(w[0], range(0xC000_0000, 0xDAAA_9FFF));
        assert_eq!(w[0].size(), 0x1AAA_A000);
        assert_eq!(w[1], range(0xDAAA_A000, 0xE7FF_FFFF));
        assert_eq!(w[1].size(), 0xD55_6000);
        // 2/3 of 640 MiB is 0x1AAA_AAAA: segment 0 is within one alignment unit of it.
        assert!(0x1AAA_AAAA - w[0].size() < 4 * KIB);
    }

    #[test]
    fn matches_cloud_hypervisor_unit_test_windows() {
        // cloud-hypervisor's test_create_mmio_allocators uses 0x10_0000..=0x3F_FFFF.
        let window = range(0x10_0000, 0x3F_FFFF);
        let w = split_aperture(window, &[1, 1], 4 * KIB).unwrap();
        assert_eq!(
            w,
            vec![range(0x10_0000, 0x27_FFFF), range(0x28_0000, 0x3F_FFFF)]
        );
        let w = split_aperture(window, &[2, 1], 4 * KIB).unwrap();
        assert_eq!(
            w,
            vec![range(0x10_0000, 0x2F_FFFF), range(0x30_0000, 0x3F_FFFF)]
        );
    }

    #[test]
    fn five_unequal_segments_follow_their_weights() {
        let weights = [3, 1, 1, 2, 1];
        let w = split_aperture(mmio32(), &weights, 4 * KIB).unwrap();
        // unit = floor(640 MiB / (4 KiB * 8)) * 4 KiB = 80 MiB exactly: no remainder.
        let expected = [
            range(0xC000_0000, 0xCEFF_FFFF),
            range(0xCF00_0000, 0xD3FF_FFFF),
            range(0xD400_0000, 0xD8FF_FFFF),
            range(0xD900_0000, 0xE2FF_FFFF),
            range(0xE300_0000, 0xE7FF_FFFF),
        ];
        assert_eq!(w, expected);
        assert_tiles(mmio32(), &weights, 4 * KIB, &w);
    }

    #[test]
    fn last_segment_absorbs_the_rounding_remainder() {
        // 640 MiB / 7 is not a multiple of 4 KiB.
        let weights = [1; 7];
        let w = split_aperture(mmio32(), &weights, 4 * KIB).unwrap();
        let unit = w[0].size();
        assert_eq!(unit, 0x5B6_D000);
        assert_eq!(w[6].size(), 640 * MIB - 6 * unit);
        assert!(w[6].size() > unit);
        assert_tiles(mmio32(), &weights, 4 * KIB, &w);
    }

    #[test]
    fn cloud_hypervisor_64bit_example_splits_at_4g_units() {
        // phys_bits 46, 4 GiB RAM: cloud-hypervisor's start_of_device_area and end_of_device_area.
        let window = range(0x1_4000_0000, 0x3FFF_FFEE_FFFF);
        let w = split_aperture(window, &[1, 1], 4 * GIB).unwrap();
        assert_eq!(w[0], range(0x1_4000_0000, 0x2000_3FFF_FFFF));
        assert_eq!(w[0].size(), 0x1FFF_0000_0000);
        assert_eq!(w[1].start(), 0x2000_4000_0000);
        assert_eq!(w[1].last(), Some(0x3FFF_FFEE_FFFF));
        assert_tiles(window, &[1, 1], 4 * GIB, &w);
    }

    #[test]
    fn windows_tile_the_aperture_for_many_weight_vectors() {
        // A deterministic linear congruential generator instead of a rand dependency.
        let mut state: u64 = 0x5eed_a0f0_2d06;
        let mut next = move |bound: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % bound
        };
        let apertures = [
            (mmio32(), 4 * KIB),
            (range(0x1_4000_0000, 0x3FFF_FFEE_FFFF), 4 * GIB),
            (range(0x2_0000_0000, 0xF_FFFF_FFFF), 4 * GIB),
            (range(0x1000, 0xFFFF), 0x100),
        ];
        let (mut checked, mut too_small) = (0, 0);
        for _ in 0..500 {
            let (window, alignment) = apertures[next(apertures.len() as u64) as usize];
            let count = 1 + next(12) as usize;
            let weights: Vec<u32> = (0..count).map(|_| 1 + next(9) as u32).collect();
            match split_aperture(window, &weights, alignment) {
                Ok(w) => {
                    assert_tiles(window, &weights, alignment, &w);
                    checked += 1;
                }
                Err(ApertureError::TooSmall { needed, .. }) => {
                    assert!(needed > u128::from(window.size()));
                    too_small += 1;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        // The 56 GiB aperture has only 14 units of 4 GiB: many vectors are too heavy for it.
        assert_eq!(checked + too_small, 500);
        assert!(
            checked > 350 && too_small > 50,
            "{checked} split, {too_small} too small"
        );
    }

    #[test]
    fn bad_inputs_are_refused_with_their_numbers() {
        assert_eq!(
            split_aperture(mmio32(), &[], 4 * KIB),
            Err(ApertureError::NoSegments)
        );
        assert_eq!(
            split_aperture(mmio32(), &[1, 0, 2], 4 * KIB),
            Err(ApertureError::ZeroWeight { segment: 1 })
        );
        assert_eq!(
            split_aperture(mmio32(), &[1], 3000),
            Err(ApertureError::BadAlignment { alignment: 3000 })
        );
        assert_eq!(
            split_aperture(mmio32(), &[1], 0),
            Err(ApertureError::BadAlignment { alignment: 0 })
        );
        // 640 MiB cannot give 96 segments of weight 2 a 4 GiB unit each.
        let err = split_aperture(mmio32(), &[2; 96], 4 * GIB).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("96 PCI segment(s)"), "{text}");
        assert!(text.contains("total weight 192"), "{text}");
        assert!(text.contains("4 GiB units"), "{text}");
        assert!(text.contains("0xc0000000-0xe7ffffff (640 MiB)"), "{text}");
        assert!(text.contains("768 GiB"), "{text}");
        // An empty aperture is too small for anything.
        assert!(matches!(
            split_aperture(AddressRange::empty(0x1000), &[1], 4 * KIB),
            Err(ApertureError::TooSmall { .. })
        ));
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let window = range(0x1_0000_0000, 0xFFFF_FFFF_FFFF);
        let err = split_aperture(window, &[u32::MAX; 96], 4 * GIB).unwrap_err();
        assert!(matches!(err, ApertureError::TooSmall { .. }));
        let w = split_aperture(window, &[u32::MAX, 1], 4 * KIB).unwrap();
        assert_tiles(window, &[u32::MAX, 1], 4 * KIB, &w);
    }

    #[test]
    fn range_queries() {
        let r = range(0x1000, 0x1FFF);
        assert_eq!(
            (r.start(), r.size(), r.end(), r.last()),
            (0x1000, 0x1000, 0x2000, Some(0x1FFF))
        );
        assert!(r.contains(0x1000) && r.contains(0x1FFF));
        assert!(!r.contains(0xFFF) && !r.contains(0x2000));
        assert!(r.overlaps(&range(0x1FFF, 0x2FFF)));
        assert!(!r.overlaps(&range(0x2000, 0x2FFF)));
        assert!(!r.overlaps(&AddressRange::empty(0x1800)));
        assert!(r.contains_range(&range(0x1800, 0x1FFF)));
        assert!(!r.contains_range(&range(0x1800, 0x2000)));
        assert_eq!(AddressRange::empty(5).last(), None);
        assert_eq!(AddressRange::new(u64::MAX, 2), None);
        assert_eq!(AddressRange::from_inclusive(2, 1), None);
        assert_eq!(AddressRange::from_inclusive(0, u64::MAX), None);
        assert_eq!(r.to_string(), "0x1000-0x1fff (4 KiB)");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(HumanSize(12).to_string(), "12 bytes");
        assert_eq!(HumanSize(4 * KIB).to_string(), "4 KiB");
        assert_eq!(HumanSize(16 * MIB).to_string(), "16 MiB");
        assert_eq!(HumanSize(0x1AAA_A000).to_string(), "426.7 MiB");
        assert_eq!(HumanSize(64 * GIB).to_string(), "64 GiB");
        assert_eq!(HumanSize(u64::MAX).to_string(), "16.0 EiB");
    }
}
