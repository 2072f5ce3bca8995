//! The MSI capability (id 0x05): what the guest programs, and what that means for delivery.
//!
//! The model holds the capability's registers, applies the guest's writes with the spec's
//! read-only fields (Multiple Message Capable, 64-bit and per-vector-mask capable bits) and a
//! Multiple Message Enable clamped to what is capable, and reports each transition as an
//! [`MsiChange`] so the VMM can update KVM routes. Offsets are relative to the capability start
//! (the id byte); the caller owns the id/next bytes and where the capability sits.

use crate::capability::id;
use crate::error::PciError;

/// An MSI message: a DMA write of `data` to `address` that the interrupt controller decodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (0xFEEx_xxxx on x86).
    pub address: u64,
    /// Message data (vector and delivery mode on x86).
    pub data: u32,
}

/// What happened to an interrupt a device raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Deliver this message now.
    Deliver(MsiMessage),
    /// The vector is masked: its pending bit is set, delivery waits for the unmask.
    Pending,
    /// MSI/MSI-X is off (or the vector does not exist): nothing to deliver.
    Disabled,
}

/// What a guest write to the MSI capability changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiChange {
    /// MSI Enable went 0 → 1: route [`Msi::vectors_enabled`] vectors.
    Enabled,
    /// MSI Enable went 1 → 0: remove the routes.
    Disabled,
    /// While enabled, the address, data or vector count changed: update the routes.
    Reprogrammed,
    /// A vector's mask bit was set.
    Masked(u16),
    /// A vector's mask bit was cleared.
    Unmasked(u16),
    /// An unmasked vector had its pending bit set: it was cleared, deliver `message` now.
    Deliver {
        /// The vector.
        vector: u16,
        /// Its message.
        message: MsiMessage,
    },
}

/// The fixed shape of an MSI capability, chosen by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiFeatures {
    /// Whether the message address is 64 bits (bit 7 of Message Control).
    pub addr64: bool,
    /// Whether per-vector mask and pending registers exist (bit 8).
    pub per_vector_mask: bool,
    /// log2 of the vectors the device can use, 0..=5 (Multiple Message Capable, bits 3:1).
    pub multiple_message_capable: u8,
}

const CONTROL: usize = 2;
const ADDR_LO: usize = 4;
const CTL_ENABLE: u16 = 1;
const CTL_MME_SHIFT: u16 = 4;
const CTL_MME: u16 = 0b111 << CTL_MME_SHIFT;
const CTL_MMC_SHIFT: u16 = 1;
const CTL_64BIT: u16 = 1 << 7;
const CTL_PER_VECTOR_MASK: u16 = 1 << 8;
const MAX_LEN: usize = 24;

/// An MSI capability's registers and pending bits.
///
/// Exists so that emulated devices and the passthrough layer share one reading of the MSI
/// rules (clamping, masking, pending) instead of each decoding the control word.
#[derive(Clone, Debug)]
pub struct Msi {
    features: MsiFeatures,
    regs: [u8; MAX_LEN],
    pending: u32,
}

impl Msi {
    /// A disabled MSI capability with all vectors unmasked (the reset state).
    pub fn new(features: MsiFeatures) -> Result<Self, PciError> {
        if features.multiple_message_capable > 5 {
            return Err(PciError::InvalidInterruptCapability {
                device: "device".into(),
                what: "MSI",
                reason: format!(
                    "Multiple Message Capable {} is above 5 (32 vectors)",
                    features.multiple_message_capable
                ),
            });
        }
        let mut control = u16::from(features.multiple_message_capable) << CTL_MMC_SHIFT;
        if features.addr64 {
            control |= CTL_64BIT;
        }
        if features.per_vector_mask {
            control |= CTL_PER_VECTOR_MASK;
        }
        let mut regs = [0; MAX_LEN];
        regs[0] = id::MSI;
        regs[CONTROL..CONTROL + 2].copy_from_slice(&control.to_le_bytes());
        Ok(Self {
            features,
            regs,
            pending: 0,
        })
    }

    /// The features given at construction.
    pub fn features(&self) -> MsiFeatures {
        self.features
    }

    /// Capability length in bytes, id/next header included.
    pub fn len(&self) -> usize {
        match (self.features.addr64, self.features.per_vector_mask) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        }
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The registers after the id/next header, current values: the `body` for
    /// `ConfigSpace::add_capability`, and what to copy back after a guest write.
    pub fn capability_body(&self) -> Vec<u8> {
        self.regs[CONTROL..self.len()].to_vec()
    }

    /// Guest read at `offset` from the capability start. The next pointer reads as 0.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.regs[..self.len()]
                .get(offset.saturating_add(i))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Guest write at `offset` from the capability start; returns what changed.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Vec<MsiChange> {
        let before = self.clone();
        for (i, &v) in data.iter().enumerate() {
            let at = offset.saturating_add(i);
            let wm = self.write_mask(at);
            if let Some(b) = self.regs.get_mut(at) {
                *b = (*b & !wm) | (v & wm);
            }
        }
        // Multiple Message Enable beyond Multiple Message Capable is clamped to it.
        let control = self.control();
        let mme = (control & CTL_MME) >> CTL_MME_SHIFT;
        let mmc = u16::from(self.features.multiple_message_capable);
        if mme > mmc {
            let control = (control & !CTL_MME) | (mmc << CTL_MME_SHIFT);
            self.regs[CONTROL..CONTROL + 2].copy_from_slice(&control.to_le_bytes());
        }
        self.changes_since(&before)
    }

