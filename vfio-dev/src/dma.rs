//! DMA-mapping guest RAM into the VFIO container, so that passed-through devices can reach it:
//! IOVA = guest physical address, read/write, one `VFIO_IOMMU_MAP_DMA` per [`DMA_MAP_PIECE`]
//! of each contiguous region, before any device may DMA (the VMM maps it while the guest
//! boots, and holds bus mastering until it is done). Between pieces a VM that is stopping ends
//! the mapping, so a stop does not wait for the whole of a large guest's RAM to be pinned.
//!
//! The type1 IOMMU pins every mapped page and charges it to RLIMIT_MEMLOCK, so the limit is
//! checked (and raised when the hard limit allows) before anything is mapped. Where the kernel
//! reports the IOVA ranges its IOMMU can translate (`VFIO_IOMMU_GET_INFO`), RAM outside them is
//! refused with the range named, instead of an EINVAL from the map.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::container::VfioHost;
use crate::error::{describe_errno, human, VfioError};
pub use crate::iommu_info::{parse_iommu_info, IommuInfo, IovaRange};

/// Locked memory allowed beyond guest RAM, for whatever else of the process is locked.
pub const MEMLOCK_MARGIN: u64 = 64 << 20;

/// One contiguous region of guest RAM and where it is mapped in this process.
#[derive(Clone, Copy, Debug)]
pub struct GuestRamRegion {
    /// Guest physical address of its first byte; also its IOVA.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address of its first byte.
    pub host_addr: *mut u8,
}

// SAFETY: a `GuestRamRegion` only describes where guest RAM is; nothing dereferences
// `host_addr` except the kernel, under the contract of `VfioHost::map_guest_memory`. Moving or
// sharing the description between threads creates no access to the memory.
unsafe impl Send for GuestRamRegion {}
// SAFETY: as for `Send`: the type is an immutable description of an address range.
unsafe impl Sync for GuestRamRegion {}

/// The most guest RAM one `VFIO_IOMMU_MAP_DMA` maps: pieces end at IOVAs aligned to it, so
/// the IOMMU can still use its largest (1 GiB) pages, and a VM that stops while its RAM is
/// being mapped waits at most for one piece (about 0.25 s of pinning 4 KiB pages on a real
/// host) rather than for all of it.
pub const DMA_MAP_PIECE: u64 = 1 << 30;

/// Cuts `regions` into the pieces one `VFIO_IOMMU_MAP_DMA` each maps: at IOVAs aligned to
/// [`DMA_MAP_PIECE`], with the host address moved along; empty regions give none.
pub fn map_pieces(regions: &[GuestRamRegion]) -> Vec<GuestRamRegion> {
    let mut pieces = Vec::new();
    for r in regions {
        let end = r.gpa.saturating_add(r.size);
        let mut gpa = r.gpa;
        while gpa < end {
            let next = (gpa | (DMA_MAP_PIECE - 1)).saturating_add(1).min(end);
            pieces.push(GuestRamRegion {
                gpa,
                size: next - gpa,
                host_addr: r.host_addr.wrapping_add((gpa - r.gpa) as usize),
            });
            gpa = next;
        }
    }
    pieces
}

/// Whether mapping `m` lies inside one of `regions` (a piece of it, see [`map_pieces`]).
fn within(m: &DmaMapping, regions: &[GuestRamRegion]) -> bool {
    regions
        .iter()
        .any(|r| r.gpa <= m.iova && m.iova.saturating_add(m.size) <= r.gpa.saturating_add(r.size))
}

/// A region currently mapped in the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DmaMapping {
    pub(crate) iova: u64,
    pub(crate) size: u64,
}

/// What a mapping or unmapping pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaStats {
    /// Bytes mapped (or unmapped).
    pub bytes: u64,
    /// Time taken, pinning included.
    pub elapsed: Duration,
}

impl DmaStats {
    /// Time per GiB (zero when nothing was mapped).
    pub fn per_gib(&self) -> Duration {
        if self.bytes == 0 {
            return Duration::ZERO;
        }
        self.elapsed
            .mul_f64((1u64 << 30) as f64 / self.bytes as f64)
    }
}

