//! The FADT ("FACP"): a hardware-reduced ACPI platform whose poweroff and reboot go through
//! I/O port [`layout::ACPI_PM_PORT`].
//!
//! Linux on a hardware-reduced platform registers ACPI poweroff only when `\_S5_` evaluates
//! *and* both the sleep control and sleep status registers are set; it then writes
//! `(SLP_TYP << 2) | SLP_EN (1 << 5)` to the sleep control register. It reboots through the
//! reset register when `RESET_REG_SUP` is set (x86's default `reboot=acpi` comes first).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use vm_memory::GuestAddress;

use super::{to_bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// IAPC_BOOT_ARCH bit 2: VGA Not Present.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH bit 5: CMOS RTC Not Present.
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// The IAPC_BOOT_ARCH flags of a viaduct guest.
///
/// * `LEGACY_DEVICES` (bit 0) clear: no LPC/ISA devices beyond those in the DSDT.
/// * `8042` (bit 1) clear: only the i8042's CPU-reset command is emulated, not a keyboard
///   controller. With the bit clear and no PNP0303 in the DSDT, Linux's i8042 driver does not
///   probe the ports ("PNP: No PS/2 controller found"). Its keyboard-controller reboot fallback
///   writes port 0x64 regardless of this bit, so it still reaches the emulated reset.
/// * `VGA Not Present` set: there is no VGA.
/// * `MSI Not Supported` (bit 3) clear: MSI will work once PCI devices exist.
/// * `CMOS RTC Not Present` set: the VMM emulates no RTC at 0x70/0x71, so Linux must not
///   register `rtc_cmos` (wall-clock time comes from kvmclock).
const IAPC_BOOT_ARCH: u16 = IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;

/// A byte-wide register at [`layout::ACPI_PM_PORT`] in system I/O space.
fn pm_port_register() -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(layout::ACPI_PM_PORT),
    )
}

/// Builds the FADT (ACPI 6.5 layout, revision 6.5 as `acpi_tables` builds it) with `X_DSDT`
/// pointing at `dsdt`.
pub(super) fn create_fadt(dsdt: GuestAddress) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt.0)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power/sleep buttons: without these flags Linux would create
        // fixed-button devices (LNXPWRBN/LNXSLPBN) that can never fire.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = pm_port_register();
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = pm_port_register();
    fadt.sleep_status_reg = pm_port_register();
    to_bytes(&fadt.finalize())
}
