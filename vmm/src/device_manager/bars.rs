//! One BAR of an attached device and what backs it in the guest: a trap over the whole BAR on
//! the MMIO or port bus (accesses nothing else claims reach the device model), KVM memory slots
//! for the parts mapped straight from host memory (a passthrough BAR's mmap), and KVM
//! ioeventfds for doorbells (a virtio queue notify).
//!
//! [`BarBacking::map`] installs all of that at a guest address and [`BarBacking::unmap`] takes
//! it away again: the device manager calls them when the device is attached or detached, when
//! the guest moves the BAR and when the guest turns decoding on or off. Only the trap is
//! essential (the device model answers every byte of the BAR through it); a memory slot or a
//! doorbell that cannot be installed at a guest-chosen address leaves that part trapped, which
//! is slower but correct.

use std::sync::{Arc, Mutex};

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use devices::bus::{Bus, BusDevice};
use pci::bar::{BarIndex, BarKind, BarSpec};
use pci::device::PciDevice;

use super::error::AttachError;
use super::guest_map::{GuestMappings, HostMapping, SlotAllocator};
use super::PeerDma;
use vfio_dev::peer::PeerDmaError;

/// Granularity of KVM memory slots.
pub const PAGE_SIZE: u64 = 4096;

/// Host memory a device wants shown at `offset` of one of its BARs (a VFIO mmap area).
pub struct DirectArea {
    /// The BAR.
    pub bar: BarIndex,
    /// Offset of the area in the BAR (page aligned).
    pub offset: u64,
    /// The host memory; its size is a multiple of the page size.
    pub mapping: HostMapping,
}

/// A doorbell a device wants as a KVM ioeventfd at `offset` of one of its BARs.
pub struct Doorbell {
    /// The BAR.
    pub bar: BarIndex,
    /// Offset of the doorbell register in the BAR.
    pub offset: u64,
    /// Signalled by KVM on a guest write there.
    pub event: EventFd,
}

/// The trapped part of one BAR, on the MMIO or port bus.
pub struct BarTrap {
    device: Arc<Mutex<dyn PciDevice>>,
    bar: BarIndex,
}

impl BarTrap {
    /// Traps `bar` of `device`.
    pub fn new(device: Arc<Mutex<dyn PciDevice>>, bar: BarIndex) -> Self {
        Self { device, bar }
    }
}

impl BusDevice for BarTrap {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_bar(self.bar, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_bar(self.bar, offset, data)
    }
}

/// A direct area and the memory slot showing it, while mapped.
struct Area {
    offset: u64,
    mapping: HostMapping,
    slot: Option<u32>,
    /// Where it is DMA-mapped for peer-to-peer (the BAR's address plus `offset`), if it is.
    /// Unlike the memory slot this stays while the guest has decoding off: the physical
    /// device's decoding is off too (the command register reaches it), so a peer's DMA gets no
    /// answer, as on bare metal, and a guest that toggles decoding while it sizes BARs (Linux
    /// does, per BAR, at boot) does not remap gigabytes of BAR in the IOMMU each time.
    peer_mapped: Option<u64>,
}

/// A doorbell and whether KVM watches it now.
struct Bell {
    offset: u64,
    event: EventFd,
    registered: bool,
}

/// What the device manager needs to change the guest's address space.
pub struct MapContext<'a> {
    /// The device, for messages.
    pub name: &'a str,
    /// The device, for the trap.
    pub device: &'a Arc<Mutex<dyn PciDevice>>,
    /// KVM memory slots and ioeventfds.
    pub guest: &'a dyn GuestMappings,
    /// Memory slot numbers.
    pub slots: &'a SlotAllocator,
    /// The MMIO bus.
    pub mmio: &'a Bus,
    /// The port bus.
    pub pio: &'a Bus,
    /// Where direct areas are DMA-mapped for peer-to-peer, if they are.
    pub peer_dma: Option<&'a dyn PeerDma>,
}

impl MapContext<'_> {
    fn bus(&self, kind: BarKind) -> &Bus {
        match kind {
            BarKind::Io => self.pio,
            BarKind::Mem32 | BarKind::Mem64 => self.mmio,
        }
    }
}

/// How strictly [`BarBacking::map`] treats a part it cannot install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// Attach: every part must go in, or nothing does.
    All,
    /// A guest move or decode change: the trap must go in; a memory slot or doorbell that
    /// cannot is left trapped, with one warning per BAR.
    TrapOnly,
}

