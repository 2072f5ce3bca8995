//! What viaduct's fuzz targets share: a reader that turns fuzz bytes into values, an interrupt
//! router that accepts everything, and guest config accesses (ECAM and 0xCF8/0xCFC) on a PCI
//! segment with the invariants every function must keep whatever the guest writes: identity,
//! class and capability pointer read-only, BAR registers sizing to their BAR.

use std::sync::atomic::{AtomicU32, Ordering};

use pci::address::Bdf;
use pci::bar::{BarIndex, BarKind, BarSpec};
use pci::legacy_ports::{LegacyConfigPorts, CONFIG_ENABLE};
use pci::routing::{Gsi, InterruptRouter, RoutingError};
use pci::segment::PciSegment;
use vmm_sys_util::eventfd::EventFd;

/// Fuzz bytes read front to back; past the end every read is 0, so any input is usable.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next 2 bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    /// The next 4 bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    /// The next 8 bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// An access width: mostly 1, 2 or 4 bytes, sometimes 8 or a malformed 3 or 0.
    pub fn access_len(&mut self) -> usize {
        match self.u8() % 16 {
            0..=4 => 1,
            5..=9 => 2,
            10..=13 => 4,
            14 => 8,
            _ => 3,
        }
    }
}

/// An interrupt router that hands out GSIs and accepts every route and irqfd.
#[derive(Default)]
pub struct NullRouter {
    next: AtomicU32,
}

impl InterruptRouter for NullRouter {
    fn allocate_gsi(&self) -> Result<Gsi, RoutingError> {
        Ok(Gsi(24 + self.next.fetch_add(1, Ordering::Relaxed)))
    }
    fn free_gsi(&self, _gsi: Gsi) {}
    fn set_msi_route(&self, _gsi: Gsi, _address: u64, _data: u32) -> Result<(), RoutingError> {
        Ok(())
    }
    fn remove_route(&self, _gsi: Gsi) -> Result<(), RoutingError> {
        Ok(())
    }
    fn attach_irqfd(&self, _event: &EventFd, _gsi: Gsi) -> Result<(), RoutingError> {
        Ok(())
    }
    fn detach_irqfd(&self, _event: &EventFd, _gsi: Gsi) -> Result<(), RoutingError> {
        Ok(())
    }
    fn attach_level_irqfd(
        &self,
        _event: &EventFd,
        _resample: &EventFd,
        _gsi: Gsi,
    ) -> Result<(), RoutingError> {
        Ok(())
    }
    fn detach_level_irqfd(&self, _event: &EventFd, _gsi: Gsi) -> Result<(), RoutingError> {
        Ok(())
    }
}

/// The read-only parts of a function's header, recorded before the guest writes.
pub struct Identity {
    bdf: Bdf,
    ids: u32,
    class: u32,
    cap_ptr: u32,
    bars: Vec<BarSpec>,
}

impl Identity {
    /// Records the function at `bdf`.
    pub fn of(segment: &PciSegment, bdf: Bdf) -> Option<Self> {
        let dev = segment.device(bdf)?;
        Some(Self {
            bdf,
            ids: dev.read_config(0),
            class: dev.read_config(2),
            cap_ptr: dev.read_config(0x34 / 4) & 0xff,
            bars: dev.bars(),
        })
    }

    /// Panics if the guest's writes changed what must stay, or if a BAR register no longer
    /// sizes to its BAR. Leaves the BARs sized (all-ones written).
    pub fn check(&self, segment: &mut PciSegment) {
        let Some(dev) = segment.device(self.bdf) else {
            panic!("{}: the function disappeared", self.bdf);
        };
        let name = dev.name().to_string();
        assert_eq!(dev.read_config(0), self.ids, "{name}: ids changed");
        assert_eq!(dev.read_config(2), self.class, "{name}: class changed");
        assert_eq!(
            dev.read_config(0x34 / 4) & 0xff,
            self.cap_ptr,
            "{name}: capability pointer changed"
        );
        for spec in &self.bars {
            let reg = spec.index.config_offset();
            segment.config_write(self.bdf, reg, &u32::MAX.to_le_bytes());
            let mut got = [0u8; 4];
            segment.config_read(self.bdf, reg, &mut got);
            let got = u32::from_le_bytes(got);
            let (mask, flags) = expected_sizing(spec);
            assert_eq!(
                got & mask,
                flags,
                "{name}: BAR {} (size {:#x}) sizes as {got:#x}",
                spec.index.get(),
                spec.size
            );
            if spec.kind == BarKind::Mem64 && !spec.index.is_rom() {
                segment.config_write(self.bdf, reg + 4, &u32::MAX.to_le_bytes());
                let mut high = [0u8; 4];
                segment.config_read(self.bdf, reg + 4, &mut high);
                let want = (!(spec.size - 1) >> 32) as u32;
                assert_eq!(
                    u32::from_le_bytes(high),
                    want,
                    "{name}: BAR {} high half sizes wrong",
                    spec.index.get()
                );
            }
        }
    }
}

