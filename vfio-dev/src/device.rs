//! [`VfioPciDevice`]: a host VFIO device presented to the guest as a PCI function.
//!
//! Construction makes sure the device was reset (see [`ResetDuty`]), reads its config space, sizes its BARs, builds the MSI/MSI-X
//! models from its capabilities, wires INTx and (optionally) adds the GPUDirect clique
//! capability. Afterwards the VMM allocates the BARs (`bars`, `set_bar_address`), mmaps the
//! [`VfioPciDevice::mmap_areas`] from the device fd, and routes config accesses and trapped BAR
//! accesses to the [`PciDevice`] methods. [`VfioPciDevice::shutdown`] (also run on drop) turns
//! the device's interrupts off and returns every GSI.
//!
//! When guest RAM is still being DMA-mapped as the guest boots, a [`DmaReady`] gate holds the
//! guest's first write that turns bus mastering on until the mapping is done: a PCI function
//! cannot start a DMA (or an MSI) without bus mastering, so the device never reaches RAM that
//! the IOMMU does not map yet.

use std::os::fd::RawFd;
use std::sync::Arc;

use pci::bar::{BarIndex, BarSpec};
use pci::capability::{id, Capabilities, Capability};
use pci::config_space::{reg, status, ClassCode, ConfigSpace, DeviceIds};
use pci::device::{ConfigWriteEffect, Decode, PciDevice};
use pci::error::PciError;
use pci::msi::{Msi, MsiFeatures};
use pci::msix::{Msix, MsixLayout, MsixRegion};

use crate::access::{irq, region, ResetDuty, ResetOutcome, VfioDeviceAccess};
use crate::bars::{self, HostBar};
use crate::clique::MAX_CLIQUE_ID;
use crate::config::VirtualConfig;
use crate::interrupts::Interrupts;
use crate::routing::{Gsi, InterruptRouter};
pub use crate::sparse::MmapArea;

/// NVIDIA's PCI vendor id.
const NVIDIA_VENDOR_ID: u16 = 0x10de;
/// Base class of display controllers.
const DISPLAY_CLASS: u8 = 0x03;

