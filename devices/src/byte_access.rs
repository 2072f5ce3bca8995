//! The one access width the legacy devices decode: single-byte port I/O.
//!
//! Every device here is an 8-bit ISA-style register block, and Linux only ever touches them
//! with `inb`/`outb`. A guest may still issue wider (or empty) accesses; those are not decoded:
//! writes are dropped and reads return all-ones, which is what an x86 guest sees for an I/O port
//! nothing answers. Crucially, an undecoded access never reaches device state, so a stray
//! 16-bit read of a serial RBR does not pop a byte and a stray wide write never reboots.

/// What an undecoded byte reads as (a floating ISA bus).
pub const UNDECODED_BYTE: u8 = 0xff;

/// The offset and value of a single-byte write, or `None` for any other access.
pub(crate) fn byte_write(offset: u64, data: &[u8]) -> Option<(u8, u8)> {
    match data {
        [value] => Some((u8::try_from(offset).ok()?, *value)),
        _ => None,
    }
}

/// Answers a read: a single-byte read at an offset below `len` gets `decode(offset)`; anything
/// else is filled with [`UNDECODED_BYTE`] without calling `decode`.
pub(crate) fn byte_read(offset: u64, data: &mut [u8], len: u8, decode: impl FnOnce(u8) -> u8) {
    match (data, u8::try_from(offset)) {
        ([byte], Ok(offset)) if offset < len => *byte = decode(offset),
        (data, _) => data.fill(UNDECODED_BYTE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_bytes_are_decoded() {
        assert_eq!(byte_write(4, &[0xfe]), Some((4, 0xfe)));
        assert_eq!(byte_write(4, &[0xfe, 0]), None);
        assert_eq!(byte_write(4, &[]), None);
        assert_eq!(byte_write(0x1_0000_0004, &[0xfe]), None);

        let mut one = [0u8; 1];
        byte_read(2, &mut one, 8, |o| o + 1);
        assert_eq!(one, [3]);
        byte_read(8, &mut one, 8, |_| unreachable!("out of range"));
        assert_eq!(one, [UNDECODED_BYTE]);
        let mut two = [0u8; 2];
        byte_read(0, &mut two, 8, |_| unreachable!("too wide"));
        assert_eq!(two, [UNDECODED_BYTE; 2]);
        byte_read(0, &mut [], 8, |_| unreachable!("empty"));
    }
}
