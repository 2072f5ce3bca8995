//! MSI-X (capability id 0x11): the capability registers, the vector table and the Pending Bit
//! Array, with the masking rules the passthrough layer relies on.
//!
//! A vector that fires while masked (per vector, or by the function mask) sets its pending bit
//! and is not delivered; when it becomes unmasked with the bit set, the bit clears and the model
//! reports "deliver now". Every guest write returns the [`MsixChange`]s the VMM needs to update
//! KVM GSI routes and irqfds. The table is emulated, never written to hardware.

use crate::bar::BarIndex;
use crate::capability::id;
use crate::error::PciError;
use crate::msi::{Delivery, MsiMessage};

/// Bytes per table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Largest table the 11-bit Table Size field can describe.
pub const MAX_MSIX_VECTORS: u16 = 2048;
/// Capability length in bytes (id, next, control, table, PBA).
pub const MSIX_CAPABILITY_LEN: usize = 12;

const CTL_TABLE_SIZE: u16 = 0x7ff;
/// Message Control bit 14: all vectors masked.
pub const CTL_FUNCTION_MASK: u16 = 1 << 14;
/// Message Control bit 15: MSI-X enabled.
pub const CTL_ENABLE: u16 = 1 << 15;
const VECTOR_MASKED: u32 = 1;

/// What a guest write changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixChange {
    /// MSI-X Enable went 0 → 1: set up routes for the unmasked vectors.
    Enabled,
    /// MSI-X Enable went 1 → 0: tear them down.
    Disabled,
    /// The function mask was set: no vector may be delivered.
    FunctionMasked,
    /// The function mask was cleared.
    FunctionUnmasked,
    /// A vector's address or data changed: update its route.
    VectorUpdated(u16),
    /// A vector's mask bit was set.
    VectorMasked(u16),
    /// A vector's mask bit was cleared.
    VectorUnmasked(u16),
    /// A vector became deliverable with its pending bit set: the bit was cleared, inject now.
    Deliver {
        /// The vector.
        vector: u16,
        /// Its message.
        message: MsiMessage,
    },
}

/// Where the table and PBA live: the capability's read-only description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors, 1..=2048.
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: BarIndex,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: BarIndex,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Decodes the capability registers of a real device (Message Control, Table, PBA).
    pub fn from_registers(control: u16, table: u32, pba: u32) -> Result<Self, PciError> {
        let bar = |reg: u32| {
            BarIndex::new((reg & 0b111) as u8)
                .ok_or_else(|| invalid(format!("BIR {} is not a BAR", reg & 0b111)))
        };
        Ok(Self {
            table_size: (control & CTL_TABLE_SIZE) + 1,
            table_bar: bar(table)?,
            table_offset: table & !0b111,
            pba_bar: bar(pba)?,
            pba_offset: pba & !0b111,
        })
    }

    /// The Table Offset/BIR register.
    pub fn table_register(&self) -> u32 {
        self.table_offset | u32::from(self.table_bar.get())
    }

    /// The PBA Offset/BIR register.
    pub fn pba_register(&self) -> u32 {
        self.pba_offset | u32::from(self.pba_bar.get())
    }

    /// Bytes of BAR space the table occupies.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * MSIX_ENTRY_SIZE
    }

    /// Bytes of BAR space the PBA occupies (whole qwords).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

fn invalid(reason: String) -> PciError {
    PciError::InvalidInterruptCapability {
        device: "device".into(),
        what: "MSI-X",
        reason,
    }
}

/// Which MSI-X structure a BAR access hits, with the offset inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixRegion {
    /// The vector table.
    Table(u64),
    /// The Pending Bit Array.
    Pba(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    vector_control: u32,
}

impl Entry {
    const RESET: Entry = Entry {
        addr_lo: 0,
        addr_hi: 0,
        data: 0,
        vector_control: VECTOR_MASKED,
    };

