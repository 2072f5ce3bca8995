//! The VM's PCI segments as address windows: each segment's share of the 32-bit and 64-bit MMIO
//! apertures (split by the configured weights) and of the PCI I/O port window, and how the ACPI
//! tables describe each root. Pure arithmetic over `arch::layout`; the device manager builds the
//! buses and allocators from it.

use arch::acpi::PciRootDescription;
use arch::layout;
use pci::allocator::{BarRequest, SegmentAllocator, Space};
use pci::aperture::{split_aperture, AddressRange, ApertureError};
use pci::bar::{BarKind, BarSpec};
use pci::segment::ECAM_WINDOW_SIZE;
use vfio_dev::iommu_info::IovaRange;

use crate::config::PciConfig;

/// One segment's windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentWindows {
    /// The segment number (PCI domain).
    pub id: u16,
    /// Its 32-bit MMIO window.
    pub mmio32: AddressRange,
    /// Its 64-bit MMIO window (empty when the guest has no room above RAM).
    pub mmio64: AddressRange,
    /// Its I/O port window.
    pub io: AddressRange,
}

/// Why the segments could not be laid out.
#[derive(Debug, thiserror::Error)]
#[error("PCI layout: cannot split the {what} among the segments")]
pub struct LayoutError {
    /// Which window.
    pub what: &'static str,
    /// Why.
    #[source]
    pub source: ApertureError,
}

/// Splits `window` by `weights`, or gives every segment an empty window when there is none.
fn split(
    what: &'static str,
    window: Option<AddressRange>,
    weights: &[u32],
    alignment: u64,
) -> Result<Vec<AddressRange>, LayoutError> {
    match window {
        Some(w) => {
            split_aperture(w, weights, alignment).map_err(|source| LayoutError { what, source })
        }
        None => Ok(vec![AddressRange::empty(0); weights.len()]),
    }
}

/// How far the host IOMMU reaches into the 64-bit MMIO aperture, as the layout found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Not known (no passthrough device, peer-to-peer off, or the kernel does not report its
    /// IOVA ranges): the aperture is laid out as if the IOMMU reached everywhere.
    Unknown,
    /// Every segment's 64-bit window lies inside the IOMMU's reach.
    Inside,
    /// The IOMMU reaches only up to `limit` (inclusive) and the devices' 64-bit BARs did not
    /// fit below it: the windows extend beyond, and BARs placed there get no peer-to-peer
    /// mapping.
    Beyond {
        /// The last guest address inside the reach.
        limit: u64,
    },
}

/// The segments' windows and what the host IOMMU can reach of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Segment `i` at index `i`.
    pub segments: Vec<SegmentWindows>,
    /// Whether the 64-bit windows are inside the host IOMMU's reach.
    pub reach: Reach,
}

/// The part of the 64-bit aperture `(start, last)` a host IOMMU with IOVA ranges `ranges` can
/// translate: the range that holds the aperture's start (or else the largest overlap), with its
/// start on a [`layout::MEM_64BIT_DEVICES_ALIGNMENT`] boundary. `None` when too little is left.
pub fn reachable_part(aperture: (u64, u64), ranges: &[IovaRange]) -> Option<(u64, u64)> {
    let (start, last) = aperture;
    let (from, to) = ranges
        .iter()
        .filter_map(|r| {
            let (a, b) = (start.max(r.start), last.min(r.end));
            (a <= b).then_some((a, b))
        })
        .max_by_key(|&(a, b)| (a == start, b - a))?;
    let from = from.checked_next_multiple_of(layout::MEM_64BIT_DEVICES_ALIGNMENT)?;
    (from < to).then_some((from, to))
}

/// Splits the apertures among the segments of `cfg` with `mmio64` as the 64-bit aperture.
fn split_all(
    cfg: &PciConfig,
    mmio64_aperture: Option<AddressRange>,
) -> Result<Vec<SegmentWindows>, LayoutError> {
    let w32: Vec<u32> = cfg
        .segments
        .iter()
        .map(|s| s.mmio32_aperture_weight)
        .collect();
    let w64: Vec<u32> = cfg
        .segments
        .iter()
        .map(|s| s.mmio64_aperture_weight)
        .collect();
    let equal = vec![1u32; cfg.segments.len()];

    let mmio32_aperture = AddressRange::new(
        layout::MEM_32BIT_DEVICES_START,
        layout::MEM_32BIT_DEVICES_SIZE,
    );
    let mmio32 = split(
        "32-bit MMIO aperture",
        mmio32_aperture,
        &w32,
        layout::MEM_32BIT_DEVICES_SPLIT_ALIGNMENT,
    )?;
    let total64: u64 = w64.iter().map(|&w| u64::from(w)).sum();
    let align64 = mmio64_aperture.map_or(layout::MEM_64BIT_DEVICES_ALIGNMENT, |a| {
        layout::mem64_split_alignment(a.size(), total64)
    });
    let mmio64 = split("64-bit MMIO aperture", mmio64_aperture, &w64, align64)?;
    let io_window = AddressRange::new(
        u64::from(layout::PCI_IO_PORT_START),
        u64::from(layout::PCI_IO_PORT_SIZE),
    );
    let io = split(
        "PCI I/O port window",
        io_window,
        &equal,
        layout::PCI_IO_PORT_SPLIT_ALIGNMENT,
    )?;
    Ok(mmio32
        .into_iter()
        .zip(mmio64)
        .zip(io)
        .enumerate()
        .map(|(index, ((mmio32, mmio64), io))| SegmentWindows {
            id: index as u16,
            mmio32,
            mmio64,
            io,
        })
        .collect())
}

