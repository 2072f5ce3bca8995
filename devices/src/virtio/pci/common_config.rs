//! The common configuration structure (`virtio_pci_common_cfg`) as pure register logic:
//! feature negotiation, device status, MSI-X vector assignment and per-queue setup.
//!
//! Nothing here touches memory, threads or interrupts; a write returns a [`CommonEvent`] saying
//! what the transport must do (reset the device, activate it). Accesses must use the register's
//! width at its offset (64-bit addresses may also be written as two 32-bit halves); anything else
//! reads all-ones and is ignored on write.

use super::layout::{common as reg, NO_VECTOR};
use crate::virtio::{features, status};

/// What a common-config write asks the transport to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonEvent {
    /// Nothing beyond the register update.
    None,
    /// The driver wrote 0 to device_status: reset the device, its queues and interrupts.
    Reset,
    /// The driver set DRIVER_OK (with FEATURES_OK): activate the device.
    DriverOk,
}

/// The driver-programmed state of one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRegs {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size the driver chose (starts at `max_size`).
    pub size: u16,
    /// MSI-X vector for this queue's used-buffer notifications.
    pub msix_vector: u16,
    /// Whether the driver enabled the queue.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub driver: u64,
    /// Used ring address.
    pub device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            msix_vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// The registers of `virtio_pci_common_cfg` for one device.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    device_features: u64,
    msix_vectors: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
}

impl CommonConfig {
    /// Reset state for a device offering `device_features`, with one queue per entry of
    /// `queue_max_sizes` and an MSI-X table of `msix_vectors` entries.
    pub fn new(device_features: u64, queue_max_sizes: &[u16], msix_vectors: u16) -> Self {
        Self {
            device_features,
            msix_vectors,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: queue_max_sizes.iter().map(|&m| QueueRegs::new(m)).collect(),
        }
    }

