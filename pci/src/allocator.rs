//! Placement of BARs inside one PCI segment's windows: its share of the 32-bit MMIO aperture,
//! of the 64-bit MMIO aperture and of the I/O port window (see [`crate::aperture`]).
//!
//! Rules:
//! - every BAR is naturally aligned to its size, which must be a power of two (at least 16 bytes
//!   for memory, 4 for I/O); a memory BAR smaller than a page still takes a whole 4 KiB page of
//!   its own, so passthrough can map it into the guest without exposing a neighbour;
//! - 32-bit BARs and the expansion ROM (index 6) come from the 32-bit window, 64-bit BARs from
//!   the 64-bit window (or from the 32-bit window when the segment has no 64-bit window), I/O
//!   BARs from the I/O window.
//!
//! Placement is best fit: the smallest free block that can hold the naturally aligned BAR, at the
//! lowest aligned address inside it. Small BARs thus fill the alignment gaps left in front of
//! large ones instead of cutting into a large aligned block. Fragmentation is lowest when the
//! caller allocates large BARs first (it knows all BARs of a device); any order works.
//!
//! The free list also supports [`free`](SegmentAllocator::free) (hot-unplug), guest-chosen
//! addresses ([`reserve`](SegmentAllocator::reserve)) and the move of a BAR the guest
//! reprograms ([`relocate`](SegmentAllocator::relocate)).

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

use crate::aperture::{AddressRange, HumanSize};

mod free_list;
use free_list::FreeList;

/// BAR index of the expansion ROM (config offset 0x30), after BAR0..BAR5.
pub const ROM_BAR: u8 = 6;

/// Smallest footprint of a memory BAR: one page, the granularity of guest memory mappings.
const MIN_MEM_FOOTPRINT: u64 = 4 << 10;

/// The address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB (32-bit memory BAR, or the expansion ROM).
    Mem32,
    /// Memory anywhere (64-bit memory BAR).
    Mem64,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Io => "I/O port",
            Space::Mem32 => "32-bit MMIO",
            Space::Mem64 => "64-bit MMIO",
        })
    }
}

/// One BAR that needs a guest address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarRequest {
    /// The device, as the user knows it (its `id=` or sysfs path); used in error messages.
    pub owner: String,
    /// BAR index 0..=5, or [`ROM_BAR`] for the expansion ROM.
    pub bar: u8,
    /// Size in bytes, as the BAR sizing probe reports it.
    pub size: u64,
    /// What the BAR decodes.
    pub space: Space,
}

/// Why a BAR could not be placed, freed or moved.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AllocError {
    /// The request itself is malformed (size or index).
    #[error("BAR {bar} of {owner}: {reason}")]
    InvalidRequest {
        /// Device.
        owner: String,
        /// BAR index.
        bar: u8,
        /// What is wrong, in words.
        reason: String,
    },
    /// No naturally aligned free range of the requested size is left in the window.
    #[error(
        "cannot place BAR {bar} of {owner} ({size_human}, {space}) in PCI segment {segment}: its \
         {window_space} window {window} has {remaining_human} free, the largest free block is \
         {largest_human} and the largest BAR that still fits is {fits_human}. {hint}",
        size_human = HumanSize(*.size),
        remaining_human = HumanSize(*.remaining),
        largest_human = HumanSize(*.largest_free),
        fits_human = HumanSize(*.largest_fit),
    )]
    Exhausted {
        /// Device.
        owner: String,
        /// BAR index.
        bar: u8,
        /// Requested size.
        size: u64,
        /// Requested space.
        space: Space,
        /// Segment of the allocator.
        segment: u16,
        /// Which window was searched (differs from `space` for the 64-bit fallback).
        window_space: Space,
        /// The window that was searched.
        window: AddressRange,
        /// Free bytes left in that window.
        remaining: u64,
        /// Largest free block in that window.
        largest_free: u64,
        /// Largest naturally aligned power of two still free in that window.
        largest_fit: u64,
        /// What the user can do about it.
        hint: String,
    },
    /// A guest-chosen address lies (partly) outside the segment's window for that space.
    #[error(
        "BAR {bar} of {owner} at {range} is outside the {space} window(s) of PCI segment \
         {segment}: {windows}"
    )]
    OutsideWindow {
        /// Device.
        owner: String,
        /// BAR index.
        bar: u8,
        /// The range asked for.
        range: AddressRange,
        /// Requested space.
        space: Space,
        /// Segment of the allocator.
        segment: u16,
        /// The windows that could have held it.
        windows: String,
    },
    /// A guest-chosen address is not a multiple of the BAR size.
    #[error("BAR {bar} of {owner}: address {addr:#x} is not aligned to its size {size:#x}")]
    Misaligned {
        /// Device.
        owner: String,
        /// BAR index.
        bar: u8,
        /// Address asked for.
        addr: u64,
        /// BAR size.
        size: u64,
    },
    /// A guest-chosen address overlaps a BAR that is already placed.
    #[error(
        "BAR {bar} of {owner} at {range} overlaps BAR {other_bar} of {other_owner} at {other_range}"
    )]
    Overlap {
        /// Device.
        owner: String,
        /// BAR index.
        bar: u8,
        /// The range asked for.
        range: AddressRange,
        /// Device already there.
        other_owner: String,
        /// Its BAR index.
        other_bar: u8,
        /// Its range (including page padding).
        other_range: AddressRange,
    },
    /// `free` or `relocate` named a range that is not an allocation of this segment.
    #[error("no {space} BAR of size {size:#x} is placed at {addr:#x} in PCI segment {segment}")]
    NotAllocated {
        /// Space given.
        space: Space,
        /// Address given.
        addr: u64,
        /// Size given.
        size: u64,
        /// Segment of the allocator.
        segment: u16,
    },
}

