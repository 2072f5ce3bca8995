//! The MADT ("APIC"): one enabled Processor Local APIC per vCPU (APIC id == vCPU index) and
//! KVM's in-kernel IOAPIC.
//!
//! # No Interrupt Source Overrides
//!
//! KVM's default GSI routing (`KVM_CREATE_IRQCHIP`) wires GSI `n < 16` to both PIC pin `n` and
//! IOAPIC pin `n`, and the in-kernel PIT raises GSI 0, i.e. IOAPIC pin 0. That *is* the ACPI
//! default identity mapping of ISA IRQs (edge-triggered, active-high), so the MADT needs no
//! Interrupt Source Override. The "IRQ0 -> GSI 2" override real PCs (and QEMU) describe would
//! be wrong here: QEMU emits it only because it also re-routes GSI 0 to IOAPIC pin 2 with
//! `KVM_SET_GSI_ROUTING`, which viaduct does not do. Firecracker likewise emits no override.
//! (Besides, on a hardware-reduced platform Linux replaces the legacy PIC with `null_legacy_pic`
//! and does not set up the PIT as its timer, and there is no SCI to override.)

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{AcpiError, MAX_CPUS, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// MADT revision (ACPI 6.2-6.4); every structure emitted here exists since revision 1.
const MADT_REVISION: u8 = 5;
/// MADT flags bit 0: the system also has dual 8259 PICs (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the 32-bit Local Interrupt Controller Address in the MADT.
const LOCAL_APIC_ADDRESS_OFFSET: usize = 36;
/// Offset of the 32-bit flags in the MADT.
const FLAGS_OFFSET: usize = 40;
/// Size of the MADT's fixed part (header + local APIC address + flags).
const MADT_HEADER_LEN: u32 = 44;

/// I/O APIC id of the in-kernel IOAPIC.
const IOAPIC_ID: u8 = 0;
/// First GSI served by the IOAPIC.
const IOAPIC_GSI_BASE: u32 = 0;

const _: () = assert!(layout::APIC_START <= u32::MAX as u64);
const _: () = assert!(layout::IOAPIC_START <= u32::MAX as u64);

/// Builds the MADT for `num_cpus` vCPUs.
///
/// The `acpi_tables` `MADT` type cannot set the MADT flags (`PCAT_COMPAT`), so the table is
/// assembled with the crate's generic `Sdt` from the crate's `ProcessorLocalApic` and `IoApic`
/// structures.
pub(super) fn create_madt(num_cpus: u8) -> Result<Vec<u8>, AcpiError> {
    if !(1..=MAX_CPUS).contains(&num_cpus) {
        return Err(AcpiError::InvalidCpuCount(num_cpus));
    }
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(LOCAL_APIC_ADDRESS_OFFSET, layout::APIC_START as u32);
    madt.write_u32(FLAGS_OFFSET, MADT_PCAT_COMPAT);

    let mut structures = Vec::new();
    for cpu in 0..num_cpus {
        ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled).to_aml_bytes(&mut structures);
    }
    IoApic::new(IOAPIC_ID, layout::IOAPIC_START as u32, IOAPIC_GSI_BASE)
        .to_aml_bytes(&mut structures);
    madt.append_slice(&structures);
    Ok(madt.as_slice().to_vec())
}