/// One BAR of an attached device: where the guest has it, and what backs it there.
pub struct BarBacking {
    /// What the BAR is.
    pub spec: BarSpec,
    /// Guest address (the register's value, accepted by the segment's allocator).
    pub addr: u64,
    mapped: bool,
    areas: Vec<Area>,
    bells: Vec<Bell>,
    /// Whether a degraded mapping or refused move was already reported for this BAR.
    warned: bool,
}

impl BarBacking {
    /// A BAR at `addr`, not mapped yet, with the device's direct areas and doorbells for it.
    pub fn new(spec: BarSpec, addr: u64, areas: Vec<DirectArea>, bells: Vec<Doorbell>) -> Self {
        Self {
            spec,
            addr,
            mapped: false,
            areas: areas
                .into_iter()
                .map(|a| Area {
                    offset: a.offset,
                    mapping: a.mapping,
                    slot: None,
                    peer_mapped: None,
                })
                .collect(),
            bells: bells
                .into_iter()
                .map(|b| Bell {
                    offset: b.offset,
                    event: b.event,
                    registered: false,
                })
                .collect(),
            warned: false,
        }
    }

    /// Whether every direct area of this BAR can be DMA-mapped for peer-to-peer at its current
    /// address (`None` when it has none).
    pub fn peer_reachable(&self, peer: &dyn PeerDma) -> Option<Result<(), PeerDmaError>> {
        let mut result = None;
        for area in &self.areas {
            let r = peer.check(self.addr + area.offset, area.mapping.size());
            match (&result, r) {
                (Some(Err(_)), _) => {}
                (_, r) => result = Some(r),
            }
        }
        result
    }

    /// Whether the BAR is installed in the guest's address space now.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// Logs `what` once for this BAR at warning level, later ones at debug level, so a guest
    /// repeating a refused operation cannot flood the host's log.
    pub fn warn_once(&mut self, name: &str, what: std::fmt::Arguments<'_>) {
        if self.warned {
            log::debug!("{name}: {} {what}", self.spec.index);
        } else {
            self.warned = true;
            warn!("{name}: {} {what}", self.spec.index);
        }
    }

    /// Installs the trap, the memory slots and the doorbells at [`BarBacking::addr`].
    /// `exclusive_page` says whether the rest of the page of a sub-page BAR holds no other BAR
    /// (a memory slot covers whole pages). On an error nothing stays installed.
    pub fn map(
        &mut self,
        cx: &MapContext<'_>,
        strict: Strictness,
        exclusive_page: bool,
    ) -> Result<(), AttachError> {
        if self.mapped {
            return Ok(());
        }
        let (addr, index) = (self.addr, self.spec.index);
        let trap = Arc::new(Mutex::new(BarTrap::new(cx.device.clone(), index)));
        cx.bus(self.spec.kind)
            .insert(trap, addr, self.spec.size)
            .map_err(|source| AttachError::BarTrap {
                device: cx.name.to_string(),
                bar: index,
                addr,
                source,
            })?;
        self.mapped = true;
        if let Err(e) = self.map_parts(cx, strict, exclusive_page) {
            self.unmap(cx);
            return Err(e);
        }
        Ok(())
    }