    /// Whether MSI Enable is set.
    pub fn enabled(&self) -> bool {
        self.control() & CTL_ENABLE != 0
    }

    /// Vectors granted by Multiple Message Enable (1, 2, 4, ... 32).
    pub fn vectors_enabled(&self) -> u16 {
        1 << ((self.control() & CTL_MME) >> CTL_MME_SHIFT)
    }

    /// The programmed address and base data.
    pub fn base_message(&self) -> MsiMessage {
        let lo = u64::from(self.dword(ADDR_LO));
        let hi = if self.features.addr64 {
            u64::from(self.dword(ADDR_LO + 4))
        } else {
            0
        };
        MsiMessage {
            address: (hi << 32) | lo,
            data: u32::from(u16::from_le_bytes([
                self.regs[self.data_offset()],
                self.regs[self.data_offset() + 1],
            ])),
        }
    }

    /// The message of `vector`: the base data with its low bits replaced by the vector number,
    /// as the device sends it. `None` beyond the enabled vectors.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        let n = self.vectors_enabled();
        (vector < n).then(|| {
            let base = self.base_message();
            MsiMessage {
                address: base.address,
                data: (base.data & !u32::from(n - 1)) | u32::from(vector),
            }
        })
    }

    /// Whether `vector` is masked (always false without per-vector masking).
    pub fn is_masked(&self, vector: u16) -> bool {
        self.mask_bits() & bit(vector) != 0
    }

    /// Whether `vector` fired while masked and waits for its unmask.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending & bit(vector) != 0
    }

    /// The device raises `vector`.
    pub fn trigger(&mut self, vector: u16) -> Delivery {
        match self.message(vector) {
            Some(_) if !self.enabled() => Delivery::Disabled,
            None => Delivery::Disabled,
            Some(_) if self.is_masked(vector) => {
                self.set_pending(self.pending | bit(vector));
                Delivery::Pending
            }
            Some(message) => Delivery::Deliver(message),
        }
    }

    fn changes_since(&mut self, before: &Msi) -> Vec<MsiChange> {
        let mut changes = Vec::new();
        match (before.enabled(), self.enabled()) {
            (false, true) => changes.push(MsiChange::Enabled),
            (true, false) => changes.push(MsiChange::Disabled),
            (true, true)
                if before.base_message() != self.base_message()
                    || before.vectors_enabled() != self.vectors_enabled() =>
            {
                changes.push(MsiChange::Reprogrammed)
            }
            _ => {}
        }
        let flipped = before.mask_bits() ^ self.mask_bits();
        for vector in (0..32u16).filter(|&v| flipped & bit(v) != 0) {
            if self.is_masked(vector) {
                changes.push(MsiChange::Masked(vector));
                continue;
            }
            changes.push(MsiChange::Unmasked(vector));
            if self.is_pending(vector) && self.enabled() {
                if let Some(message) = self.message(vector) {
                    self.set_pending(self.pending & !bit(vector));
                    changes.push(MsiChange::Deliver { vector, message });
                }
            }
        }
        changes
    }

    fn control(&self) -> u16 {
        u16::from_le_bytes([self.regs[CONTROL], self.regs[CONTROL + 1]])
    }

    fn dword(&self, offset: usize) -> u32 {
        let b = &self.regs[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn data_offset(&self) -> usize {
        if self.features.addr64 {
            12
        } else {
            8
        }
    }

    fn mask_offset(&self) -> Option<usize> {
        self.features
            .per_vector_mask
            .then(|| self.data_offset() + 4)
    }

    fn mask_bits(&self) -> u32 {
        self.mask_offset().map_or(0, |o| self.dword(o))
    }

    fn set_pending(&mut self, pending: u32) {
        self.pending = pending;
        if let Some(o) = self.mask_offset() {
            self.regs[o + 4..o + 8].copy_from_slice(&pending.to_le_bytes());
        }
    }

    /// Guest-writable bits of the byte at `offset`.
    fn write_mask(&self, offset: usize) -> u8 {
        let capable_vectors = 1u64 << self.features.multiple_message_capable;
        let mask_bits = ((1u64 << capable_vectors) - 1) as u32;
        let data = self.data_offset();
        match offset {
            // Enable and Multiple Message Enable.
            CONTROL => (CTL_ENABLE | CTL_MME) as u8,
            // Address bits 1:0 are reserved (dword-aligned).
            ADDR_LO => 0xfc,
            5..=7 => 0xff,
            8..=11 if self.features.addr64 => 0xff,
            o if o == data || o == data + 1 => 0xff,
            o if self.mask_offset().is_some_and(|m| (m..m + 4).contains(&o)) => {
                mask_bits.to_le_bytes()[o - self.mask_offset().unwrap_or(0)]
            }
            _ => 0,
        }
    }
}

fn bit(vector: u16) -> u32 {
    1u32.checked_shl(u32::from(vector)).unwrap_or(0)
}

#[cfg(test)]
#[path = "msi_tests.rs"]
mod tests;
