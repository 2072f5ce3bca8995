//! Config-space virtualization of a passthrough device: which bytes the guest sees from the
//! hardware and which viaduct answers itself.
//!
//! Per byte, in this order:
//! - BARs (0x10..0x28) and the ROM BAR (0x30): a [`ConfigSpace`] shadow holding guest
//!   addresses and answering size probes; never written to the device;
//! - MSI and MSI-X capabilities (except their next pointer): the `pci` models, through
//!   [`Interrupts`]; the device's own enable bits are driven by VFIO `SET_IRQS`;
//! - Interrupt Line (scratch, starts as the INTx GSI) and Interrupt Pin (the device's pin when
//!   INTx is wired, else 0): emulated;
//! - the read-only identity of the header (vendor and device id, revision and class, header
//!   type, subsystem ids, capabilities pointer): read from the device, guest writes dropped
//!   here rather than left to the kernel's virtualization;
//! - everything else: read from and written to the VFIO config region.
//!
//! Read patches (`(device & !mask) | value`) then apply: the header's multi-function bit is
//! hidden, the GPUDirect clique capability and its link are added, and the IDs of extended
//! capabilities the guest must not use (SR-IOV, Resizable BAR) become 0 so the list still walks.
//! A byte patched as a whole is read-only: guest writes to it are dropped.

use std::collections::BTreeMap;
use std::mem::discriminant;

use pci::bar::BarIndex;
use pci::capability::{Capability, ExtCapabilities, CAPABILITIES_POINTER};
use pci::config_space::{reg, status, ConfigSpace, ConfigWriteEffect, CONFIG_DWORDS};

use crate::access::{region, VfioDeviceAccess};
use crate::bars::HostBar;
use crate::clique;
use crate::interrupts::Interrupts;

/// Extended capability ids whose ID is patched to 0 (the "null capability"): SR-IOV (the guest
/// cannot create VFs of a passed-through PF) and Resizable BAR (resizing would invalidate the
/// shadowed BAR sizes and the mappings).
const HIDDEN_EXT_CAPS: [u16; 2] = [0x10, 0x15];

/// Where a guest-visible config byte comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Shadow,
    Msi(usize),
    Msix(usize),
    InterruptLine,
    InterruptPin,
    Device,
}

/// `(device & !mask) | value` on reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Patch {
    mask: u8,
    value: u8,
}

/// The guest's view of the device's config space (see the module docs).
pub(crate) struct VirtualConfig {
    pub(crate) shadow: ConfigSpace,
    size: usize,
    msi: Option<(usize, usize)>,
    msix: Option<usize>,
    patches: BTreeMap<usize, Patch>,
    interrupt_line: u8,
    interrupt_pin: u8,
}

/// Where the clique capability went, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CliquePlacement {
    pub(crate) offset: u8,
}

impl VirtualConfig {
    /// Builds the view from the device's config `image` (256 or 4096 bytes), its BARs, its
    /// capability list and where the MSI (`(offset, len)`) and MSI-X capabilities are.
    pub(crate) fn new(
        shadow: ConfigSpace,
        image: &[u8],
        bars: &[HostBar],
        msi: Option<(usize, usize)>,
        msix: Option<usize>,
    ) -> Result<Self, String> {
        let mut shadow = shadow;
        for bar in bars {
            shadow.add_bar(bar.spec).map_err(|e| e.to_string())?;
        }
        // The shadow mirrors the command register from here on (guest writes reach both), so
        // what it says about decoding starts as what the device does.
        shadow.write_raw(reg::COMMAND, &image[reg::COMMAND..reg::COMMAND + 2]);
        let mut config = Self {
            shadow,
            size: image.len(),
            msi,
            msix,
            patches: BTreeMap::new(),
            interrupt_line: 0,
            interrupt_pin: 0,
        };
        config.patch(
            reg::HEADER_TYPE,
            Patch {
                mask: 0x80,
                value: 0,
            },
        );
        for cap in ExtCapabilities::new(image).filter(|c| HIDDEN_EXT_CAPS.contains(&c.id)) {
            config.patch_bytes(usize::from(cap.offset), &[0, 0]);
        }
        Ok(config)
    }

