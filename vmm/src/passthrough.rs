//! Passthrough devices (`--device`): the VM's one VFIO container, created with the first
//! device; guest RAM DMA-mapped into it once; and each host device opened into it and attached
//! through the device manager, which gives it its slot (and so its INTx GSI) before it is built.
//! What is VFIO's own here is only that: the container, the RAM mapping, building a
//! [`VfioPciDevice`] and mmapping the BAR areas the manager maps into the guest.
//!
//! Teardown order (see `vfio_dev::container`): the device manager detaches the devices first
//! (memory slots, mmaps, interrupts, device fds), then [`Passthrough::release`] unmaps guest RAM
//! and drops the container.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use log::{info, warn};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use pci::config_space::reg;
use vfio_dev::access::{region, VfioDeviceAccess};
use vfio_dev::container::VfioHost;
use vfio_dev::device::VfioPciDevice;
use vfio_dev::dma::GuestRamRegion;
use vfio_dev::routing::InterruptRouter;

use crate::config::PassthroughDeviceConfig;
use crate::device_manager::guest_map::HostMapping;
use crate::device_manager::{
    AttachError, AttachedInfo, BuildError, DeviceManager, DirectArea, PciFunction, Placement,
    PAGE_SIZE,
};
use crate::memory::GuestMemoryMmap;

/// The VFIO state of the VM: the container (once a device exists) and what is mapped in it.
pub struct Passthrough {
    vm: Arc<VmFd>,
    router: Arc<dyn InterruptRouter>,
    ram: Vec<GuestRamRegion>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    host: Option<VfioHost>,
    ram_mapped: bool,
    attached: Vec<String>,
}

fn build_error(device: &str, source: impl Into<BuildError>) -> AttachError {
    AttachError::Build {
        device: device.to_string(),
        source: source.into(),
    }
}

impl Passthrough {
    /// No container yet: it is created with the first device, so a VM without `--device`
    /// needs no VFIO at all.
    pub fn new(vm: Arc<VmFd>, mem: &GuestMemoryMmap, router: Arc<dyn InterruptRouter>) -> Self {
        let ram = mem
            .iter()
            .map(|r| GuestRamRegion {
                gpa: r.start_addr().0,
                size: r.len(),
                host_addr: r.as_ptr(),
            })
            .collect();
        Self {
            vm,
            router,
            ram,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the host device of `cfg` into the container and attaches it through `manager`.
    pub fn attach(
        &self,
        manager: &DeviceManager,
        cfg: &PassthroughDeviceConfig,
    ) -> Result<AttachedInfo, AttachError> {
        let path = cfg.path.display().to_string();
        let mut state = self.state();
        if state.host.is_none() {
            state.host = Some(VfioHost::new(&self.vm).map_err(|e| build_error(&path, e))?);
        }
        let host = state.host.as_ref().expect("the container was just created");
        let opened = host
            .open_device(&cfg.path)
            .map_err(|e| build_error(&path, e))?;
        let id = cfg.id.clone().unwrap_or_else(|| opened.name.clone());
        if !state.ram_mapped {
            // SAFETY: the regions are the VM's guest RAM; it stays mapped until after the VM
            // and this container are gone (`release` unmaps it first), and the VMM touches it
            // only through volatile accesses.
            let stats =
                unsafe { host.map_guest_memory(&self.ram) }.map_err(|e| build_error(&id, e))?;
            state.ram_mapped = true;
            let gib = stats.bytes as f64 / (1u64 << 30) as f64;
            info!(
                "DMA-mapped {gib:.2} GiB of guest RAM in {:?} ({:.1} ms per GiB)",
                stats.elapsed,
                stats.per_gib().as_secs_f64() * 1000.0
            );
        }
        let access: Arc<dyn VfioDeviceAccess> = opened.device.clone();
        let router = self.router.clone();
        let info = manager.attach(&id, cfg.pci_segment, |placement| {
            build_device(&id, access, router, placement, cfg.gpudirect_clique)
        })?;
        state.attached.push(id);
        Ok(info)
    }

    /// Unmaps guest RAM from the IOMMU and closes the container. Call after the device manager
    /// detached every device.
    pub fn release(&self) {
        let mut state = self.state();
        if !state.attached.is_empty() {
            info!("releasing {} passthrough device(s)", state.attached.len());
        }
        if let Some(host) = state.host.take() {
            if state.ram_mapped {
                if let Err(e) = host.unmap_guest_memory(&self.ram) {
                    warn!("unmapping guest RAM from the IOMMU: {e}");
                }
            }
            drop(host);
        }
        state.attached.clear();
        state.ram_mapped = false;
    }
}

/// Builds the guest's view of the device at `placement`: INTx on the GSI of its slot, and its
/// mmappable BAR areas mapped from the device fd.
fn build_device(
    id: &str,
    access: Arc<dyn VfioDeviceAccess>,
    router: Arc<dyn InterruptRouter>,
    placement: &Placement,
    clique: Option<u8>,
) -> Result<PciFunction, BuildError> {
    let mut pin = [0u8];
    access.region_read(region::CONFIG, reg::INTERRUPT_PIN as u64, &mut pin);
    let intx_gsi = placement.intx_gsi(pin[0]);
    let device = VfioPciDevice::new(id.to_string(), access, router, intx_gsi, clique)?;
    let fd = device.device_fd();
    let mut direct = Vec::new();
    for area in device.mmap_areas() {
        // Memory slots are page-granular: a BAR smaller than a page is mapped as a whole page
        // (the allocator gives it a page of its own).
        let size = area.size.next_multiple_of(PAGE_SIZE);
        let mapping = HostMapping::map_fd(
            fd,
            area.region_offset,
            size,
            area.prot_read,
            area.prot_write,
        )
        .map_err(|source| BuildError::Mmap {
            bar: area.bar,
            offset: area.offset,
            size,
            source,
        })?;
        direct.push(DirectArea {
            bar: area.bar,
            offset: area.offset,
            mapping,
        });
    }
    Ok(PciFunction {
        device: Arc::new(Mutex::new(device)),
        direct,
        doorbells: Vec::new(),
    })
}
