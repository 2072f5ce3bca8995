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

/// The platform MMIO area: register blocks of viaduct's own (non-PCI) platform devices that
/// ACPI describes, the ACPI Generic Event Device and the PCI hotplug controller. It sits in the
/// free part of the 32-bit hole, above the KVM TSS/identity map and below the IOAPIC, so no PCI
/// window, ECAM window or interrupt controller can ever cover it. Each device's `_CRS` claims
/// its block, so the guest allocates nothing over it; it is not RAM and not in the e820 map.
pub const PLATFORM_MMIO_START: u64 = 0xFE00_0000;
/// Size of the platform MMIO area (1 MiB: room for more platform devices, page by page).
pub const PLATFORM_MMIO_SIZE: u64 = 0x10_0000;

/// The ACPI Generic Event Device's event register (`\_SB_.GED_`, ACPI0013): a 32-bit register
/// whose read returns the pending event flags and clears them. A hardware-reduced platform has
/// no GPE block and no SCI, so hotplug and power-button events reach the guest through this
/// device and its interrupt [`ACPI_GED_GSI`]. First page of the platform MMIO area.
pub const ACPI_GED_MMIO_START: u64 = PLATFORM_MMIO_START;
/// Size of the GED's register block: the one 4-byte event register.
pub const ACPI_GED_MMIO_SIZE: u64 = 4;

/// The ACPI PCI hotplug controller's register block (`\_SB_.PHPR`): PCIU, PCID, B0EJ and PSEG,
/// 4 bytes each, cloud-hypervisor's protocol. Second page of the platform MMIO area, so it never
/// shares a page with the GED.
pub const PCI_HOTPLUG_MMIO_START: u64 = PLATFORM_MMIO_START + 0x1000;
/// Size of the PCI hotplug controller's register block (four 32-bit registers).
pub const PCI_HOTPLUG_MMIO_SIZE: u64 = 16;

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

/// The IOAPIC pin (GSI) of the ACPI Generic Event Device's interrupt (edge-triggered,
/// active-high, exclusive, as its `_CRS` says). A legacy ISA pin that nothing else uses: not
/// COM1's [`COM1_IRQ`], not one of the PCI INTx pins 16..=23. Below 16, so Linux's default for
/// an ISA GSI without an interrupt source override (edge, active-high) matches the `_CRS`.
pub const ACPI_GED_GSI: u32 = 10;

/// First IOAPIC pin (GSI) used for PCI INTx; pins 16..=23 are shared by all PCI slots.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// Number of IOAPIC pins PCI INTx is spread over.
pub const PCI_INTX_GSI_COUNT: u32 = 8;

/// The GSI that INTx pin `pin` (0 = INTA … 3 = INTD) of the device in `slot` raises: the usual
/// swizzle over pins 16–23, described to the guest by each host bridge's `_PRT`.
pub const fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (slot as u32 + pin as u32) % PCI_INTX_GSI_COUNT
}

/// pvpanic device I/O port: the guest kernel writes here when it panics.
pub const PVPANIC_PORT: u16 = 0x505;

/// Fewest guest physical address bits viaduct uses: 36 is what every x86-64 CPU supports (and
/// the architectural value when CPUID leaf 0x8000_0008 is missing).
pub const GUEST_PHYS_BITS_MIN: u8 = 36;
/// Most guest physical address bits viaduct uses (cloud-hypervisor's default `max_phys_bits`):
/// 64 TiB, the reach of a 4-level-paging guest's direct map, and far more than any set of BARs.
pub const GUEST_PHYS_BITS_MAX: u8 = 46;

/// Most guest RAM viaduct gives a guest: 32 TiB, half of the [`GUEST_PHYS_BITS_MAX`]-bit
/// physical space, so that the RAM above 4 GiB still leaves room for the 64-bit PCI aperture
/// on the widest guest. (The VMM also refuses, at start, more than the host can hold.)
pub const MAX_GUEST_RAM: u64 = 1 << (GUEST_PHYS_BITS_MAX - 1);

/// The guest physical address width for a host that reports `host_phys_bits` in CPUID
/// 0x8000_0008 EAX[7:0]: the host's width (the guest must never be told more than the host's
/// page tables can map) capped at [`GUEST_PHYS_BITS_MAX`], and [`GUEST_PHYS_BITS_MIN`] when the
/// host reports less (0 means the leaf is missing). The guest's own CPUID 0x8000_0008 must
/// report this value, or it cannot reach the 64-bit PCI aperture.
pub const fn guest_phys_bits(host_phys_bits: u8) -> u8 {
    if host_phys_bits < GUEST_PHYS_BITS_MIN {
        GUEST_PHYS_BITS_MIN
    } else if host_phys_bits > GUEST_PHYS_BITS_MAX {
        GUEST_PHYS_BITS_MAX
    } else {
        host_phys_bits
    }
}

