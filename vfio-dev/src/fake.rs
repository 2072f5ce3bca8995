//! Test doubles: a host VFIO device built from a config image and BAR descriptions, and an
//! interrupt router that records routes and irqfds, plus two realistic fixtures (an NVMe-like
//! controller with MSI-X, an NVIDIA-GPU-like display controller with MSI and a ROM).
//!
//! Built for the unit tests and, with the `fuzzing` feature, for the fuzz targets in tests/fuzz,
//! which reach it only through [`fuzz_device`].

// Outside the unit tests only the fuzz targets use this module: most of it is unused there, and
// a failed `unwrap` in a fake is a crash the fuzzer reports, not a dead VMM.
#![cfg_attr(not(test), allow(dead_code, clippy::unwrap_used))]

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::access::{region, region_flags, IrqError, RegionCap, RegionInfo, VfioDeviceAccess};
use crate::routing::{Gsi, InterruptRouter, RoutingError};

/// What the code under test did to the fake device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Reset,
    RegionWrite {
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
    EnableIrq {
        index: u32,
        count: usize,
    },
    DisableIrq(u32),
    IntxUnmaskFd,
}

#[derive(Default)]
struct DeviceState {
    config: Vec<u8>,
    mem: HashMap<(u32, u64), u8>,
    calls: Vec<Call>,
    /// Per irq index: (raw fd the code passed, a dup the "device" signals).
    irq_fds: HashMap<u32, Vec<(RawFd, EventFd)>>,
}

/// A host device whose BAR registers size like vfio-pci's virtualized ones.
pub(crate) struct FakeVfioDevice {
    state: Mutex<DeviceState>,
    regions: BTreeMap<u32, RegionInfo>,
    irq_counts: [u32; 3],
    /// Per config dword of a BAR register: (writable mask, read-only flag bits).
    bar_regs: BTreeMap<usize, (u32, u32)>,
    /// Whether it reports a reset method (`VFIO_DEVICE_FLAGS_RESET`).
    can_reset: bool,
}

impl FakeVfioDevice {
    fn lock(&self) -> MutexGuard<'_, DeviceState> {
        self.state.lock().unwrap()
    }

    /// Every call recorded since the last [`FakeVfioDevice::take_calls`].
    pub(crate) fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The device's own config dword at `offset` (what the code wrote, not what the guest sees).
    pub(crate) fn config_u32(&self, offset: usize) -> u32 {
        let s = self.lock();
        u32::from_le_bytes(s.config[offset..offset + 4].try_into().unwrap())
    }

    /// The raw fd the code passed for vector `v` of irq `index`.
    pub(crate) fn irq_fd(&self, index: u32, v: usize) -> RawFd {
        self.lock().irq_fds[&index][v].0
    }

    /// The device raises vector `v` of irq `index` (VFIO signals its eventfd).
    pub(crate) fn fire(&self, index: u32, v: usize) {
        self.lock().irq_fds[&index][v].1.write(1).unwrap();
    }
}

