//! Tests of [`super::ConfigSpace`]: header masks, BAR probing and moves, capability lists.

use super::*;
use crate::capability::{id, Capability};

fn ids() -> DeviceIds {
    DeviceIds {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        class: ClassCode {
            base: 0x01,
            sub: 0x08,
            prog_if: 0x02,
        },
        revision_id: 2,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
    }
}

fn bar(i: u8) -> BarIndex {
    BarIndex::new(i).unwrap()
}

fn cs() -> ConfigSpace {
    ConfigSpace::new("test-dev", &ids())
}

fn write32(cs: &mut ConfigSpace, offset: usize, v: u32) -> ConfigWriteEffect {
    cs.write(offset, &v.to_le_bytes())
}

fn read32(cs: &ConfigSpace, offset: usize) -> u32 {
    cs.read_config(offset / 4)
}

#[test]
fn header_carries_ids_and_class() {
    let c = cs();
    assert_eq!(read32(&c, 0x00), 0x0010_1b36);
    assert_eq!(read32(&c, 0x08), 0x0108_0202);
    assert_eq!(read32(&c, 0x2c), 0x1100_1af4);
    assert_eq!(c.as_bytes()[reg::HEADER_TYPE], 0);
}

#[test]
fn read_only_ids_and_class_ignore_writes() {
    let mut c = cs();
    write32(&mut c, 0x00, 0xdead_beef);
    write32(&mut c, 0x08, 0xffff_ffff);
    c.write(0x2e, &[0x12, 0x34]);
    c.write(reg::INTERRUPT_PIN, &[3]);
    assert_eq!(read32(&c, 0x00), 0x0010_1b36);
    assert_eq!(read32(&c, 0x08), 0x0108_0202);
    assert_eq!(c.read_u16(0x2e), 0x1100);
    assert_eq!(c.as_bytes()[reg::INTERRUPT_PIN], 0);
}

#[test]
fn command_keeps_only_defined_bits_and_interrupt_line_is_scratch() {
    let mut c = cs();
    c.write(reg::COMMAND, &[0xff, 0xff]);
    assert_eq!(c.command(), command::WRITABLE);
    assert!(c.memory_enabled() && c.io_enabled() && c.bus_master_enabled());
    c.write(reg::INTERRUPT_LINE, &[0x0b]);
    assert_eq!(c.as_bytes()[reg::INTERRUPT_LINE], 0x0b);
}

#[test]
fn status_error_bits_are_write_one_to_clear() {
    let mut c = cs();
    c.write_raw(
        reg::STATUS,
        &(0x8000u16 | 0x2000 | status::INTERRUPT).to_le_bytes(),
    );
    // Writing 0 changes nothing; writing 1 to bit 15 clears only it; read-only bit 3 stays.
    c.write(reg::STATUS, &[0, 0]);
    assert_eq!(c.read_u16(reg::STATUS), 0xa008);
    c.write(reg::STATUS, &0x8008u16.to_le_bytes());
    assert_eq!(c.read_u16(reg::STATUS), 0x2008);
    // A dword write to command+status with status bits 0 does not clear anything.
    write32(&mut c, reg::COMMAND, 0x0000_0002);
    assert_eq!(c.read_u16(reg::STATUS), 0x2008);
}

#[test]
fn io_bar_probe_reads_size_mask_with_io_bit() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x20, BarKind::Io)).unwrap();
    assert_eq!(read32(&c, 0x10), 0x1);
    write32(&mut c, 0x10, 0xffff_ffff);
    assert_eq!(read32(&c, 0x10), 0xffff_ffe1);
}

#[test]
fn mem32_bar_probe_reads_size_mask() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(1), 0x4000, BarKind::Mem32))
        .unwrap();
    write32(&mut c, 0x14, 0xffff_ffff);
    assert_eq!(read32(&c, 0x14), 0xffff_c000);
}

#[test]
fn mem64_bar_probe_works_on_both_halves_and_keeps_prefetch() {
    let mut c = cs();
    let spec = BarSpec::new(bar(2), 0x1_0000_0000, BarKind::Mem64).prefetchable();
    c.add_bar(spec).unwrap();
    assert_eq!(read32(&c, 0x18), 0b1100);
    write32(&mut c, 0x18, 0xffff_ffff);
    write32(&mut c, 0x1c, 0xffff_ffff);
    assert_eq!(read32(&c, 0x18), 0x0000_000c);
    assert_eq!(read32(&c, 0x1c), 0xffff_ffff);
    let small = BarSpec::new(bar(4), 0x10_0000, BarKind::Mem64);
    c.add_bar(small).unwrap();
    write32(&mut c, 0x20, 0xffff_ffff);
    write32(&mut c, 0x24, 0xffff_ffff);
    assert_eq!(read32(&c, 0x20), 0xfff0_0004);
    assert_eq!(read32(&c, 0x24), 0xffff_ffff);
}

