//! virtio-blk disks of a VM (`--disk`): each a virtio-pci device on its segment, its BAR placed
//! by the segment's allocator and trapped on the MMIO bus, its queue doorbells registered as KVM
//! ioeventfds so a notify wakes the device's worker without a trip through the vCPU exit path.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use devices::bus::Bus;
use devices::virtio::block::{BlockConfig, VirtioBlock};
use devices::virtio::pci::VirtioPciDevice;
use pci::address::Bdf;
use pci::allocator::{BarRequest, Space};
use pci::bar::{BarKind, BarMove, BarSpec};
use pci::device::PciDevice;
use pci::routing::InterruptRouter;

use crate::config::DiskConfig;
use crate::memory::GuestMemoryMmap;
use crate::pci::{BarRelocator, PciTopology};
use crate::pci_device::{move_trapped_bar, BarTrap, SharedDevice};
use crate::Error;

/// One disk on the PCI bus.
struct Disk {
    name: String,
    segment: u16,
    bdf: Bdf,
    device: Arc<Mutex<VirtioPciDevice>>,
    /// The BAR and its current guest address.
    bar: Mutex<(BarSpec, u64)>,
    /// Doorbells: offset in the BAR and the eventfd KVM signals.
    doorbells: Vec<(u64, EventFd)>,
}

/// All virtio-blk disks of the VM.
pub struct Disks {
    vm: Arc<VmFd>,
    mmio: Arc<Bus>,
    disks: Vec<Disk>,
    allocators: Vec<Arc<Mutex<pci::allocator::SegmentAllocator>>>,
}

fn disk_error(name: &str, what: impl std::fmt::Display) -> Error {
    Error::Disk(format!("disk {name}: {what}"))
}

fn register_doorbells(vm: &VmFd, doorbells: &[(u64, EventFd)], base: u64) -> Result<(), String> {
    for (offset, event) in doorbells {
        vm.register_ioevent(event, &IoEventAddress::Mmio(base + offset), NoDatamatch)
            .map_err(|e| format!("KVM_IOEVENTFD at {:#x}: {e}", base + offset))?;
    }
    Ok(())
}

fn unregister_doorbells(vm: &VmFd, doorbells: &[(u64, EventFd)], base: u64) {
    for (offset, event) in doorbells {
        if let Err(e) =
            vm.unregister_ioevent(event, &IoEventAddress::Mmio(base + offset), NoDatamatch)
        {
            warn!("removing the doorbell at {:#x}: {e}", base + offset);
        }
    }
}

impl Disks {
    /// Creates the disks of `configs` on their segments.
    pub fn attach(
        configs: &[DiskConfig],
        vm: &Arc<VmFd>,
        mem: &GuestMemoryMmap,
        pci: &PciTopology,
        mmio: &Arc<Bus>,
        router: Arc<dyn InterruptRouter>,
    ) -> Result<Arc<Self>, Error> {
        let mut disks = Vec::with_capacity(configs.len());
        let mem = Arc::new(mem.clone());
        for cfg in configs {
            let name = cfg
                .id
                .clone()
                .unwrap_or_else(|| cfg.path.display().to_string());
            let block = VirtioBlock::open(&BlockConfig {
                path: cfg.path.clone(),
                readonly: cfg.readonly,
                id: cfg.id.clone(),
                serial: cfg.serial.clone(),
            })
            .map_err(|e| Error::Disk(e.to_string()))?;
            let capacity = block.capacity_sectors();
            let mut device =
                VirtioPciDevice::new(Box::new(block), mem.clone(), router.clone(), BarKind::Mem64)
                    .map_err(|e| disk_error(&name, e))?;
            let segment = &pci.segments[usize::from(cfg.pci_segment)];
            let spec = *device
                .bars()
                .first()
                .ok_or_else(|| disk_error(&name, "the virtio device has no BAR"))?;
            let addr = segment
                .allocator
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allocate(BarRequest {
                    owner: format!("disk {name}"),
                    bar: spec.index.get(),
                    size: spec.size,
                    space: Space::Mem64,
                })
                .map_err(|e| Error::Disk(e.to_string()))?;
            device
                .set_bar_address(spec.index, addr)
                .map_err(|e| disk_error(&name, e))?;
            let doorbells = device
                .ioeventfds()
                .into_iter()
                .map(|(_, offset, event)| event.try_clone().map(|e| (offset, e)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::EventFd)?;
            let device = Arc::new(Mutex::new(device));
            let bdf = segment
                .bus
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add_device(Box::new(SharedDevice::new(
                    format!("disk {name}"),
                    device.clone(),
                )))
                .map_err(|e| disk_error(&name, e))?;
            mmio.insert(
                Arc::new(Mutex::new(BarTrap::new(device.clone(), spec.index))),
                addr,
                spec.size,
            )
            .map_err(|e| disk_error(&name, e))?;
            register_doorbells(vm, &doorbells, addr).map_err(|e| disk_error(&name, e))?;
            info!(
                "disk {name}: virtio-blk at {:04x}:{bdf}, {} sectors{}, BAR at {addr:#x}",
                cfg.pci_segment,
                capacity,
                if cfg.readonly { ", read-only" } else { "" }
            );
            disks.push(Disk {
                name,
                segment: cfg.pci_segment,
                bdf,
                device,
                bar: Mutex::new((spec, addr)),
                doorbells,
            });
        }
        let this = Arc::new(Disks {
            vm: vm.clone(),
            mmio: mmio.clone(),
            disks,
            allocators: pci.segments.iter().map(|s| s.allocator.clone()).collect(),
        });
        if !this.disks.is_empty() {
            pci.relocator
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(this.clone() as Arc<dyn BarRelocator>);
        }
        Ok(this)
    }
}

impl BarRelocator for Disks {
    fn move_bar(&self, segment: u16, bdf: Bdf, mv: &BarMove) {
        let Some(disk) = self
            .disks
            .iter()
            .find(|d| d.segment == segment && d.bdf == bdf)
        else {
            return;
        };
        let mut bar = disk.bar.lock().unwrap_or_else(|e| e.into_inner());
        let (spec, old) = *bar;
        if spec.index != mv.index {
            return;
        }
        unregister_doorbells(&self.vm, &disk.doorbells, old);
        move_trapped_bar(
            &format!("disk {}", disk.name),
            self.allocators.get(usize::from(segment)),
            &self.mmio,
            &disk.device,
            &spec,
            old,
            mv.new,
        );
        if let Err(e) = register_doorbells(&self.vm, &disk.doorbells, mv.new) {
            warn!(
                "disk {}: {e}; queue notifications will trap instead",
                disk.name
            );
        }
        *bar = (spec, mv.new);
        info!(
            "disk {}: guest moved its BAR from {old:#x} to {:#x}",
            disk.name, mv.new
        );
    }
}
