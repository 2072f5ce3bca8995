//! The attach/detach pipeline and the guest-driven BAR changes, against a fake device and a
//! fake KVM: every resource attach takes comes back on detach and on a failed attach, a BAR
//! moves (or is refused) as one unit, and decoding off takes a BAR out of the guest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::config::{PciConfig, PciSegmentConfig};
use pci::bar::{BarIndex, BarKind, BarSpec};
use pci::config_space::{command, ClassCode, ConfigSpace, DeviceIds};

/// KVM as the device manager sees it: memory slots and doorbells, with failures on demand.
#[derive(Default)]
struct FakeGuest {
    slots: Mutex<BTreeMap<u32, (u64, u64)>>,
    doorbells: Mutex<BTreeSet<u64>>,
    /// Memory slots at these guest addresses fail.
    refuse_gpa: Mutex<BTreeSet<u64>>,
}

impl GuestMappings for FakeGuest {
    unsafe fn set_memory_slot(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        _host: usize,
    ) -> Result<(), kvm_ioctls::Error> {
        if self.refuse_gpa.lock().unwrap().contains(&gpa) {
            return Err(kvm_ioctls::Error::new(libc::EEXIST));
        }
        self.slots.lock().unwrap().insert(slot, (gpa, size));
        Ok(())
    }
    fn clear_memory_slot(&self, slot: u32) -> Result<(), kvm_ioctls::Error> {
        self.slots.lock().unwrap().remove(&slot);
        Ok(())
    }
    fn register_doorbell(&self, _: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        assert!(
            self.doorbells.lock().unwrap().insert(addr),
            "doorbell {addr:#x} twice"
        );
        Ok(())
    }
    fn unregister_doorbell(&self, _: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        assert!(
            self.doorbells.lock().unwrap().remove(&addr),
            "no doorbell {addr:#x}"
        );
        Ok(())
    }
}

impl FakeGuest {
    fn slot_gpas(&self) -> Vec<u64> {
        self.slots
            .lock()
            .unwrap()
            .values()
            .map(|&(g, _)| g)
            .collect()
    }
    fn doorbells(&self) -> Vec<u64> {
        self.doorbells.lock().unwrap().iter().copied().collect()
    }
}

fn bar(i: u8) -> BarIndex {
    BarIndex::new(i).unwrap()
}

/// A PCI function with a 16 KiB 64-bit BAR0 (its first page mapped from host memory, a doorbell
/// at 0x3000), a 4 KiB 32-bit BAR2 and a 256-port I/O BAR4; INTA; decoding on from the start.
struct FakeDevice {
    config: ConfigSpace,
    shutdowns: Arc<Mutex<u32>>,
}

impl PciDevice for FakeDevice {
    fn name(&self) -> &str {
        self.config.name()
    }
    fn read_config(&self, reg_idx: usize) -> u32 {
        self.config.read_config(reg_idx)
    }
    fn write_config(&mut self, reg_idx: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        self.config.write_config(reg_idx, offset, data)
    }
    fn bars(&self) -> Vec<BarSpec> {
        self.config.bars()
    }
    fn set_bar_address(&mut self, index: BarIndex, addr: u64) -> Result<(), PciError> {
        self.config.set_bar_address(index, addr)
    }
    fn read_bar(&mut self, index: BarIndex, offset: u64, data: &mut [u8]) {
        data.fill(index.get() * 0x10 + offset as u8);
    }
    fn decode(&self) -> Decode {
        self.config.decode()
    }
    fn shutdown(&mut self) {
        *self.shutdowns.lock().unwrap() += 1;
    }
}

const BAR0_SIZE: u64 = 0x4000;
const DOORBELL: u64 = 0x3000;

struct Built {
    shutdowns: Arc<Mutex<u32>>,
    device: Weak<Mutex<dyn PciDevice>>,
}