#[test]
fn prefetchable_bit_cannot_be_cleared_by_the_guest() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem32).prefetchable())
        .unwrap();
    write32(&mut c, 0x10, 0x8000_0000);
    assert_eq!(read32(&c, 0x10), 0x8000_0008);
}

#[test]
fn bar_writes_respect_size_mask() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem32))
        .unwrap();
    write32(&mut c, 0x10, 0x8000_0abc);
    assert_eq!(read32(&c, 0x10), 0x8000_0000);
}

#[test]
fn unimplemented_bars_read_zero_and_ignore_writes() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem32))
        .unwrap();
    let effect = write32(&mut c, 0x14, 0xffff_ffff);
    assert_eq!(read32(&c, 0x14), 0);
    assert!(effect.is_empty());
    write32(&mut c, 0x30, 0xffff_ffff);
    assert_eq!(read32(&c, 0x30), 0);
}

#[test]
fn rom_bar_probes_and_enables() {
    let mut c = cs();
    c.add_bar(BarSpec::rom(0x1_0000)).unwrap();
    write32(&mut c, 0x30, 0xffff_f800);
    assert_eq!(read32(&c, 0x30), 0xffff_0000);
    let effect = write32(&mut c, 0x30, 0xc000_0001);
    assert_eq!(read32(&c, 0x30), 0xc000_0001);
    assert_eq!(effect.bar_moves[0].new, 0xc000_0000);
    assert_eq!(effect.bar_moves[0].index, BarIndex::ROM);
}

#[test]
fn set_bar_address_programs_the_register() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x4000, BarKind::Mem64).prefetchable())
        .unwrap();
    c.set_bar_address(bar(0), 0x1_2345_c000).unwrap();
    assert_eq!(read32(&c, 0x10), 0x2345_c00c);
    assert_eq!(read32(&c, 0x14), 0x1);
    assert_eq!(c.bar_address(bar(0)), Some(0x1_2345_c000));
    assert!(matches!(
        c.set_bar_address(bar(0), 0x1000),
        Err(PciError::BadBarAddress { .. })
    ));
    assert!(c.set_bar_address(bar(1), 0).is_err());
}

#[test]
fn mem32_bar_cannot_be_placed_above_4g() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem32))
        .unwrap();
    assert!(c.set_bar_address(bar(0), 0x1_0000_0000).is_err());
    assert!(c.set_bar_address(bar(0), 0xffff_f000).is_ok());
}

#[test]
fn invalid_bar_specs_are_refused() {
    let mut c = cs();
    let bad = |r: Result<(), PciError>| matches!(r, Err(PciError::InvalidBar { .. }));
    assert!(bad(c.add_bar(BarSpec::new(bar(0), 0x1800, BarKind::Mem32))));
    assert!(bad(c.add_bar(BarSpec::new(bar(0), 8, BarKind::Mem32))));
    assert!(bad(c.add_bar(BarSpec::new(bar(5), 0x1000, BarKind::Mem64))));
    assert!(bad(c.add_bar(
        BarSpec::new(bar(0), 0x10, BarKind::Io).prefetchable()
    )));
    assert!(bad(c.add_bar(BarSpec::new(
        BarIndex::ROM,
        0x1000,
        BarKind::Mem64
    ))));
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem64))
        .unwrap();
    assert!(bad(c.add_bar(BarSpec::new(bar(1), 0x1000, BarKind::Mem32))));
    assert!(bad(c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem32))));
    assert_eq!(c.bars().len(), 1);
}

#[test]
fn guest_reprogramming_a_bar_reports_a_move() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(1), 0x1000, BarKind::Mem32))
        .unwrap();
    c.set_bar_address(bar(1), 0xc000_0000).unwrap();
    let effect = write32(&mut c, 0x14, 0xd000_0000);
    assert_eq!(
        effect.bar_moves,
        [BarMove {
            index: bar(1),
            kind: BarKind::Mem32,
            old: 0xc000_0000,
            new: 0xd000_0000,
            size: 0x1000
        }]
    );
    assert_eq!(c.bar_address(bar(1)), Some(0xd000_0000));
    // Rewriting the same address is not a move.
    assert!(write32(&mut c, 0x14, 0xd000_0000).is_empty());
}

