//! Passthrough devices of a VM: each `--device` opened through VFIO, its BARs placed in its
//! segment's windows, the mappable parts of its BARs installed as KVM memory slots (guest accesses
//! never exit), the rest trapped on the MMIO/port bus, guest RAM DMA-mapped for it, and BAR
//! moves by the guest followed. Teardown undoes it in order: device interrupts, memory slots and
//! mmaps, bus ranges, DMA mappings, then the VFIO container.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use log::{info, warn};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use arch::layout;
use devices::bus::Bus;
use pci::address::Bdf;
use pci::allocator::{BarRequest, ROM_BAR};
use pci::bar::{BarIndex, BarKind, BarMove, BarSpec};
use pci::device::PciDevice;
use vfio_dev::access::{region, VfioDeviceAccess};
use vfio_dev::container::VfioHost;
use vfio_dev::device::VfioPciDevice;
use vfio_dev::dma::GuestRamRegion;
use vfio_dev::routing::{Gsi, InterruptRouter};

use crate::config::PassthroughDeviceConfig;
use crate::memory::GuestMemoryMmap;
use crate::pci::{BarRelocator, PciTopology};
use crate::pci_device::{move_trapped_bar, space_of, BarTrap, SharedDevice};
use crate::Error;

/// Hands out KVM memory slot numbers above the RAM slots.
pub struct SlotAllocator {
    next: AtomicU32,
    free: Mutex<Vec<u32>>,
}

impl SlotAllocator {
    /// Slots from `first` on.
    pub fn new(first: u32) -> Self {
        Self {
            next: AtomicU32::new(first),
            free: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> u32 {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn give_back(&self, slot: u32) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
    }
}

/// One mmapped BAR area and the memory slot that shows it to the guest.
struct AreaMapping {
    bar: BarIndex,
    offset: u64,
    size: u64,
    host: usize,
    slot: u32,
}

/// A passed-through device and everything that backs it.
struct PassedDevice {
    name: String,
    segment: u16,
    bdf: Bdf,
    device: Arc<Mutex<VfioPciDevice>>,
    /// BAR → (guest address, spec).
    bars: Mutex<Vec<(BarSpec, u64)>>,
    areas: Mutex<Vec<AreaMapping>>,
}

/// All passthrough devices of the VM.
pub struct Passthrough {
    shut_down: std::sync::atomic::AtomicBool,
    vm: Arc<VmFd>,
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    slots: Arc<SlotAllocator>,
    devices: Vec<Arc<PassedDevice>>,
    ram: Vec<GuestRamRegion>,
    host: Option<VfioHost>,
    allocators: Vec<Arc<Mutex<pci::allocator::SegmentAllocator>>>,
}

fn bar_number(index: BarIndex) -> u8 {
    if index.is_rom() {
        ROM_BAR
    } else {
        index.get()
    }
}

fn set_slot(vm: &VmFd, slot: u32, gpa: u64, size: u64, host: usize) -> Result<(), String> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host as u64,
    };
    // SAFETY: `host..host+size` is a live MAP_SHARED mapping of the device region owned by the
    // `AreaMapping` that records this slot; the slot is removed (size 0) before it is unmapped.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| e.to_string())
}

/// Maps `size` bytes of the device fd at `offset`.
fn mmap_region(fd: i32, offset: u64, size: u64, read: bool, write: bool) -> Result<usize, String> {
    let mut prot = 0;
    if read {
        prot |= libc::PROT_READ;
    }
    if write {
        prot |= libc::PROT_WRITE;
    }
    // SAFETY: a fresh shared mapping of a VFIO region; the kernel validates fd, offset and size.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            prot,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(addr as usize)
}

fn munmap(host: usize, size: u64) {
    // SAFETY: `host` was returned by mmap for `size` bytes and no memory slot refers to it any
    // more.
    unsafe { libc::munmap(host as *mut libc::c_void, size as usize) };
}

fn device_error(name: &str, what: impl std::fmt::Display) -> Error {
    Error::Passthrough(format!("passthrough device {name}: {what}"))
}

