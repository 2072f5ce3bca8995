//! Tests of [`super::PciSegment`] and of [`crate::legacy_ports::LegacyConfigPorts`] over it.

use super::*;
use crate::bar::{BarIndex, BarKind, BarSpec};
use crate::config_space::{ClassCode, ConfigSpace, DeviceIds};
use crate::legacy_ports::{LegacyConfigPorts, CONFIG_ENABLE};

/// An emulated function with one 4 KiB 32-bit BAR, as a VMM would build it.
struct TestDevice(ConfigSpace);

impl TestDevice {
    fn boxed(name: &str) -> Box<dyn PciDevice> {
        let ids = DeviceIds {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            class: ClassCode {
                base: 0x01,
                sub: 0x00,
                prog_if: 0,
            },
            revision_id: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x0002,
        };
        let mut cs = ConfigSpace::new(name, &ids);
        cs.add_bar(BarSpec::new(
            BarIndex::new(0).unwrap(),
            0x1000,
            BarKind::Mem32,
        ))
        .unwrap();
        Box::new(TestDevice(cs))
    }
}

impl PciDevice for TestDevice {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn read_config(&self, reg_idx: usize) -> u32 {
        self.0.read_config(reg_idx)
    }
    fn write_config(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        self.0.write_config(reg_idx, offset, data)
    }
    fn bars(&self) -> Vec<BarSpec> {
        self.0.bars()
    }
    fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError> {
        self.0.set_bar_address(index, addr)
    }
}

fn bdf(dev: u8) -> Bdf {
    Bdf::new(0, dev, 0).unwrap()
}

fn ecam32(seg: &PciSegment, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    seg.ecam_read(offset, &mut d);
    u32::from_le_bytes(d)
}

/// A segment with devices at 00:01.0, 00:02.0, 00:03.0.
fn populated() -> PciSegment {
    let mut seg = PciSegment::new(SegmentId(1));
    for i in 1..=3 {
        assert_eq!(
            seg.add_device(TestDevice::boxed(&format!("dev{i}")))
                .unwrap(),
            bdf(i)
        );
    }
    seg
}

#[test]
fn new_segment_has_the_host_bridge_in_slot_zero() {
    let seg = PciSegment::new(SegmentId(0));
    assert_eq!(ecam32(&seg, 0), 0x0d57_8086);
    assert_eq!(seg.devices().count(), 1);
    assert_eq!(seg.device(Bdf::HOST_BRIDGE).unwrap().name(), "host bridge");
}

#[test]
fn full_segment_refuses_a_device_naming_segment_and_device() {
    let mut seg = PciSegment::new(SegmentId(2));
    for _ in 1..32 {
        seg.add_device(TestDevice::boxed("filler")).unwrap();
    }
    let err = seg.add_device(TestDevice::boxed("gpu0")).unwrap_err();
    assert_eq!(
        err,
        PciError::SegmentFull {
            segment: SegmentId(2),
            device: "gpu0".into()
        }
    );
    assert!(err.to_string().contains("segment 0002") && err.to_string().contains("gpu0"));
}

#[test]
fn reserved_slot_reads_empty_until_installed_and_removal_frees_it() {
    let mut seg = populated();
    let held = seg.reserve("gpu0").unwrap();
    assert_eq!(held, bdf(4));
    assert!(!seg.is_free(held));
    // Reserved but not installed: nothing answers there yet.
    assert_eq!(ecam32(&seg, 4 << 15), u32::MAX);
    // The next device does not take the reserved slot.
    assert_eq!(seg.add_device(TestDevice::boxed("disk")).unwrap(), bdf(5));
    seg.install(held, TestDevice::boxed("gpu0")).unwrap();
    assert_eq!(ecam32(&seg, 4 << 15), 0x1042_1af4);
    assert_eq!(seg.remove(held).unwrap().name(), "gpu0");
    assert!(seg.is_free(held));
    assert_eq!(ecam32(&seg, 4 << 15), u32::MAX);
    // A freed slot is the lowest free one again, so a re-attach gets the same address.
    assert_eq!(seg.reserve("gpu0").unwrap(), held);
    // Removing a reservation frees it without returning a device.
    assert!(seg.remove(held).is_none());
    assert!(seg.is_free(held));
}

#[test]
fn install_needs_a_reservation_and_the_host_bridge_stays() {
    let mut seg = populated();
    let err = seg.install(bdf(9), TestDevice::boxed("stray")).unwrap_err();
    assert!(
        matches!(err, PciError::NotReserved { slot: 9, .. }),
        "{err}"
    );
    let err = seg.install(bdf(1), TestDevice::boxed("stray")).unwrap_err();
    assert!(
        matches!(err, PciError::NotReserved { slot: 1, .. }),
        "{err}"
    );
    assert_eq!(seg.device(bdf(1)).unwrap().name(), "dev1");
    assert!(seg.remove(Bdf::HOST_BRIDGE).is_none());
    assert_eq!(seg.device(Bdf::HOST_BRIDGE).unwrap().name(), "host bridge");
}

#[test]
fn ecam_decodes_bus_device_function_register() {
    let mut seg = populated();
    seg.device_mut(bdf(3))
        .unwrap()
        .set_bar_address(BarIndex::new(0).unwrap(), 0xc000_0000)
        .unwrap();
    // 00:03.0 register 0x10: device 3 << 15 | 0x10.
    assert_eq!(ecam32(&seg, (3 << 15) | 0x10), 0xc000_0000);
    assert_eq!(ecam32(&seg, 3 << 15), 0x1042_1af4);
    let mut half = [0u8; 2];
    seg.ecam_read((3 << 15) | 0x2e, &mut half);
    assert_eq!(u16::from_le_bytes(half), 0x0002);
}