    fn masked(&self) -> bool {
        self.vector_control & VECTOR_MASKED != 0
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// The MSI-X state of one function: control bits, vector table and pending bits.
///
/// Exists so that the rules of masking and pending delivery live in one tested place; the
/// passthrough layer only translates [`MsixChange`]s into KVM routes and irqfds.
#[derive(Clone, Debug)]
pub struct Msix {
    layout: MsixLayout,
    control: u16,
    table: Vec<Entry>,
    pba: Vec<u64>,
}

impl Msix {
    /// Reset state: disabled, function unmasked, every vector masked, nothing pending.
    pub fn new(layout: MsixLayout) -> Result<Self, PciError> {
        if !(1..=MAX_MSIX_VECTORS).contains(&layout.table_size) {
            return Err(invalid(format!(
                "table size {} is not 1..=2048",
                layout.table_size
            )));
        }
        if !layout.table_offset.is_multiple_of(8) || !layout.pba_offset.is_multiple_of(8) {
            return Err(invalid(
                "table and PBA offsets must be 8-byte aligned".into(),
            ));
        }
        Ok(Self {
            layout,
            control: 0,
            table: vec![Entry::RESET; usize::from(layout.table_size)],
            pba: vec![0; layout.pba_len() as usize / 8],
        })
    }

    /// Back to the reset state (e.g. on a function-level reset).
    pub fn reset(&mut self) {
        self.control = 0;
        self.table.fill(Entry::RESET);
        self.pba.fill(0);
    }

    /// Where the table and PBA are.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// Message Control as the guest reads it: enable, function mask, Table Size (N - 1).
    pub fn control(&self) -> u16 {
        self.control | (self.layout.table_size - 1)
    }

    /// Whether MSI-X Enable is set.
    pub fn enabled(&self) -> bool {
        self.control & CTL_ENABLE != 0
    }

    /// Whether the function mask is set.
    pub fn function_masked(&self) -> bool {
        self.control & CTL_FUNCTION_MASK != 0
    }

    /// The registers after the id/next header (control, table, PBA), for
    /// `ConfigSpace::add_capability` and to copy back after a guest write.
    pub fn capability_body(&self) -> [u8; MSIX_CAPABILITY_LEN - 2] {
        let mut body = [0; MSIX_CAPABILITY_LEN - 2];
        body[0..2].copy_from_slice(&self.control().to_le_bytes());
        body[2..6].copy_from_slice(&self.layout.table_register().to_le_bytes());
        body[6..10].copy_from_slice(&self.layout.pba_register().to_le_bytes());
        body
    }

    /// Guest read at `offset` from the capability start. The next pointer reads as 0.
    pub fn read_capability(&self, offset: usize, data: &mut [u8]) {
        let mut cap = [0; MSIX_CAPABILITY_LEN];
        cap[0] = id::MSIX;
        cap[2..].copy_from_slice(&self.capability_body());
        for (i, b) in data.iter_mut().enumerate() {
            *b = cap.get(offset.saturating_add(i)).copied().unwrap_or(0);
        }
    }

    /// Guest write at `offset` from the capability start. Only the function mask and enable
    /// bits (Message Control bits 14 and 15) are writable.
    pub fn write_capability(&mut self, offset: usize, data: &[u8]) -> Vec<MsixChange> {
        let mut control = self.control().to_le_bytes();
        for (i, &v) in data.iter().enumerate() {
            if let Some(at) = offset.saturating_add(i).checked_sub(2).filter(|&at| at < 2) {
                control[at] = v;
            }
        }
        self.set_control(u16::from_le_bytes(control))
    }

    /// Applies a Message Control value (e.g. one the passthrough layer intercepted).
    pub fn set_control(&mut self, value: u16) -> Vec<MsixChange> {
        let (was_enabled, was_masked, was_live) =
            (self.enabled(), self.function_masked(), self.live());
        self.control = value & (CTL_ENABLE | CTL_FUNCTION_MASK);
        let mut changes = Vec::new();
        match (was_enabled, self.enabled()) {
            (false, true) => changes.push(MsixChange::Enabled),
            (true, false) => changes.push(MsixChange::Disabled),
            _ => {}
        }
        match (was_masked, self.function_masked()) {
            (false, true) => changes.push(MsixChange::FunctionMasked),
            (true, false) => changes.push(MsixChange::FunctionUnmasked),
            _ => {}
        }
        if !was_live && self.live() {
            for vector in 0..self.layout.table_size {
                changes.extend(self.deliver_if_pending(vector));
            }
        }
        changes
    }

    /// Which structure `offset` in BAR `bar` belongs to, if any.
    pub fn region_at(&self, bar: BarIndex, offset: u64) -> Option<MsixRegion> {
        let l = &self.layout;
        let within = |base: u32, len: u64| offset.checked_sub(u64::from(base)).filter(|&o| o < len);
        if bar == l.table_bar {
            if let Some(o) = within(l.table_offset, l.table_len()) {
                return Some(MsixRegion::Table(o));
            }
        }
        if bar == l.pba_bar {
            if let Some(o) = within(l.pba_offset, l.pba_len()) {
                return Some(MsixRegion::Pba(o));
            }
        }
        None
    }

    /// Guest read of the table: 4 or 8 bytes, naturally aligned. Anything else, or beyond the
    /// table, reads 0.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((entry, field)) = self.decode_table_access(offset, data.len()) else {
            return;
        };
        let e = &self.table[entry];
        let fields = [e.addr_lo, e.addr_hi, e.data, e.vector_control];
        for (chunk, value) in data.chunks_mut(4).zip(&fields[field..]) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Guest write of the table: 4 or 8 bytes, naturally aligned; others are ignored. Only the
    /// mask bit of Vector Control is writable.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<MsixChange> {
        let Some((entry, field)) = self.decode_table_access(offset, data.len()) else {
            log::debug!(
                "MSI-X table: ignored {}-byte write at {offset:#x}",
                data.len()
            );
            return Vec::new();
        };
        let before = self.table[entry];
        let e = &mut self.table[entry];
        for (i, chunk) in data.chunks(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            match field + i {
                0 => e.addr_lo = value,
                1 => e.addr_hi = value,
                2 => e.data = value,
                _ => e.vector_control = value & VECTOR_MASKED,
            }
        }
        let after = *e;
        let vector = entry as u16;
        let mut changes = Vec::new();
        if before.message() != after.message() {
            changes.push(MsixChange::VectorUpdated(vector));
        }
        match (before.masked(), after.masked()) {
            (false, true) => changes.push(MsixChange::VectorMasked(vector)),
            (true, false) => {
                changes.push(MsixChange::VectorUnmasked(vector));
                if self.live() {
                    changes.extend(self.deliver_if_pending(vector));
                }
            }
            _ => {}
        }
        changes
    }