impl Passthrough {
    /// Opens and wires every `--device`. With none, nothing is opened (no VFIO needed).
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        configs: &[PassthroughDeviceConfig],
        vm: &Arc<VmFd>,
        mem: &GuestMemoryMmap,
        pci: &PciTopology,
        mmio: &Arc<Bus>,
        pio: &Arc<Bus>,
        router: Arc<dyn InterruptRouter>,
    ) -> Result<Arc<Self>, Error> {
        let ram: Vec<GuestRamRegion> = mem
            .iter()
            .map(|r| GuestRamRegion {
                gpa: r.start_addr().0,
                size: r.len(),
                host_addr: r.as_ptr(),
            })
            .collect();
        let mut this = Passthrough {
            shut_down: std::sync::atomic::AtomicBool::new(false),
            vm: vm.clone(),
            mmio: mmio.clone(),
            pio: pio.clone(),
            slots: Arc::new(SlotAllocator::new(mem.num_regions() as u32)),
            devices: Vec::new(),
            ram,
            host: None,
            allocators: pci.segments.iter().map(|s| s.allocator.clone()).collect(),
        };
        if configs.is_empty() {
            return Ok(Arc::new(this));
        }
        let host = VfioHost::new(vm).map_err(|e| Error::Passthrough(e.to_string()))?;
        let mut opened = Vec::with_capacity(configs.len());
        for cfg in configs {
            let dev = host
                .open_device(&cfg.path)
                .map_err(|e| Error::Passthrough(e.to_string()))?;
            opened.push((cfg, dev));
        }
        // SAFETY: the regions are the VM's guest RAM from `GuestMemoryMmap`; they stay mapped for
        // the VM's lifetime (the mapping is removed in `shutdown`, before the memory is freed) and
        // the VMM itself only touches them through volatile accesses.
        let stats = unsafe { host.map_guest_memory(&this.ram) }
            .map_err(|e| Error::Passthrough(e.to_string()))?;
        let gib = stats.bytes as f64 / f64::from(1u32 << 30);
        info!(
            "DMA-mapped {:.2} GiB of guest RAM in {:?} ({:.1} ms per GiB)",
            gib,
            stats.elapsed,
            stats.elapsed.as_secs_f64() * 1000.0 / gib.max(1e-9)
        );
        this.host = Some(host);
        for (cfg, dev) in opened {
            let name = cfg.id.clone().unwrap_or_else(|| dev.name.clone());
            let passed = this.wire_device(cfg, &name, dev.device.clone(), pci, router.clone())?;
            this.devices.push(passed);
        }
        let this = Arc::new(this);
        pci.relocator
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(this.clone() as Arc<dyn BarRelocator>);
        Ok(this)
    }

    fn wire_device(
        &self,
        cfg: &PassthroughDeviceConfig,
        name: &str,
        access: Arc<vfio_ioctls::VfioDevice>,
        pci: &PciTopology,
        router: Arc<dyn InterruptRouter>,
    ) -> Result<Arc<PassedDevice>, Error> {
        let segment = &pci.segments[usize::from(cfg.pci_segment)];
        // The device will take the next free slot: the host bridge is slot 0.
        let slot = segment
            .bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .devices()
            .count() as u8;
        let mut pin = [0u8];
        VfioDeviceAccess::region_read(access.as_ref(), region::CONFIG, 0x3d, &mut pin);
        let intx_gsi = match pin[0] {
            1..=4 => Some(Gsi(layout::pci_intx_gsi(slot, pin[0] - 1))),
            _ => None,
        };
        let access: Arc<dyn VfioDeviceAccess> = access;
        let mut device = VfioPciDevice::new(
            name.to_string(),
            access,
            router,
            intx_gsi,
            cfg.gpudirect_clique,
        )
        .map_err(|e| Error::Passthrough(format!("passthrough device {e}")))?;

        let mut specs = device.bars();
        specs.sort_by_key(|s| std::cmp::Reverse(s.size));
        let mut bars = Vec::with_capacity(specs.len());
        {
            let mut allocator = segment.allocator.lock().unwrap_or_else(|e| e.into_inner());
            for spec in specs {
                let addr = allocator
                    .allocate(BarRequest {
                        owner: name.to_string(),
                        bar: bar_number(spec.index),
                        size: spec.size,
                        space: space_of(spec.kind),
                    })
                    .map_err(|e| Error::Passthrough(e.to_string()))?;
                device
                    .set_bar_address(spec.index, addr)
                    .map_err(|e| device_error(name, e))?;
                info!(
                    "{name}: BAR {:?} ({:?}, {} bytes) at {addr:#x} on segment {}",
                    spec.index, spec.kind, spec.size, cfg.pci_segment
                );
                bars.push((spec, addr));
            }
        }
        let device = Arc::new(Mutex::new(device));
        let bdf = segment
            .bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(Box::new(SharedDevice::new(
                name.to_string(),
                device.clone(),
            )))
            .map_err(|e| device_error(name, e))?;
        info!("{name}: guest sees it at {:04x}:{bdf}", cfg.pci_segment);

        let passed = Arc::new(PassedDevice {
            name: name.to_string(),
            segment: cfg.pci_segment,
            bdf,
            device,
            bars: Mutex::new(bars.clone()),
            areas: Mutex::new(Vec::new()),
        });
        for (spec, addr) in &bars {
            self.map_bar(&passed, spec, *addr)?;
        }
        Ok(passed)
    }

    fn bus_for(&self, kind: BarKind) -> &Bus {
        match kind {
            BarKind::Io => &self.pio,
            _ => &self.mmio,
        }
    }

    /// Traps the whole BAR on its bus and maps its mappable areas over the trap.
    fn map_bar(&self, dev: &PassedDevice, spec: &BarSpec, addr: u64) -> Result<(), Error> {
        let trap = Arc::new(Mutex::new(BarTrap::new(dev.device.clone(), spec.index)));
        self.bus_for(spec.kind)
            .insert(trap, addr, spec.size)
            .map_err(|e| device_error(&dev.name, format!("BAR {:?}: {e}", spec.index)))?;
        if spec.kind == BarKind::Io {
            return Ok(());
        }
        let (areas, fd) = {
            let d = dev.device.lock().unwrap_or_else(|e| e.into_inner());
            (d.mmap_areas(), d.device_fd())
        };
        for mut area in areas.into_iter().filter(|a| a.bar == spec.index) {
            // KVM slots are page-granular: a BAR smaller than a page is mapped as a whole page
            // (the allocator gave it a page of its own).
            area.size = area.size.next_multiple_of(vfio_dev::sparse::PAGE_SIZE);
            let host = mmap_region(
                fd,
                area.region_offset,
                area.size,
                area.prot_read,
                area.prot_write,
            )
            .map_err(|e| {
                device_error(
                    &dev.name,
                    format!("mmap of BAR {:?} area {:#x}: {e}", spec.index, area.offset),
                )
            })?;
            let slot = self.slots.take();
            if let Err(e) = set_slot(&self.vm, slot, addr + area.offset, area.size, host) {
                munmap(host, area.size);
                self.slots.give_back(slot);
                return Err(device_error(
                    &dev.name,
                    format!(
                        "memory slot for BAR {:?} at {:#x}: {e}",
                        spec.index,
                        addr + area.offset
                    ),
                ));
            }
            dev.areas
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(AreaMapping {
                    bar: spec.index,
                    offset: area.offset,
                    size: area.size,
                    host,
                    slot,
                });
        }
        Ok(())
    }

    /// Undoes everything: interrupts, slots, mmaps, bus ranges, DMA mappings. Runs once; the
    /// container closes when the last reference goes.
    pub fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) || self.devices.is_empty() {
            return;
        }
        info!("releasing {} passthrough device(s)", self.devices.len());
        for dev in &self.devices {
            dev.device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .shutdown();
            for area in dev
                .areas
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                if let Err(e) = set_slot(&self.vm, area.slot, 0, 0, area.host) {
                    warn!("{}: removing memory slot {}: {e}", dev.name, area.slot);
                }
                munmap(area.host, area.size);
                self.slots.give_back(area.slot);
            }
            for (spec, addr) in dev.bars.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                self.bus_for(spec.kind).remove(*addr);
            }
        }
        if let Some(host) = &self.host {
            if let Err(e) = host.unmap_guest_memory(&self.ram) {
                warn!("unmapping guest RAM from the IOMMU: {e}");
            }
        }
    }
}