impl VfioDeviceAccess for FakeVfioDevice {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(&index).cloned()
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) {
        let s = self.lock();
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if index == region::CONFIG {
                s.config.get(at as usize).copied().unwrap_or(0xff)
            } else {
                s.mem.get(&(index, at)).copied().unwrap_or(0)
            };
        }
    }

    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) {
        let mut s = self.lock();
        s.calls.push(Call::RegionWrite {
            index,
            offset,
            data: buf.to_vec(),
        });
        if index != region::CONFIG {
            for (i, &b) in buf.iter().enumerate() {
                s.mem.insert((index, offset + i as u64), b);
            }
            return;
        }
        let offset = offset as usize;
        for (i, &b) in buf.iter().enumerate() {
            if let Some(slot) = s.config.get_mut(offset + i) {
                *slot = b;
            }
        }
        // BAR registers keep only their size-aligned address bits and their flags.
        for dword in (offset / 4)..=((offset + buf.len() - 1) / 4) {
            if let Some(&(mask, flags)) = self.bar_regs.get(&dword) {
                let at = dword * 4;
                let v = u32::from_le_bytes(s.config[at..at + 4].try_into().unwrap());
                s.config[at..at + 4].copy_from_slice(&((v & mask) | flags).to_le_bytes());
            }
        }
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.irq_counts.get(index as usize).copied().unwrap_or(0)
    }

    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> Result<(), IrqError> {
        let mut s = self.lock();
        s.calls.push(Call::EnableIrq {
            index,
            count: fds.len(),
        });
        let dups = fds
            .iter()
            .map(|f| (f.as_raw_fd(), f.try_clone().unwrap()))
            .collect();
        s.irq_fds.insert(index, dups);
        Ok(())
    }

    fn disable_irq(&self, index: u32) -> Result<(), IrqError> {
        self.lock().calls.push(Call::DisableIrq(index));
        Ok(())
    }

    fn set_intx_unmask_fd(&self, _resample: &EventFd) -> Result<(), IrqError> {
        self.lock().calls.push(Call::IntxUnmaskFd);
        Ok(())
    }

    fn unmask_intx(&self) -> Result<(), IrqError> {
        Ok(())
    }

    fn reset_supported(&self) -> Result<bool, i32> {
        Ok(self.can_reset)
    }

    fn reset(&self) -> crate::access::ResetOutcome {
        if !self.can_reset {
            return crate::access::ResetOutcome::Unsupported;
        }
        self.lock().calls.push(Call::Reset);
        crate::access::ResetOutcome::Done
    }

    fn device_fd(&self) -> RawFd {
        -1
    }
}

/// Builds a [`FakeVfioDevice`] from ids, BARs and capabilities.
pub(crate) struct FakeBuilder {
    config: Vec<u8>,
    regions: BTreeMap<u32, RegionInfo>,
    irq_counts: [u32; 3],
    bar_regs: BTreeMap<usize, (u32, u32)>,
    last_cap: Option<usize>,
    can_reset: bool,
}

/// Region flags of an mmappable BAR.
pub(crate) const MMAP_RW: u32 = region_flags::READ | region_flags::WRITE | region_flags::MMAP;

impl FakeBuilder {
    pub(crate) fn new(vendor: u16, device: u16, class: [u8; 3], config_size: usize) -> Self {
        let mut config = vec![0u8; config_size];
        config[0..2].copy_from_slice(&vendor.to_le_bytes());
        config[2..4].copy_from_slice(&device.to_le_bytes());
        config[0x09] = class[2];
        config[0x0a] = class[1];
        config[0x0b] = class[0];
        // Header type 0 with the multi-function bit, as on a multi-function card.
        config[0x0e] = 0x80;
        let mut regions = BTreeMap::new();
        regions.insert(
            region::CONFIG,
            RegionInfo {
                flags: region_flags::READ | region_flags::WRITE,
                size: config_size as u64,
                offset: 7 << 40,
                caps: vec![],
            },
        );
        Self {
            config,
            regions,
            irq_counts: [0; 3],
            bar_regs: BTreeMap::new(),
            last_cap: None,
            can_reset: true,
        }
    }

    /// A device with no reset method VFIO can use (QEMU's ivshmem, some older GPUs).
    pub(crate) fn without_reset(mut self) -> Self {
        self.can_reset = false;
        self
    }

    /// BAR `n`: `size` bytes; `io`, `mem64`, `prefetch` as the type bits say; VFIO region
    /// flags `flags`.
    pub(crate) fn bar(mut self, n: u8, size: u64, kind: (bool, bool, bool), flags: u32) -> Self {
        let (io, mem64, prefetch) = kind;
        let reg = 4 + usize::from(n);
        let type_bits = if io {
            1
        } else {
            (if mem64 { 0b100 } else { 0 }) | (if prefetch { 0b1000 } else { 0 })
        };
        let mask = !(size - 1);
        let low_mask = (mask as u32) & if io { !0b11 } else { !0b1111 };
        self.bar_regs.insert(reg, (low_mask, type_bits));
        let host = 0x8000_0000u32 & low_mask;
        self.config[reg * 4..reg * 4 + 4].copy_from_slice(&(host | type_bits).to_le_bytes());
        if mem64 {
            self.bar_regs.insert(reg + 1, ((mask >> 32) as u32, 0));
            self.config[reg * 4 + 4..reg * 4 + 8].copy_from_slice(&0x40u32.to_le_bytes());
        }
        self.region(u32::from(n), size, flags, vec![])
    }