/// Whether the BARs of `demand` (segment, BAR) all fit the windows of `segments`, placed
/// largest first as the device manager places them.
pub fn demand_fits(segments: &[SegmentWindows], demand: &[(u16, BarSpec)]) -> bool {
    segments.iter().all(|w| {
        let mut allocator = SegmentAllocator::new(w.id, w.mmio32, w.mmio64, w.io);
        let mut bars: Vec<&BarSpec> = demand
            .iter()
            .filter(|(seg, _)| *seg == w.id)
            .map(|(_, spec)| spec)
            .collect();
        bars.sort_by_key(|s| std::cmp::Reverse(s.size));
        bars.iter().all(|spec| {
            let space = match spec.kind {
                BarKind::Io => Space::Io,
                BarKind::Mem32 => Space::Mem32,
                BarKind::Mem64 => Space::Mem64,
            };
            allocator
                .allocate(BarRequest {
                    owner: String::new(),
                    bar: spec.index.get(),
                    size: spec.size,
                    space,
                })
                .is_ok()
        })
    })
}

/// Lays out the segments of `cfg` for a guest whose RAM ends at `ram_end` and whose physical
/// address width is `phys_bits`.
///
/// With `reach` (the host IOMMU's IOVA ranges, when BARs are to be DMA-mapped for
/// peer-to-peer), the 64-bit aperture is first cut down to what the IOMMU translates, so every
/// segment's 64-bit window (and so every BAR in it) is reachable by the devices' DMA; if the
/// cold-plugged BARs of `demand` do not fit the smaller windows, the full aperture is used and
/// [`Reach::Beyond`] says so (the VM starts; BARs above the limit get no P2P mapping).
pub fn plan_segments(
    cfg: &PciConfig,
    ram_end: u64,
    phys_bits: u8,
    reach: Option<&[IovaRange]>,
    demand: &[(u16, BarSpec)],
) -> Result<Plan, LayoutError> {
    let full = layout::mem64_aperture(ram_end, phys_bits);
    let range = |(start, last): (u64, u64)| AddressRange::from_inclusive(start, last);
    if let (Some(ranges), Some(aperture)) = (reach, full) {
        match reachable_part(aperture, ranges) {
            Some(part) if part == aperture => {
                return Ok(Plan {
                    segments: split_all(cfg, range(aperture))?,
                    reach: Reach::Inside,
                })
            }
            Some(part) => {
                let segments = split_all(cfg, range(part))?;
                if demand_fits(&segments, demand) {
                    return Ok(Plan {
                        segments,
                        reach: Reach::Inside,
                    });
                }
                return Ok(Plan {
                    segments: split_all(cfg, range(aperture))?,
                    reach: Reach::Beyond { limit: part.1 },
                });
            }
            None => {
                let limit = ranges
                    .iter()
                    .filter(|r| r.start <= aperture.0)
                    .map(|r| r.end)
                    .max()
                    .unwrap_or(0);
                return Ok(Plan {
                    segments: split_all(cfg, range(aperture))?,
                    reach: Reach::Beyond { limit },
                });
            }
        }
    }
    Ok(Plan {
        segments: split_all(cfg, full.and_then(range))?,
        reach: Reach::Unknown,
    })
}

impl SegmentWindows {
    /// How the ACPI tables describe this root.
    pub fn acpi_root(&self) -> PciRootDescription {
        PciRootDescription {
            segment: self.id,
            ecam_base: layout::ecam_window(self.id),
            ecam_size: ECAM_WINDOW_SIZE as u32,
            mmio32: (
                self.mmio32.start() as u32,
                self.mmio32.last().unwrap_or(0) as u32,
            ),
            mmio64: self.mmio64.last().map(|last| (self.mmio64.start(), last)),
            io: self
                .io
                .last()
                .map(|last| (self.io.start() as u16, last as u16)),
            legacy_config_ports: self.id == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PciSegmentConfig;

    #[test]
    fn two_segments_split_the_apertures_by_weight() {
        let cfg = PciConfig {
            segments: vec![
                PciSegmentConfig {
                    mmio32_aperture_weight: 2,
                    mmio64_aperture_weight: 1,
                },
                PciSegmentConfig::default(),
            ],
            ..PciConfig::default()
        };
        let plan = plan_segments(&cfg, 1 << 30, 46, None, &[]).unwrap();
        assert_eq!(plan.reach, Reach::Unknown);
        let plan = plan.segments;
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].mmio32.start(), 0xc000_0000);
        assert_eq!(plan[0].mmio32.last(), Some(0xdaaa_9fff));
        assert_eq!(plan[1].mmio32.start(), 0xdaaa_a000);
        assert_eq!(plan[0].mmio64.start(), 1 << 32);
        assert_eq!(plan[1].mmio64.last(), Some((1 << 46) - 1));
        assert!(plan[0].acpi_root().legacy_config_ports);
        assert!(!plan[1].acpi_root().legacy_config_ports);
        assert_eq!(plan[1].acpi_root().ecam_base, layout::ecam_window(1));
    }

