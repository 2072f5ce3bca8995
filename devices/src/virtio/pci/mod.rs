//! The modern (virtio 1.x) PCI transport: a [`VirtioDevice`] exposed as a PCI function with
//! one memory BAR (see [`layout`]), the virtio vendor capabilities and MSI-X.
//!
//! The VMM allocates the BAR from [`PciDevice::bars`], routes trapped BAR accesses to
//! [`PciDevice::read_bar`]/[`PciDevice::write_bar`], and registers each queue's doorbell from
//! [`VirtioPciDevice::ioeventfds`] as a KVM ioeventfd, so a queue notification wakes the device's
//! worker without a VM exit to userspace. A doorbell write that does trap (before registration)
//! still reaches the worker. Legacy (0.9.5) virtio and INTx are not implemented.

pub(crate) mod common_config;
pub(crate) mod interrupt;
pub mod layout;

use std::sync::Arc;

use pci::bar::{BarIndex, BarKind, BarSpec};
use pci::capability::id as cap_id;
use pci::config_space::{ClassCode, ConfigSpace, DeviceIds, CONFIG_DWORDS};
use pci::device::{ConfigWriteEffect, Decode, PciDevice};
use pci::error::PciError;
use pci::msix::{Msix, MsixLayout, MsixRegion};
use pci::routing::InterruptRouter;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::common_config::{CommonConfig, CommonEvent, QueueRegs};
use self::interrupt::{InterruptShared, MsixVectors};
use self::layout::*;
use crate::virtio::{
    status, ActivateError, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt,
};

