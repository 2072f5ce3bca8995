//! virtio-blk disks (`--disk`): each a virtio-pci device attached through the device manager,
//! with its queue doorbells handed over to be registered as KVM ioeventfds, so a notify wakes
//! the device's worker without a trip through the vCPU exit path.

use std::sync::{Arc, Mutex};

use log::info;

use devices::virtio::block::{BlockConfig, VirtioBlock};
use devices::virtio::pci::VirtioPciDevice;
use pci::bar::BarKind;
use pci::routing::InterruptRouter;

use crate::config::DiskConfig;
use crate::device_manager::{
    AttachError, AttachedInfo, BuildError, DeviceManager, Doorbell, PciFunction,
};
use crate::memory::GuestMemoryMmap;

/// The BAR every disk needs (for the layout, before the disks exist).
pub fn bar_spec() -> pci::bar::BarSpec {
    pci::bar::BarSpec::new(
        devices::virtio::pci::layout::VIRTIO_BAR,
        devices::virtio::pci::layout::BAR_SIZE,
        BarKind::Mem64,
    )
}

/// Attaches the disk of `cfg`, DMA into `mem`, interrupts through `router`.
pub fn attach(
    manager: &DeviceManager,
    cfg: &DiskConfig,
    mem: &Arc<GuestMemoryMmap>,
    router: &Arc<dyn InterruptRouter>,
) -> Result<AttachedInfo, AttachError> {
    let id = cfg
        .id
        .clone()
        .unwrap_or_else(|| cfg.path.display().to_string());
    let mut sectors = 0;
    let info = manager.attach(&format!("disk {id}"), cfg.pci_segment, |_placement| {
        let block = VirtioBlock::open(&BlockConfig {
            path: cfg.path.clone(),
            readonly: cfg.readonly,
            id: cfg.id.clone(),
            serial: cfg.serial.clone(),
        })?;
        sectors = block.capacity_sectors();
        let device =
            VirtioPciDevice::new(Box::new(block), mem.clone(), router.clone(), BarKind::Mem64)?;
        let doorbells = device
            .ioeventfds()
            .into_iter()
            .map(|(bar, offset, event)| {
                event
                    .try_clone()
                    .map(|event| Doorbell { bar, offset, event })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(BuildError::EventFd)?;
        Ok(PciFunction {
            device: Arc::new(Mutex::new(device)),
            direct: Vec::new(),
            doorbells,
            peer_dma: None,
        })
    })?;
    info!(
        "disk {id}: virtio-blk at {:04x}:{}, {sectors} sectors{}",
        info.segment,
        info.bdf,
        if cfg.readonly { ", read-only" } else { "" }
    );
    Ok(info)
}
