//! Tests of [`super::VirtioNet`], driven through the virtio-pci transport like a guest driver,
//! on a fake tap: one end of a datagram socketpair (frame boundaries kept, as a tap keeps them).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::pci::layout::{common, DEVICE_CFG_OFFSET, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER};
use crate::virtio::status;
use crate::virtio::test_driver::Driver;
use pci::device::PciDevice;

const QSIZE: u16 = 16;
const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);

/// The far end of a fake tap.
struct Peer(OwnedFd);

impl Peer {
    fn send(&self, frame: &[u8]) {
        // SAFETY: a valid buffer of its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize);
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 70000];
        loop {
            // SAFETY: a valid buffer of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                buf.truncate(n as usize);
                return Some(buf);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn nothing_within(&self, ms: u64) -> bool {
        std::thread::sleep(Duration::from_millis(ms));
        let mut b = [0u8; 16];
        // SAFETY: a valid buffer of its length.
        unsafe { libc::recv(self.0.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) < 0 }
    }
}

fn fake_tap(name: &str) -> (Arc<Tap>, Peer) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: fresh fds we own.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (Arc::new(Tap::from_owned(a, name)), Peer(b))
}

/// One split ring laid out by the test in guest memory.
struct Ring {
    index: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
}

/// A driver of a net device with `pairs` queue pairs and the control queue.
struct Net {
    d: Driver,
    rings: Vec<Ring>,
    peers: Vec<Peer>,
}

/// A buffer: guest address, length, device-writable.
#[derive(Clone, Copy)]
struct B(u64, u32, bool);

const DATA: u64 = 0x20_0000;

fn device(pairs: usize, offloads: Offloads) -> (VirtioNet, Vec<Peer>) {
    let (taps, peers): (Vec<_>, Vec<_>) = (0..pairs).map(|i| fake_tap(&format!("tap{i}"))).unzip();
    let net = VirtioNet::new(NetDeviceConfig {
        name: "net0".into(),
        taps,
        mac: MAC,
        queue_size: 256,
        offloads,
    });
    (net, peers)
}

impl Net {
    fn new(pairs: usize) -> Self {
        let (net, peers) = device(pairs, Offloads::default());
        Net {
            d: Driver::new(Box::new(net)),
            rings: Vec::new(),
            peers,
        }
    }

    /// Negotiates `features`, enables every queue, sets DRIVER_OK.
    fn start(&mut self, features: u64) {
        assert_ne!(self.d.negotiate(features) & status::FEATURES_OK, 0);
        let queues = self.d.read(common::NUM_QUEUES, 2) as u16;
        for q in 0..queues {
            let base = 0x1_0000 + u64::from(q) * 0x4000;
            let ring = Ring {
                index: q,
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                next_desc: 0,
                avail_idx: 0,
            };
            self.d.write(common::QUEUE_SELECT, 2, u64::from(q));
            self.d.write(common::QUEUE_SIZE, 2, u64::from(QSIZE));
            for (reg, addr) in [
                (common::QUEUE_DESC, ring.desc),
                (common::QUEUE_DRIVER, ring.avail),
                (common::QUEUE_DEVICE, ring.used),
            ] {
                self.d.write(reg, 8, addr);
            }
            self.d.write(common::QUEUE_ENABLE, 2, 1);
            self.rings.push(ring);
        }
        assert_eq!(self.d.driver_ok() & status::NEEDS_RESET, 0);
    }

    fn start_all(&mut self) {
        let f = self.d.device_features();
        self.start(f);
    }