/// PCI vendor id of virtio devices (Red Hat, Inc.).
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio device ids are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision id of modern-only devices (the spec requires >= 1).
pub const VIRTIO_PCI_REVISION: u8 = 1;
/// Subsystem id, as QEMU sets it for modern virtio devices.
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// Why a virtio-pci function could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The caller asked for an I/O BAR.
    #[error("{device}: the virtio-pci BAR must be a memory BAR (32- or 64-bit), not I/O")]
    IoBar {
        /// The device.
        device: String,
    },
    /// The device declares no queue or more than the BAR layout holds.
    #[error("{device}: {queues} queues; virtio-pci supports 1..={MAX_QUEUES}")]
    QueueCount {
        /// The device.
        device: String,
        /// Queues it declared.
        queues: usize,
    },
    /// Eventfds for notifications or interrupts could not be created.
    #[error("{device}: cannot create its eventfds: {source}")]
    EventFd {
        /// The device.
        device: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The config space could not hold the BAR or capabilities (names the device itself).
    #[error(transparent)]
    Pci(#[from] PciError),
}

/// A virtio device on the PCI bus (modern interface only).
pub struct VirtioPciDevice {
    config: ConfigSpace,
    msix_cap: usize,
    pci_cfg_cap: usize,
    device: Box<dyn VirtioDevice>,
    common: CommonConfig,
    shared: Arc<InterruptShared>,
    msix: MsixVectors,
    queue_events: Vec<EventFd>,
    mem: Arc<GuestMemory>,
}

fn class_of(device_type: u32) -> ClassCode {
    let (base, sub) = match device_type {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET => (0x02, 0x00),
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK => (0x01, 0x00),
        // Simple communication controller, other (as QEMU's virtio-serial).
        virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE => (0x07, 0x80),
        _ => (0xff, 0x00),
    };
    ClassCode {
        base,
        sub,
        prog_if: 0,
    }
}

impl VirtioPciDevice {
    /// Wraps `device`: BAR0 of `bar_kind` (`Mem64` normally, `Mem32` to keep it below 4 GiB),
    /// DMA into `mem`, MSI-X routed through `router`. Nothing is routed until the guest enables
    /// MSI-X.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        router: Arc<dyn InterruptRouter>,
        bar_kind: BarKind,
    ) -> Result<Self, VirtioPciError> {
        let name = format!("virtio {}", device.name());
        if bar_kind == BarKind::Io {
            return Err(VirtioPciError::IoBar { device: name });
        }
        let queues = device.queue_max_sizes().len();
        if !(1..=MAX_QUEUES).contains(&queues) {
            return Err(VirtioPciError::QueueCount {
                device: name,
                queues,
            });
        }
        let vectors = queues as u16 + 1;
        let ids = DeviceIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + device.device_type() as u16,
            class: class_of(device.device_type()),
            revision_id: VIRTIO_PCI_REVISION,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        };
        let mut config = ConfigSpace::new(name.clone(), &ids);
        config.add_bar(BarSpec::new(VIRTIO_BAR, BAR_SIZE, bar_kind))?;
        let cap = |cfg_type, offset: u64, len: u64, extra: &[u8]| {
            virtio_cap_body(cfg_type, VIRTIO_BAR, offset as u32, len as u32, extra)
        };
        let notify_len = queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        let multiplier = NOTIFY_OFF_MULTIPLIER.to_le_bytes();
        for body in [
            cap(cap_type::COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_LEN, &[]),
            cap(cap_type::NOTIFY_CFG, NOTIFY_OFFSET, notify_len, &multiplier),
            cap(cap_type::ISR_CFG, ISR_CFG_OFFSET, ISR_CFG_LEN, &[]),
            cap(cap_type::DEVICE_CFG, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN, &[]),
        ] {
            config.add_capability(cap_id::VENDOR_SPECIFIC, &body)?;
        }
        let pci_cfg_body = cap(cap_type::PCI_CFG, 0, 0, &[0; 4]);
        let pci_cfg_cap =
            usize::from(config.add_capability(cap_id::VENDOR_SPECIFIC, &pci_cfg_body)?);
        // The window's BAR, offset, length and data are the driver's to program.
        config.set_write_mask(pci_cfg_cap + cap_field::BAR, &[0xff]);
        config.set_write_mask(pci_cfg_cap + cap_field::OFFSET, &[0xff; 8]);

        let model = Msix::new(MsixLayout {
            table_size: vectors,
            table_bar: VIRTIO_BAR,
            table_offset: MSIX_TABLE_OFFSET,
            pba_bar: VIRTIO_BAR,
            pba_offset: MSIX_PBA_OFFSET,
        })?;
        let msix_cap = usize::from(config.add_capability(cap_id::MSIX, &model.capability_body())?);

        let eventfd_err = |source| VirtioPciError::EventFd {
            device: name.clone(),
            source,
        };
        let shared = Arc::new(InterruptShared::new(&name, vectors, queues).map_err(eventfd_err)?);
        let queue_events = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(eventfd_err)?;
        let common = CommonConfig::new(device.features(), device.queue_max_sizes(), vectors);
        let msix = MsixVectors::new(&name, model, router, shared.clone());
        let mut dev = Self {
            config,
            msix_cap,
            pci_cfg_cap,
            device,
            common,
            shared,
            msix,
            queue_events,
            mem,
        };
        dev.device.reset();
        Ok(dev)
    }

    /// Each queue's doorbell: register `event` as a KVM ioeventfd (any access length, no data
    /// match) at the guest address of BAR `index` plus `offset`, and again after the guest
    /// moves that BAR. The eventfds live as long as the device.
    pub fn ioeventfds(&self) -> Vec<(BarIndex, u64, &EventFd)> {
        self.queue_events
            .iter()
            .enumerate()
            .map(|(q, e)| {
                let offset = NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
                (VIRTIO_BAR, offset, e)
            })
            .collect()
    }

    /// The device status byte (for logs and tests).
    pub fn device_status(&self) -> u8 {
        self.common.status()
    }

    fn read_region(&self, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        let within = |base: u64, size: u64| {
            offset
                .checked_sub(base)
                .filter(|&o| o.checked_add(len).is_some_and(|end| end <= size))
        };
        if let Some(o) = within(COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
            self.common.read(o, data);
        } else if within(ISR_CFG_OFFSET, ISR_CFG_LEN).is_some() {
            data[0] = self.shared.take_isr();
        } else if let Some(o) = within(DEVICE_CFG_OFFSET, DEVICE_CFG_LEN) {
            self.device.read_config(o, data);
        } else {
            match self.msix.model.region_at(VIRTIO_BAR, offset) {
                Some(MsixRegion::Table(o)) => self.msix.model.read_table(o, data),
                Some(MsixRegion::Pba(o)) => self.msix.read_pba(o, data),
                None => data.fill(0xff),
            }
        }
    }

    fn write_region(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let within = |base: u64, size: u64| {
            offset
                .checked_sub(base)
                .filter(|&o| o.checked_add(len).is_some_and(|end| end <= size))
        };
        let notify_len = self.queue_events.len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        if let Some(o) = within(COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
            let event = self.common.write(o, data);
            self.sync_vectors();
            match event {
                CommonEvent::None => {}
                CommonEvent::Reset => self.reset(),
                CommonEvent::DriverOk => self.activate(),
            }
        } else if let Some(o) = within(DEVICE_CFG_OFFSET, DEVICE_CFG_LEN) {
            self.device.write_config(o, data);
        } else if let Some(o) = within(NOTIFY_OFFSET, notify_len) {
            // The ioeventfd path, taken when KVM did not catch the write.
            let queue = (o / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
            if let Err(e) = self.queue_events[queue].write(1) {
                log::warn!("{}: cannot kick queue {queue}: {e}", self.config.name());
            }
        } else {
            match self.msix.model.region_at(VIRTIO_BAR, offset) {
                Some(MsixRegion::Table(o)) => self.msix.write_table(o, data),
                Some(MsixRegion::Pba(o)) => self.msix.model.write_pba(o, data),
                None => log::debug!(
                    "{}: ignored {}-byte write at BAR offset {offset:#x}",
                    self.config.name(),
                    data.len()
                ),
            }
        }
    }

    fn sync_vectors(&self) {
        let queues = self.common.queues().iter().map(|q| q.msix_vector);
        self.shared.set_vectors(self.common.msix_config(), queues);
    }

    /// Device reset (device_status 0): stop the worker, forget queues, vector assignments,
    /// ISR and undelivered interrupts. The MSI-X capability and table belong to the PCI function
    /// and the guest's PCI layer, and stay as programmed.
    fn reset(&mut self) {
        self.device.reset();
        self.common.reset();
        self.sync_vectors();
        self.shared.clear();
        for e in &self.queue_events {
            let _ = e.read();
        }
    }

    fn activate(&mut self) {
        let result = self.build_queues().and_then(|queues| {
            let interrupt: Arc<dyn VirtioInterrupt> = self.shared.clone();
            self.device.activate(
                self.mem.clone(),
                self.common.driver_features(),
                queues,
                interrupt,
            )
        });
        if let Err(e) = result {
            crate::warn_limited!("{e}; the device needs a reset");
            self.common.set_status_bits(status::NEEDS_RESET);
            self.shared.signal_config();
        }
    }

    fn build_queues(&self) -> Result<Vec<ActiveQueue>, ActivateError> {
        let queues: Vec<ActiveQueue> = self
            .common
            .queues()
            .iter()
            .enumerate()
            .filter(|(_, regs)| regs.enabled)
            .map(|(i, regs)| self.build_queue(i as u16, regs))
            .collect::<Result<_, _>>()?;
        if queues.is_empty() {
            return Err(ActivateError::MissingQueue {
                device: self.device.name().to_string(),
                queue: 0,
            });
        }
        Ok(queues)
    }

    fn build_queue(&self, index: u16, regs: &QueueRegs) -> Result<ActiveQueue, ActivateError> {
        let bad = |reason: String| ActivateError::BadQueue {
            device: self.device.name().to_string(),
            queue: index,
            reason,
        };
        let mut queue = Queue::new(regs.max_size).map_err(|e| bad(e.to_string()))?;
        queue.try_set_size(regs.size).map_err(|_| {
            bad(format!(
                "size {} is not a power of two in 1..={}",
                regs.size, regs.max_size
            ))
        })?;
        let misaligned = |what: &str, addr: u64| bad(format!("{what} at {addr:#x} is misaligned"));
        queue
            .try_set_desc_table_address(GuestAddress(regs.desc))
            .map_err(|_| misaligned("descriptor table", regs.desc))?;
        queue
            .try_set_avail_ring_address(GuestAddress(regs.driver))
            .map_err(|_| misaligned("available ring", regs.driver))?;
        queue
            .try_set_used_ring_address(GuestAddress(regs.device))
            .map_err(|_| misaligned("used ring", regs.device))?;
        queue.set_ready(true);
        if !queue.is_valid(&*self.mem) {
            return Err(bad("its rings are not inside guest memory".into()));
        }
        let notify = self.queue_events[usize::from(index)]
            .try_clone()
            .map_err(|source| ActivateError::Worker {
                device: self.device.name().to_string(),
                source,
            })?;
        Ok(ActiveQueue {
            index,
            queue,
            notify,
        })
    }

    /// The config dword of the PCI_CFG capability's data window.
    fn pci_cfg_data_reg(&self) -> usize {
        (self.pci_cfg_cap + cap_field::PCI_CFG_DATA) / 4
    }

    /// The PCI_CFG window's BAR offset, if it points at a 1/2/4-byte access of `len` bytes
    /// inside our BAR.
    fn pci_cfg_window(&self, len: usize) -> Option<u64> {
        let bytes = self.config.as_bytes();
        let field = |at: usize| {
            let b = &bytes[self.pci_cfg_cap + at..self.pci_cfg_cap + at + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let bar = bytes[self.pci_cfg_cap + cap_field::BAR];
        let (offset, length) = (field(cap_field::OFFSET), field(cap_field::LENGTH));
        let ok = bar == VIRTIO_BAR.get()
            && matches!(length, 1 | 2 | 4)
            && length as usize == len
            && u64::from(offset) + u64::from(length) <= BAR_SIZE;
        ok.then_some(u64::from(offset))
    }
}

impl PciDevice for VirtioPciDevice {
    fn name(&self) -> &str {
        self.config.name()
    }

    fn read_config(&self, reg_idx: usize) -> u32 {
        if reg_idx == self.pci_cfg_data_reg() {
            let mut data = [0u8; 4];
            let len = self.config.as_bytes()[self.pci_cfg_cap + cap_field::LENGTH];
            if let Some(offset) = self.pci_cfg_window(usize::from(len)) {
                self.read_region(offset, &mut data[..usize::from(len)]);
            }
            return u32::from_le_bytes(data);
        }
        self.config.read_config(reg_idx)
    }

    fn write_config(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        let valid =
            reg_idx < CONFIG_DWORDS && matches!(data.len(), 1 | 2 | 4) && offset + data.len() <= 4;
        if !valid {
            return ConfigWriteEffect::default();
        }
        let start = reg_idx * 4 + offset;
        if reg_idx == self.pci_cfg_data_reg() {
            match self.pci_cfg_window(data.len()).filter(|_| offset == 0) {
                Some(bar_offset) => self.write_region(bar_offset, data),
                None => log::debug!("{}: ignored PCI_CFG window write", self.config.name()),
            }
            return ConfigWriteEffect::default();
        }
        if reg_idx == self.msix_cap / 4 {
            self.msix.write_capability(start - self.msix_cap, data);
            let body = self.msix.model.capability_body();
            self.config.write_raw(self.msix_cap + 2, &body[..2]);
            return ConfigWriteEffect::default();
        }
        self.config.write_config(reg_idx, offset, data)
    }

    fn bars(&self) -> Vec<BarSpec> {
        self.config.bars()
    }

    fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError> {
        self.config.set_bar_address(index, addr)
    }

    fn read_bar(&mut self, index: BarIndex, offset: u64, data: &mut [u8]) {
        if index != VIRTIO_BAR || data.is_empty() || data.len() > 8 {
            data.fill(0xff);
            return;
        }
        self.read_region(offset, data);
    }

    fn write_bar(&mut self, index: BarIndex, offset: u64, data: &[u8]) {
        if index != VIRTIO_BAR || data.is_empty() || data.len() > 8 {
            return;
        }
        self.write_region(offset, data);
    }

    fn decode(&self) -> Decode {
        self.config.decode()
    }

    /// Stops the worker and gives back every MSI-X route and GSI.
    fn shutdown(&mut self) {
        self.reset();
        self.msix.release_all();
    }
}

impl Drop for VirtioPciDevice {
    /// Stops the device's worker; the MSI-X routes are released when `msix` drops.
    fn drop(&mut self) {
        self.device.reset();
    }
}

#[cfg(test)]
mod tests;
