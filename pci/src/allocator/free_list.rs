//! The free blocks of one BAR window: a sorted map from start address to length whose blocks
//! never touch (freeing merges neighbours), searched best-fit for naturally aligned runs.

use std::collections::BTreeMap;

use crate::aperture::AddressRange;

/// Free address blocks of one window, keyed by start; adjacent blocks are always merged.
#[derive(Debug)]
pub(super) struct FreeList {
    blocks: BTreeMap<u64, u64>,
}

impl FreeList {
    /// All of `range` free.
    pub(super) fn new(range: AddressRange) -> Self {
        let mut blocks = BTreeMap::new();
        if !range.is_empty() {
            blocks.insert(range.start(), range.size());
        }
        FreeList { blocks }
    }

    /// Best fit: the lowest `align`-aligned address, inside the smallest free block that can hold
    /// `len` bytes there (ties go to the lower block).
    pub(super) fn find(&self, len: u64, align: u64) -> Option<u64> {
        self.blocks
            .iter()
            .filter_map(|(&start, &size)| {
                let addr = start.checked_next_multiple_of(align)?;
                (addr.checked_add(len)? <= start + size).then_some((size, addr))
            })
            .min()
            .map(|(_, addr)| addr)
    }

    /// Takes `[addr, addr + len)` out of the free block that contains all of it; `false` (and
    /// nothing changes) when no block does.
    pub(super) fn take(&mut self, addr: u64, len: u64) -> bool {
        let Some((&start, &size)) = self.blocks.range(..=addr).next_back() else {
            return false;
        };
        let (end, want_end) = (start + size, addr.saturating_add(len));
        if want_end > end {
            return false;
        }
        self.blocks.remove(&start);
        if addr > start {
            self.blocks.insert(start, addr - start);
        }
        if end > want_end {
            self.blocks.insert(want_end, end - want_end);
        }
        true
    }

    /// Returns `[addr, addr + len)` (taken before) to the list, merging with its neighbours.
    pub(super) fn give_back(&mut self, addr: u64, len: u64) {
        let (mut start, mut end) = (addr, addr + len);
        if let Some((&prev, &size)) = self.blocks.range(..addr).next_back() {
            if prev + size == start {
                self.blocks.remove(&prev);
                start = prev;
            }
        }
        if let Some(size) = self.blocks.remove(&end) {
            end += size;
        }
        self.blocks.insert(start, end - start);
    }

    /// Free bytes in total.
    pub(super) fn remaining(&self) -> u64 {
        self.blocks.values().sum()
    }

    /// Length of the largest free block.
    pub(super) fn largest_block(&self) -> u64 {
        self.blocks.values().copied().max().unwrap_or(0)
    }

    /// Largest power of two that still fits naturally aligned (0 when none does).
    pub(super) fn largest_aligned(&self) -> u64 {
        self.blocks
            .iter()
            .filter_map(|(&start, &size)| {
                (0..64).rev().map(|shift| 1u64 << shift).find(|&p| {
                    p <= size
                        && start
                            .checked_next_multiple_of(p)
                            .is_some_and(|a| a - start <= size - p)
                })
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(start: u64, size: u64) -> FreeList {
        FreeList::new(AddressRange::new(start, size).unwrap())
    }

    #[test]
    fn take_splits_and_give_back_merges() {
        let mut free = list(0x1000, 0x10000);
        assert!(free.take(0x4000, 0x1000));
        assert!(free.take(0x8000, 0x1000));
        assert_eq!(free.blocks.len(), 3);
        assert!(!free.take(0x4800, 0x100), "already taken");
        assert!(!free.take(0x7800, 0x1000), "straddles a taken range");
        free.give_back(0x4000, 0x1000);
        assert_eq!(free.blocks.len(), 2);
        free.give_back(0x8000, 0x1000);
        assert_eq!(
            free.blocks.into_iter().collect::<Vec<_>>(),
            vec![(0x1000, 0x10000)]
        );
    }

    #[test]
    fn best_fit_prefers_the_smallest_block_that_holds_the_aligned_run() {
        let mut free = list(0, 0x10_0000);
        assert!(free.take(0x3000, 0x1000)); // leaves [0, 0x3000) and [0x4000, 1 MiB)
        assert_eq!(free.find(0x1000, 0x1000), Some(0));
        assert_eq!(free.find(0x4000, 0x4000), Some(0x4000));
        assert_eq!(free.find(0x20_0000, 0x1000), None);
    }

    #[test]
    fn largest_aligned_accounts_for_alignment() {
        let free = list(0xDAAA_A000, 0xD55_6000);
        assert_eq!(free.largest_block(), 0xD55_6000);
        assert_eq!(free.largest_aligned(), 0x800_0000);
        assert_eq!(list(0x1000, 0x3000).largest_aligned(), 0x2000);
        assert_eq!(FreeList::new(AddressRange::empty(0)).largest_aligned(), 0);
        assert_eq!(FreeList::new(AddressRange::empty(0)).remaining(), 0);
    }
}
