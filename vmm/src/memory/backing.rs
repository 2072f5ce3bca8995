//! Mapping guest RAM as `--memory` asks:
//!
//! | keys | mapping |
//! |---|---|
//! | (default) | private anonymous memory |
//! | `shared=on` | a memfd, mapped shared |
//! | `hugepages=on` | private anonymous hugetlb memory (`MAP_HUGETLB`) |
//! | `hugepages=on,shared=on` | a hugetlb memfd (`MFD_HUGETLB`), mapped shared |
//! | `file=PATH` | the file (or a fresh file in the directory), mapped shared |
//!
//! Private memory stays private on purpose: a private mapping of a memfd would be copied page
//! by page when VFIO pins it for DMA, counting guest RAM twice. Hugepage memory is mapped
//! without `MAP_NORESERVE`, so the kernel reserves every page when it is mapped: a pool that
//! ran dry since the check fails here, cleanly, not with a SIGBUS when the guest first touches
//! a page.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use log::{info, warn};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

use vfio_dev::host::memory as host;
use vfio_dev::host::HostPaths;

use super::{GuestMemoryMmap, GuestRam, MemoryError};
use crate::config::MemoryBacking;

/// `MFD_CLOEXEC`.
const MFD_CLOEXEC: libc::c_uint = 0x1;
/// `MFD_HUGETLB`.
const MFD_HUGETLB: libc::c_uint = 0x4;
/// Where the log2 of the page size goes in `MFD_HUGETLB` and `MAP_HUGETLB` flags.
const HUGE_SHIFT: u32 = 26;
/// The base page size.
const PAGE_SIZE: u64 = 4096;
/// What ordinary guest RAM is aligned to on the host: the transparent-hugepage (PMD) size.
/// KVM maps a guest page with a large page only where the host address and the guest address
/// agree modulo that size, and the kernel's own placement of a large anonymous mapping does
/// not promise it.
const THP_ALIGN: u64 = 2 << 20;