    /// Sets the Interrupt Pin (1..=4, 0 for none) and the initial Interrupt Line.
    pub(crate) fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.interrupt_pin = pin;
        self.interrupt_line = line;
    }

    /// Appends the clique capability for `clique` in free space of `image`, linked after the
    /// last of `caps` (or as the only capability). `None` when there is no room.
    pub(crate) fn add_clique(
        &mut self,
        image: &[u8],
        caps: &[Capability],
        clique: u8,
    ) -> Option<CliquePlacement> {
        let offset = clique::find_free_offset(image, caps)?;
        self.patch_bytes(usize::from(offset), &clique::clique_capability(clique));
        match caps.last() {
            Some(last) => self.patch_bytes(usize::from(last.offset) + 1, &[offset]),
            None => {
                self.patch_bytes(CAPABILITIES_POINTER, &[offset]);
                let bit = status::CAPABILITIES_LIST as u8;
                self.patch(
                    reg::STATUS,
                    Patch {
                        mask: bit,
                        value: bit,
                    },
                );
            }
        }
        Some(CliquePlacement { offset })
    }

    /// Guest read of dword `reg_idx`.
    pub(crate) fn read(
        &self,
        reg_idx: usize,
        irqs: &Interrupts,
        access: &dyn VfioDeviceAccess,
    ) -> u32 {
        if reg_idx >= CONFIG_DWORDS {
            return u32::MAX;
        }
        let base = reg_idx * 4;
        let mut device: Option<[u8; 4]> = None;
        let mut out = [0u8; 4];
        for (i, byte) in out.iter_mut().enumerate() {
            let at = base + i;
            let mut one = [0u8; 1];
            let value = match self.role(at) {
                Role::Shadow => self.shadow.read_config(reg_idx).to_le_bytes()[i],
                Role::Msi(rel) => {
                    irqs.msi_read(rel, &mut one);
                    one[0]
                }
                Role::Msix(rel) => {
                    if let Some(m) = irqs.msix.as_ref() {
                        m.model.read_capability(rel, &mut one);
                    }
                    one[0]
                }
                Role::InterruptLine => self.interrupt_line,
                Role::InterruptPin => self.interrupt_pin,
                Role::Device => device.get_or_insert_with(|| self.read_device(base, access))[i],
            };
            *byte = match self.patches.get(&at) {
                Some(p) => (value & !p.mask) | p.value,
                None => value,
            };
        }
        u32::from_le_bytes(out)
    }

    /// Guest write of `data` (1, 2 or 4 bytes) at byte `offset` of dword `reg_idx`. Malformed
    /// accesses are dropped.
    pub(crate) fn write(
        &mut self,
        reg_idx: usize,
        offset: usize,
        data: &[u8],
        irqs: &mut Interrupts,
        access: &dyn VfioDeviceAccess,
    ) -> ConfigWriteEffect {
        if reg_idx >= CONFIG_DWORDS || !matches!(data.len(), 1 | 2 | 4) || offset + data.len() > 4 {
            return ConfigWriteEffect::default();
        }
        if is_bar_register(reg_idx) {
            return self.shadow.write_config(reg_idx, offset, data);
        }
        let start = reg_idx * 4 + offset;
        let mut i = 0;
        while i < data.len() {
            let role = self.write_role(start + i);
            let mut j = i + 1;
            let kind = |r: Option<Role>| r.map(|r| discriminant(&r));
            while j < data.len() && kind(self.write_role(start + j)) == kind(role) {
                j += 1;
            }
            let run = &data[i..j];
            match role {
                Some(Role::Device) if start + j <= self.size => {
                    access.region_write(region::CONFIG, (start + i) as u64, run)
                }
                Some(Role::Msi(rel)) => irqs.msi_write(rel, run),
                Some(Role::Msix(rel)) => irqs.msix_write_capability(rel, run),
                Some(Role::InterruptLine) => self.interrupt_line = run[0],
                _ => {}
            }
            i = j;
        }
        if reg_idx * 4 == reg::COMMAND {
            // Mirror command/status so a command write settles half-written 64-bit BARs.
            return self.shadow.write_config(reg_idx, offset, data);
        }
        ConfigWriteEffect::default()
    }

    fn read_device(&self, base: usize, access: &dyn VfioDeviceAccess) -> [u8; 4] {
        let mut b = [0xff; 4];
        if base + 4 <= self.size {
            access.region_read(region::CONFIG, base as u64, &mut b);
        }
        b
    }

    fn role(&self, at: usize) -> Role {
        if is_bar_register(at / 4) {
            return Role::Shadow;
        }
        match at {
            reg::INTERRUPT_LINE => return Role::InterruptLine,
            reg::INTERRUPT_PIN => return Role::InterruptPin,
            _ => {}
        }
        if let Some((cap, len)) = self.msi {
            if let Some(rel) = at.checked_sub(cap).filter(|&r| r < len && r != 1) {
                return Role::Msi(rel);
            }
        }
        if let Some(cap) = self.msix {
            let len = pci::msix::MSIX_CAPABILITY_LEN;
            if let Some(rel) = at.checked_sub(cap).filter(|&r| r < len && r != 1) {
                return Role::Msix(rel);
            }
        }
        Role::Device
    }

    /// The role of a byte for writes; `None` (dropped) for read-only emulated bytes and the
    /// header's identity.
    fn write_role(&self, at: usize) -> Option<Role> {
        if self.patches.get(&at).is_some_and(|p| p.mask == 0xff) || is_read_only_header(at) {
            return None;
        }
        match self.role(at) {
            Role::InterruptPin | Role::Shadow => None,
            role => Some(role),
        }
    }

    fn patch(&mut self, at: usize, patch: Patch) {
        self.patches.insert(at, patch);
    }

    fn patch_bytes(&mut self, at: usize, bytes: &[u8]) {
        for (i, &value) in bytes.iter().enumerate() {
            self.patch(at + i, Patch { mask: 0xff, value });
        }
    }
}

/// Header bytes no guest write may change: vendor and device id (0x00..0x04), revision and class
/// (0x08..0x0c), header type (0x0e), subsystem ids (0x2c..0x30) and the capabilities pointer.
fn is_read_only_header(at: usize) -> bool {
    matches!(at, 0x00..=0x03 | 0x08..=0x0b | 0x0e | 0x2c..=0x2f) || at == CAPABILITIES_POINTER
}

/// BAR0..5 (dwords 4..=9) and the ROM BAR (dword 12).
fn is_bar_register(reg_idx: usize) -> bool {
    (4..=9).contains(&reg_idx) || reg_idx == BarIndex::ROM.reg_idx()
}
