//! The device manager: the one owner of the VM's PCI segments, their buses and windows, slot,
//! BAR and memory-slot allocation, and the table of attached devices keyed by (segment, BDF).
//!
//! Every PCI device, emulated or passed through, enters and leaves the VM through one pipeline
//! ([`DeviceManager::attach`], [`DeviceManager::detach`]):
//!
//! 1. reserve a slot on the segment's root bus: the BDF the guest will see;
//! 2. build the device, with the INTx GSI the guest's `_PRT` gives that slot
//!    ([`Placement::intx_gsi`]) — only this step knows what kind of device it is (VFIO or
//!    virtio), and it hands back the device plus what backs its BARs (host memory to map
//!    straight into the guest, doorbells to register as ioeventfds);
//! 3. place every BAR in the segment's windows and program it;
//! 4. install each decoding BAR: a trap on the MMIO/port bus, memory slots, doorbells;
//! 5. put the device in its slot and record it.
//!
//! Detach runs the same steps backwards and frees every resource, so a re-attach gets the same
//! BDF, GSI and BAR addresses. An error in any step undoes the steps before it. Guest config
//! writes that move a BAR or change decoding come back here (through [`config_access`]) and are
//! applied under the same table, so a BAR is always mapped where the guest has it, or trapped,
//! or (decode off) not there at all.

mod bars;
mod config_access;
pub mod error;
pub mod guest_map;
pub mod topology;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, info, warn};

use arch::layout;
use devices::bus::{Bus, BusError};
use pci::address::{Bdf, SegmentId};
use pci::allocator::{BarRequest, SegmentAllocator, Space, ROM_BAR};
use pci::bar::{BarKind, BarMove, BarSpec};
use pci::config_space::{ConfigWriteEffect, Decode};
use pci::device::PciDevice;
use pci::error::PciError;
use pci::routing::Gsi;
use pci::segment::{PciSegment, RoutedWriteEffect, ECAM_WINDOW_SIZE};

use bars::{BarBacking, MapContext, Strictness};
pub use bars::{DirectArea, Doorbell, PAGE_SIZE};
use config_access::{EcamAccess, LegacyPortAccess};
pub use error::{AttachError, BuildError};
use guest_map::{GuestMappings, SlotAllocator};
use topology::SegmentWindows;
use vfio_dev::peer::PeerDmaError;

/// Where a device being attached will sit, for the step that builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The segment.
    pub segment: u16,
    /// The BDF the guest sees.
    pub bdf: Bdf,
}

impl Placement {
    /// The GSI INTx pin `pin` (1 = INTA … 4 = INTD, as the Interrupt Pin register holds it) of
    /// this slot raises, as the host bridge's `_PRT` tells the guest; `None` for pin 0 (no INTx).
    pub fn intx_gsi(&self, pin: u8) -> Option<Gsi> {
        (1..=4)
            .contains(&pin)
            .then(|| Gsi(layout::pci_intx_gsi(self.bdf.device(), pin - 1)))
    }
}

/// Peer-to-peer DMA: where a device's direct areas are DMA-mapped at their guest addresses so
/// the VM's other devices can reach them (the VFIO container). Behind a trait so the pipeline is
/// unit-tested without VFIO.
pub trait PeerDma: Send + Sync {
    /// Whether `[iova, iova + size)` can be mapped; the error says why not.
    fn check(&self, iova: u64, size: u64) -> Result<(), PeerDmaError>;
    /// DMA-maps `size` bytes of host memory at `host` at `iova`.
    ///
    /// # Safety
    /// `host..host + size` must stay mapped until [`PeerDma::unmap`] of the same range.
    unsafe fn map(&self, iova: u64, size: u64, host: usize) -> Result<(), PeerDmaError>;
    /// Undoes [`PeerDma::map`].
    fn unmap(&self, iova: u64, size: u64) -> Result<(), PeerDmaError>;
}

impl PeerDma for vfio_dev::container::VfioHost {
    fn check(&self, iova: u64, size: u64) -> Result<(), PeerDmaError> {
        self.check_peer(iova, size)
    }
    unsafe fn map(&self, iova: u64, size: u64, host: usize) -> Result<(), PeerDmaError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.map_peer(iova, size, host) }
    }
    fn unmap(&self, iova: u64, size: u64) -> Result<(), PeerDmaError> {
        self.unmap_peer(iova, size)
    }
}