    /// Guest read of the PBA: 4 or 8 bytes, naturally aligned; anything else reads 0.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return;
        }
        let Some(&qword) = self.pba.get((offset / 8) as usize) else {
            return;
        };
        let bytes = qword.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// Guest write of the PBA: read-only, ignored.
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "MSI-X PBA is read-only: ignored {}-byte write at {offset:#x}",
            data.len()
        );
    }

    /// The programmed message of `vector`.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.table.get(usize::from(vector)).map(Entry::message)
    }

    /// Whether `vector`'s own mask bit is set.
    pub fn is_vector_masked(&self, vector: u16) -> bool {
        self.table
            .get(usize::from(vector))
            .is_none_or(Entry::masked)
    }

    /// Whether `vector` can be delivered now: enabled, function and vector unmasked.
    pub fn is_deliverable(&self, vector: u16) -> bool {
        self.live() && !self.is_vector_masked(vector)
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    /// The device raises `vector`.
    pub fn trigger(&mut self, vector: u16) -> Delivery {
        if !self.enabled() || usize::from(vector) >= self.table.len() {
            return Delivery::Disabled;
        }
        if self.is_deliverable(vector) {
            return Delivery::Deliver(self.table[usize::from(vector)].message());
        }
        let v = usize::from(vector);
        self.pba[v / 64] |= 1 << (v % 64);
        Delivery::Pending
    }

    /// Enabled and not function-masked.
    fn live(&self) -> bool {
        self.enabled() && !self.function_masked()
    }

    fn deliver_if_pending(&mut self, vector: u16) -> Option<MsixChange> {
        if !self.is_pending(vector) || self.is_vector_masked(vector) {
            return None;
        }
        let v = usize::from(vector);
        self.pba[v / 64] &= !(1 << (v % 64));
        Some(MsixChange::Deliver {
            vector,
            message: self.table[v].message(),
        })
    }

    /// Entry index and first dword field of a table access, if it is decodable.
    fn decode_table_access(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        let len = len as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return None;
        }
        let entry = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        (entry < self.table.len()).then_some((entry, (offset % MSIX_ENTRY_SIZE / 4) as usize))
    }
}

#[cfg(test)]
#[path = "msix_tests.rs"]
mod tests;