/// Why a passthrough device could not be set up. Every message names the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The GPUDirect clique id does not fit its 4-bit field.
    #[error("{device}: GPUDirect clique id {clique} is out of range; it must be 0..=15")]
    CliqueOutOfRange {
        /// The device.
        device: String,
        /// The refused id.
        clique: u8,
    },
    /// No free 8 bytes in standard config space for the clique capability.
    #[error(
        "{device}: no room for the 8-byte GPUDirect clique capability: every dword-aligned block \
         of 0x40..0x100 is used by a capability or is not zero; drop x_nv_gpudirect_clique for \
         this device"
    )]
    NoRoomForClique {
        /// The device.
        device: String,
    },
    /// The config space region is missing or too small.
    #[error("{device}: cannot use its PCI config space: {reason}")]
    ConfigSpace {
        /// The device.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// A BAR (or the ROM) cannot be presented to the guest.
    #[error("{device}: BAR setup failed: {reason}")]
    Bar {
        /// The device.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// An MSI or MSI-X capability the models cannot represent.
    #[error("{device}: unusable {what} capability: {reason}")]
    Capability {
        /// The device.
        device: String,
        /// "MSI" or "MSI-X".
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Interrupt resources could not be created or INTx could not be wired.
    #[error("{device}: interrupt setup failed: {reason}")]
    Interrupts {
        /// The device.
        device: String,
        /// What failed.
        reason: String,
    },
}

/// Whether a device may be let loose on guest RAM yet: guest RAM is DMA-mapped on a thread of
/// its own while the guest boots, and a device gets bus mastering only once that is done.
pub trait DmaReady: Send + Sync {
    /// Blocks until guest RAM is DMA-mapped. `Err` (why not) when it never will be, or the VM
    /// is stopping; the device then stays without bus mastering. `device` names the device
    /// that asks, for the log.
    fn wait_for_dma(&self, device: &str) -> Result<(), NoDma>;
}

/// Why a device gets no bus mastering: the answer of [`DmaReady::wait_for_dma`] when guest RAM
/// will not be DMA-mapped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoDma {
    /// The VM is stopping, and the mapping of its RAM was given up with it.
    #[error("the VM is stopping")]
    Stopping,
    /// Mapping guest RAM failed (why).
    #[error("guest RAM could not be DMA-mapped: {0}")]
    MapFailed(String),
}

/// The command register's Bus Master Enable bit.
const COMMAND_BUS_MASTER: u8 = 1 << 2;

/// A host VFIO PCI device as the guest sees it (see the module docs).
pub struct VfioPciDevice {
    name: String,
    /// Set while guest RAM may still be being DMA-mapped; cleared once it is.
    dma_ready: Option<Arc<dyn DmaReady>>,
    access: Arc<dyn VfioDeviceAccess>,
    bars: Vec<HostBar>,
    config: VirtualConfig,
    irqs: Interrupts,
    clique_offset: Option<u8>,
    reset: ResetDuty,
    released: bool,
}

impl VfioPciDevice {
    /// Inspects the device behind `access`, reset by the kernel as it was opened or, when
    /// `reset` says so, by viaduct first, and wires its interrupts through `router`. `intx_gsi`
    /// is the GSI (IOAPIC pin) for INTx, `None` to leave INTx unwired.
    /// The GPUDirect clique capability is added afterwards, once peer-to-peer DMA is known to
    /// work ([`VfioPciDevice::add_gpudirect_clique`]).
    pub fn new(
        name: String,
        access: Arc<dyn VfioDeviceAccess>,
        router: Arc<dyn InterruptRouter>,
        intx_gsi: Option<Gsi>,
        reset: ResetDuty,
    ) -> Result<Self, DeviceError> {
        let building = std::time::Instant::now();
        reset_or_log(&name, &*access, reset, Moment::Open);
        let image = read_image(&name, &*access)?;
        let config_read = building.elapsed();
        let bars = bars::discover(&name, &*access).map_err(|reason| DeviceError::Bar {
            device: name.clone(),
            reason,
        })?;
        let bars_sized = building.elapsed();
        let status_reg = u16::from_le_bytes([image[reg::STATUS], image[reg::STATUS + 1]]);
        let caps: Vec<Capability> = if status_reg & status::CAPABILITIES_LIST != 0 {
            Capabilities::new(&image).collect()
        } else {
            Vec::new()
        };
        let find = |want: u8| {
            caps.iter()
                .find(|c| c.id == want)
                .map(|c| usize::from(c.offset))
        };
        let msix = match find(id::MSIX).filter(|_| access.irq_count(irq::MSIX) > 0) {
            Some(cap) => Some((cap, msix_model(&name, &image, cap, &bars)?)),
            None => None,
        };
        let msi = match find(id::MSI).filter(|_| access.irq_count(irq::MSI) > 0) {
            Some(cap) => Some((cap, msi_model(&name, &image, cap)?)),
            None => None,
        };
        let ids = device_ids(&image);
        let shadow = ConfigSpace::new(name.clone(), &ids);
        let mut config = VirtualConfig::new(
            shadow,
            &image,
            &bars,
            msi.as_ref().map(|(cap, m)| (*cap, m.len())),
            msix.as_ref().map(|(cap, _)| *cap),
        )
        .map_err(|reason| DeviceError::Bar {
            device: name.clone(),
            reason,
        })?;
        let (msix, msi) = (msix.map(|(_, m)| m), msi.map(|(_, m)| m));
        let modelled = building.elapsed();
        let irqs = Interrupts::new(&name, access.clone(), router, msix, msi, intx_gsi).map_err(
            |reason| DeviceError::Interrupts {
                device: name.clone(),
                reason,
            },
        )?;
        log::debug!(
            "{name}: built in {:?}: {} bytes of config space read by {config_read:?}, BARs \
             sized by {bars_sized:?}, MSI/MSI-X modelled by {modelled:?}",
            building.elapsed(),
            image.len()
        );
        match irqs.intx_gsi() {
            Some(gsi) => config.set_interrupt(
                image[reg::INTERRUPT_PIN].clamp(1, 4),
                u8::try_from(gsi.0).unwrap_or(u8::MAX),
            ),
            None => config.set_interrupt(0, u8::MAX),
        }
        Ok(Self {
            name,
            dma_ready: None,
            access,
            bars,
            config,
            irqs,
            clique_offset: None,
            reset,
            released: false,
        })
    }

    /// Adds the NVIDIA GPUDirect P2P clique capability with id `clique` (0..=15) in free
    /// standard config space, linked last; returns its offset. Call before the guest sees the
    /// device, and only when the device's BARs are reachable by its peers' DMA: the capability
    /// tells the guest driver that peer-to-peer works.
    pub fn add_gpudirect_clique(&mut self, clique: u8) -> Result<u8, DeviceError> {
        if clique > MAX_CLIQUE_ID {
            return Err(DeviceError::CliqueOutOfRange {
                device: self.name.clone(),
                clique,
            });
        }
        if let Some(offset) = self.clique_offset {
            return Ok(offset);
        }
        let image = read_image(&self.name, &*self.access)?;
        let status_reg = u16::from_le_bytes([image[reg::STATUS], image[reg::STATUS + 1]]);
        let caps: Vec<Capability> = if status_reg & status::CAPABILITIES_LIST != 0 {
            Capabilities::new(&image).collect()
        } else {
            Vec::new()
        };
        let ids = device_ids(&image);
        if ids.vendor_id != NVIDIA_VENDOR_ID || ids.class.base != DISPLAY_CLASS {
            log::warn!(
                "{}: adding the GPUDirect clique capability to a device that is not an NVIDIA \
                 display controller ({:04x}, class {:02x}); only NVIDIA drivers read it",
                self.name,
                ids.vendor_id,
                ids.class.base
            );
        }
        let placed = self
            .config
            .add_clique(&image, &caps, clique)
            .ok_or_else(|| DeviceError::NoRoomForClique {
                device: self.name.clone(),
            })?;
        log::info!(
            "{}: GPUDirect clique {clique} capability at {:#x}",
            self.name,
            placed.offset
        );
        self.clique_offset = Some(placed.offset);
        Ok(placed.offset)
    }

    /// The BAR areas the VMM should mmap from [`VfioDeviceAccess::device_fd`] and map into the
    /// guest at the BAR's address plus [`MmapArea::offset`]. Every other byte of every BAR
    /// (the MSI-X table and PBA pages, I/O BARs, non-mmappable regions, the ROM) must trap to
    /// [`PciDevice::read_bar`]/[`PciDevice::write_bar`].
    pub fn mmap_areas(&self) -> Vec<MmapArea> {
        let layout = self.irqs.msix.as_ref().map(|m| m.model.layout());
        let mut areas = Vec::new();
        for bar in self.bars.iter().filter(|b| !b.spec.index.is_rom()) {
            let index = bar.spec.index;
            let mut trapped = Vec::new();
            if let Some(l) = layout {
                if l.table_bar == index {
                    let start = u64::from(l.table_offset);
                    trapped.push(start..start + l.table_len());
                }
                if l.pba_bar == index {
                    let start = u64::from(l.pba_offset);
                    trapped.push(start..start + l.pba_len());
                }
            }
            if bar.spec.kind == pci::bar::BarKind::Io {
                continue;
            }
            areas.extend(crate::sparse::mmap_areas(
                index,
                bar.spec.size,
                &bar.region,
                &trapped,
            ));
        }
        areas
    }

    /// The VFIO device fd to mmap [`VfioPciDevice::mmap_areas`] from.
    pub fn device_fd(&self) -> RawFd {
        self.access.device_fd()
    }

    /// Holds the guest's first write that turns bus mastering on until `gate` says guest RAM is
    /// DMA-mapped (see the module docs). Set before the guest sees the device.
    pub fn set_dma_ready(&mut self, gate: Arc<dyn DmaReady>) {
        self.dma_ready = Some(gate);
    }

    /// Config offset of the GPUDirect clique capability, when one was added.
    pub fn clique_offset(&self) -> Option<u8> {
        self.clique_offset
    }

    /// Turns MSI-X, MSI and INTx off on the device, detaches every irqfd, removes every route
    /// and frees every GSI. Idempotent; also run when the device is dropped.
    pub fn shutdown(&mut self) {
        self.irqs.shutdown();
    }

    /// The guest is gone: turn everything off ([`VfioPciDevice::shutdown`]) and reset the
    /// device (or leave that to the kernel as its fd closes, see [`ResetDuty`]), so the next VM
    /// gets it clean rather than as this guest left it.
    pub fn release(&mut self) {
        self.shutdown();
        if !self.released {
            self.released = true;
            reset_or_log(&self.name, &*self.access, self.reset, Moment::Close);
        }
    }

    fn bar(&self, index: BarIndex) -> Option<&HostBar> {
        self.bars.iter().find(|b| b.spec.index == index)
    }

    /// The BAR's VFIO region and whether `[offset, offset + len)` lies inside the BAR.
    fn bar_access(&self, index: BarIndex, offset: u64, len: usize) -> Option<u32> {
        let bar = self.bar(index)?;
        let end = offset.checked_add(len as u64)?;
        (end <= bar.spec.size).then(|| bar.region_index())
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl PciDevice for VfioPciDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_config(&self, reg_idx: usize) -> u32 {
        self.config.read(reg_idx, &self.irqs, &*self.access)
    }

    fn write_config(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        let command_low = reg_idx * 4 == reg::COMMAND && offset == 0;
        if command_low && data.first().is_some_and(|b| b & COMMAND_BUS_MASTER != 0) {
            if let Some(gate) = &self.dma_ready {
                match gate.wait_for_dma(&self.name) {
                    Ok(()) => self.dma_ready = None,
                    Err(why) => {
                        match why {
                            NoDma::Stopping => {
                                log::info!("{}: bus mastering stays off: {why}", self.name)
                            }
                            NoDma::MapFailed(_) => log::error!(
                                "{}: bus mastering stays off, the device cannot DMA: {why}",
                                self.name
                            ),
                        }
                        // Only this write is changed, so only it is copied.
                        let mut refused = data.to_vec();
                        refused[0] &= !COMMAND_BUS_MASTER;
                        return self.config.write(
                            reg_idx,
                            offset,
                            &refused,
                            &mut self.irqs,
                            &*self.access,
                        );
                    }
                }
            }
        }
        self.config
            .write(reg_idx, offset, data, &mut self.irqs, &*self.access)
    }

    fn bars(&self) -> Vec<BarSpec> {
        self.config.shadow.bars()
    }

    fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError> {
        self.config.shadow.set_bar_address(index, addr)
    }

    fn read_bar(&mut self, index: BarIndex, offset: u64, data: &mut [u8]) {
        let Some(region_index) = self.bar_access(index, offset, data.len()) else {
            data.fill(0xff);
            return;
        };
        let msix = self.irqs.msix.as_ref().map(|m| &m.model);
        match msix.and_then(|m| m.region_at(index, offset).map(|r| (m, r))) {
            Some((m, MsixRegion::Table(o))) => m.read_table(o, data),
            Some((_, MsixRegion::Pba(o))) => self.irqs.msix_read_pba(o, data),
            None => self.access.region_read(region_index, offset, data),
        }
    }

    fn decode(&self) -> Decode {
        self.config.shadow.decode()
    }

    fn shutdown(&mut self) {
        self.release();
    }

    fn write_bar(&mut self, index: BarIndex, offset: u64, data: &[u8]) {
        if index.is_rom() {
            return;
        }
        let Some(region_index) = self.bar_access(index, offset, data.len()) else {
            return;
        };
        let msix = self.irqs.msix.as_ref().map(|m| &m.model);
        match msix.and_then(|m| m.region_at(index, offset)) {
            Some(MsixRegion::Table(o)) => self.irqs.msix_write_table(o, data),
            Some(MsixRegion::Pba(_)) => {}
            None => self.access.region_write(region_index, offset, data),
        }
    }
}

/// The BARs (and ROM) of the device behind `access`, sized through its config region without
/// building the guest's view of it: what the VMM needs to lay out the PCI windows before the
/// devices are attached.
pub fn probe_bars(name: &str, access: &dyn VfioDeviceAccess) -> Result<Vec<BarSpec>, DeviceError> {
    let bars = bars::discover(name, access).map_err(|reason| DeviceError::Bar {
        device: name.to_string(),
        reason,
    })?;
    Ok(bars.into_iter().map(|b| b.spec).collect())
}

/// When a device is reset: as it is opened, before the guest sees it, or as it is closed, after
/// the guest.
#[derive(Clone, Copy)]
enum Moment {
    Open,
    Close,
}

/// Resets the device behind `access` when `duty` is viaduct's, or says that the kernel does, at
/// `moment`; a device that cannot be reset gets a warning either way.
fn reset_or_log(name: &str, access: &dyn VfioDeviceAccess, duty: ResetDuty, moment: Moment) {
    let when = match moment {
        Moment::Open => "before the guest sees it",
        Moment::Close => "after the guest",
    };
    if duty == ResetDuty::Vmm {
        return log_reset(name, access.reset(), when);
    }
    match access.reset_supported() {
        Ok(true) => match moment {
            Moment::Open => log::info!("{name}: reset by vfio-pci as viaduct opened it"),
            Moment::Close => log::info!("{name}: vfio-pci resets it as viaduct closes it"),
        },
        Ok(false) => log_reset(name, ResetOutcome::Unsupported, when),
        Err(errno) => log::warn!(
            "{name}: cannot tell whether vfio-pci resets it {when} (VFIO_DEVICE_GET_INFO: {})",
            std::io::Error::from_raw_os_error(errno)
        ),
    }
}

/// Logs what a reset did (`when`: before the guest, after it).
fn log_reset(name: &str, outcome: ResetOutcome, when: &str) {
    match outcome {
        ResetOutcome::Done => log::info!("{name}: reset {when} (VFIO_DEVICE_RESET)"),
        ResetOutcome::Unsupported => log::warn!(
            "{name}: cannot be reset {when}: it has no reset method VFIO can use (no FLR, PM or \
             bus reset); it keeps whatever state it has"
        ),
        ResetOutcome::Failed(errno) => log::warn!(
            "{name}: reset {when} failed: {}",
            std::io::Error::from_raw_os_error(errno)
        ),
    }
}

/// The device's config space: 256 bytes, or 4 KiB for PCIe.
fn read_image(name: &str, access: &dyn VfioDeviceAccess) -> Result<Vec<u8>, DeviceError> {
    let size = access.region_info(region::CONFIG).map_or(0, |r| r.size);
    if size < 256 {
        return Err(DeviceError::ConfigSpace {
            device: name.to_string(),
            reason: format!("the VFIO config region has {size} bytes, fewer than 256"),
        });
    }
    // Whole dwords only: the image is read (and later walked) four bytes at a time, and a
    // region of, say, 258 bytes has no register in its last two.
    let size = (size.min(4096) as usize) & !3;
    let mut image = vec![0u8; size];
    for (i, dword) in image.chunks_mut(4).enumerate() {
        dword.copy_from_slice(&bars::read_u32(access, (i * 4) as u64).to_le_bytes());
    }
    if image[..2] == [0xff, 0xff] {
        return Err(DeviceError::ConfigSpace {
            device: name.to_string(),
            reason: "the vendor id reads 0xffff: the device is not responding".into(),
        });
    }
    Ok(image)
}

fn device_ids(image: &[u8]) -> DeviceIds {
    let u16_at = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]);
    DeviceIds {
        vendor_id: u16_at(reg::VENDOR_ID),
        device_id: u16_at(reg::DEVICE_ID),
        class: ClassCode {
            base: image[0x0b],
            sub: image[0x0a],
            prog_if: image[0x09],
        },
        revision_id: image[reg::REVISION_ID],
        subsystem_vendor_id: u16_at(reg::SUBSYSTEM_VENDOR_ID),
        subsystem_id: u16_at(reg::SUBSYSTEM_ID),
    }
}