/// (bits compared, what they must read) after all-ones is written to the BAR register of `spec`.
fn expected_sizing(spec: &BarSpec) -> (u32, u32) {
    let size_mask = !(spec.size - 1) as u32;
    if spec.index == BarIndex::ROM {
        // Bit 0 is the enable bit, writable; the address bits size the ROM.
        return (0xffff_f800, size_mask & 0xffff_f800);
    }
    match spec.kind {
        // I/O BARs: x86 port space is 16 bits; compare those.
        BarKind::Io => (0xffff, (size_mask & 0xffff & !0b11) | 0b01),
        BarKind::Mem32 => (!0, (size_mask & !0xf) | (u32::from(spec.prefetchable) << 3)),
        BarKind::Mem64 => (
            !0,
            (size_mask & !0xf) | 0b100 | (u32::from(spec.prefetchable) << 3),
        ),
    }
}

/// Runs guest config accesses from `input` on `segment` until it runs out (at most 4096).
pub fn config_accesses(segment: &mut PciSegment, slots: &[u8], input: &mut Input<'_>) {
    let mut ports = LegacyConfigPorts::new();
    let mut ops = 0;
    while !input.is_empty() && ops < 4096 {
        ops += 1;
        config_access(segment, &mut ports, slots, input);
    }
}

/// One guest config access from `input` on `segment`: an ECAM read or write (mostly at the
/// populated `slots`, registers anywhere in 4 KiB), or an access to the 0xCF8 latch or the
/// 0xCFC window.
pub fn config_access(
    segment: &mut PciSegment,
    ports: &mut LegacyConfigPorts,
    slots: &[u8],
    input: &mut Input<'_>,
) {
    let op = input.u8();
    let sel = input.u8();
    let device = if slots.is_empty() || sel & 0x80 != 0 {
        sel & 0x1f
    } else {
        slots[usize::from(sel) % slots.len()]
    };
    let function = if sel & 0x60 == 0x60 {
        input.u8() & 7
    } else {
        0
    };
    let reg = u64::from(input.u16() & 0xfff);
    let len = input.access_len();
    let ecam = u64::from(device) << 15 | u64::from(function) << 12 | reg;
    match op % 8 {
        0..=2 => {
            let data = input.bytes(len).to_vec();
            let _ = segment.ecam_write(ecam, &data);
        }
        3 | 4 => {
            let mut data = vec![0u8; len];
            segment.ecam_read(ecam, &mut data);
        }
        5 => {
            // The latch: enabled (usually), this function, a dword register; sometimes stray
            // bits, a narrow write, or a write to another port.
            let enable = if op & 0x80 == 0 { CONFIG_ENABLE } else { 0 };
            let stray = if op & 0x40 != 0 { input.u32() } else { 0 };
            let value = enable
                | u32::from(device) << 11
                | u32::from(function) << 8
                | (reg as u32 & 0xfc)
                | stray;
            let port = if op & 0x20 != 0 { reg % 8 } else { 0 };
            let _ = ports.write(segment, port, &value.to_le_bytes()[..len.min(4)]);
        }
        6 => {
            let data = input.bytes(len).to_vec();
            let _ = ports.write(segment, 4 + reg % 4, &data);
        }
        _ => {
            let mut data = vec![0u8; len];
            ports.read(segment, reg % 8, &mut data);
        }
    }
}

/// A virtio device with two queues and 64 bytes of writable device config whose activation
/// starts nothing: the transport is fuzzed without threads or I/O.
pub struct StubVirtio {
    config: [u8; 64],
    sizes: [u16; 2],
    active: bool,
}

impl Default for StubVirtio {
    fn default() -> Self {
        Self {
            config: [0; 64],
            sizes: [256, 64],
            active: false,
        }
    }
}

impl devices::virtio::VirtioDevice for StubVirtio {
    fn device_type(&self) -> u32 {
        2
    }
    fn name(&self) -> &str {
        "stub"
    }
    fn features(&self) -> u64 {
        devices::virtio::features::VERSION_1 | devices::virtio::features::RING_INDIRECT_DESC | 0x3ff
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(slot) = at.and_then(|at| self.config.get_mut(at)) {
                *slot = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: std::sync::Arc<devices::virtio::GuestMemory>,
        _acked_features: u64,
        queues: Vec<devices::virtio::ActiveQueue>,
        _interrupt: std::sync::Arc<dyn devices::virtio::VirtioInterrupt>,
    ) -> Result<(), devices::virtio::ActivateError> {
        if queues.is_empty() {
            return Err(devices::virtio::ActivateError::MissingQueue {
                device: "stub".into(),
                queue: 0,
            });
        }
        assert!(!self.active, "activated twice without a reset");
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.active = false;
    }
}

/// A virtio-pci function around [`StubVirtio`] with 1 MiB of guest RAM at 0.
pub fn stub_virtio_pci(mem_size: usize) -> devices::virtio::pci::VirtioPciDevice {
    let mem = std::sync::Arc::new(
        devices::virtio::GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), mem_size)])
            .expect("guest memory"),
    );
    devices::virtio::pci::VirtioPciDevice::new(
        Box::new(StubVirtio::default()),
        mem,
        std::sync::Arc::new(NullRouter::default()),
        BarKind::Mem64,
    )
    .expect("virtio-pci function")
}
