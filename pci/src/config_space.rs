//! The 4 KiB configuration space of one PCI function, with the semantics a guest relies on.
//!
//! Every byte has a write mask (clear bits are read-only) and an RW1C mask (write 1 to clear,
//! the status register's error bits). On top of the raw bytes sit the BAR rules: size probing by
//! writing all-ones, read-only type bits, address bits writable only above the size, and
//! detection of a guest moving a BAR, which is returned to the caller as a [`BarMove`].
//! Capability lists are built here and walked with [`crate::capability`].
//!
//! Emulated devices use this directly; a passthrough device keeps one as the shadow of the
//! registers it virtualizes (BARs, ROM) and forwards the rest to hardware.

use crate::bar::{
    BarIndex, BarKind, BarMove, BarSpec, MIN_IO_BAR_SIZE, MIN_MEM_BAR_SIZE, MIN_ROM_BAR_SIZE,
};
use crate::capability::{
    Capabilities, ExtCapabilities, CAPABILITIES_POINTER, CONFIG_SPACE_SIZE,
    FIRST_CAPABILITY_OFFSET, FIRST_EXT_CAPABILITY_OFFSET, LEGACY_CONFIG_SIZE,
};
use crate::error::PciError;

/// Number of dword registers in a config space.
pub const CONFIG_DWORDS: usize = CONFIG_SPACE_SIZE / 4;

/// Register offsets of the type 0 header that this crate touches.
pub mod reg {
    /// Vendor id (u16).
    pub const VENDOR_ID: usize = 0x00;
    /// Device id (u16).
    pub const DEVICE_ID: usize = 0x02;
    /// Command register (u16).
    pub const COMMAND: usize = 0x04;
    /// Status register (u16).
    pub const STATUS: usize = 0x06;
    /// Revision id (u8), followed by the 3-byte class code.
    pub const REVISION_ID: usize = 0x08;
    /// Cache line size (u8).
    pub const CACHE_LINE_SIZE: usize = 0x0c;
    /// Header type (u8); bit 7 is multi-function.
    pub const HEADER_TYPE: usize = 0x0e;
    /// Subsystem vendor id (u16).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem id (u16).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Interrupt line (u8): scratch for the OS.
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (u8): 0 none, 1..=4 INTA..INTD.
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register bits.
pub mod command {
    /// I/O space decode.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Memory space decode.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// Bus master (DMA) enable.
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity error response.
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// INTx disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// The bits a guest may change.
    pub const WRITABLE: u16 =
        IO_SPACE | MEMORY_SPACE | BUS_MASTER | PARITY_ERROR_RESPONSE | SERR | INTX_DISABLE;
}

/// Status register bits.
pub mod status {
    /// INTx asserted (read-only).
    pub const INTERRUPT: u16 = 1 << 3;
    /// A capability list is present at 0x34 (read-only).
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
    /// Error bits, cleared by writing 1: master data parity, signaled/received target abort,
    /// received master abort, signaled system error, detected parity error.
    pub const RW1C: u16 = (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15);
}

/// Base class, subclass and programming interface (config bytes 0x0b, 0x0a, 0x09).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassCode {
    /// Base class (0x06 bridge, 0x01 storage, 0x03 display, ...).
    pub base: u8,
    /// Subclass.
    pub sub: u8,
    /// Programming interface.
    pub prog_if: u8,
}

/// The identity registers of a type 0 header: what `lspci -n` shows and drivers bind on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceIds {
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Class code.
    pub class: ClassCode,
    /// Revision id.
    pub revision_id: u8,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// Subsystem id.
    pub subsystem_id: u16,
}

/// Which of its BARs a function answers on: the command register's Memory Space and I/O Space
/// bits, and the expansion ROM's enable bit (the ROM decodes only when both it and Memory Space
/// are set).
///
/// Exists so the VMM can take a BAR off the guest's address space when the guest turns decoding
/// off (a real device then stops answering there) and put it back when decoding is on again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decode {
    /// Command bit 1: memory BARs (and, with `rom`, the ROM) decode.
    pub memory: bool,
    /// Command bit 0: I/O BARs decode.
    pub io: bool,
    /// ROM BAR bit 0: the expansion ROM decodes (while `memory` is set too).
    pub rom: bool,
}

impl Decode {
    /// Everything on: what a device that does not model decoding answers.
    pub const ALL: Decode = Decode {
        memory: true,
        io: true,
        rom: true,
    };

    /// Whether BAR `spec` answers guest accesses.
    pub fn decodes(&self, spec: &BarSpec) -> bool {
        match spec.kind {
            _ if spec.index.is_rom() => self.memory && self.rom,
            BarKind::Io => self.io,
            BarKind::Mem32 | BarKind::Mem64 => self.memory,
        }
    }
}