/// A memfd holding guest RAM.
fn memfd(bytes: u64, hugepage: Option<u64>) -> Result<File, MemoryError> {
    let mut flags = MFD_CLOEXEC;
    if let Some(page) = hugepage {
        flags |= MFD_HUGETLB | (page.trailing_zeros() << HUGE_SHIFT);
    }
    let name = c"viaduct-ram";
    // SAFETY: `name` is a NUL-terminated string; memfd_create returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd {
            hugetlb: hugepage.is_some(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(bytes).map_err(|source| MemoryError::Memfd {
        hugetlb: hugepage.is_some(),
        source,
    })?;
    Ok(file)
}

/// The file `file=PATH` names: the file itself, grown to `bytes` if smaller, or a fresh
/// unlinked file in the directory `PATH` (a hugetlbfs mount, say).
fn backing_file(path: &Path, bytes: u64) -> Result<File, MemoryError> {
    let err = |source| MemoryError::File {
        path: path.to_path_buf(),
        source,
    };
    let file = if path.is_dir() {
        let name = path.join(format!("viaduct-ram-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&name)
            .map_err(err)?;
        // Nobody else needs a name for it; it goes away with the last mapping.
        std::fs::remove_file(&name).map_err(err)?;
        file
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?
    };
    if file.metadata().map_err(err)?.len() < bytes {
        file.set_len(bytes).map_err(err)?;
    }
    Ok(file)
}

/// The hugepage size to use, if hugepages are asked for.
fn hugepage_size(backing: &MemoryBacking, paths: &HostPaths) -> Result<Option<u64>, MemoryError> {
    if !backing.hugepages {
        return Ok(None);
    }
    match backing.hugepage_size {
        Some(size) => Ok(Some(size)),
        None => host::default_hugepage_size(paths)
            .map(Some)
            .ok_or(MemoryError::NoDefaultHugepageSize),
    }
}

/// Maps guest RAM of `bytes` as `backing` asks (see the module docs).
pub fn create(bytes: u64, backing: &MemoryBacking) -> Result<GuestRam, MemoryError> {
    let paths = HostPaths::from_env();
    let hugepage = hugepage_size(backing, &paths)?;
    if let Some(page) = hugepage {
        if !bytes.is_multiple_of(page) {
            return Err(MemoryError::NotWholeHugepages { size: bytes, page });
        }
    }
    if backing.file.is_none() {
        let pools = host::hugepage_pools(&paths);
        if let Some(pool) = host::check_guest_ram(bytes, hugepage, host::mem_total(&paths), &pools)?
        {
            info!(
                "guest RAM: {} hugepages of {} bytes ({} available in the pool of {})",
                bytes / pool.page_size,
                pool.page_size,
                pool.available(),
                pool.total
            );
        }
    }
    let file = match (&backing.file, backing.shared || hugepage.is_some()) {
        (Some(path), _) => Some(backing_file(path, bytes)?),
        (None, true) if backing.shared => Some(memfd(bytes, hugepage)?),
        _ => None,
    };
    let mut flags = if file.is_some() {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
    };
    if let (Some(page), None) = (hugepage, &file) {
        flags |= libc::MAP_HUGETLB | ((page.trailing_zeros() as i32) << HUGE_SHIFT);
    }
    if hugepage.is_none() && file.is_none() {
        // Ordinary anonymous memory is only touched as the guest uses it.
        flags |= libc::MAP_NORESERVE;
    }
    let file = file.map(std::sync::Arc::new);
    let mut regions = Vec::new();
    let mut mappings = Vec::new();
    let mut offset = 0u64;
    for (start, len) in arch::memory::ram_regions(bytes) {
        let map_err = |source| MemoryError::Map {
            gpa: start,
            bytes: len,
            hugetlb: hugepage.is_some(),
            source,
        };
        let mut builder = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(hugepage.is_some());
        if let Some(f) = &file {
            builder = builder.with_file_offset(FileOffset::from_arc(f.clone(), offset));
        }
        if hugepage.is_none() {
            // The kernel aligns hugetlb mappings itself; ordinary memory is placed by hand.
            let fd = file.as_ref().map_or(-1, |f| f.as_raw_fd());
            let mapping = AlignedMapping::new(len, THP_ALIGN, flags, fd, offset)
                .map_err(|e| map_err(vm_memory::mmap::MmapRegionError::Mmap(e)))?;
            // SAFETY: `mapping` is a live read-write mapping of exactly `len` bytes, and
            // `GuestRam` keeps it until after the regions (and every clone) are gone.
            builder = unsafe { builder.with_raw_mmap_pointer(mapping.addr) };
            mappings.push(mapping);
        }
        let region = builder.build().map_err(map_err)?;
        advise(&region, backing, hugepage.is_some());
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(start)).expect("RAM regions do not wrap"),
        );
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)?;
    Ok(GuestRam {
        mem,
        page_size: hugepage.unwrap_or(PAGE_SIZE),
        hugetlb: hugepage.is_some(),
        mappings,
    })
}

/// A mapping placed at an address aligned to `align`, unmapped when dropped: vm-memory does
/// not unmap memory it was handed as a raw pointer.
pub struct AlignedMapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; the pointer is only used to unmap it.
unsafe impl Send for AlignedMapping {}
// SAFETY: as above; nothing reads through the pointer.
unsafe impl Sync for AlignedMapping {}

impl AlignedMapping {
    /// Maps `len` bytes (`flags`, `fd` at `offset`) at an `align`-aligned host address, by
    /// reserving `len + align` bytes, mapping over the aligned part and giving back the rest.
    fn new(len: u64, align: u64, flags: i32, fd: i32, offset: u64) -> std::io::Result<Self> {
        let len = len as usize;
        let align = align as usize;
        let reserve = len + align;
        // SAFETY: a fresh PROT_NONE reservation anywhere in the address space.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = base as usize;
        let aligned = base.next_multiple_of(align);
        // SAFETY: [aligned, aligned + len) lies inside the reservation just made, which
        // nothing else uses; MAP_FIXED replaces that part of it.
        let addr = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                fd,
                offset as libc::off_t,
            )
        };
        let unmap = |start: usize, bytes: usize| {
            if bytes > 0 {
                // SAFETY: the range is part of the reservation, not of the guest's mapping.
                unsafe { libc::munmap(start as *mut libc::c_void, bytes) };
            }
        };
        if addr == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            unmap(base, reserve);
            return Err(err);
        }
        unmap(base, aligned - base);
        unmap(aligned + len, base + reserve - (aligned + len));
        Ok(AlignedMapping {
            addr: aligned as *mut u8,
            len,
        })
    }
}

