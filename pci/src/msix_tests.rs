//! Tests of [`super::Msix`].

use super::*;

fn bar(i: u8) -> BarIndex {
    BarIndex::new(i).unwrap()
}

fn msix(vectors: u16) -> Msix {
    Msix::new(MsixLayout {
        table_size: vectors,
        table_bar: bar(0),
        table_offset: 0x2000,
        pba_bar: bar(0),
        pba_offset: 0x3000,
    })
    .unwrap()
}

fn write32(m: &mut Msix, offset: u64, v: u32) -> Vec<MsixChange> {
    m.write_table(offset, &v.to_le_bytes())
}

fn read32(m: &Msix, offset: u64) -> u32 {
    let mut b = [0; 4];
    m.read_table(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Programs vector `v` with a recognisable message, leaving its mask bit alone.
fn program(m: &mut Msix, v: u16) -> MsiMessage {
    let base = u64::from(v) * 16;
    m.write_table(
        base,
        &(0x1_fee0_0000u64 + u64::from(v) * 0x1000).to_le_bytes(),
    );
    write32(m, base + 8, 0x40 + u32::from(v));
    m.message(v).unwrap()
}

fn enable(m: &mut Msix) {
    assert_eq!(m.set_control(CTL_ENABLE), [MsixChange::Enabled]);
}

#[test]
fn reset_masks_every_vector() {
    let m = msix(3);
    for v in 0..3 {
        assert!(m.is_vector_masked(v));
        assert_eq!(read32(&m, u64::from(v) * 16 + 12), 1);
    }
    assert!(!m.enabled());
    assert_eq!(m.control(), 2);
}

#[test]
fn capability_registers_describe_table_and_pba() {
    let m = msix(8);
    let mut cap = [0u8; 12];
    m.read_capability(0, &mut cap);
    assert_eq!(cap[0], 0x11);
    assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 7);
    assert_eq!(u32::from_le_bytes([cap[4], cap[5], cap[6], cap[7]]), 0x2000);
    assert_eq!(
        u32::from_le_bytes([cap[8], cap[9], cap[10], cap[11]]),
        0x3000
    );
    let l = MsixLayout::from_registers(0x7, 0x2002, 0x3003).unwrap();
    assert_eq!(
        (l.table_size, l.table_bar, l.table_offset),
        (8, bar(2), 0x2000)
    );
    assert_eq!((l.pba_bar, l.pba_offset), (bar(3), 0x3000));
    assert!(MsixLayout::from_registers(0, 0x7, 0).is_err());
}

#[test]
fn only_enable_and_function_mask_are_writable() {
    let mut m = msix(4);
    let changes = m.write_capability(2, &0xffffu16.to_le_bytes());
    assert_eq!(changes, [MsixChange::Enabled, MsixChange::FunctionMasked]);
    assert_eq!(m.control(), 0xc003);
    // Table and PBA registers are read-only.
    m.write_capability(4, &[0xff; 4]);
    assert_eq!(m.layout().table_offset, 0x2000);
    // A byte write of the high control byte alone works.
    assert_eq!(
        m.write_capability(3, &[0x00]),
        [MsixChange::Disabled, MsixChange::FunctionUnmasked]
    );
}

#[test]
fn masked_vector_pends_then_unmask_delivers_exactly_once() {
    let mut m = msix(4);
    let message = program(&mut m, 2);
    enable(&mut m);
    assert_eq!(m.trigger(2), Delivery::Pending);
    assert_eq!(m.trigger(2), Delivery::Pending);
    assert!(m.is_pending(2));
    let changes = write32(&mut m, 2 * 16 + 12, 0);
    assert_eq!(
        changes,
        [
            MsixChange::VectorUnmasked(2),
            MsixChange::Deliver { vector: 2, message }
        ]
    );
    assert!(!m.is_pending(2));
    // Masking and unmasking again delivers nothing: the event was consumed.
    assert_eq!(
        write32(&mut m, 2 * 16 + 12, 1),
        [MsixChange::VectorMasked(2)]
    );
    assert_eq!(
        write32(&mut m, 2 * 16 + 12, 0),
        [MsixChange::VectorUnmasked(2)]
    );
    assert_eq!(m.trigger(2), Delivery::Deliver(message));
}

#[test]
fn function_mask_holds_vectors_pending_until_cleared() {
    let mut m = msix(2);
    let m0 = program(&mut m, 0);
    program(&mut m, 1);
    write32(&mut m, 12, 0);
    assert_eq!(
        m.set_control(CTL_ENABLE | CTL_FUNCTION_MASK),
        [MsixChange::Enabled, MsixChange::FunctionMasked]
    );
    assert_eq!(m.trigger(0), Delivery::Pending);
    assert_eq!(m.trigger(1), Delivery::Pending);
    // Vector 1 stays individually masked, so only vector 0 is delivered on function unmask.
    let changes = m.set_control(CTL_ENABLE);
    assert_eq!(
        changes,
        [
            MsixChange::FunctionUnmasked,
            MsixChange::Deliver {
                vector: 0,
                message: m0
            }
        ]
    );
    assert!(m.is_pending(1));
    assert!(!m.is_pending(0));
}

#[test]
fn unmask_under_function_mask_does_not_deliver() {
    let mut m = msix(1);
    program(&mut m, 0);
    m.set_control(CTL_ENABLE | CTL_FUNCTION_MASK);
    m.trigger(0);
    assert_eq!(write32(&mut m, 12, 0), [MsixChange::VectorUnmasked(0)]);
    assert!(m.is_pending(0));
}

#[test]
fn disabled_msix_does_not_deliver_or_pend() {
    let mut m = msix(1);
    program(&mut m, 0);
    write32(&mut m, 12, 0);
    assert_eq!(m.trigger(0), Delivery::Disabled);
    assert!(!m.is_pending(0));
    enable(&mut m);
    assert_eq!(m.trigger(0), Delivery::Deliver(m.message(0).unwrap()));
    assert_eq!(m.trigger(7), Delivery::Disabled);
}

#[test]
fn reprogramming_a_vector_is_reported() {
    let mut m = msix(2);
    assert_eq!(
        write32(&mut m, 16, 0xfee0_1000),
        [MsixChange::VectorUpdated(1)]
    );
    assert_eq!(write32(&mut m, 16, 0xfee0_1000), []);
    // An 8-byte write of data + vector control updates and unmasks in one go.
    let both = 0x0000_0000_0000_0041u64.to_le_bytes();
    assert_eq!(
        m.write_table(16 + 8, &both),
        [MsixChange::VectorUpdated(1), MsixChange::VectorUnmasked(1)]
    );
}

#[test]
fn table_accepts_aligned_dword_and_qword_accesses_only() {
    let mut m = msix(2);
    m.write_table(16, &0x1_fee0_2000u64.to_le_bytes());
    assert_eq!(read32(&m, 16), 0xfee0_2000);
    assert_eq!(read32(&m, 20), 0x1);
    let mut q = [0u8; 8];
    m.read_table(16, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x1_fee0_2000);
    // Unaligned, odd widths and out-of-range offsets are ignored and read 0.
    assert_eq!(m.write_table(18, &[0xff; 4]), []);
    assert_eq!(m.write_table(20, &[0xff; 8]), []);
    assert_eq!(m.write_table(16, &[0xff; 2]), []);
    assert_eq!(m.write_table(32, &[0xff; 4]), []);
    assert_eq!(read32(&m, 16), 0xfee0_2000);
    let mut two = [0xaau8; 2];
    m.read_table(16, &mut two);
    assert_eq!(two, [0, 0]);
    assert_eq!(read32(&m, 32), 0);
    // Reserved vector control bits stay 0.
    write32(&mut m, 12, 0xffff_fffe);
    assert_eq!(read32(&m, 12), 0);
}

#[test]
fn pba_is_read_only_and_reflects_pending_bits() {
    let mut m = msix(70);
    enable(&mut m);
    m.trigger(0);
    m.trigger(65);
    let mut q = [0u8; 8];
    m.read_pba(0, &mut q);
    assert_eq!(u64::from_le_bytes(q), 1);
    let mut d = [0u8; 4];
    m.read_pba(8, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0b10);
    m.write_pba(0, &[0; 8]);
    m.read_pba(0, &mut q);
    assert_eq!(u64::from_le_bytes(q), 1);
    m.read_pba(16, &mut q);
    assert_eq!(q, [0; 8]);
}

#[test]
fn bar_offsets_resolve_to_table_and_pba() {
    let m = msix(4);
    assert_eq!(m.region_at(bar(0), 0x2000), Some(MsixRegion::Table(0)));
    assert_eq!(m.region_at(bar(0), 0x203c), Some(MsixRegion::Table(0x3c)));
    assert_eq!(m.region_at(bar(0), 0x2040), None);
    assert_eq!(m.region_at(bar(0), 0x3004), Some(MsixRegion::Pba(4)));
    assert_eq!(m.region_at(bar(1), 0x2000), None);
    assert_eq!(m.region_at(bar(0), 0x1000), None);
}

#[test]
fn reset_clears_control_pending_and_masks_all() {
    let mut m = msix(1);
    write32(&mut m, 12, 0);
    m.set_control(CTL_ENABLE | CTL_FUNCTION_MASK);
    m.trigger(0);
    m.reset();
    assert!(!m.enabled() && !m.function_masked() && !m.is_pending(0) && m.is_vector_masked(0));
}

#[test]
fn impossible_layouts_are_refused() {
    let mut l = msix(1).layout();
    l.table_size = 0;
    assert!(Msix::new(l).is_err());
    l.table_size = 2049;
    assert!(Msix::new(l).is_err());
    l.table_size = 1;
    l.pba_offset = 0x3004;
    assert!(Msix::new(l).is_err());
}
