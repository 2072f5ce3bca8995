//! virtio-blk disks (`--disk`): each a virtio-pci device attached through the device manager,
//! with its queue doorbells handed over to be registered as KVM ioeventfds, so a notify wakes
//! the device's worker without a trip through the vCPU exit path.

use std::sync::{Arc, Mutex};

use log::info;

use devices::virtio::block::{BlockConfig, BlockError, OpenedAs, VirtioBlock};
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

fn block_config(cfg: &DiskConfig) -> BlockConfig {
    BlockConfig {
        path: cfg.path.clone(),
        image_type: cfg.image_type,
        backing_files: cfg.backing_files,
        num_queues: cfg.num_queues,
        queue_size: cfg.queue_size,
        readonly: cfg.readonly,
        id: cfg.id.clone(),
        serial: cfg.serial.clone(),
    }
}

/// Opens the disk of `cfg` as the VM will, and closes it again: the CLI's check, before
/// anything starts, that the image can be served (its format, its backing chain, its lock).
pub fn probe(cfg: &DiskConfig) -> Result<OpenedAs, BlockError> {
    VirtioBlock::open(&block_config(cfg)).map(|block| block.opened_as())
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
    let mut opened = None;
    let info = manager.attach(&format!("disk {id}"), cfg.pci_segment, |_placement| {
        let block = VirtioBlock::open(&block_config(cfg))?;
        sectors = block.capacity_sectors();
        opened = Some(block.opened_as());
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
    let format = opened.map_or("", |o| match (o.image_type.name(), o.guessed) {
        ("qcow2", true) => ", qcow2 (from its magic)",
        ("qcow2", false) => ", qcow2",
        _ => "",
    });
    info!(
        "disk {id}: virtio-blk at {:04x}:{}, {sectors} sectors{format}{}, {} queue(s)",
        info.segment,
        info.bdf,
        if cfg.readonly { ", read-only" } else { "" },
        cfg.num_queues
    );
    Ok(info)
}
