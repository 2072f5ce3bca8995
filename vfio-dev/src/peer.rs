//! Peer-to-peer DMA: a passthrough device's BAR memory DMA-mapped into the VM's one VFIO
//! container at the BAR's guest address (IOVA = guest physical address, read/write), so another
//! device of the VM can reach it the way it reaches guest RAM. This is what makes GPUDirect
//! P2P (`x_nv_gpudirect_clique`, NCCL, `cudaMemcpyPeer`) work: without it a device's write to
//! its peer's BAR faults in the host IOMMU.
//!
//! Only what the VMM mmaps from a device fd is mapped (never the MSI-X table and PBA pages,
//! which stay trapped). An area that the host IOMMU cannot translate (beyond its address
//! width, over a reserved window, not aligned to its page size) is refused with the reason
//! before any ioctl, so the VMM can warn and go on without P2P for it; a VM never fails for it.

use std::sync::atomic::Ordering;

use crate::container::VfioHost;
use crate::dma::{format_ranges, DmaMapping};
use crate::error::{describe_errno, human};
use crate::iommu_info::IommuInfo;

/// Why a BAR area is not DMA-mapped for peer-to-peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerDmaError {
    /// The host IOMMU cannot translate the range.
    #[error(
        "{iova:#x}..{end:#x} ({size_human}) is beyond the host IOMMU's reach: it translates \
         only {ranges}",
        end = .iova + .size,
        size_human = human(*.size)
    )]
    OutOfReach {
        /// The IOVA (= guest address).
        iova: u64,
        /// Bytes.
        size: u64,
        /// The valid IOVA ranges, formatted.
        ranges: String,
    },
    /// The range is not aligned to the IOMMU's smallest page size.
    #[error(
        "{iova:#x} ({size} bytes) is not aligned to the host IOMMU's smallest page size {page:#x}"
    )]
    Misaligned {
        /// The IOVA.
        iova: u64,
        /// Bytes.
        size: u64,
        /// The smallest IOMMU page.
        page: u64,
    },
    /// The container accepts no more mappings (vfio_iommu_type1's `dma_entry_limit`).
    #[error(
        "the VFIO container accepts no more DMA mappings (vfio_iommu_type1 dma_entry_limit); \
         raise it with `modprobe vfio_iommu_type1 dma_entry_limit=N`"
    )]
    NoEntries,
    /// The kernel refused the map or unmap.
    #[error("VFIO_IOMMU_{op}_DMA at {iova:#x} ({size_human}) failed: {detail}", size_human = human(*.size))]
    Ioctl {
        /// "MAP" or "UNMAP".
        op: &'static str,
        /// The IOVA.
        iova: u64,
        /// Bytes.
        size: u64,
        /// The kernel's error, in words.
        detail: String,
    },
}

/// Whether `[iova, iova + size)` fits one of `info`'s IOVA ranges and its page size; a pure
/// function of what `VFIO_IOMMU_GET_INFO` reported, so the layout and the warnings are
/// unit-tested against recorded answers.
pub fn check_iova(iova: u64, size: u64, info: &IommuInfo) -> Result<(), PeerDmaError> {
    let page = info.page_sizes & info.page_sizes.wrapping_neg();
    if page != 0 && (!iova.is_multiple_of(page) || !size.is_multiple_of(page)) {
        return Err(PeerDmaError::Misaligned { iova, size, page });
    }
    if let Some(ranges) = &info.iova_ranges {
        let last = iova.saturating_add(size.saturating_sub(1));
        if size == 0 || !ranges.iter().any(|r| r.start <= iova && last <= r.end) {
            return Err(PeerDmaError::OutOfReach {
                iova,
                size,
                ranges: format_ranges(ranges),
            });
        }
    }
    Ok(())
}

impl VfioHost {
    /// What the container's IOMMU reports (queried once, after the first device is open).
    pub fn iommu_info(&self) -> IommuInfo {
        let mut cached = self.iommu.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = cached.as_ref() {
            return info.clone();
        }
        if self.devices_opened.load(Ordering::SeqCst) == 0 {
            return IommuInfo::default();
        }
        let info = crate::iommu_info::query_iommu_info(&*self.container).unwrap_or_else(|e| {
            log::debug!("VFIO: VFIO_IOMMU_GET_INFO failed ({e}); IOVAs not checked");
            IommuInfo::default()
        });
        *cached = Some(info.clone());
        info
    }

    /// Whether `[iova, iova + size)` can be DMA-mapped in this container.
    pub fn check_peer(&self, iova: u64, size: u64) -> Result<(), PeerDmaError> {
        check_iova(iova, size, &self.iommu_info())
    }