/// Alignment of the segment windows in the 32-bit PCI aperture (`split_aperture` unit):
/// cloud-hypervisor's 4 KiB, so `mmio32_aperture_weight` gives the same windows there.
pub const MEM_32BIT_DEVICES_SPLIT_ALIGNMENT: u64 = 4 << 10;

/// Alignment of the 64-bit PCI aperture's start and of its segment windows: 4 GiB. With the
/// start aligned too, every segment's 64-bit window starts on a 4 GiB boundary, so a BAR of up
/// to 4 GiB fits at the very start of any window; larger BARs are aligned by the BAR allocator.
/// The cost is under 4 GiB of guest physical space above RAM.
pub const MEM_64BIT_DEVICES_ALIGNMENT: u64 = 4 << 30;

/// The 64-bit PCI MMIO aperture as `(start, inclusive end)`, split among PCI segments by
/// `mmio64_aperture_weight`.
///
/// - `ram_end` is the first address above guest RAM (`memory::ram_end`); `phys_bits` the guest
///   physical address width ([`guest_phys_bits`]).
/// - Start: the end of RAM rounded up to [`MEM_64BIT_DEVICES_ALIGNMENT`], and never below 4 GiB
///   (everything under 4 GiB is RAM or the 32-bit hole). There is no memory-hotplug area to
///   leave room for.
/// - End: the top of the guest physical space, `(1 << phys_bits) - 1`. Unlike cloud-hypervisor
///   (which keeps 1 MiB + 64 KiB at the top for its GED and hotplug controllers), viaduct has no
///   platform MMIO up there; future platform devices belong in the 32-bit hole.
///
/// `None` when no aperture is left: RAM reaches (or passes) the top of the physical space
/// (e.g. 62 GiB of RAM with 36 bits), or `phys_bits` is outside 1..=52 (52 is the x86-64
/// architectural maximum). The caller reports it as a configuration error.
pub const fn mem64_aperture(ram_end: u64, phys_bits: u8) -> Option<(u64, u64)> {
    if phys_bits == 0 || phys_bits > 52 {
        return None;
    }
    let top = (1u64 << phys_bits) - 1;
    let rounded = match ram_end.checked_add(MEM_64BIT_DEVICES_ALIGNMENT - 1) {
        Some(sum) => sum & !(MEM_64BIT_DEVICES_ALIGNMENT - 1),
        None => return None,
    };
    let start = if rounded < FIRST_ADDR_PAST_32BITS {
        FIRST_ADDR_PAST_32BITS
    } else {
        rounded
    };
    if start > top {
        return None;
    }
    Some((start, top))
}

/// Alignment for splitting a 64-bit aperture of `aperture_size` bytes among segments whose
/// weights add up to `total_weight`: [`MEM_64BIT_DEVICES_ALIGNMENT`] when every unit of weight
/// still gets 4 GiB, otherwise the largest power of two that does (at least 4 KiB). Only small
/// physical address widths with many segments need less than 4 GiB (36 bits leaves ~60 GiB).
pub const fn mem64_split_alignment(aperture_size: u64, total_weight: u64) -> u64 {
    let mut alignment = MEM_64BIT_DEVICES_ALIGNMENT;
    while alignment > 4 << 10 {
        match alignment.checked_mul(total_weight) {
            Some(needed) if needed <= aperture_size => break,
            _ => alignment >>= 1,
        }
    }
    alignment
}

/// The legacy PCI configuration mechanism #1 ports `0xCF8..=0xCFF` (CONFIG_ADDRESS, CONFIG_DATA).
pub const PCI_CONFIG_IO_PORT: u16 = 0xCF8;
/// Number of PCI configuration mechanism #1 ports.
pub const PCI_CONFIG_IO_PORT_COUNT: u16 = 8;

/// First I/O port available to PCI I/O BARs. Everything below 0x1000 is left to the legacy
/// devices (i8042 0x60, COM1 0x3f8, pvpanic 0x505, ACPI PM 0x600) and the PCI config ports
/// 0xCF8..=0xCFF, so no BAR can ever collide with them.
pub const PCI_IO_PORT_START: u16 = 0x1000;
/// Size of the PCI I/O port window: `PCI_IO_PORT_START` up to 0xFFFF (60 KiB). It is split
/// equally among the segments (I/O BARs are tiny and rare, so there is no weight option).
pub const PCI_IO_PORT_SIZE: u16 = 0xF000;
/// Alignment of the segment windows in the PCI I/O port window: 256 ports, the largest I/O BAR
/// the PCI specification allows, so any I/O BAR fits at any window's start. 96 segments still
/// get 512 ports each.
pub const PCI_IO_PORT_SPLIT_ALIGNMENT: u64 = 0x100;

