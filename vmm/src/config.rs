//! The validated description of a VM that the command line produces and the VMM consumes.
//!
//! Everything here has already been checked (files readable, sizes non-zero, counts in range) by
//! the front end; the VMM trusts these values.

use std::path::PathBuf;

/// Where the guest's 16550 UART (COM1) output goes, and whether it exists at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// No UART is created.
    Off,
    /// A UART whose output is discarded.
    Null,
    /// Output to viaduct's stdout; viaduct's stdin feeds the guest (raw mode when it is a TTY).
    Tty,
    /// Output appended to a file.
    File(PathBuf),
}

/// The virtio console (`--console`), which a Linux guest sees as `hvc0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleMode {
    /// No virtio console device.
    Off,
    /// A console whose output is discarded.
    Null,
    /// Output to viaduct's stdout; viaduct's stdin feeds the guest (raw mode when it is a TTY).
    /// cloud-hypervisor's default.
    Tty,
    /// Output written to a file, truncated at start as cloud-hypervisor does.
    File(PathBuf),
}

/// The virtio-rng device (`--rng`); cloud-hypervisor gives every VM one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RngConfig {
    /// The host file the guest's entropy is read from.
    pub src: PathBuf,
}

/// The entropy source when `--rng` gives none (cloud-hypervisor's).
pub const DEFAULT_RNG_SOURCE: &str = "/dev/urandom";

impl Default for RngConfig {
    fn default() -> Self {
        Self {
            src: PathBuf::from(DEFAULT_RNG_SOURCE),
        }
    }
}

/// A complete, validated VM description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image: a bzImage, or an ELF vmlinux (entered through its PVH note when it has one).
    pub kernel: PathBuf,
    /// Optional initramfs loaded next to the kernel.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line (without the terminating NUL).
    pub cmdline: String,
    /// Number of vCPUs started at boot (1..=`MAX_VCPUS`).
    pub boot_vcpus: u8,
    /// Guest RAM size in bytes (a multiple of 4 KiB, at least `MIN_MEMORY_BYTES`).
    pub memory_bytes: u64,
    /// How guest RAM is backed (the other `--memory` keys).
    pub memory: MemoryBacking,
    /// COM1 wiring.
    pub serial: SerialMode,
    /// virtio console wiring.
    pub console: ConsoleMode,
    /// PCI segments and how the MMIO apertures are divided among them.
    pub pci: PciConfig,
    /// Host PCI devices passed through with VFIO (`--device`), in command-line order.
    pub devices: Vec<PassthroughDeviceConfig>,
    /// virtio-blk disks (`--disk`), in command-line order (the guest sees them in this order).
    pub disks: Vec<DiskConfig>,
    /// The control API (`--api-socket`), if any.
    pub api: Option<ApiConfig>,
    /// `--seccomp`: how each thread is confined.
    pub seccomp: crate::seccomp::SeccompMode,
    /// `--rng`: the virtio-rng device's entropy source.
    pub rng: RngConfig,
    /// virtio-net NICs (`--net`), in command-line order, their taps already open.
    pub nets: Vec<NetConfig>,
}

/// `--api-socket`: where the control API listens and how long a hot-remove waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// The socket.
    pub socket: crate::api::ApiSocket,
    /// How long `vm.remove-device` waits for the guest to eject the device.
    pub eject_timeout: std::time::Duration,
}

/// How long a hot-remove waits for the guest when `eject_timeout` is not given.
pub const DEFAULT_EJECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How guest RAM is backed: cloud-hypervisor's `--memory` keys other than `size`, with the
/// same meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBacking {
    /// `hugepages=on`: guest RAM from the host's hugepage pool.
    pub hugepages: bool,
    /// `hugepage_size=`: the hugepage size in bytes; `None` is the host's default.
    pub hugepage_size: Option<u64>,
    /// `shared=on`: a shared mapping (of a memfd), e.g. for vhost-user; off is private
    /// anonymous memory, which VFIO pinning does not copy.
    pub shared: bool,
    /// `file=PATH`: RAM is a shared mapping of this file, or of a fresh file in this directory
    /// (a hugetlbfs mount, say).
    pub file: Option<PathBuf>,
    /// `prefault=on|off`: every page of RAM is populated before the guest starts, in parallel,
    /// or never. `None` (not given): off, except that large private anonymous RAM is
    /// prefaulted in parallel just before its first DMA mapping for a passed-through device
    /// (`memory::prefault_before_pin` says when).
    pub prefault: Option<bool>,
    /// `thp=on|off`: ask for transparent hugepages (`MADV_HUGEPAGE`) or refuse them.
    pub thp: bool,
    /// `mergeable=on`: let KSM merge identical pages (`MADV_MERGEABLE`).
    pub mergeable: bool,
}

impl Default for MemoryBacking {
    fn default() -> Self {
        Self {
            hugepages: false,
            hugepage_size: None,
            shared: false,
            file: None,
            prefault: None,
            thp: true,
            mergeable: false,
        }
    }
}

/// The disk image formats and the errors of opening one, for the CLI's checks.
pub use devices::virtio::block::{BlockError, ImageError, ImageType, OpenedAs};
/// Limits and default of `--disk num_queues=` and `queue_size=`.
pub use devices::virtio::block::{
    MAX_QUEUES as MAX_DISK_QUEUES, MAX_QUEUE_SIZE as MAX_DISK_QUEUE_SIZE,
    QUEUE_SIZE as DEFAULT_DISK_QUEUE_SIZE,
};