/// A build step making a [`FakeDevice`] (`bar0_size` bytes of BAR0) and reporting its GSI.
fn fake<'a>(
    bar0_size: u64,
    decoding: bool,
    gsi_seen: &'a Mutex<Option<Gsi>>,
    built: &'a Mutex<Option<Built>>,
) -> impl FnOnce(&Placement) -> Result<PciFunction, BuildError> + 'a {
    move |placement: &Placement| {
        let ids = DeviceIds {
            vendor_id: 0x1234,
            device_id: 0x5678,
            class: ClassCode {
                base: 0x01,
                sub: 0x08,
                prog_if: 0x02,
            },
            revision_id: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        };
        let mut config = ConfigSpace::new("fake", &ids);
        config
            .add_bar(BarSpec::new(bar(0), bar0_size, BarKind::Mem64))
            .unwrap();
        config
            .add_bar(BarSpec::new(bar(2), 0x1000, BarKind::Mem32))
            .unwrap();
        config
            .add_bar(BarSpec::new(bar(4), 0x100, BarKind::Io))
            .unwrap();
        if decoding {
            let cmd = command::MEMORY_SPACE | command::IO_SPACE;
            config.write_raw(pci::config_space::reg::COMMAND, &cmd.to_le_bytes());
        }
        let gsi = placement.intx_gsi(1);
        *gsi_seen.lock().unwrap() = gsi;
        let shutdowns = Arc::new(Mutex::new(0));
        let device: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(FakeDevice {
            config,
            shutdowns: shutdowns.clone(),
        }));
        *built.lock().unwrap() = Some(Built {
            shutdowns,
            device: Arc::downgrade(&device),
        });
        Ok(PciFunction {
            device,
            direct: vec![DirectArea {
                bar: bar(0),
                offset: 0,
                mapping: HostMappingForTest::page(),
            }],
            doorbells: vec![Doorbell {
                bar: bar(0),
                offset: DOORBELL,
                event: EventFd::new(EFD_NONBLOCK).unwrap(),
            }],
            peer_dma: None,
        })
    }
}

struct HostMappingForTest;
impl HostMappingForTest {
    fn page() -> guest_map::HostMapping {
        guest_map::HostMapping::anonymous(PAGE_SIZE).unwrap()
    }
}

struct Rig {
    guest: Arc<FakeGuest>,
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    manager: Arc<DeviceManager>,
}

const FIRST_SLOT: u32 = 2;

