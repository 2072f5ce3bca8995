//! What the VFIO container's IOMMU says about itself (`VFIO_IOMMU_GET_INFO`): the page sizes it
//! maps, the IOVA ranges it can translate (its address width minus reserved windows such as the
//! x86 MSI range), and how many more DMA mappings it accepts. The kernel's structures and
//! constants come from `vfio-bindings`; the capability chain is walked with every offset
//! bounds-checked, since the buffer is the kernel's answer and a bug there must not become a
//! panic here.

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;

use vfio_bindings::bindings::vfio::{
    vfio_info_cap_header, vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range,
    vfio_iommu_type1_info_dma_avail, vfio_iova_range, VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
/// The kernel's VFIO ioctl numbers this module needs and vfio-ioctls keeps private.
mod ioctl_numbers {
    #![allow(missing_docs)]
    use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
    use vmm_sys_util::ioctl_io_nr;

    ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);
}
use ioctl_numbers::VFIO_IOMMU_GET_INFO;

/// Capability chains longer than this are treated as corrupt.
const MAX_CAPS: usize = 64;

/// An inclusive range of IOVAs the host IOMMU can map, as `VFIO_IOMMU_GET_INFO` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    /// First valid IOVA.
    pub start: u64,
    /// Last valid IOVA (inclusive).
    pub end: u64,
}

/// What the container's IOMMU reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IommuInfo {
    /// Bitmap of supported IOMMU page sizes (0: not reported).
    pub page_sizes: u64,
    /// IOVA ranges that may be mapped (`None`: not reported, e.g. a kernel before 5.4).
    pub iova_ranges: Option<Vec<IovaRange>>,
    /// How many more `VFIO_IOMMU_MAP_DMA` mappings the container accepts (`None`: not
    /// reported; the kernel's default limit is 65535).
    pub dma_avail: Option<u32>,
}

/// Reads a `T` (a plain kernel structure, valid for any bit pattern) at `at` of `buf`, or
/// `None` when it does not fit.
fn read_struct<T>(buf: &[u8], at: usize) -> Option<T> {
    let bytes = buf.get(at..at.checked_add(size_of::<T>())?)?;
    // SAFETY: `bytes` holds `size_of::<T>()` initialized bytes; `read_unaligned` needs no
    // alignment, and every `T` used here is a `repr(C)` struct of integers from vfio-bindings,
    // for which any bit pattern is a valid value.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Parses the buffer `VFIO_IOMMU_GET_INFO` filled: `struct vfio_iommu_type1_info` and its
/// capability chain. Malformed chains end the walk; nothing here trusts an offset.
pub fn parse_iommu_info(buf: &[u8]) -> IommuInfo {
    let mut info = IommuInfo::default();
    let Some(head) = read_struct::<vfio_iommu_type1_info>(buf, 0) else {
        return info;
    };
    if head.flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
        info.page_sizes = head.iova_pgsizes;
    }
    if head.flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return info;
    }
    let mut off = head.cap_offset as usize;
    for _ in 0..MAX_CAPS {
        if off < size_of::<vfio_iommu_type1_info>() {
            break;
        }
        let Some(cap) = read_struct::<vfio_info_cap_header>(buf, off) else {
            break;
        };
        match u32::from(cap.id) {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                if let Some(ranges) = iova_ranges(buf, off) {
                    info.iova_ranges = Some(ranges);
                }
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                if let Some(a) = read_struct::<vfio_iommu_type1_info_dma_avail>(buf, off) {
                    info.dma_avail = Some(a.avail);
                }
            }
            _ => {}
        }
        let next = cap.next as usize;
        if next <= off {
            break;
        }
        off = next;
    }
    info
}

/// The ranges of the IOVA-range capability at `off`, if all of them fit the buffer.
fn iova_ranges(buf: &[u8], off: usize) -> Option<Vec<IovaRange>> {
    let cap = read_struct::<vfio_iommu_type1_info_cap_iova_range>(buf, off)?;
    let first = off.checked_add(size_of::<vfio_iommu_type1_info_cap_iova_range>())?;
    (0..cap.nr_iovas as usize)
        .map(|i| {
            let at = first.checked_add(i.checked_mul(size_of::<vfio_iova_range>())?)?;
            let r = read_struct::<vfio_iova_range>(buf, at)?;
            Some(IovaRange {
                start: r.start,
                end: r.end,
            })
        })
        .collect()
}