#[test]
fn absent_functions_buses_and_slots_read_all_ones() {
    let mut seg = populated();
    assert_eq!(ecam32(&seg, 4 << 15), u32::MAX);
    assert_eq!(ecam32(&seg, (1 << 15) | (1 << 12)), u32::MAX);
    assert_eq!(ecam32(&seg, (1 << 20) | (1 << 15)), u32::MAX);
    assert_eq!(ecam32(&seg, 1 << 28), u32::MAX);
    assert_eq!(seg.ecam_write(4 << 15 | 4, &[0xff; 4]), None);
    let mut d = [0u8; 4];
    seg.config_read(bdf(9), 0, &mut d);
    assert_eq!(d, [0xff; 4]);
}

#[test]
fn extended_config_space_is_reachable_through_ecam() {
    let seg = populated();
    // Registers above 0x100 exist (zero) rather than reading all-ones.
    assert_eq!(ecam32(&seg, (1 << 15) | 0xffc), 0);
}

#[test]
fn bar_move_through_ecam_is_reported_with_the_bdf() {
    let mut seg = populated();
    let bar0 = BarIndex::new(0).unwrap();
    seg.device_mut(bdf(2))
        .unwrap()
        .set_bar_address(bar0, 0xc000_0000)
        .unwrap();
    let routed = seg
        .ecam_write((2 << 15) | 0x10, &0xc010_0000u32.to_le_bytes())
        .unwrap();
    assert_eq!(routed.bdf, bdf(2));
    assert_eq!(routed.effect.bar_moves[0].old, 0xc000_0000);
    assert_eq!(routed.effect.bar_moves[0].new, 0xc010_0000);
    // A command write reports the decode state it leaves, so the VMM can follow it.
    let routed = seg.ecam_write((2 << 15) | 4, &[0x06, 0]).unwrap();
    assert!(routed.effect.bar_moves.is_empty());
    assert_eq!(
        routed.effect.decode,
        Some(crate::config_space::Decode {
            memory: true,
            io: false,
            rom: false
        })
    );
    // Other registers have nothing to report.
    assert_eq!(seg.ecam_write((2 << 15) | 0x3c, &[0x0b]), None);
}

#[test]
fn linux_conf1_probe_reads_back_the_latch() {
    let mut seg = PciSegment::new(SegmentId(0));
    let mut ports = LegacyConfigPorts::new();
    // pci_check_type1: outb(0x01, 0xCFB), then outl(0x80000000, 0xCF8), inl(0xCF8).
    ports.write(&mut seg, 3, &[0x01]);
    assert_eq!(ports.address(), 0);
    ports.write(&mut seg, 0, &0x8000_0000u32.to_le_bytes());
    let mut d = [0u8; 4];
    ports.read(&seg, 0, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    // Partial reads of the latch are not decoded.
    let mut b = [0u8; 1];
    ports.read(&seg, 0, &mut b);
    assert_eq!(b, [0xff]);
}

#[test]
fn cf8_cfc_reach_registers_with_partial_widths() {
    let mut seg = populated();
    let mut ports = LegacyConfigPorts::new();
    let addr = |dev: u32, reg: u32| CONFIG_ENABLE | (dev << 11) | reg;
    ports.write(&mut seg, 0, &addr(1, 0).to_le_bytes());
    let mut d = [0u8; 4];
    ports.read(&seg, 4, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x1042_1af4);
    let mut w = [0u8; 2];
    ports.read(&seg, 6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1042);
    let mut b = [0u8; 1];
    ports.read(&seg, 7, &mut b);
    assert_eq!(b, [0x10]);
    // Write BAR0 of 00:01.0 through 0xCFC and see the move.
    ports.write(&mut seg, 0, &addr(1, 0x10).to_le_bytes());
    let routed = ports
        .write(&mut seg, 4, &0xd000_0000u32.to_le_bytes())
        .unwrap();
    assert_eq!(
        (routed.bdf, routed.effect.bar_moves[0].new),
        (bdf(1), 0xd000_0000)
    );
    // Absent slot.
    ports.write(&mut seg, 0, &addr(7, 0).to_le_bytes());
    ports.read(&seg, 4, &mut d);
    assert_eq!(d, [0xff; 4]);
}

#[test]
fn cfc_without_enable_bit_reads_all_ones_and_drops_writes() {
    let mut seg = populated();
    let mut ports = LegacyConfigPorts::new();
    ports.write(&mut seg, 0, &(1u32 << 11 | 0x04).to_le_bytes());
    assert_eq!(ports.write(&mut seg, 4, &[0x02]), None);
    let mut d = [0u8; 4];
    ports.read(&seg, 4, &mut d);
    assert_eq!(d, [0xff; 4]);
    assert_eq!(seg.device(bdf(1)).unwrap().read_config(1) & 0xffff, 0);
}

#[test]
fn legacy_latch_ignores_reserved_bits() {
    let mut seg = PciSegment::new(SegmentId(0));
    let mut ports = LegacyConfigPorts::new();
    ports.write(&mut seg, 0, &u32::MAX.to_le_bytes());
    assert_eq!(ports.address(), 0x80ff_fffc);
}
