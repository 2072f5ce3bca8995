//! Test support: a virtio driver that speaks to a [`VirtioPciDevice`] only through its PCI config
//! space and BAR, a split virtqueue laid out by hand in guest memory, a recording
//! `InterruptRouter`, and temporary image files.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pci::bar::{BarIndex, BarKind};
use pci::device::PciDevice;
use pci::routing::{Gsi, InterruptRouter, RoutingError};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::pci::layout::{self, common, MSIX_TABLE_OFFSET, NOTIFY_OFFSET};
use super::pci::VirtioPciDevice;
use super::{features, status, GuestMemory, VirtioDevice};

/// Guest RAM of every test.
pub const MEM_SIZE: usize = 4 << 20;
/// Queue size the test driver programs.
pub const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Where request buffers go.
pub const DATA: u64 = 0x10_0000;

/// What the fake router was asked to do.
#[derive(Default)]
pub struct RouterState {
    next: u32,
    /// gsi → (address, data).
    pub routes: BTreeMap<u32, (u64, u32)>,
    /// gsi → raw fd of the attached irqfd.
    pub irqfds: BTreeMap<u32, RawFd>,
    /// GSIs returned.
    pub freed: Vec<u32>,
}

/// An `InterruptRouter` that records instead of calling KVM.
#[derive(Default)]
pub struct FakeRouter(Mutex<RouterState>);

impl FakeRouter {
    /// The recorded state.
    pub fn state(&self) -> MutexGuard<'_, RouterState> {
        self.0.lock().unwrap()
    }
}

impl InterruptRouter for FakeRouter {
    fn allocate_gsi(&self) -> Result<Gsi, RoutingError> {
        let mut s = self.state();
        s.next += 1;
        Ok(Gsi(23 + s.next))
    }
    fn free_gsi(&self, gsi: Gsi) {
        self.state().freed.push(gsi.0);
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
    fn attach_level_irqfd(&self, _: &EventFd, _: &EventFd, _: Gsi) -> Result<(), RoutingError> {
        unreachable!("virtio-pci does not use INTx")
    }
    fn detach_level_irqfd(&self, _: &EventFd, _: Gsi) -> Result<(), RoutingError> {
        unreachable!("virtio-pci does not use INTx")
    }
}

/// A temporary file, removed on drop.
pub struct TempImage(pub PathBuf);

impl TempImage {
    /// A new file holding `content`.
    pub fn new(content: &[u8]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "viaduct-virtio-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, content).unwrap();
        Self(path)
    }

    /// The file's current content.
    pub fn content(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A recognisable image of `sectors` sectors: byte `i` is `i * 7 % 251`.
pub fn pattern(sectors: usize) -> Vec<u8> {
    (0..sectors * 512).map(|i| (i * 7 % 251) as u8).collect()
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Clone, Copy)]
pub struct Buf(pub u64, pub u32, pub bool);

/// The driver side of one device.
pub struct Driver {
    /// The device under test.
    pub dev: VirtioPciDevice,
    /// Its guest memory.
    pub mem: Arc<GuestMemory>,
    /// The router it asks for interrupts.
    pub router: Arc<FakeRouter>,
    next_desc: u16,
    avail_idx: u16,
    /// Ring state (next descriptor, available index) of queues other than 0 (see
    /// [`Driver::setup_queue_at`]).
    others: BTreeMap<u16, (u16, u16)>,
}

/// Guest addresses of queue `q`'s descriptor table, available ring and used ring: queue 0 at
/// `DESC`/`AVAIL`/`USED`, each further queue 16 KiB higher.
fn rings(q: u16) -> (u64, u64, u64) {
    let base = u64::from(q) * 0x4000;
    (DESC + base, AVAIL + base, USED + base)
}

const BAR0: BarIndex = layout::VIRTIO_BAR;

impl Driver {
    /// `device` behind a 64-bit BAR0, with fresh guest memory.
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let router = Arc::new(FakeRouter::default());
        let dev =
            VirtioPciDevice::new(device, mem.clone(), router.clone(), BarKind::Mem64).unwrap();
        Self {
            dev,
            mem,
            router,
            next_desc: 0,
            avail_idx: 0,
            others: BTreeMap::new(),
        }
    }