impl BarRelocator for Passthrough {
    fn move_bar(&self, segment: u16, bdf: Bdf, mv: &BarMove) {
        let Some(dev) = self
            .devices
            .iter()
            .find(|d| d.segment == segment && d.bdf == bdf)
        else {
            return;
        };
        let mut bars = dev.bars.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = bars.iter_mut().find(|(s, _)| s.index == mv.index) else {
            return;
        };
        let (spec, old) = *entry;
        move_trapped_bar(
            &dev.name,
            self.allocators.get(usize::from(segment)),
            self.bus_for(spec.kind),
            &dev.device,
            &spec,
            old,
            mv.new,
        );
        for area in dev
            .areas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|a| a.bar == spec.index)
        {
            let res = set_slot(&self.vm, area.slot, 0, 0, area.host).and_then(|()| {
                set_slot(
                    &self.vm,
                    area.slot,
                    mv.new + area.offset,
                    area.size,
                    area.host,
                )
            });
            if let Err(e) = res {
                warn!("{}: moving BAR {:?} memory slot: {e}", dev.name, mv.index);
            }
        }
        *entry = (spec, mv.new);
        info!(
            "{}: guest moved BAR {:?} from {old:#x} to {:#x}",
            dev.name, mv.index, mv.new
        );
    }
}

/// Shuts the passthrough devices down when the VM ends, on every path out of `run`, and breaks
/// the reference cycle through the config-access paths' relocator slot.
pub struct PassthroughGuard {
    /// The devices.
    pub passthrough: Arc<Passthrough>,
    /// The slot the config-access paths reach the relocator through.
    pub relocator: crate::pci::RelocatorSlot,
}

impl Drop for PassthroughGuard {
    fn drop(&mut self) {
        self.relocator
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.passthrough.shutdown();
    }
}