fn u32_at(image: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([image[o], image[o + 1], image[o + 2], image[o + 3]])
}

/// Bytes of the MSI-X capability: ID, next, control, table and PBA registers.
const MSIX_CAP_LEN: usize = 12;

/// Refuses a capability of `len` bytes at `cap` that runs past the end of the config space
/// (a device, or a fuzzed image, may put one at 0xF8 or 0xFC of a 256-byte space).
fn fits(
    name: &str,
    what: &'static str,
    image: &[u8],
    cap: usize,
    len: usize,
) -> Result<(), DeviceError> {
    if cap + len <= image.len() {
        return Ok(());
    }
    Err(DeviceError::Capability {
        device: name.to_string(),
        what,
        reason: format!(
            "its {len}-byte capability at {cap:#x} runs past the end of the {}-byte config \
             space",
            image.len()
        ),
    })
}

/// The MSI-X model for the capability at `cap`, checked against the BARs.
fn msix_model(name: &str, image: &[u8], cap: usize, bars: &[HostBar]) -> Result<Msix, DeviceError> {
    let invalid = |reason: String| DeviceError::Capability {
        device: name.to_string(),
        what: "MSI-X",
        reason,
    };
    fits(name, "MSI-X", image, cap, MSIX_CAP_LEN)?;
    let control = u16::from_le_bytes([image[cap + 2], image[cap + 3]]);
    let layout =
        MsixLayout::from_registers(control, u32_at(image, cap + 4), u32_at(image, cap + 8))
            .map_err(|e| invalid(e.to_string()))?;
    let inside = |bar: BarIndex, offset: u32, len: u64| {
        bars.iter()
            .any(|b| b.spec.index == bar && u64::from(offset) + len <= b.spec.size)
    };
    if !inside(layout.table_bar, layout.table_offset, layout.table_len()) {
        return Err(invalid(format!(
            "its {}-entry table at {:#x} does not fit in {}",
            layout.table_size, layout.table_offset, layout.table_bar
        )));
    }
    if !inside(layout.pba_bar, layout.pba_offset, layout.pba_len()) {
        return Err(invalid(format!(
            "its PBA at {:#x} does not fit in {}",
            layout.pba_offset, layout.pba_bar
        )));
    }
    Msix::new(layout).map_err(|e| invalid(e.to_string()))
}

/// The MSI model for the capability at `cap`, with the device's read-only features.
fn msi_model(name: &str, image: &[u8], cap: usize) -> Result<Msi, DeviceError> {
    let control = u16::from_le_bytes([image[cap + 2], image[cap + 3]]);
    let addr64 = control & (1 << 7) != 0;
    let per_vector_mask = control & (1 << 8) != 0;
    // ID, next and control, the address (and its high half), the data, and with per-vector
    // masking the mask and pending bits.
    let len = match (addr64, per_vector_mask) {
        (false, false) => 10,
        (true, false) => 14,
        (false, true) => 20,
        (true, true) => 24,
    };
    fits(name, "MSI", image, cap, len)?;
    Msi::new(MsiFeatures {
        addr64,
        per_vector_mask,
        multiple_message_capable: ((control >> 1) & 0b111) as u8,
    })
    .map_err(|e| DeviceError::Capability {
        device: name.to_string(),
        what: "MSI",
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