/// One `--disk path=…` entry: an image (raw or qcow2) or block device shown to the guest as
/// virtio-blk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file or host block device.
    pub path: PathBuf,
    /// `readonly=on`: the guest sees a read-only disk and writes fail with an I/O error.
    pub readonly: bool,
    /// The PCI segment the disk sits on.
    pub pci_segment: u16,
    /// `id=`: names the disk in messages, and is the serial the guest reads
    /// (`/sys/block/vdX/serial`, at most 20 bytes) unless `serial=` is given.
    pub id: Option<String>,
    /// `serial=`: the disk's serial number as the guest sees it (at most 20 bytes).
    pub serial: Option<String>,
    /// `image_type=raw|qcow2`; None: from the file's magic (a format viaduct cannot serve is
    /// refused).
    pub image_type: Option<ImageType>,
    /// `backing_files=on`: open a qcow2 image's backing chain (needs `image_type=qcow2`).
    pub backing_files: bool,
    /// `num_queues=`: request queues, each served by its own thread.
    pub num_queues: u16,
    /// `queue_size=`: entries per request queue.
    pub queue_size: u16,
}

/// One `--device path=…` entry: a host device handed to the guest through VFIO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughDeviceConfig {
    /// The device's sysfs directory: `/sys/bus/pci/devices/DDDD:BB:DD.F` (or a mediated device
    /// under `/sys/bus/mdev/devices/UUID`), as given (a trailing `/` is fine).
    pub path: PathBuf,
    /// The PCI segment the guest sees it on (< the number of segments).
    pub pci_segment: u16,
    /// A name for messages and logs (`id=`); defaults to the device's sysfs name.
    pub id: Option<String>,
    /// `x_nv_gpudirect_clique=N` (0..=15): advertise the NVIDIA GPUDirect P2P clique capability.
    pub gpudirect_clique: Option<u8>,
    /// `managed=on`: viaduct binds the device (and what its IOMMU group needs) to vfio-pci before
    /// the VM starts and gives them back to their original drivers when it exits.
    pub managed: bool,
}

/// Largest `x_nv_gpudirect_clique` value: the capability's clique-id field is 4 bits wide.
pub const MAX_GPUDIRECT_CLIQUE: u8 = 15;

/// One PCI segment's share of the 32-bit and 64-bit MMIO apertures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciSegmentConfig {
    /// Weight of this segment in the split of the 32-bit MMIO aperture (> 0).
    pub mmio32_aperture_weight: u32,
    /// Weight of this segment in the split of the 64-bit MMIO aperture (> 0).
    pub mmio64_aperture_weight: u32,
}

impl Default for PciSegmentConfig {
    fn default() -> Self {
        Self {
            mmio32_aperture_weight: DEFAULT_APERTURE_WEIGHT,
            mmio64_aperture_weight: DEFAULT_APERTURE_WEIGHT,
        }
    }
}

/// The PCI topology: one root bus per segment, segment `i` at index `i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciConfig {
    /// Per-segment settings; `segments.len()` is `num_pci_segments` (1..=`MAX_PCI_SEGMENTS`).
    pub segments: Vec<PciSegmentConfig>,
    /// `--platform vfio_p2p_dma=on|off` (default on): DMA-map every passthrough BAR into the
    /// VFIO container at its guest address, so devices can reach each other's BARs, and lay the
    /// 64-bit windows out inside the host IOMMU's reach.
    pub vfio_p2p_dma: bool,
}

impl Default for PciConfig {
    fn default() -> Self {
        Self {
            segments: vec![PciSegmentConfig::default()],
            vfio_p2p_dma: true,
        }
    }
}

/// Aperture weight of a segment that no `--pci-segment` mentions.
pub const DEFAULT_APERTURE_WEIGHT: u32 = 1;

/// Most PCI segments a VM may have (`--platform num_pci_segments`), as in cloud-hypervisor: each
/// takes a 1 MiB ECAM window (bus 0) of the 256 MiB ECAM area and a share of the apertures.
pub const MAX_PCI_SEGMENTS: u16 = 96;

/// Largest number of boot vCPUs: xAPIC IDs are 8 bits and 0xff is the broadcast ID.
pub const MAX_VCPUS: u8 = 254;

/// Smallest guest RAM accepted: enough for the boot structures below 1 MiB plus a kernel.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;

/// One `--net` entry: a virtio-net NIC on a tap that the front end has already opened (or
/// created), so a tap problem stops viaduct before the VM is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `id=`: names the NIC in messages.
    pub id: Option<String>,
    /// The guest's MAC address (`mac=`, or a random locally administered one).
    pub mac: devices::virtio::net::MacAddr,
    /// Entries of each RX/TX queue (`queue_size=`, a power of two).
    pub queue_size: u16,
    /// The PCI segment the NIC sits on.
    pub pci_segment: u16,
    /// Offloads offered to the guest (`offload_csum=`, `offload_tso=`).
    pub offloads: devices::virtio::net::Offloads,
    /// The tap's fds, one per queue pair (`num_queues / 2`).
    pub taps: OpenTaps,
}

impl NetConfig {
    /// The NIC's name in messages: its id, else its tap's name.
    pub fn name(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| self.taps.name().to_string())
    }
}

/// Open tap fds, shared by the copies of a config (the fds close when the last copy goes).
#[derive(Clone)]
pub struct OpenTaps(pub Vec<std::sync::Arc<devices::virtio::net::Tap>>);

impl OpenTaps {
    /// The tap's interface name.
    pub fn name(&self) -> &str {
        self.0.first().map_or("", |t| t.name())
    }
}

impl PartialEq for OpenTaps {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| std::sync::Arc::ptr_eq(a, b))
    }
}

impl Eq for OpenTaps {}

impl std::fmt::Debug for OpenTaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        let fds: Vec<i32> = self.0.iter().map(|t| t.as_raw_fd()).collect();
        write!(f, "tap {} fds {fds:?}", self.name())
    }
}