/// What the building step hands the device manager.
pub struct PciFunction {
    /// The device as the segment and the BAR traps see it.
    pub device: Arc<Mutex<dyn PciDevice>>,
    /// Host memory to map straight into the guest, per BAR.
    pub direct: Vec<DirectArea>,
    /// Doorbells to register as KVM ioeventfds, per BAR.
    pub doorbells: Vec<Doorbell>,
    /// Where the direct areas are DMA-mapped for peer-to-peer (`None`: they are not).
    pub peer_dma: Option<Arc<dyn PeerDma>>,
}

/// An attached device, as `vm.info` and the logs describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedInfo {
    /// The device's id (`id=`, or its sysfs name or path).
    pub id: String,
    /// Its segment.
    pub segment: u16,
    /// Its BDF on that segment.
    pub bdf: Bdf,
    /// Its BARs: index, guest address, size.
    pub bars: Vec<(BarSpec, u64)>,
    /// Peer-to-peer DMA: `None` when the device's BARs are not DMA-mapped at all, `Ok` when
    /// every BAR area the guest maps can be, the first reason when one cannot.
    pub peer_dma: Option<Result<(), PeerDmaError>>,
}

/// One segment: its root bus and the allocator that places BARs in its windows.
struct Segment {
    windows: SegmentWindows,
    bus: Arc<Mutex<PciSegment>>,
    allocator: Mutex<SegmentAllocator>,
}

/// An attached device and the state of its BARs.
struct Attached {
    id: String,
    segment: u16,
    bdf: Bdf,
    device: Arc<Mutex<dyn PciDevice>>,
    peer_dma: Option<Arc<dyn PeerDma>>,
    state: Mutex<AttachedState>,
}

struct AttachedState {
    bars: Vec<BarBacking>,
    /// Set (under this lock) when detach starts: later config effects must not map anything.
    detached: bool,
}

/// The PCI side of the VM (see the module docs).
pub struct DeviceManager {
    guest: Arc<dyn GuestMappings>,
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    segments: Vec<Segment>,
    slots: SlotAllocator,
    first_slot: u32,
    devices: Mutex<BTreeMap<(u16, Bdf), Arc<Attached>>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The allocator space a BAR of `kind` comes from.
fn space_of(spec: &BarSpec) -> Space {
    match spec.kind {
        BarKind::Io => Space::Io,
        BarKind::Mem32 => Space::Mem32,
        BarKind::Mem64 => Space::Mem64,
    }
}

fn bar_number(spec: &BarSpec) -> u8 {
    if spec.index.is_rom() {
        ROM_BAR
    } else {
        spec.index.get()
    }
}

/// The PCI-bus view of a device the device manager also holds.
struct SharedDevice {
    name: String,
    device: Arc<Mutex<dyn PciDevice>>,
}

impl PciDevice for SharedDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn read_config(&self, reg_idx: usize) -> u32 {
        lock(&self.device).read_config(reg_idx)
    }
    fn write_config(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        lock(&self.device).write_config(reg_idx, offset, data)
    }
    fn bars(&self) -> Vec<BarSpec> {
        lock(&self.device).bars()
    }
    fn set_bar_address(&mut self, index: pci::bar::BarIndex, addr: u64) -> Result<(), PciError> {
        lock(&self.device).set_bar_address(index, addr)
    }
    fn decode(&self) -> Decode {
        lock(&self.device).decode()
    }
}

/// Why the config-access paths could not be put on the buses.
#[derive(Debug, thiserror::Error)]
#[error("PCI segment {segment}: cannot map its {what}")]
pub struct ConfigAccessError {
    /// The segment.
    pub segment: u16,
    /// "ECAM window" or "config ports".
    pub what: &'static str,
    /// The bus conflict.
    #[source]
    pub source: BusError,
}