/// What a guest config write did that the VMM must act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigWriteEffect {
    /// BARs whose decoded address changed: move their mappings.
    pub bar_moves: Vec<BarMove>,
    /// The function's decode state after the write, when the write reached the command
    /// register or the ROM BAR (whether or not a bit changed, so the VMM converges on it).
    pub decode: Option<Decode>,
}

impl ConfigWriteEffect {
    /// Nothing for the VMM to do.
    pub fn is_empty(&self) -> bool {
        self.bar_moves.is_empty() && self.decode.is_none()
    }
}

/// Slot of the ROM in [`ConfigSpace::bars`] (after BAR0..5).
const ROM_SLOT: usize = 6;

#[derive(Clone, Copy, Debug)]
struct BarState {
    spec: BarSpec,
    /// Address the VMM has mapped: set by `set_bar_address`, updated on each reported move.
    mapped: u64,
}

/// A type 0 configuration space with write masks, RW1C bits, BARs and capability lists.
///
/// Exists so that every device (emulated or a passthrough shadow) gets the same, tested
/// register semantics rather than each reimplementing BAR probing and masks.
pub struct ConfigSpace {
    name: String,
    bytes: Box<[u8; CONFIG_SPACE_SIZE]>,
    wmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<BarState>; 7],
    next_cap: usize,
    last_cap: Option<usize>,
    next_ext_cap: usize,
    last_ext_cap: Option<usize>,
}

