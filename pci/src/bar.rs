//! Base Address Registers as a device declares them and as the guest moves them.
//!
//! A device states *what* it needs ([`BarSpec`]); the VMM decides *where* (it allocates the
//! address and calls `set_bar_address`); the guest may later reprogram the address, which the
//! config-space model reports as a [`BarMove`] so the VMM can move its mappings.

use std::fmt;

/// Config-space offset of BAR0.
pub const BAR0_OFFSET: usize = 0x10;
/// Config-space offset of the expansion ROM BAR in a type 0 header.
pub const ROM_BAR_OFFSET: usize = 0x30;
/// Number of BAR registers in a type 0 header.
pub const NUM_BARS: usize = 6;
/// Smallest I/O BAR (bits 1:0 are flags).
pub const MIN_IO_BAR_SIZE: u64 = 4;
/// Smallest memory BAR (bits 3:0 are flags).
pub const MIN_MEM_BAR_SIZE: u64 = 16;
/// Smallest expansion ROM (address bits start at 11).
pub const MIN_ROM_BAR_SIZE: u64 = 2048;

/// Memory BAR bit 3: the region may be prefetched (no read side effects).
pub(crate) const BAR_PREFETCHABLE: u32 = 1 << 3;
/// Memory BAR bits 2:1 = 10: the BAR is 64 bits wide.
pub(crate) const BAR_MEM64: u32 = 0b10 << 1;
/// BAR bit 0: I/O space indicator.
pub(crate) const BAR_IO: u32 = 1;
/// ROM BAR bit 0: decode enable.
pub(crate) const ROM_ENABLE: u32 = 1;

/// Which BAR: 0..=5, or the expansion ROM.
///
/// The ROM carries the number 6, the same as VFIO's `VFIO_PCI_ROM_REGION_INDEX`, so a passthrough
/// layer can use one index for both worlds. It is not a BAR register and is built only with
/// [`BarIndex::ROM`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BarIndex(u8);

impl BarIndex {
    /// The expansion ROM BAR (config offset 0x30).
    pub const ROM: BarIndex = BarIndex(6);

    /// BAR `index`, or `None` if it is not 0..=5.
    pub const fn new(index: u8) -> Option<Self> {
        if (index as usize) < NUM_BARS {
            Some(Self(index))
        } else {
            None
        }
    }

    /// Every BAR register index, ROM excluded.
    pub fn all() -> impl Iterator<Item = BarIndex> {
        (0..NUM_BARS as u8).map(BarIndex)
    }

    /// The number: 0..=5, or 6 for the ROM.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether this is the expansion ROM.
    pub const fn is_rom(self) -> bool {
        self.0 == Self::ROM.0
    }

    /// Config-space offset of this BAR's (lower) register.
    pub const fn config_offset(self) -> usize {
        if self.is_rom() {
            ROM_BAR_OFFSET
        } else {
            BAR0_OFFSET + 4 * self.0 as usize
        }
    }

    /// Config-space dword index of this BAR's (lower) register.
    pub const fn reg_idx(self) -> usize {
        self.config_offset() / 4
    }
}

impl fmt::Display for BarIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_rom() {
            write!(f, "ROM BAR")
        } else {
            write!(f, "BAR{}", self.0)
        }
    }
}

/// The address space and width a BAR decodes.
///
/// Placement depends on this alone: I/O ports, the 32-bit MMIO hole, or the 64-bit aperture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// I/O port space.
    Io,
    /// Memory below 4 GiB (memory type 00).
    Mem32,
    /// Memory anywhere in 64-bit space (memory type 10); occupies two BAR registers.
    Mem64,
}

/// What a device needs from one BAR, declared before allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BarSpec {
    /// Which BAR register (or the ROM).
    pub index: BarIndex,
    /// Size in bytes; a power of two.
    pub size: u64,
    /// Address space and width.
    pub kind: BarKind,
    /// Bit 3 of a memory BAR; copied into the guest-visible register, read-only.
    pub prefetchable: bool,
}

