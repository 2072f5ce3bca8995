//! The VM's PCI topology: one root bus per segment, each with its share of the 32-bit and 64-bit
//! MMIO apertures (split by the configured weights) and of the PCI I/O port window, its ECAM
//! window on the MMIO bus, and for segment 0 the legacy 0xCF8/0xCFC ports on the port bus.

use std::sync::{Arc, Mutex, RwLock};

use log::{debug, info};

use arch::acpi::PciRootDescription;
use arch::layout;
use devices::bus::{Bus, BusDevice};
use pci::address::{Bdf, SegmentId};
use pci::allocator::SegmentAllocator;
use pci::aperture::{split_aperture, AddressRange};
use pci::bar::BarMove;
use pci::legacy_ports::LegacyConfigPorts;
use pci::segment::{PciSegment, RoutedWriteEffect, ECAM_WINDOW_SIZE};

use crate::config::PciConfig;
use crate::Error;

/// Moves what backs a BAR (bus ranges, KVM memory slots) when the guest reprograms it.
pub trait BarRelocator: Send + Sync {
    /// The guest moved BAR `mv.index` of `segment:bdf` from `mv.old` to `mv.new`.
    fn move_bar(&self, segment: u16, bdf: Bdf, mv: &BarMove);
}

/// The relocators the config-access paths call (one per kind of device with movable BARs);
/// filled once the devices exist, emptied at teardown.
pub type RelocatorSlot = Arc<RwLock<Vec<Arc<dyn BarRelocator>>>>;

/// One segment: its root bus, its windows and the allocator that places BARs in them.
pub struct Segment {
    /// The segment number (PCI domain).
    pub id: u16,
    /// The root bus, shared with the config-access paths.
    pub bus: Arc<Mutex<PciSegment>>,
    /// Places the BARs of this segment's devices.
    pub allocator: Arc<Mutex<SegmentAllocator>>,
    /// This segment's 32-bit MMIO window.
    pub mmio32: AddressRange,
    /// This segment's 64-bit MMIO window (empty when the guest has no room above RAM).
    pub mmio64: AddressRange,
    /// This segment's I/O port window.
    pub io: AddressRange,
}

/// All PCI segments of the VM.
pub struct PciTopology {
    /// Segment `i` at index `i`.
    pub segments: Vec<Segment>,
    /// Who moves BAR mappings when the guest reprograms a BAR.
    pub relocator: RelocatorSlot,
}

fn layout_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::PciLayout(format!("{what}: {e}"))
}

/// Splits `window` by `weights`, or gives every segment an empty window when there is none.
fn split(
    what: &str,
    window: Option<AddressRange>,
    weights: &[u32],
    alignment: u64,
) -> Result<Vec<AddressRange>, Error> {
    match window {
        Some(w) => split_aperture(w, weights, alignment).map_err(|e| layout_error(what, e)),
        None => Ok(vec![AddressRange::empty(0); weights.len()]),
    }
}

