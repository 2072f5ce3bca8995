//! Where guest RAM goes for a given memory size, and the e820 map that describes it to the
//! guest. Pure arithmetic over `layout`, shared by both boot protocols.

use crate::layout::*;

/// What an e820 entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Reserved: the guest must not use it as RAM (e.g. the ECAM window).
    Reserved,
}

impl E820Kind {
    /// The numeric type used by `boot_params.e820_table` and the PVH memmap.
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One entry of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// RAM or reserved.
    pub kind: E820Kind,
}

/// Guest RAM as `(start, length)` ranges: up to the 32-bit hole, then the rest from 4 GiB.
pub fn ram_regions(memory_bytes: u64) -> Vec<(u64, u64)> {
    let low = memory_bytes.min(MEM_32BIT_HOLE_START);
    let mut regions = vec![(RAM_START, low)];
    if memory_bytes > low {
        regions.push((FIRST_ADDR_PAST_32BITS, memory_bytes - low));
    }
    regions
}

/// End (exclusive) of the RAM below 4 GiB, where high boot payloads (the initramfs) may go.
pub fn low_ram_end(memory_bytes: u64) -> u64 {
    memory_bytes.min(MEM_32BIT_HOLE_START)
}

/// First guest physical address above all RAM.
pub fn ram_end(memory_bytes: u64) -> u64 {
    ram_regions(memory_bytes)
        .last()
        .map_or(0, |&(start, len)| start + len)
}

/// The e820 map for `memory_bytes` of RAM. The legacy area `[EBDA_START, HIGH_RAM_START)`
/// (where the ACPI tables live) is left out, as on real hardware; the ECAM window is reserved.
pub fn e820_map(memory_bytes: u64) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for (start, len) in ram_regions(memory_bytes) {
        if start == RAM_START {
            map.push(E820Entry {
                addr: RAM_START,
                size: EBDA_START.min(len),
                kind: E820Kind::Ram,
            });
            if len > HIGH_RAM_START {
                map.push(E820Entry {
                    addr: HIGH_RAM_START,
                    size: len - HIGH_RAM_START,
                    kind: E820Kind::Ram,
                });
            }
        } else {
            map.push(E820Entry {
                addr: start,
                size: len,
                kind: E820Kind::Ram,
            });
        }
    }
    map.push(E820Entry {
        addr: PCI_MMCONFIG_START,
        size: PCI_MMCONFIG_SIZE,
        kind: E820Kind::Reserved,
    });
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guest_has_one_region_below_the_hole() {
        assert_eq!(ram_regions(512 * MIB), vec![(0, 512 * MIB)]);
        assert_eq!(ram_end(512 * MIB), 512 * MIB);
    }

    #[test]
    fn large_guest_resumes_above_4g() {
        assert_eq!(ram_regions(8 * GIB), vec![(0, 3 * GIB), (4 * GIB, 5 * GIB)]);
        assert_eq!(low_ram_end(8 * GIB), 3 * GIB);
        assert_eq!(ram_end(8 * GIB), 9 * GIB);
    }

    #[test]
    fn e820_skips_legacy_area_and_reserves_ecam() {
        let map = e820_map(8 * GIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0xA0000,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: 3 * GIB - 0x10_0000,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 4 * GIB,
                    size: 5 * GIB,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0xE800_0000,
                    size: 0x1000_0000,
                    kind: E820Kind::Reserved
                },
            ]
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 8 * GIB - (0x10_0000 - 0xA0000));
    }

    #[test]
    fn no_ram_entry_overlaps_the_32bit_hole() {
        for size in [16 * MIB, 3 * GIB, 3 * GIB + 4096, 64 * GIB] {
            for e in e820_map(size).iter().filter(|e| e.kind == E820Kind::Ram) {
                let end = e.addr + e.size;
                assert!(end <= MEM_32BIT_HOLE_START || e.addr >= FIRST_ADDR_PAST_32BITS);
            }
        }
    }
}