impl ConfigSpace {
    /// A type 0 header with `ids`, no BARs, no capabilities, no interrupt pin. `name` is used
    /// in error messages.
    pub fn new(name: impl Into<String>, ids: &DeviceIds) -> Self {
        let mut cs = Self {
            name: name.into(),
            bytes: Box::new([0; CONFIG_SPACE_SIZE]),
            wmask: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; 7],
            next_cap: FIRST_CAPABILITY_OFFSET,
            last_cap: None,
            next_ext_cap: FIRST_EXT_CAPABILITY_OFFSET,
            last_ext_cap: None,
        };
        cs.write_raw(reg::VENDOR_ID, &ids.vendor_id.to_le_bytes());
        cs.write_raw(reg::DEVICE_ID, &ids.device_id.to_le_bytes());
        let c = ids.class;
        cs.write_raw(
            reg::REVISION_ID,
            &[ids.revision_id, c.prog_if, c.sub, c.base],
        );
        cs.write_raw(
            reg::SUBSYSTEM_VENDOR_ID,
            &ids.subsystem_vendor_id.to_le_bytes(),
        );
        cs.write_raw(reg::SUBSYSTEM_ID, &ids.subsystem_id.to_le_bytes());
        cs.set_write_mask(reg::COMMAND, &command::WRITABLE.to_le_bytes());
        cs.w1c[reg::STATUS..reg::STATUS + 2].copy_from_slice(&status::RW1C.to_le_bytes());
        cs.set_write_mask(reg::CACHE_LINE_SIZE, &[0xff]);
        cs.set_write_mask(reg::INTERRUPT_LINE, &[0xff]);
        cs
    }

    /// The name given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole 4 KiB image, e.g. to walk capabilities.
    pub fn as_bytes(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        &self.bytes
    }

    /// Dword register `reg_idx`; all-ones beyond 4 KiB.
    pub fn read_config(&self, reg_idx: usize) -> u32 {
        if reg_idx >= CONFIG_DWORDS {
            return u32::MAX;
        }
        let b = &self.bytes[reg_idx * 4..reg_idx * 4 + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Guest write of `data` (1, 2 or 4 bytes) at byte `offset` within dword `reg_idx`,
    /// honouring write masks, RW1C bits and BAR rules. Malformed accesses are ignored.
    pub fn write_config(
        &mut self,
        reg_idx: usize,
        offset: usize,
        data: &[u8],
    ) -> ConfigWriteEffect {
        let mut effect = ConfigWriteEffect::default();
        if !valid_access(reg_idx, offset, data.len()) {
            return effect;
        }
        let start = reg_idx * 4 + offset;
        for (i, &value) in data.iter().enumerate() {
            let at = start + i;
            let (old, wm, w1c) = (self.bytes[at], self.wmask[at], self.w1c[at]);
            self.bytes[at] = ((old & !wm) | (value & wm)) & !(value & w1c);
        }
        let touched_command = start <= reg::COMMAND && reg::COMMAND < start + data.len();
        let touched_rom = self.bars[ROM_SLOT].is_some() && reg_idx == BarIndex::ROM.reg_idx();
        if touched_command || touched_rom {
            effect.decode = Some(self.decode());
        }
        if touched_command {
            // A command write (typically re-enabling decode after updating BARs) is when a
            // 64-bit BAR written low half only must be final: report every settled change.
            for slot in 0..self.bars.len() {
                effect.bar_moves.extend(self.detect_move(slot));
            }
        } else if let Some((slot, upper)) = self.bar_of_reg(reg_idx) {
            let is_mem64 = self.bars[slot].is_some_and(|b| b.spec.kind == BarKind::Mem64);
            // A 64-bit BAR is final once its upper half is written (every OS writes low, then
            // high), so the half-updated address is never reported.
            if !is_mem64 || upper {
                effect.bar_moves.extend(self.detect_move(slot));
            }
        }
        effect
    }

    /// Guest read at any byte offset: 1, 2 or 4 bytes within one dword; anything else (other
    /// widths, crossing a dword, beyond 4 KiB) reads all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        let (reg_idx, within) = (offset / 4, offset % 4);
        if !valid_access(reg_idx, within, data.len()) {
            data.fill(0xff);
            return;
        }
        let bytes = self.read_config(reg_idx).to_le_bytes();
        data.copy_from_slice(&bytes[within..within + data.len()]);
    }

    /// Guest write at any byte offset; see [`ConfigSpace::write_config`].
    pub fn write(&mut self, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        self.write_config(offset / 4, offset % 4, data)
    }

    /// Device-side write: sets bytes regardless of masks (e.g. a status bit the device
    /// raises). Bytes beyond 4 KiB are dropped.
    pub fn write_raw(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = self.bytes.get_mut(offset.saturating_add(i)) {
                *slot = b;
            }
        }
    }

    /// Makes the bits set in `mask` guest-writable at `offset..` (e.g. a capability's control
    /// register). Bytes beyond 4 KiB are dropped.
    pub fn set_write_mask(&mut self, offset: usize, mask: &[u8]) {
        set_bytes(&mut self.wmask[..], offset, mask);
    }

    /// Makes the bits set in `mask` write-1-to-clear at `offset..` (e.g. a PCIe capability's
    /// error status). They should not also be in the write mask.
    pub fn set_rw1c_mask(&mut self, offset: usize, mask: &[u8]) {
        set_bytes(&mut self.w1c[..], offset, mask);
    }

    /// Device-side 16-bit read at `offset` (little endian); 0xffff beyond 4 KiB.
    pub fn read_u16(&self, offset: usize) -> u16 {
        match self.bytes.get(offset..offset.saturating_add(2)) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => u16::MAX,
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(reg::COMMAND)
    }

    /// Whether memory BARs decode (command bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.command() & command::MEMORY_SPACE != 0
    }

    /// Whether I/O BARs decode (command bit 0).
    pub fn io_enabled(&self) -> bool {
        self.command() & command::IO_SPACE != 0
    }

    /// Which BARs decode (command bits 0 and 1, the ROM enable bit).
    pub fn decode(&self) -> Decode {
        let rom = BarIndex::ROM.config_offset();
        Decode {
            memory: self.memory_enabled(),
            io: self.io_enabled(),
            rom: self.bars[ROM_SLOT].is_some()
                && self.bytes[rom] & crate::bar::ROM_ENABLE as u8 != 0,
        }
    }

    /// Whether the device may master DMA (command bit 2).
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Sets the interrupt pin (1..=4 for INTA..INTD, 0 for none).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.write_raw(reg::INTERRUPT_PIN, &[pin]);
    }

    /// Raises or lowers the read-only INTx status bit.
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let s = self.read_u16(reg::STATUS) & !status::INTERRUPT;
        let s = if asserted { s | status::INTERRUPT } else { s };
        self.write_raw(reg::STATUS, &s.to_le_bytes());
    }

    /// Declares a BAR: writes its type bits and makes its size-aligned address bits writable.
    pub fn add_bar(&mut self, spec: BarSpec) -> Result<(), PciError> {
        self.validate_bar(&spec)?;
        let reg = spec.index.config_offset();
        self.write_raw(reg, &spec.flag_bits().to_le_bytes());
        self.set_write_mask(reg, &spec.lower_write_mask().to_le_bytes());
        if spec.kind == BarKind::Mem64 {
            self.write_raw(reg + 4, &[0; 4]);
            self.set_write_mask(reg + 4, &spec.upper_write_mask().to_le_bytes());
        }
        self.bars[slot_of(spec.index)] = Some(BarState { spec, mapped: 0 });
        Ok(())
    }

    /// Every declared BAR (and the ROM), in index order.
    pub fn bars(&self) -> Vec<BarSpec> {
        self.bars.iter().flatten().map(|b| b.spec).collect()
    }

    /// The declared spec of BAR `index`.
    pub fn bar(&self, index: BarIndex) -> Option<BarSpec> {
        self.bars[slot_of(index)].map(|b| b.spec)
    }

    /// Address of BAR `index` as last set by the VMM or reported as moved.
    pub fn bar_address(&self, index: BarIndex) -> Option<u64> {
        self.bars[slot_of(index)].map(|b| b.mapped)
    }

    /// Programs BAR `index` with `addr`, chosen by the VMM's allocator. The guest sees it in
    /// the register; the type bits (and the ROM enable bit) are kept.
    pub fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError> {
        let bad = |reason| PciError::BadBarAddress {
            device: self.name.clone(),
            index,
            addr,
            reason,
        };
        let state = self.bars[slot_of(index)].ok_or_else(|| bad("the BAR is not implemented"))?;
        let spec = state.spec;
        if !addr.is_multiple_of(spec.size) {
            return Err(bad("not aligned to the BAR size"));
        }
        let Some(end) = addr.checked_add(spec.size) else {
            return Err(bad("the BAR would wrap the address space"));
        };
        if spec.kind != BarKind::Mem64 && end > 1 << 32 {
            return Err(bad("a 32-bit BAR must lie below 4 GiB"));
        }
        let reg = index.config_offset();
        let keep = self.read_config(reg / 4) & !(spec.lower_write_mask() & !crate::bar::ROM_ENABLE);
        self.write_raw(reg, &((addr as u32) | keep).to_le_bytes());
        if spec.kind == BarKind::Mem64 {
            self.write_raw(reg + 4, &((addr >> 32) as u32).to_le_bytes());
        }
        self.bars[slot_of(index)] = Some(BarState { spec, mapped: addr });
        Ok(())
    }

    /// Appends a standard capability `id` with `body` (the bytes after the id/next header) in
    /// free space after 0x40, dword aligned, links it at the end of the list and sets the
    /// capabilities-list status bit. Returns its offset. The body is read-only until
    /// [`ConfigSpace::set_write_mask`] says otherwise.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<u8, PciError> {
        let len = 2 + body.len();
        let offset = self.next_cap;
        if offset + len > LEGACY_CONFIG_SIZE {
            return Err(PciError::CapabilitySpaceFull {
                device: self.name.clone(),
                id: id.into(),
                len,
            });
        }
        self.write_raw(offset, &[id, 0]);
        self.write_raw(offset + 2, body);
        let link = self.last_cap.map_or(CAPABILITIES_POINTER, |last| last + 1);
        self.write_raw(link, &[offset as u8]);
        let s = self.read_u16(reg::STATUS) | status::CAPABILITIES_LIST;
        self.write_raw(reg::STATUS, &s.to_le_bytes());
        self.last_cap = Some(offset);
        self.next_cap = (offset + len).next_multiple_of(4);
        Ok(offset as u8)
    }

    /// Appends a PCIe extended capability (`id`, `version`, `body` after the header dword) at
    /// 0x100 or after the previous one. Returns its offset.
    pub fn add_extended_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
    ) -> Result<u16, PciError> {
        let len = 4 + body.len();
        let offset = self.next_ext_cap;
        if offset + len > CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpaceFull {
                device: self.name.clone(),
                id,
                len,
            });
        }
        let header = u32::from(id) | (u32::from(version & 0xf) << 16);
        self.write_raw(offset, &header.to_le_bytes());
        self.write_raw(offset + 4, body);
        if let Some(last) = self.last_ext_cap {
            let prev = self.read_config(last / 4) & 0x000f_ffff;
            self.write_raw(last, &(prev | ((offset as u32) << 20)).to_le_bytes());
        }
        self.last_ext_cap = Some(offset);
        self.next_ext_cap = (offset + len).next_multiple_of(4);
        Ok(offset as u16)
    }

    /// Walks the standard capability list.
    pub fn capabilities(&self) -> Capabilities<'_> {
        Capabilities::new(&self.bytes[..])
    }

    /// Offset of the first standard capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u8> {
        self.capabilities().find(|c| c.id == id).map(|c| c.offset)
    }

    /// Walks the PCIe extended capability list.
    pub fn extended_capabilities(&self) -> ExtCapabilities<'_> {
        ExtCapabilities::new(&self.bytes[..])
    }

    fn validate_bar(&self, spec: &BarSpec) -> Result<(), PciError> {
        let invalid = |reason: String| PciError::InvalidBar {
            device: self.name.clone(),
            index: spec.index,
            reason,
        };
        let (min, max) = match (spec.index.is_rom(), spec.kind) {
            (true, BarKind::Mem32) => (MIN_ROM_BAR_SIZE, 1 << 31),
            (true, _) => return Err(invalid("the expansion ROM is a 32-bit memory BAR".into())),
            (false, BarKind::Io) => (MIN_IO_BAR_SIZE, 1 << 31),
            (false, BarKind::Mem32) => (MIN_MEM_BAR_SIZE, 1 << 31),
            (false, BarKind::Mem64) => (MIN_MEM_BAR_SIZE, 1 << 63),
        };
        if !spec.size.is_power_of_two() || spec.size < min || spec.size > max {
            return Err(invalid(format!(
                "size {:#x} must be a power of two in {min:#x}..={max:#x}",
                spec.size
            )));
        }
        if spec.prefetchable && (spec.index.is_rom() || spec.kind == BarKind::Io) {
            return Err(invalid("only memory BARs can be prefetchable".into()));
        }
        let slot = slot_of(spec.index);
        let taken = |s: usize| self.bars[s].is_some();
        let upper_of_prev = slot > 0
            && slot < ROM_SLOT
            && self.bars[slot - 1].is_some_and(|b| b.spec.kind == BarKind::Mem64);
        if taken(slot) || upper_of_prev {
            return Err(invalid("the register is already in use".into()));
        }
        if spec.kind == BarKind::Mem64
            && !spec.index.is_rom()
            && (slot + 1 >= ROM_SLOT || taken(slot + 1))
        {
            return Err(invalid("a 64-bit BAR needs the next register free".into()));
        }
        Ok(())
    }

    /// The BAR slot register `reg_idx` belongs to, and whether it is the upper half.
    fn bar_of_reg(&self, reg_idx: usize) -> Option<(usize, bool)> {
        if reg_idx == BarIndex::ROM.reg_idx() {
            return Some((ROM_SLOT, false));
        }
        let slot = reg_idx.checked_sub(BarIndex::new(0)?.reg_idx())?;
        if slot >= ROM_SLOT {
            return None;
        }
        if self.bars[slot].is_some() {
            return Some((slot, false));
        }
        let prev = slot.checked_sub(1)?;
        self.bars[prev]
            .is_some_and(|b| b.spec.kind == BarKind::Mem64)
            .then_some((prev, true))
    }

    /// Reports (and records) a change of BAR `slot`'s decoded address, unless the BAR is
    /// mid-probe: a register whose writable address bits are all ones holds a size probe, not
    /// an address.
    fn detect_move(&mut self, slot: usize) -> Option<BarMove> {
        let state = self.bars[slot]?;
        let spec = state.spec;
        let reg = spec.index.reg_idx();
        let lower_mask = spec.lower_write_mask()
            & !if spec.index.is_rom() {
                crate::bar::ROM_ENABLE
            } else {
                0
            };
        let lower = self.read_config(reg) & lower_mask;
        let mut probing = lower_mask != 0 && lower == lower_mask;
        let mut new = u64::from(lower);
        if spec.kind == BarKind::Mem64 {
            let upper_mask = spec.upper_write_mask();
            let upper = self.read_config(reg + 1) & upper_mask;
            probing |= upper_mask != 0 && upper == upper_mask;
            new |= u64::from(upper) << 32;
        }
        if probing || new == state.mapped {
            return None;
        }
        self.bars[slot] = Some(BarState { spec, mapped: new });
        log::debug!(
            "{}: guest moved {} from {:#x} to {new:#x}",
            self.name,
            spec.index,
            state.mapped
        );
        Some(BarMove {
            index: spec.index,
            kind: spec.kind,
            old: state.mapped,
            new,
            size: spec.size,
        })
    }
}

/// Copies `src` into `dst` at `offset`, dropping what falls outside.
fn set_bytes(dst: &mut [u8], offset: usize, src: &[u8]) {
    for (i, &b) in src.iter().enumerate() {
        if let Some(slot) = dst.get_mut(offset.saturating_add(i)) {
            *slot = b;
        }
    }
}

fn slot_of(index: BarIndex) -> usize {
    usize::from(index.get())
}

/// A config access is decoded only if it is 1, 2 or 4 bytes wide, stays within one dword and
/// lies inside the 4 KiB space.
pub(crate) fn valid_access(reg_idx: usize, offset: usize, len: usize) -> bool {
    reg_idx < CONFIG_DWORDS && matches!(len, 1 | 2 | 4) && offset + len <= 4
}

#[cfg(test)]
#[path = "config_space_tests.rs"]
mod tests;