    /// DMA-maps `size` bytes of device memory mmapped at `host` (a BAR area) at `iova`, for
    /// the VM's devices to reach.
    ///
    /// # Safety
    /// `host..host + size` must be a mapping of this process (a VFIO region mmap) that stays
    /// mapped until [`VfioHost::unmap_peer`] is called for the same range.
    pub unsafe fn map_peer(&self, iova: u64, size: u64, host: usize) -> Result<(), PeerDmaError> {
        self.check_peer(iova, size)?;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let used = self
            .mappings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            + peers.len();
        // DMA_AVAIL was read before the first mapping (guest RAM); without it the kernel's
        // default limit applies.
        let limit = self
            .iommu_info()
            .dma_avail
            .map_or(usize::from(u16::MAX), |a| a as usize);
        if used >= limit {
            return Err(PeerDmaError::NoEntries);
        }
        // SAFETY: the caller guarantees the host range stays mapped until it is unmapped here.
        let res = unsafe {
            self.container
                .vfio_dma_map(iova, size as usize, host as *mut u8)
        };
        res.map_err(|e| PeerDmaError::Ioctl {
            op: "MAP",
            iova,
            size,
            detail: ioctl_detail(e),
        })?;
        peers.push(DmaMapping { iova, size });
        Ok(())
    }

    /// Undoes [`VfioHost::map_peer`] for `[iova, iova + size)`.
    pub fn unmap_peer(&self, iova: u64, size: u64) -> Result<(), PeerDmaError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pos) = peers.iter().position(|m| m.iova == iova && m.size == size) else {
            return Ok(());
        };
        peers.swap_remove(pos);
        if !self.any_device_open() {
            // The mapping went with the last group's IOMMU domain.
            return Ok(());
        }
        self.container
            .vfio_dma_unmap(iova, size as usize)
            .map_err(|e| PeerDmaError::Ioctl {
                op: "UNMAP",
                iova,
                size,
                detail: ioctl_detail(e),
            })
    }

    /// Peer-to-peer mappings in place (for tests and logs).
    pub fn peer_mappings(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn ioctl_detail(e: vfio_ioctls::VfioError) -> String {
    use vfio_ioctls::VfioError as E;
    match e {
        E::IommuDmaMap(err) | E::IommuDmaUnmap(err) => match err.errno() {
            libc::EINVAL => "the host IOMMU refused the range (beyond its address width, or \
                             misaligned)"
                .to_string(),
            libc::EFAULT => "the BAR's mmap could not be faulted in (is the device's memory \
                             decoding off?)"
                .to_string(),
            libc::EEXIST => "the range is already mapped".to_string(),
            errno => describe_errno(errno),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommu_info::IovaRange;

    const GIB: u64 = 1 << 30;

    fn vtd(bits: u32) -> IommuInfo {
        IommuInfo {
            page_sizes: 0x4020_1000,
            iova_ranges: Some(vec![
                IovaRange {
                    start: 0,
                    end: 0xfedf_ffff,
                },
                IovaRange {
                    start: 0xfef0_0000,
                    end: (1u64 << bits) - 1,
                },
            ]),
            dma_avail: Some(65000),
        }
    }

    #[test]
    fn a_bar_below_512g_fits_a_39_bit_iommu_and_one_above_does_not() {
        let info = vtd(39);
        assert_eq!(check_iova(0x1_0000_0000, 4 * GIB, &info), Ok(()));
        assert_eq!(check_iova(0xc000_0000, 1 << 20, &info), Ok(()));
        let err = check_iova(512 * GIB, 16 * GIB, &info).unwrap_err();
        assert!(matches!(err, PeerDmaError::OutOfReach { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("0x8000000000..0x8400000000 (16 GiB)")
                && msg.contains("0xfef00000..=0x7fffffffff"),
            "{msg}"
        );
        // Straddling the limit is out of reach too.
        assert!(check_iova(512 * GIB - 4096, 8192, &info).is_err());
        // A 48-bit IOMMU reaches it.
        assert_eq!(check_iova(512 * GIB, 16 * GIB, &vtd(48)), Ok(()));
    }

    #[test]
    fn the_msi_window_and_misaligned_areas_are_refused() {
        let info = vtd(39);
        assert!(matches!(
            check_iova(0xfee0_0000, 4096, &info),
            Err(PeerDmaError::OutOfReach { .. })
        ));
        assert!(matches!(
            check_iova(0x1_0000_0800, 4096, &info),
            Err(PeerDmaError::Misaligned { page: 4096, .. })
        ));
        // Nothing reported: nothing to check against.
        assert_eq!(check_iova(1 << 50, 4096, &IommuInfo::default()), Ok(()));
    }
}