pub(crate) fn format_ranges(ranges: &[IovaRange]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| format!("{:#x}..={:#x}", r.start, r.end))
        .collect();
    parts.join(", ")
}

/// Checks that every region lies within one valid IOVA range and is aligned to the IOMMU's
/// smallest page size (when the kernel reported them).
pub fn check_regions(regions: &[GuestRamRegion], info: &IommuInfo) -> Result<(), VfioError> {
    let page = info.page_sizes & info.page_sizes.wrapping_neg();
    for r in regions {
        if r.size == 0 {
            continue;
        }
        let misaligned = |v: u64| page != 0 && !v.is_multiple_of(page);
        if misaligned(r.gpa) || misaligned(r.size) || misaligned(r.host_addr as u64) {
            return Err(VfioError::Misaligned {
                gpa: r.gpa,
                size: r.size,
                host_addr: r.host_addr as usize,
                page,
            });
        }
        if let Some(ranges) = &info.iova_ranges {
            let last = r.gpa.saturating_add(r.size - 1);
            if !ranges.iter().any(|v| v.start <= r.gpa && last <= v.end) {
                return Err(VfioError::IovaOutOfRange {
                    gpa: r.gpa,
                    size: r.size,
                    ranges: format_ranges(ranges),
                });
            }
        }
    }
    Ok(())
}

/// What to do about RLIMIT_MEMLOCK before pinning `need` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemlockPlan {
    /// The soft limit already allows it.
    Enough,
    /// Raise the soft limit to this; the hard limit allows it.
    RaiseSoft(u64),
    /// Raise both limits to this, which only a privileged process (CAP_SYS_RESOURCE) can do.
    RaiseHard(u64),
}

/// Decides how to get RLIMIT_MEMLOCK to `need` bytes from limits `soft` and `hard`
/// (`libc::RLIM_INFINITY` for unlimited).
pub fn memlock_plan(soft: u64, hard: u64, need: u64) -> MemlockPlan {
    if soft == libc::RLIM_INFINITY || soft >= need {
        MemlockPlan::Enough
    } else if hard == libc::RLIM_INFINITY || hard >= need {
        MemlockPlan::RaiseSoft(need)
    } else {
        MemlockPlan::RaiseHard(need)
    }
}

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has capability `bit`.
pub fn status_has_capability(status: &str, bit: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1u64 << bit) != 0)
}

/// `CAP_IPC_LOCK`: exempts the process from RLIMIT_MEMLOCK for VFIO pinning.
const CAP_IPC_LOCK: u32 = 14;

fn has_cap_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| status_has_capability(&s, CAP_IPC_LOCK))
}