    /// BAR0 read of `len` bytes at `offset`, little endian.
    pub fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(BAR0, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// BAR0 write of the low `len` bytes of `value` at `offset`.
    pub fn write(&mut self, offset: u64, len: usize, value: u64) {
        self.dev
            .write_bar(BAR0, offset, &value.to_le_bytes()[..len]);
    }

    /// The device status register.
    pub fn status(&mut self) -> u8 {
        self.read(common::DEVICE_STATUS, 1) as u8
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&mut self) -> u64 {
        self.write(common::DEVICE_FEATURE_SELECT, 4, 0);
        let lo = self.read(common::DEVICE_FEATURE, 4);
        self.write(common::DEVICE_FEATURE_SELECT, 4, 1);
        lo | self.read(common::DEVICE_FEATURE, 4) << 32
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, set FEATURES_OK; returns the status read
    /// back (FEATURES_OK clear if the device refused).
    pub fn negotiate(&mut self, features: u64) -> u8 {
        self.write(common::DEVICE_STATUS, 1, 0);
        self.write(common::DEVICE_STATUS, 1, u64::from(status::ACKNOWLEDGE));
        let s = status::ACKNOWLEDGE | status::DRIVER;
        self.write(common::DEVICE_STATUS, 1, u64::from(s));
        for sel in 0..2 {
            self.write(common::DRIVER_FEATURE_SELECT, 4, sel);
            self.write(
                common::DRIVER_FEATURE,
                4,
                features >> (32 * sel) & 0xffff_ffff,
            );
        }
        self.write(common::DEVICE_STATUS, 1, u64::from(s | status::FEATURES_OK));
        self.status()
    }

    /// Programs queue 0 with the test layout and `vector`, and enables it.
    pub fn setup_queue(&mut self, vector: u16) {
        self.write(common::QUEUE_SELECT, 2, 0);
        self.write(common::QUEUE_SIZE, 2, u64::from(QSIZE));
        self.write(common::QUEUE_MSIX_VECTOR, 2, u64::from(vector));
        // Addresses as Linux writes them: two 32-bit halves.
        for (reg, addr) in [
            (common::QUEUE_DESC, DESC),
            (common::QUEUE_DRIVER, AVAIL),
            (common::QUEUE_DEVICE, USED),
        ] {
            self.write(reg, 4, addr & 0xffff_ffff);
            self.write(reg + 4, 4, addr >> 32);
        }
        self.write(common::QUEUE_ENABLE, 2, 1);
    }

    /// Sets DRIVER_OK on top of the current status; returns the status read back.
    pub fn driver_ok(&mut self) -> u8 {
        let s = self.status() | status::DRIVER_OK;
        self.write(common::DEVICE_STATUS, 1, u64::from(s));
        self.status()
    }

    /// The whole init sequence, accepting every offered feature; queue 0 on MSI-X vector 1.
    pub fn start(&mut self) {
        let f = self.device_features();
        assert_ne!(f & features::VERSION_1, 0);
        assert_ne!(self.negotiate(f) & status::FEATURES_OK, 0);
        self.setup_queue(1);
        assert_eq!(self.driver_ok() & status::NEEDS_RESET, 0);
    }

    /// Places `bufs` as a descriptor chain, makes it available and kicks queue 0 through the
    /// trapped doorbell. Returns the head index.
    pub fn submit(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == bufs.len();
            let mut flags = if b.2 { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = DESC + u64::from(idx) * 16;
            self.mem.write_obj(b.0, GuestAddress(at)).unwrap();
            self.mem.write_obj(b.1, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            let next = (idx + 1) % QSIZE;
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = AVAIL + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.write(NOTIFY_OFFSET, 2, 0);
        head
    }

    /// Submits `bufs` and waits for the device to use them; returns (id, len) of the used entry.
    pub fn complete(&mut self, bufs: &[Buf]) -> (u32, u32) {
        self.submit(bufs);
        self.wait_used(self.avail_idx)
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// Waits until `n` chains are used; returns the last one's (id, len).
    pub fn wait_used(&self, n: u16) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx() < n {
            assert!(Instant::now() < deadline, "the device completed nothing");
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = USED + 4 + u64::from((n - 1) % QSIZE) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// Programs queue `q` (any index) with its own rings (see [`rings`]) and `vector`, and
    /// enables it; chains go to it through [`Driver::submit_to`].
    pub fn setup_queue_at(&mut self, q: u16, vector: u16) {
        let (desc, avail, used) = rings(q);
        self.write(common::QUEUE_SELECT, 2, u64::from(q));
        self.write(common::QUEUE_SIZE, 2, u64::from(QSIZE));
        self.write(common::QUEUE_MSIX_VECTOR, 2, u64::from(vector));
        for (reg, addr) in [
            (common::QUEUE_DESC, desc),
            (common::QUEUE_DRIVER, avail),
            (common::QUEUE_DEVICE, used),
        ] {
            self.write(reg, 4, addr & 0xffff_ffff);
            self.write(reg + 4, 4, addr >> 32);
        }
        self.write(common::QUEUE_ENABLE, 2, 1);
        if q != 0 {
            self.others.insert(q, (0, 0));
        }
    }

    /// Negotiates every offered feature, sets up queues `0..n` (queue `i` on MSI-X vector
    /// `i + 1`) and sets DRIVER_OK.
    pub fn start_queues(&mut self, n: u16) {
        let f = self.device_features();
        assert_ne!(self.negotiate(f) & status::FEATURES_OK, 0);
        for q in 0..n {
            self.setup_queue_at(q, q + 1);
        }
        assert_eq!(self.driver_ok() & status::NEEDS_RESET, 0);
    }

    /// [`Driver::submit`] on queue `q`; returns the head index.
    pub fn submit_to(&mut self, q: u16, bufs: &[Buf]) -> u16 {
        if q == 0 {
            return self.submit(bufs);
        }
        let (desc, avail, _) = rings(q);
        let (mut next_desc, mut avail_idx) = self.others.get(&q).copied().unwrap_or_default();
        let head = next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let mut flags = if b.2 { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 != bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = desc + u64::from(idx) * 16;
            self.mem.write_obj(b.0, GuestAddress(at)).unwrap();
            self.mem.write_obj(b.1, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem
                .write_obj((idx + 1) % QSIZE, GuestAddress(at + 14))
                .unwrap();
        }
        next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = avail + 4 + u64::from(avail_idx % QSIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        avail_idx = avail_idx.wrapping_add(1);
        self.mem
            .write_obj(avail_idx, GuestAddress(avail + 2))
            .unwrap();
        self.others.insert(q, (next_desc, avail_idx));
        let doorbell = NOTIFY_OFFSET + u64::from(q) * u64::from(layout::NOTIFY_OFF_MULTIPLIER);
        self.write(doorbell, 2, u64::from(q));
        head
    }

    /// The used ring index of queue `q`.
    pub fn used_idx_of(&self, q: u16) -> u16 {
        self.mem.read_obj(GuestAddress(rings(q).2 + 2)).unwrap()
    }

    /// Waits until `n` chains of queue `q` are used; returns the last one's (id, len).
    pub fn wait_used_on(&self, q: u16, n: u16) -> (u32, u32) {
        let used = rings(q).2;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx_of(q) < n {
            assert!(
                Instant::now() < deadline,
                "queue {q}: the device completed nothing"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = used + 4 + u64::from((n - 1) % QSIZE) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// Guest memory at `addr`.
    pub fn mem_read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Config offset of the MSI-X capability.
    pub fn msix_cap(&self) -> usize {
        let mut ptr = (self.dev.read_config(0x34 / 4) & 0xff) as usize;
        while ptr != 0 {
            let dw = self.dev.read_config(ptr / 4);
            if dw & 0xff == 0x11 {
                return ptr;
            }
            ptr = ((dw >> 8) & 0xff) as usize;
        }
        panic!("no MSI-X capability");
    }

    /// Writes MSI-X Message Control (enable, function mask).
    pub fn msix_control(&mut self, value: u16) {
        let cap = self.msix_cap();
        self.dev.write_config(cap / 4, 2, &value.to_le_bytes());
    }

    /// Programs table entry `v` with a recognisable message and the given mask.
    pub fn msix_entry(&mut self, v: u16, masked: bool) {
        let at = u64::from(MSIX_TABLE_OFFSET) + u64::from(v) * 16;
        self.write(at, 4, 0xfee0_0000 + u64::from(v) * 0x1000);
        self.write(at + 4, 4, 0);
        self.write(at + 8, 4, 0x40 + u64::from(v));
        self.write(at + 12, 4, u64::from(masked));
    }
}