impl DeviceManager {
    /// Creates the segments of `plan` with their config-access paths on `mmio` (ECAM) and `pio`
    /// (0xCF8 for segment 0). Memory slots for BARs are numbered from `first_slot`.
    pub fn new(
        plan: &[SegmentWindows],
        guest: Arc<dyn GuestMappings>,
        mmio: Arc<Bus>,
        pio: Arc<Bus>,
        first_slot: u32,
    ) -> Result<Arc<Self>, ConfigAccessError> {
        let segments: Vec<Segment> = plan
            .iter()
            .map(|w| {
                info!(
                    "PCI segment {:04x}: 32-bit MMIO {}, 64-bit MMIO {}, I/O {}",
                    w.id, w.mmio32, w.mmio64, w.io
                );
                Segment {
                    windows: *w,
                    bus: Arc::new(Mutex::new(PciSegment::new(SegmentId(w.id)))),
                    allocator: Mutex::new(SegmentAllocator::new(w.id, w.mmio32, w.mmio64, w.io)),
                }
            })
            .collect();
        let manager = Arc::new(Self {
            guest,
            mmio: mmio.clone(),
            pio: pio.clone(),
            segments,
            slots: SlotAllocator::new(first_slot),
            first_slot,
            devices: Mutex::new(BTreeMap::new()),
        });
        let weak = Arc::downgrade(&manager);
        for s in &manager.segments {
            let id = s.windows.id;
            let ecam = Arc::new(Mutex::new(EcamAccess::new(s.bus.clone(), weak.clone())));
            mmio.insert(ecam, layout::ecam_window(id), ECAM_WINDOW_SIZE)
                .map_err(|source| ConfigAccessError {
                    segment: id,
                    what: "ECAM window",
                    source,
                })?;
            if id == 0 {
                let ports = Arc::new(Mutex::new(LegacyPortAccess::new(
                    s.bus.clone(),
                    weak.clone(),
                )));
                pio.insert(
                    ports,
                    u64::from(layout::PCI_CONFIG_IO_PORT),
                    u64::from(layout::PCI_CONFIG_IO_PORT_COUNT),
                )
                .map_err(|source| ConfigAccessError {
                    segment: id,
                    what: "config ports (0xCF8)",
                    source,
                })?;
            }
        }
        Ok(manager)
    }

    /// The segments' windows, segment `i` at index `i`.
    pub fn segments(&self) -> Vec<SegmentWindows> {
        self.segments.iter().map(|s| s.windows).collect()
    }

    fn map_context<'a>(&'a self, attached: &'a Attached) -> MapContext<'a> {
        MapContext {
            name: &attached.id,
            device: &attached.device,
            guest: self.guest.as_ref(),
            slots: &self.slots,
            mmio: &self.mmio,
            pio: &self.pio,
            peer_dma: attached.peer_dma.as_deref(),
        }
    }

    fn segment(&self, id: u16, device: &str) -> Result<&Segment, AttachError> {
        self.segments
            .get(usize::from(id))
            .ok_or_else(|| AttachError::NoSuchSegment {
                device: device.to_string(),
                segment: id,
                count: self.segments.len(),
            })
    }