#[test]
fn size_probe_and_restore_is_not_a_move() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem32))
        .unwrap();
    c.add_bar(BarSpec::new(bar(2), 0x10_0000, BarKind::Mem64))
        .unwrap();
    c.set_bar_address(bar(0), 0xc000_0000).unwrap();
    c.set_bar_address(bar(2), 0x40_0000_0000).unwrap();
    // Linux's __pci_read_base: all-ones, read, restore; 64-bit: low, high, then restore both.
    let writes = [
        (0x10, 0xffff_ffff),
        (0x10, 0xc000_0000),
        (0x18, 0xffff_ffff),
        (0x1c, 0xffff_ffff),
        (0x18, 0x0000_0004),
        (0x1c, 0x40),
    ];
    for (off, v) in writes {
        assert!(
            write32(&mut c, off, v).is_empty(),
            "write {v:#x} at {off:#x}"
        );
    }
}

#[test]
fn mem64_move_is_reported_once_the_upper_half_is_written() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(2), 0x10_0000, BarKind::Mem64))
        .unwrap();
    c.set_bar_address(bar(2), 0x40_0000_0000).unwrap();
    assert!(write32(&mut c, 0x18, 0x0020_0000).is_empty());
    let effect = write32(&mut c, 0x1c, 0x80);
    assert_eq!(effect.bar_moves.len(), 1);
    assert_eq!(effect.bar_moves[0].old, 0x40_0000_0000);
    assert_eq!(effect.bar_moves[0].new, 0x80_0020_0000);
}

#[test]
fn enabling_decode_flushes_a_half_written_mem64_bar() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem64))
        .unwrap();
    c.set_bar_address(bar(0), 0x1_0000_0000).unwrap();
    assert!(write32(&mut c, 0x10, 0x0000_1000).is_empty());
    let effect = c.write(reg::COMMAND, &command::MEMORY_SPACE.to_le_bytes());
    assert_eq!(effect.bar_moves[0].new, 0x1_0000_1000);
}

#[test]
fn command_and_rom_writes_report_the_decode_state() {
    let mut c = cs();
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem32))
        .unwrap();
    c.add_bar(BarSpec::new(bar(1), 0x100, BarKind::Io)).unwrap();
    c.add_bar(BarSpec::rom(0x8000)).unwrap();
    let off = Decode {
        memory: false,
        io: false,
        rom: false,
    };
    assert_eq!(c.decode(), off);
    // Memory Space on: memory BARs decode, the ROM only once its own enable bit is set too.
    let on = c.write(reg::COMMAND, &command::MEMORY_SPACE.to_le_bytes());
    let mem = Decode {
        memory: true,
        ..off
    };
    assert_eq!(on.decode, Some(mem));
    assert!(mem.decodes(&BarSpec::new(bar(0), 0x1000, BarKind::Mem32)));
    assert!(!mem.decodes(&BarSpec::new(bar(1), 0x100, BarKind::Io)));
    assert!(!mem.decodes(&BarSpec::rom(0x8000)));
    let rom = write32(&mut c, 0x30, 0xfff0_0001);
    assert_eq!(rom.decode, Some(Decode { rom: true, ..mem }));
    assert!(Decode { rom: true, ..mem }.decodes(&BarSpec::rom(0x8000)));
    // The same state written again is reported again: the VMM converges on it.
    let again = c.write(reg::COMMAND, &command::MEMORY_SPACE.to_le_bytes());
    assert_eq!(again.decode, Some(Decode { rom: true, ..mem }));
    // Only the upper command byte: decode bits untouched, nothing to report.
    assert!(c.write(reg::COMMAND + 1, &[0x04]).is_empty());
    // I/O on, memory off.
    let io = c.write(reg::COMMAND, &command::IO_SPACE.to_le_bytes());
    assert_eq!(
        io.decode,
        Some(Decode {
            memory: false,
            io: true,
            rom: true
        })
    );
    // A device without a ROM never reports one as decoding.
    let mut plain = cs();
    plain.write(reg::COMMAND, &command::MEMORY_SPACE.to_le_bytes());
    assert!(!plain.decode().rom);
    assert!(write32(&mut plain, 0x30, 0xffff_ffff).is_empty());
}

