//! MSI-X (pci crate) as a guest and a device drive it: capability reads and writes, table and
//! PBA accesses of any width and alignment, vectors raised, resets. Checked against a shadow of
//! the table: aligned dword writes read back (Vector Control keeps only its mask bit), the PBA
//! ignores writes, a raised vector is delivered exactly when it is deliverable and otherwise
//! left pending while enabled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pci::bar::BarIndex;
use pci::msi::Delivery;
use pci::msix::{Msix, MsixLayout, MsixRegion, MSIX_ENTRY_SIZE};
use viaduct_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let control = input.u16();
    let table = input.u32();
    let pba = input.u32();
    let Ok(layout) = MsixLayout::from_registers(control, table, pba) else {
        return;
    };
    let Ok(mut msix) = Msix::new(layout) else {
        return;
    };
    let vectors = u64::from(layout.table_size);
    // Shadow of the table's dwords.
    let mut shadow = vec![0u32; (vectors * 4) as usize];
    for v in 0..vectors as usize {
        shadow[v * 4 + 3] = 1;
    }
    let mut ops = 0;
    while !input.is_empty() && ops < 4096 {
        ops += 1;
        let op = input.u8();
        match op % 10 {
            0 => {
                let offset = usize::from(input.u8() % 16);
                let len = input.access_len();
                let bytes = input.bytes(len).to_vec();
                let _ = msix.write_capability(offset, &bytes);
            }
            1 => {
                let offset = usize::from(input.u8() % 16);
                let mut bytes = vec![0u8; input.access_len()];
                msix.read_capability(offset, &mut bytes);
            }
            2 => {
                let _ = msix.set_control(input.u16());
            }
            3 | 4 => {
                // Mostly aligned dword writes inside the table, sometimes anything.
                let len = input.access_len();
                let raw = u64::from(input.u16());
                let offset = if op & 0x80 != 0 {
                    raw
                } else {
                    (raw * 4) % (vectors * MSIX_ENTRY_SIZE)
                };
                let bytes = input.bytes(len).to_vec();
                let _ = msix.write_table(offset, &bytes);
                if matches!(bytes.len(), 4 | 8)
                    && bytes.len() == len
                    && offset.is_multiple_of(len as u64)
                    && offset + len as u64 <= vectors * MSIX_ENTRY_SIZE
                {
                    for (i, chunk) in bytes.chunks(4).enumerate() {
                        let dword = (offset / 4) as usize + i;
                        let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                        shadow[dword] = if dword % 4 == 3 { value & 1 } else { value };
                    }
                }
            }
            5 => {
                let len = input.access_len();
                let raw = u64::from(input.u16());
                let offset = if op & 0x80 != 0 {
                    raw
                } else {
                    (raw * 4) % (vectors * MSIX_ENTRY_SIZE)
                };
                let mut bytes = vec![0u8; len];
                msix.read_table(offset, &mut bytes);
                if len == 4 && offset.is_multiple_of(4) && offset < vectors * MSIX_ENTRY_SIZE {
                    let got = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    assert_eq!(
                        got,
                        shadow[(offset / 4) as usize],
                        "table dword {offset:#x}"
                    );
                }
            }
            6 => {
                let len = input.access_len();
                let offset = u64::from(input.u16() % 512);
                let mut before = vec![0u8; len];
                msix.read_pba(offset, &mut before);
                let bytes = input.bytes(len).to_vec();
                msix.write_pba(offset, &bytes);
                let mut after = vec![0u8; len];
                msix.read_pba(offset, &mut after);
                assert_eq!(before, after, "a PBA write changed it");
            }
            7 | 8 => {
                let vector = input.u16() % (layout.table_size + 2);
                let deliverable = msix.is_deliverable(vector);
                let enabled = msix.enabled();
                match msix.trigger(vector) {
                    Delivery::Deliver(m) => {
                        assert!(deliverable, "vector {vector} delivered while masked");
                        assert_eq!(Some(m), msix.message(vector));
                    }
                    Delivery::Pending => {
                        assert!(enabled && !deliverable);
                        assert!(msix.is_pending(vector));
                    }
                    Delivery::Disabled => {
                        assert!(!enabled || u64::from(vector) >= vectors);
                    }
                }
            }
            _ => {
                if op & 0x80 != 0 {
                    msix.reset();
                    for (i, d) in shadow.iter_mut().enumerate() {
                        *d = u32::from(i % 4 == 3);
                    }
                } else {
                    let bar = BarIndex::new(input.u8() % 6).unwrap_or(BarIndex::ROM);
                    let offset = u64::from(input.u32());
                    match msix.region_at(bar, offset) {
                        Some(MsixRegion::Table(o)) => assert!(o < vectors * MSIX_ENTRY_SIZE),
                        Some(MsixRegion::Pba(o)) => assert!(o < vectors.div_ceil(64) * 8),
                        None => {}
                    }
                }
            }
        }
    }
});