fn rig(segments: usize) -> Rig {
    let cfg = PciConfig {
        segments: vec![PciSegmentConfig::default(); segments],
        ..PciConfig::default()
    };
    let plan = topology::plan_segments(&cfg, 1 << 30, 40, None, &[])
        .unwrap()
        .segments;
    let guest = Arc::new(FakeGuest::default());
    let (mmio, pio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
    let manager =
        DeviceManager::new(&plan, guest.clone(), mmio.clone(), pio.clone(), FIRST_SLOT).unwrap();
    Rig {
        guest,
        mmio,
        pio,
        manager,
    }
}

impl Rig {
    fn attach(
        &self,
        id: &str,
        bar0_size: u64,
    ) -> (Result<AttachedInfo, AttachError>, Option<Gsi>, Built) {
        let gsi = Mutex::new(None);
        let built = Mutex::new(None);
        let result = self
            .manager
            .attach(id, 0, fake(bar0_size, true, &gsi, &built));
        let built = built.into_inner().unwrap().expect("the build step ran");
        (result, gsi.into_inner().unwrap(), built)
    }

    fn ecam(&self, bdf: Bdf, reg: u64) -> u64 {
        layout::ecam_window(0) + (u64::from(bdf.device()) << 15) + reg
    }

    fn config_write32(&self, bdf: Bdf, reg: u64, value: u32) {
        assert!(self.mmio.write(self.ecam(bdf, reg), &value.to_le_bytes()));
    }

    fn config_read32(&self, bdf: Bdf, reg: u64) -> u32 {
        let mut d = [0u8; 4];
        assert!(self.mmio.read(self.ecam(bdf, reg), &mut d));
        u32::from_le_bytes(d)
    }

    /// Moves the 64-bit BAR0 the way an OS does: low dword, then high dword.
    fn move_bar0(&self, bdf: Bdf, to: u64) {
        self.config_write32(bdf, 0x10, to as u32 | 0x4);
        self.config_write32(bdf, 0x14, (to >> 32) as u32);
    }

    fn bar0_register(&self, bdf: Bdf) -> u64 {
        u64::from(self.config_read32(bdf, 0x10) & !0xf)
            | u64::from(self.config_read32(bdf, 0x14)) << 32
    }

    /// Whether a guest access at `addr` reaches a device (a trap) rather than nothing.
    fn answers(&self, addr: u64) -> bool {
        let mut d = [0u8; 4];
        self.mmio.read(addr, &mut d)
    }
}

fn bar_addr(info: &AttachedInfo, index: u8) -> u64 {
    info.bars
        .iter()
        .find(|(s, _)| s.index == bar(index))
        .map(|(_, a)| *a)
        .unwrap()
}

#[test]
fn detach_frees_everything_and_a_reattach_gets_the_same_bdf_gsi_and_bars() {
    let r = rig(1);
    let (first, gsi, built) = r.attach("nvme0", BAR0_SIZE);
    let first = first.unwrap();
    assert_eq!(first.bdf, Bdf::new(0, 1, 0).unwrap());
    // INTA of slot 1: the _PRT swizzle gives GSI 17.
    assert_eq!(gsi, Some(Gsi(17)));
    let bar0 = bar_addr(&first, 0);
    assert!(
        bar0 >= 1 << 32,
        "a 64-bit BAR in the 64-bit window: {bar0:#x}"
    );
    assert_eq!(r.guest.slot_gpas(), vec![bar0]);
    assert_eq!(r.guest.doorbells(), vec![bar0 + DOORBELL]);
    assert!(r.answers(bar0 + 0x1000) && r.answers(bar_addr(&first, 2)));
    let mut port = [0u8; 1];
    assert!(r.pio.read(bar_addr(&first, 4), &mut port));
    assert_eq!(r.manager.memory_slots_in_use(), 1);
    assert_eq!(r.config_read32(first.bdf, 0), 0x5678_1234);

    let gone = r.manager.detach("nvme0").unwrap();
    assert_eq!(gone, first);
    assert!(r.guest.slot_gpas().is_empty());
    assert!(r.guest.doorbells().is_empty());
    assert!(!r.answers(bar0) && !r.answers(bar_addr(&first, 2)));
    assert!(!r.pio.read(bar_addr(&first, 4), &mut port));
    assert_eq!(r.manager.memory_slots_in_use(), 0);
    assert_eq!(r.config_read32(first.bdf, 0), u32::MAX, "the slot is empty");
    assert_eq!(*built.shutdowns.lock().unwrap(), 1);
    assert!(
        built.device.upgrade().is_none(),
        "nothing holds the device any more"
    );
    assert!(r.manager.devices().is_empty());

    let (again, gsi_again, _) = r.attach("nvme0", BAR0_SIZE);
    let again = again.unwrap();
    assert_eq!((again.bdf, gsi_again), (first.bdf, gsi));
    assert_eq!(again.bars, first.bars);
    assert_eq!(r.guest.slot_gpas(), vec![bar0]);
    assert!(matches!(
        r.manager.detach("nope"),
        Err(AttachError::NotAttached { .. })
    ));
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    let r = rig(1);
    let (ok, _, _) = r.attach("a", BAR0_SIZE);
    let ok = ok.unwrap();
    // BAR0 larger than the whole 64-bit window (1 TiB at 40 bits) fits nowhere.
    let (err, _, built) = r.attach("b", 1 << 41);
    let err = err.unwrap_err();
    assert!(
        matches!(&err, AttachError::BarPlacement { device, .. } if device == "b"),
        "{err}"
    );
    assert!(
        crate::error_chain(&err).contains("b"),
        "{}",
        crate::error_chain(&err)
    );
    assert!(
        built.device.upgrade().is_none(),
        "the failed device was dropped"
    );
    // Its slot and its other BARs came back: the next device gets slot 2 and the same BAR2
    // address the failed one would have had after "a".
    let (c, _, _) = r.attach("c", BAR0_SIZE);
    let c = c.unwrap();
    assert_eq!(c.bdf, Bdf::new(0, 2, 0).unwrap());
    assert_eq!(r.manager.devices().len(), 2);
    assert_eq!(r.manager.memory_slots_in_use(), 2);
    assert_ne!(bar_addr(&c, 2), bar_addr(&ok, 2));

    // A memory slot KVM refuses at attach: the device is not attached and nothing stays.
    let next_bar0 = bar_addr(&c, 0) + BAR0_SIZE;
    r.guest.refuse_gpa.lock().unwrap().insert(next_bar0);
    let (err, _, built) = r.attach("d", BAR0_SIZE);
    assert!(
        matches!(err, Err(AttachError::MemorySlot { .. })),
        "{err:?}"
    );
    assert!(built.device.upgrade().is_none());
    assert_eq!(*built.shutdowns.lock().unwrap(), 1);
    assert!(!r.answers(next_bar0 + 0x1000), "no trap left behind");
    assert_eq!(r.guest.doorbells().len(), 2);
    assert_eq!(r.manager.memory_slots_in_use(), 2);

    // A build step that fails gives its slot back.
    let err = r
        .manager
        .attach("e", 0, |_| {
            Err(BuildError::EventFd(std::io::Error::other("no fds")))
        })
        .unwrap_err();
    assert!(matches!(err, AttachError::Build { .. }));
    r.guest.refuse_gpa.lock().unwrap().clear();
    let (f, _, _) = r.attach("f", BAR0_SIZE);
    assert_eq!(f.unwrap().bdf, Bdf::new(0, 3, 0).unwrap());
    // Ids are unique.
    let dup = r
        .manager
        .attach("f", 0, |_| unreachable!("refused before building"));
    assert!(matches!(dup, Err(AttachError::DuplicateId { .. })));
}

#[test]
fn guest_bar_moves_take_the_mapping_along_and_back() {
    let r = rig(1);
    let (info, _, _) = r.attach("nvme0", BAR0_SIZE);
    let info = info.unwrap();
    let first = bar_addr(&info, 0);
    let mut at = first;
    for to in [first + (1 << 20), first + (2 << 20), first] {
        r.move_bar0(info.bdf, to);
        assert_eq!(r.bar0_register(info.bdf), to);
        assert_eq!(
            r.guest.slot_gpas(),
            vec![to],
            "memory slot follows to {to:#x}"
        );
        assert_eq!(r.guest.doorbells(), vec![to + DOORBELL]);
        assert!(r.answers(to + 0x1000));
        if at != to {
            assert!(!r.answers(at + 0x1000), "nothing left at {at:#x}");
        }
        at = to;
    }
    assert_eq!(
        r.manager.devices()[0].bars,
        info.bars,
        "back where it started"
    );
    assert_eq!(r.manager.memory_slots_in_use(), 1);
}

#[test]
fn a_move_the_segment_cannot_take_is_refused_and_the_old_mapping_stays() {
    let r = rig(1);
    let (a, _, _) = r.attach("a", BAR0_SIZE);
    let (b, _, _) = r.attach("b", BAR0_SIZE);
    let (a, b) = (a.unwrap(), b.unwrap());
    let (a0, b0) = (bar_addr(&a, 0), bar_addr(&b, 0));
    // Onto the other device's BAR0, then outside every window (into guest RAM).
    for to in [b0, 0x10_0000] {
        r.move_bar0(a.bdf, to);
        assert_eq!(r.bar0_register(a.bdf), a0, "the register went back");
        assert!(r.guest.slot_gpas().contains(&a0));
        assert!(r.answers(a0 + 0x1000));
        assert!(r.guest.doorbells().contains(&(a0 + DOORBELL)));
    }
    assert!(r.guest.slot_gpas().contains(&b0));
    // A 32-bit BAR moved onto the ECAM area is refused too.
    let a2 = bar_addr(&a, 2);
    r.config_write32(a.bdf, 0x18, layout::ecam_window(0) as u32);
    assert_eq!(u64::from(r.config_read32(a.bdf, 0x18)), a2);
    assert!(r.answers(a2));
}

#[test]
fn clearing_memory_space_takes_the_bars_out_of_the_guest() {
    let r = rig(1);
    let (info, _, _) = r.attach("nvme0", BAR0_SIZE);
    let info = info.unwrap();
    let bar0 = bar_addr(&info, 0);
    // Memory off, I/O on.
    r.config_write32(info.bdf, 0x4, u32::from(command::IO_SPACE));
    assert!(!r.answers(bar0 + 0x1000) && !r.answers(bar_addr(&info, 2)));
    assert!(r.guest.slot_gpas().is_empty() && r.guest.doorbells().is_empty());
    let mut port = [0u8; 1];
    assert!(
        r.pio.read(bar_addr(&info, 4), &mut port),
        "I/O still decodes"
    );
    // Moved while not decoding: only the address changes; decoding on maps it there.
    let moved = bar0 + (4 << 20);
    r.move_bar0(info.bdf, moved);
    assert!(r.guest.slot_gpas().is_empty());
    r.config_write32(info.bdf, 0x4, u32::from(command::MEMORY_SPACE));
    assert_eq!(r.guest.slot_gpas(), vec![moved]);
    assert_eq!(r.guest.doorbells(), vec![moved + DOORBELL]);
    assert!(r.answers(moved + 0x1000) && !r.answers(bar0 + 0x1000));
    assert!(!r.pio.read(bar_addr(&info, 4), &mut port), "I/O off now");
    // Writing the same command again changes nothing.
    r.config_write32(info.bdf, 0x4, u32::from(command::MEMORY_SPACE));
    assert_eq!(r.guest.slot_gpas(), vec![moved]);
}

#[test]
fn a_device_that_starts_not_decoding_is_mapped_when_the_guest_enables_it() {
    let r = rig(1);
    let (gsi, built) = (Mutex::new(None), Mutex::new(None));
    let info = r
        .manager
        .attach("virtio", 0, fake(BAR0_SIZE, false, &gsi, &built))
        .unwrap();
    let bar0 = bar_addr(&info, 0);
    assert!(!r.answers(bar0) && r.guest.slot_gpas().is_empty());
    r.config_write32(info.bdf, 0x4, u32::from(command::MEMORY_SPACE));
    assert!(r.answers(bar0));
    assert_eq!(r.guest.slot_gpas(), vec![bar0]);
}

#[test]
fn dropping_the_manager_drops_every_device_even_with_the_buses_alive() {
    let r = rig(2);
    let (gsi, built) = (Mutex::new(None), Mutex::new(None));
    r.manager
        .attach("on-seg-1", 1, fake(BAR0_SIZE, true, &gsi, &built))
        .unwrap();
    let built = built.into_inner().unwrap().unwrap();
    let Rig {
        guest,
        mmio,
        pio,
        manager,
    } = r;
    drop(manager);
    assert!(
        built.device.upgrade().is_none(),
        "a bus or config path still holds the device: a reference cycle"
    );
    assert_eq!(*built.shutdowns.lock().unwrap(), 1);
    assert!(guest.slot_gpas().is_empty());
    // The ECAM window is still on the bus but leads nowhere now.
    let mut d = [0u8; 4];
    assert!(mmio.write(layout::ecam_window(1) + (1 << 15) + 4, &[2, 0]));
    assert!(mmio.read(layout::ecam_window(1) + (1 << 15), &mut d));
    drop(pio);
}

#[test]
fn attach_refuses_a_segment_that_does_not_exist() {
    let r = rig(1);
    let err = r
        .manager
        .attach("x", 3, |_| unreachable!("no build without a segment"))
        .unwrap_err();
    assert!(
        err.to_string().contains("segment 3") && err.to_string().contains("has 1"),
        "{err}"
    );
}

#[test]
fn a_move_through_the_legacy_config_ports_is_followed_too() {
    let r = rig(1);
    let (info, _, _) = r.attach("dev", BAR0_SIZE);
    let info = info.unwrap();
    let old = bar_addr(&info, 2);
    let new = old + 0x10_0000;
    // CONFIG_ADDRESS: enable, bus 0, device, function 0, register 0x18 (BAR2).
    let address = 0x8000_0000u32 | (u32::from(info.bdf.device()) << 11) | 0x18;
    let port = u64::from(layout::PCI_CONFIG_IO_PORT);
    assert!(r.pio.write(port, &address.to_le_bytes()));
    assert!(r.pio.write(port + 4, &(new as u32).to_le_bytes()));
    assert!(r.answers(new) && !r.answers(old));
    assert_eq!(u64::from(r.config_read32(info.bdf, 0x18)), new);
}

/// The VFIO container as far as peer-to-peer goes: what is DMA-mapped now, in order of the
/// calls, with an IOMMU that reaches only up to `limit`.
struct FakePeer {
    limit: u64,
    mapped: Mutex<BTreeSet<(u64, u64)>>,
    calls: Mutex<Vec<String>>,
}

impl PeerDma for FakePeer {
    fn check(&self, iova: u64, size: u64) -> Result<(), vfio_dev::peer::PeerDmaError> {
        if iova + size - 1 > self.limit {
            return Err(vfio_dev::peer::PeerDmaError::OutOfReach {
                iova,
                size,
                ranges: format!("0..={:#x}", self.limit),
            });
        }
        Ok(())
    }
    unsafe fn map(
        &self,
        iova: u64,
        size: u64,
        _host: usize,
    ) -> Result<(), vfio_dev::peer::PeerDmaError> {
        self.check(iova, size)?;
        assert!(
            self.mapped.lock().unwrap().insert((iova, size)),
            "mapped twice"
        );
        self.calls.lock().unwrap().push(format!("map {iova:#x}"));
        Ok(())
    }
    fn unmap(&self, iova: u64, size: u64) -> Result<(), vfio_dev::peer::PeerDmaError> {
        assert!(
            self.mapped.lock().unwrap().remove(&(iova, size)),
            "not mapped"
        );
        self.calls.lock().unwrap().push(format!("unmap {iova:#x}"));
        Ok(())
    }
}

impl FakePeer {
    fn mapped(&self) -> Vec<u64> {
        self.mapped
            .lock()
            .unwrap()
            .iter()
            .map(|&(i, _)| i)
            .collect()
    }
    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

fn attach_with_peer(r: &Rig, id: &str, peer: &Arc<FakePeer>) -> AttachedInfo {
    let (gsi, built) = (Mutex::new(None), Mutex::new(None));
    let make = fake(BAR0_SIZE, true, &gsi, &built);
    let peer: Arc<dyn PeerDma> = peer.clone();
    r.manager
        .attach(id, 0, move |p| {
            let mut f = make(p)?;
            f.peer_dma = Some(peer);
            Ok(f)
        })
        .unwrap()
}

#[test]
fn peer_mappings_follow_moves_and_decoding_and_go_at_detach() {
    let r = rig(1);
    let peer = Arc::new(FakePeer {
        limit: u64::MAX,
        mapped: Mutex::new(BTreeSet::new()),
        calls: Mutex::new(Vec::new()),
    });
    let info = attach_with_peer(&r, "gpu", &peer);
    let bar0 = bar_addr(&info, 0);
    assert_eq!(info.peer_dma, Some(Ok(())));
    assert_eq!(peer.mapped(), vec![bar0], "IOVA = the BAR's guest address");
    peer.take_calls();
    // A move: the old IOVA is unmapped before the new one is mapped.
    let moved = bar0 + (1 << 20);
    r.move_bar0(info.bdf, moved);
    assert_eq!(
        peer.take_calls(),
        [format!("unmap {bar0:#x}"), format!("map {moved:#x}")]
    );
    // Decoding off and on again at the same place: the peer mapping stays (the device itself
    // stops answering while its decoding is off); nothing is remapped.
    r.config_write32(info.bdf, 0x4, u32::from(command::IO_SPACE));
    assert_eq!(peer.mapped(), vec![moved]);
    assert!(
        r.guest.slot_gpas().is_empty(),
        "the guest's own mapping goes"
    );
    r.config_write32(info.bdf, 0x4, u32::from(command::MEMORY_SPACE));
    assert!(peer.take_calls().is_empty());
    // A move while decoding is off unmaps the old IOVA at once and maps nothing; decoding on
    // maps it where the guest left it.
    r.config_write32(info.bdf, 0x4, u32::from(command::IO_SPACE));
    r.move_bar0(info.bdf, bar0);
    assert_eq!(peer.take_calls(), [format!("unmap {moved:#x}")]);
    assert!(peer.mapped().is_empty());
    r.config_write32(info.bdf, 0x4, u32::from(command::MEMORY_SPACE));
    assert_eq!(peer.mapped(), vec![bar0]);
    assert_eq!(peer.take_calls(), [format!("map {bar0:#x}")]);
    r.manager.detach("gpu").unwrap();
    assert!(peer.mapped().is_empty(), "detach unmaps it");
}

#[test]
fn a_bar_beyond_the_iommus_reach_works_without_peer_to_peer() {
    let r = rig(1);
    // The IOMMU ends just below where the manager puts BAR0 (the start of the 64-bit window).
    let peer = Arc::new(FakePeer {
        limit: (1 << 32) - 1,
        mapped: Mutex::new(BTreeSet::new()),
        calls: Mutex::new(Vec::new()),
    });
    let info = attach_with_peer(&r, "gpu", &peer);
    let bar0 = bar_addr(&info, 0);
    // Attached and mapped into the guest all the same; only the P2P mapping is missing, and
    // the device manager says why.
    assert_eq!(r.guest.slot_gpas(), vec![bar0]);
    assert!(peer.mapped().is_empty());
    let why = info.peer_dma.unwrap().unwrap_err().to_string();
    assert!(why.contains("beyond the host IOMMU's reach"), "{why}");
    // Its 32-bit BAR2 has no direct area in the fake, so it does not count.
    assert_eq!(r.manager.devices()[0].id, "gpu");
}