fn set_memlock(soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes sure this process may pin `ram` bytes (plus [`MEMLOCK_MARGIN`]).
fn ensure_memlock(ram: u64) -> Result<(), VfioError> {
    let need = ram.saturating_add(MEMLOCK_MARGIN);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        log::warn!("VFIO: cannot read RLIMIT_MEMLOCK; mapping guest RAM anyway");
        return Ok(());
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    let result = match memlock_plan(soft, hard, need) {
        MemlockPlan::Enough => return Ok(()),
        MemlockPlan::RaiseSoft(to) => set_memlock(to, hard),
        MemlockPlan::RaiseHard(to) => set_memlock(to, to),
    };
    match result {
        Ok(()) => {
            log::info!(
                "VFIO: raised RLIMIT_MEMLOCK from {} to {}",
                human(soft),
                human(need)
            );
            Ok(())
        }
        Err(_) if has_cap_ipc_lock() => Ok(()),
        Err(e) => Err(VfioError::Memlock {
            current: soft,
            need,
            ram,
            detail: format!(
                "the hard limit is {}; setrlimit: {}",
                if hard == libc::RLIM_INFINITY {
                    "unlimited".to_string()
                } else {
                    human(hard)
                },
                e.raw_os_error()
                    .map_or_else(|| e.to_string(), describe_errno)
            ),
        }),
    }
}

/// A sentence for a `VFIO_IOMMU_MAP_DMA` errno.
fn map_errno_detail(errno: i32) -> String {
    match errno {
        libc::ENOMEM => "the kernel could not pin the pages: RLIMIT_MEMLOCK is too low for \
                         everything this process has pinned, or the host is out of memory"
            .to_string(),
        libc::EINVAL => "the host IOMMU refused the range (beyond its address width, or \
                         misaligned)"
            .to_string(),
        libc::EEXIST => "the range is already mapped".to_string(),
        libc::ENOSPC => "too many DMA mappings for vfio_iommu_type1 (its dma_entry_limit \
                         module parameter)"
            .to_string(),
        libc::EFAULT => "the host address range is not mapped in this process".to_string(),
        e => describe_errno(e),
    }
}

fn dma_error(op: &'static str, gpa: u64, size: u64, e: vfio_ioctls::VfioError) -> VfioError {
    use vfio_ioctls::VfioError as E;
    let detail = match e {
        E::IommuDmaMap(err) => map_errno_detail(err.errno()),
        E::IommuDmaUnmap(err) => describe_errno(err.errno()),
        E::InvalidDmaUnmapSize => "the kernel unmapped a different size".to_string(),
        other => other.to_string(),
    };
    VfioError::Dma {
        op,
        gpa,
        size,
        detail,
    }
}

impl VfioHost {
    /// Maps guest RAM for device DMA, IOVA = GPA, read/write: one `VFIO_IOMMU_MAP_DMA` per
    /// piece of each region ([`map_pieces`]). Call after a device is opened and before any
    /// device may DMA. Checks RLIMIT_MEMLOCK (raising it when the hard limit allows) and the
    /// IOMMU's valid IOVA ranges first. On failure nothing mapped by this call stays mapped.
    ///
    /// # Safety
    /// Each region's `host_addr..host_addr + size` must be memory of this process that stays
    /// mapped until [`Self::unmap_guest_memory`] (or drop) and that Rust code accesses only
    /// through raw pointers or volatile accesses (as `vm-memory` does), since devices may read
    /// and write it at any time.
    pub unsafe fn map_guest_memory(
        &self,
        regions: &[GuestRamRegion],
    ) -> Result<DmaStats, VfioError> {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self.map_guest_memory_until(regions, &AtomicBool::new(false)) }
    }

    /// [`Self::map_guest_memory`], but before each piece it looks at `stop`: once that is set
    /// it unmaps what it mapped and returns [`VfioError::DmaStopped`] (the VM is stopping).
    ///
    /// # Safety
    /// As for [`Self::map_guest_memory`].
    pub unsafe fn map_guest_memory_until(
        &self,
        regions: &[GuestRamRegion],
        stop: &AtomicBool,
    ) -> Result<DmaStats, VfioError> {
        let mut mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
        self.check_locked(regions, &mappings)?;
        let bytes: u64 = regions.iter().map(|r| r.size).sum();

        let start = Instant::now();
        let pieces = map_pieces(regions);
        let mut done: Vec<DmaMapping> = Vec::with_capacity(pieces.len());
        let undo = |done: &[DmaMapping]| {
            for m in done {
                let _ = self.container.vfio_dma_unmap(m.iova, m.size as usize);
            }
        };
        for p in &pieces {
            if stop.load(Ordering::Acquire) {
                let mapped = done.iter().map(|m| m.size).sum();
                undo(&done);
                return Err(VfioError::DmaStopped {
                    mapped,
                    total: bytes,
                });
            }
            let size = usize::try_from(p.size).map_err(|_| VfioError::Dma {
                op: "map",
                gpa: p.gpa,
                size: p.size,
                detail: "the region is larger than the address space".to_string(),
            })?;
            // SAFETY: the caller guarantees the region is process memory that stays mapped and
            // is only accessed through raw pointers until it is unmapped; a piece lies inside
            // its region.
            let res = unsafe { self.container.vfio_dma_map(p.gpa, size, p.host_addr) };
            if let Err(e) = res {
                undo(&done);
                return Err(dma_error("map", p.gpa, p.size, e));
            }
            done.push(DmaMapping {
                iova: p.gpa,
                size: p.size,
            });
        }
        let stats = DmaStats {
            bytes,
            elapsed: start.elapsed(),
        };
        mappings.extend(done);
        log::info!(
            "VFIO: DMA-mapped {} of guest RAM in {} region(s), {} piece(s), in {:?} ({:?} per GiB)",
            human(bytes),
            regions.len(),
            pieces.len(),
            stats.elapsed,
            stats.per_gib()
        );
        Ok(stats)
    }

    /// The checks [`Self::map_guest_memory`] makes before it pins anything: a device is open,
    /// the regions are inside the IOMMU's IOVA ranges and aligned to its page size, and
    /// RLIMIT_MEMLOCK allows pinning them (raised when the hard limit allows). For a caller that
    /// maps on another thread while the guest boots, so these failures still stop the VM
    /// before it starts.
    pub fn check_guest_memory(&self, regions: &[GuestRamRegion]) -> Result<(), VfioError> {
        let mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
        self.check_locked(regions, &mappings)
    }

    fn check_locked(
        &self,
        regions: &[GuestRamRegion],
        mappings: &[DmaMapping],
    ) -> Result<(), VfioError> {
        if self.devices_opened.load(Ordering::SeqCst) == 0 {
            return Err(VfioError::NoDevice);
        }
        let info = self.iommu_info();
        if let Some(r) = &info.iova_ranges {
            log::debug!("VFIO: host IOMMU IOVA ranges: {}", format_ranges(r));
        }
        check_regions(regions, &info)?;
        let already: u64 = mappings.iter().map(|m| m.size).sum();
        let bytes: u64 = regions.iter().map(|r| r.size).sum();
        ensure_memlock(already + bytes)
    }

    /// Unmaps `regions` (as given to [`Self::map_guest_memory`]: every piece mapped inside
    /// them; regions that are not mapped are skipped). Call after the devices are released and
    /// before guest RAM is freed. Every mapping is attempted; the first failure is returned.
    pub fn unmap_guest_memory(&self, regions: &[GuestRamRegion]) -> Result<DmaStats, VfioError> {
        let mut mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, kept): (Vec<DmaMapping>, Vec<DmaMapping>) =
            mappings.iter().partition(|m| within(m, regions));
        *mappings = kept;
        drop(mappings);
        self.unmap(gone)
    }

    /// Unmaps every mapping made by [`Self::map_guest_memory`] and not yet unmapped.
    pub fn unmap_all_guest_memory(&self) -> Result<DmaStats, VfioError> {
        let all = std::mem::take(&mut *self.mappings.lock().unwrap_or_else(|e| e.into_inner()));
        self.unmap(all)
    }

    fn unmap(&self, mappings: Vec<DmaMapping>) -> Result<DmaStats, VfioError> {
        let start = Instant::now();
        if !mappings.is_empty() && !self.any_device_open() {
            // The last device took its group out of the container, and the kernel tore the
            // IOMMU domain down with every mapping in it: there is nothing left to unmap.
            log::debug!("VFIO: guest RAM mappings went with the last device");
            return Ok(DmaStats {
                bytes: mappings.iter().map(|m| m.size).sum(),
                elapsed: start.elapsed(),
            });
        }
        let mut bytes = 0;
        let mut first_err = None;
        for m in mappings {
            match self.container.vfio_dma_unmap(m.iova, m.size as usize) {
                Ok(()) => bytes += m.size,
                Err(e) => {
                    first_err.get_or_insert(dma_error("unmap", m.iova, m.size, e));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(DmaStats {
                bytes,
                elapsed: start.elapsed(),
            }),
        }
    }
}

impl Drop for VfioHost {
    fn drop(&mut self) {
        // Devices may still hold the container (vfio-ioctls keeps an Arc in each): unmap here so
        // guest RAM can be freed after this.
        if let Err(e) = self.unmap_all_guest_memory() {
            log::warn!("VFIO: {e}");
        }
    }
}

#[cfg(test)]
#[path = "dma_tests.rs"]
mod tests;