    /// Back to the state after construction (device_status 0).
    pub fn reset(&mut self) {
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = Self::new(self.device_features, &sizes, self.msix_vectors);
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Sets device-owned status bits (DEVICE_NEEDS_RESET) and bumps nothing else.
    pub fn set_status_bits(&mut self, bits: u8) {
        self.status |= bits;
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The MSI-X vector for configuration changes.
    pub fn msix_config(&self) -> u16 {
        self.msix_config
    }

    /// Every queue's registers, by index.
    pub fn queues(&self) -> &[QueueRegs] {
        &self.queues
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Guest read of `data.len()` bytes at `offset` in the structure.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let q = self.selected();
        let value: Option<u64> = match (offset, data.len()) {
            (reg::DEVICE_FEATURE_SELECT, 4) => Some(self.device_feature_select.into()),
            (reg::DEVICE_FEATURE, 4) => Some(match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            }),
            (reg::DRIVER_FEATURE_SELECT, 4) => Some(self.driver_feature_select.into()),
            (reg::DRIVER_FEATURE, 4) => Some(match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            }),
            (reg::MSIX_CONFIG, 2) => Some(self.msix_config.into()),
            (reg::NUM_QUEUES, 2) => Some(self.queues.len() as u64),
            (reg::DEVICE_STATUS, 1) => Some(self.status.into()),
            (reg::CONFIG_GENERATION, 1) => Some(self.config_generation.into()),
            (reg::QUEUE_SELECT, 2) => Some(self.queue_select.into()),
            (reg::QUEUE_SIZE, 2) => Some(q.map_or(0, |q| q.size.into())),
            (reg::QUEUE_MSIX_VECTOR, 2) => Some(q.map_or(NO_VECTOR, |q| q.msix_vector).into()),
            (reg::QUEUE_ENABLE, 2) => Some(q.map_or(0, |q| u64::from(q.enabled))),
            (reg::QUEUE_NOTIFY_OFF, 2) => Some(self.queue_select.into()),
            (o, len) => self.read_address(q, o, len),
        };
        match value {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()[..data.len()]),
            None => data.fill(0xff),
        }
    }

    /// Reads of the 64-bit queue addresses: whole, or either 32-bit half.
    fn read_address(&self, q: Option<&QueueRegs>, offset: u64, len: usize) -> Option<u64> {
        let (field, half) = address_field(offset, len)?;
        let value = q.map_or(0, |q| match field {
            reg::QUEUE_DESC => q.desc,
            reg::QUEUE_DRIVER => q.driver,
            _ => q.device,
        });
        Some(match half {
            None => value,
            Some(false) => value & 0xffff_ffff,
            Some(true) => value >> 32,
        })
    }

    /// Guest write of `data` at `offset`; returns what the transport must do.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> CommonEvent {
        let mut bytes = [0u8; 8];
        let Some(dst) = bytes.get_mut(..data.len()) else {
            return CommonEvent::None;
        };
        dst.copy_from_slice(data);
        let v = u64::from_le_bytes(bytes);
        match (offset, data.len()) {
            (reg::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (reg::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (reg::DRIVER_FEATURE, 4) => self.write_driver_features(v),
            (reg::MSIX_CONFIG, 2) => self.msix_config = self.valid_vector(v as u16),
            (reg::DEVICE_STATUS, 1) => return self.write_status(v as u8),
            (reg::QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (reg::QUEUE_MSIX_VECTOR, 2) => {
                let vector = self.valid_vector(v as u16);
                if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
                    q.msix_vector = vector;
                }
            }
            (reg::QUEUE_SIZE, 2) => self.with_setup_queue(|q| q.size = v as u16),
            (reg::QUEUE_ENABLE, 2) => match v {
                1 => self.with_setup_queue(|q| q.enabled = true),
                // Disabling a single queue needs VIRTIO_F_RING_RESET, which is not offered.
                _ => log::debug!("virtio common config: ignored queue_enable = {v}"),
            },
            (o, len) => match address_field(o, len) {
                Some((field, half)) => self.with_setup_queue(|q| {
                    let slot = match field {
                        reg::QUEUE_DESC => &mut q.desc,
                        reg::QUEUE_DRIVER => &mut q.driver,
                        _ => &mut q.device,
                    };
                    *slot = match half {
                        None => v,
                        Some(false) => (*slot & !0xffff_ffff) | (v & 0xffff_ffff),
                        Some(true) => (*slot & 0xffff_ffff) | (v << 32),
                    };
                }),
                None => log::debug!(
                    "virtio common config: ignored {}-byte write at {o:#x}",
                    data.len()
                ),
            },
        }
        CommonEvent::None
    }

    /// Whether the driver's feature set is acceptable: VERSION_1, and nothing not offered.
    pub fn features_acceptable(&self) -> bool {
        self.driver_features & features::VERSION_1 != 0
            && self.driver_features & !self.device_features == 0
    }

    fn write_driver_features(&mut self, v: u64) {
        if self.status & status::FEATURES_OK != 0 {
            log::debug!("virtio common config: driver features written after FEATURES_OK");
            return;
        }
        self.driver_features = match self.driver_feature_select {
            0 => (self.driver_features & !0xffff_ffff) | (v & 0xffff_ffff),
            1 => (self.driver_features & 0xffff_ffff) | (v << 32),
            _ => return,
        };
    }

    fn write_status(&mut self, value: u8) -> CommonEvent {
        if value == 0 {
            self.reset();
            return CommonEvent::Reset;
        }
        let old = self.status;
        // Bits only go from 0 to 1 until a reset (NEEDS_RESET is the device's to set).
        if value & old & !status::NEEDS_RESET != old & !status::NEEDS_RESET {
            log::debug!("virtio: driver tried to clear status bits {old:#x} -> {value:#x}");
            return CommonEvent::None;
        }
        let mut new = value | (old & status::NEEDS_RESET);
        let newly = |bit: u8| new & bit != 0 && old & bit == 0;
        if newly(status::FEATURES_OK) && !self.features_acceptable() {
            crate::warn_limited!(
                "virtio: refusing the driver's features {:#x} (offered {:#x}; VERSION_1 is \
                 required)",
                self.driver_features,
                self.device_features
            );
            new &= !status::FEATURES_OK;
        }
        let driver_ok = new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0;
        if driver_ok && new & status::FEATURES_OK == 0 {
            crate::warn_limited!("virtio: DRIVER_OK without FEATURES_OK; the device needs a reset");
            self.status = (new & !status::DRIVER_OK) | status::NEEDS_RESET;
            return CommonEvent::None;
        }
        self.status = new;
        if driver_ok {
            CommonEvent::DriverOk
        } else {
            CommonEvent::None
        }
    }

    /// Applies `f` to the selected queue while it may still be set up: it exists, is not yet
    /// enabled and the driver has not set DRIVER_OK.
    fn with_setup_queue(&mut self, f: impl FnOnce(&mut QueueRegs)) {
        let live = self.status & status::DRIVER_OK != 0;
        match self.queues.get_mut(usize::from(self.queue_select)) {
            Some(q) if !q.enabled && !live => f(q),
            _ => log::debug!(
                "virtio common config: ignored setup write to queue {} (absent or enabled)",
                self.queue_select
            ),
        }
    }

    /// `vector` if the MSI-X table has it, else NO_VECTOR (which the driver reads back as the
    /// refusal the spec asks for).
    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix_vectors {
            vector
        } else {
            NO_VECTOR
        }
    }
}

