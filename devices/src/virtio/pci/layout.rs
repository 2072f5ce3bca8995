//! Where everything lives in a virtio-pci function: the regions of BAR0 and the vendor-specific
//! capabilities that point the driver at them (virtio 1.x, 4.1.4).
//!
//! One memory BAR holds every structure, each on its own 4 KiB page so that a VMM could map or
//! trap them independently:
//!
//! | offset   | structure                                   |
//! |----------|---------------------------------------------|
//! | `0x0000` | common configuration (`virtio_pci_common_cfg`) |
//! | `0x1000` | ISR status (1 byte, read to clear)          |
//! | `0x2000` | device-specific configuration               |
//! | `0x3000` | notification doorbells, 4 bytes per queue   |
//! | `0x4000` | MSI-X table                                 |
//! | `0x5000` | MSI-X Pending Bit Array                     |

use pci::bar::BarIndex;

/// The BAR holding every virtio structure and the MSI-X table.
pub const VIRTIO_BAR: BarIndex = match BarIndex::new(0) {
    Some(b) => b,
    None => unreachable!(),
};
/// Size of [`VIRTIO_BAR`]: the six 4 KiB pages above, rounded up to a power of two.
pub const BAR_SIZE: u64 = 0x8000;

/// Offset of the common configuration structure.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration (virtio 1.1 layout, up to `queue_device`).
pub const COMMON_CFG_LEN: u64 = 0x38;
/// Offset of the ISR status byte.
pub const ISR_CFG_OFFSET: u64 = 0x1000;
/// Length of the ISR region.
pub const ISR_CFG_LEN: u64 = 1;
/// Offset of the device-specific configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Length of the device-specific configuration region.
pub const DEVICE_CFG_LEN: u64 = 0x1000;
/// Offset of the notification doorbells.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' doorbells (`notify_off_multiplier`); queue `n`'s is at
/// `NOTIFY_OFFSET + n * NOTIFY_OFF_MULTIPLIER`.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table.
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
/// Offset of the MSI-X Pending Bit Array.
pub const MSIX_PBA_OFFSET: u32 = 0x5000;
/// Most queues a device may have: one doorbell each in the notify page and, with the config
/// vector, one MSI-X entry each in the table page.
pub const MAX_QUEUES: usize = 255;

/// `cfg_type` values of the virtio PCI capabilities (`VIRTIO_PCI_CAP_*`).
pub mod cap_type {
    /// Common configuration.
    pub const COMMON_CFG: u8 = 1;
    /// Notifications.
    pub const NOTIFY_CFG: u8 = 2;
    /// ISR status.
    pub const ISR_CFG: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE_CFG: u8 = 4;
    /// Config-space window onto the BARs.
    pub const PCI_CFG: u8 = 5;
}

/// Length of `struct virtio_pci_cap`, header included.
pub const VIRTIO_CAP_LEN: u8 = 16;
/// Length of `struct virtio_pci_notify_cap` (adds `notify_off_multiplier`).
pub const NOTIFY_CAP_LEN: u8 = 20;
/// Length of `struct virtio_pci_cfg_cap` (adds the 4-byte data window).
pub const PCI_CFG_CAP_LEN: u8 = 20;

/// Offsets inside `struct virtio_pci_cap` (from the capability id byte).
pub mod cap_field {
    /// The BAR the structure lives in (u8).
    pub const BAR: usize = 4;
    /// Offset of the structure in the BAR (le32).
    pub const OFFSET: usize = 8;
    /// Length of the structure (le32).
    pub const LENGTH: usize = 12;
    /// `virtio_pci_cfg_cap.pci_cfg_data` (4 bytes).
    pub const PCI_CFG_DATA: usize = 16;
}

/// The body (bytes after id and next pointer) of a virtio capability describing `len` bytes at
/// `offset` in `bar`, with `extra` appended (the notify multiplier, the PCI_CFG data window).
pub fn virtio_cap_body(
    cfg_type: u8,
    bar: BarIndex,
    offset: u32,
    len: u32,
    extra: &[u8],
) -> Vec<u8> {
    let cap_len = usize::from(VIRTIO_CAP_LEN) + extra.len();
    let mut body = Vec::with_capacity(cap_len - 2);
    body.push(cap_len as u8);
    body.push(cfg_type);
    body.push(bar.get());
    body.extend_from_slice(&[0, 0, 0]); // id, padding
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// Offsets and fields of `struct virtio_pci_common_cfg`.
pub mod common {
    /// le32, RW: which 32-bit word of the device features `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32, RO.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32, RW: which 32-bit word of the driver features `DRIVER_FEATURE` writes.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32, RW.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16, RW: MSI-X vector for configuration changes.
    pub const MSIX_CONFIG: u64 = 0x10;
    /// le16, RO.
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8, RW.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8, RO.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16, RW: which queue the `QUEUE_*` registers show.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16, RW.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16, RW.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16, RW.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16, RO.
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le64, RW: descriptor table address.
    pub const QUEUE_DESC: u64 = 0x20;
    /// le64, RW: available (driver) ring address.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// le64, RW: used (device) ring address.
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// "No vector": the config change or queue does not interrupt through MSI-X.
pub const NO_VECTOR: u16 = 0xffff;
