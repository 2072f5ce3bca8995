//! The MCFG: the PCI Express ECAM windows, one per PCI segment.
//!
//! Emitted only when there is at least one window: Linux complains about an MCFG without
//! entries ("MCFG has no entries") and boots fine with no MCFG at all.

use acpi_tables::mcfg::MCFG;

use super::{to_bytes, AcpiError, EcamWindow, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// Builds the MCFG listing `windows`.
pub(super) fn create_mcfg(windows: &[EcamWindow]) -> Result<Vec<u8>, AcpiError> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for (index, w) in windows.iter().enumerate() {
        if w.start_bus > w.end_bus {
            return Err(AcpiError::InvalidEcamWindow {
                index,
                segment: w.segment,
                start_bus: w.start_bus,
                end_bus: w.end_bus,
            });
        }
        mcfg.add_ecam(w.base, w.segment, w.start_bus, w.end_bus);
    }
    Ok(to_bytes(&mcfg))
}
