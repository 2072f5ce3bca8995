//! The boot vCPU's initial architectural state: GDT, identity-map page tables, segment and control
//! registers, general registers, FPU, boot MSRs and the LAPIC's LINT pins.
//!
//! Everything here fills `kvm_bindings` structures or writes guest memory; the VMM applies the
//! results with the vCPU ioctls.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::boot::{BootEntry, BootInfoRegister, EntryMode};
use crate::layout;

/// Why the boot state could not be written to guest memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot {what} at {addr:#x}: {detail}")]
pub struct RegsError {
    what: &'static str,
    addr: u64,
    detail: String,
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Packs a segment descriptor (flags in the `0xF0FF` layout of the access and flag nibbles).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code, data, TSS. The code segment is 64-bit (L=1) for long-mode entry and
/// 32-bit (D=1) for PVH.
pub fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    let code_flags = match mode {
        EntryMode::Long64 => 0xa09b,
        EntryMode::Protected32 => 0xc09b,
    };
    [
        gdt_entry(0, 0, 0),
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Decodes GDT entry `index` of `entry` into the `kvm_segment` that caches it.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

fn write<M: GuestMemoryBackend, T: vm_memory::ByteValued>(
    mem: &M,
    what: &'static str,
    addr: u64,
    val: T,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|e| RegsError {
            what,
            addr,
            detail: e.to_string(),
        })
}

/// Writes the identity map covering the first `BOOT_IDENTITY_MAP_GIB` GiB with 2 MiB pages.
pub fn write_identity_map<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    write(
        mem,
        "PML4",
        layout::PML4_START,
        layout::PDPTE_START | PRESENT_RW,
    )?;
    for gib in 0..layout::BOOT_IDENTITY_MAP_GIB {
        let pde_page = layout::PDE_START + gib * 0x1000;
        write(
            mem,
            "PDPTE",
            layout::PDPTE_START + gib * 8,
            pde_page | PRESENT_RW,
        )?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            write(
                mem,
                "PDE",
                pde_page + i * 8,
                phys | PRESENT_RW | PAGE_SIZE_2M,
            )?;
        }
    }
    Ok(())
}

/// Writes the GDT and IDT (and for long mode the identity map) and fills `sregs` for `mode`.
pub fn setup_sregs<M: GuestMemoryBackend>(
    mem: &M,
    mode: EntryMode,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt = boot_gdt(mode);
    for (i, entry) in gdt.iter().enumerate() {
        write(mem, "GDT", layout::BOOT_GDT_START + i as u64 * 8, *entry)?;
    }
    write(mem, "IDT", layout::BOOT_IDT_START, 0u64)?;
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);

    sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & !X86_CR0_PG;
    sregs.cr4 = 0;
    sregs.efer = 0;
    if mode == EntryMode::Long64 {
        write_identity_map(mem)?;
        sregs.cr3 = layout::PML4_START;
        sregs.cr4 |= X86_CR4_PAE;
        sregs.cr0 |= X86_CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
    }
    Ok(())
}

/// General registers at the kernel entry.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip.0,
        ..Default::default()
    };
    match entry.boot_info {
        BootInfoRegister::Rsi(addr) => {
            regs.rsi = addr.0;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
        }
        BootInfoRegister::Rbx(addr) => regs.rbx = addr.0,
    }
    regs
}

/// Reset FPU state (x87 control word and SSE control/status as after FINIT).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR indices set at boot.
mod msr_index {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
}

/// MSR values at boot: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back
/// default so the guest does not run uncached.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    use msr_index::*;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_MEM_TYPE_WB: u64 = 0x6;
    [
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (IA32_TSC, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// LAPIC register offsets and delivery modes used for the LINT pins.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as firmware does on a PC.
pub fn set_lint(state: &mut kvm_lapic_state) {
    let set_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(state, APIC_LVT0);
    set_lapic_reg(state, APIC_LVT0, set_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(state, APIC_LVT1);
    set_lapic_reg(state, APIC_LVT1, set_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn gdt_entries_match_the_known_encodings() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn decoded_segments_are_flat() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.selector, code.l, code.db, code.type_), (8, 1, 0, 0xb));
        assert_eq!(
            (code.limit, code.g, code.present, code.s),
            (0xffff_ffff, 1, 1, 1)
        );
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn long_mode_sregs_enable_paging_on_the_identity_map() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, EntryMode::Long64, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        // 2 MiB page 1 of GiB 3 maps 3 GiB + 2 MiB.
        let pde: u64 = m
            .read_obj(GuestAddress(layout::PDE_START + 3 * 0x1000 + 8))
            .unwrap();
        assert_eq!(pde, (3 << 30) | (2 << 20) | 0x83);
        let pdpte: u64 = m.read_obj(GuestAddress(layout::PDPTE_START + 8)).unwrap();
        assert_eq!(pdpte, (layout::PDE_START + 0x1000) | 3);
        let gdt1: u64 = m
            .read_obj(GuestAddress(layout::BOOT_GDT_START + 8))
            .unwrap();
        assert_eq!(gdt1, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode_without_paging() {
        let m = mem();
        let mut sregs = kvm_sregs {
            cr0: X86_CR0_PG,
            ..Default::default()
        };
        setup_sregs(&m, EntryMode::Protected32, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!(sregs.efer, 0);
        assert_eq!((sregs.cs.l, sregs.cs.db), (0, 1));
    }

    #[test]
    fn boot_registers_follow_the_protocol() {
        let linux = boot_regs(&BootEntry {
            rip: GuestAddress(0x100200),
            mode: EntryMode::Long64,
            boot_info: BootInfoRegister::Rsi(GuestAddress(0x7000)),
        });
        assert_eq!(
            (linux.rip, linux.rsi, linux.rsp, linux.rflags),
            (0x100200, 0x7000, 0x8ff0, 2)
        );
        let pvh = boot_regs(&BootEntry {
            rip: GuestAddress(0x1000000),
            mode: EntryMode::Protected32,
            boot_info: BootInfoRegister::Rbx(GuestAddress(0x6000)),
        });
        assert_eq!((pvh.rip, pvh.rbx, pvh.rsi), (0x1000000, 0x6000, 0));
    }

    #[test]
    fn lint_pins_are_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0000);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x0000_0400);
    }

    #[test]
    fn msrs_enable_write_back_mtrrs() {
        let msrs = boot_msrs();
        let mtrr = msrs.iter().find(|m| m.index == 0x2ff).unwrap();
        assert_eq!(mtrr.data, 0x806);
    }
}
