//! The VM's PCI segments as address windows: each segment's share of the 32-bit and 64-bit MMIO
//! apertures (split by the configured weights) and of the PCI I/O port window, and how the ACPI
//! tables describe each root. Pure arithmetic over `arch::layout`; the device manager builds the
//! buses and allocators from it.

use arch::acpi::PciRootDescription;
use arch::layout;
use pci::aperture::{split_aperture, AddressRange, ApertureError};
use pci::segment::ECAM_WINDOW_SIZE;

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

/// Lays out the segments of `cfg` for a guest whose RAM ends at `ram_end` and whose physical
/// address width is `phys_bits`.
pub fn plan_segments(
    cfg: &PciConfig,
    ram_end: u64,
    phys_bits: u8,
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
    let mmio64_aperture = layout::mem64_aperture(ram_end, phys_bits)
        .and_then(|(start, last)| AddressRange::from_inclusive(start, last));
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
        };
        let plan = plan_segments(&cfg, 1 << 30, 46).unwrap();
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
}
