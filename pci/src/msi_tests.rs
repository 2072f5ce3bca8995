//! Tests of [`super::Msi`].

use super::*;

fn msi(addr64: bool, per_vector_mask: bool, mmc: u8) -> Msi {
    Msi::new(MsiFeatures {
        addr64,
        per_vector_mask,
        multiple_message_capable: mmc,
    })
    .unwrap()
}

fn write16(m: &mut Msi, off: usize, v: u16) -> Vec<MsiChange> {
    m.write(off, &v.to_le_bytes())
}

fn write32(m: &mut Msi, off: usize, v: u32) -> Vec<MsiChange> {
    m.write(off, &v.to_le_bytes())
}

#[test]
fn layout_lengths_follow_the_features() {
    assert_eq!(msi(false, false, 0).len(), 10);
    assert_eq!(msi(true, false, 0).len(), 14);
    assert_eq!(msi(false, true, 0).len(), 20);
    assert_eq!(msi(true, true, 0).len(), 24);
    assert_eq!(msi(true, true, 0).capability_body().len(), 22);
}

#[test]
fn control_advertises_capabilities_read_only() {
    let mut m = msi(true, true, 3);
    let mut ctl = [0u8; 2];
    m.read(2, &mut ctl);
    assert_eq!(u16::from_le_bytes(ctl), (1 << 8) | (1 << 7) | (3 << 1));
    write16(&mut m, 2, 0);
    m.read(2, &mut ctl);
    assert_eq!(u16::from_le_bytes(ctl), (1 << 8) | (1 << 7) | (3 << 1));
}

#[test]
fn msi_32bit_programming_yields_the_message() {
    let mut m = msi(false, false, 0);
    write32(&mut m, 4, 0xfee0_1003);
    write16(&mut m, 8, 0x4041);
    assert_eq!(write16(&mut m, 2, 1), [MsiChange::Enabled]);
    assert_eq!(
        m.message(0),
        Some(MsiMessage {
            address: 0xfee0_1000,
            data: 0x4041
        })
    );
    assert_eq!(m.message(1), None);
    assert_eq!(m.trigger(0), Delivery::Deliver(m.message(0).unwrap()));
}

#[test]
fn msi_64bit_programming_uses_the_high_address() {
    let mut m = msi(true, false, 0);
    write32(&mut m, 4, 0xfee0_0000);
    write32(&mut m, 8, 0x1);
    write16(&mut m, 12, 0x31);
    write16(&mut m, 2, 1);
    assert_eq!(m.base_message().address, 0x1_fee0_0000);
    assert_eq!(m.base_message().data, 0x31);
}

#[test]
fn multiple_message_enable_is_clamped_to_capable() {
    let mut m = msi(false, false, 2);
    write16(&mut m, 2, (5 << 4) | 1);
    assert_eq!(m.vectors_enabled(), 4);
    write16(&mut m, 2, (1 << 4) | 1);
    assert_eq!(m.vectors_enabled(), 2);
    let mut single = msi(false, false, 0);
    write16(&mut single, 2, 7 << 4);
    assert_eq!(single.vectors_enabled(), 1);
}

#[test]
fn vector_messages_replace_the_low_data_bits() {
    let mut m = msi(false, false, 2);
    write32(&mut m, 4, 0xfee0_0000);
    write16(&mut m, 8, 0x43);
    write16(&mut m, 2, (2 << 4) | 1);
    assert_eq!(m.message(0).unwrap().data, 0x40);
    assert_eq!(m.message(3).unwrap().data, 0x43);
    assert_eq!(m.message(4), None);
}

#[test]
fn reprogramming_while_enabled_is_reported_and_disable_too() {
    let mut m = msi(false, false, 0);
    write16(&mut m, 2, 1);
    assert_eq!(write32(&mut m, 4, 0xfee0_2000), [MsiChange::Reprogrammed]);
    assert_eq!(write32(&mut m, 4, 0xfee0_2000), []);
    assert_eq!(write16(&mut m, 2, 0), [MsiChange::Disabled]);
    assert_eq!(m.trigger(0), Delivery::Disabled);
}

#[test]
fn masked_vector_pends_and_is_delivered_on_unmask() {
    let mut m = msi(false, true, 1);
    write32(&mut m, 4, 0xfee0_0000);
    write16(&mut m, 8, 0x50);
    write16(&mut m, 2, (1 << 4) | 1);
    assert_eq!(write32(&mut m, 12, 0b10), [MsiChange::Masked(1)]);
    assert_eq!(m.trigger(1), Delivery::Pending);
    assert!(m.is_pending(1));
    let mut pending = [0u8; 4];
    m.read(16, &mut pending);
    assert_eq!(u32::from_le_bytes(pending), 0b10);
    // Pending bits are read-only to the guest.
    write32(&mut m, 16, 0);
    assert!(m.is_pending(1));
    let message = m.message(1).unwrap();
    assert_eq!(
        write32(&mut m, 12, 0),
        [
            MsiChange::Unmasked(1),
            MsiChange::Deliver { vector: 1, message }
        ]
    );
    assert!(!m.is_pending(1));
    assert_eq!(m.trigger(1), Delivery::Deliver(message));
}

#[test]
fn mask_bits_beyond_capable_vectors_are_reserved() {
    let mut m = msi(true, true, 1);
    write32(&mut m, 16, u32::MAX);
    let mut mask = [0u8; 4];
    m.read(16, &mut mask);
    assert_eq!(u32::from_le_bytes(mask), 0b11);
}

#[test]
fn too_many_capable_vectors_is_refused() {
    let r = Msi::new(MsiFeatures {
        addr64: false,
        per_vector_mask: false,
        multiple_message_capable: 6,
    });
    assert!(matches!(
        r,
        Err(PciError::InvalidInterruptCapability { .. })
    ));
}