    /// Attaches the device `build` makes, as `id`, on segment `segment` (see the module docs
    /// for the pipeline). On an error nothing of it is left.
    pub fn attach<F>(&self, id: &str, segment: u16, build: F) -> Result<AttachedInfo, AttachError>
    where
        F: FnOnce(&Placement) -> Result<PciFunction, BuildError>,
    {
        if lock(&self.devices).values().any(|d| d.id == id) {
            return Err(AttachError::DuplicateId { id: id.to_string() });
        }
        let seg = self.segment(segment, id)?;
        let bdf = lock(&seg.bus)
            .reserve(id)
            .map_err(|source| AttachError::Slot {
                device: id.to_string(),
                segment,
                source,
            })?;
        let release_slot = || {
            lock(&seg.bus).remove(bdf);
        };
        let placement = Placement { segment, bdf };
        let function = match build(&placement) {
            Ok(f) => f,
            Err(source) => {
                release_slot();
                return Err(AttachError::Build {
                    device: id.to_string(),
                    source,
                });
            }
        };
        let bars = match self.place_bars(seg, id, &function) {
            Ok(bars) => bars,
            Err(e) => {
                release_slot();
                return Err(e);
            }
        };
        let attached = Arc::new(Attached {
            id: id.to_string(),
            segment,
            bdf,
            device: function.device.clone(),
            peer_dma: function.peer_dma.clone(),
            state: Mutex::new(AttachedState {
                bars: Vec::new(),
                detached: false,
            }),
        });
        let mut bars = bind_parts(bars, function.direct, function.doorbells);
        let decode = lock(&attached.device).decode();
        let cx = self.map_context(&attached);
        let mut failure = None;
        for bar in bars.iter_mut().filter(|b| decode.decodes(&b.spec)) {
            let exclusive = self.page_is_exclusive(seg, bar);
            if let Err(e) = bar.map(&cx, Strictness::All, exclusive) {
                failure = Some(e);
                break;
            }
        }
        if let Some(e) = failure {
            for bar in &mut bars {
                bar.unmap(&cx);
                bar.unmap_peer(&cx);
            }
            self.free_bars(seg, id, &bars);
            release_slot();
            lock(&attached.device).shutdown();
            return Err(e);
        }
        lock(&attached.state).bars = bars;
        let info = self.info_of(&attached);
        let shared = Box::new(SharedDevice {
            name: id.to_string(),
            device: attached.device.clone(),
        });
        if let Err(source) = lock(&seg.bus).install(bdf, shared) {
            self.teardown(&attached);
            return Err(AttachError::Slot {
                device: id.to_string(),
                segment,
                source,
            });
        }
        lock(&self.devices).insert((segment, bdf), attached);
        info!("{id}: guest sees it at {segment:04x}:{bdf}");
        Ok(info)
    }

    /// Places every BAR of `function` (largest first) and programs it into the device.
    fn place_bars(
        &self,
        seg: &Segment,
        id: &str,
        function: &PciFunction,
    ) -> Result<Vec<(BarSpec, u64)>, AttachError> {
        let mut device = lock(&function.device);
        let mut specs = device.bars();
        specs.sort_by_key(|s| std::cmp::Reverse(s.size));
        let mut placed: Vec<(BarSpec, u64)> = Vec::with_capacity(specs.len());
        let mut allocator = lock(&seg.allocator);
        for spec in specs {
            let result = allocator
                .allocate(BarRequest {
                    owner: id.to_string(),
                    bar: bar_number(&spec),
                    size: spec.size,
                    space: space_of(&spec),
                })
                .map_err(|source| AttachError::BarPlacement {
                    device: id.to_string(),
                    bar: spec.index,
                    source: Box::new(source),
                })
                .and_then(|addr| {
                    if let Err(source) = device.set_bar_address(spec.index, addr) {
                        let _ = allocator.free(space_of(&spec), addr, spec.size);
                        return Err(AttachError::BarRegister {
                            device: id.to_string(),
                            bar: spec.index,
                            source,
                        });
                    }
                    Ok(addr)
                });
            match result {
                Ok(addr) => {
                    info!(
                        "{id}: {} ({:?}, {} bytes) at {addr:#x} on segment {}",
                        spec.index, spec.kind, spec.size, seg.windows.id
                    );
                    placed.push((spec, addr));
                }
                Err(e) => {
                    for (spec, addr) in &placed {
                        let _ = allocator.free(space_of(spec), *addr, spec.size);
                    }
                    return Err(e);
                }
            }
        }
        placed.sort_by_key(|(s, _)| s.index);
        Ok(placed)
    }

    /// Whether a memory slot covering whole pages may back `bar` at its address: a BAR of a
    /// page or more always; a smaller one only when it starts a page and no other BAR of the
    /// segment lies in the rest of that page.
    fn page_is_exclusive(&self, seg: &Segment, bar: &BarBacking) -> bool {
        if bar.spec.size >= PAGE_SIZE {
            return true;
        }
        bar.addr.is_multiple_of(PAGE_SIZE)
            && lock(&seg.allocator).only_owner(space_of(&bar.spec), bar.addr, PAGE_SIZE)
    }

    fn free_bars(&self, seg: &Segment, id: &str, bars: &[BarBacking]) {
        let mut allocator = lock(&seg.allocator);
        for bar in bars {
            if let Err(e) = allocator.free(space_of(&bar.spec), bar.addr, bar.spec.size) {
                warn!("{id}: freeing {}: {e}", bar.spec.index);
            }
        }
    }

