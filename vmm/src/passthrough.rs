//! Passthrough devices (`--device`): the VM's one VFIO container, created with the first
//! device; guest RAM DMA-mapped into it once; and each host device opened into it and attached
//! through the device manager, which gives it its slot (and so its INTx GSI) before it is built.
//! What is VFIO's own here is only that: the container, the RAM mapping, building a
//! [`VfioPciDevice`], mmapping the BAR areas the manager maps into the guest, and — with
//! `--platform vfio_p2p_dma=on` — handing the container to the manager so those areas are
//! DMA-mapped at their guest addresses for peer-to-peer, and the GPUDirect clique capability
//! added once that is known to work.
//!
//! Cold-plugged devices are opened ([`Passthrough::open_for_boot`]) before the PCI windows are
//! laid out, so the layout can keep the 64-bit windows inside the host IOMMU's reach
//! ([`Passthrough::iova_ranges`]); then they are attached ([`Passthrough::attach_opened`]), and
//! guest RAM is DMA-mapped on a thread of its own while the guest boots
//! ([`Passthrough::start_ram_map`], see [`ram_dma`]); a VM that stops meanwhile stops that
//! mapping first ([`Passthrough::stop_ram_map`]). A device hot-plugged into a VM without one
//! maps guest RAM before it is attached.
//!
//! Teardown order (see `vfio_dev::container`): the device manager detaches the devices first
//! (peer mappings, memory slots, mmaps, interrupts, a reset, device fds), then
//! [`Passthrough::release`] unmaps guest RAM and drops the container.

mod ram_dma;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::exit::{ExitNotifier, ExitReason};
use kvm_ioctls::VmFd;
use log::{error, info, warn};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use pci::bar::BarSpec;
use pci::config_space::reg;
use vfio_dev::access::{region, ResetDuty, VfioDeviceAccess};
use vfio_dev::container::{OpenedDevice, VfioHost};
use vfio_dev::device::VfioPciDevice;
use vfio_dev::dma::{DmaStats, GuestRamRegion};
use vfio_dev::error::VfioError;
use vfio_dev::iommu_info::IovaRange;
use vfio_dev::routing::InterruptRouter;
use vfio_dev::sysfs::DeviceKind;

use crate::config::PassthroughDeviceConfig;
use crate::device_manager::guest_map::HostMapping;
use crate::device_manager::{
    AttachError, AttachedInfo, BuildError, DeviceManager, DirectArea, PciFunction, PeerDma,
    Placement, PAGE_SIZE,
};
use crate::memory::GuestMemoryMmap;

/// The VFIO state of the VM: the container (once a device exists) and what is mapped in it.
pub struct Passthrough {
    vm: Arc<VmFd>,
    router: Arc<dyn InterruptRouter>,
    ram: Vec<GuestRamRegion>,
    peer_to_peer: bool,
    prefaults: Prefaults,
    state: Mutex<State>,
    /// The mapping beside the booting guest, for [`Passthrough::stop_ram_map`]: outside
    /// `state`, which a hot-plug holds while it waits for that mapping.
    boot_map: Mutex<Option<Arc<ram_dma::RamDmaMap>>>,
    /// Set by [`Passthrough::stop_ram_map`]: the VM is stopping, so nothing maps guest RAM.
    stopping: AtomicBool,
}

/// Guest RAM to prefault in parallel just before it is first DMA-mapped (when
/// `memory::prefault_before_pin` says so), so the pin finds every page present instead of
/// faulting and zeroing them on one thread.
#[derive(Clone)]
pub struct PrefaultBeforeMap {
    /// The guest's RAM.
    pub mem: GuestMemoryMmap,
    /// Its page size.
    pub page_size: u64,
    /// How many threads may do it.
    pub threads: usize,
}

/// When guest RAM is prefaulted before its DMA mapping: at start (beside the booting guest) and
/// when a first device is hot-plugged into a VM without one.
pub struct Prefaults {
    /// At start.
    pub at_start: Option<PrefaultBeforeMap>,
    /// At the first hot-plug.
    pub hot_plug: Option<PrefaultBeforeMap>,
    /// Before the mapping beside the booting guest, and while a vCPU waits at the bus-master
    /// gate for it, unless `at_start` prefaulted it all; `None` with `prefault=off`.
    pub while_held: Option<PrefaultWhileHeld>,
}