/// Which queue address an access hits: the field's offset and `None` for a whole 8-byte
/// access, `Some(upper)` for a 4-byte half.
fn address_field(offset: u64, len: usize) -> Option<(u64, Option<bool>)> {
    let field = [reg::QUEUE_DESC, reg::QUEUE_DRIVER, reg::QUEUE_DEVICE]
        .into_iter()
        .find(|&f| (f..f + 8).contains(&offset))?;
    match (offset - field, len) {
        (0, 8) => Some((field, None)),
        (0, 4) => Some((field, Some(false))),
        (4, 4) => Some((field, Some(true))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERED: u64 = features::VERSION_1 | 0b110;

    fn cfg() -> CommonConfig {
        CommonConfig::new(OFFERED, &[256, 64], 3)
    }

    fn w(c: &mut CommonConfig, offset: u64, len: usize, v: u64) -> CommonEvent {
        c.write(offset, &v.to_le_bytes()[..len])
    }

    fn r(c: &CommonConfig, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        c.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn to_features_ok(c: &mut CommonConfig, driver: u64) {
        w(
            c,
            reg::DEVICE_STATUS,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
        );
        for sel in 0..2 {
            w(c, reg::DRIVER_FEATURE_SELECT, 4, sel);
            w(
                c,
                reg::DRIVER_FEATURE,
                4,
                driver >> (32 * sel) & 0xffff_ffff,
            );
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(c, reg::DEVICE_STATUS, 1, u64::from(s));
    }

    #[test]
    fn device_features_are_shown_32_bits_at_a_time() {
        let mut c = cfg();
        assert_eq!(r(&c, reg::DEVICE_FEATURE, 4), 0b110);
        w(&mut c, reg::DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(r(&c, reg::DEVICE_FEATURE, 4), 1);
        w(&mut c, reg::DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(r(&c, reg::DEVICE_FEATURE, 4), 0);
    }

    #[test]
    fn driver_features_freeze_at_features_ok() {
        let mut c = cfg();
        to_features_ok(&mut c, features::VERSION_1 | 0b10);
        assert_ne!(c.status() & status::FEATURES_OK, 0);
        w(&mut c, reg::DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut c, reg::DRIVER_FEATURE, 4, 0b100);
        assert_eq!(c.driver_features(), features::VERSION_1 | 0b10);
    }

    #[test]
    fn status_bits_cannot_be_cleared_without_a_reset() {
        let mut c = cfg();
        to_features_ok(&mut c, features::VERSION_1);
        assert_eq!(
            w(
                &mut c,
                reg::DEVICE_STATUS,
                1,
                u64::from(status::ACKNOWLEDGE)
            ),
            CommonEvent::None
        );
        assert_ne!(c.status() & status::FEATURES_OK, 0);
        let s = c.status() | status::DRIVER_OK;
        assert_eq!(
            w(&mut c, reg::DEVICE_STATUS, 1, u64::from(s)),
            CommonEvent::DriverOk
        );
        assert_eq!(w(&mut c, reg::DEVICE_STATUS, 1, 0), CommonEvent::Reset);
        assert_eq!((c.status(), c.driver_features()), (0, 0));
    }

    #[test]
    fn queue_addresses_accept_whole_and_half_accesses() {
        let mut c = cfg();
        w(&mut c, reg::QUEUE_SELECT, 2, 1);
        w(&mut c, reg::QUEUE_DRIVER, 8, 0x1_2345_6000);
        w(&mut c, reg::QUEUE_DEVICE + 4, 4, 0x7);
        w(&mut c, reg::QUEUE_DEVICE, 4, 0x8000);
        w(&mut c, reg::QUEUE_DESC + 2, 4, 0xdead);
        let q = c.queues()[1];
        assert_eq!(
            (q.desc, q.driver, q.device),
            (0, 0x1_2345_6000, 0x7_0000_8000)
        );
        assert_eq!(r(&c, reg::QUEUE_DRIVER + 4, 4), 1);
        assert_eq!(r(&c, reg::QUEUE_DESC + 2, 4), 0xffff_ffff);
        assert_eq!(r(&c, reg::QUEUE_SIZE, 2), 64);
        assert_eq!(r(&c, reg::QUEUE_NOTIFY_OFF, 2), 1);
    }
}