impl Drop for AlignedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is this value's own, and `GuestRam` drops it only after the
        // guest memory that points into it.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// The madvise hints `backing` asks for on one region.
fn advise(region: &vm_memory::MmapRegion, backing: &MemoryBacking, hugetlb: bool) {
    let hint = |advice: libc::c_int, what: &str| {
        // SAFETY: the range is exactly the region's own fresh mapping; advice changes how the
        // kernel backs it, never its contents.
        let ret = unsafe { libc::madvise(region.as_ptr().cast(), region.size(), advice) };
        if ret != 0 {
            warn!(
                "guest RAM: madvise({what}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    };
    // Guest RAM has no business in a core dump of the VMM.
    hint(libc::MADV_DONTDUMP, "MADV_DONTDUMP");
    if !hugetlb {
        if backing.thp {
            hint(libc::MADV_HUGEPAGE, "MADV_HUGEPAGE");
        } else {
            hint(libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE");
        }
    }
    if backing.mergeable {
        hint(
            libc::MADV_MERGEABLE,
            "MADV_MERGEABLE (is the kernel built with CONFIG_KSM?)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn default_memory_is_private_anonymous_and_usable() {
        let ram = create(64 << 20, &MemoryBacking::default()).unwrap();
        assert!(!ram.hugetlb);
        assert_eq!(ram.page_size, 4096);
        let region = ram.mem.iter().next().unwrap();
        assert_eq!(region.flags() & libc::MAP_PRIVATE, libc::MAP_PRIVATE);
        assert!(region.file_offset().is_none());
        // Aligned on the host as on the guest, so KVM can map it with 2 MiB pages.
        for region in ram.mem.iter() {
            assert_eq!(region.as_ptr() as u64 % THP_ALIGN, 0);
        }
        ram.mem
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            ram.mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn shared_memory_is_one_memfd_across_the_regions() {
        let backing = MemoryBacking {
            shared: true,
            ..MemoryBacking::default()
        };
        let ram = create(64 << 20, &backing).unwrap();
        let region = ram.mem.iter().next().unwrap();
        assert_eq!(region.flags() & libc::MAP_SHARED, libc::MAP_SHARED);
        assert_eq!(region.file_offset().map(|f| f.start()), Some(0));
    }

    #[test]
    fn a_file_or_a_directory_backs_ram_shared() {
        let dir = std::env::temp_dir().join(format!("viaduct-ram-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ram.img");
        std::fs::write(&file, b"").unwrap();
        let backing = MemoryBacking {
            file: Some(file.clone()),
            ..MemoryBacking::default()
        };
        let ram = create(32 << 20, &backing).unwrap();
        ram.mem.write_obj(0x55aa_55aau32, GuestAddress(0)).unwrap();
        drop(ram);
        // The guest's write reached the file, which grew to the guest's size.
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.len(), 32 << 20);
        assert_eq!(&bytes[..4], &0x55aa_55aau32.to_le_bytes());
        // A directory gets a fresh, unlinked file: nothing is left in it afterwards.
        std::fs::remove_file(&file).unwrap();
        let backing = MemoryBacking {
            file: Some(dir.clone()),
            ..MemoryBacking::default()
        };
        let ram = create(32 << 20, &backing).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        drop(ram);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn hugepages_need_a_whole_number_of_pages() {
        let backing = MemoryBacking {
            hugepages: true,
            hugepage_size: Some(2 << 20),
            ..MemoryBacking::default()
        };
        let err = create((64 << 20) + 4096, &backing).err().unwrap();
        assert!(
            matches!(err, MemoryError::NotWholeHugepages { .. }),
            "{err}"
        );
    }
}