/// How guest RAM is populated before its DMA map beside the booting guest: from the bottom up
/// by the map thread, and from the top down while vCPUs are held at the bus-master gate (see
/// `ram_dma`), whose CPUs are idle until the mapping is done.
#[derive(Clone, Copy, Debug)]
pub struct PrefaultWhileHeld {
    /// Guest RAM's page size.
    pub page_size: u64,
    /// Whether it is hugetlbfs.
    pub hugetlb: bool,
    /// At most this many threads (the CPUs the process may use), and no more than vCPUs held.
    pub threads: usize,
}

#[derive(Default)]
struct State {
    host: Option<Arc<VfioHost>>,
    ram_mapped: bool,
    /// Guest RAM's mapping beside the booting guest, until it has ended.
    ram_map: Option<Arc<ram_dma::RamDmaMap>>,
    /// Why that mapping failed, until the VM's end reports it.
    ram_map_failure: Option<String>,
    attached: Vec<String>,
}

/// A host device opened into the container and not attached yet.
pub struct OpenedPassthrough {
    cfg: PassthroughDeviceConfig,
    device: OpenedDevice,
    bars: Vec<BarSpec>,
}

impl OpenedPassthrough {
    /// The device's segment and BARs, for the layout.
    pub fn demand(&self) -> impl Iterator<Item = (u16, BarSpec)> + '_ {
        self.bars.iter().map(|b| (self.cfg.pci_segment, *b))
    }

    fn id(&self) -> String {
        self.cfg
            .id
            .clone()
            .unwrap_or_else(|| self.device.name.clone())
    }
}

/// The `-v` line for guest RAM DMA-mapped for the passed-through devices: how much, how fast,
/// `when` (empty, or where the start was), and what backs it.
fn log_ram_mapped(stats: &DmaStats, when: &str) {
    info!(
        "DMA-mapped {:.2} GiB of guest RAM in {:?} ({:.1} ms per GiB){when}; {}",
        stats.bytes as f64 / (1u64 << 30) as f64,
        stats.elapsed,
        stats.per_gib().as_secs_f64() * 1000.0,
        crate::memory::huge_backing_summary()
    );
}

/// Prefaults `p` for the DMA mapping that follows, until `stop` is set, on its threads.
fn prefault_before_map(p: &PrefaultBeforeMap, stop: &AtomicBool) {
    let result = crate::memory::prefault_until(&p.mem, p.page_size, false, p.threads, stop);
    log_populated(result, |stats| {
        format!(
            "guest RAM prefaulted for DMA mapping: {} MiB in {:?} with {} thread(s){}; VmRSS {} \
             MiB (passthrough with {} GiB or more of private memory and CPUs to share it out; \
             prefault=off skips this)",
            stats.bytes >> 20,
            stats.elapsed,
            stats.threads,
            touched(stats),
            crate::memory::resident_bytes().0 >> 20,
            crate::memory::BEFORE_PIN_MIN_BYTES >> 30
        )
    });
}

/// The map thread's share of [`crate::memory::TwoEnds`]: guest RAM populated from the bottom
/// up until it meets the helpers (once a vCPU is held at the gate) or the top, so that the pin
/// that follows finds every page present and does not wait for their populates.
fn populate_from_bottom(two: &crate::memory::TwoEnds, stop: &AtomicBool) {
    log_populated(two.from_bottom(stop), |stats| {
        format!(
            "guest RAM: the DMA map's thread populated {} MiB of it from the bottom up in \
             {:?}{}, before pinning it",
            stats.bytes >> 20,
            stats.elapsed,
            touched(stats)
        )
    });
}

/// Logs a populate of guest RAM before its DMA mapping: `done` gives the line for one that
/// completed. A failure only costs time (the pin faults the pages itself), so it is a warning.
fn log_populated(
    result: Result<crate::memory::PrefaultStats, crate::memory::MemoryError>,
    done: impl FnOnce(&crate::memory::PrefaultStats) -> String,
) {
    match result {
        Ok(stats) if stats.stopped => info!(
            "populating guest RAM for DMA mapping stopped after {} MiB in {:?}: the VM is \
             stopping",
            stats.bytes >> 20,
            stats.elapsed
        ),
        Ok(stats) => info!("{}", done(&stats)),
        Err(e) => warn!(
            "guest RAM could not be populated before DMA mapping ({}); the mapping faults the \
             pages in itself, on one thread",
            crate::error_chain(&e)
        ),
    }
}