    pub(crate) fn rom(mut self, size: u64) -> Self {
        let mask = (!(size - 1) as u32 & 0xffff_f800) | 1;
        self.bar_regs.insert(12, (mask, 0));
        self.config[0x30..0x34].copy_from_slice(&0xfe00_0000u32.to_le_bytes());
        self.region(region::ROM, size, region_flags::READ, vec![])
    }

    pub(crate) fn region(
        mut self,
        index: u32,
        size: u64,
        flags: u32,
        caps: Vec<RegionCap>,
    ) -> Self {
        self.regions.insert(
            index,
            RegionInfo {
                flags,
                size,
                offset: u64::from(index) << 40,
                caps,
            },
        );
        self
    }

    /// Appends a standard capability `id` at `offset` with `body` after the id/next bytes.
    pub(crate) fn cap(mut self, offset: usize, id: u8, body: &[u8]) -> Self {
        self.config[0x06] |= 0x10;
        let link = self.last_cap.map_or(0x34, |last| last + 1);
        self.config[link] = offset as u8;
        self.config[offset] = id;
        self.config[offset + 1] = 0;
        self.config[offset + 2..offset + 2 + body.len()].copy_from_slice(body);
        self.last_cap = Some(offset);
        self
    }

    /// Writes raw bytes (an extended capability, a stray value).
    pub(crate) fn bytes(mut self, offset: usize, bytes: &[u8]) -> Self {
        self.config[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }

    pub(crate) fn irqs(mut self, intx: u32, msi: u32, msix: u32) -> Self {
        self.irq_counts = [intx, msi, msix];
        self
    }

    pub(crate) fn build(self) -> FakeVfioDevice {
        FakeVfioDevice {
            state: Mutex::new(DeviceState {
                config: self.config,
                ..Default::default()
            }),
            regions: self.regions,
            irq_counts: self.irq_counts,
            bar_regs: self.bar_regs,
            can_reset: self.can_reset,
        }
    }
}

/// MSI-X vectors of the NVMe fixture.
pub(crate) const NVME_VECTORS: u16 = 33;

/// An NVMe-like controller (QEMU's 1b36:0010): BAR0 64-bit 16 KiB with the MSI-X table at
/// 0x2000 and the PBA at 0x3000; PM at 0x40, MSI-X at 0x50, PCIe at 0x60; an AER and a
/// Resizable BAR extended capability; INTA.
pub(crate) fn nvme_like() -> FakeBuilder {
    let msix_control = NVME_VECTORS - 1;
    let mut msix_body = msix_control.to_le_bytes().to_vec();
    msix_body.extend(0x2000u32.to_le_bytes());
    msix_body.extend(0x3000u32.to_le_bytes());
    FakeBuilder::new(0x1b36, 0x0010, [0x01, 0x08, 0x02], 4096)
        .bar(0, 0x4000, (false, true, false), MMAP_RW)
        .cap(0x40, 0x01, &[0x03, 0x00, 0x08, 0x00, 0, 0])
        .cap(0x50, 0x11, &msix_body)
        .cap(0x60, 0x10, &[0x02, 0x00])
        .bytes(0x3d, &[1])
        // AER (id 1, v2) at 0x100 -> Resizable BAR (id 0x15, v1) at 0x148.
        .bytes(0x100, &(0x1u32 | (2 << 16) | (0x148 << 20)).to_le_bytes())
        .bytes(0x148, &(0x15u32 | (1 << 16)).to_le_bytes())
        .irqs(1, 0, u32::from(NVME_VECTORS))
}

/// An NVIDIA-GPU-like display controller: BAR0 32-bit 16 MiB, BAR1 64-bit prefetchable 256 MiB,
/// BAR3 64-bit prefetchable 32 MiB, BAR5 I/O 128 bytes, a 512 KiB ROM; PM at 0x60, MSI (64-bit,
/// 4 messages) at 0x68, PCIe at 0x78, a vendor-specific capability at 0xB4 (to 0xC8); INTA.
pub(crate) fn gpu_like() -> FakeBuilder {
    // MSI control: 64-bit (bit 7), Multiple Message Capable = 2 (4 vectors).
    let msi_control: u16 = (1 << 7) | (2 << 1);
    FakeBuilder::new(0x10de, 0x2236, [0x03, 0x00, 0x00], 4096)
        .bar(0, 16 << 20, (false, false, false), MMAP_RW)
        .bar(1, 256 << 20, (false, true, true), MMAP_RW)
        .bar(3, 32 << 20, (false, true, true), MMAP_RW)
        .bar(
            5,
            128,
            (true, false, false),
            region_flags::READ | region_flags::WRITE,
        )
        .rom(512 << 10)
        .cap(0x60, 0x01, &[0x03, 0x00, 0x08, 0x00, 0, 0])
        .cap(0x68, 0x05, &msi_control.to_le_bytes())
        .cap(0x78, 0x10, &[0x02, 0x00])
        .cap(0xb4, 0x09, &[0x14])
        .bytes(0x3d, &[1])
        .irqs(1, 4, 0)
}

#[derive(Debug, Default)]
pub(crate) struct RouterState {
    next: u32,
    pub(crate) allocated: Vec<u32>,
    pub(crate) freed: Vec<u32>,
    pub(crate) routes: BTreeMap<u32, (u64, u32)>,
    /// gsi → raw fd of the attached irqfd.
    pub(crate) irqfds: BTreeMap<u32, RawFd>,
    /// gsi → (raw fd, raw resample fd) of level-triggered irqfds.
    pub(crate) level: BTreeMap<u32, (RawFd, RawFd)>,
    pub(crate) fail_allocate: bool,
}

/// A router that records what the device asked for.
#[derive(Default)]
pub(crate) struct FakeRouter {
    state: Mutex<RouterState>,
}

impl FakeRouter {
    pub(crate) fn state(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap()
    }

