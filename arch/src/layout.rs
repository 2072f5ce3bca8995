//! The guest physical address map and the legacy port/IRQ assignments of a viaduct guest.
//!
//! This module is the one place that owns guest-visible addresses: every other crate takes its
//! addresses from here instead of inventing them. `docs/memory-map.md` renders the same table
//! for users.

/// Start of guest RAM.
pub const RAM_START: u64 = 0;

/// Top of the real-mode "low memory" that boot structures live in; the EBDA starts here.
pub const EBDA_START: u64 = 0x000A_0000;

/// Start of "high" RAM (the kernel is loaded here); `[EBDA_START, HIGH_RAM_START)` is the
/// legacy VGA/BIOS area and is not reported as RAM.
pub const HIGH_RAM_START: u64 = 0x0010_0000;

/// Global descriptor table used to enter the kernel (4 entries: null, code, data, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty: limit 7) used to enter the kernel.
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH `hvm_start_info` structure handed to a PVH kernel in RBX.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs) that `hvm_start_info.modlist_paddr` points to.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (e820-style entries) that `hvm_start_info.memmap_paddr` points to.
pub const PVH_MEMMAP_START: u64 = 0x7000;

/// Linux "zero page" (`boot_params`) handed to a bzImage / 64-bit ELF kernel in RSI. Shares its
/// address with the PVH memmap: one boot protocol is used per boot, never both.
pub const ZERO_PAGE_START: u64 = 0x7000;

/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Page-map level 4 of the identity map used to enter a kernel in 64-bit mode.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First page directory of the boot identity map; `BOOT_IDENTITY_MAP_GIB` consecutive pages of
/// 2 MiB entries follow it.
pub const PDE_START: u64 = 0xb000;
/// How much of the guest physical space the boot identity map covers, in GiB. The kernel builds
/// its own page tables early; this only has to cover the kernel, zero page, cmdline and initramfs
/// (all below 4 GiB).
pub const BOOT_IDENTITY_MAP_GIB: u64 = 4;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest kernel command line accepted, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;

/// The x86 reset vector (F000:FFF0). Firmware lives here on real hardware; viaduct puts a stub
/// there that asks the platform to reset, because Linux jumps here to reboot when it finds no
/// other way (hardware-reduced ACPI without EFI makes it choose the "EFI, then BIOS" method).
pub const RESET_VECTOR: u64 = 0xF_FFF0;

/// Root System Description Pointer, in the EBDA where an OS looks for it; the other ACPI tables
/// follow it.
pub const RSDP_START: u64 = EBDA_START;
/// End (exclusive) of the area the ACPI tables may occupy.
pub const ACPI_TABLES_END: u64 = HIGH_RAM_START;

/// Start of the 32-bit hole: guest RAM below 4 GiB stops here; the range up to 4 GiB is for
/// device MMIO (PCI apertures, ECAM, IOAPIC, LAPIC).
pub const MEM_32BIT_HOLE_START: u64 = 0xC000_0000;
/// Size of the 32-bit hole (`MEM_32BIT_HOLE_START` up to 4 GiB).
pub const MEM_32BIT_HOLE_SIZE: u64 = FIRST_ADDR_PAST_32BITS - MEM_32BIT_HOLE_START;

/// The 32-bit PCI MMIO aperture, split among PCI segments by `mmio32_aperture_weight`.
pub const MEM_32BIT_DEVICES_START: u64 = MEM_32BIT_HOLE_START;
/// Size of the 32-bit PCI MMIO aperture (640 MiB).
pub const MEM_32BIT_DEVICES_SIZE: u64 = 0x2800_0000;

/// PCI Express ECAM (memory-mapped configuration space) windows, one per PCI segment.
pub const PCI_MMCONFIG_START: u64 = 0xE800_0000;
/// Size of the whole ECAM area (reserved in the e820 map).
pub const PCI_MMCONFIG_SIZE: u64 = 0x1000_0000;

/// KVM's task state segment (3 pages), required by `KVM_SET_TSS_ADDR` on Intel.
pub const KVM_TSS_START: u64 = 0xF800_0000;
/// KVM's identity-map page, required by `KVM_SET_IDENTITY_MAP_ADDR` on Intel.
pub const KVM_IDENTITY_MAP_START: u64 = 0xF800_3000;

/// The in-kernel IOAPIC's MMIO window.
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// The local APIC's MMIO window (per vCPU, same address).
pub const APIC_START: u64 = 0xFEE0_0000;

/// First address above the 32-bit space; RAM that does not fit below the hole resumes here.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;

/// COM1: 16550 UART I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's legacy IRQ (an IOAPIC pin and KVM GSI of the same number).
pub const COM1_IRQ: u32 = 4;

/// i8042 keyboard controller ports `0x60..=0x64`: only its CPU-reset command is emulated.
pub const I8042_PORT: u16 = 0x60;
/// Number of i8042 ports emulated.
pub const I8042_PORT_COUNT: u16 = 5;

/// ACPI hardware-reduced sleep control/status and reset register (FADT points here).
pub const ACPI_PM_PORT: u16 = 0x600;
/// Value the guest writes to the ACPI reset register to reboot.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// `SLP_TYP` the DSDT's `_S5_` object gives for soft-off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// pvpanic device I/O port: the guest kernel writes here when it panics.
pub const PVPANIC_PORT: u16 = 0x505;