    fn map_parts(
        &mut self,
        cx: &MapContext<'_>,
        strict: Strictness,
        exclusive_page: bool,
    ) -> Result<(), AttachError> {
        let (addr, index) = (self.addr, self.spec.index);
        let mut degraded = Vec::new();
        for area in &mut self.areas {
            let gpa = addr + area.offset;
            let size = area.mapping.size();
            let padded = area.offset + size > self.spec.size;
            if !gpa.is_multiple_of(PAGE_SIZE) || (padded && !exclusive_page) {
                let e = AttachError::UnalignedArea {
                    device: cx.name.to_string(),
                    bar: index,
                    gpa,
                };
                match strict {
                    Strictness::All => return Err(e),
                    Strictness::TrapOnly => {
                        degraded.push(e);
                        continue;
                    }
                }
            }
            let slot = cx.slots.take();
            // SAFETY: the mapping lives in `area` until the slot is cleared in `unmap`, which
            // runs before the area (and its mapping) is dropped.
            let set = unsafe {
                cx.guest
                    .set_memory_slot(slot, gpa, size, area.mapping.addr())
            };
            match set {
                Ok(()) => {
                    area.slot = Some(slot);
                    if let Some(peer) = cx.peer_dma.filter(|_| area.peer_mapped != Some(gpa)) {
                        let start = std::time::Instant::now();
                        // SAFETY: the mapping outlives the DMA mapping: `unmap_peer` removes it,
                        // and the area is dropped only after that.
                        match unsafe { peer.map(gpa, size, area.mapping.addr()) } {
                            Ok(()) => {
                                area.peer_mapped = Some(gpa);
                                log::info!(
                                    "{}: {index} area at {gpa:#x} ({size:#x} bytes) DMA-mapped \
                                     for peer-to-peer in {:?}",
                                    cx.name,
                                    start.elapsed()
                                );
                            }
                            Err(e) => degraded.push(AttachError::PeerDma {
                                device: cx.name.to_string(),
                                bar: index,
                                source: e,
                            }),
                        }
                    }
                }
                Err(source) => {
                    cx.slots.give_back(slot);
                    let e = AttachError::MemorySlot {
                        device: cx.name.to_string(),
                        bar: index,
                        gpa,
                        size,
                        source,
                    };
                    match strict {
                        Strictness::All => return Err(e),
                        Strictness::TrapOnly => degraded.push(e),
                    }
                }
            }
        }
        for bell in &mut self.bells {
            let at = addr + bell.offset;
            match cx.guest.register_doorbell(&bell.event, at) {
                Ok(()) => bell.registered = true,
                Err(source) => {
                    let e = AttachError::Doorbell {
                        device: cx.name.to_string(),
                        addr: at,
                        source,
                    };
                    match strict {
                        Strictness::All => return Err(e),
                        Strictness::TrapOnly => degraded.push(e),
                    }
                }
            }
        }
        for e in degraded {
            let consequence = match e {
                AttachError::PeerDma { .. } => {
                    "the other devices' DMA to it will fault in the host IOMMU (no peer-to-peer)"
                }
                _ => "that part of the BAR traps instead",
            };
            self.warn_once(
                cx.name,
                format_args!("at {addr:#x}: {}; {consequence}", crate::error_chain(&e)),
            );
        }
        Ok(())
    }

    /// Takes everything [`BarBacking::map`] installed away again. Failures to remove a memory
    /// slot or doorbell are logged; the bus range always goes.
    pub fn unmap(&mut self, cx: &MapContext<'_>) {
        if !self.mapped {
            return;
        }
        let addr = self.addr;
        for bell in self.bells.iter_mut().filter(|b| b.registered) {
            if let Err(e) = cx
                .guest
                .unregister_doorbell(&bell.event, addr + bell.offset)
            {
                warn!(
                    "{}: removing the doorbell at {:#x}: {e}",
                    cx.name,
                    addr + bell.offset
                );
            }
            bell.registered = false;
        }
        for area in &mut self.areas {
            if let Some(slot) = area.slot.take() {
                match cx.guest.clear_memory_slot(slot) {
                    Ok(()) => cx.slots.give_back(slot),
                    // The slot may still point at the mapping: keep both for the VM's lifetime
                    // rather than let the guest reach memory that is gone.
                    Err(e) => {
                        warn!(
                            "{}: removing memory slot {slot} of {}: {e}",
                            cx.name, self.spec.index
                        );
                        area.slot = Some(slot);
                        std::mem::forget(std::mem::replace(
                            &mut area.mapping,
                            HostMapping::empty(),
                        ));
                        area.slot = None;
                    }
                }
            }
        }
        cx.bus(self.spec.kind).remove(addr);
        self.mapped = false;
    }

    /// Removes the peer-to-peer DMA mappings of this BAR: before it moves to another address,
    /// and before its host mappings go.
    pub fn unmap_peer(&mut self, cx: &MapContext<'_>) {
        let Some(peer) = cx.peer_dma else {
            return;
        };
        for area in &mut self.areas {
            if let Some(iova) = area.peer_mapped.take() {
                if let Err(e) = peer.unmap(iova, area.mapping.size()) {
                    warn!("{}: {} at {iova:#x}: {e}", cx.name, self.spec.index);
                }
            }
        }
    }
}