/// What the `-v` line of a populate adds when it had to touch pages one by one.
fn touched(stats: &crate::memory::PrefaultStats) -> &'static str {
    if stats.touched {
        ", touching each page: no MADV_POPULATE_WRITE"
    } else {
        ""
    }
}

/// Ends a mapping beside the guest, if one was started: waits for its thread and records how
/// it went (a mapping created but never started ends failed, with nothing mapped).
fn settle_ram_map(state: &mut State) {
    let Some(map) = state.ram_map.take() else {
        return;
    };
    match map.finish() {
        ram_dma::MapEnd::Mapped => state.ram_mapped = true,
        ram_dma::MapEnd::Stopped => {}
        ram_dma::MapEnd::Failed(why) => {
            state.ram_map_failure.get_or_insert(why);
        }
    }
}

fn build_error(device: &str, source: impl Into<BuildError>) -> AttachError {
    AttachError::Build {
        device: device.to_string(),
        source: source.into(),
    }
}

impl Passthrough {
    /// No container yet: it is created with the first device, so a VM without `--device`
    /// needs no VFIO at all. `peer_to_peer` is `--platform vfio_p2p_dma`; `prefaults`, RAM to
    /// prefault before the first DMA mapping (at start or, for a first device hot-plugged,
    /// then).
    pub fn new(
        vm: Arc<VmFd>,
        mem: &GuestMemoryMmap,
        router: Arc<dyn InterruptRouter>,
        peer_to_peer: bool,
        prefaults: Prefaults,
    ) -> Self {
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
            peer_to_peer,
            prefaults,
            state: Mutex::new(State::default()),
            boot_map: Mutex::new(None),
            stopping: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the host device of `cfg` into the container (creating it, and DMA-mapping guest
    /// RAM, with the first device) and sizes its BARs.
    pub fn open(&self, cfg: &PassthroughDeviceConfig) -> Result<OpenedPassthrough, AttachError> {
        self.open_device(cfg, false)
    }

    /// Opens a cold-plugged device like [`Passthrough::open`], but leaves guest RAM to be
    /// DMA-mapped by [`Passthrough::start_ram_map`] while the guest boots.
    pub fn open_for_boot(
        &self,
        cfg: &PassthroughDeviceConfig,
    ) -> Result<OpenedPassthrough, AttachError> {
        self.open_device(cfg, true)
    }

    /// Opens every cold-plugged device of `cfgs` like [`Passthrough::open_for_boot`], each on
    /// a thread of its own, and gives them back in the order of `cfgs` (the first error in that
    /// order, once every open has ended). The kernel resets each device as it is opened: an FLR
    /// waits 100 ms, a GPU's secondary bus reset a second or more, and in parallel they add up
    /// to the longest instead of the sum.
    pub fn open_all_for_boot(
        &self,
        cfgs: &[PassthroughDeviceConfig],
    ) -> Result<Vec<OpenedPassthrough>, AttachError> {
        if cfgs.len() < 2 {
            return cfgs.iter().map(|c| self.open_for_boot(c)).collect();
        }
        std::thread::scope(|scope| {
            let opens: Vec<_> = cfgs
                .iter()
                .enumerate()
                .map(|(i, cfg)| {
                    let thread = std::thread::Builder::new()
                        .name(format!("vfio-open{i}"))
                        .spawn_scoped(scope, move || self.open_for_boot(cfg));
                    // No thread to be had: this one opens it, when its turn comes.
                    thread.map_err(|_| cfg)
                })
                .collect();
            opens
                .into_iter()
                .map(|open| match open {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    Err(cfg) => self.open_for_boot(cfg),
                })
                .collect()
        })
    }

    fn open_device(
        &self,
        cfg: &PassthroughDeviceConfig,
        for_boot: bool,
    ) -> Result<OpenedPassthrough, AttachError> {
        let path = cfg.path.display().to_string();
        let mut state = self.state();
        if !for_boot {
            // A hot-plug waits for a mapping still running beside the guest (cold-plugged
            // devices share the one not started yet).
            settle_ram_map(&mut state);
            if self.stopping.load(Ordering::Acquire) {
                let total = self.ram.iter().map(|r| r.size).sum();
                return Err(build_error(
                    &path,
                    VfioError::DmaStopped { mapped: 0, total },
                ));
            }
        }
        if state.host.is_none() {
            let host = VfioHost::new(&self.vm).map_err(|e| build_error(&path, e))?;
            state.host = Some(Arc::new(host));
        }
        let host = state.host.clone().expect("the container was just created");
        // Cold-plugged devices are opened without the lock, so that several are opened (and
        // reset by the kernel) at once; a hot-plug keeps it, to see the mapping through.
        let device = if for_boot {
            drop(state);
            let device = host.open_device(&cfg.path);
            state = self.state();
            device
        } else {
            host.open_device(&cfg.path)
        }
        .map_err(|e| build_error(&path, e))?;
        let id = cfg.id.clone().unwrap_or_else(|| device.name.clone());
        if let Ok(methods) = std::fs::read_to_string(device.path.join("reset_method")) {
            info!("{id}: the kernel resets it with: {}", methods.trim());
        }
        if for_boot {
            if !state.ram_mapped && state.ram_map.is_none() {
                let map = Arc::new(ram_dma::RamDmaMap::new());
                *self.boot_map.lock().unwrap_or_else(|e| e.into_inner()) = Some(map.clone());
                state.ram_map = Some(map);
            }
        } else if !state.ram_mapped {
            if let Some(p) = &self.prefaults.hot_plug {
                prefault_before_map(p, &self.stopping);
            }
            // SAFETY: the regions are the VM's guest RAM; it stays mapped until after the VM
            // and this container are gone (`release` unmaps it first), and the VMM touches it
            // only through volatile accesses. A VM stopping meanwhile ends it between pieces.
            let stats = unsafe { host.map_guest_memory_until(&self.ram, &self.stopping) }
                .map_err(|e| build_error(&id, e))?;
            state.ram_mapped = true;
            log_ram_mapped(&stats, "");
        }
        let bars = vfio_dev::device::probe_bars(&id, device.device.as_ref())
            .map_err(|e| build_error(&id, e))?;
        Ok(OpenedPassthrough {
            cfg: cfg.clone(),
            device,
            bars,
        })
    }

    /// The IOVA ranges the container's IOMMU translates, when peer-to-peer is on and a device
    /// is open (the layout keeps the 64-bit windows inside them).
    pub fn iova_ranges(&self) -> Option<Vec<IovaRange>> {
        if !self.peer_to_peer {
            return None;
        }
        let host = self.state().host.clone()?;
        host.iommu_info().iova_ranges
    }

    /// Opens and attaches the device of `cfg` (hot-plug: the windows are already laid out).
    pub fn attach(
        &self,
        manager: &DeviceManager,
        cfg: &PassthroughDeviceConfig,
    ) -> Result<AttachedInfo, AttachError> {
        let opened = self.open(cfg)?;
        self.attach_opened(manager, opened)
    }

    /// Forgets device `id` after the device manager detached it.
    pub fn forget(&self, id: &str) {
        self.state().attached.retain(|a| a != id);
    }

    /// Attaches a device [`Passthrough::open`] opened.
    pub fn attach_opened(
        &self,
        manager: &DeviceManager,
        opened: OpenedPassthrough,
    ) -> Result<AttachedInfo, AttachError> {
        let id = opened.id();
        let host = self
            .state()
            .host
            .clone()
            .expect("a device was opened, so the container exists");
        let peer_dma = self.peer_to_peer.then(|| host.clone() as Arc<dyn PeerDma>);
        let access: Arc<dyn VfioDeviceAccess> = opened.device.device.clone();
        let reset = match opened.device.kind {
            DeviceKind::Pci => ResetDuty::Kernel,
            DeviceKind::Mdev { .. } => ResetDuty::Vmm,
        };
        let router = self.router.clone();
        let mut built: Option<Arc<Mutex<VfioPciDevice>>> = None;
        let info = manager.attach(&id, opened.cfg.pci_segment, |placement| {
            let f = build_device(&id, access, reset, router, placement, peer_dma)?;
            built = Some(f.1);
            Ok(f.0)
        })?;
        let device = built.expect("attach succeeded, so the device was built");
        if let Some(map) = &self.state().ram_map {
            // Cold plug: the guest has not run yet, so it sees the device only with the gate.
            device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_dma_ready(map.gate());
        }
        match &info.peer_dma {
            Some(Ok(())) => info!("{id}: its BARs are DMA-mapped for peer-to-peer"),
            Some(Err(e)) => warn!(
                "{id}: no peer-to-peer DMA to it: {e}. Devices cannot reach its BARs; for \
                 peer-to-peer give the host an IOMMU with more address bits (QEMU: \
                 intel-iommu,aw-bits=48), put fewer or smaller devices on its segment, or give \
                 the segment a larger mmio64_aperture_weight"
            ),
            None => {}
        }
        if let Some(clique) = opened.cfg.gpudirect_clique {
            match &info.peer_dma {
                Some(Ok(())) => {
                    let added = device
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .add_gpudirect_clique(clique);
                    if let Err(e) = added {
                        let _ = manager.detach(&id);
                        return Err(build_error(&id, e));
                    }
                }
                Some(Err(_)) | None => warn!(
                    "{id}: not adding the GPUDirect clique capability (x_nv_gpudirect_clique=\
                     {clique}): peer-to-peer DMA to this device does not work (see above), and \
                     the clique would tell the guest driver it does"
                ),
            }
        }
        self.state().attached.push(id);
        Ok(info)
    }

    /// Starts DMA-mapping guest RAM on a thread of its own (prefaulting it first when
    /// [`crate::memory::prefault_before_pin`] says so), when cold-plugged devices were opened
    /// with [`Passthrough::open_for_boot`]. Call after they are attached and before the guest
    /// starts. What can be checked before pinning (IOVA ranges, RLIMIT_MEMLOCK) is checked here;
    /// a later failure is logged, stops the VM through `exit`, and is reported by
    /// [`Passthrough::take_ram_map_failure`]. The thread runs with the VMM thread's seccomp
    /// filter.
    pub fn start_ram_map(
        &self,
        filters: &crate::seccomp::Filters,
        exit: &ExitNotifier,
    ) -> Result<(), AttachError> {
        let state = self.state();
        let (Some(map), Some(host)) = (state.ram_map.clone(), state.host.clone()) else {
            return Ok(());
        };
        drop(state);
        host.check_guest_memory(&self.ram)
            .map_err(|e| build_error("guest RAM", e))?;
        let bytes: u64 = self.ram.iter().map(|r| r.size).sum();
        info!(
            "DMA-mapping {} MiB of guest RAM on a thread of its own while the guest boots; \
             passed-through devices get bus mastering once it is mapped",
            bytes >> 20
        );
        let ram = self.ram.clone();
        let prefault = self.prefaults.at_start.clone();
        // Unless prefault=off, the map thread populates guest RAM from the bottom up and then
        // pins it, and vCPUs held at the gate lend their CPUs from the top down. A prefault
        // before the map leaves nothing to populate, so then neither runs.
        let while_held = self.prefaults.while_held.filter(|_| prefault.is_none());
        let two_ends = while_held.map(|help| {
            let regions: Vec<(usize, u64)> = self
                .ram
                .iter()
                .map(|r| (r.host_addr as usize, r.size))
                .collect();
            Arc::new(crate::memory::TwoEnds::new(
                &regions,
                help.page_size,
                help.hugetlb,
            ))
        });
        let bottom = two_ends.clone();
        let helper_filters = filters.clone();
        let (filters, exit) = (filters.clone(), exit.clone());
        let stop = map.stopping();
        let started = Instant::now();
        let map_ram = move || {
            let result = filters
                .apply(crate::seccomp::ThreadKind::Vmm)
                .map_err(|e| crate::error_chain(&e))
                .and_then(|()| {
                    if let Some(p) = &prefault {
                        prefault_before_map(p, &stop);
                    }
                    if let Some(two) = &bottom {
                        populate_from_bottom(two, &stop);
                    }
                    // SAFETY: the regions are the VM's guest RAM; it stays mapped until after
                    // the VM and this container are gone (`release` waits for this thread,
                    // then unmaps it), and the VMM touches it only through volatile accesses.
                    unsafe { host.map_guest_memory_until(&ram, &stop) }
                        .map_err(|e| crate::error_chain(&e))
                });
            if stop.load(Ordering::Acquire) && result.is_err() {
                // The VM is stopping: not a failure, and nothing to stop it for.
                info!(
                    "guest RAM's DMA mapping given up {:?} after it started: {}",
                    started.elapsed(),
                    result.as_ref().err().map_or("", String::as_str)
                );
                return result.map(|_| ());
            }
            match &result {
                Ok(stats) => log_ram_mapped(
                    stats,
                    &format!(
                        " beside the booting guest, {:?} after it started",
                        started.elapsed()
                    ),
                ),
                Err(why) => {
                    error!(
                        "guest RAM could not be DMA-mapped for the passed-through devices: \
                         {why}; stopping the VM"
                    );
                    exit.notify(ExitReason::Failure);
                }
            }
            result.map(|_| ())
        };
        map.start(map_ram).map_err(|e| AttachError::Build {
            device: "guest RAM".to_string(),
            source: BuildError::Thread(e),
        })?;
        if let (Some(help), Some(two)) = (while_held, two_ends) {
            let helper = move |held: usize, done: &AtomicBool| {
                if let Err(e) = helper_filters.apply(crate::seccomp::ThreadKind::Vmm) {
                    warn!("the DMA map's helper: {}", crate::error_chain(&e));
                    return;
                }
                let threads = held.min(help.threads).max(1);
                match two.from_top(threads, done) {
                    Ok(stats) => info!(
                        "guest RAM: with {held} vCPU(s) held at the bus-master gate, {threads} \
                         thread(s) populated {} MiB of it from the top down in {:?}{}",
                        stats.bytes >> 20,
                        stats.elapsed,
                        if stats.stopped {
                            " (stopped there: the mapping had settled)"
                        } else {
                            ""
                        }
                    ),
                    Err(e) => warn!(
                        "guest RAM could not be populated beside its DMA map ({}); the pin \
                         faults the pages in itself",
                        crate::error_chain(&e)
                    ),
                }
            };
            if let Err(e) = map.start_helper(helper) {
                warn!("no thread to help the DMA map of guest RAM ({e}); it runs alone");
            }
        }
        Ok(())
    }

    /// The VM is stopping: a mapping of guest RAM still running beside the guest is told to
    /// end at its next piece, and a vCPU whose device waits for it is let go (the device stays
    /// without bus mastering); a hot-plug from now on is refused. Does not wait for the mapping
    /// ([`Passthrough::finish_ram_map`] does).
    pub fn stop_ram_map(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(map) = self
            .boot_map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            map.stop();
        }
    }

    /// Waits for guest RAM's mapping beside the guest ([`Passthrough::start_ram_map`]) to end.
    /// Teardown calls it before anything is detached.
    pub fn finish_ram_map(&self) {
        settle_ram_map(&mut self.state());
    }

    /// Why guest RAM's mapping beside the guest failed, if it did (once).
    pub fn take_ram_map_failure(&self) -> Option<String> {
        let mut state = self.state();
        settle_ram_map(&mut state);
        state.ram_map_failure.take()
    }

    /// Unmaps guest RAM from the IOMMU and closes the container. Call after the device manager
    /// detached every device.
    pub fn release(&self) {
        let mut state = self.state();
        settle_ram_map(&mut state);
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
    reset: ResetDuty,
    router: Arc<dyn InterruptRouter>,
    placement: &Placement,
    peer_dma: Option<Arc<dyn PeerDma>>,
) -> Result<(PciFunction, Arc<Mutex<VfioPciDevice>>), BuildError> {
    let mut pin = [0u8];
    access.region_read(region::CONFIG, reg::INTERRUPT_PIN as u64, &mut pin);
    let intx_gsi = placement.intx_gsi(pin[0]);
    let device = VfioPciDevice::new(id.to_string(), access, router, intx_gsi, reset)?;
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
    let device = Arc::new(Mutex::new(device));
    Ok((
        PciFunction {
            device: device.clone(),
            direct,
            doorbells: Vec::new(),
            peer_dma,
        },
        device,
    ))
}