    /// The GSI `fd` is attached to as an (edge) irqfd.
    pub(crate) fn attached_gsi(&self, fd: RawFd) -> Option<u32> {
        let s = self.state();
        s.irqfds.iter().find(|(_, &f)| f == fd).map(|(&g, _)| g)
    }
}

fn err(what: &str) -> RoutingError {
    RoutingError {
        what: what.into(),
        detail: "refused by the fake".into(),
    }
}

impl InterruptRouter for FakeRouter {
    fn allocate_gsi(&self) -> Result<Gsi, RoutingError> {
        let mut s = self.state();
        if s.fail_allocate {
            return Err(err("allocate GSI"));
        }
        let gsi = 24 + s.next;
        s.next += 1;
        s.allocated.push(gsi);
        Ok(Gsi(gsi))
    }

    fn free_gsi(&self, gsi: Gsi) {
        let mut s = self.state();
        s.allocated.retain(|&g| g != gsi.0);
        s.freed.push(gsi.0);
    }

    fn set_msi_route(&self, gsi: Gsi, address: u64, data: u32) -> Result<(), RoutingError> {
        self.state().routes.insert(gsi.0, (address, data));
        Ok(())
    }

    fn remove_route(&self, gsi: Gsi) -> Result<(), RoutingError> {
        self.state().routes.remove(&gsi.0);
        Ok(())
    }

    fn attach_irqfd(&self, event: &EventFd, gsi: Gsi) -> Result<(), RoutingError> {
        self.state().irqfds.insert(gsi.0, event.as_raw_fd());
        Ok(())
    }

    fn detach_irqfd(&self, _event: &EventFd, gsi: Gsi) -> Result<(), RoutingError> {
        self.state().irqfds.remove(&gsi.0);
        Ok(())
    }

    fn attach_level_irqfd(
        &self,
        event: &EventFd,
        resample: &EventFd,
        gsi: Gsi,
    ) -> Result<(), RoutingError> {
        let fds = (event.as_raw_fd(), resample.as_raw_fd());
        self.state().level.insert(gsi.0, fds);
        Ok(())
    }