/// Size of one segment's ECAM window: 1 MiB, i.e. bus 0 only (32 devices × 8 functions × 4 KiB).
pub const PCI_MMCONFIG_SIZE_PER_SEGMENT: u64 = 1 << 20;
/// Number of ECAM windows that fit in the ECAM area (`PCI_MMCONFIG_SIZE` / 1 MiB = 256); the
/// configuration allows fewer segments than this.
pub const PCI_MMCONFIG_MAX_SEGMENTS: u16 =
    (PCI_MMCONFIG_SIZE / PCI_MMCONFIG_SIZE_PER_SEGMENT) as u16;

/// Base of PCI segment `segment`'s ECAM window (the MCFG entry and the `_CRS` of its host
/// bridge). `segment` must be below [`PCI_MMCONFIG_MAX_SEGMENTS`]; higher numbers would land
/// past the ECAM area.
pub const fn ecam_window(segment: u16) -> u64 {
    PCI_MMCONFIG_START + segment as u64 * PCI_MMCONFIG_SIZE_PER_SEGMENT
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn phys_bits_follow_the_host_within_36_to_46() {
        assert_eq!(guest_phys_bits(0), 36);
        assert_eq!(guest_phys_bits(32), 36);
        assert_eq!(guest_phys_bits(39), 39);
        assert_eq!(guest_phys_bits(46), 46);
        assert_eq!(guest_phys_bits(52), 46);
    }

    #[test]
    fn mem64_aperture_starts_above_ram_on_a_4g_boundary() {
        // 1 GiB of RAM (all below the hole): the aperture starts at 4 GiB.
        assert_eq!(mem64_aperture(GIB, 46), Some((4 * GIB, (1 << 46) - 1)));
        // 4 GiB of RAM ends at 5 GiB (3 GiB low + 1 GiB high): round up to 8 GiB.
        assert_eq!(
            mem64_aperture(5 * GIB, 46),
            Some((8 * GIB, 0x3FFF_FFFF_FFFF))
        );
        // RAM ending exactly on a boundary is not rounded further.
        assert_eq!(
            mem64_aperture(16 * GIB, 40),
            Some((16 * GIB, (1 << 40) - 1))
        );
    }

    #[test]
    fn mem64_aperture_holds_a_64g_bar_for_40_bits_and_more() {
        for phys_bits in 40..=GUEST_PHYS_BITS_MAX {
            for ram_gib in [1u64, 4, 64, 256] {
                let ram_end = if ram_gib <= 3 {
                    ram_gib * GIB
                } else {
                    (ram_gib + 1) * GIB
                };
                let (start, end) = mem64_aperture(ram_end, phys_bits).unwrap();
                assert!(start >= ram_end && start % MEM_64BIT_DEVICES_ALIGNMENT == 0);
                let bar = 64 * GIB;
                let placed = start.div_ceil(bar) * bar;
                assert!(
                    placed + bar - 1 <= end,
                    "{phys_bits} bits, {ram_gib} GiB RAM"
                );
            }
        }
    }

    #[test]
    fn mem64_aperture_is_none_when_ram_fills_the_physical_space() {
        assert_eq!(mem64_aperture(61 * GIB, 36), None);
        assert_eq!(mem64_aperture(64 * GIB, 36), None);
        assert_eq!(mem64_aperture(60 * GIB, 36), Some((60 * GIB, 64 * GIB - 1)));
        assert_eq!(mem64_aperture(u64::MAX, 46), None);
        assert_eq!(mem64_aperture(GIB, 0), None);
        assert_eq!(mem64_aperture(GIB, 53), None);
        assert_eq!(mem64_aperture(GIB, 52), Some((4 * GIB, (1 << 52) - 1)));
    }

    #[test]
    fn mem64_split_alignment_shrinks_only_when_needed() {
        let (start, end) = mem64_aperture(GIB, 46).unwrap();
        assert_eq!(mem64_split_alignment(end - start + 1, 96), 4 * GIB);
        // 36 bits and 1 GiB RAM leave 60 GiB: 96 segments get 512 MiB units.
        let (start, end) = mem64_aperture(GIB, 36).unwrap();
        assert_eq!(end - start + 1, 60 * GIB);
        assert_eq!(mem64_split_alignment(60 * GIB, 15), 4 * GIB);
        assert_eq!(mem64_split_alignment(60 * GIB, 16), 2 * GIB);
        assert_eq!(mem64_split_alignment(60 * GIB, 96), GIB / 2);
        assert_eq!(mem64_split_alignment(0, 1), 4 << 10);
        assert_eq!(mem64_split_alignment(1 << 40, u64::MAX), 4 << 10);
    }

    #[test]
    fn pci_io_window_avoids_legacy_and_config_ports() {
        let start = u32::from(PCI_IO_PORT_START);
        let end = start + u32::from(PCI_IO_PORT_SIZE);
        assert_eq!(end, 0x1_0000);
        let legacy = [
            (COM1_PORT, 8),
            (I8042_PORT, I8042_PORT_COUNT),
            (PVPANIC_PORT, 1),
            (ACPI_PM_PORT, 8),
            (PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_COUNT),
        ];
        for (port, count) in legacy {
            assert!(
                u32::from(port) + u32::from(count) <= start,
                "port {port:#x}"
            );
        }
    }

    #[test]
    fn platform_devices_overlap_nothing_in_the_32bit_hole() {
        // (name, start, size) of everything in the 32-bit hole. The IOAPIC decodes one page;
        // the local APIC page sits in the 1 MiB MSI window 0xFEE0_0000..=0xFEEF_FFFF, which is
        // reserved as a whole.
        let ranges = [
            (
                "32-bit PCI aperture",
                MEM_32BIT_DEVICES_START,
                MEM_32BIT_DEVICES_SIZE,
            ),
            ("ECAM", PCI_MMCONFIG_START, PCI_MMCONFIG_SIZE),
            ("KVM TSS", KVM_TSS_START, 0x3000),
            ("KVM identity map", KVM_IDENTITY_MAP_START, 0x1000),
            ("GED", ACPI_GED_MMIO_START, ACPI_GED_MMIO_SIZE),
            ("PCI hotplug", PCI_HOTPLUG_MMIO_START, PCI_HOTPLUG_MMIO_SIZE),
            ("IOAPIC", IOAPIC_START, 0x1000),
            ("LAPIC/MSI window", APIC_START, 0x10_0000),
        ];
        for (i, &(a, a_start, a_size)) in ranges.iter().enumerate() {
            assert!(a_size > 0, "{a}");
            assert!(a_start >= MEM_32BIT_HOLE_START, "{a} below the hole");
            assert!(
                a_start + a_size <= FIRST_ADDR_PAST_32BITS,
                "{a} above 4 GiB"
            );
            for &(b, b_start, b_size) in &ranges[i + 1..] {
                let disjoint = a_start + a_size <= b_start || b_start + b_size <= a_start;
                assert!(disjoint, "{a} overlaps {b}");
            }
        }
        // Both register blocks live inside the platform MMIO area, each in a page of its own.
        let area = PLATFORM_MMIO_START..PLATFORM_MMIO_START + PLATFORM_MMIO_SIZE;
        for (start, size) in [
            (ACPI_GED_MMIO_START, ACPI_GED_MMIO_SIZE),
            (PCI_HOTPLUG_MMIO_START, PCI_HOTPLUG_MMIO_SIZE),
        ] {
            assert!(area.contains(&start) && area.contains(&(start + size - 1)));
            assert_eq!(start % 0x1000, 0);
            assert!(size <= 0x1000);
        }
        assert_ne!(ACPI_GED_MMIO_START >> 12, PCI_HOTPLUG_MMIO_START >> 12);
        // The platform area itself overlaps nothing but its own devices.
        for &(name, start, size) in &ranges {
            if name == "GED" || name == "PCI hotplug" {
                continue;
            }
            let disjoint = start + size <= area.start || area.end <= start;
            assert!(disjoint, "the platform MMIO area overlaps {name}");
        }
        // The GED's interrupt: an IOAPIC pin (24 in KVM's in-kernel IOAPIC) nobody else has.
        const { assert!(ACPI_GED_GSI < 24) };
        assert_ne!(ACPI_GED_GSI, COM1_IRQ);
        let intx = PCI_INTX_GSI_BASE..PCI_INTX_GSI_BASE + PCI_INTX_GSI_COUNT;
        assert!(!intx.contains(&ACPI_GED_GSI));
        assert!((0..32u8).all(|slot| (0..4u8).all(|pin| pci_intx_gsi(slot, pin) != ACPI_GED_GSI)));
    }

    #[test]
    fn ecam_windows_are_1m_apart_inside_the_ecam_area() {
        assert_eq!(ecam_window(0), 0xE800_0000);
        assert_eq!(ecam_window(1), 0xE810_0000);
        assert_eq!(ecam_window(95), 0xEDF0_0000);
        assert_eq!(PCI_MMCONFIG_MAX_SEGMENTS, 256);
        let last = ecam_window(PCI_MMCONFIG_MAX_SEGMENTS - 1) + PCI_MMCONFIG_SIZE_PER_SEGMENT;
        assert_eq!(last, PCI_MMCONFIG_START + PCI_MMCONFIG_SIZE);
        assert!(last <= KVM_TSS_START);
    }
}