/// Queries the container's IOMMU page sizes, valid IOVA ranges and remaining mappings.
pub(crate) fn query_iommu_info(container: &impl AsRawFd) -> io::Result<IommuInfo> {
    let head_size = size_of::<vfio_iommu_type1_info>();
    // u64 storage keeps the buffer aligned for the kernel's struct.
    let mut buf = vec![0u64; head_size.div_ceil(8)];
    let mut argsz = head_size as u32;
    // Twice at most: the first answer says how much room the capabilities need.
    for _ in 0..2 {
        let head = vfio_iommu_type1_info {
            argsz,
            ..Default::default()
        };
        // SAFETY: `buf` has room for at least the header (`argsz` >= its size); the header is a
        // plain struct written byte for byte.
        unsafe {
            std::ptr::write_unaligned(buf.as_mut_ptr().cast::<vfio_iommu_type1_info>(), head)
        };
        // SAFETY: `buf` is at least `argsz` bytes long, writable and 8-byte aligned; the kernel
        // writes at most `argsz` bytes into it. The fd is a VFIO container.
        let ret = unsafe { ioctl_with_mut_ptr(container, VFIO_IOMMU_GET_INFO(), buf.as_mut_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let wanted = read_struct::<vfio_iommu_type1_info>(&bytes, 0).map_or(argsz, |h| h.argsz);
        if wanted <= argsz {
            return Ok(parse_iommu_info(&bytes));
        }
        // The capabilities do not fit: the kernel said how much room they need.
        argsz = wanted;
        buf = vec![0u64; (wanted as usize).div_ceil(8)];
    }
    Err(io::Error::other(
        "VFIO_IOMMU_GET_INFO kept asking for a larger buffer",
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const INFO_SIZE: usize = size_of::<vfio_iommu_type1_info>();

    /// Builds a `VFIO_IOMMU_GET_INFO` answer: header, then optionally an unrelated capability
    /// and a DMA_AVAIL one, then the IOVA-range capability.
    pub(crate) fn info_buf(pgsizes: u64, ranges: &[(u64, u64)], extra_caps: bool) -> Vec<u8> {
        let mut caps = Vec::new();
        let mut off = INFO_SIZE;
        let header = |caps: &mut Vec<u8>, id: u32, len: usize, off: &mut usize| {
            *off += len;
            caps.extend_from_slice(&(id as u16).to_ne_bytes());
            caps.extend_from_slice(&1u16.to_ne_bytes());
            caps.extend_from_slice(&(*off as u32).to_ne_bytes());
        };
        if extra_caps {
            // Migration (id 2), 24 bytes.
            header(&mut caps, 2, 24, &mut off);
            caps.extend_from_slice(&[0u8; 16]);
            // DMA_AVAIL, 12 bytes: 65000 mappings left.
            header(&mut caps, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 12, &mut off);
            caps.extend_from_slice(&65000u32.to_ne_bytes());
        }
        caps.extend_from_slice(&(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16).to_ne_bytes());
        caps.extend_from_slice(&1u16.to_ne_bytes());
        caps.extend_from_slice(&0u32.to_ne_bytes());
        caps.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
        caps.extend_from_slice(&0u32.to_ne_bytes());
        for (s, e) in ranges {
            caps.extend_from_slice(&s.to_ne_bytes());
            caps.extend_from_slice(&e.to_ne_bytes());
        }
        let mut b = Vec::new();
        b.extend_from_slice(&((INFO_SIZE + caps.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&(VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS).to_ne_bytes());
        b.extend_from_slice(&pgsizes.to_ne_bytes());
        b.extend_from_slice(&(INFO_SIZE as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&caps);
        b
    }

    /// What a 39-bit emulated VT-d reports: everything below 512 GiB except the MSI window.
    pub(crate) const VTD39: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];

    #[test]
    fn iova_ranges_and_dma_avail_are_parsed_from_the_capability_chain() {
        let info = parse_iommu_info(&info_buf(0x40201000, &VTD39, true));
        assert_eq!(info.page_sizes, 0x40201000);
        assert_eq!(
            info.iova_ranges,
            Some(vec![
                IovaRange {
                    start: 0,
                    end: 0xfedf_ffff
                },
                IovaRange {
                    start: 0xfef0_0000,
                    end: (1 << 39) - 1
                },
            ])
        );
        assert_eq!(info.dma_avail, Some(65000));
    }

    #[test]
    fn info_without_caps_has_no_ranges() {
        let mut b = info_buf(0x1000, &VTD39, false);
        b[4] = VFIO_IOMMU_INFO_PGSIZES as u8; // flags: no CAPS
        let info = parse_iommu_info(&b[..INFO_SIZE]);
        assert_eq!(info.page_sizes, 0x1000);
        assert_eq!(info.iova_ranges, None);
    }

    #[test]
    fn truncated_or_looping_chains_are_not_trusted() {
        let b = info_buf(0x1000, &VTD39, false);
        // The last range is cut off: the whole capability is ignored.
        assert_eq!(parse_iommu_info(&b[..b.len() - 4]).iova_ranges, None);
        // A capability whose next points back at itself ends the walk.
        let mut b = info_buf(0x1000, &VTD39, true);
        b[INFO_SIZE + 4..INFO_SIZE + 8].copy_from_slice(&(INFO_SIZE as u32).to_ne_bytes());
        assert_eq!(parse_iommu_info(&b).iova_ranges, None);
        // An absurd range count or a header beyond the buffer is not a panic.
        let mut b = info_buf(0x1000, &VTD39, false);
        b[INFO_SIZE + 8..INFO_SIZE + 12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(parse_iommu_info(&b).iova_ranges, None);
        assert_eq!(parse_iommu_info(&b[..10]), IommuInfo::default());
    }

    #[test]
    fn get_info_ioctl_number_matches_the_kernel() {
        // _IO(';', VFIO_BASE + 12) in <linux/vfio.h>.
        assert_eq!(VFIO_IOMMU_GET_INFO(), 0x3b70);
    }
}
