//! The DSDT: `\_S5_` (soft-off), `\_SB_.COM1` and the pvpanic device `\_SB_.PEVT`; with
//! [`AcpiConfig::hotplug`], the power button, the PCI hotplug controller and the Generic Event
//! Device; the PCI host bridges ([`AcpiConfig::pci_roots`]); then the caller's extra AML
//! ([`AcpiConfig::extra_dsdt_aml`]).
//!
//! No processor objects (`\_SB_.CPUx`, ACPI0007) are emitted: Linux brings up secondary CPUs
//! from the MADT alone; processor objects would only feed ACPI cpuidle/cpufreq.

use acpi_tables::aml::{Device, EISAName, Interrupt, Name, Package, Path, ResourceTemplate, IO};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{AcpiConfig, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// DSDT revision; 2 and above make AML integers 64-bit.
const DSDT_REVISION: u8 = 6;
/// Size of an ACPI table header, the DSDT's initial length.
const TABLE_HEADER_LEN: u32 = 36;

/// Number of I/O ports a 16550 UART decodes.
const COM1_PORT_LEN: u8 = 8;
/// Number of I/O ports the pvpanic device decodes.
const PVPANIC_PORT_LEN: u8 = 1;

/// `_STA` value: present, enabled, shown in UI, functioning.
const STA_PRESENT_ENABLED: u8 = 0x0f;

/// `Name(\_S5_, Package() { SLP_TYPa, SLP_TYPb, 0, 0 })`: the `SLP_TYP` Linux writes to the
/// FADT sleep control register to power off (only `SLP_TYPa` is used on a hardware-reduced
/// platform).
fn s5_aml(sink: &mut Vec<u8>) {
    let typ = layout::ACPI_S5_SLEEP_TYPE;
    Name::new(
        Path::new("\\_S5_"),
        &Package::new(vec![&typ, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(sink);
}

/// `Device(\_SB_.COM1)`: a 16550 UART at [`layout::COM1_PORT`], IRQ [`layout::COM1_IRQ`]
/// (edge-triggered, active-high, exclusive: an ISA IRQ without override).
fn com1_aml(sink: &mut Vec<u8>) {
    let hid = EISAName::new("PNP0501");
    let uid = 0u8;
    let port = layout::COM1_PORT;
    let io = IO::new(port, port, 1, COM1_PORT_LEN);
    let irq = Interrupt::new(true, true, false, false, layout::COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    Device::new(
        Path::new("\\_SB_.COM1"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// `Device(\_SB_.PEVT)`: the pvpanic device, as QEMU's ISA pvpanic describes it.
///
/// Linux's `pvpanic-mmio` platform driver matches `_HID "QEMU0001"` and accepts either an I/O
/// or a memory resource (`platform_get_mem_or_io()`); it reads the capability byte from the
/// port at probe time and writes the event byte there on panic.
fn pvpanic_aml(sink: &mut Vec<u8>) {
    let hid = "QEMU0001";
    let port = layout::PVPANIC_PORT;
    let io = IO::new(port, port, 1, PVPANIC_PORT_LEN);
    let crs = ResourceTemplate::new(vec![&io]);
    Device::new(
        Path::new("\\_SB_.PEVT"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_CRS"), &crs),
            &Name::new(Path::new("_STA"), &STA_PRESENT_ENABLED),
        ],
    )
    .to_aml_bytes(sink);
}

/// Builds the DSDT described by `cfg`.
///
/// Devices are declared with absolute names (`Device(\_SB_.COM1)`) at the root of the
/// definition block, the same convention [`AcpiConfig::extra_dsdt_aml`] follows.
pub(super) fn create_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut aml = Vec::new();
    s5_aml(&mut aml);
    if cfg.serial {
        com1_aml(&mut aml);
    }
    if cfg.pvpanic {
        pvpanic_aml(&mut aml);
    }
    if cfg.hotplug {
        super::hotplug::platform_aml(&cfg.pci_roots, &mut aml);
    }
    super::pci_roots::pci_roots_aml(&cfg.pci_roots, cfg.hotplug, &mut aml);
    aml.extend_from_slice(&cfg.extra_dsdt_aml);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        TABLE_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);
    dsdt.as_slice().to_vec()
}