/// Lays out the segments of `cfg` for a guest whose RAM ends at `ram_end` and whose physical
/// address width is `phys_bits`, and puts their config-access paths on the buses.
pub fn create_pci_topology(
    cfg: &PciConfig,
    ram_end: u64,
    phys_bits: u8,
    pio: &Bus,
    mmio: &Bus,
) -> Result<PciTopology, Error> {
    let relocator: RelocatorSlot = Arc::new(RwLock::new(Vec::new()));
    let w32: Vec<u32> = cfg
        .segments
        .iter()
        .map(|s| s.mmio32_aperture_weight)
        .collect();
    let w64: Vec<u32> = cfg
        .segments
        .iter()
        .map(|s| s.mmio64_aperture_weight)
        .collect();
    let equal = vec![1u32; cfg.segments.len()];

    let mmio32_aperture = AddressRange::new(
        layout::MEM_32BIT_DEVICES_START,
        layout::MEM_32BIT_DEVICES_SIZE,
    );
    let mmio32 = split(
        "32-bit MMIO aperture",
        mmio32_aperture,
        &w32,
        layout::MEM_32BIT_DEVICES_SPLIT_ALIGNMENT,
    )?;
    let mmio64_aperture = layout::mem64_aperture(ram_end, phys_bits)
        .and_then(|(start, last)| AddressRange::from_inclusive(start, last));
    let total64: u64 = w64.iter().map(|&w| u64::from(w)).sum();
    let align64 = mmio64_aperture.map_or(layout::MEM_64BIT_DEVICES_ALIGNMENT, |a| {
        layout::mem64_split_alignment(a.size(), total64)
    });
    let mmio64 = split("64-bit MMIO aperture", mmio64_aperture, &w64, align64)?;
    let io_window = AddressRange::new(
        u64::from(layout::PCI_IO_PORT_START),
        u64::from(layout::PCI_IO_PORT_SIZE),
    );
    let io = split(
        "PCI I/O port window",
        io_window,
        &equal,
        layout::PCI_IO_PORT_SPLIT_ALIGNMENT,
    )?;

    let mut segments = Vec::with_capacity(cfg.segments.len());
    for (index, ((mmio32, mmio64), io)) in mmio32.into_iter().zip(mmio64).zip(io).enumerate() {
        let id = index as u16;
        let bus = Arc::new(Mutex::new(PciSegment::new(SegmentId(id))));
        let ecam = Arc::new(Mutex::new(EcamAccess {
            segment: bus.clone(),
            relocator: relocator.clone(),
        }));
        mmio.insert(ecam, layout::ecam_window(id), ECAM_WINDOW_SIZE)
            .map_err(|e| layout_error(&format!("ECAM window of segment {id}"), e))?;
        if id == 0 {
            let ports = Arc::new(Mutex::new(LegacyPortAccess {
                ports: LegacyConfigPorts::new(),
                segment: bus.clone(),
                relocator: relocator.clone(),
            }));
            pio.insert(
                ports,
                u64::from(layout::PCI_CONFIG_IO_PORT),
                u64::from(layout::PCI_CONFIG_IO_PORT_COUNT),
            )
            .map_err(|e| layout_error("PCI config ports", e))?;
        }
        info!("PCI segment {id:04x}: 32-bit MMIO {mmio32}, 64-bit MMIO {mmio64}, I/O {io}");
        segments.push(Segment {
            id,
            bus,
            allocator: Arc::new(Mutex::new(SegmentAllocator::new(id, mmio32, mmio64, io))),
            mmio32,
            mmio64,
            io,
        });
    }
    Ok(PciTopology {
        segments,
        relocator,
    })
}

impl PciTopology {
    /// How the ACPI tables describe each root.
    pub fn acpi_roots(&self) -> Vec<PciRootDescription> {
        self.segments
            .iter()
            .map(|s| PciRootDescription {
                segment: s.id,
                ecam_base: layout::ecam_window(s.id),
                ecam_size: ECAM_WINDOW_SIZE as u32,
                mmio32: (s.mmio32.start() as u32, s.mmio32.last().unwrap_or(0) as u32),
                mmio64: s.mmio64.last().map(|last| (s.mmio64.start(), last)),
                io: s.io.last().map(|last| (s.io.start() as u16, last as u16)),
                legacy_config_ports: s.id == 0,
            })
            .collect()
    }
}

/// Acts on what a guest config write changed: moves the mappings of reprogrammed BARs.
fn apply_effect(relocator: &RelocatorSlot, segment: u16, routed: Option<RoutedWriteEffect>) {
    let Some(RoutedWriteEffect { bdf, effect }) = routed else {
        return;
    };
    let relocator = relocator.read().unwrap_or_else(|e| e.into_inner()).clone();
    for mv in &effect.bar_moves {
        debug!(
            "PCI {segment:04x}:{bdf}: guest moved BAR {:?} from {:#x} to {:#x}",
            mv.index, mv.old, mv.new
        );
        for r in &relocator {
            r.move_bar(segment, bdf, mv);
        }
    }
}

/// A segment's ECAM window as seen from the MMIO bus.
struct EcamAccess {
    segment: Arc<Mutex<PciSegment>>,
    relocator: RelocatorSlot,
}

impl BusDevice for EcamAccess {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.segment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ecam_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (id, effect) = {
            let mut segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
            (segment.id().0, segment.ecam_write(offset, data))
        };
        // The segment lock is released: moving a BAR touches the device behind it.
        apply_effect(&self.relocator, id, effect);
    }
}

/// The 0xCF8/0xCFC ports as seen from the port bus (segment 0 only).
struct LegacyPortAccess {
    ports: LegacyConfigPorts,
    segment: Arc<Mutex<PciSegment>>,
    relocator: RelocatorSlot,
}

impl BusDevice for LegacyPortAccess {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        self.ports.read(&segment, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let effect = {
            let mut segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
            self.ports.write(&mut segment, offset, data)
        };
        apply_effect(&self.relocator, 0, effect);
    }
}