/// A placed BAR.
#[derive(Clone, Debug)]
struct Placed {
    owner: String,
    bar: u8,
    size: u64,
    footprint: u64,
}

/// One window: its free blocks and the BARs placed in it, keyed by address.
#[derive(Debug)]
struct Window {
    space: Space,
    range: AddressRange,
    free: FreeList,
    placed: BTreeMap<u64, Placed>,
}

impl Window {
    fn new(space: Space, range: AddressRange) -> Self {
        Window {
            space,
            range,
            free: FreeList::new(range),
            placed: BTreeMap::new(),
        }
    }

    /// The placed BAR overlapping `range`, if any (placed BARs never overlap each other, so
    /// only the last one starting before `range` ends can).
    fn overlapping(&self, range: &AddressRange) -> Option<(u64, &Placed)> {
        self.placed
            .range(..range.end())
            .next_back()
            .filter(|(&addr, p)| addr + p.footprint > range.start())
            .map(|(&addr, p)| (addr, p))
    }
}

/// The BAR allocator of one PCI segment.
#[derive(Debug)]
pub struct SegmentAllocator {
    segment: u16,
    io: Window,
    mem32: Window,
    mem64: Window,
}

impl SegmentAllocator {
    /// An allocator for segment `segment_id` owning the given windows (from
    /// [`crate::aperture::split_aperture`]). `mmio64` may be empty: 64-bit BARs then go below
    /// 4 GiB.
    pub fn new(
        segment_id: u16,
        mmio32: AddressRange,
        mmio64: AddressRange,
        io: AddressRange,
    ) -> Self {
        SegmentAllocator {
            segment: segment_id,
            io: Window::new(Space::Io, io),
            mem32: Window::new(Space::Mem32, mmio32),
            mem64: Window::new(Space::Mem64, mmio64),
        }
    }

    /// The segment this allocator serves.
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The segment's window for `space` (as given to [`new`](Self::new)).
    pub fn window(&self, space: Space) -> AddressRange {
        match space {
            Space::Io => self.io.range,
            Space::Mem32 => self.mem32.range,
            Space::Mem64 => self.mem64.range,
        }
    }

    /// Places `req` and returns its guest address (naturally aligned to `req.size`).
    pub fn allocate(&mut self, req: BarRequest) -> Result<u64, AllocError> {
        let footprint = validate(&req)?;
        let window = self.window_for(req.space);
        let Some(addr) = window.free.find(footprint, footprint) else {
            return Err(self.exhausted(req));
        };
        let window = self.window_for_mut(req.space);
        let taken = window.free.take(addr, footprint);
        debug_assert!(taken, "found block must be free");
        window.placed.insert(addr, placed(req, footprint));
        Ok(addr)
    }