    /// Makes `bufs` available on queue `q` and kicks it.
    fn submit(&mut self, q: usize, bufs: &[B]) {
        let mem = self.d.mem.clone();
        let r = &mut self.rings[q];
        let head = r.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let mut flags = if b.2 { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = r.desc + u64::from(idx) * 16;
            mem.write_obj(b.0, GuestAddress(at)).unwrap();
            mem.write_obj(b.1, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj((idx + 1) % QSIZE, GuestAddress(at + 14))
                .unwrap();
        }
        r.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = r.avail + 4 + u64::from(r.avail_idx % QSIZE) * 2;
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        mem.write_obj(r.avail_idx, GuestAddress(r.avail + 2))
            .unwrap();
        let index = r.index;
        let doorbell = NOTIFY_OFFSET + u64::from(index) * u64::from(NOTIFY_OFF_MULTIPLIER);
        self.d.write(doorbell, 2, u64::from(index));
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.d
            .mem
            .read_obj(GuestAddress(self.rings[q].used + 2))
            .unwrap()
    }

    /// Waits for the `n`-th used entry of queue `q`; its (id, len).
    fn wait_used(&self, q: usize, n: u16) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx(q) < n {
            assert!(Instant::now() < deadline, "queue {q}: nothing used");
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = self.rings[q].used + 4 + u64::from((n - 1) % QSIZE) * 8;
        let mem = &self.d.mem;
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    fn put(&self, addr: u64, bytes: &[u8]) {
        self.d.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }
}

/// A frame as the guest hands it over: a header (flags, gso_type 0) and `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(payload);
    f
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn config_space_holds_mac_link_up_and_queue_pairs() {
    let mut n = Net::new(2);
    let cfg = |n: &mut Net, at: usize, len| n.d.read(DEVICE_CFG_OFFSET + at as u64, len);
    let mac: Vec<u8> = (0..6).map(|i| cfg(&mut n, i, 1) as u8).collect();
    assert_eq!(mac, MAC.0);
    assert_eq!(cfg(&mut n, config_offset::STATUS, 2), 1);
    assert_eq!(cfg(&mut n, config_offset::MAX_VIRTQUEUE_PAIRS, 2), 2);
    assert_eq!(cfg(&mut n, config_offset::MTU, 2), 0);
    assert_eq!(cfg(&mut n, 0x40, 4), 0);
    // 2 pairs + the control queue.
    assert_eq!(n.d.read(common::NUM_QUEUES, 2), 5);
    // PCI identity: virtio-net, network controller class.
    assert_eq!(n.d.dev.read_config(0), 0x1041_1af4);
    assert_eq!(n.d.dev.read_config(2) >> 16, 0x0200);
}

#[test]
fn offered_features_follow_the_offload_settings() {
    let bit = |b: u32| 1u64 << b;
    let all = offered_features(Offloads::default(), 2);
    for b in [
        vn::VIRTIO_NET_F_CSUM,
        vn::VIRTIO_NET_F_GUEST_CSUM,
        vn::VIRTIO_NET_F_HOST_TSO4,
        vn::VIRTIO_NET_F_HOST_TSO6,
        vn::VIRTIO_NET_F_GUEST_TSO4,
        vn::VIRTIO_NET_F_GUEST_TSO6,
        vn::VIRTIO_NET_F_MAC,
        vn::VIRTIO_NET_F_STATUS,
        vn::VIRTIO_NET_F_CTRL_VQ,
        vn::VIRTIO_NET_F_MQ,
    ] {
        assert_ne!(all & bit(b), 0, "bit {b}");
    }
    assert_ne!(all & features::VERSION_1, 0);
    for b in [
        vn::VIRTIO_NET_F_MRG_RXBUF,
        vn::VIRTIO_NET_F_GUEST_UFO,
        vn::VIRTIO_NET_F_HOST_UFO,
        vn::VIRTIO_NET_F_CTRL_RX,
    ] {
        assert_eq!(all & bit(b), 0, "bit {b}");
    }
    assert_ne!(all & features::RING_EVENT_IDX, 0);
    // One pair: no MQ.
    assert_eq!(
        offered_features(Offloads::default(), 1) & bit(vn::VIRTIO_NET_F_MQ),
        0
    );
    let no_tso = offered_features(
        Offloads {
            csum: true,
            tso: false,
        },
        1,
    );
    assert_ne!(no_tso & bit(vn::VIRTIO_NET_F_CSUM), 0);
    assert_eq!(no_tso & bit(vn::VIRTIO_NET_F_HOST_TSO4), 0);
    assert_eq!(no_tso & bit(vn::VIRTIO_NET_F_GUEST_TSO4), 0);
    let none = offered_features(
        Offloads {
            csum: false,
            tso: true,
        },
        1,
    );
    assert_eq!(
        none & (bit(vn::VIRTIO_NET_F_CSUM) | bit(vn::VIRTIO_NET_F_GUEST_TSO4)),
        0
    );
}

#[test]
fn tap_offloads_follow_what_the_guest_accepted() {
    let bit = |b: u32| 1u64 << b;
    assert_eq!(tap_offload_flags(0), 0);
    // TSO without checksum offload means nothing to the tap.
    assert_eq!(tap_offload_flags(bit(vn::VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(
        tap_offload_flags(bit(vn::VIRTIO_NET_F_GUEST_CSUM)),
        libc::TUN_F_CSUM
    );
    let all = offered_features(Offloads::default(), 1);
    assert_eq!(
        tap_offload_flags(all),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
    // Host-side (transmit) offloads do not concern the tap's receive direction.
    assert_eq!(
        tap_offload_flags(bit(vn::VIRTIO_NET_F_HOST_TSO4) | bit(vn::VIRTIO_NET_F_CSUM)),
        0
    );
}

#[test]
fn the_driver_sees_the_offered_features_and_may_accept_a_subset() {
    let mut n = Net::new(1);
    let f = n.d.device_features();
    assert_eq!(f, offered_features(Offloads::default(), 1));
    // A driver taking only VERSION_1 and MAC still works.
    n.start(features::VERSION_1 | 1 << vn::VIRTIO_NET_F_MAC);
    let mut out = frame(b"minimal");
    out[0] = 0;
    n.put(DATA, &out);
    n.submit(1, &[B(DATA, out.len() as u32, false)]);
    assert_eq!(n.peers[0].recv().unwrap(), out);
}

#[test]
fn transmitted_chain_reaches_the_tap_as_one_frame() {
    let mut n = Net::new(1);
    n.start_all();
    let f = frame(&payload(1000, 7));
    // Header and payload in separate descriptors, the payload split once more.
    n.put(DATA, &f[..VNET_HDR_LEN]);
    n.put(DATA + 0x1000, &f[VNET_HDR_LEN..500]);
    n.put(DATA + 0x3000, &f[500..]);
    n.submit(
        1,
        &[
            B(DATA, VNET_HDR_LEN as u32, false),
            B(DATA + 0x1000, (500 - VNET_HDR_LEN) as u32, false),
            B(DATA + 0x3000, (f.len() - 500) as u32, false),
        ],
    );
    assert_eq!(n.peers[0].recv().unwrap(), f);
    assert_eq!(n.wait_used(1, 1), (0, 0));
}

#[test]
fn received_frame_lands_in_the_guest_buffer_with_num_buffers_one() {
    let mut n = Net::new(1);
    n.start_all();
    // Junk where num_buffers goes, to see the device write it.
    n.put(DATA, &[0xee; 64]);
    n.submit(0, &[B(DATA, 8, true), B(DATA + 0x1000, 2000, true)]);
    let f = frame(&payload(1400, 3));
    n.peers[0].send(&f);
    let (id, len) = n.wait_used(0, 1);
    assert_eq!((id, len), (0, f.len() as u32));
    let mut got = n.d.mem_read(DATA, 8);
    got.extend(n.d.mem_read(DATA + 0x1000, f.len() - 8));
    let mut want = f.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, want);
}

#[test]
fn frames_wait_in_the_tap_until_the_guest_posts_buffers() {
    let mut n = Net::new(1);
    n.start_all();
    let first = frame(b"early bird");
    let second = frame(b"second");
    n.peers[0].send(&first);
    n.peers[0].send(&second);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(n.used_idx(0), 0);
    n.submit(0, &[B(DATA, 1600, true)]);
    assert_eq!(n.wait_used(0, 1).1, first.len() as u32);
    assert_eq!(&n.d.mem_read(DATA + 12, 10), b"early bird");
    n.submit(0, &[B(DATA + 0x1000, 1600, true)]);
    assert_eq!(n.wait_used(0, 2).1, second.len() as u32);
    assert_eq!(&n.d.mem_read(DATA + 0x1000 + 12, 6), b"second");
}

#[test]
fn malformed_chains_complete_empty_and_the_device_keeps_working() {
    let mut n = Net::new(1);
    n.start_all();
    // TX: a device-writable descriptor in a transmit chain.
    n.put(DATA, &frame(b"bad"));
    n.submit(1, &[B(DATA, 15, true)]);
    assert_eq!(n.wait_used(1, 1).1, 0);
    // TX: shorter than the header.
    n.submit(1, &[B(DATA, 4, false)]);
    assert_eq!(n.wait_used(1, 2).1, 0);
    // TX: outside guest memory.
    n.submit(1, &[B(DATA, 12, false), B(1 << 40, 100, false)]);
    assert_eq!(n.wait_used(1, 3).1, 0);
    assert!(n.peers[0].nothing_within(30));
    // RX: too small for the header, readable, and outside memory; each returned empty.
    n.submit(0, &[B(DATA, 8, true)]);
    n.submit(0, &[B(DATA, 1600, false)]);
    n.submit(0, &[B(1 << 40, 1600, true)]);
    for i in 1..=3 {
        assert_eq!(n.wait_used(0, i).1, 0, "rx chain {i}");
    }
    // A good exchange afterwards.
    let f = frame(b"still alive");
    n.peers[0].send(&f);
    n.submit(0, &[B(DATA + 0x2000, 1600, true)]);
    assert_eq!(n.wait_used(0, 4).1, f.len() as u32);
    n.put(DATA, &f);
    n.submit(1, &[B(DATA, f.len() as u32, false)]);
    assert_eq!(n.peers[0].recv().unwrap(), f);
}

#[test]
fn each_queue_pair_uses_its_own_tap() {
    let mut n = Net::new(2);
    n.start_all();
    let f0 = frame(b"pair zero");
    let f1 = frame(b"pair one");
    n.put(DATA, &f0);
    n.put(DATA + 0x1000, &f1);
    n.submit(3, &[B(DATA + 0x1000, f1.len() as u32, false)]);
    n.submit(1, &[B(DATA, f0.len() as u32, false)]);
    assert_eq!(n.peers[1].recv().unwrap(), f1);
    assert_eq!(n.peers[0].recv().unwrap(), f0);
    // Receive on pair 1.
    n.submit(2, &[B(DATA + 0x2000, 1600, true)]);
    n.peers[1].send(&f1);
    assert_eq!(n.wait_used(2, 1).1, f1.len() as u32);
    assert_eq!(n.used_idx(0), 0);
}

#[test]
fn control_queue_accepts_a_valid_pair_count_and_refuses_the_rest() {
    let mut n = Net::new(2);
    n.start_all();
    let ctrl = 4;
    let command = |n: &mut Net, bytes: &[u8], k: u16| {
        n.put(DATA, bytes);
        n.put(DATA + 0x100, &[0xaa]);
        n.submit(
            ctrl,
            &[B(DATA, bytes.len() as u32, false), B(DATA + 0x100, 1, true)],
        );
        assert_eq!(n.wait_used(ctrl, k).1, 1);
        n.d.mem_read(DATA + 0x100, 1)[0]
    };
    let mq = vn::VIRTIO_NET_CTRL_MQ as u8;
    let set = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
    let ok = vn::VIRTIO_NET_OK as u8;
    let err = vn::VIRTIO_NET_ERR as u8;
    assert_eq!(command(&mut n, &[mq, set, 2, 0], 1), ok);
    assert_eq!(command(&mut n, &[mq, set, 1, 0], 2), ok);
    assert_eq!(command(&mut n, &[mq, set, 3, 0], 3), err);
    assert_eq!(command(&mut n, &[mq, set, 0, 0], 4), err);
    assert_eq!(command(&mut n, &[mq, set], 5), err);
    assert_eq!(command(&mut n, &[0 /* RX class */, 0, 1], 6), err);
    // No writable ack: returned unanswered.
    n.put(DATA, &[mq, set, 1, 0]);
    n.submit(ctrl, &[B(DATA, 4, false)]);
    assert_eq!(n.wait_used(ctrl, 7).1, 0);
}

#[test]
fn reset_stops_the_workers_and_a_new_start_serves_again() {
    let mut n = Net::new(1);
    n.start_all();
    n.d.write(common::DEVICE_STATUS, 1, 0);
    assert_eq!(n.d.status(), 0);
    n.rings.clear();
    n.start_all();
    let f = frame(b"after reset");
    n.put(DATA, &f);
    n.submit(1, &[B(DATA, f.len() as u32, false)]);
    assert_eq!(n.peers[0].recv().unwrap(), f);
}

#[test]
fn mac_addresses_parse_and_print() {
    let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
    assert_eq!(m.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
    assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
    for bad in [
        "",
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:0f:11",
        "52-54-00-ab-cd-0f",
        "525:4:00:ab:cd:0f",
        "52:54:00:ab:cd:g0",
        "52:54:00:ab:cd:+f",
    ] {
        assert!(
            matches!(bad.parse::<MacAddr>(), Err(MacError::Syntax(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        "01:00:5e:00:00:01".parse::<MacAddr>(),
        Err(MacError::Multicast(_))
    ));
    assert!(matches!(
        "ff:ff:ff:ff:ff:ff".parse::<MacAddr>(),
        Err(MacError::Multicast(_))
    ));
    assert_eq!("00:00:00:00:00:00".parse::<MacAddr>(), Err(MacError::Zero));
    for _ in 0..8 {
        let r = MacAddr::random();
        assert_eq!(r.0[0] & 0x03, 0x02, "{r}: locally administered unicast");
        assert_eq!(r.to_string().parse::<MacAddr>(), Ok(r));
    }
}

#[test]
fn tap_names_are_checked_before_anything_is_opened() {
    for bad in ["", "a/b", "a b", "a:b", ".", "..", "sixteen-chars-xx"] {
        assert!(!valid_name(bad), "{bad:?}");
        assert!(matches!(
            Tap::open_named(Some(bad), 1),
            Err(TapError::InvalidName(_))
        ));
    }
    for good in ["tap0", "vmtap%d", "fifteen-chars-x"] {
        assert!(valid_name(good), "{good:?}");
    }
}

#[test]
fn an_fd_that_is_not_a_tap_is_refused() {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the read end is ours; from_fd does not take it on failure, we close it below.
    let e = unsafe { Tap::from_fd(fds[0]) }.unwrap_err();
    assert!(matches!(e, TapError::FdNotTap { .. }), "{e}");
    assert!(e.to_string().contains("is not a tap device"), "{e}");
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    // SAFETY: a closed fd is only probed.
    let e = unsafe { Tap::from_fd(fds[0]) }.unwrap_err();
    assert!(matches!(e, TapError::FdNotOpen { .. }), "{e}");
}

/// Needs CAP_NET_ADMIN and /dev/net/tun; returns early (and says so) without them.
#[test]
fn a_real_tap_is_created_configured_reopened_per_pair_and_gone_when_closed() {
    let name = format!("vdt{}", std::process::id() % 100_000);
    let (taps, created) = match Tap::open_named(Some(&name), 2) {
        Ok(t) => t,
        Err(
            e @ (TapError::CreateDenied { .. } | TapError::OpenTun(_) | TapError::TunDenied { .. }),
        ) => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(created);
    assert_eq!(taps.len(), 2);
    assert!(taps.iter().all(|t| t.name() == name));
    assert!(interface_exists(&name));
    configure_host(
        &name,
        Some((
            "169.254.77.1".parse().unwrap(),
            "255.255.0.0".parse().unwrap(),
        )),
    )
    .unwrap();
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_ne!(flags & libc::IFF_UP as u32, 0, "link up");
    taps[0]
        .set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
        .unwrap();
    // An existing tap is opened, not created.
    let (again, created) = Tap::open_named(Some(&name), 2).unwrap();
    assert!(!created);
    // Adopting one of its fds works like fd=N.
    // SAFETY: dup of an fd we hold; the copy is handed to from_fd, which owns it.
    let fd = unsafe { libc::dup(again[0].as_raw_fd()) };
    assert!(fd > 2);
    // SAFETY: `fd` is a fresh dup nothing else owns.
    let adopted = unsafe { Tap::from_fd(fd) }.unwrap();
    assert_eq!(adopted.name(), name);
    drop((taps, again, adopted));
    assert!(
        !interface_exists(&name),
        "a created tap goes with its last fd"
    );
}

#[test]
fn with_event_idx_the_device_asks_for_the_next_kick_after_draining_a_queue() {
    let mut n = Net::new(1);
    n.start_all();
    let f = frame(b"event idx");
    n.put(DATA, &f);
    for i in 1..=3u16 {
        n.submit(1, &[B(DATA, f.len() as u32, false)]);
        n.wait_used(1, i);
        assert_eq!(n.peers[0].recv().unwrap(), f);
        // avail_event, after the used ring's entries: the index whose arrival deserves a kick.
        let at = n.rings[1].used + 4 + u64::from(QSIZE) * 8;
        let deadline = Instant::now() + Duration::from_secs(5);
        while n.d.mem.read_obj::<u16>(GuestAddress(at)).unwrap() != i {
            assert!(Instant::now() < deadline, "avail_event not advanced to {i}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