    fn detach_level_irqfd(&self, _event: &EventFd, gsi: Gsi) -> Result<(), RoutingError> {
        self.state().level.remove(&gsi.0);
        Ok(())
    }
}

impl FakeVfioDevice {
    /// Consumes the count of vector `v` of irq `index` as KVM's irqfd would (0: not signalled).
    pub(crate) fn take_count(&self, index: u32, v: usize) -> u64 {
        self.lock().irq_fds[&index][v].1.read().unwrap_or(0)
    }
}

/// Opens `builder` as a [`crate::device::VfioPciDevice`] named "vfio test" with INTx on GSI 5,
/// reset by viaduct as an mdev is (so every reset shows in the calls).
pub(crate) fn open(
    builder: FakeBuilder,
    clique: Option<u8>,
) -> (
    std::sync::Arc<FakeVfioDevice>,
    std::sync::Arc<FakeRouter>,
    crate::device::VfioPciDevice,
) {
    open_with(builder, clique, crate::access::ResetDuty::Vmm)
}

/// [`open`], with `reset` saying who resets the device.
pub(crate) fn open_with(
    builder: FakeBuilder,
    clique: Option<u8>,
    reset: crate::access::ResetDuty,
) -> (
    std::sync::Arc<FakeVfioDevice>,
    std::sync::Arc<FakeRouter>,
    crate::device::VfioPciDevice,
) {
    let fake = std::sync::Arc::new(builder.build());
    let router = std::sync::Arc::new(FakeRouter::default());
    let mut dev = crate::device::VfioPciDevice::new(
        "vfio test".into(),
        fake.clone(),
        router.clone(),
        Some(Gsi(5)),
        reset,
    )
    .unwrap();
    if let Some(clique) = clique {
        dev.add_gpudirect_clique(clique).unwrap();
    }
    (fake, router, dev)
}

/// The host device a fuzz target puts behind [`fuzz_device`].
#[cfg(feature = "fuzzing")]
pub enum FuzzFixture<'a> {
    /// The NVMe-like controller (64-bit BAR0 with the MSI-X table and PBA, INTx).
    Nvme,
    /// The GPU-like display controller (MSI, a ROM, an I/O BAR).
    Gpu,
    /// A config space of `size` bytes (rounded up to 0x40) overwritten with `image`, behind a
    /// 64-bit 16 KiB BAR0, a 32-bit 4 KiB BAR2 and an I/O BAR4, with INTx, 4 MSI and 64 MSI-X
    /// vectors: whatever capabilities the image declares are parsed as from a real device.
    Raw {
        /// Bytes of config space the host device has.
        size: usize,
        /// What it reads from offset 0.
        image: &'a [u8],
    },
}

/// Opens a passthrough device on the fake host device `fixture`, for the fuzz targets in
/// tests/fuzz: INTx on GSI 5, interrupts routed to a recording router.
#[cfg(feature = "fuzzing")]
pub fn fuzz_device(
    fixture: FuzzFixture<'_>,
) -> Result<crate::device::VfioPciDevice, crate::device::DeviceError> {
    let builder = match fixture {
        FuzzFixture::Nvme => nvme_like(),
        FuzzFixture::Gpu => gpu_like(),
        FuzzFixture::Raw { size, image } => {
            let size = size.max(0x40);
            let io = region_flags::READ | region_flags::WRITE;
            let image = &image[..image.len().min(size)];
            FakeBuilder::new(0x1b36, 0x0010, [0x01, 0x08, 0x02], size)
                .bar(0, 0x4000, (false, true, false), MMAP_RW)
                .bar(2, 0x1000, (false, false, false), MMAP_RW)
                .bar(4, 0x100, (true, false, false), io)
                .bytes(0, image)
                .irqs(1, 4, 64)
        }
    };
    crate::device::VfioPciDevice::new(
        "vfio fuzz".into(),
        std::sync::Arc::new(builder.build()),
        std::sync::Arc::new(FakeRouter::default()),
        Some(Gsi(5)),
        crate::access::ResetDuty::Kernel,
    )
}