    /// Records `req` at the guest-chosen address `addr` (the guest reprogrammed the BAR), taking
    /// exactly `req.size` bytes (no page padding: the VMM traps a sub-page BAR instead of mapping
    /// it). Refused when `addr` is not aligned to the size, is outside the segment's window for the
    /// space (a 64-bit BAR may sit in either memory window), or overlaps another BAR, which the
    /// error names.
    pub fn reserve(&mut self, req: BarRequest, addr: u64) -> Result<(), AllocError> {
        validate(&req)?;
        if !addr.is_multiple_of(req.size) {
            return Err(AllocError::Misaligned {
                owner: req.owner,
                bar: req.bar,
                addr,
                size: req.size,
            });
        }
        // Taken at face value, without page padding: a guest may pack sub-page BARs.
        let footprint = req.size;
        let range = AddressRange::new(addr, footprint);
        let windows = self.candidate_windows(req.space);
        let target = range.and_then(|r| windows.iter().position(|w| w.range.contains_range(&r)));
        let (Some(range), Some(target)) = (range, target) else {
            let windows = windows
                .iter()
                .map(|w| w.range.to_string())
                .collect::<Vec<_>>();
            return Err(AllocError::OutsideWindow {
                range: AddressRange::new(addr, req.size).unwrap_or(AddressRange::empty(addr)),
                owner: req.owner,
                bar: req.bar,
                space: req.space,
                segment: self.segment,
                windows: windows.join(", "),
            });
        };
        let target_space = windows[target].space;
        let window = self.window_mut(target_space);
        if let Some((other_addr, other)) = window.overlapping(&range) {
            return Err(AllocError::Overlap {
                owner: req.owner,
                bar: req.bar,
                range,
                other_owner: other.owner.clone(),
                other_bar: other.bar,
                other_range: AddressRange::new(other_addr, other.footprint)
                    .expect("placed ranges are valid"),
            });
        }
        let taken = window.free.take(addr, footprint);
        debug_assert!(taken, "a range in the window that overlaps no BAR is free");
        window.placed.insert(addr, placed(req, footprint));
        Ok(())
    }

    /// Releases the BAR of `size` bytes placed at `addr` (hot-unplug, or before a move). The
    /// size must be the BAR's size as requested.
    pub fn free(&mut self, space: Space, addr: u64, size: u64) -> Result<(), AllocError> {
        self.remove(space, addr, size).map(|_| ())
    }

    /// Moves the BAR of `size` bytes at `old_addr` to the guest-chosen `new_addr`, keeping its
    /// owner and index. On error the BAR stays where it was.
    pub fn relocate(
        &mut self,
        space: Space,
        old_addr: u64,
        new_addr: u64,
        size: u64,
    ) -> Result<(), AllocError> {
        if new_addr == old_addr {
            // The guest rewrote the same value: nothing moves (and page padding is kept).
            let window = self.window_by_addr_mut(space, old_addr);
            return match window.placed.get(&old_addr) {
                Some(p) if p.size == size => Ok(()),
                _ => Err(self.not_allocated(space, old_addr, size)),
            };
        }
        let old = self.remove(space, old_addr, size)?;
        let req = BarRequest {
            owner: old.owner.clone(),
            bar: old.bar,
            size,
            space,
        };
        self.reserve(req, new_addr).inspect_err(|_| {
            let window = self.window_by_addr_mut(space, old_addr);
            let taken = window.free.take(old_addr, old.footprint);
            debug_assert!(taken, "the old range was just freed");
            window.placed.insert(old_addr, old);
        })
    }

    /// Whether `[addr, addr + len)` holds no BAR but (possibly) the one placed at `addr`: a
    /// sub-page BAR may then be mapped into the guest as a whole page without exposing another
    /// BAR behind the same page.
    pub fn only_owner(&self, space: Space, addr: u64, len: u64) -> bool {
        let Some(range) = AddressRange::new(addr, len) else {
            return false;
        };
        self.candidate_windows(space).iter().all(|w| {
            let inside_clear = w
                .placed
                .range(range.start()..range.end())
                .all(|(&a, _)| a == addr);
            let before_clear = w
                .placed
                .range(..range.start())
                .next_back()
                .is_none_or(|(&a, p)| a + p.footprint <= range.start());
            inside_clear && before_clear
        })
    }

    /// Free bytes left for BARs of `space` (for `Mem64`, in the window 64-bit BARs go to).
    pub fn remaining(&self, space: Space) -> u64 {
        self.window_for(space).free.remaining()
    }

    /// Largest free block for BARs of `space`; natural alignment may make the largest BAR that
    /// still fits smaller than this.
    pub fn largest_free(&self, space: Space) -> u64 {
        self.window_for(space).free.largest_block()
    }

    /// Largest BAR of `space` that [`allocate`](Self::allocate) would still place.
    pub fn largest_allocatable(&self, space: Space) -> u64 {
        self.window_for(space).free.largest_aligned()
    }

    /// The window new BARs of `space` are placed in.
    fn window_for(&self, space: Space) -> &Window {
        match space {
            Space::Io => &self.io,
            Space::Mem32 => &self.mem32,
            Space::Mem64 if self.mem64.range.is_empty() => &self.mem32,
            Space::Mem64 => &self.mem64,
        }
    }