impl BarSpec {
    /// A BAR of `kind`, not prefetchable.
    pub fn new(index: BarIndex, size: u64, kind: BarKind) -> Self {
        Self {
            index,
            size,
            kind,
            prefetchable: false,
        }
    }

    /// An expansion ROM of `size` bytes (a 32-bit memory BAR at 0x30).
    pub fn rom(size: u64) -> Self {
        Self::new(BarIndex::ROM, size, BarKind::Mem32)
    }

    /// Same spec with the prefetchable bit set.
    pub fn prefetchable(mut self) -> Self {
        self.prefetchable = true;
        self
    }

    /// Read-only low bits of the (lower) register: I/O indicator, memory type, prefetchable.
    pub(crate) fn flag_bits(&self) -> u32 {
        if self.index.is_rom() {
            return 0;
        }
        let kind = match self.kind {
            BarKind::Io => return BAR_IO,
            BarKind::Mem32 => 0,
            BarKind::Mem64 => BAR_MEM64,
        };
        if self.prefetchable {
            kind | BAR_PREFETCHABLE
        } else {
            kind
        }
    }

    /// Writable bits of the lower register: the size-aligned address bits (and the ROM enable).
    pub(crate) fn lower_write_mask(&self) -> u32 {
        let addr_mask = !self.size.wrapping_sub(1) as u32;
        if self.index.is_rom() {
            (addr_mask & 0xffff_f800) | ROM_ENABLE
        } else if self.kind == BarKind::Io {
            addr_mask & 0xffff_fffc
        } else {
            addr_mask & 0xffff_fff0
        }
    }

    /// Writable bits of the upper register of a 64-bit BAR.
    pub(crate) fn upper_write_mask(&self) -> u32 {
        (!self.size.wrapping_sub(1) >> 32) as u32
    }
}

/// A guest write moved a BAR: the VMM should move the MMIO/PIO mapping (and any KVM memory
/// slot) of `[old, old + size)` to `[new, new + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// Which BAR moved.
    pub index: BarIndex,
    /// Its address space.
    pub kind: BarKind,
    /// Address before the write (as last set by the VMM or last reported).
    pub old: u64,
    /// Address now decoded.
    pub new: u64,
    /// BAR size in bytes.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_index_offsets_follow_the_type0_header() {
        assert_eq!(BarIndex::new(0).unwrap().config_offset(), 0x10);
        assert_eq!(BarIndex::new(5).unwrap().config_offset(), 0x24);
        assert_eq!(BarIndex::ROM.config_offset(), 0x30);
        assert_eq!(BarIndex::ROM.reg_idx(), 12);
        assert_eq!(BarIndex::new(6), None);
        assert_eq!(BarIndex::all().count(), 6);
        assert_eq!(BarIndex::ROM.to_string(), "ROM BAR");
    }

    #[test]
    fn flag_bits_encode_kind_and_prefetch() {
        let i = BarIndex::new(0).unwrap();
        assert_eq!(BarSpec::new(i, 16, BarKind::Io).flag_bits(), 0b1);
        assert_eq!(BarSpec::new(i, 16, BarKind::Mem32).flag_bits(), 0b0000);
        assert_eq!(
            BarSpec::new(i, 16, BarKind::Mem64)
                .prefetchable()
                .flag_bits(),
            0b1100
        );
        assert_eq!(BarSpec::rom(4096).flag_bits(), 0);
    }

    #[test]
    fn write_masks_cover_only_size_aligned_bits() {
        let i = BarIndex::new(0).unwrap();
        assert_eq!(
            BarSpec::new(i, 0x1000, BarKind::Mem32).lower_write_mask(),
            0xffff_f000
        );
        assert_eq!(
            BarSpec::new(i, 0x20, BarKind::Io).lower_write_mask(),
            0xffff_ffe0
        );
        let big = BarSpec::new(i, 1 << 34, BarKind::Mem64);
        assert_eq!(big.lower_write_mask(), 0);
        assert_eq!(big.upper_write_mask(), 0xffff_fffc);
        assert_eq!(BarSpec::rom(0x8000).lower_write_mask(), 0xffff_8001);
    }
}