    /// Undoes everything attach did for `attached` except the table entry.
    fn teardown(&self, attached: &Attached) {
        let seg = &self.segments[usize::from(attached.segment)];
        lock(&seg.bus).remove(attached.bdf);
        let mut state = lock(&attached.state);
        state.detached = true;
        let cx = self.map_context(attached);
        for bar in &mut state.bars {
            bar.unmap(&cx);
            bar.unmap_peer(&cx);
        }
        self.free_bars(seg, &attached.id, &state.bars);
        // The mappings and doorbells go with the BARs, after their slots were cleared.
        state.bars.clear();
        drop(state);
        lock(&attached.device).shutdown();
    }

    /// Detaches the device with id `id`: the attach pipeline backwards. Returns where it was.
    pub fn detach(&self, id: &str) -> Result<AttachedInfo, AttachError> {
        let attached = {
            let mut devices = lock(&self.devices);
            let key = devices
                .iter()
                .find(|(_, d)| d.id == id)
                .map(|(k, _)| *k)
                .ok_or_else(|| AttachError::NotAttached { id: id.to_string() })?;
            devices.remove(&key).expect("the key was just found")
        };
        let info = self.info_of(&attached);
        self.teardown(&attached);
        info!(
            "{id}: detached from {:04x}:{}",
            attached.segment, attached.bdf
        );
        Ok(info)
    }

    /// Detaches every device, last attached first (VM teardown).
    pub fn detach_all(&self) {
        let all: Vec<Arc<Attached>> = {
            let mut devices = lock(&self.devices);
            let mut all: Vec<_> = std::mem::take(&mut *devices).into_values().collect();
            all.reverse();
            all
        };
        for attached in all {
            self.teardown(&attached);
        }
    }

    fn info_of(&self, attached: &Attached) -> AttachedInfo {
        let state = lock(&attached.state);
        let peer_dma = attached.peer_dma.as_deref().map(|peer| {
            state
                .bars
                .iter()
                .filter_map(|b| b.peer_reachable(peer))
                .find(Result::is_err)
                .unwrap_or(Ok(()))
        });
        AttachedInfo {
            id: attached.id.clone(),
            segment: attached.segment,
            bdf: attached.bdf,
            bars: state.bars.iter().map(|b| (b.spec, b.addr)).collect(),
            peer_dma,
        }
    }

    /// Every attached device, in (segment, BDF) order.
    pub fn devices(&self) -> Vec<AttachedInfo> {
        let all: Vec<Arc<Attached>> = lock(&self.devices).values().cloned().collect();
        all.iter().map(|a| self.info_of(a)).collect()
    }

    /// Memory slots used by BARs now (for tests and leak checks).
    pub fn memory_slots_in_use(&self) -> u32 {
        self.slots.in_use(self.first_slot)
    }

    /// Acts on a guest config write to `routed.bdf` of `segment` (called with the segment
    /// locked, so effects apply in the guest's order): BAR moves, then the decode state.
    fn apply_config_effect(&self, segment: &mut PciSegment, routed: RoutedWriteEffect) {
        let id = segment.id().0;
        let Some(attached) = lock(&self.devices).get(&(id, routed.bdf)).cloned() else {
            return;
        };
        let seg = &self.segments[usize::from(id)];
        let mut state = lock(&attached.state);
        if state.detached {
            return;
        }
        for mv in &routed.effect.bar_moves {
            self.move_bar(seg, &attached, &mut state, mv);
        }
        if let Some(decode) = routed.effect.decode {
            self.follow_decode(seg, &attached, &mut state, decode);
        }
    }