    fn window_for_mut(&mut self, space: Space) -> &mut Window {
        let target = self.window_for(space).space;
        self.window_mut(target)
    }

    fn window_mut(&mut self, space: Space) -> &mut Window {
        match space {
            Space::Io => &mut self.io,
            Space::Mem32 => &mut self.mem32,
            Space::Mem64 => &mut self.mem64,
        }
    }

    /// Windows a BAR of `space` may live in once the guest has programmed it.
    fn candidate_windows(&self, space: Space) -> Vec<&Window> {
        match space {
            Space::Io => vec![&self.io],
            Space::Mem32 => vec![&self.mem32],
            Space::Mem64 => vec![&self.mem64, &self.mem32],
        }
    }

    fn window_by_addr_mut(&mut self, space: Space, addr: u64) -> &mut Window {
        let target = self
            .candidate_windows(space)
            .into_iter()
            .find(|w| w.range.contains(addr))
            .map_or(space, |w| w.space);
        self.window_mut(target)
    }

    fn remove(&mut self, space: Space, addr: u64, size: u64) -> Result<Placed, AllocError> {
        let window = self.window_by_addr_mut(space, addr);
        match window.placed.get(&addr) {
            Some(p) if p.size == size => {
                let p = window.placed.remove(&addr).expect("just found");
                window.free.give_back(addr, p.footprint);
                Ok(p)
            }
            _ => Err(self.not_allocated(space, addr, size)),
        }
    }

    fn not_allocated(&self, space: Space, addr: u64, size: u64) -> AllocError {
        AllocError::NotAllocated {
            space,
            addr,
            size,
            segment: self.segment,
        }
    }

    fn exhausted(&self, req: BarRequest) -> AllocError {
        let window = self.window_for(req.space);
        let segment = self.segment;
        let hint = match window.space {
            Space::Mem32 => format!(
                "Devices with 32-bit BARs (e.g. GPUs with a 16 MiB BAR0) exhaust this window \
                 first. The 640 MiB 32-bit aperture is shared by all segments by weight: give \
                 segment {segment} a larger share with `--pci-segment \
                 pci_segment={segment},mmio32_aperture_weight=W` (W larger than the other \
                 segments' weights), or put fewer such devices on segment {segment}."
            ),
            Space::Mem64 => format!(
                "Give segment {segment} a larger share with `--pci-segment \
                 pci_segment={segment},mmio64_aperture_weight=W`, move devices to another \
                 segment, or run on a host with more physical address bits."
            ),
            Space::Io => "The I/O port window is split equally among segments: put devices \
                          with I/O BARs on several segments, or use fewer segments."
                .to_string(),
        };
        AllocError::Exhausted {
            owner: req.owner,
            bar: req.bar,
            size: req.size,
            space: req.space,
            segment,
            window_space: window.space,
            window: window.range,
            remaining: window.free.remaining(),
            largest_free: window.free.largest_block(),
            largest_fit: window.free.largest_aligned(),
            hint,
        }
    }
}

fn placed(req: BarRequest, footprint: u64) -> Placed {
    Placed {
        owner: req.owner,
        bar: req.bar,
        size: req.size,
        footprint,
    }
}

/// Checks size and index; returns the footprint (the size, at least a page for memory BARs).
fn validate(req: &BarRequest) -> Result<u64, AllocError> {
    let invalid = |reason: String| AllocError::InvalidRequest {
        owner: req.owner.clone(),
        bar: req.bar,
        reason,
    };
    let min = if req.space == Space::Io { 4 } else { 16 };
    if !req.size.is_power_of_two() || req.size < min {
        return Err(invalid(format!(
            "size {:#x} is not a power of two of at least {min} bytes, as a {} BAR must be",
            req.size, req.space
        )));
    }
    match (req.bar, req.space) {
        (ROM_BAR, Space::Mem32) => {}
        (ROM_BAR, _) => return Err(invalid("the expansion ROM is a 32-bit memory BAR".into())),
        (5, Space::Mem64) => {
            return Err(invalid(
                "a 64-bit BAR takes two registers, so BAR 5 cannot be one".into(),
            ))
        }
        (bar, _) if bar > ROM_BAR => {
            return Err(invalid("BAR indices are 0..=5, and 6 for the ROM".into()))
        }
        _ => {}
    }
    Ok(match req.space {
        Space::Io => req.size,
        Space::Mem32 | Space::Mem64 => req.size.max(MIN_MEM_FOOTPRINT),
    })
}

#[cfg(test)]
mod tests;