#[test]
fn partial_width_accesses_hit_the_right_bytes() {
    let mut c = cs();
    let mut b = [0u8; 2];
    c.read(0x02, &mut b);
    assert_eq!(u16::from_le_bytes(b), 0x0010);
    let mut one = [0u8; 1];
    c.read(0x0b, &mut one);
    assert_eq!(one, [0x01]);
    c.add_bar(BarSpec::new(bar(0), 0x1000, BarKind::Mem32))
        .unwrap();
    c.write(0x13, &[0xfe]);
    assert_eq!(read32(&c, 0x10), 0xfe00_0000);
}

#[test]
fn malformed_accesses_read_all_ones_and_write_nothing() {
    let mut c = cs();
    let mut three = [0u8; 3];
    c.read(0, &mut three);
    assert_eq!(three, [0xff; 3]);
    let mut crossing = [0u8; 2];
    c.read(0x03, &mut crossing);
    assert_eq!(crossing, [0xff; 2]);
    let mut beyond = [0u8; 4];
    c.read(0x1000, &mut beyond);
    assert_eq!(beyond, [0xff; 4]);
    assert_eq!(c.read_config(1024), u32::MAX);
    c.write(reg::COMMAND + 3, &[0xff, 0xff]);
    c.write(0x1000, &[0xff; 4]);
    c.write(reg::COMMAND, &[0xff; 8]);
    assert_eq!(c.command(), 0);
}

#[test]
fn capabilities_are_chained_and_walkable() {
    let mut c = cs();
    assert_eq!(c.capabilities().count(), 0);
    let msi = c.add_capability(id::MSI, &[0; 12]).unwrap();
    let msix = c.add_capability(id::MSIX, &[0; 10]).unwrap();
    let vendor = c.add_capability(id::VENDOR_SPECIFIC, &[3]).unwrap();
    assert_eq!((msi, msix, vendor), (0x40, 0x50, 0x5c));
    assert_eq!(c.as_bytes()[0x34], 0x40);
    assert_ne!(c.read_u16(reg::STATUS) & status::CAPABILITIES_LIST, 0);
    let walked: Vec<Capability> = c.capabilities().collect();
    assert_eq!(walked.len(), 3);
    assert_eq!(
        walked[2],
        Capability {
            offset: 0x5c,
            id: id::VENDOR_SPECIFIC
        }
    );
    assert_eq!(c.find_capability(id::MSIX), Some(0x50));
    assert_eq!(c.find_capability(id::PCI_EXPRESS), None);
    // Capability bytes are read-only unless a mask is set.
    c.write(0x52, &[0xff]);
    assert_eq!(c.as_bytes()[0x52], 0);
    c.set_write_mask(0x52, &[0x0f]);
    c.write(0x52, &[0xff]);
    assert_eq!(c.as_bytes()[0x52], 0x0f);
}

#[test]
fn capability_space_is_bounded() {
    let mut c = cs();
    c.add_capability(id::VENDOR_SPECIFIC, &[0; 0xbe]).unwrap();
    assert!(matches!(
        c.add_capability(id::MSI, &[0; 2]),
        Err(PciError::CapabilitySpaceFull { id: 5, .. })
    ));
}

#[test]
fn extended_capabilities_are_chained() {
    let mut c = cs();
    let aer = c.add_extended_capability(0x1, 2, &[0; 0x2c]).unwrap();
    let ari = c.add_extended_capability(0xe, 1, &[0; 4]).unwrap();
    assert_eq!((aer, ari), (0x100, 0x130));
    let ids: Vec<_> = c
        .extended_capabilities()
        .map(|e| (e.offset, e.id, e.version))
        .collect();
    assert_eq!(ids, [(0x100, 1, 2), (0x130, 0xe, 1)]);
}

#[test]
fn rw1c_mask_applies_to_device_defined_registers() {
    let mut c = cs();
    let cap = usize::from(c.add_capability(id::PCI_EXPRESS, &[0; 10]).unwrap());
    c.set_rw1c_mask(cap + 10, &[0x0f]);
    c.write_raw(cap + 10, &[0x0b]);
    c.write(cap + 10, &[0x02]);
    assert_eq!(c.as_bytes()[cap + 10], 0x09);
}

#[test]
fn huge_offsets_are_ignored_without_panicking() {
    let mut c = cs();
    assert_eq!(c.read_config(usize::MAX), u32::MAX);
    assert_eq!(c.read_u16(usize::MAX), u16::MAX);
    c.write_raw(usize::MAX, &[1, 2]);
    c.set_write_mask(usize::MAX, &[1, 2]);
    assert!(c.write_config(usize::MAX, 0, &[1]).is_empty());
    let mut d = [0u8; 4];
    c.read(usize::MAX - 1, &mut d);
    assert_eq!(d, [0xff; 4]);
}
