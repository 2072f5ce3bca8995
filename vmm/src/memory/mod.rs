//! Guest RAM: host mappings laid out by `arch::memory`, backed as `--memory` asks (private
//! anonymous memory, a shared memfd, hugepages, a file), checked against what the host can give
//! before anything is mapped, optionally prefaulted in parallel, and registered as KVM memory
//! slots.

mod backing;
mod prefault;

use std::path::PathBuf;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use vfio_dev::host::memory::HostMemoryError;

use crate::config::MemoryBacking;
use crate::Error;

pub use prefault::{
    available_cpus, cpus_beside_guest, prefault, prefault_before_pin, prefault_until,
    PrefaultStats, TwoEnds, BEFORE_PIN_MIN_BYTES,
};

/// The guest's RAM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Why guest RAM could not be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host cannot hold it (too large, too few hugepages).
    #[error(transparent)]
    Host(#[from] HostMemoryError),
    /// `hugepages=on` but the host reports no default hugepage size.
    #[error(
        "hugepages=on: this host reports no hugepage size (no Hugepagesize in /proc/meminfo); \
         give hugepage_size=2M or 1G"
    )]
    NoDefaultHugepageSize,
    /// The size is not a whole number of hugepages.
    #[error(
        "--memory size={size} is not a multiple of the {page}-byte hugepage size; round it to \
         a multiple"
    )]
    NotWholeHugepages {
        /// Guest RAM in bytes.
        size: u64,
        /// The hugepage size.
        page: u64,
    },
    /// `memfd_create` failed.
    #[error("cannot create the memfd for guest RAM{}", if *.hugetlb { " (MFD_HUGETLB)" } else { "" })]
    Memfd {
        /// Whether it was a hugetlb memfd.
        hugetlb: bool,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backing file could not be opened, created or sized.
    #[error("--memory file={}: cannot use it for guest RAM", .path.display())]
    File {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping a region failed.
    #[error(
        "cannot map {bytes} bytes of guest RAM at guest address {gpa:#x}{}; try a smaller \
         --memory size",
        if *.hugetlb { " from the hugepage pool" } else { "" }
    )]
    Map {
        /// Guest address of the region.
        gpa: u64,
        /// Its size.
        bytes: u64,
        /// Whether it was hugepage memory.
        hugetlb: bool,
        /// What mmap said.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The mapped regions do not form valid guest memory (a bug in the layout).
    #[error("guest RAM regions are not valid guest memory")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
    /// Prefaulting failed.
    #[error(
        "cannot populate guest RAM at {host:#x} ({bytes} bytes){}",
        if *.hugetlb { ": the hugepage pool ran out" } else { "" }
    )]
    Prefault {
        /// Host address of the chunk.
        host: usize,
        /// Its size.
        bytes: u64,
        /// Whether it was hugepage memory.
        hugetlb: bool,
        /// What madvise said.
        #[source]
        source: std::io::Error,
    },
}

/// Guest RAM and how it is backed.
pub struct GuestRam {
    /// The regions, as vm-memory sees them.
    pub mem: GuestMemoryMmap,
    /// The page size behind it (4 KiB, or the hugepage size).
    pub page_size: u64,
    /// Whether it comes from the hugepage pool.
    pub hugetlb: bool,
    /// The host mappings behind `mem` that viaduct placed itself (ordinary memory, aligned
    /// to 2 MiB); unmapped when this is dropped, so it must outlive every clone of `mem`.
    pub mappings: Vec<backing::AlignedMapping>,
}

/// Maps `bytes` of RAM at the addresses `arch::memory::ram_regions` gives, as `backing` asks.
pub fn create_guest_memory(bytes: u64, backing: &MemoryBacking) -> Result<GuestRam, Error> {
    backing::create(bytes, backing).map_err(Error::Memory)
}

/// Tells KVM about every RAM region, one slot each.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping, kept alive for as long as the VM exists:
        // `run` declares the `GuestRam` that owns it before the VM, so the VM (and every vCPU
        // and device) is dropped first.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

/// This process's resident memory (`VmRSS`) plus its hugetlb pages (`HugetlbPages`, which
/// VmRSS leaves out), from `/proc/self/status`, in bytes.
pub fn resident_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let value = |key| vfio_dev::host::memory::meminfo_bytes(&status, key).unwrap_or(0);
    (value("VmRSS"), value("HugetlbPages"))
}

/// How much of this process's memory is in huge pages now (`AnonHugePages`, `ShmemPmdMapped`
/// and hugetlb), for the start-time log: VFIO pins and IOMMU-maps large pages far faster.
pub fn huge_backing_summary() -> String {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let value = |key| vfio_dev::host::memory::meminfo_bytes(&rollup, key).unwrap_or(0) >> 20;
    let (_, hugetlb) = resident_bytes();
    format!(
        "Rss {} MiB, AnonHugePages {} MiB, ShmemPmdMapped {} MiB, HugetlbPages {} MiB",
        value("Rss"),
        value("AnonHugePages"),
        value("ShmemPmdMapped"),
        hugetlb >> 20
    )
}
