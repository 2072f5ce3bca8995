//! Why a PCI device could not be attached: every message names the device and the resource
//! (segment, slot, BAR, guest address) and keeps the lower error as its `source()`.

use devices::bus::BusError;
use pci::allocator::AllocError;
use pci::bar::BarIndex;
use pci::error::PciError;

/// What building the device itself failed on, by kind of device.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Opening or preparing a host device through VFIO (sysfs checks, group, container, DMA).
    #[error(transparent)]
    Vfio(#[from] vfio_dev::error::VfioError),
    /// Presenting the host device to the guest (config space, BARs, interrupts).
    #[error(transparent)]
    Passthrough(#[from] vfio_dev::device::DeviceError),
    /// mmapping a region of the host device.
    #[error("cannot mmap {bar} (area at {offset:#x}, {size} bytes) of the VFIO device")]
    Mmap {
        /// The BAR.
        bar: BarIndex,
        /// Offset of the area in the BAR.
        offset: u64,
        /// Its length.
        size: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Opening a disk image.
    #[error(transparent)]
    Block(#[from] devices::virtio::block::BlockError),
    /// Building the virtio-pci transport.
    #[error(transparent)]
    Virtio(#[from] devices::virtio::pci::VirtioPciError),
    /// An eventfd could not be created or duplicated.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The thread that DMA-maps guest RAM while the guest boots could not be started.
    #[error("cannot start the thread that DMA-maps guest RAM (is the process out of threads?)")]
    Thread(#[source] std::io::Error),
}

/// Why a device could not be attached (or a BAR not mapped).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The segment asked for does not exist.
    #[error("{device}: PCI segment {segment} does not exist; the VM has {count} (--platform num_pci_segments)")]
    NoSuchSegment {
        /// The device.
        device: String,
        /// The segment asked for.
        segment: u16,
        /// How many the VM has.
        count: usize,
    },
    /// Another attached device already uses this id.
    #[error(
        "a device with id {id} is already attached; give each --device and --disk its own id="
    )]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// No slot on the segment's root bus.
    #[error("{device}: no PCI slot on segment {segment}")]
    Slot {
        /// The device.
        device: String,
        /// The segment.
        segment: u16,
        /// Why.
        #[source]
        source: PciError,
    },
    /// The device itself could not be built.
    #[error("{device}")]
    Build {
        /// The device.
        device: String,
        /// Why.
        #[source]
        source: BuildError,
    },
    /// A BAR could not be placed in the segment's windows.
    #[error("{device}: no room for its {bar}")]
    BarPlacement {
        /// The device.
        device: String,
        /// The BAR.
        bar: BarIndex,
        /// What the allocator said (sizes, windows, what to change).
        #[source]
        source: Box<AllocError>,
    },
    /// The device refused the address the allocator gave a BAR.
    #[error("{device}: cannot program its {bar}")]
    BarRegister {
        /// The device.
        device: String,
        /// The BAR.
        bar: BarIndex,
        /// Why.
        #[source]
        source: PciError,
    },
    /// The BAR's range is taken on the MMIO or port bus.
    #[error("{device}: {bar} at {addr:#x} cannot be trapped")]
    BarTrap {
        /// The device.
        device: String,
        /// The BAR.
        bar: BarIndex,
        /// Its guest address.
        addr: u64,
        /// The bus conflict.
        #[source]
        source: BusError,
    },
    /// Part of a BAR cannot get a memory slot at this address (not page aligned, or a sub-page
    /// BAR sharing its page with another BAR).
    #[error(
        "{device}: {bar} at {gpa:#x} cannot be mapped into the guest: not on a page of its own"
    )]
    UnalignedArea {
        /// The device.
        device: String,
        /// The BAR.
        bar: BarIndex,
        /// The guest address of the area.
        gpa: u64,
    },
    /// KVM refused the memory slot for part of a BAR.
    #[error("{device}: cannot map {size} bytes of {bar} into the guest at {gpa:#x} (KVM_SET_USER_MEMORY_REGION)")]
    MemorySlot {
        /// The device.
        device: String,
        /// The BAR.
        bar: BarIndex,
        /// Guest address of the area.
        gpa: u64,
        /// Its length.
        size: u64,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused the ioeventfd for a doorbell.
    #[error("{device}: cannot register the doorbell at {addr:#x} (KVM_IOEVENTFD)")]
    Doorbell {
        /// The device.
        device: String,
        /// Guest address of the doorbell.
        addr: u64,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A direct area could not be DMA-mapped for peer-to-peer (never fatal: logged).
    #[error("{device}: {bar} is not DMA-mapped for peer-to-peer")]
    PeerDma {
        /// The device.
        device: String,
        /// The BAR.
        bar: BarIndex,
        /// Why.
        #[source]
        source: vfio_dev::peer::PeerDmaError,
    },
    /// The device to detach is not attached.
    #[error("no device with id {id} is attached")]
    NotAttached {
        /// The id asked for.
        id: String,
    },
}