    /// The guest moved a BAR: take it from the old address, install it at the new one. A move
    /// the segment cannot take (outside its windows, over another BAR) or that cannot be
    /// trapped there is refused: the BAR register goes back to the old address and the old
    /// mapping stays, as if the write had been dropped.
    fn move_bar(
        &self,
        seg: &Segment,
        attached: &Attached,
        state: &mut AttachedState,
        mv: &BarMove,
    ) {
        let Some(i) = state.bars.iter().position(|b| b.spec.index == mv.index) else {
            return;
        };
        let cx = self.map_context(attached);
        let old = state.bars[i].addr;
        if old == mv.new {
            return;
        }
        let spec = state.bars[i].spec;
        let space = space_of(&spec);
        let relocated = lock(&seg.allocator).relocate(space, old, mv.new, spec.size);
        if let Err(e) = relocated {
            state.bars[i].warn_once(
                &attached.id,
                format_args!(
                    "the guest moved it to {:#x}, which this segment cannot give it ({e}); it stays at {old:#x}",
                    mv.new
                ),
            );
            self.restore_register(attached, spec, old);
            return;
        }
        let was_mapped = state.bars[i].is_mapped();
        state.bars[i].unmap(&cx);
        state.bars[i].unmap_peer(&cx);
        state.bars[i].addr = mv.new;
        if was_mapped {
            let exclusive = self.page_is_exclusive(seg, &state.bars[i]);
            if let Err(e) = state.bars[i].map(&cx, Strictness::TrapOnly, exclusive) {
                state.bars[i].warn_once(
                    &attached.id,
                    format_args!(
                        "cannot follow the guest to {:#x} ({}); it stays at {old:#x}",
                        mv.new,
                        crate::error_chain(&e)
                    ),
                );
                if let Err(e) = lock(&seg.allocator).relocate(space, mv.new, old, spec.size) {
                    warn!("{}: {}: {e}", attached.id, spec.index);
                }
                state.bars[i].addr = old;
                let exclusive = self.page_is_exclusive(seg, &state.bars[i]);
                if let Err(e) = state.bars[i].map(&cx, Strictness::TrapOnly, exclusive) {
                    warn!("{}: {}", attached.id, crate::error_chain(&e));
                }
                self.restore_register(attached, spec, old);
                return;
            }
        }
        info!(
            "{}: guest moved {} from {old:#x} to {:#x}{}",
            attached.id,
            spec.index,
            mv.new,
            if was_mapped { "" } else { " (not decoding)" }
        );
    }

    fn restore_register(&self, attached: &Attached, spec: BarSpec, addr: u64) {
        if let Err(e) = lock(&attached.device).set_bar_address(spec.index, addr) {
            warn!("{}: restoring {}: {e}", attached.id, spec.index);
        }
    }

    /// Installs the BARs the device now decodes and removes the ones it no longer does.
    fn follow_decode(
        &self,
        seg: &Segment,
        attached: &Attached,
        state: &mut AttachedState,
        decode: Decode,
    ) {
        let cx = self.map_context(attached);
        for i in 0..state.bars.len() {
            let want = decode.decodes(&state.bars[i].spec);
            match (want, state.bars[i].is_mapped()) {
                (true, false) => {
                    let exclusive = self.page_is_exclusive(seg, &state.bars[i]);
                    let addr = state.bars[i].addr;
                    if let Err(e) = state.bars[i].map(&cx, Strictness::TrapOnly, exclusive) {
                        state.bars[i].warn_once(
                            &attached.id,
                            format_args!("cannot decode at {addr:#x}: {}", crate::error_chain(&e)),
                        );
                    } else {
                        debug!(
                            "{}: {} decodes at {addr:#x}",
                            attached.id, state.bars[i].spec.index
                        );
                    }
                }
                (false, true) => {
                    state.bars[i].unmap(&cx);
                    debug!(
                        "{}: {} stopped decoding",
                        attached.id, state.bars[i].spec.index
                    );
                }
                _ => {}
            }
        }
    }
}

/// Sorts the device's direct areas and doorbells onto its placed BARs.
fn bind_parts(
    placed: Vec<(BarSpec, u64)>,
    direct: Vec<DirectArea>,
    doorbells: Vec<Doorbell>,
) -> Vec<BarBacking> {
    let mut direct = direct;
    let mut doorbells = doorbells;
    placed
        .into_iter()
        .map(|(spec, addr)| {
            let (mine, rest): (Vec<_>, Vec<_>) =
                direct.drain(..).partition(|a| a.bar == spec.index);
            direct = rest;
            let (bells, rest): (Vec<_>, Vec<_>) =
                doorbells.drain(..).partition(|d| d.bar == spec.index);
            doorbells = rest;
            BarBacking::new(spec, addr, mine, bells)
        })
        .collect()
}

impl Drop for DeviceManager {
    fn drop(&mut self) {
        self.detach_all();
    }
}