    const GIB: u64 = 1 << 30;

    /// What an emulated VT-d with `bits` address bits reports: all of it but the MSI window.
    fn vtd(bits: u32) -> Vec<IovaRange> {
        vec![
            IovaRange {
                start: 0,
                end: 0xfedf_ffff,
            },
            IovaRange {
                start: 0xfef0_0000,
                end: (1u64 << bits) - 1,
            },
        ]
    }

    fn two_segments() -> PciConfig {
        PciConfig {
            segments: vec![PciSegmentConfig::default(); 2],
            ..PciConfig::default()
        }
    }

    fn bar64(size: u64) -> BarSpec {
        BarSpec::new(pci::bar::BarIndex::new(2).unwrap(), size, BarKind::Mem64)
    }

    #[test]
    fn a_39_bit_iommu_keeps_every_64_bit_window_below_512g() {
        // 512 MiB of RAM, 46 guest address bits: the aperture would run to 64 TiB, and with two
        // segments segment 1's window would start far beyond 512 GiB.
        let plan = plan_segments(&two_segments(), 512 << 20, 46, Some(&vtd(39)), &[]).unwrap();
        assert_eq!(plan.reach, Reach::Inside);
        for w in &plan.segments {
            assert!(w.mmio64.last().unwrap() < 512 * GIB, "{w:?}");
        }
        assert_eq!(plan.segments[0].mmio64.start(), 4 * GIB);
        assert!(plan.segments[1].mmio64.start() >= 256 * GIB);
        // Without the IOMMU's ranges: the whole aperture, as before.
        let free = plan_segments(&two_segments(), 512 << 20, 46, None, &[]).unwrap();
        assert_eq!(free.segments[1].mmio64.last(), Some((1 << 46) - 1));
    }

    #[test]
    fn a_48_bit_iommu_reaches_the_whole_aperture() {
        let plan = plan_segments(&two_segments(), 512 << 20, 46, Some(&vtd(48)), &[]).unwrap();
        assert_eq!(plan.reach, Reach::Inside);
        assert_eq!(plan.segments[1].mmio64.last(), Some((1 << 46) - 1));
    }

    #[test]
    fn bars_too_big_for_the_reach_get_the_full_aperture_and_a_beyond_verdict() {
        // Two 256 GiB BARs on segment 1 cannot fit its ~254 GiB share below 512 GiB.
        let demand = [(1, bar64(256 * GIB)), (1, bar64(256 * GIB))];
        let plan = plan_segments(&two_segments(), 512 << 20, 46, Some(&vtd(39)), &demand).unwrap();
        assert_eq!(
            plan.reach,
            Reach::Beyond {
                limit: (1 << 39) - 1
            }
        );
        assert!(demand_fits(&plan.segments, &demand));
        // One of them does fit.
        let plan =
            plan_segments(&two_segments(), 512 << 20, 46, Some(&vtd(39)), &demand[..1]).unwrap();
        assert_eq!(plan.reach, Reach::Inside);
    }

    #[test]
    fn holes_in_the_iova_space_are_avoided() {
        // An AMD host: the HyperTransport hole at 0xFD_0000_0000..=0xFF_FFFF_FFFF is reserved.
        let amd = vec![
            IovaRange {
                start: 0,
                end: 0xfedf_ffff,
            },
            IovaRange {
                start: 0xfef0_0000,
                end: 0xfc_ffff_ffff,
            },
            IovaRange {
                start: 0x100_0000_0000,
                end: (1 << 48) - 1,
            },
        ];
        let plan = plan_segments(&two_segments(), 512 << 20, 46, Some(&amd), &[]).unwrap();
        assert_eq!(plan.reach, Reach::Inside);
        assert!(plan.segments[1].mmio64.last().unwrap() <= 0xfc_ffff_ffff);
        // The part that holds the aperture's start wins over a larger one further up.
        assert_eq!(
            reachable_part((4 * GIB, (1 << 46) - 1), &amd),
            Some((4 * GIB, 0xfc_ffff_ffff))
        );
        // Nothing reachable above RAM: the full aperture, beyond.
        let tiny = vec![IovaRange {
            start: 0,
            end: 0xfedf_ffff,
        }];
        let plan = plan_segments(&two_segments(), 512 << 20, 46, Some(&tiny), &[]).unwrap();
        assert_eq!(plan.reach, Reach::Beyond { limit: 0xfedf_ffff });
    }
}
