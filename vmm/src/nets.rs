//! virtio-net NICs (`--net`): each a virtio-pci device on its already-open tap, attached through
//! the device manager like a disk, its queue doorbells registered as KVM ioeventfds.

use std::sync::{Arc, Mutex};

use log::info;

use devices::virtio::net::{NetDeviceConfig, VirtioNet};
use devices::virtio::pci::VirtioPciDevice;
use pci::bar::BarKind;
use pci::routing::InterruptRouter;

use crate::config::NetConfig;
use crate::device_manager::{
    AttachError, AttachedInfo, BuildError, DeviceManager, Doorbell, PciFunction,
};
use crate::memory::GuestMemoryMmap;

/// Attaches the NIC of `cfg`, DMA into `mem`, interrupts through `router`.
pub fn attach(
    manager: &DeviceManager,
    cfg: &NetConfig,
    mem: &Arc<GuestMemoryMmap>,
    router: &Arc<dyn InterruptRouter>,
) -> Result<AttachedInfo, AttachError> {
    let name = cfg.name();
    let pairs = cfg.taps.0.len();
    let info = manager.attach(&format!("net {name}"), cfg.pci_segment, |_placement| {
        let net = VirtioNet::new(NetDeviceConfig {
            name: format!("net {name}"),
            taps: cfg.taps.0.clone(),
            mac: cfg.mac,
            queue_size: cfg.queue_size,
            offloads: cfg.offloads,
        });
        let device =
            VirtioPciDevice::new(Box::new(net), mem.clone(), router.clone(), BarKind::Mem64)?;
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
        "net {name}: virtio-net at {:04x}:{}, tap {}, mac {}, {pairs} queue pair(s)",
        info.segment,
        info.bdf,
        cfg.taps.name(),
        cfg.mac
    );
    Ok(info)
}
